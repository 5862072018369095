#!/usr/bin/env python3
"""Throughput, latency and memory: qembed-gguf's Embedder side by side with llama-cpp-python and
sentence-transformers, on the same GGUF files / checkpoint, in one run.

    python benchmarks/embed_bench.py                      # the full run (an hour or more on 2 cores)
    python benchmarks/embed_bench.py --workloads W1,types,load,W4 --baseline DIR   # what issue 15 measured
    python benchmarks/embed_bench.py --smoke --out /tmp/b # the bundled tiny model, seconds (run by the tests)

Writes ``<out>/<date>-<machine>.{md,json,png}`` (default out: benchmarks/results). Needs the
``bench`` extra (torch, sentence-transformers, matplotlib).

Workloads (deterministic; random weights with real Qwen3-Embedding layer shapes AND the real
151,669-token vocabulary and tokenizer, rebuilt offline by ``qembed_gguf.realvocab``; token counts
include the pooling token):
  W1 corpus   0.6B shapes, texts of log-uniform length in [8, 512] tokens (64 by default): the
              Embedder (Q4_K_M, Q4_0, Q8_0), optionally the last commit before a change
              (``--baseline DIR``), llama-cpp-python's ``Llama.embed`` with its defaults,
              sentence-transformers (bf16 where the CPU has AVX512_BF16, else fp32) and ONNX
              Runtime int8 (``benchmarks/onnx_contender.py``) on the same checkpoint
  types       a W1 subset through every weight type (Q4_K_M, Q5_K_M, Q6_K, Q8_0, Q4_0, IQ4_NL, IQ4_XS, BF16),
              llama.cpp's weight repacking on and off; plus Q4_K_M at a 4,096-token vocabulary
  load        seconds to construct ``Embedder(file)`` and to run ``qembed-gguf info`` on the Q4_K_M file
  W2 long     0.6B shapes, texts of 2,000-8,000 tokens (16 by default)
  W3 latency  0.6B shapes, single ~16-token queries; p50/p95 per call vs one bare llama_decode
  W4 4B       4B shapes, Q4_K_M, a W1 subset with the Embedder's default 8,192-token context:
              tokens/s and peak RSS
  scaling     the Embedder's seconds/token for one input of 128 ... 8,192 tokens (the plot)

Every measurement runs in its own fresh process (so peak RSS is that contender's alone), rounds
are interleaved (contender A, B, C, A, B, C, ...) with the same thread count, and the median of
the rounds is reported. Efficiency = achieved matmul FLOP/s (2 x non-embedding parameters per
token; attention not counted) / this machine's int8 GEMM rate measured in the same run (fbgemm's
quantized linear at a layer's shape).
"""

from __future__ import annotations

