"""GPU memory planning (pure functions): what fits a VRAM budget, before anything is loaded.

How llama.cpp places a model (src/llama-model.cpp, ``load_tensors``): with ``n_gpu_layers = n``
it offloads the *output layer* first (``output_norm``, and ``output.weight`` when present), then
the last ``n - 1`` repeating blocks; ``n_layer + 1`` offloads everything. The input embedding
(``token_embd``) always stays in host memory. Each offloaded block keeps its slice of the KV cache
on the GPU. The GPU also holds a compute buffer (the activations of one ``n_ubatch`` micro-batch)
and a fixed per-process overhead (CUDA context, cuBLAS workspace)::

    need(n) = (weights of the last n-1 blocks + output layer        [n >= 1]
               + KV(n_ctx) x (n-1 blocks)
               + compute(n_ubatch, n_ctx) [+ one block, partial offload]
               + overhead) x (1 + margin)

    KV per block  = n_ctx x n_head_kv x head_dim x 2 (K and V) x type size
                    (f16: 2 bytes; q8_0: 34 bytes per 32 values; f32: 4)
    compute       = 4 x n_ubatch x (6 n_embd + 3 n_ff)              activations (float32)
                    + n_ubatch x n_ctx x (2 with flash attention, else 4)   the attention mask
                    [+ 4 x n_ubatch x n_ctx x n_head                 K·Q scores without flash attention]
                    + 2 MiB                                          graph inputs and outputs

The KV term is exact (llama.cpp's own reported KV buffer; tested). The compute term is an upper
estimate checked against the compute buffer llama.cpp reserves for the same graph on the CPU
backend. With a partial offload llama.cpp copies host-resident weights to the GPU for large
batches ("op offload"), so one block's weights are added as scratch then.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import gguf

from .errors import InputError, ModelLoadError
from .layout import tensor_nbytes, tensor_table

__all__ = ["ModelGeometry", "Plan", "Usage", "GpuDecision", "MiB", "GiB", "parse_size", "format_size",
           "kv_bytes_per_layer", "compute_buffer_bytes", "offload_usage", "plan_offload", "check_gpu_request", "resolve_gpu_layers", "max_full_context", "fit_table",
           "tensor_nbytes"]

MiB = 1 << 20
GiB = 1 << 30
# the KV-cache types an Embedder offers, as ggml types (their sizes from gguf's quant tables)
KV_CACHE_TYPES = {"f16": gguf.GGMLQuantizationType.F16, "f32": gguf.GGMLQuantizationType.F32,
                  "q8_0": gguf.GGMLQuantizationType.Q8_0}
DEFAULT_OVERHEAD = 300 * MiB
DEFAULT_MARGIN = 0.05
COMPUTE_FIXED = 2 * MiB
_BLOCK = re.compile(r"^blk\.(\d+)\.")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Bytes from ``"4GB"``, ``"4GiB"``, ``"3.5G"``, ``"3500MiB"``, ``"3500M"`` or a plain integer.

    Every unit is binary (1 GB = 1024 MiB), as GPU makers count memory: a "4 GB" card reports
    4096 MiB in ``nvidia-smi``.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise InputError(f"a memory size cannot be negative, got {text}")
        return text
    m = _SIZE.match(str(text))
    if not m or (m.group(3) and not m.group(2) and m.group(3).lower() != "b"):
        raise InputError(f"cannot read {text!r} as a memory size; write e.g. 4GB, 3.5GiB, 3500MiB or a byte count")
    scale = {"": 1, "k": 1 << 10, "m": MiB, "g": GiB, "t": 1 << 40}[m.group(2).lower()]
    return int(float(m.group(1)) * scale)


def format_size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


@dataclasses.dataclass(frozen=True)
class ModelGeometry:
    """Sizes the planner needs, from a GGUF's tensor list and hyper-parameters."""

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    layer_bytes: tuple[int, ...]   # weights of block i, in block order
    input_bytes: int               # token_embd: stays on the host
    output_bytes: int              # output_norm (+ output.weight): the first thing offloaded
    label: str = ""                # e.g. "Qwen3-Embedding-4B Q4_K_M" or the file name

    @property
    def weight_bytes(self) -> int:
        return sum(self.layer_bytes) + self.input_bytes + self.output_bytes

    @classmethod
    def from_tensors(cls, tensors: Iterable[tuple[str, int, Sequence[int]]], *, n_layer: int, n_embd: int,
                     n_head: int, n_head_kv: int, head_dim: int, n_ff: int, label: str = "") -> "ModelGeometry":
        """From ``(GGUF name, ggml type, ggml shape)`` of every tensor."""
        layers = [0] * n_layer
        inp = out = 0
        for name, ggml_type, shape in tensors:
            size = tensor_nbytes(ggml_type, shape)
            m = _BLOCK.match(name)
            if m:
                i = int(m.group(1))
                if not 0 <= i < n_layer:
                    raise ModelLoadError(f"tensor {name}: block {i} outside 0..{n_layer - 1}")
                layers[i] += size
            elif name.startswith("token_embd."):
                inp += size
            else:
                out += size
        return cls(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, tuple(layers), inp, out, label)

    @classmethod
    def from_header(cls, header) -> "ModelGeometry":
        """From :func:`qembed_gguf.gguf_reader.read_header` (no tensor data is read)."""
        arch = header.metadata.get("general.architecture")

        def key(name: str):
            return header.metadata.get(f"{arch}.{name}")

        n_head = key("attention.head_count")
        n_embd = key("embedding_length")
        head_dim = key("attention.key_length") or n_embd // n_head
        return cls.from_tensors(((t.name, t.ggml_type, t.shape) for t in header.tensors),
                                n_layer=key("block_count"), n_embd=n_embd, n_head=n_head,
                                n_head_kv=key("attention.head_count_kv") or n_head, head_dim=head_dim,
                                n_ff=key("feed_forward_length"), label=header.path.name)

    @classmethod
    def from_spec(cls, spec, outtype: str) -> "ModelGeometry":
        """For a registry model (:class:`~qembed_gguf.registry.ModelSpec`) as ``qembed-gguf convert``
        would write it as ``outtype``: the tensor list and per-tensor types are predicted (the same
        policy the converter uses; K-quant mixes mirror llama.cpp's quantizer), no file needed."""
        from .converter.quantize import get_outtype, predict_type

        ot, s = get_outtype(outtype), spec.shape
        tensors = [(t.gguf_name, predict_type(t.gguf_name, t.shape, ot, n_layer=s.layers), t.ggml_shape)
                   for t in tensor_table(s, kind=spec.kind)]  # a reranker's: with its (2 x hidden) yes/no head
        return cls.from_tensors(tensors, n_layer=s.layers, n_embd=s.hidden, n_head=s.heads, n_head_kv=s.kv_heads,
                                head_dim=s.head_dim, n_ff=s.ffn, label=f"{spec.name} {ot.name.upper()}")


