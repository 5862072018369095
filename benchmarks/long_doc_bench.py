#!/usr/bin/env python3
"""One long document (~30,000 tokens) embedded four ways, in one run: truncated to ``max_tokens``,
``long_inputs="chunk"``, and ``Embedder.embed_chunks`` at knowledge-base chunk sizes — wall time,
tokens decoded, tokens/s and peak RSS, with ratios to the truncated run (issue 18).

    python benchmarks/long_doc_bench.py                         # 0.6B shapes, real vocabulary, Q4_K_M (~15-20 min on 2 cores)
    python benchmarks/long_doc_bench.py --chunk-overlaps 0,256  # also long_inputs="chunk" with overlap 256 (+~10 min)
    python benchmarks/long_doc_bench.py --smoke --out /tmp/b    # the bundled tiny model, seconds (run by the tests)

Writes ``<out>/<date>-long-doc-<machine>.{md,json}`` (default out: benchmarks/results; the machine
named as benchmarks/embed_bench.py names it). The model: random weights with the real
Qwen3-Embedding-0.6B layer shapes AND the real 151,669-token vocabulary and tokenizer (rebuilt
offline by ``qembed_gguf.realvocab``), converted to Q4_K_M; the files in ``--work`` are reused
when present (embed_bench's ``prepare_models``) and made otherwise.

The document: paragraphs of sentences of words drawn (seeded) from embed_bench's multilingual pool,
cut at a word to the most tokens <= ``--tokens`` (the pooling token included).

Contenders (one fresh process each, the same document, ``--threads`` threads, Embedder defaults
otherwise: max_tokens 8,192, flash attention, KV cache growing on demand from 512 tokens):
  truncate        ``Embedder(long_inputs="truncate").embed([doc])``: the first 8,191 tokens + the pooling token
  chunk           ``Embedder(long_inputs="chunk", chunk_overlap=K).embed([doc])``: windows of 8,191 tokens,
                  one vector (their token-weighted mean)
  embed_chunks N  ``Embedder().embed_chunks([doc], chunk_tokens=N, overlap=0)``: one vector per chunk of <= N
                  tokens, ending at paragraph / sentence breaks
Each process loads the model, embeds one short warm-up text (first-call allocations and graph
builds are not the steady state), then times the one call. Peak RSS is the process's VmHWM (see
embed_bench). One repetition per contender by default (``--rounds``: more, interleaved; the median
is reported).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import embed_bench  # noqa: E402
from embed_bench import (  # noqa: E402 - the shared harness: machine names, models, RSS, noise
    WORDS, TokenCounter, _peak_rss_mb, _versions, cpu_flags, cpu_model, cpu_times, machine_tag, n_cores,
    prepare_models, steal_pct)

log = logging.getLogger("long_doc_bench")

QUANT = "q4_k_m"


# -- the document -------------------------------------------------------------------------------------
def make_document(count: TokenCounter, target: int, seed: int = 0) -> str:
    """Paragraphs (blank-line separated) of 3-8 sentences of 6-18 pool words, until the text has
    the most tokens <= ``target`` (pooling token included), cut after a word. Deterministic."""
    rng = np.random.default_rng(seed)
    paragraphs: list[str] = []
    estimate = 0
    while True:
        sentences = []
        for _ in range(int(rng.integers(3, 9))):
            words = [WORDS[i] for i in rng.integers(len(WORDS), size=int(rng.integers(6, 19)))]
            sentences.append(" ".join(words).capitalize() + ".")
        paragraphs.append(" ".join(sentences))
        estimate += count(paragraphs[-1])  # per-paragraph counts: near the whole text's
        if estimate >= target:
            text = "\n\n".join(paragraphs)
            if count(text) > target:
                break
            estimate = count(text)
    # the longest prefix ending after a word that fits: binary search over the word ends
    ends = [i for i, ch in enumerate(text) if ch == " " or ch == "\n"] + [len(text)]
    lo, hi = 0, len(ends) - 1  # count(text[:ends[lo]]) <= target < count(text[:ends[hi]])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(text[:ends[mid]].rstrip()) <= target:
            lo = mid
        else:
            hi = mid
    return text[:ends[lo]].rstrip()


# -- the worker: one contender, one fresh process ----------------------------------------------------------
def worker(job: dict) -> dict:
    from qembed_gguf import Embedder

    doc = Path(job["document"]).read_text(encoding="utf-8")
    t0 = time.perf_counter()
    embedder = Embedder(job["model"], n_threads=job["threads"], **job["kwargs"])
    load_s = time.perf_counter() - t0
    embedder.embed(["a short warm-up text"])
    rss_loaded = _peak_rss_mb()
    stats = embedder.stats
    before = (stats.tokens_decoded, stats.decode_calls, stats.sequences_decoded)
    start = time.perf_counter()
    if job["mode"] == "embed":
        vectors = embedder.embed([doc])
        spans = None
    else:
        chunks = embedder.embed_chunks([doc], chunk_tokens=job["chunk_tokens"], overlap=job["overlap"])
        vectors = np.stack([c.vector for c in chunks])
        spans = [(c.start, c.end, c.n_tokens) for c in chunks]
    seconds = time.perf_counter() - start
    result = {
        "load_s": load_s, "seconds": seconds,
        "tokens_decoded": stats.tokens_decoded - before[0], "decode_calls": stats.decode_calls - before[1],
        "sequences": stats.sequences_decoded - before[2], "vectors": len(vectors),
        "finite": bool(np.isfinite(vectors).all()), "peak_rss_mb": _peak_rss_mb(), "loaded_rss_mb": rss_loaded,
        "max_tokens": embedder.max_tokens,
    }
    if spans is not None:  # the chunks cover the document, in order
        result["covered"] = spans[0][0] == 0 and spans[-1][1] == len(doc) and all(
            a[0] <= b[0] <= a[1] for a, b in zip(spans, spans[1:]))
        result["longest_chunk_tokens"] = max(n for _, _, n in spans)
    embedder.close()
    return result


def run_worker(job: dict, timeout: float) -> dict:
    """One measurement in a fresh interpreter (embed_bench's harness running this file's worker)."""
    return embed_bench.run_worker(job, timeout, script=__file__)


# -- the run -----------------------------------------------------------------------------------------------
def contenders(max_tokens: int | None, chunk_overlaps: list[int], chunk_sizes: list[int]) -> list[dict]:
    base = {} if max_tokens is None else {"max_tokens": max_tokens}
    out = [{"name": "truncate", "mode": "embed", "kwargs": {**base, "long_inputs": "truncate"}}]
    out += [{"name": f"long_inputs=chunk, overlap {k}", "mode": "embed",
             "kwargs": {**base, "long_inputs": "chunk", "chunk_overlap": k}} for k in chunk_overlaps]
    out += [{"name": f"embed_chunks {n}", "mode": "chunks", "chunk_tokens": n, "overlap": 0, "kwargs": dict(base)}
            for n in chunk_sizes]
    return out


def summarize(rows: list[dict], doc_tokens: int) -> None:
    base = None
    for r in rows:
        ok = [x for x in r["runs"] if "seconds" in x]
        r["errors"] = [x["error"] for x in r["runs"] if "error" in x]
        if not ok:
            continue
        first = ok[0]
        r.update(seconds=statistics.median(x["seconds"] for x in ok), load_s=min(x["load_s"] for x in ok),
                 peak_rss_mb=max(x["peak_rss_mb"] for x in ok), loaded_rss_mb=max(x["loaded_rss_mb"] for x in ok),
                 tokens_decoded=first["tokens_decoded"], vectors=first["vectors"], decode_calls=first["decode_calls"],
                 sequences=first["sequences"], finite=all(x["finite"] for x in ok),
                 steal_pct=max((x.get("steal_pct") or 0.0 for x in ok), default=None),
                 seconds_runs=[round(x["seconds"], 2) for x in ok])
        r["tokens_per_s"] = r["tokens_decoded"] / r["seconds"]
        # the document's content tokens the vectors stand for (truncate: what fits; the rest: all)
        content = doc_tokens - 1
        r["coverage"] = min(1.0, (first["max_tokens"] - 1) / content) if r["name"] == "truncate" else 1.0
        if "covered" in first:
            r["covered"] = all(x["covered"] for x in ok)
            r["longest_chunk_tokens"] = first["longest_chunk_tokens"]
        if r["name"] == "truncate":
            base = r
    for r in rows:
        if base and "seconds" in r:
            r["time_vs_truncate"] = r["seconds"] / base["seconds"]
            r["tokens_per_s_vs_truncate"] = r["tokens_per_s"] / base["tokens_per_s"]
            r["peak_rss_vs_truncate"] = r["peak_rss_mb"] / base["peak_rss_mb"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true",
                   help="the bundled tiny model, a 3,000-token document, max_tokens 512 (seconds; no figures)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench", help="generated checkpoints and GGUFs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=None, help="document length in tokens (default 30,000; smoke 3,000)")
    p.add_argument("--chunk-overlaps", default="0", help="long_inputs='chunk' overlaps, comma-separated (default 0)")
    p.add_argument("--chunk-sizes", default=None, help="embed_chunks chunk_tokens (default 512,2048; smoke 64,256)")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds (median reported)")
    p.add_argument("--date", default=None, help="the date in the results' names (default: today)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per measurement process")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("qembed_gguf").setLevel(logging.WARNING)

    from qembed_gguf import registry
    from qembed_gguf.synthetic import SHAPES

    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.smoke:  # the bundled model's small vocabulary: a check that the harness runs, no figures
        tokenizer = registry.bundled_dir(registry.get_spec("tiny"))
        name, shape, max_tokens = "tiny", SHAPES["tiny"], 512
        target, sizes = args.tokens or 3000, args.chunk_sizes or "64,256"
    else:  # real layer shapes AND the real 151,669-token vocabulary and tokenizer
        from qembed_gguf.realvocab import QWEN3_VOCAB_SIZE, write_qwen3_tokenizer

        tokenizer = write_qwen3_tokenizer(args.work / "qwen3-tokenizer")
        name = "0.6b-rv"
        shape = dataclasses.replace(registry.get_spec("qwen3-embedding-0.6b").shape, vocab=QWEN3_VOCAB_SIZE)
        max_tokens = None  # the Embedder's default: 8,192
        target, sizes = args.tokens or 30_000, args.chunk_sizes or "512,2048"
    _, files = prepare_models(args.work, name, shape, [QUANT], tokenizer)
    count = TokenCounter(tokenizer)
    doc = make_document(count, target)
    doc_tokens = count(doc)
    log.info("document: %d characters, %d tokens (pooling token included), %d paragraphs", len(doc), doc_tokens,
             doc.count("\n\n") + 1)

    started = time.time()
    cons = contenders(max_tokens, [int(x) for x in args.chunk_overlaps.split(",") if x],
                      [int(x) for x in sizes.split(",") if x])
    rows = [{**c, "runs": []} for c in cons]
    with tempfile.TemporaryDirectory() as tmp:
        doc_path = Path(tmp) / "document.txt"
        doc_path.write_text(doc, encoding="utf-8")
        for r in range(args.rounds):
            for row in rows:
                job = {**{k: v for k, v in row.items() if k != "runs"}, "model": str(files[QUANT]),
                       "document": str(doc_path), "threads": args.threads}
                before = cpu_times()
                res = run_worker(job, args.timeout)
                res["steal_pct"] = steal_pct(before, cpu_times())
                log.info("round %d %-32s %s", r + 1, row["name"], res.get("error") or (
                    f"{res['seconds']:7.1f} s, {res['tokens_decoded']} tokens, {res['vectors']} vectors, "
                    f"peak RSS {res['peak_rss_mb']:.0f} MB"))
                row["runs"].append(res)
    summarize(rows, doc_tokens)

    date = args.date or datetime.date.today().isoformat()
    report = {
        "date": date, "smoke": args.smoke,
        "machine": {"tag": machine_tag(), "cpu": cpu_model(), "cores": n_cores(), "flags": cpu_flags(),
                    "python": platform.python_version()},
        "threads": args.threads, "versions": _versions(), "rounds": args.rounds,
        "model": {"file": files[QUANT].name, "quant": QUANT, "bytes": files[QUANT].stat().st_size,
                  "shape": dataclasses.asdict(shape), "tokenizer": str(tokenizer),
                  "max_tokens": max_tokens or 8192},
        "document": {"characters": len(doc), "tokens": doc_tokens, "paragraphs": doc.count("\n\n") + 1, "seed": 0},
        "command": command(args),
        "rows": rows, "elapsed_s": round(time.time() - started, 1),
    }
    stem = args.out / f"{date}-long-doc-{report['machine']['tag']}{'-smoke' if args.smoke else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    log.info("wrote %s.{md,json} in %.0f s", stem, report["elapsed_s"])
    errors = [e for r in rows for e in r["errors"]]
    errors += [f"{r['name']}: non-finite vectors" for r in rows if r.get("finite") is False]
    errors += [f"{r['name']}: the chunks do not cover the document" for r in rows if r.get("covered") is False]
    for e in errors:
        log.error("a measurement failed: %s", e)
    return 1 if errors else 0


def command(args: argparse.Namespace) -> str:
    parts = ["python benchmarks/long_doc_bench.py"]
    if args.smoke:
        parts.append("--smoke")
    for flag, value, default in (("--tokens", args.tokens, None), ("--chunk-overlaps", args.chunk_overlaps, "0"),
                                 ("--chunk-sizes", args.chunk_sizes, None), ("--rounds", args.rounds, 1),
                                 ("--threads", args.threads, 2)):
        if value != default:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _fmt(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def markdown(rep: dict) -> str:
    m, mod, doc = rep["machine"], rep["model"], rep["document"]
    sh = mod["shape"]
    lines = [
        f"# One long document: truncate vs chunk vs embed_chunks — {rep['date']}"
        f"{' (SMOKE: tiny model)' if rep['smoke'] else ''}", "",
        f"Machine: {m['cpu']} ({m['tag']}), {m['cores']} cores ({', '.join(m['flags'])}); {rep['threads']} threads "
        f"for every contender.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items() if v) + ".",
        f"Model: random weights, {sh['layers']} layers, hidden {sh['hidden']}, FFN {sh['ffn']}, a {sh['vocab']:,}-token "
        f"vocabulary and its tokenizer; {mod['file']} ({mod['quant'].upper()}, {mod['bytes'] / 2**20:.0f} MiB); "
        f"Embedder defaults otherwise (max_tokens {mod['max_tokens']:,}, flash attention, KV cache grown on demand).",
        f"Document: {doc['tokens']:,} tokens (pooling token included), {doc['characters']:,} characters, "
        f"{doc['paragraphs']} paragraphs of multilingual pool words (seed {doc['seed']}).",
        f"Reproduce: `{rep['command']}` (this run: {rep['elapsed_s'] / 60:.0f} min). Each contender in its own "
        f"process, {rep['rounds']} run(s) each{' (median)' if rep['rounds'] > 1 else ''}; time is the one "
        f"embedding call after load and a short warm-up; peak RSS the process's high-water mark (load included); "
        f"'covers' is the share of the document's tokens the vectors stand for.", "",
        "| contender | vectors | covers | tokens decoded | wall s | tokens/s | ms/token | peak RSS MB "
        "| time vs truncate | tokens/s vs truncate | RSS vs truncate | load s | max CPU steal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rep["rows"]:
        if "seconds" not in r:
            lines.append(f"| {r['name']} | failed: {'; '.join(r.get('errors', []))[:200]} ||||||||||||")
            continue
        lines.append(
            f"| {r['name']} | {r['vectors']} | {100 * r['coverage']:.0f}% | {r['tokens_decoded']:,} | {r['seconds']:.1f} | "
            f"{r['tokens_per_s']:.0f} | {1000 / r['tokens_per_s']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{_fmt(r.get('time_vs_truncate'))} | {_fmt(r.get('tokens_per_s_vs_truncate'))} | "
            f"{_fmt(r.get('peak_rss_vs_truncate'))} | {r['load_s']:.1f} | {_fmt(r.get('steal_pct'), '.0f')}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(worker(json.loads(Path(sys.argv[2]).read_text()))))
        sys.exit(0)
    sys.exit(main())
