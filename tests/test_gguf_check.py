"""The GGUF pre-validator, the integrity seal, and a quick fuzz sample of both file formats.

The long fuzz run (>= 2,000 mutants per format) is ``python tools/fuzz.py``; here a few dozen
mutants of each run in CI so the harness and the guarantees never rot.
"""

from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from qembed_gguf import Embedder, keys
from qembed_gguf.errors import CorruptModelError, IntegrityError, ModelLoadError
from qembed_gguf.gguf_check import check_gguf, read_header, verify_integrity

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("qembed_fuzz", ROOT / "tools" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)


@pytest.fixture(scope="module")
def gguf_file(converted) -> Path:
    return converted("tiny", "q8_0")


def _mutate(src: Path, dst: Path, edit) -> Path:
    data = bytearray(src.read_bytes())
    edit(data, fuzz.gguf_layout(bytes(data)))
    dst.write_bytes(bytes(data))
    return dst


def test_valid_files_pass_and_are_sealed(converted):
    for outtype in ("f16", "q8_0", "q4_k_m"):  # q4_k_m: written by llama.cpp's quantizer, sealed after
        path = converted("tiny", outtype)
        h = check_gguf(path)
        assert h.get("general.architecture") == "qwen3" and len(h.tensors) > 0
        status = verify_integrity(path)
        assert status.sealed and status.ok and len(status.actual) == 64


@pytest.mark.parametrize("case", [
    ("magic", lambda d, lay: d.__setitem__(slice(0, 4), b"GGUX"), "magic", 0),
    ("version", lambda d, lay: struct.pack_into("<I", d, 4, 1), "version", 4),
    ("tensor count", lambda d, lay: struct.pack_into("<Q", d, 8, 2**40), "tensor_count", 8),
    ("kv count", lambda d, lay: struct.pack_into("<Q", d, 16, 2**63), "kv_count", 16),
    ("string length", lambda d, lay: struct.pack_into("<Q", d, lay["strlen"][3], 2**62), None, None),
    ("value type", lambda d, lay: struct.pack_into("<I", d, lay["vtype"][2], 77), None, None),
    ("n_dims", lambda d, lay: struct.pack_into("<I", d, lay["ndims"][0], 7), "n_dims", None),
    ("zero dim", lambda d, lay: struct.pack_into("<Q", d, lay["dim"][0], 0), "shape", None),
    ("tensor type", lambda d, lay: struct.pack_into("<I", d, lay["ttype"][1], 999), "type", None),
    ("misaligned", lambda d, lay: struct.pack_into("<Q", d, lay["toffset"][1],
                                                   struct.unpack_from("<Q", d, lay["toffset"][1])[0] + 4), "offset", None),
    ("overlap", lambda d, lay: struct.pack_into("<Q", d, lay["toffset"][2],
                                                struct.unpack_from("<Q", d, lay["toffset"][1])[0]), "offset", None),
    ("out of bounds", lambda d, lay: struct.pack_into("<Q", d, lay["toffset"][0], 2**40), "offset", None),
], ids=lambda c: c[0])
def test_malformed_headers_name_field_and_offset(gguf_file, tmp_path, case):
    _, edit, field, offset = case
    bad = _mutate(gguf_file, tmp_path / "bad.gguf", edit)
    with pytest.raises(CorruptModelError) as info:
        check_gguf(bad)
    err = info.value
    assert "byte offset" in str(err) and err.offset is not None and str(bad) in str(err)
    if field:
        assert field in err.field
    if offset is not None:
        assert err.offset == offset
    with pytest.raises(ModelLoadError):  # and the Embedder refuses it before llama.cpp sees it
        Embedder(bad)


def test_truncated_file_and_model_level_checks(gguf_file, tmp_path):
    data = gguf_file.read_bytes()
    short = tmp_path / "short.gguf"
    short.write_bytes(data[:-1000])
    with pytest.raises(CorruptModelError, match="runs past the end"):
        check_gguf(short)
    # a structurally valid shape that contradicts the hyperparameters: the last tensor's last dim = 1
    with pytest.raises(CorruptModelError, match="does not match the hyperparameters"):
        check_gguf(_mutate(gguf_file, tmp_path / "dim.gguf",
                           lambda d, lay: struct.pack_into("<Q", d, lay["dim"][-1], 1)))
    for path, match in ((tmp_path, "folder"), (tmp_path / "missing.gguf", "no such file")):
        with pytest.raises(ModelLoadError, match=match):
            check_gguf(path)


