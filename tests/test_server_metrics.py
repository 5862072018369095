"""The server's operations side against a live server: Prometheus ``/metrics`` (parsed with
prometheus_client's own parser), ``X-Request-Id``, the access log, and the warm start."""

from __future__ import annotations

import logging
import socket
import threading
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from qembed_gguf import Embedder
from qembed_gguf.server import ServerConfig
from qembed_gguf.server import app as server_app

KEY = "metrics-key"


def _scrape(url: str, **headers) -> dict[tuple[str, tuple], float]:
    r = httpx.get(url + "/metrics", headers=headers)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def _value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted({"model": "tiny", **labels}.items()))), 0.0)


@pytest.fixture
def served(live_app):
    with Embedder("tiny") as e:
        yield live_app(e, ServerConfig(model_names=("tiny", "alias"), api_key=KEY)), e


def test_counters_move_by_exactly_the_requests_made(served):
    url, e = served
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    before = _scrape(url)
    usage = [client.embeddings.create(model=m, input=texts).usage.prompt_tokens
             for m, texts in (("tiny", ["a", "b"]), ("alias", "one"), ("tiny", ["w x", "y", "z z z", "a"]))]
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="tiny", input=[])
    unauthorised = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": "x"})
    assert unauthorised.status_code == 401
    after = _scrape(url)

    def moved(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    emb = {"endpoint": "/v1/embeddings"}
    assert moved("qembed_requests_total", status="200", **emb) == 3  # aliases count under the first id
    assert moved("qembed_requests_total", status="400", **emb) == 1
    # a request refused before it named a served model counts under model=""
    assert moved("qembed_requests_total", status="401", **emb) == 0
    assert moved("qembed_requests_total", model="", status="401", **emb) == 1
    assert moved("qembed_inputs_total") == 7
    assert moved("qembed_tokens_total") == sum(usage)
    assert moved("qembed_request_duration_seconds_count", **emb) == 4
    assert moved("qembed_request_duration_seconds_count", model="", **emb) == 1
    assert moved("qembed_request_inputs_count") == 3 and moved("qembed_request_inputs_sum") == 7
    assert moved("qembed_request_inputs_bucket", le="2.0") == 2  # 2 inputs and 1 input; not the 4
    # the model's work is the Embedder's own count
    assert _value(after, "qembed_decode_calls_total") == e.stats.decode_calls > 0
    assert _value(after, "qembed_sequences_decoded_total") == e.stats.sequences_decoded
    assert _value(after, "qembed_tokens_decoded_total") == e.stats.tokens_decoded
    assert _value(after, "qembed_batches_total") == httpx.get(url + "/health").json()["batches"]
    assert _value(after, "qembed_queue_inputs") == 0 and _value(after, "qembed_ready") == 1
    # one observation per decode step, holding every sequence and token the model decoded
    assert _value(after, "qembed_batch_inputs_count") == _value(after, "qembed_batches_total") > 0
    assert _value(after, "qembed_batch_inputs_sum") == e.stats.sequences_decoded
    assert _value(after, "qembed_batch_tokens_sum") == e.stats.tokens_decoded
    # the first scrape is counted by the second one (it was answered before the second began)
    assert moved("qembed_requests_total", model="", status="200", endpoint="/metrics") == 1
    # an invented path cannot create series
    httpx.get(url + "/no/such/path-" + "x" * 50, headers={"Authorization": f"Bearer {KEY}"})
    assert _value(_scrape(url), "qembed_requests_total", model="", status="404", endpoint="other") == 1


def test_cache_counters(live_app, tmp_path):
    with Embedder("tiny", cache=str(tmp_path / "v.db")) as e:
        url = live_app(e, ServerConfig(model_names=("tiny",)))
        body = {"model": "tiny", "input": ["p", "q", "r"]}
        httpx.post(url + "/v1/embeddings", json=body).raise_for_status()
        httpx.post(url + "/v1/embeddings", json=body).raise_for_status()
        samples = _scrape(url)
        assert (_value(samples, "qembed_cache_misses_total"), _value(samples, "qembed_cache_hits_total")) == (3, 3)
        assert _value(samples, "qembed_inputs_total") == 6  # usage counts the hits too


def test_metrics_open_by_default_or_behind_the_key(live_app):
    with Embedder("tiny") as e:
        url = live_app(e, ServerConfig(model_names=("tiny",), api_key=KEY))
        assert httpx.get(url + "/metrics").status_code == 200
        assert httpx.get(url + "/v1/models").status_code == 401
        locked = live_app(e, ServerConfig(model_names=("tiny",), api_key=KEY, metrics_need_key=True))
        r = httpx.get(locked + "/metrics")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert httpx.get(locked + "/health").status_code == 200  # /health stays open
        _scrape(locked, Authorization=f"Bearer {KEY}")
        # the Host allow-list still applies
        r = httpx.get(url + "/metrics", headers={"Host": "evil.example"})
        assert r.status_code == 421 and len(r.headers["x-request-id"]) == 32


def test_serve_cli_passes_metrics_need_key(monkeypatch):
    from click.testing import CliRunner

    from qembed_gguf import server
    from qembed_gguf.cli import main

    seen = {}
    monkeypatch.setattr(server, "run", lambda embedder, config, **kw: seen.update(config=config))
    for args, want in (([], False), (["--metrics-need-key"], True)):
        r = CliRunner().invoke(main, ["serve", "tiny", "--api-key", KEY, *args])
        assert r.exit_code == 0, r.output
        assert seen["config"].metrics_need_key is want


def test_request_id_echoed_or_generated(served):
    url, _ = served
    auth = {"Authorization": f"Bearer {KEY}"}
    sane = "req-42_abc.DEF:~" + "9" * 100
    assert httpx.get(url + "/v1/models", headers={**auth, "X-Request-Id": sane}).headers["x-request-id"] == sane
    generated = {httpx.get(url + "/health").headers["x-request-id"] for _ in range(2)}
    assert len(generated) == 2 and all(len(g) == 32 and int(g, 16) >= 0 for g in generated)
    for hostile in ("a" * 129, "x" * 10_000, "two words", "é", ""):
        got = httpx.get(url + "/health", headers={"X-Request-Id": hostile.encode("utf-8")}).headers["x-request-id"]
        assert got != hostile and len(got) == 32, hostile
    # a newline cannot be sent through httpx: raw bytes on the socket
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Request-Id: a\nb\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert b"x-request-id: a\n" not in head and b"\nb\r\n" not in head  # refused by the parser or replaced
    # errors and 401s carry one too
    r = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": "x"}, headers={"X-Request-Id": "mine"})
    assert r.status_code == 401 and r.headers["x-request-id"] == "mine"


def test_access_log_line(served, caplog):
    url, _ = served
    with caplog.at_level(logging.INFO, logger="qembed_gguf.access"):
        r = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": ["a b", "c"]},
                       headers={"Authorization": f"Bearer {KEY}", "X-Request-Id": "trace-1"})
        httpx.get(url + "/health%0Aforged%20line", headers={"X-Request-Id": "trace-2"})
    tokens = r.json()["usage"]["prompt_tokens"]
    records = {rec.request_id: rec for rec in caplog.records if rec.name == "qembed_gguf.access"}
    one = records["trace-1"]
    assert (one.method, one.path, one.status, one.inputs, one.tokens) == ("POST", "/v1/embeddings", 200, 2, tokens)
    assert one.latency_ms > 0 and one.levelno == logging.INFO
    line = one.getMessage()
    assert line.startswith("POST /v1/embeddings 200 ") and "ms id=trace-1 " in line
    assert line.endswith(f"inputs=2 tokens={tokens}")
    two = records["trace-2"]
    assert two.status == 401 and two.inputs is None and "\n" not in two.getMessage()
    assert two.path == "/health%0Aforged%20line"


