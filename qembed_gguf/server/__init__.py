"""An OpenAI-compatible embeddings server (``qembed-gguf serve``; needs ``pip install "qembed-gguf[server]"``).

::

    from qembed_gguf import Embedder
    from qembed_gguf.server import ServerConfig, create_app, run

    run(Embedder("model.gguf"), ServerConfig(model_names=("qwen3-embedding",)), host="127.0.0.1", port=8000)

    # several models, each with its own worker and queue, routed by the request's "model"
    run([ServedModel(Embedder("0.6b.gguf", n_threads=4), ("small",)),
         ServedModel(Embedder("4b.gguf", n_threads=4), ("large",))], ServerConfig())
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

try:
    import prometheus_client  # noqa: F401
    import starlette  # noqa: F401
    import uvicorn
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('the server needs its extra: pip install "qembed-gguf[server]"') from e

from ..embedder import Embedder
from ..reranker import Reranker
from ..errors import BackendError
from .app import create_app, served_models
from .config import ServedModel, ServerConfig
from .cpu import CPU_SHARING, split_threads
from .protocol import APIError, Limits
from .security import is_loopback

__all__ = ["ServerConfig", "ServedModel", "served_models", "CPU_SHARING", "split_threads", "Limits", "APIError",
           "ServerStartError", "create_app", "run", "is_loopback"]

log = logging.getLogger(__name__)

BACKSTOP_S = 5.0  # after the grace period, how long uvicorn waits for connections before cancelling them


class ServerStartError(BackendError):
    """The server did not start (uvicorn has logged why: e.g. the port is taken)."""


class _Server(uvicorn.Server):
    """uvicorn's server, starting the batcher's grace period when the shutdown begins (the
    signal), not when uvicorn is done waiting for connections (the app's lifespan shutdown)."""

    def __init__(self, config: uvicorn.Config, on_shutdown):
        super().__init__(config)
        self._on_shutdown = on_shutdown

    async def shutdown(self, sockets=None) -> None:
        self._on_shutdown()
        await super().shutdown(sockets)


def run(models: "Embedder | Reranker | Sequence[ServedModel]", config: ServerConfig, *, host: str = "127.0.0.1",
        port: int = 8000, log_level: str = "info") -> None:
    """Serve one Embedder or Reranker, or several :class:`ServedModel` s, until interrupted. Ctrl-C / SIGTERM: new
    requests are refused; accepted ones may finish for ``config.shutdown_timeout_s`` seconds, the
    rest get 503; each worker stops after its current decode call, the models are freed and the
    function returns."""
    if not is_loopback(host) and not config.api_key:
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                    "(set --api-key or QEMBED_API_KEY)", host)
    embedders = [models] if isinstance(models, (Embedder, Reranker)) else [getattr(m, "model", None) for m in models]
    try:
        app = create_app(models, config, close_embedder=True, bind_host=host)
    except BaseException:  # the models given are the server's: freed whatever was wrong
        for e in embedders:
            if hasattr(e, "close"):
                e.close()
        raise
    server_state = app.state.server
    grace = config.shutdown_timeout_s
    server = _Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                                    timeout_graceful_shutdown=grace + BACKSTOP_S),
                     on_shutdown=lambda: server_state.shutdown(grace))
    server.run()
    if not server.started:
        for e in embedders:
            e.close()
        raise ServerStartError(f"the server did not start on {host}:{port} (see the log above)")
