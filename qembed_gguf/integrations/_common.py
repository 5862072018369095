"""What the framework adapters share: opening or borrowing an Embedder, and checking options."""

from __future__ import annotations

import os
from typing import Any, Union

from ..embedder import Embedder
from ..errors import InputError, InputTypeError

__all__ = ["ModelArg", "EmbedderLifetime", "open_embedder", "check_texts", "check_text", "missing_extra",
           "ADAPTER_ARGS"]

#: the constructor arguments both adapters share, documented once (their docstrings include it)
ADAPTER_ARGS = """model: a ``.gguf`` file, checkpoint folder, registry name or hub id, opened as
            ``Embedder(model, **embedder_kwargs)`` and closed by :meth:`close`; or an open
            :class:`~qembed_gguf.Embedder`, which is shared and left open.
        dim: Matryoshka output dimension (default: the Embedder's).
        task: the query instruction (default: the model's own)."""


def missing_extra(module: str, requirement: str, extra: str) -> ImportError:
    """The error an adapter module raises when its framework is not installed."""
    return ImportError(f'qembed_gguf.integrations.{module} needs {requirement}: pip install "qembed-gguf[{extra}]"')

#: a model path or name for :class:`Embedder`, or an open Embedder to share
ModelArg = Union[str, os.PathLike, Embedder]


def open_embedder(model: ModelArg, *, dim: int | None, task: str | None,
                  embedder_kwargs: dict[str, Any]) -> tuple[Embedder, bool]:
    """The Embedder an adapter uses and whether the adapter owns it (and so must close it).

    ``model`` is an existing Embedder (shared, never closed by the adapter; ``embedder_kwargs``
    must then be empty, since they could not apply) or anything :class:`Embedder` accepts,
    opened with ``embedder_kwargs``. ``dim`` and ``task`` are checked here, once, so that a bad
    option fails at construction rather than at the first embedding.
    """
    if task is not None and not isinstance(task, str):
        raise InputError(f"task must be a string or None, got {type(task).__name__}")
    if isinstance(model, Embedder):
        if embedder_kwargs:
            raise InputError(f"Embedder options ({', '.join(sorted(embedder_kwargs))}) cannot apply to an "
                             f"existing Embedder; pass a model path or name instead, or configure the Embedder")
        embedder, owned = model, False
    else:
        embedder, owned = Embedder(model, **embedder_kwargs), True
    try:
        embedder.check_dim(dim)  # the Embedder's own rule, so both name the same range
    except InputError:
        if owned:
            embedder.close()
        raise
    return embedder, owned


def check_texts(texts: Any) -> list[str]:
    """A list of documents; a bare string is refused (it is one text, not a list of them)."""
    if isinstance(texts, str):
        raise InputTypeError("texts must be a list of strings, got a single str; wrap it in a list")
    return list(texts)


def check_text(text: Any) -> str:
    """One query text."""
    if not isinstance(text, str):
        raise InputTypeError(f"text must be a str, got {type(text).__name__}")
    return text


class EmbedderLifetime:
    """``embedder``, ``close()`` and the context manager of an adapter holding ``_embedder`` and
    ``_owns_embedder`` (set from :func:`open_embedder`)."""

    _embedder: Embedder
    _owns_embedder: bool

    @property
    def embedder(self) -> Embedder:
        """The underlying :class:`~qembed_gguf.Embedder`."""
        return self._embedder

    def close(self) -> None:
        """Free the Embedder if this adapter opened it (idempotent); a shared one stays open."""
        if self._owns_embedder:
            self._embedder.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
