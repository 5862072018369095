"""Read a Hugging Face checkpoint folder: config.json and safetensors (single or sharded), no torch.

Safetensors files are validated before any tensor is touched (header length cap, JSON, dtype ×
shape = byte length, in-bounds, contiguous, non-overlapping offsets) and then read through a
memory map, a row chunk at a time: pages already converted are released with
``madvise(MADV_DONTNEED)`` so that resident memory stays bounded even for a 776 MB embedding table.
Pickle checkpoints (``.bin``/``.pt``/``.pth``/``.ckpt``) are refused: loading them runs code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from qembed_gguf.errors import CheckpointFormatError, UnsupportedModelError

__all__ = ["TensorRef", "SafetensorsFile", "Checkpoint", "read_json", "MAX_HEADER_BYTES"]

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors reference implementation's own cap
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# safetensors dtype → (numpy storage dtype, item size). BF16 is stored as raw uint16 bits.
_DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
}
# dtypes that are valid safetensors but that this converter cannot turn into a Qwen3 GGUF
_KNOWN_OTHER = {"F64": 8, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "U16": 2, "U32": 4, "U64": 8,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "F4": 1, "F6_E2M3": 1, "F6_E3M2": 1}


def read_json(path: Path, *, what: str) -> Any:
    """Parse a JSON file, turning every failure into a CheckpointFormatError with the byte offset."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointFormatError(f"{what} not found", path=path) from None
    except OSError as exc:
        raise CheckpointFormatError(f"{what} cannot be read: {exc.strerror}", path=path) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointFormatError(f"{what} is not UTF-8", path=path, offset=exc.start) from None
    except json.JSONDecodeError as exc:
        offset = len(exc.doc[:exc.pos].encode("utf-8"))
        raise CheckpointFormatError(f"{what} is not valid JSON ({exc.msg})", path=path, offset=offset) from None


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, dtype, shape and byte range inside the data section."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the start of the data section
    end: int

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)


