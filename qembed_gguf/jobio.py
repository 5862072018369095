"""The input records of offline embedding jobs (``qembed-gguf embed``), streamed (pure parsing).

Inputs: ``.txt`` (one text per line), ``.jsonl`` (one JSON object per line with a text field and an
optional ``id``), or standard input. Every problem names the line. The outputs (``.npy``, plus
``<out>.ids.json`` when ids were given, or ``<out>.spans.jsonl`` in chunk mode) are written by
:mod:`qembed_gguf.jobs` through :mod:`qembed_gguf.atomic`.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import InputError
from .validate import MAX_MARK_RUN, long_mark_run, lone_surrogate

__all__ = ["INPUT_FORMATS", "NO_ID", "iter_txt", "iter_jsonl", "iter_records", "input_format", "open_input", "is_regular_file",
           "ids_path", "spans_path"]


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
        if has_id:
            try:  # the id is written to .ids.json / .spans.jsonl as UTF-8: it must be valid Unicode text
                json.dumps(obj["id"], ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InputError(f"{source}: line {lineno}: the 'id' holds a lone surrogate (an escape such as "
                                 f"\\ud800 without its pair) at character {exc.start} of its JSON text") from None
        if with_id is None:
            with_id = has_id
        elif has_id != with_id:
            raise InputError(f"{source}: line {lineno} {'has' if has_id else 'lacks'} an 'id' unlike the lines before it")
        yield lineno, obj[field], obj["id"] if has_id else NO_ID


INPUT_FORMATS = ("auto", "txt", "jsonl")


def input_format(path: str, fmt: str) -> str:
    """The format of ``path`` (one of :data:`INPUT_FORMATS`; ``auto``: by its suffix)."""
    if fmt == "auto":
        return "jsonl" if str(path).endswith((".jsonl", ".ndjson")) else "txt"
    if fmt not in ("txt", "jsonl"):
        raise InputError(f"unknown input format {fmt!r}")
    return fmt


def iter_records(fh: IO[bytes], *, fmt: str, field: str, source: str) -> Iterator[tuple[int, str, Any]]:
    """Stream an input's records from a binary file object (``fmt`` already resolved); a text the
    Embedder would refuse for a run of combining marks (:func:`~qembed_gguf.validate.long_mark_run`)
    fails here, naming its line, before any model work."""
    records = iter_jsonl(fh, field=field, source=source) if fmt == "jsonl" else iter_txt(fh, source=source)
    for lineno, text, rid in records:
        run = long_mark_run(text)
        if run is not None:
            raise InputError(f"{source}: line {lineno}: the text holds a run of {run[1]} combining marks at character "
                             f"{run[0]} (at most {MAX_MARK_RUN} in a row)")
        yield lineno, text, rid


def is_regular_file(path: str) -> bool:
    """Whether ``path`` names a regular file (which can be read twice), not ``-``, a pipe or a device."""
    try:
        return path != "-" and stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def open_input(path: str, stdin: IO[bytes] | None = None) -> Iterator[tuple[IO[bytes], str]]:
    """A job's input opened for one streaming pass: (binary file, its name for messages).

    ``-`` is standard input (or ``stdin``); a FIFO or ``<(command)`` is read as the pipe it is.
    """
    if path == "-":
        yield (stdin or os.fdopen(0, "rb", closefd=False)), "<stdin>"
        return
    if Path(path).is_dir():
        raise InputError(f"{path}: is a folder, not an input file")
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot read input ({exc.strerror})") from None
    with fh:
        yield fh, path


def ids_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".npy") + ".ids.json")


def spans_path(out: Path) -> Path:
    """``OUT.spans.jsonl`` next to ``OUT.npy``: one JSON object per row of a chunk job's output."""
    return out.with_name(out.name.removesuffix(".npy") + ".spans.jsonl")
