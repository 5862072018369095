"""Load on loopback: 16 concurrent clients x 100 requests against ``qembed-gguf serve`` (a real
subprocess, started by the CLI), every response checked against the library's vector for its
input. Throughput (16 clients vs 1) is measured by benchmarks/serve_bench.py, not asserted here."""

from __future__ import annotations

import os
import signal

import httpx
import numpy as np
import pytest

from conftest import ROOT, load_script
from qembed_gguf import Embedder


def _bench():
    return load_script(ROOT / "benchmarks" / "serve_bench.py", "serve_bench")


@pytest.mark.slow
def test_16_clients_x_100_requests(tmp_path):
    bench = _bench()
    texts = bench.make_texts(300)
    with Embedder("tiny") as e:
        path = str(e.path)
        reference = np.concatenate([e.embed(t) for t in texts])  # each input alone
    env = {**os.environ}
    with bench.ServerProcess(path, ["--model-name", "load", "--api-key", "k3y"], env=env, cwd=str(tmp_path)) as server:
        result = bench.run_clients(server.url, "load", texts, clients=16, requests=100, per_request=2, api_key="k3y")
        health = httpx.get(server.url + "/health").json()
        server.proc.send_signal(signal.SIGTERM)
        # graceful: uvicorn finishes in-flight requests, runs the shutdown (batcher drained, model
        # freed), then re-raises the signal so the exit status says what stopped it
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        log = server.output()
    assert result["errors"] == []
    assert result["ok"] == 1600
    check = bench.compare(result["responses"], reference)
    assert check["vectors"] == 3200
    assert check["min_cosine"] >= 0.9995, check  # batch-dependent kernels; see serve_bench's docstring
    assert health["requests"] == 1600 and health["batches"] < 1600 / 2  # requests shared decode batches
    assert "Application shutdown complete" in log and "Finished server process" in log