import argparse
import dataclasses
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
# the type sweep: every weight type llama.cpp's CPU backend has a distinct kernel path for
SWEEP_QUANTS = ["q4_k_m", "q5_k_m", "q6_k", "q8_0", "q4_0", "iq4_nl", "iq4_xs", "bf16"]
LLAMA_ONLY_TYPES = {"iq4_nl": "LLAMA_FTYPE_MOSTLY_IQ4_NL", "iq4_xs": "LLAMA_FTYPE_MOSTLY_IQ4_XS"}  # written by llama.cpp's quantizer from BF16
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
    """Token counts as the model sees them (the tokenizer.json's post-processor appends <|endoftext|>)."""

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
    """The int8 GEMM rate of a well-built kernel at a layer's shape: fbgemm's quantized linear
    (``torch.ops.quantized.linear``, u8 x s8 -> VNNI on AVX-512 machines), 512 x 1024 x 3072.
    ``torch._int_mm`` is recorded too: it is not a VNNI path on these CPUs, so it is no limit."""
    import warnings

    import torch

    torch.set_num_threads(threads)
    m, k, n = 512, 1024, 3072

    def best_of(fn) -> float:
        for _ in range(3):
            fn()
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(5):
                fn()
            best = min(best, (time.perf_counter() - t) / 5)
        return 2 * m * k * n / best

    torch.backends.quantized.engine = "fbgemm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates the quantized tensor constructors
        qx = torch.quantize_per_tensor(torch.randn(m, k), 0.05, 64, torch.quint8)
        qw = torch.quantize_per_tensor(torch.randn(n, k), 0.05, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(qw, None)
        fbgemm = best_of(lambda: torch.ops.quantized.linear(qx, packed, 0.1, 64))
    a = torch.randint(-127, 127, (m, k), dtype=torch.int8)
    b = torch.randint(-127, 127, (k, n), dtype=torch.int8)
    int_mm = best_of(lambda: torch._int_mm(a, b))
    return {"method": f"fbgemm torch.ops.quantized.linear {m}x{k}x{n}, {threads} threads, best of 5",
            "ops_per_s": fbgemm, "int_mm_ops_per_s": int_mm}


def matmul_flops_per_token(shape) -> float:
    """2 x the non-embedding matmul parameters of a Qwen3 layer stack (attention scores not counted)."""
    h, q, kv, f = shape.hidden, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim, shape.ffn
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * f
    return 2.0 * per_layer * shape.layers


# -- models -----------------------------------------------------------------------------------------------
def prepare_models(work: Path, name: str, shape, quants: list[str], tokenizer_from: Path) -> tuple[Path, dict[str, Path]]:
    """A random checkpoint with ``shape`` and ``tokenizer_from``'s tokenizer (written once) and its
    GGUF conversions (made once). Types the converter does not write (IQ4_NL) come from llama.cpp's
    quantizer run on the BF16 file."""
    from qembed_gguf import convert, registry
    from qembed_gguf.converter.quantize import OutType, llama_quantize
    from qembed_gguf.synthetic import write_checkpoint

    tiny = registry.bundled_dir(registry.get_spec("tiny"))
    folder = work / name
    if name == "tiny":
        folder = tiny
    elif not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        log.info("writing the %s checkpoint into %s", name, folder)
        write_checkpoint(folder, shape, tokenizer_from=tokenizer_from, seed=0, name=f"bench-{name}")
    files = {}
    for q in quants:
        path = work / f"{name}-{q}.gguf"
        if not path.exists():
            log.info("converting %s to %s", name, q)
            if q in LLAMA_ONLY_TYPES:
                bf16 = prepare_models(work, name, shape, ["bf16"], tokenizer_from)[1]["bf16"]
                partial = path.with_name(path.name + ".partial")  # renamed when complete
                llama_quantize(bf16, partial, OutType(q, 0, "", llama_ftype=LLAMA_ONLY_TYPES[q]))
                partial.rename(path)
            else:
                convert(folder, outtype=q, outfile=path, quiet=True)
        files[q] = path
    return folder, files


# -- the worker: one contender, one workload, one fresh process ---------------------------------------------
def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM, the high-water mark of its own address space. (ru_maxrss is
    not: Linux carries it across fork + exec, so a worker would report at least its parent's RSS.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
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
    elif kind == "onnx-export":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from onnx_contender import export_int8

        return {"path": str(export_int8(job["model"], job["out"]))}
    elif kind == "onnx":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from onnx_contender import OnnxEmbedder

        model = OnnxEmbedder(job["model"], job["tokenizer"], threads=threads, batch_size=job["batch_size"])
        embed = model.embed
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
    tap = getattr(getattr(model, "_runtime", None), "_tap", None)
    if tap is not None:  # the eval callback's work: nodes asked about, and the lm_head never among them
        result["callback"] = {"nodes_asked": tap.nodes_asked, "head_asked": tap.head_asked,
                              "decode_calls": model.stats.decode_calls}
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


def _env(pythonpath: str | None) -> dict:
    """This environment, with ``pythonpath`` first on PYTHONPATH (e.g. the last commit before a change,
    installed with pip --target, which then shadows the installed package)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    return env


def run_worker(job: dict, timeout: float, script: str = __file__) -> dict:
    """Run one measurement in a fresh interpreter (``script _worker JOB.json``: this benchmark's
    worker, or another benchmark's); its result (the last JSON line it prints), or {"error": ...}."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(job, fh)
    try:
        proc = subprocess.run([sys.executable, script, "_worker", fh.name], capture_output=True, text=True,
                              timeout=timeout, cwd=tempfile.gettempdir(), env=_env(job.get("pythonpath")))
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
        n_tokens = row.get("tokens", tokens)  # a model with another tokenizer counts its own tokens
        row.update(seconds=sec, tokens_per_s=n_tokens / sec, docs_per_s=n_texts / sec,
                   tokens_per_s_runs=[round(n_tokens / r["seconds"], 1) for r in ok],
                   peak_rss_mb=max(r["peak_rss_mb"] for r in ok),
                   steal_pct=max((r.get("steal_pct") or 0.0 for r in ok), default=None),
                   efficiency=n_tokens / sec * flops / int8_ops,
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
    p.add_argument("--w1-texts", type=int, default=64)
    p.add_argument("--w2-texts", type=int, default=16)
    p.add_argument("--w3-queries", type=int, default=60)
    p.add_argument("--w4-texts", type=int, default=32, help="W1 texts (every k-th) for the 4B run")
    p.add_argument("--sweep-texts", type=int, default=48, help="W1 texts (every k-th) for the type sweep")
    p.add_argument("--workloads", default="W1,types,load,W2,W3,W4,scaling")
    p.add_argument("--st-batch-sizes", default="4,8,16,32", help="tuned on a W1 sample; the fastest is used")
    p.add_argument("--w2-st", action=argparse.BooleanOptionalAction, default=True,
                   help="sentence-transformers in W2 (slow where the CPU lacks bf16 instructions)")
    p.add_argument("--baseline", type=Path, default=None,
                   help="a qembed-gguf installed with `pip install --no-deps --target DIR <commit>`: measured "
                        "as 'qembed-gguf before' next to this one (W1 and load)")
    p.add_argument("--onnx", action=argparse.BooleanOptionalAction, default=True,
                   help="ONNX Runtime int8 of the same checkpoint in W1 (exported once into --work)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement process")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("qembed_gguf").setLevel(logging.WARNING)

    from qembed_gguf import registry
    from qembed_gguf.synthetic import SHAPES

    workloads = set(args.workloads.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tiny = registry.bundled_dir(registry.get_spec("tiny"))
    if args.smoke:  # the bundled model's small vocabulary: a check that the harness runs, no figures
        tokenizer = tiny
        base_name, base_shape = "tiny", SHAPES["tiny"]
        big_name, big_shape = "tiny", SHAPES["tiny"]
        n1, n2, n3, n4, n_sweep, rounds = 12, 2, 8, 6, 6, 1
        w2_range, scaling = (300, 600), [64, 128, 256]
        st_batches, sweep_quants = [8], ["q4_k_m"]
        args.w2_st = False  # W1 already runs the sentence-transformers worker; once is enough for a smoke
    else:  # real layer shapes AND the real 151,669-token vocabulary and tokenizer
        from qembed_gguf.realvocab import QWEN3_VOCAB_SIZE, write_qwen3_tokenizer

        tokenizer = write_qwen3_tokenizer(args.work / "qwen3-tokenizer")
        base_name = "0.6b-rv"
        base_shape = dataclasses.replace(registry.get_spec("qwen3-embedding-0.6b").shape, vocab=QWEN3_VOCAB_SIZE)
        big_name = "4b-rv"
        big_shape = dataclasses.replace(registry.get_spec("qwen3-embedding-4b").shape, vocab=QWEN3_VOCAB_SIZE)
        n1, n2, n3, n4, n_sweep, rounds = (args.w1_texts, args.w2_texts, args.w3_queries, args.w4_texts,
                                           args.sweep_texts, args.rounds)
        w2_range, scaling = (2000, 8000), SCALING_LENGTHS
        st_batches, sweep_quants = [int(x) for x in args.st_batch_sizes.split(",")], SWEEP_QUANTS
    count = TokenCounter(tokenizer)
    threads = args.threads

    started = time.time()
    report: dict = {
        "date": datetime.date.today().isoformat(), "smoke": args.smoke,
        "machine": {"tag": machine_tag(), "cpu": cpu_model(), "cores": n_cores(), "flags": cpu_flags(),
                    "python": platform.python_version()},
        "threads": threads, "versions": _versions(), "workloads": {},
        "model": {"shape": dataclasses.asdict(base_shape), "tokenizer": str(tokenizer)},
    }
    gemm = int8_gemm_ops(threads)
    report["int8_gemm"] = gemm
    log.info("int8 GEMM: %.0f GOP/s (fbgemm), torch._int_mm %.0f GOP/s", gemm["ops_per_s"] / 1e9,
             gemm["int_mm_ops_per_s"] / 1e9)

    quants = sorted(set(QUANTS) | (set(sweep_quants) if "types" in workloads else set()), key=SWEEP_QUANTS.index)
    folder, files = prepare_models(args.work, base_name, base_shape, quants, tokenizer)
    flops = matmul_flops_per_token(base_shape)
    w1 = make_texts(count, n1, 8, 512, seed=1)
    w1_tokens = sum(count(t) for t in w1)
    baseline = str(args.baseline.resolve()) if args.baseline else None
    # sentence-transformers' own default for a bf16 checkpoint is bf16; without AVX512_BF16 the
    # CPU emulates it slowly, and fp32 is the fair contender
    st_dtype = "default" if "avx512_bf16" in cpu_flags() or args.smoke else "float32"

    if "W1" in workloads:
        tune = tune_st_batch(folder, w1[::max(1, len(w1) // 24)], threads, st_batches, args.timeout)
        cons = contenders_for(files, folder, ["q4_k_m", "q4_0", "q8_0"], n_ctx=512, st_batch=tune["chosen"],
                              st_dtypes=[st_dtype], lcp_quants=["q4_k_m"])
        if baseline:
            cons.insert(1, {"name": "qembed-gguf before Q4_K_M", "kind": "qembed", "model": str(files["q4_k_m"]),
                            "quant": "q4_k_m", "pythonpath": baseline})
        if args.onnx:  # exported once, in a process of its own (quantizing the 0.6B peaks at ~8 GB)
            res = run_worker({"kind": "onnx-export", "model": str(folder), "out": str(args.work / f"{base_name}-onnx"),
                              "threads": threads, "mode": "export"}, args.timeout)
            if "error" in res:
                raise SystemExit(f"the ONNX export failed: {res['error']}")
            cons.append({"name": "ONNX Runtime int8", "kind": "onnx", "model": res["path"],
                         "tokenizer": str(folder / "tokenizer.json"), "batch_size": tune["chosen"]})
        rows = measure(cons, w1, w1_tokens, rounds, threads, "throughput", args.timeout)
        summarize_throughput(rows, w1_tokens, len(w1), flops, gemm["ops_per_s"])
        report["workloads"]["W1"] = {"texts": len(w1), "tokens": w1_tokens, "rounds": rounds,
                                     "lengths": [8, 512], "st_batch_tuning": tune, "rows": rows,
                                     "flops_per_token": flops}
    if "types" in workloads:
        sweep = w1[::max(1, len(w1) // n_sweep)][:n_sweep]
        sweep_tokens = sum(count(t) for t in sweep)
        cons = [{"name": f"{q.upper()} repack={r}", "kind": "qembed", "model": str(files[q]), "quant": q,
                 "kwargs": {"repack": r}, "repack": r} for q in sweep_quants for r in (False, True)]
        if not args.smoke:  # the same layer shapes with a 4,096-token vocabulary: equal FLOPs, no lm_head
            small = dataclasses.replace(base_shape, vocab=4096)
            _, small_files = prepare_models(args.work, "0.6b", small, ["q4_k_m"], registry.bundled_dir(
                registry.get_spec("tiny")))
        rows = measure(cons, sweep, sweep_tokens, 1, threads, "throughput", args.timeout)
        if not args.smoke:
            # texts of the same token counts under its own tokenizer: equal FLOPs but for the vocabulary
            small_count = TokenCounter(registry.bundled_dir(registry.get_spec("tiny")))
            small_sweep = make_texts(small_count, n1, 8, 512, seed=1)[::max(1, len(w1) // n_sweep)][:n_sweep]
            small_tokens = sum(small_count(t) for t in small_sweep)
            rows += measure([{"name": "Q4_K_M repack=False, vocab 4,096", "kind": "qembed", "quant": "q4_k_m",
                              "model": str(small_files["q4_k_m"]), "kwargs": {"repack": False}, "repack": False,
                              "small_vocab": True, "same_lengths": True, "tokens": small_tokens}],
                            small_sweep, small_tokens, 1, threads, "throughput", args.timeout)
        summarize_throughput(rows, sweep_tokens, len(sweep), flops, gemm["ops_per_s"])
        for r in rows:
            r["file_bytes"] = Path(r["model"]).stat().st_size
        report["workloads"]["types"] = {"texts": len(sweep), "tokens": sweep_tokens, "rounds": 1, "rows": rows,
                                        "flops_per_token": flops}
    if "load" in workloads:
        report["workloads"]["load"] = load_times(files["q4_k_m"], baseline, threads, args.timeout,
                                                 rounds=1 if args.smoke else 3)
    if "W2" in workloads:
        w2 = make_texts(count, n2, *w2_range, seed=2)
        w2_tokens = sum(count(t) for t in w2)
        longest = max(count(t) for t in w2)
        cons = contenders_for(files, folder, ["q4_k_m", "q4_0"], n_ctx=max(512, longest), st_batch=1,
                              st_dtypes=[st_dtype] if args.w2_st else [], lcp_quants=["q4_k_m"])
        rows = measure(cons, w2, w2_tokens, 1, threads, "throughput", args.timeout)
        summarize_throughput(rows, w2_tokens, len(w2), flops, gemm["ops_per_s"])
        report["workloads"]["W2"] = {"texts": len(w2), "tokens": w2_tokens, "rounds": 1, "lengths": list(w2_range),
                                     "rows": rows, "flops_per_token": flops}
    if "W3" in workloads:
        w3 = make_texts(count, n3, 16, 16, seed=3)
        report["workloads"]["W3"] = latency(files, w3, count, threads, args.timeout)
    if "W4" in workloads:
        bfolder, bfiles = prepare_models(args.work, big_name, big_shape, ["q4_k_m"], tokenizer)
        w4 = w1[::max(1, len(w1) // n4)][:n4]
        w4_tokens = sum(count(t) for t in w4)
        q4 = {"kind": "qembed", "model": str(bfiles["q4_k_m"]), "quant": "q4_k_m"}
        cons = [{**q4, "name": W4_DEFAULT, "kwargs": {}},
                {**q4, "name": W4_GROWN, "kwargs": {}, "reserve": 8192},
                {**q4, "name": W4_GROWN_Q8, "kwargs": {"kv_cache_type": "q8_0"}, "reserve": 8192},
                {**q4, "name": "qembed-gguf Q4_K_M, use_mmap=True", "kwargs": {"use_mmap": True}}]
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
    log.info("wrote %s.{md,json} in %.0f s", stem, report["elapsed_s"])
    errors = [e for w in report["workloads"].values() for r in w.get("rows", []) for e in r.get("errors", [])]
    errors += [w["error"] for w in report["workloads"].values() if isinstance(w.get("error"), str)]
    for e in errors:
        log.error("a measurement failed: %s", e)
    return 1 if errors or "error" in report["workloads"].get("scaling", {}) else 0


def load_times(path: Path, baseline: str | None, threads: int, timeout: float, rounds: int = 3) -> dict:
    """Seconds to construct an Embedder on ``path`` and to run ``qembed-gguf info`` on it (best of
    ``rounds`` fresh processes; the file is in the page cache after the first)."""
    out: dict = {"file": path.name, "rounds": rounds, "rows": []}
    versions = [("qembed-gguf", None)] + ([("qembed-gguf before", baseline)] if baseline else [])
    for name, pythonpath in versions:
        env = _env(pythonpath)
        row: dict = {"name": name}
        load = [run_worker({"kind": "qembed", "model": str(path), "texts": ["x"], "threads": threads,
                            "mode": "throughput", "pythonpath": pythonpath}, timeout) for _ in range(rounds)]
        ok = [r["load_s"] for r in load if "load_s" in r]
        row["embedder_load_s"] = min(ok) if ok else None
        info = []
        for _ in range(rounds):
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "qembed_gguf", "info", str(path)], capture_output=True,
                                  text=True, timeout=timeout, cwd=tempfile.gettempdir(), env=env)
            info.append(time.perf_counter() - t)
            if proc.returncode not in (0, 3):
                row["error"] = proc.stderr[-400:]
        row["info_s"] = min(info)
        log.info("load %s: Embedder %.2f s, info %.2f s", name, row["embedder_load_s"] or -1, row["info_s"])
        out["rows"].append(row)
    return out


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

    def add(what: str, value, goal: str, met: bool) -> None:
        out.append({"target": what, "value": value, "goal": goal, "met": bool(met) and value is not None})

    w1 = report["workloads"].get("W1")
    if w1:
        ours = _row(w1, "qembed-gguf Q4_K_M")
        for name, prefix, goal in (("the last commit before (same file)", "qembed-gguf before", 1.5),
                                   ("llama-cpp-python defaults (same file)", "llama-cpp-python Q4_K_M", 2.0),
                                   ("sentence-transformers", "sentence-transformers", 1.5)):
            v = ratio(ours, _row(w1, prefix))
            add(f"W1: Embedder Q4_K_M / {name}", v, f">= {goal}", v is not None and v >= goal)
        v = ratio(ours, _row(w1, "ONNX Runtime int8"))
        add("W1: Embedder Q4_K_M / ONNX Runtime int8 (reported)", v, "—", v is not None)
        eff = ours.get("efficiency") if ours else None
        add("W1: Embedder Q4_K_M model FLOP/s / fbgemm int8 GEMM rate", eff, ">= 0.9", eff is not None and eff >= 0.9)
    load = report["workloads"].get("load")
    if load:
        row = next((r for r in load["rows"] if r["name"] == "qembed-gguf"), {})
        add("Embedder(real-vocab 0.6B Q4_K_M) load, s", row.get("embedder_load_s"), "<= 1.5",
            (row.get("embedder_load_s") or 99) <= 1.5)
        add("qembed-gguf info on it, s", row.get("info_s"), "<= 1.0", (row.get("info_s") or 99) <= 1.0)
    w3 = report["workloads"].get("W3")
    if w3:
        for row in w3["rows"]:
            v = row.get("p50_ratio")
            add(f"W3 {row['quant'].upper()}: Embedder p50 / one llama_decode p50", v, "<= 1.2", v is not None and v <= 1.2)
    w4 = report["workloads"].get("W4")
    if w4:
        by_name = {r["name"]: r for r in w4["rows"] if "peak_rss_mb" in r}
        for name, what in ((W4_DEFAULT, "defaults (max_tokens 8192; the W1 texts keep the KV cache at 512)"),
                           (W4_GROWN, "KV cache grown to all 8,192 tokens"),
                           (W4_GROWN_Q8, "KV cache grown to 8,192 tokens, kv_cache_type q8_0")):
            v = by_name[name]["peak_rss_mb"] / 1024 if name in by_name else None
            add(f"W4: 4B Q4_K_M peak RSS (GiB), {what}", v, "<= 3.0", v is not None and v <= 3.0)
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
             f"for reasons outside the contender."] + [f"Note: {n}" for n in rep.get("notes", [])] + ["", "## Targets", "",
             "| target | value | goal | met |", "|---|---|---|---|"]
    for t in rep["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['value'])} | {t['goal']} | {'yes' if t['met'] else '**no**'} |")
    titles = {"W1": "W1 corpus", "W2": "W2 long", "W4": "W4 4B shapes, Q4_K_M"}
    shape = rep.get("model", {}).get("shape", {})
    if shape:
        lines += ["", f"Models: random weights with the real layer shapes and a {shape['vocab']:,}-token vocabulary "
                      f"and its tokenizer ({rep['model']['tokenizer']})."]
    for key, title in titles.items():
        w = rep["workloads"].get(key)
        if not w:
            continue
        lcp = _row(w, "llama-cpp-python")
        st = _row(w, "sentence-transformers")
        lines += ["", f"## {title}: {w['texts']} texts, {w['tokens']} tokens, median of {w['rounds']} interleaved "
                      f"round(s)", "",
                  "| contender | tokens/s | docs/s | vs llama-cpp-python | vs ST | peak RSS | efficiency "
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
                           f"normalize=True)` with its defaults (n_ctx = n_batch = 512, enough for W1). ONNX Runtime: "
                           f"the checkpoint exported by torch.onnx (fp32), weights quantized by "
                           f"`quantize_dynamic` (int8, per channel), last-token pooling (benchmarks/onnx_contender.py).")
            before = _row(w, "qembed-gguf before")
            if before:
                lines.append("")
                lines.append(f"'qembed-gguf before' is the last commit before this change on the same file: the Embedder "
                             f"Q4_K_M is {_fmt(ratio(_row(w, 'qembed-gguf Q4_K_M'), before))}x it.")
        if key in ("W2", "W4"):
            lines.append("")
            lines.append("llama-cpp-python: n_ctx = n_batch raised to fit the longest input (its 512 default "
                         "would truncate)." if key == "W2" else
                         f"File {w['file_bytes'] / 2**30:.2f} GiB. Every contender accepts 8,192-token inputs. The "
                         f"Embedder's KV cache starts at 512 tokens and grows on demand; 'KV grown to 8192' rows "
                         f"reserve the full 8,192-token cache before embedding, as after one 8,192-token input.")
    ty = rep["workloads"].get("types")
    if ty:
        lines += ["", f"## Weight types, repacking on and off: {ty['texts']} W1 texts, {ty['tokens']} tokens, one run each",
                  "", "| type | file | tokens/s repack=False | tokens/s repack=True | off / on | efficiency (off) |",
                  "|---|---|---|---|---|---|"]
        by = {(r["quant"], r["repack"], bool(r.get("small_vocab"))): r for r in ty["rows"]}
        for q in dict.fromkeys(r["quant"] for r in ty["rows"]):
            off, on = by.get((q, False, False)), by.get((q, True, False))
            if off is None:
                continue
            lines.append(f"| {q.upper()} | {off['file_bytes'] / 2**20:.0f} MiB | {_fmt(off.get('tokens_per_s'), '.1f')} | "
                         f"{_fmt(on and on.get('tokens_per_s'), '.1f')} | {_fmt(ratio(off, on))} | "
                         f"{_fmt(off.get('efficiency') and 100 * off['efficiency'], '.0f')}% |")
        small = by.get(("q4_k_m", False, True))
        if small:
            same = small.get("same_lengths")
            lines += ["", f"The same layer shapes with a 4,096-token vocabulary (Q4_K_M, repack=False"
                          f"{', texts of the same token counts under its tokenizer' if same else ', the same texts'}): "
                          f"{_fmt(small.get('tokens_per_s'), '.1f')} tokens/s; real vocabulary / small = "
                          f"{_fmt(ratio(by.get(('q4_k_m', False, False)), small), '.3f')}"
                          + (" (1.0: the vocabulary costs nothing, no logits are computed)." if same else
                             f" (not an equal-FLOP comparison: its tokenizer splits the same texts into "
                             f"{small['tokens']} tokens, not {ty['tokens']}, so its inputs are longer).")]
    ld = rep["workloads"].get("load")
    if ld:
        lines += ["", f"## Start-up on {ld['file']} (best of {ld['rounds']} fresh processes)", "",
                  "| version | Embedder(file) | qembed-gguf info |", "|---|---|---|"]
        for r in ld["rows"]:
            lines.append(f"| {r['name']} | {_fmt(r.get('embedder_load_s'))} s | {_fmt(r.get('info_s'))} s |")
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
