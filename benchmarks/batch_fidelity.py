#!/usr/bin/env python3
"""Batched vs alone, and flash attention on vs off, on the real-vocabulary 0.6B shapes (Q4_K_M).

    python benchmarks/batch_fidelity.py            # needs the files embed_bench.py made in .cache/bench

Flash attention's CPU kernel accumulates in half precision, so a vector depends slightly on what
shares its decode batch. This measures how much, on W1-like texts (8-512 tokens, the real
tokenizer): the min cosine and max |difference| between each text embedded in a batch and alone,
with flash attention on (the default) and off, and the speed of both. Writes
``benchmarks/results/<date>-batch-fidelity-<machine>.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import embed_bench as eb  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=ROOT / ".cache" / "bench")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--texts", type=int, default=32)
    p.add_argument("--threads", type=int, default=eb.n_cores())
    args = p.parse_args()
    from qembed_gguf import Embedder

    model = args.work / "0.6b-rv-q4_k_m.gguf"
    count = eb.TokenCounter(args.work / "qwen3-tokenizer")
    texts = eb.make_texts(count, args.texts, 8, 512, seed=1)
    n = sum(count(t) for t in texts)
    rep: dict = {"date": datetime.date.today().isoformat(), "machine": eb.machine_tag(), "model": model.name,
                 "texts": len(texts), "tokens": n, "threads": args.threads}
    batched_on = None
    for fa in (True, False):
        with Embedder(model, n_threads=args.threads, flash_attn=fa) as e:
            e.embed(texts[:2])
            t = time.perf_counter()
            batched = e.embed(texts)
            sec = time.perf_counter() - t
            alone = np.concatenate([e.embed([x]) for x in texts])
        rep[f"flash_attn={fa}"] = {"tokens_per_s": n / sec,
                                   "min_cos_batched_vs_alone": float(np.sum(batched * alone, axis=1).min()),
                                   "max_abs_diff": float(np.abs(batched - alone).max())}
        if fa:
            batched_on = batched
        else:
            rep["min_cos_flash_on_vs_off"] = float(np.sum(batched_on * batched, axis=1).min())
    stem = args.out / f"{rep['date']}-batch-fidelity-{rep['machine']}"
    stem.with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")
    on, off = rep["flash_attn=True"], rep["flash_attn=False"]
    stem.with_suffix(".md").write_text("\n".join([
        f"# Batched vs alone — {rep['date']}, {rep['machine']}, {args.threads} threads", "",
        f"{rep['model']} (random weights, real 0.6B shapes and 151,669-token vocabulary), {len(texts)} W1 texts, "
        f"{n} tokens. Reproduce: `python benchmarks/batch_fidelity.py`.", "",
        "| flash attention | tokens/s (batched) | min cosine batched vs alone | max abs diff |", "|---|---|---|---|",
        f"| on (default) | {on['tokens_per_s']:.0f} | {on['min_cos_batched_vs_alone']:.5f} | {on['max_abs_diff']:.1e} |",
        f"| off | {off['tokens_per_s']:.0f} | {off['min_cos_batched_vs_alone']:.5f} | {off['max_abs_diff']:.1e} |", "",
        f"Flash attention on vs off, batched: min cosine {rep['min_cos_flash_on_vs_off']:.5f}.", ""]))
    print(stem.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
