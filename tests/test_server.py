"""The OpenAI-compatible server, driven by the official ``openai`` client against a live server
(uvicorn in a thread), compared with the library's vectors for the same inputs."""

from __future__ import annotations

import base64
import threading

import httpx
import numpy as np
import openai
import pytest

from qembed_gguf import Embedder
from qembed_gguf.server import Limits, ServerConfig, is_loopback
from qembed_gguf.server.batcher import Job, MicroBatcher, QueueFull, ShuttingDown

from conftest import TEXTS

KEY = "test-key-123"
LIMITS = Limits(max_inputs=16, max_body_bytes=200_000)


@pytest.fixture(scope="module")
def ref():
    """The library, on the same file, for reference vectors."""
    with Embedder("tiny") as e:
        yield e


@pytest.fixture
def served(live_app):
    e = Embedder("tiny")
    url = live_app(e, ServerConfig(model_names=("tiny", "text-embedding-3-small"), api_key=KEY, limits=LIMITS))
    yield url, e
    e.close()


@pytest.fixture
def client(served):
    return openai.OpenAI(base_url=served[0] + "/v1", api_key=KEY, max_retries=0)


def _vectors(response) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.array([d.embedding for d in response.data], dtype=np.float32)


# -- results ----------------------------------------------------------------------------------------
def test_float_and_base64_equal_the_library(client, ref, served):
    texts = TEXTS  # multilingual, code, emoji, the empty string
    want = ref.embed_documents(texts)
    as_float = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    np.testing.assert_array_equal(_vectors(as_float), want)
    # the openai client asks for base64 by default and decodes it itself
    as_b64 = client.embeddings.create(model="tiny", input=texts)
    np.testing.assert_array_equal(_vectors(as_b64), want)
    assert as_float.model == "tiny" and as_float.object == "list"
    assert as_float.usage.prompt_tokens == as_float.usage.total_tokens == sum(ref.count_tokens(texts))
    # the wire format itself: little-endian float32, as OpenAI
    raw = httpx.post(served[0] + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "tiny", "input": texts[0], "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(decoded, ref.embed_documents(texts[0])[0])  # alone, as the server computed it


def test_repeated_inputs_are_decoded_once_and_counted_every_time(client, ref, served):
    e = served[1]
    texts = ["same"] * 15 + ["other"]  # the fixture's limit: 16 inputs per request
    before = e.stats.sequences_decoded
    response = client.embeddings.create(model="tiny", input=texts, encoding_format="float")
    assert e.stats.sequences_decoded - before == 2
    got = _vectors(response)
    np.testing.assert_array_equal(got, ref.embed_documents(texts))  # the library groups them the same way
    assert response.usage.prompt_tokens == sum(ref.count_tokens(texts))  # usage counts every input
    ids = ref.prepare_texts(["same"])[0]
    before = e.stats.sequences_decoded
    tokens = client.embeddings.create(model="tiny", input=[ids] * 5, encoding_format="float")
    assert e.stats.sequences_decoded - before == 1 and tokens.usage.prompt_tokens == 5 * len(ids)
    np.testing.assert_array_equal(_vectors(tokens), np.repeat(got[:1], 5, axis=0))


def test_dimensions_and_aliases(client, ref):
    for dim in (ref.mrl_min_dim, 100, ref.dim):
        got = _vectors(client.embeddings.create(model="text-embedding-3-small", input=TEXTS[:3], dimensions=dim))
        assert got.shape == (3, dim)
        np.testing.assert_array_equal(got, ref.embed_documents(TEXTS[:3], dim=dim))
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)


def test_query_instructions(client, ref):
    got = _vectors(client.embeddings.create(model="tiny", input=["what is gguf?"], extra_body={"input_type": "query"}))
    np.testing.assert_array_equal(got, ref.embed_query(["what is gguf?"]))
    task = "Given a question, retrieve passages that answer it"
    got = _vectors(client.embeddings.create(model="tiny", input="what is gguf?", extra_body={"instruction": task}))
    np.testing.assert_array_equal(got, ref.embed_query("what is gguf?", task=task))
    assert not np.array_equal(got, ref.embed_documents("what is gguf?"))


