"""Probing the backend and devices (`doctor`), the preset recommendation, `plan` on the command
line, and n_gpu_layers="auto" on this (CPU-only) build."""

from __future__ import annotations

import ctypes.util
import importlib.metadata
import json
import logging
import platform

import numpy as np
import pytest
from click.testing import CliRunner

from qembed_gguf import Embedder, backend, devices
from qembed_gguf.cli import main
from qembed_gguf.devices import NvidiaGpu, recommend_preset
from qembed_gguf.errors import InputError

PRESETS = backend.load_presets()
CPU_ONLY = not devices.gpu_offload_supported()


def gpu(cc, name="GPU"):
    return NvidiaGpu(0, name, cc, 4 << 30, 3 << 30)


@pytest.mark.parametrize("nvidia, system, machine, vulkan, expected", [
    ([gpu((8, 6), "NVIDIA GeForce RTX 3060")], "Linux", "x86_64", False, "cuda-sm86"),
    ([gpu((7, 5), "GTX 1650")], "Windows", "AMD64", True, "cuda-sm75"),
    ([gpu((6, 1), "GTX 1050 Ti")], "Linux", "x86_64", False, "cuda-sm61"),
    ([gpu((9, 0), "H200")], "Linux", "x86_64", False, "cuda-sm90"),
    ([gpu((8, 7), "Jetson Orin")], "Linux", "aarch64", False, "cuda-native"),  # no sm87 preset
    ([gpu((8, 9)), gpu((7, 5))], "Linux", "x86_64", False, "cuda-sm75"),       # mixed: the lowest card
    ([], "Darwin", "arm64", False, "metal"),
    ([], "Linux", "x86_64", True, "vulkan"),
    ([], "Linux", "x86_64", False, "cpu-native"),
    ([], "Darwin", "x86_64", False, "cpu-native"),
])
def test_recommend_preset(nvidia, system, machine, vulkan, expected):
    name, why = recommend_preset(PRESETS, nvidia=nvidia, system=system, machine=machine, vulkan_loader=vulkan)
    assert name == expected and name in PRESETS and why


def test_probes_on_this_build():
    devs = devices.backend_devices()
    assert any(d.kind == "cpu" and d.backend == "CPU" for d in devs), devs
    if CPU_ONLY:
        assert devices.gpu_free_bytes(devs) is None
        assert not any(d.kind in ("gpu", "igpu") for d in devs)
    # the CPU features reported are the ones the build was compiled with; on x86 at least SSE3
    features = devices.cpu_features()
    if platform.machine() in ("x86_64", "AMD64"):
        assert features.get("SSE3") == "1"
    gpus, driver = devices.nvidia_gpus()
    if ctypes.util.find_library("nvidia-ml") is None:  # no NVIDIA driver: nothing, not an exception
        assert (gpus, driver) == ([], None)
    else:  # a driver: every GPU it lists has a name, a compute capability and memory
        assert driver and all(g.name and g.compute_capability[0] >= 3 and 0 < g.free <= g.total for g in gpus)


def test_gpu_free_bytes_sums_gpus():
    mk = lambda kind, free: devices.BackendDevice("CUDA", "x", "", kind, free, 8 << 30)  # noqa: E731
    assert devices.gpu_free_bytes([mk("cpu", 1 << 30), mk("gpu", 3 << 30), mk("gpu", 2 << 30)]) == 5 << 30
    assert devices.gpu_free_bytes([mk("cpu", 1 << 30)]) is None
    assert devices.gpu_free_bytes([mk("gpu", 0)]) is None


def test_doctor_cli():
    """What doctor prints is what the probes find, each checked against its own source."""
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 0, result.output
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in result.output.splitlines()
             if ":" in line}
    assert f"llama-cpp-python {importlib.metadata.version('llama-cpp-python')}" in lines["versions"]
    assert f"python {platform.python_version()}" in lines["versions"]
    found = devices.backend_devices()
    assert lines["backends"].startswith(", ".join(dict.fromkeys(d.backend for d in found)) + "; GPU offload ")
    assert ("NOT supported" in lines["backends"]) == CPU_ONLY
    flags = {k for k, v in devices.cpu_features().items() if v == "1"}
    assert set(lines["CPU"].split()) == flags
    gpus, _ = devices.nvidia_gpus()
    expected, _ = recommend_preset(PRESETS, nvidia=gpus, system=platform.system(), machine=platform.machine(),
                                   vulkan_loader=ctypes.util.find_library("vulkan") is not None)
    assert lines["preset"].split()[0] == expected
    assert lines["install"] == f"qembed-gguf backend install --preset {expected}"


