"""``POST /v1/rerank`` against a live server hosting an embedding model and a reranker, compared
with the library (``Reranker.score`` / ``rerank`` on the same file, in this process)."""

from __future__ import annotations

import json
import threading

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qembed_gguf import Embedder, Reranker
from qembed_gguf.server import ServedModel, ServerConfig

from conftest import _free_port, serving

QUERY = "what is the capital of France?"
DOCS = ["Paris is the capital and largest city of France.", "", "Berlin ist die Hauptstadt Deutschlands.",
        "巴黎是法国的首都。", "def capital(country):\n    return CAPITALS[country]", "Paris is the capital of France."]


@pytest.fixture(scope="module")
def library(reranker_gguf):
    with Reranker(reranker_gguf("tied", "q8_0"), max_tokens=256) as r:
        yield r


@pytest.fixture(scope="module")
def two(reranker_gguf):
    """A live server: the bundled embedding model as "emb", the reranker as "rr" (and "rr-alias")."""
    with Embedder("tiny") as emb, Reranker(reranker_gguf("tied", "q8_0"), max_tokens=256) as rr:
        with serving([ServedModel(emb, ("emb",)), ServedModel(rr, ("rr", "rr-alias"))], ServerConfig()) as (url, _):
            yield url, rr


def _post(url: str, path: str, body: dict) -> httpx.Response:
    # json.dumps escapes a lone surrogate as \ud800 (valid JSON syntax), which httpx's json= cannot send
    return httpx.post(url + path, content=json.dumps(body).encode("ascii"), timeout=120,
                      headers={"Content-Type": "application/json"})


def test_rerank_equals_the_library(two, library):
    url, _ = two
    r = _post(url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "rr" and body["object"] == "list"
    want = library.score(QUERY, DOCS)
    got = {item["index"]: item["relevance_score"] for item in body["results"]}
    assert sorted(got) == list(range(len(DOCS)))
    np.testing.assert_allclose([got[i] for i in range(len(DOCS))], want, rtol=0, atol=1e-6)
    assert [item["index"] for item in body["results"]] == [i for i, _ in library.rerank(QUERY, DOCS)]
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] == sum(
        len(row) for row in library.tokenize(QUERY, DOCS))
    assert "document" not in body["results"][0]


