"""The OpenAI embeddings wire format: request validation and response bodies (pure functions).

Requests (``POST /v1/embeddings``) follow OpenAI's schema, with extensions::

    {"model": "...", "input": "text" | ["text", ...] | [1, 2, 3] | [[1, 2], [3]],
     "dimensions": 256,                      # Matryoshka: truncate, then L2-normalise
     "encoding_format": "float" | "base64",  # base64: little-endian float32, as OpenAI
     "input_type": "query" | "document",     # extension: query = the model's default instruction
     "instruction": "Given a question, ...", # extension: a query instruction (task) of your own
     "long_inputs": "truncate" | "error" | "chunk",  # extension: what an input over max_tokens gets
     "truncate": false,                      # extension, older spelling: true = "truncate", false = "error"
     "user": "..."}                          # accepted, ignored

``POST /tokenize`` (``{"model", "input": "text" | ["text", ...]}``) and ``POST /detokenize``
(``{"model", "tokens": [[id, ...], ...] | [id, ...]}``) take the same ``model`` and the same rules.

Every problem becomes an :class:`APIError` carrying the HTTP status and OpenAI's error body
``{"error": {"message", "type", "param", "code"}}``; messages name the field and the input index.

The body must be strict JSON in UTF-8: nesting deeper than :data:`MAX_JSON_DEPTH` (checked
before parsing, so no input can exhaust the parser's recursion), ``NaN``/``Infinity`` (which
Python's ``json`` accepts and JSON does not) and strings holding a lone surrogate (``"\\ud800"``:
valid JSON syntax, not valid Unicode text) are refused, naming where they are. Values echoed back
in messages are cut to :data:`ECHO_CHARS` characters.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any, Sequence

import numpy as np

from ..errors import InputError
from ..longinputs import LONG_INPUTS
from ..longinputs import tokens_as_decoded
from ..validate import MAX_MARK_RUN, long_mark_run, lone_surrogate

__all__ = ["APIError", "Limits", "EmbeddingRequest", "RequestBody", "read_request", "model_not_found",
           "parse_embedding_request", "parse_tokenize_request",
           "parse_detokenize_request", "input_too_long", "error_body", "shown", "json_depth", "is_json_media_type",
           "MAX_JSON_DEPTH", "ECHO_CHARS"]

ENCODINGS = ("float", "base64")
INPUT_TYPES = ("query", "document")
MAX_JSON_DEPTH = 64   # arrays/objects inside each other; a valid request nests 3 deep
ECHO_CHARS = 64       # longest client-given value quoted back in a message


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


def shown(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters (+ '…'): a client's 1 MB model
    name is not echoed back whole. ``repr`` escapes lone surrogates, so the message stays UTF-8."""
    if isinstance(value, str) and len(value) > limit:
        return repr(value[:limit]) + "…"
    text = repr(value)
    return text if len(text) <= limit + 2 else text[:limit + 2] + "…"


def is_json_media_type(content_type: str | None) -> bool:
    """Whether a Content-Type header says ``application/json`` (parameters such as
    ``charset=utf-8`` allowed). A browser can POST ``text/plain`` to any site without asking (a
    "simple" request), but not ``application/json``: requiring it keeps web pages out."""
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(body: bytes) -> int:
    """How deep arrays and objects nest in a JSON text (UTF-8, where no multi-byte character
    contains a bracket or quote byte), without parsing it: strings are cut out, then the brackets
    are counted. Linear time, no recursion; on invalid JSON the count is only an estimate."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    codes = np.frombuffer(brackets, dtype=np.uint8)
    steps = np.where((codes == ord("[")) | (codes == ord("{")), 1, -1).astype(np.int32)
    return int(np.cumsum(steps).max())


class _Constant:
    """What ``NaN``, ``Infinity`` and ``-Infinity`` parse to: not a number, so that validation
    names the field or input holding one; a request still holding one is refused at the end."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _kind(x: Any) -> str:
    """How a value is named in messages: its JSON-ish type, or the non-JSON constant itself."""
    return x.name if isinstance(x, _Constant) else type(x).__name__


