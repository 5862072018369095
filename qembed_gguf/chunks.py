"""Chunks for knowledge bases: each text split into token windows, one vector per window, each with
the character span of the text it covers (:meth:`Embedder.embed_chunks`).

How a text is cut (all of it pure functions, below):

1. It is tokenized as it is embedded (NFC, then BPE). Every token boundary has a byte offset in the
   NFC text; those that fall between two characters are where a chunk may start or end.
2. Chunks are planned left to right: a chunk holds at most ``chunk_tokens - 1`` content tokens (the
   pooling token makes ``chunk_tokens``). If the rest of the text fits, it is the last chunk.
   Otherwise the chunk ends at the best break near the end of its window: after a blank line (a
   paragraph) in its second half, else after a sentence's end in its last third, else after a line
   break in its last quarter, else at white space or any token boundary in its last eighth; among
   equals, the latest. The next chunk starts ``overlap`` tokens before that end, or a little later
   at the first word boundary of that stretch, so that it does not start inside a word.
3. Character offsets are mapped back to the text as given (which may not be NFC), so
   ``text[start:end]`` is the chunk's text; the chunks of one text are in order, start at 0, end
   at ``len(text)``, and each starts no later than the previous one ended.

A chunk's vector is the model's vector of exactly its tokens (a slice of the text's tokenization,
then the pooling token; with ``query=True`` the query template's tokens first): embedding
``text[start:end]`` on its own tokenizes it the same way except perhaps at its two edges.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import unicodedata
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .errors import BackendError, InputError
from .longinputs import max_overlap
from .validate import check_int, check_texts

if TYPE_CHECKING:  # pragma: no cover
    from .embedder import Embedder

__all__ = ["Chunk", "embed_chunks", "plan_token_spans", "break_quality", "nfc_with_offsets"]

SENTENCE_ENDS = frozenset(".!?;。！？；…")
REACH = {4: 1 / 2, 3: 1 / 3, 2: 1 / 4, 1: 1 / 8, 0: 1 / 8}  # per break quality: how far back from a window's end


@dataclasses.dataclass(frozen=True)
class Chunk:
    """One chunk: input ``index``'s ``chunk``-th window; ``text[start:end]`` is its text; ``n_tokens``
    the tokens embedded (pooling token included); ``vector`` float32 (``dim`` wide)."""

    index: int
    chunk: int
    start: int
    end: int
    n_tokens: int
    vector: np.ndarray = dataclasses.field(repr=False, compare=False)

    def to_dict(self) -> dict:
        """The span as JSON-ready fields (no vector): what ``.spans.jsonl`` holds."""
        return {"index": self.index, "chunk": self.chunk, "start": self.start, "end": self.end,
                "n_tokens": self.n_tokens}


# -- text positions ----------------------------------------------------------------------------------
def nfc_with_offsets(text: str) -> tuple[str, Callable[[int, bool], int]]:
    """The NFC form of ``text`` and a map from its character offsets back to ``text``'s: ``back(i,
    up)`` is exact where the normal forms of both sides agree, else rounded down (``up`` False) or
    up to the nearest such place. Identity for text already in NFC (nearly all text)."""
    if unicodedata.is_normalized("NFC", text):
        return text, lambda i, up: i
    # a cut is safe where normalising the two sides apart changes nothing; checked on the stretch from
    # the second starter (a character of canonical combining class 0) before it to the second after it,
    # which holds everything NFC could compose or reorder across it (a Hangul syllable: three jamo)
    nfc_of = functools.partial(unicodedata.normalize, "NFC")
    starters = [i for i, ch in enumerate(text) if unicodedata.combining(ch) == 0]
    cuts = [0]
    for i in range(1, len(text)):
        s = bisect.bisect_left(starters, i)  # starters[s - 1] < i <= starters[s]
        lo = starters[s - 2] if s >= 2 else 0
        hi = starters[s + 2] if s + 2 < len(starters) else len(text)
        # (a stretch over 64 characters, a long run of combining marks, is not cut: this loop stays linear)
        if hi - lo <= 64 and nfc_of(text[lo:hi]) == nfc_of(text[lo:i]) + nfc_of(text[i:hi]):
            cuts.append(i)
    cuts.append(len(text))
    pieces = [unicodedata.normalize("NFC", text[a:b]) for a, b in zip(cuts, cuts[1:])]
    nfc = "".join(pieces)
    if nfc != unicodedata.normalize("NFC", nfc):  # a composition across a cut this rule did not foresee: no inner offsets
        cuts, pieces = [0, len(text)], [nfc]
    nfc_cuts = [0]
    for p in pieces:
        nfc_cuts.append(nfc_cuts[-1] + len(p))

    def back(i: int, up: bool) -> int:
        k = bisect.bisect_left(nfc_cuts, i) if up else bisect.bisect_right(nfc_cuts, i) - 1
        return cuts[min(k, len(cuts) - 1)]

    return nfc, back


def break_quality(text: str, pos: int) -> int:
    """How good a place ``pos`` (a character offset) is to end a chunk: 4 after a blank line, 3 after
    a sentence's end, 2 after a line break, 1 at white space, 0 elsewhere."""
    before = text[max(0, pos - 256):pos]  # what decides is near: a long text is never copied whole
    tail = before.rstrip(" \t\r")  # CRLF text has the same paragraphs as LF text
    if tail.endswith("\n") and tail[:-1].rstrip(" \t\r").endswith("\n"):
        return 4
    stripped = before.rstrip()
    if stripped and stripped[-1] in SENTENCE_ENDS and (pos == len(text) or text[pos].isspace() or before[-1].isspace()):
        return 3
    if tail.endswith("\n"):
        return 2
    if before and (before[-1].isspace() or (pos < len(text) and text[pos].isspace())):
        return 1
    return 0


