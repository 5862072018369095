"""The counters of an Embedder's work (decode calls, sequences, tokens, cache hits), thread-safe."""

from __future__ import annotations

import dataclasses
import threading

__all__ = ["EmbedderStats"]


@dataclasses.dataclass
class EmbedderStats:
    """Counters of an Embedder's work since it was created (read them, don't write them)."""

    decode_calls: int = 0        # llama_decode calls
    sequences_decoded: int = 0   # inputs that went through the model
    tokens_decoded: int = 0
    cache_hits: int = 0          # inputs answered by the cache, without a decode
    cache_misses: int = 0
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Increment counters atomically (several threads may count at once)."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)
