"""`qembed-gguf embed --chunk-tokens N` and `--long-inputs`: the CLI's rows and spans are
``Embedder.embed_chunks``'s (and ``Embedder(long_inputs="chunk").embed``'s), a kill -9 at any
point then the same command gives the uninterrupted output bit for bit, a changed setting is
refused on resume, and bad values fail before any output exists.

References: ``Embedder.embed_chunks`` / ``Embedder.embed`` of the same model in this process, with
the CLI's checkpoints as separate calls; Python's string slicing for the spans."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TEXTS as PROBES
from qembed_gguf import Embedder
from qembed_gguf.cli import main
from qembed_gguf.jobs import FAULT_ENV, JobSettings, job_dir, run_embed_job
from qembed_gguf.postprocess import quantize_embeddings

MAX = 64
PARAGRAPHS = "\n\n".join(f"Paragraph {i} is about topic {i}. It has a second sentence, and it ends here."
                         for i in range(6))
TEXTS = [PARAGRAPHS, "short", "", unicodedata.normalize("NFD", "École, café, naïve, Ångström. ") * 5,
         "日本語のテキストです。電車で行きます。" * 6, "🚀🦙 emoji " * 12, " ".join(PROBES)]


@pytest.fixture(scope="module")
def model(converted):
    return str(converted("tiny", "q8_0"))


@pytest.fixture(scope="module")
def e(model):
    with Embedder(model, max_tokens=MAX) as embedder:
        yield embedder


def _jsonl(path, texts, ids=True):
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t} if ids else {"text": t}, ensure_ascii=False)
                            + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    return path


def _spans(out):
    return [json.loads(line) for line in out.with_name(out.stem + ".spans.jsonl").read_text("utf-8").splitlines()]


def _invoke(*args):
    return CliRunner().invoke(main, ["embed", *map(str, args), "-q"])


def _check_cover(texts, spans):
    for i, text in enumerate(texts):
        mine = [s for s in spans if s["index"] == i]
        assert [s["chunk"] for s in mine] == list(range(len(mine))) and mine, i
        assert mine[0]["start"] == 0 and mine[-1]["end"] == len(text), (i, mine)
        for a, b in zip(mine, mine[1:]):
            assert a["start"] <= b["start"] <= a["end"] <= b["end"], (a, b)  # no gap, in order
        assert all(text[s["start"]:s["end"]] for s in mine) or text == ""


@pytest.mark.parametrize("extra, kwargs", [
    (["--dim", "64", "--overlap", "6"], {"dim": 64, "overlap": 6}),
    (["--query", "--task", "Find it"], {"query": True, "task": "Find it"}),
])
def test_rows_and_spans_equal_embed_chunks(model, e, tmp_path, extra, kwargs):
    src = _jsonl(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "out.npy"
    result = _invoke(model, src, "-o", out, "--max-tokens", MAX, "--chunk-tokens", 48, *extra)
    assert result.exit_code == 0, result.output
    want = e.embed_chunks(TEXTS, chunk_tokens=48, **kwargs)
    got = np.load(out)
    assert got.shape == (len(want), kwargs.get("dim", e.dim)) and got.dtype == np.float32
    assert np.array_equal(got, np.stack([c.vector for c in want]))  # one checkpoint: the same decode calls
    spans = _spans(out)
    assert spans == [{"id": f"doc-{c.index}", **c.to_dict()} for c in want]
    _check_cover(TEXTS, spans)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl", "out.npy", "out.spans.jsonl"]  # no .ids.json


def test_txt_input_checkpoints_and_int8(model, e, tmp_path):
    """Without ids the spans have no "id"; with --chunk-size 3 each checkpoint is one embed_chunks
    call, and int8's buckets come from all the rows, as quantize_embeddings of the whole."""
    texts = [t.replace("\n", " ") for t in TEXTS]
    src = tmp_path / "in.txt"
    src.write_text("\n".join(texts) + "\n", encoding="utf-8")
    out = tmp_path / "q.npy"
    result = _invoke(model, src, "-o", out, "--max-tokens", MAX, "--chunk-tokens", 20, "--overlap", 5,
                     "--chunk-size", 3, "--precision", "int8")
    assert result.exit_code == 0, result.output
    want = [c for k in range(0, len(texts), 3)
            for c in e.embed_chunks(texts[k:k + 3], chunk_tokens=20, overlap=5)]
    assert np.array_equal(np.load(out), quantize_embeddings(np.stack([c.vector for c in want]), "int8"))
    spans = _spans(out)
    assert [(s["index"], s["chunk"], s["start"], s["end"]) for s in spans] == \
        [(k + c.index, c.chunk, c.start, c.end) for k in range(0, len(texts), 3)
         for c in e.embed_chunks(texts[k:k + 3], chunk_tokens=20, overlap=5)]
    assert all("id" not in s for s in spans)
    _check_cover(texts, spans)


