"""Resumable embedding jobs: kill -9 at random points, then the same command again, must give the
uninterrupted run's output bit for bit; a changed input is refused; and one Embedder shared by
many threads returns what it returns alone."""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEXTS
from qembed_gguf import Embedder
from qembed_gguf.errors import InputError, OutputExistsError
from qembed_gguf.jobs import FAULT_ENV, JobSettings, job_dir, run_embed_job


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = " ".join(TEXTS).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 60))) for _ in range(n)]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "qembed_gguf", "embed", *args, "--quiet"]


def test_kill_9_at_every_kind_of_point_then_resume_is_bit_identical(converted, tmp_path):
    """kill -9 (the job's own fault hook, so the points are exact, not timed) between a chunk's ids
    and its vectors, and after its vectors, in several chunks one after the other; then the same
    command finishes the job, and its output is the uninterrupted run's to the bit."""
    model = str(converted("tiny", "q8_0"))
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(_corpus(160))))
    args = [model, str(src), "--chunk-size", "16", "--dim", "128", "--precision", "int8"]
    want = tmp_path / "want.npy"
    subprocess.run(_cli(*args, "-o", str(want)), check=True, cwd=tmp_path)

    out = tmp_path / "got.npy"
    chunks = lambda: sorted(p.name for p in job_dir(out).glob("chunk-*.npy")) if job_dir(out).exists() else []  # noqa: E731
    for fault, done_after in [("0:before-vectors", 0), ("0:after-vectors", 1), ("3:before-vectors", 3),
                              ("3:after-vectors", 4), ("7:before-vectors", 7), ("9:after-vectors", 10)]:
        env = {**os.environ, FAULT_ENV: fault}
        proc = subprocess.run(_cli(*args, "-o", str(out)), cwd=tmp_path, env=env)
        assert proc.returncode == -signal.SIGKILL, (fault, proc.returncode)
        assert not out.exists()  # a killed job never leaves an output behind
        assert chunks() == [f"chunk-{k:06d}.npy" for k in range(done_after)], fault  # work kept, nothing partial
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
        for i in range(30):  # every kind of job (i % 3, 5, 7) several times, the long input in 6
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


def test_the_manifest_records_the_long_input_policy(converted, tmp_path):
    """long_inputs and chunk_overlap (not the older truncate flag) are settings of the job: a resume
    with another policy is refused, and a job folder of the format before them is not resumed."""
    model = converted("tiny", "q8_0")
    src = tmp_path / "in.txt"
    src.write_text("\n".join(_corpus(12)) + "\n")
    out = tmp_path / "out.npy"

    class Stop(Exception):
        pass

    def stop(_):
        raise Stop

    with Embedder(model, max_tokens=16, long_inputs="chunk", chunk_overlap=3) as e, pytest.raises(Stop):
        run_embed_job(e, str(src), out, JobSettings(chunk_size=4), progress=stop)
    manifest = json.loads((job_dir(out) / "manifest.json").read_text())
    assert manifest["version"] == 2 and "truncate" not in manifest["settings"]
    assert (manifest["settings"]["long_inputs"], manifest["settings"]["chunk_overlap"]) == ("chunk", 3)
    assert (manifest["settings"]["chunk_tokens"], manifest["settings"]["overlap"]) == (None, 0)
    for kwargs, what in [({}, "setting long_inputs ('chunk', now 'truncate')"),
                         ({"long_inputs": "chunk", "chunk_overlap": 2}, "setting chunk_overlap (3, now 2)")]:
        with Embedder(model, max_tokens=16, **kwargs) as e, pytest.raises(InputError, match=re.escape(what)):
            run_embed_job(e, str(src), out, JobSettings(chunk_size=4))
    manifest["version"] = 1
    (job_dir(out) / "manifest.json").write_text(json.dumps(manifest))
    with Embedder(model, max_tokens=16, long_inputs="chunk", chunk_overlap=3) as e:
        with pytest.raises(InputError, match=re.escape("job format version (1, now 2)")):
            run_embed_job(e, str(src), out, JobSettings(chunk_size=4))
        result = run_embed_job(e, str(src), out, JobSettings(chunk_size=4), restart=True)
        assert result.n_rows == result.n_texts == 12
        assert np.array_equal(np.load(out), np.concatenate([e.embed(_corpus(12)[k:k + 4]) for k in (0, 4, 8)]))


@pytest.mark.parametrize("settings, match", [
    (JobSettings(chunk_tokens=1), "chunk_tokens must be an integer >= 2, got 1"),
    (JobSettings(chunk_tokens=8, overlap=4), "overlap=4 is more than half of the 7 text tokens of a chunk of 8, 3"),
    (JobSettings(overlap=2), "overlap=2 applies to chunk_tokens"),
])
def test_bad_chunk_settings_fail_before_the_input_is_read(tmp_path, settings, match):
    loaded = []
    with pytest.raises(InputError, match=re.escape(match)):
        run_embed_job(lambda: loaded.append(1), str(tmp_path / "missing.txt"), tmp_path / "o.npy", settings)
    assert loaded == [] and list(tmp_path.iterdir()) == []


def test_a_chunk_job_refuses_an_existing_spans_file(tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\n")
    (tmp_path / "o.spans.jsonl").write_text("keep")
    with pytest.raises(OutputExistsError, match=r"o\.spans\.jsonl\) exists; pass --force"):
        run_embed_job(lambda: None, str(src), tmp_path / "o.npy", JobSettings(chunk_tokens=8))
    assert (tmp_path / "o.spans.jsonl").read_text() == "keep"


def test_outputs_renamed_halfway_then_the_same_command_resumes(converted, tmp_path):
    """A kill between the renames of OUT.spans.jsonl and OUT.npy leaves the spans and the job folder:
    the same command resumes (the folder says the outputs are its own) instead of asking for --force;
    a side file of the other kind of job is removed with the run that replaces its output."""
    model = converted("tiny", "q8_0")
    src = tmp_path / "in.txt"
    src.write_text("\n".join(_corpus(12)) + "\n")
    out = tmp_path / "out.npy"
    settings = JobSettings(chunk_size=4, chunk_tokens=8)

    class Stop(Exception):
        pass

    def stop(_):
        raise Stop

    with Embedder(model) as e:
        with pytest.raises(Stop):
            run_embed_job(e, str(src), out, settings, progress=stop)
        (tmp_path / "out.spans.jsonl").write_text("left by the interrupted rename\n")
        (tmp_path / "out.ids.json").write_text("[1, 2]")  # an earlier plain job's ids: not this output's
        result = run_embed_job(e, str(src), out, settings)
        want = np.concatenate([np.stack([c.vector for c in e.embed_chunks(_corpus(12)[k:k + 4], chunk_tokens=8)])
                               for k in (0, 4, 8)])
    assert result.n_texts == 12 and np.array_equal(np.load(out), want)
    assert len((tmp_path / "out.spans.jsonl").read_text().splitlines()) == len(want)
    assert not (tmp_path / "out.ids.json").exists() and not job_dir(out).exists()
    with Embedder(model) as e, pytest.raises(OutputExistsError):  # a finished output is still protected
        run_embed_job(e, str(src), out, settings)
