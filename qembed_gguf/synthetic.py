"""Random-weight Qwen3-Embedding checkpoints with the real layout, for tests, demos and benchmarks.

The weights are random, so the vectors such a model produces mean nothing; everything else is
real: config.json as the hub repositories have it, tensor names without the ``model.`` prefix
(as the Qwen3-Embedding repositories store them), bf16 safetensors (single file or sharded with
an index), a byte-level BPE tokenizer.json with the ``<|endoftext|>`` TemplateProcessing
post-processor, and the sentence-transformers side files (last-token pooling, query prompt).

``kind="reranker"`` writes a Qwen3-Reranker checkpoint instead, as the hub repositories have it:
``model.``-prefixed names, an ``lm_head`` unless the embeddings are tied, a tokenizer that appends
nothing (the prompt's own template ends every input), a README that names it a Qwen3-Reranker
(how llama.cpp's converter recognises one), no sentence-transformers files.

Writing is streamed tensor by tensor, so a 4B-shaped checkpoint (~8 GB) is made in bounded memory.
Generation is deterministic: each tensor's values depend only on ``seed`` and the tensor's name.
"""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import InputError
from .layout import Qwen3Shape, tensor_table

__all__ = ["Qwen3Shape", "SHAPES", "KINDS", "qwen3_config", "tensor_specs", "write_checkpoint", "write_safetensors"]

KINDS = ("embedding", "reranker")


# Shapes used by the tests and benchmarks. "tiny" is the bundled random-weight test model's shape.
SHAPES = {
    "tiny": Qwen3Shape(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, ffn=768, vocab=4096),
    # rows of 96/160 are not multiples of 256: K-quants must fall back, Q8_0/Q4_0 still apply
    "odd": Qwen3Shape(hidden=96, layers=3, heads=3, kv_heads=1, head_dim=32, ffn=160, vocab=4200),
    # the tiny shape with the real vocabulary: tokenizer_from=realvocab.write_qwen3_tokenizer(folder)
    "realvocab-small": Qwen3Shape(hidden=256, layers=2, heads=4, kv_heads=2, head_dim=64, ffn=768, vocab=151669),
}


def qwen3_config(shape: Qwen3Shape, *, eos_token_id: int, tie_word_embeddings: bool = True) -> dict:
    """config.json of a Qwen3-Embedding checkpoint with ``shape`` (``eos_token_id``: ``<|endoftext|>``)."""
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": eos_token_id,
        "eos_token_id": eos_token_id,
        "head_dim": shape.head_dim,
        "hidden_act": "silu",
        "hidden_size": shape.hidden,
        "initializer_range": 0.02,
        "intermediate_size": shape.ffn,
        "max_position_embeddings": shape.context,
        "max_window_layers": shape.layers,
        "model_type": "qwen3",
        "num_attention_heads": shape.heads,
        "num_hidden_layers": shape.layers,
        "num_key_value_heads": shape.kv_heads,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "sliding_window": None,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": shape.vocab,
    }


def tensor_specs(shape: Qwen3Shape, *, prefix: str = "", lm_head: bool = False) -> list[tuple[str, tuple[int, ...]]]:
    """(name, HF shape) of every tensor of a Qwen3-Embedding checkpoint, in HF order (the layout
    table's; ``prefix="model."`` as Qwen3ForCausalLM checkpoints name them). ``lm_head``: the
    separate output layer too, named ``lm_head.weight`` (never prefixed), as a Qwen3ForCausalLM
    checkpoint with untied embeddings stores it."""
    specs = [(prefix + t.hf_name, t.shape) for t in tensor_table(shape)]
    if lm_head:
        out = tensor_table(shape, output=True)[-1]
        specs.append((out.hf_name, out.shape))
    return specs


def _f32_to_bf16_bits(values: np.ndarray) -> np.ndarray:
    """Round float32 to bfloat16 (nearest, ties to even) and return the raw uint16 bits."""
    bits = values.astype(np.float32, copy=False).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))
    return (rounded >> np.uint32(16)).astype(np.uint16)


_INIT_STD = 0.02
_CHUNK_ELEMENTS = 1 << 24  # 16 M values (64 MB of float32) per generation step


