#!/usr/bin/env python3
"""Throughput, latency and memory: qembed-gguf's Embedder side by side with llama-cpp-python and
sentence-transformers, on the same GGUF files / checkpoint, in one run.

    python benchmarks/embed_bench.py                      # the full run (tens of minutes on 2 cores)
    python benchmarks/embed_bench.py --smoke --out /tmp/b # the bundled tiny model, seconds (run by the tests)

Writes ``<out>/<date>-<machine>.{md,json,png}`` (default out: benchmarks/results). Needs the
``bench`` extra (torch, sentence-transformers, matplotlib).

Workloads (deterministic; random weights with real Qwen3-Embedding layer shapes, the bundled
model's byte-level BPE tokenizer; token counts include the pooling token):
  W1 corpus   0.6B shapes, texts of log-uniform length in [8, 512] tokens (256 by default)
  W2 long     0.6B shapes, texts of 2,000-8,000 tokens (16 by default)
  W3 latency  0.6B shapes, single ~16-token queries; p50/p95 per call vs one bare llama_decode
  W4 4B       4B shapes, Q4_K_M, a W1 subset with the Embedder's default 8,192-token context:
              tokens/s and peak RSS
  scaling     the Embedder's seconds/token for one input of 128 ... 8,192 tokens (the plot)

Every measurement runs in its own fresh process (so peak RSS is that contender's alone), rounds
are interleaved (contender A, B, C, A, B, C, ...) with the same thread count, and the median of
the rounds is reported. Efficiency = achieved matmul FLOP/s (2 x non-embedding parameters per
token; attention not counted) / this machine's int8 GEMM throughput measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("embed_bench")

QUANTS = ["q4_k_m", "q4_0", "q8_0", "bf16"]
SCALING_LENGTHS = [128, 256, 512, 1024, 2048, 4096, 8192]
# a multilingual word pool: English, French, German, Spanish, Russian, Chinese, Japanese, Arabic, code
WORDS = (
    "the quick brown fox jumps over lazy dogs while embedding models read long documents about "
    "quantization retrieval and search le renard brun rapide saute par-dessus le chien paresseux "
    "der schnelle braune Fuchs springt über den faulen Hund el zorro marrón salta sobre el perro "
    "быстрая коричневая лиса прыгает через ленивую собаку 敏捷的 棕色 狐狸 跳过了 懒狗 素早い 茶色の 狐が "
    "怠惰な 犬を 飛び越える الثعلب البني السريع يقفز فوق الكلب الكسول def embed(texts): return "
    "model.encode(texts) 12345 3.14 {key: value} x += 1"
).split()


# -- workloads ------------------------------------------------------------------------------------------
class TokenCounter:
    """Token counts as the model sees them (the bundled tokenizer.json appends <|endoftext|>)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def __call__(self, text: str) -> int:
        return len(self._tok.encode(text).ids)


def make_text(count: TokenCounter, rng: np.random.Generator, target: int) -> str:
    """Random words from the pool until the text has as many tokens as possible <= ``target``."""
    words: list[str] = []
    n = count("")
    while n < target:
        per_word = max(1.0, (n - 1) / len(words)) if words else 3.0
        grow = max(1, int((target - n) / (2 * per_word)))
        words.extend(WORDS[i] for i in rng.integers(len(WORDS), size=grow))
        n = count(" ".join(words))
    while n > target and len(words) > 1:
        words.pop()
        n = count(" ".join(words))
    return " ".join(words)


