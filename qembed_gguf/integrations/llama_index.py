"""LlamaIndex ``BaseEmbedding`` backed by a local Qwen3-Embedding GGUF model.

::

    from llama_index.core import Document, VectorStoreIndex
    from qembed_gguf.integrations.llama_index import QembedEmbedding

    embed_model = QembedEmbedding("qwen3-embedding-0.6b", dim=512)
    index = VectorStoreIndex.from_documents([Document(text="...")], embed_model=embed_model)
    index.as_retriever(similarity_top_k=3).retrieve("a question")

Nodes are embedded as raw text, queries with the model's instruction (``task``), as the
Qwen3-Embedding recipe asks. The async methods run the embedding in a worker thread, so they do
not block the event loop; one Embedder is safe to share between threads.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from ..embedder import Embedder
from ._common import ADAPTER_ARGS, EmbedderLifetime, ModelArg, check_text, check_texts, missing_extra, open_embedder

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
except ImportError as exc:  # pragma: no cover - exercised by a test that hides llama_index
    raise missing_extra("llama_index", "llama-index-core", "llama-index") from exc

__all__ = ["QembedEmbedding"]

DEFAULT_EMBED_BATCH_SIZE = 64  # texts per call into the Embedder, which packs them by tokens itself


class QembedEmbedding(EmbedderLifetime, BaseEmbedding):
    """A LlamaIndex embedding model that runs a Qwen3-Embedding GGUF model through qembed-gguf.

from ..embedder import Embedder
from ._common import ADAPTER_ARGS, EmbedderLifetime, ModelArg, check_text, check_texts, missing_extra, open_embedder

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager
except ImportError as exc:  # pragma: no cover - exercised by a test that hides llama_index
    raise missing_extra("llama_index", "llama-index-core", "llama-index") from exc
        embed_batch_size: texts LlamaIndex hands over per call.
        callback_manager: LlamaIndex callbacks.
        **embedder_kwargs: :class:`~qembed_gguf.Embedder` options (``n_gpu_layers``,
            ``max_tokens`` …); only with a model path or name.

    Raises:
        InputError: ``dim`` is outside the model's Matryoshka range, ``task`` is not a string,
            or ``embedder_kwargs`` are given with an existing Embedder.
    """

    dim: Optional[int] = Field(default=None, description="Matryoshka output dimension (None: the model's full one).")
    task: Optional[str] = Field(default=None, description="Query instruction (None: the model's default).")

    _embedder: Embedder = PrivateAttr()
    _owns_embedder: bool = PrivateAttr(default=False)

    def __init__(self, model: ModelArg, *, dim: int | None = None, task: str | None = None,
                 embed_batch_size: int = DEFAULT_EMBED_BATCH_SIZE,
                 callback_manager: CallbackManager | None = None, **embedder_kwargs: Any) -> None:
        embedder, owned = open_embedder(model, dim=dim, task=task, embedder_kwargs=embedder_kwargs)
        try:
            super().__init__(model_name=embedder.path.name, dim=None if dim is None else int(dim), task=task,
                             embed_batch_size=embed_batch_size, callback_manager=callback_manager)
        except Exception:  # pydantic refused a field (e.g. embed_batch_size=0): free what we opened
            if owned:
                embedder.close()
            raise
        self._embedder = embedder
        self._owns_embedder = owned

    @classmethod
    def class_name(cls) -> str:
        return "QembedEmbedding"

    # -- the BaseEmbedding hooks ----------------------------------------------------------------------
    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embedder.embed_query(check_text(query), task=self.task, dim=self.dim)[0].tolist()

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embedder.embed_documents([check_text(text)], dim=self.dim)[0].tolist()

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return self._embedder.embed_documents(check_texts(texts), dim=self.dim).tolist()

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


QembedEmbedding.__doc__ = QembedEmbedding.__doc__.replace("{ADAPTER_ARGS}", ADAPTER_ARGS)
