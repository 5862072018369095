"""The step every embedding path shares around the model: distinct inputs, the vector cache, what
is left to decode, and the rows put back in input order.

``Embedder.embed`` and the server both go through it, so both decode each distinct text of a call
once, answer the same inputs from the cache, count hits and misses the same way and store the
same vectors::

    pending = Pending.look_up(texts, cache, dim=256, normalize=True)   # cache lookup (I/O)
    fresh = decode([pending.texts[k] for k in pending.missing])          # the model, missing only
    vectors = pending.complete(fresh, cacheable=...)                     # rows in input order; stored
"""

from __future__ import annotations

import dataclasses
from typing import Hashable, Sequence

import numpy as np

from .cache import VectorCache
from .errors import InputError

__all__ = ["Pending"]


@dataclasses.dataclass
class Pending:
    """The inputs of one call, grouped: ``texts[k]`` (distinct, in first-seen order) stands for the
    input rows ``rows[k]``; ``found[k]`` is its cached vector, or None where the model must run.
    Inputs may be any hashable model input (token-id tuples too); only texts can be cached."""

    texts: list[Hashable]
    rows: list[list[int]]
    found: list[np.ndarray | None]
    keys: list[bytes] | None
    cache: VectorCache | None
    dim: int
    n_inputs: int

    @classmethod
    def look_up(cls, items: Sequence[Hashable], cache: VectorCache | None, *, dim: int, normalize: bool) -> "Pending":
        """Group ``items`` (model-ready texts, instruction applied) and look the distinct ones up."""
        groups: dict[str, list[int]] = {}
        for i, text in enumerate(items):
            groups.setdefault(text, []).append(i)
        texts = list(groups)
        keys = cache.keys(texts, dim, normalize) if cache is not None and texts else None
        found = cache.lookup(keys, dim) if keys is not None else [None] * len(texts)
        return cls(texts, list(groups.values()), found, keys, cache, dim, len(items))

    @property
    def missing(self) -> list[int]:
        """Indices into :attr:`texts` of what the model must compute."""
        return [k for k, vec in enumerate(self.found) if vec is None]

    @property
    def hits(self) -> int:
        """Inputs (repeats counted) answered by the cache."""
        return sum(len(rows) for rows, vec in zip(self.rows, self.found) if vec is not None) if self.keys else 0

    @property
    def misses(self) -> int:
        """Inputs (repeats counted) the cache did not have; 0 without a cache."""
        return self.n_inputs - self.hits if self.keys else 0

    def complete(self, fresh: np.ndarray, *, cacheable: Sequence[bool] | None = None) -> np.ndarray:
        """The ``(n_inputs, dim)`` float32 result, given the vectors of :attr:`missing` (in that
        order, already truncated and normalised as the call asked). They are stored in the
        cache, except where ``cacheable`` (one flag per missing text) is False."""
        missing = self.missing
        if len(fresh) != len(missing):
            raise InputError(f"{len(fresh)} vectors for {len(missing)} missing texts")
        out = np.empty((self.n_inputs, self.dim), dtype=np.float32)
        for k, vec in zip(missing, fresh):
            self.found[k] = vec
        for rows, vec in zip(self.rows, self.found):
            out[rows] = vec
        if self.keys is not None and missing:
            keep = [j for j in range(len(missing)) if cacheable is None or cacheable[j]]
            self.cache.store([self.keys[missing[j]] for j in keep], np.asarray(fresh)[keep])
        return out
