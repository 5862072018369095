"""Chunk jobs (``qembed-gguf embed --chunk-tokens N``): one output row per chunk of each text.

A chunk job is :func:`qembed_gguf.jobs.run_embed_job` with ``JobSettings(chunk_tokens=N,
overlap=K)``; what differs from a plain job is here. Each checkpoint of ``chunk_size`` texts is
split and embedded by one :meth:`Embedder.embed_chunks` call (memory stays bounded by the
checkpoint, and the decode batches do not depend on where an interrupted run stopped). Its rows
go to the job folder's ``chunk-K.npy`` as in a plain job; their spans, one JSON line per row, go
to ``chunk-K.spans.jsonl``, written (atomically) before the vectors. The vectors' presence marks
the checkpoint done, and only with exactly one span line per vector row: anything else is embedded
again. At the end ``OUT.spans.jsonl`` (those files in order) and ``OUT.npy`` are written to
temporary files and only then renamed, the ``.npy`` last.

A span line is ``{"id": ..., "index": i, "chunk": k, "start": s, "end": e, "n_tokens": n}``: ``id``
the record's id exactly as ``.ids.json`` would hold it (present only when the input has ids),
``index`` the text's 0-based position in the input, ``text[s:e]`` the chunk's text (character
offsets of the text as given); a text's chunks are consecutive lines, from ``s = 0`` to ``e =
len(text)``. No ``.ids.json`` is written: its rows would be texts, while the output's are chunks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Sequence

import numpy as np

from .errors import InputError
from .chunks import check_chunking

if TYPE_CHECKING:  # pragma: no cover
    from .embedder import Embedder
    from .jobs import JobSettings

__all__ = ["check_chunk_settings", "probe", "embed_checkpoint", "spans_part", "part_rows", "copy_spans"]


def check_chunk_settings(chunk_tokens: int | None, overlap: int) -> None:
    """A job's chunk settings, before its input is read: ``chunk_tokens`` None (a plain job, and
    then ``overlap`` 0) or an int >= 2, ``overlap`` in ``[0, max_overlap(chunk_tokens)]``; else
    :class:`InputError`. That ``chunk_tokens`` is at most the model's ``max_tokens`` is
    :func:`probe`'s check, once the model is loaded."""
    if chunk_tokens is None:
        if overlap:
            raise InputError(f"overlap={overlap!r} applies to chunk_tokens (a chunk job); a plain job has no chunks")
        return
    check_chunking(chunk_tokens, overlap, max_tokens=None)


def probe(e: "Embedder", settings: "JobSettings", instruction: str | None) -> None:
    """The chunk settings against the loaded model, embedding nothing: ``chunk_tokens`` at most
    ``max_tokens``, room for text after the query template, ``dim`` and ``batch_tokens`` valid."""
    e.embed_chunks([], chunk_tokens=settings.chunk_tokens, overlap=settings.overlap, dim=settings.dim,
                   query=instruction is not None, task=instruction, batch_tokens=settings.batch_tokens)


def embed_checkpoint(e: "Embedder", texts: Sequence[str], ids: Sequence[Any] | None, *, first: int,
                     settings: "JobSettings", instruction: str | None) -> tuple[np.ndarray, bytes]:
    """One checkpoint's chunk rows (float32, ``(chunks, dim)``) and their span lines (UTF-8 JSON
    lines, one per row). ``first``: the input position of ``texts[0]``; ``ids``: the records' ids,
    or None when the input has none."""
    chunks = e.embed_chunks(texts, chunk_tokens=settings.chunk_tokens, overlap=settings.overlap, dim=settings.dim,
                            query=instruction is not None, task=instruction, batch_tokens=settings.batch_tokens)
    if not chunks:
        return np.empty((0, settings.dim or e.dim), dtype=np.float32), b""
    lines = []
    for c in chunks:
        span = c.to_dict()
        span["index"] = first + c.index
        lines.append(json.dumps(span if ids is None else {"id": ids[c.index], **span}, ensure_ascii=False))
    return np.stack([c.vector for c in chunks]), ("\n".join(lines) + "\n").encode()


def spans_part(folder: Path, k: int) -> Path:
    """Checkpoint ``k``'s span lines in the job folder."""
    return folder / f"chunk-{k:06d}.spans.jsonl"


def part_rows(path: Path) -> int | None:
    """The span lines of a checkpoint's spans file (the rows its vectors must have); None if absent."""
    try:
        return path.read_bytes().count(b"\n")
    except OSError:
        return None


def copy_spans(parts: Sequence[Path], fh: IO[bytes]) -> None:
    """The checkpoints' span lines, in order, into ``fh`` (streamed, a checkpoint at a time)."""
    for part in parts:
        with open(part, "rb") as src:
            shutil.copyfileobj(src, fh)
