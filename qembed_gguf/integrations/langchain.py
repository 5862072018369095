"""LangChain ``Embeddings`` and a document compressor (reranker) backed by local Qwen3-Embedding and
Qwen3-Reranker GGUF models.

::

    from qembed_gguf.integrations.langchain import QembedEmbeddings, QembedReranker
    from langchain_core.vectorstores import InMemoryVectorStore

    with QembedEmbeddings("qwen3-embedding-0.6b", dim=512) as embeddings:
        store = InMemoryVectorStore(embedding=embeddings)
        store.add_texts(["Paris is the capital of France.", "Berlin ist die Hauptstadt Deutschlands."])
        store.similarity_search("capital of Germany", k=1)

    with QembedReranker("qwen3-reranker-0.6b", top_n=3) as reranker:
        candidates = store.similarity_search("capital of Germany", k=20)
        best = reranker.compress_documents(candidates, "capital of Germany")  # best first
        best[0].metadata["relevance_score"]  # P(yes) of the reranker

Documents are embedded as raw text, queries with the model's instruction (``task``), as the
Qwen3-Embedding recipe asks. LangChain's async methods run these in its executor; one Embedder
(or Reranker) is safe to share between threads. ``QembedReranker`` is a
``BaseDocumentCompressor``, so it also serves a ``ContextualCompressionRetriever``.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from ..errors import InputTypeError
from ..reranker import Reranker
from ._common import (ADAPTER_ARGS, RERANKER_ARGS, EmbedderLifetime, ModelArg, RerankerArg, RerankerLifetime,
                      check_text, check_texts, missing_extra, open_embedder, open_reranker)

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from langchain_core.embeddings import Embeddings
    from pydantic import ConfigDict, Field, PrivateAttr
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langchain_core
    raise missing_extra("langchain", "langchain-core", "langchain") from exc

__all__ = ["QembedEmbeddings", "QembedReranker"]


class QembedEmbeddings(EmbedderLifetime, Embeddings):
    """A LangChain ``Embeddings`` that runs a Qwen3-Embedding GGUF model through qembed-gguf.

    Args:
        {ADAPTER_ARGS}
        **embedder_kwargs: :class:`~qembed_gguf.Embedder` options (``n_gpu_layers``,
            ``max_tokens`` …); only with a model path or name.

    Raises:
        InputError: ``dim`` is outside the model's Matryoshka range, ``task`` is not a string,
            or ``embedder_kwargs`` are given with an existing Embedder.
    """

    def __init__(self, model: ModelArg, *, dim: int | None = None, task: str | None = None,
                 **embedder_kwargs: Any) -> None:
        self._embedder, self._owns_embedder = open_embedder(model, dim=dim, task=task,
                                                            embedder_kwargs=embedder_kwargs)
        self.dim = None if dim is None else int(dim)
        self.task = task

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed documents (raw text, no instruction); one vector per text, in order."""
        return self._embedder.embed_documents(check_texts(texts), dim=self.dim).tolist()

    def embed_query(self, text: str) -> list[float]:
        """Embed one search query, formatted with the query instruction."""
        return self._embedder.embed_query(check_text(text), task=self.task, dim=self.dim)[0].tolist()

    def __repr__(self) -> str:
        return f"QembedEmbeddings({self._embedder!r}, dim={self.dim}, task={self.task!r})"


QembedEmbeddings.__doc__ = QembedEmbeddings.__doc__.replace("{ADAPTER_ARGS}", ADAPTER_ARGS)


class QembedReranker(RerankerLifetime, BaseDocumentCompressor):
    """A LangChain document compressor that reranks documents with a Qwen3-Reranker GGUF model.

    :meth:`compress_documents` scores every document's ``page_content`` against the query in one
    :meth:`Reranker.rerank <qembed_gguf.Reranker.rerank>` call and returns the ``top_n`` best, best
    first (equal scores: input order), each a copy of its document with the score, P("yes") in
    [0, 1], as ``metadata["relevance_score"]``; the documents passed in are left as they were.

    Args:
        {RERANKER_ARGS}
        **reranker_kwargs: :class:`~qembed_gguf.Reranker` options (``n_gpu_layers``,
            ``max_tokens`` …); only with a model path or name.

    Raises:
        InputError: ``top_n`` is not a positive integer or None, ``instruction`` is not text, or
            ``reranker_kwargs`` are given with an existing Reranker.
    """

    top_n: Optional[int] = Field(default=3, description="Documents to return (None: all, reordered).")
    instruction: Optional[str] = Field(default=None, description="What relevance means (None: the default).")

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    _reranker: Reranker = PrivateAttr()
    _owns_reranker: bool = PrivateAttr(default=False)

    def __init__(self, model: RerankerArg, *, top_n: int | None = 3, instruction: str | None = None,
                 **reranker_kwargs: Any) -> None:
        reranker, owned, top_n = open_reranker(model, top_n=top_n, instruction=instruction,
                                               reranker_kwargs=reranker_kwargs)
        self._adopt(reranker, owned, lambda: super(QembedReranker, self).__init__(top_n=top_n, instruction=instruction))

    def compress_documents(self, documents: Sequence[Document], query: str,
                           callbacks: Callbacks | None = None) -> Sequence[Document]:
        """The ``top_n`` documents most relevant to ``query``, best first, each a copy with
        ``metadata["relevance_score"]``."""
        if isinstance(documents, (str, Document)):
            raise InputTypeError(f"documents must be a sequence of Documents, got one {type(documents).__name__}")
        docs = list(documents)
        for i, d in enumerate(docs):
            if not isinstance(d, Document):
                raise InputTypeError(f"documents[{i}] is {type(d).__name__}, not a langchain Document")
        ranked = self._reranker.rerank(query, [d.page_content for d in docs], instruction=self.instruction,
                                       top_n=self.top_n)
        return [docs[i].model_copy(update={"metadata": {**docs[i].metadata, "relevance_score": score}})
                for i, score in ranked]

    def __repr__(self) -> str:
        return f"QembedReranker({self._reranker!r}, top_n={self.top_n}, instruction={self.instruction!r})"


QembedReranker.__doc__ = QembedReranker.__doc__.replace("{RERANKER_ARGS}", RERANKER_ARGS)
