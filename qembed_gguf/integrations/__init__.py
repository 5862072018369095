"""Adapters that plug an :class:`~qembed_gguf.Embedder` into retrieval frameworks.

Each adapter lives in its own module so that importing one framework never imports another:

- :mod:`qembed_gguf.integrations.langchain` — :class:`QembedEmbeddings`, a LangChain
  ``Embeddings`` (``pip install "qembed-gguf[langchain]"``);
- :mod:`qembed_gguf.integrations.llama_index` — :class:`QembedEmbedding`, a LlamaIndex
  ``BaseEmbedding`` (``pip install "qembed-gguf[llama-index]"``);
- :mod:`qembed_gguf.integrations.ray` — :func:`embed_dataset`, a corpus embedded on a Ray cluster
  by a pool of workers with one Embedder each, written as Parquet shards
  (``pip install "qembed-gguf[ray]"``).

The two framework adapters embed documents as raw text and queries with the model's instruction
(or ``task``), at an optional Matryoshka ``dim``, and return exactly what the Embedder returns, as
lists of floats.
Given a model path or name they open (and on ``close()`` free) their own Embedder; given an
existing Embedder they share it and leave it open.
"""
