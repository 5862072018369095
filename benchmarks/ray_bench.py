#!/usr/bin/env python3
"""Per-worker throughput of ``embed_dataset`` on Ray against the local Embedder, same texts.

    python benchmarks/ray_bench.py                      # tiny + the 0.6B-shaped model in .cache/bench, if built
    python benchmarks/ray_bench.py --model m.gguf --texts 512 --threads 2 --rounds 3
    python benchmarks/ray_bench.py --address auto       # an existing cluster instead of a local instance
    python benchmarks/ray_bench.py --smoke              # tiny model, a few texts: checks the harness in seconds

For each model: the local side is one ``Embedder(model, n_threads=T)`` embedding the texts in calls
of ``--batch-size`` texts; the Ray side is ``embed_dataset`` with ONE worker of T CPUs and T threads
over the same texts, cut into blocks of ``--batch-size`` rows (one Embedder call per block, as
locally), written as Parquet by ``write_embeddings``. Rounds alternate local and Ray; medians are
reported. Ray is measured two ways:

- **worker**: rows / the time the worker's tasks ran (Ray Data's per-task wall time, summed): the
  steady-state throughput of one worker, which is what a cluster multiplies;
- **job**: rows / the wall time of the whole ``write_embeddings`` call, including starting the
  worker process and loading the model (a fixed cost per worker, paid once per job).

Tokens are counted with the local Embedder (pooling token included). Because both sides embed the
same batches, the vectors must be bit-identical; the report says how many rows are.

Writes ``<out>/<date>-ray-<model>.json`` and ``.md`` (default out: benchmarks/results; with
``--smoke``: a temporary folder, unless ``--out`` is given).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_MODELS = [ROOT / ".cache" / "bench" / "0.6b-q8_0.gguf", ROOT / ".cache" / "bench" / "0.6b-q4_k_m.gguf"]
WORDS = ("embedding models map documents and queries into one vector space so that retrieval becomes a "
         "nearest neighbour search over millions of passages stored in a vector database llama cpp runs "
         "quantized weights on ordinary processors la recherche sémantique fonctionne aussi en français "
         "und auf Deutsch mit denselben Modellen").split()

log = logging.getLogger("ray_bench")


def make_texts(n: int, words: int, seed: int = 0) -> list[str]:
    """``n`` distinct documents of about ``words`` words (±30 %), deterministic."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(max(1, int(words * 0.7)), int(words * 1.3) + 1, size=n)
    return [f"{i}. " + " ".join(rng.choice(WORDS, size=int(k))) for i, k in enumerate(sizes)]