def test_token_id_inputs(client, ref):
    texts = TEXTS[:4]
    sequences = ref.prepare_texts(texts)  # each ends with <|endoftext|>
    without_eos = [s[:-1] or [s[-1]] for s in sequences]
    got = _vectors(client.embeddings.create(model="tiny", input=without_eos, encoding_format="float"))
    np.testing.assert_array_equal(got, ref.embed_documents(texts))
    with_eos = client.embeddings.create(model="tiny", input=sequences)  # not appended twice
    np.testing.assert_array_equal(_vectors(with_eos), ref.embed_documents(texts))
    single = client.embeddings.create(model="tiny", input=without_eos[0])  # one flat list of ids
    np.testing.assert_array_equal(_vectors(single), ref.embed_documents(texts[:1]))
    assert with_eos.usage.prompt_tokens == sum(map(len, sequences))


def test_long_inputs_400_or_truncated(client, ref):
    long = "word " * (ref.max_tokens + 50)
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="tiny", input=["short", long])
    assert err.value.body["code"] == "input_too_long" and err.value.body["param"] == "input[1]"
    assert "input[1]" in err.value.body["message"]
    got = client.embeddings.create(model="tiny", input=["short", long], extra_body={"truncate": True})
    assert got.usage.prompt_tokens == ref.count_tokens("short")[0] + ref.max_tokens
    with Embedder("tiny", truncate=True) as cut:
        np.testing.assert_array_equal(_vectors(got), cut.embed_documents(["short", long]))


def test_models_and_health(client, served):
    assert [m.id for m in client.models.list().data] == ["tiny", "text-embedding-3-small"]
    assert client.models.retrieve("tiny").id == "tiny"
    health = httpx.get(served[0] + "/health")  # open without the key: load balancers probe it
    assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["dim"] == 256


