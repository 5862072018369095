"""Ray: embed_dataset gives the local Embedder's vectors (ids kept, several workers), a worker
killed mid-job loses and duplicates no row, the CLI's --ray job end to end (a cluster address, and
the local instance), and arguments, inputs and outputs checked with typed errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason='the Ray integration needs qembed-gguf[ray] (CI installs it)')
pytest.importorskip("ray.data", reason='the Ray integration needs Ray Data: qembed-gguf[ray]')
pa = pytest.importorskip("pyarrow")

import pyarrow.parquet as pq  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from conftest import every_cpu  # noqa: E402

from qembed_gguf import Embedder  # noqa: E402
from qembed_gguf.cli import main  # noqa: E402
from qembed_gguf.errors import InputError, InputTooLongError, ModelLoadError, OutputExistsError  # noqa: E402
from qembed_gguf.integrations.ray import (  # noqa: E402
    embed_dataset,
    read_corpus,
    read_embeddings,
    write_embeddings,
)

TASK = "Given a question, retrieve passages that answer it"


def _texts(n: int) -> list[str]:
    words = ["graph", "llama", "vector", "Paris", "東京", "Москва", "def f(x): return x", "🚀", "search", "gguf"]
    return [f"doc {i}: " + " ".join(words[(i * k) % len(words)] for k in range(1 + i % 13)) for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _on_every_cpu():
    """Ray's processes mostly wait on each other: under pytest-xdist this module, and every process it
    starts (the cluster, its workers, the CLI drivers), runs on every CPU of the run, not one worker's
    share. Each embedding worker here runs one llama.cpp thread."""
    with every_cpu():
        yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One local Ray instance for the module: 4 logical CPUs (2 workers + room for Ray Data's
    write tasks) on this 2-core machine; the workers inherit QEMBED_CACHE (the test cache).

    Ray puts the driver's working directory on its workers' sys.path: started from a checkout
    (as CI runs), the workers would import the source tree (which works, see
    qembed_gguf/_checkout.py) rather than the installed package under test. So the instance starts
    from an empty folder."""
    if ray.is_initialized():
        ray.shutdown()
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray-driver"))
    try:
        ray.init(num_cpus=4, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    finally:
        os.chdir(here)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def gguf(converted) -> Path:
    return converted("tiny", "q8_0")


@pytest.fixture(scope="module")
def local(gguf):
    """The independent reference: the same model in this process, one thread like each worker."""
    with Embedder(gguf, n_threads=1) as e:
        yield e


def _blocks(table: "pa.Table", rows: int) -> list["pa.Table"]:
    return [table.slice(i, rows) for i in range(0, table.num_rows, rows)]


def _per_block(embed, texts: list[str], rows: int) -> np.ndarray:
    """What a worker computes: each batch (= one block of ``rows``) is one Embedder call."""
    return np.concatenate([embed(texts[i:i + rows]) for i in range(0, len(texts), rows)])


def _all_minimum_workers_before_work(ds) -> None:
    """Both workers of a pool take batches only once both are loaded, so that each gets work."""
    ds.context.wait_for_min_actors_s = 120


def _column(table: "pa.Table", name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    return np.asarray(col.flatten().to_numpy(), dtype=np.float32).reshape(len(col), col.type.list_size)


# -- the vectors ---------------------------------------------------------------------------------
def test_embed_dataset_equals_local_embedder(cluster, gguf, local, tmp_path):
    """Two pools chained in one job: documents at full dim, then queries with a task at dim 64.
    Every row's vectors are bit-identical to the local Embedder's on the same batch, ids and other
    columns are kept, and each pool spread the batches over both of its workers."""
    n, rows = 120, 6
    texts = _texts(n)
    ids = [f"doc-{i:03d}" for i in range(n)]
    table = pa.table({"id": ids, "text": texts, "lang": ["x"] * n})
    ds = ray.data.from_arrow(_blocks(table, rows))
    docs = embed_dataset(ds, gguf, concurrency=2, num_cpus_per_worker=0.5, n_threads=1, batch_size=rows,
                         worker_column="doc_worker")
    both = embed_dataset(docs, str(gguf), output_column="query", worker_column="query_worker", task=TASK, dim=64,
                         concurrency=2, num_cpus_per_worker=0.5, n_threads=1, batch_size=rows)
    _all_minimum_workers_before_work(both)
    result = write_embeddings(both, tmp_path / "out")
    assert (result.rows, result.folder) == (n, str(tmp_path / "out"))

    got = pq.read_table(tmp_path / "out")
    assert sorted(got.column_names) == ["doc_worker", "embedding", "id", "lang", "query", "query_worker", "text"]
    got = got.take(pa.compute.sort_indices(got, sort_keys=[("id", "ascending")]))
    assert got.column("id").to_pylist() == ids  # every id exactly once
    assert got.column("text").to_pylist() == texts and set(got.column("lang").to_pylist()) == {"x"}
    assert got.schema.field("embedding").type == pa.list_(pa.float32(), local.dim)
    assert got.schema.field("query").type == pa.list_(pa.float32(), 64)

    np.testing.assert_array_equal(_column(got, "embedding"), _per_block(local.embed_documents, texts, rows))
    np.testing.assert_array_equal(_column(got, "query"),
                                  _per_block(lambda t: local.embed_query(t, task=TASK, dim=64), texts, rows))
    for worker in ("doc_worker", "query_worker"):
        pids = {w.rsplit(":", 1)[1] for w in got.column(worker).to_pylist()}
        assert len(pids) >= 2, f"{worker}: one worker did all the batches: {pids}"
        assert str(os.getpid()) not in pids

    back = read_embeddings(tmp_path / "out")  # sorted by id, the only key here
    assert back.order == "id" and back.ids.tolist() == ids
    np.testing.assert_array_equal(back.vectors, _column(got, "embedding"))


def _embedding_workers() -> dict[int, bytes]:
    """pid → process title of this machine's embedding workers (Ray names them after the class)."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                title = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if b"MapBatches(EmbedBatches))" in title:
                found[int(entry.name)] = title
    return found


def _busy_worker(thread: threading.Thread, timeout: float) -> tuple[int, set[int]]:
    """The pid of an embedding worker while it runs a batch (its title ends with .submit), and
    the pids of all embedding workers at that moment."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and thread.is_alive():
        workers = _embedding_workers()
        busy = [pid for pid, title in workers.items() if b").submit" in title]
        if busy:
            return busy[0], set(workers)
        time.sleep(0.002)
    pytest.fail("no embedding worker was seen running a batch")


def test_worker_killed_mid_job_loses_and_duplicates_no_row(cluster, gguf, local, tmp_path):
    """kill -9 of a worker while it embeds a batch: Ray restarts it and reruns its batches; the
    Parquet output read back holds every input row once, with the local Embedder's vectors. The
    input is Parquet with ids, read by the cluster."""
    n = 320
    texts = _texts(n)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for k in range(4):
        part = slice(k * n // 4, (k + 1) * n // 4)
        pq.write_table(pa.table({"id": list(range(n))[part], "text": texts[part]}), corpus / f"part-{k}.parquet",
                       row_group_size=30)
    ds, count = read_corpus(str(corpus))
    assert count == n
    out = embed_dataset(ds, gguf, concurrency=2, num_cpus_per_worker=1, n_threads=1, batch_size=8,
                        worker_column="worker", max_task_retries=3)
    _all_minimum_workers_before_work(out)
    outcome: dict = {}

    def write() -> None:
        try:
            outcome["result"] = write_embeddings(out, tmp_path / "vectors")
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread below
            outcome["error"] = exc

    thread = threading.Thread(target=write)
    thread.start()
    victim, before = _busy_worker(thread, timeout=180)
    os.kill(victim, signal.SIGKILL)
    thread.join(300)
    assert not thread.is_alive(), "the job did not finish after a worker was killed"
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].rows == n

    back = read_embeddings(tmp_path / "vectors")  # raises on a repeated id
    assert back.order == "id" and back.ids.tolist() == list(range(n))
    reference = local.embed_documents(texts)  # batches differ from the workers': equal to rounding
    np.testing.assert_allclose(back.vectors, reference, rtol=0, atol=5e-3)
    assert np.min(np.sum(back.vectors * reference, axis=1)) > 0.9995
    # the batch the victim was running was retried by its restarted process (a new pid; Ray retries an
    # actor's task on the same actor), and batches it finished before dying were kept, not redone
    pids = {int(w.rsplit(":", 1)[1]) for w in
            pq.read_table(tmp_path / "vectors", columns=["worker"]).column("worker").to_pylist()}
    assert pids - before, f"no row was embedded by a restarted worker: {pids} (before the kill: {before})"
    assert not Path(f"/proc/{victim}/cmdline").exists() or not Path(f"/proc/{victim}/cmdline").read_bytes()


# -- the CLI ---------------------------------------------------------------------------------------
def test_cli_ray_address_jsonl_end_to_end(cluster, tmp_path):
    """`qembed-gguf embed tiny corpus.jsonl -o vectors --ray ADDRESS` in another process, connected
    to this module's cluster: the registry name is resolved by each worker, the relative output
    folder is the caller's, ids and input order come back."""
    n, rows = 40, 5
    texts = _texts(n)
    ids = [f"j{i}" for i in range(n)]
    src = tmp_path / "corpus.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in zip(ids, texts)),
                   encoding="utf-8")
    with Embedder("tiny", n_threads=1) as e:  # fills the test cache the workers resolve "tiny" from
        reference = _per_block(lambda t: e.embed(t, dim=128), texts, rows)
    proc = subprocess.run([sys.executable, "-m", "qembed_gguf", "embed", "tiny", "corpus.jsonl", "-o", "vectors",
                           "--dim", "128", "--concurrency", "2", "--threads", "1", "--batch-size", str(rows),
                           "--ray", cluster], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{n} texts → {tmp_path / 'vectors'}" in proc.stderr and "docs/s" in proc.stderr

    shards = pq.read_table(tmp_path / "vectors")
    assert sorted(shards.column_names) == ["embedding", "id", "row"]  # the text is not copied
    back = read_embeddings(tmp_path / "vectors")
    assert back.order == "row" and back.ids.tolist() == ids
    np.testing.assert_array_equal(back.vectors, reference)


def test_cli_ray_local_instance_parquet_queries(cluster, gguf, local, tmp_path):
    """`--ray` without a value (this process's Ray session), Parquet input without ids (numbered by
    the driver in file order), embedded as queries with a task at a Matryoshka dim."""
    n, rows = 30, 4
    texts = _texts(n)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    pq.write_table(pa.table({"body": texts[:17]}), corpus / "a.parquet")
    pq.write_table(pa.table({"body": texts[17:]}), corpus / "b.parquet")
    out = tmp_path / "q"
    result = CliRunner().invoke(main, ["embed", str(gguf), str(corpus), "-o", str(out), "--field", "body", "--query",
                                       "--task", TASK, "--dim", "48", "--threads", "1", "--batch-size", str(rows),
                                       "--concurrency", "2", "-q", "--ray"])
    assert result.exit_code == 0, result.output
    back = read_embeddings(out)
    assert back.order == "row" and back.ids.tolist() == list(range(n))
    # the driver cuts 4-row blocks across the files (one spans a.parquet and b.parquet)
    np.testing.assert_array_equal(back.vectors, _per_block(lambda t: local.embed_query(t, task=TASK, dim=48),
                                                           texts, rows))

    again = CliRunner().invoke(main, ["embed", str(gguf), str(corpus), "-o", str(out), "--field", "body", "-q",
                                      "--ray"])
    assert again.exit_code == 1 and "OutputExistsError" in again.output and "--force" in again.output


def test_cli_unreachable_cluster_fails_fast(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "in.txt").write_text("a\n")
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "qembed_gguf", "embed", "tiny", "in.txt", "-o", "out", "-q",
                           "--ray", f"127.0.0.1:{port}"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and f"BackendError: cannot reach the Ray cluster at 127.0.0.1:{port}" in proc.stderr
    assert time.monotonic() - started < 60 and not (tmp_path / "out").exists()


def test_cli_usage_errors(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    runner = CliRunner()
    cases = [
        (["--ray", "-o", str(tmp_path / "x.npy")], "not a .npy file"),
        (["--ray", "-o", str(tmp_path / "x"), "--precision", "int8"], "apply to the local job"),
        (["--ray", "-o", str(tmp_path / "x"), "--chunk-size", "10"], "apply to the local job"),
        (["-o", str(tmp_path / "x.npy"), "--concurrency", "2"], "--concurrency applies to --ray"),
        (["-o", str(tmp_path / "x.npy"), "--format", "parquet"], "--format parquet applies to --ray"),
    ]
    for args, message in cases:
        result = runner.invoke(main, ["embed", "tiny", str(src), *args])
        assert result.exit_code == 2 and message in result.output, (args, result.output)


def test_benchmark_smoke(cluster, tmp_path):
    """benchmarks/ray_bench.py --smoke on this module's cluster: the harness runs end to end, and
    the worker's vectors are the local Embedder's, bit for bit (same batches)."""
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "ray_bench.py"
    proc = subprocess.run([sys.executable, str(bench), "--smoke", "--threads", "1", "--address", cluster,
                           "--out", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [report] = [json.loads(p.read_text()) for p in tmp_path.glob("*-ray-smoke.json")]
    [model] = report["models"]
    assert model["tokens"] > model["texts"] > 0
    for side in ("local", "ray_worker", "ray_job"):
        assert model[side]["docs_per_s"] > 0 and model[side]["tokens_per_s"] > 0, side
    assert all(r["bit_identical_rows"] == model["texts"] for r in model["rounds"])
    assert "| tiny |" in next(tmp_path.glob("*-ray-smoke.md")).read_text()


# -- errors ----------------------------------------------------------------------------------------
def test_argument_errors_are_typed_and_early(cluster, gguf, local):
    ds = ray.data.from_items([{"id": 1, "text": "a", "n": 3}])
    with pytest.raises(InputError, match=r"no column 'body' \(its columns: id, text, n\)"):
        embed_dataset(ds, gguf, column="body")
    with pytest.raises(InputError, match=r"column 'n' holds int64, not strings"):
        embed_dataset(ds, gguf, column="n")
    with pytest.raises(InputError, match="already has a column 'n'"):
        embed_dataset(ds, gguf, output_column="n")
    with pytest.raises(InputError, match=r"dim must be an integer in \[32, 256\]"):
        embed_dataset(ds, gguf, dim=512)
    with pytest.raises(InputError, match=r"dim must be an integer in \[32, 256\]"):
        embed_dataset(ds, "tiny", dim=8)  # the registry knows the range without a conversion
    with pytest.raises(InputError, match="not an open Embedder"):
        embed_dataset(ds, local)
    with pytest.raises(InputError, match="must be a ray.data.Dataset"):
        embed_dataset([{"text": "a"}], gguf)
    with pytest.raises(InputError, match=r"unknown Embedder option\(s\) in embedder_kwargs: n_treads"):
        embed_dataset(ds, gguf, embedder_kwargs={"n_treads": 2})
    with pytest.raises(InputError, match="must not set 'n_threads'"):
        embed_dataset(ds, gguf, embedder_kwargs={"n_threads": 2})
    for bad in ({"concurrency": 0}, {"concurrency": (3, 2)}, {"concurrency": (1, 2, 3)}, {"batch_size": 0},
                {"num_cpus_per_worker": 0}, {"num_gpus_per_worker": -1}, {"max_task_retries": -2},
                {"task": 3}, {"n_threads": 0}):
        with pytest.raises(InputError):
            embed_dataset(ds, gguf, **bad)
    with pytest.raises(ModelLoadError):
        embed_dataset(ds, Path(__file__))  # a file, but no GGUF: refused before any worker starts


def test_a_null_text_fails_the_job_naming_the_row(cluster, gguf, tmp_path):
    table = pa.table({"id": [10, 11, 12, 13], "text": ["a", "b", None, "d"]})
    out = embed_dataset(ray.data.from_arrow(table), gguf, concurrency=1, batch_size=4)
    with pytest.raises(InputError, match=r"the row with id=12 has no text: column 'text' is null .*Ray worker"):
        write_embeddings(out, tmp_path / "out")


def test_a_worker_error_arrives_as_itself_with_its_attributes(cluster, gguf, tmp_path):
    """Errors pickle, and Ray Data raises them unwrapped: the driver gets the worker's exception
    object (InputTooLongError with .index and .n_tokens), not a copy rebuilt from its text."""
    texts = ["short", "a much longer text " * 20, "short too"]
    out = embed_dataset(ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(texts)]), gguf,
                        concurrency=1, embedder_kwargs={"max_tokens": 8, "truncate": False})
    with pytest.raises(InputTooLongError, match=r"input 1 has \d+ tokens, more than max_tokens=8 .*\(raised in a Ray "
                                                r"worker\)$") as info:
        write_embeddings(out, tmp_path / "out")
    with Embedder(gguf) as e:
        n = e.count_tokens(texts[1])[0]
    assert (info.value.index, info.value.n_tokens, info.value.max_tokens) == (1, n, 8)


def test_a_model_missing_on_the_workers_fails_the_job_with_its_error(cluster, tmp_path):
    """A .gguf path the driver cannot see is passed on (it may be on the workers' shared storage);
    a worker that cannot find it fails the job with the Embedder's own ModelLoadError."""
    missing = tmp_path / "nowhere" / "model.gguf"
    out = embed_dataset(ray.data.from_items([{"id": 1, "text": "a"}]), missing, concurrency=1)
    with pytest.raises(ModelLoadError, match=rf"{missing}: no such GGUF file \(raised in a Ray worker\)"):
        write_embeddings(out, tmp_path / "out")


def test_corpus_errors_name_the_line(cluster, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1, "text": "a"}\n{"id": "x", "text": "b"}\n')
    with pytest.raises(InputError, match=r"line 2: id 'x' is str, but the ids before it are ints"):
        read_corpus(str(bad))
    bad.write_text('{"text": "a"}\n{"text": 5}\n')
    with pytest.raises(InputError, match=r"line 2: 'text' is int, not a string"):
        read_corpus(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(InputError, match="no texts to embed"):
        read_corpus(str(empty))
    folder = tmp_path / "pq"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1], "body": ["a"]}), folder / "a.parquet")
    with pytest.raises(InputError, match=r"has no column 'text' \(its columns: id, body\)"):
        read_corpus(str(folder))
    pq.write_table(pa.table({"text": ["a", None]}), folder / "a.parquet")
    with pytest.raises(InputError, match=r"a.parquet: row 1 has no text"):
        read_corpus(str(folder))