def run_local(model: str, texts: list[str], threads: int, batch_size: int) -> tuple[float, np.ndarray]:
    """Seconds to embed ``texts`` in calls of ``batch_size`` with a loaded Embedder, and the vectors."""
    from qembed_gguf import Embedder

    with Embedder(model, n_threads=threads) as e:
        e.embed(texts[:batch_size])  # warm-up: first-call allocations are not throughput
        started = time.perf_counter()
        vectors = np.concatenate([e.embed(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
        return time.perf_counter() - started, vectors


def worker_seconds(ds) -> float | None:
    """Summed wall time of the embedding operator's tasks (Ray Data's stats), or None."""
    try:
        summary = ds.get_stats_summary()
    except Exception as exc:  # noqa: BLE001 - a stats API change must not lose the job numbers
        log.warning("no Ray Data stats (%s)", exc)
        return None
    stack = [summary]
    while stack:
        s = stack.pop()
        for op in getattr(s, "operators_stats", []):
            if "EmbedBatches" in op.operator_name and getattr(op, "wall_time", None) is not None:
                return float(op.wall_time.sum)
        stack.extend(getattr(s, "parents", []))
    return None


def run_ray(model: str, texts: list[str], threads: int, batch_size: int, folder: Path) -> dict:
    import pyarrow as pa
    import ray

    from qembed_gguf.integrations.ray import embed_dataset, read_embeddings, write_embeddings

    table = pa.table({"row": np.arange(len(texts), dtype=np.int64), "text": texts})
    blocks = [table.slice(i, batch_size) for i in range(0, len(texts), batch_size)]
    ds = embed_dataset(ray.data.from_arrow(blocks), model, concurrency=1, num_cpus_per_worker=threads,
                       n_threads=threads, batch_size=batch_size)
    ds.context.enable_progress_bars = False
    started = time.perf_counter()
    write_embeddings(ds, folder, force=True)
    job = time.perf_counter() - started
    return {"job_s": job, "worker_s": worker_seconds(ds), "vectors": read_embeddings(folder).vectors}


def bench_model(model: str, args, work: Path) -> dict:
    from qembed_gguf import Embedder

    texts = make_texts(args.texts, args.words)
    with Embedder(model, n_threads=args.threads) as e:
        tokens = sum(e.count_tokens(texts))
        path = str(e.path)
    name = Path(model).stem if Path(model).suffix == ".gguf" else str(model)
    rounds = []
    for r in range(args.rounds):
        local_s, local_vectors = run_local(path, texts, args.threads, args.batch_size)
        ray_side = run_ray(path, texts, args.threads, args.batch_size, work / f"{name}-{r}")
        same = int(np.sum(np.all(ray_side["vectors"] == local_vectors, axis=1)))
        cos = float(np.min(np.sum(ray_side["vectors"] * local_vectors, axis=1)))
        rounds.append({"local_s": local_s, "ray_job_s": ray_side["job_s"], "ray_worker_s": ray_side["worker_s"],
                       "bit_identical_rows": same, "min_cosine": cos})
        log.info("%s round %d: local %.2f s, ray worker %s s, ray job %.2f s, %d/%d rows bit-identical", name, r + 1,
                 local_s, f"{ray_side['worker_s']:.2f}" if ray_side["worker_s"] else "?", ray_side["job_s"], same,
                 len(texts))

    def rate(key: str) -> dict | None:
        values = [x[key] for x in rounds if x[key]]
        if not values:
            return None
        seconds = statistics.median(values)
        return {"seconds": seconds, "docs_per_s": len(texts) / seconds, "tokens_per_s": tokens / seconds}

    return {"model": name, "path": path, "texts": len(texts), "tokens": tokens,
            "tokens_per_text": tokens / len(texts), "local": rate("local_s"), "ray_worker": rate("ray_worker_s"),
            "ray_job": rate("ray_job_s"), "rounds": rounds}


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = [f"# Ray vs local: 1 worker x {cfg['threads']} thread(s), {report['cpus']} CPUs, Ray {report['ray']}",
             "", f"`{report['command']}`", "",
             f"{cfg['texts']} texts of ~{cfg['words']} words, embedded in calls of {cfg['batch_size']}; medians of "
             f"{cfg['rounds']} round(s). *worker*: rows / the embedding worker's task time (steady state, what a "
             f"cluster multiplies); *job*: rows / the whole `write_embeddings` call (worker start and model load "
             f"included).", "",
             "| model | tokens/text | local docs/s | local tok/s | Ray worker docs/s | Ray worker tok/s | "
             "worker / local | Ray job docs/s | bit-identical rows | min cosine |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for m in report["models"]:
        local, worker, job = m["local"], m["ray_worker"], m["ray_job"]
        ratio = f"{worker['tokens_per_s'] / local['tokens_per_s']:.2f}" if worker and local else "?"
        same = min(r["bit_identical_rows"] for r in m["rounds"])
        cos = min(r["min_cosine"] for r in m["rounds"])
        lines.append(f"| {m['model']} | {m['tokens_per_text']:.0f} | {local['docs_per_s']:.1f} | "
                     f"{local['tokens_per_s']:.0f} | {worker['docs_per_s'] if worker else float('nan'):.1f} | "
                     f"{worker['tokens_per_s'] if worker else float('nan'):.0f} | {ratio} | "
                     f"{job['docs_per_s']:.1f} | {same}/{m['texts']} | {cos:.6f} |")
    lines += ["", "Per round (seconds):", "", "| model | round | local | Ray worker | Ray job |", "|---|---:|---:|---:|---:|"]
    for m in report["models"]:
        for i, r in enumerate(m["rounds"], 1):
            worker = f"{r['ray_worker_s']:.2f}" if r["ray_worker_s"] else "?"
            lines.append(f"| {m['model']} | {i} | {r['local_s']:.2f} | {worker} | {r['ray_job_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", action="append", default=None,
                    help="a model (repeatable); default: tiny, plus .cache/bench/0.6b-q8_0.gguf (else q4_k_m) if built")
    ap.add_argument("--texts", type=int, default=256, help="documents per run (default 256)")
    ap.add_argument("--words", type=int, default=25,
                    help="words per document, about (default 25: ~85 tokens with the bundled tokenizer)")
    ap.add_argument("--threads", type=int, default=2, help="llama.cpp threads = the worker's CPUs (default 2)")
    ap.add_argument("--batch-size", type=int, default=64, help="texts per Embedder call and per block (default 64)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating local/Ray rounds; medians reported (default 2)")
    ap.add_argument("--address", default=None,
                    help="Ray cluster to use (e.g. auto); default: a local instance with threads+1 CPUs")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 24 texts, 1 round: checks the harness")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default benchmarks/results)")
    ap.add_argument("--no-write", action="store_true", help="print the JSON summary only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.smoke:
        args.model = args.model or ["tiny"]
        args.texts, args.words, args.batch_size, args.rounds = 24, 12, 8, 1
    if args.model is None:
        args.model = ["tiny"] + [str(p) for p in BENCH_MODELS if p.is_file()][:1]
    out = args.out or (Path(tempfile.mkdtemp(prefix="ray-bench-")) if args.smoke else ROOT / "benchmarks" / "results")

    import ray

    if args.address:
        ray.init(address=args.address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(num_cpus=args.threads + 1, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory(prefix="ray-bench-work-") as work:
            models = [bench_model(m, args, Path(work)) for m in args.model]
    finally:
        ray.shutdown()

    report = {"date": datetime.date.today().isoformat(), "command": " ".join(["python benchmarks/ray_bench.py",
                                                                              *(argv if argv is not None else sys.argv[1:])]),
              "cpus": len(os.sched_getaffinity(0)), "ray": ray.__version__,
              "config": {k: getattr(args, k) for k in ("texts", "words", "threads", "batch_size", "rounds", "address")},
              "models": models}
    print(json.dumps(report, indent=1, default=str))
    if not args.no_write:
        out.mkdir(parents=True, exist_ok=True)
        suffix = "smoke" if args.smoke else "-".join(m["model"] for m in models)
        stem = f"{report['date']}-ray-{suffix}"
        (out / f"{stem}.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
        (out / f"{stem}.md").write_text(markdown(report))
        log.info("wrote %s/%s.json and .md", out, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
