"""What a request hands the batcher's worker (:class:`Job`), what it gets back (:class:`JobResult`),
and the ways a job fails that are the batcher's own."""

from __future__ import annotations

import concurrent.futures
import dataclasses

import numpy as np

from ..errors import InputError, QembedError
from ..longinputs import Plan

__all__ = ["Job", "JobResult", "QueueFull", "ShuttingDown", "JobCancelled", "TooManyTokens"]


class QueueFull(QembedError, RuntimeError):
    """The queue holds too many inputs to accept this job now."""


class ShuttingDown(QembedError, RuntimeError):
    """The batcher is stopping (or stopped) and accepts no new work, or its grace period ran out."""


class JobCancelled(QembedError, RuntimeError):
    """The job was cancelled (its client left) before all its inputs were computed."""


class TooManyTokens(InputError):
    """A job's inputs hold more tokens together than ``max_request_tokens``."""

    def __init__(self, n_tokens: int, limit: int):
        super().__init__(f"the inputs hold {n_tokens} tokens together, more than the limit of {limit} per request")
        self.n_tokens = n_tokens
        self.limit = limit


@dataclasses.dataclass
class JobResult:
    """What the app needs to answer a job: the plan of the inputs that were decoded and their
    pooled rows (``plan.combine(pooled, ...)`` gives one vector per such input, in order), and, for
    every input of the job, its tokens as decoded and whether it was longer than ``max_tokens``."""

    plan: Plan                # Plan.select of the decoded inputs
    pooled: np.ndarray        # raw pooled rows (full dim) of plan.sequences, in order
    n_tokens: list[int]       # per input of the job: tokens as decoded (all windows, pooling tokens included)
    cut: list[bool]           # per input of the job: longer than max_tokens (truncated or chunked)
    decoded: list[bool]       # per input of the job: computed by the model (see Job.cut_hits_valid)


@dataclasses.dataclass
class Job:
    """Inputs of one request: model-ready texts (instruction applied) or token-id lists, each
    distinct, or ``prepared`` token rows decoded as they are (``texts`` and ``tokens`` None);
    ``rows[k]`` are the request's input indices that input ``k`` stands for (errors and the token
    limit count them; None: input ``k`` is request input ``k``).

    ``decode[k]`` False: the cache answered input ``k`` (its tokens are still counted). A cached
    vector of an input longer than ``max_tokens`` is the Embedder's policy's: where that is not
    this request's (``cut_hits_valid`` False), such an input is decoded anyway."""

    texts: list[str] | None
    tokens: list[list[int]] | None
    decode: list[bool]        # per input: needs the model (False: answered by the cache, count tokens only)
    long_inputs: str          # the request's policy, one of longinputs.LONG_INPUTS
    rows: list[list[int]] | None = None
    cut_hits_valid: bool = True
    prepared: list[list[int]] | None = None  # rows ready as they are (a reranker's prompts): nothing appended
    future: concurrent.futures.Future = dataclasses.field(default_factory=concurrent.futures.Future)
    cancelled: bool = False   # set (from any thread) when nobody waits for the result any more

    def __len__(self) -> int:
        return len(self.decode)
