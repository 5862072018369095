"""Strict, header-only validation of a GGUF file before llama.cpp parses it, and its integrity seal.

llama.cpp's GGUF parser has had heap overflows on crafted files (see ../shared/QWEN3_EMBEDDING.md),
and its loader and graph *assert* on values a file controls (a failed ``GGML_ASSERT`` aborts the
whole process). So no file reaches it before :func:`check_gguf` has walked the whole header in
pure Python:

* a regular file (a FIFO, a device or a socket is refused before it is read: ``open`` would
  block or never end), magic, version (2 or 3), tensor and key/value counts bounded by what the
  file could hold;
* every string and array length bounded by the bytes left; known value types; no nested arrays;
* ``general.alignment`` a u32 power of two from 8 (the GGUF spec: a multiple of 8); tensor names
  unique and short enough for ggml; 1-4 dims, each positive, element count without overflow; a
  known ggml type whose block divides the row;
* tensor data offsets aligned, packed in order (as gguf.cpp requires) and in bounds of the file;
* every key llama.cpp reads for a Qwen3 model, with the exact GGUF type it reads it as (its
  ``get_key<T>`` throws on any other) and a value it can use (table below);
* the vocabulary: unique, non-empty token strings including the 256 byte-level tokens, token
  types llama.cpp knows, BPE merges ``"A B"`` whose ``AB`` is a token, special-token ids inside
  the vocabulary;
* exactly the tensors, with exactly the shapes and types, that those hyperparameters imply.

What each check keeps from llama.cpp (vendored in llama-cpp-python 0.3.36; ``qwen3.`` keys)::

    check                                           llama.cpp, if the file reached it
    ----------------------------------------------  ---------------------------------------------------
    block_count in [1, 512]                         GGML_ASSERT(n_layer_all <= LLAMA_MAX_LAYERS) abort
    nextn_predict_layers absent or 0                GGML_ASSERT(n_layer_nextn <= n_layer_all) abort;
                                                    else fewer layers built than the file holds
    expert_count / expert_used_count /              GGML_ASSERT(n_expert <= LLAMA_MAX_EXPERTS),
      expert_group_count / _group_used_count 0        (n_expert_used <= n_expert), ... abort
    key_length == value_length (value_length's      qwen3 graph: GGML_ASSERT(n_embd_head_v ==
      default is embedding_length / head_count)       n_embd_head_k) abort at the first context
    rope.dimension_count == key_length              qwen3 graph: GGML_ASSERT(n_embd_head == n_rot) abort
    key_length even                                 ggml rope: GGML_ASSERT(n_dims % 2 == 0) abort
    rope.scaling.type none/linear/yarn/longrope     GGML_ASSERT(rope_scaling_type != UNSPECIFIED) abort
    layer_norm_rms_epsilon finite, in (0, 1e-2]     ggml rms_norm: GGML_ASSERT(eps >= 0) abort (NaN
                                                    too); +inf: every vector exactly zero
    rope.freq_base finite, in (1, 1e12]             0 or < 0: NaN/inf vectors; 1: no rotation at all
    rope.scaling.factor / rope.scale_linear 0 or    1/factor scales every position: NaN, inf, < 0 or
      in [1, 1024]; attn_factor in (0, 16];           0 give NaN or position-blind vectors
      alpha finite
    attention.causal not false                      false: bidirectional attention, silently
                                                    different vectors
    embedding_length_out absent, 0 or               the output row size of an embedding context
      embedding_length
    split.count a u16 <= 1                          > 1: llama.cpp opens sibling "-0000N-of-" files
    tokens unique (and non-empty: llama.cpp         GGML_ASSERT(id_to_token.size() ==
      renames "" to "[EMPTY_<i>]", which may clash)   token_to_id.size()) abort
    the 256 byte-level tokens present               bytes without a token are silently dropped
    token_type an i32 array, values in [0, 5]       other types: throw; unknown values: UNDEFINED;
                                                    type byte (6): read as SPM's "<0xXX>", throws
    merges "A B" with AB a token                    no space: ignored; AB unknown: tokens fall back
                                                    to bytes (HF tokenizers refuses both)
    tokenizer.ggml.pre one llama.cpp knows          throw ("unknown pre-tokenizer type")
    general.name with "phi3": the Phi-3 tokens      throw (token_to_id.at("</s>") for "Phi-3" models)
    "<|endoftext|>" among the tokens                the Embedder pools on it
    qembed.* keys typed, mrl_min_dim <= dim         the Embedder's own reads (TypeError otherwise)
    token-id keys u32 < vocabulary size             out of range: silently replaced by a default
    exact GGUF type of every key read               throw ("key ... has wrong type")
    tensor names, shapes and types                  throw (missing/wrong shape); types it cannot
                                                    multiply with
    tensor data packed in order                     gguf.cpp refuses ("has offset X, expected Y")

Throws are caught by llama.cpp (the model is NULL: a :class:`ModelLoadError`); they are refused
here anyway, so the message names the field. The bounds that are not llama.cpp's own are sanity
bounds far outside every released model (Qwen3: eps 1e-6, rope base 1e6, no rope scaling).

Every failure is a :class:`CorruptModelError` naming the field and its byte offset. Only the
header is read (through a memory map): about 85 ms for a 151,669-token vocabulary and its
151,387 merges (35 ms of it the walk over their lengths), whatever the file size. The vocabulary
checks are vectorised: each token string is hashed (a polynomial hash mod 2**64, computed for all
of them in a few numpy passes) and the hashes compared; a duplicate is confirmed byte for byte
before it is reported.

Integrity: files written by the converter carry ``qembed.integrity.blake2b``, the BLAKE2b-256 of
the whole file with the 64 hex digits of that value read as ``0``; :func:`verify_integrity`
recomputes it (streaming) so any changed byte — header or tensor data — is detected. It guards
against corruption (a truncated or bit-flipped download that still parses), not against an
attacker, who could recompute the seal.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import functools
import hashlib
import math
import mmap
import os
import stat
import struct
from pathlib import Path
from typing import Any, Iterator

import gguf
import numpy as np

from . import keys
from .errors import CorruptModelError, IntegrityError, ModelLoadError

__all__ = ["GGUFHeader", "TensorSpan", "check_gguf", "read_header", "open_regular", "seal", "verify_integrity",
           "IntegrityStatus", "require_integrity", "content_fingerprint"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_COUNT = 1 << 24          # tensors, key/values and array elements: far above any real model
MAX_STRING = 64 << 20        # one string (a chat template is ~10 KB; a token < 1 KB)
MAX_NAME = 63                # ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL
MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1
DIGEST_HEX = 64

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SCALAR_STRUCTS = {t: struct.Struct(f) for t, f in _SCALAR.items()}
_UINT16, _UINT32, _INT32, _FLOAT32, _BOOL, _STRING, _ARRAY = 2, 4, 5, 6, 7, 8, 9
_TYPE_NAMES = {t.value: t.name for t in gguf.GGUFValueType}
_TRACKED_STRINGS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclasses.dataclass(frozen=True)
class ArrayValue:
    """An array in the header: its element type, length and the offset of its first element."""

    type: int
    count: int
    offset: int


@dataclasses.dataclass(frozen=True)
class TensorSpan:
    name: str
    ggml_type: int
    shape: tuple[int, ...]  # ggml order: ne0 (the row length) first
    offset: int             # absolute byte offset of the data in the file
    nbytes: int


@dataclasses.dataclass(frozen=True)
class GGUFHeader:
    path: Path
    file_size: int
    version: int
    alignment: int
    data_offset: int
    metadata: dict[str, Any]          # scalars and strings decoded; arrays as ArrayValue
    value_offsets: dict[str, int]     # byte offset of each key's value
    tensors: tuple[TensorSpan, ...]
    value_types: dict[str, int] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """Each key's GGUF value type (``gguf.GGUFValueType``; an array's element type is its ``ArrayValue.type``)."""
    string_offsets: dict[str, array.array] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """For the vocabulary's string arrays (tokens, merges): the offset of each element's u64 length,
    then the array's end (``array('q')``, 8 bytes per element)."""

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


