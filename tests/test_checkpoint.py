"""The safetensors reader: values equal the safetensors library's (an independent reader), and
every kind of malformed file is refused with a CheckpointFormatError naming file and offset."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from qembed_gguf.converter.checkpoint import MAX_HEADER_BYTES, Checkpoint, SafetensorsFile
from qembed_gguf.errors import CheckpointFormatError, UnsupportedModelError

safetensors_numpy = pytest.importorskip("safetensors.numpy")
torch = pytest.importorskip("torch")


def _write(path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _valid(tmp_path: Path) -> tuple[Path, dict, bytes]:
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = np.ones(5, dtype=np.float16)
    header = {"a": {"dtype": "F32", "shape": [3, 4], "data_offsets": [0, 48]},
              "b": {"dtype": "F16", "shape": [5], "data_offsets": [48, 58]}}
    return _write(tmp_path / "m.safetensors", header, a.tobytes() + b.tobytes()), header, a.tobytes() + b.tobytes()


@pytest.mark.parametrize("chunk_bytes", [16, 1 << 20])
def test_bf16_rows_equal_torch_upcast(tiny_dir, chunk_bytes):
    """bf16 → float32 without torch, in row chunks, equals torch's own upcast bit for bit."""
    from safetensors.torch import load_file

    st = SafetensorsFile(tiny_dir / "model.safetensors")
    try:
        expected = load_file(tiny_dir / "model.safetensors")
        for name in ("embed_tokens.weight", "layers.1.mlp.down_proj.weight", "norm.weight"):
            ref = st.tensors[name]
            got = np.concatenate(list(st.iter_rows_f32(ref, max_bytes=chunk_bytes)))
            want = expected[name].to(torch.float32).numpy()
            assert got.dtype == np.float32 and got.shape == want.shape
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), name
    finally:
        st.close()


def test_f32_f16_values(tmp_path):
    path, _, _ = _valid(tmp_path)
    expected = safetensors_numpy.load_file(path)
    st = SafetensorsFile(path)
    try:
        for name in ("a", "b"):
            got = np.concatenate(list(st.iter_rows_f32(st.tensors[name])))
            assert np.array_equal(got, expected[name].astype(np.float32))
    finally:
        st.close()


def _expect_error(path: Path, match: str, offset: int | None = None):
    with pytest.raises(CheckpointFormatError, match=match) as info:
        SafetensorsFile(path).close()
    assert info.value.path == path
    assert str(path) in str(info.value)
    if offset is not None:
        assert info.value.offset == offset
    return info.value


def test_truncated_file(tmp_path):
    path, _, _ = _valid(tmp_path)
    raw = path.read_bytes()
    path.write_bytes(raw[:-7])
    _expect_error(path, "truncated")
    path.write_bytes(raw[:5])
    _expect_error(path, "shorter than the 8-byte header", 0)
    path.write_bytes(raw[:20])
    _expect_error(path, "runs past the end", 0)


def test_header_length_cap(tmp_path):
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}")
    _expect_error(path, "exceeds", 0)


def test_bad_header_json(tmp_path):
    path = tmp_path / "bad.safetensors"
    raw = b'{"a": {"dtype": "F32",, }'
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    err = _expect_error(path, "not valid JSON")
    assert err.offset == 8 + raw.index(b",,") + 1


def test_out_of_range_offsets(tmp_path):
    _, header, data = _valid(tmp_path)
    header["b"]["data_offsets"] = [48, 5000]
    header["b"]["shape"] = [(5000 - 48) // 2]
    _expect_error(_write(tmp_path / "x.safetensors", header, data), "run past")


def test_overlapping_offsets(tmp_path):
    _, header, data = _valid(tmp_path)
    header["b"]["data_offsets"] = [40, 50]
    _expect_error(_write(tmp_path / "x.safetensors", header, data), "overlaps")


def test_dtype_shape_mismatch(tmp_path):
    _, header, data = _valid(tmp_path)
    header["a"]["shape"] = [3, 5]
    _expect_error(_write(tmp_path / "x.safetensors", header, data), r"dtype F32 × shape \[3, 5\] is 60 bytes")


@pytest.mark.parametrize("entry, match", [
    ({"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}, "unknown dtype"),
    ({"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}, "non-negative integers"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}, "pair of non-negative|backwards"),
    ("nonsense", "not an object"),
])
def test_malformed_entries(tmp_path, entry, match):
    _expect_error(_write(tmp_path / "x.safetensors", {"t": entry}, b"\0" * 4), match)


def test_unsupported_dtype_named_with_tensor(tmp_path):
    path = _write(tmp_path / "i8.safetensors", {"q": {"dtype": "I8", "shape": [4], "data_offsets": [0, 4]}}, b"\0" * 4)
    st = SafetensorsFile(path)
    try:
        with pytest.raises(UnsupportedModelError, match="'q' has dtype I8"):
            list(st.iter_rows_f32(st.tensors["q"]))
    finally:
        st.close()


def test_pickle_only_folder_refused(tmp_path, tiny_dir):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(UnsupportedModelError, match="pickle.*arbitrary code"):
        Checkpoint(tmp_path)


def test_index_pointing_at_missing_shard(tmp_path, tiny_dir):
    (tmp_path / "config.json").write_text((tiny_dir / "config.json").read_text())
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"norm.weight": "model-00001-of-00002.safetensors"}}))
    with pytest.raises(CheckpointFormatError, match="shard 'model-00001-of-00002.safetensors' named by the index is missing"):
        Checkpoint(tmp_path)
