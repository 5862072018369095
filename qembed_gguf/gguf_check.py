"""Strict, header-only validation of a GGUF file before llama.cpp parses it, and its integrity seal.

llama.cpp's GGUF parser has had heap overflows on crafted files (see ../shared/QWEN3_EMBEDDING.md),
and its loader and graph *assert* on values a file controls (a failed ``GGML_ASSERT`` aborts the
whole process). So no file reaches it before :func:`check_gguf` has walked the whole header in
pure Python:

* a regular file (a FIFO, a device or a socket is refused before it is read: ``open`` would
  block or never end), magic, version (2 or 3), tensor and key/value counts bounded by what the
  file could hold;
* every string and array length bounded by the bytes left; known value types; no nested arrays;
* ``general.alignment`` a u32 power of two from 8 (the GGUF spec: a multiple of 8); tensor names
  unique and short enough for ggml; 1-4 dims, each positive, element count without overflow; a
  known ggml type whose block divides the row;
* tensor data offsets aligned, packed in order (as gguf.cpp requires) and in bounds of the file;
* every key llama.cpp reads for a Qwen3 model, with the exact GGUF type it reads it as (its
  ``get_key<T>`` throws on any other) and a value it can use (table below);
* the vocabulary: unique, non-empty token strings including the 256 byte-level tokens, token
  types llama.cpp knows, BPE merges ``"A B"`` whose ``AB`` is a token, special-token ids inside
  the vocabulary;
* exactly the tensors, with exactly the shapes and types, that those hyperparameters imply — for
  a reranker (RANK pooling, or ``qembed.kind = "reranker"``) with its yes/no head
  ``cls.output.weight`` (ggml ``[hidden, 2]``), for an embedding model without one.

What each check keeps from llama.cpp (vendored in llama-cpp-python 0.3.36; ``qwen3.`` keys)::

    check                                           llama.cpp, if the file reached it
    ----------------------------------------------  ---------------------------------------------------
    block_count in [1, 512]                         GGML_ASSERT(n_layer_all <= LLAMA_MAX_LAYERS) abort
    nextn_predict_layers absent or 0                GGML_ASSERT(n_layer_nextn <= n_layer_all) abort;
                                                    else fewer layers built than the file holds
    expert_count / expert_used_count /              GGML_ASSERT(n_expert <= LLAMA_MAX_EXPERTS),
      expert_group_count / _group_used_count 0        (n_expert_used <= n_expert), ... abort
    key_length == value_length (value_length's      qwen3 graph: GGML_ASSERT(n_embd_head_v ==
      default is embedding_length / head_count)       n_embd_head_k) abort at the first context
    rope.dimension_count == key_length              qwen3 graph: GGML_ASSERT(n_embd_head == n_rot) abort
    key_length even                                 ggml rope: GGML_ASSERT(n_dims % 2 == 0) abort
    rope.scaling.type none/linear/yarn/longrope     GGML_ASSERT(rope_scaling_type != UNSPECIFIED) abort
    layer_norm_rms_epsilon finite, in (0, 1e-2]     ggml rms_norm: GGML_ASSERT(eps >= 0) abort (NaN
                                                    too); +inf: every vector exactly zero
    rope.freq_base finite, in (1, 1e12]             0 or < 0: NaN/inf vectors; 1: no rotation at all
    rope.scaling.factor / rope.scale_linear 0 or    1/factor scales every position: NaN, inf, < 0 or
      in [1, 1024]; attn_factor in (0, 16];           0 give NaN or position-blind vectors
      alpha finite
    attention.causal not false                      false: bidirectional attention, silently
                                                    different vectors
    embedding_length_out absent, 0 or               the output row size of an embedding context
      embedding_length
    split.count a u16 <= 1                          > 1: llama.cpp opens sibling "-0000N-of-" files
    tokens unique (and non-empty: llama.cpp         GGML_ASSERT(id_to_token.size() ==
      renames "" to "[EMPTY_<i>]", which may clash)   token_to_id.size()) abort
    the 256 byte-level tokens present               bytes without a token are silently dropped
    token_type an i32 array, values in [0, 5]       other types: throw; unknown values: UNDEFINED;
                                                    type byte (6): read as SPM's "<0xXX>", throws
    merges "A B" with AB a token                    no space: ignored; AB unknown: tokens fall back
                                                    to bytes (HF tokenizers refuses both)
    tokenizer.ggml.pre one llama.cpp knows          throw ("unknown pre-tokenizer type")
    general.name with "phi3": the Phi-3 tokens      throw (token_to_id.at("</s>") for "Phi-3" models)
    "<|endoftext|>" among the tokens                the Embedder pools on it
    RANK pooling: classifier.output_labels          n_cls_out = the labels' count (1 without them):
      exactly ["yes", "no"], cls.output.weight        the head's shape is checked against it (throw);
      [embedding_length, 2]; no cls tensor            swapped or other labels would silently invert
      without RANK pooling                            or garble every score; without RANK the head is
                                                    an unexpected tensor
    qembed.kind "embedding"/"reranker", agreeing    the runtime's own choice of what the file is
      with pooling_type
    tokenizer.chat_template.rerank a string         llama.cpp's rerank prompt (read as a string)
    qembed.* keys typed, mrl_min_dim <= dim         the Embedder's own reads (TypeError otherwise)
    token-id keys u32 < vocabulary size             out of range: silently replaced by a default
    exact GGUF type of every key read               throw ("key ... has wrong type")
    tensor names, shapes and types                  throw (missing/wrong shape); types it cannot
                                                    multiply with
    tensor data packed in order                     gguf.cpp refuses ("has offset X, expected Y")

Throws are caught by llama.cpp (the model is NULL: a :class:`ModelLoadError`); they are refused
here anyway, so the message names the field. The bounds that are not llama.cpp's own are sanity
bounds far outside every released model (Qwen3: eps 1e-6, rope base 1e6, no rope scaling).

Every failure is a :class:`CorruptModelError` naming the field and its byte offset. Only the
header is read (through a memory map): about 85 ms for a 151,669-token vocabulary and its
151,387 merges (35 ms of it the walk over their lengths), whatever the file size. The vocabulary
checks are vectorised: each token string is hashed (a polynomial hash mod 2**64, computed for all
of them in a few numpy passes) and the hashes compared; a duplicate is confirmed byte for byte
before it is reported.

The structure is :mod:`qembed_gguf.gguf_reader`'s, the vocabulary :mod:`qembed_gguf.gguf_vocab`'s;
the integrity seal is :mod:`qembed_gguf.integrity`'s (re-exported here).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import gguf

from . import keys
from .errors import CorruptModelError, ModelLoadError
from .gguf_reader import (ARRAY, BOOL, FLOAT32, INT32, STRING, TYPE_NAMES, UINT16, UINT32, ArrayValue, GGUFHeader,
                          INT32_MAX, TensorSpan, field_error, mapped, open_regular, parse_view,
                          read_header)
from .gguf_vocab import check_vocabulary
from .integrity import (DIGEST_HEX, IntegrityStatus, content_fingerprint, require_integrity, seal,
                        verify_integrity)
from .layout import CLS_LABELS, CLS_TENSOR, KINDS, Qwen3Shape, tensor_table

__all__ = ["check_gguf", "GGUFHeader", "TensorSpan", "ArrayValue", "read_header", "open_regular", "seal",
           "verify_integrity", "IntegrityStatus", "require_integrity", "content_fingerprint"]


# -- the Qwen3 model checks -------------------------------------------------------------------------------
# ggml types llama.cpp computes Qwen3 weight matrices with on every backend (the removed
# interleaved Q4_0_x_x types, Q8_K, integer and test types are not weights a model file may hold)
MATRIX_TYPES = frozenset({0, 1, 2, 3, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 21, 22, 23, 29, 30})
NORM_TYPES = frozenset({0})  # every converter stores norm weights as F32; llama.cpp's graph needs it

LLAMA_MAX_LAYERS = 512       # src/llama-hparams.h; load_hparams asserts block_count <= it
ROPE_SCALING_TYPES = ("none", "linear", "yarn", "longrope")  # llama.cpp asserts the string is one of these
RMS_EPS_MAX = 1e-2           # released models use 1e-12 .. 1e-5 (Qwen3: 1e-6); an eps near the hidden
#                              state's mean square stops normalising, and +inf makes every vector zero
ROPE_BASE_MAX = 1e12         # released models: 1e4 .. 1e8 (Qwen3: 1e6)
ROPE_FACTOR_MAX = 1024.0     # position scale 1/factor: beyond this a 40,960-token context spans < 40 positions
ROPE_ATTN_FACTOR_MAX = 16.0  # scales cos/sin, so attention logits by its square (default 1)

# the tokenizer.ggml.pre values llama.cpp's vocabulary loader knows (src/llama-vocab.cpp); it
# refuses the file on any other (an empty or missing one means its default pre-tokenizer)
LLAMA_CPP_PRE_TOKENIZERS = frozenset("""
    a.x-4.0 afmoe bailingmoe bailingmoe2 bloom chameleon chatglm-bpe codeshell cohere2moe command-r dbrx
    deepseek-coder deepseek-llm deepseek-r1-qwen deepseek-v3 default exaone exaone-moe exaone4 f2llmv2 falcon
    falcon-h1 falcon3 gemma4 gigachat glm4 glm5 gpt-2 gpt-4o gpt3-finnish granite-docling
    granite-embed-multi-311m granite-embed-multi-97m grok-2 hunyuan hunyuan-dense hy_v4 jais jais-2 jina-de
    jina-es jina-v1-en jina-v2-code jina-v2-de jina-v2-es jina-v5-nano joyai-llm kanana2 kimi-k2 kormo laguna
    lfm2 llada-moe llama-bpe llama-v3 llama3 llama4 megrez mellum mellum2 midm-2.0 minerva-7b minicpm5
    minimax-m2 modern-bert mpt olmo phi-2 pixtral poro-chat qwen2 qwen35 refact roberta-bpe sarvam-moe
    seed-coder smaug-bpe smollm solar-open spark2_5 stablelm2 starcoder superbpe talkie tekken tiny_aya
    trillion ufakzeka viking whitespace youtu
