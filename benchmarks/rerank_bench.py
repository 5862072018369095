#!/usr/bin/env python3
"""Reranker throughput: (query, document) pairs per second at the real Qwen3-Reranker-0.6B shapes.

    python benchmarks/rerank_bench.py                       # 0.6B shapes, Q8_0 and Q4_K_M (~15 min on 2 cores)
    python benchmarks/rerank_bench.py --quants q8_0 --rounds 1
    python benchmarks/rerank_bench.py --smoke --out /tmp/b  # hidden 256, 2 layers: a check that the harness runs

Writes ``<out>/<date>-rerank-<machine>.{md,json}`` (default out: benchmarks/results; the machine
named as benchmarks/embed_bench.py names it). The model: random weights with the real
Qwen3-Reranker-0.6B layer shapes (28 layers, hidden 1024, 16/8 heads of 128, FFN 3072, tied
embeddings) AND the real 151,669-token vocabulary and tokenizer (rebuilt offline by
``qembed_gguf.realvocab``), written as a Qwen3-Reranker checkpoint
(``synthetic.write_checkpoint(kind="reranker")``) and converted by llama.cpp's own converter (the
llama-cpp-python sdist's, as the tests use it) to BF16 and Q8_0; Q4_K_M comes from llama.cpp's
quantizer run on the BF16 file. Everything in ``--work`` is reused when present.

The workload (deterministic): one query of ~10 tokens and ``--pairs`` documents (200) of ~150
tokens of embed_bench's multilingual word pool, scored by ONE ``Reranker.score`` call (all pairs
packed into decode calls of ``n_ubatch`` = 512 tokens, as the Embedder packs texts). Each prompt
is the model card's template + instruction + query + document (~225 tokens). Each contender runs
in its own process (load, a two-pair warm-up, then the timed call); rounds are interleaved and the
median is reported, with every round's figure and the CPU steal time seen (the machine may be
shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import embed_bench  # noqa: E402
from embed_bench import (  # noqa: E402 - the shared harness: machine names, word pool, RSS, noise
    _peak_rss_mb, _versions, cpu_flags, cpu_model, cpu_times, machine_tag, make_text, n_cores, steal_pct)

log = logging.getLogger("rerank_bench")

QUANTS = ["q8_0", "q4_k_m"]
CONVERTED = ("bf16", "q8_0")  # what llama.cpp's converter writes (one run); the rest is quantized from BF16
LLAMA_FTYPES = {"q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
                "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K"}


# -- the model ------------------------------------------------------------------------------------------------
def llama_cpp_dir() -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python's sdist, as the tests extract it
    (tests/conftest.py), or $QEMBED_LLAMA_CPP_DIR."""
    if os.environ.get("QEMBED_LLAMA_CPP_DIR"):
        return Path(os.environ["QEMBED_LLAMA_CPP_DIR"])
    version = importlib.metadata.version("llama-cpp-python")
    path = ROOT / ".cache" / "llama-cpp-python-sdist" / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (path / "convert_hf_to_gguf.py").is_file():
        raise SystemExit(f"llama.cpp's converter is not at {path}: run the tests once (they extract it from the "
                         f"llama-cpp-python {version} sdist) or set QEMBED_LLAMA_CPP_DIR")
    return path


def prepare_model(work: Path, name: str, shape, quants: list[str], tokenizer_from: Path) -> tuple[Path, dict[str, Path]]:
    """The reranker checkpoint (written once) and its GGUFs (made once)."""
    from qembed_gguf.synthetic import write_checkpoint

    folder = work / f"{name}-qwen3-reranker"  # the name llama.cpp's converter recognises a reranker by (and README)
    if not (folder / "config.json").exists() or not (folder / "model.safetensors").exists():
        log.info("writing the %s reranker checkpoint into %s", name, folder)
        write_checkpoint(folder, shape, kind="reranker", tokenizer_from=tokenizer_from, seed=0,
                         name=f"bench-{name}-qwen3-reranker")
    files = {q: work / f"{name}-reranker-{q}.gguf" for q in {*CONVERTED, *quants}}
    missing = [q for q in CONVERTED if not files[q].exists()]
    if missing:
        # once qembed_gguf.convert writes rerankers: convert(folder, outtype=q, outfile=files[q], quiet=True)
        log.info("converting %s to %s with llama.cpp's converter", name, ", ".join(missing))
        partial = {q: files[q].with_name(files[q].name + ".partial") for q in missing}
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "reference_convert.py"), str(llama_cpp_dir()),
                               str(folder), *(f"{q}={p}" for q, p in partial.items())],
                              capture_output=True, text=True, timeout=7200)
        if proc.returncode:
            raise SystemExit(f"llama.cpp's converter failed:\n{proc.stderr[-3000:]}")
        for q, p in partial.items():
            p.rename(files[q])
    for q in quants:
        if not files[q].exists():
            log.info("quantizing %s to %s with llama.cpp's quantizer", files["bf16"].name, q)
            llama_quantize(files["bf16"], files[q], q)
    return folder, {q: files[q] for q in quants}


