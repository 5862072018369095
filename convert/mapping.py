"""Qwen3 architecture knowledge, pure: config.json → :class:`Qwen3Params`, HF tensors → GGUF plan.

Names are mapped with gguf-py's own table (``gguf.get_tensor_name_map``), which knows both the
``model.``-prefixed names of Qwen3ForCausalLM checkpoints and the unprefixed names that the
Qwen3-Embedding repositories use. Every tensor is accounted for: an unknown tensor, a missing one,
a duplicate or a shape that config.json does not allow raises :class:`TensorMismatchError`.

A Qwen3-Reranker's plan (``kind="reranker"``) keeps the decoder and replaces the output layer by
the yes/no head ``cls.output.weight``: the ``lm_head.weight`` rows of the label tokens (of
``embed_tokens.weight`` when config.json ties the embeddings), gathered as the file is written.
The lm_head itself is checked but not written (llama.cpp's RANK graph never uses it).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import gguf

from qembed_gguf.errors import CheckpointFormatError, TensorMismatchError, UnsupportedModelError
from qembed_gguf.layout import CLS_TENSOR, KINDS, Qwen3Shape, TensorSpec, tensor_table

__all__ = ["Qwen3Params", "TensorPlan", "plan_tensors"]

SUPPORTED_ARCHITECTURES = ("Qwen3ForCausalLM", "Qwen3Model")
# tensors that carry no weights llama.cpp needs (recomputed at run time)
_IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class Qwen3Params(Qwen3Shape):
    """The hyper-parameters of a Qwen3 decoder, validated: its shape and what else the GGUF records."""

    rope_theta: float = 1_000_000.0
    rms_eps: float = 1e-6
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Qwen3Params":
        archs = config.get("architectures") or []
        if not isinstance(archs, list) or not any(a in SUPPORTED_ARCHITECTURES for a in archs):
            raise UnsupportedModelError(
                f"config.json 'architectures' is {archs!r}; qembed-gguf converts Qwen3 embedding checkpoints "
                f"({' or '.join(SUPPORTED_ARCHITECTURES)})")
        if config.get("model_type", "qwen3") != "qwen3":
            raise UnsupportedModelError(f"config.json 'model_type' is {config.get('model_type')!r}, expected 'qwen3'")
        for key in ("attention_bias", "use_sliding_window"):
            if config.get(key):
                raise UnsupportedModelError(f"config.json '{key}' is true; Qwen3-Embedding models have none")
        scaling = config.get("rope_scaling")
        if scaling not in (None, {}) and not (isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default"):
            raise UnsupportedModelError(f"config.json 'rope_scaling' {scaling!r} is not supported")

        def positive_int(key: str, default: int | None = None) -> int:
            value = config.get(key, default)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointFormatError(f"config.json '{key}' must be a positive integer, got {value!r}")
            return value

        def positive_float(key: str, default: float) -> float:
            value = config.get(key, default)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise CheckpointFormatError(f"config.json '{key}' must be a positive number, got {value!r}")
            return float(value)

        hidden, heads = positive_int("hidden_size"), positive_int("num_attention_heads")
        kv_heads = positive_int("num_key_value_heads", heads)
        if heads % kv_heads:
            raise CheckpointFormatError(f"config.json 'num_attention_heads' ({heads}) is not a multiple of "
                                        f"'num_key_value_heads' ({kv_heads})")
        head_dim = config.get("head_dim") or hidden // heads
        return cls(
            hidden=hidden,
            layers=positive_int("num_hidden_layers"),
            heads=heads,
            kv_heads=kv_heads,
            head_dim=head_dim if isinstance(head_dim, int) and head_dim > 0 else positive_int("head_dim"),
            ffn=positive_int("intermediate_size"),
            vocab=positive_int("vocab_size"),
            context=positive_int("max_position_embeddings", 32768),
            rope_theta=positive_float("rope_theta", 1_000_000.0),
            rms_eps=positive_float("rms_norm_eps", 1e-6),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name → HF (PyTorch-order) shape, for every tensor a Qwen3 GGUF holds."""
        return {t.gguf_name: t.shape for t in tensor_table(self)}


