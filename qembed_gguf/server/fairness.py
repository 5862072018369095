"""Which rows the next decode call holds, when several requests wait: pure functions.

Each request's rows are packed once, when it is admitted, into the decode calls an Embedder would
make for it alone (:func:`qembed_gguf.batching.plan_batches`: longest first, up to ``n_ubatch``
tokens). The batcher's worker then computes one decode call at a time. Before each, every active
request is ranked by :func:`priority`: the tokens it still has to decode, discounted by how long it
has waited (aging), smallest first. :func:`pick` takes the best-ranked request's next call and adds
the next calls of the others, in rank order, while they fit the token budget: sixteen one-line
requests share one decode call, a lone query that arrives while a 2,000-input request is being
embedded goes into the very next call (next to that request's, when both fit), and the big
request, whose rank improves as it ages, still decodes in the calls it would have had alone.

A query still waits for the decode call in flight, which on a CPU can take seconds (a 512-token
call of the 0.6B on 2 cores: 2.7 s). So while small requests (those that fit in one call) keep
arriving — one came within :data:`QUIET_S` — the big requests' calls are cut to what the model
decodes in about ``call_s`` seconds (:func:`call_cap`, from the throughput measured so far), and the
worker alternates: a call of small requests, then one of a big request's cut calls. A query then
waits for at most one cut call (a row longer than the cut decodes whole); the big request pays the
shorter calls' overhead only while small requests arrive, and still gets every other call.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["AGING_S", "QUIET_S", "MIN_CALL_TOKENS", "priority", "pick", "call_cap"]

AGING_S = 1.0  # a request that has waited this long ranks as if it had half its tokens left
QUIET_S = 5.0  # after this long without a small request, big requests' calls are whole again
MIN_CALL_TOKENS = 16  # a cut call holds at least this many tokens (or one row)


def priority(remaining_tokens: int, waited_s: float) -> float:
    """A request's rank (smaller first): its remaining tokens over ``1 + waited_s / AGING_S``."""
    return remaining_tokens / (1.0 + max(waited_s, 0.0) / AGING_S)


def pick(requests: Sequence[tuple[float, int, int]], *, budget: int, max_rows: int) -> list[int]:
    """The requests whose next planned call goes into this decode call: ``requests[j] = (rank,
    tokens of its next call, rows of its next call)``. The best-ranked one always (a call longer
    than ``budget`` is one long input, decoded alone); then the others by rank while the tokens
    stay within ``budget`` and the rows within ``max_rows``."""
    order = sorted(range(len(requests)), key=lambda j: requests[j][0])
    if not order:
        return []
    first = order[0]
    picked, used, rows = [first], requests[first][1], requests[first][2]
    for j in order[1:]:
        if used >= budget or rows >= max_rows:
            break
        if used + requests[j][1] <= budget and rows + requests[j][2] <= max_rows:
            picked.append(j)
            used += requests[j][1]
            rows += requests[j][2]
    return picked


def call_cap(tokens_per_s: float | None, call_s: float, budget: int) -> int:
    """The most tokens a big request's decode call holds while small requests arrive: what the
    model decodes in ``call_s`` seconds at ``tokens_per_s`` (None: not measured yet, no cut), within
    [:data:`MIN_CALL_TOKENS`, ``budget``]."""
    if tokens_per_s is None or call_s <= 0:
        return budget
    return max(MIN_CALL_TOKENS, min(budget, int(tokens_per_s * call_s)))
