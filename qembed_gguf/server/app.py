"""The ASGI application: OpenAI-compatible ``/v1/embeddings``, ``/v1/models``, ``/health``; ``/tokenize``,
``/detokenize``.

Nothing here reads files or renders templates: a request can only name the served model, send
text or token ids, and choose the output dimension and encoding.

Hostile clients are bounded: a body must arrive within ``read_timeout_s`` (408), a client that
disconnects while its request waits has its remaining decode calls skipped, one request holds at
most ``limits.max_request_tokens`` tokens, and a shutdown waits at most ``shutdown_timeout_s``
for accepted work. Browsers are kept out by the ``Host`` allow-list and the JSON media type
(:mod:`.security`); CORS headers are sent only for ``cors_origins``.

Every answer carries ``X-Request-Id`` and is logged on ``qembed_gguf.access`` (:mod:`.access`);
``/metrics`` is the Prometheus exposition (:mod:`.metrics`). ``/health`` says ``loading`` (503)
until one warm-up decode has run (the startup waits ``WARMUP_WAIT_S`` for it, then listens anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from ..embedder import Embedder
from ..errors import InputError, InputTooLongError, InvalidTextError
from ..longinputs import check_policy
from ..lookup import Pending
from .access import AccessLog, note_embedded
from .batcher import Job, JobCancelled, MicroBatcher, QueueFull, ShuttingDown, TooManyTokens
from .protocol import (ECHO_CHARS, APIError, embeddings_body, error_body, input_too_long, models_body, parse_detokenize_request, parse_embedding_request, parse_tokenize_request, shown,
                       too_many_tokens)
from .config import ServerConfig
from .http import (CLOSE, OPEN_PATHS, _ApiKeyMiddleware, _ClientLeft, _disconnected, _dumps, _error, _gone, _JSON,
                   _read_body, _require_json)
from .metrics import CONTENT_TYPE, ServerMetrics
from .security import HostGuard, allowed_hosts

__all__ = ["ServerConfig", "create_app"]

log = logging.getLogger(__name__)



PARSE_OFF_LOOP_BYTES = 1 << 20  # bodies larger than this are parsed in a worker thread
WARMUP_WAIT_S = 2.0  # how long the startup waits for the warm-up decode before listening anyway


class EmbeddingService:
    """Request handling on top of one Embedder and its :class:`MicroBatcher`."""

    def __init__(self, embedder: Embedder, config: ServerConfig):
        try:
            check_policy(config.long_inputs, config.chunk_overlap, max_tokens=embedder.max_tokens)
        except InputError as e:
            raise InputError(f"ServerConfig(long_inputs={config.long_inputs!r}, chunk_overlap={config.chunk_overlap}) "
                             f"does not suit this model's max_tokens={embedder.max_tokens}: {e}") from None
        self.embedder = embedder
        self.config = config
        self.limits = dataclasses.replace(config.limits, max_input_tokens=embedder.max_tokens)
        self.batcher = MicroBatcher(embedder, max_wait_s=config.max_wait_ms / 1000,
                                    max_batch_inputs=config.max_batch_inputs,
                                    max_queue_inputs=config.max_queue_inputs,
                                    max_request_tokens=self.limits.max_request_tokens,
                                    chunk_overlap=config.chunk_overlap)
        self.created = int(time.time())
        self.requests = 0
        self.warm = threading.Event()  # set once the warm-up decode has run (or failed: then logged)
        self.metrics = ServerMetrics(config.model_names[0], embedder, self.batcher, ready=lambda: self.status == "ok")
        self._aborted = asyncio.Event()  # set (on the event loop) when the shutdown's grace period ends

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Let the batcher's shutdown timer wake the request handlers on ``loop``."""
        def wake():
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(self._aborted.set)
        self.batcher.on_abort = wake

    def warm_up(self) -> None:
        """One decode of the one-token input ``<|endoftext|>``: the model's weights are paged in and
        llama.cpp's compute buffers allocated before ``/health`` says ok (:meth:`Embedder.warm_up`: not
        counted in the Embedder's stats, so they and the batcher's counters count only the clients' work)."""
        e = self.embedder
        start = time.perf_counter()
        try:
            e.warm_up()
        except Exception:  # /health then reports what the requests will meet
            log.exception("the warm-up decode failed")
        else:
            log.info("warm-up decode done in %.0f ms", (time.perf_counter() - start) * 1000)
        finally:
            self.warm.set()

    @property
    def status(self) -> str:
        """``"ok"``, ``"loading"`` (the warm-up decode has not run yet) or ``"unavailable"``
        (shutting down, or the model unloaded)."""
        if self._unavailable() is not None:
            return "unavailable"
        return "ok" if self.warm.is_set() else "loading"

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
                                       long_inputs_default=self.config.long_inputs,
                                       chunk_overlap=self.config.chunk_overlap)

    def _embedders_policy(self, long_inputs: str) -> bool:
        """Whether ``long_inputs`` (with the server's overlap) gives what the Embedder's own policy
        gives, which its cache's key names: then vectors of over-long inputs may be cached and
        answered from the cache."""
        e = self.embedder
        return long_inputs == e.long_inputs and (long_inputs != "chunk" or self.config.chunk_overlap == e.chunk_overlap)

    async def _body(self, request: Request) -> bytes:
        """The request body, read within ``read_timeout_s`` (408) and before the shutdown's grace
        period ends (503): a stalled upload holds nothing for long."""
        reader = asyncio.ensure_future(_read_body(request, self.limits.max_body_bytes))
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

    async def _result(self, request: Request, job: Job):
        """The job's result, unless the client disconnects first: then the job is cancelled (a
        queued job is dropped, a running one skips its remaining decode calls)."""
        waiter = asyncio.wrap_future(job.future)
        left = asyncio.ensure_future(_disconnected(request.receive))
        try:
            done, _ = await asyncio.wait((waiter, left), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the server cancelled the request (its own shutdown backstop)
            job.cancelled = True
            waiter.cancel()
            raise
        finally:
            left.cancel()
        if waiter in done:
            return waiter.result()
        job.cancelled = True
        waiter.cancel()  # cancels the job's future too if the worker has not taken it yet
        log.info("client %s disconnected; its request %s (%d inputs) was cancelled",
                 request.client.host if request.client else "?", request.state.request_id, len(job))
        raise _ClientLeft

    async def _accepted_body(self, request: Request, *, queues: bool) -> bytes:
        """What every POST passes before its body is parsed: a JSON media type, a model that is
        loaded, room in the queue (``queues``: the request will queue model work), and its body
        within the read timeout. Raises :class:`APIError`."""
        _require_json(request)
        unavailable = self._unavailable()
        if unavailable is not None:
            raise unavailable
        if queues and self.batcher.pending >= self.batcher.max_queue_inputs:  # before reading the body
            raise self._busy(f"{self.batcher.pending} inputs are waiting")
        return await self._body(request)

    async def embeddings(self, request: Request) -> Response:
        try:
            body = await self._accepted_body(request, queues=True)
        except APIError as err:
            return _error(err)
        except ClientDisconnect:
            return _gone()
        with self.batcher.arriving():  # only once the body is in: a stalled upload delays no batch
            try:
                req = await asyncio.to_thread(self._parse, body) if len(body) > PARSE_OFF_LOOP_BYTES \
                    else self._parse(body)
                pending = await self._look_up(req)
                same_policy = self._embedders_policy(req.long_inputs)
                job = Job(texts=pending.texts if req.texts is not None else None,
                          tokens=[list(t) for t in pending.texts] if req.tokens is not None else None,
                          decode=[v is None for v in pending.found], long_inputs=req.long_inputs, rows=pending.rows,
                          cut_hits_valid=same_policy)
                self.batcher.submit(job)
            except APIError as err:
                return _error(err)
            except QueueFull as err:
                return _error(self._busy(str(err)))
            except ShuttingDown as err:
                return _error(APIError(503, str(err), type="server_error", code="shutting_down"))
        try:
            result = await self._result(request, job)
        except (_ClientLeft, JobCancelled):
            return _gone()
        except ShuttingDown as err:
            return _error(APIError(503, str(err), type="server_error", code="shutting_down"))
        except TooManyTokens as err:
            return _error(too_many_tokens(err.n_tokens, err.limit))
        except InputTooLongError as err:
            return _error(input_too_long(err.index, err.n_tokens, err.max_tokens))
        except InvalidTextError as err:  # the protocol checks first; kept for texts it may not see
            param = f"input[{pending.rows[err.index][0]}]" if err.index is not None else "input"
            return _error(APIError(400, str(err), param=param))
        except InputError as err:
            unavailable = self._unavailable()
            if unavailable is not None:  # the model was unloaded under the request
                return _error(unavailable)
            return _error(APIError(400, str(err), param="input"))
        self.requests += 1
        redone = [k for k, d in enumerate(result.decoded) if d and pending.found[k] is not None]
        if redone:  # cached over-long inputs, under another policy than this request's: decoded anyway
            n = sum(len(pending.rows[k]) for k in redone)
            self.embedder.stats.add(cache_hits=-n, cache_misses=n)
            for k in redone:
                pending.found[k] = None
        fresh = result.plan.combine(result.pooled, dim=req.dim, normalize=True)
        # a vector of an over-long input is cached only if the Embedder's own policy, which the
        # cache's key names, gives it too: an Embedder(long_inputs="error") sharing the cache must
        # still refuse that text, and one that truncates must not be answered a chunked vector
        cacheable = [same_policy or not result.cut[k] for k in pending.missing]
        store = pending.cache is not None and pending.missing
        vectors = await asyncio.to_thread(pending.complete, fresh, cacheable=cacheable) if store \
            else pending.complete(fresh)
        prompt_tokens = sum(n * len(rows) for n, rows in zip(result.n_tokens, pending.rows))
        note_embedded(request, sum(len(rows) for rows in pending.rows), prompt_tokens)
        if vectors.size > 200_000:  # a large body is built and rendered off the event loop
            payload = await asyncio.to_thread(self._render, vectors, req, prompt_tokens)
            return Response(payload, media_type="application/json")
        return _JSON(embeddings_body(vectors, model=req.model, encoding_format=req.encoding_format,
                                     prompt_tokens=prompt_tokens))

    @staticmethod
    def _render(vectors: np.ndarray, req, prompt_tokens: int) -> bytes:
        return _dumps(embeddings_body(vectors, model=req.model, encoding_format=req.encoding_format,
                                      prompt_tokens=prompt_tokens))

    async def _look_up(self, req) -> Pending:
        """The request's distinct inputs and what the cache has of them (text inputs; the lookup
        off the event loop), counted in the stats as the Embedder counts them."""
        e = self.embedder
        dim = req.dim or e.dim
        if req.texts is None:  # token ids: grouped, never cached (the cache keys on text)
            return Pending.look_up([tuple(t) for t in req.tokens], None, dim=dim, normalize=True)
        texts = req.texts if req.instruction is None else e.format_queries(req.texts, req.instruction)
        if e.cache is None:
            return Pending.look_up(texts, None, dim=dim, normalize=True)
        pending = await asyncio.to_thread(Pending.look_up, texts, e.cache, dim=dim, normalize=True)
        e.stats.add(cache_hits=pending.hits, cache_misses=pending.misses)
        return pending

    async def tokenize(self, request: Request) -> Response:
        """``POST /tokenize``: each input's token ids as it is embedded (:meth:`Embedder.tokenize`)."""
        return await self._tokens(request, self._tokenize_body)

    async def detokenize(self, request: Request) -> Response:
        """``POST /detokenize``: the text of each token-id sequence (:meth:`Embedder.detokenize`)."""
        return await self._tokens(request, self._detokenize_body)

    def _tokenize_body(self, body: bytes) -> bytes:
        _, texts = parse_tokenize_request(body, served=self.config.model_names, limits=self.limits)
        return _dumps({"tokens": self.embedder.tokenize(texts)})

    def _detokenize_body(self, body: bytes) -> bytes:
        _, sequences = parse_detokenize_request(body, served=self.config.model_names, n_vocab=self.embedder.n_vocab,
                                                limits=self.limits)
        return _dumps({"text": [self.embedder.detokenize(s) for s in sequences]})

    async def _tokens(self, request: Request, answer) -> Response:
        """The checks of ``/v1/embeddings`` (JSON media type, model available, body within the
        timeout), then ``answer(body)`` (parse, work, render) in a worker thread: the Embedder's lock,
        which a decode call may hold, is never waited for on the event loop."""
        try:
            payload = await asyncio.to_thread(answer, await self._accepted_body(request, queues=False))
        except APIError as err:
            return _error(err)
        except ClientDisconnect:
            return _gone()
        except InputError as err:  # the protocol checks every input first: the model was unloaded under it
            return _error(self._unavailable() or APIError(400, str(err)))
        return Response(payload, media_type="application/json")

    async def models(self, request: Request) -> Response:
        return _JSON(models_body(self.config.model_names, self.created))

    async def model(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.config.model_names:
            return _error(APIError(404, f"the model {shown(name)} does not exist on this server", param="model",
                                   code="model_not_found"))
        return _JSON(models_body([name], self.created)["data"][0])

    async def metrics_text(self, request: Request) -> Response:
        """``GET /metrics``: the Prometheus text format."""
        return Response(self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def health(self, request: Request) -> Response:
        status = self.status
        ok = status == "ok"
        s = self.embedder.stats
        return _JSON({
            "status": status,
            "model": self.config.model_names[0],
            "dim": self.embedder.dim,
            "queue_inputs": self.batcher.pending,
            "requests": self.requests,
            "batches": self.batcher.cycles,
            "decode_calls": s.decode_calls,
            "cancelled": self.batcher.jobs_cancelled,
            "cache": {"backend": self.embedder.cache.backend.kind, "hits": s.cache_hits,
                      "misses": s.cache_misses} if self.embedder.cache is not None else None,
        }, status_code=200 if ok else 503)


def create_app(embedder: Embedder, config: ServerConfig, *, close_embedder: bool = False,
               bind_host: str | None = None) -> Starlette:
    """The ASGI app serving ``embedder``; the batcher starts and stops with the app's lifespan
    (stopping waits ``config.shutdown_timeout_s`` for accepted work, then cancels it).
    ``bind_host``: the address the server listens on, for the ``Host`` policy (None: loopback)."""
    service = EmbeddingService(embedder, config)
    hosts = allowed_hosts(config.allowed_hosts, bind_host)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.bind_loop(asyncio.get_running_loop())
        service.batcher.start()
        threading.Thread(target=service.warm_up, name="qembed-warmup", daemon=True).start()
        # a quick warm-up is waited for (nobody sees "loading"); a slow one (weights paged in from
        # disk) is not: the server listens and /health says "loading" until it is done
        await asyncio.to_thread(service.warm.wait, WARMUP_WAIT_S)
        log.info("serving %s (dim %d, max %d tokens per input) as %s", embedder.path.name, embedder.dim,
                 embedder.max_tokens, ", ".join(config.model_names))
        try:
            yield
        finally:
            await asyncio.to_thread(service.batcher.stop, config.shutdown_timeout_s)
            if close_embedder:
                embedder.close()

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
    middleware = [Middleware(AccessLog, metrics=service.metrics, on_error=server_error)]
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
            Route("/v1/embeddings", service.embeddings, methods=["POST"]),
            Route("/embeddings", service.embeddings, methods=["POST"]),
            Route("/v1/models", service.models, methods=["GET"]),
            Route("/v1/models/{name:path}", service.model, methods=["GET"]),
            Route("/health", service.health, methods=["GET"]),
            Route("/metrics", service.metrics_text, methods=["GET"]),
            Route("/tokenize", service.tokenize, methods=["POST"]),
            Route("/detokenize", service.detokenize, methods=["POST"]),
        ],
        exception_handlers={HTTPException: http_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app