class _Reader:
    def __init__(self, buf, path: Path):
        self.buf, self.path, self.size, self.pos = buf, path, len(buf), 0
        self.string_offsets: dict[str, array.array] = {}

    def fail(self, field: str, problem: str, offset: int | None = None) -> CorruptModelError:
        return CorruptModelError(problem, path=self.path, field=field, offset=self.pos if offset is None else offset)

    def need(self, n: int, field: str) -> None:
        if self.pos + n > self.size:
            raise self.fail(field, f"needs {n} bytes but the file ends {self.size - self.pos} bytes later "
                                   f"(truncated file?)")

    def u32(self, field: str) -> int:
        self.need(4, field)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, field: str) -> int:
        self.need(8, field)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def raw_string(self, field: str, limit: int = MAX_STRING) -> bytes:
        start = self.pos
        n = self.u64(field + " (length)")
        if n > limit:
            raise self.fail(field, f"string length {n} exceeds the limit of {limit} bytes", start)
        self.need(n, field)
        data = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return data

    def text(self, field: str, limit: int = MAX_STRING) -> str:
        start = self.pos
        data = self.raw_string(field, limit)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(field, f"is not valid UTF-8 (byte {exc.start} of the string)", start + 8 + exc.start) from None

    def count(self, field: str, min_item_bytes: int) -> int:
        start = self.pos
        n = self.u64(field)
        room = (self.size - self.pos) // max(1, min_item_bytes)
        if n > MAX_COUNT or n > room:
            raise self.fail(field, f"count {n} is impossible: the {self.size - self.pos} bytes left hold at most "
                                   f"{room} items", start)
        return n

    def value(self, vtype: int, field: str) -> Any:
        if vtype in _SCALAR_STRUCTS:
            st = _SCALAR_STRUCTS[vtype]
            self.need(st.size, field)
            (v,) = st.unpack_from(self.buf, self.pos)
            if vtype == _BOOL and self.buf[self.pos] > 1:
                raise self.fail(field, f"bool value {self.buf[self.pos]} is neither 0 nor 1")
            self.pos += st.size
            return v
        if vtype == _STRING:
            return self.text(field)
        if vtype == _ARRAY:
            start = self.pos
            etype = self.u32(field + " (array element type)")
            if etype == _ARRAY:
                raise self.fail(field, "nested arrays are not allowed", start)
            if etype not in _SCALAR_STRUCTS and etype != _STRING:
                raise self.fail(field, f"unknown array element type {etype}", start)
            item = _SCALAR_STRUCTS[etype].size if etype in _SCALAR_STRUCTS else 8
            n = self.count(field + " (array length)", item)
            first = self.pos
            if etype == _STRING:
                starts = self._skip_strings(n, field, track=field in _TRACKED_STRINGS)
                if starts is not None:
                    self.string_offsets[field] = starts
            else:
                self.pos += n * item  # bounded by count()
            return ArrayValue(etype, n, first)
        raise self.fail(field, f"unknown value type {vtype}")

    def _skip_strings(self, n: int, field: str, *, track: bool = False) -> array.array | None:
        # the hot loop of a header (a 151,669-token vocabulary and as many merges): no checks inside;
        # a length running past the end makes the next unpack fail or the final position too big,
        # and then the slow walk below finds which element it was. ``track``: keep each element's
        # offset (of its u64 length), then the end, for the vocabulary checks (8 bytes per element)
        buf, pos, unpack = self.buf, self.pos, _U64.unpack_from
        starts = array.array("q", bytes(8 * (n + 1))) if track else None
        try:
            if starts is None:
                for _ in range(n):
                    pos += 8 + unpack(buf, pos)[0]
            else:
                for i in range(n):
                    starts[i] = pos
                    pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):
            pos = self.size + 1
        if pos > self.size:
            self._locate_bad_string(n, field)
        self.pos = pos
        if starts is not None:
            starts[n] = pos
        return starts

    def _locate_bad_string(self, n: int, field: str) -> None:
        pos = self.pos
        for i in range(n):
            if pos + 8 > self.size:
                self.pos = pos
                raise self.fail(f"{field}[{i}]", "string length runs past the end of the file")
            (length,) = _U64.unpack_from(self.buf, pos)
            if pos + 8 + length > self.size:
                self.pos = pos
                raise self.fail(f"{field}[{i}]", f"string of {length} bytes runs past the end of the file")
            pos += 8 + length


# -- opening: regular files only ----------------------------------------------------------------------
_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | os.PathLike[str], *, buffering: int = -1):
    """Open ``path`` for binary reading if it is a regular file; else :class:`ModelLoadError`.

    The file is opened non-blocking and then examined (``fstat`` of what was opened, so nothing
    can be swapped in between): a plain ``open`` blocks forever on a FIFO that no one writes,
    and ``/dev/zero`` or ``/dev/urandom`` never end.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a folder, not a GGUF file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot open ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise ModelLoadError(f"{path} is a folder, not a GGUF file")
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")
            raise ModelLoadError(f"{path} is {kind}, not a regular file: a GGUF model must be a file")
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[tuple[memoryview, int]]:
    """The whole file as a read-only memoryview (released on exit), and its size."""
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise CorruptModelError(f"file of {size} bytes is too short to be a GGUF file", path=path,
                                    field="header", offset=0)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                yield view, min(size, len(mm))
            finally:
                view.release()


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and structurally validate a GGUF header (no model-specific checks)."""
    path = Path(path)
    with _mapped(path) as (view, size):
        return _parse(_Reader(view, path), size)


