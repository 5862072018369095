"""Pure planning of llama.cpp decode batches from token counts.

Inputs are sorted by length (longest first) so that similar lengths share a batch — llama.cpp
computes attention over a whole micro-batch and masks it, so mixing one long and many short
sequences wastes work — then packed greedily under a token budget and a sequence-count limit.
Each batch lists input indices; the caller restores input order from them.
"""

from __future__ import annotations

from typing import Sequence

__all__ = ["plan_batches"]


def plan_batches(lengths: Sequence[int], *, max_tokens: int, max_seqs: int) -> list[list[int]]:
    """Group input indices into batches with sum(lengths) <= max_tokens and <= max_seqs each.

    Every length must already fit ``max_tokens`` (the caller truncates or rejects longer ones).
    The result covers each index exactly once; batch order is longest-first.
    """
    if max_tokens < 1 or max_seqs < 1:
        raise ValueError(f"max_tokens ({max_tokens}) and max_seqs ({max_seqs}) must be positive")
    too_long = [i for i, n in enumerate(lengths) if n > max_tokens or n < 1]
    if too_long:
        i = too_long[0]
        raise ValueError(f"input {i} has {lengths[i]} tokens; each must be in [1, {max_tokens}]")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and (used + lengths[i] > max_tokens or len(current) >= max_seqs):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches
