"""The long-document benchmark's smoke mode: the harness runs end to end (every contender in its own
process, the report) on the bundled tiny model, so it cannot rot between real runs; and its
document is what it says."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from conftest import ROOT, load_script

BENCH = ROOT / "benchmarks" / "long_doc_bench.py"


def _load_bench():
    return load_script(BENCH, "long_doc_bench")


def test_document_has_the_requested_tokens_and_paragraphs(tiny_dir):
    bench = _load_bench()
    count = bench.TokenCounter(tiny_dir)
    doc = bench.make_document(count, 2000)
    assert doc == bench.make_document(count, 2000)  # deterministic
    assert 1980 <= count(doc) <= 2000  # the most that fits, cut after a word
    assert doc.count("\n\n") >= 3 and doc.count(". ") >= 10 and doc == doc.strip()
    assert bench.make_document(count, 2000, seed=1) != doc


def test_smoke_run_writes_a_complete_report(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    proc = subprocess.run([sys.executable, str(BENCH), "--smoke", "--out", str(out), "--work", str(work)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [report_json] = out.glob("*-long-doc-*-smoke.json")
    report = json.loads(report_json.read_text())
    assert report["machine"]["tag"] in report_json.name and report["threads"] == 2
    n = report["document"]["tokens"]
    assert 2950 <= n <= 3000
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["truncate", "long_inputs=chunk, overlap 0", "embed_chunks 64", "embed_chunks 256"]
    assert all(r["seconds"] > 0 and r["peak_rss_mb"] > 0 and r["finite"] and not r["errors"] for r in rows.values())
    # truncate: max_tokens (512) of it; chunk: every content token once, one pooling token per window
    assert rows["truncate"]["tokens_decoded"] == 512 and rows["truncate"]["vectors"] == 1
    assert rows["truncate"]["coverage"] == 511 / (n - 1)
    windows = math.ceil((n - 1) / 511)
    assert rows["long_inputs=chunk, overlap 0"]["tokens_decoded"] == n - 1 + windows
    assert rows["long_inputs=chunk, overlap 0"]["sequences"] == windows
    for size in (64, 256):
        r = rows[f"embed_chunks {size}"]
        assert r["covered"] and r["longest_chunk_tokens"] <= size and r["vectors"] >= math.ceil((n - 1) / (size - 1))
        assert r["tokens_decoded"] == n - 1 + r["vectors"]  # overlap 0: each token once, plus the pooling tokens
    assert rows["truncate"]["time_vs_truncate"] == 1.0
    md = report_json.with_suffix(".md").read_text()
    assert "`python benchmarks/long_doc_bench.py --smoke`" in md and sum(line.startswith("|") for line in md.splitlines()) == 2 + len(rows)
