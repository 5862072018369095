"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own.

Every series has a ``model`` label: the served model's first id (its ``--model-name``; aliases are
counted under it), so that several servers, or several models of one, can share a dashboard.
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

ENDPOINTS = frozenset({"/v1/embeddings", "/embeddings", "/v1/models", "/health", "/metrics", "/tokenize",
                       "/detokenize"})


def endpoint_label(path: str) -> str:
    """The ``endpoint`` label of a request path: a route of the app, else ``"other"`` (a client
    cannot create series by inventing paths)."""
    if path in ENDPOINTS:
        return path
    if path.startswith("/v1/models/"):
        return "/v1/models/{name}"
    return "other"


class ServerMetrics:
    """The metrics of one app: HTTP requests, their latency and what they embedded (counted by
    the app), and the model's work (read from ``embedder`` and ``batcher`` when scraped)."""

    def __init__(self, model: str, embedder: Embedder, batcher: MicroBatcher, *, ready: Callable[[], bool]):
        self.model = model
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("qembed_requests", "HTTP requests answered, by endpoint and status code",
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
        batcher.on_step = self.step_done
        self.inputs.labels(model)  # the series exist from the start, at 0
        self.tokens.labels(model)
        r.register(_WorkCollector(model, embedder, batcher, ready))

    def request_done(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(self.model, endpoint, str(status)).inc()
        self.duration.labels(self.model, endpoint).observe(seconds)

    def step_done(self, n_rows: int, n_tokens: int) -> None:
        """One decode step of the batcher's worker (called from its thread)."""
        self.batch_inputs.labels(self.model).observe(n_rows)
        self.batch_tokens.labels(self.model).observe(n_tokens)

    def embedded(self, n_inputs: int, n_tokens: int) -> None:
        self.inputs.labels(self.model).inc(n_inputs)
        self.tokens.labels(self.model).inc(n_tokens)
        self.request_inputs.labels(self.model).observe(n_inputs)

    def render(self) -> bytes:
        """The text exposition format (``CONTENT_TYPE``)."""
        return generate_latest(self.registry)


class _WorkCollector:
    """The Embedder's and the batcher's counters, read at scrape time."""

    def __init__(self, model: str, embedder: Embedder, batcher: MicroBatcher, ready: Callable[[], bool]):
        self._model = model
        self._embedder = embedder
        self._batcher = batcher
        self._ready = ready

    def collect(self):
        s, b, m = self._embedder.stats, self._batcher, [self._model]
        counters = (
            ("qembed_decode_calls", "llama_decode calls", s.decode_calls),
            ("qembed_sequences_decoded", "Sequences (inputs, or windows of chunked inputs) decoded by the model",
             s.sequences_decoded),
            ("qembed_tokens_decoded", "Tokens decoded by the model", s.tokens_decoded),
            ("qembed_cache_hits", "Inputs answered by the vector cache", s.cache_hits),
            ("qembed_cache_misses", "Inputs looked up in the vector cache and not found", s.cache_misses),
            ("qembed_batches", ("Worker steps, each one packed run of the model over the requests taken "
                                "together (/health's batches)"), b.cycles),
            ("qembed_requests_cancelled", ("Requests dropped or cut short: client gone, or the shutdown's "
                                           "grace period over"), b.jobs_cancelled),
        )
        for name, doc, value in counters:
            family = CounterMetricFamily(name, doc, labels=["model"])
            family.add_metric(m, value)
            yield family
        for name, doc, value in (
                ("qembed_queue_inputs", "Inputs queued or being computed", b.pending),
                ("qembed_ready", "1 when /health answers ok (warmed up, serving), else 0", int(self._ready()))):
            family = GaugeMetricFamily(name, doc, labels=["model"])
            family.add_metric(m, value)
            yield family
