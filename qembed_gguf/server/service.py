"""One served model: its Embedder (or Reranker), its :class:`MicroBatcher` (worker and queue) and
how it answers the requests routed to it (:class:`ModelService`). The app (:mod:`.app`) reads each
body, finds the model it names and hands it here. An embedding model answers ``/v1/embeddings``,
``/tokenize`` and ``/detokenize``; a reranker answers ``/v1/rerank``; each refuses the other's
routes with a 400 naming the right one (the app checks the kind before the queue's room)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import time

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from ..errors import InputError, InputTooLongError, InvalidTextError
from ..longinputs import check_policy
from ..lookup import Pending
from ..reranker import Reranker
from .access import note_embedded
from .batcher import Job, JobCancelled, JobResult, MicroBatcher, QueueFull, ShuttingDown, TooManyTokens
from .config import ServedModel, ServerConfig
from .http import _ClientLeft, _disconnected, _dumps, _error, _gone, _JSON
from .metrics import ServerMetrics
from .protocol import (APIError, EmbeddingRequest, RequestBody, input_too_long, parse_detokenize_request,
                       parse_embedding_request, parse_tokenize_request, too_many_tokens)
from .rerankwire import RerankRequest, parse_rerank_request, rerank_body
from .responses import embeddings_body

__all__ = ["ModelService"]

log = logging.getLogger(__name__)

PARSE_OFF_LOOP_BYTES = 1 << 20  # bodies larger than this are parsed in a worker thread


def busy(why: str) -> APIError:
    return APIError(429, f"the server is busy: {why}; retry shortly", type="rate_limit_error", code="queue_full",
                    headers={"Retry-After": "1"})


class ModelService:
    """Requests to one model, on top of its Embedder and its own :class:`MicroBatcher`.
    ``decode_turn``: held around each decode step (the models of one server taking turns on the
    CPU, :mod:`.cpu`), or None."""

    def __init__(self, model: ServedModel, config: ServerConfig, metrics: ServerMetrics, *, decode_turn=None):
        self.model = model.model
        self.reranker = self.model if isinstance(self.model, Reranker) else None
        self.kind = "reranker" if self.reranker is not None else "embedding"
        embedder = self.reranker.decoder if self.reranker is not None else self.model
        try:
            check_policy(config.long_inputs, config.chunk_overlap, max_tokens=embedder.max_tokens)
        except InputError as e:
            raise InputError(f"ServerConfig(long_inputs={config.long_inputs!r}, chunk_overlap={config.chunk_overlap}) "
                             f"does not suit the model {model.names[0]!r} (max_tokens={embedder.max_tokens}): "
                             f"{e}") from None
        self.embedder = embedder
        self.names = model.names
        self.name = model.names[0]
        self.config = config
        self.limits = dataclasses.replace(config.limits, max_input_tokens=embedder.max_tokens)
        self.batcher = MicroBatcher(embedder, max_wait_s=config.max_wait_ms / 1000,
                                    max_batch_inputs=config.max_batch_inputs,
                                    max_queue_inputs=config.max_queue_inputs,
                                    max_request_tokens=self.limits.max_request_tokens,
                                    chunk_overlap=config.chunk_overlap, decode_turn=decode_turn,
                                    short_call_s=config.short_call_ms / 1000)
        self.requests = 0
        self.warm = threading.Event()  # set once the warm-up decode has run (or failed: then logged)
        metrics.add_model(self.name, embedder, self.batcher, ready=lambda: self.status == "ok")

    # -- state ------------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """One decode of the one-token input ``<|endoftext|>``: the model's weights are paged in and
        llama.cpp's compute buffers allocated before ``/health`` says ok (:meth:`Embedder.warm_up`: not
        counted in the Embedder's stats, so they and the batcher's counters count only the clients' work)."""
        start = time.perf_counter()
        try:
            with self.batcher.decode_turn if self.batcher.decode_turn is not None else contextlib.nullcontext():
                self.embedder.warm_up()
        except Exception:  # /health then reports what the requests will meet
            log.exception("the warm-up decode of %s failed", self.name)
        else:
            log.info("%s: warm-up decode done in %.0f ms", self.name, (time.perf_counter() - start) * 1000)
        finally:
            self.warm.set()

    @property
    def status(self) -> str:
        """``"ok"``, ``"loading"`` (the warm-up decode has not run yet) or ``"unavailable"``
        (shutting down, or the model unloaded)."""
        if self.unavailable() is not None:
            return "unavailable"
        return "ok" if self.warm.is_set() else "loading"

    def unavailable(self) -> APIError | None:
        """The 503 a request to this model gets now, or None."""
        if self.embedder.closed:
            return APIError(503, f"the model {self.name!r} has been unloaded", type="server_error",
                            code="model_unloaded")
        if not self.batcher.running:
            return APIError(503, "the server is shutting down", type="server_error", code="shutting_down")
        return None

    @property
    def full(self) -> bool:
        """Whether the queue is at its bound (a new request gets 429 before it is parsed further)."""
        return self.batcher.pending >= self.batcher.max_queue_inputs

    def health(self) -> dict:
        s = self.embedder.stats
        return {
            "model": self.name,
            "kind": self.kind,
            "aliases": list(self.names[1:]),
            "status": self.status,
            "dim": self.embedder.dim,
            "max_tokens": self.embedder.max_tokens,
            "queue_inputs": self.batcher.pending,
            "requests": self.requests,
            "batches": self.batcher.cycles,
            "decode_calls": s.decode_calls,
            "cancelled": self.batcher.jobs_cancelled,
            "cache": {"backend": self.embedder.cache.backend.kind, "hits": s.cache_hits,
                      "misses": s.cache_misses} if self.embedder.cache is not None else None,
        }

    # -- embeddings -------------------------------------------------------------------------------
    def parse(self, body: RequestBody) -> EmbeddingRequest:
        e = self.embedder
        return parse_embedding_request(body, served=self.names, full_dim=e.dim, min_dim=e.mrl_min_dim,
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

    def _submit(self, job: Job) -> Response | None:
        """Queue ``job``; the refusal's answer, or None."""
        try:
            self.batcher.submit(job)
        except QueueFull as err:
            return _error(busy(str(err)))
        except ShuttingDown as err:
            return _error(APIError(503, str(err), type="server_error", code="shutting_down"))
        return None

    async def _outcome(self, request: Request, job: Job, param) -> "JobResult | Response":
        """The job's result, or the answer to how it failed (``param(index)``: the request's
        field naming input ``index``)."""
        try:
            return await self._result(request, job)
        except (_ClientLeft, JobCancelled):
            return _gone()
        except ShuttingDown as err:
            return _error(APIError(503, str(err), type="server_error", code="shutting_down"))
        except TooManyTokens as err:
            return _error(too_many_tokens(err.n_tokens, err.limit))
        except InputTooLongError as err:
            return _error(input_too_long(err.index, err.n_tokens, err.max_tokens))
        except InvalidTextError as err:  # the protocol checks first; kept for texts it may not see
            return _error(APIError(400, str(err), param=param(err.index)))
        except InputError as err:
            unavailable = self.unavailable()
            if unavailable is not None:  # the model was unloaded under the request
                return _error(unavailable)
            return _error(APIError(400, str(err), param=param(None)))

    def kind_error(self) -> APIError:
        """The 400 ``wrong_model_kind`` of a request to a route this model does not answer (the app
        asks before it hands the request here)."""
        what, route = ("a reranker", "/v1/rerank") if self.kind == "reranker" else ("an embedding model",
                                                                                    "/v1/embeddings")
        return APIError(400, f"the model {self.name!r} is {what}: send its requests to {route}", param="model",
                        code="wrong_model_kind")

    async def rerank(self, request: Request, body: RequestBody, *, large: bool) -> Response:
        """``POST /v1/rerank`` for this model (:mod:`.rerankwire`): each document's prompt is one row
        of the batcher, decoded next to other requests' rows; the scores from the rows' hidden states."""
        with self.batcher.arriving():
            try:
                req = await asyncio.to_thread(self._parse_rerank, body) if large else self._parse_rerank(body)
                # tokenizing takes the model's lock, which a decode call may hold: off the event loop
                rows = await asyncio.to_thread(self.reranker.tokenize, req.query, req.documents,
                                               instruction=req.instruction)
            except APIError as err:
                return _error(err)
            except InputTooLongError as err:
                return _error(APIError(400, f"the prompt's template, instruction and query alone take {err.n_tokens} "
                                            f"tokens, more than this server's limit of {err.max_tokens} per prompt",
                                       param="query", code="input_too_long"))
            except InputError as err:
                return _error(self.unavailable() or APIError(400, str(err), param="documents"))
            job = Job(texts=None, tokens=None, decode=[True] * len(rows), long_inputs="error", prepared=rows)
            refused = self._submit(job)
            if refused is not None:
                return refused
        result = await self._outcome(request, job, lambda i: f"documents[{i}]" if i is not None else "documents")
        if isinstance(result, Response):
            return result
        self.requests += 1
        scores = self.reranker.scores(result.pooled)
        if not np.isfinite(scores).all():  # JSON has no NaN; a model that gives one is broken
            log.error("%s: the model gave non-finite scores", self.name)
            return _error(APIError(500, "the model gave non-finite scores", type="server_error"))
        prompt_tokens = sum(len(r) for r in rows)
        note_embedded(request, len(rows), prompt_tokens)
        return _JSON(rerank_body(scores, req, prompt_tokens=prompt_tokens))

    def _parse_rerank(self, body: RequestBody) -> RerankRequest:
        return parse_rerank_request(body, served=self.names, limits=self.limits)

    async def embeddings(self, request: Request, body: RequestBody, *, large: bool) -> Response:
        """``POST /v1/embeddings`` for this model: ``body`` is read and names it; ``large``: parse
        off the event loop."""
        with self.batcher.arriving():  # only once the body is in: a stalled upload delays no batch
            try:
                req = await asyncio.to_thread(self.parse, body) if large else self.parse(body)
                pending = await self._look_up(req)
            except APIError as err:
                return _error(err)
            same_policy = self._embedders_policy(req.long_inputs)
            job = Job(texts=pending.texts if req.texts is not None else None,
                      tokens=[list(t) for t in pending.texts] if req.tokens is not None else None,
                      decode=[v is None for v in pending.found], long_inputs=req.long_inputs, rows=pending.rows,
                      cut_hits_valid=same_policy)
            refused = self._submit(job)
            if refused is not None:
                return refused
        result = await self._outcome(request, job, lambda i: f"input[{pending.rows[i][0]}]" if i is not None
                                     else "input")
        if isinstance(result, Response):
            return result
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

    # -- tokens -----------------------------------------------------------------------------------
    def tokenize_body(self, body: RequestBody) -> bytes:
        """``POST /tokenize``: each input's token ids as it is embedded (:meth:`Embedder.tokenize`)."""
        _, texts = parse_tokenize_request(body, served=self.names, limits=self.limits)
        return _dumps({"tokens": self.embedder.tokenize(texts)})

    def detokenize_body(self, body: RequestBody) -> bytes:
        """``POST /detokenize``: the text of each token-id sequence (:meth:`Embedder.detokenize`)."""
        _, sequences = parse_detokenize_request(body, served=self.names, n_vocab=self.embedder.n_vocab,
                                                limits=self.limits)
        return _dumps({"text": [self.embedder.detokenize(s) for s in sequences]})