def make_texts(count: TokenCounter, n: int, lo: int, hi: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    targets = np.exp(rng.uniform(np.log(lo), np.log(hi), n)).round().astype(int)
    return [make_text(count, rng, int(t)) for t in targets]


# -- machine ----------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split()) if "flags" in text else set()
    return sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni", "avx2", "fma")))


def n_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def machine_tag() -> str:
    name = cpu_model().lower()
    vendor = "xeon" if "xeon" in name else "epyc" if "epyc" in name else re.sub(r"[^a-z0-9]+", "-", name)[:16]
    flags = cpu_flags()
    isa = "avx512vnni" if "avx512_vnni" in flags else "avx512" if "avx512f" in flags else \
        "avx2" if "avx2" in flags else platform.machine()
    return f"{vendor}-{n_cores()}c-{isa}"


def int8_gemm_ops(threads: int) -> dict:
    """int8 GEMM throughput (ops/s) of this machine: torch._int_mm on 512x1024 @ 1024x3072."""
    import torch

    torch.set_num_threads(threads)
    m, k, n = 512, 1024, 3072
    a = torch.randint(-127, 127, (m, k), dtype=torch.int8)
    b = torch.randint(-127, 127, (k, n), dtype=torch.int8)
    for _ in range(3):
        torch._int_mm(a, b)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(5):
            torch._int_mm(a, b)
        best = min(best, (time.perf_counter() - t) / 5)
    return {"method": f"torch._int_mm {m}x{k}x{n}, {threads} threads, best of 5", "ops_per_s": 2 * m * k * n / best}


def matmul_flops_per_token(shape) -> float:
    """2 x the non-embedding matmul parameters of a Qwen3 layer stack (attention scores not counted)."""
    h, q, kv, f = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f
    return 2.0 * per_layer * shape.layers


# -- models -----------------------------------------------------------------------------------------------
def prepare_models(work: Path, name: str, shape, quants: list[str]) -> tuple[Path, dict[str, Path]]:
    """A random checkpoint with ``shape`` (written once) and its GGUF conversions (made once)."""
    from qembed_gguf import convert, registry
    from qembed_gguf.synthetic import write_checkpoint

    tiny = registry.bundled_dir(registry.get_spec("tiny"))
    folder = work / name
    if name == "tiny":
        folder = tiny
    elif not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        log.info("writing the %s checkpoint into %s", name, folder)
        write_checkpoint(folder, shape, tokenizer_from=tiny, seed=0, name=f"bench-{name}")
    files = {}
    for q in quants:
        path = work / f"{name}-{q}.gguf"
        if not path.exists():
            log.info("converting %s to %s", name, q)
            convert(folder, outtype=q, outfile=path, quiet=True)
        files[q] = path
    return folder, files


# -- the worker: one contender, one workload, one fresh process ---------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(job: dict) -> dict:
    kind, threads, texts = job["kind"], job["threads"], job.get("texts", [])
    t0 = time.perf_counter()
    if kind == "qembed":
        from qembed_gguf import Embedder

        model = Embedder(job["model"], n_threads=threads, **job.get("kwargs", {}))
        if job.get("reserve"):  # the context as it is after a job.reserve-token input: the KV cache fully grown
            model._runtime.reserve(min(job["reserve"], model.n_ctx))
        embed = model.embed
    elif kind == "llama-cpp-python":
        import llama_cpp

        n_ctx = job["n_ctx"]
        model = llama_cpp.Llama(job["model"], embedding=True, n_ctx=n_ctx, n_batch=n_ctx, n_threads=threads,
                                n_threads_batch=threads, verbose=False)
        embed = lambda xs: np.asarray(model.embed(xs, normalize=True), dtype=np.float32)  # noqa: E731
    elif kind == "sentence-transformers":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        kwargs = {} if job["dtype"] == "default" else {"model_kwargs": {"dtype": getattr(torch, job["dtype"])}}
        model = SentenceTransformer(job["model"], device="cpu", **kwargs)
        job["loaded_dtype"] = str(model[0].auto_model.dtype).removeprefix("torch.")
        embed = lambda xs: model.encode(xs, batch_size=job["batch_size"], normalize_embeddings=True)  # noqa: E731
    elif kind == "decode":
        return _bare_decode(job)
    else:
        raise ValueError(kind)
    load_s = time.perf_counter() - t0
    embed(texts[:2])  # warm-up: first-call allocations and graph builds are not the steady state
    result = {"load_s": load_s}
    if job["mode"] == "latency":
        times = []
        for t in texts:
            s = time.perf_counter()
            embed([t])
            times.append(time.perf_counter() - s)
        result["call_s"] = times
    elif job["mode"] == "scaling":
        result["seconds"] = []
        for t in texts:
            s = time.perf_counter()
            embed([t])
            result["seconds"].append(time.perf_counter() - s)
    else:
        s = time.perf_counter()
        out = embed(texts)
        result["seconds"] = time.perf_counter() - s
        result["finite"] = bool(np.isfinite(out).all()) and len(out) == len(texts)
    result["peak_rss_mb"] = _peak_rss_mb()
    result["loaded_dtype"] = job.get("loaded_dtype")
    return result


def _bare_decode(job: dict) -> dict:
    """The floor for W3: llama_decode alone on the same tokens, in the Embedder's own context."""
    from qembed_gguf import Embedder

    with Embedder(job["model"], n_threads=job["threads"]) as e:
        rt, lc = e._runtime, e._runtime._llama
        times = []
        for text in job["texts"]:
            ids = rt.tokenize(text) + [e._eos]
            rt.embed_batch([ids])  # fills the batch buffers (and warms up)
            lc.llama_memory_clear(lc.llama_get_memory(rt.ctx), True)
            s = time.perf_counter()
            rc = lc.llama_decode(rt.ctx, rt._batch)
            times.append(time.perf_counter() - s)
            if rc != 0:
                raise RuntimeError(f"llama_decode returned {rc}")
    return {"call_s": times, "peak_rss_mb": _peak_rss_mb()}


def run_worker(job: dict, timeout: float) -> dict:
    """Run one measurement in a fresh interpreter; its result, or {"error": ...}."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    try:
        proc = subprocess.run([sys.executable, __file__, "_worker", fh.name], capture_output=True, text=True,
                              timeout=timeout, cwd=tempfile.gettempdir())
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        os.unlink(fh.name)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}"}
    return json.loads(lines[-1])


# -- the run -----------------------------------------------------------------------------------------------
def contenders_for(files: dict[str, Path], folder: Path, quants: list[str], n_ctx: int, st_batch: int,
                   st_dtypes: list[str], lcp_quants: list[str]) -> list[dict]:
    out = [{"name": f"qembed-gguf {q.upper()}", "kind": "qembed", "model": str(files[q]), "quant": q} for q in quants]
    out += [{"name": f"llama-cpp-python {q.upper()}", "kind": "llama-cpp-python", "model": str(files[q]),
             "n_ctx": n_ctx, "quant": q} for q in lcp_quants]
    out += [{"name": f"sentence-transformers {d}", "kind": "sentence-transformers", "model": str(folder),
             "dtype": d, "batch_size": st_batch} for d in st_dtypes]
    return out


def cpu_times() -> list[int]:
    """The machine's aggregate CPU time counters (/proc/stat), or [] where there is none."""
    try:
        with open("/proc/stat") as fh:
            return [int(x) for x in fh.readline().split()[1:]]
    except OSError:
        return []


def steal_pct(before: list[int], after: list[int]) -> float | None:
    """Share of CPU time the hypervisor gave to other guests between two readings (noise indicator)."""
    if len(before) < 8 or len(after) < 8:
        return None
    delta = [b - a for a, b in zip(before, after)]
    return round(100.0 * delta[7] / max(1, sum(delta[:8])), 1)


def measure(contenders: list[dict], texts: list[str], tokens: int, rounds: int, threads: int, mode: str,
            timeout: float) -> list[dict]:
    rows = {c["name"]: {**{k: v for k, v in c.items()}, "runs": []} for c in contenders}
    for r in range(rounds):
        for c in contenders:
            job = {**c, "texts": texts, "threads": threads, "mode": mode}
            before = cpu_times()
            res = run_worker(job, timeout)
            res["steal_pct"] = steal_pct(before, cpu_times())
            log.info("round %d %-34s %s", r + 1, c["name"],
                     res.get("error") or (f"{tokens / res['seconds']:8.1f} tokens/s, peak RSS "
                                          f"{res['peak_rss_mb']:.0f} MB" if "seconds" in res else "done"))
            rows[c["name"]]["runs"].append(res)
    return list(rows.values())


def summarize_throughput(rows: list[dict], tokens: int, n_texts: int, flops: float, int8_ops: float) -> None:
    for row in rows:
        ok = [r for r in row["runs"] if "seconds" in r]
        row["errors"] = [r["error"] for r in row["runs"] if "error" in r]
        if not ok:
            continue
        sec = statistics.median(r["seconds"] for r in ok)
        row.update(seconds=sec, tokens_per_s=tokens / sec, docs_per_s=n_texts / sec,
                   tokens_per_s_runs=[round(tokens / r["seconds"], 1) for r in ok],
                   peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
                   steal_pct=max((r.get("steal_pct") or 0.0 for r in ok), default=None),
                   efficiency=tokens / sec * flops / int8_ops,
                   loaded_dtype=ok[0].get("loaded_dtype"))


def tune_st_batch(folder: Path, texts: list[str], threads: int, candidates: list[int], timeout: float) -> dict:
    """sentence-transformers' batch size: the fastest of ``candidates`` on a sample (bf16 default dtype)."""
    timings = {}
    if len(candidates) == 1:
        return {"chosen": candidates[0], "seconds": {}}
    for b in candidates:
        res = run_worker({"kind": "sentence-transformers", "model": str(folder), "dtype": "default",
                          "batch_size": b, "texts": texts, "threads": threads, "mode": "throughput"}, timeout)
        timings[b] = res.get("seconds", float("inf"))
        log.info("sentence-transformers batch %d: %.2f s on the tuning sample", b, timings[b])
    return {"chosen": min(timings, key=timings.get), "seconds": timings}


def ratio(a: dict | None, b: dict | None) -> float | None:
    if not a or not b or "tokens_per_s" not in a or "tokens_per_s" not in b:
        return None
    return a["tokens_per_s"] / b["tokens_per_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the bundled tiny model and a few texts (seconds)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="generated checkpoints and GGUFs")
    p.add_argument("--threads", type=int, default=n_cores())
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds for W1 (median reported)")
    p.add_argument("--w1-texts", type=int, default=256)
    p.add_argument("--w2-texts", type=int, default=16)
    p.add_argument("--w3-queries", type=int, default=60)
    p.add_argument("--w4-texts", type=int, default=32, help="W1 texts (every k-th) for the 4B run")
    p.add_argument("--workloads", default="W1,W2,W3,W4,scaling")
    p.add_argument("--st-batch-sizes", default="4,8,16,32", help="tuned on a W1 sample; the fastest is used")
    p.add_argument("--w2-st", action=argparse.BooleanOptionalAction, default=True,
                   help="sentence-transformers in W2 (slow where the CPU lacks bf16 instructions)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement process")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("qembed_gguf").setLevel(logging.WARNING)

    from qembed_gguf import registry
    from qembed_gguf.synthetic import SHAPES, Qwen3Shape

    workloads = set(args.workloads.split(","))
    tiny = registry.bundled_dir(registry.get_spec("tiny"))
    count = TokenCounter(tiny)
    if args.smoke:
        base_name, base_shape = "tiny", SHAPES["tiny"]
        big_name, big_shape = "tiny", SHAPES["tiny"]
        n1, n2, n3, n4, rounds = 12, 2, 8, 6, 1
        w2_range, scaling = (300, 600), [64, 128, 256]
        st_batches = [8]
    else:
        base_name, base_shape = "0.6b", Qwen3Shape.from_spec(registry.get_spec("qwen3-embedding-0.6b"), vocab=4096)
        big_name, big_shape = "4b", Qwen3Shape.from_spec(registry.get_spec("qwen3-embedding-4b"), vocab=4096)
        n1, n2, n3, n4, rounds = args.w1_texts, args.w2_texts, args.w3_queries, args.w4_texts, args.rounds
        w2_range, scaling = (2000, 8000), SCALING_LENGTHS
        st_batches = [int(x) for x in args.st_batch_sizes.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    threads = args.threads

    started = time.time()
    report: dict = {
        "date": datetime.date.today().isoformat(), "smoke": args.smoke,
        "machine": {"tag": machine_tag(), "cpu": cpu_model(), "cores": n_cores(), "flags": cpu_flags(),
                    "python": platform.python_version()},
        "threads": threads, "versions": _versions(), "workloads": {},
    }
    gemm = int8_gemm_ops(threads)
    report["int8_gemm"] = gemm
    log.info("int8 GEMM: %.0f GOP/s", gemm["ops_per_s"] / 1e9)

    folder, files = prepare_models(args.work, base_name, base_shape, QUANTS)
    flops = matmul_flops_per_token(base_shape)
    w1 = make_texts(count, n1, 8, 512, seed=1)
    w1_tokens = sum(count(t) for t in w1)

    if "W1" in workloads:
        tune = tune_st_batch(folder, w1[::max(1, len(w1) // 24)], threads, st_batches, args.timeout)
        cons = contenders_for(files, folder, QUANTS, n_ctx=512, st_batch=tune["chosen"],
                              st_dtypes=["default", "float32"], lcp_quants=["q4_k_m", "q4_0"])
        rows = measure(cons, w1, w1_tokens, rounds, threads, "throughput", args.timeout)
        summarize_throughput(rows, w1_tokens, len(w1), flops, gemm["ops_per_s"])
        report["workloads"]["W1"] = {"texts": len(w1), "tokens": w1_tokens, "rounds": rounds,
                                     "lengths": [8, 512], "st_batch_tuning": tune, "rows": rows,
                                     "flops_per_token": flops}
    if "W2" in workloads:
        w2 = make_texts(count, n2, *w2_range, seed=2)
        w2_tokens = sum(count(t) for t in w2)
        longest = max(count(t) for t in w2)
        cons = contenders_for(files, folder, ["q4_k_m", "q4_0"], n_ctx=max(512, longest), st_batch=1,
                              st_dtypes=["default"] if args.w2_st else [], lcp_quants=["q4_k_m"])
        rows = measure(cons, w2, w2_tokens, 1, threads, "throughput", args.timeout)
        summarize_throughput(rows, w2_tokens, len(w2), flops, gemm["ops_per_s"])
        report["workloads"]["W2"] = {"texts": len(w2), "tokens": w2_tokens, "rounds": 1, "lengths": list(w2_range),
                                     "rows": rows, "flops_per_token": flops}
    if "W3" in workloads:
        w3 = make_texts(count, n3, 16, 16, seed=3)
        report["workloads"]["W3"] = latency(files, w3, count, threads, args.timeout)
    if "W4" in workloads:
        bfolder, bfiles = prepare_models(args.work, big_name, big_shape, ["q4_k_m"])
        w4 = w1[::max(1, len(w1) // n4)][:n4]
        w4_tokens = sum(count(t) for t in w4)
        q4 = {"kind": "qembed", "model": str(bfiles["q4_k_m"]), "quant": "q4_k_m"}
        cons = [{**q4, "name": W4_DEFAULT, "kwargs": {}},
                {**q4, "name": W4_GROWN, "kwargs": {}, "reserve": 8192},
                {**q4, "name": W4_GROWN_Q8, "kwargs": {"kv_cache_type": "q8_0"}, "reserve": 8192},
                {**q4, "name": "qembed-gguf Q4_K_M, use_mmap=True", "kwargs": {"use_mmap": True}},
                {"name": "llama-cpp-python Q4_K_M (n_ctx 8192)", "kind": "llama-cpp-python",
                 "model": str(bfiles["q4_k_m"]), "n_ctx": 8192, "quant": "q4_k_m"}]
        rows = measure(cons, w4, w4_tokens, 1, threads, "throughput", args.timeout)
        summarize_throughput(rows, w4_tokens, len(w4), matmul_flops_per_token(big_shape), gemm["ops_per_s"])
        report["workloads"]["W4"] = {"texts": len(w4), "tokens": w4_tokens, "rounds": 1, "rows": rows,
                                     "flops_per_token": matmul_flops_per_token(big_shape),
                                     "file_bytes": bfiles["q4_k_m"].stat().st_size}
    if "scaling" in workloads:
        texts = [make_text(count, np.random.default_rng(n), n) for n in scaling]
        lengths = [count(t) for t in texts]
        res = run_worker({"kind": "qembed", "model": str(files["q4_k_m"]), "texts": texts, "threads": threads,
                          "mode": "scaling"}, args.timeout)
        report["workloads"]["scaling"] = {"model": "qembed-gguf Q4_K_M", "lengths": lengths, **res}

    report["targets"] = targets(report)
    report["elapsed_s"] = round(time.time() - started, 1)
    stem = args.out / f"{report['date']}-{report['machine']['tag']}{'-smoke' if args.smoke else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    if "scaling" in report["workloads"] and "seconds" in report["workloads"]["scaling"]:
        plot(report["workloads"]["scaling"], stem.with_suffix(".png"), report)
    stem.with_suffix(".md").write_text(markdown(report, stem.with_suffix(".png").name))
    log.info("wrote %s.{md,json,png} in %.0f s", stem, report["elapsed_s"])
    errors = [e for w in report["workloads"].values() for r in w.get("rows", []) for e in r.get("errors", [])]
    for e in errors:
        log.error("a measurement failed: %s", e)
    return 1 if errors or "error" in report["workloads"].get("scaling", {}) else 0


def latency(files: dict[str, Path], queries: list[str], count: TokenCounter, threads: int, timeout: float) -> dict:
    """W3: per-call latency of Embedder.embed([q]) vs llama_decode alone, interleaved per file."""
    out = {"queries": len(queries), "tokens_each": sorted({count(q) for q in queries}), "rows": []}
    for q in ["q4_k_m", "q4_0"]:
        emb = run_worker({"kind": "qembed", "model": str(files[q]), "texts": queries, "threads": threads,
                          "mode": "latency"}, timeout)
        dec = run_worker({"kind": "decode", "model": str(files[q]), "texts": queries, "threads": threads}, timeout)
        row = {"quant": q}
        for name, res in (("embedder", emb), ("decode", dec)):
            if "call_s" in res:
                row[f"{name}_p50_ms"] = 1000 * float(np.percentile(res["call_s"], 50))
                row[f"{name}_p95_ms"] = 1000 * float(np.percentile(res["call_s"], 95))
            else:
                row.setdefault("errors", []).append(res.get("error"))
        if "embedder_p50_ms" in row and "decode_p50_ms" in row:
            row["p50_ratio"] = row["embedder_p50_ms"] / row["decode_p50_ms"]
        log.info("W3 %s: %s", q, {k: round(v, 2) for k, v in row.items() if isinstance(v, float)})
        out["rows"].append(row)
    return out


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("qembed-gguf", "llama-cpp-python", "sentence-transformers", "torch", "transformers", "numpy"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


W4_DEFAULT = "qembed-gguf Q4_K_M (defaults: max_tokens 8192)"
W4_GROWN = "qembed-gguf Q4_K_M, KV grown to 8192"
W4_GROWN_Q8 = "qembed-gguf Q4_K_M, KV grown to 8192, kv_cache_type q8_0"


def _row(workload: dict, prefix: str) -> dict | None:
    return next((r for r in workload.get("rows", []) if r["name"].startswith(prefix) and "tokens_per_s" in r), None)


def targets(report: dict) -> list[dict]:
    """The issue's targets, evaluated on this run's numbers."""
    out = []
    w1 = report["workloads"].get("W1")
    if w1:
        ours = [r for r in w1["rows"] if r["kind"] == "qembed" and "tokens_per_s" in r]
        best = max(ours, key=lambda r: r["tokens_per_s"], default=None)
        lcp = _row(w1, "llama-cpp-python " + (best["quant"].upper() if best else ""))
        lcp = lcp if lcp and best and lcp.get("quant") == best["quant"] else _row(w1, "llama-cpp-python Q4_K_M")
        st = _row(w1, "sentence-transformers default")
        q4km = _row(w1, "qembed-gguf Q4_K_M")
        for what, value, goal in (
            (f"W1: Embedder best ({best and best['name']}) / llama-cpp-python defaults, same file", ratio(best, lcp), 1.5),
            (f"W1: Embedder best ({best and best['name']}) / sentence-transformers default dtype", ratio(best, st), 1.25),
            ("W1: Embedder Q4_K_M / sentence-transformers default dtype", ratio(q4km, st), 1.0),
        ):
            out.append({"target": what, "value": value, "goal": f">= {goal}", "met": value is not None and value >= goal})
    w3 = report["workloads"].get("W3")
    if w3:
        for row in w3["rows"]:
            v = row.get("p50_ratio")
            out.append({"target": f"W3 {row['quant'].upper()}: Embedder p50 / one llama_decode p50", "value": v,
                        "goal": "<= 1.2", "met": v is not None and v <= 1.2})
    w4 = report["workloads"].get("W4")
    if w4:
        by_name = {r["name"]: r for r in w4["rows"] if "peak_rss_mb" in r}
        for name, what in ((W4_DEFAULT, "defaults (max_tokens 8192; the W1 texts keep the KV cache at 512)"),
                           (W4_GROWN, "KV cache grown to all 8,192 tokens"),
                           (W4_GROWN_Q8, "KV cache grown to 8,192 tokens, kv_cache_type q8_0")):
            v = by_name[name]["peak_rss_mb"] / 1024 if name in by_name else None
            out.append({"target": f"W4: 4B Q4_K_M peak RSS (GiB), {what}", "value": v, "goal": "<= 3.0",
                        "met": v is not None and v <= 3.0})
    return out


def _fmt(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(rep: dict, png: str) -> str:
    m = rep["machine"]
    lines = [f"# Embedding throughput, latency and memory — {rep['date']}{' (SMOKE: tiny model)' if rep['smoke'] else ''}",
             "",
             f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['flags'])}); {rep['threads']} threads for every "
             f"contender. int8 GEMM: {rep['int8_gemm']['ops_per_s'] / 1e9:.0f} GOP/s ({rep['int8_gemm']['method']}).",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if v) + ".",
             f"Reproduce: `python benchmarks/embed_bench.py{' --smoke' if rep['smoke'] else ''}` "
             f"(this run: {rep['elapsed_s'] / 60:.0f} min). 'max CPU steal' is the largest share of CPU time the "
             f"hypervisor gave to other guests during one of that contender's runs: runs with high steal are slow "
             f"for reasons outside the contender.", "", "## Targets", "",
             "| target | value | goal | met |", "|---|---|---|---|"]
    for t in rep["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    titles = {"W1": "W1 corpus", "W2": "W2 long", "W4": "W4 4B shapes, Q4_K_M"}
    for key, title in titles.items():
        w = rep["workloads"].get(key)
        if not w:
            continue
        lcp = _row(w, "llama-cpp-python")
        st = _row(w, "sentence-transformers default")
        lines += ["", f"## {title}: {w['texts']} texts, {w['tokens']} tokens, median of {w['rounds']} interleaved "
                      f"round(s)", "",
                  "| contender | tokens/s | docs/s | vs llama-cpp-python | vs ST default | peak RSS | efficiency "
                  "| runs (tokens/s) | max CPU steal |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in w["rows"]:
            if "tokens_per_s" not in r:
                lines.append(f"| {r['name']} | failed: {'; '.join(r.get('errors', []))[:200]} ||||||||")
                continue
            name = r["name"] + (f" ({r['loaded_dtype']}, batch {r['batch_size']})" if r["kind"] ==
                                "sentence-transformers" else "")
            lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['docs_per_s']:.2f} | {_fmt(ratio(r, lcp))} | "
                         f"{_fmt(ratio(r, st))} | {r['peak_rss_mb'] / 1024:.2f} GiB | {100 * r['efficiency']:.1f}% | "
                         f"{', '.join(map(str, r['tokens_per_s_runs']))} | {_fmt(r.get('steal_pct'), '.0f')}% |")
        if key == "W1":
            tune = w["st_batch_tuning"]
            lines.append("")
            tuned = (", ".join(f"{b}: {s:.1f} s" for b, s in tune["seconds"].items()) + " on a sample → "
                     if tune["seconds"] else "given, not tuned: ")
            lines.append(f"sentence-transformers batch size {tuned}{tune['chosen']}. llama-cpp-python: `Llama(embedding=True).embed(texts, "
                           f"normalize=True)` with its defaults (n_ctx = n_batch = 512, enough for W1).")
        if key in ("W2", "W4"):
            lines.append("")
            lines.append("llama-cpp-python: n_ctx = n_batch raised to fit the longest input (its 512 default "
                         "would truncate)." if key == "W2" else
                         f"File {w['file_bytes'] / 2**30:.2f} GiB. Every contender accepts 8,192-token inputs. The "
                         f"Embedder's KV cache starts at 512 tokens and grows on demand; 'KV grown to 8192' rows "
                         f"reserve the full 8,192-token cache before embedding, as after one 8,192-token input.")
    w3 = rep["workloads"].get("W3")
    if w3:
        lines += ["", f"## W3 query latency: {w3['queries']} queries of {w3['tokens_each']} tokens, one call each", "",
                  "| file | Embedder p50 | p95 | bare llama_decode p50 | p95 | p50 ratio |", "|---|---|---|---|---|---|"]
        for r in w3["rows"]:
            lines.append(f"| {r['quant'].upper()} | {_fmt(r.get('embedder_p50_ms'), '.1f')} ms | "
                         f"{_fmt(r.get('embedder_p95_ms'), '.1f')} ms | {_fmt(r.get('decode_p50_ms'), '.1f')} ms | "
                         f"{_fmt(r.get('decode_p95_ms'), '.1f')} ms | {_fmt(r.get('p50_ratio'), '.3f')} |")
    sc = rep["workloads"].get("scaling")
    if sc and "seconds" in sc:
        lines += ["", f"## Cost vs input length ({sc['model']}, one input per call)", "",
                  "| tokens | seconds | ms/token | tokens/s |", "|---|---|---|---|"]
        for n, s in zip(sc["lengths"], sc["seconds"]):
            lines.append(f"| {n} | {s:.2f} | {1000 * s / n:.2f} | {n / s:.0f} |")
        lines += ["", f"![seconds per token vs input length]({png})"]
    return "\n".join(lines) + "\n"


def plot(sc: dict, path: Path, rep: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths, seconds = np.array(sc["lengths"]), np.array(sc["seconds"])
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    ax.plot(lengths, 1000 * seconds / lengths, "o-", label=sc["model"])
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_xlabel("input length (tokens)")
    ax.set_ylabel("ms per token")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Cost per token vs length — {rep['machine']['tag']}, {rep['threads']} threads", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(json.loads(Path(sys.argv[2]).read_text()))))
        sys.exit(0)
    sys.exit(main())
