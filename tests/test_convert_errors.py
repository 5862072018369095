"""Corrupt or unsupported inputs raise the documented typed error and leave no output file;
existing outputs are not overwritten without force; an interrupted conversion leaves nothing."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from qembed_gguf import convert
from qembed_gguf.errors import (
    CheckpointFormatError,
    ConversionError,
    OutputExistsError,
    TensorMismatchError,
    UnknownModelError,
    UnsupportedModelError,
)


@pytest.fixture
def ckpt(tmp_path, tiny_dir) -> Path:
    """A private, mutable copy of the bundled checkpoint."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    edit(header)
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def _no_output(out_dir: Path) -> None:
    leftovers = [p.name for p in out_dir.iterdir()]
    assert leftovers == [], f"conversion left files behind: {leftovers}"


def _convert_fails(src, out_dir: Path, error, match: str, **kwargs):
    out_dir.mkdir(exist_ok=True)
    with pytest.raises(error, match=match) as info:
        convert(src, outfile=out_dir / "out.gguf", quiet=True, **kwargs)
    _no_output(out_dir)
    return info.value


def test_truncated_safetensors(ckpt, tmp_path):
    st = ckpt / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-1000])
    err = _convert_fails(ckpt, tmp_path / "out", CheckpointFormatError, "truncated")
    assert err.path == st


def test_bad_header_json(ckpt, tmp_path):
    st = ckpt / "model.safetensors"
    raw = bytearray(st.read_bytes())
    raw[8] = ord("[")  # '{' → '[' breaks the JSON at byte offset 8+
    st.write_bytes(bytes(raw))
    err = _convert_fails(ckpt, tmp_path / "out", CheckpointFormatError, "not valid JSON")
    assert err.offset is not None and err.offset >= 8


def test_out_of_range_offsets(ckpt, tmp_path):
    def edit(h):
        h["norm.weight"]["data_offsets"][1] += 10 ** 9
    _rewrite_header(ckpt / "model.safetensors", edit)
    _convert_fails(ckpt, tmp_path / "out", CheckpointFormatError, "norm.weight.*run past")


def test_missing_tensor(ckpt, tmp_path):
    from safetensors.torch import load_file, save_file  # an independent writer (bf16 needs torch)

    tensors = load_file(ckpt / "model.safetensors")
    del tensors["layers.1.self_attn.k_norm.weight"]
    save_file(tensors, ckpt / "model.safetensors")
    err = _convert_fails(ckpt, tmp_path / "out", TensorMismatchError, "missing")
    assert err.tensor == "layers.1.self_attn.k_norm.weight"


def test_unknown_tensor(ckpt, tmp_path):
    def edit(h):
        h["layers.0.mlp.extra_proj.weight"] = h.pop("layers.0.mlp.up_proj.weight")
    _rewrite_header(ckpt / "model.safetensors", edit)
    err = _convert_fails(ckpt, tmp_path / "out", TensorMismatchError, "not part of a Qwen3")
    assert err.tensor == "layers.0.mlp.extra_proj.weight"


def test_shape_disagrees_with_config(ckpt, tmp_path):
    config = json.loads((ckpt / "config.json").read_text())
    config["intermediate_size"] = 512
    (ckpt / "config.json").write_text(json.dumps(config))
    err = _convert_fails(ckpt, tmp_path / "out", TensorMismatchError, r"shape \[768, 256\] but config.json implies \[512, 256\]")
    assert err.tensor.endswith("mlp.gate_proj.weight")


def test_bin_checkpoint_refused(tmp_path, tiny_dir):
    src = tmp_path / "pickled"
    src.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_dir / name, src / name)
    (src / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    _convert_fails(src, tmp_path / "out", UnsupportedModelError, "pickle")


@pytest.mark.parametrize("edit, match", [
    ({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}, "architectures"),
    ({"architectures": ["BertModel"]}, "architectures"),
    ({"model_type": "qwen2"}, "model_type"),
    ({"attention_bias": True}, "attention_bias"),
])
def test_non_qwen3_config(ckpt, tmp_path, edit, match):
    config = json.loads((ckpt / "config.json").read_text())
    config.update(edit)
    (ckpt / "config.json").write_text(json.dumps(config))
    _convert_fails(ckpt, tmp_path / "out", UnsupportedModelError, match)


def test_broken_config_json(ckpt, tmp_path):
    (ckpt / "config.json").write_text('{"hidden_size": 256,\n "num_hidden_layers": }')
    err = _convert_fails(ckpt, tmp_path / "out", CheckpointFormatError, "config.json is not valid JSON")
    assert err.offset == len('{"hidden_size": 256,\n "num_hidden_layers": ')


def test_wrong_pretokenizer_refused(ckpt, tmp_path):
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    _convert_fails(ckpt, tmp_path / "out", UnsupportedModelError, "pre_tokenizer is not Qwen2")


def test_unknown_outtype_and_source(tiny_dir, tmp_path):
    _convert_fails(tiny_dir, tmp_path / "out", ConversionError, "unknown output type", outtype="q2_xx")
    _convert_fails("no-such-model", tmp_path / "out", UnknownModelError, "neither a folder")


def test_existing_output_needs_force(tiny_dir, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="--force"):
        convert(tiny_dir, outtype="f16", outfile=out, quiet=True)
    assert out.read_bytes() == b"precious"
    convert(tiny_dir, outtype="f16", outfile=out, quiet=True, force=True)
    assert out.read_bytes()[:4] == b"GGUF"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


@pytest.mark.parametrize("outtype", ["q8_0", "q4_k_m"])
def test_interrupt_leaves_nothing(tiny_dir, tmp_path, monkeypatch, outtype):
    """Ctrl-C in the middle of writing tensor data: no .gguf, no temporary file."""
    import qembed_gguf.converter as conv

    calls = {"n": 0}
    real = conv.encode_rows

    def interrupting(rows, qtype):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(rows, qtype)

    monkeypatch.setattr(conv, "encode_rows", interrupting)
    with pytest.raises(KeyboardInterrupt):
        convert(tiny_dir, outtype=outtype, outfile=tmp_path / "m.gguf", quiet=True)
    assert calls["n"] == 5
    _no_output(tmp_path)
