"""The distribution's shape: the converter installs as qembed_gguf.converter (no top-level
`convert` or `models` module), data files ship, CMakePresets.json is a valid preset file whose
cpu-native preset is what CI builds llama-cpp-python with."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from qembed_gguf import backend

ROOT = Path(__file__).resolve().parents[1]


def test_no_top_level_convert_module_installed():
    # the installed distribution, not a qembed_gguf.egg-info that a development install left in the checkout
    # (the root is on sys.path when pytest runs from it, and importlib.metadata would find that first)
    site = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    dist = next(iter(importlib.metadata.distributions(name="qembed-gguf", path=site)), None)
    assert dist is not None, f"qembed-gguf is not installed in {site}"
    direct_url = json.loads(dist.read_text("direct_url.json") or "{}")
    if direct_url.get("dir_info", {}).get("editable"):
        pytest.skip("editable install: its file list is the source tree; CI checks a real install")
    files = [str(f) for f in dist.files or []]
    stray = [f for f in files if not f.startswith(("qembed_gguf/", "qembed_gguf-")) and "/bin/" not in f
             and not f.startswith("../")]
    assert stray == [], stray
    assert "qembed_gguf/converter/checkpoint.py" in files
    for bundled in ("tiny-qwen3-embedding", "mini-qwen3-embedding"):
        for name in ("model.safetensors", "tokenizer.json", "config.json", "1_Pooling/config.json"):
            assert f"qembed_gguf/models/{bundled}/{name}" in files, (bundled, name)
    assert "qembed_gguf/CMakePresets.json" in files
    for module in ("server/app.py", "server/service.py", "server/batcher.py", "server/protocol.py",
                   "server/responses.py", "integrations/langchain.py",
                   "integrations/llama_index.py", "integrations/ray/worker.py", "cache.py"):
        assert f"qembed_gguf/{module}" in files, module
    code = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('convert') is None else 1)"
    assert subprocess.run([sys.executable, "-c", code], cwd="/").returncode == 0


def test_the_checkout_imports_as_it_is():
    """From the repository root, the source folder comes first on sys.path: it must import with
    its top-level convert/ and models/ (qembed_gguf/_checkout.py), whatever is installed."""
    code = ("import qembed_gguf, qembed_gguf.converter.checkpoint as c, qembed_gguf.models as m; "
            "from qembed_gguf import registry, backend; "
            "print(qembed_gguf.__file__, c.__file__, m.__file__, registry.get_spec('tiny').bundled, "
            "backend.presets_path(), callable(qembed_gguf.convert))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    init, checkpoint, models, tiny, presets, convert_callable = proc.stdout.split()
    assert Path(init) == ROOT / "qembed_gguf" / "__init__.py" and Path(checkpoint) == ROOT / "convert" / "checkpoint.py"
    assert Path(models) == ROOT / "models" / "__init__.py" and tiny == "tiny-qwen3-embedding"
    assert Path(presets) == ROOT / "CMakePresets.json" and convert_callable == "True"
    assert not (ROOT / "qembed_gguf" / "CMakePresets.json").exists()  # one presets file, no symlink or stub
    proc = subprocess.run([sys.executable, "-m", "qembed_gguf", "--version"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "qembed-gguf" in proc.stdout, proc.stderr


def test_cmake_presets_valid():
    presets = backend.load_presets(ROOT / "CMakePresets.json")
    cuda_archs = ("61", "75", "80", "86", "89", "90", "120")
    assert set(presets) == {"cpu-native", "cuda-native", "vulkan", "metal", *(f"cuda-sm{a}" for a in cuda_archs)}
    assert presets["cpu-native"].cache_variables["GGML_NATIVE"] == "ON"
    assert presets["cpu-native"].cache_variables["LLAVA_BUILD"] == "OFF"
    for arch in cuda_archs:
        assert presets[f"cuda-sm{arch}"].cache_variables["CMAKE_CUDA_ARCHITECTURES"] == arch
        assert presets[f"cuda-sm{arch}"].cache_variables["GGML_CUDA"] == "ON"
    assert presets["cuda-native"].cache_variables["CMAKE_CUDA_ARCHITECTURES"] == "native"
    assert presets["vulkan"].cache_variables["GGML_VULKAN"] == "ON"
    assert presets["metal"].cache_variables["GGML_METAL"] == "ON"
    assert all(p.cache_variables["LLAVA_BUILD"] == "OFF" for p in presets.values())
    if shutil.which("cmake"):
        proc = subprocess.run(["cmake", "--list-presets"], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        for name in presets:
            assert f'"{name}"' in proc.stdout


def test_packaged_presets_are_the_repository_file():
    assert json.loads(backend.presets_path().read_text()) == json.loads((ROOT / "CMakePresets.json").read_text())


def test_backend_script_runs_without_the_package():
    """CI computes CMAKE_ARGS with this before anything is installed."""
    proc = subprocess.run([sys.executable, "-S", str(ROOT / "qembed_gguf" / "backend.py"), "cmake-args", "cpu-native"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON", "-DLLAMA_BUILD_EXAMPLES=OFF",
                                   "-DLLAMA_BUILD_TESTS=OFF", "-DLLAVA_BUILD=OFF"]


def test_llama_cpp_built_native():
    """The installed llama.cpp reports the CPU features the cpu-native preset enables here."""
    llama_cpp = pytest.importorskip("llama_cpp")
    info = llama_cpp.llama_print_system_info().decode()
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2 " in flags:
        assert "AVX2 = 1" in info, info
