"""The server's long-input policy (``"long_inputs"``, ``ServerConfig.long_inputs``/``chunk_overlap``,
``qembed-gguf serve --long-inputs``), over real HTTP against a live server, compared with the
library's Embedder under the same policy (the rule itself is tested in test_long_inputs.py).

Every Embedder here has ``max_tokens=32`` (31 content tokens per window) and, unless a test says
otherwise, flash attention off, so that vectors computed in differently composed batches stay
within a cosine of 0.9999 of each other."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from qembed_gguf import Embedder
from qembed_gguf.longinputs import plan
from qembed_gguf.server import Limits, ServerConfig
from qembed_gguf.server.batcher import Job, JobCancelled, MicroBatcher
from qembed_gguf.longinputs import tokens_as_decoded

from test_server_hostile import _SteppingModel

MAX = 32
WORDS = "the server reads every window of a long document and averages what it saw; numbers 12345. "


@pytest.fixture(scope="module")
def path():
    with Embedder("tiny") as e:
        return str(e.path)


def _embedder(path: str, **kwargs) -> Embedder:
    return Embedder(path, max_tokens=MAX, **{"flash_attn": False, **kwargs})


@pytest.fixture(scope="module")
def texts(path):
    """One window (fits), two windows, many windows."""
    with _embedder(path) as e:
        ids = e.tokenize(WORDS * 20)[0][:-1]
        out = [e.detokenize(ids[:n]) for n in (10, 45, 300)]
        counts = e.count_tokens(out)
    assert counts[0] <= MAX < counts[1] <= 2 * (MAX - 1) + 1 < 8 * MAX < counts[2], counts
    return out


@pytest.fixture
def serve(live_app, path):
    """``serve(config_kwargs, **embedder_kwargs)`` -> ``(url, embedder)``: a live server."""
    made = []

    def start(embedder_kwargs=None, **config) -> tuple[str, Embedder]:
        e = _embedder(path, **(embedder_kwargs or {}))
        made.append(e)
        return live_app(e, ServerConfig(model_names=("tiny",), **config)), e

    yield start
    for e in made:
        e.close()


def _post(url: str, inputs, **fields) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": inputs, **fields}, timeout=30)


def _vectors(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    return np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def _health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=10).json()


def _cached(e: Embedder, text: str) -> bool:
    """Whether ``e``'s cache holds a full-dim, normalised vector of ``text``."""
    return e.cache.lookup(e.cache.keys([text], e.dim, True), e.dim)[0] is not None


# -- the policies equal the library's -----------------------------------------------------------------
def test_chunk_equals_the_library(serve, path, texts):
    url, e = serve(long_inputs="chunk", chunk_overlap=3)  # the Embedder itself truncates: the request's policy rules
    with _embedder(path, long_inputs="chunk", chunk_overlap=3) as lib:
        want = lib.embed(texts)
        n_tokens = lib.plan(lib.prepare_texts(texts)).n_tokens
        for fields in ({}, {"long_inputs": "chunk"}):  # the server's default, then named
            r = _post(url, texts, **fields)
            np.testing.assert_allclose(_vectors(r), want, atol=3e-5)
            assert r.json()["usage"]["prompt_tokens"] == sum(n_tokens) > 300  # every window, as decoded
        np.testing.assert_allclose(_vectors(_post(url, texts, dimensions=64)), lib.embed(texts, dim=64), atol=3e-5)
        for text in texts:  # alone: another batch composition than the library's call above
            got = _vectors(_post(url, text))[0]
            assert float(got @ want[texts.index(text)]) > 0.9999
        # token ids get the same policy, and are not refused while parsing
        ids = lib.prepare_texts(texts)
        np.testing.assert_allclose(_vectors(_post(url, ids)), lib.embed_tokens(ids), atol=3e-5)
    assert float(want[2] @ e.embed(texts[2:])[0]) < 0.999  # chunked is not the Embedder's own truncation


