"""The throughput benchmark's smoke mode: the harness runs end to end (every contender, every
workload, the report and the plot) on the bundled tiny model, so it cannot rot between real runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "embed_bench.py"


def _load_bench():
    return load_script(BENCH, "embed_bench")


def test_workload_texts_have_the_requested_token_counts(tiny_dir):
    bench = _load_bench()
    count = bench.TokenCounter(tiny_dir)
    texts = bench.make_texts(count, 40, 8, 512, seed=1)
    assert texts == bench.make_texts(count, 40, 8, 512, seed=1)  # deterministic
    lengths = [count(t) for t in texts]
    assert max(lengths) <= 512 and min(lengths) >= 4
    assert max(lengths) > 200 and min(lengths) < 40  # log-uniform over the range, not clustered
    long = bench.make_text(count, __import__("numpy").random.default_rng(0), 3000)
    assert 2950 <= count(long) <= 3000


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report(tmp_path, converted):
    out, work = tmp_path / "out", tmp_path / "work"
    # the session's conversions of the bundled model stand in for the bench's own (it converts only what is
    # missing: Q4_0 here, so its conversion step still runs); the converter is tested on its own elsewhere
    work.mkdir()
    for outtype in ("bf16", "q8_0", "q4_k_m"):
        (work / f"tiny-{outtype}.gguf").symlink_to(converted("tiny", outtype))
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out), "--work", str(work)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [report_json] = out.glob("*-smoke.json")
    report = json.loads(report_json.read_text())
    assert set(report["workloads"]) == {"W1", "types", "load", "W2", "W3", "W4", "scaling"}
    for key in ("W1", "types", "W2", "W4"):
        rows = report["workloads"][key]["rows"]
        assert rows and all(r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0 and not r["errors"] for r in rows), key
    kinds = {r["kind"] for r in report["workloads"]["W1"]["rows"]}
    assert kinds == {"qembed", "llama-cpp-python", "sentence-transformers", "onnx"}
    # the eval callback ran in every Embedder measurement, and never let the lm_head run
    calls = [r["callback"] for r in report["workloads"]["W1"]["rows"][0]["runs"]]
    assert calls and all(c["nodes_asked"] > 0 and c["head_asked"] == 0 for c in calls)
    assert {r["repack"] for r in report["workloads"]["types"]["rows"]} == {False, True}
    assert all(r["embedder_load_s"] > 0 and r["info_s"] > 0 for r in report["workloads"]["load"]["rows"])
    assert all(r["embedder_p50_ms"] > 0 and r["decode_p50_ms"] > 0 for r in report["workloads"]["W3"]["rows"])
    assert len(report["workloads"]["scaling"]["seconds"]) == len(report["workloads"]["scaling"]["lengths"])
    assert report["int8_gemm"]["ops_per_s"] > 0
    assert {t["target"].split(":")[0] for t in report["targets"]} >= {"W1", "W4"}
    md = report_json.with_suffix(".md").read_text()
    assert "## Targets" in md and "## W1 corpus" in md and "![seconds per token" in md and "## Weight types" in md
    assert report_json.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
