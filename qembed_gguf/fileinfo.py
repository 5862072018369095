"""What a GGUF file holds, and what it lacks for correct Qwen3 embeddings.

Reads metadata and tensor infos with gguf-py's reader (memory-mapped; tensor data is not
touched). :meth:`GGUFInfo.problems` lists what older community GGUFs got wrong — a missing
pooling type (llama.cpp then returns per-token vectors), a missing ``add_eos_token`` or an EOS
that is not ``<|endoftext|>`` (the pooled token is then the wrong one), a non-qwen2 pre-tokenizer.
"""

from __future__ import annotations

import collections
import dataclasses
from pathlib import Path
from typing import Any

import gguf

from . import keys
from .errors import ModelLoadError

__all__ = ["GGUFInfo", "TensorInfo", "read_gguf_info"]

POOLING_NAMES = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


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
        return POOLING_NAMES.get(value, f"unknown ({value})") if value is not None else "missing"

    @property
    def file_type(self) -> str:
        value = self.get("general.file_type")
        try:
            return gguf.LlamaFileType(value).name.removeprefix("MOSTLY_") if value is not None else "unknown"
        except ValueError:
            return f"unknown ({value})"

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

    def problems(self) -> list[str]:
        """What this file lacks for correct Qwen3-Embedding vectors (empty when all is well)."""
        out = []
        if self.architecture != "qwen3":
            out.append(f"general.architecture is {self.architecture!r}, not 'qwen3'")
        pooling = self.arch_key("pooling_type")
        if pooling is None:
            out.append("no pooling_type: llama.cpp falls back to NONE (per-token vectors); Qwen3-Embedding needs LAST")
        elif pooling != gguf.PoolingType.LAST:
            out.append(f"pooling_type is {self.pooling!r}; Qwen3-Embedding needs 'last'")
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


@dataclasses.dataclass(frozen=True)
class StringArray:
    """Stands for a string array (e.g. the 151k-token vocabulary) that is not decoded."""

    length: int

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<{self.length} strings>"


def _value(field: gguf.ReaderField) -> Any:
    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
        if field.types[-1] == gguf.GGUFValueType.STRING:
            return StringArray(len(field.data))
        return list(field.contents())
    return field.contents()


def read_gguf_info(path: str | Path, *, validated: bool = False) -> GGUFInfo:
    """Read a GGUF file's metadata and tensor table (not its tensor data).

    The header is validated structurally first (:func:`qembed_gguf.gguf_check.read_header`), so a
    malformed file is a :class:`CorruptModelError` naming the field and byte offset, and gguf-py's
    reader only ever sees well-formed headers. ``validated=True``: the caller already ran
    :func:`~qembed_gguf.gguf_check.check_gguf` on it, so the header is not walked twice.
    """
    from .gguf_check import read_header

    path = Path(path)
    if not validated:
        read_header(path)
    try:
        reader = gguf.GGUFReader(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except (ValueError, OSError, IndexError, KeyError, UnicodeDecodeError, OverflowError) as exc:
        raise ModelLoadError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None
    metadata = {name: _value(field) for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    tensors = tuple(
        TensorInfo(t.name, t.tensor_type.name, tuple(int(d) for d in t.shape), int(t.n_elements), int(t.n_bytes))
        for t in reader.tensors
    )
    eos_id, tokens = metadata.get("tokenizer.ggml.eos_token_id"), reader.fields.get("tokenizer.ggml.tokens")
    eos = tokens.contents(eos_id) if isinstance(eos_id, int) and tokens is not None and 0 <= eos_id < len(tokens.data) else None
    size = path.stat().st_size
    del reader
    return GGUFInfo(path=path, file_size=size, metadata=metadata, tensors=tensors, eos_token=eos)