def test_truncate_equals_the_library(serve, path, texts):
    url, _ = serve()  # the server's default: "error"
    with _embedder(path, long_inputs="truncate") as lib:
        want, short = lib.embed(texts), lib.count_tokens(texts[0])[0]
    for fields in ({"long_inputs": "truncate"}, {"truncate": True}, {"long_inputs": "truncate", "truncate": True}):
        r = _post(url, texts, **fields)
        np.testing.assert_allclose(_vectors(r), want, atol=3e-5)
        assert r.json()["usage"]["prompt_tokens"] == short + 2 * MAX


def test_error_names_the_input(serve, path, texts):
    url, _ = serve()
    for fields in ({}, {"long_inputs": "error"}, {"truncate": False}):
        r = _post(url, texts, **fields)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("input[1]", "input_too_long")
        assert error["message"].startswith("input[1] has ") and '"long_inputs": "truncate"' in error["message"]
        assert '"chunk"' in error["message"] and '"truncate": true' not in error["message"]
    with _embedder(path) as lib:
        ids = lib.prepare_texts(texts)
    r = _post(url, ids)  # token ids: refused while parsing, the same answer
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"
    assert '"long_inputs"' in r.json()["error"]["message"]
    assert _vectors(_post(url, texts[:1])).shape == (1, 256)  # what fits is answered
    chunking, _ = serve(long_inputs="chunk")
    r = _post(chunking, texts, truncate=False)  # the older spelling overrides a chunking server's default too
    assert r.status_code == 400 and r.json()["error"]["code"] == "input_too_long"


