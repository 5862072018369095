"""Cross-lingual retrieval: English queries ranking documents written in other languages.

Qwen3-Embedding maps texts of 100+ languages into one vector space, so an English query finds
a French, German, Chinese, Japanese, Spanish or Russian document about the same thing without
any translation. Documents (``examples/data/multilingual.jsonl``: one JSON object per line with
``id``, ``lang``, ``topic`` and ``text``) are embedded as raw text, queries with the model's
instruction (or ``--task``), and the documents are ranked by cosine similarity for each query.
For the built-in queries, whose topic is known, hits on the right topic are marked ``*`` and
counted at the end.

Long documents are cut into chunks of at most ``--chunk-tokens`` tokens (default 512; consecutive
chunks share ``--overlap`` tokens, default an eighth of the chunk: 64) by ``Embedder.embed_chunks``;
a document scores as its best chunk, and that chunk (its character span in the document's text and
the text itself) is what is shown. A document shorter than a chunk is one chunk: embedded whole, as
before. (The best chunk rather than ``Embedder(long_inputs="chunk")``, which averages windows of
``max_tokens`` into one vector: the passage that answers a query is usually a small part of a long
document, an average dilutes it, and the best chunk is also the evidence to show in the document's
own language.)

The bundled ``mini`` model knows only English (it was distilled on English text), so with it the
command runs anywhere but its cross-lingual rankings are near chance level::

    python examples/cross_lingual.py

Use a real model to see the point (converted once from the Hugging Face hub, or any
Qwen3-Embedding ``.gguf`` file)::

    python examples/cross_lingual.py --model Qwen3-Embedding-0.6B-Q8_0.gguf
    python examples/cross_lingual.py --model qwen3-embedding-0.6b --top-k 3 --chunk-tokens 256 \\
        -q "How do I make dumplings?" --task "Given a question, retrieve recipes that answer it"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np

from qembed_gguf import Embedder
from qembed_gguf.errors import InputError, QembedError

log = logging.getLogger("cross_lingual")

DEFAULT_DOCS = Path(__file__).resolve().parent / "data" / "multilingual.jsonl"
DEFAULT_CHUNK_TOKENS = 512
DEFAULT_OVERLAP = DEFAULT_CHUNK_TOKENS // 8  # 64

# English queries, with the topic of the documents that answer them
DEFAULT_QUERIES = [
    ("Which planet is the largest in the solar system?", "astronomy"),
    ("Why did the referee send a player off?", "football"),
    ("How do I make mayonnaise at home?", "cooking"),
    ("How do vaccines protect us from viruses?", "medicine"),
    ("Why do central banks raise interest rates?", "finance"),
]


@dataclasses.dataclass(frozen=True)
class Doc:
    id: str
    lang: str
    text: str
    topic: str | None = None


@dataclasses.dataclass(frozen=True)
class Query:
    text: str
    topic: str | None = None  # the expected topic, when known


@dataclasses.dataclass(frozen=True)
class Match:
    """A document as one query ranks it: by its best chunk, ``doc.text[start:end]``."""

    doc: Doc
    score: float  # the best chunk's cosine similarity to the query
    start: int
    end: int
    chunks: int  # how many chunks the document was cut into

    @property
    def text(self) -> str:
        return self.doc.text[self.start:self.end]


def load_docs(path: Path) -> list[Doc]:
    """The documents of a JSONL file; a malformed line raises :class:`InputError` naming it."""
    docs = []
    with path.open(encoding="utf-8") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                raise InputError(f"{path}:{lineno}: expected an object with a string \"text\" field")
            docs.append(Doc(id=str(row.get("id", lineno)), lang=str(row.get("lang", "?")), text=row["text"],
                            topic=row.get("topic")))
    if not docs:
        raise InputError(f"{path}: no documents")
    return docs


def rank(embedder: Embedder, docs: list[Doc], queries: list[Query], *, task: str | None = None,
         dim: int | None = None, chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
         overlap: int = DEFAULT_OVERLAP) -> list[list[Match]]:
    """For each query, every document, best first, scored by its best chunk's cosine similarity."""
    chunks = embedder.embed_chunks([d.text for d in docs], chunk_tokens=chunk_tokens, overlap=overlap, dim=dim,
                                   normalize=True)
    query_vectors = embedder.embed_query([q.text for q in queries], task=task, dim=dim, normalize=True)
    scores = query_vectors @ np.stack([c.vector for c in chunks]).T  # (queries, chunks)
    owner = np.array([c.index for c in chunks])  # chunks come grouped by document, in order
    first = np.searchsorted(owner, np.arange(len(docs)))
    counts = np.bincount(owner, minlength=len(docs))
    rankings = []
    for row in scores:
        best = [int(lo + np.argmax(row[lo:lo + n])) for lo, n in zip(first, counts)]
        order = np.argsort(-row[best], kind="stable")
        rankings.append([Match(docs[i], float(row[best[i]]), chunks[best[i]].start, chunks[best[i]].end,
                               int(counts[i])) for i in order])
    return rankings