def test_plan_cli(converted):
    runner = CliRunner()
    path = str(converted("tiny", "q8_0"))
    text = runner.invoke(main, ["plan", path, "--vram", "1GB", "--ctx", "2048"])
    assert text.exit_code == 0, text.output
    assert "n_gpu_layers = 3: everything fits" in text.output  # 2 blocks + output
    as_json = runner.invoke(main, ["plan", path, "--vram", "1GB", "--ctx", "2048", "--json"])
    data = json.loads(as_json.output)
    assert data["n_gpu_layers"] == 3 and data["fits_fully"] and data["gpu"]["total"] <= 1 << 30
    tight = json.loads(runner.invoke(main, ["plan", path, "--vram", "330MiB", "--ctx", "2048", "--json"]).output)
    assert tight["n_gpu_layers"] < 3  # 300 MiB of overhead +5% leave room for part of it only
    name = runner.invoke(main, ["plan", "qwen3-embedding-4b", "--quant", "q4_k_m", "--vram", "4GB"])
    assert "n_gpu_layers = 37" in name.output and "predicted" in name.output
    table = runner.invoke(main, ["plan", "--table"])
    assert table.exit_code == 0 and table.output.count("\n") == 2 + 27


@pytest.mark.parametrize("args, message", [
    (["plan"], "MODEL is required"),
    (["plan", "qwen3-embedding-4b", "--vram", "4GB"], "needs --quant"),
    (["plan", "qwen3-embedding-4b", "--quant", "q3_k_m", "--vram", "4GB"], "no type prediction"),
    (["plan", "qwen3-embedding-4b", "--quant", "q4_k_m", "--vram", "four"], "memory size"),
    (["plan", "no-such-model", "--quant", "q4_k_m", "--vram", "4GB"], "no-such-model"),
    (["embed", "tiny", "in.txt", "-o", "x.npy", "--n-gpu-layers", "most"], "neither an integer nor 'auto'"),
])
def test_plan_cli_errors(args, message):
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0 and message in result.output, result.output


@pytest.mark.skipif(not CPU_ONLY, reason="checks the message of a CPU-only build")
def test_plan_cli_without_vram_on_a_cpu_build(converted):
    result = CliRunner().invoke(main, ["plan", str(converted("tiny", "q8_0"))])
    assert result.exit_code == 2 and "pass --vram" in result.output


@pytest.mark.skipif(not CPU_ONLY, reason="a CPU-only llama.cpp build")
def test_auto_on_a_cpu_build_runs_on_the_cpu_with_one_log_line(converted, caplog):
    path = converted("tiny", "q8_0")
    texts = ["GPU offload", "runs on the CPU here", ""]
    with Embedder(path) as plain:
        expected = plain.embed(texts)
    with caplog.at_level(logging.INFO, logger="qembed_gguf"):
        with Embedder(path, n_gpu_layers="auto", vram_budget="4GB") as e:
            got = e.embed(texts)
            assert e.n_gpu_layers == 0 and e.gpu_plan is None
    lines = [r for r in caplog.records if "n_gpu_layers" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "no GPU backend" in lines[0].getMessage()
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kwargs", [dict(n_gpu_layers="all"), dict(n_gpu_layers=2.5),
                                    dict(n_gpu_layers=10, vram_budget="4GB"),
                                    dict(n_gpu_layers="auto", vram_budget="four gigs")])
def test_bad_gpu_arguments_fail_before_loading(kwargs, tmp_path):
    # the model does not even exist: the arguments are refused first
    with pytest.raises(InputError):
        Embedder(tmp_path / "missing.gguf", **kwargs)
