"""Hub ids go through huggingface_hub for real, exercised offline against a local HF cache laid
out exactly as huggingface_hub writes it (models--owner--name/refs + snapshots)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def hub_cache(tmp_path, tiny_dir) -> Path:
    cache = tmp_path / "hub"
    repo = cache / "models--qembed-test--tiny-embedding"
    for commit, ref in ((COMMIT, "main"), (OTHER, "v2")):
        snap = repo / "snapshots" / commit
        shutil.copytree(tiny_dir, snap)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    # the v2 snapshot carries a different name, so we can tell which revision was used
    (repo / "snapshots" / OTHER / "config.json").write_text(
        (tiny_dir / "config.json").read_text().replace('"tiny-qwen3-embedding"', '"tiny-v2"'))
    return cache


def _cli(args, cache: Path, cwd: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf-home")}
    return subprocess.run([sys.executable, "-m", "qembed_gguf.cli", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


def test_hub_id_offline_from_cache(hub_cache, tmp_path):
    proc = _cli(["convert", "qembed-test/tiny-embedding", "-t", "f16", "-o", "out.gguf", "-q"], hub_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr
    reader = gguf.GGUFReader(tmp_path / "out.gguf")
    assert reader.fields["qembed.source"].contents() == "qembed-test/tiny-embedding"
    assert reader.fields["general.name"].contents() == "tiny-embedding"


def test_revision_is_honoured(hub_cache, tmp_path):
    proc = _cli(["convert", "qembed-test/tiny-embedding", "--revision", "v2", "-o", "v2.gguf", "-q"], hub_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr
    reader = gguf.GGUFReader(tmp_path / "v2.gguf")
    assert reader.fields["qembed.source"].contents() == "qembed-test/tiny-embedding@v2"


def test_not_in_cache_offline_is_a_clear_error(hub_cache, tmp_path):
    proc = _cli(["convert", "Qwen/Qwen3-Embedding-4B", "-t", "q4_k_m"], hub_cache, tmp_path)
    assert proc.returncode == 1
    assert "ConversionError" in proc.stderr and "not in the local Hugging Face cache" in proc.stderr
    assert list(tmp_path.glob("*.gguf")) == []


def test_registry_name_resolves_to_hub_id(hub_cache, tmp_path, monkeypatch):
    """`qwen3-embedding-4b` means the hub repo Qwen/Qwen3-Embedding-4B, with the files conversion needs."""
    from qembed_gguf.converter import source

    seen = {}

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        seen.update(repo_id=repo_id, revision=revision, allow_patterns=allow_patterns)
        return str(tmp_path)

    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    src = source.resolve_source("Qwen3-Embedding-4B")
    assert seen["repo_id"] == "Qwen/Qwen3-Embedding-4B"
    assert src.spec is not None and src.spec.dim == 2560
    assert "*.safetensors" in seen["allow_patterns"]
    assert not any(p.endswith((".bin", ".pt", ".pth")) or p == "*" for p in seen["allow_patterns"])
