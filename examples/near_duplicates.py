"""Find near-duplicate lines in a text file with small Matryoshka embeddings.

Each non-blank line is embedded as a document at a small dimension (default: the model's
smallest Matryoshka dimension, 32 for Qwen3-Embedding: cheap to store and compare), every pair of
lines whose cosine similarity is at least ``--threshold`` is linked, and the linked lines are
printed as groups (connected components, found with union-find). Identical lines are embedded
once and always land in the same group; with a real model, lines that differ only in case,
spacing or punctuation join them.

Run it on the bundled sample with the bundled ``mini`` model (small, English; it finds the exact
duplicates and groups the lines that differ in case or spacing)::

    python examples/near_duplicates.py

With a real model (converted once from the Hugging Face hub, or any Qwen3-Embedding ``.gguf``)::

    python examples/near_duplicates.py examples/data/near_dups.txt --model qwen3-embedding-0.6b \\
        --dim 128 --threshold 0.9

Pairs are found with blockwise matrix products (memory ``block x lines``), so files of a few
hundred thousand lines work; beyond that, use an approximate index (e.g. FAISS) instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from qembed_gguf import Embedder
from qembed_gguf.errors import QembedError

log = logging.getLogger("near_duplicates")

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "near_dups.txt"


@dataclasses.dataclass(frozen=True)
class Line:
    number: int  # 1-based
    text: str


@dataclasses.dataclass(frozen=True)
class Group:
    """Lines linked by chains of similar pairs; ``similarity[i]``: cosine of line i to the first line."""

    lines: list[Line]
    similarity: list[float]


def read_lines(path: Path) -> list[Line]:
    """The file's non-blank lines (line endings removed, other whitespace kept)."""
    with path.open(encoding="utf-8") as f:
        return [Line(n, raw.rstrip("\r\n")) for n, raw in enumerate(f, start=1) if raw.strip()]


def similar_pairs(vectors: np.ndarray, threshold: float, *, block: int = 1024) -> Iterator[tuple[int, int]]:
    """Every pair ``(i, j)``, ``i < j``, of rows whose inner product (cosine, for unit rows) >= threshold."""
    n = len(vectors)
    for start in range(0, n, block):
        sims = vectors[start:start + block] @ vectors.T
        rows, cols = np.nonzero(sims >= threshold)
        rows += start
        keep = cols > rows
        yield from zip(rows[keep].tolist(), cols[keep].tolist())


def connected_components(n: int, pairs: Iterable[tuple[int, int]]) -> list[list[int]]:
    """The connected components of the graph on ``0..n-1`` with edges ``pairs``, singletons
    included, each sorted, in order of their smallest member (union-find with path halving)."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(root(i), []).append(i)
    return sorted(members.values(), key=lambda m: m[0])


def find_near_duplicates(embedder: Embedder, lines: list[Line], *, dim: int | None = None,
                         threshold: float = 0.95, block: int = 1024) -> list[Group]:
    """Groups of two lines or more, linked by cosine >= ``threshold`` at Matryoshka ``dim``
    (default: the model's smallest), in order of their first line.

    Identical texts are embedded once: they share one vector, so they always share a group.
    """
    dim = embedder.mrl_min_dim if dim is None else dim
    unique = list(dict.fromkeys(line.text for line in lines))  # in order of first occurrence
    started = time.perf_counter()
    vectors = embedder.embed_documents(unique, dim=dim, normalize=True)
    log.info("embedded %d unique texts of %d lines at dim %d in %.2f s", len(unique), len(lines), dim,
             time.perf_counter() - started)
    row_of = {text: i for i, text in enumerate(unique)}
    lines_of: list[list[Line]] = [[] for _ in unique]
    for line in lines:
        lines_of[row_of[line.text]].append(line)

    groups = []
    for rows in connected_components(len(unique), similar_pairs(vectors, threshold, block=block)):
        members = sorted((line for r in rows for line in lines_of[r]), key=lambda line: line.number)
        if len(members) > 1:
            first = vectors[row_of[members[0].text]]
            groups.append(Group(members, [float(vectors[row_of[line.text]] @ first) for line in members]))
    return groups


def _print_groups(groups: list[Group], n_lines: int, as_json: bool) -> None:
    for k, group in enumerate(groups, start=1):
        if as_json:
            print(json.dumps({"group": k, "lines": [line.number for line in group.lines],
                              "texts": [line.text for line in group.lines],
                              "similarity": [round(s, 6) for s in group.similarity]}, ensure_ascii=False))
            continue
        print(f"group {k}: {len(group.lines)} lines")
        for line, sim in zip(group.lines, group.similarity):
            print(f"  line {line.number:>5}  {sim:.4f}  {line.text}")
    if not as_json:
        redundant = sum(len(g.lines) - 1 for g in groups)  # all but one line of each group
        print(f"{n_lines} lines, {len(groups)} groups, {redundant} redundant lines")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE,
                        help="UTF-8 text file, one text per line (default: the bundled sample)")
    parser.add_argument("--model", default="mini", help="GGUF file, registry name or hub id (default: the bundled mini)")
    parser.add_argument("--dim", type=int, default=None,
                        help="Matryoshka dimension (default: the model's smallest, mrl_min_dim)")
    parser.add_argument("--threshold", type=float, default=0.95,
                        help="link two lines whose cosine similarity is at least this (default 0.95)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per group")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress to stderr")
    args = parser.parse_args(argv)
    if not args.file.is_file():
        parser.error(f"{args.file} is not a file")
    if not -1.0 <= args.threshold <= 1.0:
        parser.error("--threshold must be a cosine similarity, in [-1, 1]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    lines = read_lines(args.file)
    try:
        with Embedder(args.model) as embedder:
            groups = find_near_duplicates(embedder, lines, dim=args.dim, threshold=args.threshold)
    except QembedError as exc:
        log.error("%s", exc)
        return 1
    _print_groups(groups, len(lines), args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