def _random_tensor_chunks(name: str, shape: tuple[int, ...], seed: int) -> Iterator[np.ndarray]:
    """Deterministic bf16 values (as uint16 bits) for one tensor, in row chunks."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    if len(shape) == 1:  # RMSNorm weights: around one
        yield _f32_to_bf16_bits(1.0 + 0.1 * rng.standard_normal(shape[0], dtype=np.float32))
        return
    rows, cols = shape
    std = _INIT_STD  # as transformers initialises Qwen3 (config.json "initializer_range")
    step = max(1, _CHUNK_ELEMENTS // cols)
    for start in range(0, rows, step):
        n = min(step, rows - start)
        yield _f32_to_bf16_bits(rng.standard_normal((n, cols), dtype=np.float32) * np.float32(std))


def write_safetensors(path: Path, tensors: list[tuple[str, tuple[int, ...]]], chunks, *, dtype: str = "BF16") -> None:
    """Stream a safetensors file: header from ``tensors``, data from ``chunks(name, shape)``."""
    itemsize = {"BF16": 2, "F16": 2, "F32": 4}[dtype]
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shp in tensors:
        nbytes = int(np.prod(shp)) * itemsize
        header[name] = {"dtype": dtype, "shape": list(shp), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for name, shp in tensors:
            for chunk in chunks(name, shp):
                fh.write(np.ascontiguousarray(chunk).tobytes())


def write_checkpoint(
    folder: str | Path,
    shape: Qwen3Shape,
    *,
    tokenizer_from: str | Path,
    seed: int = 0,
    shards: int = 1,
    prefix: str | None = None,
    name: str | None = None,
    kind: str = "embedding",
    tie_word_embeddings: bool = True,
) -> Path:
    """Write a random-weight Qwen3-Embedding (or ``kind="reranker"``: Qwen3-Reranker) checkpoint
    with ``shape`` into ``folder``.

    ``tokenizer_from`` is a checkpoint folder whose tokenizer.json, tokenizer_config.json and
    sentence-transformers files are copied (the bundled tiny model's, usually). ``shards > 1``
    writes ``model-0000i-of-0000n.safetensors`` plus ``model.safetensors.index.json``;
    ``prefix="model."`` stores names as Qwen3ForCausalLM checkpoints do (a reranker's default).
    ``tie_word_embeddings=False`` adds the separate ``lm_head`` (what a reranker scores with).
    """
    if kind not in KINDS:
        raise InputError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    reranker = kind == "reranker"
    prefix = ("model." if reranker else "") if prefix is None else prefix
    name = name or ("random-qwen3-reranker" if reranker else "random-qwen3-embedding")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_from = Path(tokenizer_from)
    tokenizer = json.loads((tokenizer_from / "tokenizer.json").read_text("utf-8"))
    ids = [*tokenizer["model"]["vocab"].values(), *(t["id"] for t in tokenizer["added_tokens"])]
    if shape.vocab <= max(ids):
        raise InputError(f"shape.vocab={shape.vocab} is smaller than the tokenizer's {max(ids) + 1} tokens")
    eos_id = next(t["id"] for t in tokenizer["added_tokens"] if t["content"] == "<|endoftext|>")

    config = qwen3_config(shape, eos_token_id=eos_id, tie_word_embeddings=tie_word_embeddings)
    config["_name_or_path"] = name
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    extras = ("tokenizer_config.json",) if reranker else (
        "tokenizer.json", "tokenizer_config.json", "modules.json", "config_sentence_transformers.json",
        "sentence_bert_config.json", "1_Pooling/config.json", "2_Normalize/.keep")
    for extra in extras:
        src, dst = tokenizer_from / extra, folder / extra
        if src.exists() and src.resolve() != dst.resolve():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
    if reranker:  # Qwen3's own tokenizer: byte-level, appending nothing
        tokenizer["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                                       "use_regex": False}
        (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False), encoding="utf-8")
        (folder / "README.md").write_text(f"# Qwen3-Reranker (random weights: {name})\n\nGenerated by "
                                          "qembed_gguf.synthetic for tests; its scores mean nothing.\n",
                                          encoding="utf-8")

    specs = tensor_specs(shape, prefix=prefix, lm_head=not tie_word_embeddings)
    chunks = lambda n, s: _random_tensor_chunks(n.removeprefix(prefix), s, seed)  # noqa: E731
    if shards == 1:
        write_safetensors(folder / "model.safetensors", specs, chunks)
        return folder
    per = -(-len(specs) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = specs[i * per:(i + 1) * per]
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(folder / fname, part, chunks)
        for n, s in part:
            weight_map[n] = fname
            total += int(np.prod(s)) * 2
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    return folder
