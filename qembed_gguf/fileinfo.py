"""What a GGUF file holds, and what it lacks for correct Qwen3 embeddings (or reranker scores).

Built on the project's own header parser (:func:`qembed_gguf.gguf_reader.read_header`): one walk
of the header, no Python object per token or merge, so a 151,669-token vocabulary costs tens of
milliseconds, not seconds (gguf-py's ``GGUFReader`` builds a field object for every string). :meth:`GGUFInfo.problems` lists what older community GGUFs got wrong — a missing
pooling type (llama.cpp then returns per-token vectors), a missing ``add_eos_token`` or an EOS
that is not ``<|endoftext|>`` (the pooled token is then the wrong one), a non-qwen2 pre-tokenizer;
for a Qwen3-Reranker (:attr:`GGUFInfo.kind`) what its scores need instead: RANK pooling, the yes/no
head, and no EOS appended after the prompt template.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import mmap
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from . import keys
from .errors import ModelLoadError
from .gguf_reader import SCALAR_FORMATS, STRING, U64, ArrayValue, GGUFHeader, open_regular, read_header
from .layout import CLS_LABELS, CLS_TENSOR, KINDS

__all__ = ["GGUFInfo", "TensorInfo", "read_gguf_info"]

POOLING_NAMES = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
CLS_OUT = CLS_TENSOR[1]  # "cls.output.weight", a reranker's yes/no head: gguf.TENSOR_NAMES[MODEL_TENSOR.CLS_OUT]


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str
    shape: tuple[int, ...]  # ggml order (ne0 = row length first)
    n_elements: int
    n_bytes: int


@dataclasses.dataclass(frozen=True)
class GGUFInfo:
    path: Path
    file_size: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    eos_token: str | None

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    @property
    def architecture(self) -> str | None:
        return self.get("general.architecture")

    def arch_key(self, name: str, default: Any = None) -> Any:
        return self.get(f"{self.architecture}.{name}", default)

    @property
    def dim(self) -> int | None:
        return self.arch_key("embedding_length")

    @property
    def layers(self) -> int | None:
        return self.arch_key("block_count")

    @property
    def pooling(self) -> str:
        value = self.arch_key("pooling_type")
        if value is None:
            return "missing"
        known = isinstance(value, int) and not isinstance(value, bool) and value in POOLING_NAMES
        return POOLING_NAMES[value] if known else f"unknown ({value!r:.40})"

    @property
    def kind(self) -> str:
        """``"reranker"`` (a Qwen3-Reranker) or ``"embedding"``: what ``qembed.kind`` says (written by
        ``qembed-gguf convert``), else a reranker when the file has RANK pooling or a
        ``cls.output.weight`` yes/no head (llama.cpp's converter writes both)."""
        stated = self.get(keys.KIND)
        if stated in KINDS:
            return stated
        if self.pooling == "rank" or self.has_cls_head:
            return "reranker"
        return "embedding"

    @property
    def has_cls_head(self) -> bool:
        return any(t.name == CLS_OUT for t in self.tensors)

    @property
    def file_type(self) -> str:
        value = self.get("general.file_type")
        try:
            return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_") if value is not None else "unknown"
        except (ValueError, TypeError):  # a crafted file may hold anything here
            return f"unknown ({value!r:.40})"

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / self.n_params if self.n_params else 0.0

    @property
    def type_mix(self) -> dict[str, tuple[int, int, int]]:
        """type → (tensor count, parameters, bytes), largest share first."""
        mix: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
        for t in self.tensors:
            m = mix[t.type]
            m[0] += 1
            m[1] += t.n_elements
            m[2] += t.n_bytes
        return {k: tuple(v) for k, v in sorted(mix.items(), key=lambda kv: -kv[1][1])}  # type: ignore[misc]

    @property
    def mrl_min_dim(self) -> int | None:
        return self.get(keys.MRL_MIN_DIM)

    @property
    def by_qembed(self) -> bool:
        return keys.FORMAT in self.metadata

    def fallbacks(self) -> list[TensorInfo]:
        """2-D tensors that could not take the file type's base quantization because their row
        length (ne0) is not a multiple of its block size; llama.cpp stored them in another type."""
        base = self.file_type.removesuffix("_M").removesuffix("_S").removesuffix("_L")
        try:
            block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[base]][0]
        except KeyError:
            return []
        return [t for t in self.tensors if len(t.shape) > 1 and t.shape[0] % block]

    def to_dict(self, *, refusal: Exception | None = None) -> dict[str, Any]:
        """What ``qembed-gguf info --json`` prints: the summary, what validation said (``refusal``:
        the error :func:`~qembed_gguf.gguf_check.check_gguf` raised, if any) and the scalar metadata
        (a crafted file's NaN or infinity as strings: JSON has neither)."""
        def plain(v):
            if isinstance(v, float) and not math.isfinite(v):
                return repr(v)
            return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)

        meta = {k: plain(v) for k, v in self.metadata.items()
                if not k.startswith("tokenizer.ggml.") or not hasattr(v, "__len__")}
        error = None if refusal is None else {
            "type": type(refusal).__name__, "message": str(refusal), "field": getattr(refusal, "field", None),
            "offset": getattr(refusal, "offset", None)}
        return {
            "path": str(self.path), "file_size": self.file_size, "kind": self.kind,
            "architecture": plain(self.architecture),
            "dim": plain(self.dim), "layers": plain(self.layers), "pooling": self.pooling, "eos_token": self.eos_token,
            "file_type": self.file_type, "bits_per_weight": round(self.bits_per_weight, 4), "type_mix": self.type_mix,
            "valid": refusal is None, "error": error, "problems": self.problems(),
            "sealed": isinstance(self.get(keys.INTEGRITY), str), "metadata": meta,
        }

    @staticmethod
    def corrected_at_run_time(problem: str) -> bool:
        """Whether the Embedder makes up for ``problem`` (one of :meth:`problems`): it forces LAST
        pooling, appends ``<|endoftext|>`` itself and adds no BOS, but tokenizes with the file's
        pre-tokenizer, which it cannot replace."""
        return not problem.startswith(("tokenizer.ggml.pre", "general.architecture"))

    def problems(self) -> list[str]:
        """What this file lacks for correct Qwen3-Embedding vectors, or for a reranker (:attr:`kind`)
        correct Qwen3-Reranker scores (empty when all is well)."""
        out = []
        if self.architecture != "qwen3":
            out.append(f"general.architecture is {self.architecture!r}, not 'qwen3'")
        pooling = self.arch_key("pooling_type")
        if self.kind == "reranker":
            out += self._reranker_problems(pooling)
        else:
            if pooling is None:
                out.append("no pooling_type: llama.cpp falls back to NONE (per-token vectors); Qwen3-Embedding needs "
                           "LAST")
            elif pooling != gguf.PoolingType.LAST:
                out.append(f"pooling_type is {self.pooling!r}; Qwen3-Embedding needs 'last'")
            if self.has_cls_head:
                out.append(f"{CLS_OUT} (a reranker's yes/no head) in an embedding model's file")
            if self.eos_token != "<|endoftext|>":
                out.append(f"EOS token is {self.eos_token!r}, not '<|endoftext|>' (the pooled token)")
            if self.get("tokenizer.ggml.add_eos_token") is not True:
                out.append("tokenizer.ggml.add_eos_token is not true: inputs would not end in <|endoftext|>")
        if self.get("tokenizer.ggml.add_bos_token") is True:
            out.append("tokenizer.ggml.add_bos_token is true: Qwen3 adds no BOS")
        if self.get("tokenizer.ggml.pre") not in (None, "qwen2"):
            out.append(f"tokenizer.ggml.pre is {self.get('tokenizer.ggml.pre')!r}, not 'qwen2'")
        elif self.get("tokenizer.ggml.pre") is None:
            out.append("tokenizer.ggml.pre is missing: llama.cpp would use the default pre-tokenizer, not qwen2")
        return out

    def _reranker_problems(self, pooling: Any) -> list[str]:
        out = []
        if pooling != gguf.PoolingType.RANK:
            shown = "missing" if pooling is None else repr(self.pooling)
            out.append(f"pooling_type is {shown}; a Qwen3-Reranker needs 'rank' (llama.cpp applies the yes/no head "
                       f"only then)")
        if not self.has_cls_head:
            out.append(f"no {CLS_OUT}: a Qwen3-Reranker's yes/no head (the lm_head rows of "
                       f"{' and '.join(repr(x) for x in CLS_LABELS)}) is missing")
        labels = self.arch_key("classifier.output_labels")
        if labels is None or len(labels) != len(CLS_LABELS):
            out.append(f"classifier.output_labels is {'missing' if labels is None else f'{len(labels)} labels'}; a "
                       f"Qwen3-Reranker's head has {len(CLS_LABELS)} ({', '.join(CLS_LABELS)})")
        if self.get("tokenizer.ggml.add_eos_token") is True:
            out.append("tokenizer.ggml.add_eos_token is true: llama.cpp would append an EOS after the rerank prompt, "
                       "and the scored last token would be that EOS")
        return out


