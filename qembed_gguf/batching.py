"""Pure planning of llama.cpp decode batches from token counts.

Measured on a 2-core AVX-512 machine (benchmarks/results/*-embed-*.md): the fastest way to run
many short inputs through llama.cpp is one micro-batch per decode call. A decode of several
micro-batches keeps the first ones' keys and values in the (unified) KV cache, so every later
micro-batch computes masked attention over all of them: packing 8,192 tokens of short texts into
one call was 1.4x slower than calls of 512 tokens. So inputs are sorted by length (longest first,
so that similar lengths share a call), packed greedily into calls of at most ``budget`` tokens
(normally llama.cpp's ``n_ubatch``) and ``max_seqs`` sequences; an input longer than the budget
is decoded alone (its own length is its cost). Each batch lists input indices; the caller restores
input order from them.
"""

from __future__ import annotations

from typing import Sequence

from .errors import InputError

__all__ = ["plan_batches"]


def plan_batches(lengths: Sequence[int], *, budget: int, max_seqs: int) -> list[list[int]]:
    """Group input indices into batches: several inputs with sum(lengths) <= budget, or one longer input.

    At most ``max_seqs`` inputs per batch. The result covers each index exactly once; batch order
    is longest-first. Lengths must be positive (the caller bounds them by the context size).
    """
    if budget < 1 or max_seqs < 1:
        raise InputError(f"budget ({budget}) and max_seqs ({max_seqs}) must be positive")
    bad = [i for i, n in enumerate(lengths) if n < 1]
    if bad:
        raise InputError(f"input {bad[0]} has {lengths[bad[0]]} tokens; each must have at least 1")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order:
        if current and (used + lengths[i] > budget or len(current) >= max_seqs):
            batches.append(current)
            current, used = [], 0
        current.append(i)
        used += lengths[i]
    if current:
        batches.append(current)
    return batches
