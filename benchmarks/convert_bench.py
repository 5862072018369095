#!/usr/bin/env python3
"""Conversion benchmark: qembed-gguf's converter vs llama.cpp's convert_hf_to_gguf.py, side by side.

    python benchmarks/convert_bench.py --llama-cpp-dir .cache/llama-cpp-python-sdist/llama_cpp_python-0.3.36/vendor/llama.cpp

Generates (once, into benchmarks/work/, not committed) a random-weight checkpoint with the real
Qwen3-Embedding-4B layer shapes (36 layers, hidden 2560, FFN 9728, vocab 151669: ~8 GB of bf16), then
converts it to each type with both converters, interleaved, one process per run, recording wall
time and the child's peak RSS (wait4 rusage). A 9-layer variant shows that our peak RSS does not
grow with the number of layers. Results: benchmarks/results/<date>-convert-4b.{md,json}.
The reference needs torch + transformers (the `test` extra).
"""

from __future__ import annotations

import dataclasses

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "work"
RESULTS = ROOT / "benchmarks" / "results"


def measure(argv: list[str]) -> tuple[float, float]:
    """Run argv as a child; return (wall seconds, peak RSS in GB)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[:4]} failed:\n{err[-2000:]}")
    return wall, usage.ru_maxrss * 1024 / 1e9


def make_checkpoint(layers: int) -> Path:
    from qembed_gguf import registry
    from qembed_gguf.synthetic import write_checkpoint

    spec = registry.get_spec("Qwen3-Embedding-4B")
    folder = WORK / f"qwen3-4b-shaped-{layers}L"
    if not (folder / "config.json").is_file():
        shape = dataclasses.replace(spec.shape, layers=layers)
        t = time.perf_counter()
        write_checkpoint(folder, shape, tokenizer_from=registry.bundled_dir(registry.get_spec("tiny")), seed=4,
                         shards=4 if layers > 9 else 1, name=folder.name)
        print(f"generated {folder.name} in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def warm(folder: Path) -> None:
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp-dir", type=Path, required=True)
    ap.add_argument("--types", default="f16,q8_0,bf16")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)

    full = make_checkpoint(36)
    warm(full)
    rows = []
    for outtype in args.types.split(","):
        for tool in ("qembed-gguf", "llama.cpp"):
            out = WORK / f"out-{tool}-{outtype}.gguf"
            out.unlink(missing_ok=True)
            if tool == "qembed-gguf":
                argv = [sys.executable, "-m", "qembed_gguf.cli", "convert", str(full), "-t", outtype, "-o", str(out), "-q"]
            else:
                argv = [sys.executable, str(ROOT / "tests" / "reference_convert.py"), str(args.llama_cpp_dir),
                        str(full), f"{outtype}={out}"]
            wall, rss = measure(argv)
            size = out.stat().st_size / 1e9
            rows.append({"checkpoint": full.name, "layers": 36, "outtype": outtype, "tool": tool,
                         "wall_s": round(wall, 1), "peak_rss_gb": round(rss, 3), "file_gb": round(size, 3)})
            print(rows[-1], flush=True)
            out.unlink()

    small = make_checkpoint(9)
    warm(small)
    out = WORK / "out-small.gguf"
    wall, rss = measure([sys.executable, "-m", "qembed_gguf.cli", "convert", str(small), "-t", "f16", "-o", str(out),
                         "-q", "--force"])
    rows.append({"checkpoint": small.name, "layers": 9, "outtype": "f16", "tool": "qembed-gguf",
                 "wall_s": round(wall, 1), "peak_rss_gb": round(rss, 3), "file_gb": round(out.stat().st_size / 1e9, 3)})
    print(rows[-1], flush=True)
    out.unlink()
    if not args.keep:
        for folder in (full, small):
            for f in folder.iterdir():
                if f.is_file():
                    f.unlink()

    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()}-{os.cpu_count()}cpu"
    stem = RESULTS / f"{date}-convert-4b"
    stem.with_suffix(".json").write_text(json.dumps({"date": date, "machine": machine, "python": sys.version.split()[0],
                                                     "rows": rows}, indent=2) + "\n")
    lines = [f"# Conversion of a Qwen3-Embedding-4B-shaped checkpoint ({date}, {machine})", "",
             "Random bf16 weights with the real 4B layer shapes (36 layers, hidden 2560, FFN 9728, vocab 151669). "
             "One process per run, interleaved, checkpoint in the page cache. Command: "
             "`python benchmarks/convert_bench.py --llama-cpp-dir <sdist>/vendor/llama.cpp`.", "",
             "| checkpoint | type | tool | wall s | peak RSS GB | file GB | wall ratio (ours/llama.cpp) |",
             "|---|---|---|---|---|---|---|"]
    ref = {(r["outtype"]): r["wall_s"] for r in rows if r["tool"] == "llama.cpp"}
    for r in rows:
        ratio = f"{r['wall_s'] / ref[r['outtype']]:.2f}" if r["tool"] == "qembed-gguf" and r["layers"] == 36 else ""
        lines.append(f"| {r['checkpoint']} | {r['outtype']} | {r['tool']} | {r['wall_s']} | {r['peak_rss_gb']} | "
                     f"{r['file_gb']} | {ratio} |")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
