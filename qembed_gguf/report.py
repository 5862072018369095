"""Plain-text renderings of a GGUF file for people: the conversion summary and ``info``. Pure."""

from __future__ import annotations

from typing import Sequence

from .fileinfo import GGUFInfo
from .gpuplan import DEFAULT_MARGIN, GiB, ModelGeometry, Plan, format_size

__all__ = ["render_summary", "render_info", "render_plan", "render_fit_table", "render_doctor"]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"  # pragma: no cover


def render_summary(info: GGUFInfo) -> str:
    """Tensor types, file size and bits per weight of a written file, plus block-size fallbacks."""
    rows = [("type", "tensors", "params", "size", "share")]
    total = info.n_params or 1
    for name, (count, params, nbytes) in info.type_mix.items():
        rows.append((name, str(count), f"{params:,}", _size(nbytes), f"{100 * params / total:.1f}%"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append(f"{info.path}: {_size(info.file_size)}, {info.n_params:,} parameters, "
                 f"{info.bits_per_weight:.2f} bits/weight ({info.file_type})")
    fallbacks = info.fallbacks()
    if fallbacks:
        shown = ", ".join(f"{t.name} ({t.type}, rows of {t.shape[0]})" for t in fallbacks[:4])
        more = f" and {len(fallbacks) - 4} more" if len(fallbacks) > 4 else ""
        lines.append(f"note: {len(fallbacks)} tensor(s) kept a wider type because their row length is not a "
                     f"multiple of the block size: {shown}{more}")
    return "\n".join(lines)


def _count(value) -> str:
    """How many entries an array value has (a crafted file may hold a scalar where an array belongs)."""
    return str(len(value)) if isinstance(value, (list, tuple)) or hasattr(value, "length") else "?"


def render_info(info: GGUFInfo, *, refusal: Exception | None = None) -> str:
    """``qembed-gguf info``. ``refusal``: why :func:`~qembed_gguf.gguf_check.check_gguf` refuses
    the file (the status line then says so), None when it passed."""
    g = info.get
    eos_id = g("tokenizer.ggml.eos_token_id")
    lines = [
        f"file:           {info.path} ({_size(info.file_size)})",
        f"name:           {g('general.name', '?')}",
        f"architecture:   {info.architecture}  layers {info.layers}  dim {info.dim}  "
        f"heads {info.arch_key('attention.head_count')}/{info.arch_key('attention.head_count_kv')}  "
        f"context {info.arch_key('context_length')}",
        f"pooling:        {info.pooling}",
        f"tokenizer:      {g('tokenizer.ggml.model')} / pre {g('tokenizer.ggml.pre')}  "
        f"vocab {_count(g('tokenizer.ggml.tokens'))}",
        f"EOS:            {info.eos_token!r} (id {eos_id})  add_eos {g('tokenizer.ggml.add_eos_token')}  "
        f"add_bos {g('tokenizer.ggml.add_bos_token')}",
        f"quantization:   {info.file_type}, {info.bits_per_weight:.2f} bits/weight, "
        + ", ".join(f"{k} x{v[0]}" for k, v in info.type_mix.items()),
    ]
    reranker = info.kind == "reranker"
    if info.by_qembed and reranker:
        lines.append(f"qembed:         reranker (yes/no head)  source {g('qembed.source')}  ({g('qembed.converter')})")
        lines.append(f"default task:   {g('qembed.default_task')!r}")
    elif info.by_qembed:
        lines.append(f"qembed:         MRL dims {info.mrl_min_dim}..{info.dim}  source {g('qembed.source')}  "
                     f"({g('qembed.converter')})")
        lines.append(f"query template: {g('qembed.query_template')!r}")
    else:
        lines.append("qembed:         not converted by qembed-gguf (no qembed.* keys); registry defaults apply")
    if g("tokenizer.chat_template") is not None:
        lines.append("note:           has a chat template; qembed-gguf never compiles it")
    problems = info.problems()
    for p in problems:
        lines.append(f"WARNING:        {p}")
    if refusal is not None:
        where = ""
        if getattr(refusal, "field", None):
            offset = refusal.offset
            where = f" at {refusal.field} ({'byte offset ' + str(offset) if offset is not None else 'absent'})"
        lines.append(f"status:         REFUSED: {type(refusal).__name__}{where}; the Embedder and `qembed-gguf "
                     f"verify` refuse this file (the error follows)")
    else:
        what = ("a Qwen3-Reranker", "scores") if reranker else ("Qwen3 embeddings", "vectors")
        lines.append("status:         " + (f"OK for {what[0]}" if not problems else
                                          f"{len(problems)} problem(s): {what[1]} from this file may be wrong"))
    return "\n".join(lines)


def render_plan(plan: Plan, geom: ModelGeometry, *, source: str, n_ubatch: int, kv_type: str, flash_attn: bool,
                max_full_ctx: int) -> str:
    """``qembed-gguf plan``: the chosen ``n_gpu_layers`` and where every byte goes."""
    u, full = plan.usage, plan.full_usage
    n = geom.n_layer
    verdict = f"n_gpu_layers = {u.n_gpu_layers}: {plan.placement()}"
    per_block_kv = u.kv // u.blocks if u.blocks else full.kv // n
    lines = [
        f"model:    {geom.label} ({source}); {n} blocks, {format_size(geom.weight_bytes)} of weights",
        f"settings: n_ctx {plan.n_ctx}, n_ubatch {n_ubatch}, KV cache {kv_type}, flash attention "
        f"{'on' if flash_attn else 'off'}",
        f"budget:   {format_size(plan.budget_bytes)}",
        f"plan:     {verdict}",
        f"GPU:      weights {format_size(u.weights)} + KV {format_size(u.kv)} + compute {format_size(u.compute)} "
        f"+ overhead {format_size(u.overhead)}, +{DEFAULT_MARGIN:.0%} margin = {format_size(u.total)}",
        f"host:     {format_size(plan.host_bytes)} (token embeddings{', CPU blocks and their KV' if not plan.fits_fully else ''})",
        f"per block: weights {format_size(max(geom.layer_bytes))} (largest), KV {format_size(per_block_kv)} at n_ctx {plan.n_ctx}",
        f"full offload needs {format_size(full.total)} at n_ctx {plan.n_ctx}; "
        + (f"the whole model fits this budget up to n_ctx {max_full_ctx}" if max_full_ctx
           else "the whole model does not fit this budget at any context"),
        f"use:      Embedder(..., n_gpu_layers={u.n_gpu_layers}, n_ctx={plan.n_ctx})  or  n_gpu_layers=\"auto\"",
    ]
    return "\n".join(lines)


def _ctx_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def render_fit_table(rows: Sequence[tuple[ModelGeometry, int, list[Plan]]], budgets: Sequence[int]) -> str:
    """A markdown table: per (model, context) row, the full-offload need and what fits each budget."""
    head = ["model", "context", "full offload"] + [f"{b / GiB:g} GB" for b in budgets]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for geom, ctx, plans in rows:
        cells = []
        for p in plans:
            if p.fits_fully:
                cells.append("all")
            elif p.n_gpu_layers == 0:
                cells.append("CPU")
            else:
                cells.append(f"{p.usage.blocks}/{geom.n_layer}")
        out.append(f"| {geom.label} | {_ctx_label(ctx)} | {plans[0].full_usage.total / GiB:.2f} GiB | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


def render_doctor(d) -> str:
    """``qembed-gguf doctor`` (``d``: :class:`qembed_gguf.devices.Diagnosis`)."""
    v = d.versions
    cpu_flags = " ".join(k for k, val in d.cpu.items() if val == "1") or "unknown"
    lines = [
        "versions:  " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"library:   {d.library or 'llama-cpp-python not importable'}"
        + (f"  (LLAMA_CPP_LIB_PATH={d.lib_path_env})" if d.lib_path_env else ""),
        f"backends:  {', '.join(d.backends) or 'unknown'}; GPU offload "
        + ("supported" if d.offload else "NOT supported (CPU-only build)"),
        f"CPU:       {cpu_flags}",
    ]
    for dev in d.devices:
        mem = f", {format_size(dev.free)} free of {format_size(dev.total)}" if dev.total else ""
        lines.append(f"device:    {dev.backend}/{dev.name} ({dev.kind}): {dev.description}{mem}")
    if d.nvidia:
        for g in d.nvidia:
            lines.append(f"NVIDIA:    #{g.index} {g.name}, compute capability {g.compute_capability[0]}."
                         f"{g.compute_capability[1]}, {format_size(g.free)} free of {format_size(g.total)}"
                         f" (driver {d.driver})")
    else:
        lines.append("NVIDIA:    no NVIDIA driver/GPU found (NVML)")
    t = d.tools
    lines.append(f"toolchain: cmake {t.cmake or 'missing'}, C++ compiler {t.compiler or 'missing'}, "
                 f"nvcc {t.nvcc or 'missing'}")
    lines.append(f"preset:    {d.preset} ({d.preset_reason})")
    lines.append(f"install:   qembed-gguf backend install --preset {d.preset}")
    lines.extend(f"WARNING:   {w}" for w in d.warnings)
    return "\n".join(lines)


README_BUDGETS = ("4GB", "6GB", "8GB", "12GB")
README_CONTEXTS = (2048, 8192, 32768)
README_QUANTS = ("q4_k_m", "q8_0", "f16")


def readme_fit_table() -> str:
    """The README's GPU table (``qembed-gguf plan --table``): the 0.6B/4B/8B models at
    Q4_K_M/Q8_0/F16, 2K/8K/32K contexts, 4-12 GB budgets."""
    from . import registry
    from .gpuplan import ModelGeometry, fit_table, parse_size

    budgets = [parse_size(b) for b in README_BUDGETS]
    geoms = [ModelGeometry.from_spec(spec, q) for spec in registry.all_specs()
             if spec.hub_id and spec.kind == "embedding" for q in README_QUANTS]
    return render_fit_table(fit_table(geoms, budgets=budgets, contexts=README_CONTEXTS), budgets)
