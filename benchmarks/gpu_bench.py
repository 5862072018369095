#!/usr/bin/env python3
"""The GPU benchmark of ``benchmarks/gpu_check.sh``: tokens/s, VRAM (NVML) against the planner, GPU vs CPU vectors.

    python benchmarks/gpu_bench.py prepare --work DIR    # checkpoints + Python-written GGUFs (no llama.cpp needed)
    python benchmarks/gpu_bench.py quantize --work DIR   # the Q4_K_M files from the F16 ones (llama.cpp's quantizer)
    python benchmarks/gpu_bench.py run --work DIR --out bench.json [--rehearsal] [--deadline EPOCH]
    python benchmarks/gpu_bench.py report --mode cuda|rehearsal --run-dir DIR --results DIR   # the check's .md/.json

Models: random weights, the real Qwen3-Embedding-0.6B/-4B layer shapes, the real 151,669-token vocabulary
(``embed_bench.prepare_models``, ``qembed_gguf.realvocab``). ``prepare`` (during the build) writes F16 and
Q8_0 with the converter; ``quantize`` (during pytest) Q4_K_M with llama.cpp's quantizer from F16, as does
``run`` for any file its writer did not leave. Each measurement is a fresh process
(``embed_bench.run_worker``): the CPU reference with the GPU hidden (``CUDA_VISIBLE_DEVICES=""``: on a
CUDA build ``n_gpu_layers=0`` still offloads large matmuls), a full offload and a partial one (output
layer + half the blocks), the context reserved at ``n_ctx`` as ``qembed_gguf.gpuplan.offload_usage``
(= ``qembed-gguf plan FILE --ctx N``) assumes. NVML's device-wide used memory is read before llama.cpp
loads, after load, and every 2 ms while embedding (the peak). Stages that would end after ``--deadline``
are skipped and listed. ``--rehearsal`` (no CUDA): the 0.6B shapes, a small corpus, the same code
paths, no NVML figures.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import logging
import os
import re
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # embed_bench (imported where needed: `report` runs on the bare interpreter)

log = logging.getLogger("gpu_bench")
SHAPES = {"0.6b": "qwen3-embedding-0.6b", "4b": "qwen3-embedding-4b"}
# what `prepare` writes (in this order, while llama.cpp builds) and what `run` measures (most wanted first:
# when time runs short, the 4B Q4_K_M is worth more than the 0.6B F16)
PREPARE_ORDER = (("0.6b", "f16"), ("4b", "f16"), ("0.6b", "q8_0"), ("4b", "q8_0"))
MEASURE_ORDER = (("0.6b", "q4_k_m"), ("4b", "q4_k_m"), ("0.6b", "q8_0"), ("0.6b", "f16"), ("4b", "f16"), ("4b", "q8_0"))
FLAG_OFF = 0.15          # a plan this much above the measured peak is flagged (any peak above the plan is)
# seconds a stage is expected to need on the H200 machine (16 cores); a stage starts only if it fits
COST = {("0.6b", "quantize"): 15, ("4b", "quantize"): 45, ("0.6b", "measure"): 40, ("4b", "measure"): 90}


def gguf_path(work: Path, key: str, quant: str) -> Path:
    return work / f"{key}-rv-{quant}.gguf"   # embed_bench.prepare_models' names for "<key>-rv"


# -- prepare: what needs no llama.cpp (runs while it builds) ----------------------------------------------------
def prepare(work: Path, files: list[tuple[str, str]], deadline: float) -> dict:
    import embed_bench
    from qembed_gguf import registry
    from qembed_gguf.realvocab import QWEN3_VOCAB_SIZE, write_qwen3_tokenizer

    done: dict = {"steps": []}
    t = time.time()
    tokenizer = write_qwen3_tokenizer(work / "qwen3-tokenizer")
    done["steps"].append({"what": "real-vocabulary tokenizer", "seconds": round(time.time() - t, 1)})
    for key, q in files:
        if time.time() > deadline:
            done["steps"].append({"what": f"{key} {q}", "skipped": "past the deadline"})
            continue
        t = time.time()
        fresh = not (work / f"{key}-rv" / "config.json").exists()
        shape = dataclasses.replace(registry.get_spec(SHAPES[key]).shape, vocab=QWEN3_VOCAB_SIZE)  # real vocabulary
        embed_bench.prepare_models(work, f"{key}-rv", shape, [q], tokenizer)
        done["steps"].append({"what": f"{key}{' checkpoint +' if fresh else ''} {q}", "seconds": round(time.time() - t, 1)})
        log.info("prepared %s %s in %.0f s", key, q, time.time() - t)
    return done


def quantize_from_f16(f16: Path, dest: Path, quant: str, threads: int | None = None) -> None:
    """``quant`` by llama.cpp's quantizer from the (lossless) F16 file, sealed as the converter seals."""
    from qembed_gguf.atomic import atomic_path
    from qembed_gguf.converter.quantize import get_outtype, llama_quantize
    from qembed_gguf.integrity import seal

    with atomic_path(dest) as tmp:
        llama_quantize(f16, tmp, get_outtype(quant), threads=threads)
        seal(tmp)