def plan_token_spans(bounds: Sequence[int | None], *, budget: int, overlap: int,
                     quality: Callable[[int], int]) -> list[tuple[int, int]]:
    """``[a, b)`` token spans of one text of ``len(bounds) - 1`` tokens: ``bounds[k]`` is the
    character offset of the boundary before token ``k`` (None inside a character; ``bounds[0]`` and
    ``bounds[-1]`` are never None). Each span holds at most ``budget`` tokens and ends at the best
    break (``quality`` of the offset) near its window's end (:data:`REACH`); the next starts ``overlap``
    tokens before the previous end, moved forward to the first break of quality >= 1 (a word boundary) in
    the overlap, else to a character boundary."""
    n = len(bounds) - 1
    if n == 0:
        return [(0, 0)]
    spans, start = [], 0
    while True:
        hard = start + budget
        if hard >= n:
            spans.append((start, n))
            return spans
        valid = [k for k in range(start + 1, hard + 1) if bounds[k] is not None]
        # a break of quality q counts in the last REACH[q] of the window: paragraphs from its middle on,
        # white space only near its end; the best counting one wins, the latest among equals
        counting = [(quality(bounds[k]), k) for k in valid]
        counting = [(q, k) for q, k in counting if k - start >= budget * (1 - REACH[q])]
        end = max(counting)[1] if counting else (valid[-1] if valid else hard)
        spans.append((start, end))
        nxt = max(end - overlap, start + max(1, (end - start) // 2))  # at most half of a chunk cut short
        # the overlap starts at a word (or better) boundary where its stretch has one, else at a character's
        words = [k for k in range(nxt, end) if bounds[k] is not None and quality(bounds[k]) >= 1]
        while nxt < end and bounds[nxt] is None:
            nxt += 1
        start = words[0] if words else nxt


def _token_bounds(nfc: str, lengths: Sequence[int]) -> tuple[list[int | None], list[int]]:
    """Per token boundary: its character offset in ``nfc`` (None inside a character) and the
    offset rounded up to the next character boundary."""
    char_starts = [0]
    for ch in nfc:
        char_starts.append(char_starts[-1] + len(ch.encode("utf-8")))
    offsets = [0]
    for n in lengths:
        offsets.append(offsets[-1] + n)
    if offsets[-1] != char_starts[-1]:
        raise BackendError(f"the tokens of a {len(nfc)}-character text hold {offsets[-1]} bytes, not "
                           f"{char_starts[-1]}: llama.cpp's pieces do not spell the text")
    exact, up = [], []
    for b in offsets:
        k = bisect.bisect_left(char_starts, b)
        exact.append(k if char_starts[k] == b else None)
        up.append(k)
    return exact, up


# -- embedding -----------------------------------------------------------------------------------------
def check_chunking(chunk_tokens: int, overlap: int, *, max_tokens: int | None) -> None:
    """``chunk_tokens`` in ``[2, max_tokens]`` (``max_tokens`` None: not known yet, no upper bound),
    ``overlap`` in ``[0, max_overlap(chunk_tokens)]`` (half of a chunk's content tokens), else InputError."""
    check_int("chunk_tokens", chunk_tokens, lo=2, hi=max_tokens, why="this Embedder's max_tokens")
    check_int("overlap", overlap, lo=0, hi=max_overlap(chunk_tokens),
              why=f"half of the {chunk_tokens - 1} text tokens of a chunk of {chunk_tokens}")


def embed_chunks(embedder: "Embedder", texts: str | Sequence[str], *, chunk_tokens: int, overlap: int = 0,
                 dim: int | None = None, query: bool = False, task: str | None = None,
                 normalize: bool | None = None, batch_tokens: int | None = None) -> list[Chunk]:
    """What :meth:`Embedder.embed_chunks` returns (see there and this module)."""
    items = check_texts(texts)
    check_chunking(chunk_tokens, overlap, max_tokens=embedder.max_tokens)
    budget = chunk_tokens - 1
    prefix: list[int] = []
    if query:  # every chunk is the template's tokens, then its own: they come out of the budget
        prefix = embedder.tokenize(embedder.format_query("", task))[0][:-1]
        budget -= len(prefix)
        if budget < 1:
            raise InputError(f"chunk_tokens={chunk_tokens} leaves no room for text after the query template's "
                             f"{len(prefix)} tokens and the pooling token")
    eos = embedder.pooling_token_id
    records: list[tuple[int, int, int, int]] = []
    sequences: list[list[int]] = []
    for index, text in enumerate(items):
        nfc, back = nfc_with_offsets(text)
        ids = embedder.tokenize(nfc)[0][:-1]  # NFC already: normalising again is a quick check
        exact, up = _token_bounds(nfc, embedder.piece_lengths(ids))
        spans = plan_token_spans(exact, budget=budget, overlap=overlap, quality=lambda pos: break_quality(nfc, pos))
        for chunk, (a, b) in enumerate(spans):
            start = back(exact[a] if exact[a] is not None else up[a] - 1, False)
            end = back(up[b], True)
            records.append((index, chunk, start, end))
            sequences.append(prefix + ids[a:b] + [eos])
    vectors = embedder.finish(embedder.pool(sequences, batch_tokens=batch_tokens), dim=dim, normalize=normalize)
    return [Chunk(i, c, s, e, len(seq), vec) for (i, c, s, e), seq, vec in zip(records, sequences, vectors)]
