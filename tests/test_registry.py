"""models/*.toml → ModelSpec: the facts of the three real models, and validation."""

from __future__ import annotations

import dataclasses

import pytest

from qembed_gguf import registry
from qembed_gguf.errors import QembedError, UnknownModelError

REAL = {  # from the model cards / config.json of the hub repositories
    "Qwen3-Embedding-0.6B": (28, 1024, 16, 8, 3072),
    "Qwen3-Embedding-4B": (36, 2560, 32, 8, 9728),
    "Qwen3-Embedding-8B": (36, 4096, 32, 8, 12288),
}


@pytest.mark.parametrize("name, shape", REAL.items())
def test_real_model_specs(name, shape):
    spec = registry.get_spec(name)
    s = spec.shape
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.ffn) == shape and spec.dim == shape[1]
    assert spec.hub_id == f"Qwen/{name}" and s.head_dim == 128 and s.vocab == 151669
    assert spec.mrl_min_dim == 32 and s.context == 32768 and spec.license == "Apache-2.0"
    assert spec.format_query("what is GGUF?") == (
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:what is GGUF?")


def test_lookup_by_alias_and_hub_id_case_insensitive():
    assert registry.get_spec("qwen3-embedding-4b") is registry.get_spec("QWEN/Qwen3-Embedding-4B")
    assert registry.get_spec("tiny").bundled == "tiny-qwen3-embedding"
    assert not registry.get_spec("tiny").semantic
    with pytest.raises(UnknownModelError, match="known models: .*Qwen3-Embedding-8B"):
        registry.get_spec("qwen3-embedding-9b")


def test_bundled_checkpoint_is_installed():
    folder = registry.bundled_dir(registry.get_spec("tiny"))
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json",
                 "1_Pooling/config.json", "config_sentence_transformers.json", "README.md"):
        assert (folder / name).is_file(), name
    assert "NON-SEMANTIC" in (folder / "README.md").read_text()
    with pytest.raises(UnknownModelError, match="not bundled"):
        registry.bundled_dir(registry.get_spec("Qwen3-Embedding-4B"))


@pytest.mark.parametrize("change, match", [
    ({"dim": 0}, "dim must be a positive integer"),
    ({"mrl_min_dim": 5000}, "mrl_min_dim"),
    ({"kv_heads": 3}, "multiple of kv_heads"),
    ({"query_template": "Query:{text}"}, "query_template"),
    ({"bundled": "x"}, "exactly one of hub_id and bundled"),
    ({"colour": "blue"}, "unknown key"),
])
def test_spec_validation(change, match):
    spec = registry.get_spec("Qwen3-Embedding-0.6B")
    data = {k: v for k, v in spec.__dict__.items() if k != "shape"}  # the TOML's flat keys:
    data.update({"dim" if k == "hidden" else k: v for k, v in dataclasses.asdict(spec.shape).items()})
    data.update(change)
    with pytest.raises(QembedError, match=match):
        registry.ModelSpec.from_mapping(data)