def kv_bytes_per_layer(geom: ModelGeometry, n_ctx: int, kv_type: str = "f16") -> int:
    """KV-cache bytes of one block for ``n_ctx`` cells (K and V)."""
    if kv_type not in KV_CACHE_TYPES:
        raise InputError(f"kv_type must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_type!r}")
    block_values, block_bytes = gguf.GGML_QUANT_SIZES[KV_CACHE_TYPES[kv_type]]
    values = n_ctx * geom.n_head_kv * geom.head_dim
    return 2 * (-(-values // block_values)) * block_bytes


def compute_buffer_bytes(geom: ModelGeometry, n_ubatch: int, n_ctx: int, *, flash_attn: bool = True) -> int:
    """An upper estimate of the compute buffer for one ``n_ubatch`` micro-batch (module docstring)."""
    ub = min(n_ubatch, n_ctx)
    activations = 4 * ub * (6 * geom.n_embd + 3 * geom.n_ff)
    mask = ub * n_ctx * (2 if flash_attn else 4)
    scores = 0 if flash_attn else 4 * ub * n_ctx * geom.n_head
    return activations + mask + scores + COMPUTE_FIXED


@dataclasses.dataclass(frozen=True)
class Usage:
    """Predicted memory of one ``n_gpu_layers`` choice, in bytes (``total`` includes the margin)."""

    n_gpu_layers: int
    blocks: int            # repeating blocks on the GPU
    weights: int
    kv: int
    compute: int
    overhead: int
    total: int


def offload_usage(geom: ModelGeometry, n_gpu_layers: int, *, n_ctx: int, n_ubatch: int = 512, kv_type: str = "f16",
                  flash_attn: bool = True, overhead_bytes: int = DEFAULT_OVERHEAD,
                  margin: float = DEFAULT_MARGIN) -> Usage:
    """VRAM that ``n_gpu_layers`` (0..n_layer+1; negative = all, as in llama.cpp) needs."""
    n = geom.n_layer + 1 if n_gpu_layers < 0 else min(n_gpu_layers, geom.n_layer + 1)
    if n == 0:
        return Usage(0, 0, 0, 0, 0, 0, 0)
    blocks = n - 1
    weights = geom.output_bytes + sum(geom.layer_bytes[geom.n_layer - blocks:])
    kv = kv_bytes_per_layer(geom, n_ctx, kv_type) * blocks
    compute = compute_buffer_bytes(geom, n_ubatch, n_ctx, flash_attn=flash_attn)
    if blocks < geom.n_layer:  # op offload: host weights copied in for large batches
        compute += max(geom.layer_bytes, default=0)
    total = int((weights + kv + compute + overhead_bytes) * (1 + margin))
    return Usage(n, blocks, weights, kv, compute, overhead_bytes, total)


@dataclasses.dataclass(frozen=True)
class Plan:
    """The largest offload that fits a budget, and where every byte goes."""

    label: str
    n_layer: int
    n_ctx: int
    budget_bytes: int
    usage: Usage           # on the GPU (what the budget is compared with)
    full_usage: Usage      # what offloading everything would need
    host_bytes: int        # weights + KV left in host memory

    @property
    def n_gpu_layers(self) -> int:
        """The value to pass to llama.cpp (``n_layer + 1`` = everything)."""
        return self.usage.n_gpu_layers

    @property
    def fits_fully(self) -> bool:
        return self.usage.n_gpu_layers == self.n_layer + 1

    @property
    def gpu_bytes(self) -> int:
        return self.usage.total

    def placement(self) -> str:
        """Where the layers go, in words (the ``plan`` command's verdict, the log line's start)."""
        u, n = self.usage, self.n_layer
        if u.n_gpu_layers == 0:
            return "not even the output layer and the buffers fit; run on the CPU"
        if self.fits_fully:
            return f"everything fits (all {n} blocks + output layer)"
        return f"the output layer and the last {u.blocks} of {n} blocks; {n - u.blocks} blocks run on the CPU"

    def describe(self) -> str:
        u = self.usage
        return (f"{self.label + ': ' if self.label else ''}n_gpu_layers={u.n_gpu_layers}: {self.placement()}; GPU {format_size(u.total)} of "
                f"{format_size(self.budget_bytes)} (weights {format_size(u.weights)}, KV {format_size(u.kv)}, "
                f"compute {format_size(u.compute)}, overhead {format_size(u.overhead)}, +margin); "
                f"host {format_size(self.host_bytes)}; full offload needs {format_size(self.full_usage.total)} "
                f"at n_ctx={self.n_ctx}")


def plan_offload(geom: ModelGeometry, *, budget_bytes: int, n_ctx: int, n_ubatch: int = 512, kv_type: str = "f16",
                 flash_attn: bool = True, overhead_bytes: int = DEFAULT_OVERHEAD,
                 margin: float = DEFAULT_MARGIN) -> Plan:
    """The largest ``n_gpu_layers`` whose predicted VRAM use fits ``budget_bytes``."""
    if budget_bytes < 0 or n_ctx < 1 or n_ubatch < 1 or margin < 0:
        raise InputError("budget_bytes >= 0, n_ctx >= 1, n_ubatch >= 1 and margin >= 0 are required")

    def usage(n: int) -> Usage:
        return offload_usage(geom, n, n_ctx=n_ctx, n_ubatch=n_ubatch, kv_type=kv_type, flash_attn=flash_attn,
                             overhead_bytes=overhead_bytes, margin=margin)

    best = usage(0)
    for n in range(geom.n_layer + 1, 0, -1):  # usage grows with n: the first that fits is the largest
        u = usage(n)
        if u.total <= budget_bytes:
            best = u
            break
    full = usage(geom.n_layer + 1)
    total_kv = kv_bytes_per_layer(geom, n_ctx, kv_type) * geom.n_layer
    return Plan(label=geom.label, n_layer=geom.n_layer, n_ctx=n_ctx, budget_bytes=budget_bytes, usage=best,
                full_usage=full, host_bytes=geom.weight_bytes - best.weights + total_kv - best.kv)


@dataclasses.dataclass(frozen=True)
class GpuDecision:
    """What the Embedder passes to llama.cpp, and why (one log line)."""

    n_gpu_layers: int
    plan: Plan | None
    reason: str


def check_gpu_request(requested: int | str, vram_budget: int | str | None) -> int | None:
    """Validate ``n_gpu_layers`` / ``vram_budget`` (before any loading); the budget in bytes."""
    if isinstance(requested, str):
        if requested != "auto":
            raise InputError(f"n_gpu_layers must be an integer (-1: all) or 'auto', got {requested!r}")
    elif isinstance(requested, bool) or not isinstance(requested, int):
        raise InputError(f"n_gpu_layers must be an integer (-1: all) or 'auto', got {requested!r}")
    elif vram_budget is not None:
        raise InputError("vram_budget applies to n_gpu_layers='auto' (an explicit layer count is used as given)")
    return parse_size(vram_budget) if vram_budget is not None else None


def resolve_gpu_layers(requested: int | str, *, vram_budget: int | str | None, offload_supported: bool,
                       free_bytes: int | None, geometry, n_ctx: int, n_ubatch: int, kv_type: str,
                       flash_attn: bool) -> GpuDecision:
    """Turn ``n_gpu_layers`` (an int, or ``"auto"``) and ``vram_budget`` into a layer count.

    ``geometry`` is a callable returning the :class:`ModelGeometry` (only called for "auto").
    ``free_bytes``: free VRAM reported by the GPU backend, or None when unknown. With "auto" the
    budget is ``min(vram_budget, free_bytes)`` (whichever are known); a CPU-only build runs on the CPU.
    """
    budget = check_gpu_request(requested, vram_budget)
    if requested != "auto":
        if requested and not offload_supported:
            return GpuDecision(0, None, f"n_gpu_layers={requested} requested, but this llama.cpp build has no GPU "
                                        f"backend: running on the CPU (see `qembed-gguf doctor`)")
        return GpuDecision(requested, None, "")
    if not offload_supported:
        return GpuDecision(0, None, "n_gpu_layers='auto': this llama.cpp build has no GPU backend, running on the "
                                    "CPU (`qembed-gguf doctor` names the build to install)")
    if budget is None and free_bytes is None:
        return GpuDecision(0, None, "n_gpu_layers='auto': the GPU backend reports no free memory; pass vram_budget "
                                    "to plan an offload. Running on the CPU")
    limit = min(b for b in (budget, free_bytes) if b is not None)
    source = ("vram_budget" if free_bytes is None or (budget is not None and budget <= free_bytes)
              else "free VRAM")
    plan = plan_offload(geometry(), budget_bytes=limit, n_ctx=n_ctx, n_ubatch=n_ubatch, kv_type=kv_type,
                        flash_attn=flash_attn)
    return GpuDecision(plan.n_gpu_layers, plan, f"n_gpu_layers='auto' ({source} {format_size(limit)}): "
                                                f"{plan.describe()}")


def max_full_context(geom: ModelGeometry, *, budget_bytes: int, n_ubatch: int = 512, kv_type: str = "f16",
                     flash_attn: bool = True, limit: int = 1 << 20, step: int = 256) -> int:
    """The largest ``n_ctx`` (a multiple of ``step``, at most ``limit``) at which the whole model
    fits ``budget_bytes``; 0 when not even ``step`` tokens do. Usage grows with n_ctx: bisection."""
    def fits(n_ctx: int) -> bool:
        return offload_usage(geom, -1, n_ctx=n_ctx, n_ubatch=n_ubatch, kv_type=kv_type,
                             flash_attn=flash_attn).total <= budget_bytes

    lo, hi = 0, limit // step  # fits(lo * step) holds (or lo == 0); find the last k that fits
    if not fits(step):
        return 0
    lo = 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid - 1
    return lo * step


def fit_table(geometries: Sequence[ModelGeometry], *, budgets: Sequence[int], contexts: Sequence[int],
              n_ubatch: int = 512, kv_type: str = "f16", flash_attn: bool = True) -> list[tuple[ModelGeometry, int, list[Plan]]]:
    """Plans for every (model, context) row and budget column: the README's "what fits" table."""
    return [(g, ctx, [plan_offload(g, budget_bytes=b, n_ctx=ctx, n_ubatch=n_ubatch, kv_type=kv_type,
                                   flash_attn=flash_attn) for b in budgets])
            for g in geometries for ctx in contexts]
