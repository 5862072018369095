"""Semantic search over a folder of text files with qembed-gguf and a FAISS index.

Every ``.txt`` file under the folder is cut into chunks of at most ``--chunk-tokens`` tokens
(default 256; consecutive chunks share ``--overlap`` tokens, default an eighth of the chunk: 32) by
``Embedder.embed_chunks``, which ends a chunk at a paragraph, else a sentence, else a line break
near the end of its window. Each chunk's vector goes into a FAISS ``IndexFlatIP``: the vectors are
L2-normalised, so the inner product is the cosine similarity. Each ``--query`` is embedded with the
model's query instruction and answered with the ``--top-k`` best files, each shown with its
best-matching chunk: its character span ``[start:end]`` in the file (``text[start:end]``, the file
read as UTF-8 with its line endings as they are) and a snippet of it. ``--every-chunk`` lists the
best chunks instead, several per file if they score so.

With ``--rerank MODEL`` (a Qwen3-Reranker ``.gguf`` file, registry name or hub id) the index
retrieves ``--retrieve`` candidates per query (default: 4 x ``--top-k``; files or chunks, as
without it), a :class:`~qembed_gguf.Reranker` scores each candidate chunk against the query, and
the ``--top-k`` best by that score are listed, best first, each with its reranker score (P("yes"),
in [0, 1]) before its cosine similarity (``"rerank_score"`` and ``"score"`` in ``--json``).

With ``--index-dir`` the index and its metadata are saved, and reused by later runs as long as
the model, the dimension, the chunk settings and the files are unchanged (otherwise the index is
rebuilt).

Run it on the bundled sample documents (English, French, German, Chinese) with the bundled
``mini`` model, which runs anywhere; it is small and knows only English, so it ranks the English
files sensibly and the others by chance::

    python examples/semantic_search.py -q "How do volcanoes erupt?" -q "Wie speichert man Strom?"

With a real model (converted once from the Hugging Face hub, or any Qwen3-Embedding ``.gguf``)::

    python examples/semantic_search.py examples/data/docs --model qwen3-embedding-0.6b \\
        --index-dir /tmp/docs-index --top-k 3 --chunk-tokens 512 --overlap 64 -q "How do volcanoes erupt?"

Reranked by a Qwen3-Reranker::

    python examples/semantic_search.py --model qwen3-embedding-0.6b --rerank qwen3-reranker-0.6b \\
        --top-k 3 --retrieve 20 -q "How do volcanoes erupt?"

Needs FAISS: ``pip install faiss-cpu``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from qembed_gguf import Embedder, Reranker
from qembed_gguf.errors import QembedError

try:
    import faiss
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("this example needs FAISS: pip install faiss-cpu") from exc

log = logging.getLogger("semantic_search")

DEFAULT_DOCS = Path(__file__).resolve().parent / "data" / "docs"
DEFAULT_CHUNK_TOKENS = 256
DEFAULT_OVERLAP = DEFAULT_CHUNK_TOKENS // 8  # 32
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
META_FORMAT = 2  # 1: one entry per paragraph; 2: one per chunk, with its character span


@dataclasses.dataclass(frozen=True)
class Passage:
    """One chunk of one file: ``file`` is relative to the indexed folder, ``chunk`` the chunk's
    0-based number in that file, ``[start, end)`` its character span in the file's text (``text``
    is that slice), ``n_tokens`` the tokens embedded (the pooling token included)."""

    file: str
    chunk: int
    start: int
    end: int
    n_tokens: int
    text: str


@dataclasses.dataclass(frozen=True)
class Hit:
    """A search result: ``score`` is the cosine similarity of the query and the chunk,
    ``rerank_score`` the reranker's P("yes") for them (None when not reranked)."""

    passage: Passage
    score: float
    rerank_score: float | None = None


def text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.txt") if p.is_file())


def read_text(path: Path) -> str:
    """The file as UTF-8 text, line endings untouched: chunk offsets index exactly this string."""
    return path.read_bytes().decode("utf-8")


def corpus_fingerprint(folder: Path) -> str:
    """A hash of the files' names and bytes: a saved index is reused only for the same corpus."""
    digest = hashlib.blake2b(digest_size=16)
    for path in text_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    return digest.hexdigest()


def embed_folder(embedder: Embedder, folder: Path, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                 overlap: int = DEFAULT_OVERLAP, dim: int | None = None) -> tuple[list[Passage], np.ndarray]:
    """The chunks of every non-blank ``.txt`` file under ``folder`` (files in path order, chunks in
    text order) and their L2-normalised document vectors, one row per chunk, in one library call."""
    paths = text_files(folder)
    texts = [read_text(p) for p in paths]
    keep = [i for i, t in enumerate(texts) if t.strip()]  # an empty file has nothing to find
    chunks = embedder.embed_chunks([texts[i] for i in keep], chunk_tokens=chunk_tokens, overlap=overlap,
                                   dim=dim, normalize=True) if keep else []
    passages = []
    for c in chunks:
        i = keep[c.index]
        passages.append(Passage(paths[i].relative_to(folder).as_posix(), c.chunk, c.start, c.end, c.n_tokens,
                                texts[i][c.start:c.end]))
    width = dim or embedder.dim
    vectors = np.stack([c.vector for c in chunks]) if chunks else np.zeros((0, width), dtype=np.float32)
    return passages, np.ascontiguousarray(vectors, dtype=np.float32)


