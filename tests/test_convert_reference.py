"""Our F16/BF16/Q8_0 files against llama.cpp's own convert_hf_to_gguf.py on the same checkpoint:
same tensor names, shapes, types, byte-identical data, and the same tokenizer/pooling/hparam keys."""

from __future__ import annotations

import gguf
import numpy as np
import pytest

# keys that legitimately differ: descriptive naming, and our own self-describing keys
DESCRIPTIVE = {"general.name", "general.size_label", "general.basename", "general.finetune", "general.version"}


def _fields(reader: gguf.GGUFReader) -> dict:
    out = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in DESCRIPTIVE or name.startswith("qembed."):
            continue
        out[name] = (tuple(int(t) for t in field.types), field.contents())
    return out


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["tiny", "odd"])
@pytest.mark.parametrize("outtype", ["f16", "bf16", "q8_0"])
def test_same_file_as_llama_cpp_converter(shape, outtype, converted, reference_converted):
    ours, ref = gguf.GGUFReader(converted(shape, outtype)), gguf.GGUFReader(reference_converted(shape, outtype))

    ours_t = {t.name: t for t in ours.tensors}
    ref_t = {t.name: t for t in ref.tensors}
    assert sorted(ours_t) == sorted(ref_t)
    for name, r in ref_t.items():
        o = ours_t[name]
        assert o.tensor_type == r.tensor_type, name
        assert list(o.shape) == list(r.shape), name
        assert o.n_bytes == r.n_bytes, name
        assert np.array_equal(np.asarray(o.data).view(np.uint8), np.asarray(r.data).view(np.uint8)), \
            f"{name}: tensor data differs from llama.cpp's converter"

    ours_f, ref_f = _fields(ours), _fields(ref)
    assert set(ours_f) == set(ref_f)
    for key in ref_f:
        assert ours_f[key] == ref_f[key], key
    # and the facts the recipe depends on, stated outright
    assert ours.fields["qwen3.pooling_type"].contents() == gguf.PoolingType.LAST
    assert ours.fields["tokenizer.ggml.pre"].contents() == "qwen2"
    tokens = ours.fields["tokenizer.ggml.tokens"]
    assert tokens.contents(ours.fields["tokenizer.ggml.eos_token_id"].contents()) == "<|endoftext|>"
    assert tokens.contents(ours.fields["tokenizer.ggml.eot_token_id"].contents()) == "<|im_end|>"
    assert ours.fields["tokenizer.ggml.add_eos_token"].contents() is True
    assert ours.fields["tokenizer.ggml.add_bos_token"].contents() is False
