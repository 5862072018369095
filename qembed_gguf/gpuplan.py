"""GPU memory planning (pure functions): what fits a VRAM budget, before anything is loaded.

llama.cpp offloads the *last* ``n_gpu_layers`` repeating blocks; when ``n_gpu_layers`` exceeds
the block count the output layer (``output_norm``, and ``output.weight`` when present) goes too.
The input embedding (``token_embd``) always stays in host memory. An offloaded block also holds
its slice of the KV cache on the GPU. The CUDA backend adds a compute buffer (activations of one
``n_ubatch`` micro-batch) and a fixed per-process overhead (context, cuBLAS workspace).

    need(n) = sum(weights of the last n blocks) [+ output layer if n > n_layer]
              + KV(n_ctx, n blocks) + compute(n_ubatch, n_ctx) + overhead, all x (1 + margin)

KV bytes per block = n_ctx x n_head_kv x head_dim x 2 (K and V) x type size (f16: 2 bytes,
q8_0: 34 bytes per 32 values, f32: 4).

STATUS: work in progress for issue 7 (not wired into Embedder/CLI yet).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable, Sequence

import gguf

__all__ = ["ModelGeometry", "Plan", "kv_bytes_per_layer", "compute_buffer_bytes", "plan_offload", "tensor_nbytes"]

MiB = 1 << 20
KV_TYPES = {"f16": (2, 1), "f32": (4, 1), "q8_0": (34, 32)}  # bytes per block, values per block
_BLOCK = re.compile(r"^blk\.(\d+)\.")


def tensor_nbytes(ggml_type: int, shape: Sequence[int]) -> int:
    """Bytes of a tensor of ``ggml_type`` and ggml ``shape`` (row length first)."""
    block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
    n = 1
    for d in shape:
        n *= int(d)
    if n % block:
        raise ValueError(f"{n} values are not a whole number of {block}-value blocks")
    return n // block * type_size


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
    output_bytes: int              # output_norm (+ output.weight): offloaded when n_gpu_layers > n_layer

    @classmethod
    def from_tensors(cls, tensors: Iterable[tuple[str, int, Sequence[int]]], *, n_layer: int, n_embd: int,
                     n_head: int, n_head_kv: int, head_dim: int, n_ff: int) -> "ModelGeometry":
        layers = [0] * n_layer
        inp = out = 0
        for name, ggml_type, shape in tensors:
            size = tensor_nbytes(ggml_type, shape)
            m = _BLOCK.match(name)
            if m:
                i = int(m.group(1))
                if not 0 <= i < n_layer:
                    raise ValueError(f"tensor {name}: block {i} outside 0..{n_layer - 1}")
                layers[i] += size
            elif name.startswith("token_embd."):
                inp += size
            else:
                out += size
        return cls(n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, tuple(layers), inp, out)

    @classmethod
    def from_header(cls, header) -> "ModelGeometry":
        """From :func:`qembed_gguf.gguf_check.read_header` (no tensor data is read)."""
        arch = header.get("general.architecture")
        key = lambda name: header.get(f"{arch}.{name}")  # noqa: E731
        n_head = key("attention.head_count")
        n_embd = key("embedding_length")
        head_dim = key("attention.key_length") or n_embd // n_head
        return cls.from_tensors(((t.name, t.ggml_type, t.shape) for t in header.tensors),
                                n_layer=key("block_count"), n_embd=n_embd, n_head=n_head,
                                n_head_kv=key("attention.head_count_kv") or n_head, head_dim=head_dim,
                                n_ff=key("feed_forward_length"))


def kv_bytes_per_layer(geom: ModelGeometry, n_ctx: int, kv_type: str = "f16") -> int:
    block_bytes, block_values = KV_TYPES[kv_type]
    values = n_ctx * geom.n_head_kv * geom.head_dim
    return 2 * (-(-values // block_values)) * block_bytes


def compute_buffer_bytes(geom: ModelGeometry, n_ubatch: int, n_ctx: int, *, flash_attn: bool = True) -> int:
    """An upper estimate of the GPU compute buffer for one ``n_ubatch`` micro-batch (float32
    activations): hidden states and Q/K/V/attention outputs (~6 x n_embd), the FFN's gate, up
    and their product (3 x n_ff), and without flash attention the K·Q score matrix of every
    head against the whole context."""
    ub = min(n_ubatch, n_ctx)
    per_token = 6 * geom.n_embd + 3 * geom.n_ff + (0 if flash_attn else geom.n_head * n_ctx)
    return 4 * ub * per_token


@dataclasses.dataclass(frozen=True)
class Plan:
    n_gpu_layers: int           # what to pass to llama.cpp (n_layer + 1 = everything)
    fits_fully: bool
    gpu_bytes: int              # predicted VRAM use, margin included
    budget_bytes: int
    weights_gpu: int
    kv_gpu: int
    compute: int
    overhead: int
    host_bytes: int             # weights + KV left in host memory

    def describe(self, geom: ModelGeometry) -> str:
        where = "all layers" if self.fits_fully else f"{min(self.n_gpu_layers, geom.n_layer)}/{geom.n_layer} layers"
        return (f"{where} on the GPU: {self.gpu_bytes / MiB:.0f} MiB of {self.budget_bytes / MiB:.0f} MiB "
                f"(weights {self.weights_gpu / MiB:.0f}, KV {self.kv_gpu / MiB:.0f}, compute {self.compute / MiB:.0f}, "
                f"overhead {self.overhead / MiB:.0f}); host {self.host_bytes / MiB:.0f} MiB")


def plan_offload(geom: ModelGeometry, *, budget_bytes: int, n_ctx: int, n_ubatch: int = 512, kv_type: str = "f16",
                 flash_attn: bool = True, overhead_bytes: int = 300 * MiB, margin: float = 0.05) -> Plan:
    """The largest ``n_gpu_layers`` whose predicted VRAM use fits ``budget_bytes``."""
    if budget_bytes < 0 or n_ctx < 1 or n_ubatch < 1:
        raise ValueError("budget_bytes >= 0, n_ctx >= 1 and n_ubatch >= 1 are required")
    kv_layer = kv_bytes_per_layer(geom, n_ctx, kv_type)
    total_kv = kv_layer * geom.n_layer
    total_weights = sum(geom.layer_bytes) + geom.input_bytes + geom.output_bytes

    def need(n: int) -> tuple[int, int, int, int]:
        blocks = min(n, geom.n_layer)
        weights = sum(geom.layer_bytes[geom.n_layer - blocks:]) + (geom.output_bytes if n > geom.n_layer else 0)
        kv = kv_layer * blocks
        compute = compute_buffer_bytes(geom, n_ubatch, n_ctx, flash_attn=flash_attn) if n else 0
        overhead = overhead_bytes if n else 0
        return int((weights + kv + compute + overhead) * (1 + margin)), weights, kv, compute

    best = 0
    for n in range(geom.n_layer + 1, 0, -1):
        if need(n)[0] <= budget_bytes:
            best = n
            break
    total, weights, kv, compute = need(best)
    return Plan(n_gpu_layers=best, fits_fully=best == geom.n_layer + 1, gpu_bytes=total, budget_bytes=budget_bytes,
                weights_gpu=weights, kv_gpu=kv, compute=compute, overhead=overhead_bytes if best else 0,
                host_bytes=total_weights - weights + total_kv - kv)
