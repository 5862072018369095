"""Two models in one server (issue 19, item 1): how they should share the CPU.

    python benchmarks/multimodel_bench.py --models Q.gguf D.gguf [--docs 48] [--queries 40] [--out benchmarks/results]

``Q`` is the query model, ``D`` the document model (typically the 0.6B next to a bigger one;
here both are real-vocabulary 0.6B files so the run fits a 2-core machine). Each contender is
``qembed-gguf serve Q D`` in its own process, started one after another in this one run:

- ``split``: ``--cpu-sharing split``, each model on half the threads, decoding at the same time;
- ``time``: ``--cpu-sharing time``, each model on all the threads, decode calls taking turns;
- ``alone``: ``qembed-gguf serve D`` by itself on all the threads (the document model's
  throughput with the machine to itself, the reference for ``both busy``).

Per contender, with real HTTP clients:

- ``idle``: lone one-line queries to Q, one after another: p50/p95 latency;
- ``under load``: one big request to D (``--docs`` documents of ~150 tokens), and while it runs,
  lone queries to Q every 50 ms (each waited for): their p50/p95 latency, and D's wall time;
- ``both busy``: D's big request and, at the same time, a stream of 8-document requests to Q
  (the same ~150-token documents): each model's tokens/s and the sum.

Writes ``<date>-multimodel-<machine>.{json,md}`` into ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from embed_bench import cpu_model, machine_tag  # noqa: E402
from serve_bench import ServerProcess  # noqa: E402

QUERY = "what is a lone query about?"


def _docs(n: int, tag: str) -> list[str]:
    body = ("Retrieval systems split long manuals into passages, embed each passage once and keep the vectors "
            "in an index; a query is embedded at search time and compared with every passage. ")
    return [f"{tag} document {i}: " + body * 3 for i in range(n)]


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def _post(client, model: str, texts: list[str]) -> tuple[float, int]:
    t = time.perf_counter()
    r = client.post("/v1/embeddings", json={"model": model, "input": texts, "encoding_format": "base64"})
    r.raise_for_status()
    return time.perf_counter() - t, r.json()["usage"]["prompt_tokens"]


def _queries(url: str, n: int, *, every_s: float = 0.0, until: threading.Event | None = None) -> list[float]:
    import httpx

    out = []
    with httpx.Client(base_url=url, timeout=600) as c:
        for i in range(n):
            if until is not None and until.is_set():
                break
            out.append(_post(c, "q", [f"{QUERY} #{i}"])[0])
            time.sleep(every_s)
    return out


def _big(url: str, docs: list[str], result: dict, done: threading.Event) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=1800) as c:
        result["seconds"], result["tokens"] = _post(c, "d", docs)
    done.set()


def measure(url: str, n_docs: int, n_queries: int, *, two: bool) -> dict:
    out: dict = {}
    if two:
        idle = _queries(url, n_queries)
        out["idle_p50_ms"], out["idle_p95_ms"] = 1000 * _pct(idle, 0.5), 1000 * _pct(idle, 0.95)
        # under load: D's big request, lone queries to Q meanwhile
        done, big = threading.Event(), {}
        t = threading.Thread(target=_big, args=(url, _docs(n_docs, "load"), big, done))
        t.start()
        time.sleep(0.3)  # the big request is being computed
        loaded = _queries(url, 10_000, every_s=0.05, until=done)
        t.join()
        out["load_queries"] = len(loaded)
        out["load_p50_ms"], out["load_p95_ms"] = 1000 * _pct(loaded, 0.5), 1000 * _pct(loaded, 0.95)
        out["load_big_s"] = big["seconds"]
    # both busy: D's big request and a stream of 8-document requests to Q at the same time
    import httpx

    done, big = threading.Event(), {}
    q_tokens, q_seconds = [0], [0.0]

    def q_stream():
        with httpx.Client(base_url=url, timeout=600) as c:
            start, i = time.perf_counter(), 0
            while not done.is_set():
                q_tokens[0] += _post(c, "q", _docs(8, f"q{i}"))[1]
                i += 1
            q_seconds[0] = time.perf_counter() - start

    t = threading.Thread(target=_big, args=(url, _docs(n_docs, "busy"), big, done))
    t.start()
    s = threading.Thread(target=q_stream) if two else None
    if s:
        s.start()
    t.join()
    if s:
        s.join()
    out["busy_d_tokens_per_s"] = big["tokens"] / big["seconds"]
    if two:
        out["busy_q_tokens_per_s"] = q_tokens[0] / q_seconds[0]
        out["busy_total_tokens_per_s"] = out["busy_d_tokens_per_s"] + out["busy_q_tokens_per_s"]
    return out


def _peak_rss_mb(pid: int) -> float | None:
    """The server process's peak resident memory (Linux: VmHWM), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs=2, required=True, metavar=("QUERY_MODEL", "DOC_MODEL"))
    p.add_argument("--docs", type=int, default=48)
    p.add_argument("--queries", type=int, default=40)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    threads = ["--threads", str(args.threads)] if args.threads else []
    results = {}
    for name, models, extra in (
            ("split", list(args.models), ["--model-name", "q", "--model-name", "d", "--cpu-sharing", "split"]),
            ("time", list(args.models), ["--model-name", "q", "--model-name", "d", "--cpu-sharing", "time"]),
            ("alone", [args.models[1]], ["--model-name", "d"])):
        with ServerProcess(models, [*extra, *threads, "--max-inputs", "4096"], timeout=600) as server:
            results[name] = measure(server.url, args.docs, args.queries, two=name != "alone")
            results[name]["peak_rss_mb"] = _peak_rss_mb(server.proc.pid)
        print(name, json.dumps(results[name]), flush=True)
    date = datetime.date.today().isoformat()
    record = {"date": date, "cpu": cpu_model(), "models": args.models, "docs": args.docs, "results": results}
    text = _markdown(record)
    print(text)
    if args.out:
        stem = args.out / f"{date}-multimodel-{machine_tag()}"
        stem.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
        stem.with_suffix(".md").write_text(text)
    return 0


