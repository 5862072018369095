"""Tokens as the Embedder reads them: NFC, byte-level BPE without BOS, special-token text left as
text, the pooling token ``<|endoftext|>`` last; the query template (a mixin of :class:`~qembed_gguf.Embedder`)."""

from __future__ import annotations

import unicodedata
from typing import Sequence

from .errors import InputTypeError
from .validate import check_text, check_texts, check_token_ids, check_token_lists

__all__ = ["TokensAPI", "POOLING_TOKEN"]

POOLING_TOKEN = "<|endoftext|>"


def _nfc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)


class TokensAPI:
    """Tokenizing, detokenizing and query formatting on the Embedder's open llama.cpp model (its
    ``_runtime``, ``_lock``, ``_eos``, ``facts`` and ``n_vocab``)."""

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids as the official tokenizer gives them: NFC first (its tokenizer.json normaliser;
        llama.cpp's qwen2 pre-tokenizer does not normalise), then BPE, then the pooling token."""
        with self._lock:
            self._require_open()
            return [self._runtime.tokenize(_nfc(t)) + [self._eos] for t in texts]

    def count_tokens(self, texts: str | Sequence[str]) -> list[int]:
        """Tokens each input takes, the pooling token included (before any truncation)."""
        return [len(ids) for ids in self._tokenize(check_texts(texts))]

    def tokenize(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Token ids of each input exactly as it is embedded (:meth:`prepare_texts`: NFC, no BOS, special-token
        text left as text, ``<|endoftext|>`` last): HF ``tokenizers``' ``encode(text).ids``."""
        return self.prepare_texts(texts)

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of one sequence of token ids, special tokens as their text (``<|endoftext|>``); bytes
        that are not UTF-8 (ids cut inside a character) become U+FFFD; an id outside the vocabulary is an InputError."""
        ids = check_token_ids(ids, self.n_vocab)
        with self._lock:
            self._require_open()
            return self._runtime.detokenize(ids)

    def piece_lengths(self, ids: Sequence[int]) -> list[int]:
        """UTF-8 bytes of each token id's text (special tokens as their text): token boundaries as byte offsets."""
        ids = check_token_ids(ids, self.n_vocab)
        with self._lock:
            self._require_open()
            return self._runtime.piece_lengths(ids)

    def format_query(self, text: str, task: str | None = None) -> str:
        """``text`` as a query with ``task`` (default: the model's) in the model's query template."""
        return self.format_queries([text], task)[0]

    def format_queries(self, texts: Sequence[str], task: str | None = None) -> list[str]:
        """Every text as a query with ``task`` (checked once, however many texts)."""
        if task is not None:
            if not isinstance(task, str):
                raise InputTypeError(f"the instruction must be a string, got {type(task).__name__}")
            check_text(task, "instruction")
        template, task = self.facts.query_template, self.facts.default_task if task is None else task
        return [template.format(task=task, text=t) for t in texts]

    def prepare_tokens(self, inputs: Sequence[Sequence[int]]) -> list[list[int]]:
        """Validated token-id inputs, each ending with exactly one pooling token."""
        sequences = check_token_lists(inputs, self.n_vocab)
        return [s if s[-1] == self._eos else s + [self._eos] for s in sequences]

    def prepare_texts(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of ``texts`` (already formatted), each ending with the pooling token."""
        return self._tokenize(check_texts(texts))
