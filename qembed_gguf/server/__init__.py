"""An OpenAI-compatible embeddings server (``qembed-gguf serve``; needs ``pip install "qembed-gguf[server]"``).

::

    from qembed_gguf import Embedder
    from qembed_gguf.server import ServerConfig, create_app, run

    run(Embedder("model.gguf"), ServerConfig(model_names=("qwen3-embedding",)), host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import ipaddress
import logging

try:
    import starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('the server needs its extra: pip install "qembed-gguf[server]"') from e

from ..embedder import Embedder
from .app import ServerConfig, create_app
from .protocol import APIError, Limits

__all__ = ["ServerConfig", "Limits", "APIError", "create_app", "run", "is_loopback"]

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(embedder: Embedder, config: ServerConfig, *, host: str = "127.0.0.1", port: int = 8000,
        log_level: str = "info") -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM: queued requests finish, then the model is freed)."""
    if not is_loopback(host) and not config.api_key:
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                    "(set --api-key or QEMBED_API_KEY)", host)
    app = create_app(embedder, config, close_embedder=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=log_level == "debug",
                timeout_graceful_shutdown=30)
