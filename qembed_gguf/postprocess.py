"""Pure numpy post-processing of pooled vectors: MRL truncation, L2 normalisation, finiteness
checks and output quantization (the precisions sentence-transformers offers)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from .errors import BackendError

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

    int8/uint8 map each dimension's [min, max] (from ``ranges`` of shape (2, d), else from ``x``
    itself) onto 256 levels; binary/ubinary pack the sign bits (``x > 0``), 8 dims per byte, as
    int8 (offset by -128) or uint8.
    """
    if precision == "float32":
        return x.astype(np.float32, copy=False)
    if precision in ("int8", "uint8"):
        if ranges is None:
            if len(x) == 0:
                return np.zeros(x.shape, dtype=np.int8 if precision == "int8" else np.uint8)
            ranges = np.vstack((x.min(axis=0), x.max(axis=0)))
        starts = ranges[0, :]
        steps = (ranges[1, :] - starts) / 255
        scaled = (x - starts) / steps
        if precision == "uint8":
            return scaled.astype(np.uint8)
        return (scaled - 128).astype(np.int8)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(x > 0, axis=-1)
        return (packed.astype(np.int16) - 128).astype(np.int8) if precision == "binary" else packed
    raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
