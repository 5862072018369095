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


def open_model(model: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
               convert_type: str = "q6_k", revision: str | None = None, **kwargs: Any):
    """The model ``model`` names, opened as what it is: ``Embedder(path, **kwargs)`` or, for a
    reranker file, ``Reranker(path, **kwargs)`` without the embedding-only options
    (:data:`~qembed_gguf.reranker.EMBEDDING_ONLY`; one given with a value other than its default is
    logged and ignored)."""
    from .embedder import Embedder
    from .reranker import EMBEDDING_ONLY, Reranker

    path = resolve_model(model, cache_dir=cache_dir, outtype=convert_type, revision=revision)
    if read_gguf_info(path).kind != "reranker":
        return Embedder(path, **kwargs)
    ignored = sorted(k for k in EMBEDDING_ONLY if kwargs.pop(k, None) not in (None, False, 0, "truncate", "error"))
    if ignored:
        log.warning("%s is a reranker: %s do not apply to it and are ignored", path.name, ", ".join(ignored))
    return Reranker(path, **kwargs)