class SafetensorsFile:
    """One validated safetensors file, read by memory map."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise CheckpointFormatError(f"cannot open safetensors file: {exc.strerror}", path=self.path) from None
        try:
            self.size = os.fstat(self._fh.fileno()).st_size
            self.tensors, self.data_start = self._parse_header()
            self._mm = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ) if self.size else None
        except BaseException:
            self._fh.close()
            raise

    # -- validation -------------------------------------------------------------------------
    def _fail(self, message: str, offset: int | None = None) -> CheckpointFormatError:
        return CheckpointFormatError(message, path=self.path, offset=offset)

    def _parse_header(self) -> tuple[dict[str, TensorRef], int]:
        if self.size < 8:
            raise self._fail(f"file is {self.size} bytes, shorter than the 8-byte header length", 0)
        n = int.from_bytes(self._fh.read(8), "little")
        if n > MAX_HEADER_BYTES:
            raise self._fail(f"header length {n} exceeds the {MAX_HEADER_BYTES}-byte cap", 0)
        if 8 + n > self.size:
            raise self._fail(f"header length {n} runs past the end of the {self.size}-byte file (truncated?)", 0)
        raw = self._fh.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise self._fail("header is not UTF-8", 8 + exc.start) from None
        except json.JSONDecodeError as exc:
            raise self._fail(f"header is not valid JSON ({exc.msg})", 8 + len(exc.doc[:exc.pos].encode())) from None
        if not isinstance(header, dict):
            raise self._fail("header is not a JSON object", 8)
        data_start, data_size = 8 + n, self.size - 8 - n
        tensors: dict[str, TensorRef] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                if not isinstance(entry, dict):
                    raise self._fail("__metadata__ is not an object", 8)
                continue
            tensors[name] = self._parse_entry(name, entry, data_size)
        # offsets: in bounds (checked per entry), non-overlapping and contiguous from 0
        position = 0
        for ref in sorted(tensors.values(), key=lambda r: (r.begin, r.end)):
            if ref.begin < position:
                raise self._fail(f"tensor {ref.name!r} overlaps the previous tensor (begins at {ref.begin}, "
                                 f"previous ends at {position})", data_start + ref.begin)
            if ref.begin > position:
                raise self._fail(f"gap of {ref.begin - position} bytes before tensor {ref.name!r}", data_start + position)
            position = ref.end
        if position != data_size:
            raise self._fail(f"tensors cover {position} bytes but the data section has {data_size} "
                             f"(truncated or trailing bytes)", data_start + position)
        return tensors, data_start

    def _parse_entry(self, name: str, entry: Any, data_size: int) -> TensorRef:
        where = f"tensor {name!r}"
        if not isinstance(entry, dict):
            raise self._fail(f"{where}: header entry is not an object", 8)
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in _DTYPES and dtype not in _KNOWN_OTHER:
            raise self._fail(f"{where}: unknown dtype {dtype!r}", 8)
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise self._fail(f"{where}: shape {shape!r} is not a list of non-negative integers", 8)
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise self._fail(f"{where}: data_offsets {offsets!r} is not a pair of non-negative integers", 8)
        begin, end = offsets
        if begin > end:
            raise self._fail(f"{where}: data_offsets {offsets} run backwards", 8)
        if end > data_size:
            raise self._fail(f"{where}: data_offsets {offsets} run past the {data_size}-byte data section", 8)
        itemsize = _DTYPES[dtype][1] if dtype in _DTYPES else _KNOWN_OTHER[dtype]
        expected = math.prod(shape) * itemsize
        if expected != end - begin:
            raise self._fail(f"{where}: dtype {dtype} × shape {shape} is {expected} bytes but data_offsets "
                             f"span {end - begin}", 8)
        return TensorRef(name, self.path, dtype, tuple(shape), begin, end)

    # -- reading ----------------------------------------------------------------------------
    def iter_rows_f32(self, ref: TensorRef, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        """Yield the tensor as float32 chunks of whole rows (2-D: ``(rows, cols)``; 1-D: one chunk).

        At most ~``max_bytes`` of float32 are produced per chunk; the source pages of each chunk
        are dropped from memory after it is converted.
        """
        if ref.dtype not in _DTYPES:
            raise UnsupportedModelError(
                f"tensor {ref.name!r} has dtype {ref.dtype}; qembed-gguf converts F32, F16 and BF16 checkpoints "
                f"({ref.path})")
        storage, itemsize = _DTYPES[ref.dtype]
        cols = ref.shape[-1] if ref.shape else 1
        rows = ref.n_elements // cols if cols else 0
        step = max(1, max_bytes // (4 * max(cols, 1)))
        for start in range(0, max(rows, 1), step):
            n = min(step, rows - start)
            offset = self.data_start + ref.begin + start * cols * itemsize
            raw = np.frombuffer(self._mm, dtype=storage, count=n * cols, offset=offset) if n * cols else np.empty(0, storage)
            if ref.dtype == "BF16":
                out = (raw.astype(np.uint32) << np.uint32(16)).view(np.float32)
            else:
                out = raw.astype(np.float32)
            del raw
            self._release(offset, n * cols * itemsize)
            yield out.reshape((n, cols) if len(ref.shape) > 1 else (-1,))

    def read_rows_f32(self, ref: TensorRef, rows: tuple[int, ...]) -> np.ndarray:
        """Rows ``rows`` (in that order) of a 2-D tensor as one float32 array ``(len(rows), cols)``.

        Only those rows' bytes are read (a reranker's yes/no head is two rows of a 151,669-row
        lm_head), and their pages are dropped afterwards.
        """
        if ref.dtype not in _DTYPES:
            raise UnsupportedModelError(
                f"tensor {ref.name!r} has dtype {ref.dtype}; qembed-gguf converts F32, F16 and BF16 checkpoints "
                f"({ref.path})")
        if len(ref.shape) != 2:
            raise CheckpointFormatError(f"tensor {ref.name!r} has shape {list(ref.shape)}; rows need a 2-D tensor",
                                        path=ref.path)
        storage, itemsize = _DTYPES[ref.dtype]
        n_rows, cols = ref.shape
        out = np.empty((len(rows), cols), dtype=np.float32)
        for i, row in enumerate(rows):
            if not 0 <= row < n_rows:
                raise CheckpointFormatError(f"tensor {ref.name!r} has {n_rows} rows; row {row} was asked for",
                                            path=ref.path)
            offset = self.data_start + ref.begin + row * cols * itemsize
            raw = np.frombuffer(self._mm, dtype=storage, count=cols, offset=offset)
            out[i] = (raw.astype(np.uint32) << np.uint32(16)).view(np.float32) if ref.dtype == "BF16" else raw
            del raw
            self._release(offset, cols * itemsize)
        return out

    def _release(self, offset: int, length: int) -> None:
        if self._mm is None or length == 0 or not hasattr(mmap, "MADV_DONTNEED"):
            return
        page = mmap.PAGESIZE
        start = offset - offset % page
        self._mm.madvise(mmap.MADV_DONTNEED, start, min(offset + length - start, self.size - start))

    def close(self) -> None:
        if getattr(self, "_mm", None) is not None:
            self._mm.close()
            self._mm = None
        self._fh.close()


class Checkpoint:
    """A checkpoint folder: config.json plus every tensor of its safetensors file(s)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CheckpointFormatError("checkpoint folder does not exist or is not a folder", path=self.folder)
        self.files: list[SafetensorsFile] = []
        try:
            self.config = read_json(self.folder / "config.json", what="config.json")
            if not isinstance(self.config, dict):
                raise CheckpointFormatError("config.json is not a JSON object", path=self.folder / "config.json")
            self.tensors = self._open_tensors()
        except BaseException:
            self.close()
            raise

    def _weight_files(self) -> list[Path]:
        index_path = self.folder / "model.safetensors.index.json"
        if index_path.is_file():
            index = read_json(index_path, what="safetensors index")
            weight_map = index.get("weight_map") if isinstance(index, dict) else None
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise CheckpointFormatError("index has no valid 'weight_map' object", path=index_path)
            files = []
            for fname in dict.fromkeys(weight_map.values()):
                path = (self.folder / fname).resolve()
                if path.parent != self.folder.resolve() or not fname.endswith(".safetensors"):
                    raise CheckpointFormatError(f"index names {fname!r}, which is not a safetensors file in the folder",
                                                path=index_path)
                if not path.is_file():
                    raise CheckpointFormatError(f"shard {fname!r} named by the index is missing", path=index_path)
                files.append(path)
            self._index = (index_path, weight_map)
            return files
        self._index = None
        files = sorted(self.folder.glob("*.safetensors"))
        if files:
            return files
        pickles = sorted(p.name for p in self.folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UnsupportedModelError(
                f"{self.folder} holds only pickle checkpoint files ({', '.join(pickles)}); qembed-gguf refuses them "
                f"because unpickling can execute arbitrary code. Use the repository's .safetensors files, or convert "
                f"the pickle to safetensors in a sandbox you trust.")
        raise CheckpointFormatError("no model.safetensors (or sharded *.safetensors with an index) found",
                                    path=self.folder)

    def _open_tensors(self) -> dict[str, TensorRef]:
        tensors: dict[str, TensorRef] = {}
        for path in self._weight_files():
            st = SafetensorsFile(path)
            self.files.append(st)
            for name, ref in st.tensors.items():
                if name in tensors:
                    raise CheckpointFormatError(f"tensor {name!r} appears in both {tensors[name].path.name} "
                                                f"and {path.name}", path=path)
                tensors[name] = ref
        if self._index is not None:
            index_path, weight_map = self._index
            for name, fname in weight_map.items():
                ref = tensors.get(name)
                if ref is None or ref.path.name != Path(fname).name:
                    raise CheckpointFormatError(f"index maps tensor {name!r} to {fname}, which does not hold it",
                                                path=index_path)
        return tensors

    def file_of(self, ref: TensorRef) -> SafetensorsFile:
        return next(f for f in self.files if f.path == ref.path)

    def iter_rows_f32(self, name: str, max_bytes: int = 64 << 20) -> Iterator[np.ndarray]:
        ref = self.tensors[name]
        return self.file_of(ref).iter_rows_f32(ref, max_bytes)

    def read_rows_f32(self, name: str, rows: tuple[int, ...]) -> np.ndarray:
        ref = self.tensors[name]
        return self.file_of(ref).read_rows_f32(ref, rows)

    @property
    def dtypes(self) -> set[str]:
        return {ref.dtype for ref in self.tensors.values()}

    def close(self) -> None:
        for st in self.files:
            st.close()
        self.files = []

    def __enter__(self) -> "Checkpoint":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
