"""`qembed-gguf embed`: the round trip equals the library, inputs are validated with line
numbers, outputs are written atomically; and the input/batching planners on their own."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TEXTS
from qembed_gguf import Embedder
from qembed_gguf.batching import plan_batches
from qembed_gguf.cli import main
from qembed_gguf.errors import InputError
from qembed_gguf.jobio import NO_ID, iter_jsonl, iter_txt


@pytest.fixture(scope="module")
def model(converted):
    return converted("tiny", "q8_0")


def test_jsonl_round_trip_equals_library(model, tmp_path):
    rows = [{"id": f"doc-{i}", "text": t} for i, t in enumerate(TEXTS)]
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "out.npy"
    result = CliRunner().invoke(main, ["embed", str(model), str(src), "-o", str(out), "--dim", "64", "-q"])
    assert result.exit_code == 0, result.output
    with Embedder(model) as e:
        expected = e.embed(TEXTS, dim=64)
        queries = e.embed_query(TEXTS, task="find code")
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)
    assert json.loads((tmp_path / "out.ids.json").read_text()) == [r["id"] for r in rows]

    q_out = tmp_path / "q.npy"
    result = CliRunner().invoke(main, ["embed", str(model), str(src), "-o", str(q_out), "--query", "--task", "find code"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(np.load(q_out), queries, atol=1e-6)
    with Embedder(model) as e:  # the summary counts the tokens actually embedded (instruction included)
        n_tokens = sum(e.count_tokens([e.format_query(t, "find code") for t in TEXTS]))
    assert f" {n_tokens} tokens in " in result.output


def test_stdin_txt_and_precision(model, tmp_path):
    out = tmp_path / "bits.npy"
    proc = subprocess.run([sys.executable, "-m", "qembed_gguf", "embed", str(model), "-", "-o", str(out),
                           "--precision", "ubinary"], input="alpha\nbeta\n\ngamma\n".encode(), capture_output=True,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert "4 texts" in proc.stderr.decode() and "tokens/s" in proc.stderr.decode()
    bits = np.load(out)
    assert bits.dtype == np.uint8 and bits.shape == (4, 256 // 8)
    with Embedder(model) as e:
        np.testing.assert_array_equal(bits, np.packbits(e.embed(["alpha", "beta", "", "gamma"]) > 0, axis=-1))


@pytest.mark.parametrize("content, match", [
    (b'{"text": "ok"}\n{"text": 5}\n', "line 2: 'text' is int"),
    (b'{"text": "ok"}\n\n{"body": "x"}\n', "line 3 has no 'text' field"),
    (b'{"text": "ok"}\nnot json\n', "line 2 is not valid JSON"),
    (b'{"text": "ok", "id": 1}\n{"text": "no id"}\n', "line 2 lacks an 'id'"),
    (b'["a list"]\n', "line 1 is a JSON list"),
    (b'{"text": "ok"}\n{"text": "\xff\xfe"}\n', "line 2 is not valid UTF-8"),
])
def test_bad_jsonl_names_the_line(content, match):
    import io

    with pytest.raises(InputError, match=re.escape(match)):
        list(iter_jsonl(io.BytesIO(content), source="bad.jsonl"))


def test_a_bad_line_fails_the_command_before_the_model_loads(model, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(b'{"text": "ok"}\n{"text": 5}\n')
    out = tmp_path / "out.npy"
    result = CliRunner().invoke(main, ["embed", "/nonexistent/model.gguf", str(src), "-o", str(out), "-q"])
    assert result.exit_code == 1 and f"{src}: line 2: 'text' is int" in result.output, result.output
    assert list(tmp_path.iterdir()) == [src]  # no output, no temporary file, and no model was needed


def test_existing_output_and_usage_errors(model, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\n")
    out = tmp_path / "out.npy"
    out.write_bytes(b"keep")
    runner = CliRunner()
    result = runner.invoke(main, ["embed", str(model), str(src), "-o", str(out), "-q"])
    assert result.exit_code == 1 and "--force" in result.output and out.read_bytes() == b"keep"
    assert runner.invoke(main, ["embed", str(model), str(src), "-o", str(tmp_path / "x.txt")]).exit_code == 2
    assert runner.invoke(main, ["embed", str(model), str(src), "-o", str(tmp_path / "y.npy"), "--task", "t"]).exit_code == 2
    result = runner.invoke(main, ["embed", str(model), str(src), "-o", str(tmp_path / "z.npy"), "--dim", "8", "-q"])
    assert result.exit_code == 1 and "[32, 256]" in result.output
    result = runner.invoke(main, ["embed", str(model), str(src), "-o", str(tmp_path / "w.npy"), "--precision", "int8"])
    assert result.exit_code == 1 and "at least 2 texts" in result.output and not (tmp_path / "w.npy").exists()


def test_demo_prints_what_a_user_needs():
    result = CliRunner().invoke(main, ["demo", "--model", "tiny"])
    assert result.exit_code == 0, result.output
    for needle in ("RANDOM WEIGHTS", "full dim 256", "cosine similarity", "q0", "doc3", "tokens/s"):
        assert needle in result.output


def test_parsers():
    import io

    def txt(data: bytes) -> list[str]:
        return [t for _, t, _ in iter_txt(io.BytesIO(data))]

    assert txt(b"a\r\nb\n\nc") == ["a", "b", "", "c"]
    assert txt(b"") == []
    records = list(iter_jsonl(io.BytesIO(b'{"t": "x", "id": 3}\n\n{"t": "y", "id": [1]}\n'), field="t"))
    assert records == [(1, "x", 3), (3, "y", [1])]  # line numbers count the blank line
    assert [i for _, _, i in iter_txt(io.BytesIO(b"a\n"))] == [NO_ID]
    with pytest.raises(InputError, match="line 1"):
        txt(b"\xc3\x28")


def test_plan_batches():
    lengths = [5, 100, 3, 60, 60, 1, 40, 300]
    batches = plan_batches(lengths, budget=120, max_seqs=3)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert all((sum(lengths[i] for i in b) <= 120 or len(b) == 1) and len(b) <= 3 for b in batches)
    assert batches[0] == [7]  # longest first; longer than the budget: decoded alone
    assert plan_batches([], budget=10, max_seqs=2) == []
    with pytest.raises(ValueError, match="input 2 has 0 tokens"):
        plan_batches([1, 2, 0], budget=10, max_seqs=4)


def test_outputs_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    from qembed_gguf.atomic import atomic_file, temporary_path

    old = os.umask(0o027)
    try:
        with atomic_file(tmp_path / "x.npy") as fh:
            np.save(fh, np.zeros((2, 3), dtype=np.float32))
        with temporary_path(tmp_path, "m.gguf") as p:
            mode = p.stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert (tmp_path / "x.npy").stat().st_mode & 0o777 == 0o640
    assert mode == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_an_atomic_file_that_fails_leaves_nothing(tmp_path):
    from qembed_gguf.atomic import atomic_file

    (tmp_path / "keep.npy").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_file(tmp_path / "keep.npy") as fh:
            fh.write(b"half")
            raise RuntimeError("interrupted")
    assert (tmp_path / "keep.npy").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.npy"]


@pytest.mark.parametrize("args, kwargs", [
    ([], {"long_inputs": "truncate"}),
    (["--no-truncate"], {"long_inputs": "error"}),
    (["--long-inputs", "error", "--no-truncate"], {"long_inputs": "error"}),
    (["--long-inputs", "chunk", "--chunk-overlap", "16", "--max-tokens", "64"],
     {"long_inputs": "chunk", "chunk_overlap": 16, "max_tokens": 64}),
])
def test_ray_gets_the_long_input_policy_through_its_embedder_kwargs(monkeypatch, tmp_path, args, kwargs):
    import qembed_gguf.integrations.ray as ray_integration

    seen = {}
    monkeypatch.setattr(ray_integration, "embed_corpus", lambda *a, **options: seen.update(options))
    result = CliRunner().invoke(main, ["embed", "m.gguf", "in.txt", "-o", str(tmp_path / "vectors"), "-q", *args,
                                       "--ray"])
    assert result.exit_code == 0, result.output
    assert seen["embedder_kwargs"] == kwargs
