"""HTTP plumbing of the app: JSON answers, the API-key check, reading a bounded body, noticing a
client that left, and the media-type rule (each a small piece :mod:`.app` composes)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from .protocol import APIError, error_body, is_json_media_type, shown

OPEN_PATHS = frozenset({"/health", "/metrics"})  # answered without an API key (/metrics: unless metrics_need_key)


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _dumps(content)


def _dumps(content: Any) -> bytes:
    try:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate got into a message: \u escapes are valid JSON
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


def _error(e: APIError) -> Response:
    return _JSON(e.body(), status_code=e.status, headers=e.headers)


class _ApiKeyMiddleware:
    """Requires ``Authorization: Bearer <key>`` on every path but ``open_paths`` (constant-time compare)."""

    def __init__(self, app, api_key: str, open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self._key = api_key.encode()
        self._open = open_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self._open:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self._key):
                message = ("missing API key: send 'Authorization: Bearer <key>'" if not header
                           else "incorrect API key")
                response = _JSON(error_body(message, type="invalid_request_error", code="invalid_api_key"),
                                 status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


CLOSE = {"Connection": "close"}  # on answers sent before the body was read: the connection is not reused


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                       code="request_too_large", headers=CLOSE)
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


async def _disconnected(receive) -> None:
    """Returns when the client has gone (the body has been read: the server's next message is
    ``http.disconnect``, which arrives only when the connection closes)."""
    while (await receive())["type"] != "http.disconnect":
        pass


class _ClientLeft(Exception):
    """The client disconnected before its answer was ready."""


def _gone() -> Response:
    return Response(status_code=499)  # nginx's "client closed request": logged, never received


def _require_json(request: Request) -> None:
    """415 for a POST whose body is not declared JSON (see :func:`.protocol.is_json_media_type`)."""
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        got = f"got {shown(content_type)}" if content_type else "none was sent"
        raise APIError(415, f"the request body must be JSON, sent with 'Content-Type: application/json' ({got})",
                       code="unsupported_media_type", headers=CLOSE)
