"""The example scripts: run as a user runs them (subprocesses, outside the repository root), and
their building blocks in-process against the library."""

from __future__ import annotations

import dataclasses
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
    # QEMBED_CACHE (set by conftest) makes the subprocess reuse the session's conversions of the bundled models
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
    with Embedder("mini") as e:
        yield e


@pytest.fixture(scope="session")
def reranker_q8_gguf(reranker_gguf) -> Path:
    return reranker_gguf("tied", "q8_0")


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
def file_text(path: Path) -> str:
    """The file's text as the example's offsets index it: its bytes as UTF-8, line endings as they are."""
    return path.read_bytes().decode("utf-8")


def brute_force_hits(embedder, texts: dict[str, str], queries: list[str], *, chunk_tokens: int, overlap: int,
                     dim: int, task: str | None, k: int, per_file: bool) -> list[list[tuple[str, int, int, float]]]:
    """(file, start, end, score) of the best chunks (per_file: each file's best chunk, best files first),
    from Embedder.embed_chunks vectors and a numpy matrix product over all of them."""
    names = list(texts)
    chunks = embedder.embed_chunks([texts[n] for n in names], chunk_tokens=chunk_tokens, overlap=overlap, dim=dim)
    scores = embedder.embed_query(queries, task=task, dim=dim) @ np.stack([c.vector for c in chunks]).T
    out = []
    for row in scores:
        if per_file:
            best = {}
            for j, c in enumerate(chunks):
                if names[c.index] not in best or row[j] > row[best[names[c.index]]]:
                    best[names[c.index]] = j
            picked = sorted(best.values(), key=lambda j: -row[j])[:k]
        else:
            picked = np.argsort(-row)[:k].tolist()
        out.append([(names[chunks[j].index], chunks[j].start, chunks[j].end, float(row[j])) for j in picked])
    return out


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
        assert len({h["file"] for h in r["hits"]}) == 4  # by default a file appears once, as its best chunk
        for h in r["hits"]:
            path = Path(h["file"])
            assert path.is_file() and path.is_relative_to(DATA / "docs")
            # the hit is that span of that file
            assert file_text(path)[h["start"]:h["end"]] == h["text"] and h["text"].strip()
            assert 2 <= h["n_tokens"] <= semantic_search.DEFAULT_CHUNK_TOKENS

    # --every-chunk with small chunks: several chunks of one file may be listed, each its file's span
    proc = run_example("semantic_search", "--json", "-k", "8", "--every-chunk", "--chunk-tokens", "40",
                       "--overlap", "8", "-q", "volcanic ash", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [r] = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(r["hits"]) == 8 and len({h["file"] for h in r["hits"]}) < 8
    assert_ranked([h["score"] for h in r["hits"]])
    assert len({(h["file"], h["chunk"]) for h in r["hits"]}) == 8
    for h in r["hits"]:
        assert file_text(Path(h["file"]))[h["start"]:h["end"]] == h["text"] and 2 <= h["n_tokens"] <= 40


def test_semantic_search_index_dir_is_saved_and_reused(tmp_path):
    index_dir = tmp_path / "index"
    args = ["-v", "-k", "2", "-q", "baking bread", "--index-dir", str(index_dir)]
    first = run_example("semantic_search", *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "saved the index of" in first.stderr and (index_dir / "index.faiss").is_file()
    assert first.stdout.startswith("query: baking bread\n") and first.stdout.count("\n   ") == 2
    # each line: rank, score, file, [start:end] span, snippet of that span
    for line in first.stdout.splitlines()[1:3]:
        _, _, name, span, *words = line.split()
        start, end = map(int, span.strip("[]").split(":"))
        flat = " ".join(file_text(DATA / "docs" / name)[start:end].split())
        shown = " ".join(words)
        assert flat == shown or (shown.endswith("...") and flat.startswith(shown[:-3].rstrip())), (flat, shown)
    second = run_example("semantic_search", *args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert "loaded the index of" in second.stderr and "embedded" not in second.stderr
    assert second.stdout == first.stdout
    # other chunk settings: the saved index is stale, rebuilt and saved again
    third = run_example("semantic_search", *args, "--overlap", "0", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert "stale (overlap changed)" in third.stderr and "embedded" in third.stderr
    assert json.loads((index_dir / "meta.json").read_text(encoding="utf-8"))["overlap"] == 0


def test_semantic_search_index_matches_library(tmp_path, embedder, semantic_search):
    docs = tmp_path / "docs"
    shutil.copytree(DATA / "docs", docs)
    texts = {p.name: file_text(p) for p in sorted(docs.glob("*.txt"))}
    settings = {"chunk_tokens": 48, "overlap": 8, "dim": 64}
    index, passages = semantic_search.open_index(embedder, docs, **settings, index_dir=tmp_path / "index")
    # the chunks are the library's chunks of each file, in order, covering it; a chunk's text is its span
    chunks = embedder.embed_chunks(list(texts.values()), chunk_tokens=48, overlap=8, dim=64)
    names = list(texts)
    assert [(p.file, p.chunk, p.start, p.end, p.n_tokens) for p in passages] == \
        [(names[c.index], c.chunk, c.start, c.end, c.n_tokens) for c in chunks]
    assert len(passages) > 2 * len(texts)  # several chunks per file at 48 tokens
    for name, text in texts.items():
        mine = [p for p in passages if p.file == name]
        assert mine[0].start == 0 and mine[-1].end == len(text)
        assert all(p.text == text[p.start:p.end] for p in mine)
    np.testing.assert_allclose(index.reconstruct_n(0, index.ntotal), np.stack([c.vector for c in chunks]), atol=1e-6)

    # search(): equal to a brute-force numpy ranking over the embed_chunks vectors, per file and per chunk
    queries = ["volcanic ash", "Tee kochen"]
    for per_file in (True, False):
        hits = semantic_search.search(embedder, index, passages, queries, k=3, dim=64, task="find passages",
                                      per_file=per_file)
        expected = brute_force_hits(embedder, texts, queries, chunk_tokens=48, overlap=8, dim=64,
                                    task="find passages", k=3, per_file=per_file)
        for query_hits, want in zip(hits, expected):
            assert [(h.passage.file, h.passage.start, h.passage.end) for h in query_hits] == [w[:3] for w in want]
            np.testing.assert_allclose([h.score for h in query_hits], [w[3] for w in want], atol=1e-5)
    # more files asked for than the first FAISS depth (2k chunks) holds: the search deepens until it has them
    _, first_ids = index.search(embedder.embed_query(queries, task="find passages", dim=64), 2 * len(texts))
    assert any(len({passages[i].file for i in row}) < len(texts) for row in first_ids)  # the case is exercised
    hits = semantic_search.search(embedder, index, passages, queries, k=len(texts), dim=64, task="find passages")
    expected = brute_force_hits(embedder, texts, queries, chunk_tokens=48, overlap=8, dim=64, task="find passages",
                                k=len(texts), per_file=True)
    assert [[(h.passage.file, h.passage.start) for h in q] for q in hits] == [[w[:2] for w in q] for q in expected]

    # the saved index is reused while nothing changed, rebuilt when the files, the dim or the chunk settings change
    index_dir = tmp_path / "index"

    def current(**changes):
        values = {"model": embedder.path.name, **settings, **changes}
        return semantic_search.index_settings(corpus=semantic_search.corpus_fingerprint(docs), **values)

    assert semantic_search.load_index(index_dir, settings=current()) is not None
    for change in ({"dim": 128}, {"chunk_tokens": 64}, {"overlap": 0}):
        assert semantic_search.load_index(index_dir, settings=current(**change)) is None, change
    (docs / "tea.txt").write_text("A new paragraph.\n\nAnd another.\n", encoding="utf-8")
    assert semantic_search.load_index(index_dir, settings=current()) is None
    _, rebuilt = semantic_search.open_index(embedder, docs, **settings, index_dir=index_dir)
    assert [p.text for p in rebuilt if p.file == "tea.txt"] == ["A new paragraph.\n\nAnd another.\n"]


def rerank_reference(semantic_search, embedder, reranker, queries: list[str], *, retrieve: int, k: int,
                     per_file: bool, **chunking) -> list[list[tuple[str, int, int, float]]]:
    """(file, start, end, reranker score) of each query's ``k`` best candidates among the bundled
    docs: the example's own search at depth ``retrieve`` (tested above against numpy), reranked by
    ``Reranker.rerank``."""
    index, passages = semantic_search.open_index(embedder, DATA / "docs", **chunking)
    out = []
    for query, hits in zip(queries, semantic_search.search(embedder, index, passages, queries, k=retrieve,
                                                           per_file=per_file)):
        ranked = reranker.rerank(query, [h.passage.text for h in hits])  # all of them: the gaps are checked
        assert all(a[1] - b[1] > 1e-5 for a, b in zip(ranked, ranked[1:])), "a near tie: rounding would decide"
        out.append([(hits[i].passage.file, hits[i].passage.start, hits[i].passage.end, s) for i, s in ranked[:k]])
    return out


def test_semantic_search_rerank(tmp_path, embedder, reranker_q8_gguf, semantic_search):
    """--rerank: the index's --retrieve candidates reranked by the Reranker, its score shown beside the cosine."""
    from qembed_gguf import Reranker

    queries = ["How do volcanoes erupt?", "Wie speichert man Strom?"]
    proc = run_example("semantic_search", "--json", "-k", "3", "--rerank", str(reranker_q8_gguf),
                       *[a for q in queries for a in ("-q", q)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    # --every-chunk, and the text output: rank, reranker score, (cosine), file, [start:end], snippet
    text = run_example("semantic_search", "-k", "4", "--every-chunk", "--retrieve", "6", "--chunk-tokens", "64",
                       "--overlap", "8", "--rerank", str(reranker_q8_gguf), "-q", queries[0], cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    header, *rows = text.stdout.rstrip("\n").splitlines()
    assert header == f"query: {queries[0]}" and len(rows) == 4
    with Reranker(reranker_q8_gguf) as reranker:
        want = rerank_reference(semantic_search, embedder, reranker, queries, retrieve=12, k=3,  # 12: 4 x -k
                                per_file=True)
        [every] = rerank_reference(semantic_search, embedder, reranker, queries[:1], retrieve=6, k=4, per_file=False,
                                   chunk_tokens=64, overlap=8)
        # the module's rerank() in-process: the same hits, its Hit fields filled
        index = semantic_search.open_index(embedder, DATA / "docs", chunk_tokens=64, overlap=8)
        hits = semantic_search.search(embedder, *index, queries[:1], k=6, per_file=False)
        [reranked] = semantic_search.rerank(reranker, queries[:1], hits, k=4)
    for r, expected in zip(results, want):
        assert len(r["hits"]) == 3
        assert [(Path(h["file"]).name, h["start"], h["end"]) for h in r["hits"]] == [w[:3] for w in expected]
        scores = [h["rerank_score"] for h in r["hits"]]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        np.testing.assert_allclose(scores, [w[3] for w in expected], atol=2e-6)  # printed with 6 decimals
        assert all(-1 - 1e-5 <= h["score"] <= 1 + 1e-5 for h in r["hits"])  # the cosine is still there
        assert all(file_text(Path(h["file"]))[h["start"]:h["end"]] == h["text"] for h in r["hits"])
    assert [(h.passage.file, h.passage.start, h.passage.end, h.rerank_score) for h in reranked] == every
    cosine = {h.passage: h.score for h in hits[0]}
    assert all(h.score == cosine[h.passage] for h in reranked)  # each keeps its cosine similarity
    shown = []
    for row, (name, start, end, score) in zip(rows, every):
        _, rerank_score, cos, file, span, *_ = row.split()
        assert (file, span) == (name, f"[{start}:{end}]") and float(rerank_score) == pytest.approx(score, abs=1e-4)
        assert cos.startswith("(") and cos.endswith(")") and -1 <= float(cos.strip("()")) <= 1
        shown.append(float(rerank_score))
    assert shown == sorted(shown, reverse=True)


def test_semantic_search_rerank_options(tmp_path, semantic_search, capsys):
    parse = semantic_search.parse_args
    assert parse(["-q", "x", "--rerank", "r.gguf", "-k", "3"]).retrieve == 12  # default: 4 x --top-k
    assert parse(["-q", "x", "--rerank", "r.gguf", "-k", "3", "--retrieve", "3"]).retrieve == 3
    assert parse(["-q", "x"]).retrieve is None
    for argv, message in ((["--retrieve", "9"], "--retrieve: only with --rerank"),
                          (["--rerank-instruction", "y"], "--rerank-instruction: only with --rerank"),
                          (["--rerank", "r.gguf", "-k", "4", "--retrieve", "3"], "must be at least --top-k")):
        with pytest.raises(SystemExit) as exc:
            parse(["-q", "x", *argv])
        assert exc.value.code == 2 and message in capsys.readouterr().err
    # an embedding model is not a reranker: one error line, before the folder is embedded
    proc = run_example("semantic_search", "-v", "-q", "x", "--rerank", "tiny", cwd=tmp_path)
    assert proc.returncode == 1 and "an embedding model" in proc.stderr and "embedded" not in proc.stderr
    assert "Traceback" not in proc.stderr


def test_semantic_search_offsets_are_the_files_own(tmp_path, embedder, semantic_search):
    """CRLF line endings and non-NFC text keep their characters; blank files have no chunks."""
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    crlf = "".join(f"Line {i} of a Windows file, caf\u0065\u0301 au lait.\r\n" for i in range(30))
    (folder / "sub" / "crlf.txt").write_bytes(crlf.encode("utf-8"))
    (folder / "empty.txt").write_bytes(b"")
    (folder / "blank.txt").write_bytes(b" \n\n\t\n")
    passages, vectors = semantic_search.embed_folder(embedder, folder, chunk_tokens=32, overlap=4)
    assert {p.file for p in passages} == {"sub/crlf.txt"} and len(passages) == len(vectors) > 3
    assert all(p.text == crlf[p.start:p.end] for p in passages)
    assert passages[0].start == 0 and passages[-1].end == len(crlf) and "\r\n" in passages[0].text
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_snippet(semantic_search):
    assert semantic_search.snippet("  two\r\nlines \t here ") == "two lines here"
    long = semantic_search.snippet("word " * 40, width=20)
    assert len(long) == 20 and long.endswith("...")


def test_semantic_search_errors(tmp_path):
    proc = run_example("semantic_search", str(tmp_path), "-q", "x", cwd=tmp_path)
    assert proc.returncode == 1 and "no .txt files" in proc.stderr
    proc = run_example("semantic_search", "-q", "x", "--dim", "7", cwd=tmp_path)
    assert proc.returncode == 1 and "dim must be an integer in [32, 512]" in proc.stderr
    proc = run_example("semantic_search", "-q", "x", "--chunk-tokens", "10", "--overlap", "9", cwd=tmp_path)
    assert proc.returncode == 1 and "overlap=9 is more than" in proc.stderr
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
def long_docs(cross_lingual, per_doc: int = 3) -> list:
    """Documents of several sample documents each (paragraphs of different topics and languages)."""
    docs = cross_lingual.load_docs(DATA / "multilingual.jsonl")
    return [cross_lingual.Doc(id=f"long-{n}", lang="mix", topic=docs[n].topic,
                              text="\n\n".join(docs[(n + j) % len(docs)].text for j in range(per_doc)))
            for n in range(len(docs))]


def brute_force_ranking(embedder, docs, queries: list[str], *, task, dim, chunk_tokens, overlap):
    """Per query: (doc index, best chunk start, end, score), best first, from Embedder.embed_chunks vectors:
    a document scores as the maximum cosine over its chunks."""
    chunks = embedder.embed_chunks([d.text for d in docs], chunk_tokens=chunk_tokens, overlap=overlap, dim=dim)
    scores = embedder.embed_query(queries, task=task, dim=dim) @ np.stack([c.vector for c in chunks]).T
    out = []
    for row in scores:
        best = {}
        for j, c in enumerate(chunks):
            if c.index not in best or row[j] > row[best[c.index]]:
                best[c.index] = j
        order = sorted(range(len(docs)), key=lambda i: (-row[best[i]], i))
        out.append([(i, chunks[best[i]].start, chunks[best[i]].end, float(row[best[i]])) for i in order])
    return out


def test_cross_lingual_cli_ranks_for_every_query(tmp_path, cross_lingual):
    docs = cross_lingual.load_docs(DATA / "multilingual.jsonl")
    assert len({d.lang for d in docs}) >= 5 and "en" not in {d.lang for d in docs}
    proc = run_example("cross_lingual", "-k", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    blocks = proc.stdout.strip().split("\n\n")
    assert len(blocks) == len(cross_lingual.DEFAULT_QUERIES) + 1
    by_text = {" ".join(d.text.split()): d for d in docs}
    for (query, topic), block in zip(cross_lingual.DEFAULT_QUERIES, blocks):
        header, *rows = block.splitlines()
        assert header == f"query: {query}  [topic: {topic}]"
        assert len(rows) == 4
        assert_ranked([float(row.split()[1]) for row in rows])
        for row in rows:  # a short document is one chunk: shown whole, no span
            shown = row.split(maxsplit=3)[-1] if row.split()[2] != "*" else row.split(maxsplit=4)[-1]
            assert shown in by_text or shown.endswith("..."), row
    assert blocks[-1].startswith("on-topic documents in the top 4: ")

    proc = run_example("cross_lingual", "--json", "-k", "15", "-q", "dumplings", "-q", "interest rates",
                       "--task", "Find recipes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["query"] for r in results] == ["dumplings", "interest rates"]
    texts = {d.id: d.text for d in docs}
    for r in results:
        assert sorted(d["id"] for d in r["ranking"]) == sorted(texts)  # every document, once
        assert_ranked([d["score"] for d in r["ranking"]])
        # the sample's documents are shorter than a chunk: each is one chunk, all of it
        assert all(d["chunks"] == 1 and (d["start"], d["end"]) == (0, len(texts[d["id"]])) and
                   d["text"] == texts[d["id"]] for d in r["ranking"])


def test_cross_lingual_cli_long_documents(tmp_path, cross_lingual):
    docs = long_docs(cross_lingual)
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps(dataclasses.asdict(d), ensure_ascii=False) + "\n" for d in docs),
                    encoding="utf-8")
    proc = run_example("cross_lingual", "--docs", str(path), "--json", "-k", "5", "--chunk-tokens", "32",
                       "--overlap", "4", "-q", "black holes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [r] = [json.loads(line) for line in proc.stdout.splitlines()]
    texts = {d.id: d.text for d in docs}
    assert len(r["ranking"]) == 5 and all(d["chunks"] > 1 for d in r["ranking"])
    for d in r["ranking"]:  # the shown text is the best chunk: that span of the document
        assert texts[d["id"]][d["start"]:d["end"]] == d["text"] and d["end"] - d["start"] < len(texts[d["id"]])
    proc = run_example("cross_lingual", "--docs", str(path), "-k", "2", "--chunk-tokens", "32", "-q", "black holes",
                       cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = proc.stdout.splitlines()[1:3]
    assert all(row.split()[3].startswith("[") for row in rows), rows  # a long document's row names the span


def test_cross_lingual_rank_matches_library(embedder, cross_lingual):
    queries = [cross_lingual.Query(q) for q in ("dumplings", "black holes")]
    # long documents: several chunks each; a document ranks by its best chunk
    docs = long_docs(cross_lingual)
    rankings = cross_lingual.rank(embedder, docs, queries, task="Find recipes", dim=32, chunk_tokens=24, overlap=4)
    expected = brute_force_ranking(embedder, docs, [q.text for q in queries], task="Find recipes", dim=32,
                                   chunk_tokens=24, overlap=4)
    n_chunks = len(embedder.embed_chunks([d.text for d in docs], chunk_tokens=24, overlap=4))
    assert n_chunks > 2 * len(docs)
    for ranking, want in zip(rankings, expected):
        assert [(m.doc, m.start, m.end) for m in ranking] == [(docs[i], s, e) for i, s, e, _ in want]
        np.testing.assert_allclose([m.score for m in ranking], [w[3] for w in want], atol=1e-5)
        assert all(m.text == m.doc.text[m.start:m.end] and m.chunks > 1 for m in ranking)

    # short documents (the sample, at the default chunk size): one chunk each, scored as the whole text's vector
    docs = cross_lingual.load_docs(DATA / "multilingual.jsonl")
    rankings = cross_lingual.rank(embedder, docs, queries, task="Find recipes", dim=32)
    whole = embedder.embed_query([q.text for q in queries], task="Find recipes", dim=32) @ \
        embedder.embed_documents([d.text for d in docs], dim=32).T
    for row, ranking in zip(whole, rankings):
        assert sorted(m.doc.id for m in ranking) == sorted(d.id for d in docs)
        assert all(m.chunks == 1 and (m.start, m.end) == (0, len(m.doc.text)) for m in ranking)
        got = {m.doc.id: m.score for m in ranking}
        np.testing.assert_allclose([got[d.id] for d in docs], row, atol=2e-3)  # batch composition aside, equal
        assert_ranked([m.score for m in ranking])


def test_cross_lingual_bad_documents(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "fine"}\n{"id": "b", "txt": "typo"}\n', encoding="utf-8")
    proc = run_example("cross_lingual", "--docs", str(bad), cwd=tmp_path)
    assert proc.returncode == 1 and f"{bad}:2: expected an object" in proc.stderr


# -- openai_client.py: the official client against a server the example starts ---------------------
def test_openai_client_example_against_a_live_server(tmp_path, embedder):
    proc = run_example("openai_client", "--serve", "mini", "--api-key", "sk-test", "--dim", "64", cwd=tmp_path)
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