""".split())

# token-id keys llama.cpp reads (as u32; an out-of-range id is silently replaced by a default)
_TOKEN_ID_KEYS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask", "fim_pre", "fim_suf",
                  "fim_mid", "fim_pad", "fim_rep", "fim_sep", "prefix", "suffix", "middle")
# boolean tokenizer keys llama.cpp reads (its get_key<bool> throws on any other type)
_TOKENIZER_BOOLS = ("add_bos_token", "add_eos_token", "add_sep_token", "add_space_prefix", "remove_extra_whitespaces",
                    "normalizer.lowercase", "normalizer.strip_accents")


def _type_name(vtype: int | None) -> str:
    return TYPE_NAMES.get(vtype, f"type {vtype}") if vtype is not None else "no type"


def _typed(h: GGUFHeader, key: str, vtype: int, *, required: bool = False, reader: str = "llama.cpp") -> Any:
    """``key``'s value when present with exactly the GGUF type ``vtype`` (llama.cpp's ``get_key<T>``
    throws on any other; a u32 written as i32 or u64 is refused too), None when absent."""
    if key not in h.metadata:
        if required:
            raise field_error(h, key, "required key is missing")
        return None
    have = h.value_types.get(key)
    if have == ARRAY and vtype != ARRAY:  # (some, e.g. head_count, may be per-layer arrays elsewhere)
        raise field_error(h, key, f"is an array; one {_type_name(vtype)} is needed (a Qwen3 model has the same value "
                            f"in every layer)")
    if have != vtype:
        raise field_error(h, key, f"has type {_type_name(have)}; {reader} reads it as {_type_name(vtype)} and refuses "
                            f"any other")
    return h.metadata[key]


def _uint(h: GGUFHeader, key: str, lo: int = 0, hi: int = (1 << 32) - 1, *, required: bool = False,
          why: str = "") -> int | None:
    """A u32 key in ``[lo, hi]`` (None when absent)."""
    v = _typed(h, key, UINT32, required=required)
    if v is not None and not lo <= v <= hi:
        raise field_error(h, key, f"value {v} is outside [{lo}, {hi}]" + (f": {why}" if why else ""))
    return v


def _float(h: GGUFHeader, key: str, lo: float, hi: float, *, why: str, required: bool = False) -> float | None:
    """An f32 key, finite and in ``(lo, hi]``; None when absent."""
    v = _typed(h, key, FLOAT32, required=required)
    if v is None or (math.isfinite(v) and lo < v <= hi):
        return v
    raise field_error(h, key, f"value {v:.7g} is not a finite number in ({lo:g}, {hi:g}]: {why}")


def _bool(h: GGUFHeader, key: str) -> bool | None:
    return _typed(h, key, BOOL)


def _string(h: GGUFHeader, key: str, *, required: bool = False) -> str | None:
    return _typed(h, key, STRING, required=required)


def _array(h: GGUFHeader, key: str, element_types: tuple[int, ...], *, required: bool = False) -> ArrayValue | None:
    """An array key whose elements have one of ``element_types`` (None when absent)."""
    v = _typed(h, key, ARRAY, required=required)
    if v is not None and v.type not in element_types:
        raise field_error(h, key, f"is an array of {_type_name(v.type)}; llama.cpp needs an array of "
                            f"{' or '.join(_type_name(t) for t in element_types)}")
    return v


def _check_general(h: GGUFHeader) -> str:
    """The general.* and split.* keys llama.cpp reads; the architecture."""
    arch = h.get("general.architecture")
    if not isinstance(arch, str):
        if "general.architecture" in h.metadata:
            _string(h, "general.architecture")  # raises: wrong type
        raise field_error(h, "general.architecture", "required string key is missing")
    if arch != "qwen3":
        raise ModelLoadError(f"{h.path}: architecture {arch!r} is not a Qwen3 embedding model "
                             f"(general.architecture at byte offset {h.value_offsets['general.architecture']})")
    _string(h, "general.name")
    _uint(h, "general.file_type")
    split = _typed(h, "split.count", UINT16)
    if split is not None and split > 1:
        raise field_error(h, "split.count", f"the model is split into {split} files; llama.cpp would open sibling "
                                      f"'-0000N-of-' files, which are not validated here (merge them first: "
                                      f"llama-gguf-split --merge)")
    return arch


def _check_tokenizer_keys(h: GGUFHeader) -> tuple[ArrayValue, ArrayValue, ArrayValue | None]:
    """Types and counts of the tokenizer keys llama.cpp reads: (tokens, merges, token types)."""
    model = _string(h, "tokenizer.ggml.model", required=True)
    if model != "gpt2":
        raise field_error(h, "tokenizer.ggml.model", f"tokenizer model {model!r} is not the byte-level BPE ('gpt2') of Qwen3")
    pre = _string(h, "tokenizer.ggml.pre")
    if pre and pre not in LLAMA_CPP_PRE_TOKENIZERS:
        raise field_error(h, "tokenizer.ggml.pre", f"pre-tokenizer {pre[:80]!r} is unknown to llama.cpp, which refuses the "
                                             f"file (Qwen3's is 'qwen2')")
    tokens = _array(h, "tokenizer.ggml.tokens", (STRING,), required=True)
    if tokens.count < 1 or tokens.count > INT32_MAX:
        raise field_error(h, "tokenizer.ggml.tokens", f"must hold 1 to {INT32_MAX} token strings, not {tokens.count}")
    n_vocab = tokens.count
    merges = _array(h, "tokenizer.ggml.merges", (STRING,), required=True)
    token_type = _array(h, "tokenizer.ggml.token_type", (INT32,))
    scores = _array(h, "tokenizer.ggml.scores", (FLOAT32, INT32))
    for key, arr in (("tokenizer.ggml.token_type", token_type), ("tokenizer.ggml.scores", scores)):
        if arr is not None and arr.count != n_vocab:
            raise field_error(h, key, f"has {arr.count} entries for {n_vocab} tokens")
    _array(h, "tokenizer.ggml.suppress_tokens", (INT32,))
    _uint(h, "tokenizer.ggml.token_type_count")
    for name in _TOKEN_ID_KEYS:
        _uint(h, f"tokenizer.ggml.{name}_token_id", 0, n_vocab - 1,
              why=f"not a token of the {n_vocab}-token vocabulary (llama.cpp would silently use another)")
    for name in _TOKENIZER_BOOLS:
        _bool(h, f"tokenizer.ggml.{name}")
    return tokens, merges, token_type


def _check_hparams(h: GGUFHeader, arch: str, n_vocab: int) -> Qwen3Shape:
    """The ``{arch}.*`` keys llama.cpp reads for a Qwen3 model: exact types, values it can run
    (see the table in the module docstring), and consistent with each other."""
    def k(name: str) -> str:
        return f"{arch}.{name}"

    layers = _uint(h, k("block_count"), 1, LLAMA_MAX_LAYERS, required=True,
                   why=f"llama.cpp asserts 0 < block_count <= LLAMA_MAX_LAYERS ({LLAMA_MAX_LAYERS})")
    embd = _uint(h, k("embedding_length"), 1, 1 << 20, required=True)
    ff = _uint(h, k("feed_forward_length"), 1, 1 << 20, required=True)
    heads = _uint(h, k("attention.head_count"), 1, 4096, required=True)
    kv_heads = _uint(h, k("attention.head_count_kv"), 1, 4096)
    kv_heads = heads if kv_heads is None else kv_heads
    if heads % kv_heads:
        raise field_error(h, k("attention.head_count_kv"), f"head_count {heads} is not a multiple of head_count_kv "
                                                     f"{kv_heads}")
    context = _uint(h, k("context_length"), 1, 1 << 24, required=True)
    default_head = embd // heads  # llama.cpp's default for both key_length and value_length
    head_k = _uint(h, k("attention.key_length"), 1, 1 << 16)
    head_v = _uint(h, k("attention.value_length"), 1, 1 << 16)
    head_k = default_head if head_k is None else head_k
    head_v = default_head if head_v is None else head_v
    if head_k < 1:
        raise field_error(h, k("attention.head_count"), f"{heads} heads leave no room in embedding_length {embd} and no "
                                                  f"attention.key_length is given")
    if head_v != head_k:
        key = k("attention.value_length") if k("attention.value_length") in h.metadata else k("attention.key_length")
        raise field_error(h, key, f"value head size {head_v} differs from key head size {head_k}: llama.cpp's qwen3 graph "
                            f"asserts they are equal (abort)")
    if head_k % 2:
        raise field_error(h, k("attention.key_length") if k("attention.key_length") in h.metadata else
                    k("attention.head_count"), f"head size {head_k} is odd: RoPE rotates pairs of dimensions and "
                                               f"ggml asserts an even count (abort)")
    n_rot = _uint(h, k("rope.dimension_count"))
    if n_rot is not None and n_rot != head_k:
        raise field_error(h, k("rope.dimension_count"), f"{n_rot} rotary dimensions for heads of {head_k}: llama.cpp's qwen3 "
                                                  f"graph asserts they are equal (abort)")
    for name in ("attention.key_length_swa", "attention.value_length_swa", "rope.dimension_count_swa",
                 "rope.scaling.original_context_length", "pooling_type", "classifier.pooling_type"):
        _uint(h, k(name))  # read by llama.cpp (unused for Qwen3): the type only
    _uint(h, k("nextn_predict_layers"), 0, 0,
          why="Qwen3 has no next-token-prediction layers (llama.cpp asserts the count <= block_count, then "
              "builds fewer blocks than the file has)")
    for name in ("expert_count", "expert_used_count", "expert_group_count", "expert_group_used_count"):
        _uint(h, k(name), 0, 0, why="Qwen3-Embedding is dense (llama.cpp asserts on inconsistent expert counts)")
    out = _uint(h, k("embedding_length_out"))
    if out not in (None, 0, embd):
        raise field_error(h, k("embedding_length_out"), f"{out} differs from embedding_length {embd}: Qwen3's output is "
                                                  f"its hidden state")
    if _bool(h, k("attention.causal")) is False:
        raise field_error(h, k("attention.causal"), "is false: Qwen3-Embedding attends causally; llama.cpp would attend "
                                              "both ways and return silently different vectors")
    _bool(h, k("rope.scaling.finetuned"))
    _array(h, k("classifier.output_labels"), (STRING,))
    _float(h, k("attention.layer_norm_rms_epsilon"), 0.0, RMS_EPS_MAX, required=True,
           why="ggml's RMSNorm asserts eps >= 0 (a negative or NaN eps aborts the process), an infinite one makes "
               "every vector zero, and released models use 1e-12 to 1e-5")
    _float(h, k("rope.freq_base"), 1.0, ROPE_BASE_MAX,
           why="RoPE computes base**(-2i/d): a base <= 0 gives NaN or infinite vectors, 1 no rotation at all")
    scaling = _string(h, k("rope.scaling.type"))
    if scaling is not None and scaling not in ROPE_SCALING_TYPES:
        raise field_error(h, k("rope.scaling.type"), f"{scaling[:80]!r} is not one of {', '.join(ROPE_SCALING_TYPES)}: "
                                               f"llama.cpp asserts it is (abort)")
    for name in ("rope.scaling.factor", "rope.scale_linear"):
        v = _typed(h, k(name), FLOAT32)
        if v is not None and not (v == 0 or (math.isfinite(v) and 1 <= v <= ROPE_FACTOR_MAX)):
            raise field_error(h, k(name), f"value {v:.7g} is not 0 (no scaling) or a finite factor in [1, "
                                    f"{ROPE_FACTOR_MAX:g}]: llama.cpp scales every position by 1/factor")
    _float(h, k("rope.scaling.attn_factor"), 0.0, ROPE_ATTN_FACTOR_MAX,
           why="it scales RoPE's cos and sin, so 0 or NaN makes attention position-blind or NaN")
    alpha = _typed(h, k("rope.scaling.alpha"), FLOAT32)
    if alpha is not None and not math.isfinite(alpha):
        raise field_error(h, k("rope.scaling.alpha"), f"value {alpha!r} is not finite")
    return Qwen3Shape(hidden=embd, layers=layers, heads=heads, kv_heads=kv_heads, head_dim=head_k, ffn=ff,
                      vocab=n_vocab, context=context)


def _check_qembed_keys(h: GGUFHeader, dims: Qwen3Shape) -> None:
    """The ``qembed.*`` keys the Embedder reads (written by ``qembed-gguf convert``; optional)."""
    ours = "qembed-gguf"
    _typed(h, keys.FORMAT, UINT32, reader=ours)
    mrl = _typed(h, keys.MRL_MIN_DIM, UINT32, reader=ours)
    if mrl is not None and not 1 <= mrl <= dims.hidden:
        raise field_error(h, keys.MRL_MIN_DIM, f"value {mrl} is outside [1, embedding_length {dims.hidden}]")
    for key in (keys.QUERY_TEMPLATE, keys.DEFAULT_TASK, keys.SOURCE, keys.CONVERTER):
        _typed(h, key, STRING, reader=ours)
    kind = _typed(h, keys.KIND, STRING, reader=ours)
    if kind is not None and kind not in KINDS:
        raise field_error(h, keys.KIND, f"{kind[:40]!r} is not one of {', '.join(KINDS)}")
    seal_value = _typed(h, keys.INTEGRITY, STRING, reader=ours)
    if seal_value is not None and (len(seal_value) != DIGEST_HEX or seal_value.strip("0123456789abcdef")):
        raise field_error(h, keys.INTEGRITY, f"must be {DIGEST_HEX} lower-case hex digits")


RANK_POOLING = int(gguf.PoolingType.RANK)  # 4: a reranker's last token through cls.output (+ softmax for qwen3)
_LABELS_KEY = "{arch}.classifier.output_labels"
_RERANK_TEMPLATE = "tokenizer.chat_template.rerank"


def _short_strings(view: memoryview, arr: ArrayValue, limit: int = 16) -> list[str] | None:
    """The elements of a small string array (the parser bounded every length), None if longer."""
    if arr.count > limit:
        return None
    out, pos = [], arr.offset
    for _ in range(arr.count):
        n = int.from_bytes(view[pos:pos + 8], "little")
        out.append(bytes(view[pos + 8:pos + 8 + n]).decode("utf-8", errors="replace"))
        pos += 8 + n
    return out


def _check_kind(h: GGUFHeader, arch: str, view: memoryview) -> str:
    """``"reranker"`` (RANK pooling or ``qembed.kind = "reranker"``) or ``"embedding"``; a
    reranker's labels exactly the yes/no head's rows, and ``qembed.kind`` agreeing with the pooling."""
    pooling = h.get(f"{arch}.pooling_type")  # typed by _check_hparams
    stated = h.get(keys.KIND)                # typed by _check_qembed_keys
    kind = "reranker" if pooling == RANK_POOLING or stated == "reranker" else "embedding"
    if stated is not None and pooling is not None and (pooling == RANK_POOLING) != (stated == "reranker"):
        raise field_error(h, keys.KIND, f"says {stated!r} but {arch}.pooling_type is {pooling}: a reranker has RANK "
                                        f"pooling ({RANK_POOLING}), an embedding model does not")
    _string(h, _RERANK_TEMPLATE)
    _array(h, "tokenizer.chat_templates", (STRING,))
    key = _LABELS_KEY.format(arch=arch)
    labels = _array(h, key, (STRING,))  # typed by _check_hparams too
    if kind == "reranker":
        if pooling != RANK_POOLING:
            raise field_error(h, f"{arch}.pooling_type", f"is {'missing' if pooling is None else pooling} for a "
                                                         f"reranker (qembed.kind): llama.cpp would not apply its yes/no "
                                                         f"head; RANK pooling is {RANK_POOLING}")
        got = _short_strings(view, labels) if labels is not None else None
        if got != list(CLS_LABELS):
            shown = "missing" if labels is None else (got if got is not None else f"{labels.count} labels")
            raise field_error(h, key, f"is {shown}; a Qwen3-Reranker's head scores {list(CLS_LABELS)} in that order "
                                      f"(llama.cpp sizes cls.output.weight by the labels, and the runtime reads row 0 "
                                      f"as relevance)")
    return kind


def _check_tensors(h: GGUFHeader, dims: Qwen3Shape, kind: str) -> None:
    """Exactly the tensors llama.cpp's qwen3 loader creates for ``dims``, with their shapes (the
    layout table's, in ggml order) and types it computes with; ``output.weight`` optional; a
    reranker's yes/no head required for ``kind="reranker"`` and refused otherwise."""
    have = {t.name: t for t in h.tensors}
    want = {t.gguf_name: t.ggml_shape for t in tensor_table(dims, output="output.weight" in have, kind=kind)}
    cls_name = CLS_TENSOR[1]
    for name, shape in want.items():
        t = have.get(name)
        if t is None:
            why = " (a reranker's yes/no head: llama.cpp's RANK pooling would soft-max the raw hidden state)" \
                if name == cls_name else ""
            raise CorruptModelError(f"required tensor is missing{why}", path=h.path, field=name, offset=None)
        if t.shape != shape:
            raise CorruptModelError(f"shape {list(t.shape)} does not match the hyperparameters' {list(shape)}",
                                    path=h.path, field=name, offset=t.offset)
        allowed = NORM_TYPES if len(shape) == 1 else MATRIX_TYPES
        if t.ggml_type not in allowed:
            kind_of = "a norm vector" if len(shape) == 1 else "a weight matrix"
            raise CorruptModelError(f"type {gguf.GGMLQuantizationType(t.ggml_type).name} is not valid for {kind_of}",
                                    path=h.path, field=name, offset=t.offset)
    extra = sorted(set(have) - set(want))
    if cls_name in extra:
        raise CorruptModelError("a reranker's yes/no head in a file without RANK pooling (an embedding model has "
                                "none)", path=h.path, field=cls_name, offset=have[cls_name].offset)
    if extra:
        raise CorruptModelError(f"unexpected tensor for a Qwen3 model ({len(extra)} in all)", path=h.path,
                                field=extra[0], offset=have[extra[0]].offset)


def check_gguf(path: str | os.PathLike[str]) -> GGUFHeader:
    """Validate ``path`` as a Qwen3 embedding or reranker GGUF that llama.cpp can load and run safely;
    its header.

    Raises :class:`CorruptModelError` (a :class:`ModelLoadError`) naming the field and byte offset
    of the first problem, or :class:`ModelLoadError` for a file that cannot be opened, is not a
    regular file, or is not a Qwen3 model. See the module docstring for what is checked and which
    llama.cpp assertion each check keeps the process from.
    """
    path = Path(path)
    with mapped(path) as (view, size):
        h = parse_view(view, path, size)
        arch = _check_general(h)
        tokens, merges, token_type = _check_tokenizer_keys(h)
        dims = _check_hparams(h, arch, tokens.count)
        _check_qembed_keys(h, dims)
        kind = _check_kind(h, arch, view)
        _check_tensors(h, dims, kind)
        check_vocabulary(h, view, tokens, merges, token_type)
    return h
