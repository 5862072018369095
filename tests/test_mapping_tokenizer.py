"""Pure planning steps: tensor mapping against config.json, the type policy, and the vocabulary
read from tokenizer.json compared with HF tokenizers' own view of the same files."""

from __future__ import annotations

import gguf
import pytest

from qembed_gguf.converter.mapping import Qwen3Params, plan_tensors
from qembed_gguf.converter.quantize import OUTTYPES, choose_type
from qembed_gguf.converter.tokenizer import read_vocab
from qembed_gguf.errors import TensorMismatchError
from qembed_gguf.synthetic import SHAPES, qwen3_config, tensor_specs

Q = gguf.GGMLQuantizationType


@pytest.mark.parametrize("prefix", ["", "model."])
def test_plan_maps_every_tensor(prefix):
    shape = SHAPES["odd"]
    params = Qwen3Params.from_config(qwen3_config(shape, eos_token_id=1))
    plan = plan_tensors(dict(tensor_specs(shape, prefix=prefix)), params)
    names = [p.gguf_name for p in plan]
    assert names[0] == "token_embd.weight" and names[-1] == "output_norm.weight"
    assert len(names) == 2 + 11 * shape.layers == len(set(names))
    assert {p.hf_name for p in plan} == {n for n, _ in tensor_specs(shape, prefix=prefix)}
    assert next(p for p in plan if p.gguf_name == "blk.2.attn_k.weight").hf_name == f"{prefix}layers.2.self_attn.k_proj.weight"


def test_plan_rejects_duplicates_and_extra_layers():
    shape = SHAPES["odd"]
    params = Qwen3Params.from_config(qwen3_config(shape, eos_token_id=1))
    tensors = dict(tensor_specs(shape))
    tensors["model.norm.weight"] = tensors["norm.weight"]
    with pytest.raises(TensorMismatchError, match="maps to 'output_norm.weight'"):
        plan_tensors(tensors, params)
    tensors = dict(tensor_specs(shape))
    tensors["layers.3.mlp.up_proj.weight"] = (shape.ffn, shape.hidden)  # only 3 layers (0..2)
    with pytest.raises(TensorMismatchError, match="beyond num_hidden_layers=3") as info:
        plan_tensors(tensors, params)
    assert info.value.tensor == "layers.3.mlp.up_proj.weight"


def test_type_policy():
    q8, q4, f16 = OUTTYPES["q8_0"], OUTTYPES["q4_0"], OUTTYPES["f16"]
    assert choose_type("blk.0.attn_norm.weight", (256,), q8) == (Q.F32, None)
    assert choose_type("blk.0.attn_q_norm.weight", (128,), q4) == (Q.F32, None)
    assert choose_type("blk.0.ffn_up.weight", (768, 256), q8) == (Q.Q8_0, None)
    assert choose_type("token_embd.weight", (4096, 256), q4) == (Q.Q4_0, None)
    assert choose_type("blk.0.ffn_up.weight", (768, 256), f16) == (Q.F16, None)
    qtype, note = choose_type("blk.0.ffn_down.weight", (96, 100), q8)
    assert qtype == Q.F16 and "not a multiple of the Q8_0 block size 32" in note


def test_vocab_matches_hf_tokenizer(tiny_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    vocab = read_vocab(tiny_dir, vocab_size=4200, bos_token_id=4070)
    assert len(vocab.tokens) == 4200 and vocab.n_padded == 4200 - len(hf)
    for token, idx in hf.get_vocab().items():
        assert vocab.tokens[idx] == token
    assert vocab.tokens[4199] == "[PAD4199]" and vocab.token_types[4199] == gguf.TokenType.UNUSED
    ids = hf.convert_tokens_to_ids
    assert vocab.eos_id == vocab.pad_id == ids("<|endoftext|>")
    assert vocab.eot_id == ids("<|im_end|>")
    assert vocab.token_types[ids("<|im_start|>")] == gguf.TokenType.CONTROL
    assert vocab.token_types[ids("<|fim_prefix|>")] == gguf.TokenType.CONTROL  # not special, but looks it
    assert vocab.token_types[ids("<think>")] == gguf.TokenType.USER_DEFINED
    assert vocab.token_types[ids("Ġthe")] == gguf.TokenType.NORMAL
    assert vocab.post_processor_eos
