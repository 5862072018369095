"""The GPU memory planner: sizes computed by hand for the real Qwen3-Embedding shapes, the type
mixes checked against files llama.cpp's quantizer wrote, and the KV/compute terms checked against
the buffers llama.cpp itself reports when it creates a context."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
from gguf import GGMLQuantizationType as T

from qembed_gguf import Embedder, registry
from qembed_gguf.errors import InputError
from qembed_gguf.gguf_check import check_gguf
from qembed_gguf.gpuplan import (GiB, MiB, ModelGeometry, compute_buffer_bytes, kv_bytes_per_layer, max_full_context,
                                 offload_usage, parse_size, plan_offload, resolve_gpu_layers, tensor_nbytes)
from qembed_gguf.synthetic import Qwen3Shape, write_checkpoint

# (n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab) of the real models, from the
# registry (models/*.toml, checked against the model cards in test_registry), not copied here
REAL = {size: (s.layers, s.hidden, s.heads, s.kv_heads, s.head_dim, s.ffn, s.vocab)
        for size in ("0.6b", "4b", "8b") for s in [registry.get_spec(f"qwen3-embedding-{size}").shape]}
ROOT = Path(__file__).resolve().parents[1]


def more_bits(i: int, n: int) -> bool:  # written out from llama.cpp's use_more_bits
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def geometry(size: str, matrix_type: T, *, q4_k_m: bool = False) -> ModelGeometry:
    """A Qwen3 tensor list written out by hand; ``q4_k_m``: llama.cpp's Q4_K_M mix (Q6_K for
    attn_v/ffn_down in the "more bits" layers and for token_embd, Q4_K elsewhere)."""
    n_layer, h, heads, kv, hd, ff, vocab = REAL[size]
    q = heads * hd

    def t(i: int, kind: str) -> T:
        return T.Q6_K if q4_k_m and kind in ("attn_v", "ffn_down") and more_bits(i, n_layer) else matrix_type

    tensors = [("token_embd.weight", T.Q6_K if q4_k_m else matrix_type, (h, vocab)),
               ("output_norm.weight", T.F32, (h,))]
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors += [(p + "attn_norm.weight", T.F32, (h,)), (p + "attn_q.weight", t(i, "attn_q"), (h, q)),
                    (p + "attn_k.weight", t(i, "attn_k"), (h, kv * hd)),
                    (p + "attn_v.weight", t(i, "attn_v"), (h, kv * hd)),
                    (p + "attn_output.weight", t(i, "attn_output"), (q, h)), (p + "attn_q_norm.weight", T.F32, (hd,)),
                    (p + "attn_k_norm.weight", T.F32, (hd,)), (p + "ffn_norm.weight", T.F32, (h,)),
                    (p + "ffn_gate.weight", t(i, "ffn_gate"), (h, ff)), (p + "ffn_up.weight", t(i, "ffn_up"), (h, ff)),
                    (p + "ffn_down.weight", t(i, "ffn_down"), (ff, h))]
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
    assert kv_bytes_per_layer(g, 8192, "f32") == 64 * MiB
    assert tensor_nbytes(T.Q4_K, (256, 4)) == 4 * 144 and tensor_nbytes(T.F16, (3, 5)) == 30
    with pytest.raises(ValueError):
        tensor_nbytes(T.Q4_K, (100,))
    # compute, 0.6B at ubatch 512 / 8K with flash attention: 4 x 512 x (6x1024 + 3x3072) + 512 x 8192 x 2
    # (the mask) + 2 MiB; without: a float32 mask and 16 heads' 512 x 8192 float32 scores
    assert compute_buffer_bytes(g, 512, 8192) == 4 * 512 * 15360 + 8 * MiB + 2 * MiB
    assert compute_buffer_bytes(g, 512, 8192, flash_attn=False) == \
        4 * 512 * 15360 + 16 * MiB + 4 * 512 * 8192 * 16 + 2 * MiB


def test_4b_q4_k_m_block_by_hand():
    g = geometry("4b", T.Q4_K, q4_k_m=True)
    # block 0 is a "more bits" layer: attn_v (2560x1024) and ffn_down (9728x2560) are Q6_K (210 B / 256)
    q4 = (2560 * 4096 + 2560 * 1024 + 4096 * 2560 + 2 * 2560 * 9728) // 256 * 144
    q6 = (2560 * 1024 + 9728 * 2560) // 256 * 210
    assert g.layer_bytes[0] == q4 + q6 + (2 * 2560 + 2 * 128) * 4
    # 36 layers: more bits below 36 // 8 = 4, from 7 * 36 // 8 = 31, and where (i - 4) % 3 == 2
    assert g.layer_bytes[4] < g.layer_bytes[0] == g.layer_bytes[3] == g.layer_bytes[6] == g.layer_bytes[31]
    assert g.layer_bytes[4] == g.layer_bytes[5] == g.layer_bytes[28] < g.layer_bytes[30]


def test_offload_order_is_output_first_then_last_blocks():
    g = geometry("0.6b", T.Q8_0)
    kw = dict(n_ctx=2048, margin=0.0, overhead_bytes=0)
    assert offload_usage(g, 0, **kw).total == 0
    one = offload_usage(g, 1, **kw)  # llama.cpp: n_gpu_layers=1 is the output layer alone
    assert one.blocks == 0 and one.weights == g.output_bytes and one.kv == 0
    three = offload_usage(g, 3, **kw)
    assert three.blocks == 2 and three.weights == g.output_bytes + g.layer_bytes[-1] + g.layer_bytes[-2]
    assert offload_usage(g, -1, **kw) == offload_usage(g, g.n_layer + 1, **kw) == offload_usage(g, 999, **kw)
    full = offload_usage(g, -1, **kw)
    assert full.blocks == 28 and full.weights == sum(g.layer_bytes) + g.output_bytes  # token_embd stays home
    # a partial offload adds one block of scratch for the host weights copied in ("op offload")
    assert three.compute == full.compute + max(g.layer_bytes)


@pytest.mark.parametrize("size, qtype, budget_gb, ctx", [
    ("4b", T.Q4_K, 4, 8192), ("4b", T.Q8_0, 4, 8192), ("8b", T.F16, 12, 32768), ("0.6b", T.Q8_0, 4, 2048),
    ("8b", T.Q4_K, 6, 8192), ("0.6b", T.F16, 2, 32768), ("8b", T.Q8_0, 1, 2048),
])
def test_plan_is_the_largest_layer_count_that_fits(size, qtype, budget_gb, ctx):
    g = geometry(size, qtype)
    budget = budget_gb * GiB
    plan = plan_offload(g, budget_bytes=budget, n_ctx=ctx)

    def by_hand(n: int) -> int:  # the module docstring's formula, written out independently
        if n == 0:
            return 0
        blocks = min(n - 1, g.n_layer)
        weights = g.output_bytes + sum(g.layer_bytes[g.n_layer - blocks:])
        kv = blocks * ctx * g.n_head_kv * g.head_dim * 2 * 2
        compute = 4 * min(512, ctx) * (6 * g.n_embd + 3 * g.n_ff) + min(512, ctx) * ctx * 2 + 2 * MiB
        if blocks < g.n_layer:
            compute += max(g.layer_bytes)
        return int((weights + kv + compute + 300 * MiB) * 1.05)

    assert by_hand(plan.n_gpu_layers) <= budget
    if plan.n_gpu_layers <= g.n_layer:
        assert by_hand(plan.n_gpu_layers + 1) > budget
    assert plan.fits_fully == (plan.n_gpu_layers == g.n_layer + 1)
    assert plan.gpu_bytes == by_hand(plan.n_gpu_layers)
    assert plan.full_usage.total == by_hand(g.n_layer + 1)
    # host: everything not on the GPU (weights and KV)
    total_kv = g.n_layer * ctx * g.n_head_kv * g.head_dim * 4
    assert plan.host_bytes == g.weight_bytes + total_kv - plan.usage.weights - plan.usage.kv


def test_4b_q4_k_m_at_8k_fits_a_4gb_card_fully():
    spec = registry.get_spec("qwen3-embedding-4b")
    g = ModelGeometry.from_spec(spec, "q4_k_m")
    hand = geometry("4b", T.Q4_K, q4_k_m=True)
    assert g.layer_bytes == hand.layer_bytes and g.output_bytes == hand.output_bytes
    plan = plan_offload(g, budget_bytes=parse_size("4GB"), n_ctx=8192)
    assert plan.fits_fully, plan.describe()  # 36 x ~57 MiB of weights + 36 x 32 MiB of KV + buffers
    assert 3.5 * GiB < plan.gpu_bytes < 4 * GiB
    # and at 32K it says exactly how many blocks do
    long = plan_offload(g, budget_bytes=parse_size("4GB"), n_ctx=32768)
    assert not long.fits_fully and 0 < long.usage.blocks < 36
    assert long.describe().startswith(f"Qwen3-Embedding-4B Q4_K_M: n_gpu_layers={long.usage.n_gpu_layers}: the output "
                                      f"layer and the last {long.usage.blocks} of 36 blocks")


def test_no_budget_means_cpu_and_kv_type_matters():
    g = geometry("8b", T.F16)
    assert plan_offload(g, budget_bytes=0, n_ctx=8192).n_gpu_layers == 0
    f16 = plan_offload(g, budget_bytes=8 * GiB, n_ctx=32768)
    q8 = plan_offload(g, budget_bytes=8 * GiB, n_ctx=32768, kv_type="q8_0")
    assert q8.n_gpu_layers > f16.n_gpu_layers
    with pytest.raises(InputError):
        plan_offload(g, budget_bytes=-1, n_ctx=8192)
    with pytest.raises(InputError):
        kv_bytes_per_layer(g, 8192, "q4_0")


def test_max_full_context_is_the_boundary():
    g = geometry("4b", T.Q4_K, q4_k_m=True)
    budget = 4 * GiB
    n = max_full_context(g, budget_bytes=budget)
    assert n % 256 == 0 and n > 8192
    assert offload_usage(g, -1, n_ctx=n).total <= budget < offload_usage(g, -1, n_ctx=n + 256).total
    assert max_full_context(g, budget_bytes=GiB) == 0


@pytest.mark.parametrize("text, expected", [
    ("4GB", 4 * GiB), ("4 GiB", 4 * GiB), ("3.5G", int(3.5 * GiB)), ("3500MiB", 3500 * MiB), ("3500M", 3500 * MiB),
    ("512kb", 512 << 10), ("123", 123), (123, 123), ("1TB", 1 << 40), ("10b", 10),
])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "4 gigs", "GB", "-1GB", "4iB", "1e9", -5, "4GBB"])
def test_parse_size_refuses(text):
    with pytest.raises(InputError, match="memory size"):
        parse_size(text)


def test_resolve_gpu_layers():
    g = geometry("4b", T.Q4_K, q4_k_m=True)
    common = dict(geometry=lambda: g, n_ctx=8192, n_ubatch=512, kv_type="f16", flash_attn=True)
    cpu = resolve_gpu_layers("auto", vram_budget=None, offload_supported=False, free_bytes=None, **common)
    assert cpu.n_gpu_layers == 0 and cpu.plan is None and "no GPU backend" in cpu.reason
    explicit = resolve_gpu_layers(-1, vram_budget=None, offload_supported=False, free_bytes=None, **common)
    assert explicit.n_gpu_layers == 0 and "running on the CPU" in explicit.reason
    assert resolve_gpu_layers(20, vram_budget=None, offload_supported=True, free_bytes=None, **common).n_gpu_layers == 20
    unknown = resolve_gpu_layers("auto", vram_budget=None, offload_supported=True, free_bytes=None, **common)
    assert unknown.n_gpu_layers == 0 and "vram_budget" in unknown.reason
    free = resolve_gpu_layers("auto", vram_budget=None, offload_supported=True, free_bytes=8 * GiB, **common)
    assert free.n_gpu_layers == 37 and free.plan.budget_bytes == 8 * GiB and "free VRAM" in free.reason
    # the smaller of the budget and the free memory wins
    capped = resolve_gpu_layers("auto", vram_budget="3GB", offload_supported=True, free_bytes=8 * GiB, **common)
    assert capped.plan.budget_bytes == 3 * GiB and 0 < capped.n_gpu_layers < 37 and "vram_budget" in capped.reason
    short = resolve_gpu_layers("auto", vram_budget="8GB", offload_supported=True, free_bytes=3 * GiB, **common)
    assert short.plan.budget_bytes == 3 * GiB and short.n_gpu_layers == capped.n_gpu_layers
    for bad, budget in (("all", None), (1.5, None), (True, None), (10, "4GB"), ("auto", "lots")):
        with pytest.raises(InputError):
            resolve_gpu_layers(bad, vram_budget=budget, offload_supported=True, free_bytes=None, **common)


# -- against llama.cpp ------------------------------------------------------------------------------
DEEP = Qwen3Shape(hidden=256, layers=28, heads=4, kv_heads=2, head_dim=64, ffn=512, vocab=4096)


@pytest.fixture(scope="module")
def deep_checkpoint(tiny_dir, tmp_path_factory) -> Path:
    """28 blocks (the 0.6B's count, so the Q4_K_M/Q5_K_M layer pattern is the real one) of small
    matrices whose rows are multiples of 256, so every K-quant applies."""
    return write_checkpoint(tmp_path_factory.mktemp("deep") / "deep-qwen3", DEEP, tokenizer_from=tiny_dir, seed=3)


@pytest.mark.parametrize("outtype", ["q4_k_m", "q5_k_m", "q6_k", "q5_k_s"])
def test_predicted_type_mix_is_llama_cpps(deep_checkpoint, tmp_path, outtype):
    """ModelGeometry.from_spec predicts per-tensor types without a file; llama.cpp's quantizer is
    the reference (via qembed-gguf convert), tensor by tensor and byte for byte."""
    from qembed_gguf import convert
    from qembed_gguf.converter.quantize import get_outtype, predict_type

    out = convert(deep_checkpoint, outtype=outtype, outfile=tmp_path / f"deep-{outtype}.gguf", quiet=True)
    header = check_gguf(out)
    ot = get_outtype(outtype)
    predicted = {t.name: predict_type(t.name, tuple(reversed(t.shape)), ot, n_layer=28) for t in header.tensors}
    actual = {t.name: T(t.ggml_type) for t in header.tensors}
    assert predicted == actual
    spec = registry.ModelSpec(name="deep", shape=DEEP, mrl_min_dim=32, query_template="{task}{text}",
                              default_task="t", license="-", bundled="x")
    from_spec, from_file = ModelGeometry.from_spec(spec, outtype), ModelGeometry.from_header(header)
    assert (from_spec.layer_bytes, from_spec.input_bytes, from_spec.output_bytes) == \
        (from_file.layer_bytes, from_file.input_bytes, from_file.output_bytes)
    assert sum(from_file.layer_bytes) + from_file.input_bytes + from_file.output_bytes == \
        sum(t.nbytes for t in header.tensors)


@pytest.mark.parametrize("outtype", ["q8_0", "f16"])
def test_geometry_from_spec_matches_the_converted_tiny_model(converted, outtype):
    header = check_gguf(converted("tiny", outtype))
    from_file = ModelGeometry.from_header(header)
    from_spec = ModelGeometry.from_spec(registry.get_spec("tiny"), outtype)
    assert (from_spec.layer_bytes, from_spec.input_bytes, from_spec.output_bytes) == \
        (from_file.layer_bytes, from_file.input_bytes, from_file.output_bytes)
    assert (from_file.n_layer, from_file.n_embd, from_file.n_head_kv, from_file.head_dim) == (2, 256, 2, 64)


def _llama_buffers(path: Path, **kwargs) -> tuple[float, float]:
    """(KV MiB, compute MiB) as llama.cpp reports them when it creates the full context."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):  # llama-cpp-python prints llama.cpp's log to sys.stderr
        e = Embedder(path, verbose=True, **kwargs)
        e._runtime.reserve(kwargs["n_ctx"])  # the context grows on demand: make it the full one
        e.close()
    text = buf.getvalue()
    kv = re.findall(r"CPU KV buffer size =\s*([\d.]+) MiB", text)
    compute = re.findall(r"CPU compute buffer size =\s*([\d.]+) MiB", text)
    assert kv and compute, text[-2000:]
    return float(kv[-1]), float(compute[-1])


@pytest.mark.parametrize("n_ctx, flash_attn, kv", [(2048, True, "f16"), (2048, False, "f16"), (4096, True, "q8_0"),
                                                   (1024, False, "f32")])
def test_kv_and_compute_against_llama_cpp(converted, n_ctx, flash_attn, kv):
    path = converted("tiny", "q8_0")
    geom = ModelGeometry.from_header(check_gguf(path))
    kv_mib, compute_mib = _llama_buffers(path, n_ctx=n_ctx, max_tokens=n_ctx, flash_attn=flash_attn,
                                         kv_cache_type=kv)
    assert kv_bytes_per_layer(geom, n_ctx, kv) * geom.n_layer == pytest.approx(kv_mib * MiB, abs=0.01 * MiB)
    estimate = compute_buffer_bytes(geom, 512, n_ctx, flash_attn=flash_attn) / MiB
    assert compute_mib <= estimate <= 1.5 * compute_mib + 1, (compute_mib, estimate)


def test_readme_gpu_table_is_the_planners():
    from qembed_gguf.report import readme_fit_table

    readme = (ROOT / "README.md").read_text("utf-8")
    m = re.search(r"<!-- gpu-table:start.*?-->\n(.*?)\n<!-- gpu-table:end -->", readme, re.S)
    assert m, "README.md has no generated GPU table"
    assert m.group(1).strip() == readme_fit_table().strip(), "regenerate it: qembed-gguf plan --table"
