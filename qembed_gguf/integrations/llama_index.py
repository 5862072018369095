"""LlamaIndex ``BaseEmbedding`` and a reranking node postprocessor backed by local Qwen3-Embedding
and Qwen3-Reranker GGUF models.

::

    from llama_index.core import Document, VectorStoreIndex
    from qembed_gguf.integrations.llama_index import QembedEmbedding, QembedRerank

    embed_model = QembedEmbedding("qwen3-embedding-0.6b", dim=512)
    index = VectorStoreIndex.from_documents([Document(text="...")], embed_model=embed_model)
    index.as_retriever(similarity_top_k=3).retrieve("a question")

    rerank = QembedRerank("qwen3-reranker-0.6b", top_n=3)  # a node postprocessor
    nodes = index.as_retriever(similarity_top_k=20).retrieve("a question")
    rerank.postprocess_nodes(nodes, query_str="a question")  # the 3 best, scored by the reranker
    index.as_query_engine(similarity_top_k=20, node_postprocessors=[rerank])  # the same, in a query engine

Nodes are embedded as raw text, queries with the model's instruction (``task``), as the
Qwen3-Embedding recipe asks. The async methods run the embedding (and the reranking) in a worker
thread, so they do not block the event loop; one Embedder or Reranker is safe to share between
threads.
"""

from __future__ import annotations

import asyncio
from typing import Any, List, Optional

from ..embedder import Embedder
from ..errors import InputError
from ..reranker import Reranker
from ._common import (ADAPTER_ARGS, RERANKER_ARGS, EmbedderLifetime, ModelArg, RerankerArg, RerankerLifetime,
                      check_text, check_texts, missing_extra, open_embedder, open_reranker)

try:
    from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
    from llama_index.core.bridge.pydantic import Field, PrivateAttr
    from llama_index.core.callbacks import CallbackManager, CBEventType, EventPayload
    from llama_index.core.instrumentation import get_dispatcher
    from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as exc:  # pragma: no cover - exercised by a test that hides llama_index
    raise missing_extra("llama_index", "llama-index-core", "llama-index") from exc

__all__ = ["QembedEmbedding", "QembedRerank"]

dispatcher = get_dispatcher(__name__)

DEFAULT_EMBED_BATCH_SIZE = 64  # texts per call into the Embedder, which packs them by tokens itself


class QembedEmbedding(EmbedderLifetime, BaseEmbedding):
    """A LlamaIndex embedding model that runs a Qwen3-Embedding GGUF model through qembed-gguf.

    Args:
        {ADAPTER_ARGS}
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


class QembedRerank(RerankerLifetime, BaseNodePostprocessor):
    """A LlamaIndex node postprocessor that reranks nodes with a Qwen3-Reranker GGUF model.

    Each node's content as LlamaIndex's rerankers read it (``get_content(MetadataMode.EMBED)``)
    is scored against the query in one :meth:`Reranker.rerank <qembed_gguf.Reranker.rerank>`
    call; the ``top_n`` best come back best first (equal scores: input order) as new
    ``NodeWithScore`` objects, on the same nodes, whose ``score`` is the relevance score, P("yes")
    in [0, 1]. The ``NodeWithScore`` objects passed in keep their retrieval scores.

    Args:
        {RERANKER_ARGS}
        callback_manager: LlamaIndex callbacks (a RERANKING event per call).
        **reranker_kwargs: :class:`~qembed_gguf.Reranker` options (``n_gpu_layers``,
            ``max_tokens`` …); only with a model path or name.

    Raises:
        InputError: ``top_n`` is not a positive integer or None, ``instruction`` is not text, or
            ``reranker_kwargs`` are given with an existing Reranker.
    """

    model: str = Field(description="The reranker's GGUF file name.")
    top_n: Optional[int] = Field(default=3, description="Nodes to return, sorted by score (None: all).")
    instruction: Optional[str] = Field(default=None, description="What relevance means (None: the default).")

    _reranker: Reranker = PrivateAttr()
    _owns_reranker: bool = PrivateAttr(default=False)

    def __init__(self, model: RerankerArg, *, top_n: int | None = 3, instruction: str | None = None,
                 callback_manager: CallbackManager | None = None, **reranker_kwargs: Any) -> None:
        reranker, owned, top_n = open_reranker(model, top_n=top_n, instruction=instruction,
                                               reranker_kwargs=reranker_kwargs)
        self._adopt(reranker, owned, lambda: super(QembedRerank, self).__init__(
            model=reranker.path.name, top_n=top_n, instruction=instruction,
            callback_manager=callback_manager or CallbackManager()))

    @classmethod
    def class_name(cls) -> str:
        return "QembedRerank"

    def _postprocess_nodes(self, nodes: List[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> List[NodeWithScore]:
        if query_bundle is None:
            raise InputError("QembedRerank needs the query: call postprocess_nodes(nodes, query_str=...) or pass "
                             "a QueryBundle")
        nodes = list(nodes)
        top_n = len(nodes) if self.top_n is None else self.top_n
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model))
        with self.callback_manager.event(CBEventType.RERANKING, payload={
                EventPayload.NODES: nodes, EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str, EventPayload.TOP_K: top_n}) as event:
            texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
            ranked = self._reranker.rerank(query_bundle.query_str, texts, instruction=self.instruction,
                                           top_n=self.top_n)
            new_nodes = [NodeWithScore(node=nodes[i].node, score=score) for i, score in ranked]
            event.on_end(payload={EventPayload.NODES: new_nodes})
        dispatcher.event(ReRankEndEvent(nodes=new_nodes))
        return new_nodes


QembedRerank.__doc__ = QembedRerank.__doc__.replace("{RERANKER_ARGS}", RERANKER_ARGS)
