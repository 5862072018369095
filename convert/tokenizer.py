"""tokenizer.json (+ tokenizer_config.json) → the GGUF vocabulary of a Qwen3 model, pure.

What llama.cpp needs, and what older community GGUFs got wrong:

* ``tokenizer.ggml.model = gpt2`` (byte-level BPE), ``tokenizer.ggml.pre = qwen2``;
* the full token list (padded with ``[PAD{i}]`` up to config.json's ``vocab_size``), token types
  (NORMAL / CONTROL / USER_DEFINED / UNUSED, as llama.cpp's own converter assigns them) and merges;
* an embedding model: EOS = ``<|endoftext|>``, the token the TemplateProcessing post-processor
  appends to every input and whose hidden state is the embedding; EOT = tokenizer_config's
  ``eos_token`` (``<|im_end|>``, the chat end token); PAD = ``<|endoftext|>``; ``add_eos_token =
  true``, ``add_bos_token = false``;
* a reranker (``kind="reranker"``): its tokenizer appends nothing (the prompt template ends every
  input), so EOS = tokenizer_config's ``eos_token`` (``<|im_end|>``) and no EOT, as llama.cpp's
  converter reads it; PAD = ``<|endoftext|>``; and the ids of the :data:`~qembed_gguf.layout.CLS_LABELS`
  tokens ("yes", "no"), whose lm_head rows become the yes/no head.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import gguf

from qembed_gguf.errors import CheckpointFormatError, UnsupportedModelError
from qembed_gguf.layout import CLS_LABELS

from .checkpoint import read_json

__all__ = ["Vocab", "read_vocab", "QWEN2_PRETOKENIZER_REGEX", "POOLING_TOKEN"]

POOLING_TOKEN = "<|endoftext|>"
# The Split regex of the Qwen2/Qwen3 tokenizer.json pre-tokenizer; llama.cpp implements it as "qwen2".
QWEN2_PRETOKENIZER_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclasses.dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    eos_id: int              # embedding: <|endoftext|>, appended and pooled; reranker: tokenizer_config's eos_token
    eot_id: int | None       # embedding: tokenizer_config eos_token (<|im_end|>); reranker: None
    pad_id: int
    bos_id: int | None       # config.json bos_token_id (never added)
    pre: str = "qwen2"
    model: str = "gpt2"
    n_padded: int = 0        # [PAD{i}] entries added to reach vocab_size
    post_processor_eos: bool = True  # the post-processor appends <|endoftext|> (embedding: we add EOS anyway)
    label_ids: tuple[int, ...] = ()  # reranker: the ids of CLS_LABELS ("yes", "no"), in order


def _looks_special(token: str) -> bool:
    # the rule llama.cpp's converter applies to added tokens not flagged special
    return (token.startswith("<|") and token.endswith("|>")) or (token.startswith("<｜") and token.endswith("｜>"))


def _content(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _check_pretokenizer(tok: dict, path: Path) -> None:
    pre = tok.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", [pre]) if isinstance(pre, dict) else []
    splits = [p for p in items if isinstance(p, dict) and p.get("type") == "Split"]
    regexes = [(s.get("pattern") or {}).get("Regex") for s in splits]
    if regexes != [QWEN2_PRETOKENIZER_REGEX] or not any(isinstance(p, dict) and p.get("type") == "ByteLevel" for p in items):
        raise UnsupportedModelError(
            f"{path}: pre_tokenizer is not Qwen2's (Split on the Qwen2 regex + ByteLevel); llama.cpp's 'qwen2' "
            f"pre-tokenizer would split text differently, so token ids (and embeddings) would not match")


def _merges(model: dict, path: Path) -> list[str]:
    merges = model.get("merges")
    if not isinstance(merges, list):
        raise CheckpointFormatError("tokenizer.json model.merges is missing or not a list", path=path)
    out = []
    for i, m in enumerate(merges):
        if isinstance(m, str) and m.count(" ") == 1:
            out.append(m)
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(s, str) for s in m):
            # new (transformers ≥ 4.45) pair format: spaces inside a part are encoded as U+0120 + 256
            out.append(" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in m))
        else:
            raise CheckpointFormatError(f"tokenizer.json model.merges[{i}] is malformed: {m!r}", path=path)
    return out


def _post_processor_eos(tok: dict) -> str | None:
    """The special token that the TemplateProcessing post-processor appends to a single input."""
    post = tok.get("post_processor") or {}
    for proc in post.get("processors", [post]) if isinstance(post, dict) else []:
        if isinstance(proc, dict) and proc.get("type") == "TemplateProcessing":
            single = proc.get("single") or []
            if single and isinstance(single[-1], dict) and "SpecialToken" in single[-1]:
                return single[-1]["SpecialToken"].get("id")
    return None


def _label_ids(model: dict, added: dict[int, tuple[str, bool]], path: Path) -> tuple[int, ...]:
    """The ids of the reranker's label tokens ("yes", "no"), as ``convert_tokens_to_ids`` finds them."""
    by_content = {content: i for i, (content, _) in added.items()}
    out = []
    for label in CLS_LABELS:
        idx = by_content.get(label, model["vocab"].get(label))
        if idx is None:
            raise UnsupportedModelError(
                f"{path}: no {label!r} token in the vocabulary; a Qwen3-Reranker scores with the logits of the "
                f"{' and '.join(repr(x) for x in CLS_LABELS)} tokens (its yes/no head is their lm_head rows)")
        out.append(idx)
    return tuple(out)


