"""The LangChain and LlamaIndex adapters: the same vectors as the library, working inside each
framework's own vector store, options checked, and shared Embedders left open."""

from __future__ import annotations

import asyncio
import importlib
import re
import sys

import numpy as np
import pytest

from qembed_gguf import Embedder
from qembed_gguf.errors import InputError

pytest.importorskip("langchain_core", reason="the LangChain adapter needs qembed-gguf[langchain]")
pytest.importorskip("llama_index.core", reason="the LlamaIndex adapter needs qembed-gguf[llama-index]")

from qembed_gguf.integrations.langchain import QembedEmbeddings  # noqa: E402
from qembed_gguf.integrations.llama_index import QembedEmbedding  # noqa: E402

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris est la capitale de la France.",
    "Berlin ist die Hauptstadt von Deutschland.",
    "我想在apple工作，今天天气很好。",
    "東京は日本の首都です。",
    "Москва — столица России.",
    "def square(x):\n    return x ** 2",
]
QUERIES = ["capital of France", "a function that squares a number", "天气"]
TASK = "Given a question, retrieve passages that answer it"


@pytest.fixture(scope="module")
def embedder():
    with Embedder("tiny") as e:
        yield e


def _assert_vectors(got, expected):
    got = np.asarray(got, dtype=np.float64)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


# -- LangChain --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [None, 64])
def test_langchain_vectors_equal_library(embedder, dim):
    lc = QembedEmbeddings(embedder, dim=dim, task=TASK)
    _assert_vectors(lc.embed_documents(DOCS), embedder.embed_documents(DOCS, dim=dim))
    for q in QUERIES:
        _assert_vectors(lc.embed_query(q), embedder.embed_query(q, task=TASK, dim=dim)[0])
    assert len(lc.embed_query(QUERIES[0])) == (dim or embedder.dim)
    assert lc.embed_documents([]) == []
    # LangChain's async defaults run the same sync code
    _assert_vectors(asyncio.run(lc.aembed_query(QUERIES[0])), embedder.embed_query(QUERIES[0], task=TASK, dim=dim)[0])
    _assert_vectors(asyncio.run(lc.aembed_documents(DOCS)), embedder.embed_documents(DOCS, dim=dim))


def test_langchain_default_task_is_the_models(embedder):
    lc = QembedEmbeddings(embedder)
    _assert_vectors(lc.embed_query(QUERIES[0]), embedder.embed_query(QUERIES[0])[0])


def test_langchain_in_memory_vector_store(embedder):
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embedding=QembedEmbeddings(embedder, dim=128))
    ids = [f"doc-{i}" for i in range(len(DOCS))]
    store.add_texts(DOCS, ids=ids)
    docs = embedder.embed_documents(DOCS, dim=128)
    for i, doc_id in enumerate(ids):
        _assert_vectors(store.store[doc_id]["vector"], docs[i])
        # a document's own vector finds that document first
        assert store.similarity_search_by_vector(docs[i].tolist(), k=1)[0].page_content == DOCS[i]

    # a text query is embedded with the instruction; the store ranks by cosine to it
    query = embedder.embed_query(QUERIES[0], dim=128)[0]
    expected = docs @ query
    hits = store.similarity_search_with_score(QUERIES[0], k=len(DOCS))
    assert [d.page_content for d, _ in hits] == [DOCS[i] for i in np.argsort(-expected, kind="stable")]
    np.testing.assert_allclose([s for _, s in hits], np.sort(expected)[::-1], atol=1e-5)


# -- LlamaIndex -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dim", [None, 64])
def test_llama_index_vectors_equal_library(embedder, dim):
    li = QembedEmbedding(embedder, dim=dim, task=TASK, embed_batch_size=3)
    # LlamaIndex hands the texts over 3 at a time: the same calls into the library give the same
    # bits (packing texts differently into decode calls changes the last bits, see test_embedder)
    by_three = np.concatenate([embedder.embed_documents(DOCS[i:i + 3], dim=dim) for i in range(0, len(DOCS), 3)])
    _assert_vectors(li.get_text_embedding_batch(DOCS), by_three)
    _assert_vectors(li.get_text_embedding(DOCS[1]), embedder.embed_documents([DOCS[1]], dim=dim)[0])
    for q in QUERIES:
        _assert_vectors(li.get_query_embedding(q), embedder.embed_query(q, task=TASK, dim=dim)[0])

    async def run_async():
        return (await li.aget_query_embedding(QUERIES[0]), await li.aget_text_embedding(DOCS[0]),
                await li.aget_text_embedding_batch(DOCS))

    query, one, batch = asyncio.run(run_async())
    _assert_vectors(query, embedder.embed_query(QUERIES[0], task=TASK, dim=dim)[0])
    _assert_vectors(one, embedder.embed_documents([DOCS[0]], dim=dim)[0])
    _assert_vectors(batch, by_three)


