"""Strict, header-only validation of a GGUF file before llama.cpp parses it, and its integrity seal.

llama.cpp's GGUF parser has had heap overflows on crafted files (see ../shared/QWEN3_EMBEDDING.md),
so no file reaches it before :func:`check_gguf` has walked the whole header in pure Python:

* magic, version (2 or 3), tensor and key/value counts bounded by what the file could hold;
* every string and array length bounded by the bytes left; known value types; no nested arrays;
* ``general.alignment`` a power of two; tensor names unique and short enough for ggml; 1-4 dims,
  each positive, element count without overflow; a known ggml type whose block divides the row;
* tensor data offsets aligned, in bounds of the file and non-overlapping;
* the Qwen3 keys llama.cpp needs, with sane values, a vocabulary whose size matches the token
  embedding, token-id keys inside the vocabulary, and exactly the tensors, with exactly the shapes,
  that those hyperparameters imply.

Every failure is a :class:`CorruptModelError` naming the field and its byte offset. Only the
header is read (through a memory map): about 30 ms for a 151,669-token vocabulary, whatever the
file size.

Integrity: files written by the converter carry ``qembed.integrity.blake2b``, the BLAKE2b-256 of
the whole file with the 64 hex digits of that value read as ``0``; :func:`verify_integrity`
recomputes it (streaming) so any changed byte — header or tensor data — is detected. It guards
against corruption (a truncated or bit-flipped download that still parses), not against an
attacker, who could recompute the seal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import gguf

from . import keys
from .errors import CorruptModelError, IntegrityError, ModelLoadError

__all__ = ["GGUFHeader", "TensorSpan", "check_gguf", "read_header", "seal", "verify_integrity", "IntegrityStatus",
           "require_integrity", "content_fingerprint"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_COUNT = 1 << 24          # tensors, key/values and array elements: far above any real model
MAX_STRING = 64 << 20        # one string (a chat template is ~10 KB; a token < 1 KB)
MAX_NAME = 63                # ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL
MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1
DIGEST_HEX = 64

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_SCALAR_STRUCTS = {t: struct.Struct(f) for t, f in _SCALAR.items()}
_STRING, _ARRAY = 8, 9
_TYPE_NAMES = {t.value: t.name for t in gguf.GGUFValueType}
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

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)


class _Reader:
    def __init__(self, buf, path: Path):
        self.buf, self.path, self.size, self.pos = buf, path, len(buf), 0

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
            if vtype == 7 and self.buf[self.pos] > 1:
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
                self._skip_strings(n, field)
            else:
                self.pos += n * item  # bounded by count()
            return ArrayValue(etype, n, first)
        raise self.fail(field, f"unknown value type {vtype}")

    def _skip_strings(self, n: int, field: str) -> None:
        # the hot loop of a header (a 151,669-token vocabulary and as many merges): no checks inside;
        # a length running past the end makes the next unpack fail or the final position too big,
        # and then the slow walk below finds which element it was
        buf, pos, unpack = self.buf, self.pos, _U64.unpack_from
        try:
            for _ in range(n):
                pos += 8 + unpack(buf, pos)[0]
        except (struct.error, OverflowError):
            pos = self.size + 1
        if pos > self.size:
            self._locate_bad_string(n, field)
        self.pos = pos

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


def read_header(path: str | os.PathLike[str]) -> GGUFHeader:
    """Parse and structurally validate a GGUF header (no model-specific checks)."""
    path = Path(path)
    try:
        fh = open(path, "rb")
    except IsADirectoryError:
        raise ModelLoadError(f"{path} is a folder, not a GGUF file") from None
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: no such file") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot open ({exc.strerror})") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        if size < 24:
            raise CorruptModelError(f"file of {size} bytes is too short to be a GGUF file", path=path,
                                    field="header", offset=0)
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return _parse(_Reader(view, path), size)
            finally:
                view.release()


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
    alignment = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or isinstance(alignment, bool) or alignment < 1 \
            or alignment & (alignment - 1) or alignment > 1 << 20:
        raise r.fail("general.alignment", f"{alignment!r} is not a power of two up to 1 MiB",
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
    return GGUFHeader(r.path, size, version, alignment, data_offset, metadata, offsets, tuple(tensors))


# -- the Qwen3 model checks -------------------------------------------------------------------------------
# ggml types llama.cpp computes Qwen3 weight matrices with on every backend (the removed
# interleaved Q4_0_x_x types, Q8_K, integer and test types are not weights a model file may hold)
MATRIX_TYPES = frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 29, 30})
NORM_TYPES = frozenset({0})  # every converter stores norm weights as F32; llama.cpp's graph needs it

_TOKEN_ID_KEYS = ("bos", "eos", "unknown", "seperator", "padding", "mask", "eot", "eom", "cls")


def _int_key(h: GGUFHeader, key: str, *, lo: int = 1, hi: int = 1 << 20, required: bool = True) -> int | None:
    v = h.get(key)
    if v is None and not required:
        return None
    if v is None:
        raise CorruptModelError("required key is missing", path=h.path, field=key, offset=None)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise CorruptModelError(f"value {v!r} is not an integer in [{lo}, {hi}]", path=h.path, field=key,
                                offset=h.value_offsets.get(key))
    return v


def _expected_tensors(h: GGUFHeader, arch: str, n_vocab: int) -> dict[str, tuple[int, ...]]:
    layers = _int_key(h, f"{arch}.block_count", hi=4096)
    n_embd = _int_key(h, f"{arch}.embedding_length")
    n_ff = _int_key(h, f"{arch}.feed_forward_length")
    n_head = _int_key(h, f"{arch}.attention.head_count", hi=4096)
    n_kv = _int_key(h, f"{arch}.attention.head_count_kv", hi=4096, required=False) or n_head
    _int_key(h, f"{arch}.context_length", hi=1 << 24)
    head_k = _int_key(h, f"{arch}.attention.key_length", hi=1 << 16, required=False) or n_embd // n_head
    head_v = _int_key(h, f"{arch}.attention.value_length", hi=1 << 16, required=False) or head_k
    if n_head % n_kv:
        raise CorruptModelError(f"head_count {n_head} is not a multiple of head_count_kv {n_kv}", path=h.path,
                                field=f"{arch}.attention.head_count_kv", offset=h.value_offsets.get(
                                    f"{arch}.attention.head_count_kv"))
    want = {"token_embd.weight": (n_embd, n_vocab), "output_norm.weight": (n_embd,)}
    for i in range(layers):
        b = f"blk.{i}."
        want.update({
            b + "attn_norm.weight": (n_embd,), b + "ffn_norm.weight": (n_embd,),
            b + "attn_q.weight": (n_embd, n_head * head_k), b + "attn_k.weight": (n_embd, n_kv * head_k),
            b + "attn_v.weight": (n_embd, n_kv * head_v), b + "attn_output.weight": (n_head * head_v, n_embd),
            b + "attn_q_norm.weight": (head_k,), b + "attn_k_norm.weight": (head_k,),
            b + "ffn_gate.weight": (n_embd, n_ff), b + "ffn_up.weight": (n_embd, n_ff),
            b + "ffn_down.weight": (n_ff, n_embd),
        })
    return want


def check_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Validate ``path`` as a Qwen3 embedding GGUF that llama.cpp can load safely; its header.

    Raises :class:`CorruptModelError` (a :class:`ModelLoadError`) naming the field and byte offset
    of the first problem, or :class:`ModelLoadError` for a file that cannot be opened or a model
    that is not Qwen3.
    """
    h = read_header(path)
    arch = h.get("general.architecture")
    if not isinstance(arch, str):
        raise CorruptModelError("required string key is missing", path=h.path, field="general.architecture",
                                offset=h.value_offsets.get("general.architecture"))
    if arch != "qwen3":
        raise ModelLoadError(f"{h.path}: architecture {arch!r} is not a Qwen3 embedding model "
                             f"(general.architecture at byte offset {h.value_offsets['general.architecture']})")
    model = h.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise CorruptModelError(f"tokenizer model {model!r} is not the byte-level BPE ('gpt2') of Qwen3",
                                path=h.path, field="tokenizer.ggml.model",
                                offset=h.value_offsets.get("tokenizer.ggml.model"))
    tokens = h.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, ArrayValue) or tokens.type != _STRING or tokens.count < 1:
        raise CorruptModelError("must be a non-empty array of strings", path=h.path, field="tokenizer.ggml.tokens",
                                offset=h.value_offsets.get("tokenizer.ggml.tokens"))
    n_vocab = tokens.count
    merges = h.get("tokenizer.ggml.merges")
    if not isinstance(merges, ArrayValue) or merges.type != _STRING:
        raise CorruptModelError("must be an array of strings (BPE merges)", path=h.path,
                                field="tokenizer.ggml.merges", offset=h.value_offsets.get("tokenizer.ggml.merges"))
    for key in ("tokenizer.ggml.token_type", "tokenizer.ggml.scores"):
        arr = h.get(key)
        if arr is not None and (not isinstance(arr, ArrayValue) or arr.count != n_vocab):
            raise CorruptModelError(f"has {getattr(arr, 'count', arr)!r} entries for {n_vocab} tokens", path=h.path,
                                    field=key, offset=h.value_offsets.get(key))
    for name in _TOKEN_ID_KEYS:
        _int_key(h, f"tokenizer.ggml.{name}_token_id", lo=0, hi=n_vocab - 1, required=False)
    want = _expected_tensors(h, arch, n_vocab)
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
    with open(path, "rb", buffering=0) as fh:
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
