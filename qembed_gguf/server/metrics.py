"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Every series has a ``model`` label: the served model's first id (its ``--model-name``; aliases are
counted under it), so that several servers, or several models of one, can share a dashboard. A
request that names no served model (``/health``, ``/metrics``, a 401, an unknown model) is counted
under ``model=""``.
Requests are counted by the :class:`.access.AccessLog` middleware when their answer is handed to
the server, so a client that reads ``/metrics`` after its answer arrived sees its request counted.
The model's own work (decode calls, cache hits, the queue) is read at scrape time from
:class:`~qembed_gguf.stats.EmbedderStats` and the batcher's counters.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ..embedder import Embedder
from .batcher import MicroBatcher

__all__ = ["CONTENT_TYPE", "ServerMetrics", "endpoint_label"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

# a request may take minutes (300,000 tokens at a few hundred tokens/s on a CPU)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)
INPUT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 384, 512, 1024, 2048, 4096, 8192, 32768)

ENDPOINTS = frozenset({"/v1/embeddings", "/embeddings", "/v1/rerank", "/rerank", "/v1/models", "/health",
                       "/metrics", "/tokenize", "/detokenize"})


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request path: a route of the app, else ``"other"`` (a client
    cannot create series by inventing paths)."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{name}"
    return "other"


class ServerMetrics:
    """The metrics of one app: HTTP requests, their latency and what they embedded (counted by the
    app), and each model's work (read from its Embedder and batcher when scraped, once the model
    is added with :meth:`add_model`)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qembed_requests", "HTTP requests answered, by model, endpoint and status code "
                                "(model \"\": a request that named no served model, e.g. /health)",
                                ("model", "endpoint", "status"), registry=r)
        self.duration = Histogram("qembed_request_duration_seconds", "Time from a request's arrival to the end of "
                                  "its answer", ("model", "endpoint"), buckets=LATENCY_BUCKETS, registry=r)
        self.inputs = Counter("qembed_inputs", "Inputs embedded, as usage counts them (repeats and cache hits "
                              "included)", ("model",), registry=r)
        self.tokens = Counter("qembed_tokens", "Tokens embedded, as usage.prompt_tokens counts them", ("model",),
                              registry=r)
        self.request_inputs = Histogram("qembed_request_inputs", "Inputs per embeddings request answered",
                                        ("model",), buckets=INPUT_BUCKETS, registry=r)
        self.batch_inputs = Histogram("qembed_batch_inputs", "Rows (inputs, or windows of chunked inputs) per decode "
                                      "step of the worker", ("model",), buckets=INPUT_BUCKETS[:7], registry=r)
        self.batch_tokens = Histogram("qembed_batch_tokens", "Tokens per decode step of the worker", ("model",),
                                      buckets=TOKEN_BUCKETS, registry=r)
        self._work = _WorkCollector()
        r.register(self._work)

    def add_model(self, model: str, embedder: Embedder, batcher: MicroBatcher, *, ready: Callable[[], bool]) -> None:
        """Count a served model's work under ``model`` (its first id)."""
        batcher.on_step = lambda n_rows, n_tokens: self.step_done(model, n_rows, n_tokens)
        self.inputs.labels(model)  # the series exist from the start, at 0
        self.tokens.labels(model)
        self._work.models.append((model, embedder, batcher, ready))

    def request_done(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(model, endpoint, str(status)).inc()
        self.duration.labels(model, endpoint).observe(seconds)

    def step_done(self, model: str, n_rows: int, n_tokens: int) -> None:
        """One decode step of a model's worker (called from its thread)."""
        self.batch_inputs.labels(model).observe(n_rows)
        self.batch_tokens.labels(model).observe(n_tokens)

    def embedded(self, model: str, n_inputs: int, n_tokens: int) -> None:
        self.inputs.labels(model).inc(n_inputs)
        self.tokens.labels(model).inc(n_tokens)
        self.request_inputs.labels(model).observe(n_inputs)

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


_COUNTERS = (
    ("qembed_decode_calls", "llama_decode calls", lambda s, b: s.decode_calls),
    ("qembed_sequences_decoded", "Sequences (inputs, or windows of chunked inputs) decoded by the model",
     lambda s, b: s.sequences_decoded),
    ("qembed_tokens_decoded", "Tokens decoded by the model", lambda s, b: s.tokens_decoded),
    ("qembed_cache_hits", "Inputs answered by the vector cache", lambda s, b: s.cache_hits),
    ("qembed_cache_misses", "Inputs looked up in the vector cache and not found", lambda s, b: s.cache_misses),
    ("qembed_batches", "Worker steps, each one packed run of the model over the requests taken together "
                       "(/health's batches)", lambda s, b: b.cycles),
    ("qembed_requests_cancelled", "Requests dropped or cut short: client gone, or the shutdown's grace period over",
     lambda s, b: b.jobs_cancelled),
)
_GAUGES = (
    ("qembed_queue_inputs", "Inputs queued or being computed", lambda b, ready: b.pending),
    ("qembed_ready", "1 when the model answers (warmed up, serving; /health's status ok), else 0",
     lambda b, ready: int(ready())),
)


class _WorkCollector:
    """Each model's Embedder and batcher counters, read at scrape time."""

    def __init__(self):
        self.models: list[tuple[str, Embedder, MicroBatcher, Callable[[], bool]]] = []

    def collect(self):
        for name, doc, read in _COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["model"])
            for model, embedder, batcher, _ in self.models:
                family.add_metric([model], read(embedder.stats, batcher))
            yield family
        for name, doc, read in _GAUGES:
            family = GaugeMetricFamily(name, doc, labels=["model"])
            for model, _, batcher, ready in self.models:
                family.add_metric([model], read(batcher, ready))
            yield family