def read_vocab(folder: Path, *, vocab_size: int, bos_token_id: Any = None, kind: str = "embedding") -> Vocab:
    """Read the tokenizer of a Qwen3 checkpoint folder (of ``kind``) into a :class:`Vocab`."""
    path = folder / "tokenizer.json"
    tok = read_json(path, what="tokenizer.json")
    if not isinstance(tok, dict) or not isinstance(tok.get("model"), dict):
        raise CheckpointFormatError("tokenizer.json has no 'model' object", path=path)
    model = tok["model"]
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UnsupportedModelError(f"{path}: model.type is {model.get('type')!r}; Qwen3 uses a byte-level BPE")
    _check_pretokenizer(tok, path)

    reverse: dict[int, str] = {}
    for token, idx in model["vocab"].items():
        if not isinstance(idx, int) or isinstance(idx, bool) or idx < 0:
            raise CheckpointFormatError(f"tokenizer.json vocab entry {token!r} has invalid id {idx!r}", path=path)
        reverse[idx] = token
    added: dict[int, tuple[str, bool]] = {}
    for i, entry in enumerate(tok.get("added_tokens") or []):
        if not (isinstance(entry, dict) and isinstance(entry.get("id"), int) and isinstance(entry.get("content"), str)):
            raise CheckpointFormatError(f"tokenizer.json added_tokens[{i}] is malformed", path=path)
        added[entry["id"]] = (entry["content"], bool(entry.get("special", False)))
        reverse[entry["id"]] = entry["content"]
    if max(reverse, default=-1) >= vocab_size:
        raise CheckpointFormatError(f"tokenizer has token id {max(reverse)} but config.json vocab_size is {vocab_size}",
                                    path=path)

    tokens, types, n_padded = [], [], 0
    for i in range(vocab_size):
        if i not in reverse:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            n_padded += 1
        elif i in added:
            content, special = added[i]
            tokens.append(content)
            types.append(gguf.TokenType.CONTROL if special or _looks_special(content) else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(reverse[i])
            types.append(gguf.TokenType.NORMAL)

    ids = {content: i for i, (content, _) in added.items()}
    if POOLING_TOKEN not in ids:
        raise UnsupportedModelError(f"{path}: no {POOLING_TOKEN!r} added token; it is the pooling token of "
                                    f"Qwen3-Embedding and must end every input")
    processor_eos = _post_processor_eos(tok)
    if processor_eos not in (None, POOLING_TOKEN):
        raise UnsupportedModelError(f"{path}: the post-processor appends {processor_eos!r}, not {POOLING_TOKEN!r}; "
                                    f"this is not a Qwen3-Embedding tokenizer")

    config_path = folder / "tokenizer_config.json"
    tok_config = read_json(config_path, what="tokenizer_config.json") if config_path.is_file() else {}
    eot_content = _content(tok_config.get("eos_token")) if isinstance(tok_config, dict) else None
    eot_id = ids.get(eot_content) if eot_content and eot_content != POOLING_TOKEN else None
    bos_id = bos_token_id if isinstance(bos_token_id, int) and 0 <= bos_token_id < vocab_size else None
    eos_id, labels = ids[POOLING_TOKEN], ()
    if kind == "reranker":  # nothing is appended: EOS is the tokenizer's own (the chat end token)
        eos_id, eot_id, labels = eot_id if eot_id is not None else eos_id, None, _label_ids(model, added, path)
    return Vocab(
        tokens=tokens, token_types=[int(t) for t in types], merges=_merges(model, path),
        eos_id=eos_id, eot_id=eot_id, pad_id=ids[POOLING_TOKEN], bos_id=bos_id,
        n_padded=n_padded, post_processor_eos=processor_eos == POOLING_TOKEN, label_ids=labels,
    )
