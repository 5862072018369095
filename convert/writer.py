"""Streaming, atomic GGUF writing.

gguf-py's :class:`gguf.GGUFWriter` encodes the header, key/values and tensor infos; tensor data is
then streamed a row chunk at a time straight into the file, so memory does not grow with the
model. Everything goes to a temporary file in the target folder that is renamed over the final
name only when complete: an error or Ctrl-C leaves no partial ``.gguf`` behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from pathlib import Path
from typing import Callable, Iterable, Iterator

import gguf
import numpy as np

from qembed_gguf.atomic import atomic_path
from qembed_gguf.errors import ConversionError, OutputExistsError
from qembed_gguf.layout import tensor_nbytes

__all__ = ["TensorOut", "atomic_output", "write_gguf"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TensorOut:
    """One tensor as it will be stored: GGUF name, HF-order shape, GGML type and byte size."""

    name: str
    shape: tuple[int, ...]
    qtype: gguf.GGMLQuantizationType

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.qtype, self.shape)


def check_output(final: Path, *, force: bool, what: str = "output", missing=ConversionError) -> None:
    """Refuse, before any work, an output file ``final`` that is a folder, that exists (unless
    ``force``: OutputExistsError), or whose folder does not exist (``missing``)."""
    final = Path(final)
    if final.is_dir():
        raise OutputExistsError(f"{what} {final} is a folder; give a file name ending in .gguf")
    if final.exists() and not force:
        raise OutputExistsError(f"{what} {final} already exists; pass --force (force=True) to overwrite it")
    if not final.resolve().parent.is_dir():
        raise missing(f"the folder of the {what} {final} does not exist")


@contextlib.contextmanager
def atomic_output(final: Path, *, force: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; on success fsync it and rename it to ``final``.

    Refuses (before any work) to replace an existing ``final`` unless ``force`` (:func:`check_output`).
    """
    final = Path(final)
    check_output(final, force=force)
    with atomic_path(final, overwrite=force) as tmp:
        yield tmp


def write_gguf(
    path: Path,
    tensors: list[TensorOut],
    add_metadata: Callable[[gguf.GGUFWriter], None],
    chunks: Callable[[TensorOut], Iterable[np.ndarray]],
    *,
    progress: Callable[[TensorOut], None] | None = None,
) -> None:
    """Write a GGUF file: metadata via ``add_metadata(writer)``, data via ``chunks(tensor)``.

    Each chunk is an array whose bytes are the next part of the tensor's stored data.
    """
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.QWEN3])
    try:
        add_metadata(writer)
        for t in tensors:
            writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.qtype)
        writer.write_header_to_file(path)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        fout = writer.fout[0]
        align = writer.data_alignment
        for t in tensors:
            fout.write(b"\0" * (-fout.tell() % align))
            written = 0
            for chunk in chunks(t):
                data = memoryview(np.ascontiguousarray(chunk)).cast("B")
                fout.write(data)
                written += data.nbytes
            if written != t.nbytes:
                raise ConversionError(f"tensor {t.name!r}: wrote {written} bytes, expected {t.nbytes}")
            fout.write(b"\0" * (-written % align))
            if progress is not None:
                progress(t)
        fout.flush()
    finally:
        writer.close()
