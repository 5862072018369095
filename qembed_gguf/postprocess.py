"""Pure numpy post-processing of pooled vectors: MRL truncation, L2 normalisation, finiteness
checks and output quantization (the precisions sentence-transformers offers)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import BackendError, InputError

__all__ = ["Precision", "PRECISIONS", "truncate_dim", "l2_normalize", "check_finite", "quantize_embeddings"]

Precision = Literal["float32", "int8", "uint8", "binary", "ubinary"]
PRECISIONS: tuple[str, ...] = ("float32", "int8", "uint8", "binary", "ubinary")
EPS = 1e-12


def truncate_dim(x: np.ndarray, dim: int | None) -> np.ndarray:
    """Matryoshka: keep the first ``dim`` dimensions (None keeps all). Truncate BEFORE normalising."""
    return x if dim is None or dim >= x.shape[-1] else x[..., :dim]


def l2_normalize(x: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Rows scaled to unit L2 norm, computed in float64; an all-zero row stays zero (eps guard)."""
    x64 = x.astype(np.float64, copy=False)
    norms = np.linalg.norm(x64, axis=-1, keepdims=True)
    return (x64 / np.maximum(norms, eps)).astype(np.float32)


def check_finite(x: np.ndarray, *, what: str = "embedding") -> None:
    """Raise if any row holds NaN or inf (a broken file or backend), naming the first bad row."""
    bad = ~np.isfinite(x).all(axis=-1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise BackendError(f"llama.cpp returned a non-finite {what} for input index {int(rows[0])} "
                           f"({len(rows)} input(s) affected); the model file may be corrupt")


def quantize_embeddings(x: np.ndarray, precision: str, *, ranges: np.ndarray | None = None) -> np.ndarray:
    """Quantize float embeddings as sentence-transformers' ``quantize_embeddings`` does.

    int8/uint8 map each dimension's [min, max] (from ``ranges`` of shape (2, d), else from the rows
    of ``x``, which then must be at least two) onto 256 buckets; binary/ubinary pack the sign bits
    (``x > 0``), 8 dims per byte, as int8 (offset by -128) or uint8.
    """
    if precision not in PRECISIONS:
        raise InputError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "float32":
        return x.astype(np.float32, copy=False)
    if x.ndim == 2 and x.shape[0] == 0:
        width = x.shape[1] if precision.endswith("int8") else (x.shape[1] + 7) // 8
        return np.zeros((0, width), dtype=np.uint8 if precision.startswith("u") else np.int8)
    if precision in ("int8", "uint8"):
        if ranges is None:
            if x.ndim == 1 or x.shape[0] == 1:
                raise InputError(f"cannot compute {precision} buckets from a single embedding; pass ranges "
                                 f"(shape (2, dim): per-dimension min and max) from a representative set")
            ranges = np.vstack((x.min(axis=0), x.max(axis=0)))
        ranges = np.asarray(ranges, dtype=np.float32)
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        steps = np.where(steps == 0, 1, steps)
        buckets = np.clip(np.floor((x - starts) / steps), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(x > 0, axis=-1)
    return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
