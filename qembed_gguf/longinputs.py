"""What happens to an input longer than ``max_tokens``: the long-input policy, as pure functions.

Three policies (``Embedder(long_inputs=...)``, the server's ``"long_inputs"`` field, ``qembed-gguf
embed --long-inputs``):

- ``"truncate"``: the input is cut to ``max_tokens - 1`` tokens and the pooling token (one warning
  per call);
- ``"error"``: :class:`InputTooLongError` names the first such input;
- ``"chunk"``: the input's content tokens (all but the pooling token) are split into windows of
  ``max_tokens - 1`` tokens, consecutive windows sharing ``overlap`` tokens (the last window may be
  shorter); each window, followed by the pooling token, is embedded as an input of its own; the
  input's vector is the mean of its windows' vectors, each first truncated to ``dim`` and
  L2-normalised, weighted by the window's content tokens, then L2-normalised again (when the call
  normalises). An input that fits is embedded exactly as under the other policies.

:func:`plan` turns prepared sequences into a :class:`Plan` (what to decode, and which input each
decoded row belongs to); :meth:`Plan.combine` turns the decoded rows back into one vector per input.
Everything here is numpy and lists: the Embedder and the server's batcher both use it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from .errors import InputError
from .postprocess import l2_normalize, truncate_dim
from .validate import fit_sequences

__all__ = ["LONG_INPUTS", "Plan", "check_policy", "max_overlap", "resolve_policy", "plan", "tokens_as_decoded",
           "window_spans"]

LONG_INPUTS = ("truncate", "error", "chunk")


def max_overlap(window_tokens: int) -> int:
    """The most tokens consecutive windows (or chunks) of ``window_tokens`` tokens, the pooling token
    included, may share: half of their content, so that each moves on by at least as much as it
    repeats and a text costs at most about twice its tokens."""
    return max(window_tokens - 1, 0) // 2


def check_policy(long_inputs: str, overlap: int, *, max_tokens: int) -> tuple[str, int]:
    """``(long_inputs, overlap)`` if valid for a model with ``max_tokens``, else :class:`InputError`:
    the policy one of :data:`LONG_INPUTS`, the overlap an int in ``[0, max_overlap(max_tokens)]``
    (half of a window's ``max_tokens - 1`` content tokens)."""
    if long_inputs not in LONG_INPUTS:
        raise InputError(f"long_inputs must be one of {', '.join(map(repr, LONG_INPUTS))}, got {long_inputs!r}")
    if long_inputs == "chunk" and max_tokens < 2:
        raise InputError(f"long_inputs='chunk' needs max_tokens >= 2 (a window of one token and the pooling "
                         f"token), got {max_tokens}")
    hi = max_overlap(max_tokens)
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap <= hi:
        raise InputError(f"chunk_overlap must be an integer in [0, {hi}] (at most half of the {max_tokens - 1} "
                         f"content tokens of a window), got {overlap!r}")
    return long_inputs, int(overlap)


def resolve_policy(long_inputs: str | None, truncate: bool | None, overlap: int, *,
                   max_tokens: int) -> tuple[str, int]:
    """The policy from ``long_inputs`` and its older spelling ``truncate`` (True: ``"truncate"``,
    False: ``"error"``); both None: ``"truncate"``. Both given and disagreeing: :class:`InputError`."""
    if truncate is not None and not isinstance(truncate, bool):
        raise InputError(f"truncate must be True or False, got {truncate!r}")
    implied = None if truncate is None else ("truncate" if truncate else "error")
    if long_inputs is not None and implied is not None and long_inputs != implied:
        raise InputError(f"long_inputs={long_inputs!r} contradicts truncate={truncate!r} (give only long_inputs)")
    return check_policy(long_inputs or implied or "truncate", overlap, max_tokens=max_tokens)


def window_spans(n: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans over ``n`` tokens: windows of ``window`` tokens from 0, each starting
    ``overlap`` tokens before the previous one ended, the last ending at ``n`` (possibly shorter).
    ``n <= window`` gives the one span ``(0, n)``."""
    if window < 1 or not 0 <= overlap < window:
        raise InputError(f"a window of {window} tokens cannot overlap the next by {overlap}")
    spans, start = [], 0
    while True:
        end = min(start + window, n)
        spans.append((start, end))
        if end >= n:
            return spans
        start = end - overlap


def tokens_as_decoded(n: int, *, max_tokens: int, long_inputs: str, overlap: int) -> int:
    """Tokens an input of ``n`` tokens (pooling token included) costs as decoded under
    ``long_inputs``: ``n`` if it fits (or under ``"error"``, which refuses it), ``max_tokens`` if
    truncated, every window's tokens (pooling tokens included) if chunked — as
    :func:`plan` counts them, in constant time (an overlap near the window
    makes a window per token: counting them must not cost that)."""
    if n <= max_tokens or long_inputs == "error":
        return n
    if long_inputs == "truncate":
        return max_tokens
    content, window = n - 1, max_tokens - 1  # consecutive windows share exactly `overlap` tokens
    windows = 1 + -(-(content - window) // (window - overlap))
    return content + (windows - 1) * overlap + windows


@dataclasses.dataclass(frozen=True)
class Plan:
    """Prepared inputs with the long-input policy applied.

    ``sequences``: what to decode, each at most ``max_tokens`` tokens and ending with the pooling
    token; ``owner[j]``: the input sequence ``j`` belongs to (non-decreasing); ``weights[j]``: its
    content tokens (the chunk policy's weights); ``n_tokens[i]``: the tokens input ``i`` costs as
    decoded (all its windows, pooling tokens included); ``cut[i]``: input ``i`` was longer than
    ``max_tokens`` (truncated or chunked)."""

    sequences: list[list[int]]
    owner: np.ndarray
    weights: np.ndarray
    n_tokens: list[int]
    cut: list[bool]

    @property
    def n_inputs(self) -> int:
        return len(self.n_tokens)

    @property
    def chunked(self) -> bool:
        """Whether some input is split into more than one window."""
        return len(self.sequences) > self.n_inputs

    def select(self, keep: Sequence[bool]) -> "Plan":
        """The plan of the inputs where ``keep`` is True (renumbered in order)."""
        if len(keep) != self.n_inputs:
            raise InputError(f"{len(keep)} flags for {self.n_inputs} inputs")
        new_index = np.cumsum(keep) - 1
        rows = [j for j, i in enumerate(self.owner) if keep[i]]
        return Plan([self.sequences[j] for j in rows], new_index[self.owner[rows]].astype(np.int64),
                     self.weights[rows], [n for n, k in zip(self.n_tokens, keep) if k],
                     [c for c, k in zip(self.cut, keep) if k])

    def combine(self, pooled: np.ndarray, *, dim: int | None, normalize: bool) -> np.ndarray:
        """One float32 vector per input from the pooled rows of :attr:`sequences` (in order, full
        dim): truncated to ``dim`` and (if ``normalize``) L2-normalised; an input of several windows
        is the content-token-weighted mean of its windows' truncated, L2-normalised vectors, then
        normalised again (if ``normalize``)."""
        if len(pooled) != len(self.sequences):
            raise InputError(f"{len(pooled)} pooled rows for {len(self.sequences)} planned sequences")
        vectors = truncate_dim(pooled, dim)
        out = l2_normalize(vectors) if normalize else np.array(vectors, dtype=np.float32)
        if not self.chunked:
            return out
        counts = np.bincount(self.owner, minlength=self.n_inputs)
        first = np.searchsorted(self.owner, np.arange(self.n_inputs))  # each input's first row
        result = out[first]  # inputs of one window: as without chunks
        for i in np.flatnonzero(counts > 1):
            lo, hi = first[i], first[i] + counts[i]
            unit = l2_normalize(vectors[lo:hi]).astype(np.float64)
            mean = (self.weights[lo:hi, None] * unit).sum(axis=0) / self.weights[lo:hi].sum()
            result[i] = l2_normalize(mean[None, :].astype(np.float32))[0] if normalize else mean
        return np.ascontiguousarray(result, dtype=np.float32)


def plan(sequences: list[list[int]], *, limit: int, eos: int, long_inputs: str, overlap: int = 0,
         rows: Sequence[Sequence[int]] | None = None) -> Plan:
    """The :class:`Plan` of prepared ``sequences`` (each ending with the pooling token ``eos``)
    under ``long_inputs`` with inputs of at most ``limit`` tokens. ``"truncate"`` and ``"error"``
    are :func:`qembed_gguf.validate.fit_sequences` (``rows``: the caller's input indices each
    sequence stands for, for its messages)."""
    n = len(sequences)
    cut = [len(s) > limit for s in sequences]
    if long_inputs != "chunk" or not any(cut):
        fitted = fit_sequences(sequences, limit=limit, eos=eos, truncate=long_inputs != "error", rows=rows)
        return Plan(fitted, np.arange(n, dtype=np.int64),
                    np.array([len(s) - 1 for s in fitted], dtype=np.float64), [len(s) for s in fitted], cut)
    out: list[list[int]] = []
    owner: list[int] = []
    weights: list[int] = []
    n_tokens: list[int] = []
    for i, seq in enumerate(sequences):
        if len(seq) <= limit:
            out.append(seq)
            owner.append(i)
            weights.append(len(seq) - 1)
            n_tokens.append(len(seq))
            continue
        content = seq[:-1]
        spans = window_spans(len(content), limit - 1, overlap)
        out.extend(content[a:b] + [eos] for a, b in spans)
        owner.extend([i] * len(spans))
        weights.extend(b - a for a, b in spans)
        n_tokens.append(sum(b - a + 1 for a, b in spans))
    return Plan(out, np.array(owner, dtype=np.int64), np.array(weights, dtype=np.float64), n_tokens, cut)
