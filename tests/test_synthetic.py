"""The bundled demo checkpoint is exactly what tools/make_tiny_model.py regenerates."""

from __future__ import annotations

import filecmp
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bundled_model_regenerates_bit_for_bit(tmp_path, tiny_dir):
    pytest.importorskip("tokenizers")
    fresh = tmp_path / "tiny-qwen3-embedding"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "make_tiny_model.py"), "--out", str(fresh)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(p.relative_to(tiny_dir)) for p in tiny_dir.rglob("*") if p.is_file())
    assert sorted(str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()) == files
    match, mismatch, errors = filecmp.cmpfiles(tiny_dir, fresh, files, shallow=False)
    assert mismatch == [] and errors == []
