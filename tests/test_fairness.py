"""Fair scheduling in the server's batcher: a lone query does not wait for a big request.

The reference for the vectors is the Embedder itself, called directly on the same inputs; the
reference for the order is the clock (the lone query's future completes while the big request's
has not).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from qembed_gguf import Embedder
from qembed_gguf.server.batcher import Job, MicroBatcher
from qembed_gguf.server.fairness import MIN_CALL_TOKENS, call_cap, pick, priority


def _job(texts: list[str]) -> Job:
    return Job(texts=texts, tokens=None, decode=[True] * len(texts), long_inputs="truncate")


def test_pick_fills_one_call_best_ranked_first():
    # (rank, tokens of the next planned call, its rows): the best first, then whatever still fits
    assert pick([(100.0, 400, 8), (1.0, 20, 1), (50.0, 200, 3)], budget=512, max_rows=64) == [1, 2]
    assert pick([(100.0, 400, 8), (1.0, 20, 1), (50.0, 90, 3)], budget=512, max_rows=64) == [1, 2, 0]
    assert pick([(1.0, 900, 1), (2.0, 5, 1)], budget=512, max_rows=64) == [0]  # a long input: alone
    assert pick([(3.0, 10, 40), (1.0, 10, 30)], budget=512, max_rows=64) == [1]  # rows bounded too
    assert pick([], budget=512, max_rows=64) == []
    # sixteen one-line requests share one call
    assert sorted(pick([(1.0, 9, 1)] * 16, budget=512, max_rows=64)) == list(range(16))
    # aging: a big request that has waited outranks a fresh one with fewer tokens
    assert priority(1000, 0.0) > priority(200, 0.0) > priority(1000, 9.0)


@pytest.fixture(scope="module")
def tiny():
    with Embedder("tiny", flash_attn=False) as e:
        yield e


def test_a_lone_query_does_not_wait_for_a_big_request(tiny):
    big = [f"document {i}: " + "words of a longer text " * (3 + i % 7) for i in range(600)]
    b = MicroBatcher(tiny, max_wait_s=0)
    b.start()
    try:
        started = time.monotonic()
        heavy = b.submit(_job(big))
        while b.cycles < 3:  # the big request is being computed
            time.sleep(0.001)
        lone = b.submit(_job(["what is a lone query?"]))
        result = lone.result(timeout=60)
        lone_s = time.monotonic() - started
        assert not heavy.done(), "the lone query waited for the whole big request"
        heavy_result = heavy.result(timeout=300)
        total_s = time.monotonic() - started
    finally:
        b.stop()
    assert lone_s < total_s / 4
    alone = tiny.pool(tiny.prepare_texts(["what is a lone query?"]))[0]
    got = result.pooled[0]  # computed next to the big request's rows: equal but for batch composition
    assert float(got @ alone) / (np.linalg.norm(got) * np.linalg.norm(alone)) > 0.9999
    # the big request's rows, computed in many calls next to the query's, are its own vectors
    want = tiny.pool(tiny.prepare_texts(big[:50]))
    cos = np.sum(heavy_result.pooled[:50] * want, axis=1) / (
        np.linalg.norm(heavy_result.pooled[:50], axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() > 0.9999


def test_call_cap_is_what_the_model_decodes_in_the_time_given():
    assert call_cap(None, 0.3, 512) == 512           # not measured yet: no cut
    assert call_cap(200.0, 0.3, 512) == 60
    assert call_cap(1e6, 0.3, 512) == 512            # a fast model: its calls are short anyway
    assert call_cap(10.0, 0.3, 512) == MIN_CALL_TOKENS
    assert call_cap(200.0, 0.0, 512) == 512          # 0: never cut


def test_while_queries_arrive_a_big_request_decodes_in_short_calls_between_theirs(monkeypatch):
    """The worker cuts the big request's calls to the cap (here fixed at 48 tokens) while small
    requests keep arriving, gives the queries calls of their own in between, and goes back to
    whole calls once they stop (QUIET_S, here 0.2 s). The vectors stay the model's."""
    from qembed_gguf.server import batcher as batcher_mod

    monkeypatch.setattr(batcher_mod, "call_cap", lambda rate, call_s, budget: 48)
    monkeypatch.setattr(batcher_mod, "QUIET_S", 0.2)
    with Embedder("tiny", flash_attn=False) as e:
        queries = [f"lone query number {i}?" for i in range(6)]
        query_rows = {tuple(r) for r in e.prepare_texts(queries)}
        calls: list[tuple[float, list[int], int]] = []  # (when, row lengths, query rows in it)
        real_pool = e.pool

        def pool(rows, **kw):
            calls.append((time.monotonic(), [len(r) for r in rows], sum(tuple(r) in query_rows for r in rows)))
            return real_pool(rows, **kw)

        monkeypatch.setattr(e, "pool", pool)
        big = [f"document {i}: " + "words of a longer text " * (3 + i % 7) for i in range(2500)]
        b = MicroBatcher(e, max_wait_s=0)
        b.start()
        try:
            heavy = b.submit(_job(big))
            while b.cycles < 3:
                time.sleep(0.001)
            first = len(calls)
            for q in queries:
                b.submit(_job([q])).result(timeout=60)
            last = len(calls)
            assert not heavy.done(), "the big request ended before the queries did: make it bigger"
            time.sleep(0.3)  # QUIET_S passes without a query
            later = len(calls)
            heavy_result = heavy.result(timeout=300)
        finally:
            b.stop()
        want = real_pool(e.prepare_texts(big[:40]))  # the big request's first rows, alone
    during = calls[first:last]
    assert sum(n for _, _, n in during) == len(queries)
    for _, lengths, n in during:
        if n:  # a query's call holds no row of the big request
            assert n == len(lengths)
    big_calls = [lengths for _, lengths, n in during if not n]
    assert big_calls and all(sum(x) <= 48 or len(x) == 1 for x in big_calls[1:])  # the first may be in flight
    # after the queries stopped, the big request's calls are whole again (up to n_ubatch)
    assert max(sum(lengths) for _, lengths, _ in calls[later:]) > 48
    got = heavy_result.pooled[:40]  # computed in cut calls: equal but for batch composition
    cos = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cos.min() > 0.9999
