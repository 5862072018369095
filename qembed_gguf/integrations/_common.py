"""What the framework adapters share: opening or borrowing an Embedder or a Reranker, checking
options, and the adapters' ``close()`` and context manager."""

from __future__ import annotations

import os
from typing import Any, Union

from .. import rerankprompt
from ..embedder import Embedder
from ..errors import InputError, InputTypeError
from ..reranker import Reranker
from ..validate import check_int

__all__ = ["ModelArg", "RerankerArg", "EmbedderLifetime", "RerankerLifetime", "open_embedder", "open_reranker",
           "check_texts", "check_text", "missing_extra", "ADAPTER_ARGS", "RERANKER_ARGS"]

#: the constructor arguments both embedding adapters share, documented once (their docstrings include it)
ADAPTER_ARGS = """model: a ``.gguf`` file, checkpoint folder, registry name or hub id, opened as
            ``Embedder(model, **embedder_kwargs)`` and closed by :meth:`close`; or an open
            :class:`~qembed_gguf.Embedder`, which is shared and left open.
        dim: Matryoshka output dimension (default: the Embedder's).
        task: the query instruction (default: the model's own)."""

#: the constructor arguments both reranking adapters share, documented once
RERANKER_ARGS = """model: a Qwen3-Reranker ``.gguf`` file, checkpoint folder, registry name or hub id,
            opened as ``Reranker(model, **reranker_kwargs)`` and closed by :meth:`close`; or an
            open :class:`~qembed_gguf.Reranker`, which is shared and left open.
        top_n: how many of the best documents to return (None: all of them, reordered).
        instruction: what relevance means (default: the Qwen3-Reranker's web-search one)."""


def missing_extra(module: str, requirement: str, extra: str) -> ImportError:
    """The error an adapter module raises when its framework is not installed."""
    return ImportError(f'qembed_gguf.integrations.{module} needs {requirement}: pip install "qembed-gguf[{extra}]"')

#: a model path or name for :class:`Embedder`, or an open Embedder to share
ModelArg = Union[str, os.PathLike, Embedder]
#: a model path or name for :class:`Reranker`, or an open Reranker to share
RerankerArg = Union[str, os.PathLike, Reranker]


def _open(cls: type, model: Any, kwargs: dict[str, Any]) -> tuple[Any, bool]:
    """``(model, False)`` for an open ``cls`` (shared: the adapter never closes it; ``kwargs``
    must then be empty, since they could not apply), else ``(cls(model, **kwargs), True)``."""
    name = cls.__name__
    if isinstance(model, cls):
        if kwargs:
            raise InputError(f"{name} options ({', '.join(sorted(kwargs))}) cannot apply to an existing {name}; "
                             f"pass a model path or name instead, or configure the {name}")
        return model, False
    if isinstance(model, (Embedder, Reranker)):
        raise InputTypeError(f"this adapter needs a model path or name or an open {name}, got an open "
                             f"{type(model).__name__}")
    return cls(model, **kwargs), True


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
    embedder, owned = _open(Embedder, model, embedder_kwargs)
    try:
        embedder.check_dim(dim)  # the Embedder's own rule, so both name the same range
    except InputError:
        if owned:
            embedder.close()
        raise
    return embedder, owned


def open_reranker(model: RerankerArg, *, top_n: int | None, instruction: str | None,
                  reranker_kwargs: dict[str, Any]) -> tuple[Reranker, bool, int | None]:
    """The Reranker an adapter uses, whether the adapter owns it (and so must close it), and
    ``top_n`` as an int (or None).

    ``model`` is shared or opened as :func:`open_embedder` says for an Embedder. ``top_n`` (a
    positive integer or None) and ``instruction`` (text or None) are checked first, with the
    Reranker's own rules, so that a bad option fails before a model is loaded.
    """
    top_n = None if top_n is None else check_int("top_n", top_n)
    rerankprompt.check_instruction(instruction)
    reranker, owned = _open(Reranker, model, reranker_kwargs)
    return reranker, owned, top_n


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


class _Lifetime:
    """``close()`` and the context manager of an adapter over a model it may own (:meth:`_held`)."""

    def _held(self) -> tuple[Any, bool]:
        """The model and whether this adapter opened it."""
        raise NotImplementedError

    def close(self) -> None:
        """Free the model if this adapter opened it (idempotent); a shared one stays open."""
        model, owned = self._held()
        if owned:
            model.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EmbedderLifetime(_Lifetime):
    """``embedder``, ``close()`` and the context manager of an adapter holding ``_embedder`` and
    ``_owns_embedder`` (set from :func:`open_embedder`)."""

    _embedder: Embedder
    _owns_embedder: bool

    @property
    def embedder(self) -> Embedder:
        """The underlying :class:`~qembed_gguf.Embedder`."""
        return self._embedder

    def _held(self) -> tuple[Embedder, bool]:
        return self._embedder, self._owns_embedder


class RerankerLifetime(_Lifetime):
    """``reranker``, ``close()`` and the context manager of an adapter holding ``_reranker`` and
    ``_owns_reranker`` (set from :func:`open_reranker`)."""

    _reranker: Reranker
    _owns_reranker: bool

    @property
    def reranker(self) -> Reranker:
        """The underlying :class:`~qembed_gguf.Reranker`."""
        return self._reranker

    def _held(self) -> tuple[Reranker, bool]:
        return self._reranker, self._owns_reranker

    def _adopt(self, reranker: Reranker, owned: bool, init) -> None:
        """Run the framework's own ``init()`` (its pydantic constructor), then hold ``reranker``;
        an ``init`` that fails frees what was opened for it."""
        try:
            init()
        except Exception:  # pydantic refused a field
            if owned:
                reranker.close()
            raise
        self._reranker = reranker
        self._owns_reranker = owned
