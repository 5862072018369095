"""The Ray actor: one Embedder per worker process, embedding the batches Ray Data hands it."""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from ...errors import InputError, QembedError
from ._base import ID_COLUMN, ROW_COLUMN

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["EmbedBatches"]

log = logging.getLogger(__name__)


class EmbedBatches:
    """The callable class :func:`embed_dataset` maps batches through: one instance per Ray actor.

    ``__init__`` loads ONE :class:`~qembed_gguf.Embedder` (so a model is loaded once per worker,
    never per batch); each call embeds the ``column`` of a ``pyarrow.Table`` batch and returns the
    batch with ``output_column`` appended (``fixed_size_list<float32>[dim]``, L2-normalised as
    ``Embedder.embed`` returns it) and, if asked, ``worker_column`` (``host:pid`` of this worker).

    Args:
        model: what :class:`~qembed_gguf.Embedder` accepts, as seen from the worker's node.
        column: the text column.
        output_column: the embedding column to append.
        dim: Matryoshka dimension (None: the model's full dimension).
        query: embed as queries, with the instruction ``task`` (None: the model's own).
        task: the query instruction; only with ``query``.
        n_threads: llama.cpp threads of this worker.
        batch_tokens: the Embedder's per-call packing budget (None: its default).
        embedder_kwargs: further :class:`~qembed_gguf.Embedder` options.
        worker_column: if set, a string column recording which worker embedded each row.

    Raises:
        InputError: from a call, when the text column is not a string column or holds a null
            (naming the row by its ``row``/``id`` values when the batch has them).
    """

    def __init__(self, model: str, *, column: str, output_column: str, dim: int | None, query: bool,
                 task: str | None, n_threads: int | None, batch_tokens: int | None,
                 embedder_kwargs: dict[str, Any], worker_column: str | None = None) -> None:
        from ...embedder import Embedder

        started = time.perf_counter()
        try:
            self._embedder = Embedder(model, n_threads=n_threads, **embedder_kwargs)
        except QembedError as exc:
            # raised by the first call instead: a failed actor constructor reaches the driver as an
            # ActorDiedError holding only text, a failed call as the error itself
            self._load_error: QembedError | None = exc
            log.error("worker could not load %s: %s", model, exc)
            return
        self._load_error = None
        self._column, self._output_column, self._worker_column = column, output_column, worker_column
        self._dim = dim
        self._out_dim = dim or self._embedder.dim
        self._batch_tokens = batch_tokens
        facts = self._embedder.facts
        self._instruction = (facts.default_task if task is None else task) if query else None
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        log.info("worker %s loaded %s in %.1f s (%s threads)", self._worker, self._embedder.path.name,
                 time.perf_counter() - started, n_threads)

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        if self._load_error is not None:
            raise self._load_error

        texts = batch.column(self._column)
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            raise InputError(f"column {self._column!r} holds {texts.type}, not strings: texts must be strings")
        if texts.null_count:
            i = int(np.flatnonzero(texts.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{_describe_row(batch, i)} has no text: column {self._column!r} is null")
        started = time.perf_counter()
        vectors = self._embedder.embed(texts.to_pylist(), dim=self._dim, instruction=self._instruction,
                                       batch_tokens=self._batch_tokens)
        log.debug("worker %s embedded %d rows in %.3f s", self._worker, len(vectors), time.perf_counter() - started)
        embeddings = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()),
                                                       self._out_dim)
        batch = batch.append_column(pa.field(self._output_column, embeddings.type), embeddings)
        if self._worker_column is not None:
            batch = batch.append_column(self._worker_column, pa.array([self._worker] * batch.num_rows,
                                                                      type=pa.string()))
        return batch


def _describe_row(batch: "pa.Table", i: int) -> str:
    keys = [f"{name}={batch.column(name)[i].as_py()!r}" for name in (ROW_COLUMN, ID_COLUMN)
            if name in batch.column_names]
    if keys:
        return f"the row with {', '.join(keys)}"
    return f"row {i} of a batch of {batch.num_rows} (give the rows an {ID_COLUMN!r} column to have errors name them)"
