"""Load on loopback: 16 concurrent clients x 100 requests against ``qembed-gguf serve`` (a real
subprocess, started by the CLI), every response checked against the library's vector for its
input; and the same load shared between two models of one server. Throughput (16 clients vs 1)
is measured by benchmarks/serve_bench.py, not asserted here."""

from __future__ import annotations

import os
import signal
import threading

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


@pytest.mark.slow
def test_two_models_8_clients_x_100_requests_each(tmp_path, converted):
    """``serve tiny odd``: 8 clients on each model at once (one server, the threads split between
    the models), every vector checked against its own model's library reference."""
    bench = _bench()
    texts = bench.make_texts(300)
    odd_path = str(converted("odd", "q8_0"))
    references = {}
    with Embedder("tiny") as e, Embedder(odd_path) as odd:
        tiny_path = str(e.path)
        references["a"] = np.concatenate([e.embed(t) for t in texts])  # each input alone
        references["b"] = np.concatenate([odd.embed(t) for t in texts])
    assert (references["a"].shape[1], references["b"].shape[1]) == (256, 96)
    results, failures = {}, []

    def load(model: str, seed: int) -> None:
        try:
            results[model] = bench.run_clients(server.url, model, texts, clients=8, requests=100, per_request=2,
                                               api_key="k3y", seed=seed)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{model}: {e!r}")

    with bench.ServerProcess([tiny_path, odd_path], ["--model-name", "a", "--model-name", "b", "--api-key", "k3y"],
                             env={**os.environ}, cwd=str(tmp_path)) as server:
        threads = [threading.Thread(target=load, args=(m, k)) for k, m in enumerate(("a", "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        health = httpx.get(server.url + "/health").json()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) in (0, -signal.SIGTERM)
        log = server.output()
    assert failures == []
    assert results["a"]["errors"] == [] and results["b"]["errors"] == []
    assert results["a"]["ok"] + results["b"]["ok"] == 1600
    assert results["a"]["ok"] == results["b"]["ok"] == 800
    for model, dim in (("a", 256), ("b", 96)):
        assert all(v.shape == (dim,) for _, vecs, _, _ in results[model]["responses"] for v in vecs)
        check = bench.compare(results[model]["responses"], references[model])
        assert check["vectors"] == 1600
        assert check["min_cosine"] >= 0.9995, (model, check)
    models = {m["model"]: m for m in health["models"]}
    assert health["status"] == "ok" and list(models) == ["a", "b"]
    assert models["a"]["requests"] == models["b"]["requests"] == 800
    assert models["a"]["dim"] == 256 and models["b"]["dim"] == 96
    assert all(m["batches"] < 800 for m in models.values())  # each model's requests shared decode batches
    assert "2 models share" in log  # --cpu-sharing split (the default): the threads shared out
    assert "Application shutdown complete" in log and "Finished server process" in log