def test_outputs_are_checked(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "old.parquet").write_bytes(b"")
    with pytest.raises(OutputExistsError, match="not empty"):
        write_embeddings(None, tmp_path / "used")  # refused before the dataset is looked at

    def shard(path, **columns):
        pq.write_table(pa.table({**columns, "embedding": pa.array([[0.5, 0.5]] * len(next(iter(columns.values()))),
                                                                  type=pa.list_(pa.float32(), 2))}), path)

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shard(mixed / "a.parquet", row=[0, 1])
    shard(mixed / "b.parquet", row=[1, 2])
    with pytest.raises(InputError, match="row 1 appears more than once"):
        read_embeddings(mixed)
    (mixed / "b.parquet").unlink()
    shard(mixed / "b.parquet", row=[3])
    with pytest.raises(InputError, match="row 2 is missing"):
        read_embeddings(mixed)
    shard(mixed / "b.parquet", row=[2])
    got = read_embeddings(mixed)
    assert got.ids.tolist() == [0, 1, 2] and got.vectors.shape == (3, 2) and got.vectors.dtype == np.float32
    unkeyed = tmp_path / "unkeyed"
    unkeyed.mkdir()
    shard(unkeyed / "a.parquet", name=["x"])
    with pytest.raises(InputError, match="cannot be put in order"):
        read_embeddings(unkeyed)


def test_missing_ray_says_what_to_install(monkeypatch, gguf):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules makes `import ray` fail
    with pytest.raises(ImportError, match=r'pip install "qembed-gguf\[ray\]"'):
        embed_dataset(object(), gguf)