def snippet(text: str, width: int = 100) -> str:
    """``text`` on one line (white space runs as one space), cut to ``width`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 3] + "..."


def _print_rankings(queries: list[Query], rankings: list[list[Match]], k: int, as_json: bool) -> None:
    on_topic = judged = 0
    for query, ranking in zip(queries, rankings):
        top = ranking[:k]
        if as_json:
            print(json.dumps({"query": query.text, "topic": query.topic, "ranking": [
                {"id": m.doc.id, "lang": m.doc.lang, "topic": m.doc.topic, "score": round(m.score, 6),
                 "start": m.start, "end": m.end, "chunks": m.chunks, "text": m.text} for m in top]},
                ensure_ascii=False))
            continue
        print(f"query: {query.text}" + (f"  [topic: {query.topic}]" if query.topic else ""))
        for n, m in enumerate(top, start=1):
            mark = "*" if query.topic and m.doc.topic == query.topic else " "
            span = f"[{m.start}:{m.end}] " if m.chunks > 1 else ""  # which part of a long document matched
            print(f"  {n:2d}. {m.score:+.4f} {mark} {m.doc.lang:>3}  {span}{snippet(m.text)}")
        print()
        if query.topic:
            judged += len(top)
            on_topic += sum(m.doc.topic == query.topic for m in top)
    if judged and not as_json:
        docs = [m.doc for m in rankings[0]]
        chance = np.mean([sum(d.topic == q.topic for d in docs) / len(docs) for q in queries if q.topic])
        print(f"on-topic documents in the top {k}: {on_topic}/{judged} ({on_topic / judged:.0%}; chance: {chance:.0%})")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=Path, default=DEFAULT_DOCS,
                        help="JSONL documents with id, lang, topic, text (default: the bundled sample)")
    parser.add_argument("-q", "--query", action="append", default=[],
                        help="a query (repeatable; default: built-in English queries with known topics)")
    parser.add_argument("--task", default=None, help="query instruction (default: the model's own)")
    parser.add_argument("--model", default="mini", help="GGUF file, registry name or hub id (default: the bundled mini)")
    parser.add_argument("--dim", type=int, default=None, help="Matryoshka dimension (default: the model's full one)")
    parser.add_argument("-k", "--top-k", type=int, default=5, help="documents shown per query (default 5)")
    parser.add_argument("--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS,
                        help=f"most tokens per chunk of a long document, the pooling token included "
                             f"(default {DEFAULT_CHUNK_TOKENS})")
    parser.add_argument("--overlap", type=int, default=None,
                        help=f"tokens consecutive chunks of a document share (default: an eighth of --chunk-tokens, "
                             f"{DEFAULT_OVERLAP} at {DEFAULT_CHUNK_TOKENS})")
    parser.add_argument("--json", action="store_true", help="print one JSON object per query")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    if not args.docs.is_file():
        parser.error(f"{args.docs} is not a file")
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.overlap is None:
        args.overlap = args.chunk_tokens // 8
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    queries = [Query(q) for q in args.query] or [Query(text, topic) for text, topic in DEFAULT_QUERIES]
    try:
        docs = load_docs(args.docs)
        with Embedder(args.model) as embedder:
            log.info("ranking %d documents for %d queries with %s", len(docs), len(queries), embedder.path.name)
            rankings = rank(embedder, docs, queries, task=args.task, dim=args.dim, chunk_tokens=args.chunk_tokens,
                            overlap=args.overlap)
    except QembedError as exc:
        log.error("%s", exc)
        return 1
    _print_rankings(queries, rankings, args.top_k, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
