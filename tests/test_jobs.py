"""Resumable embedding jobs: kill -9 at random points, then the same command again, must give the
uninterrupted run's output bit for bit; a changed input is refused; and one Embedder shared by
many threads returns what it returns alone."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TEXTS
from qembed_gguf import Embedder
from qembed_gguf.errors import InputError
from qembed_gguf.jobs import JobSettings, job_dir, run_embed_job


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(TEXTS).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "qembed_gguf", "embed", *args, "--quiet"]


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_is_bit_identical(converted, tmp_path):
    model = str(converted("tiny", "q8_0"))
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(_corpus(600))))
    args = [model, str(src), "--chunk-size", "16", "--dim", "128", "--precision", "int8"]
    want = tmp_path / "want.npy"
    subprocess.run(_cli(*args, "-o", str(want)), check=True, cwd=tmp_path)

    out = tmp_path / "got.npy"
    rng = random.Random(7)

    def chunks_done() -> int:
        return len(list(job_dir(out).glob("chunk-*.npy"))) if job_dir(out).exists() else 0

    kills, progress = 0, []
    while kills < 6:
        proc = subprocess.Popen(_cli(*args, "-o", str(out)), cwd=tmp_path)
        # kill at a random point after this run has added at least one chunk (whatever the machine's speed)
        before, deadline = chunks_done(), time.monotonic() + 120
        while chunks_done() <= before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is not None:  # finished before the kill
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not out.exists()  # a killed job never leaves an output behind
        kills += 1
        progress.append(chunks_done())
    assert kills >= 5, f"the job finished before 5 kills ({kills}); make it longer"
    assert progress == sorted(progress) and progress[-1] < 600 // 16, progress  # mid-job, work kept across kills
    subprocess.run(_cli(*args, "-o", str(out)), check=True, cwd=tmp_path)
    assert out.read_bytes() == want.read_bytes()
    assert out.with_name("got.ids.json").read_bytes() == want.with_name("want.ids.json").read_bytes()
    assert not job_dir(out).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_resume_refuses_a_changed_input_and_restart_discards(converted, tmp_path):
    model = converted("tiny", "q8_0")
    src = tmp_path / "in.txt"
    src.write_text("\n".join(_corpus(40)) + "\n")
    out = tmp_path / "out.npy"
    settings = JobSettings(chunk_size=8)
    with Embedder(model) as e:
        calls = []

        class Stop(Exception):
            pass

        def stop_after_two(n):
            calls.append(n)
            if len(calls) == 2:
                raise Stop

        with pytest.raises(Stop):
            run_embed_job(e, str(src), out, settings, progress=stop_after_two)
        assert not out.exists() and len(list(job_dir(out).glob("chunk-*.npy"))) == 2
        src.write_text("\n".join(_corpus(40, seed=1)) + "\n")
        with pytest.raises(InputError, match="input changed"):
            run_embed_job(e, str(src), out, settings)
        with pytest.raises(InputError, match="setting dim"):
            src.write_text("\n".join(_corpus(40)) + "\n")
            run_embed_job(e, str(src), out, JobSettings(chunk_size=8, dim=64))
        result = run_embed_job(e, str(src), out, settings)
        assert result.resumed_chunks == 2 and result.n_texts == 40
        whole = np.concatenate([e.embed(_corpus(40)[k:k + 8]) for k in range(0, 40, 8)])
        assert np.array_equal(np.load(out), whole)
        src.write_text("\n".join(_corpus(40, seed=2)) + "\n")
        run_embed_job(e, str(src), out, settings, force=True, restart=True)
        assert np.load(out).shape == (40, e.dim)


def test_bad_line_fails_before_the_model_loads(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "a"}\n{"text": "b"}\n\xff\xfe\n')
    loaded = []
    with pytest.raises(InputError, match="line 3 is not valid UTF-8"):
        run_embed_job(lambda: loaded.append(1), str(src), tmp_path / "o.npy", JobSettings())
    assert loaded == [] and not (tmp_path / "o.npy").exists()


@pytest.mark.slow
def test_many_threads_mixed_inputs_equal_single_threaded(converted):
    with Embedder(converted("tiny", "q8_0")) as e:
        long = " ".join(TEXTS) * 20
        jobs = []
        for i in range(48):
            texts = _corpus(1 + i % 7, seed=i) + ([long] if i % 5 == 0 else []) + ([""] if i % 3 == 0 else [])
            kwargs = [{}, {"dim": 64}, {"instruction": "Find the answer"}, {"normalize": False},
                      {"dim": 32, "instruction": "Retrieve"}][i % 5]
            jobs.append((texts, kwargs))
        expected = [e.embed(t, **kw) for t, kw in jobs]
        with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
            results = list(pool.map(lambda job: e.embed(job[0], **job[1]), jobs))
        for got, want in zip(results, expected):
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=2e-5)
