"""The example scripts: run as a user runs them (subprocesses, outside the repository root), and
their building blocks in-process against the library."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT
from qembed_gguf import Embedder

EXAMPLES = ROOT / "examples"
DATA = EXAMPLES / "data"

import faiss  # noqa: E402,F401 - the semantic-search example needs faiss-cpu (the test extra has it)


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # QEMBED_CACHE (set by conftest) makes the subprocess reuse the session's tiny conversion
    env = {**os.environ, "QEMBED_CACHE": os.environ["QEMBED_CACHE"]}
    return subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def embedder():
    with Embedder("tiny") as e:
        yield e


@pytest.fixture(scope="module")
def semantic_search():
    return load_example("semantic_search")


@pytest.fixture(scope="module")
def near_duplicates():
    return load_example("near_duplicates")


@pytest.fixture(scope="module")
def cross_lingual():
    return load_example("cross_lingual")


def assert_ranked(scores: list[float]) -> None:
    assert all(-1 - 1e-5 <= s <= 1 + 1e-5 for s in scores), scores
    assert scores == sorted(scores, reverse=True), scores


# -- semantic_search --------------------------------------------------------------------------------
def test_semantic_search_cli(tmp_path, semantic_search):
    queries = ["How do volcanoes erupt?", "Wie speichert man Strom?", "绿茶"]
    args = ["--json", "-k", "4"] + [a for q in queries for a in ("-q", q)]
    proc = run_example("semantic_search", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["query"] for r in results] == queries
    for r in results:
        assert len(r["hits"]) == 4
        assert_ranked([h["score"] for h in r["hits"]])
        for h in r["hits"]:
            path = Path(h["file"])
            assert path.is_file() and path.is_relative_to(DATA / "docs")
            # the hit is that paragraph of that file
            assert semantic_search.split_paragraphs(path.read_text(encoding="utf-8"))[h["paragraph"] - 1] == h["text"]


def test_semantic_search_index_dir_is_saved_and_reused(tmp_path):
    index_dir = tmp_path / "index"
    args = ["-v", "-k", "2", "-q", "baking bread", "--index-dir", str(index_dir)]
    first = run_example("semantic_search", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "saved the index of" in first.stderr and (index_dir / "index.faiss").is_file()
    assert first.stdout.startswith("query: baking bread\n") and first.stdout.count("\n   ") == 2
    second = run_example("semantic_search", *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "loaded the index of" in second.stderr and "embedded" not in second.stderr
    assert second.stdout == first.stdout


def test_semantic_search_index_matches_library(tmp_path, embedder, semantic_search):
    docs = tmp_path / "docs"
    shutil.copytree(DATA / "docs", docs)
    passages = semantic_search.load_passages(docs)
    assert len(passages) == sum(len(semantic_search.split_paragraphs(p.read_text(encoding="utf-8")))
                                for p in docs.glob("*.txt")) >= 12
    index, got = semantic_search.open_index(embedder, docs, dim=64, index_dir=tmp_path / "index")
    assert got == passages
    vectors = embedder.embed_documents([p.text for p in passages], dim=64)
    np.testing.assert_allclose(index.reconstruct_n(0, index.ntotal), vectors, atol=1e-6)
    # a paragraph's own vector finds that paragraph first
    _, ids = index.search(vectors, 1)
    assert ids[:, 0].tolist() == list(range(len(passages)))

    # search(): the scores are the library's cosine between query and paragraph vectors
    queries = ["volcanic ash", "Tee kochen"]
    hits = semantic_search.search(embedder, index, passages, queries, k=3, dim=64, task="find passages")
    expected = embedder.embed_query(queries, task="find passages", dim=64) @ vectors.T
    for row, query_hits in zip(expected, hits):
        top = np.argsort(-row)[:3]
        assert [h.passage for h in query_hits] == [passages[i] for i in top]
        np.testing.assert_allclose([h.score for h in query_hits], row[top], atol=1e-5)

    # the saved index is reused while nothing changed, rebuilt when the files or the dim change
    index_dir = tmp_path / "index"
    assert semantic_search.load_index(index_dir, model=embedder.path.name, dim=64,
                                      corpus=semantic_search.corpus_fingerprint(docs)) is not None
    assert semantic_search.load_index(index_dir, model=embedder.path.name, dim=128,
                                      corpus=semantic_search.corpus_fingerprint(docs)) is None
    (docs / "tea.txt").write_text("A new paragraph.\n\nAnd another.\n", encoding="utf-8")
    assert semantic_search.load_index(index_dir, model=embedder.path.name, dim=64,
                                      corpus=semantic_search.corpus_fingerprint(docs)) is None
    _, rebuilt = semantic_search.open_index(embedder, docs, dim=64, index_dir=index_dir)
    assert [p.text for p in rebuilt if p.file == "tea.txt"] == ["A new paragraph.", "And another."]


def test_split_paragraphs(semantic_search):
    text = "First line\nsame paragraph.\n\n  \n\nSecond.\r\n\r\nThird\n"
    assert semantic_search.split_paragraphs(text) == ["First line same paragraph.", "Second.", "Third"]
    assert semantic_search.split_paragraphs("\n\n") == []


def test_semantic_search_errors(tmp_path):
    proc = run_example("semantic_search", str(tmp_path), "-q", "x", cwd=tmp_path)
    assert proc.returncode == 1 and "no .txt files" in proc.stderr
    proc = run_example("semantic_search", "-q", "x", "--dim", "7", cwd=tmp_path)
    assert proc.returncode == 1 and "dim must be an integer in [32, 256]" in proc.stderr
    assert "Traceback" not in proc.stderr


# -- near_duplicates --------------------------------------------------------------------------------
def exact_duplicate_groups(path: Path) -> list[list[int]]:
    by_text: dict[str, list[int]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            by_text.setdefault(line, []).append(n)
    return sorted((lines for lines in by_text.values() if len(lines) > 1), key=lambda lines: lines[0])


def test_near_duplicates_cli_finds_the_exact_duplicates(tmp_path):
    exact = exact_duplicate_groups(DATA / "near_dups.txt")
    assert len(exact) >= 5
    proc = run_example("near_duplicates", "--json", cwd=tmp_path)  # default: dim mrl_min_dim, threshold 0.95
    assert proc.returncode == 0, proc.stderr
    groups = [json.loads(line) for line in proc.stdout.splitlines()]
    found = [set(g["lines"]) for g in groups]
    for lines in exact:
        assert any(set(lines) <= g for g in found), (lines, found)
    for g in groups:
        assert len(g["lines"]) >= 2 and g["lines"] == sorted(g["lines"])
        assert all(s >= -1 - 1e-5 for s in g["similarity"]) and g["similarity"][0] == pytest.approx(1.0, abs=1e-5)
    assert [g["lines"][0] for g in groups] == sorted(g["lines"][0] for g in groups)
    assert len(set().union(*found)) == sum(len(g) for g in found)  # disjoint

    # at threshold 1, only identical texts are linked: exactly the exact-duplicate groups
    proc = run_example("near_duplicates", "--threshold", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("group ") == len(exact)
    for lines in exact:
        assert f"group {exact.index(lines) + 1}: {len(lines)} lines" in proc.stdout
    assert proc.stdout.rstrip().endswith(f"{len(exact)} groups, {sum(len(g) - 1 for g in exact)} redundant lines")


def test_near_duplicates_groups_are_the_similarity_components(tmp_path, embedder, near_duplicates):
    lines = near_duplicates.read_lines(DATA / "near_dups.txt")
    threshold = 0.9
    groups = near_duplicates.find_near_duplicates(embedder, lines, dim=64, threshold=threshold, block=4)
    # reference: components of the full similarity matrix over all lines, by breadth-first search
    # (the unique texts embedded in one call, as the example does: packing moves the last bits)
    unique = list(dict.fromkeys(line.text for line in lines))
    unique_vectors = embedder.embed_documents(unique, dim=64)
    vectors = unique_vectors[[unique.index(line.text) for line in lines]]
    sims = vectors @ vectors.T
    assert not np.any(np.abs(sims - threshold) < 1e-5)  # no pair so close that rounding decides
    linked = sims >= threshold
    seen: set[int] = set()
    expected = []
    for start in range(len(lines)):
        if start in seen:
            continue
        component, frontier = {start}, [start]
        while frontier:
            i = frontier.pop()
            for j in np.nonzero(linked[i])[0].tolist():
                if j not in component:
                    component.add(j)
                    frontier.append(j)
        seen |= component
        if len(component) > 1:
            expected.append(sorted(lines[i].number for i in component))
    assert [[line.number for line in g.lines] for g in groups] == expected


def test_union_find_and_blockwise_pairs(near_duplicates):
    rng = random.Random(0)
    n = 60
    pairs = [(rng.randrange(n), rng.randrange(n)) for _ in range(40)]
    components = near_duplicates.connected_components(n, iter(pairs))
    assert sorted(i for c in components for i in c) == list(range(n))
    label = {i: k for k, c in enumerate(components) for i in c}
    assert all(label[i] == label[j] for i, j in pairs)
    assert len(components) == n - _rank_of_graph(n, pairs)

    vectors = np.random.default_rng(0).standard_normal((23, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = vectors @ vectors.T
    expected = {(i, j) for i in range(23) for j in range(i + 1, 23) if sims[i, j] >= 0.3}
    for block in (1, 5, 23, 100):
        assert set(near_duplicates.similar_pairs(vectors, 0.3, block=block)) == expected


def _rank_of_graph(n: int, pairs: list[tuple[int, int]]) -> int:
    """Edges of a spanning forest (= n - components), counted independently of the module."""
    labels = list(range(n))
    merged = 0
    for i, j in pairs:
        a, b = labels[i], labels[j]
        if a != b:
            labels = [a if x == b else x for x in labels]
            merged += 1
    return merged


# -- cross_lingual ----------------------------------------------------------------------------------
def test_cross_lingual_cli_ranks_for_every_query(tmp_path, cross_lingual):
    docs = cross_lingual.load_docs(DATA / "multilingual.jsonl")
    assert len({d.lang for d in docs}) >= 5 and "en" not in {d.lang for d in docs}
    proc = run_example("cross_lingual", "-k", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.strip().split("\n\n")
    assert len(blocks) == len(cross_lingual.DEFAULT_QUERIES) + 1
    for (query, topic), block in zip(cross_lingual.DEFAULT_QUERIES, blocks):
        header, *rows = block.splitlines()
        assert header == f"query: {query}  [topic: {topic}]"
        assert len(rows) == 4
        assert_ranked([float(row.split()[1]) for row in rows])
    assert blocks[-1].startswith("on-topic documents in the top 4: ")

    proc = run_example("cross_lingual", "--json", "-k", "15", "-q", "dumplings", "-q", "interest rates",
                       "--task", "Find recipes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["query"] for r in results] == ["dumplings", "interest rates"]
    for r in results:
        assert sorted(d["id"] for d in r["ranking"]) == sorted(d.id for d in docs)  # every document, once
        assert_ranked([d["score"] for d in r["ranking"]])


def test_cross_lingual_rank_matches_library(embedder, cross_lingual):
    docs = cross_lingual.load_docs(DATA / "multilingual.jsonl")
    queries = [cross_lingual.Query(q) for q in ("dumplings", "black holes")]
    rankings = cross_lingual.rank(embedder, docs, queries, task="Find recipes", dim=32)
    expected = embedder.embed_query([q.text for q in queries], task="Find recipes", dim=32) @ \
        embedder.embed_documents([d.text for d in docs], dim=32).T
    for row, ranking in zip(expected, rankings):
        order = np.argsort(-row, kind="stable")
        assert [d for d, _ in ranking] == [docs[i] for i in order]
        np.testing.assert_allclose([s for _, s in ranking], row[order], atol=1e-5)


def test_cross_lingual_bad_documents(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "txt": "typo"}\n', encoding="utf-8")
    proc = run_example("cross_lingual", "--docs", str(bad), cwd=tmp_path)
    assert proc.returncode == 1 and f"{bad}:2: expected an object" in proc.stderr


# -- openai_client.py: the official client against a server the example starts ---------------------
def test_openai_client_example_against_a_live_server(tmp_path, embedder):
    proc = run_example("openai_client", "--serve", "tiny", "--api-key", "sk-test", "--dim", "64", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "using local-embedding" in out and "float == base64: True" in out
    assert f"documents (4, {embedder.dim}), queries (2, {embedder.dim})" in out
    assert "dimensions=64: (4, 64)" in out
    ex = load_example("openai_client")
    # the similarity table is the library's: queries (with the instruction) x documents
    want = embedder.embed_query(ex.QUERIES) @ embedder.embed_documents(ex.DOCUMENTS).T
    rows = [line for line in out.splitlines() if line.startswith("  q")]
    got = np.array([[float(v) for v in line.split()[1:1 + len(ex.DOCUMENTS)]] for line in rows])
    np.testing.assert_allclose(got, want, atol=2e-3)  # printed with 3 decimals


def test_openai_client_example_reports_an_unreachable_server(tmp_path):
    proc = run_example("openai_client", "--base-url", "http://127.0.0.1:1/v1", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.startswith("error: APIConnectionError")
