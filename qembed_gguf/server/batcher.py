"""Dynamic micro-batching: concurrent requests share decode calls.

One worker thread owns all model work. Requests are queued as :class:`Job` s; each cycle the
worker takes every queued job (up to ``max_batch_inputs`` inputs), tokenizes them, and runs all
their inputs through :meth:`Embedder.pool`, which packs them into ``n_ubatch``-token decode
calls. Sixteen one-line requests thus cost about one decode instead of sixteen.

The worker waits for more jobs (at most ``max_wait_s``) only while requests are still being
received (:meth:`MicroBatcher.arriving`), so a lone client never pays the window.

Admission is bounded: :meth:`MicroBatcher.submit` refuses a job when the inputs already waiting
plus its own exceed ``max_queue_inputs`` (:class:`QueueFull`, answered 429) and after
:meth:`MicroBatcher.stop` (:class:`ShuttingDown`, answered 503).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import queue
import threading
import time

import numpy as np

from ..embedder import Embedder

__all__ = ["Job", "JobResult", "MicroBatcher", "QueueFull", "ShuttingDown"]

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds too many inputs to accept this job now."""


class ShuttingDown(Exception):
    """The batcher is stopping (or stopped) and accepts no new work."""


@dataclasses.dataclass
class JobResult:
    pooled: np.ndarray        # raw pooled vectors (full dim) of the inputs marked for decode, in order
    n_tokens: list[int]       # tokens of every input (after truncation, pooling token included)
    truncated: int            # inputs that were cut


@dataclasses.dataclass
class Job:
    """Inputs of one request: model-ready texts (instruction applied) or token-id lists."""

    texts: list[str] | None
    tokens: list[list[int]] | None
    decode: list[bool]        # per input: needs the model (False: answered by the cache, count tokens only)
    truncate: bool
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)

    def __len__(self) -> int:
        return len(self.decode)


_STOP = object()


class MicroBatcher:
    """Runs jobs through an Embedder from one worker thread, batching concurrent jobs together."""

    def __init__(self, embedder: Embedder, *, max_wait_s: float = 0.005, max_batch_inputs: int = 512,
                 max_queue_inputs: int = 8192):
        self.embedder = embedder
        self.max_wait_s = max_wait_s
        self.max_batch_inputs = max_batch_inputs
        self.max_queue_inputs = max_queue_inputs
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0       # inputs queued or being computed
        self._arriving = 0      # requests received but not yet submitted
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.cycles = 0         # worker cycles (each: one Embedder.pool call over all its jobs)
        self.jobs_done = 0
        self.inputs_done = 0

    # -- admission ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    @contextlib.contextmanager
    def arriving(self):
        """Mark a request as on its way (parsing, cache lookup) so the worker may wait for it."""
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1

    def submit(self, job: Job) -> concurrent.futures.Future:
        with self._lock:
            if self._stopping:
                raise ShuttingDown("the server is shutting down")
            if not self.running:
                raise ShuttingDown("the embedding worker is not running (the app's lifespan did not start it, or "
                                   "it stopped)")
            if self._pending and self._pending + len(job) > self.max_queue_inputs:
                raise QueueFull(f"{self._pending} inputs are waiting; this server queues at most "
                                f"{self.max_queue_inputs}")
            self._pending += len(job)
            self._queue.put(job)  # under the lock: no job can land behind the stop marker
        return job.future

    # -- lifetime -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="qembed-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new jobs, finish the queued ones, stop the worker."""
        with self._lock:
            self._stopping = True
            self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    # -- worker -----------------------------------------------------------------------------------
    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        """``first`` and the jobs queued behind it; jobs whose request was cancelled are dropped
        (``set_running_or_notify_cancel``: a running future can no longer be cancelled)."""
        jobs, n = [], 0
        if first.future.set_running_or_notify_cancel():
            jobs, n = [first], len(first)
        else:
            self._release(len(first))
        deadline = time.monotonic() + self.max_wait_s
        stop = False
        while n < self.max_batch_inputs:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._arriving:
                    break
                try:
                    job = self._queue.get(timeout=min(remaining, 0.001))
                except queue.Empty:
                    continue
            if job is _STOP:
                stop = True
                break
            if job.future.set_running_or_notify_cancel():
                jobs.append(job)
                n += len(job)
            else:
                self._release(len(job))
        return jobs, stop

    def _release(self, n_inputs: int) -> None:
        with self._lock:
            self._pending -= n_inputs

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            jobs, stop = self._collect(first)
            try:
                if jobs:
                    self._process(jobs)
            except BaseException as e:  # noqa: BLE001 - a failed cycle fails its jobs, not the server
                log.exception("embedding batch failed")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(e)
            finally:
                self._release(sum(len(j) for j in jobs))
            if stop:  # every job queued before the marker has been processed
                return

    def _prepare(self, job: Job) -> tuple[list[list[int]], int]:
        """Token sequences of a job with the request's truncation rule applied (the Embedder's
        ``fit``: raises :class:`InputTooLongError` for the request), and how many were cut."""
        e = self.embedder
        seqs = e.prepare_texts(job.texts) if job.texts is not None else e.prepare_tokens(job.tokens)
        truncated = sum(len(s) > e.max_tokens for s in seqs)
        return e.fit(seqs, truncate=job.truncate), truncated

    def _process(self, jobs: list[Job]) -> None:
        batch: list[list[int]] = []
        spans: list[tuple[Job, int, int, list[int], int]] = []
        for job in jobs:
            try:
                seqs, truncated = self._prepare(job)
            except Exception as e:  # noqa: BLE001 - this job's problem only
                job.future.set_exception(e)
                continue
            start = len(batch)
            batch.extend(s for s, d in zip(seqs, job.decode) if d)
            spans.append((job, start, len(batch), [len(s) for s in seqs], truncated))
        pooled = self.embedder.pool(batch) if batch else np.empty((0, self.embedder.dim), np.float32)
        self.cycles += 1
        for job, lo, hi, counts, truncated in spans:
            job.future.set_result(JobResult(pooled[lo:hi], counts, truncated))
            self.jobs_done += 1
            self.inputs_done += len(job)
