"""The LangChain and LlamaIndex rerankers against the library itself: the documents (nodes) and
scores of ``Reranker.rerank`` on the same texts, the caller's objects left as they were, options
checked, and shared Rerankers left open.

The reranker is a random-weight Qwen3-Reranker with the real vocabulary (conftest's
``reranker_ckpts["tied"]``) as a q8_0 GGUF: its scores mean nothing, but they differ per text, so
an order or a score from the wrong document shows.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qembed_gguf import Embedder, Reranker
from qembed_gguf.errors import InputError, InputTypeError

CUSTOM = "Given a question about cooking, find recipes that answer it"
TEXTS = [
    "The capital of China is Beijing.",
    "Mix flour, water, salt and yeast; knead, let it rise for an hour, then bake at 230 °C.",
    "",
    "北京是中华人民共和国的首都。",
    "Gravity is a force by which a planet draws objects toward its center.",
    "東京は日本の首都です。",
    "def square(x):\n    return x ** 2",
]
QUERY = "What is the capital of China?"
# (top_n, instruction): 50 is more than there are documents, None all of them
CASES = [(1, None), (3, CUSTOM), (50, None), (None, None)]


@pytest.fixture(scope="session")
def reranker_q8_gguf(reranker_gguf) -> Path:
    """The "tied" reranker checkpoint as a q8_0 GGUF (conftest's reranker_gguf: our converter)."""
    return reranker_gguf("tied", "q8_0")


@pytest.fixture(scope="module")
def reranker(reranker_q8_gguf):
    with Reranker(reranker_q8_gguf) as r:
        yield r


@pytest.fixture(scope="module")
def lc():
    """The LangChain side: (QembedReranker, Document)."""
    pytest.importorskip("langchain_core", reason="the LangChain adapter needs qembed-gguf[langchain]")
    from langchain_core.documents import Document

    from qembed_gguf.integrations.langchain import QembedReranker

    return QembedReranker, Document


@pytest.fixture(scope="module")
def li():
    """The LlamaIndex side: the module qembed_gguf.integrations.llama_index."""
    pytest.importorskip("llama_index.core", reason="the LlamaIndex adapter needs qembed-gguf[llama-index]")
    from qembed_gguf.integrations import llama_index

    return llama_index


def test_the_scores_tell_the_documents_apart(reranker):
    scores = reranker.score(QUERY, TEXTS)
    assert len(set(scores.round(6).tolist())) == len(TEXTS)  # else an order test could pass by a tie


# -- LangChain -------------------------------------------------------------------------------------------
def _documents(Document):
    return [Document(page_content=t, metadata={"n": i, "tags": ["a", "b"]}, id=f"doc-{i}")
            for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("top_n, instruction", CASES)
def test_langchain_compressor_equals_library(reranker, lc, top_n, instruction):
    QembedReranker, Document = lc
    docs = _documents(Document)
    compressor = QembedReranker(reranker, top_n=top_n, instruction=instruction)
    expected = reranker.rerank(QUERY, TEXTS, instruction=instruction, top_n=top_n)
    assert len(expected) == min(top_n or len(TEXTS), len(TEXTS))
    calls = [lambda: compressor.compress_documents(docs, QUERY)]
    if top_n == 3:  # the async default (LangChain's executor) and a tuple of documents
        calls += [lambda: asyncio.run(compressor.acompress_documents(docs, QUERY)),
                  lambda: compressor.compress_documents(tuple(docs), QUERY)]
    for call in calls:
        got = call()
        assert [(d.id, d.page_content) for d in got] == [(docs[i].id, TEXTS[i]) for i, _ in expected]
        assert [d.metadata["relevance_score"] for d in got] == [s for _, s in expected]
        assert all(type(d.metadata["relevance_score"]) is float for d in got)


def test_langchain_documents_are_copied_not_mutated(reranker, lc):
    QembedReranker, Document = lc
    docs = _documents(Document)
    docs[3] = docs[1]  # the same Document twice: two copies, each with its own score
    before = [d.model_dump() for d in docs]
    got = QembedReranker(reranker, top_n=None).compress_documents(docs, QUERY)
    assert [d.model_dump() for d in docs] == before  # no relevance_score slipped into the caller's metadata
    assert len(got) == len(docs) and len({id(d) for d in got}) == len(docs)
    for d in got:
        original = next(o for o in docs if o.id == d.id)
        assert d is not original and d.metadata is not original.metadata
        assert {k: v for k, v in d.metadata.items() if k != "relevance_score"} == original.metadata
        assert d.page_content == original.page_content and d.type == original.type
    twice = [d for d in got if d.id == "doc-1"]
    assert len(twice) == 2 and twice[0].metadata is not twice[1].metadata


def test_langchain_empty_and_wrong_inputs(reranker, lc):
    QembedReranker, Document = lc
    compressor = QembedReranker(reranker)
    assert compressor.compress_documents([], QUERY) == []
    assert asyncio.run(compressor.acompress_documents([], QUERY)) == []
    with pytest.raises(InputTypeError, match="one Document"):
        compressor.compress_documents(Document(page_content="x"), QUERY)
    with pytest.raises(InputTypeError, match=r"documents\[1\] is str"):
        compressor.compress_documents([Document(page_content="x"), "y"], QUERY)
    with pytest.raises(InputTypeError, match="query"):
        compressor.compress_documents([Document(page_content="x")], ["not", "a", "query"])


# -- LlamaIndex ------------------------------------------------------------------------------------------
def _nodes():
    from llama_index.core.schema import NodeWithScore, TextNode

    # metadata on some nodes: LlamaIndex's rerankers read the content as embedded (metadata included)
    return [NodeWithScore(node=TextNode(text=t, metadata={"source": f"s{i}.txt"} if i % 2 else {}), score=i / 10)
            for i, t in enumerate(TEXTS)]


@pytest.mark.parametrize("top_n, instruction", CASES)
def test_llama_index_postprocessor_equals_library(reranker, li, top_n, instruction):
    from llama_index.core.schema import MetadataMode, QueryBundle

    nodes = _nodes()
    contents = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    assert contents[1] != TEXTS[1]  # the metadata is part of what is scored
    post = li.QembedRerank(reranker, top_n=top_n, instruction=instruction)
    expected = reranker.rerank(QUERY, contents, instruction=instruction, top_n=top_n)

    async def run_async():
        return await post.apostprocess_nodes(nodes, query_str=QUERY)

    calls = [lambda: post.postprocess_nodes(nodes, query_str=QUERY)]
    if top_n == 3:  # a QueryBundle, and the async default (a worker thread)
        calls += [lambda: post.postprocess_nodes(nodes, QueryBundle(QUERY)), lambda: asyncio.run(run_async())]
    for call in calls:
        got = call()
        assert [n.node for n in got] == [nodes[i].node for i, _ in expected]
        assert all(g.node is nodes[i].node for g, (i, _) in zip(got, expected))  # the same nodes, not copies
        assert [n.score for n in got] == [s for _, s in expected]
    assert [n.score for n in nodes] == [i / 10 for i in range(len(TEXTS))]  # the caller's retrieval scores kept


def test_llama_index_empty_missing_query_and_events(reranker, li):
    from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler

    handler = LlamaDebugHandler()
    post = li.QembedRerank(reranker, top_n=2, callback_manager=CallbackManager([handler]))
    assert post.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="needs the query"):  # as LlamaIndex's own rerankers: a ValueError
        post.postprocess_nodes(_nodes())
    got = post.postprocess_nodes(_nodes(), query_str=QUERY)
    pairs = handler.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 2  # the empty call and this one
    assert [n.score for n in pairs[-1][-1].payload["nodes"]] == [n.score for n in got]


def test_llama_index_serialises_its_settings(reranker, reranker_q8_gguf, li):
    post = li.QembedRerank(reranker, top_n=4, instruction=CUSTOM)
    assert li.QembedRerank.class_name() == "QembedRerank"
    data = post.to_dict()
    assert data["top_n"] == 4 and data["instruction"] == CUSTOM and data["model"] == reranker_q8_gguf.name


# -- both: lifetime and option checks --------------------------------------------------------------------
def _use_langchain(adapter):
    from langchain_core.documents import Document

    return [d.metadata["relevance_score"] for d in adapter.compress_documents([Document(page_content="x")], "q")]


def _use_llama_index(adapter):
    from llama_index.core.schema import NodeWithScore, TextNode

    return [n.score for n in adapter.postprocess_nodes([NodeWithScore(node=TextNode(text="x"))], query_str="q")]


@pytest.fixture(params=["langchain", "llama_index"])
def adapter_cls(request, lc, li):
    """(the reranking adapter class, a function that reranks one document with it)"""
    return (lc[0], _use_langchain) if request.param == "langchain" else (li.QembedRerank, _use_llama_index)


def test_shared_reranker_is_not_closed(reranker, adapter_cls):
    cls, use = adapter_cls
    with cls(reranker) as adapter:
        assert adapter.reranker is reranker
        assert use(adapter) == [s for _, s in reranker.rerank("q", ["x"])]
    adapter.close()  # idempotent
    assert not reranker.closed and reranker.score("q", ["still open"]).shape == (1,)


def test_owned_reranker_is_closed(reranker_q8_gguf, adapter_cls):
    cls, use = adapter_cls
    adapter = cls(reranker_q8_gguf, max_tokens=256, n_threads=1)  # Reranker options go to the Reranker it opens
    assert adapter.reranker.max_tokens == 256 and not adapter.reranker.closed
    with adapter:
        assert len(use(adapter)) == 1
    assert adapter.reranker.closed
    with pytest.raises(InputError, match="closed"):
        use(adapter)
    adapter.close()  # idempotent
    other = cls(str(reranker_q8_gguf), n_threads=1)
    other.close()  # close() alone, no context manager
    assert other.reranker.closed


def test_bad_options(reranker, adapter_cls, tmp_path):
    cls, _ = adapter_cls
    with pytest.raises(InputError, match="existing Reranker"):
        cls(reranker, max_tokens=64)
    missing = tmp_path / "missing.gguf"  # the options are checked before a model is looked for
    for bad in (0, -1, True, 2.0, "3"):
        with pytest.raises(InputError, match="top_n must be a positive integer"):
            cls(missing, top_n=bad)
    with pytest.raises(InputTypeError, match="instruction must be a string"):
        cls(missing, instruction=["not", "text"])
    with pytest.raises(TypeError, match="n_gpu_layer"):  # a typo in a Reranker option is not swallowed
        cls(reranker.path, n_gpu_layer=1)
    with Embedder("tiny") as embedder, pytest.raises(InputTypeError, match="open Reranker, got an open Embedder"):
        cls(embedder)


def test_embedding_adapters_refuse_a_reranker(reranker, lc, li):
    from qembed_gguf.integrations.langchain import QembedEmbeddings

    for cls in (QembedEmbeddings, li.QembedEmbedding):
        with pytest.raises(InputTypeError, match="open Embedder, got an open Reranker"):
            cls(reranker)


def test_llama_index_query_engine(reranker, li):
    """In a query engine: the retriever's nodes reranked, the response's sources the reranker's best."""
    from llama_index.core import Document, VectorStoreIndex
    from llama_index.core.llms import MockLLM
    from llama_index.core.schema import MetadataMode

    with Embedder("tiny") as embedder:
        index = VectorStoreIndex.from_documents([Document(text=t) for t in TEXTS if t],
                                                embed_model=li.QembedEmbedding(embedder))
        retrieved = index.as_retriever(similarity_top_k=5).retrieve(QUERY)
        engine = index.as_query_engine(llm=MockLLM(), similarity_top_k=5,
                                       node_postprocessors=[li.QembedRerank(reranker, top_n=2)])
        sources = engine.query(QUERY).source_nodes
    contents = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in retrieved]
    expected = reranker.rerank(QUERY, contents, top_n=2)
    assert [n.node.node_id for n in sources] == [retrieved[i].node.node_id for i, _ in expected]
    assert [n.score for n in sources] == [s for _, s in expected]