# -- errors: OpenAI-style bodies and status codes ---------------------------------------------------
def _post(url: str, body, *, key: str | None = KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(url + "/v1/embeddings", content=raw, headers={**headers, "Content-Type": "application/json"})
    return httpx.post(url + "/v1/embeddings", json=body, headers=headers)


@pytest.mark.parametrize("body, status, param, code", [
    ({"model": "nope", "input": "x"}, 404, "model", "model_not_found"),
    ({"input": "x"}, 400, "model", "missing_required_parameter"),
    ({"model": "tiny"}, 400, "input", "missing_required_parameter"),
    ({"model": "tiny", "input": "x", "dimensions": 8}, 400, "dimensions", "invalid_value"),
    ({"model": "tiny", "input": "x", "dimensions": 257}, 400, "dimensions", "invalid_value"),
    ({"model": "tiny", "input": "x", "dimensions": "64"}, 400, "dimensions", "invalid_type"),
    ({"model": "tiny", "input": "x", "dimensions": True}, 400, "dimensions", "invalid_type"),
    ({"model": "tiny", "input": 42}, 400, "input", "invalid_type"),
    ({"model": "tiny", "input": []}, 400, "input", "invalid_value"),
    ({"model": "tiny", "input": ["a", 3]}, 400, "input[1]", "invalid_type"),
    ({"model": "tiny", "input": [[1, 2], [3, "4"]]}, 400, "input[1]", "invalid_type"),
    ({"model": "tiny", "input": [[1, 2], [99999]]}, 400, "input[1]", "invalid_value"),
    ({"model": "tiny", "input": [[1, 2], []]}, 400, "input[1]", "invalid_value"),
    ({"model": "tiny", "input": [1, 2], "input_type": "query"}, 400, "input", "invalid_value"),
    ({"model": "tiny", "input": "x", "encoding_format": "hex"}, 400, "encoding_format", "invalid_value"),
    ({"model": "tiny", "input": "x", "input_type": "passage"}, 400, "input_type", "invalid_value"),
    ({"model": "tiny", "input": "x", "instruction": 7}, 400, "instruction", "invalid_type"),
    ({"model": "tiny", "input": "x", "truncate": "yes"}, 400, "truncate", "invalid_type"),
    ({"model": "tiny", "input": ["x"] * 17}, 400, "input", "too_many_inputs"),
    (["not", "an", "object"], 400, None, "invalid_json"),
])
def test_bad_requests_get_openai_errors(served, body, status, param, code):
    r = _post(served[0], body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert error["message"]


def test_bad_requests_through_the_openai_client(client):
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-4", input="x")
    with pytest.raises(openai.BadRequestError, match="dimensions"):
        client.embeddings.create(model="tiny", input="x", dimensions=4096)
    with pytest.raises(openai.BadRequestError, match="16"):
        client.embeddings.create(model="tiny", input=["x"] * 17)
    with pytest.raises(openai.APIStatusError) as err:
        client.embeddings.create(model="tiny", input=["x" * 1000] * 16 * 14)  # > 200 kB body
    assert err.value.status_code == 413 and err.value.body["code"] == "request_too_large"


def test_body_size_limit_without_content_length(served):
    def chunks():  # chunked transfer: the limit is enforced while reading
        yield b'{"model": "tiny", "input": "'
        for _ in range(300):
            yield b"x" * 1000
        yield b'"}'
    r = httpx.post(served[0] + "/v1/embeddings", content=chunks(),
                   headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_api_key_required(served):
    url = served[0]
    for key, message in ((None, "missing API key"), ("wrong", "incorrect API key")):
        r = _post(url, {"model": "tiny", "input": "x"}, key=key)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key" and message in r.json()["error"]["message"]
    assert httpx.get(url + "/v1/models").status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).embeddings.create(model="tiny", input="x")


def test_invalid_json_unknown_route_and_method(served):
    r = _post(served[0], None, raw=b'{"model": "tiny", "input": ')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = httpx.get(served[0] + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(served[0] + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


# -- batching, back-pressure ------------------------------------------------------------------------
def test_concurrent_requests_share_batches(live_app, ref):
    """Concurrent requests are batched together; each gets its own inputs' vectors. A vector
    computed next to other requests' inputs is not bit-identical to the one computed alone
    (llama.cpp's kernels, flash attention's half-precision accumulation above all, depend on what
    shares the batch: measured max |diff| 3.3e-3, cosine >= 0.9998), so they are compared as such."""
    texts = [f"{i}: {t}" for i, t in enumerate(TEXTS * 4)]
    want = {t: ref.embed_documents(t)[0] for t in texts}
    with Embedder("tiny") as served:
        url = live_app(served, ServerConfig(model_names=("tiny",), max_wait_ms=20))
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        worst = [1.0]

        def worker(c: int) -> None:
            for r in range(6):
                start = (c * 7 + r) % (len(texts) - 1)
                batch = texts[start:start + 2]
                got = _vectors(client.embeddings.create(model="tiny", input=batch))
                assert got.shape == (2, ref.dim)
                worst.extend(float(v @ want[t]) for t, v in zip(batch, got))

        threads = [threading.Thread(target=worker, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(worst) == 1 + 8 * 6 * 2  # every request answered
        assert min(worst) >= 0.9995
        health = httpx.get(url + "/health").json()
        assert health["requests"] == 48
        assert health["batches"] < 48  # requests were batched together


def test_queue_full_is_429_with_retry_after(live_app):
    with Embedder("tiny") as e:
        gate, entered = threading.Event(), threading.Event()
        real_pool = e.pool

        def gated_pool(*args, **kwargs):
            entered.set()
            gate.wait(30)
            return real_pool(*args, **kwargs)

        e.pool = gated_pool  # the worker blocks inside its first batch
        url = live_app(e, ServerConfig(model_names=("tiny",), limits=Limits(max_inputs=2), max_queue_inputs=3,
                                       max_wait_ms=0))
        results: dict[str, int] = {}
        first = threading.Thread(target=lambda: results.setdefault("first", _post(url, {
            "model": "tiny", "input": ["a", "b"]}, key=None).status_code))
        first.start()
        assert entered.wait(30)
        r = _post(url, {"model": "tiny", "input": ["c", "d"]}, key=None)  # 2 pending + 2 > 3
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "queue_full" and r.json()["error"]["type"] == "rate_limit_error"
        gate.set()
        first.join(30)
        assert results["first"] == 200
        assert _post(url, {"model": "tiny", "input": ["c", "d"]}, key=None).status_code == 200


class _GatedModel:
    """Stands in for an Embedder in the batcher: pooled row = [input length] * 4, and pool()
    blocks until ``gate`` is set, so the tests control when the worker is busy."""

    dim, max_tokens, pooling_token_id, batch_tokens = 4, 1000, 0, 512

    def __init__(self):
        self.gate, self.entered, self.calls = threading.Event(), threading.Event(), []

    def prepare_texts(self, texts):
        return [[7] * len(t) + [0] for t in texts]

    def pool(self, sequences, *, cancelled=None):
        self.calls.append(len(sequences))
        self.entered.set()
        assert self.gate.wait(30)
        return np.repeat(np.array([[len(s)] for s in sequences], dtype=np.float32), 4, axis=1)


def _job(*texts: str) -> Job:
    return Job(texts=list(texts), tokens=None, decode=[True] * len(texts), long_inputs="error")


def test_batcher_admission_cancellation_and_shutdown():
    model = _GatedModel()
    b = MicroBatcher(model, max_queue_inputs=4, max_wait_s=0)
    with pytest.raises(ShuttingDown, match="not running"):  # no worker: refused, never a hung request
        b.submit(_job("a"))
    b.start()
    first = b.submit(_job("aa"))
    assert model.entered.wait(30)  # the worker is inside pool() with the first job
    cancelled, kept = b.submit(_job("bbb")), b.submit(_job("c"))
    with pytest.raises(QueueFull):
        b.submit(_job("d", "e"))  # 1 + 1 + 1 pending, + 2 > 4
    assert cancelled.cancel()  # its client went away while it was queued
    model.gate.set()
    assert first.result(30).pooled[:, 0].tolist() == [3]  # "aa" + pooling token
    assert kept.result(30).pooled[:, 0].tolist() == [2] and kept.result().n_tokens == [2]
    assert model.calls == [1, 1]  # the cancelled job was never computed, and did not fail its batch-mate
    assert b.pending == 0
    b.stop(grace=30)
    with pytest.raises(ShuttingDown):
        b.submit(_job("a"))


def test_auth_cannot_be_bypassed_with_path_tricks(served):
    import http.client

    url = httpx.URL(served[0])
    for path in ("/health/../v1/embeddings", "//v1/embeddings", "/v1/embeddings/", "/%761/embeddings",
                 "/v1//embeddings", "/health%2F..%2Fv1%2Fembeddings"):
        conn = http.client.HTTPConnection(url.host, url.port, timeout=10)
        conn.request("POST", path, body=b'{"model": "tiny", "input": "x"}', headers={"Content-Type": "application/json"})
        status = conn.getresponse().status
        conn.close()
        assert status in (401, 404, 405), (path, status)


def test_health_reveals_no_paths_or_secrets(live_app, tmp_path):
    from qembed_gguf.cache import _redact

    with Embedder("tiny", cache=str(tmp_path / "secret-folder" / "v.db")) as e:
        url = live_app(e, ServerConfig(model_names=("tiny",)))
        body = httpx.get(url + "/health").text
        assert "secret-folder" not in body and '"backend":"sqlite"' in body
    assert _redact("redis://user:pw@host:6379/0?password=s3cret&ttl=5") == "redis://***@host:6379/0?password=%2A%2A%2A&ttl=5"
    assert _redact("redis://[::1]:6379/0") == "redis://[::1]:6379/0"


def test_unloaded_model_is_503(live_app):
    e = Embedder("tiny")
    url = live_app(e, ServerConfig(model_names=("tiny",)))
    assert _post(url, {"model": "tiny", "input": "x"}, key=None).status_code == 200
    e.close()
    r = _post(url, {"model": "tiny", "input": "x"}, key=None)
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_unloaded"
    assert httpx.get(url + "/health").status_code == 503


def test_token_inputs_over_the_limit_are_refused_while_parsing(client, ref):
    eos = ref.pooling_token_id
    at_limit = [5] * (ref.max_tokens - 1)  # + the pooling token = max_tokens
    assert client.embeddings.create(model="tiny", input=[at_limit]).usage.prompt_tokens == ref.max_tokens
    assert client.embeddings.create(model="tiny", input=[at_limit[:-1] + [5, eos]]).usage.prompt_tokens == ref.max_tokens
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="tiny", input=[[1], at_limit + [5]])
    assert err.value.body["param"] == "input[1]" and err.value.body["code"] == "input_too_long"


def test_loopback_detection():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.com")


def test_serve_cli_refuses_a_bad_configuration_before_loading_the_model(tmp_path):
    from click.testing import CliRunner

    from qembed_gguf.cli import main

    missing = tmp_path / "absent.gguf"  # never opened: the configuration is checked first
    r = CliRunner().invoke(main, ["serve", str(missing), "--max-queue", "10", "--max-inputs", "20"])
    assert r.exit_code == 2 and "max_queue_inputs (10) must be >= limits.max_inputs (20)" in r.output
