"""The OpenAI embeddings wire format: request validation and response bodies (pure functions).

Requests (``POST /v1/embeddings``) follow OpenAI's schema, with two extensions::

    {"model": "...", "input": "text" | ["text", ...] | [1, 2, 3] | [[1, 2], [3]],
     "dimensions": 256,                      # Matryoshka: truncate, then L2-normalise
     "encoding_format": "float" | "base64",  # base64: little-endian float32, as OpenAI
     "input_type": "query" | "document",     # extension: query = the model's default instruction
     "instruction": "Given a question, ...", # extension: a query instruction (task) of your own
     "truncate": false,                      # extension: cut over-long inputs instead of a 400
     "user": "..."}                          # accepted, ignored

Every problem becomes an :class:`APIError` carrying the HTTP status and OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``; messages name the field and the input index.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from typing import Any, Sequence

import numpy as np

__all__ = ["APIError", "Limits", "EmbeddingRequest", "parse_embedding_request", "encode_vector",
           "embeddings_body", "models_body", "error_body"]

ENCODINGS = ("float", "base64")
INPUT_TYPES = ("query", "document")


class APIError(Exception):
    """An error answered to the client as OpenAI does: HTTP status + ``{"error": {...}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(message: str, *, type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request size limits of a server."""

    max_inputs: int = 2048            # inputs per request (OpenAI's limit)
    max_body_bytes: int = 16 << 20    # request body
    max_input_tokens: int = 8192      # tokens per input, pooling token included (the server uses Embedder.max_tokens):
                                      # token-id inputs are checked while parsing, texts once tokenized


@dataclasses.dataclass(frozen=True)
class EmbeddingRequest:
    """A validated request. Exactly one of ``texts`` / ``tokens`` is set."""

    model: str
    texts: list[str] | None
    tokens: list[list[int]] | None
    dim: int | None
    encoding_format: str
    instruction: str | None           # None: documents (raw text)
    truncate: bool

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.tokens)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _parse_input(value: Any, limits: Limits, n_vocab: int) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(value, str):
        return [value], None
    if not isinstance(value, list):
        raise _bad(f"'input' must be a string, a list of strings, a list of token ids or a list of such lists; "
                   f"got {type(value).__name__}", "input", "invalid_type")
    if not value:
        raise _bad("'input' is an empty list", "input")
    if all(_is_int(x) for x in value):
        value = [value]  # one pre-tokenized input
    if len(value) > limits.max_inputs:
        raise _bad(f"'input' has {len(value)} items, more than this server's limit of {limits.max_inputs} per "
                   f"request; split it", "input", "too_many_inputs")
    if isinstance(value[0], str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _bad(f"input[{i}] is {type(item).__name__}, not a string: 'input' must be all strings or all "
                           f"token-id lists", f"input[{i}]", "invalid_type")
        return list(value), None
    tokens = []
    for i, item in enumerate(value):
        if not isinstance(item, list):
            raise _bad(f"input[{i}] is {type(item).__name__}, not a list of token ids: 'input' must be all strings "
                       f"or all token-id lists", f"input[{i}]", "invalid_type")
        if not item:
            raise _bad(f"input[{i}] is an empty token list", f"input[{i}]")
        for j, t in enumerate(item):
            if not _is_int(t):
                raise _bad(f"input[{i}][{j}] is {type(t).__name__}, not an integer token id", f"input[{i}]",
                           "invalid_type")
            if not 0 <= t < n_vocab:
                raise _bad(f"input[{i}][{j}] = {t} is not a token id of this model (0..{n_vocab - 1})",
                           f"input[{i}]")
        tokens.append(item)
    return None, tokens


def parse_embedding_request(body: bytes, *, served: Sequence[str], full_dim: int, min_dim: int, default_task: str,
                            n_vocab: int, eos_id: int, limits: Limits,
                            truncate_default: bool = False) -> EmbeddingRequest:
    """Validate a request body; raises :class:`APIError` (4xx) naming the offending field."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(obj).__name__}", code="invalid_json")

    model = obj.get("model")
    if model is None:
        raise _bad("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {type(model).__name__}", "model", "invalid_type")
    if model not in served:
        raise APIError(404, f"the model {model!r} does not exist on this server (it serves: {', '.join(served)})",
                       param="model", code="model_not_found")

    if "input" not in obj:
        raise _bad("'input' is required", "input", "missing_required_parameter")
    texts, tokens = _parse_input(obj["input"], limits, n_vocab)

    dim = obj.get("dimensions")
    if dim is not None:
        if not _is_int(dim):
            raise _bad(f"'dimensions' must be an integer, got {type(dim).__name__}", "dimensions", "invalid_type")
        if not min_dim <= dim <= full_dim:
            raise _bad(f"'dimensions' must be in [{min_dim}, {full_dim}] for this model (Matryoshka range), got {dim}",
                       "dimensions")

    fmt = obj.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODINGS:
        raise _bad(f"'encoding_format' must be one of {', '.join(ENCODINGS)}, got {fmt!r}", "encoding_format")

    input_type = obj.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise _bad(f"'input_type' must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}", "input_type")
    instruction = obj.get("instruction")
    if instruction is not None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise _bad("'instruction' must be a non-empty string", "instruction",
                       "invalid_type" if not isinstance(instruction, str) else "invalid_value")
        if input_type == "document":
            raise _bad("'instruction' applies to queries; it contradicts input_type='document'", "instruction")
    elif input_type == "query":
        instruction = default_task
    if instruction is not None and tokens is not None:
        raise _bad("an instruction (or input_type='query') needs text input, not token ids", "input")

    truncate = obj.get("truncate", truncate_default)
    if not isinstance(truncate, bool):
        raise _bad(f"'truncate' must be a boolean, got {type(truncate).__name__}", "truncate", "invalid_type")
    if tokens is not None and not truncate:
        for i, seq in enumerate(tokens):
            n = len(seq) + (seq[-1] != eos_id)  # the pooling token is appended unless present
            if n > limits.max_input_tokens:
                raise APIError(400, f"input[{i}] has {n} tokens, more than this server's limit of "
                                    f"{limits.max_input_tokens} (pooling token included); shorten it or send "
                                    f"\"truncate\": true", param=f"input[{i}]", code="input_too_long")
    return EmbeddingRequest(model=model, texts=texts, tokens=tokens, dim=dim, encoding_format=fmt,
                            instruction=instruction, truncate=truncate)


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
