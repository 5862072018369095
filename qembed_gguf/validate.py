"""Validation of user-given values shared by the library, the CLI and the server (pure functions).

Each raises an :class:`~qembed_gguf.errors.InputError` subclass whose message names the value and
what is wrong with it.
"""

from __future__ import annotations

import logging
import math
import unicodedata
from typing import Iterable, Sequence

import numpy as np

from .errors import InputError, InputTooLongError, InputTypeError, InvalidTextError

__all__ = ["check_int", "check_number", "check_text", "check_texts", "check_text_items", "check_token_ids", "check_token_lists",
           "lone_surrogate",
           "context_sizes", "fit_sequences", "DEFAULT_MAX_TOKENS", "MAX_SEQUENCES", "MAX_THREADS"]

log = logging.getLogger("qembed_gguf.embedder")  # the truncation warning is the Embedder's

DEFAULT_MAX_TOKENS = 8192
MAX_SEQUENCES = 256   # llama.cpp's LLAMA_MAX_SEQ: sequences of one context
MAX_THREADS = 512     # ggml's GGML_MAX_N_THREADS


def check_int(name: str, value, *, lo: int = 1, hi: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``[lo, hi]``; else :class:`InputError` saying so (numpy ints accepted).
    ``why`` names the upper bound, e.g. "ggml's GGML_MAX_N_THREADS"."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise InputError(f"{name} must be a positive integer, got {value!r}" if lo == 1 else
                         f"{name} must be an integer >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise InputError(f"{name}={value} is more than {why or 'the limit'}, {hi}")
    return int(value)


def check_number(name: str, value, *, positive: bool) -> float:
    """A finite, non-negative (``positive``: > 0) int or float; else :class:`InputError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise InputError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return value


def lone_surrogate(text: str) -> int | None:
    """The character offset of the first lone surrogate in ``text`` (which UTF-8 cannot encode), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


MAX_MARK_RUN = 256  # combining marks in a row; Unicode's stream-safe format allows 30


def long_mark_run(text: str) -> tuple[int, int] | None:
    """(position, length) of the first run of more than :data:`MAX_MARK_RUN` combining marks in a
    text that is not in NFC, or None. NFC reorders such a run by insertion sort (CPython's
    ``unicodedata``): a few hundred kilobytes of alternating marks would hold a call for minutes."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return None
    run = 0
    for i, ch in enumerate(text):
        run = run + 1 if unicodedata.combining(ch) else 0
        if run > MAX_MARK_RUN:
            start = i - run + 1
            while start + run < len(text) and unicodedata.combining(text[start + run]):
                run += 1
            return start, run
    return None


def check_text(text: str, what: str, index: int | None = None) -> str:
    """``text`` if it can be encoded as UTF-8 and normalised quickly; else :class:`InvalidTextError`
    naming the first lone surrogate's position (``json.loads('"\\ud800"')`` gives such a string) or
    the first run of more than :data:`MAX_MARK_RUN` combining marks (in text not already NFC)."""
    at = lone_surrogate(text)
    where = f"{what}[{index}]" if index is not None else what
    if at is None:
        run = long_mark_run(text)
        if run is None:
            return text
        raise InvalidTextError(
            f"{where} holds a run of {run[1]} combining marks at character {run[0]} (at most {MAX_MARK_RUN} in a "
            f"row): not text a model can read", what=what, index=index, position=run[0])
    raise InvalidTextError(
        f"{where} holds a lone surrogate {text[at]!r} at character {at}: it is not valid Unicode text (decode the "
        f"source bytes with errors='replace', or fix the escape)", what=what, index=index, position=at)


def check_texts(texts: str | Sequence[str]) -> list[str]:
    """``texts`` (one string, or an iterable of them) as a list; a non-string item is an
    :class:`InputTypeError` and a lone surrogate an :class:`InvalidTextError`, naming the index."""
    if isinstance(texts, str):
        return [check_text(texts, "texts", 0)]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise InputTypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    return check_text_items(texts, "texts")


def check_text_items(items: Iterable, name: str) -> list[str]:
    """``items`` as a list, each a valid text (:func:`check_text`); a non-string is an
    :class:`InputTypeError` naming ``name[i]``."""
    items = list(items)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise InputTypeError(f"{name}[{i}] is {type(t).__name__}, not str")
        check_text(t, name, i)
    return items


def check_token_lists(inputs: Sequence[Sequence[int]], n_vocab: int) -> list[list[int]]:
    """Validate token-id inputs: non-empty lists of ints in ``[0, n_vocab)``; errors name the input."""
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Iterable):
        raise InputTypeError(f"token inputs must be a sequence of token-id lists, got {type(inputs).__name__}")
    out = []
    for i, seq in enumerate(inputs):
        if isinstance(seq, np.ndarray) and seq.ndim == 1 and np.issubdtype(seq.dtype, np.integer):
            seq = seq.tolist()
        if isinstance(seq, (str, bytes)) or not isinstance(seq, Sequence):
            raise InputTypeError(f"tokens[{i}] is {type(seq).__name__}, not a list of token ids")
        if not seq:
            raise InputError(f"tokens[{i}] is empty")
        for j, t in enumerate(seq):
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
                raise InputTypeError(f"tokens[{i}][{j}] is {type(t).__name__}, not an integer token id")
            if not 0 <= t < n_vocab:
                raise InputError(f"tokens[{i}][{j}] = {t} is not a token id of this model (vocabulary: 0..{n_vocab - 1})")
        out.append([int(t) for t in seq])
    return out


def check_token_ids(ids: Sequence[int], n_vocab: int, what: str = "ids") -> list[int]:
    """One sequence of token ids (a list, tuple or 1-D integer array; may be empty) as a list of ints in
    ``[0, n_vocab)``; else :class:`InputTypeError` / :class:`InputError` naming the position."""
    if isinstance(ids, np.ndarray) and ids.ndim == 1 and np.issubdtype(ids.dtype, np.integer):
        ids = ids.tolist()
    if isinstance(ids, (str, bytes, bytearray)) or not isinstance(ids, Sequence):
        raise InputTypeError(f"{what} must be a sequence of integer token ids, got {type(ids).__name__}")
    for j, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, (int, np.integer)):
            hint = " (one sequence of ids per call)" if isinstance(t, (list, tuple, np.ndarray)) else ""
            raise InputTypeError(f"{what}[{j}] is {type(t).__name__}, not an integer token id{hint}")
        if not 0 <= t < n_vocab:
            raise InputError(f"{what}[{j}] = {t} is not a token id of this model (vocabulary: 0..{n_vocab - 1})")
    return [int(t) for t in ids]


def context_sizes(*, max_tokens: int | None, n_ctx: int | None, n_ubatch: int, trained: int) -> tuple[int, int, int]:
    """``(max_tokens, n_ctx, n_ubatch)`` after defaults and bounds, or :class:`InputError`.

    Every bound is one a setting could otherwise break silently or expensively: an input longer
    than the model's trained context (``trained``, ``{arch}.context_length``) runs on positions
    the model never saw, and a context above it only serves packing, which the measurements
    found slower than ``n_ubatch``-token calls. So ``max_tokens <= n_ctx <= trained`` and
    ``n_ubatch <= n_ctx`` (a larger micro-batch is clamped to the context). Memory follows what is
    used, not these bounds: the KV cache starts at ``n_ubatch`` tokens and grows on demand.
    """
    limit = "the model's trained context (its context_length) in tokens"
    if max_tokens is None:
        max_tokens = min(DEFAULT_MAX_TOKENS, trained)
    max_tokens = check_int("max_tokens", max_tokens, hi=trained, why=limit)
    n_ubatch = check_int("n_ubatch", n_ubatch)
    if n_ctx is None:
        n_ctx = min(max(max_tokens, n_ubatch), trained)
    n_ctx = check_int("n_ctx", n_ctx, hi=trained, why=limit)
    if n_ctx < max_tokens:
        raise InputError(f"n_ctx ({n_ctx}) must be >= max_tokens ({max_tokens}): every input must fit one decode "
                         f"batch")
    return max_tokens, n_ctx, min(n_ubatch, n_ctx)


def fit_sequences(sequences: list[list[int]], *, limit: int, eos: int, truncate: bool,
                  rows: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
    """The ``max_tokens`` rule on token sequences that end with the pooling token ``eos``: those
    longer than ``limit`` are cut to ``limit - 1`` tokens + ``eos`` (one warning for the call), or,
    without ``truncate``, :class:`InputTooLongError` names the first. ``rows[k]``: the caller's input
    indices that sequence ``k`` stands for (distinct texts decoded once), so messages name those."""
    long = [k for k, s in enumerate(sequences) if len(s) > limit]
    if not long:
        return sequences
    where = (lambda k: rows[k]) if rows is not None else (lambda k: (k,))
    n_long = sum(len(where(k)) for k in long)
    first_k = min(long, key=lambda k: where(k)[0])
    first, n = where(first_k)[0], len(sequences[first_k])
    if not truncate:
        raise InputTooLongError(
            f"input {first} has {n} tokens, more than max_tokens={limit} ({n_long} input(s) too long); "
            f"shorten it, or use long_inputs=\"truncate\" or \"chunk\"", index=first, n_tokens=n, max_tokens=limit)
    log.warning("%d input(s) longer than max_tokens=%d were truncated (first: input %d, %d tokens)",
                n_long, limit, first, n)
    return [s if len(s) <= limit else s[:limit - 1] + [eos] for s in sequences]