def test_llama_index_vector_store_index(embedder):
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.schema import MetadataMode

    embed_model = QembedEmbedding(embedder, dim=128)
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCS], embed_model=embed_model)
    nodes = list(index.docstore.docs.values())
    assert sorted(n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes) == sorted(DOCS)
    docs = embedder.embed_documents(DOCS, dim=128)  # one call, as the index made it (7 < embed_batch_size)
    for node in nodes:
        text = node.get_content(metadata_mode=MetadataMode.EMBED)
        _assert_vectors(index.vector_store.get(node.node_id), docs[DOCS.index(text)])

    for q in QUERIES:
        expected = docs @ embedder.embed_query(q, dim=128)[0]
        top = np.argsort(-expected, kind="stable")[:3]
        hits = index.as_retriever(similarity_top_k=3).retrieve(q)
        assert [h.node.get_content() for h in hits] == [DOCS[i] for i in top]
        np.testing.assert_allclose([h.score for h in hits], expected[top], atol=1e-5)


def test_llama_index_serialises_its_settings(embedder):
    li = QembedEmbedding(embedder, dim=64, task=TASK)
    assert QembedEmbedding.class_name() == "QembedEmbedding"
    data = li.to_dict()
    assert data["dim"] == 64 and data["task"] == TASK and data["model_name"] == embedder.path.name


# -- both: ownership and option checks --------------------------------------------------------------
ADAPTERS = [
    pytest.param(QembedEmbeddings, lambda a: a.embed_query("x"), id="langchain"),
    pytest.param(QembedEmbedding, lambda a: a.get_query_embedding("x"), id="llama_index"),
]


@pytest.mark.parametrize("cls, use", ADAPTERS)
def test_shared_embedder_is_not_closed(embedder, cls, use):
    with cls(embedder) as adapter:
        use(adapter)
    adapter.close()  # idempotent
    assert embedder.embed_documents(["still open"]).shape == (1, embedder.dim)


@pytest.mark.parametrize("cls, use", ADAPTERS)
def test_owned_embedder_is_closed(cls, use):
    adapter = cls("tiny", max_tokens=64)  # Embedder options go to the Embedder it opens
    assert adapter.embedder.max_tokens == 64
    with adapter:
        assert len(use(adapter)) == adapter.embedder.dim
    with pytest.raises(InputError, match="closed"):
        use(adapter)
    adapter.close()  # idempotent


@pytest.mark.parametrize("cls, use", ADAPTERS)
def test_bad_options(embedder, cls, use):
    with pytest.raises(InputError, match="existing Embedder"):
        cls(embedder, max_tokens=64)
    for bad in (8, embedder.dim + 1, True, 64.0):
        with pytest.raises(InputError, match=r"dim must be an integer in \[32, 256\]"):
            cls(embedder, dim=bad)
    with pytest.raises(InputError, match="task"):
        cls(embedder, task=["not", "a", "string"])
    with pytest.raises(TypeError, match="Embedder"):  # a typo in an Embedder option is not swallowed
        cls("tiny", n_gpu_layer=1)


def test_wrong_text_types(embedder):
    lc = QembedEmbeddings(embedder)
    with pytest.raises(TypeError, match="single str"):
        lc.embed_documents("one string")
    with pytest.raises(TypeError, match="text must be a str"):
        lc.embed_query(["a", "list"])
    with pytest.raises(TypeError):
        lc.embed_documents(["ok", 3])


@pytest.mark.parametrize("module, hidden, extra", [
    ("qembed_gguf.integrations.langchain", "langchain_core", "qembed-gguf[langchain]"),
    ("qembed_gguf.integrations.llama_index", "llama_index", "qembed-gguf[llama-index]"),
])
def test_missing_framework_names_the_extra(monkeypatch, module, hidden, extra):
    for name in [m for m in sys.modules if m == hidden or m.startswith(hidden + ".")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import name` fail
    monkeypatch.setitem(sys.modules, hidden, None)
    monkeypatch.delitem(sys.modules, module)
    with pytest.raises(ImportError, match=re.escape(f'pip install "{extra}"')):
        importlib.import_module(module)