@dataclasses.dataclass(frozen=True)
class StringArray:
    """Stands for a string array (e.g. the 151k-token vocabulary) that is not decoded."""

    length: int

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<{self.length} strings>"


def _decode(value: Any, buf) -> Any:
    """A header value as Python: scalars as they are, numeric arrays as lists, string arrays as
    :class:`StringArray` (their length only)."""
    if not isinstance(value, ArrayValue):
        return value
    if value.type == STRING:
        return StringArray(value.count)
    # the header parser's element formats ("<I", "<f", ...) are numpy dtypes as they are
    return np.frombuffer(buf, dtype=SCALAR_FORMATS[value.type], count=value.count, offset=value.offset).tolist()


def _string_at(buf, array: ArrayValue, index: int) -> str:
    """Element ``index`` of a string array the header parser already bounded (a walk over lengths)."""
    pos, unpack = array.offset, U64.unpack_from
    for _ in range(index):
        pos += 8 + unpack(buf, pos)[0]
    (n,) = unpack(buf, pos)
    return bytes(buf[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace")


def read_gguf_info(path: str | Path, *, header: GGUFHeader | None = None, validated: bool = False) -> GGUFInfo:
    """Read a GGUF file's metadata and tensor table (not its tensor data).

    The header is parsed and validated structurally (:func:`qembed_gguf.gguf_reader.read_header`),
    so a malformed file is a :class:`CorruptModelError` naming the field and byte offset.
    ``header``: the caller's already-parsed header of this file (e.g. from
    :func:`~qembed_gguf.gguf_check.check_gguf`), so it is not walked twice. ``validated`` is
    accepted for compatibility and ignored (the header is always parsed once, here or by the caller).
    """
    del validated
    path = Path(path)
    h = header if header is not None else read_header(path)
    with open_regular(path) as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        if len(mm) != h.file_size:
            raise ModelLoadError(f"{path}: changed size while being read ({h.file_size} -> {len(mm)} bytes)")
        try:
            metadata = {k: _decode(v, mm) for k, v in h.metadata.items()}
            eos_id, tokens = h.get("tokenizer.ggml.eos_token_id"), h.get("tokenizer.ggml.tokens")
            eos = None
            if (isinstance(eos_id, int) and not isinstance(eos_id, bool) and isinstance(tokens, ArrayValue)
                    and tokens.type == STRING and 0 <= eos_id < tokens.count):
                eos = _string_at(mm, tokens, eos_id)
        except (struct.error, ValueError, OverflowError) as exc:  # the file changed after its header was checked
            raise ModelLoadError(f"{path}: header no longer matches the file ({type(exc).__name__}: {exc}); "
                                 f"was it replaced while being read?") from None
    tensors = tuple(
        TensorInfo(t.name, _type_name(t.ggml_type), t.shape, math.prod(t.shape), t.nbytes) for t in h.tensors)
    return GGUFInfo(path=path, file_size=h.file_size, metadata=metadata, tensors=tensors, eos_token=eos)


def _type_name(ggml_type: int) -> str:
    try:
        return gguf.GGMLQuantizationType(ggml_type).name
    except ValueError:  # read_header refuses unknown types; kept total for safety
        return f"type{ggml_type}"
