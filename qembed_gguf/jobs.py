"""Resumable, streaming embedding jobs: what ``qembed-gguf embed`` runs.

A job reads its input twice, streaming, never holding all texts: a first pass validates every line
(a bad line fails before any model is loaded) and hashes the bytes; the second embeds the records
``chunk_size`` at a time. Each chunk's float32 vectors are written, atomically and fsync'ed, into a
job folder next to the output (``.OUT.npy.job/``) together with a manifest naming the input's
SHA-256, the model file and every setting that changes the numbers. After a kill -9 or a power
loss, running the same command again finds the folder, checks that nothing changed, skips the
finished chunks and goes on; a changed input or setting is refused (``restart=True`` discards the
old work instead). Chunk boundaries, and so the decode batches, do not depend on where a run
stopped, so a resumed job's output is bit-for-bit the uninterrupted one's. Finally the chunks are
quantized (int8/uint8 buckets from all rows, as in one pass) and streamed into the ``.npy`` (and
``.ids.json``), both written to temporary files and then renamed, the ``.npy`` last; then the job
folder is removed.

With ``JobSettings(chunk_tokens=N)`` the job writes one row per chunk of each text instead, and
``OUT.spans.jsonl`` in place of ``.ids.json`` (:mod:`qembed_gguf.chunkjob`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import numpy as np

from .errors import InputError, OutputExistsError
from .atomic import atomic_file, fsync_dir, temporary_path
from .chunkjob import check_chunk_settings, copy_spans, embed_checkpoint, part_rows, probe, spans_part
from .jobio import NO_ID, ids_path, input_format, is_regular_file, iter_records, open_input, spans_path

__all__ = ["JobSettings", "JobResult", "run_embed_job", "job_dir"]

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2  # 2: the long-input policy (long_inputs, chunk_overlap) and chunk jobs
DEFAULT_CHUNK = 2048


@dataclasses.dataclass(frozen=True)
class JobSettings:
    """Everything that changes the output's numbers (and so must match when a job resumes)."""

    fmt: str = "auto"
    field: str = "text"
    query: bool = False               # embed as queries: with the instruction
    task: str | None = None           # the query instruction (default: the model's)
    dim: int | None = None
    precision: str = "float32"
    batch_tokens: int | None = None
    chunk_size: int = DEFAULT_CHUNK    # texts per checkpoint
    chunk_tokens: int | None = None    # a chunk job: one row per chunk of at most this many tokens
    overlap: int = 0                   # chunk job: tokens consecutive chunks of a text share


@dataclasses.dataclass(frozen=True)
class JobResult:
    n_texts: int              # texts of the input (rows of the output, except in a chunk job)
    n_tokens: int             # tokens the model decoded in this run (resumed chunks, repeats and cache hits excluded)
    dim: int
    seconds: float            # embedding time of this run
    resumed_chunks: int       # chunks an interrupted run had already done
    output: Path
    n_embedded: int = -1      # texts embedded by this run (n_texts minus the resumed chunks' texts)
    n_rows: int = -1          # rows of the output: n_texts, or in a chunk job the chunks

    @property
    def texts_per_second(self) -> float:
        """This run's rate: texts it embedded (not the resumed ones) per second."""
        return self.n_embedded / self.seconds if self.seconds > 0 else 0.0


def job_dir(out: Path) -> Path:
    return out.with_name(f".{out.name}.job")


SPOOL_CHUNK = 1 << 20


@contextlib.contextmanager
def _spooled(stdin: IO[bytes], folder: Path, name: str) -> Iterator[Path]:
    """Standard input copied, 1 MiB at a time, into a hidden file of ``folder`` (removed on exit):
    a pipe cannot be read twice, and holding it in memory would not scale with the input."""
    with temporary_path(folder, name, ".stdin.partial") as copy:
        with open(copy, "wb") as fh:
            shutil.copyfileobj(stdin, fh, SPOOL_CHUNK)
        yield copy


def _open_input(path: str, stdin: IO[bytes] | None, spool: contextlib.ExitStack,
                out: Path) -> tuple[Callable[[], IO[bytes]], str]:
    """An opener of the input for each of the job's two passes, and its name for messages. A
    regular file is opened twice; standard input, a FIFO or ``<(command)`` is spooled first."""
    if is_regular_file(path):
        with open_input(path):  # readable: an error now, not after the model has loaded
            pass
        return (lambda: open(path, "rb")), path
    fh, source = spool.enter_context(open_input(path, stdin))
    copy = spool.enter_context(_spooled(fh, out.parent, out.name))
    return (lambda: open(copy, "rb")), source


class _HashingReader:
    """Iterates lines of a binary file while hashing every byte read."""

    def __init__(self, fh: IO[bytes]):
        self.fh, self.sha, self.size = fh, hashlib.sha256(), 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self.fh:
            self.sha.update(line)
            self.size += len(line)
            yield line


