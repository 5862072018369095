"""The ASGI application: OpenAI-compatible ``/v1/embeddings``, ``/v1/models``, ``/health``.

Nothing here reads files or renders templates: a request can only name the served model, send
text or token ids, and choose the output dimension and encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import json
import logging
import time
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ..embedder import Embedder
from ..errors import InputError, InputTooLongError
from ..postprocess import l2_normalize, truncate_dim
from .batcher import Job, MicroBatcher, QueueFull, ShuttingDown
from .protocol import APIError, Limits, embeddings_body, error_body, models_body, parse_embedding_request

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health"})  # answered without an API key


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server answers. ``model_names``: the ids clients may send as ``model``."""

    model_names: tuple[str, ...]
    api_key: str | None = None
    limits: Limits = Limits()
    truncate: bool = False            # default of the request's "truncate" field
    max_wait_ms: float = 5.0          # micro-batching window (only while other requests are arriving)
    max_batch_inputs: int = 512
    max_queue_inputs: int = 8192

    def __post_init__(self):
        if isinstance(self.model_names, str) or not self.model_names or not all(
                isinstance(n, str) and n for n in self.model_names):
            raise ValueError(f"model_names must be a non-empty tuple of non-empty strings, got {self.model_names!r}")
        if self.max_queue_inputs < self.limits.max_inputs:
            raise ValueError(f"max_queue_inputs ({self.max_queue_inputs}) must be >= limits.max_inputs "
                             f"({self.limits.max_inputs}), or a full-size request could never be accepted")


PARSE_OFF_LOOP_BYTES = 1 << 20  # bodies larger than this are parsed in a worker thread


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _dumps(content)


def _dumps(content: Any) -> bytes:
    return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _error(e: APIError) -> Response:
    return _JSON(e.body(), status_code=e.status, headers=e.headers)


class _ApiKeyMiddleware:
    """Requires ``Authorization: Bearer <key>`` on every path but ``/health`` (constant-time compare)."""

    def __init__(self, app, api_key: str):
        self.app = app
        self._key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_PATHS:
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


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = APIError(413, f"the request body is larger than this server's limit of {limit} bytes",
                       code="request_too_large")
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


