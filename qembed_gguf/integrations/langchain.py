"""LangChain ``Embeddings`` backed by a local Qwen3-Embedding GGUF model.

::

    from qembed_gguf.integrations.langchain import QembedEmbeddings
    from langchain_core.vectorstores import InMemoryVectorStore

    with QembedEmbeddings("qwen3-embedding-0.6b", dim=512) as embeddings:
        store = InMemoryVectorStore(embedding=embeddings)
        store.add_texts(["Paris is the capital of France.", "Berlin ist die Hauptstadt Deutschlands."])
        store.similarity_search("capital of Germany", k=1)

Documents are embedded as raw text, queries with the model's instruction (``task``), as the
Qwen3-Embedding recipe asks. LangChain's async methods run these in its executor; one Embedder
is safe to share between threads.
"""

from __future__ import annotations

from typing import Any

from ._common import ADAPTER_ARGS, EmbedderLifetime, ModelArg, check_text, check_texts, missing_extra, open_embedder

try:
    from langchain_core.embeddings import Embeddings
except ImportError as exc:  # pragma: no cover - exercised by a test that hides langchain_core
    raise missing_extra("langchain", "langchain-core", "langchain") from exc

__all__ = ["QembedEmbeddings"]


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
