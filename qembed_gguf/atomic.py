"""Files that appear whole or not at all: every output of qembed-gguf is written through here.

A file is written to a hidden temporary file in its target folder (``.NAME.XXXX.partial``),
flushed and fsync'ed, then renamed over the final name, and the folder is fsync'ed so the rename
survives a power loss. An exception or Ctrl-C on the way removes the temporary file: no partial
output, ever.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator

from .errors import OutputExistsError

__all__ = ["default_file_mode", "temporary_path", "atomic_path", "atomic_file", "fsync_dir"]


def default_file_mode() -> int:
    """The mode ``open()`` would give a new file under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def temporary_path(folder: Path, name: str, suffix: str = ".partial") -> Iterator[Path]:
    """A fresh hidden file ``folder/.NAME.XXXX{suffix}`` (mode as ``open()`` would make it), removed
    on exit whatever happens."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=suffix, dir=folder)
    os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; outputs are ordinary files
    os.close(fd)
    path = Path(tmp)
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (power loss), where the OS allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(final: Path, *, overwrite: bool = True) -> Iterator[Path]:
    """A temporary path next to ``final`` for a writer that wants a path (llama.cpp's quantizer,
    gguf-py); once the block succeeds it is fsync'ed and renamed to ``final``. ``overwrite=False``:
    an ``final`` that appeared meanwhile is kept and :class:`OutputExistsError` raised."""
    final = Path(final)
    with temporary_path(final.parent, final.name) as tmp:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if not overwrite and final.exists():
            raise OutputExistsError(f"output {final} appeared while it was being written; not overwriting it")
        os.replace(tmp, final)
    fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_file(final: Path) -> Iterator[IO[bytes]]:
    """A binary file object whose content becomes ``final`` once the block succeeds."""
    final = Path(final)
    with temporary_path(final.parent, final.name) as tmp:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    fsync_dir(final.parent)