class EmbeddingService:
    """Request handling on top of one Embedder and its :class:`MicroBatcher`."""

    def __init__(self, embedder: Embedder, config: ServerConfig):
        self.embedder = embedder
        self.config = config
        self.limits = dataclasses.replace(config.limits, max_input_tokens=embedder.max_tokens)
        self.batcher = MicroBatcher(embedder, max_wait_s=config.max_wait_ms / 1000,
                                    max_batch_inputs=config.max_batch_inputs,
                                    max_queue_inputs=config.max_queue_inputs)
        self.created = int(time.time())
        self.requests = 0

    def _busy(self, why: str) -> APIError:
        return APIError(429, f"the server is busy: {why}; retry shortly", type="rate_limit_error", code="queue_full",
                        headers={"Retry-After": "1"})

    def _unavailable(self) -> APIError | None:
        if self.embedder.closed:
            return APIError(503, "the model has been unloaded", type="server_error", code="model_unloaded")
        if not self.batcher.running:
            return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
        return None

    def _parse(self, body: bytes):
        e = self.embedder
        return parse_embedding_request(body, served=self.config.model_names, full_dim=e.dim, min_dim=e.mrl_min_dim,
                                       default_task=e.facts.default_task, n_vocab=e.n_vocab,
                                       eos_id=e.pooling_token_id, limits=self.limits,
                                       truncate_default=self.config.truncate)

    async def embeddings(self, request: Request) -> Response:
        with self.batcher.arriving():
            try:
                unavailable = self._unavailable()
                if unavailable is not None:
                    raise unavailable
                if self.batcher.pending >= self.batcher.max_queue_inputs:  # before reading the body
                    raise self._busy(f"{self.batcher.pending} inputs are waiting")
                body = await _read_body(request, self.limits.max_body_bytes)
                req = await asyncio.to_thread(self._parse, body) if len(body) > PARSE_OFF_LOOP_BYTES \
                    else self._parse(body)
                texts = req.texts
                if texts is not None and req.instruction is not None:
                    texts = [self.embedder.format_query(t, req.instruction) for t in texts]
                dim = req.dim or self.embedder.dim
                cache = self.embedder.cache if texts is not None else None
                keys = cache.keys(texts, dim, True) if cache is not None else None
                cached = await self._lookup(cache, keys, dim) if keys is not None else [None] * len(req)
                job = Job(texts=texts, tokens=req.tokens, decode=[v is None for v in cached], truncate=req.truncate)
                future = self.batcher.submit(job)
            except APIError as err:
                return _error(err)
            except QueueFull as err:
                return _error(self._busy(str(err)))
            except ShuttingDown as err:
                return _error(APIError(503, str(err), type="server_error", code="shutting_down"))
        try:
            result = await asyncio.wrap_future(future)
        except InputTooLongError as err:
            return _error(APIError(400, f"input[{err.index}] has {err.n_tokens} tokens, more than this server's limit "
                                        f"of {err.max_tokens} (pooling token included); shorten it or send "
                                        f"\"truncate\": true", param=f"input[{err.index}]", code="input_too_long"))
        except InputError as err:
            unavailable = self._unavailable()
            if unavailable is not None:  # the model was unloaded under the request
                return _error(unavailable)
            return _error(APIError(400, str(err), param="input"))
        self.requests += 1
        fresh = l2_normalize(truncate_dim(result.pooled, req.dim))
        vectors = np.empty((len(cached), dim), dtype=np.float32)
        rows = [i for i, v in enumerate(cached) if v is None]
        vectors[rows] = fresh
        for i, v in enumerate(cached):
            if v is not None:
                vectors[i] = v
        # a request that truncated inputs is not cached: an Embedder(truncate=False) sharing the
        # cache must still refuse those texts
        if keys is not None and rows and not result.truncated:
            await asyncio.to_thread(cache.store, [keys[i] for i in rows], fresh)
        if vectors.size > 200_000:  # a large body is built and rendered off the event loop
            payload = await asyncio.to_thread(self._render, vectors, req, sum(result.n_tokens))
            return Response(payload, media_type="application/json")
        return _JSON(embeddings_body(vectors, model=req.model, encoding_format=req.encoding_format,
                                     prompt_tokens=sum(result.n_tokens)))

    @staticmethod
    def _render(vectors: np.ndarray, req, prompt_tokens: int) -> bytes:
        return _dumps(embeddings_body(vectors, model=req.model, encoding_format=req.encoding_format,
                                      prompt_tokens=prompt_tokens))

    async def _lookup(self, cache, keys: list[bytes], dim: int) -> list[np.ndarray | None]:
        """Cached vectors under ``keys``, None where the model must run (counted in the stats)."""
        found = await asyncio.to_thread(cache.lookup, keys, dim)
        hits = sum(v is not None for v in found)
        self.embedder.stats.add(cache_hits=hits, cache_misses=len(found) - hits)
        return found

    async def models(self, request: Request) -> Response:
        return _JSON(models_body(self.config.model_names, self.created))

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.config.model_names:
            return _error(APIError(404, f"the model {name!r} does not exist on this server", param="model",
                                   code="model_not_found"))
        return _JSON(models_body([name], self.created)["data"][0])

    async def health(self, request: Request) -> Response:
        ok = self._unavailable() is None
        s = self.embedder.stats
        return _JSON({
            "status": "ok" if ok else "unavailable",
            "model": self.config.model_names[0],
            "dim": self.embedder.dim,
            "queue_inputs": self.batcher.pending,
            "requests": self.requests,
            "batches": self.batcher.cycles,
            "decode_calls": s.decode_calls,
            "cache": {"backend": self.embedder.cache.backend.kind, "hits": s.cache_hits,
                      "misses": s.cache_misses} if self.embedder.cache is not None else None,
        }, status_code=200 if ok else 503)


def create_app(embedder: Embedder, config: ServerConfig, *, close_embedder: bool = False) -> Starlette:
    """The ASGI app serving ``embedder``; the batcher starts and stops with the app's lifespan."""
    service = EmbeddingService(embedder, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        log.info("serving %s (dim %d, max %d tokens per input) as %s", embedder.path.name, embedder.dim,
                 embedder.max_tokens, ", ".join(config.model_names))
        try:
            yield
        finally:
            await asyncio.to_thread(service.batcher.stop)
            if close_embedder:
                embedder.close()

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _JSON(error_body(f"{request.method} {request.url.path}: {exc.detail}", type="invalid_request_error",
                                code=code), status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _JSON(error_body(f"internal error: {type(exc).__name__}", type="server_error"), status_code=500)

    app = Starlette(
        routes=[
            Route("/v1/embeddings", service.embeddings, methods=["POST"]),
            Route("/embeddings", service.embeddings, methods=["POST"]),
            Route("/v1/models", service.models, methods=["GET"]),
            Route("/v1/models/{name:path}", service.model, methods=["GET"]),
            Route("/health", service.health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.service = service
    if config.api_key:
        app.add_middleware(_ApiKeyMiddleware, api_key=config.api_key)
    return app
