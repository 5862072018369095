"""Input and output files of offline embedding jobs (``qembed-gguf embed``).

Inputs: ``.txt`` (one text per line), ``.jsonl`` (one JSON object per line with a text field and an
optional ``id``), or standard input. Every problem names the line. Outputs: ``.npy`` (row i =
input i) plus ``<out>.ids.json`` when ids were given, each written to a temporary file and renamed,
so a failed or interrupted job never leaves a half-written output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import numpy as np

from .convert.writer import default_file_mode
from .errors import InputError
from .validate import lone_surrogate

__all__ = ["JobInput", "NO_ID", "iter_txt", "iter_jsonl", "iter_records", "input_format", "parse_txt", "parse_jsonl",
           "atomic_file", "write_npy_atomic", "write_json_atomic", "ids_path"]


@dataclasses.dataclass(frozen=True)
class JobInput:
    texts: list[str]
    ids: list[Any] | None


def _decode(raw: bytes, lineno: int, source: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{source}: line {lineno} is not valid UTF-8 (byte {exc.start} of the line)") from None


NO_ID = object()


def iter_txt(lines: Iterable[bytes], *, source: str = "<input>") -> Iterator[tuple[int, str, Any]]:
    """(line number, text, NO_ID) per line; ``lines`` as a binary file yields them (newline kept)."""
    for lineno, raw in enumerate(lines, 1):
        yield lineno, _decode(raw.removesuffix(b"\n").removesuffix(b"\r"), lineno, source), NO_ID


def iter_jsonl(lines: Iterable[bytes], *, field: str = "text", source: str = "<input>") -> Iterator[tuple[int, str, Any]]:
    """(line number, text, id or NO_ID) per non-blank line; ids must be on all lines or none."""
    with_id = None
    for lineno, raw in enumerate(lines, 1):
        line = _decode(raw, lineno, source).strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{source}: line {lineno} is not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{source}: line {lineno} is a JSON {type(obj).__name__}, not an object")
        if field not in obj:
            raise InputError(f"{source}: line {lineno} has no {field!r} field (use --field to name another)")
        if not isinstance(obj[field], str):
            raise InputError(f"{source}: line {lineno}: {field!r} is {type(obj[field]).__name__}, not a string")
        bad = lone_surrogate(obj[field])
        if bad is not None:
            raise InputError(f"{source}: line {lineno}: {field!r} holds a lone surrogate ({obj[field][bad]!r}, an "
                             f"escape such as \\ud800 without its pair) at character {bad}: not valid Unicode text")
        has_id = "id" in obj
        if with_id is None:
            with_id = has_id
        elif has_id != with_id:
            raise InputError(f"{source}: line {lineno} {'has' if has_id else 'lacks'} an 'id' unlike the lines before it")
        yield lineno, obj[field], obj["id"] if has_id else NO_ID


def _collect(records: Iterable[tuple[int, str, Any]]) -> JobInput:
    texts, ids = [], []
    for _, text, id_ in records:
        texts.append(text)
        ids.append(id_)
    return JobInput(texts, ids if ids and ids[0] is not NO_ID else None)


def parse_txt(data: bytes, *, source: str = "<input>") -> JobInput:
    """One text per line (``\\n`` or ``\\r\\n``); empty lines are empty texts; no final empty line."""
    return _collect(iter_txt(io.BytesIO(data), source=source))


def parse_jsonl(data: bytes, *, field: str = "text", source: str = "<input>") -> JobInput:
    """One JSON object per line with a string ``field`` and an optional ``id``; blank lines skipped."""
    return _collect(iter_jsonl(io.BytesIO(data), field=field, source=source))


def input_format(path: str, fmt: str) -> str:
    if fmt == "auto":
        return "jsonl" if str(path).endswith((".jsonl", ".ndjson")) else "txt"
    if fmt not in ("txt", "jsonl"):
        raise InputError(f"unknown input format {fmt!r}")
    return fmt


def iter_records(fh: IO[bytes], *, fmt: str, field: str, source: str) -> Iterator[tuple[int, str, Any]]:
    """Stream an input's records from a binary file object (``fmt`` already resolved)."""
    return iter_jsonl(fh, field=field, source=source) if fmt == "jsonl" else iter_txt(fh, source=source)


def ids_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".npy") + ".ids.json")


@contextlib.contextmanager
def atomic_file(path: Path):
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; outputs are ordinary files
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (power loss), where the OS allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_npy_atomic(path: Path, array: np.ndarray) -> None:
    with atomic_file(path) as fh:
        np.save(fh, array, allow_pickle=False)


def write_json_atomic(path: Path, obj: Any) -> None:
    with atomic_file(path) as fh:
        fh.write(json.dumps(obj, ensure_ascii=False).encode("utf-8"))
