"""The ASGI application: OpenAI-compatible ``/v1/embeddings``, ``/v1/models``, ``/health``; ``/tokenize``,
``/detokenize``; of one model or several.

Nothing here reads files or renders templates: a request can only name a served model, send
text or token ids, and choose the output dimension and encoding.

Each model is a :class:`.service.ModelService`: its own Embedder, worker and queue. The app reads
a body, parses its JSON once and routes it by its ``model`` field; ``/v1/models`` lists every id and
``/health`` reports every model. How several models share the CPU is ``ServerConfig.cpu_sharing``
(:mod:`.cpu`).

Hostile clients are bounded: a body must arrive within ``read_timeout_s`` (408), a client that
disconnects while its request waits has its remaining decode calls skipped, one request holds at
most ``limits.max_request_tokens`` tokens, and a shutdown waits at most ``shutdown_timeout_s``
for accepted work. Browsers are kept out by the ``Host`` allow-list and the JSON media type
(:mod:`.security`); CORS headers are sent only for ``cors_origins``.

Every answer carries ``X-Request-Id`` and is logged on ``qembed_gguf.access`` (:mod:`.access`);
``/metrics`` is the Prometheus exposition (:mod:`.metrics`). ``/health`` says ``loading`` (503)
until each model's warm-up decode has run (the startup waits ``WARMUP_WAIT_S`` for them, then
listens anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..embedder import Embedder
from ..errors import InputError
from ..reranker import Reranker
from .access import AccessLog, note_model
from .config import ServedModel, ServerConfig
from .cpu import TakeTurns
from .http import CLOSE, OPEN_PATHS, _ApiKeyMiddleware, _error, _gone, _JSON, _read_body, _require_json
from .metrics import CONTENT_TYPE, ServerMetrics
from .protocol import ECHO_CHARS, APIError, RequestBody, error_body, model_not_found, read_request, shown
from .responses import models_body
from .security import HostGuard, allowed_hosts
from .service import PARSE_OFF_LOOP_BYTES, ModelService, busy

__all__ = ["ServedModel", "ServerConfig", "create_app", "served_models"]

log = logging.getLogger(__name__)

WARMUP_WAIT_S = 2.0  # how long the startup waits for the warm-up decodes before listening anyway
_STATUS_RANK = {"ok": 0, "loading": 1, "unavailable": 2}


def served_models(models: "Embedder | Reranker | Sequence[ServedModel]", config: ServerConfig) -> list[ServedModel]:
    """What :func:`create_app` serves: one Embedder or Reranker under ``config.model_names``, or
    several :class:`ServedModel` s (then ``config.model_names`` stays empty); ids must be unique."""
    if isinstance(models, (Embedder, Reranker)):
        if not config.model_names:
            raise InputError("ServerConfig.model_names is empty: name the ids clients send as 'model'")
        served = [ServedModel(models, tuple(config.model_names))]
    else:
        served = list(models)
        if not served or not all(isinstance(m, ServedModel) for m in served):
            raise InputError(f"create_app serves an Embedder, a Reranker or a non-empty sequence of ServedModel, "
                             f"got {models!r}")
        if config.model_names:
            raise InputError("with several models, each model's ids go in its ServedModel: leave "
                             "ServerConfig.model_names empty")
    seen: dict[str, int] = {}
    for k, m in enumerate(served):
        for name in m.names:
            if name in seen:
                raise InputError(f"the model id {name!r} is given twice to model {k} ({m.names[0]!r})"
                                 if seen[name] == k else
                                 f"the model id {name!r} is given to model {seen[name]} and model {k}: each id must "
                                 f"name one model")
            seen[name] = k
        if any(m.model is other.model for other in served[:k]):
            raise InputError(f"model {k} ({m.names[0]!r}) is the same {type(m.model).__name__} as an earlier one: "
                             f"give it more ids (aliases) instead")
    return served


class EmbeddingServer:
    """Request handling: reading bodies, routing them to the :class:`ModelService` their ``model``
    names, and the routes that concern every model."""

    def __init__(self, models: Sequence[ServedModel], config: ServerConfig):
        self.config = config
        self.metrics = ServerMetrics()
        turn = TakeTurns() if config.cpu_sharing == "time" and len(models) > 1 else None
        self.services = [ModelService(m, config, self.metrics, decode_turn=turn) for m in models]
        self._by_name = {name: s for s in self.services for name in s.names}
        self.names = [name for s in self.services for name in s.names]
        self.created = int(time.time())
        self._aborted = asyncio.Event()  # set (on the event loop) when the shutdown's grace period ends

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the batchers' shutdown timers wake the request handlers on ``loop``."""
        def wake():
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._aborted.set)
        for s in self.services:
            s.batcher.on_abort = wake

    def shutdown(self, grace: float | None) -> None:
        """Every model's :meth:`MicroBatcher.shutdown` (returns at once)."""
        for s in self.services:
            s.batcher.shutdown(grace)

    @property
    def status(self) -> str:
        """The worst of the models' statuses (``ok`` only when every model is)."""
        return max((s.status for s in self.services), key=_STATUS_RANK.__getitem__)

    # -- reading and routing ------------------------------------------------------------------------
    async def _body(self, request: Request) -> bytes:
        """The request body, read within ``read_timeout_s`` (408) and before the shutdown's grace
        period ends (503): a stalled upload holds nothing for long."""
        reader = asyncio.ensure_future(_read_body(request, self.config.limits.max_body_bytes))
        stopper = asyncio.ensure_future(self._aborted.wait())
        try:
            done, _ = await asyncio.wait((reader, stopper), timeout=self.config.read_timeout_s,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            reader.cancel()
            stopper.cancel()
        if reader in done:
            return reader.result()
        if stopper in done:
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down",
                           headers=CLOSE)
        raise APIError(408, f"the request body did not arrive within {self.config.read_timeout_s:g} s",
                       code="request_timeout", headers=CLOSE)

    async def _read(self, request: Request, *, queues: bool,
                    kind: str | None = None) -> tuple[ModelService, RequestBody, bool]:
        """What every POST passes: a JSON media type, a server that is not stopping, room in some
        queue (``queues``: the request queues model work; checked before the body is read when every
        queue is full), its body within the read timeout, strict JSON naming a served model (404),
        that model of ``kind`` (the route's: 400 ``wrong_model_kind`` otherwise) and loaded and, if
        ``queues``, room in its queue. Returns the model's service, the parsed body and whether it
        is large. Raises :class:`APIError`."""
        _require_json(request)
        if not any(s.batcher.running for s in self.services):  # before reading the body
            raise APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
        if queues and all(s.full for s in self.services):  # before reading the body
            raise busy(f"{self.services[0].batcher.pending} inputs are waiting"
                       if len(self.services) == 1 else "every model's queue is full")
        body = await self._body(request)
        large = len(body) > PARSE_OFF_LOOP_BYTES
        parsed = await asyncio.to_thread(read_request, body) if large else read_request(body)
        service = self._by_name.get(parsed.model)
        if service is None:
            raise model_not_found(parsed.model, self.names)
        note_model(request, service.name)
        if kind is not None and service.kind != kind:
            raise service.kind_error()
        unavailable = service.unavailable()
        if unavailable is not None:
            raise unavailable
        if queues and service.full:
            raise busy(f"{service.batcher.pending} inputs are waiting for {service.name!r}")
        return service, parsed, large

    # -- routes -------------------------------------------------------------------------------------
    async def embeddings(self, request: Request) -> Response:
        """``POST /v1/embeddings`` (:meth:`ModelService.embeddings`)."""
        return await self._queued(request, ModelService.embeddings, "embedding")

    async def rerank(self, request: Request) -> Response:
        """``POST /v1/rerank`` (:meth:`ModelService.rerank`)."""
        return await self._queued(request, ModelService.rerank, "reranker")

    async def _queued(self, request: Request, answer, kind: str) -> Response:
        """The checks of :meth:`_read` for a model of ``kind``, then ``answer(service, request, body,
        large=...)``, which queues the model's work."""
        try:
            service, parsed, large = await self._read(request, queues=True, kind=kind)
        except APIError as err:
            return _error(err)
        except ClientDisconnect:
            return _gone()
        return await answer(service, request, parsed, large=large)

    async def tokenize(self, request: Request) -> Response:
        """``POST /tokenize`` (:meth:`ModelService.tokenize_body`)."""
        return await self._tokens(request, ModelService.tokenize_body)

    async def detokenize(self, request: Request) -> Response:
        """``POST /detokenize`` (:meth:`ModelService.detokenize_body`)."""
        return await self._tokens(request, ModelService.detokenize_body)

    async def _tokens(self, request: Request, answer) -> Response:
        """The checks of ``/v1/embeddings``, then ``answer(service, body)`` (parse, work, render) in a
        worker thread: the Embedder's lock, which a decode call may hold, is never waited for on
        the event loop."""
        try:
            service, parsed, _ = await self._read(request, queues=False, kind="embedding")
            payload = await asyncio.to_thread(answer, service, parsed)
        except APIError as err:
            return _error(err)
        except ClientDisconnect:
            return _gone()
        except InputError as err:  # the protocol checks every input first: the model was unloaded under it
            return _error(service.unavailable() or APIError(400, str(err)))
        return Response(payload, media_type="application/json")

    async def models(self, request: Request) -> Response:
        return _JSON(models_body(self.names, self.created))

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self._by_name:
            return _error(APIError(404, f"the model {shown(name)} does not exist on this server", param="model",
                                   code="model_not_found"))
        return _JSON(models_body([name], self.created)["data"][0])

    async def metrics_text(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text format."""
        return Response(self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def health(self, request: Request) -> Response:
        """Every model's state under ``models``; ``status`` is the worst of theirs (200 only when
        every model is ok). The first model's fields are repeated at the top level, as a server of
        one model has always answered."""
        status = self.status
        models = [s.health() for s in self.services]
        first = {k: v for k, v in models[0].items() if k not in ("aliases", "status", "max_tokens")}
        return _JSON({"status": status, **first, "models": models}, status_code=200 if status == "ok" else 503)

    # -- lifetime -----------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def lifespan(self, close_embedders: bool):
        """Start every model's worker and warm-up; at the end, stop the workers (each waits
        ``shutdown_timeout_s`` for its accepted work) and, if ``close_embedders``, free the models."""
        self.bind_loop(asyncio.get_running_loop())
        for s in self.services:
            s.batcher.start()
            threading.Thread(target=s.warm_up, name=f"qembed-warmup-{s.name}"[:60], daemon=True).start()
        # a quick warm-up is waited for (nobody sees "loading"); a slow one (weights paged in from
        # disk) is not: the server listens and /health says "loading" until it is done
        deadline = time.monotonic() + WARMUP_WAIT_S
        for s in self.services:
            await asyncio.to_thread(s.warm.wait, max(0.0, deadline - time.monotonic()))
        for s in self.services:
            e = s.embedder
            log.info("serving %s (dim %d, max %d tokens per input) as %s", e.path.name, e.dim, e.max_tokens,
                     ", ".join(s.names))
        try:
            yield
        finally:
            grace = self.config.shutdown_timeout_s
            self.shutdown(grace)  # every model's grace period runs at once
            await asyncio.gather(*(asyncio.to_thread(s.batcher.stop, grace) for s in self.services))
            if close_embedders:
                for s in self.services:
                    s.model.close()


def create_app(models: "Embedder | Reranker | Sequence[ServedModel]", config: ServerConfig, *,
               close_embedder: bool = False, bind_host: str | None = None) -> Starlette:
    """The ASGI app serving one Embedder (under ``config.model_names``) or several
    :class:`ServedModel` s, each with its own worker and queue; the workers start and stop with the
    app's lifespan (stopping waits ``config.shutdown_timeout_s`` for accepted work, then cancels it).
    ``close_embedder``: free the models when the app stops. ``bind_host``: the address the server
    listens on, for the ``Host`` policy (None: loopback)."""
    server = EmbeddingServer(served_models(models, config), config)
    hosts = allowed_hosts(config.allowed_hosts, bind_host)

    def lifespan(app):
        return server.lifespan(close_embedder)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        path = request.url.path
        path = path if len(path) <= ECHO_CHARS else path[:ECHO_CHARS] + "…"
        return _JSON(error_body(f"{request.method} {path}: {exc.detail}", type="invalid_request_error",
                                code=code), status_code=exc.status_code, headers=exc.headers)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s", request.url.path)
        return _JSON(error_body(f"internal error: {type(exc).__name__}", type="server_error"), status_code=500)

    # outermost first; AccessLog answers the app's unhandled exceptions (the 500) itself, so that
    # answer too carries the request id and is counted
    middleware = [Middleware(AccessLog, metrics=server.metrics, on_error=server_error)]
    if hosts is not None:
        middleware.append(Middleware(HostGuard, allowed=hosts))
    if config.cors_origins:  # preflights are answered here, before the API key is asked for
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(config.cors_origins),
                                     allow_methods=["GET", "POST"], allow_headers=["authorization", "content-type"],
                                     expose_headers=["retry-after", "x-request-id"], max_age=600))
    if config.api_key:
        open_paths = OPEN_PATHS - {"/metrics"} if config.metrics_need_key else OPEN_PATHS
        middleware.append(Middleware(_ApiKeyMiddleware, api_key=config.api_key, open_paths=open_paths))
    app = Starlette(
        middleware=middleware,
        routes=[
            Route("/v1/embeddings", server.embeddings, methods=["POST"]),
            Route("/embeddings", server.embeddings, methods=["POST"]),
            Route("/v1/rerank", server.rerank, methods=["POST"]),
            Route("/rerank", server.rerank, methods=["POST"]),
            Route("/v1/models", server.models, methods=["GET"]),
            Route("/v1/models/{name:path}", server.model, methods=["GET"]),
            Route("/health", server.health, methods=["GET"]),
            Route("/metrics", server.metrics_text, methods=["GET"]),
            Route("/tokenize", server.tokenize, methods=["POST"]),
            Route("/detokenize", server.detokenize, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.server = server
    return app