@dataclasses.dataclass(frozen=True)
class TensorPlan(TensorSpec):
    """One tensor to write: its checkpoint name (as the checkpoint spells it), GGUF name, HF-order
    shape, and ``rows``: the source rows it gathers (the reranker head), None for the whole tensor."""

    rows: tuple[int, ...] | None = None


def _hf_name_hint(gguf_name: str, params: Qwen3Params) -> str:
    """The Qwen3-Embedding (unprefixed) checkpoint name of a GGUF tensor name, for messages."""
    return next(t.hf_name for t in tensor_table(params, output=True) if t.gguf_name == gguf_name)


def plan_tensors(hf_shapes: Mapping[str, tuple[int, ...]], params: Qwen3Params, *, kind: str = "embedding",
                 label_ids: tuple[int, ...] = ()) -> list[TensorPlan]:
    """Map every checkpoint tensor to its GGUF name and check it against ``params``.

    Returns the plan in llama.cpp's natural order (token_embd, blk.0 … blk.N-1, output_norm,
    output). ``lm_head.weight`` (absent from Qwen3-Embedding repos) becomes ``output.weight``.
    ``kind="reranker"``: no ``output.weight``; last, ``cls.output.weight`` gathering rows
    ``label_ids`` (the "yes" and "no" token ids) of the lm_head (of the token embeddings when tied).
    """
    if kind not in KINDS:
        raise UnsupportedModelError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, params.layers)
    expected = {t.gguf_name: t.shape for t in tensor_table(params, output=True)}  # output.weight: optional
    plans: dict[str, TensorPlan] = {}
    for hf_name, shape in hf_shapes.items():
        if hf_name.endswith(_IGNORED_SUFFIXES):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None or gguf_name not in expected:
            raise TensorMismatchError("not part of a Qwen3 embedding model (unknown name, or a layer index "
                                      f"beyond num_hidden_layers={params.layers})", tensor=hf_name)
        if gguf_name in plans:
            raise TensorMismatchError(f"maps to {gguf_name!r}, as {plans[gguf_name].hf_name!r} does", tensor=hf_name)
        if tuple(shape) != expected[gguf_name]:
            raise TensorMismatchError(f"shape {list(shape)} but config.json implies {list(expected[gguf_name])}",
                                      tensor=hf_name)
        plans[gguf_name] = TensorPlan(hf_name, gguf_name, tuple(shape))
    missing = [name for name in expected if name not in plans and name != "output.weight"]
    if missing:
        raise TensorMismatchError(f"missing from the checkpoint (GGUF name {missing[0]!r}; {len(missing)} "
                                  f"missing in all)", tensor=_hf_name_hint(missing[0], params))
    order = {name: i for i, name in enumerate(expected)}
    plan = sorted(plans.values(), key=lambda p: order[p.gguf_name])
    if kind == "embedding":
        return plan
    return [p for p in plan if p.gguf_name != "output.weight"] + [_cls_plan(plans, params, label_ids)]


def _cls_plan(plans: Mapping[str, TensorPlan], params: Qwen3Params, label_ids: tuple[int, ...]) -> TensorPlan:
    """The reranker's yes/no head: rows ``label_ids`` of the lm_head, or of the token embeddings
    when config.json ties them (as transformers computes the logits)."""
    lm_head_name, gguf_name, rule = CLS_TENSOR
    shape = rule(params)
    if len(label_ids) != shape[0] or not all(0 <= i < params.vocab for i in label_ids):
        raise TensorMismatchError(f"needs {shape[0]} label token ids below vocab_size {params.vocab}, got "
                                  f"{list(label_ids)}", tensor=gguf_name)
    if params.tie_word_embeddings:
        source = plans["token_embd.weight"].hf_name
    elif "output.weight" in plans:
        source = plans["output.weight"].hf_name
    else:
        raise TensorMismatchError("missing from the checkpoint: config.json says tie_word_embeddings is false, so a "
                                  "Qwen3-Reranker scores with its own lm_head (the rows of 'yes' and 'no')",
                                  tensor=lm_head_name)
    return TensorPlan(source, gguf_name, shape, rows=tuple(label_ids))
