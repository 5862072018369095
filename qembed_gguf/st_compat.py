"""sentence-transformers' ``encode`` on the Embedder, for code written against ``SentenceTransformer``."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .errors import InputError, InputTypeError
from .postprocess import PRECISIONS, quantize_embeddings
from .validate import check_int, check_text, check_texts

__all__ = ["SentenceTransformersAPI"]


class SentenceTransformersAPI:
    """``encode`` with sentence-transformers' signature, on top of the Embedder's ``format_query``
    and ``_embed`` (a mixin of :class:`~qembed_gguf.Embedder`)."""

    def encode(
        self,
        sentences: str | Sequence[str],
        prompt_name: str | None = None,
        prompt: str | None = None,
        batch_size: int = 32,
        show_progress_bar: bool | None = None,
        convert_to_numpy: bool = True,
        normalize_embeddings: bool | None = None,
        truncate_dim: int | None = None,
        precision: str = "float32",
    ) -> np.ndarray:
        """sentence-transformers-compatible ``encode``.

        ``prompt_name`` is ``"query"`` (the model's query instruction) or ``"document"`` (none);
        ``prompt`` is a literal prefix. ``batch_size`` bounds the sequences per decode batch.
        A single string gives a 1-D vector, as in sentence-transformers; ``precision`` quantizes
        as sentence-transformers' ``quantize_embeddings`` does. ``normalize_embeddings`` defaults
        to the Embedder's ``normalize`` (True, as the Qwen3-Embedding ST pipeline's Normalize module).
        """
        if not convert_to_numpy:
            raise InputError("only convert_to_numpy=True is supported (qembed-gguf returns numpy arrays)")
        if precision not in PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        if prompt is not None and prompt_name is not None:
            raise InputError("give prompt or prompt_name, not both")
        single = isinstance(sentences, str)
        items = check_texts(sentences)
        if prompt_name == "query":
            prompt = self.format_query("")
        elif prompt_name not in (None, "document"):
            raise InputError(f"unknown prompt_name {prompt_name!r}; this model has 'query' and 'document'")
        if prompt:
            if not isinstance(prompt, str):
                raise InputTypeError(f"prompt must be a string, got {type(prompt).__name__}")
            check_text(prompt, "prompt")
            items = [prompt + t for t in items]
        vectors = self._embed(items, dim=truncate_dim, normalize=normalize_embeddings, batch_tokens=None,
                              max_seqs=check_int("batch_size", batch_size),
                              show_progress=bool(show_progress_bar))
        vectors = quantize_embeddings(vectors, precision)
        return vectors[0] if single else vectors
