"""Crafted GGUF files whose *values* would abort llama.cpp (a failed GGML_ASSERT kills the process)
or make it return silently wrong vectors: each is refused by check_gguf, before llama.cpp sees it,
with a CorruptModelError naming the field and byte offset. The files are edited copies of the
bundled tiny model (tests/gguf_edit.py) and, where the tensors must agree with the hostile
hyperparameters, conversions of synthetic checkpoints.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from gguf_edit import V, copy_with_changes
from qembed_gguf import convert, gguf_check, gguf_vocab
from qembed_gguf.errors import CorruptModelError, ModelLoadError
from qembed_gguf.gguf_check import check_gguf, read_header
from qembed_gguf.synthetic import Qwen3Shape, write_checkpoint

EPS = "qwen3.attention.layer_norm_rms_epsilon"
TOKENS, TYPES, MERGES = "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"


def _set(items: list, i: int, value) -> list:
    items[i] = value
    return items


# name -> (edit of the tiny model for copy_with_changes, the field the refusal must name)
EDITS = {
    # the reproduced defects: abort (GGML_ASSERT(eps >= 0.0f)) for -1 and NaN, zero vectors for +inf
    "eps -1": (dict(values={EPS: (-1.0, V.FLOAT32)}), EPS),
    "eps nan": (dict(values={EPS: (math.nan, V.FLOAT32)}), EPS),
    "eps +inf": (dict(values={EPS: (math.inf, V.FLOAT32)}), EPS),
    "eps 0": (dict(values={EPS: (0.0, V.FLOAT32)}), EPS),
    "eps as f64": (dict(values={EPS: (1e-6, V.FLOAT64)}), EPS),
    # GGML_ASSERT(id_to_token.size() == token_to_id.size())
    "duplicate token": (dict(arrays={TOKENS: lambda t: _set(t, 6, t[5])}), f"{TOKENS}[6]"),
    "empty token": (dict(arrays={TOKENS: lambda t: _set(t, 9, b"")}), f"{TOKENS}[9]"),
    # qwen3 graph: GGML_ASSERT(n_embd_head == n_rot)
    "rope dimensions 32 for heads of 64": (dict(values={"qwen3.rope.dimension_count": (32, V.UINT32)}),
                                           "qwen3.rope.dimension_count"),
    # GGML_ASSERT(rope_scaling_type_train != LLAMA_ROPE_SCALING_TYPE_UNSPECIFIED)
    "unknown rope scaling": (dict(values={"qwen3.rope.scaling.type": ("bogus", V.STRING)}), "qwen3.rope.scaling.type"),
    # GGML_ASSERT(n_layer_nextn <= n_layer_all), expert-count asserts
    "nextn layers": (dict(values={"qwen3.nextn_predict_layers": (5, V.UINT32)}), "qwen3.nextn_predict_layers"),
    "experts": (dict(values={"qwen3.expert_count": (4, V.UINT32)}), "qwen3.expert_count"),
    # silently different vectors
    "bidirectional attention": (dict(values={"qwen3.attention.causal": (False, V.BOOL)}), "qwen3.attention.causal"),
    "rope base 0": (dict(values={"qwen3.rope.freq_base": (0.0, V.FLOAT32)}), "qwen3.rope.freq_base"),
    "rope factor nan": (dict(values={"qwen3.rope.scaling.factor": (math.nan, V.FLOAT32)}), "qwen3.rope.scaling.factor"),
    "byte token missing": (dict(arrays={TOKENS: lambda t: _set(t, 0, b"!unique")}), TOKENS),
    "broken merge": (dict(arrays={MERGES: lambda m: _set(m, 3, b"ab")}), f"{MERGES}[3]"),
    "merge of no token": (dict(arrays={MERGES: lambda m: _set(m, 4, b"zzq xj")}), f"{MERGES}[4]"),
    # llama.cpp throws on these (a NULL model): refused first, naming the field
    "token type 99": (dict(arrays={TYPES: lambda t: _set(t, 0, 99)}), f"{TYPES}[0]"),
    "unknown pre-tokenizer": (dict(values={"tokenizer.ggml.pre": ("qwen9", V.STRING)}), "tokenizer.ggml.pre"),
    "block count as i32": (dict(values={"qwen3.block_count": (2, V.INT32)}), "qwen3.block_count"),
    "eos id out of range": (dict(values={"tokenizer.ggml.eos_token_id": (4096, V.UINT32)}),
                            "tokenizer.ggml.eos_token_id"),
    "split file": (dict(values={"split.count": (2, V.UINT16)}), "split.count"),
    "mrl as a string": (dict(values={"qembed.mrl_min_dim": ("32", V.STRING)}), "qembed.mrl_min_dim"),
}

# shapes whose tensors agree with hyperparameters llama.cpp asserts on
SHAPES = {
    "513 blocks": (Qwen3Shape(hidden=32, layers=513, heads=1, kv_heads=1, head_dim=32, ffn=32, vocab=4096),
                   "qwen3.block_count"),        # GGML_ASSERT(n_layer_all <= LLAMA_MAX_LAYERS)
    "odd head size": (Qwen3Shape(hidden=66, layers=1, heads=2, kv_heads=1, head_dim=33, ffn=32, vocab=4096),
                      "qwen3.attention.key_length"),  # ggml rope: GGML_ASSERT(n_dims % 2 == 0)
}

# those that abort or return wrong vectors without a word on the previous check: loaded in a subprocess
IN_SUBPROCESS = ("eps -1", "eps nan", "eps +inf", "duplicate token", "rope dimensions 32 for heads of 64",
                 "unknown rope scaling", "nextn layers", "experts", "bidirectional attention", "513 blocks",
                 "odd head size")


@pytest.fixture(scope="module")
def hostile(converted, tiny_dir, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """name -> (crafted file, the field its refusal must name)."""
    src = converted("tiny", "q8_0")
    out = tmp_path_factory.mktemp("hostile")
    files = {}
    for i, (name, (edit, field)) in enumerate(EDITS.items()):
        files[name] = (copy_with_changes(src, out / f"edit-{i}.gguf", **edit), field)
    for i, (name, (shape, field)) in enumerate(SHAPES.items()):
        folder = out / f"shape-{i}"
        write_checkpoint(folder, shape, tokenizer_from=tiny_dir, seed=1)
        files[name] = (convert(folder, outtype="f16", outfile=out / f"shape-{i}.gguf", quiet=True), field)
    return files


@pytest.mark.parametrize("name", [*EDITS, *SHAPES])
def test_check_gguf_names_the_field(hostile, name):
    path, field = hostile[name]
    read_header(path)  # structurally valid: only the values are hostile
    with pytest.raises(CorruptModelError) as info:
        check_gguf(path)
    err = info.value
    assert err.field == field, str(err)
    assert err.offset is not None and f"byte offset {err.offset}" in str(err)


def test_embedder_refuses_them_before_llama_cpp(hostile, tmp_path):
    """Loaded and embedded in one subprocess: an abort (a negative return code) fails the test and
    the last START line names the file; each must be refused with the typed error and its field."""
    script = textwrap.dedent("""
        import sys
        import numpy as np
        from qembed_gguf import Embedder
        from qembed_gguf.errors import QembedError
        for name, path in zip(sys.argv[1::2], sys.argv[2::2]):
            print("START", name, flush=True)
            try:
                with Embedder(path, n_threads=1) as e:
                    v = e.embed(["x", "hello world"])
                print("LOADED", name, bool(np.isfinite(v).all() and np.abs(v).max(axis=1).min() > 0), flush=True)
            except QembedError as exc:
                print("REFUSED", name, type(exc).__name__, getattr(exc, "field", None), sep="\\t", flush=True)
        print("DONE", flush=True)
    """)
    args = [x for name in IN_SUBPROCESS for x in (name, str(hostile[name][0]))]
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          cwd=tmp_path, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, f"the process died ({proc.returncode}) at {lines[-1:]}: {proc.stderr[-2000:]}"
    assert lines[-1] == "DONE"
    refused = {parts[1]: parts[2:] for parts in (line.split("\t") for line in lines) if parts[0] == "REFUSED"}
    for name in IN_SUBPROCESS:
        assert refused.get(name) == ["CorruptModelError", hostile[name][1]], (name, lines)


def test_valid_files_still_pass(converted):
    for outtype in ("f16", "q8_0", "q4_k_m"):
        h = check_gguf(converted("tiny", outtype))
        assert h.get("tokenizer.ggml.tokens").count == 4096


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_non_regular_files_are_refused_unread(tmp_path):
    """A FIFO no one writes would block open() forever, /dev/zero never ends: refused by type
    (in a subprocess with a timeout, so a regression fails instead of hanging)."""
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    sock_path = tmp_path / "s.gguf"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    script = textwrap.dedent("""
        import sys
        from qembed_gguf import Embedder
        from qembed_gguf.errors import ModelLoadError, QembedError
        from qembed_gguf.gguf_check import check_gguf, read_header, verify_integrity
        for path in sys.argv[1:]:
            for call in (check_gguf, read_header, verify_integrity, Embedder):
                try:
                    call(path)
                except (ModelLoadError if call is not Embedder else QembedError) as exc:
                    print(call.__name__, type(exc).__name__, str(exc), sep="\\t", flush=True)
                else:
                    print(call.__name__, "ACCEPTED", sep="\\t", flush=True)
    """)
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(fifo), "/dev/zero", str(sock_path)],
                              capture_output=True, text=True, timeout=30, cwd=tmp_path)
    finally:
        sock.close()
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0 and len(lines) == 12, (proc.returncode, lines, proc.stderr[-2000:])
    assert not [line for line in lines if "ACCEPTED" in line], lines
    for line in lines[:3]:  # the Embedder (4th) refuses them too, through its model resolution
        assert "is a FIFO (named pipe), not a regular file" in line and str(fifo) in line, line
    for line in lines[4:7]:
        assert "/dev/zero is a character device" in line, line
    for line in lines[8:11]:
        assert str(sock_path) in line and "cannot open" in line, line


def test_open_regular_refuses_folders_and_missing_files(tmp_path):
    with pytest.raises(ModelLoadError, match="is a folder"):
        gguf_check.open_regular(tmp_path)
    with pytest.raises(ModelLoadError, match="no such file"):
        gguf_check.open_regular(tmp_path / "missing.gguf")


def test_vocabulary_hashes_are_exact_where_it_matters():
    """Equal strings hash equal wherever they lie; a duplicate is confirmed byte for byte, also
    inside a group of colliding hashes (A, B, A with one hash: the A pair is found, not A/B)."""
    data = b"..abc..xyzabc.xy"
    starts, ends = np.array([2, 7, 10, 14]), np.array([5, 10, 13, 16])  # abc, xyz, abc, xy
    keys = gguf_vocab._string_keys(data, starts, ends)
    assert keys[0] == keys[2] and len({int(k) for k in keys}) == 3
    assert int(keys[0]) == gguf_vocab._hash_bytes(b"abc") and int(keys[3]) == gguf_vocab._hash_bytes(b"xy")
    joined = gguf_vocab._joined_keys(b"ab c xy z", np.array([0, 5]), np.array([2, 7]), np.array([4, 9]))
    assert [int(k) for k in joined] == [gguf_vocab._hash_bytes(b"abc"), gguf_vocab._hash_bytes(b"xyz")]
    forced = np.zeros(3, dtype=np.uint64)  # every key collides
    text = b"AAABBBAAA"
    assert gguf_vocab._first_duplicate(forced, np.sort(forced), text, np.array([0, 3, 6]),
                                       np.array([3, 6, 9])) == (0, 2)
    assert gguf_vocab._first_duplicate(forced, np.sort(forced), b"AAABBBCCC", np.array([0, 3, 6]),
                                       np.array([3, 6, 9])) is None
    # a region longer than one 64 KiB chunk
    big = bytes(range(256)) * 1024 + b"abc"
    far = gguf_vocab._string_keys(big, np.array([0, len(big) - 3]), np.array([3, len(big)]))
    assert int(far[1]) == gguf_vocab._hash_bytes(b"abc") and int(far[0]) == gguf_vocab._hash_bytes(bytes([0, 1, 2]))
