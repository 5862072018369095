#!/usr/bin/env python3
"""Fidelity report: cosine of qembed-gguf's vectors to HF transformers (last token, normalised)
per output type, for a hidden-256 model with the real 151,669-token Qwen3 vocabulary and tokenizer,
the bundled tiny model and a second generated shape, plus batch invariance.

    python benchmarks/fidelity_report.py        # → benchmarks/results/<date>-fidelity.{md,json}

Needs the `test` extra (torch, transformers). The tiny model has random weights: these figures
measure the conversion + runtime pipeline, not a real model's quantization loss.
"""

from __future__ import annotations

import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from conftest import TEXTS  # noqa: E402
from test_embedder import LONG_TEXTS  # noqa: E402

from qembed_gguf import Embedder, convert, registry  # noqa: E402
from qembed_gguf.realvocab import write_qwen3_tokenizer  # noqa: E402
from qembed_gguf.synthetic import SHAPES, write_checkpoint  # noqa: E402

TYPES = ["f32", "f16", "bf16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0"]


def hf_vectors(folder: Path, texts: list[str]) -> np.ndarray:
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for t in texts:
            ids = tok(t, return_tensors="pt", split_special_tokens=True)  # user text stays text, as in the Embedder
            h = model(**ids).last_hidden_state[0, -1].double().numpy()
            out.append(h / np.linalg.norm(h))
    return np.stack(out)


def main() -> None:
    texts = TEXTS + LONG_TEXTS
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = registry.bundled_dir(registry.get_spec("tiny"))
        odd = write_checkpoint(Path(tmp) / "odd", SHAPES["odd"], tokenizer_from=tiny, seed=1, shards=2, prefix="model.")
        real = write_checkpoint(Path(tmp) / "realvocab-small", SHAPES["realvocab-small"], seed=3,
                                tokenizer_from=write_qwen3_tokenizer(Path(tmp) / "qwen3-tokenizer"))
        for name, folder in (("real vocabulary (151,669 tokens; hidden 256, 2 layers)", real),
                             ("tiny (hidden 256, 2 layers)", tiny), ("odd (hidden 96, 3 layers)", odd)):
            ref = hf_vectors(folder, texts)
            for t in TYPES:
                path = convert(folder, outtype=t, outfile=Path(tmp) / f"{folder.name}-{t}.gguf", quiet=True)
                with Embedder(path) as e:
                    got = e.embed(texts)
                    single = np.stack([e.embed([x])[0] for x in texts])
                cos = np.sum(got * ref, axis=1)
                rows.append({"model": name, "type": t, "min_cos_vs_hf": round(float(cos.min()), 6),
                             "mean_cos_vs_hf": round(float(cos.mean()), 6),
                             "min_cos_batched_vs_single": round(float(np.sum(got * single, axis=1).min()), 7),
                             "bits_per_weight": round(e.info.bits_per_weight, 2)})
                print(rows[-1], flush=True)
    date = datetime.date.today().isoformat()
    stem = ROOT / "benchmarks" / "results" / f"{date}-fidelity"
    stem.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = [f"# Fidelity of the Embedder vs HF transformers ({date})", "",
             f"{len(texts)} texts (English, Chinese, Japanese, Korean, Russian, code, emoji, empty, mixed; two of "
             "2,000+ tokens); random-weight models. Command: `python benchmarks/fidelity_report.py`.", "",
             "| model | type | bits/weight | min cos vs HF | mean cos vs HF | min cos batched vs single |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['type']} | {r['bits_per_weight']} | {r['min_cos_vs_hf']:.6f} | "
              f"{r['mean_cos_vs_hf']:.6f} | {r['min_cos_batched_vs_single']:.7f} |" for r in rows]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