def _markdown(r: dict) -> str:
    s, t, a = r["results"]["split"], r["results"]["time"], r["results"]["alone"]
    rows = [
        ("Q lone query, idle: p50 / p95 ms", f"{s['idle_p50_ms']:.0f} / {s['idle_p95_ms']:.0f}",
         f"{t['idle_p50_ms']:.0f} / {t['idle_p95_ms']:.0f}"),
        ("Q lone query while D embeds: p50 / p95 ms", f"{s['load_p50_ms']:.0f} / {s['load_p95_ms']:.0f}",
         f"{t['load_p50_ms']:.0f} / {t['load_p95_ms']:.0f}"),
        ("D's big request meanwhile, s", f"{s['load_big_s']:.1f}", f"{t['load_big_s']:.1f}"),
        ("both busy: D tokens/s", f"{s['busy_d_tokens_per_s']:.0f}", f"{t['busy_d_tokens_per_s']:.0f}"),
        ("both busy: Q tokens/s", f"{s['busy_q_tokens_per_s']:.0f}", f"{t['busy_q_tokens_per_s']:.0f}"),
        ("both busy: total tokens/s", f"{s['busy_total_tokens_per_s']:.0f}", f"{t['busy_total_tokens_per_s']:.0f}"),
    ]
    lines = [f"# Two models in one server: CPU split vs time-shared ({r['date']})", "",
             f"CPU: {r['cpu']}. Query model Q: `{Path(r['models'][0]).name}`; document model D: "
             f"`{Path(r['models'][1]).name}`; D's big request: {r['docs']} documents of ~150 tokens. Each contender "
             f"a `qembed-gguf serve` process of its own, one after another in one run "
             f"(`benchmarks/multimodel_bench.py`).", "",
             "| | split | time |", "|---|---|---|"]
    lines += [f"| {a_} | {b} | {c} |" for a_, b, c in rows]
    rss = [x.get("peak_rss_mb") for x in (s, t, a)]
    if all(rss):
        lines.append(f"| server peak RSS, MB | {rss[0]:.0f} | {rss[1]:.0f} |")
    lines += ["", f"D alone on the machine (one-model server, all threads): {a['busy_d_tokens_per_s']:.0f} tokens/s"
              + (f", peak RSS {rss[2]:.0f} MB" if rss[2] else "") + ". "
              f"Ratios: split/time total throughput {s['busy_total_tokens_per_s'] / t['busy_total_tokens_per_s']:.2f}x; "
              f"loaded-query p95 time/split {t['load_p95_ms'] / s['load_p95_ms']:.2f}x.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