def build_index(embedder: Embedder, folder: Path, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
                overlap: int = DEFAULT_OVERLAP, dim: int | None = None) -> tuple[faiss.Index, list[Passage]]:
    """A FAISS inner-product index over the chunks' (L2-normalised) document vectors, and the chunks."""
    started = time.perf_counter()
    passages, vectors = embed_folder(embedder, folder, chunk_tokens=chunk_tokens, overlap=overlap, dim=dim)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    log.info("embedded %d chunks of %d files (%d tokens, chunk_tokens %d, overlap %d, dim %d) in %.2f s",
             len(passages), len({p.file for p in passages}), sum(p.n_tokens for p in passages), chunk_tokens,
             overlap, vectors.shape[1], time.perf_counter() - started)
    return index, passages


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def index_settings(*, model: str, dim: int, chunk_tokens: int, overlap: int, corpus: str) -> dict:
    """What a saved index was made with; a change in any of these makes it stale."""
    return {"format": META_FORMAT, "model": model, "dim": dim, "chunk_tokens": chunk_tokens, "overlap": overlap,
            "corpus": corpus}


def save_index(index_dir: Path, index: faiss.Index, passages: list[Passage], *, settings: dict) -> None:
    index_dir.mkdir(parents=True, exist_ok=True)
    meta = {**settings, "passages": [dataclasses.asdict(p) for p in passages]}
    _write_atomically(index_dir / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    _write_atomically(index_dir / META_FILE,
                      lambda tmp: tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8"))
    log.info("saved the index of %d chunks to %s", len(passages), index_dir)


def load_index(index_dir: Path, *, settings: dict) -> tuple[faiss.Index, list[Passage]] | None:
    """The saved index and its chunks, or None when absent or made with other :func:`index_settings`."""
    meta_path, index_path = index_dir / META_FILE, index_dir / INDEX_FILE
    if not (meta_path.is_file() and index_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    stale = [key for key, value in settings.items() if meta.get(key) != value]
    if stale:
        log.info("the index in %s is stale (%s changed): rebuilding it", index_dir, ", ".join(stale))
        return None
    index = faiss.read_index(str(index_path))
    passages = [Passage(**p) for p in meta["passages"]]
    if index.ntotal != len(passages) or index.d != settings["dim"]:
        log.warning("the index in %s does not match its metadata: rebuilding it", index_dir)
        return None
    log.info("loaded the index of %d chunks from %s", len(passages), index_dir)
    return index, passages


def open_index(embedder: Embedder, folder: Path, *, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
               overlap: int = DEFAULT_OVERLAP, dim: int | None = None,
               index_dir: Path | None = None) -> tuple[faiss.Index, list[Passage]]:
    """The index of ``folder``: loaded from ``index_dir`` when still valid, else built (and saved)."""
    embedder.check_dim(dim)  # a bad dim fails before any work, not after embedding the folder
    settings = index_settings(model=embedder.path.name, dim=dim or embedder.dim, chunk_tokens=chunk_tokens,
                              overlap=overlap, corpus=corpus_fingerprint(folder))
    if index_dir is not None:
        loaded = load_index(index_dir, settings=settings)
        if loaded is not None:
            return loaded
    index, passages = build_index(embedder, folder, chunk_tokens=chunk_tokens, overlap=overlap, dim=dim)
    if index_dir is not None:
        save_index(index_dir, index, passages, settings=settings)
    return index, passages


def search(embedder: Embedder, index: faiss.Index, passages: list[Passage], queries: list[str], *,
           k: int = 5, dim: int | None = None, task: str | None = None, per_file: bool = True) -> list[list[Hit]]:
    """For each query, best first: the ``k`` best files, each as its best chunk (``per_file``), or
    the ``k`` best chunks whatever their file."""
    if not queries or index.ntotal == 0:
        return [[] for _ in queries]
    query_vectors = embedder.embed_query(queries, task=task, dim=dim)
    if not per_file:
        scores, ids = index.search(query_vectors, min(k, index.ntotal))
        return [[Hit(passages[i], float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
                for row_scores, row_ids in zip(scores, ids)]
    want = min(k, len({p.file for p in passages}))
    depth = min(index.ntotal, 2 * k)
    while True:  # deepen the search until every query has k distinct files (or every chunk was seen)
        scores, ids = index.search(query_vectors, depth)
        results = []
        for row_scores, row_ids in zip(scores, ids):
            best: dict[str, Hit] = {}  # FAISS returns best first: a file's first chunk is its best
            for s, i in zip(row_scores, row_ids):
                if i >= 0 and passages[i].file not in best:
                    best[passages[i].file] = Hit(passages[i], float(s))
            results.append(list(best.values())[:k])
        if depth == index.ntotal or all(len(r) >= want for r in results):
            return results
        depth = min(index.ntotal, 2 * depth)


def rerank(reranker: Reranker, queries: list[str], results: list[list[Hit]], *, k: int,
           instruction: str | None = None) -> list[list[Hit]]:
    """Each query's hits (the candidates) scored by ``reranker`` on their chunk's text, the ``k`` best
    by that score, best first (equal scores: the search's order)."""
    started = time.perf_counter()
    out = []
    for query, hits in zip(queries, results):
        ranked = reranker.rerank(query, [h.passage.text for h in hits], instruction=instruction, top_n=k)
        out.append([dataclasses.replace(hits[i], rerank_score=s) for i, s in ranked])
    log.info("reranked %d candidates of %d queries in %.2f s", sum(map(len, results)), len(queries),
             time.perf_counter() - started)
    return out


def snippet(text: str, width: int = 80) -> str:
    """``text`` on one line (white space runs as one space), cut to ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def _print_results(queries: list[str], results: list[list[Hit]], folder: Path, as_json: bool) -> None:
    for query, hits in zip(queries, results):
        if as_json:
            print(json.dumps({"query": query, "hits": [_hit_json(h, folder) for h in hits]}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for rank, h in enumerate(hits, start=1):
            p = h.passage
            scores = f"{h.score:+.4f}" if h.rerank_score is None else f"{h.rerank_score:.4f} ({h.score:+.4f})"
            print(f"  {rank:2d}. {scores}  {p.file} [{p.start}:{p.end}]  {snippet(p.text)}")
        print()


def _hit_json(h: Hit, folder: Path) -> dict:
    out = {"file": str(folder / h.passage.file), "chunk": h.passage.chunk, "start": h.passage.start,
           "end": h.passage.end, "n_tokens": h.passage.n_tokens, "score": round(h.score, 6)}
    if h.rerank_score is not None:
        out["rerank_score"] = round(h.rerank_score, 6)
    out["text"] = h.passage.text
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DOCS,
                        help="folder of .txt files, searched recursively (default: the bundled samples)")
    parser.add_argument("-q", "--query", action="append", default=[], required=True,
                        help="a search query (repeatable)")
    parser.add_argument("-k", "--top-k", type=int, default=5, help="results per query (default 5)")
    parser.add_argument("--model", default="mini", help="GGUF file, registry name or hub id (default: the bundled mini)")
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (default: the model's full one)")
    parser.add_argument("--task", default=None, help="query instruction (default: the model's own)")
    parser.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS,
                        help=f"most tokens per chunk, the pooling token included (default {DEFAULT_CHUNK_TOKENS})")
    parser.add_argument("--overlap", type=int, default=None,
                        help=f"tokens consecutive chunks of a file share (default: an eighth of --chunk-tokens, "
                             f"{DEFAULT_OVERLAP} at {DEFAULT_CHUNK_TOKENS})")
    parser.add_argument("--every-chunk", action="store_true",
                        help="list the best chunks, several per file if they score so (default: each file once, "
                             "as its best chunk)")
    parser.add_argument("--rerank", metavar="MODEL", default=None,
                        help="rerank the candidates with this Qwen3-Reranker (GGUF file, registry name or hub id)")
    parser.add_argument("--retrieve", metavar="K", type=int, default=None,
                        help="candidates per query the index retrieves for --rerank (default: 4 x --top-k)")
    parser.add_argument("--rerank-instruction", default=None,
                        help="what relevance means to the reranker (default: the Qwen3-Reranker's own)")
    parser.add_argument("--index-dir", type=Path, default=None,
                        help="save the index here, and reuse it while model, dim, chunk settings and files are "
                             "unchanged")
    parser.add_argument("--json", action="store_true", help="print one JSON object per query")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.rerank is None:
        given = [flag for flag, value in (("--retrieve", args.retrieve),
                                          ("--rerank-instruction", args.rerank_instruction)) if value is not None]
        if given:
            parser.error(f"{' and '.join(given)}: only with --rerank")
    else:
        if args.retrieve is None:
            args.retrieve = 4 * args.top_k
        if args.retrieve < args.top_k:
            parser.error(f"--retrieve ({args.retrieve}) must be at least --top-k ({args.top_k})")
    if args.overlap is None:
        args.overlap = args.chunk_tokens // 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not text_files(args.folder):
        log.error("no .txt files under %s", args.folder)
        return 1
    try:
        with contextlib.ExitStack() as stack:
            embedder = stack.enter_context(Embedder(args.model))
            # the reranker is opened before the folder is embedded: a wrong model fails before that work
            reranker = stack.enter_context(Reranker(args.rerank)) if args.rerank is not None else None
            index, passages = open_index(embedder, args.folder, chunk_tokens=args.chunk_tokens, overlap=args.overlap,
                                         dim=args.dim, index_dir=args.index_dir)
            results = search(embedder, index, passages, args.query, k=args.retrieve or args.top_k, dim=args.dim,
                             task=args.task, per_file=not args.every_chunk)
            if reranker is not None:
                results = rerank(reranker, args.query, results, k=args.top_k, instruction=args.rerank_instruction)
    except QembedError as exc:
        log.error("%s", exc)
        return 1
    _print_results(args.query, results, args.folder, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
