"""The Reranker: Qwen3-Reranker relevance scores from a GGUF file, through the Embedder's decoder.

A Qwen3-Reranker is a Qwen3 causal LM asked whether a document meets a query: the score is
``P(yes) = softmax(logit_no, logit_yes)[yes]`` at the prompt's last token
(:mod:`qembed_gguf.rerankprompt` has the prompt and the ``max_tokens`` rule). Both logits are the
lm_head rows of "yes" and "no" times that token's final hidden state, and a reranker GGUF (as
llama.cpp's converter writes it) holds just those two rows as ``cls.output.weight`` (ggml shape
``[hidden, labels]``, labels ``["yes", "no"]``, pooling RANK). So the decoder runs exactly as the
Embedder's does: one token row per pair, packed into decode calls, the hidden state of each row's
last token read out of ``result_norm`` with the 151,669-wide head never computed
(:class:`qembed_gguf.runtime.LlamaRuntime`); the two rows are read from the file once and
dequantized (``gguf.quants``: any type the file stores them in), and the logits and softmax are
computed in float64 numpy.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Sequence

import gguf
import numpy as np

from . import rerankprompt as prompt
from .embedder import Embedder
from .errors import InputError, ModelLoadError
from .fileinfo import CLS_OUT
from .gguf_reader import mapped, parse_view
from .validate import check_int

__all__ = ["Reranker", "EMBEDDING_ONLY"]

#: Embedder options a Reranker has no use for (no vectors to cut, normalise, chunk or cache)
EMBEDDING_ONLY = ("dim", "normalize", "long_inputs", "truncate", "chunk_overlap", "cache")

log = logging.getLogger(__name__)


class _Decoder(Embedder):
    """The Embedder's machinery on a reranker file (its :meth:`~Embedder.pool` gives the hidden states)."""

    _KIND = "reranker"


def read_head(path: Path, *, dim: int) -> np.ndarray:
    """The reranker's ``cls.output.weight`` as float64 ``(2, dim)``, dequantized from whatever type the
    file stores it in: row 0 the "yes" logit's, row 1 the "no" logit's, as the file's
    ``{arch}.classifier.output_labels`` say (:func:`~qembed_gguf.gguf_check.check_gguf`, which the
    decoder ran on this file, accepts exactly ``["yes", "no"]``, what llama.cpp's converter writes)."""
    with mapped(path) as (view, size):
        h = parse_view(view, path, size)  # the header again: offsets are not kept in GGUFInfo
        span = next((t for t in h.tensors if t.name == CLS_OUT), None)
        if span is None or span.shape != (dim, len(prompt.LABELS)):
            raise ModelLoadError(f"{path}: {CLS_OUT} is {'missing' if span is None else list(span.shape)}, not a "
                                 f"Qwen3-Reranker's [{dim}, {len(prompt.LABELS)}] yes/no head")
        qtype = gguf.GGMLQuantizationType(span.ggml_type)
        raw = np.frombuffer(view, dtype=np.uint8, count=span.nbytes, offset=span.offset).copy()
    try:
        weights = gguf.quants.dequantize(raw.reshape(span.shape[1], -1), qtype)
    except (NotImplementedError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"{path}: {CLS_OUT} is stored as {qtype.name}, which gguf cannot dequantize ({exc})") \
            from None
    weights = np.asarray(weights, dtype=np.float64).reshape(span.shape[1], dim)
    if not np.isfinite(weights).all():
        raise ModelLoadError(f"{path}: {CLS_OUT} holds NaN or infinite values")
    return weights


