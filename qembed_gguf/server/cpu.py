"""How the models of one server share the CPU (``ServerConfig.cpu_sharing``).

``"split"``: each model gets its own share of the threads (:func:`~qembed_gguf.devices.split_threads`:
``qembed-gguf serve`` shares the threads out evenly, at least one each) and the models decode at
the same time.
``"time"``: each model uses all the threads, and their decode calls take turns
(:class:`TakeTurns`, in the order they asked), so two models never oversubscribe the cores.

Which is better was measured on the real-vocabulary 0.6B (``benchmarks/multimodel_bench.py``;
README, *Several models*): the README gives the figures behind the default.
"""

from __future__ import annotations

import collections
import threading

from ..devices import CPU_SHARING, split_threads

__all__ = ["CPU_SHARING", "TakeTurns", "split_threads"]


class TakeTurns:
    """A lock granted in the order it was asked for (first come, first served), used as a context
    manager around each decode step of every model's worker: a worker that finishes a step and asks
    again queues behind the others instead of winning the lock back at once, as it may with
    :class:`threading.Lock`."""

    def __init__(self):
        self._cond = threading.Condition(threading.Lock())
        self._waiting: collections.deque[int] = collections.deque()
        self._next_ticket = 0
        self._held = False

    def __enter__(self) -> "TakeTurns":
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            self._waiting.append(ticket)
            try:
                while self._held or self._waiting[0] != ticket:
                    self._cond.wait()
            except BaseException:  # interrupted while waiting: leave the queue, or everyone behind waits forever
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            self._waiting.popleft()
            self._held = True
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()