def llama_quantize(src: Path, dst: Path, quant: str) -> None:
    import ctypes

    import llama_cpp

    from qembed_gguf.runtime import set_llama_verbosity

    set_llama_verbosity(False)  # llama.cpp's per-tensor log
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, LLAMA_FTYPES[quant])
    params.nthread = n_cores()
    partial = dst.with_name(dst.name + ".partial")
    llama_cpp.llama_backend_init()
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama.cpp's quantizer failed with code {rc} writing {dst}")
    partial.rename(dst)


# -- the workload ------------------------------------------------------------------------------------------------
class PlainTokenCounter:
    """Tokens of a text as the reranker's tokenizer gives them (nothing appended)."""

    def __init__(self, folder: Path):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(folder / "tokenizer.json"))

    def __call__(self, text: str) -> int:
        return len(self._tok.encode(text, add_special_tokens=False).ids)


def make_workload(count: PlainTokenCounter, pairs: int, doc_tokens: int, query_tokens: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    query = make_text(count, rng, query_tokens)
    docs = [make_text(count, rng, doc_tokens) for _ in range(pairs)]
    return query, docs


# -- the worker: one contender, one fresh process ------------------------------------------------------------------
def worker(job: dict) -> dict:
    from qembed_gguf import Reranker

    data = json.loads(Path(job["workload"]).read_text(encoding="utf-8"))
    query, docs = data["query"], data["documents"]
    t0 = time.perf_counter()
    reranker = Reranker(job["model"], n_threads=job["threads"], **job.get("kwargs", {}))
    load_s = time.perf_counter() - t0
    reranker.score(query, docs[:2])  # warm-up: first-call allocations and graph builds are not the steady state
    stats = reranker.stats
    before = (stats.tokens_decoded, stats.decode_calls, stats.sequences_decoded)
    start = time.perf_counter()
    scores = reranker.score(query, docs)
    seconds = time.perf_counter() - start
    result = {
        "load_s": load_s, "seconds": seconds, "pairs": len(docs),
        "tokens_decoded": stats.tokens_decoded - before[0], "decode_calls": stats.decode_calls - before[1],
        "sequences": stats.sequences_decoded - before[2], "peak_rss_mb": _peak_rss_mb(),
        "finite": bool(np.isfinite(scores).all()), "score_mean": float(scores.mean()), "score_std": float(scores.std()),
        "max_tokens": reranker.max_tokens,
    }
    reranker.close()
    return result


def run_worker(job: dict, timeout: float) -> dict:
    return embed_bench.run_worker(job, timeout, script=__file__)


# -- the run -------------------------------------------------------------------------------------------------------------
def summarize(rows: list[dict]) -> None:
    for r in rows:
        ok = [x for x in r["runs"] if "seconds" in x]
        r["errors"] = [x["error"] for x in r["runs"] if "error" in x]
        if not ok:
            continue
        first = ok[0]
        r.update(seconds=statistics.median(x["seconds"] for x in ok), load_s=min(x["load_s"] for x in ok),
                 peak_rss_mb=max(x["peak_rss_mb"] for x in ok), tokens_decoded=first["tokens_decoded"],
                 decode_calls=first["decode_calls"], pairs=first["pairs"], finite=all(x["finite"] for x in ok),
                 score_mean=first["score_mean"], score_std=first["score_std"],
                 steal_pct=max((x.get("steal_pct") or 0.0 for x in ok), default=None),
                 pairs_per_s_runs=[round(x["pairs"] / x["seconds"], 2) for x in ok])
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        r["tokens_per_s"] = r["tokens_decoded"] / r["seconds"]
        runs = r["pairs_per_s_runs"]
        r["spread_pct"] = 100 * (max(runs) - min(runs)) / statistics.median(runs) if len(runs) > 1 else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="hidden 256, 2 layers, 20 pairs (seconds; no figures)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="generated checkpoints and GGUFs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quants", default=",".join(QUANTS), help=f"comma-separated (default {','.join(QUANTS)}; "
                                                             f"also bf16, {', '.join(LLAMA_FTYPES)})")
    p.add_argument("--pairs", type=int, default=None, help="documents scored against the query (default 200; smoke 20)")
    p.add_argument("--doc-tokens", type=int, default=150)
    p.add_argument("--query-tokens", type=int, default=10)
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median reported)")
    p.add_argument("--date", default=None, help="the date in the results' names (default: today)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement process")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("qembed_gguf").setLevel(logging.WARNING)

    from qembed_gguf.realvocab import QWEN3_VOCAB_SIZE, write_qwen3_tokenizer
    from qembed_gguf.synthetic import SHAPES, Qwen3Shape

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer = write_qwen3_tokenizer(args.work / "qwen3-tokenizer")
    if args.smoke:
        name, shape, pairs = "rv-small", SHAPES["realvocab-small"], args.pairs or 20
    else:  # Qwen3-Reranker-0.6B's layers (= Qwen3-Embedding-0.6B's) and the real vocabulary
        name, pairs = "0.6b-rv", args.pairs or 200
        shape = Qwen3Shape(hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, ffn=3072, vocab=QWEN3_VOCAB_SIZE)
    quants = [q for q in args.quants.split(",") if q]
    folder, files = prepare_model(args.work, name, shape, quants, tokenizer)
    count = PlainTokenCounter(folder)
    query, docs = make_workload(count, pairs, args.doc_tokens, args.query_tokens)
    doc_lengths = [count(d) for d in docs]
    log.info("query: %d tokens; %d documents of %d-%d tokens (mean %.0f)", count(query), len(docs), min(doc_lengths),
             max(doc_lengths), statistics.mean(doc_lengths))

    started = time.time()
    rows = [{"name": f"Reranker {q.upper()}", "quant": q, "model": str(files[q]), "runs": []} for q in quants]
    workload = args.work / f"rerank-workload-{name}-{pairs}.json"
    workload.write_text(json.dumps({"query": query, "documents": docs}, ensure_ascii=False), encoding="utf-8")
    for r in range(args.rounds):
        for row in rows:
            job = {"model": row["model"], "workload": str(workload), "threads": args.threads}
            before = cpu_times()
            res = run_worker(job, args.timeout)
            res["steal_pct"] = steal_pct(before, cpu_times())
            log.info("round %d %-18s %s", r + 1, row["name"], res.get("error") or (
                f"{res['seconds']:7.1f} s, {res['pairs'] / res['seconds']:.2f} pairs/s, "
                f"{res['tokens_decoded'] / res['seconds']:.0f} tokens/s, {res['decode_calls']} decode calls, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB"))
            row["runs"].append(res)
    summarize(rows)

    date = args.date or datetime.date.today().isoformat()
    report = {
        "date": date, "smoke": args.smoke,
        "machine": {"tag": machine_tag(), "cpu": cpu_model(), "cores": n_cores(), "flags": cpu_flags(),
                    "python": platform.python_version(), "load_average_at_end": list(os.getloadavg())},
        "threads": args.threads, "versions": _versions(), "rounds": args.rounds,
        "model": {"shape": dataclasses.asdict(shape), "tokenizer": str(tokenizer), "checkpoint": str(folder),
                  "files": {q: {"file": files[q].name, "bytes": files[q].stat().st_size} for q in quants},
                  "converter": "llama.cpp convert_hf_to_gguf.py (llama-cpp-python sdist); K-quants: llama_model_quantize"},
        "workload": {"pairs": pairs, "query_tokens": count(query), "doc_tokens_mean": statistics.mean(doc_lengths),
                     "doc_tokens_min": min(doc_lengths), "doc_tokens_max": max(doc_lengths), "seed": 0},
        "command": command(args), "rows": rows, "elapsed_s": round(time.time() - started, 1),
    }
    stem = args.out / f"{date}-rerank-{report['machine']['tag']}{'-smoke' if args.smoke else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    log.info("wrote %s.{md,json} in %.0f s", stem, report["elapsed_s"])
    errors = [e for r in rows for e in r["errors"]] + [f"{r['name']}: non-finite scores" for r in rows
                                                        if r.get("finite") is False]
    for e in errors:
        log.error("a measurement failed: %s", e)
    return 1 if errors else 0


