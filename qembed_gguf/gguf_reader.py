"""The GGUF header, read and structurally validated in pure Python (no model-specific rules).

A file reaches this parser before anything else reads it: a regular file (a FIFO, a device or a
socket is refused before it is read, since ``open`` would block or never end), magic, version (2
or 3), tensor and key/value counts bounded by what the file could hold, every string and array
length bounded by the bytes left, known value types, no nested arrays, ``general.alignment`` a u32
power of two from 8, tensor names unique and short enough for ggml, 1-4 positive dims whose element
count does not overflow, a known ggml type whose block divides the row, tensor data aligned, packed
in order (as gguf.cpp requires) and in bounds. Each failure is a :class:`CorruptModelError` naming
the field and its byte offset. The Qwen3 rules on top are :mod:`qembed_gguf.gguf_check`'s.
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import mmap
import os
import stat
import struct
from pathlib import Path
from typing import Any, Iterator

import gguf

from .errors import CorruptModelError, ModelLoadError

__all__ = ["GGUFHeader", "TensorSpan", "ArrayValue", "read_header", "parse_view", "open_regular", "mapped",
           "SCALAR_FORMATS", "SCALAR_STRUCTS", "TYPE_NAMES", "U32", "U64", "UINT16", "UINT32", "INT32", "FLOAT32",
           "BOOL", "STRING", "ARRAY", "INT32_MAX", "field_error"]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_COUNT = 1 << 24          # tensors, key/values and array elements: far above any real model
MAX_STRING = 64 << 20        # one string (a chat template is ~10 KB; a token < 1 KB)
MAX_NAME = 63                # ggml's GGML_MAX_NAME is 64 bytes including the terminating NUL
MAX_DIMS = 4
INT64_MAX = (1 << 63) - 1
INT32_MAX = (1 << 31) - 1

SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
SCALAR_STRUCTS = {t: struct.Struct(f) for t, f in SCALAR_FORMATS.items()}
UINT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY = 2, 4, 5, 6, 7, 8, 9
TYPE_NAMES = {t.value: t.name for t in gguf.GGUFValueType}
_TRACKED_STRINGS = frozenset({"tokenizer.ggml.tokens", "tokenizer.ggml.merges"})
U32 = struct.Struct("<I")
U64 = struct.Struct("<Q")


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
        (v,) = U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, field: str) -> int:
        self.need(8, field)
        (v,) = U64.unpack_from(self.buf, self.pos)
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
        if vtype in SCALAR_STRUCTS:
            st = SCALAR_STRUCTS[vtype]
            self.need(st.size, field)
            (v,) = st.unpack_from(self.buf, self.pos)
            if vtype == BOOL and self.buf[self.pos] > 1:
                raise self.fail(field, f"bool value {self.buf[self.pos]} is neither 0 nor 1")
            self.pos += st.size
            return v
        if vtype == STRING:
            return self.text(field)
        if vtype == ARRAY:
            start = self.pos
            etype = self.u32(field + " (array element type)")
            if etype == ARRAY:
                raise self.fail(field, "nested arrays are not allowed", start)
            if etype not in SCALAR_STRUCTS and etype != STRING:
                raise self.fail(field, f"unknown array element type {etype}", start)
            item = SCALAR_STRUCTS[etype].size if etype in SCALAR_STRUCTS else 8
            n = self.count(field + " (array length)", item)
            first = self.pos
            if etype == STRING:
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
        buf, pos, unpack = self.buf, self.pos, U64.unpack_from
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
            (length,) = U64.unpack_from(self.buf, pos)
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
def mapped(path: Path) -> Iterator[tuple[memoryview, int]]:
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
    with mapped(path) as (view, size):
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
        offsets[key] = r.pos + (8 if vtype == STRING else 0)
        metadata[key] = r.value(vtype, key)
        types[key] = vtype
    alignment = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if "general.alignment" in types and types["general.alignment"] != UINT32:  # gguf.cpp reads only a u32
        raise r.fail("general.alignment", f"has type {TYPE_NAMES.get(types['general.alignment'])}; GGUF "
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


def parse_view(view: memoryview, path: Path, size: int) -> GGUFHeader:
    """The header of the GGUF file whose bytes ``view`` holds (``size`` of them), validated."""
    return _parse(_Reader(view, path), size)


def field_error(h: GGUFHeader, key: str, problem: str) -> CorruptModelError:
    """The error for a bad value of ``key``, at its byte offset in the header."""
    return CorruptModelError(problem, path=h.path, field=key, offset=h.value_offsets.get(key))