def test_integrity_detects_any_changed_byte(gguf_file, tmp_path):
    h = read_header(gguf_file)
    seal_at = h.value_offsets[keys.INTEGRITY]
    data = gguf_file.read_bytes()
    for where in (h.tensors[-1].offset + 5, h.data_offset + 1, seal_at - 40):  # tensor data, data start, header
        m = bytearray(data)
        m[where] ^= 0x10
        bad = tmp_path / f"flip-{where}.gguf"
        bad.write_bytes(bytes(m))
        try:
            check_gguf(bad)
        except CorruptModelError:
            continue  # a header flip may also break the structure: refused either way
        status = verify_integrity(bad)
        assert status.sealed and status.ok is False, where
        with pytest.raises(IntegrityError, match="does not match its seal"):
            Embedder(bad, verify=True)
    with Embedder(gguf_file, verify=True) as e:
        assert e.embed(["ok"]).shape == (1, e.dim)


def test_unsealed_file_is_reported(reference_converted, tmp_path):
    path = reference_converted("tiny", "f16")  # written by llama.cpp's own converter: no seal
    assert verify_integrity(path).sealed is False
    with pytest.raises(IntegrityError, match="no .* seal"):
        Embedder(path, verify=True)
    r = subprocess.run([sys.executable, "-m", "qembed_gguf", "verify", str(path)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 3 and "no integrity seal" in r.stdout


def test_verify_cli(gguf_file, tmp_path):
    ok = subprocess.run([sys.executable, "-m", "qembed_gguf", "verify", str(gguf_file)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert ok.returncode == 0 and "OK" in ok.stdout
    m = bytearray(gguf_file.read_bytes())
    m[-3] ^= 1
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(m))
    r = subprocess.run([sys.executable, "-m", "qembed_gguf", "verify", str(bad)], capture_output=True, text=True,
                       cwd=tmp_path)
    assert r.returncode == 1 and "IntegrityError" in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gguf", "values", "safetensors"])
def test_fuzz_sample(kind, tmp_path):
    """A quick sample of the fuzz run: no crash, no hang, no untyped exception, no NaN or zero
    vectors; GGUF files are refused before llama.cpp sees them."""
    result = fuzz.fuzz(kind, 60, tmp_path / kind, seed=1)
    assert sum(result["outcomes"].values()) == 60
    assert result["bugs"] == [], result["bugs"][:3]
    assert result["outcomes"].get("typed", 0) >= 25  # most mutants are malformed and refused
    if kind != "safetensors":
        assert set(result["stages"]) == {"check"}, result["refused_after_check"][:3]


def test_value_mutants_cover_every_kind(gguf_file):
    """The value catalogue edits every key (edge values, retyped, deleted), adds the keys llama.cpp
    reads, and edits the vocabulary; the files it writes parse, and an unedited image is the file."""
    data = gguf_file.read_bytes()
    image = fuzz.GGUFImage(data)
    assert image.build(image.records) == data
    described = [d for d, _ in fuzz.value_mutations(image)]
    for needle in ("qwen3.attention.layer_norm_rms_epsilon = nan", "qwen3.block_count retyped 4 -> 6",
                   "tokenizer.ggml.pre = 'llama3'", "+qwen3.rope.dimension_count = 32", "token 5 = token 6",
                   "token type of token 0 = 7", "merge 0 = b'ab'", "qwen3.context_length deleted"):
        assert any(d.startswith(needle) for d in described), needle
    a = [m for _, m in fuzz.gguf_value_mutants(data, 30, seed=2)]
    assert a == [m for _, m in fuzz.gguf_value_mutants(data, 30, seed=2)] and len(set(a)) == 30
    for blob in a[:10]:
        assert blob[:4] == b"GGUF"


def test_fuzz_mutants_are_deterministic(gguf_file):
    data = gguf_file.read_bytes()
    a = [m for _, m in fuzz.gguf_mutants(data, 40, seed=3)]
    b = [m for _, m in fuzz.gguf_mutants(data, 40, seed=3)]
    assert a == b and len(a) == 40 and len(set(a)) > 30 and all(m != data for m in a)
