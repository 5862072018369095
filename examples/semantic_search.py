"""Semantic search over a folder of text files with qembed-gguf and a FAISS index.

Every ``.txt`` file under the folder is split into paragraphs (blank-line separated); the
paragraphs are embedded as documents and stored in a FAISS ``IndexFlatIP``: the vectors are
L2-normalised, so the inner product is the cosine similarity. Each ``--query`` is embedded with
the model's query instruction and answered with the ``--top-k`` closest paragraphs.

With ``--index-dir`` the index and its metadata are saved, and reused by later runs as long as
the model, the dimension and the files are unchanged (otherwise the index is rebuilt).

Run it on the bundled sample documents (English, French, German, Chinese) with the bundled
``tiny`` model, which runs anywhere but has random weights, so its rankings are meaningless::

    python examples/semantic_search.py -q "How do volcanoes erupt?" -q "Wie speichert man Strom?"

With a real model (converted once from the Hugging Face hub, or any Qwen3-Embedding ``.gguf``)::

    python examples/semantic_search.py examples/data/docs --model qwen3-embedding-0.6b \\
        --index-dir /tmp/docs-index --top-k 3 -q "How do volcanoes erupt?"

Needs FAISS: ``pip install faiss-cpu``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from qembed_gguf import Embedder
from qembed_gguf.errors import QembedError

try:
    import faiss
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("this example needs FAISS: pip install faiss-cpu") from exc

log = logging.getLogger("semantic_search")

DEFAULT_DOCS = Path(__file__).resolve().parent / "data" / "docs"
INDEX_FILE = "index.faiss"
META_FILE = "meta.json"
META_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Passage:
    """One paragraph of one file; ``file`` is relative to the indexed folder, ``paragraph`` 1-based."""

    file: str
    paragraph: int
    text: str


@dataclasses.dataclass(frozen=True)
class Hit:
    passage: Passage
    score: float


def split_paragraphs(text: str) -> list[str]:
    """The non-empty paragraphs of ``text``: blocks separated by blank lines, lines re-joined."""
    blocks = re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))
    return [" ".join(line.strip() for line in block.splitlines() if line.strip()) for block in blocks if block.strip()]


def text_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.txt") if p.is_file())


def load_passages(folder: Path) -> list[Passage]:
    """Every paragraph of every ``.txt`` file under ``folder``, files in path order."""
    return [Passage(path.relative_to(folder).as_posix(), n, paragraph)
            for path in text_files(folder)
            for n, paragraph in enumerate(split_paragraphs(path.read_text(encoding="utf-8")), start=1)]


def corpus_fingerprint(folder: Path) -> str:
    """A hash of the files' names and bytes: a saved index is reused only for the same corpus."""
    digest = hashlib.blake2b(digest_size=16)
    for path in text_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.blake2b(path.read_bytes(), digest_size=16).digest())
    return digest.hexdigest()


