"""What a server is configured with (:class:`ServerConfig`), checked when it is made."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from ..errors import InputError
from ..longinputs import LONG_INPUTS
from .cpu import CPU_SHARING
from .protocol import Limits

if TYPE_CHECKING:
    from ..embedder import Embedder
    from ..reranker import Reranker

__all__ = ["ServedModel", "ServerConfig"]


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """One model of a server of several: an Embedder (answering ``/v1/embeddings``) or a Reranker
    (answering ``/v1/rerank``), and the ids clients send as ``model`` for it (the first is its name
    in ``/health`` and the metrics; the others are aliases)."""

    model: "Embedder | Reranker"
    names: tuple[str, ...]

    def __post_init__(self):
        from ..embedder import Embedder
        from ..reranker import Reranker

        if not isinstance(self.model, (Embedder, Reranker)):
            raise InputError(f"ServedModel.model must be an Embedder or a Reranker, got {type(self.model).__name__}")
        if isinstance(self.names, str) or not self.names or not all(isinstance(n, str) and n for n in self.names):
            raise InputError(f"ServedModel.names must be a non-empty tuple of non-empty strings, got {self.names!r}")


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """How the server answers. ``model_names``: the ids clients may send as ``model`` when the
    server has one model (``create_app(embedder, config)``); a server of several models takes
    each model's ids from its :class:`~.app.ServedModel` instead, and this stays empty.

    ``allowed_hosts``: the ``Host`` names answered (any port; ``"*"``: any); empty: the policy of
    :func:`.security.allowed_hosts` for the bind address (loopback names only when it is loopback
    or unknown). ``cors_origins``: web origins allowed to call the API from a browser (CORS);
    none by default. ``read_timeout_s``: the longest a request body may take to arrive.
    ``shutdown_timeout_s``: how long a shutdown lets accepted requests finish before cancelling them.

    ``long_inputs``: what an input longer than the model's ``max_tokens`` gets when its request
    does not say (``"error"``: 400; ``"truncate"``; ``"chunk"``; see :mod:`qembed_gguf.longinputs`).
    ``chunk_overlap``: tokens consecutive windows share, for every request under ``"chunk"``; it
    must be below ``max_tokens - 1``, which is checked against the model by :func:`.app.create_app`.

    ``metrics_need_key``: ``/metrics`` asks for the API key too (by default it is open, as ``/health``).

    ``short_call_ms``: while small requests (ones that fit in one decode call) keep arriving, big
    requests decode in calls of about this long, alternating with the small ones' (0: never cut;
    :mod:`.fairness`), so a query waits for at most one cut call (a row longer than the cut is
    decoded whole).

    ``cpu_sharing``: how several models share the CPU (:mod:`.cpu`): ``"split"``, they decode at
    once, each on its own threads (the caller gives each Embedder its share: ``qembed-gguf serve``
    does); ``"time"``, their decode calls take turns. The limits, the queue bound and the batching
    settings apply to each model on its own.
    """

    model_names: tuple[str, ...] = ()
    api_key: str | None = None
    limits: Limits = Limits()
    long_inputs: str = "error"        # default of the request's "long_inputs" field
    chunk_overlap: int = 0            # the server's, not a request field
    max_wait_ms: float = 5.0          # micro-batching window (only while other requests are arriving)
    short_call_ms: float = 300.0      # big requests' decode calls while small ones arrive (0: never cut)
    max_batch_inputs: int = 512
    max_queue_inputs: int = 8192
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    read_timeout_s: float = 30.0
    shutdown_timeout_s: float = 10.0
    metrics_need_key: bool = False
    cpu_sharing: str = "split"

    def __post_init__(self):
        if isinstance(self.model_names, str) or not all(isinstance(n, str) and n for n in self.model_names):
            raise InputError(f"model_names must be a tuple of non-empty strings, got {self.model_names!r}")
        if self.cpu_sharing not in CPU_SHARING:
            raise InputError(f"cpu_sharing must be one of {', '.join(map(repr, CPU_SHARING))}, "
                             f"got {self.cpu_sharing!r}")
        for name in ("allowed_hosts", "cors_origins"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) and v.strip() for v in value):
                raise InputError(f"{name} must be a tuple of non-empty strings, got {value!r}")
        for name in ("read_timeout_s", "shutdown_timeout_s", "short_call_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise InputError(f"{name} must be a number >= 0, got {value!r}")
        if self.long_inputs not in LONG_INPUTS:
            raise InputError(f"long_inputs must be one of {', '.join(map(repr, LONG_INPUTS))}, "
                             f"got {self.long_inputs!r}")
        if isinstance(self.chunk_overlap, bool) or not isinstance(self.chunk_overlap, int) or self.chunk_overlap < 0:
            raise InputError(f"chunk_overlap must be an integer >= 0, got {self.chunk_overlap!r}")
        if self.read_timeout_s == 0:
            raise InputError("read_timeout_s must be > 0")
        if self.max_queue_inputs < self.limits.max_inputs:
            raise InputError(f"max_queue_inputs ({self.max_queue_inputs}) must be >= limits.max_inputs "
                             f"({self.limits.max_inputs}), or a full-size request could never be accepted")
