"""The Qwen3 decoder's layout, as data: the numbers that fix its shapes, and its tensor table.

One table of (checkpoint name, GGUF name, shape rule) serves every part that must agree on it:
the converter's mapping and checks (:mod:`qembed_gguf.converter.mapping`), the GGUF header checks
(:mod:`qembed_gguf.gguf_check`), the synthetic checkpoints (:mod:`qembed_gguf.synthetic`) and the
GPU planner (:mod:`qembed_gguf.gpuplan`). Checkpoint names are the Qwen3-Embedding repositories'
(unprefixed; Qwen3ForCausalLM checkpoints add ``model.``); shapes are in PyTorch order (rows
first), as safetensors stores them; GGUF (ggml) order is the reverse. Byte sizes come from gguf's
own quantization tables (:func:`tensor_nbytes`).

The two kinds of model (:data:`KINDS`) share the decoder; a Qwen3-Reranker file adds the yes/no
head ``cls.output.weight`` (:data:`CLS_TENSOR`: the lm_head's rows of the :data:`CLS_LABELS`
tokens, which llama.cpp's RANK pooling multiplies the last hidden state with and soft-maxes).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import gguf

from .errors import InputError

__all__ = ["Qwen3Shape", "TensorSpec", "tensor_table", "tensor_nbytes", "BLOCK_TENSORS", "OUTPUT_TENSOR",
           "CLS_TENSOR", "CLS_LABELS", "KINDS"]

#: what a Qwen3 GGUF can be: an embedding model (LAST pooling) or a reranker (RANK pooling + yes/no head)
KINDS = ("embedding", "reranker")
#: the reranker head's rows, in order: the tokens whose logits a Qwen3-Reranker compares (its
#: ``classifier.output_labels``; llama.cpp's softmax makes row 0 the relevance probability)
CLS_LABELS = ("yes", "no")


@dataclasses.dataclass(frozen=True)
class Qwen3Shape:
    """The numbers that fix a Qwen3 decoder's tensor shapes (``hidden`` is the embedding dim)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    ffn: int
    vocab: int
    context: int = 32768

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of a Qwen3 model: checkpoint name (unprefixed), GGUF name, PyTorch-order shape."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]

    @property
    def ggml_shape(self) -> tuple[int, ...]:
        """The shape as a GGUF header stores it (ne0, the row length, first)."""
        return self.shape[::-1]

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


_Rule = Callable[[Qwen3Shape], tuple[int, ...]]

#: the tensors of every block ``{i}``, in llama.cpp's order
BLOCK_TENSORS: tuple[tuple[str, str, _Rule], ...] = (
    ("layers.{i}.input_layernorm.weight", "blk.{i}.attn_norm.weight", lambda s: (s.hidden,)),
    ("layers.{i}.self_attn.q_proj.weight", "blk.{i}.attn_q.weight", lambda s: (s.q_dim, s.hidden)),
    ("layers.{i}.self_attn.k_proj.weight", "blk.{i}.attn_k.weight", lambda s: (s.kv_dim, s.hidden)),
    ("layers.{i}.self_attn.v_proj.weight", "blk.{i}.attn_v.weight", lambda s: (s.kv_dim, s.hidden)),
    ("layers.{i}.self_attn.o_proj.weight", "blk.{i}.attn_output.weight", lambda s: (s.hidden, s.q_dim)),
    ("layers.{i}.self_attn.q_norm.weight", "blk.{i}.attn_q_norm.weight", lambda s: (s.head_dim,)),
    ("layers.{i}.self_attn.k_norm.weight", "blk.{i}.attn_k_norm.weight", lambda s: (s.head_dim,)),
    ("layers.{i}.post_attention_layernorm.weight", "blk.{i}.ffn_norm.weight", lambda s: (s.hidden,)),
    ("layers.{i}.mlp.gate_proj.weight", "blk.{i}.ffn_gate.weight", lambda s: (s.ffn, s.hidden)),
    ("layers.{i}.mlp.up_proj.weight", "blk.{i}.ffn_up.weight", lambda s: (s.ffn, s.hidden)),
    ("layers.{i}.mlp.down_proj.weight", "blk.{i}.ffn_down.weight", lambda s: (s.hidden, s.ffn)),
)
_FIRST = ("embed_tokens.weight", "token_embd.weight", lambda s: (s.vocab, s.hidden))
_LAST = ("norm.weight", "output_norm.weight", lambda s: (s.hidden,))
#: the separate output layer of a checkpoint with untied embeddings (an embedding model never uses it)
OUTPUT_TENSOR = ("lm_head.weight", "output.weight", lambda s: (s.vocab, s.hidden))
#: a reranker's yes/no head: rows CLS_LABELS of ``lm_head.weight`` (of ``embed_tokens.weight`` when
#: the embeddings are tied); no checkpoint stores it as such, the converter gathers the rows
CLS_TENSOR = ("lm_head.weight", "cls.output.weight", lambda s: (len(CLS_LABELS), s.hidden))


def tensor_table(shape: Qwen3Shape, *, output: bool = False, kind: str = "embedding") -> list[TensorSpec]:
    """Every tensor of a Qwen3 model with ``shape``, in llama.cpp's order (token_embd, blk.0 …
    blk.N-1, output_norm, with ``output`` the separate output layer, and for ``kind="reranker"``
    the yes/no head ``cls.output.weight``)."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    rows: list[tuple[str, str, _Rule]] = [_FIRST]
    rows += [(hf.format(i=i), name.format(i=i), rule) for i in range(shape.layers) for hf, name, rule in BLOCK_TENSORS]
    rows.append(_LAST)
    if output:
        rows.append(OUTPUT_TENSOR)
    if kind == "reranker":
        rows.append(CLS_TENSOR)
    return [TensorSpec(hf, name, rule(shape)) for hf, name, rule in rows]


def tensor_nbytes(ggml_type: int, shape: Sequence[int]) -> int:
    """Bytes of a tensor of ``ggml_type`` and ``shape`` (either order), from gguf's quant tables."""
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    n = 1
    for d in shape:
        n *= int(d)
    if n % block:
        raise InputError(f"{n} values are not a whole number of {block}-value blocks")
    return n // block * type_size