def _loads(body: bytes) -> tuple[Any, list[_Constant]]:
    """Parse strict JSON; returns the value and the non-JSON constants met on the way."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8 (byte {e.start}): JSON must be UTF-8",
                       code="invalid_json") from None
    depth = json_depth(body) if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH else 0
    if depth > MAX_JSON_DEPTH:
        raise APIError(400, f"the request body nests arrays/objects {depth} deep, more than this server parses "
                            f"({MAX_JSON_DEPTH}); a request nests 3 deep", code="invalid_json")
    constants: list[_Constant] = []

    def constant(name: str) -> _Constant:
        constants.append(_Constant(name))
        return constants[-1]

    try:
        return json.loads(text, parse_constant=constant), constants
    except RecursionError:  # the depth pre-scan should make this unreachable
        raise APIError(400, "the request body nests too deeply to parse", code="invalid_json") from None
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


@dataclasses.dataclass(frozen=True)
class Limits:
    """Request size limits of a server."""

    max_inputs: int = 2048            # inputs per request (OpenAI's limit)
    max_body_bytes: int = 16 << 20    # request body
    max_input_tokens: int = 8192      # tokens per input, pooling token included (the server uses Embedder.max_tokens):
                                      # token-id inputs are checked while parsing, texts once tokenized
    max_request_tokens: int = 300_000  # all inputs' tokens together (OpenAI's limit), checked when max_input_tokens is

    def __post_init__(self):
        for name in ("max_inputs", "max_body_bytes", "max_input_tokens", "max_request_tokens"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise InputError(f"Limits.{name} must be a positive integer, got {value!r}")


@dataclasses.dataclass(frozen=True)
class EmbeddingRequest:
    """A validated request. Exactly one of ``texts`` / ``tokens`` is set."""

    model: str
    texts: list[str] | None
    tokens: list[list[int]] | None
    dim: int | None
    encoding_format: str
    instruction: str | None           # None: documents (raw text)
    long_inputs: str                  # one of longinputs.LONG_INPUTS: the request's, else the server's

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.tokens)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _bad(message: str, param: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


def _check_text(text: str, param: str) -> None:
    at = lone_surrogate(text)
    if at is not None:
        raise _bad(f"{param} holds a lone surrogate ({text[at]!r}) at character {at}: it is not valid Unicode text "
                   f"(the client's JSON has a broken \\u escape, or its text was decoded with surrogateescape)", param)
    run = long_mark_run(text)
    if run is not None:
        raise _bad(f"{param} holds a run of {run[1]} combining marks at character {run[0]} (at most {MAX_MARK_RUN} "
                   f"in a row): not text a model can read", param)


def _parse_input(value: Any, limits: Limits, n_vocab: int) -> tuple[list[str] | None, list[list[int]] | None]:
    if isinstance(value, str):
        _check_text(value, "input[0]")
        return [value], None
    if not isinstance(value, list):
        raise _bad(f"'input' must be a string, a list of strings, a list of token ids or a list of such lists; "
                   f"got {_kind(value)}", "input", "invalid_type")
    if not value:
        raise _bad("'input' is an empty list", "input")
    if _is_int(value[0]) or isinstance(value[0], (float, _Constant)):  # one pre-tokenized input
        for j, t in enumerate(value):
            if not _is_int(t):
                raise _bad(f"input[{j}] is {_kind(t)}, not an integer token id", f"input[{j}]", "invalid_type")
        value = [value]
    if len(value) > limits.max_inputs:
        raise _bad(f"'input' has {len(value)} items, more than this server's limit of {limits.max_inputs} per "
                   f"request; split it", "input", "too_many_inputs")
    if isinstance(value[0], str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise _bad(f"input[{i}] is {_kind(item)}, not a string: 'input' must be all strings or all "
                           f"token-id lists", f"input[{i}]", "invalid_type")
            _check_text(item, f"input[{i}]")
        return list(value), None
    tokens = []
    for i, item in enumerate(value):
        if not isinstance(item, list):
            raise _bad(f"input[{i}] is {_kind(item)}, not a list of token ids: 'input' must be all strings "
                       f"or all token-id lists", f"input[{i}]", "invalid_type")
        if not item:
            raise _bad(f"input[{i}] is an empty token list", f"input[{i}]")
        for j, t in enumerate(item):
            if not _is_int(t):
                raise _bad(f"input[{i}][{j}] is {_kind(t)}, not an integer token id", f"input[{i}]",
                           "invalid_type")
            if not 0 <= t < n_vocab:
                raise _bad(f"input[{i}][{j}] = {t} is not a token id of this model (0..{n_vocab - 1})",
                           f"input[{i}]")
        tokens.append(item)
    return None, tokens


@dataclasses.dataclass(frozen=True)
class RequestBody:
    """A request body parsed as far as every route needs before it knows the model: a JSON object
    naming a ``model`` (a string, not yet checked against the served ids)."""

    obj: dict
    model: str
    constants: list


def read_request(body: bytes) -> RequestBody:
    """Parse a request body (strict JSON, see the module) and its ``model``; else :class:`APIError`.
    A server of several models routes the result by ``model`` to the parser of that model."""
    obj, constants = _loads(body)
    if not isinstance(obj, dict):
        raise APIError(400, f"the request body must be a JSON object, got {_kind(obj)}", code="invalid_json")
    model = obj.get("model")
    if model is None:
        raise _bad("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise _bad(f"'model' must be a string, got {_kind(model)}", "model", "invalid_type")
    return RequestBody(obj, model, constants)


def model_not_found(model: str, served: Sequence[str]) -> APIError:
    return APIError(404, f"the model {shown(model)} does not exist on this server (it serves: "
                         f"{', '.join(served)})", param="model", code="model_not_found")


def _request(body: bytes | RequestBody, served: Sequence[str], field: str) -> tuple[dict, str, list[_Constant]]:
    """A request body (bytes, or already read by :func:`read_request`) as ``(object, model,
    constants)``, with ``model`` one of ``served`` (404 otherwise) and ``field`` present."""
    parsed = body if isinstance(body, RequestBody) else read_request(body)
    obj, model = parsed.obj, parsed.model
    if model not in served:
        raise model_not_found(model, served)
    if field not in obj:
        raise _bad(f"'{field}' is required", field, "missing_required_parameter")
    return obj, model, parsed.constants


def _instruction(obj: dict) -> str | None:
    """The request's ``instruction`` (a task of the client's own): a non-empty string, or None."""
    instruction = obj.get("instruction")
    if instruction is not None:
        if not isinstance(instruction, str) or not instruction.strip():
            raise _bad("'instruction' must be a non-empty string", "instruction",
                       "invalid_type" if not isinstance(instruction, str) else "invalid_value")
        _check_text(instruction, "instruction")
    return instruction


def _refuse_constants(constants: list[_Constant]) -> None:
    if constants:  # somewhere validation does not look (e.g. "user")
        raise APIError(400, f"the request body is not valid JSON: it holds {constants[0].name}, which JSON does not "
                            f"have (NaN and Infinity are JavaScript, not JSON)", code="invalid_json")


def input_too_long(index: int, n_tokens: int, limit: int) -> APIError:
    """The answer to input ``index`` holding more than ``limit`` tokens under ``"long_inputs": "error"``."""
    return APIError(400, f"input[{index}] has {n_tokens} tokens, more than this server's limit of {limit} (pooling "
                         f"token included); shorten it or send \"long_inputs\": \"truncate\" (cut it) or "
                         f"\"chunk\" (average its windows)", param=f"input[{index}]", code="input_too_long")


def _long_inputs(obj: dict, default: str) -> str:
    """The request's long-input policy: ``"long_inputs"``, or its older spelling ``"truncate"``
    (true: ``"truncate"``, false: ``"error"``), or ``default``; both given must agree."""
    policy = obj.get("long_inputs")
    if policy is not None:
        if not isinstance(policy, str):
            raise _bad(f"'long_inputs' must be a string, one of {', '.join(LONG_INPUTS)}; got {_kind(policy)}",
                       "long_inputs", "invalid_type")
        if policy not in LONG_INPUTS:
            raise _bad(f"'long_inputs' must be one of {', '.join(LONG_INPUTS)}, got {shown(policy)}", "long_inputs")
    truncate = obj.get("truncate")
    if truncate is None:
        return default if policy is None else policy
    if not isinstance(truncate, bool):
        raise _bad(f"'truncate' must be a boolean, got {_kind(truncate)}", "truncate", "invalid_type")
    implied = "truncate" if truncate else "error"
    if policy is not None and policy != implied:
        raise _bad(f"'long_inputs': {shown(policy)} contradicts 'truncate': {str(truncate).lower()} (the older "
                   f"spelling of 'long_inputs': {shown(implied)}); send only 'long_inputs'", "long_inputs")
    return implied


def parse_embedding_request(body: bytes | RequestBody, *, served: Sequence[str], full_dim: int, min_dim: int,
                            default_task: str, n_vocab: int, eos_id: int, limits: Limits,
                            long_inputs_default: str = "error", chunk_overlap: int = 0) -> EmbeddingRequest:
    """Validate a request body; raises :class:`APIError` (4xx) naming the offending field.
    ``long_inputs_default``: the policy of a request that names none; ``chunk_overlap``: the
    server's, for counting the tokens of token-id inputs as they will be decoded."""
    obj, model, constants = _request(body, served, "input")
    texts, tokens = _parse_input(obj["input"], limits, n_vocab)

    dim = obj.get("dimensions")
    if dim is not None:
        if not _is_int(dim):
            raise _bad(f"'dimensions' must be an integer, got {_kind(dim)}", "dimensions", "invalid_type")
        if not min_dim <= dim <= full_dim:
            raise _bad(f"'dimensions' must be in [{min_dim}, {full_dim}] for this model (Matryoshka range), got {dim}",
                       "dimensions")

    fmt = obj.get("encoding_format")
    fmt = "float" if fmt is None else fmt
    if fmt not in ENCODINGS:
        raise _bad(f"'encoding_format' must be one of {', '.join(ENCODINGS)}, got {shown(fmt)}", "encoding_format")

    input_type = obj.get("input_type")
    if input_type is not None and input_type not in INPUT_TYPES:
        raise _bad(f"'input_type' must be one of {', '.join(INPUT_TYPES)}, got {shown(input_type)}", "input_type")
    instruction = _instruction(obj)
    if instruction is not None:
        if input_type == "document":
            raise _bad("'instruction' applies to queries; it contradicts input_type='document'", "instruction")
    elif input_type == "query":
        instruction = default_task
    if instruction is not None and tokens is not None:
        raise _bad("an instruction (or input_type='query') needs text input, not token ids", "input")

    policy = _long_inputs(obj, long_inputs_default)
    if policy == "chunk" and limits.max_input_tokens < 2:
        raise _bad(f"'long_inputs': 'chunk' needs inputs of at least 2 tokens (a window and the pooling token); this "
                   f"server's limit is {limits.max_input_tokens}", "long_inputs")
    if tokens is not None:  # their lengths are known now: over-long ones and the request total are checked here
        limit, total = limits.max_input_tokens, 0
        for i, seq in enumerate(tokens):
            n = len(seq) + (seq[-1] != eos_id)  # the pooling token is appended unless present
            if n > limit and policy == "error":
                raise input_too_long(i, n, limit)
            total += tokens_as_decoded(n, max_tokens=limit, long_inputs=policy, overlap=chunk_overlap)
        if total > limits.max_request_tokens:
            raise too_many_tokens(total, limits.max_request_tokens)
    _refuse_constants(constants)
    return EmbeddingRequest(model=model, texts=texts, tokens=tokens, dim=dim, encoding_format=fmt,
                            instruction=instruction, long_inputs=policy)


