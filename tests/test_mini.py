"""The bundled trained model ``mini``: its quality on held-out data, its parity with HF, the demo.

The held-out sets (``tests/data/mini_heldout.json``, written by ``tools/train_mini.py`` from the
split of ``tools/mini_corpus.py``) were never trained on. The thresholds sit below what the shipped
model measures (``benchmarks/mini_quality.py``; figures in the comments) so that a model that loses
its quality, a converter or Embedder change that breaks a trained model's vectors, or a broken query
format fails here, while the noise of a retrained model does not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from qembed_gguf import Embedder, convert, registry
from qembed_gguf.cli import main
from qembed_gguf.cli.files import DEMO_ANSWERS, DEMO_DOCUMENTS

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
METRICS = load_script(ROOT / "benchmarks" / "mini_quality.py", "mini_quality")
# what the shipped mini measures at Q8_0 (benchmarks/results/*-mini-quality-*): recall@1 0.023 pooled over
# the 1,353 held-out queries (31 hits; binomial standard error 0.004; chance 0.0003-0.003), recall@10
# 0.090 / 0.085 / 0.157 per set; the floors are about 2.5 standard errors below
RECALL_AT_1 = 0.013
RECALL_AT_10 = {"wordnet-term": 0.055, "wordnet-example": 0.05, "foldoc-term": 0.08}


@pytest.fixture(scope="module")
def mini_dir() -> Path:
    return registry.bundled_dir(registry.get_spec("mini"))


@pytest.fixture(scope="module")
def sets() -> dict:
    return json.loads((ROOT / "tests" / "data" / "mini_heldout.json").read_text("utf-8"))["sets"]


@pytest.fixture(scope="module")
def mini_q8(mini_dir, tmp_path_factory) -> Path:
    return convert(mini_dir, outtype="q8_0", outfile=tmp_path_factory.mktemp("mini") / "mini-q8_0.gguf", quiet=True)


@pytest.fixture(scope="module")
def vectors(mini_q8, sets) -> dict:
    return METRICS.embed_sets(str(mini_q8), sets)


def test_the_bundled_model_is_small_and_registered(mini_dir):
    spec = registry.get_spec("mini")
    assert spec.semantic and spec.bundled == mini_dir.name and spec.kind == "embedding"
    assert sum(p.stat().st_size for p in mini_dir.rglob("*") if p.is_file()) <= 20_000_000
    config = json.loads((mini_dir / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        spec.dim, spec.shape.layers, spec.shape.vocab)


def test_held_out_recall_at_q8_0(vectors, sets):
    ranks = {name: METRICS.ranks_of_answers(vectors[f"{name}/q"], vectors[f"{name}/p"], np.array(s["answers"]))
             for name, s in sets.items()}
    pooled = METRICS.retrieval_metrics(np.concatenate(list(ranks.values())))
    assert pooled["recall@1"] >= RECALL_AT_1, pooled
    for name, floor in RECALL_AT_10.items():
        got = METRICS.retrieval_metrics(ranks[name])
        assert got["recall@10"] >= floor, (name, got)


def test_matryoshka_truncation_keeps_most_of_the_quality(mini_q8, vectors, sets):
    s, answers = sets["wordnet-term"], np.array(sets["wordnet-term"]["answers"])
    q, p = vectors["wordnet-term/q"], vectors["wordnet-term/p"]

    def cut(v: np.ndarray, dim: int) -> np.ndarray:  # Matryoshka: the first dim components, renormalised
        return v[:, :dim] / np.linalg.norm(v[:, :dim], axis=1, keepdims=True)

    def at(dim: int) -> dict:
        return METRICS.retrieval_metrics(METRICS.ranks_of_answers(cut(q, dim), cut(p, dim), answers))

    # the Embedder's own dim= path is that cut of its full vectors (a sample, embedded in the same batches)
    with Embedder(str(mini_q8)) as e:
        sample_q, sample_p = e.embed_query(s["queries"][:40]), e.embed_documents(s["passages"][:40])
        for dim in (128, 32):
            np.testing.assert_allclose(e.embed_query(s["queries"][:40], dim=dim), cut(sample_q, dim), atol=1e-6)
            np.testing.assert_allclose(e.embed_documents(s["passages"][:40], dim=dim), cut(sample_p, dim), atol=1e-6)
    full, small, tiny = at(q.shape[1]), at(128), at(32)
    assert full["ndcg@10"] >= 0.04 and small["ndcg@10"] >= 0.85 * full["ndcg@10"], (small, full)  # 0.056, 0.057
    assert tiny["ndcg@10"] >= 0.7 * full["ndcg@10"], (tiny, full)


def test_a_query_in_the_instruction_format_lands_near_its_bare_text(mini_q8, sets):
    queries = sets["wordnet-term"]["queries"][:200]
    with Embedder(str(mini_q8)) as e:
        as_query, bare = e.embed_query(queries), e.embed_documents(queries)
        others = e.embed_documents(sets["wordnet-term"]["passages"][:200])
    same = np.sum(as_query * bare, axis=1)
    assert np.median(same) > 0.8, np.median(same)
    assert np.median(same) > np.median(as_query @ others.T) + 0.3


@pytest.mark.slow
def test_gguf_vectors_equal_sentence_transformers_on_the_trained_model(mini_dir, tmp_path, sets):
    """Parity on trained weights (the HF-parity tests elsewhere use random ones): F32 GGUF vs HF."""
    st = pytest.importorskip("sentence_transformers")
    texts = sets["foldoc-term"]["passages"][:24] + sets["wordnet-example"]["queries"][:24]
    import torch

    model = st.SentenceTransformer(str(mini_dir), device="cpu", model_kwargs={"dtype": torch.float32})
    ref = model.encode(texts, normalize_embeddings=True)
    path = convert(mini_dir, outtype="f32", outfile=tmp_path / "mini-f32.gguf", quiet=True)
    with Embedder(str(path)) as e:
        got = e.embed_documents(texts)
    cos = np.sum(got * ref, axis=1)
    assert cos.min() > 0.9999, cos.min()


def test_demo_ranks_each_querys_document_first():
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    assert "RANDOM" not in result.output and "full dim 512" in result.output and "tokens/s" in result.output
    rows = [line.split() for line in result.output.splitlines() if re.match(r"\s+q\d+\s", line)]
    assert [r[0] for r in rows] == [f"q{i}" for i in range(len(DEMO_ANSWERS))]
    for i, row in enumerate(rows):
        n = len(DEMO_DOCUMENTS)
        scores = [float(x) for x in row[1:1 + n]]
        assert row[1 + n] == f"doc{DEMO_ANSWERS[i]}" and int(np.argmax(scores)) == DEMO_ANSWERS[i], result.output