def test_top_n_instruction_objects_and_the_alias_route(two, library):
    url, _ = two
    task = "Given a question about geography, find the passage that answers it"
    r = _post(url, "/rerank", {"model": "rr-alias", "query": QUERY, "documents": [{"text": d} for d in DOCS],
                               "top_n": 2, "instruction": task, "return_documents": True})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    want = library.rerank(QUERY, DOCS, instruction=task, top_n=2)
    assert [x["index"] for x in results] == [i for i, _ in want]
    np.testing.assert_allclose([x["relevance_score"] for x in results], [s for _, s in want], rtol=0, atol=1e-6)
    assert [x["document"]["text"] for x in results] == [DOCS[i] for i, _ in want]
    assert r.json()["model"] == "rr-alias"
    # top_n beyond the documents: all of them; no documents: no results
    assert len(_post(url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": DOCS, "top_n": 99})
               .json()["results"]) == len(DOCS)
    empty = _post(url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": []})
    assert empty.status_code == 200 and empty.json()["results"] == [] and empty.json()["usage"]["prompt_tokens"] == 0


def test_a_long_document_is_cut_as_the_library_cuts_it(two, library):
    url, _ = two
    docs = ["Paris " * 400, "short"]  # the first is longer than max_tokens=256
    r = _post(url, "/v1/rerank", {"model": "rr", "query": QUERY, "documents": docs})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    np.testing.assert_allclose([got[0], got[1]], library.score(QUERY, docs), rtol=0, atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == sum(len(row) for row in library.tokenize(QUERY, docs))
    assert max(len(row) for row in library.tokenize(QUERY, docs)) <= 256


@pytest.mark.parametrize("body, param, code", [
    ({"model": "rr", "documents": ["a"]}, "query", "missing_required_parameter"),
    ({"model": "rr", "query": 3, "documents": ["a"]}, "query", "invalid_type"),
    ({"model": "rr", "query": "q"}, "documents", "missing_required_parameter"),
    ({"model": "rr", "query": "q", "documents": "a"}, "documents", "invalid_type"),
    ({"model": "rr", "query": "q", "documents": ["a", "b", "c", 4]}, "documents[3]", "invalid_type"),
    ({"model": "rr", "query": "q", "documents": ["a", "\ud800"]}, "documents[1]", "invalid_value"),
    ({"model": "rr", "query": "q", "documents": ["a"], "top_n": 0}, "top_n", "invalid_value"),
    ({"model": "rr", "query": "q", "documents": ["a"], "top_n": "2"}, "top_n", "invalid_type"),
    ({"model": "rr", "query": "q", "documents": ["a"], "instruction": ""}, "instruction", "invalid_value"),
    ({"model": "rr", "query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents",
     "invalid_type"),
    ({"model": "emb", "query": "q", "documents": ["a"]}, "model", "wrong_model_kind"),
])
def test_bad_requests_name_the_field(two, body, param, code):
    r = _post(two[0], "/v1/rerank", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == (param, code), error


def test_each_model_answers_only_its_own_routes(two):
    url, _ = two
    r = _post(url, "/v1/embeddings", {"model": "rr", "input": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_model_kind"
    assert "/v1/rerank" in r.json()["error"]["message"]
    assert _post(url, "/tokenize", {"model": "rr", "input": "x"}).json()["error"]["code"] == "wrong_model_kind"
    assert _post(url, "/detokenize", {"model": "rr", "tokens": [1]}).json()["error"]["code"] == "wrong_model_kind"
    assert _post(url, "/v1/embeddings", {"model": "emb", "input": "x"}).status_code == 200
    r = _post(url, "/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]})
    assert r.status_code == 404 and "emb, rr, rr-alias" in r.json()["error"]["message"]
    health = httpx.get(url + "/health").json()
    assert [(m["model"], m["kind"]) for m in health["models"]] == [("emb", "embedding"), ("rr", "reranker")]


def test_metrics_count_rerank_requests_under_the_reranker(two):
    url, rr = two

    def scrape():
        text = httpx.get(url + "/metrics").text
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def value(samples, name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    before = scrape()
    tokens = [_post(url, "/v1/rerank", {"model": m, "query": QUERY, "documents": DOCS[:n]}).json()["usage"]
              ["prompt_tokens"] for m, n in (("rr", 3), ("rr-alias", 2))]
    after = scrape()
    assert value(after, "qembed_requests_total", model="rr", endpoint="/v1/rerank", status="200") - value(
        before, "qembed_requests_total", model="rr", endpoint="/v1/rerank", status="200") == 2
    assert value(after, "qembed_inputs_total", model="rr") - value(before, "qembed_inputs_total", model="rr") == 5
    assert value(after, "qembed_tokens_total", model="rr") - value(before, "qembed_tokens_total", model="rr") == \
        sum(tokens)
    assert value(after, "qembed_decode_calls_total", model="rr") == rr.stats.decode_calls


def test_concurrent_rerank_requests_share_decode_calls(two, library):
    url, rr = two
    queries = [f"question {i} about capitals" for i in range(8)]
    results: dict[int, list] = {}
    errors: list[str] = []

    def client(i: int) -> None:
        r = _post(url, "/v1/rerank", {"model": "rr", "query": queries[i], "documents": DOCS[:2]})
        if r.status_code != 200:
            errors.append(r.text)
        else:
            results[i] = r.json()["results"]

    before = rr.stats.decode_calls
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    for i, q in enumerate(queries):
        got = {x["index"]: x["relevance_score"] for x in results[i]}
        # decoded next to other requests' rows: equal but for batch composition
        np.testing.assert_allclose([got[0], got[1]], library.score(q, DOCS[:2]), rtol=0, atol=2e-3)
    # two short pairs per request, several requests per 512-token call: they shared decode calls
    assert rr.stats.decode_calls - before < len(queries)


def test_run_serves_a_lone_reranker_and_frees_it_when_it_cannot_start(reranker_gguf, monkeypatch):
    """``run(reranker, config)`` (what ``qembed-gguf serve R.gguf`` calls): a server that does not
    start (here: uvicorn's run does nothing) is a ServerStartError, and the model is freed."""
    import uvicorn

    from qembed_gguf import server

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)
    rr = Reranker(reranker_gguf("tied", "q8_0"))
    with pytest.raises(server.ServerStartError, match="did not start"):
        server.run(rr, ServerConfig(model_names=("rr",)), port=_free_port())
    assert rr.closed


def test_registry_names_of_the_other_kind_are_refused_before_any_download():
    from qembed_gguf.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="a Qwen3-Reranker .*use qembed_gguf.Reranker"):
        Embedder("qwen3-reranker-0.6b")
    with pytest.raises(ModelLoadError, match="an embedding model .*use qembed_gguf.Embedder"):
        Reranker("qwen3-embedding-0.6b")