def parse_tokenize_request(body: bytes | RequestBody, *, served: Sequence[str], limits: Limits) -> tuple[str, list[str]]:
    """``POST /tokenize`` ``{"model", "input": "text" | ["text", ...]}`` → ``(model, texts)``; else APIError."""
    obj, model, constants = _request(body, served, "input")
    value = obj["input"]
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list):
        raise _bad(f"'input' must be a string or a list of strings, got {_kind(value)}", "input", "invalid_type")
    if not texts:
        raise _bad("'input' is an empty list", "input")
    if len(texts) > limits.max_inputs:
        raise _bad(f"'input' has {len(texts)} items, more than this server's limit of {limits.max_inputs} per "
                   f"request; split it", "input", "too_many_inputs")
    for i, item in enumerate(texts):
        if not isinstance(item, str):
            raise _bad(f"input[{i}] is {_kind(item)}, not a string", f"input[{i}]", "invalid_type")
        _check_text(item, f"input[{i}]")
    _refuse_constants(constants)
    return model, list(texts)


def parse_detokenize_request(body: bytes | RequestBody, *, served: Sequence[str], n_vocab: int,
                             limits: Limits) -> tuple[str, list[list[int]]]:
    """``POST /detokenize`` ``{"model", "tokens": [[id, ...], ...] | [id, ...]}`` (a flat list is one
    sequence) → ``(model, sequences)``, or :class:`APIError`. At most ``limits.max_inputs`` sequences and
    ``limits.max_request_tokens`` ids in all (a text can be hundreds of times the size of its ids)."""
    obj, model, constants = _request(body, served, "tokens")
    value = obj["tokens"]
    if not isinstance(value, list):
        raise _bad(f"'tokens' must be a list of token ids or a list of such lists, got {_kind(value)}", "tokens",
                   "invalid_type")
    if not value:
        raise _bad("'tokens' is an empty list", "tokens")
    flat = not isinstance(value[0], list)
    sequences = [value] if flat else value
    if len(sequences) > limits.max_inputs:
        raise _bad(f"'tokens' has {len(sequences)} sequences, more than this server's limit of {limits.max_inputs} "
                   f"per request; split it", "tokens", "too_many_inputs")
    for i, seq in enumerate(sequences):
        if not isinstance(seq, list):
            raise _bad(f"tokens[{i}] is {_kind(seq)}, not a list of token ids: 'tokens' must be one list of ids "
                       f"or a list of such lists", f"tokens[{i}]", "invalid_type")
    total = sum(len(seq) for seq in sequences)
    if total > limits.max_request_tokens:
        raise _bad(f"'tokens' holds {total} token ids, more than this server's limit of {limits.max_request_tokens} "
                   f"per request; split it into several requests", "tokens", "max_tokens_per_request")
    for i, seq in enumerate(sequences):
        where = "tokens" if flat else f"tokens[{i}]"
        for j, t in enumerate(seq):
            if not _is_int(t):
                raise _bad(f"{where}[{j}] is {_kind(t)}, not an integer token id", where, "invalid_type")
            if not 0 <= t < n_vocab:
                raise _bad(f"{where}[{j}] = {t} is not a token id of this model (0..{n_vocab - 1})", where)
    _refuse_constants(constants)
    return model, sequences


def too_many_tokens(n_tokens: int, limit: int) -> APIError:
    """The answer to a request whose inputs hold more tokens than ``limit`` together (OpenAI's
    code for its own 300,000-token limit)."""
    return APIError(400, f"the request's inputs hold {n_tokens} tokens together, more than this server's limit of "
                         f"{limit} per request (pooling tokens included); split it into several requests",
                    param="input", code="max_tokens_per_request")