# -- NVML ------------------------------------------------------------------------------------------------------
class Nvml:
    """Device-wide used memory of GPU 0 (nvidia-ml-py, else qembed_gguf.devices' ctypes NVML), or None."""

    def __init__(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nv, self._h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001 - no library or no GPU: the fallback, then nothing
            from qembed_gguf.devices import nvidia_gpus

            self._nv, self._h, self._gpus = None, None, nvidia_gpus
        self.ok = self.used() is not None

    def used(self) -> int | None:
        if self._h is not None:
            return int(self._nv.nvmlDeviceGetMemoryInfo(self._h).used)
        gpus = self._gpus()[0]
        return gpus[0].total - gpus[0].free if gpus else None


class PeakSampler(threading.Thread):
    """The largest ``read()`` every ``every`` seconds until ``stop()`` (ctypes calls release the GIL)."""

    def __init__(self, read, every: float = 0.002):
        super().__init__(daemon=True)
        self.read, self.every, self.readings, self.done = read, every, [], threading.Event()

    def run(self):
        while not self.done.is_set():
            self.readings.append(self.read())
            self.done.wait(self.every)

    def stop(self) -> int | None:
        self.done.set()
        self.join()
        return max((r for r in self.readings if r is not None), default=None)


BUFFER_LINE = re.compile(r"(\S+) (model|KV|compute) buffer size =\s*([\d.]+) MiB")


def worker(job: dict) -> dict:
    """One measurement, in a fresh process (``gpu_bench.py _worker JOB.json``)."""
    if job["hide_gpu"]:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before llama.cpp (and CUDA) load
    import numpy as np

    nvml = Nvml() if not job["hide_gpu"] else None
    base = nvml.used() if nvml and nvml.ok else None
    texts = json.loads(Path(job["texts"]).read_text())
    from qembed_gguf import Embedder

    t0, log_text = time.perf_counter(), io.StringIO()
    with contextlib.redirect_stderr(log_text):  # llama.cpp's log: the buffers it allocated, per device
        e = Embedder(job["model"], n_gpu_layers=job["n_gpu_layers"], max_tokens=job["n_ctx"], verbose=True)
        e._runtime.reserve(e.n_ctx)  # the KV cache fully grown, as planned
    buffers: dict[str, float] = {}
    for dev, kind, mib in BUFFER_LINE.findall(log_text.getvalue()):
        buffers[f"{dev} {kind}"] = float(mib)  # the last report of each (reserve re-reports the compute buffer)
    res = {"load_s": round(time.perf_counter() - t0, 2), "n_gpu_layers_used": e.n_gpu_layers, "llama_buffers_mib": buffers}
    after_load = nvml.used() if base is not None else None
    sampler = PeakSampler(nvml.used) if base is not None else None
    if sampler:
        sampler.start()
    subset, body = texts[:job["subset"]], texts[:job["n_body"]]
    e.embed(body[:2])  # warm-up: CUDA modules, cuBLAS handles and pools are created on the first calls
    runs = []
    for _ in range(job["rounds"]):
        s = time.perf_counter()
        out = e.embed(body)
        runs.append(time.perf_counter() - s)
    vectors = out[:len(subset)] if body == subset else e.embed(subset)
    peak = sampler.stop() if sampler else None
    tokens = sum(e.count_tokens(body))
    e.close()
    np.save(job["vectors"], vectors)
    res.update(tokens=tokens, texts=len(body), seconds=round(min(runs), 4), tokens_per_s=round(tokens / min(runs), 1),
               finite=bool(np.isfinite(out).all() and np.isfinite(vectors).all()))
    if base is not None:
        res.update(vram_baseline=base, vram_after_load=after_load - base, vram_peak=max(peak, after_load) - base)
    return res


# -- run: quantize, then measure -------------------------------------------------------------------------------
def _running(pid: int) -> bool:
    try:  # a zombie (exited, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_for(path: Path, prepare_pid: int | None, deadline: float) -> bool:
    """Wait while ``prepare`` (still running) may yet write ``path``."""
    while not path.exists() and prepare_pid and _running(prepare_pid) and time.time() < deadline:
        time.sleep(0.25)
    return path.exists()


def cosine(a, b) -> dict:
    import numpy as np

    c = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {"min": round(float(c.min()), 6), "mean": round(float(c.mean()), 6)}


def vram_verdict(measured: int, predicted: int) -> tuple[float, str]:
    """(measured / predicted, flag): "over the plan" when the GPU used more, "off by > 15%" when the
    plan is that far above; "" when it holds within that."""
    ratio = round(measured / predicted, 3)
    return ratio, ("over the plan" if measured > predicted else f"off by > {FLAG_OFF:.0%}" if 1 - ratio > FLAG_OFF else "")


def planned(path: Path, n_gpu_layers: int, n_ctx: int) -> dict:
    from qembed_gguf.gguf_check import check_gguf
    from qembed_gguf.gpuplan import ModelGeometry, offload_usage

    geom = ModelGeometry.from_header(check_gguf(path))
    u = offload_usage(geom, n_gpu_layers, n_ctx=n_ctx)  # n_ubatch 512, f16 KV, flash attention: the defaults
    return {"n_layer": geom.n_layer, **dataclasses.asdict(u)}


def measure_file(path: Path, key: str, quant: str, *, corpus: Path, cfg: dict, deadline: float) -> list[dict]:
    import numpy as np
    from embed_bench import run_worker

    n_layer = planned(path, -1, cfg["n_ctx"])["n_layer"]
    rows = []
    # (label, n_gpu_layers, GPU hidden, texts embedded, rounds): the partial offload's CPU half is slow, so it and
    # the CPU reference embed part of the corpus once (the cosine subset is always among them)
    runs = [("CPU (GPU hidden)", 0, True, cfg["subset"], 1), ("full offload", -1, False, None, cfg["rounds"]),
            ("partial offload", n_layer // 2 + 1, False, cfg["partial_texts"], 1)]
    for label, layers, hide, n_body, rounds in runs:
        left = deadline - time.time()
        if left < 10:
            rows.append({"shape": key, "quant": quant, "offload": label, "skipped": "past the deadline"})
            continue
        vec = cfg["work"] / f"vectors-{key}-{quant}-{layers}.npy"
        vec.unlink(missing_ok=True)  # never compare with an earlier run's vectors
        job = {"model": str(path), "n_gpu_layers": layers, "hide_gpu": hide, "texts": str(corpus), "n_ctx": cfg["n_ctx"],
               "subset": cfg["subset"], "n_body": n_body, "rounds": rounds, "vectors": str(vec)}
        res = run_worker(job, timeout=left - 5, script=__file__)
        row = {"shape": key, "quant": quant, "offload": label, "n_gpu_layers": layers,
               "file_bytes": path.stat().st_size, **res}
        if not hide and "error" not in res:
            row["plan"] = planned(path, layers, cfg["n_ctx"])
            if "vram_peak" in res:
                row["peak_vs_plan"], row["flag"] = vram_verdict(res["vram_peak"], row["plan"]["total"])
            ref = cfg["work"] / f"vectors-{key}-{quant}-0.npy"
            if ref.exists() and vec.exists():
                row["cosine_vs_cpu"] = cosine(np.load(vec), np.load(ref))
        vram = f", VRAM peak {_gib(res['vram_peak'])} vs plan {_gib(row['plan']['total'])}" if "vram_peak" in res else ""
        cos = f", cosine vs CPU min {row['cosine_vs_cpu']['min']:.5f}" if "cosine_vs_cpu" in row else ""
        log.info("%s %s %-16s %s", key, quant.upper(), label, res.get("error") or f"{res['tokens_per_s']:.0f} tokens/s{vram}{cos}")
        rows.append(row)
    return rows


def ready(work: Path, key: str, quant: str, pids: dict, deadline: float, made: list, threads: int | None = None) -> str | None:
    """None when the file is there, else why not. A file that ``prepare`` (Python-written types) or the
    ``quantize`` job (K-quants) is still writing is waited for; one its writer did not leave is quantized
    from F16 here if that fits before ``deadline`` (``pids``: their process ids, when running)."""
    path, f16 = gguf_path(work, key, quant), gguf_path(work, key, "f16")
    if _wait_for(path, pids.get("prepare" if (key, quant) in PREPARE_ORDER else "quantize"), deadline):
        return None
    if quant == "f16" or not _wait_for(f16, pids.get("prepare"), deadline):
        return "no F16 file (prepare did not finish)"
    if time.time() + COST[key, "quantize"] + COST[key, "measure"] > deadline:
        return "quantizing and measuring would pass the deadline"
    t = time.time()
    quantize_from_f16(f16, path, quant, threads)
    made.append({"file": path.name, "seconds": round(time.time() - t, 1)})
    return None


def quantize(args) -> int:
    """The K-quant files, made in the background while pytest runs (the benchmark waits for them), on half
    the cores: the benchmark may already be measuring the first file next to it."""
    made, threads = [], max(1, (os.cpu_count() or 2) // 2)
    for key, quant in _order(MEASURE_ORDER, args.rehearsal):
        if (key, quant) not in PREPARE_ORDER:
            log.info("%s %s: %s", key, quant, ready(args.work, key, quant, {"prepare": args.prepare_pid}, args.deadline
                                                   or time.time() + 3600, made, threads) or "ready")
            (args.out or args.work / "quantize.json").write_text(json.dumps({"quantized": made}, indent=1) + "\n")
    return 0


def _order(order, rehearsal: bool) -> list[tuple[str, str]]:
    return [(k, q) for k, q in order if k == "0.6b" or not rehearsal]


def run(args) -> int:
    import embed_bench
    from qembed_gguf.realvocab import write_qwen3_tokenizer

    deadline = args.deadline or time.time() + 3600
    order = _order(MEASURE_ORDER, args.rehearsal)
    # a rehearsal: a few short texts and a 2,048-token context, so that 2 CPU cores get through it in minutes
    n_texts, hi, subset, n_ctx = (8, 128, 4, min(args.n_ctx, 2048)) if args.rehearsal else (args.texts, 512, 16, args.n_ctx)
    cfg = {"work": args.work, "n_ctx": n_ctx, "subset": subset, "rounds": 1 if args.rehearsal else 3,
           "partial_texts": n_texts if args.rehearsal else 48}
    report = {"rehearsal": args.rehearsal, "n_ctx": n_ctx, "order": order, "partial_texts": cfg["partial_texts"],
              "rows": [], "skipped": ["4b: not in a rehearsal (0.6B shapes only)"] if args.rehearsal else [],
              "started": time.strftime("%H:%M:%S")}

    def save():
        (args.out or args.work / "bench.json").write_text(json.dumps(report, indent=1) + "\n")

    tokenizer = write_qwen3_tokenizer(args.work / "qwen3-tokenizer")
    count = embed_bench.TokenCounter(tokenizer)
    texts = embed_bench.make_texts(count, n_texts, 8, hi, seed=1)
    corpus = args.work / "corpus.json"
    corpus.write_text(json.dumps(texts))
    report["corpus"] = {"texts": len(texts), "tokens": sum(count(t) for t in texts), "lengths": [8, hi],
                        "cosine_subset": subset}
    save()
    for key, quant in order:
        try:
            why = ready(args.work, key, quant, {"prepare": args.prepare_pid, "quantize": args.quantize_pid}, deadline,
                        report.setdefault("quantized", []))
        except Exception as exc:  # noqa: BLE001 - a failed quantization: the other files may still be measured
            why = f"quantizing failed: {exc!r}"
        if why is None and time.time() + COST[key, "measure"] > deadline:
            why = "measuring would pass the deadline"
        if why:
            report["skipped"].append(f"{key} {quant}: {why}")
            continue
        try:
            report["rows"] += measure_file(gguf_path(args.work, key, quant), key, quant, corpus=corpus, cfg=cfg,
                                           deadline=deadline)
        except Exception as exc:  # noqa: BLE001 - recorded; the next file is measured all the same
            report["rows"].append({"shape": key, "quant": quant, "offload": "all", "error": repr(exc)})
        save()
    report["finished"] = time.strftime("%H:%M:%S")
    save()
    for r in (r for r in report["rows"] if "error" in r):
        log.error("%s %s %s failed: %s", r["shape"], r["quant"], r["offload"], r["error"][-400:])
    for s in report["skipped"]:
        log.info("skipped: %s", s)
    return 1 if any("error" in r for r in report["rows"]) else 0


# -- report ----------------------------------------------------------------------------------------------------
def _gib(n) -> str:  # as gpuplan.format_size writes sizes (that module needs gguf: not on the bare interpreter)
    return "—" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def markdown(rep: dict) -> str:
    dev, b, pt = rep["device"], rep.get("bench") or {}, rep["pytest"]
    gpu = dev.get("gpu") or {}
    lines = [f"# GPU check REHEARSAL — no GPU: rehearsal on {dev.get('cpu', '?')} — {rep['date']}" if rep["rehearsal"] else
             f"# GPU check — {gpu.get('name', '?')} — {rep['date']}", ""]
    if rep["rehearsal"]:
        lines += ["**No GPU: rehearsal.** This machine has no NVIDIA GPU / CUDA driver: llama.cpp was built with the CPU "
                  "preset, `pytest -m gpu` skipped, and every 'offload' row ran on the CPU. No figure here is a GPU figure.", ""]
    lines += [f"Device: {gpu.get('name', 'none')}; driver {gpu.get('driver', '—')}; CUDA {dev.get('cuda') or '—'} (nvcc "
              f"{dev.get('nvcc') or '—'}); compute capability {gpu.get('compute_cap', '—')}; {_gib(gpu.get('memory_bytes'))}. "
              f"CPU: {dev.get('cpu', '?')}, {dev.get('cores', '?')} cores. Python {dev.get('python', '?')}.",
              f"Build: preset `{rep.get('preset', '?')}` ({rep.get('preset_reason', '')}); CMAKE_ARGS `{rep.get('cmake_args', '')}`.",
              f"Command: `{rep['command']}`; {rep['elapsed_s']:.0f} s in all.", "", "## Steps", "",
              "| step | status | seconds | timeout |", "|---|---|---|---|",
              *(f"| {s['step']} | {s['status']} | {s['seconds']:.1f} | {s['timeout_s']} |" for s in rep["steps"]),
              "", f"## `pytest -m gpu`: {pt['outcome']}", ""]
    if pt["outcome"] != "not run":
        lines.append(f"{pt['tests']} tests: {pt['passed']} passed, {pt['failures']} failed, {pt['errors']} errors, {pt['skipped']} "
                     f"skipped." + (f" Skip reason: {'; '.join(pt['skip_reasons'])}" if pt["skip_reasons"] else ""))
    lines += ["", "## Benchmark", ""]
    if b.get("rows"):
        c = b["corpus"]
        lines += [f"Corpus: {c['texts']} texts, {c['tokens']} tokens ({c['lengths'][0]}–{c['lengths'][1]} each, real vocabulary); "
                  f"n_ctx {b['n_ctx']} reserved, n_ubatch 512, f16 KV, flash attention. tokens/s: best of the rounds (CPU "
                  f"rows: the {c['cosine_subset']}-text cosine subset; partial offload: the first {b.get('partial_texts')} "
                  f"texts, once). VRAM: NVML's device-wide used memory minus its value "
                  f"before llama.cpp loaded; plan: `qembed-gguf plan FILE --ctx {b['n_ctx']}` at that n_gpu_layers (5% margin "
                  f"in); flagged when the peak is over it or off by > {FLAG_OFF:.0%}. Cosine: against the CPU row's vectors "
                  f"of the same {c['cosine_subset']} texts.", "",
                  "| model | type | run | n_gpu_layers | tokens/s | load s | VRAM after load | VRAM peak | plan | peak / plan "
                  "| flag | llama.cpp's CUDA buffers | cosine vs CPU (min) |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in b.get("rows", []):
        head = f"| {r['shape'].upper()} | {r['quant'].upper()} | {r['offload']} |"
        if "skipped" in r or "error" in r:
            lines.append(f"{head} {r.get('skipped') or 'failed: ' + r['error'][-150:]} |||||||||")
            continue
        ran = "" if r.get("n_gpu_layers_used") == r["n_gpu_layers"] else f" (ran with {r.get('n_gpu_layers_used')})"
        cos = format(r["cosine_vs_cpu"]["min"], ".5f") if "cosine_vs_cpu" in r else "—"
        cuda = [v for k, v in r.get("llama_buffers_mib", {}).items() if re.match(r"CUDA\d+ ", k)]  # not CUDA_Host
        lines.append(f"{head} {r['n_gpu_layers']}{ran} | {r['tokens_per_s']:.0f} | {r['load_s']:.1f} | "
                     f"{_gib(r.get('vram_after_load'))} | {_gib(r.get('vram_peak'))} | {_gib(r.get('plan', {}).get('total'))} | "
                     f"{r.get('peak_vs_plan', '—')} | {r.get('flag', '—') or 'ok'} | "
                     f"{f'{sum(cuda):.0f} MiB' if cuda else '—'} | {cos} |")
    lines += [] if b.get("rows") else ["No measurement was made (see the steps above)."]
    lines += [f"- skipped: {s}" for s in b.get("skipped", [])]
    made = [f"{p['what']} {p['seconds']:.0f} s" if "seconds" in p else f"{p['what']} skipped"
            for p in (rep.get("prepare") or {}).get("steps", [])]
    made += [f"{q['file']} quantized from F16 {q['seconds']:.0f} s"
             for q in (rep.get("quantize") or {}).get("quantized", []) + b.get("quantized", [])]
    lines += ["", "Files: " + "; ".join(made) + " (`prepare` ran during the build, `quantize` during pytest)."] if made else []
    if rep.get("transcript"):
        lines += ["", "## What the script printed", "", "```", rep["transcript"].rstrip(), "```"]
    return "\n".join(lines) + "\n"


def report(args) -> int:
    from gpu_kit import load_json as _load, pytest_outcome, read_steps

    d = args.run_dir
    dev = _load(d / "device.json", {})
    rep = {"kind": "gpu-check", "rehearsal": args.mode != "cuda", "date": datetime.date.today().isoformat(),
           "device": dev, **_load(d / "build.json", {}), "steps": read_steps(d / "steps.tsv"),
           "pytest": pytest_outcome(d / "junit.xml"), "bench": _load(d / "bench.json"),
           "prepare": _load(d / "prepare.json"), "quantize": _load(d / "quantize.json"), "kit": _load(args.kit / "MANIFEST.json", {}).get("size"),
           "elapsed_s": args.elapsed, "command": args.command}
    transcript = d / "transcript.log"
    if rep["rehearsal"] and transcript.exists():
        rep["transcript"] = transcript.read_text(errors="replace")[-20000:]
    stem = (f"{rep['date']}-gpu-check-rehearsal-{dev.get('cpu_tag', 'cpu')}" if rep["rehearsal"] else
            f"{rep['date']}-gpu-{(dev.get('gpu') or {}).get('slug', 'unknown-gpu')}")
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / stem
    out.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    text = markdown(rep)
    out.with_suffix(".md").write_text(text)
    (d / "results.txt").write_text(f"{out}.md\n{out}.json\n")  # what gpu_check.sh copies to $OUT
    body = text.split("\n## What the script printed")[0].splitlines()
    print("\n".join(line for line in body if line.startswith(("| ", "- skipped", "## `pytest"))))  # the tables, last
    print(f"wrote {out}.md and .json")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "_worker":  # one measurement: embed_bench.run_worker's protocol
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(json.loads(Path(argv[1]).read_text()))))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp, qp, rp = sub.add_parser("prepare"), sub.add_parser("quantize"), sub.add_parser("run")
    for sp in (pp, qp, rp):
        sp.add_argument("--work", type=Path, required=True)
        sp.add_argument("--rehearsal", action="store_true")
        sp.add_argument("--deadline", type=float, default=None, help="epoch seconds: start nothing that ends later")
        sp.add_argument("--out", type=Path, default=None)
    for sp in (qp, rp):
        sp.add_argument("--prepare-pid", type=int, default=None, help="a running `prepare`: wait for its files")
    rp.add_argument("--quantize-pid", type=int, default=None, help="a running `quantize`: wait for its files")
    rp.add_argument("--n-ctx", type=int, default=8192)
    rp.add_argument("--texts", type=int, default=128)
    op = sub.add_parser("report")
    op.add_argument("--run-dir", type=Path, required=True)
    op.add_argument("--mode", choices=["cuda", "rehearsal"], required=True)
    op.add_argument("--results", type=Path, required=True)
    op.add_argument("--kit", type=Path, default=HERE.parent / ".cache" / "gpu-kit")
    op.add_argument("--elapsed", type=float, default=0.0)
    op.add_argument("--command", default="bash benchmarks/gpu_check.sh")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    for quiet in ("qembed_gguf", "gguf"):
        logging.getLogger(quiet).setLevel(logging.WARNING)
    if args.cmd == "report":
        return report(args)
    args.work = args.work.resolve()  # the workers run in another folder
    args.work.mkdir(parents=True, exist_ok=True)
    if args.cmd == "run":
        return run(args)
    if args.cmd == "quantize":
        return quantize(args)
    done = prepare(args.work, _order(PREPARE_ORDER, args.rehearsal), args.deadline or time.time() + 3600)
    if args.out:
        args.out.write_text(json.dumps(done, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
