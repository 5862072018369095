"""The command line: convert / info / models / backend, through click's runner and the installed
console script."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gguf_edit import V, copy_with_changes, copy_without_keys
from qembed_gguf.cli import main


@pytest.fixture
def runner():
    return CliRunner()


def test_convert_then_info(runner, tmp_path, tiny_dir):
    out = tmp_path / "tiny.gguf"
    result = runner.invoke(main, ["convert", str(tiny_dir), "-t", "q4_0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "Q4_0" in result.output and "bits/weight" in result.output
    info = runner.invoke(main, ["info", str(out)])
    assert info.exit_code == 0, info.output
    for needle in ("architecture:   qwen3", "pooling:        last", "'<|endoftext|>'", "add_eos True",
                   "MRL dims 32..256", "OK for Qwen3 embeddings"):
        assert needle in info.output, needle
    data = json.loads(runner.invoke(main, ["info", "--json", str(out)]).output)
    assert data["pooling"] == "last" and data["dim"] == 256 and data["problems"] == []
    assert data["valid"] is True and data["error"] is None


def test_k_quant_fallback_is_reported(runner, tmp_path, checkpoints):
    out = tmp_path / "odd.gguf"
    result = runner.invoke(main, ["convert", str(checkpoints["odd"]), "-t", "q4_k_m", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "row length is not a multiple of the block size" in result.output  # hidden 96, ffn 160


def test_info_warns_about_community_style_file(runner, tmp_path, converted):
    stripped = copy_without_keys(converted("tiny", "q8_0"), tmp_path / "old.gguf",
                                 {"qwen3.pooling_type", "tokenizer.ggml.add_eos_token"})
    result = runner.invoke(main, ["info", str(stripped)])
    assert result.exit_code == 3
    assert "no pooling_type" in result.output and "add_eos_token is not true" in result.output
    assert "2 problem(s)" in result.output


EPS = "qwen3.attention.layer_norm_rms_epsilon"


@pytest.mark.parametrize("case", [
    ("no tensors", dict(tensors=False), "token_embd.weight", False),
    ("zero heads", dict(values={"qwen3.attention.head_count": (0, V.UINT32)}), "qwen3.attention.head_count", True),
    ("zero blocks", dict(values={"qwen3.block_count": (0, V.UINT32)}), "qwen3.block_count", True),
    ("llama tokenizer", dict(values={"tokenizer.ggml.model": ("llama", V.STRING)}), "tokenizer.ggml.model", True),
    ("eps nan", dict(values={EPS: (math.nan, V.FLOAT32)}), EPS, True),
    ("eps -1", dict(values={EPS: (-1.0, V.FLOAT32)}), EPS, True),
], ids=lambda c: c[0] if isinstance(c, tuple) else None)
def test_info_refuses_what_the_embedder_refuses(runner, tmp_path, converted, case):
    """info runs check_gguf: exit 1, the field and byte offset named (also in --json), never 'OK'."""
    _, edit, field, has_offset = case
    bad = copy_with_changes(converted("tiny", "q8_0"), tmp_path / "bad.gguf", **edit)
    result = runner.invoke(main, ["info", str(bad)])
    assert result.exit_code == 1, result.output
    assert "REFUSED" in result.output and "OK for Qwen3" not in result.output
    assert f"CorruptModelError: {bad}: {field} (" in result.output
    assert ("byte offset" in result.output) == has_offset
    data = json.loads(runner.invoke(main, ["info", "--json", str(bad)]).stdout)
    assert data["valid"] is False and data["error"]["type"] == "CorruptModelError"
    assert data["error"]["field"] == field and isinstance(data["error"]["offset"], int) == has_offset
    if field == EPS:
        assert data["metadata"][EPS] in ("nan", -1.0)  # JSON has no NaN: written as a string
    verify = runner.invoke(main, ["verify", str(bad)])
    assert verify.exit_code == 1 and f"{field} (" in verify.output


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_info_and_verify_refuse_a_fifo(tmp_path):
    """A FIFO no one writes: refused at once, not read (a timeout makes a regression fail, not hang)."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    for command in ("info", "verify"):
        r = subprocess.run([sys.executable, "-m", "qembed_gguf", command, str(fifo)], capture_output=True, text=True,
                           timeout=30, cwd=tmp_path)
        assert r.returncode == 1 and "is a FIFO (named pipe), not a regular file" in r.stderr, (command, r.stderr)


def test_errors_are_one_line_messages(runner, tmp_path, tiny_dir):
    out = tmp_path / "x.gguf"
    out.write_text("keep me")
    result = runner.invoke(main, ["convert", str(tiny_dir), "-o", str(out)])
    assert result.exit_code == 1
    assert "OutputExistsError" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["info", str(tmp_path / "x.gguf")])
    assert result.exit_code == 1 and "CorruptModelError" in result.output and "byte offset 0" in result.output
    result = runner.invoke(main, ["convert", str(tiny_dir), "-t", "q9_9"])
    assert result.exit_code == 2  # usage error


def test_models_and_backend(runner):
    models = runner.invoke(main, ["models"]).output
    assert "Qwen/Qwen3-Embedding-4B" in models and "non-semantic" in models
    presets = runner.invoke(main, ["backend", "presets"]).output
    assert "-DCMAKE_CUDA_ARCHITECTURES=86" in presets and "-DGGML_NATIVE=ON" in presets
    dry = runner.invoke(main, ["backend", "install", "--preset", "cuda-sm89", "--dry-run"])
    assert dry.exit_code == 0
    assert "CMAKE_ARGS='-DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=89 -DGGML_CUDA=ON" in dry.output
    assert "--no-binary=llama-cpp-python" in dry.output
    bad = runner.invoke(main, ["backend", "install", "--preset", "rocm", "--dry-run"])
    assert bad.exit_code == 1 and "unknown preset 'rocm'" in bad.output


def test_console_script_installed(tmp_path):
    exe = shutil.which("qembed-gguf")
    assert exe, "the qembed-gguf console script is not installed"
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "qembed-gguf" in proc.stdout
