"""Dynamic micro-batching: concurrent requests share decode calls.

One worker thread owns all model work. Requests are queued as :class:`Job` s; the worker admits
every queued job (up to ``max_batch_inputs`` inputs at a time), tokenizes it, and then computes
one decode call at a time: before each, the active jobs are ranked (fewest tokens left first,
with aging) and the call is filled with their rows up to ``n_ubatch`` tokens
(:mod:`.fairness`). Sixteen one-line requests thus cost about one decode instead of sixteen, and
a lone query that arrives while a 2,000-input request is being embedded joins the next call
instead of waiting for all of it. While small requests keep arriving, big ones decode in calls cut
to about ``short_call_s`` (timed from the throughput measured, :func:`.fairness.call_cap`),
alternating with the small ones' calls, so a query waits for at most one cut call (or one row
longer than the cut: rows are never split, or one call of small requests). Each job's
inputs are planned with its request's long-input policy first (:func:`qembed_gguf.longinputs.plan`): a
chunked input decodes as several rows (its windows), which the app combines into one vector.

When idle, the worker waits for more jobs (at most ``max_wait_s``) only while requests are still being
received (:meth:`MicroBatcher.arriving`), so a lone client never pays the window.

Admission is bounded: :meth:`MicroBatcher.submit` refuses a job when the inputs already waiting
plus its own exceed ``max_queue_inputs`` (:class:`QueueFull`, answered 429) and after
:meth:`MicroBatcher.shutdown` (:class:`ShuttingDown`, answered 503). A job whose inputs hold more
than ``max_request_tokens`` tokens together, as decoded (every window of a chunked input, every
repeat), fails with :class:`TooManyTokens` once tokenized, before any window is built or decoded.

Work stops when nobody wants it: a job marked :attr:`Job.cancelled` (its client disconnected) is
dropped if still queued, and its remaining decode calls are skipped if it is being computed
(``Embedder.pool(cancelled=...)``, asked about every row: all of a job's windows are its rows); it
fails with :class:`JobCancelled`. A shutdown lets accepted jobs finish for a grace period, then
cancels the rest (:class:`ShuttingDown`); the worker stops after the decode call it is in.
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

from ..batching import plan_batches
from ..embedder import Embedder
from ..longinputs import Plan, plan as plan_long
from .fairness import QUIET_S, call_cap, pick, priority
from .jobs import Job, JobCancelled, JobResult, QueueFull, ShuttingDown, TooManyTokens

__all__ = ["Job", "JobResult", "MicroBatcher", "QueueFull", "ShuttingDown", "JobCancelled", "TooManyTokens"]

log = logging.getLogger(__name__)


_STOP = object()
MIN_RATE_TOKENS = 32  # decode calls this long or longer update the throughput estimate


@dataclasses.dataclass
class _Active:
    """A job being computed: its plan, the rows it decodes (``chosen``) packed into the decode calls
    it would have alone (``calls``, each a list of rows; the next first), their pooled vectors so far,
    and when it was admitted."""

    job: Job
    plan: Plan
    chosen: Plan
    decode: list[bool]
    pooled: np.ndarray
    calls: list[list[int]]
    since: float
    budget: int               # the token budget its calls were packed with
    remaining: int = 0        # tokens of the calls still to make
    cut_short: bool = False   # a row was skipped: the client left, or the grace period ended
    small: bool = False       # all of it fits in one decode call

    def __post_init__(self):
        self.remaining = sum(len(s) for s in self.chosen.sequences)
        self.small = len(self.calls) == 1 and self.remaining <= self.budget

    def next_tokens(self) -> int:
        return sum(len(self.chosen.sequences[r]) for r in self.calls[0])

    def cut_next(self, cap: int, max_rows: int) -> None:
        """Cut its next call into calls of at most ``cap`` tokens (whole rows; a longer row alone)."""
        call = self.calls[0]
        if len(call) > 1 and self.next_tokens() > cap:
            parts = plan_batches([len(self.chosen.sequences[r]) for r in call], budget=cap, max_seqs=max_rows)
            self.calls[0:1] = [[call[k] for k in part] for part in parts]

    def result(self) -> "JobResult":
        return JobResult(self.chosen, self.pooled, self.plan.n_tokens, self.plan.cut, self.decode)


class MicroBatcher:
    """Runs jobs through an Embedder from one worker thread, batching concurrent jobs together."""

    def __init__(self, embedder: Embedder, *, max_wait_s: float = 0.005, max_batch_inputs: int = 512,
                 max_queue_inputs: int = 8192, max_request_tokens: int | None = None, chunk_overlap: int = 0,
                 decode_turn=None, short_call_s: float = 0.3):
        self.embedder = embedder
        # while small requests arrive, big requests' decode calls are cut to about this long (0: never)
        self.short_call_s = short_call_s
        self._small_seen = float("-inf")  # when a small request was last admitted (monotonic)
        self._served_small = False        # the last decode call was of small requests
        self.tokens_per_s: float | None = None  # the decode throughput, a moving average over calls
        # a context manager held around each decode step: the models of one server taking turns
        # on the CPU (:class:`.cpu.TakeTurns`); None: this worker decodes whenever it is ready
        self.decode_turn = decode_turn
        self.chunk_overlap = chunk_overlap  # windows' overlap under "chunk", the server's
        self.max_wait_s = max_wait_s
        self.max_batch_inputs = max_batch_inputs
        self.max_queue_inputs = max_queue_inputs
        self.max_request_tokens = max_request_tokens
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending = 0       # inputs queued or being computed
        self._arriving = 0      # requests received but not yet submitted
        self._stopping = False
        self._aborted = False   # the shutdown's grace period is over: every job left is cancelled
        self._abort_timer: threading.Timer | None = None
        self._thread: threading.Thread | None = None
        self.on_abort = None    # called (from a timer thread) when the grace period ends
        self.on_step = None     # called (from the worker) after each decode step with its rows and tokens
        self.max_step_rows = 64  # rows in one decode call at most (llama.cpp sequences)
        self.cycles = 0         # decode steps (each: one Embedder.pool call, normally one decode call)
        self.jobs_done = 0
        self.inputs_done = 0
        self.jobs_cancelled = 0  # jobs dropped or cut short: client gone, or the grace period over

    # -- admission ------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    @contextlib.contextmanager
    def arriving(self):
        """Mark a request as on its way (parsing, cache lookup; its body already read) so the
        worker may wait for it."""
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

    def shutdown(self, grace: float | None = None) -> None:
        """Refuse new jobs; the accepted ones may finish for ``grace`` seconds (None: without
        limit), then the rest fail with :class:`ShuttingDown` and the worker stops after its
        current decode call. Returns at once; calling it again never extends the grace period."""
        with self._lock:
            if not self._stopping:
                self._stopping = True
                self._queue.put(_STOP)
            if grace is None or self._aborted or self._abort_timer is not None:
                return
            self._abort_timer = threading.Timer(max(grace, 0.0), self._abort)
            self._abort_timer.daemon = True
            self._abort_timer.start()

    def stop(self, grace: float | None = None) -> None:
        """:meth:`shutdown`, then wait for the worker to end (it ends after the decode call it is
        in once the grace period is over)."""
        self.shutdown(grace)
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._abort_timer is not None:
            self._abort_timer.cancel()

    def _abort(self) -> None:
        """End of the grace period: fail the queued jobs now (the worker may be inside a long
        decode call) and make the worker skip the rest of what it computes."""
        self._aborted = True
        left, saw_stop = 0, False
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is _STOP:
                saw_stop = True
                continue
            if self._claim(job):
                job.future.set_exception(ShuttingDown("the server is shutting down: its grace period ended before "
                                                      "this request was computed"))
                self._drop(job)
            left += 1
        if saw_stop:
            self._queue.put(_STOP)
        log.warning("shutdown grace period over: %d queued request(s) cancelled; stopping after the current "
                    "decode call", left)
        if self.on_abort is not None:
            self.on_abort()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stopping

    # -- worker -----------------------------------------------------------------------------------
    def _collect(self, first: Job | None) -> tuple[list[Job], bool]:
        """``first`` and the jobs queued behind it (waiting up to ``max_wait_s`` for requests still
        arriving only when ``first`` is given: the worker was idle); jobs whose request was cancelled
        are dropped (``set_running_or_notify_cancel``: a running future can no longer be cancelled)."""
        jobs, n = ([first], len(first)) if first is not None and self._claim(first) else ([], 0)
        deadline = time.monotonic() + (self.max_wait_s if first is not None else 0.0)
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
            if self._claim(job):
                jobs.append(job)
                n += len(job)
        return jobs, stop

    def _claim(self, job: Job) -> bool:
        """Whether ``job`` is the worker's now (its future running: no longer cancellable); a job
        whose future was cancelled while queued is dropped instead."""
        if job.future.set_running_or_notify_cancel():
            return True
        self._drop(job)
        return False

    def _drop(self, job: Job) -> None:
        """Forget a queued job whose future was cancelled (its client left while it waited)."""
        self.jobs_cancelled += 1
        self._release(len(job))

    def _release(self, n_inputs: int) -> None:
        with self._lock:
            self._pending -= n_inputs

    def _run(self) -> None:
        """Admit queued jobs, then compute one decode call (:meth:`_step`), until stopped: a job that
        arrives while others are being computed joins at the next call (:mod:`.fairness`)."""
        active: list[_Active] = []
        stopping = False
        while True:
            if active:
                jobs, stop = self._collect(None)
            else:
                if stopping:
                    return
                first = self._queue.get()
                if first is _STOP:
                    return
                jobs, stop = self._collect(first)
            stopping = stopping or stop  # every job queued before the marker is finished first
            for job in jobs:
                self._admit(job, active)
            if active:
                try:
                    self._step(active)
                except BaseException as e:  # noqa: BLE001 - a failed call fails the jobs in it, not the server
                    log.exception("embedding batch failed")
                    for a in active:
                        self._end(a.job, error=e)
                    active.clear()

    def _end(self, job: Job, *, result: "JobResult | None" = None, error: BaseException | None = None) -> None:
        """A job leaves the worker: its future gets ``result`` or ``error``; its inputs leave the queue."""
        if not job.future.done():
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
                self.jobs_done += 1
                self.inputs_done += len(job)
        self._release(len(job))

    def _admit(self, job: Job, active: list["_Active"]) -> None:
        """Plan a claimed job (its errors are its own) and add it to the jobs being computed."""
        if job.cancelled or self._aborted:
            return self._end(job, error=self._cancel_error(job))
        try:
            plan, decode = self._prepare(job)
            chosen = plan.select(decode)
        except Exception as e:  # noqa: BLE001 - this job's problem only
            return self._end(job, error=e)
        e = self.embedder
        calls = plan_batches([len(q) for q in chosen.sequences], budget=e.batch_tokens,
                             max_seqs=self.max_step_rows) if chosen.sequences else []
        a = _Active(job, plan, chosen, decode, np.empty((len(chosen.sequences), e.dim), np.float32), calls,
                    time.monotonic(), e.batch_tokens)
        if not a.calls:  # nothing to decode (all answered by the cache)
            return self._end(job, result=a.result())
        if a.small:
            self._small_seen = a.since
        active.append(a)

    def _step(self, active: list["_Active"]) -> None:
        """One decode call: rows of the active jobs chosen by :func:`.fairness.pick`; finished jobs
        get their result, cancelled ones their error, and leave ``active``."""
        for a in [a for a in active if a.job.cancelled or self._aborted]:
            active.remove(a)
            self._end(a.job, error=self._cancel_error(a.job))
        if not active:
            return
        now = time.monotonic()
        budget = self.embedder.batch_tokens
        serve = range(len(active))
        if self.short_call_s > 0 and now - self._small_seen < QUIET_S:
            # small requests are arriving: big ones decode in short calls, alternating with theirs
            bigs = [j for j, a in enumerate(active) if not a.small]
            if bigs:
                cap = call_cap(self.tokens_per_s, self.short_call_s, budget)
                for j in bigs:
                    active[j].cut_next(cap, self.max_step_rows)
                smalls = [j for j, a in enumerate(active) if a.small]
                if not smalls or self._served_small:
                    serve, budget = bigs, cap
                else:
                    serve = smalls
        ranked = [(priority(active[j].remaining, now - active[j].since), active[j].next_tokens(),
                   len(active[j].calls[0])) for j in serve]
        chosen = [serve[k] for k in pick(ranked, budget=budget, max_rows=self.max_step_rows)]
        self._served_small = all(active[j].small for j in chosen)
        picks = [(j, r) for j in chosen for r in active[j].calls[0]]
        rows = [active[j].chosen.sequences[r] for j, r in picks]
        skipped: dict[int, bool] = {}

        def cancelled(i: int) -> bool:
            # one answer per row, remembered: a client leaving after its rows were decoded changes nothing
            if i not in skipped:
                skipped[i] = active[picks[i][0]].job.cancelled or self._aborted
            return skipped[i]

        n_tokens = sum(len(q) for q in rows)
        with self.decode_turn if self.decode_turn is not None else contextlib.nullcontext():
            start = time.perf_counter()
            pooled = self.embedder.pool(rows, cancelled=cancelled)
            seconds = time.perf_counter() - start
        if n_tokens >= MIN_RATE_TOKENS and seconds > 0 and not any(skipped.values()):
            rate = n_tokens / seconds
            self.tokens_per_s = rate if self.tokens_per_s is None else 0.7 * self.tokens_per_s + 0.3 * rate
        self.cycles += 1
        if self.on_step is not None:
            self.on_step(len(rows), n_tokens)
        for k, (j, r) in enumerate(picks):
            active[j].pooled[r] = pooled[k]
            active[j].cut_short = active[j].cut_short or skipped.get(k, False)
        for j in chosen:
            a = active[j]
            a.remaining -= a.next_tokens()
            a.calls.pop(0)
        for a in [a for a in active if a.cut_short or not a.calls]:
            active.remove(a)
            if a.cut_short:
                self._end(a.job, error=self._cancel_error(a.job))
            else:
                self._end(a.job, result=a.result())

    def _prepare(self, job: Job) -> tuple[Plan, list[bool]]:
        """The plan of a job's inputs under its request's policy (``"error"`` raises
        :class:`InputTooLongError` naming the request's input) and which inputs to decode."""
        e = self.embedder
        if job.prepared is not None:
            seqs = job.prepared
        else:
            seqs = e.prepare_texts(job.texts) if job.texts is not None else e.prepare_tokens(job.tokens)
        # "error" refuses here; windows cost at most about twice an input's tokens (overlaps are at most half)
        plan = plan_long(seqs, limit=e.max_tokens, eos=e.pooling_token_id, long_inputs=job.long_inputs,
                         overlap=self.chunk_overlap, rows=job.rows)
        if self.max_request_tokens is not None:  # every input of the request counts as decoded, repeats too
            total = sum(n * (len(job.rows[k]) if job.rows is not None else 1) for k, n in enumerate(plan.n_tokens))
            if total > self.max_request_tokens:
                raise TooManyTokens(total, self.max_request_tokens)
        decode = [d or (c and not job.cut_hits_valid) for d, c in zip(job.decode, plan.cut)]
        return plan, decode

    def _cancel_error(self, job: Job) -> Exception:
        self.jobs_cancelled += 1
        if self._aborted and not job.cancelled:
            return ShuttingDown("the server is shutting down: its grace period ended before this request was computed")
        return JobCancelled("the request was cancelled (its client disconnected)")
