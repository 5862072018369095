"""The rerank wire format (``POST /v1/rerank``, also ``/rerank``): request validation and the
response body, pure functions, in the shape llama-server, Jina and Cohere clients use::

    {"model": "...", "query": "what is gguf?",
     "documents": ["text", ...] | [{"text": "..."}, ...],
     "top_n": 3,                         # optional: the best n only (default: all)
     "instruction": "Given a ...",       # extension: the reranker's task (default: the model's)
     "return_documents": false}          # optional: echo each result's document

    → {"object": "list", "model": "...", "results": [{"index": 2, "relevance_score": 0.93}, ...],
       "usage": {"prompt_tokens": N, "total_tokens": N}}

Results are sorted best first (ties: lower index first); ``relevance_score`` is P(yes) of the
Qwen3-Reranker recipe. Errors are :class:`~.protocol.APIError` s naming the field and the index, as
for embeddings.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from .protocol import (Limits, RequestBody, _bad, _check_text, _instruction, _is_int, _kind, _refuse_constants,
                       _request, shown)

__all__ = ["RerankRequest", "parse_rerank_request", "rerank_body"]


@dataclasses.dataclass(frozen=True)
class RerankRequest:
    """A validated rerank request."""

    model: str
    query: str
    documents: list[str]
    top_n: int | None
    instruction: str | None
    return_documents: bool

    def __len__(self) -> int:
        return len(self.documents)


def _document(item: Any, i: int) -> str:
    if isinstance(item, dict) and "text" in item:  # Cohere / Jina: {"text": ...}
        item = item["text"]
    if not isinstance(item, str):
        raise _bad(f"documents[{i}] is {_kind(item)}, not a string (or an object with a string 'text')",
                   f"documents[{i}]", "invalid_type")
    _check_text(item, f"documents[{i}]")
    return item


def parse_rerank_request(body: bytes | RequestBody, *, served: Sequence[str], limits: Limits) -> RerankRequest:
    """Validate a rerank request body; raises :class:`APIError` (4xx) naming the offending field.
    At most ``limits.max_inputs`` documents."""
    obj, model, constants = _request(body, served, "documents")
    query = obj.get("query")
    if query is None:
        raise _bad("'query' is required", "query", "missing_required_parameter")
    if not isinstance(query, str):
        raise _bad(f"'query' must be a string, got {_kind(query)}", "query", "invalid_type")
    _check_text(query, "query")
    docs = obj["documents"]
    if not isinstance(docs, list):
        raise _bad(f"'documents' must be a list of strings, got {_kind(docs)}", "documents", "invalid_type")
    if len(docs) > limits.max_inputs:
        raise _bad(f"'documents' has {len(docs)} items, more than this server's limit of {limits.max_inputs} per "
                   f"request; split it", "documents", "too_many_inputs")
    documents = [_document(d, i) for i, d in enumerate(docs)]
    top_n = obj.get("top_n")
    if top_n is not None and (not _is_int(top_n) or top_n < 1):
        raise _bad(f"'top_n' must be an integer >= 1, got {shown(top_n)}", "top_n",
                   "invalid_type" if not _is_int(top_n) else "invalid_value")
    instruction = _instruction(obj)
    echo = obj.get("return_documents", False)
    if not isinstance(echo, bool):
        raise _bad(f"'return_documents' must be a boolean, got {_kind(echo)}", "return_documents", "invalid_type")
    _refuse_constants(constants)
    return RerankRequest(model=model, query=query, documents=documents, top_n=top_n, instruction=instruction,
                         return_documents=echo)


def rerank_body(scores: np.ndarray, req: RerankRequest, *, prompt_tokens: int) -> dict[str, Any]:
    """The answer: results sorted by score, best first (ties: lower index first), the best
    ``req.top_n`` of them."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    if req.top_n is not None:
        order = order[:req.top_n]
    results = []
    for i in order:
        item: dict[str, Any] = {"index": i, "relevance_score": float(scores[i])}
        if req.return_documents:
            item["document"] = {"text": req.documents[i]}
        results.append(item)
    return {"object": "list", "model": req.model, "results": results,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
