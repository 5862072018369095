#!/usr/bin/env python3
"""Load test of ``qembed-gguf serve`` on loopback: throughput with 1 vs N concurrent clients,
and every response checked against the library's vector for its input.

    python benchmarks/serve_bench.py                          # bundled tiny model, 1 and 16 clients x 100 requests
    python benchmarks/serve_bench.py --model m.gguf --clients 1,4,16 --requests 200 --texts-per-request 4

The server runs in its own process (``python -m qembed_gguf serve``, defaults unless
``--server-arg``); clients are threads with one keep-alive ``http.client`` connection each, sending one
request at a time (closed loop), half with ``encoding_format=float`` and half ``base64``. The
phases run back to back against the same server, after a warm-up. Reference vectors come from an
``Embedder`` on the same file in this process, each input embedded alone.

Exactness: a vector computed in one decode batch with other requests' inputs is not bit-identical
to the one computed alone: llama.cpp's kernels depend on what shares the batch, above all flash
attention's half-precision accumulation (tiny model, measured: max |diff| 3.3e-3, cosine >=
0.9998; without flash attention 7.9e-4, cosine >= 0.99999). So every response is compared with
the library's vector of its input, computed alone, by cosine (``--min-cosine``).

Writes ``<out>/<date>-serve-<model>.json`` and ``.md`` (default out: benchmarks/results).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("serve_bench")

WORDS = ("the quick brown fox jumps over lazy dogs while embedding models read documents about retrieval "
         "how do I find the best way to search for a file in python what is the capital of France "
         "le renard saute par-dessus le chien der schnelle Fuchs springt über den Hund").split()


def make_texts(n: int, seed: int = 0, lo: int = 3, hi: int = 16) -> list[str]:
    """``n`` distinct search-query-sized texts (``lo``..``hi`` words, mostly English)."""
    rng = np.random.default_rng(seed)
    return [f"{i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(lo, hi)))) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m qembed_gguf serve MODEL...`` (one path, or a list of them) on a free loopback
    port, stopped on exit."""

    def __init__(self, model: str | list[str], args: list[str] = (), *, env: dict | None = None, cwd: str | None = None,
                 timeout: float = 120.0):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "qembed_gguf", "serve", *([model] if isinstance(model, str) else model),
             "--port", str(self.port), *args],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=cwd or tempfile.gettempdir())
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not come up in {timeout} s:\n{self.output()}")
            time.sleep(0.1)

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _decode(item, fmt: str) -> np.ndarray:
    if fmt == "base64":
        return np.frombuffer(base64.b64decode(item), dtype="<f4").astype(np.float32)
    return np.asarray(item, dtype=np.float32)


def run_clients(url: str, model: str, texts: list[str], *, clients: int, requests: int, per_request: int = 1,
                api_key: str | None = None, seed: int = 0) -> dict:
    """``clients`` threads x ``requests`` sequential requests; returns timings and every response."""
    # http.client, one keep-alive connection per client: the lightest client the stdlib has, so that on a
    # shared machine the clients take as little CPU from the server as possible
    import http.client
    import urllib.parse

    host = urllib.parse.urlsplit(url)
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    results: list[list] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(c: int) -> None:
        rng = np.random.default_rng(seed * 1000 + c)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)
        barrier.wait()
        for r in range(requests):
            idx = rng.integers(0, len(texts), size=per_request).tolist()
            fmt = "base64" if (c + r) % 2 else "float"
            payload = json.dumps({"model": model, "input": [texts[i] for i in idx], "encoding_format": fmt})
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/embeddings", body=payload.encode(), headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as e:
                errors.append(f"client {c} request {r}: {type(e).__name__}: {e}")
                conn.close()
                continue
            latency = time.perf_counter() - t0
            if resp.status != 200:
                errors.append(f"client {c} request {r}: HTTP {resp.status}: {data[:200]!r}")
                continue
            body = json.loads(data)
            vecs = [_decode(d["embedding"], fmt) for d in sorted(body["data"], key=lambda d: d["index"])]
            results[c].append((idx, vecs, latency, body["usage"]["prompt_tokens"]))
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    done = [x for per in results for x in per]
    latencies = sorted(x[2] for x in done)
    return {
        "clients": clients, "requests": clients * requests, "ok": len(done), "errors": errors,
        "seconds": seconds, "requests_per_s": len(done) / seconds,
        "inputs_per_s": len(done) * per_request / seconds,
        "tokens_per_s": sum(x[3] for x in done) / seconds,
        "latency_p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "latency_p95_ms": 1000 * latencies[int(len(latencies) * 0.95)] if latencies else None,
        "responses": done,
    }