@pytest.mark.parametrize("fields, param, code", [
    ({"long_inputs": "split"}, "long_inputs", "invalid_value"),
    ({"long_inputs": "CHUNK"}, "long_inputs", "invalid_value"),
    ({"long_inputs": 1}, "long_inputs", "invalid_type"),
    ({"long_inputs": True}, "long_inputs", "invalid_type"),
    ({"truncate": "yes"}, "truncate", "invalid_type"),
    ({"long_inputs": "chunk", "truncate": True}, "long_inputs", "invalid_value"),
    ({"long_inputs": "error", "truncate": True}, "long_inputs", "invalid_value"),
    ({"long_inputs": "truncate", "truncate": False}, "long_inputs", "invalid_value"),
])
def test_bad_policies_are_400(serve, fields, param, code):
    url, _ = serve()
    r = _post(url, "short", **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert param in error["message"]


def test_max_request_tokens_counts_windows(serve, path, texts):
    with _embedder(path, long_inputs="chunk") as lib:
        ids = lib.prepare_texts(texts[2:])
        chunked = lib.plan(ids).n_tokens[0]
    url, _ = serve(limits=Limits(max_request_tokens=chunked - 1))
    before = _health(url)["decode_calls"]
    for inputs in (texts[2:], ids):  # texts once tokenized, token ids while parsing
        r = _post(url, inputs, long_inputs="chunk")
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["code"] == "max_tokens_per_request" and f"{chunked} tokens" in error["message"]
    assert _health(url)["decode_calls"] == before  # refused before any decode
    assert _post(url, texts[2:], long_inputs="truncate").json()["usage"]["prompt_tokens"] == MAX
    with _embedder(path, long_inputs="chunk") as lib:
        two = lib.plan(lib.prepare_texts(texts[1:2])).n_tokens[0]
    copies = (chunked - 1) // two + 1  # one copy fits the limit, this many do not
    r = _post(url, texts[1:2] * copies, long_inputs="chunk")  # a repeat counts each time it is sent
    assert r.status_code == 400 and f"{copies * two} tokens" in r.json()["error"]["message"]
    assert _post(url, texts[1:2] * (copies - 1), long_inputs="chunk").status_code == 200
    url, _ = serve(limits=Limits(max_request_tokens=chunked), long_inputs="chunk")
    assert _post(url, ids).json()["usage"]["prompt_tokens"] == chunked  # at the limit


def test_tokens_as_decoded_is_what_the_plan_decodes():
    for max_tokens in (2, 3, 8, 32):
        for overlap in range(max_tokens - 1):
            for n in range(1, 120):
                for policy in ("truncate", "chunk"):
                    want = plan([[1] * (n - 1) + [0]], limit=max_tokens, eos=0, long_inputs=policy,
                                overlap=overlap).n_tokens[0]
                    assert tokens_as_decoded(n, max_tokens=max_tokens, long_inputs=policy, overlap=overlap) == want
    assert tokens_as_decoded(10**7, max_tokens=8192, long_inputs="chunk", overlap=8190) > 8 * 10**10  # at once


# -- the cache ----------------------------------------------------------------------------------------
def test_the_cache_stores_only_the_embedders_policy(serve, path, texts):
    short, long = texts[0], texts[2]
    url, e = serve({"cache": "memory"})  # the Embedder truncates (its cache's key says so); the server: "error"
    with _embedder(path, long_inputs="chunk") as chunk, _embedder(path, long_inputs="truncate") as cut:
        want_chunk, want_cut = chunk.embed(long)[0], cut.embed(long)[0]
    first = _vectors(_post(url, [short, long], long_inputs="chunk"))
    assert float(first[1] @ want_chunk) > 0.9999
    assert _health(url)["cache"] == {"backend": "memory", "hits": 0, "misses": 2}
    assert _cached(e, short) and not _cached(e, long)
    again = _vectors(_post(url, [short, long], long_inputs="chunk"))
    assert _health(url)["cache"]["hits"] == 1  # the short one; the chunked vector was not stored
    np.testing.assert_array_equal(again[0], first[0])
    assert float(again[1] @ first[1]) > 0.9999
    # under the Embedder's own policy it is stored, and answered from the cache
    truncated = _vectors(_post(url, long, long_inputs="truncate"))[0]
    assert _cached(e, long)
    np.testing.assert_allclose(truncated, want_cut, atol=3e-5)
    calls = e.stats.decode_calls
    np.testing.assert_array_equal(_vectors(_post(url, long, long_inputs="truncate"))[0], truncated)
    assert e.stats.decode_calls == calls and _health(url)["cache"]["hits"] == 2
    # cached now, but not what another policy gives: chunked anew, or refused
    rechunked = _vectors(_post(url, long, long_inputs="chunk"))[0]
    assert float(rechunked @ want_chunk) > 0.9999 and float(rechunked @ truncated) < 0.999
    assert e.stats.decode_calls > calls and _health(url)["cache"]["hits"] == 2
    r = _post(url, [short, long])
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"


@pytest.mark.parametrize("server_overlap, stored", [(0, True), (2, False)])
def test_a_chunked_vector_is_stored_only_with_the_embedders_overlap(serve, texts, server_overlap, stored):
    url, e = serve({"cache": "memory", "long_inputs": "chunk"}, long_inputs="chunk", chunk_overlap=server_overlap)
    first = _vectors(_post(url, texts[2]))
    again = _vectors(_post(url, texts[2]))
    assert _health(url)["cache"]["hits"] == int(stored) and _cached(e, texts[2]) == stored
    assert float(first[0] @ again[0]) > 0.9999


# -- configuration and the CLI --------------------------------------------------------------------------
def test_configuration_is_checked(live_app, path):
    with pytest.raises(ValueError, match="long_inputs must be one of"):
        ServerConfig(model_names=("tiny",), long_inputs="split")
    with pytest.raises(ValueError, match="chunk_overlap must be an integer >= 0"):
        ServerConfig(model_names=("tiny",), chunk_overlap=-1)
    with _embedder(path) as e, pytest.raises(ValueError, match=r"max_tokens=32\): chunk_overlap must be .*\[0, 15\]"):
        live_app(e, ServerConfig(model_names=("tiny",), chunk_overlap=31))


def test_serve_cli_options_reach_the_server(monkeypatch, live_app, path, texts):
    from click.testing import CliRunner

    import qembed_gguf.server
    from qembed_gguf.cli import main

    seen = {}

    def fake_run(embedder, config, **kwargs):  # the real app and batcher, served by the test's uvicorn
        try:
            seen.update(config=config, long_inputs=embedder.long_inputs, overlap=embedder.chunk_overlap)
            if config.long_inputs == "chunk":
                seen["vectors"] = _vectors(_post(live_app(embedder, config), texts))
        finally:
            embedder.close()

    monkeypatch.setattr(qembed_gguf.server, "run", fake_run)
    run = CliRunner().invoke
    r = run(main, ["serve", path, "--model-name", "tiny", "--max-tokens", str(MAX), "--long-inputs", "chunk",
                   "--chunk-overlap", "4"])
    assert r.exit_code == 0, r.output
    assert (seen["config"].long_inputs, seen["config"].chunk_overlap) == ("chunk", 4)
    assert (seen["long_inputs"], seen["overlap"]) == ("chunk", 4)  # the cache's key names the server's policy
    with Embedder(path, max_tokens=MAX, long_inputs="chunk", chunk_overlap=4) as lib:  # the CLI's flash attention
        np.testing.assert_allclose(seen["vectors"], lib.embed(texts), atol=3e-5)

    assert run(main, ["serve", path]).exit_code == 0 and seen["config"].long_inputs == "error"
    assert seen["long_inputs"] == "truncate"  # an "error" server's Embedder keeps the older cache key
    for args in (["--truncate"], ["--truncate", "--long-inputs", "truncate"]):
        assert run(main, ["serve", path, *args]).exit_code == 0 and seen["config"].long_inputs == "truncate"
    r = run(main, ["serve", path, "--truncate", "--long-inputs", "chunk"])
    assert r.exit_code == 2 and "contradicts --long-inputs chunk" in r.output
    r = run(main, ["serve", path, "--max-tokens", str(MAX), "--long-inputs", "chunk", "--chunk-overlap", "31"])
    assert r.exit_code == 1 and "chunk_overlap must be an integer in [0, 15]" in r.output
    assert "--truncate" not in run(main, ["serve", "--help"]).output  # hidden, still accepted


# -- the batcher: windows are rows --------------------------------------------------------------------------
def test_batcher_plans_windows_and_cancels_them():
    model = _SteppingModel(max_tokens=4)  # windows of 3 content tokens
    b = MicroBatcher(model, max_wait_s=0.05, chunk_overlap=1, max_request_tokens=1000)
    b.start()
    with b.arriving():  # both jobs land in one cycle
        gone = Job(texts=["x" * 100], tokens=None, decode=[True], long_inputs="chunk")  # 50 windows
        kept = Job(texts=["yy", "z" * 7, "w" * 9], tokens=None, decode=[True, False, True], long_inputs="chunk")
        b.submit(gone), b.submit(kept)
    assert model.entered.wait(30)
    time.sleep(0.1)
    gone.cancelled = True  # its remaining windows are skipped
    with pytest.raises(JobCancelled):
        gone.future.result(30)
    result = kept.future.result(30)
    # 7 content tokens -> windows [0,3) [2,5) [4,7); 9 -> [0,3) [2,5) [4,7) [6,9); cached inputs are not decoded
    assert result.n_tokens == [3, 3 * 4, 4 * 4] and result.cut == [False, True, True]
    assert result.decoded == [True, False, True] and result.plan.owner.tolist() == [0, 1, 1, 1, 1]
    assert result.pooled[:, 0].tolist() == [3, 4, 4, 4, 4]
    assert result.plan.combine(result.pooled, dim=None, normalize=True).shape == (2, 4)
    assert model.decodes < 40 and b.jobs_cancelled == 1
    b.stop(grace=5)