def command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/rerank_bench.py"]
    if args.smoke:
        parts.append("--smoke")
    for flag, value, default in (("--quants", args.quants, ",".join(QUANTS)), ("--pairs", args.pairs, None),
                                 ("--doc-tokens", args.doc_tokens, 150), ("--query-tokens", args.query_tokens, 10),
                                 ("--rounds", args.rounds, 2), ("--threads", args.threads, 2)):
        if value != default:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _fmt(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(rep: dict) -> str:
    m, mod, w = rep["machine"], rep["model"], rep["workload"]
    sh = mod["shape"]
    tokens_per_pair = next((r["tokens_decoded"] / r["pairs"] for r in rep["rows"] if "seconds" in r), None)
    lines = [
        f"# Reranker throughput — {rep['date']}{' (SMOKE: small model)' if rep['smoke'] else ''}", "",
        f"Machine: {m['cpu']} ({m['tag']}), {m['cores']} cores ({', '.join(m['flags'])}); {rep['threads']} threads; "
        f"load average at the end {', '.join(f'{x:.1f}' for x in m['load_average_at_end'])} (the machine is shared: "
        f"see the per-round figures and CPU steal).",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if v) + ".",
        f"Model: random weights with Qwen3-Reranker shapes ({sh['layers']} layers, hidden {sh['hidden']}, "
        f"{sh['heads']}/{sh['kv_heads']} heads of {sh['head_dim']}, FFN {sh['ffn']}) and the real {sh['vocab']:,}-token "
        f"vocabulary and tokenizer; converted by {mod['converter']}.",
        f"Workload: one query of {w['query_tokens']} tokens, {w['pairs']} documents of {w['doc_tokens_min']}-"
        f"{w['doc_tokens_max']} tokens (mean {w['doc_tokens_mean']:.0f}), scored by one `Reranker.score` call; "
        f"{_fmt(tokens_per_pair, '.0f')} tokens per pair with the model card's template and default instruction "
        f"(tokens/s counts all of them).",
        f"Reproduce: `{rep['command']}` (this run: {rep['elapsed_s'] / 60:.0f} min). Each contender in its own "
        f"process, {rep['rounds']} interleaved round(s){' (median)' if rep['rounds'] > 1 else ''}; the time is "
        f"the one scoring call after load and a two-pair warm-up.", "",
        "| contender | file MiB | pairs/s | tokens/s | ms/pair | pairs/s per round | round spread | decode calls "
        "| peak RSS MB | load s | max CPU steal |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        size = mod["files"][r["quant"]]["bytes"] / 2**20
        if "seconds" not in r:
            lines.append(f"| {r['name']} | {size:.0f} | failed: {'; '.join(r.get('errors', []))[:200]} ||||||||")
            continue
        lines.append(
            f"| {r['name']} | {size:.0f} | {r['pairs_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
            f"{1000 / r['pairs_per_s']:.0f} | {', '.join(f'{x:.2f}' for x in r['pairs_per_s_runs'])} | "
            f"{_fmt(r['spread_pct'], '.0f')}% | {r['decode_calls']} | {r['peak_rss_mb']:.0f} | {r['load_s']:.1f} | "
            f"{_fmt(r.get('steal_pct'), '.0f')}% |")
    lines += ["", "Scores (random weights: they mean nothing, but must be finite and varied): " + "; ".join(
        f"{r['name']} mean {r['score_mean']:.3f}, std {r['score_std']:.3f}" for r in rep["rows"] if "seconds" in r) + "."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(json.loads(Path(sys.argv[2]).read_text()))))
        sys.exit(0)
    sys.exit(main())
