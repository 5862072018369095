"""The server against hostile clients (issue 16, round two), each probe over real HTTP against a
live server: bodies that broke the JSON parser or the UTF-8 encoder, browsers (DNS rebinding,
blind text/plain POSTs, CORS), clients that leave, requests too large in tokens, stalled uploads,
echoed names, and a bounded graceful shutdown (a ``qembed-gguf serve`` subprocess)."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import threading
import time

import httpx
import numpy as np
import pytest

from qembed_gguf import Embedder
from qembed_gguf.errors import InvalidTextError
from qembed_gguf.server import Limits, ServerConfig
from qembed_gguf.server.batcher import Job, JobCancelled, MicroBatcher, ShuttingDown
from qembed_gguf.server.protocol import json_depth, shown
from qembed_gguf.server.security import allowed_hosts, host_allowed, host_name

JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def embedder():
    with Embedder("tiny") as e:
        yield e


@pytest.fixture
def url(live_app, embedder):
    return live_app(embedder, ServerConfig(model_names=("tiny",)))


def _raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request with exactly these headers (``Host`` included), by http.client."""
    u = httpx.URL(url)
    conn = http.client.HTTPConnection(u.host, u.port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _post(url: str, raw: bytes) -> httpx.Response:
    return httpx.post(url + "/v1/embeddings", content=raw, headers=JSON, timeout=30)


def _error(r: httpx.Response) -> dict:
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- A: bodies that gave HTTP 500 ------------------------------------------------------------------
@pytest.mark.parametrize("raw", [
    b'{"model": "tiny", "input": "x", "user": ' + b"[" * 1000 + b"]" * 1000 + b"}",  # valid JSON, in an ignored field
    b'{"model": "tiny", "input": ' + b"[" * 100_000,
    b'{"model": "tiny", "input": "x", "user": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
])
def test_deep_nesting_is_400_not_500(url, raw):
    r = _post(url, raw)
    assert r.status_code == 400, r.text
    error = _error(r)
    assert error["code"] == "invalid_json" and "deep" in error["message"] and "64" in error["message"]


def test_json_depth_scan():
    assert json_depth(b'{"a": "[[[{{{", "b": [[1], [2]], "c": "\\"[[["}') == 3  # brackets in strings don't count
    assert json_depth(b"[" * 70 + b"]" * 70) == 70
    body = b'{"model": "tiny", "input": "x", "user": ' + b"[" * 60 + b"]" * 60 + b"}"
    assert json_depth(body) == 61  # deep, but under the bound: accepted


@pytest.mark.parametrize("body, param, position", [
    (b'{"model": "tiny", "input": "ab\\ud800"}', "input[0]", 2),
    (b'{"model": "tiny", "input": ["fine", "x\\udfff y"]}', "input[1]", 1),
    (b'{"model": "tiny", "input": ["q"], "instruction": "\\ud83d retrieve"}', "instruction", 0),
])
def test_lone_surrogates_are_400_naming_the_input_and_position(url, body, param, position):
    r = _post(url, body)
    assert r.status_code == 400, r.text
    error = _error(r)
    assert error["param"] == param and param in error["message"]
    assert f"at character {position}" in error["message"] and "surrogate" in error["message"]


def test_a_surrogate_pair_is_text(url, embedder):
    r = _post(url, b'{"model": "tiny", "input": ["\\ud83d\\ude00"], "encoding_format": "float"}')
    assert r.status_code == 200
    np.testing.assert_array_equal(np.array([r.json()["data"][0]["embedding"]], np.float32),
                                  embedder.embed_documents(["\U0001F600"]))


@pytest.mark.parametrize("body, status, param, words", [
    (b'{"model": "tiny", "input": [1, 2, -Infinity]}', 400, "input[2]", "input[2] is -Infinity, not an integer"),
    (b'{"model": "tiny", "input": [1, 2.5]}', 400, "input[1]", "input[1] is float"),
    (b'{"model": "tiny", "input": [[1], [NaN]]}', 400, "input[1]", "input[1][0] is NaN"),
    (b'{"model": "tiny", "input": "x", "dimensions": Infinity}', 400, "dimensions", "got Infinity"),
    (b'{"model": "tiny", "input": "x", "user": NaN}', 400, None, "NaN"),
])
def test_nan_and_infinity_are_not_json(url, body, status, param, words):
    r = _post(url, body)
    assert r.status_code == status, r.text
    error = _error(r)
    assert error["param"] == param and words in error["message"]


def test_library_text_errors_are_400(live_app):
    """Should a text reach the library that it refuses (the protocol checks first), the answer
    is still a 400 naming the input, not a 500."""
    with Embedder("tiny") as e:
        def refuse(texts):
            raise InvalidTextError("texts[1] holds a lone surrogate", what="texts", index=1, position=0)
        e.prepare_texts = refuse
        url = live_app(e, ServerConfig(model_names=("tiny",)))
        r = _post(url, b'{"model": "tiny", "input": ["a", "b"]}')
    assert r.status_code == 400 and _error(r)["param"] == "input[1]"


def test_echoed_names_are_cut(url):
    long = "m" * 1_000_000
    r = _post(url, json.dumps({"model": long, "input": "x"}).encode())
    assert r.status_code == 404 and len(r.content) < 1000 and "…" in _error(r)["message"]
    r = httpx.get(url + "/v1/models/" + "n" * 20_000)
    assert r.status_code == 404 and len(r.content) < 1000
    r = httpx.get(url + "/v1/" + "p" * 20_000)  # unknown path: the path is cut too
    assert r.status_code == 404 and len(r.content) < 1000
    r = _post(url, b'{"model": "\\ud800", "input": "x"}')  # a surrogate in an echoed value: still JSON
    assert r.status_code == 404 and "\\ud800" in _error(r)["message"]
    assert shown("x" * 100).endswith("'…") and len(shown("x" * 100)) == 67


# -- B: the browser as an attacker ------------------------------------------------------------------
def test_host_header_allow_list(url):
    port = httpx.URL(url).port
    body = b'{"model": "tiny", "input": "x"}'
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", "localhost.evil.example"):
        status, headers, raw = _raw(url, "POST", "/v1/embeddings", body, {"Host": host, **JSON})
        assert status == 421, host
        error = json.loads(raw)["error"]
        assert error["code"] == "host_not_allowed" and "--allowed-host" in error["message"]
        assert _raw(url, "GET", "/health", None, {"Host": host})[0] == 421  # every path
    for host in (f"localhost:{port}", "LOCALHOST", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert _raw(url, "POST", "/v1/embeddings", body, {"Host": host, **JSON})[0] == 200, host


def test_allowed_host_option(live_app, embedder):
    url = live_app(embedder, ServerConfig(model_names=("tiny",), allowed_hosts=("api.example", "*.corp.example")))
    for host, status in (("api.example", 200), ("API.example:443", 200), ("x.corp.example", 200),
                         ("corp.example.evil", 421), ("localhost", 200), ("evil.example", 421)):
        assert _raw(url, "GET", "/health", None, {"Host": host})[0] == status, host
    url = live_app(embedder, ServerConfig(model_names=("tiny",), allowed_hosts=("*",)))
    assert _raw(url, "GET", "/health", None, {"Host": "anything.example"})[0] == 200


def test_host_policy():
    assert allowed_hosts((), "0.0.0.0") is None  # listening on the network: any Host (the API key protects it)
    assert allowed_hosts(("*",), "127.0.0.1") is None
    assert allowed_hosts((), "127.0.0.1") == ("localhost", "127.0.0.1", "::1")
    assert allowed_hosts((), None) == ("localhost", "127.0.0.1", "::1")  # create_app alone: loopback
    assert allowed_hosts((), "127.0.0.2") == ("localhost", "127.0.0.1", "::1", "127.0.0.2")
    assert allowed_hosts(("Api.Example:8000",), "0.0.0.0") == ("api.example", "localhost", "127.0.0.1", "::1")
    assert allowed_hosts(("api.example",), "192.168.1.5")[-1] == "192.168.1.5"
    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:80") == "localhost"
    assert host_allowed("a.b.example", ["*.example"]) and not host_allowed("example", ["*.example"])


@pytest.mark.parametrize("content_type, status", [
    ("text/plain", 415),                       # what a page may send anywhere without a preflight
    ("application/x-www-form-urlencoded", 415),
    ("multipart/form-data; boundary=x", 415),
    (None, 415),
    ("application/json; charset=utf-8", 200),
    ("Application/JSON", 200),
])
def test_post_bodies_must_be_json(url, content_type, status):
    headers = {"Content-Type": content_type} if content_type else {}
    got, _, raw = _raw(url, "POST", "/v1/embeddings", b'{"model": "tiny", "input": "x"}', headers)
    assert got == status
    if status == 415:
        assert json.loads(raw)["error"]["code"] == "unsupported_media_type"


def _preflight(url: str, origin: str):
    return _raw(url, "OPTIONS", "/v1/embeddings", None, {
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})


def test_no_cors_headers_unless_asked(url):
    status, headers, _ = _preflight(url, "http://evil.example")
    assert "access-control-allow-origin" not in headers and status in (401, 405)
    status, headers, _ = _raw(url, "POST", "/v1/embeddings", b'{"model": "tiny", "input": "x"}',
                              {"Origin": "http://evil.example", **JSON})
    assert status == 200 and not any(h.startswith("access-control-") for h in headers)


def test_cors_origin_option(live_app, embedder):
    app_origin = "http://localhost:3000"
    url = live_app(embedder, ServerConfig(model_names=("tiny",), api_key="k", cors_origins=(app_origin,)))
    status, headers, _ = _preflight(url, app_origin)  # no API key on a preflight: browsers send none
    assert status == 200 and headers["access-control-allow-origin"] == app_origin
    assert "POST" in headers["access-control-allow-methods"]
    assert "authorization" in headers["access-control-allow-headers"].lower()
    status, headers, _ = _raw(url, "POST", "/v1/embeddings", b'{"model": "tiny", "input": "x"}',
                              {"Origin": app_origin, "Authorization": "Bearer k", **JSON})
    assert status == 200 and headers["access-control-allow-origin"] == app_origin
    status, headers, _ = _preflight(url, "http://evil.example")
    assert status == 400 and "access-control-allow-origin" not in headers


# -- C: clients that leave --------------------------------------------------------------------------
def _health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=30).json()


def _request_bytes(url: str, body: bytes) -> bytes:
    u = httpx.URL(url)
    return (f"POST /v1/embeddings HTTP/1.1\r\nHost: {u.host}:{u.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_a_disconnected_client_stops_its_decodes(live_app):
    with Embedder("tiny") as e:
        url = live_app(e, ServerConfig(model_names=("tiny",)))
        text = "word " * 160
        n_inputs = 256  # one decode call each (~480 tokens): several seconds of work
        assert 400 < e.count_tokens(text)[0] <= e.batch_tokens
        body = json.dumps({"model": "tiny", "input": [f"{i} {text}" for i in range(n_inputs)]}).encode()
        u = httpx.URL(url)
        sock = socket.create_connection((u.host, u.port))
        sock.sendall(_request_bytes(url, body))
        deadline = time.monotonic() + 30
        while _health(url)["decode_calls"] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        sock.close()  # the client gives up
        left = time.monotonic()
        last, changed = _health(url)["decode_calls"], left
        while time.monotonic() - changed < 1.0:  # until no decode for a second
            now = _health(url)["decode_calls"]
            if now != last:
                last, changed = now, time.monotonic()
            time.sleep(0.02)
        stopped_after = changed - left
        assert stopped_after < 0.5, stopped_after
        assert last < n_inputs // 4, last  # most of the request was never computed
        start = time.monotonic()
        r = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": "a query"}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - start < 1.0
        health = _health(url)
        assert health["cancelled"] == 1 and health["decode_calls"] == last + 1


class _SteppingModel:
    """A stand-in Embedder whose pool() asks ``cancelled`` before each one-row "decode call", as
    Embedder.pool does, and takes ``step`` seconds per call; a row is [its length] * 4."""

    dim, pooling_token_id, batch_tokens = 4, 0, 512

    def __init__(self, step: float = 0.02, max_tokens: int = 1000):
        self.step, self.decodes, self.entered, self.max_tokens = step, 0, threading.Event(), max_tokens

    def prepare_texts(self, texts):
        return [[7] * len(t) + [0] for t in texts]

    def pool(self, sequences, *, cancelled=None):
        out = np.full((len(sequences), 4), np.nan, np.float32)
        self.entered.set()
        for i, s in enumerate(sequences):
            if cancelled is not None and cancelled(i):
                continue
            time.sleep(self.step)
            self.decodes += 1
            out[i] = len(s)
        return out


def _job(*texts: str) -> Job:
    return Job(texts=list(texts), tokens=None, decode=[True] * len(texts), long_inputs="error")


def test_batcher_skips_the_rest_of_a_cancelled_job():
    model = _SteppingModel()
    b = MicroBatcher(model, max_wait_s=0.05)
    b.start()
    with b.arriving():  # both jobs land in one cycle
        gone, kept = _job(*["x"] * 50), _job("yy", "z")
        b.submit(gone), b.submit(kept)
    assert model.entered.wait(30)
    time.sleep(0.1)
    gone.cancelled = True  # the handler sets this when the client disconnects
    with pytest.raises(JobCancelled):
        gone.future.result(30)
    assert kept.future.result(30).pooled[:, 0].tolist() == [3, 2]  # its batch-mate is unaffected
    assert model.decodes < 20 and b.jobs_cancelled == 1
    b.stop(grace=5)


def test_batcher_shutdown_grace_then_cancel():
    model = _SteppingModel(step=0.05)
    b = MicroBatcher(model, max_wait_s=0)
    b.start()
    running = b.submit(_job(*["x"] * 200))  # 10 s of "decodes"
    assert model.entered.wait(30)
    queued = b.submit(_job("y"))
    start = time.monotonic()
    b.shutdown(grace=0.3)
    with pytest.raises(ShuttingDown):
        b.submit(_job("z"))
    with pytest.raises(ShuttingDown):
        queued.result(30)  # failed at the deadline, while the worker is still inside pool()
    with pytest.raises(ShuttingDown):
        running.result(30)
    b.stop(grace=0.3)
    assert time.monotonic() - start < 1.5 and model.decodes < 40


# -- D: tokens per request --------------------------------------------------------------------------
def test_max_request_tokens(live_app):
    with Embedder("tiny") as e:
        url = live_app(e, ServerConfig(model_names=("tiny",), limits=Limits(max_request_tokens=1000)))
        texts = ["word " * 100] * 4  # 4 x ~300 tokens
        total = sum(e.count_tokens(texts))
        before = _health(url)["decode_calls"]
        r = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": texts}, timeout=30)
        assert r.status_code == 400, r.text
        error = _error(r)
        assert error["code"] == "max_tokens_per_request" and f"{total} tokens" in error["message"]
        assert "1000" in error["message"]
        assert _health(url)["decode_calls"] == before  # refused before any decode
        r = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": [[5] * 600, [5] * 600]}, timeout=30)
        assert r.status_code == 400 and "1202 tokens" in _error(r)["message"]  # token ids: while parsing
        ok = httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": [[5] * 999]}, timeout=30)
        assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 1000  # at the limit


# -- F: stalled uploads -----------------------------------------------------------------------------
def test_stalled_upload_times_out_and_delays_nobody(live_app, embedder):
    url = live_app(embedder, ServerConfig(model_names=("tiny",), read_timeout_s=1.0, max_wait_ms=500))
    u = httpx.URL(url)
    stalled = socket.create_connection((u.host, u.port))
    stalled.sendall(_request_bytes(url, b'{"model": "tiny", "input": "' + b"x" * 100)[:-50])  # half the body
    time.sleep(0.2)
    latencies = []
    for _ in range(3):  # the stalled request does not hold the micro-batch window open for others
        start = time.monotonic()
        assert httpx.post(url + "/v1/embeddings", json={"model": "tiny", "input": "q"}, timeout=30).status_code == 200
        latencies.append(time.monotonic() - start)
    assert min(latencies) < 0.25, latencies
    stalled.settimeout(10)
    start = time.monotonic()
    answer = b""
    while chunk := stalled.recv(65536):  # the server closes the connection after its answer
        answer += chunk
    stalled.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    assert time.monotonic() - start < 2.0


# -- E: a bounded graceful shutdown -----------------------------------------------------------------
def test_sigterm_exits_within_the_shutdown_timeout(tmp_path):
    """``qembed-gguf serve`` busy with a ~25 s request and holding a stalled upload: SIGTERM ends
    the process within the grace period + one decode call; both clients get 503. The command's
    host and CORS options are checked on the way."""
    from test_server_load import _bench

    bench = _bench()
    with Embedder("tiny") as e:
        path = str(e.path)
    grace = 1.5
    with bench.ServerProcess(path, ["--model-name", "tiny", "--shutdown-timeout", str(grace),
                                    "--allowed-host", "api.example", "--cors-origin", "http://app.example"],
                             cwd=str(tmp_path)) as server:
        assert _raw(server.url, "GET", "/health", None, {"Host": "api.example:8000"})[0] == 200
        assert _raw(server.url, "GET", "/health", None, {"Host": "evil.example"})[0] == 421
        assert _preflight(server.url, "http://app.example")[1]["access-control-allow-origin"] == "http://app.example"
        body = {"model": "tiny", "input": [f"{i} " + "word " * 160 for i in range(512)]}  # ~25 s of decodes
        answer: dict = {}
        client = threading.Thread(target=lambda: answer.setdefault(
            "r", httpx.post(server.url + "/v1/embeddings", json=body, timeout=60)))
        client.start()
        u = httpx.URL(server.url)
        stalled = socket.create_connection((u.host, u.port))
        stalled.sendall(_request_bytes(server.url, b'{"model": "tiny", "input": "' + b"x" * 100)[:-50])
        deadline = time.monotonic() + 30
        while _health(server.url)["decode_calls"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(30)
        took = time.monotonic() - start
        client.join(30)
        stalled.settimeout(10)
        stalled_answer = stalled.recv(65536)
        stalled.close()
        log = server.output()
    assert code in (0, -signal.SIGTERM)
    assert took < grace + 3.0, (took, log)
    r = answer["r"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
    assert stalled_answer.startswith(b"HTTP/1.1 503")  # not left to the 30 s read timeout
    assert "grace period over" in log and "Application shutdown complete" in log