def test_health_is_loading_until_the_warm_up_decode_ran(live_app, monkeypatch):
    monkeypatch.setattr(server_app, "WARMUP_WAIT_S", 0.05)  # the startup does not wait for a slow warm-up
    with Embedder("tiny") as e:
        e._lock.acquire()  # the warm-up decode waits for the model, as while weights are paged in
        try:
            url = live_app(e, ServerConfig(model_names=("tiny",)))
            r = httpx.get(url + "/health")
            assert r.status_code == 503 and r.json()["status"] == "loading"
            assert _value(_scrape(url), "qembed_ready") == 0
            answered = []  # a request sent meanwhile waits for the model, and is answered
            t = threading.Thread(target=lambda: answered.append(
                httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": "x"}, timeout=30).status_code))
            t.start()
        finally:
            e._lock.release()
        deadline = time.monotonic() + 10
        while (r := httpx.get(url + "/health")).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        t.join(30)
        assert r.json()["status"] == "ok" and answered == [200]
        # the warm-up is not counted as a client's work
        assert httpx.get(url + "/health").json()["decode_calls"] == e.stats.decode_calls == 1


def test_quick_warm_up_is_done_before_the_server_listens(live_app):
    with Embedder("tiny") as e:
        url = live_app(e, ServerConfig(model_names=("tiny",)))
        health = httpx.get(url + "/health")
        assert health.status_code == 200 and health.json()["status"] == "ok" and health.json()["decode_calls"] == 0
