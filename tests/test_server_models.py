"""A server of several models: two Embedders of different widths (the bundled tiny, dim 256, and
the 'odd' checkpoint, dim 96) behind one app, driven by httpx and the official ``openai`` client
against a live server, each answer compared with its own model's library vectors. Also the
validation of what is served, the CPU sharing (``TakeTurns``, ``split_threads``) and
``qembed-gguf serve MODEL...``."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qembed_gguf import Embedder
from qembed_gguf.errors import InputError
from qembed_gguf.server import ServedModel, ServerConfig, create_app, served_models
from qembed_gguf.server.cpu import TakeTurns

from conftest import TEXTS, serving

SMALL_IDS = ("small", "small-alias")
WIDE_IDS = ("wide",)
ALL_IDS = [*SMALL_IDS, *WIDE_IDS]


@pytest.fixture(scope="module")
def odd_path(converted):
    return converted("odd", "q8_0")


@pytest.fixture(scope="module")
def refs(odd_path):
    """The library on the same two files (separate Embedders), by served id."""
    with Embedder("tiny") as small, Embedder(odd_path) as wide:
        assert (small.dim, wide.dim) == (256, 96)
        yield {"small": small, "small-alias": small, "wide": wide}


@pytest.fixture(scope="module")
def two(odd_path):
    """One live server for the module: tiny as small/small-alias, odd as wide."""
    with Embedder("tiny") as small, Embedder(odd_path) as wide:
        models = [ServedModel(small, SMALL_IDS), ServedModel(wide, WIDE_IDS)]
        with serving(models, ServerConfig()) as (url, server):
            yield SimpleNamespace(url=url, server=server, small=small, wide=wide,
                                  client=openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0))


def _vectors(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


def _post(url: str, path: str, body) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=30)


def _health(url: str) -> dict:
    r = httpx.get(url + "/health")
    assert r.status_code == 200, r.text
    return r.json()


def _per_model(health: dict) -> dict[str, dict]:
    return {m["model"]: m for m in health["models"]}


# -- 1. vectors, usage, dimensions ---------------------------------------------------------------------
@pytest.mark.parametrize("model", ALL_IDS)
def test_each_model_answers_its_own_vectors(two, refs, model):
    ref = refs[model]
    want = ref.embed_documents(TEXTS)
    as_float = two.client.embeddings.create(model=model, input=TEXTS, encoding_format="float")
    got = _vectors(as_float)
    assert got.shape == (len(TEXTS), ref.dim)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_vectors(two.client.embeddings.create(model=model, input=TEXTS)), want)  # base64
    assert as_float.model == model  # an alias is answered under the id it was asked for
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == sum(ref.count_tokens(TEXTS))
    # token-id inputs go to the same model
    ids = ref.prepare_texts(TEXTS[:3])
    np.testing.assert_array_equal(_vectors(two.client.embeddings.create(model=model, input=ids)),
                                  ref.embed_documents(TEXTS[:3]))


def test_the_two_models_answer_differently(two):
    small = _vectors(two.client.embeddings.create(model="small", input=TEXTS[:2]))
    wide = _vectors(two.client.embeddings.create(model="wide", input=TEXTS[:2]))
    assert small.shape == (2, 256) and wide.shape == (2, 96)
    assert not np.allclose(small[:, :96] / np.linalg.norm(small[:, :96], axis=1, keepdims=True), wide)


def test_dimensions_are_checked_against_each_models_own_range(two, refs):
    texts = TEXTS[:3]
    small, wide = refs["small"], refs["wide"]
    assert small.mrl_min_dim == wide.mrl_min_dim == 32
    for model, dim in (("small", 200), ("small-alias", 96), ("wide", 64), ("wide", 96), ("wide", 32),
                       ("small", 256)):
        got = _vectors(two.client.embeddings.create(model=model, input=texts, dimensions=dim))
        assert got.shape == (3, dim)
        np.testing.assert_array_equal(got, refs[model].embed_documents(texts, dim=dim))
    # 200 and 256 are fine for small (dim 256), not for wide (dim 96)
    for dim in (200, 256, 97):
        r = _post(two.url, "/v1/embeddings", {"model": "wide", "input": "x", "dimensions": dim})
        assert r.status_code == 400, (dim, r.text)
        error = r.json()["error"]
        assert (error["param"], error["code"]) == ("dimensions", "invalid_value")
        assert "[32, 96]" in error["message"]
    with pytest.raises(openai.BadRequestError, match=r"\[32, 96\]"):
        two.client.embeddings.create(model="wide", input="x", dimensions=200)
    for model, dim, bounds in (("small", 257, "[32, 256]"), ("small-alias", 31, "[32, 256]"),
                               ("wide", 31, "[32, 96]")):
        r = _post(two.url, "/v1/embeddings", {"model": model, "input": "x", "dimensions": dim})
        assert r.status_code == 400 and bounds in r.json()["error"]["message"], (model, dim, r.text)


# -- 2. model listing, unknown models, tokens ----------------------------------------------------------
def test_models_list_every_id_in_order(two):
    assert [m.id for m in two.client.models.list().data] == ALL_IDS
    for name in ALL_IDS:
        assert two.client.models.retrieve(name).id == name
        r = httpx.get(f"{two.url}/v1/models/{name}")
        assert r.status_code == 200 and r.json()["id"] == name and r.json()["object"] == "model"
    r = httpx.get(two.url + "/v1/models/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize("path, body", [
    ("/v1/embeddings", {"input": "x"}),
    ("/embeddings", {"input": "x"}),
    ("/tokenize", {"input": "x"}),
    ("/detokenize", {"tokens": [1, 2]}),
])
def test_unknown_model_is_404_listing_every_served_id(two, path, body):
    r = _post(two.url, path, {"model": "nope", **body})
    assert r.status_code == 404, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert "'nope'" in error["message"] and "small, small-alias, wide" in error["message"]


def test_unknown_model_through_the_openai_client(two):
    with pytest.raises(openai.NotFoundError, match="small, small-alias, wide"):
        two.client.embeddings.create(model="text-embedding-3-small", input="x")


@pytest.mark.parametrize("model", ALL_IDS)
def test_tokenize_and_detokenize_route_by_model(two, refs, model):
    ref = refs[model]
    r = _post(two.url, "/tokenize", {"model": model, "input": TEXTS[:4]})
    assert r.status_code == 200, r.text
    tokens = r.json()["tokens"]
    assert tokens == ref.tokenize(TEXTS[:4])
    r = _post(two.url, "/detokenize", {"model": model, "tokens": tokens})
    assert r.status_code == 200, r.text
    assert r.json()["text"] == [ref.detokenize(t) for t in tokens]


def test_token_ids_are_checked_against_the_routed_models_vocabulary(two, refs):
    """The two files share a tokenizer, but odd's vocabulary is padded past it (4200 rows vs 4096):
    an id between the two is valid for wide only, which shows each request reaches its own model."""
    small, wide = refs["small"], refs["wide"]
    assert small.n_vocab < 4100 < wide.n_vocab
    r = _post(two.url, "/detokenize", {"model": "wide", "tokens": [4100]})
    assert r.status_code == 200 and r.json()["text"] == [wide.detokenize([4100])]
    for model in SMALL_IDS:
        r = _post(two.url, "/detokenize", {"model": model, "tokens": [4100]})  # one flat sequence
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens", r.text
        assert "(0..4095)" in r.json()["error"]["message"]
        r = _post(two.url, "/v1/embeddings", {"model": model, "input": [[5, 4100]]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input[0]", r.text
    got = two.client.embeddings.create(model="wide", input=[[5, 4100]])
    assert _vectors(got).shape == (1, 96) and got.usage.prompt_tokens == 3  # + the pooling token


# -- 3. /health ----------------------------------------------------------------------------------------
def test_health_reports_every_model(two, refs):
    before = _per_model(_health(two.url))
    two.client.embeddings.create(model="small", input=["a", "b"])
    two.client.embeddings.create(model="small-alias", input="c")  # counted under small
    two.client.embeddings.create(model="wide", input=["d"])
    r = httpx.get(two.url + "/health")
    assert r.status_code == 200
    health = r.json()
    assert health["status"] == "ok"
    models = health["models"]
    assert [m["model"] for m in models] == ["small", "wide"]
    small, wide = models
    assert (small["aliases"], wide["aliases"]) == (["small-alias"], [])
    assert (small["status"], wide["status"]) == ("ok", "ok")
    assert (small["dim"], wide["dim"]) == (256, 96)
    assert (small["max_tokens"], wide["max_tokens"]) == (refs["small"].max_tokens, refs["wide"].max_tokens)
    assert small["requests"] - before["small"]["requests"] == 2
    assert wide["requests"] - before["wide"]["requests"] == 1
    assert small["decode_calls"] == two.small.stats.decode_calls > 0
    assert wide["decode_calls"] == two.wide.stats.decode_calls > 0
    for m, service in zip(models, two.server.services):
        assert m["batches"] == service.batcher.cycles > 0
        assert m["queue_inputs"] == 0 and m["cancelled"] == 0 and m["cache"] is None
    # the first model's own fields, as a one-model server has always answered, at the top level
    shared = set(small) - {"aliases", "status", "max_tokens"}
    assert {"model", "dim", "requests", "batches", "decode_calls"} <= shared
    assert {k: health[k] for k in shared} == {k: small[k] for k in shared}
    assert set(health) == shared | {"status", "models"}


# -- 4. /metrics ---------------------------------------------------------------------------------------
def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _get(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_counted_per_model_under_its_first_id(two):
    before = _scrape(two.url)
    c = two.client
    usage = {"small": 0, "wide": 0}
    for model, texts, first in (("small", ["a", "b"], "small"), ("small-alias", "one", "small"),
                                ("wide", ["w x", "y", "z z z"], "wide"), ("small", ["q"], "small")):
        usage[first] += c.embeddings.create(model=model, input=texts).usage.prompt_tokens
    assert _post(two.url, "/v1/embeddings", {"model": "wide", "input": "x", "dimensions": 200}).status_code == 400
    assert _post(two.url, "/v1/embeddings", {"model": "nope", "input": "x"}).status_code == 404
    assert _post(two.url, "/tokenize", {"model": "wide", "input": "x"}).status_code == 200
    assert httpx.get(two.url + "/health").status_code == 200
    after = _scrape(two.url)

    def moved(name, **labels):
        return _get(after, name, **labels) - _get(before, name, **labels)

    emb = {"endpoint": "/v1/embeddings"}
    assert moved("qembed_requests_total", model="small", status="200", **emb) == 3  # the alias under small
    assert moved("qembed_requests_total", model="wide", status="200", **emb) == 1
    assert moved("qembed_requests_total", model="wide", status="400", **emb) == 1
    assert moved("qembed_requests_total", model="small", status="400", **emb) == 0
    assert moved("qembed_requests_total", model="", status="404", **emb) == 1  # named no served model
    assert moved("qembed_requests_total", model="wide", status="200", endpoint="/tokenize") == 1
    assert moved("qembed_requests_total", model="", status="200", endpoint="/health") == 1
    assert moved("qembed_requests_total", model="", status="200", endpoint="/metrics") == 1  # the first scrape
    assert moved("qembed_inputs_total", model="small") == 4
    assert moved("qembed_inputs_total", model="wide") == 3
    assert moved("qembed_tokens_total", model="small") == usage["small"] > 0
    assert moved("qembed_tokens_total", model="wide") == usage["wide"] > 0
    assert moved("qembed_request_inputs_count", model="small") == 3
    assert moved("qembed_request_inputs_count", model="wide") == 1
    # no series under an alias: every model label is a model's first id, or ""
    assert {dict(labels).get("model") for _, labels in after} <= {"small", "wide", ""}
    # each model's work is its own Embedder's and batcher's count
    health = _per_model(_health(two.url))
    for name, embedder in (("small", two.small), ("wide", two.wide)):
        assert _get(after, "qembed_decode_calls_total", model=name) == embedder.stats.decode_calls > 0
        assert _get(after, "qembed_sequences_decoded_total", model=name) == embedder.stats.sequences_decoded
        assert _get(after, "qembed_tokens_decoded_total", model=name) == embedder.stats.tokens_decoded
        assert _get(after, "qembed_batches_total", model=name) == health[name]["batches"]
        assert _get(after, "qembed_batch_inputs_sum", model=name) == embedder.stats.sequences_decoded
        assert _get(after, "qembed_ready", model=name) == 1
        assert _get(after, "qembed_queue_inputs", model=name) == 0


# -- 5. concurrency, an unloaded model -----------------------------------------------------------------
def test_parallel_requests_to_both_models(two, refs):
    """Threads send to both models at once; each answer has its model's width and its inputs'
    vectors. Requests batched together are compared by cosine, not bit for bit (llama.cpp's
    kernels depend on what shares a batch; see test_server.test_concurrent_requests_share_batches)."""
    texts = [f"{i}: {t}" for i, t in enumerate(TEXTS * 2)]
    want = {(m, t): refs[m].embed_documents(t)[0] for m in ("small", "wide") for t in texts}
    before = _per_model(_health(two.url))
    worst, errors, lock = [], [], threading.Lock()

    def worker(c: int) -> None:
        model = ("small", "small-alias", "wide")[c % 3]
        first = "wide" if model == "wide" else "small"
        client = openai.OpenAI(base_url=two.url + "/v1", api_key="unused", max_retries=0)
        try:
            for r in range(5):
                start = (c * 5 + r) % (len(texts) - 1)
                batch = texts[start:start + 2]
                got = _vectors(client.embeddings.create(model=model, input=batch))
                assert got.shape == (2, refs[first].dim)
                with lock:
                    worst.extend(float(v @ want[first, t]) for t, v in zip(batch, got))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(c,)) for c in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert len(worst) == 6 * 5 * 2
    assert min(worst) >= 0.9995
    after = _per_model(_health(two.url))
    assert after["small"]["requests"] - before["small"]["requests"] == 20  # 2 threads small + 2 alias
    assert after["wide"]["requests"] - before["wide"]["requests"] == 10


def test_an_unloaded_model_is_503_while_the_other_answers(live_app, refs, odd_path):
    small, wide = Embedder("tiny"), Embedder(odd_path)  # ours: closing them is safe
    try:
        url = live_app([ServedModel(small, ("small",)), ServedModel(wide, ("wide",))], ServerConfig())
        for model in ("small", "wide"):
            assert _post(url, "/v1/embeddings", {"model": model, "input": "x"}).status_code == 200
        wide.close()
        r = _post(url, "/v1/embeddings", {"model": "wide", "input": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unloaded", r.text
        assert "'wide'" in r.json()["error"]["message"]
        assert _post(url, "/tokenize", {"model": "wide", "input": "x"}).status_code == 503
        assert _post(url, "/detokenize", {"model": "wide", "tokens": [1]}).status_code == 503
        r = _post(url, "/v1/embeddings", {"model": "small", "input": TEXTS[:3], "encoding_format": "float"})
        assert r.status_code == 200
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
        np.testing.assert_array_equal(got, refs["small"].embed_documents(TEXTS[:3]))
        assert _post(url, "/tokenize", {"model": "small", "input": "x"}).json()["tokens"] == refs["small"].tokenize(["x"])
        health = httpx.get(url + "/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert [(m["model"], m["status"]) for m in health.json()["models"]] == [("small", "ok"), ("wide", "unavailable")]
        assert [m["id"] for m in httpx.get(url + "/v1/models").json()["data"]] == ["small", "wide"]
        small.close()
        for model in ("small", "wide"):  # each request is told about its own model
            r = _post(url, "/v1/embeddings", {"model": model, "input": "x"})
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_unloaded"
            assert f"'{model}'" in r.json()["error"]["message"]
        r = _post(url, "/v1/embeddings", {"model": "nope", "input": "x"})  # still not served: 404
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    finally:
        small.close()
        wide.close()


# -- 6. what may be served -------------------------------------------------------------------------------
def test_served_models_validation(refs):
    small, wide = refs["small"], refs["wide"]
    with pytest.raises(InputError, match="'x'") as err:
        served_models([ServedModel(small, ("a", "x")), ServedModel(wide, ("x",))], ServerConfig())
    assert isinstance(err.value, ValueError)
    with pytest.raises(InputError, match="'x'"):
        create_app([ServedModel(small, ("x",)), ServedModel(wide, ("b", "x"))], ServerConfig())
    with pytest.raises(InputError, match="'x' is given twice to model 0"):
        served_models(small, ServerConfig(model_names=("x", "x")))
    with pytest.raises(InputError, match="same Embedder"):
        create_app([ServedModel(small, ("a",)), ServedModel(small, ("b",))], ServerConfig())
    with pytest.raises(InputError, match="model_names"):
        create_app([ServedModel(small, ("a",)), ServedModel(wide, ("b",))], ServerConfig(model_names=("a",)))
    with pytest.raises(InputError, match="model_names is empty"):
        create_app(small, ServerConfig())
    with pytest.raises(InputError):
        create_app([], ServerConfig())
    with pytest.raises(InputError):
        create_app([ServedModel(small, ("a",)), small], ServerConfig())
    for names in ((), "small", ("",), ("a", 3), None):
        with pytest.raises(InputError, match="ServedModel.names"):
            ServedModel(small, names)
    with pytest.raises(InputError, match="cpu_sharing") as err:
        ServerConfig(cpu_sharing="bogus")
    assert isinstance(err.value, ValueError) and "'split', 'time'" in str(err.value)
    # what is valid
    one = served_models(small, ServerConfig(model_names=("a", "b")))
    assert [(m.model, m.names) for m in one] == [(small, ("a", "b"))]
    both = [ServedModel(small, ("a",)), ServedModel(wide, ("b", "c"))]
    assert served_models(both, ServerConfig()) == both
    assert served_models(tuple(both), ServerConfig(cpu_sharing="time")) == both


def test_which_servers_take_turns(refs):
    small, wide = refs["small"], refs["wide"]
    both = [ServedModel(small, ("a",)), ServedModel(wide, ("b",))]
    split = create_app(both, ServerConfig()).state.server
    assert [s.batcher.decode_turn for s in split.services] == [None, None]
    timed = create_app(both, ServerConfig(cpu_sharing="time")).state.server
    turn = timed.services[0].batcher.decode_turn
    assert isinstance(turn, TakeTurns) and timed.services[1].batcher.decode_turn is turn
    alone = create_app(small, ServerConfig(model_names=("a",), cpu_sharing="time")).state.server
    assert alone.services[0].batcher.decode_turn is None  # nothing to take turns with


# -- 7. cpu_sharing="time" -------------------------------------------------------------------------------
def test_time_sharing_server_answers_the_same_vectors(refs, odd_path):
    with Embedder("tiny") as small, Embedder(odd_path) as wide:
        models = [ServedModel(small, ("small",)), ServedModel(wide, ("wide",))]
        with serving(models, ServerConfig(cpu_sharing="time")) as (url, server):
            client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
            for model in ("small", "wide"):
                got = client.embeddings.create(model=model, input=TEXTS)
                np.testing.assert_array_equal(_vectors(got), refs[model].embed_documents(TEXTS))
                assert got.usage.prompt_tokens == sum(refs[model].count_tokens(TEXTS))
            # both at once: they take turns, and both are answered
            errors, shapes = [], []

            def worker(model: str) -> None:
                try:
                    for k in range(4):
                        shapes.append((model, _vectors(client.embeddings.create(model=model, input=TEXTS[k:k + 3])).shape))
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))

            threads = [threading.Thread(target=worker, args=(m,)) for m in ("small", "wide", "small", "wide")]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert errors == []
            assert sorted(shapes) == [("small", (3, 256))] * 8 + [("wide", (3, 96))] * 8
            turn = server.services[0].batcher.decode_turn
            assert isinstance(turn, TakeTurns) and server.services[1].batcher.decode_turn is turn
            # every decode step of either worker, and each model's warm-up decode, asked for the
            # turn, and none holds it now
            assert turn._next_ticket == sum(s.batcher.cycles for s in server.services) + 2 > 2
            assert not turn._held and not turn._waiting
            health = _health(url)
            assert [m["requests"] for m in health["models"]] == [1 + 8, 1 + 8]


def _wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_take_turns_is_mutually_exclusive():
    turn, inside, most, lock = TakeTurns(), [0], [0], threading.Lock()

    def worker() -> None:
        for _ in range(200):
            with turn:
                with lock:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                time.sleep(0)  # let the others try
                with lock:
                    inside[0] -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most == [1] and inside == [0]
    assert turn._next_ticket == 800 and not turn._held and not turn._waiting
    # an exception inside the turn gives it back
    with pytest.raises(RuntimeError):
        with turn:
            raise RuntimeError("boom")
    assert not turn._held
    with turn:
        pass


def test_take_turns_grants_in_the_order_asked():
    turn, order = TakeTurns(), []
    release_b = threading.Event()

    def b() -> None:
        with turn:
            order.append("B")
            release_b.wait(10)  # C must still be waiting while B holds it

    def c() -> None:
        with turn:
            order.append("C")

    turn.__enter__()  # A holds it
    tb = threading.Thread(target=b)
    tb.start()
    _wait_until(lambda: len(turn._waiting) == 1)  # B asked first
    tc = threading.Thread(target=c)
    tc.start()
    _wait_until(lambda: len(turn._waiting) == 2)
    time.sleep(0.02)
    assert order == []  # neither while A holds it
    turn.__exit__(None, None, None)
    _wait_until(lambda: order == ["B"])
    time.sleep(0.02)
    assert order == ["B"] and len(turn._waiting) == 1  # C waits for B
    release_b.set()
    tb.join(10)
    tc.join(10)
    assert order == ["B", "C"]


def test_take_turns_a_worker_that_asks_again_queues_behind_a_waiter():
    turn, order = TakeTurns(), []
    holding, go = threading.Event(), threading.Event()

    def worker() -> None:  # one decode step after another, asking again at once
        with turn:
            order.append("w1")
            holding.set()
            go.wait(10)
        with turn:
            order.append("w2")

    def waiter() -> None:
        with turn:
            order.append("x")

    tw = threading.Thread(target=worker)
    tw.start()
    assert holding.wait(10)
    tx = threading.Thread(target=waiter)
    tx.start()
    _wait_until(lambda: len(turn._waiting) == 1)  # the other model's worker waits
    go.set()
    tw.join(10)
    tx.join(10)
    assert order == ["w1", "x", "w2"]


# -- 8. split_threads ------------------------------------------------------------------------------------
def test_split_threads():
    from qembed_gguf.devices import split_threads
    from qembed_gguf.server import cpu

    assert cpu.split_threads is split_threads
    cases = {(2, 2): [1, 1], (5, 2): [3, 2], (7, 3): [3, 2, 2], (8, 3): [3, 3, 2], (9, 3): [3, 3, 3],
             (8, 1): [8], (1, 1): [1], (1, 3): [1, 1, 1], (2, 5): [1, 1, 1, 1, 1], (16, 4): [4, 4, 4, 4]}
    for (total, n), want in cases.items():
        got = split_threads(total, n)
        assert got == want, (total, n, got)
        assert len(got) == n and min(got) >= 1
        assert sum(got) == max(total, n)  # every thread given out; 1 each when there are too few
        assert max(got) - min(got) <= 1
    for total, n in ((0, 2), (-1, 1), (2, 0), (2, -1), (True, 1), (2, True), (2.0, 1), (2, 1.0), ("2", 1),
                     (None, 1), (2, None)):
        with pytest.raises(InputError):
            split_threads(total, n)


# -- 9. the CLI --------------------------------------------------------------------------------------------
class _FakeEmbedder:
    """Stands in for Embedder in ``serve``: records what it was made with; nothing is loaded."""

    made: list["_FakeEmbedder"] = []
    fail_on: str | None = None

    def __init__(self, path, **kwargs):
        if path == self.fail_on:
            raise InputError(f"cannot load {path}")
        self.path, self.kwargs, self.closed = path, kwargs, False
        self.made.append(self)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def cli(monkeypatch):
    from click.testing import CliRunner

    from qembed_gguf import devices, embedder, opening, server
    from qembed_gguf.cli import main

    seen = {}
    monkeypatch.setattr(server, "run", lambda models, config, **kw: seen.update(models=models, config=config, **kw))
    monkeypatch.setattr(embedder, "Embedder", _FakeEmbedder)  # ServedModel's type check sees the fake
    monkeypatch.setattr(opening, "open_model", _FakeEmbedder)   # what serve opens each MODEL with
    monkeypatch.setattr(devices, "usable_cpus", lambda: 4)
    monkeypatch.setattr(_FakeEmbedder, "made", [])
    monkeypatch.setattr(_FakeEmbedder, "fail_on", None)

    def invoke(*args):
        seen.clear()
        return CliRunner().invoke(main, ["serve", *args]), seen

    return invoke


def test_serve_two_models_with_a_name_each(cli):
    r, seen = cli("a.gguf", "b.gguf", "--model-name", "query", "--model-name", "docs", "--threads", "2")
    assert r.exit_code == 0, r.output
    models, config = seen["models"], seen["config"]
    assert isinstance(models, list) and all(isinstance(m, ServedModel) for m in models)
    assert [(m.model.path, m.names) for m in models] == [("a.gguf", ("query",)), ("b.gguf", ("docs",))]
    assert config.model_names == () and config.cpu_sharing == "split"
    assert [m.model.kwargs["n_threads"] for m in models] == [1, 1]  # split: 2 threads, 1 each
    served_models(models, config)  # what run() would serve is valid


def test_serve_two_models_default_names(cli):
    r, seen = cli("dir/first.gguf", "other/second.gguf")
    assert r.exit_code == 0, r.output
    assert [m.names for m in seen["models"]] == [("first",), ("second",)]
    # no --threads: the usable CPUs (4 here) split between them
    assert [m.model.kwargs["n_threads"] for m in seen["models"]] == [2, 2]


def test_serve_names_must_match_the_models(cli):
    r, seen = cli("a.gguf", "b.gguf", "--model-name", "only")
    assert r.exit_code == 2 and "2 models take one --model-name each" in r.output and "got 1" in r.output
    r, _ = cli("a.gguf", "b.gguf", "c.gguf", "--model-name", "x", "--model-name", "y")
    assert r.exit_code == 2 and "3 models take one --model-name each" in r.output and "got 2" in r.output
    r, _ = cli("x/m.gguf", "y/m.gguf")
    assert r.exit_code == 2 and "'m'" in r.output and "--model-name" in r.output
    r, _ = cli("a.gguf", "b.gguf", "--model-name", "same", "--model-name", "same")
    assert r.exit_code == 2 and "'same'" in r.output
    r, _ = cli("a.gguf", "b.gguf", "--cpu-sharing", "bogus")
    assert r.exit_code == 2 and "bogus" in r.output
    r, _ = cli("a.gguf", "--model-name", "a", "--model-name", "a")  # one model, an id twice
    assert r.exit_code == 2 and "'a' is given twice" in r.output
    assert seen == {} and _FakeEmbedder.made == []  # refused before anything loads


def test_serve_cpu_sharing(cli):
    r, seen = cli("a.gguf", "b.gguf", "--cpu-sharing", "split", "--threads", "5")
    assert r.exit_code == 0, r.output
    assert [m.model.kwargs["n_threads"] for m in seen["models"]] == [3, 2]
    assert seen["config"].cpu_sharing == "split"
    r, seen = cli("a.gguf", "b.gguf", "--cpu-sharing", "time", "--threads", "2")
    assert r.exit_code == 0, r.output
    assert [m.model.kwargs["n_threads"] for m in seen["models"]] == [2, 2]  # each all of them
    assert seen["config"].cpu_sharing == "time" and seen["config"].model_names == ()
    r, seen = cli("a.gguf", "b.gguf", "c.gguf", "--cpu-sharing", "time")
    assert r.exit_code == 0, r.output
    assert [m.model.kwargs["n_threads"] for m in seen["models"]] == [None] * 3  # the Embedder's default: all


def test_serve_one_model_is_served_as_before(cli):
    r, seen = cli("a.gguf", "--model-name", "x", "--model-name", "y", "--threads", "2")
    assert r.exit_code == 0, r.output
    assert isinstance(seen["models"], _FakeEmbedder) and seen["models"].kwargs["n_threads"] == 2
    assert seen["config"].model_names == ("x", "y")
    r, seen = cli("dir/model.gguf")
    assert r.exit_code == 0, r.output
    assert seen["config"].model_names == ("model",) and seen["models"].kwargs["n_threads"] is None


def test_serve_frees_the_loaded_models_when_one_fails_to_load(cli):
    _FakeEmbedder.fail_on = "c.gguf"
    r, seen = cli("a.gguf", "b.gguf", "c.gguf")
    assert r.exit_code != 0 and "cannot load c.gguf" in r.output
    assert [e.path for e in _FakeEmbedder.made] == ["a.gguf", "b.gguf"]
    assert all(e.closed for e in _FakeEmbedder.made) and seen == {}