def _cli(*args):
    return [sys.executable, "-m", "qembed_gguf", "embed", *map(str, args), "--quiet"]


def test_kill_9_then_resume_is_bit_identical(model, tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", TEXTS)
    args = [model, src, "--max-tokens", MAX, "--chunk-tokens", 16, "--overlap", 4, "--chunk-size", 2,
            "--precision", "int8"]
    want = tmp_path / "want.npy"
    subprocess.run(_cli(*args, "-o", want), check=True, cwd=tmp_path)

    out = tmp_path / "got.npy"
    folder = job_dir(out)
    for fault, done_after in [("0:before-vectors", 0), ("1:after-vectors", 2), ("3:before-vectors", 3)]:
        proc = subprocess.run(_cli(*args, "-o", out), cwd=tmp_path, env={**os.environ, FAULT_ENV: fault})
        assert proc.returncode == -signal.SIGKILL, (fault, proc.returncode)
        assert not out.exists() and not out.with_name("got.spans.jsonl").exists()
        assert sorted(p.name for p in folder.glob("chunk-*.npy")) == [f"chunk-{k:06d}.npy" for k in range(done_after)]
    assert (folder / "chunk-000003.spans.jsonl").exists()  # the spans of the checkpoint killed before its vectors
    (folder / "chunk-000000.spans.jsonl").unlink()  # a done checkpoint without its spans is embedded again
    subprocess.run(_cli(*args, "-o", out), check=True, cwd=tmp_path)
    assert out.read_bytes() == want.read_bytes()
    assert out.with_name("got.spans.jsonl").read_bytes() == want.with_name("want.spans.jsonl").read_bytes()
    assert not folder.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_long_inputs_chunk_equals_the_library_and_no_truncate_is_error(model, tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "long.npy"
    result = _invoke(model, src, "-o", out, "--max-tokens", 32, "--long-inputs", "chunk", "--chunk-overlap", 8)
    assert result.exit_code == 0, result.output
    with Embedder(model, max_tokens=32, long_inputs="chunk", chunk_overlap=8) as chunking:
        assert np.array_equal(np.load(out), chunking.embed(TEXTS))
    assert json.loads((tmp_path / "long.ids.json").read_text()) == [f"doc-{i}" for i in range(len(TEXTS))]
    assert _invoke(model, src, "-o", tmp_path / "cut.npy", "--max-tokens", 32).exit_code == 0  # truncate: the default
    with Embedder(model, max_tokens=32, long_inputs="truncate") as cutting:
        assert np.array_equal(np.load(tmp_path / "cut.npy"), cutting.embed(TEXTS))
    assert not np.array_equal(np.load(tmp_path / "cut.npy"), np.load(out))
    for flag in (["--no-truncate"], ["--long-inputs", "error"]):
        result = _invoke(model, src, "-o", tmp_path / "err.npy", "--max-tokens", 32, *flag)
        assert result.exit_code == 1 and "InputTooLongError" in result.output, result.output
        assert not (tmp_path / "err.npy").exists()  # (its job folder keeps the work done: none here)
    result = _invoke(model, src, "-o", tmp_path / "err.npy", "--max-tokens", 32, "--restart")
    assert result.exit_code == 0 and np.array_equal(np.load(tmp_path / "err.npy"), np.load(tmp_path / "cut.npy"))


def test_a_resume_with_another_policy_or_chunking_is_refused(model, e, tmp_path):
    src = _jsonl(tmp_path / "in.jsonl", TEXTS)
    out = tmp_path / "out.npy"

    class Stop(Exception):
        pass

    def stop(_):
        raise Stop

    with pytest.raises(Stop):  # the job the CLI would run with --max-tokens 64 --chunk-size 2, interrupted
        run_embed_job(e, str(src), out, JobSettings(chunk_size=2), progress=stop)
    common = [model, src, "-o", out, "--max-tokens", MAX, "--chunk-size", 2]
    for extra, setting in [(["--long-inputs", "chunk"], "setting long_inputs ('truncate', now 'chunk')"),
                           (["--long-inputs", "error"], "setting long_inputs ('truncate', now 'error')"),
                           (["--chunk-tokens", 16], "setting chunk_tokens (None, now 16)")]:
        result = _invoke(*common, *extra)
        assert result.exit_code == 1 and setting in result.output and "--restart" in result.output, result.output
    assert not out.exists() and len(list(job_dir(out).glob("chunk-*.npy"))) == 1
    result = _invoke(*common)
    assert result.exit_code == 0, result.output
    assert np.array_equal(np.load(out), np.concatenate([e.embed(TEXTS[k:k + 2]) for k in range(0, len(TEXTS), 2)]))

    chunk_out = tmp_path / "chunks.npy"  # a chunk job interrupted, resumed with another --overlap
    with pytest.raises(Stop):
        run_embed_job(e, str(src), chunk_out, JobSettings(chunk_size=2, chunk_tokens=16), progress=stop)
    result = _invoke(model, src, "-o", chunk_out, "--max-tokens", MAX, "--chunk-size", 2, "--chunk-tokens", 16,
                     "--overlap", 3)
    assert result.exit_code == 1 and "setting overlap (0, now 3)" in result.output, result.output
    result = _invoke(model, src, "-o", chunk_out, "--max-tokens", MAX, "--chunk-size", 2, "--chunk-tokens", 16,
                     "--overlap", 3, "--restart")
    assert result.exit_code == 0, result.output
    assert len(_spans(chunk_out)) == len(np.load(chunk_out))


@pytest.mark.parametrize("args, code, message", [
    (["--chunk-tokens", "1"], 2, "1 is not in the range x>=2"),
    (["--chunk-tokens", "65", "--max-tokens", "64"], 2, "--chunk-tokens 65 is more than --max-tokens 64"),
    (["--chunk-tokens", "100000"], 1, "chunk_tokens=100000 is more than this Embedder's max_tokens, 8192"),
    (["--overlap", "2"], 2, "--overlap applies to --chunk-tokens"),
    (["--chunk-tokens", "8", "--overlap", "4"], 2, "--overlap must be at most 3: half of the 7 tokens"),
    (["--chunk-tokens", "8", "--overlap", "-1"], 2, "-1 is not in the range x>=0"),
    (["--chunk-tokens", "8", "--chunk-overlap", "2"], 2, "--chunk-overlap does not apply with --chunk-tokens"),
    (["--chunk-tokens", "8", "--query"], 1, "leaves no room for text after the query template"),
    (["--chunk-tokens", "8", "--ray"], 2, "--chunk-tokens is not supported with --ray"),
    (["--no-truncate", "--long-inputs", "chunk"], 2, "--no-truncate is --long-inputs error; it contradicts"),
    (["--chunk-overlap", "3"], 2, "--chunk-overlap applies to --long-inputs chunk"),
    (["--long-inputs", "chunk", "--chunk-overlap", "32", "--max-tokens", "64"], 2, "--chunk-overlap must be at most 31"),
    (["--long-inputs", "chunk", "--chunk-overlap", "9000"], 1, "chunk_overlap must be an integer in [0, 4095]"),
])
def test_bad_values_fail_clearly_and_leave_nothing(model, tmp_path, args, code, message):
    src = _jsonl(tmp_path / "in.jsonl", TEXTS[:2])
    result = CliRunner().invoke(main, ["embed", model, str(src), "-o", str(tmp_path / "out.npy"), "-q", *args])
    assert result.exit_code == code and message in result.output, result.output
    assert list(tmp_path.iterdir()) == [src]