class Reranker:
    """Score documents against a query with a Qwen3-Reranker GGUF model through llama.cpp.

    ``model`` and every keyword are the :class:`~qembed_gguf.Embedder`'s (what has no meaning for a
    reranker, ``dim``, ``normalize``, the long-input policy and the vector cache, is absent):
    ``max_tokens`` is the longest prompt (template, instruction, query and document together, in
    tokens; default min(8192, the trained context)); ``n_ubatch`` and ``max_batch_sequences`` bound
    how many pairs share one decode call. A pair longer than ``max_tokens`` has its document cut from
    its end, with one warning per call (:mod:`qembed_gguf.rerankprompt` has the exact rule).

    One Reranker may be shared by threads: calls into llama.cpp are serialised internally.
    """

    def __init__(self, model: str | os.PathLike[str], **options: Any):
        """``options``: the :class:`~qembed_gguf.Embedder`'s keywords (``n_gpu_layers``,
        ``n_threads``, ``max_tokens``, ``n_ubatch`` …) but those about vectors
        (:data:`EMBEDDING_ONLY`), which are refused by name."""
        given = sorted(set(options) & set(EMBEDDING_ONLY))
        if given:
            raise InputError(f"{', '.join(given)}: Embedder options about vectors; a Reranker has none")
        self._decoder = _Decoder(model, **options)
        try:
            self._head = read_head(self.path, dim=self._decoder.dim)
            runtime = self._decoder._runtime
            for token in prompt.SPECIAL_TOKENS:
                if runtime.special_token_id(token) is None:
                    raise ModelLoadError(f"{self.path}: the vocabulary has no {token} token, which the "
                                         f"Qwen3-Reranker prompt needs")
            self._prefix = runtime.tokenize(prompt.PREFIX, parse_special=True)
            self._suffix = runtime.tokenize(prompt.SUFFIX, parse_special=True)
        except BaseException:
            self.close()
            raise

    # -- properties -----------------------------------------------------------------------------
    path = property(lambda self: self._decoder.path, doc="The GGUF file.")
    info = property(lambda self: self._decoder.info, doc="What the file holds (:class:`~qembed_gguf.GGUFInfo`).")
    stats = property(lambda self: self._decoder.stats, doc="Counters of the decoder's work (decode calls, tokens).")
    max_tokens = property(lambda self: self._decoder.max_tokens,
                          doc="The longest prompt, in tokens (template, instruction, query and document).")
    decoder = property(lambda self: self._decoder,
                       doc="The Embedder machinery running the model: its ``pool(rows)`` of :meth:`tokenize`'s rows "
                           "gives the hidden states :meth:`scores` reads (the server batches through it).")

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` freed the model."""
        return self._decoder.closed

    # -- scoring ---------------------------------------------------------------------------------
    def tokenize(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> list[list[int]]:
        """The token ids each (query, document) pair is scored on, in document order: the prompt's
        template, the instruction, query and document, cut to ``max_tokens`` (with a warning)."""
        query, instruction = prompt.check_query(query), prompt.check_instruction(instruction)
        return self._rows(query, prompt.check_documents(documents), instruction)

    def score(self, query: str, documents: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        """P("yes") of each document for ``query``, in document order: float64 array ``(len(documents),)``.

        ``instruction`` (default: "Given a web search query, retrieve relevant passages that answer
        the query") says what relevance means. All documents share decode calls (packed as the
        Embedder packs texts); identical ones are decoded once.
        """
        query, instruction = prompt.check_query(query), prompt.check_instruction(instruction)
        rows = self._rows(query, prompt.check_documents(documents), instruction)
        if not rows:  # no documents (a closed Reranker has raised)
            return np.empty(0, dtype=np.float64)
        unique: dict[tuple[int, ...], int] = {}
        slots = [unique.setdefault(tuple(r), len(unique)) for r in rows]
        return self.scores(self._decoder.pool([list(r) for r in unique]))[slots]

    def scores(self, pooled: np.ndarray) -> np.ndarray:
        """P("yes") of each row of final hidden states ``(n, hidden)`` (``decoder.pool`` of
        :meth:`tokenize`'s rows), as float64 ``(n,)``: ``softmax(logit_no, logit_yes)[yes]`` with the
        logits the yes/no head's rows times the row, in float64 (a NaN row gives NaN)."""
        hidden = np.asarray(pooled, dtype=np.float64)
        if hidden.ndim != 2 or hidden.shape[1] != self._head.shape[1]:
            raise InputError(f"pooled must be hidden states of shape (n, {self._head.shape[1]}), got {hidden.shape}")
        logits = hidden @ self._head.T  # (n, 2): yes, no
        yes, no = logits[:, 0], logits[:, 1]
        return np.exp(yes - np.logaddexp(yes, no))

    def rerank(self, query: str, documents: Sequence[str], *, instruction: str | None = None,
               top_n: int | None = None) -> list[tuple[int, float]]:
        """``(index, score)`` of the documents, best first (equal scores: lower index first), the first
        ``top_n`` of them (default: all)."""
        if top_n is not None:
            top_n = check_int("top_n", top_n)
        scores = self.score(query, documents, instruction=instruction)
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        return [(i, float(scores[i])) for i in order[:top_n]]

    def _rows(self, query: str, docs: list[str], instruction: str) -> list[list[int]]:
        """Token rows of the pairs, each at most ``max_tokens`` (the long ones cut: one warning)."""
        if self.closed:
            raise InputError("this Reranker is closed")
        if not docs:  # nothing to score, whatever the query
            return []
        decoder, limit = self._decoder, self._decoder.max_tokens
        head = prompt.head_text(instruction, query)
        with decoder._lock:
            decoder._require_open()
            runtime = decoder._runtime
            head_ids = runtime.tokenize(head)
            # the instruction and query alone must fit; else InputTooLongError naming the query
            prompt.fit_pair(self._prefix, head_ids, self._suffix, n_head=len(head_ids), limit=limit, index=None)
            contents = [runtime.tokenize(prompt.content_text(instruction, query, d)) for d in docs]
        rows, cut = [], []
        for i, ids in enumerate(contents):
            n_head = len(head_ids)
            if len(self._prefix) + len(ids) + len(self._suffix) > limit:
                n_head = prompt.head_length(ids, head_ids, head_bytes=len(head.encode("utf-8")),
                                            piece_lengths=self._piece_lengths)
            row, was_cut = prompt.fit_pair(self._prefix, ids, self._suffix, n_head=n_head, limit=limit, index=i)
            rows.append(row)
            if was_cut:
                cut.append(i)
        if cut:
            first = cut[0]
            log.warning("%d document(s) did not fit max_tokens=%d with the query and were cut from their end "
                        "(first: document %d, %d tokens in all)", len(cut), limit, first,
                        len(self._prefix) + len(contents[first]) + len(self._suffix))
        return rows

    def _piece_lengths(self, ids: Sequence[int]) -> list[int]:
        with self._decoder._lock:
            self._decoder._require_open()
            return self._decoder._runtime.piece_lengths(ids)

    # -- lifetime -----------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """One decode not counted in :attr:`stats`: pages the weights in before the first real call."""
        self._decoder.warm_up()

    def close(self) -> None:
        """Free the llama.cpp model and context (idempotent)."""
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.close()

    def __enter__(self) -> "Reranker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Reranker({str(self.path)!r}, max_tokens={self.max_tokens}, quant={self.info.file_type})"
