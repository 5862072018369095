"""The GGUF metadata of a Qwen3-Embedding or Qwen3-Reranker file, set through gguf-py's typed setters.

An embedding model: exactly what ../shared/QWEN3_EMBEDDING.md lists: architecture qwen3, pooling
LAST, the qwen2 pre-tokenizer, EOS/PAD = ``<|endoftext|>``, EOT = ``<|im_end|>``, add_eos true,
add_bos false, no chat template (an embedding model needs none, and llama-cpp-python would
compile it with Jinja), plus the ``qembed.*`` keys (kind, MRL minimum dim, query template,
default task).

A reranker: the keys llama.cpp's converter writes for a Qwen3-Reranker — pooling RANK,
``classifier.output_labels = ["yes", "no"]`` (the rows of ``cls.output.weight``), the prompt as the
named chat template ``rerank`` (``tokenizer.chat_template.rerank`` with ``{query}`` and
``{document}``, the default instruction filled in; llama.cpp's rerank endpoint fills it per pair,
llama-cpp-python compiles it as a sandboxed Jinja template, in which it is plain text), add_eos
false (the template ends every input; an appended EOS would move the scored position), EOS =
the tokenizer's (``<|im_end|>``), no EOT or add_sep; plus ``qembed.kind = "reranker"`` and the
default task. No MRL minimum or query template: a reranker makes no vectors.
"""

from __future__ import annotations

import dataclasses

import gguf

from qembed_gguf import keys
from qembed_gguf.layout import CLS_LABELS

from .mapping import Qwen3Params
from .tokenizer import Vocab

__all__ = ["ModelInfo", "write_metadata"]


RERANK_TEMPLATE_NAME = "rerank"  # llama.cpp: llama_model_chat_template(model, "rerank")


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """Descriptive facts that do not come from config.json."""

    name: str
    source: str
    mrl_min_dim: int | None           # embedding models only
    query_template: str | None        # embedding models only
    default_task: str
    converter: str
    n_params: int
    kind: str = "embedding"
    rerank_template: str | None = None  # rerankers only: the prompt with {query} and {document}


def write_metadata(writer: gguf.GGUFWriter, params: Qwen3Params, vocab: Vocab, info: ModelInfo,
                   file_type: gguf.LlamaFileType) -> None:
    """Add every key/value of the file to ``writer`` (before its header is written)."""
    w = writer
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(info.name)
    w.add_size_label(gguf.size_label(info.n_params, 0, 0, 0))
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    w.add_block_count(params.layers)
    w.add_context_length(params.context)
    w.add_embedding_length(params.hidden)
    w.add_feed_forward_length(params.ffn)
    w.add_head_count(params.heads)
    w.add_head_count_kv(params.kv_heads)
    w.add_rope_freq_base(params.rope_theta)
    w.add_layer_norm_rms_eps(params.rms_eps)
    w.add_key_length(params.head_dim)
    w.add_value_length(params.head_dim)
    reranker = info.kind == "reranker"
    if reranker:
        w.add_pooling_type(gguf.PoolingType.RANK)
        w.add_classifier_output_labels(list(CLS_LABELS))
        w.add_chat_template([{"name": RERANK_TEMPLATE_NAME, "template": info.rerank_template}])
    else:
        w.add_pooling_type(gguf.PoolingType.LAST)

    w.add_tokenizer_model(vocab.model)
    w.add_tokenizer_pre(vocab.pre)
    w.add_token_list(vocab.tokens)
    w.add_token_types(vocab.token_types)
    w.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        w.add_bos_token_id(vocab.bos_id)
    w.add_eos_token_id(vocab.eos_id)
    if vocab.eot_id is not None:
        w.add_eot_token_id(vocab.eot_id)
    w.add_pad_token_id(vocab.pad_id)
    w.add_add_bos_token(False)
    w.add_add_eos_token(not reranker)
    if not reranker:
        w.add_add_sep_token(False)

    w.add_uint32(keys.FORMAT, keys.FORMAT_VERSION)
    w.add_string(keys.KIND, info.kind)
    if not reranker:
        w.add_uint32(keys.MRL_MIN_DIM, info.mrl_min_dim)
        w.add_string(keys.QUERY_TEMPLATE, info.query_template)
    w.add_string(keys.DEFAULT_TASK, info.default_task)
    w.add_string(keys.SOURCE, info.source)
    w.add_string(keys.CONVERTER, info.converter)
    w.add_string(keys.INTEGRITY, "0" * 64)  # placeholder: qembed_gguf.gguf_check.seal() fills it in