def build_index(embedder: Embedder, passages: list[Passage], *, dim: int | None = None) -> faiss.Index:
    """A FAISS inner-product index over the passages' (L2-normalised) document vectors."""
    started = time.perf_counter()
    vectors = embedder.embed_documents([p.text for p in passages], dim=dim, normalize=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    log.info("embedded %d paragraphs (dim %d) in %.2f s", len(passages), vectors.shape[1],
             time.perf_counter() - started)
    return index


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_index(index_dir: Path, index: faiss.Index, passages: list[Passage], *, model: str, corpus: str) -> None:
    index_dir.mkdir(parents=True, exist_ok=True)
    meta = {"format": META_FORMAT, "model": model, "dim": index.d, "corpus": corpus,
            "passages": [dataclasses.asdict(p) for p in passages]}
    _write_atomically(index_dir / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    _write_atomically(index_dir / META_FILE,
                      lambda tmp: tmp.write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8"))
    log.info("saved the index of %d paragraphs to %s", len(passages), index_dir)


def load_index(index_dir: Path, *, model: str, dim: int, corpus: str) -> tuple[faiss.Index, list[Passage]] | None:
    """The saved index and its passages, or None when absent or made for another model/dim/corpus."""
    meta_path, index_path = index_dir / META_FILE, index_dir / INDEX_FILE
    if not (meta_path.is_file() and index_path.is_file()):
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    wanted = {"format": META_FORMAT, "model": model, "dim": dim, "corpus": corpus}
    stale = [key for key, value in wanted.items() if meta.get(key) != value]
    if stale:
        log.info("the index in %s is stale (%s changed): rebuilding it", index_dir, ", ".join(stale))
        return None
    index = faiss.read_index(str(index_path))
    passages = [Passage(**p) for p in meta["passages"]]
    if index.ntotal != len(passages) or index.d != dim:
        log.warning("the index in %s does not match its metadata: rebuilding it", index_dir)
        return None
    log.info("loaded the index of %d paragraphs from %s", len(passages), index_dir)
    return index, passages


def open_index(embedder: Embedder, folder: Path, *, dim: int | None = None,
               index_dir: Path | None = None) -> tuple[faiss.Index, list[Passage]]:
    """The index of ``folder``: loaded from ``index_dir`` when still valid, else built (and saved)."""
    out_dim = dim or embedder.dim
    corpus = corpus_fingerprint(folder)
    if index_dir is not None:
        loaded = load_index(index_dir, model=embedder.path.name, dim=out_dim, corpus=corpus)
        if loaded is not None:
            return loaded
    passages = load_passages(folder)
    index = build_index(embedder, passages, dim=dim)
    if index_dir is not None:
        save_index(index_dir, index, passages, model=embedder.path.name, corpus=corpus)
    return index, passages


def search(embedder: Embedder, index: faiss.Index, passages: list[Passage], queries: list[str], *,
           k: int = 5, dim: int | None = None, task: str | None = None) -> list[list[Hit]]:
    """The ``k`` best passages for each query, best first."""
    if not queries or index.ntotal == 0:
        return [[] for _ in queries]
    scores, ids = index.search(embedder.embed_query(queries, task=task, dim=dim), min(k, index.ntotal))
    return [[Hit(passages[i], float(s)) for s, i in zip(row_scores, row_ids) if i >= 0]
            for row_scores, row_ids in zip(scores, ids)]


def _print_results(queries: list[str], results: list[list[Hit]], folder: Path, as_json: bool) -> None:
    for query, hits in zip(queries, results):
        if as_json:
            print(json.dumps({"query": query, "hits": [
                {"file": str(folder / h.passage.file), "paragraph": h.passage.paragraph, "score": round(h.score, 6),
                 "text": h.passage.text} for h in hits]}, ensure_ascii=False))
            continue
        print(f"query: {query}")
        for rank, h in enumerate(hits, start=1):
            snippet = h.passage.text if len(h.passage.text) <= 90 else h.passage.text[:87] + "..."
            print(f"  {rank:2d}. {h.score:+.4f}  {h.passage.file} #{h.passage.paragraph}  {snippet}")
        print()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", type=Path, default=DEFAULT_DOCS,
                        help="folder of .txt files, searched recursively (default: the bundled samples)")
    parser.add_argument("-q", "--query", action="append", default=[], required=True,
                        help="a search query (repeatable)")
    parser.add_argument("-k", "--top-k", type=int, default=5, help="results per query (default 5)")
    parser.add_argument("--model", default="tiny", help="GGUF file, registry name or hub id (default: tiny)")
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (default: the model's full one)")
    parser.add_argument("--task", default=None, help="query instruction (default: the model's own)")
    parser.add_argument("--index-dir", type=Path, default=None,
                        help="save the index here, and reuse it while model, dim and files are unchanged")
    parser.add_argument("--json", action="store_true", help="print one JSON object per query")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not text_files(args.folder):
        log.error("no .txt files under %s", args.folder)
        return 1
    try:
        with Embedder(args.model) as embedder:
            index, passages = open_index(embedder, args.folder, dim=args.dim, index_dir=args.index_dir)
            results = search(embedder, index, passages, args.query, k=args.top_k, dim=args.dim, task=args.task)
    except QembedError as exc:
        log.error("%s", exc)
        return 1
    _print_results(args.query, results, args.folder, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
