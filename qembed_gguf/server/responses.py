"""The OpenAI wire format's answers (pure functions): embeddings and the model list. Requests and
errors are :mod:`.protocol`'s."""

from __future__ import annotations

import base64
from typing import Any, Sequence

import numpy as np

__all__ = ["encode_vector", "embeddings_body", "models_body"]


def encode_vector(vector: np.ndarray, encoding_format: str) -> list[float] | str:
    """One vector as OpenAI encodes it: a list of floats, or base64 of little-endian float32."""
    if encoding_format == "base64":
        return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return vector.astype(np.float32).tolist()


def embeddings_body(vectors: np.ndarray, *, model: str, encoding_format: str, prompt_tokens: int) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode_vector(v, encoding_format)}
                 for i, v in enumerate(vectors)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


def models_body(names: Sequence[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": n, "object": "model", "created": created, "owned_by": "qembed-gguf"}
                                       for n in names]}