def compare(responses: list, reference: np.ndarray) -> dict:
    """Worst difference between served vectors and the library's (per input, over all responses)."""
    worst_abs, worst_cos, n, exact = 0.0, 1.0, 0, 0
    for idx, vecs, _, _ in responses:
        for i, v in zip(idx, vecs):
            ref = reference[i]
            worst_abs = max(worst_abs, float(np.abs(v - ref).max()))
            worst_cos = min(worst_cos, float(v @ ref / (np.linalg.norm(v) * np.linalg.norm(ref))))
            exact += bool(np.array_equal(v, ref))
            n += 1
    return {"vectors": n, "bit_identical": exact, "max_abs_diff": worst_abs, "min_cosine": worst_cos}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="tiny", help="model for the server and the reference (default: bundled tiny)")
    ap.add_argument("--clients", default="1,16", help="comma-separated client counts (default 1,16)")
    ap.add_argument("--requests", type=int, default=100, help="requests per client (default 100)")
    ap.add_argument("--texts-per-request", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of all phases; medians reported")
    ap.add_argument("--distinct-texts", type=int, default=400)
    ap.add_argument("--server-arg", action="append", default=[], help="extra argument for `serve` (repeatable)")
    ap.add_argument("--api-key", default=None, help="the key, if a --server-arg=--api-key is given")
    ap.add_argument("--min-cosine", type=float, default=0.9995, help="fail below this cosine to the library's vector")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--no-write", action="store_true", help="print the JSON summary only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from qembed_gguf import Embedder

    texts = make_texts(args.distinct_texts)
    counts = [int(c) for c in args.clients.split(",")]
    flash = "--no-flash-attn" not in args.server_arg
    with Embedder(args.model, flash_attn=flash) as e:
        model_path = str(e.path)
        reference = np.concatenate([e.embed(t) for t in texts])  # each input alone
    name = Path(model_path).stem
    phases = []
    with ServerProcess(model_path, ["--model-name", name, *args.server_arg]) as server:
        run_clients(server.url, name, texts, clients=max(counts), requests=5, api_key=args.api_key)  # warm-up
        for n in [c for _ in range(args.rounds) for c in counts]:
            r = run_clients(server.url, name, texts, clients=n, requests=args.requests,
                            per_request=args.texts_per_request, seed=n, api_key=args.api_key)
            r["check"] = compare(r.pop("responses"), reference)
            phases.append(r)
            log.info("%2d clients: %d/%d ok, %.0f req/s, %.0f inputs/s, p50 %.1f ms, p95 %.1f ms; vs library: "
                     "%d/%d bit-identical, max |diff| %.2e, min cos %.6f", n, r["ok"], r["requests"],
                     r["requests_per_s"], r["inputs_per_s"], r["latency_p50_ms"], r["latency_p95_ms"],
                     r["check"]["bit_identical"], r["check"]["vectors"], r["check"]["max_abs_diff"],
                     r["check"]["min_cosine"])
        health = __import__("httpx").get(server.url + "/health").json()
    import statistics

    median = {n: statistics.median(p["requests_per_s"] for p in phases if p["clients"] == n) for n in counts}
    base = median[counts[0]]
    summary = {
        "date": datetime.date.today().isoformat(), "model": name, "server_args": args.server_arg,
        "texts_per_request": args.texts_per_request, "cpus": len(os.sched_getaffinity(0)),
        "rounds": args.rounds, "phases": phases, "median_requests_per_s": median,
        "speedup_vs_first": {n: median[n] / base for n in counts},
        # the same round's phases ran back to back: their ratio is less exposed to the machine's drift
        "paired_speedups": {n: [phases[r * len(counts) + i]["requests_per_s"] / phases[r * len(counts)]["requests_per_s"]
                                for r in range(args.rounds)] for i, n in enumerate(counts)},
        "server_health": health,
        "command": "python benchmarks/serve_bench.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    failed = [f"{p['clients']} clients: {len(p['errors'])} errors ({p['errors'][:3]})" for p in phases if p["errors"]]
    failed += [f"{p['clients']} clients: min cosine {p['check']['min_cosine']:.6f} < {args.min_cosine}"
               for p in phases if p["check"]["min_cosine"] < args.min_cosine]
    summary["failures"] = failed
    print(json.dumps({k: v for k, v in summary.items()}, indent=1, default=str))
    if not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = args.out / f"{summary['date']}-serve-{name.split('-')[0]}"
        stem.with_suffix(".json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
        lines = [f"# serve load test: {name}, {summary['cpus']} CPUs, {args.texts_per_request} text(s)/request",
                 "", f"`{summary['command']}`", "",
                 "Median over rounds: " + ", ".join(f"{n} client(s) {median[n]:.0f} req/s ({median[n] / base:.2f}x)"
                                                    for n in counts),
                 "; ".join(f"{n} clients / {counts[0]} in the same round: "
                           + ", ".join(f"{x:.2f}x" for x in summary["paired_speedups"][n]) for n in counts[1:]), "",
                 "| clients | requests | errors | req/s | inputs/s | p50 ms | p95 ms | x median(1st) | bit-identical | min cos |",
                 "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in phases:
            c = p["check"]
            lines.append(f"| {p['clients']} | {p['requests']} | {len(p['errors'])} | {p['requests_per_s']:.0f} | "
                         f"{p['inputs_per_s']:.0f} | {p['latency_p50_ms']:.1f} | {p['latency_p95_ms']:.1f} | "
                         f"{p['requests_per_s'] / base:.2f} | {c['bit_identical']}/{c['vectors']} | "
                         f"{c['min_cosine']:.6f} |")
        lines += ["", f"server after the run: {health['batches']} batches, {health['decode_calls']} decode calls "
                      f"for {health['requests']} requests"]
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    if failed:
        log.error("FAILED: %s", "; ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
