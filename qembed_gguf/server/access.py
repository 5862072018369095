"""Request ids, the access log and the request metrics: :class:`AccessLog`, the outermost ASGI
middleware, so every answer (a 421 or a 401 too) carries ``X-Request-Id`` and is logged and counted.

A request keeps the client's ``X-Request-Id`` when it is 1-128 printable ASCII characters without
spaces (it is written into logs and echoed in a header: nothing else is), else it gets a new
``uuid4().hex``. One line per request goes to the ``qembed_gguf.access`` logger at INFO::

    POST /v1/embeddings 200 12.3ms id=4f0c... client=127.0.0.1 model=qwen3-0.6b inputs=3 tokens=27

with the same fields as attributes of the record (``request_id``, ``method``, ``path``, ``status``,
``latency_ms``, ``inputs``, ``tokens``, ``model``) for structured handlers. A handler reports what
it embedded with :func:`note_embedded`, and the model it routed the request to with :func:`note_model`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.requests import Request

from .metrics import ServerMetrics, endpoint_label

__all__ = ["REQUEST_ID_HEADER", "AccessLog", "note_embedded", "note_model", "request_id"]

access_log = logging.getLogger("qembed_gguf.access")

REQUEST_ID_HEADER = "X-Request-Id"
_SANE_ID = re.compile(rb"[\x21-\x7e]{1,128}")
_SHOWN_PATH = 200  # characters of a path written to the log


def request_id(sent: bytes | None) -> str:
    """The client's id if it is sane (1-128 printable ASCII characters, no spaces), else a new one."""
    if sent is not None and _SANE_ID.fullmatch(sent):
        return sent.decode("ascii")
    return uuid.uuid4().hex


def note_embedded(request: Request, n_inputs: int, n_tokens: int) -> None:
    """Record, for the access log and the metrics, what a successful request embedded."""
    request.state.qembed_embedded = (n_inputs, n_tokens)


def note_model(request: Request, model: str) -> None:
    """Record the served model (its first id) a request was routed to: its metrics' ``model`` label."""
    request.state.qembed_model = model


def _logged_path(scope) -> str:
    """The path as sent (percent-encoded), every byte outside printable ASCII escaped: a client
    cannot write a newline into the log."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    raw = raw.split(b"?", 1)[0]
    text = "".join(chr(c) if 0x21 <= c <= 0x7e else f"%{c:02X}" for c in raw[:_SHOWN_PATH])
    return text + ("…" if len(raw) > _SHOWN_PATH else "")


class AccessLog:
    """ASGI middleware: request id, access log line and request metrics. ``on_error(request,
    exc)`` answers an exception the app raised before it answered (the 500), so that answer too
    carries the id and is counted."""

    def __init__(self, app, metrics: ServerMetrics, on_error):
        self.app = app
        self.metrics = metrics
        self.on_error = on_error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        rid = request_id(next((v for k, v in scope["headers"] if k == b"x-request-id"), None))
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        header = (b"x-request-id", rid.encode("ascii"))
        status: list[int] = []   # the answer's status, once started
        done: list[bool] = []

        def finish() -> None:
            if done:
                return
            done.append(True)
            seconds = time.perf_counter() - start
            code = status[0] if status else 500
            model = state.get("qembed_model", "")
            self.metrics.request_done(model, endpoint_label(scope["path"]), code, seconds)
            embedded = state.get("qembed_embedded")
            if embedded is not None and code == 200:
                self.metrics.embedded(model, *embedded)
            if access_log.isEnabledFor(logging.INFO):
                self._log(scope, rid, code, seconds, embedded, model)

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status.append(message["status"])
                message = {**message, "headers": [*message.get("headers", ()), header]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()  # before the last byte leaves: a client that then scrapes /metrics sees it counted
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status:  # the answer had started: nothing else can be sent
                raise
            response = await self.on_error(Request(scope, receive), exc)
            await response(scope, receive, send_with_id)
        finally:
            finish()

    @staticmethod
    def _log(scope, rid: str, status: int, seconds: float, embedded, model: str) -> None:
        method = scope["method"][:16]
        path = _logged_path(scope)
        client = scope.get("client")
        host = client[0] if client else "-"
        ms = seconds * 1000
        n_inputs, n_tokens = embedded if embedded is not None else (None, None)
        extra = {"request_id": rid, "method": method, "path": path, "status": status, "latency_ms": round(ms, 3),
                 "inputs": n_inputs, "tokens": n_tokens, "model": model or None}
        if embedded is None:
            access_log.info("%s %s %d %.1fms id=%s client=%s", method, path, status, ms, rid, host, extra=extra)
        else:
            access_log.info("%s %s %d %.1fms id=%s client=%s model=%s inputs=%d tokens=%d", method, path, status, ms,
                            rid, host, model, n_inputs, n_tokens, extra=extra)
