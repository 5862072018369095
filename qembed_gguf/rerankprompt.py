"""The Qwen3-Reranker prompt as pure functions: template, input checks, and the ``max_tokens`` cut.

The recipe is the model card's (Qwen/Qwen3-Reranker-0.6B), applied here rather than read from the
file's chat template::

    tokens = encode(PREFIX, special tokens parsed)
           + encode("<Instruct>: {instruction}\\n<Query>: {query}\\n<Document>: {document}", plain text)
           + encode(SUFFIX, special tokens parsed)

no BOS, nothing appended; the score is ``softmax(logit_no, logit_yes)[yes]`` at the last token. The
middle part ("the content") is user text: NFC-normalised (the tokenizer.json's normaliser) and
tokenized as one string, as HF's tokenizer does, with special-token text such as ``<|im_end|>``
left as text (so a document cannot close the user turn and answer for the model). Qwen3's added
tokens that are not special (``<think>``, ``<tool_call>`` …) still become their single tokens, in HF
(``split_special_tokens=True``) and llama.cpp alike; llama.cpp's converter marks ``<|fim_*|>``,
``<|repo_name|>`` and ``<|file_sep|>`` as control tokens, so in such a file those six stay text
where HF would match them (the Embedder tokenizes user text the same way).

**The cut.** A pair longer than ``max_tokens`` loses the tail of its content's token ids, which is
what the model card's ``tokenizer(pairs, truncation='longest_first', max_length=max_length -
len(prefix) - len(suffix))`` does (it truncates the content from the right, and the document is
the content's end); the template's end (SUFFIX) is always kept. The cut never reaches into the
instruction or the query: the tokens of the content's head (everything before the document) are
counted, and when the head with PREFIX and SUFFIX alone exceeds ``max_tokens``, that is an
:class:`~qembed_gguf.errors.InputTooLongError` instead.

Counting the head's tokens must respect BPE merges across the head/document boundary: with the
byte-level Qwen2 pre-tokenizer the space after ``<Document>:`` belongs to the document's first
word (``" Hello"`` is one token), so ``"...<Document>: "`` tokenized alone ends with a lone-space
token that the content's own ids do not have. :func:`head_text` therefore stops at the colon:
``>:`` is always a pre-token of its own (the next character is that space, which ends a run of
punctuation), so the head's ids are a prefix of the content's whatever the document holds.
:func:`head_length` uses them only after checking that they are that prefix; otherwise (a file
with another pre-tokenizer) it counts the content tokens that end within the head's bytes. A cut
that keeps exactly the head's tokens also drops the space after the colon (it was part of the
document's first token), as HF's truncation does.
"""

from __future__ import annotations

import unicodedata
from typing import Iterable, Sequence

from .errors import InputError, InputTooLongError, InputTypeError
from .layout import CLS_LABELS as LABELS  # the rows of a reranker GGUF's cls.output.weight: ("yes", "no")
from .validate import check_text, check_text_items

__all__ = ["PREFIX", "SUFFIX", "DEFAULT_INSTRUCTION", "LABELS", "nfc", "check_query", "check_documents",
           "check_instruction", "content_text", "head_text", "head_length", "fit_pair"]

PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
          "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
SPECIAL_TOKENS = ("<|im_start|>", "<|im_end|>", "<think>", "</think>")  # what PREFIX and SUFFIX must parse into


def nfc(text: str) -> str:
    """``text`` in Unicode NFC (the official tokenizer.json's normaliser; llama.cpp does not normalise)."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def check_query(query) -> str:
    """The query if it is a string of valid text; else :class:`InputTypeError` / :class:`InvalidTextError`."""
    if not isinstance(query, str):
        raise InputTypeError(f"query must be a string, got {type(query).__name__}")
    return check_text(query, "query")


def check_instruction(instruction) -> str:
    """``instruction`` (None: :data:`DEFAULT_INSTRUCTION`) if it is valid text."""
    if instruction is None:
        return DEFAULT_INSTRUCTION
    if not isinstance(instruction, str):
        raise InputTypeError(f"the instruction must be a string, got {type(instruction).__name__}")
    return check_text(instruction, "instruction")


def check_documents(documents) -> list[str]:
    """``documents`` (a sequence or iterable of strings; empty strings allowed) as a list; a
    non-string item is an :class:`InputTypeError` naming its index. One string is refused rather
    than read as one document or as its characters: ``documents=["..."]`` says which is meant."""
    if isinstance(documents, (str, bytes, bytearray)) or not isinstance(documents, Iterable):
        raise InputTypeError(f"documents must be a sequence of strings (a list), got {type(documents).__name__}")
    return check_text_items(documents, "documents")


def content_text(instruction: str, query: str, document: str) -> str:
    """The user turn between PREFIX and SUFFIX, NFC-normalised as the tokenizer sees it."""
    return nfc(f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}")


def head_text(instruction: str, query: str) -> str:
    """The content before the document, up to and including ``<Document>:`` (not the space after it,
    which BPE joins to the document's first word): NFC-normalised, a prefix of every
    :func:`content_text` of this instruction and query (NFC leaves the ASCII colon and space as they are)."""
    return nfc(f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>:")


def head_length(content_ids: Sequence[int], head_ids: Sequence[int], *, head_bytes: int,
                piece_lengths=None) -> int:
    """How many of ``content_ids`` hold only head text (instruction and query, never the document).

    ``head_ids`` (the tokens of :func:`head_text` alone) count when they are a prefix of the
    content's ids, as they always are with the Qwen2 pre-tokenizer (see the module docstring).
    Otherwise ``piece_lengths(content_ids)`` (UTF-8 bytes of each token) gives the content's token
    boundaries as byte offsets, and the tokens ending within the head's ``head_bytes`` count: a
    token that straddles the boundary is the document's, so a cut there keeps the head whole.
    """
    n = len(head_ids)
    if list(content_ids[:n]) == list(head_ids):
        return n
    if piece_lengths is None:
        raise InputError("head_ids are not a prefix of content_ids and no piece_lengths were given")
    end = count = 0
    for length in piece_lengths(content_ids):
        end += length
        if end > head_bytes:
            break
        count += 1
    return count


def fit_pair(prefix_ids: list[int], content_ids: list[int], suffix_ids: list[int], *, n_head: int, limit: int,
             index: int) -> tuple[list[int], bool]:
    """The token row of one pair and whether it was cut: PREFIX + content + SUFFIX, the content's
    tail cut so the row has at most ``limit`` tokens, keeping at least its first ``n_head`` tokens
    (:func:`head_length`); if even those do not fit, :class:`InputTooLongError` (``index``: the
    document's, or None for the query)."""
    fixed = len(prefix_ids) + len(suffix_ids)
    total = fixed + len(content_ids)
    if total <= limit:
        return prefix_ids + content_ids + suffix_ids, False
    if fixed + n_head > limit:
        what = "the query" if index is None else f"the query with document {index}"
        raise InputTooLongError(
            f"{what}: the instruction and query take {n_head} tokens, {fixed + n_head} with the prompt template, "
            f"more than max_tokens={limit}, so no part of a document fits; shorten the query or instruction, or "
            f"raise max_tokens", index=index, n_tokens=fixed + n_head, max_tokens=limit)
    return prefix_ids + content_ids[:limit - fixed] + suffix_ids, True