def _parse(r: _Reader, size: int) -> GGUFHeader:
    magic = bytes(r.buf[:4])
    if magic != GGUF_MAGIC:
        raise r.fail("magic", f"is {magic!r}, not b'GGUF' (not a GGUF file)", 0)
    r.pos = 4
    version = r.u32("version")
    if version not in SUPPORTED_VERSIONS:
        raise r.fail("version", f"GGUF version {version} is not supported (2 or 3)", 4)
    n_tensors = r.count("tensor_count", 8 + 1 + 4 + 8 + 4 + 8)
    n_kv = r.count("kv_count", 8 + 1 + 4)
    metadata: dict[str, Any] = {}
    offsets: dict[str, int] = {}
    types: dict[str, int] = {}
    for i in range(n_kv):
        start = r.pos
        key = r.text(f"key of key/value {i}", 65535)
        if not key:
            raise r.fail(f"key of key/value {i}", "is empty", start)
        if key in metadata:
            raise r.fail(key, "key appears twice", start)
        vtype = r.u32(f"{key} (value type)")
        offsets[key] = r.pos + (8 if vtype == _STRING else 0)
        metadata[key] = r.value(vtype, key)
        types[key] = vtype
    alignment = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if "general.alignment" in types and types["general.alignment"] != _UINT32:  # gguf.cpp reads only a u32
        raise r.fail("general.alignment", f"has type {_TYPE_NAMES.get(types['general.alignment'])}; GGUF "
                                          f"requires UINT32", offsets["general.alignment"])
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 8 \
            or alignment & (alignment - 1) or alignment > 1 << 20:  # the GGUF spec: a multiple of 8
        raise r.fail("general.alignment", f"{alignment!r} is not a power of two from 8 to 1 MiB",
                     offsets.get("general.alignment"))

    infos = []
    names = set()
    for i in range(n_tensors):
        start = r.pos
        name = r.text(f"name of tensor {i}", 1 << 16)
        if not name or len(name.encode()) > MAX_NAME:
            raise r.fail(f"name of tensor {i}", f"{name!r} must have 1 to {MAX_NAME} bytes", start)
        if name in names:
            raise r.fail(name, "tensor name appears twice", start)
        names.add(name)
        n_dims = r.u32(f"{name} (n_dims)")
        if not 1 <= n_dims <= MAX_DIMS:
            raise r.fail(f"{name} (n_dims)", f"{n_dims} dimensions; 1 to {MAX_DIMS} allowed", r.pos - 4)
        dims_at = r.pos
        dims = tuple(r.u64(f"{name} (dimension {d})") for d in range(n_dims))
        n_el = 1
        for d in dims:
            if d < 1:
                raise r.fail(f"{name} (shape)", f"dimension of size {d} in {list(dims)}", dims_at)
            n_el *= d
        if n_el > INT64_MAX:
            raise r.fail(f"{name} (shape)", f"{list(dims)} has more elements than int64 can count", dims_at)
        type_at = r.pos
        ttype = r.u32(f"{name} (type)")
        try:
            block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        except (ValueError, KeyError):
            raise r.fail(f"{name} (type)", f"unknown ggml type {ttype}", type_at) from None
        if dims[0] % block:
            raise r.fail(f"{name} (shape)", f"row length {dims[0]} is not a multiple of the "
                                           f"{gguf.GGMLQuantizationType(ttype).name} block size {block}", dims_at)
        off_at = r.pos
        offset = r.u64(f"{name} (offset)")
        if offset % alignment:
            raise r.fail(f"{name} (offset)", f"data offset {offset} is not a multiple of the alignment {alignment}",
                         off_at)
        infos.append((name, ttype, dims, offset, n_el // block * type_size, off_at))
    expected = 0  # gguf.cpp: each tensor's data starts where the previous one's (padded) ends, in order
    for name, _, _, offset, nbytes, off_at in infos:
        if offset != expected:
            raise r.fail(f"{name} (offset)", f"data offset {offset} is not {expected}, where the tensors before "
                                            f"it end: GGUF packs tensor data in order (llama.cpp refuses the file)",
                         off_at)
        expected += -(-nbytes // alignment) * alignment
    data_offset = -(-r.pos // alignment) * alignment
    if data_offset > size and infos:
        raise r.fail("tensor data", f"starts at byte {data_offset}, past the end of the {size}-byte file", r.pos)
    tensors = []
    end_prev, prev = 0, None
    for name, ttype, dims, offset, nbytes, off_at in sorted(infos, key=lambda t: t[3]):
        begin = data_offset + offset
        if begin + nbytes > size:
            raise r.fail(f"{name} (offset)", f"data [{begin}, {begin + nbytes}) runs past the end of the {size}-byte "
                                            f"file (truncated download?)", off_at)
        if begin < end_prev:
            raise r.fail(f"{name} (offset)", f"data [{begin}, {begin + nbytes}) overlaps tensor {prev!r}", off_at)
        end_prev, prev = begin + nbytes, name
        tensors.append(TensorSpan(name, ttype, dims, begin, nbytes))
    return GGUFHeader(r.path, size, version, alignment, data_offset, metadata, offsets, tuple(tensors),
                      value_types=types, string_offsets=r.string_offsets)


# -- the Qwen3 model checks -------------------------------------------------------------------------------
# ggml types llama.cpp computes Qwen3 weight matrices with on every backend (the removed
# interleaved Q4_0_x_x types, Q8_K, integer and test types are not weights a model file may hold)
MATRIX_TYPES = frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 29, 30})
NORM_TYPES = frozenset({0})  # every converter stores norm weights as F32; llama.cpp's graph needs it

LLAMA_MAX_LAYERS = 512       # src/llama-hparams.h; load_hparams asserts block_count <= it
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # llama.cpp asserts the string is one of these
RMS_EPS_MAX = 1e-2           # released models use 1e-12 .. 1e-5 (Qwen3: 1e-6); an eps near the hidden
#                              state's mean square stops normalising, and +inf makes every vector zero
ROPE_BASE_MAX = 1e12         # released models: 1e4 .. 1e8 (Qwen3: 1e6)
ROPE_FACTOR_MAX = 1024.0     # position scale 1/factor: beyond this a 40,960-token context spans < 40 positions
ROPE_ATTN_FACTOR_MAX = 16.0  # scales cos/sin, so attention logits by its square (default 1)
# LLAMA_TOKEN_TYPE_UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE (include/llama.h)
TOKEN_TYPE_NAMES = ("undefined", "normal", "unknown", "control", "user-defined", "unused", "byte")

# the tokenizer.ggml.pre values llama.cpp's vocabulary loader knows (src/llama-vocab.cpp); it
# refuses the file on any other (an empty or missing one means its default pre-tokenizer)
LLAMA_CPP_PRE_TOKENIZERS = frozenset("""
    a.x-4.0 afmoe bailingmoe bailingmoe2 bloom chameleon chatglm-bpe codeshell cohere2moe command-r dbrx
    deepseek-coder deepseek-llm deepseek-r1-qwen deepseek-v3 default exaone exaone-moe exaone4 f2llmv2 falcon
    falcon-h1 falcon3 gemma4 gigachat glm4 glm5 gpt-2 gpt-4o gpt3-finnish granite-docling
    granite-embed-multi-311m granite-embed-multi-97m grok-2 hunyuan hunyuan-dense hy_v4 jais jais-2 jina-de
    jina-es jina-v1-en jina-v2-code jina-v2-de jina-v2-es jina-v5-nano joyai-llm kanana2 kimi-k2 kormo laguna
    lfm2 llada-moe llama-bpe llama-v3 llama3 llama4 megrez mellum mellum2 midm-2.0 minerva-7b minicpm5
    minimax-m2 modern-bert mpt olmo phi-2 pixtral poro-chat qwen2 qwen35 refact roberta-bpe sarvam-moe
    seed-coder smaug-bpe smollm solar-open spark2_5 stablelm2 starcoder superbpe talkie tekken tiny_aya
    trillion ufakzeka viking whitespace youtu
""".split())

# token-id keys llama.cpp reads (as u32; an out-of-range id is silently replaced by a default)
_TOKEN_ID_KEYS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask", "fim_pre", "fim_suf",
                  "fim_mid", "fim_pad", "fim_rep", "fim_sep", "prefix", "suffix", "middle")
# boolean tokenizer keys llama.cpp reads (its get_key<bool> throws on any other type)
_TOKENIZER_BOOLS = ("add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix", "remove_extra_whitespaces",
                    "normalizer.lowercase", "normalizer.strip_accents")


def _fail(h: GGUFHeader, key: str, problem: str) -> CorruptModelError:
    return CorruptModelError(problem, path=h.path, field=key, offset=h.value_offsets.get(key))


def _type_name(vtype: int | None) -> str:
    return _TYPE_NAMES.get(vtype, f"type {vtype}") if vtype is not None else "no type"


def _typed(h: GGUFHeader, key: str, vtype: int, *, required: bool = False, reader: str = "llama.cpp") -> Any:
    """``key``'s value when present with exactly the GGUF type ``vtype`` (llama.cpp's ``get_key<T>``
    throws on any other; a u32 written as i32 or u64 is refused too), None when absent."""
    if key not in h.metadata:
        if required:
            raise _fail(h, key, "required key is missing")
        return None
    have = h.value_types.get(key)
    if have == _ARRAY and vtype != _ARRAY:  # (some, e.g. head_count, may be per-layer arrays elsewhere)
        raise _fail(h, key, f"is an array; one {_type_name(vtype)} is needed (a Qwen3 model has the same value "
                            f"in every layer)")
    if have != vtype:
        raise _fail(h, key, f"has type {_type_name(have)}; {reader} reads it as {_type_name(vtype)} and refuses "
                            f"any other")
    return h.metadata[key]


def _uint(h: GGUFHeader, key: str, lo: int = 0, hi: int = (1 << 32) - 1, *, required: bool = False,
          why: str = "") -> int | None:
    """A u32 key in ``[lo, hi]`` (None when absent)."""
    v = _typed(h, key, _UINT32, required=required)
    if v is not None and not lo <= v <= hi:
        raise _fail(h, key, f"value {v} is outside [{lo}, {hi}]" + (f": {why}" if why else ""))
    return v


def _float(h: GGUFHeader, key: str, lo: float, hi: float, *, why: str, required: bool = False) -> float | None:
    """An f32 key, finite and in ``(lo, hi]``; None when absent."""
    v = _typed(h, key, _FLOAT32, required=required)
    if v is None or (math.isfinite(v) and lo < v <= hi):
        return v
    raise _fail(h, key, f"value {v:.7g} is not a finite number in ({lo:g}, {hi:g}]: {why}")


def _bool(h: GGUFHeader, key: str) -> bool | None:
    return _typed(h, key, _BOOL)


def _string(h: GGUFHeader, key: str, *, required: bool = False) -> str | None:
    return _typed(h, key, _STRING, required=required)


def _array(h: GGUFHeader, key: str, element_types: tuple[int, ...], *, required: bool = False) -> ArrayValue | None:
    """An array key whose elements have one of ``element_types`` (None when absent)."""
    v = _typed(h, key, _ARRAY, required=required)
    if v is not None and v.type not in element_types:
        raise _fail(h, key, f"is an array of {_type_name(v.type)}; llama.cpp needs an array of "
                            f"{' or '.join(_type_name(t) for t in element_types)}")
    return v


@dataclasses.dataclass(frozen=True)
class _Dims:
    layers: int
    embd: int
    ff: int
    heads: int
    kv_heads: int
    head: int       # key = value = RoPE size of one head


def _check_general(h: GGUFHeader) -> str:
    """The general.* and split.* keys llama.cpp reads; the architecture."""
    arch = h.get("general.architecture")
    if not isinstance(arch, str):
        if "general.architecture" in h.metadata:
            _string(h, "general.architecture")  # raises: wrong type
        raise _fail(h, "general.architecture", "required string key is missing")
    if arch != "qwen3":
        raise ModelLoadError(f"{h.path}: architecture {arch!r} is not a Qwen3 embedding model "
                             f"(general.architecture at byte offset {h.value_offsets['general.architecture']})")
    _string(h, "general.name")
    _uint(h, "general.file_type")
    split = _typed(h, "split.count", _UINT16)
    if split is not None and split > 1:
        raise _fail(h, "split.count", f"the model is split into {split} files; llama.cpp would open sibling "
                                      f"'-0000N-of-' files, which are not validated here (merge them first: "
                                      f"llama-gguf-split --merge)")
    return arch


def _check_tokenizer_keys(h: GGUFHeader) -> tuple[ArrayValue, ArrayValue, ArrayValue | None]:
    """Types and counts of the tokenizer keys llama.cpp reads: (tokens, merges, token types)."""
    model = _string(h, "tokenizer.ggml.model", required=True)
    if model != "gpt2":
        raise _fail(h, "tokenizer.ggml.model", f"tokenizer model {model!r} is not the byte-level BPE ('gpt2') of Qwen3")
    pre = _string(h, "tokenizer.ggml.pre")
    if pre and pre not in LLAMA_CPP_PRE_TOKENIZERS:
        raise _fail(h, "tokenizer.ggml.pre", f"pre-tokenizer {pre[:80]!r} is unknown to llama.cpp, which refuses the "
                                             f"file (Qwen3's is 'qwen2')")
    tokens = _array(h, "tokenizer.ggml.tokens", (_STRING,), required=True)
    if tokens.count < 1 or tokens.count > INT32_MAX:
        raise _fail(h, "tokenizer.ggml.tokens", f"must hold 1 to {INT32_MAX} token strings, not {tokens.count}")
    n_vocab = tokens.count
    merges = _array(h, "tokenizer.ggml.merges", (_STRING,), required=True)
    token_type = _array(h, "tokenizer.ggml.token_type", (_INT32,))
    scores = _array(h, "tokenizer.ggml.scores", (_FLOAT32, _INT32))
    for key, arr in (("tokenizer.ggml.token_type", token_type), ("tokenizer.ggml.scores", scores)):
        if arr is not None and arr.count != n_vocab:
            raise _fail(h, key, f"has {arr.count} entries for {n_vocab} tokens")
    _array(h, "tokenizer.ggml.suppress_tokens", (_INT32,))
    _uint(h, "tokenizer.ggml.token_type_count")
    for name in _TOKEN_ID_KEYS:
        _uint(h, f"tokenizer.ggml.{name}_token_id", 0, n_vocab - 1,
              why=f"not a token of the {n_vocab}-token vocabulary (llama.cpp would silently use another)")
    for name in _TOKENIZER_BOOLS:
        _bool(h, f"tokenizer.ggml.{name}")
    return tokens, merges, token_type


def _check_hparams(h: GGUFHeader, arch: str) -> _Dims:
    """The ``{arch}.*`` keys llama.cpp reads for a Qwen3 model: exact types, values it can run
    (see the table in the module docstring), and consistent with each other."""
    def k(name: str) -> str:
        return f"{arch}.{name}"

    layers = _uint(h, k("block_count"), 1, LLAMA_MAX_LAYERS, required=True,
                   why=f"llama.cpp asserts 0 < block_count <= LLAMA_MAX_LAYERS ({LLAMA_MAX_LAYERS})")
    embd = _uint(h, k("embedding_length"), 1, 1 << 20, required=True)
    ff = _uint(h, k("feed_forward_length"), 1, 1 << 20, required=True)
    heads = _uint(h, k("attention.head_count"), 1, 4096, required=True)
    kv_heads = _uint(h, k("attention.head_count_kv"), 1, 4096)
    kv_heads = heads if kv_heads is None else kv_heads
    if heads % kv_heads:
        raise _fail(h, k("attention.head_count_kv"), f"head_count {heads} is not a multiple of head_count_kv "
                                                     f"{kv_heads}")
    _uint(h, k("context_length"), 1, 1 << 24, required=True)
    default_head = embd // heads  # llama.cpp's default for both key_length and value_length
    head_k = _uint(h, k("attention.key_length"), 1, 1 << 16)
    head_v = _uint(h, k("attention.value_length"), 1, 1 << 16)
    head_k = default_head if head_k is None else head_k
    head_v = default_head if head_v is None else head_v
    if head_k < 1:
        raise _fail(h, k("attention.head_count"), f"{heads} heads leave no room in embedding_length {embd} and no "
                                                  f"attention.key_length is given")
    if head_v != head_k:
        key = k("attention.value_length") if k("attention.value_length") in h.metadata else k("attention.key_length")
        raise _fail(h, key, f"value head size {head_v} differs from key head size {head_k}: llama.cpp's qwen3 graph "
                            f"asserts they are equal (abort)")
    if head_k % 2:
        raise _fail(h, k("attention.key_length") if k("attention.key_length") in h.metadata else
                    k("attention.head_count"), f"head size {head_k} is odd: RoPE rotates pairs of dimensions and "
                                               f"ggml asserts an even count (abort)")
    n_rot = _uint(h, k("rope.dimension_count"))
    if n_rot is not None and n_rot != head_k:
        raise _fail(h, k("rope.dimension_count"), f"{n_rot} rotary dimensions for heads of {head_k}: llama.cpp's qwen3 "
                                                  f"graph asserts they are equal (abort)")
    for name in ("attention.key_length_swa", "attention.value_length_swa", "rope.dimension_count_swa",
                 "rope.scaling.original_context_length", "pooling_type", "classifier.pooling_type"):
        _uint(h, k(name))  # read by llama.cpp (unused for Qwen3): the type only
    _uint(h, k("nextn_predict_layers"), 0, 0,
          why="Qwen3 has no next-token-prediction layers (llama.cpp asserts the count <= block_count, then "
              "builds fewer blocks than the file has)")
    for name in ("expert_count", "expert_used_count", "expert_group_count", "expert_group_used_count"):
        _uint(h, k(name), 0, 0, why="Qwen3-Embedding is dense (llama.cpp asserts on inconsistent expert counts)")
    out = _uint(h, k("embedding_length_out"))
    if out not in (None, 0, embd):
        raise _fail(h, k("embedding_length_out"), f"{out} differs from embedding_length {embd}: Qwen3's output is "
                                                  f"its hidden state")
    if _bool(h, k("attention.causal")) is False:
        raise _fail(h, k("attention.causal"), "is false: Qwen3-Embedding attends causally; llama.cpp would attend "
                                              "both ways and return silently different vectors")
    _bool(h, k("rope.scaling.finetuned"))
    _array(h, k("classifier.output_labels"), (_STRING,))
    _float(h, k("attention.layer_norm_rms_epsilon"), 0.0, RMS_EPS_MAX, required=True,
           why="ggml's RMSNorm asserts eps >= 0 (a negative or NaN eps aborts the process), an infinite one makes "
               "every vector zero, and released models use 1e-12 to 1e-5")
    _float(h, k("rope.freq_base"), 1.0, ROPE_BASE_MAX,
           why="RoPE computes base**(-2i/d): a base <= 0 gives NaN or infinite vectors, 1 no rotation at all")
    scaling = _string(h, k("rope.scaling.type"))
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise _fail(h, k("rope.scaling.type"), f"{scaling[:80]!r} is not one of {', '.join(ROPE_SCALING_TYPES)}: "
                                               f"llama.cpp asserts it is (abort)")
    for name in ("rope.scaling.factor", "rope.scale_linear"):
        v = _typed(h, k(name), _FLOAT32)
        if v is not None and not (v == 0 or (math.isfinite(v) and 1 <= v <= ROPE_FACTOR_MAX)):
            raise _fail(h, k(name), f"value {v:.7g} is not 0 (no scaling) or a finite factor in [1, "
                                    f"{ROPE_FACTOR_MAX:g}]: llama.cpp scales every position by 1/factor")
    _float(h, k("rope.scaling.attn_factor"), 0.0, ROPE_ATTN_FACTOR_MAX,
           why="it scales RoPE's cos and sin, so 0 or NaN makes attention position-blind or NaN")
    alpha = _typed(h, k("rope.scaling.alpha"), _FLOAT32)
    if alpha is not None and not math.isfinite(alpha):
        raise _fail(h, k("rope.scaling.alpha"), f"value {alpha!r} is not finite")
    return _Dims(layers, embd, ff, heads, kv_heads, head_k)


def _check_qembed_keys(h: GGUFHeader, dims: _Dims) -> None:
    """The ``qembed.*`` keys the Embedder reads (written by ``qembed-gguf convert``; optional)."""
    ours = "qembed-gguf"
    _typed(h, keys.FORMAT, _UINT32, reader=ours)
    mrl = _typed(h, keys.MRL_MIN_DIM, _UINT32, reader=ours)
    if mrl is not None and not 1 <= mrl <= dims.embd:
        raise _fail(h, keys.MRL_MIN_DIM, f"value {mrl} is outside [1, embedding_length {dims.embd}]")
    for key in (keys.QUERY_TEMPLATE, keys.DEFAULT_TASK, keys.SOURCE, keys.CONVERTER):
        _typed(h, key, _STRING, reader=ours)
    seal_value = _typed(h, keys.INTEGRITY, _STRING, reader=ours)
    if seal_value is not None and (len(seal_value) != DIGEST_HEX or seal_value.strip("0123456789abcdef")):
        raise _fail(h, keys.INTEGRITY, f"must be {DIGEST_HEX} lower-case hex digits")


def _expected_tensors(d: _Dims, n_vocab: int) -> dict[str, tuple[int, ...]]:
    """The tensors llama.cpp's qwen3 loader creates, by name, with their shapes (ggml order)."""
    want = {"token_embd.weight": (d.embd, n_vocab), "output_norm.weight": (d.embd,)}
    q, kv = d.heads * d.head, d.kv_heads * d.head
    for i in range(d.layers):
        b = f"blk.{i}."
        want.update({
            b + "attn_norm.weight": (d.embd,), b + "ffn_norm.weight": (d.embd,),
            b + "attn_q.weight": (d.embd, q), b + "attn_k.weight": (d.embd, kv),
            b + "attn_v.weight": (d.embd, kv), b + "attn_output.weight": (q, d.embd),
            b + "attn_q_norm.weight": (d.head,), b + "attn_k_norm.weight": (d.head,),
            b + "ffn_gate.weight": (d.embd, d.ff), b + "ffn_up.weight": (d.embd, d.ff),
            b + "ffn_down.weight": (d.ff, d.embd),
        })
    return want


def _check_tensors(h: GGUFHeader, dims: _Dims, n_vocab: int) -> None:
    want = _expected_tensors(dims, n_vocab)
    have = {t.name: t for t in h.tensors}
    if "output.weight" in have:
        want["output.weight"] = want["token_embd.weight"]
    for name, shape in want.items():
        t = have.get(name)
        if t is None:
            raise CorruptModelError("required tensor is missing", path=h.path, field=name, offset=None)
        if t.shape != shape:
            raise CorruptModelError(f"shape {list(t.shape)} does not match the hyperparameters' {list(shape)}",
                                    path=h.path, field=name, offset=t.offset)
        allowed = NORM_TYPES if len(shape) == 1 else MATRIX_TYPES
        if t.ggml_type not in allowed:
            kind = "a norm vector" if len(shape) == 1 else "a weight matrix"
            raise CorruptModelError(f"type {gguf.GGMLQuantizationType(t.ggml_type).name} is not valid for {kind}",
                                    path=h.path, field=name, offset=t.offset)
    extra = sorted(set(have) - set(want))
    if extra:
        raise CorruptModelError(f"unexpected tensor for a Qwen3 model ({len(extra)} in all)", path=h.path,
                                field=extra[0], offset=have[extra[0]].offset)


# -- the vocabulary, vectorised ------------------------------------------------------------------------
# Each byte string s gets h(s) = sum((s[j] + 1) * B**j) mod 2**64, B odd (so invertible), the length
# mixed in. For strings that lie in one region, h(region[a:b]) = (P[b] - P[a]) * B**-a from the
# prefix sums P of the whole region. P is computed in chunks of 64 KiB and kept only where a string
# starts or ends, so the memory stays small (fresh pages are what costs most here). A merge's "AB"
# is hashed in the merges' region with the separators taken out. Equal strings hash equal wherever
# they lie, and a duplicate is confirmed byte for byte before it is reported, so a forged collision
# can only make a membership test pass wrongly (a broken merge or a missing byte token: a
# tokenisation difference, never a crash).
_HASH_BASE = 0x9E3779B97F4A7C15
_HASH_BASE_INV = pow(_HASH_BASE, -1, 1 << 64)
_HASH_LENGTH = 0xC2B2AE3D27D4EB4F
_HASH_BITS = 16
_HASH_CHUNK = 1 << _HASH_BITS
_M64 = (1 << 64) - 1


def _power_table(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2**64."""
    table = np.full(n, base, dtype=np.uint64)
    table[0] = 1
    return np.multiply.accumulate(table)


@functools.lru_cache(maxsize=2)
def _low_powers(base: int) -> np.ndarray:
    return _power_table(base, _HASH_CHUNK)


def _powers(base: int, exponents: np.ndarray) -> np.ndarray:
    """base**e mod 2**64 for each e of ``exponents`` (non-negative int64): a 64 Ki table and a small one."""
    top = int(exponents.max(initial=0)) >> _HASH_BITS
    high = _power_table(pow(base, _HASH_CHUNK, 1 << 64), top + 1)
    return _low_powers(base)[exponents & (_HASH_CHUNK - 1)] * high[exponents >> _HASH_BITS]


def _prefix_at(data: bytes, positions: np.ndarray) -> np.ndarray:
    """P[p] = sum((data[j] + 1) * B**j for j < p) mod 2**64 at each of the sorted ``positions``."""
    x = np.frombuffer(data, dtype=np.uint8)
    n, low = len(x), _low_powers(_HASH_BASE)
    out = np.empty(len(positions), dtype=np.uint64)
    # positions p < c1 belong to the chunk [c0, c1); the end of the data to the last one
    bounds = np.searchsorted(positions, np.arange(_HASH_CHUNK, n, _HASH_CHUNK), side="left").tolist() + [len(positions)]
    local = np.zeros(_HASH_CHUNK + 1, dtype=np.uint64)
    step = pow(_HASH_BASE, _HASH_CHUNK, 1 << 64)
    carry, scale, lo = 0, 1, 0
    for chunk, c0 in enumerate(range(0, max(n, 1), _HASH_CHUNK)):
        m = min(_HASH_CHUNK, n - c0)
        sums = local[1:m + 1]
        np.multiply(x[c0:c0 + m], low[:m], out=sums)
        sums += low[:m]
        np.cumsum(sums, out=sums)
        hi = bounds[chunk]
        if hi > lo:
            out[lo:hi] = local[positions[lo:hi] - c0] * np.uint64(scale) + np.uint64(carry)
        carry = (carry + int(local[m]) * scale) & _M64
        scale = (scale * step) & _M64
        lo = hi
    return out


def _mix_length(raw: np.ndarray, length: np.ndarray) -> np.ndarray:
    return raw ^ (length.astype(np.uint64) * np.uint64(_HASH_LENGTH))


def _string_keys(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash keys of ``data[starts[i]:ends[i]]`` (ranges in order, not overlapping)."""
    at = np.empty(2 * len(starts), dtype=np.int64)
    at[0::2], at[1::2] = starts, ends
    p = _prefix_at(data, at)
    return _mix_length((p[1::2] - p[0::2]) * _powers(_HASH_BASE_INV, starts), ends - starts)


def _joined_keys(data: bytes, starts: np.ndarray, cuts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash keys of ``data[starts:cuts] + data[cuts + 1:ends]``: each range (in order, not
    overlapping) with the byte at ``cuts`` removed, by hashing ``data`` without those bytes."""
    keep = np.ones(len(data), dtype=bool)
    keep[cuts] = False
    shift = np.arange(len(starts))  # range i starts after i removed bytes and ends after i + 1
    return _string_keys(np.frombuffer(data, dtype=np.uint8)[keep].tobytes(), starts - shift, ends - shift - 1)


def _hash_bytes(s: bytes) -> int:
    """The hash key of one byte string, in Python (the same as :func:`_string_keys`)."""
    h, p = 0, 1
    for c in s:
        h = (h + (c + 1) * p) & _M64
        p = (p * _HASH_BASE) & _M64
    return h ^ ((len(s) * _HASH_LENGTH) & _M64)


def _byte_level_tokens() -> list[bytes]:
    """The 256 one-character tokens of byte-level BPE (GPT-2's bytes_to_unicode, as llama.cpp's
    unicode_byte_to_utf8): printable bytes stand for themselves, the others for U+0100 onwards."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping, extra = {b: b for b in keep}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = 256 + extra
            extra += 1
    return [chr(mapping[b]).encode("utf-8") for b in range(256)]


_BYTE_TOKENS = _byte_level_tokens()
POOLING_TOKEN = b"<|endoftext|>"
_PHI3_TOKENS = (b"</s>", b"<unk>", b"<s>", b"<|endoftext|>")
_BYTE_TOKEN_KEYS = np.array([_hash_bytes(t) for t in _BYTE_TOKENS], dtype=np.uint64)


def _element_ranges(offsets: array.array) -> tuple[int, np.ndarray, np.ndarray]:
    """(region start, element starts, element ends) of a tracked string array, relative to the region."""
    off = np.frombuffer(offsets, dtype=np.int64)
    base = int(off[0])
    return base, off[:-1] - base + 8, off[1:] - base


def _unknown(sorted_keys: np.ndarray, query: np.ndarray) -> tuple[int, int] | None:
    """(index of the first, count of) ``query`` keys not among ``sorted_keys``; None when all are.
    Sorted queries are looked up several times faster; the indices are found only on failure."""
    if not len(query):
        return None
    last = len(sorted_keys) - 1
    ordered = np.sort(query)
    if (sorted_keys[np.minimum(np.searchsorted(sorted_keys, ordered), last)] == ordered).all():
        return None
    bad = np.flatnonzero(sorted_keys[np.minimum(np.searchsorted(sorted_keys, query), last)] != query)
    return int(bad[0]), len(bad)


def _first_duplicate(keys: np.ndarray, sorted_keys: np.ndarray, data: bytes, starts: np.ndarray,
                     ends: np.ndarray) -> tuple[int, int] | None:
    """(earlier, later) indices of the first token string that repeats an earlier one, confirmed byte for byte."""
    repeated = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    seen: dict[bytes, int] = {}
    for i in np.flatnonzero(np.isin(keys, repeated)).tolist():
        j = seen.setdefault(data[starts[i]:ends[i]], i)
        if j != i:
            return j, i
    return None


def _check_vocabulary(h: GGUFHeader, view: memoryview, tokens: ArrayValue, merges: ArrayValue,
                      token_type: ArrayValue | None) -> None:
    """Token strings unique, non-empty and with every byte-level token; token types llama.cpp
    knows; merges "A B" whose AB is a token. Works on copies of the regions (the map is released after)."""
    field = "tokenizer.ggml.tokens"
    t_offsets = h.string_offsets[field]
    base, starts, ends = _element_ranges(t_offsets)
    data = bytes(view[base:t_offsets[-1]])
    lengths = ends - starts
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        i = int(empty[0])
        raise CorruptModelError(f"token {i} is an empty string; llama.cpp renames it '[EMPTY_{i}]', which another "
                                f"token may already be", path=h.path, field=f"{field}[{i}]", offset=t_offsets[i])
    keys = _string_keys(data, starts, ends)
    sorted_keys = np.sort(keys)
    if (sorted_keys[1:] == sorted_keys[:-1]).any():
        dup = _first_duplicate(keys, sorted_keys, data, starts, ends)
        if dup is not None:
            j, i = dup
            text = data[starts[i]:ends[i]]
            raise CorruptModelError(f"token {i} {text[:60]!r} repeats token {j}: llama.cpp asserts that every "
                                    f"token string is unique (abort)", path=h.path, field=f"{field}[{i}]",
                                    offset=t_offsets[i])
    missing = _unknown(sorted_keys, _BYTE_TOKEN_KEYS)
    if missing is not None:
        b, count = missing
        raise CorruptModelError(f"has no token for byte 0x{b:02x} ({_BYTE_TOKENS[b].decode()!r} in byte-level BPE; "
                                f"{count} of the 256 are missing): llama.cpp silently drops such bytes from "
                                f"every input", path=h.path, field=field, offset=h.value_offsets.get(field))

    def has(text: bytes) -> bool:
        return _unknown(sorted_keys, np.array([_hash_bytes(text)], dtype=np.uint64)) is None

    if not has(POOLING_TOKEN):
        raise CorruptModelError(f"has no {POOLING_TOKEN.decode()} token: Qwen3-Embedding pools on it", path=h.path,
                                field=field, offset=h.value_offsets.get(field))
    name = h.get("general.name")
    if isinstance(name, str) and ("phi3" in name.lower() or "phi-3" in name.lower()):
        lacking = [t.decode() for t in _PHI3_TOKENS if not has(t)]
        if lacking:  # llama-vocab.cpp sets Phi-3 token attributes by name, with token_to_id.at()
            raise _fail(h, "general.name", f"{name[:60]!r} makes llama.cpp treat the model as Phi-3, which needs "
                                           f"the token(s) {', '.join(lacking)} this vocabulary lacks")
    if token_type is not None:
        types = np.frombuffer(bytes(view[token_type.offset:token_type.offset + 4 * tokens.count]), dtype="<i4")
        bad = np.flatnonzero((types < 0) | (types >= len(TOKEN_TYPE_NAMES)))
        if bad.size:
            i = int(bad[0])
            raise CorruptModelError(f"token type {int(types[i])} of token {i} is not one llama.cpp knows (0-6: "
                                    f"{', '.join(TOKEN_TYPE_NAMES)})", path=h.path,
                                    field=f"tokenizer.ggml.token_type[{i}]", offset=token_type.offset + 4 * i)
        # llama.cpp reads a byte-type token as SPM's '<0xXX>' (text[3:5]; a shorter text throws);
        # byte-level BPE has none: its 256 byte tokens are normal ones
        bad = np.flatnonzero(types == TOKEN_TYPE_NAMES.index("byte"))
        if bad.size:
            i = int(bad[0])
            raise CorruptModelError(f"token {i} {data[starts[i]:ends[i]][:60]!r} has the type byte, which llama.cpp "
                                    f"reads as an SPM '<0xXX>' token; byte-level BPE tokens are normal", path=h.path,
                                    field=f"tokenizer.ggml.token_type[{i}]", offset=token_type.offset + 4 * i)
    if merges.count:
        _check_merges(h, view, keys, sorted_keys)


def _check_merges(h: GGUFHeader, view: memoryview, token_keys: np.ndarray, sorted_keys: np.ndarray) -> None:
    """Every merge is "A B" as llama.cpp splits it (at the first space after its first byte), A
    and B non-empty, and AB a token (HF tokenizers refuses a file where it is not; llama.cpp would
    emit byte tokens instead)."""
    field = "tokenizer.ggml.merges"
    m_offsets = h.string_offsets[field]
    base, starts, ends = _element_ranges(m_offsets)
    data = bytes(view[base:m_offsets[-1]])
    spaces = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x20)
    at = np.searchsorted(spaces, starts + 1)
    space = spaces[np.minimum(at, len(spaces) - 1)] if len(spaces) else np.zeros_like(starts)
    bad = np.flatnonzero((at >= len(spaces)) | (space >= ends - 1))
    if bad.size:
        i = int(bad[0])
        raise CorruptModelError(f"merge {i} {data[starts[i]:ends[i]][:60]!r} is not two tokens 'A B'",
                                path=h.path, field=f"{field}[{i}]", offset=m_offsets[i])
    joined = _joined_keys(data, starts, space, ends)
    # byte-level BPE vocabularies list the 256 bytes, then each merge's result in rank order (Qwen's
    # does): compared in place first; a lookup among all tokens only for the merges that differ
    n = min(len(joined), len(token_keys) - 256)
    differ = np.flatnonzero(joined[:n] != token_keys[256:256 + n]) if n > 0 else np.arange(0)
    rest = np.concatenate([differ, np.arange(max(n, 0), len(joined))])
    unknown = _unknown(sorted_keys, joined[rest]) if rest.size else None
    if unknown is not None:
        i, count = int(rest[unknown[0]]), unknown[1]
        text, joined_text = data[starts[i]:ends[i]], data[starts[i]:space[i]] + data[space[i] + 1:ends[i]]
        raise CorruptModelError(f"merge {i} {text[:60]!r} joins into {joined_text[:60]!r}, which is not "
                                f"a token ({count} such merges): llama.cpp would emit byte tokens instead",
                                path=h.path, field=f"{field}[{i}]", offset=m_offsets[i])


def check_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Validate ``path`` as a Qwen3 embedding GGUF that llama.cpp can load and run safely; its header.

    Raises :class:`CorruptModelError` (a :class:`ModelLoadError`) naming the field and byte offset
    of the first problem, or :class:`ModelLoadError` for a file that cannot be opened, is not a
    regular file, or is not a Qwen3 model. See the module docstring for what is checked and which
    llama.cpp assertion each check keeps the process from.
    """
    path = Path(path)
    with _mapped(path) as (view, size):
        h = _parse(_Reader(view, path), size)
        arch = _check_general(h)
        tokens, merges, token_type = _check_tokenizer_keys(h)
        dims = _check_hparams(h, arch)
        _check_qembed_keys(h, dims)
        _check_tensors(h, dims, tokens.count)
        _check_vocabulary(h, view, tokens, merges, token_type)
    return h


# -- integrity --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class IntegrityStatus:
    sealed: bool
    ok: bool | None          # None when the file carries no seal
    expected: str | None
    actual: str | None


def _seal_offset(h: GGUFHeader) -> int | None:
    value = h.get(keys.INTEGRITY)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != DIGEST_HEX:
        raise CorruptModelError(f"must be a {DIGEST_HEX}-character hex string", path=h.path, field=keys.INTEGRITY,
                                offset=h.value_offsets.get(keys.INTEGRITY))
    return h.value_offsets[keys.INTEGRITY]


def _digest(path: Path, seal_at: int, chunk: int = 8 << 20) -> str:
    """BLAKE2b-256 of the file with the seal's 64 bytes read as ASCII '0's."""
    h = hashlib.blake2b(digest_size=32)
    zeros = b"0" * DIGEST_HEX
    pos = 0
    with open_regular(path, buffering=0) as fh:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            lo, hi = max(seal_at, pos), min(seal_at + DIGEST_HEX, pos + n)
            if lo < hi:
                buf[lo - pos:hi - pos] = zeros[lo - seal_at:hi - seal_at]
            h.update(view[:n])
            pos += n
    return h.hexdigest()


def seal(path: str | os.PathLike[str]) -> str:
    """Write the integrity digest into a file whose header has the ``qembed.integrity.blake2b`` key."""
    path = Path(path)
    h = read_header(path)
    at = _seal_offset(h)
    if at is None:
        raise ModelLoadError(f"{path}: no {keys.INTEGRITY} key to seal")
    digest = _digest(path, at)
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(digest.encode("ascii"))
        fh.flush()
        os.fsync(fh.fileno())
    return digest


def verify_integrity(path: str | os.PathLike[str]) -> IntegrityStatus:
    """Recompute a sealed file's digest; ``ok`` is None for a file without a seal."""
    path = Path(path)
    h = read_header(path)
    at = _seal_offset(h)
    if at is None:
        return IntegrityStatus(False, None, None, None)
    expected = h.get(keys.INTEGRITY)
    actual = _digest(path, at)
    return IntegrityStatus(True, actual == expected, expected, actual)


def content_fingerprint(path: str | os.PathLike[str], header: GGUFHeader | None = None) -> str:
    """A BLAKE2b-256 of the file's content: its seal when sealed (no read), else computed (~1 s/GB).

    ``header``: the file's already-parsed header, if the caller has it. A sealed file that was
    modified afterwards keeps its old seal; ``verify`` detects that.
    """
    path = Path(path)
    h = header if header is not None else read_header(path)
    at = _seal_offset(h)
    sealed = h.get(keys.INTEGRITY) if at is not None else None
    if sealed and sealed != "0" * DIGEST_HEX:
        return sealed
    return _digest(path, at if at is not None else -DIGEST_HEX)


def require_integrity(path: str | os.PathLike[str]) -> None:
    """Raise :class:`IntegrityError` unless ``path`` is sealed and every byte matches its seal."""
    status = verify_integrity(path)
    if not status.sealed:
        raise IntegrityError(f"{path}: carries no {keys.INTEGRITY} seal (not written by qembed-gguf convert), so "
                             f"it cannot be verified; convert it again or load it without verify=True")
    if not status.ok:
        raise IntegrityError(f"{path}: content does not match its seal (expected {status.expected[:16]}…, "
                             f"got {status.actual[:16]}…): the file is corrupted or was modified")