def _scan(opener, fmt: str, field: str, source: str) -> tuple[int, bool, str, int]:
    """Validate every record; (count, has ids, sha256, bytes)."""
    n, has_ids = 0, False
    with opener() as fh:
        reader = _HashingReader(fh)
        for _, _, id_ in iter_records(reader, fmt=fmt, field=field, source=source):
            n += 1
            has_ids = id_ is not NO_ID
    return n, has_ids, reader.sha.hexdigest(), reader.size


def _model_fingerprint(path: Path, seal: str | None) -> dict[str, Any]:
    st = path.stat()
    return {"file": path.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "seal": seal}


def _check_manifest(old: dict, new: dict, folder: Path) -> None:
    def differs(what: str, a, b) -> InputError:
        return InputError(f"an interrupted job in {folder} was started with a different {what} ({a!r}, now {b!r}); "
                          f"its work cannot be mixed with this run: rerun with --restart to discard it")

    if old.get("version") != new["version"]:
        raise differs("job format version", old.get("version"), new["version"])
    if old["input"]["sha256"] != new["input"]["sha256"]:
        raise InputError(f"the input changed since the interrupted job in {folder} started (SHA-256 "
                         f"{old['input']['sha256'][:12]}…, now {new['input']['sha256'][:12]}…); its work cannot be "
                         f"mixed with this input: rerun with --restart to discard it")
    if old["model"] != new["model"]:
        raise differs("model file", old["model"], new["model"])
    for key, value in new["settings"].items():
        if old["settings"].get(key) != value:
            raise differs(f"setting {key}", old["settings"].get(key), value)


FAULT_ENV = "QEMBED_JOB_FAULT"


def _fault_point(k: int, stage: str) -> None:
    """The tests' kill -9 at a chosen point: ``QEMBED_JOB_FAULT="K:STAGE"`` makes the process
    SIGKILL itself at chunk K's ``before-vectors`` (ids or spans written, vectors not) or
    ``after-vectors`` point, so a resumed run can be checked against every interruption point
    deterministically.
    Unset (always, outside the tests) it costs one dict lookup per chunk."""
    fault = os.environ.get(FAULT_ENV)
    if fault and fault == f"{k}:{stage}":
        os.kill(os.getpid(), signal.SIGKILL)


def _chunk_path(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:06d}.npy"


def _ids_part(folder: Path, k: int) -> Path:
    return folder / f"chunk-{k:06d}.ids.json"


def _chunk_ok(path: Path, rows: int | None, dim: int) -> bool:
    if rows is None:  # a chunk job's checkpoint without its spans
        return False
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    return arr.shape == (rows, dim) and arr.dtype == np.float32


def run_embed_job(embedder, input_path: str, out: Path, settings: JobSettings, *, force: bool = False,
                  restart: bool = False, stdin: IO[bytes] | None = None,
                  progress: Callable[[int], None] | None = None) -> JobResult:
    """Embed every record of ``input_path`` into ``out`` (.npy), resuming an interrupted run.

    ``embedder`` is an open :class:`~qembed_gguf.Embedder` or a zero-argument callable returning
    one (called only after the input was validated, so a bad line costs no model load). With
    ``settings.chunk_tokens`` the rows are the texts' chunks and ``OUT.spans.jsonl`` says which
    (:mod:`qembed_gguf.chunkjob`); otherwise row i is input i, and ``OUT.ids.json`` holds the ids.
    """
    out = Path(out)
    if settings.chunk_size < 1:
        raise InputError(f"chunk_size must be positive, got {settings.chunk_size}")
    check_chunk_settings(settings.chunk_tokens, settings.overlap)
    side = spans_path(out) if settings.chunk_tokens is not None else ids_path(out)
    # an existing output is refused, unless this job's own folder says a run of it was interrupted (perhaps
    # while its outputs were being renamed into place): the same command then resumes it
    if not force and not (job_dir(out) / "manifest.json").is_file() and (out.exists() or side.exists()):
        raise OutputExistsError(f"{out} (or {side.name}) exists; pass --force to overwrite")
    fmt = input_format(input_path, settings.fmt)
    with contextlib.ExitStack() as spool:
        opener, source = _open_input(input_path, stdin, spool, out)
        return _run(embedder, opener, source, fmt, out, settings, restart=restart, progress=progress)


