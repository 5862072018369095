"""The GPU memory planner against sizes computed by hand for the real Qwen3-Embedding shapes."""

from __future__ import annotations

import pytest
from gguf import GGMLQuantizationType as T

from qembed_gguf.gpuplan import MiB, ModelGeometry, kv_bytes_per_layer, plan_offload, tensor_nbytes

# (n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab): the published configs
REAL = {"0.6b": (28, 1024, 16, 8, 128, 3072, 151669), "4b": (36, 2560, 32, 8, 128, 9728, 151665),
        "8b": (36, 4096, 32, 8, 128, 12288, 151665)}


def geometry(size: str, matrix_type: T) -> ModelGeometry:
    n_layer, h, heads, kv, hd, ff, vocab = REAL[size]
    q = heads * hd
    tensors = [("token_embd.weight", matrix_type, (h, vocab)), ("output_norm.weight", T.F32, (h,))]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", T.F32, (h,)), (p + "attn_q.weight", matrix_type, (h, q)),
                    (p + "attn_k.weight", matrix_type, (h, kv * hd)), (p + "attn_v.weight", matrix_type, (h, kv * hd)),
                    (p + "attn_output.weight", matrix_type, (q, h)), (p + "attn_q_norm.weight", T.F32, (hd,)),
                    (p + "attn_k_norm.weight", T.F32, (hd,)), (p + "ffn_norm.weight", T.F32, (h,)),
                    (p + "ffn_gate.weight", matrix_type, (h, ff)), (p + "ffn_up.weight", matrix_type, (h, ff)),
                    (p + "ffn_down.weight", matrix_type, (ff, h))]
    return ModelGeometry.from_tensors(tensors, n_layer=n_layer, n_embd=h, n_head=heads, n_head_kv=kv, head_dim=hd,
                                      n_ff=ff)


def test_sizes_by_hand():
    g = geometry("0.6b", T.Q8_0)
    # one block: q 1024x2048, k and v 1024x1024, o 2048x1024, gate/up/down 1024x3072: 15,728,640 weights,
    # Q8_0 = 34 bytes per 32; norms 2x1024 + 2x128 float32
    assert g.layer_bytes[0] == 15_728_640 // 32 * 34 + (2 * 1024 + 2 * 128) * 4
    assert g.input_bytes == 1024 * 151669 // 32 * 34 and g.output_bytes == 1024 * 4
    # KV: 8192 tokens x 8 kv heads x 128 x (K+V) x 2 bytes = 32 MiB per block
    assert kv_bytes_per_layer(g, 8192, "f16") == 32 * MiB
    assert kv_bytes_per_layer(g, 8192, "q8_0") == 8192 * 8 * 128 // 32 * 34 * 2
    assert tensor_nbytes(T.Q4_K, (256, 4)) == 4 * 144 and tensor_nbytes(T.F16, (3, 5)) == 30
    with pytest.raises(ValueError):
        tensor_nbytes(T.Q4_K, (100,))


@pytest.mark.parametrize("size, qtype, budget_gb, ctx", [
    ("4b", T.Q4_K, 4, 8192), ("4b", T.Q8_0, 4, 8192), ("8b", T.F16, 12, 32768), ("0.6b", T.Q8_0, 4, 2048),
    ("8b", T.Q4_K, 6, 8192), ("0.6b", T.F16, 2, 32768),
])
def test_plan_is_the_largest_layer_count_that_fits(size, qtype, budget_gb, ctx):
    g = geometry(size, qtype)
    budget = budget_gb * 1024 * MiB
    plan = plan_offload(g, budget_bytes=budget, n_ctx=ctx)

    def by_hand(n: int) -> float:  # the module docstring's formula, written out independently
        if n == 0:
            return 0
        blocks = min(n, g.n_layer)
        weights = sum(g.layer_bytes[-blocks:]) + (g.output_bytes if n > g.n_layer else 0)
        kv = blocks * ctx * g.n_head_kv * g.head_dim * 2 * 2
        compute = 4 * min(512, ctx) * (6 * g.n_embd + 3 * g.n_ff)
        return (weights + kv + compute + 300 * MiB) * 1.05

    assert by_hand(plan.n_gpu_layers) <= budget
    if plan.n_gpu_layers <= g.n_layer:
        assert by_hand(plan.n_gpu_layers + 1) > budget
    assert plan.fits_fully == (plan.n_gpu_layers == g.n_layer + 1)
    assert plan.gpu_bytes == int(by_hand(plan.n_gpu_layers))


def test_4b_q4_at_8k_fits_a_4gb_card_fully():
    plan = plan_offload(geometry("4b", T.Q4_K), budget_bytes=4096 * MiB, n_ctx=8192)
    assert plan.fits_fully, plan  # 36 blocks x ~57 MiB + 36 x 32 MiB KV + buffers < 4 GiB


def test_no_budget_means_cpu_and_kv_type_matters():
    g = geometry("8b", T.F16)
    assert plan_offload(g, budget_bytes=0, n_ctx=8192).n_gpu_layers == 0
    f16 = plan_offload(g, budget_bytes=8192 * MiB, n_ctx=32768)
    q8 = plan_offload(g, budget_bytes=8192 * MiB, n_ctx=32768, kv_type="q8_0")
    assert q8.n_gpu_layers >= f16.n_gpu_layers
