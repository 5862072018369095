"""The planner's KV and compute terms against the buffers llama.cpp reports for the same settings.

llama.cpp logs the KV buffer and the compute buffer it reserves when it creates a context. On a
CPU build these are the CPU backend's; the graph and the allocator are the same ones a GPU backend
uses, so they check the planner's formulas (not the CUDA context overhead, which needs a GPU).

    python benchmarks/gpuplan_check.py MODEL.gguf [MODEL.gguf ...] [--ctx 512,2048,8192] [--out PREFIX]

Writes PREFIX.md and PREFIX.json (default: benchmarks/results/<date>-gpuplan-cpu).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import logging
import re
from pathlib import Path

from qembed_gguf import Embedder
from qembed_gguf.gguf_check import check_gguf
from qembed_gguf.gpuplan import MiB, ModelGeometry, compute_buffer_bytes, kv_bytes_per_layer

log = logging.getLogger("gpuplan_check")


def llama_buffers(path: Path, *, n_ctx: int, flash_attn: bool, kv: str) -> tuple[float, float]:
    """(KV MiB, compute MiB) from llama.cpp's log for a context of ``n_ctx`` tokens."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        e = Embedder(path, verbose=True, n_ctx=n_ctx, max_tokens=n_ctx, flash_attn=flash_attn, kv_cache_type=kv)
        e._runtime.reserve(n_ctx)
        e.close()
    text = buf.getvalue()
    return (float(re.findall(r"CPU KV buffer size =\s*([\d.]+) MiB", text)[-1]),
            float(re.findall(r"CPU compute buffer size =\s*([\d.]+) MiB", text)[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--ctx", default="512,2048,8192")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out or Path(__file__).parent / "results" / f"{datetime.date.today()}-gpuplan-cpu"
    rows = []
    for path in args.models:
        geom = ModelGeometry.from_header(check_gguf(path))
        for flash in (True, False):
            for kv in ("f16", "q8_0") if flash else ("f16",):
                for n_ctx in (int(c) for c in args.ctx.split(",")):
                    kv_mib, compute_mib = llama_buffers(path, n_ctx=n_ctx, flash_attn=flash, kv=kv)
                    row = dict(model=path.name, n_layer=geom.n_layer, n_embd=geom.n_embd, n_ctx=n_ctx,
                               flash_attn=flash, kv=kv, kv_llama_mib=kv_mib,
                               kv_plan_mib=kv_bytes_per_layer(geom, n_ctx, kv) * geom.n_layer / MiB,
                               compute_llama_mib=compute_mib,
                               compute_plan_mib=compute_buffer_bytes(geom, 512, n_ctx, flash_attn=flash) / MiB)
                    rows.append(row)
                    log.info("%s", row)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Planner terms vs llama.cpp's reported buffers (CPU backend)", "",
             f"`python benchmarks/gpuplan_check.py {' '.join(str(m) for m in args.models)} --ctx {args.ctx}`; "
             "n_ubatch 512. KV must be equal; the compute estimate must not be below llama.cpp's.", "",
             "| model | n_ctx | flash attn | KV type | KV llama.cpp MiB | KV plan MiB | compute llama.cpp MiB | "
             "compute plan MiB | plan / llama.cpp |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['n_ctx']} | {'on' if r['flash_attn'] else 'off'} | {r['kv']} | "
                     f"{r['kv_llama_mib']:.2f} | {r['kv_plan_mib']:.2f} | {r['compute_llama_mib']:.2f} | "
                     f"{r['compute_plan_mib']:.2f} | {r['compute_plan_mib'] / r['compute_llama_mib']:.2f} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    log.info("wrote %s.{md,json}", out)


if __name__ == "__main__":
    main()