def _run(embedder, opener: Callable[[], IO[bytes]], source: str, fmt: str, out: Path, settings: JobSettings, *,
         restart: bool, progress: Callable[[int], None] | None) -> JobResult:
    from .postprocess import quantize_embeddings

    folder = job_dir(out)
    chunked = settings.chunk_tokens is not None
    n, has_ids, sha, size = _scan(opener, fmt, settings.field, source)
    if settings.precision in ("int8", "uint8") and n < 2:
        raise InputError(f"precision {settings.precision} computes its buckets from the inputs: it needs at least "
                         f"2 texts, got {n}")

    owns = callable(embedder) and not hasattr(embedder, "embed")
    e = embedder() if owns else embedder
    try:
        from .keys import INTEGRITY

        seal = e.info.get(INTEGRITY)
        instruction = (e.facts.default_task if settings.task is None else settings.task) if settings.query else None
        # the settings against this model, before a job folder records them: a bad --dim must not
        # leave a folder that makes the corrected command refuse to "resume" it
        e.embed([], dim=settings.dim, batch_tokens=settings.batch_tokens)
        if instruction is not None:
            e.format_query("", instruction)
        if chunked:
            probe(e, settings, instruction)
        manifest = {"version": MANIFEST_VERSION, "input": {"source": source, "sha256": sha, "bytes": size,
                                                           "records": n},
                    "model": _model_fingerprint(Path(e.path), seal),
                    "settings": {**dataclasses.asdict(settings), "fmt": fmt, "instruction": instruction,
                                 "max_tokens": e.max_tokens, "long_inputs": e.long_inputs,
                                 "chunk_overlap": e.chunk_overlap, "normalize": e.normalize}}
        if restart and folder.exists():
            shutil.rmtree(folder)
        resumed = 0
        if (folder / "manifest.json").exists():
            _check_manifest(json.loads((folder / "manifest.json").read_text()), manifest, folder)
        else:
            folder.mkdir(exist_ok=True)
            with atomic_file(folder / "manifest.json") as fh:
                fh.write(json.dumps(manifest, indent=1).encode())
        dim = settings.dim or e.dim
        n_chunks = -(-n // settings.chunk_size)
        started = time.perf_counter()
        n_tokens = n_embedded = 0
        with opener() as fh:
            records = iter_records(fh, fmt=fmt, field=settings.field, source=source)
            for k in range(n_chunks):
                rows = min(settings.chunk_size, n - k * settings.chunk_size)
                chunk = [next(records) for _ in range(rows)]
                path = _chunk_path(folder, k)
                part = spans_part(folder, k) if chunked else _ids_part(folder, k)
                if _chunk_ok(path, part_rows(part) if chunked else rows, dim):
                    resumed += 1
                else:
                    texts = [t for _, t, _ in chunk]
                    ids = [i for _, _, i in chunk] if has_ids else None
                    decoded = e.stats.tokens_decoded  # the model's own count: no second tokenization
                    if chunked:  # the rows of its chunks, and their spans
                        vectors, side = embed_checkpoint(e, texts, ids, first=k * settings.chunk_size,
                                                         settings=settings, instruction=instruction)
                    else:
                        if instruction is not None:
                            texts = e.format_queries(texts, instruction)
                        vectors = e.embed(texts, dim=settings.dim, batch_tokens=settings.batch_tokens)
                        side = None if ids is None else json.dumps(ids, ensure_ascii=False).encode()
                    n_tokens += e.stats.tokens_decoded - decoded
                    n_embedded += rows
                    if side is not None:
                        with atomic_file(part) as fid:
                            fid.write(side)
                    _fault_point(k, "before-vectors")
                    with atomic_file(path) as fout:  # the vectors last: their presence marks the chunk done
                        np.save(fout, vectors, allow_pickle=False)
                    _fault_point(k, "after-vectors")
                if progress:
                    progress(rows)
        seconds = time.perf_counter() - started
        if resumed:
            log.info("resumed %s: %d of %d chunks were already done", out, resumed, n_chunks)
    finally:
        if owns:
            e.close()

    chunks = [_chunk_path(folder, k) for k in range(n_chunks)]
    n_rows = sum(np.load(c, mmap_mode="r").shape[0] for c in chunks) if chunked else n
    ranges = None
    if settings.precision in ("int8", "uint8"):
        lo = np.full(dim, np.inf, dtype=np.float32)
        hi = np.full(dim, -np.inf, dtype=np.float32)
        for c in chunks:
            a = np.load(c, mmap_mode="r")
            lo, hi = np.minimum(lo, a.min(axis=0)), np.maximum(hi, a.max(axis=0))
        ranges = np.vstack((lo, hi))
    sample = quantize_embeddings(np.zeros((2, dim), dtype=np.float32), settings.precision, ranges=ranges)
    with contextlib.ExitStack() as outputs:  # both files whole before either is renamed; the .npy last
        fout = outputs.enter_context(atomic_file(out))
        np.lib.format.write_array_header_1_0(fout, {"descr": np.lib.format.dtype_to_descr(sample.dtype),
                                                    "fortran_order": False, "shape": (n_rows, sample.shape[1])})
        for c in chunks:
            fout.write(np.ascontiguousarray(
                quantize_embeddings(np.load(c), settings.precision, ranges=ranges)).tobytes())
        if chunked:
            copy_spans([spans_part(folder, k) for k in range(n_chunks)],
                       outputs.enter_context(atomic_file(spans_path(out))))
        elif has_ids:
            fid = outputs.enter_context(atomic_file(ids_path(out)))
            fid.write(b"[")
            for k in range(n_chunks):
                part = _ids_part(folder, k).read_bytes()[1:-1]
                fid.write((b"," if k and part else b"") + part)
            fid.write(b"]")
    # side files an earlier job of another kind left next to this output describe rows it no longer has
    for stale in ([ids_path(out)] if chunked else [spans_path(out)] + ([] if has_ids else [ids_path(out)])):
        stale.unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    fsync_dir(out.parent)
    return JobResult(n, n_tokens, dim, seconds, resumed, out, n_embedded, n_rows)
