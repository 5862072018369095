"""Opening a model whatever its kind: :func:`open_model` gives an :class:`~qembed_gguf.Embedder` for
an embedding model and a :class:`~qembed_gguf.Reranker` for a Qwen3-Reranker, from a GGUF file, a
checkpoint folder, a registry name or a hub id (converted into the cache on first use)."""

from __future__ import annotations

import logging
import os
from typing import Any

from .fileinfo import read_gguf_info
from .modelcache import resolve_model

__all__ = ["open_model"]

log = logging.getLogger(__name__)


def open_model(model: str | os.PathLike[str], *, embedding_options: dict[str, Any] | None = None,
               cache_dir: str | os.PathLike[str] | None = None, convert_type: str = "q6_k",
               revision: str | None = None, **options: Any):
    """The model ``model`` names, opened as what it is: ``Embedder(path, **options,
    **embedding_options)``, or for a reranker file ``Reranker(path, **options)``.
    ``embedding_options`` are the Embedder's options about vectors
    (:data:`~qembed_gguf.reranker.EMBEDDING_ONLY`: the long-input policy, the cache …), which a
    reranker has no use for; a vector cache given for a reranker is logged as unused."""
    from .embedder import Embedder
    from .reranker import Reranker

    embedding_options = dict(embedding_options or {})
    path = resolve_model(model, cache_dir=cache_dir, outtype=convert_type, revision=revision)
    if read_gguf_info(path).kind != "reranker":
        return Embedder(path, cache_dir=cache_dir, **options, **embedding_options)
    if embedding_options.get("cache") is not None:
        log.warning("%s is a reranker: the vector cache does not apply to it", path.name)
    return Reranker(path, cache_dir=cache_dir, **options)
