"""What this machine and this llama.cpp build can run on: backends, devices, free VRAM, CPU features.

Everything here only *asks*: llama.cpp's device registry (``ggml_backend_dev_*`` in the libggml
that llama-cpp-python loaded, so it reflects ``LLAMA_CPP_LIB_PATH`` too), NVIDIA's management
library (NVML, ``libnvidia-ml``, present wherever the NVIDIA driver is), and the build's
``llama_print_system_info``. Each probe returns an empty answer instead of raising when its
library is absent. :func:`recommend_preset` (pure) turns the answers into a CMakePresets.json
preset; ``qembed-gguf doctor`` prints it all.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Mapping

from .errors import InputError

__all__ = ["usable_cpus", "split_threads", "CPU_SHARING", "BackendDevice", "NvidiaGpu", "Toolchain", "Diagnosis",
           "backend_devices", "gpu_free_bytes", "gpu_offload_supported", "nvidia_gpus", "cpu_features", "toolchain",
           "recommend_preset", "diagnose"]

log = logging.getLogger(__name__)

_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel", 4: "meta"}  # enum ggml_backend_dev_type


@dataclasses.dataclass(frozen=True)
class BackendDevice:
    """A device llama.cpp's registry knows (``backend``: CPU, CUDA, Vulkan, Metal …)."""

    backend: str
    name: str
    description: str
    kind: str          # cpu / gpu / igpu / accel
    free: int          # bytes, as the backend reports them (0 when it does not say)
    total: int


@dataclasses.dataclass(frozen=True)
class NvidiaGpu:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total: int
    free: int


@dataclasses.dataclass(frozen=True)
class Toolchain:
    cmake: str | None      # version, or None when not on PATH
    nvcc: str | None       # CUDA toolkit release, or None
    compiler: str | None   # the C++ compiler found on PATH


def _llama_lib_dir() -> Path | None:
    try:
        import llama_cpp.llama_cpp as bindings
        return Path(bindings._lib._name).resolve().parent
    except Exception:  # noqa: BLE001 - a probe: absence is an answer
        return None


def load_llama_library(stem: str, functions) -> ctypes.CDLL | None:
    """A ggml library (``ggml``, ``ggml-base``) from llama-cpp-python's folder, with ``functions``
    ((name, restype, argtypes) triples) typed; None when it or any function is absent. dlopen
    dedups by file, so this is the very library llama-cpp-python loaded."""
    folder = _llama_lib_dir()
    if folder is None:
        return None
    names = {"win32": [f"{stem}.dll"], "darwin": [f"lib{stem}.dylib"]}.get(
        sys.platform, [f"lib{stem}.so", f"lib{stem}.so.0"])
    for name in names:
        path = folder / name
        if path.exists():
            try:
                lib = ctypes.CDLL(str(path))
            except OSError:
                continue
            for fn, res, args in functions:
                f = getattr(lib, fn, None)
                if f is None:
                    return None
                f.restype, f.argtypes = res, args
            return lib
    return None


def _ggml():
    """The libggml that llama-cpp-python loaded, with the device-registry functions."""
    p, s = ctypes.c_void_p, ctypes.c_size_t
    return load_llama_library("ggml", (
        ("ggml_backend_dev_count", s, []), ("ggml_backend_dev_get", p, [s]),
        ("ggml_backend_dev_name", ctypes.c_char_p, [p]), ("ggml_backend_dev_description", ctypes.c_char_p, [p]),
        ("ggml_backend_dev_type", ctypes.c_int, [p]),
        ("ggml_backend_dev_memory", None, [p, ctypes.POINTER(s), ctypes.POINTER(s)]),
        ("ggml_backend_dev_backend_reg", p, [p]), ("ggml_backend_reg_name", ctypes.c_char_p, [p])))


def backend_devices() -> list[BackendDevice]:
    """Every device in llama.cpp's registry, with the memory its backend reports."""
    lib = _ggml()
    if lib is None:
        return []
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        reg = lib.ggml_backend_dev_backend_reg(dev)
        devices.append(BackendDevice(
            backend=(lib.ggml_backend_reg_name(reg) or b"?").decode(errors="replace"),
            name=(lib.ggml_backend_dev_name(dev) or b"?").decode(errors="replace"),
            description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
            kind=_DEVICE_KINDS.get(lib.ggml_backend_dev_type(dev), "other"),
            free=int(free.value), total=int(total.value)))
    return devices


def gpu_offload_supported() -> bool:
    try:
        import llama_cpp
        return bool(llama_cpp.llama_supports_gpu_offload())
    except Exception:  # noqa: BLE001
        return False


def gpu_free_bytes(devices: Iterable[BackendDevice] | None = None) -> int | None:
    """Free memory over the GPUs llama.cpp would offload to (it splits layers across all of them),
    or None when no GPU reports any."""
    gpus = [d for d in (backend_devices() if devices is None else devices) if d.kind in ("gpu", "igpu")]
    free = sum(d.free for d in gpus)
    return free if gpus and free > 0 else None


class _NvmlMemory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


def nvidia_gpus() -> tuple[list[NvidiaGpu], str | None]:
    """NVIDIA GPUs and the driver version, from NVML; ``([], None)`` without an NVIDIA driver."""
    names = ["nvml.dll"] if sys.platform == "win32" else ["libnvidia-ml.so.1", "libnvidia-ml.so"]
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None or lib.nvmlInit_v2() != 0:
        return [], None
    try:
        buf = ctypes.create_string_buffer(96)
        driver = buf.value.decode() if lib.nvmlSystemGetDriverVersion(buf, 96) == 0 else None
        count = ctypes.c_uint(0)
        if lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            return [], driver
        gpus = []
        for i in range(count.value):
            handle = ctypes.c_void_p()
            if lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(handle)) != 0:
                continue
            name = ctypes.create_string_buffer(96)
            lib.nvmlDeviceGetName(handle, name, 96)
            mem = _NvmlMemory()
            lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem))
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            lib.nvmlDeviceGetCudaComputeCapability(handle, ctypes.byref(major), ctypes.byref(minor))
            gpus.append(NvidiaGpu(i, name.value.decode(errors="replace"), (major.value, minor.value),
                                  int(mem.total), int(mem.free)))
        return gpus, driver
    finally:
        lib.nvmlShutdown()


def cpu_features() -> dict[str, str]:
    """The build's CPU feature flags (``AVX2 = 1`` …) from ``llama_print_system_info``."""
    try:
        import llama_cpp
        text = llama_cpp.llama_print_system_info().decode(errors="replace")
    except Exception:  # noqa: BLE001
        return {}
    return dict(re.findall(r"([A-Z][A-Z0-9_]*) = (\w+)", text))


def _version(argv: list[str], pattern: str) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(pattern, out)
    return m.group(1) if m else "?"


def toolchain() -> Toolchain:
    """What a source build of llama-cpp-python needs on PATH."""
    compiler = next((c for c in ("c++", "g++", "clang++", "cl") if shutil.which(c)), None)
    return Toolchain(cmake=_version(["cmake", "--version"], r"cmake version (\S+)"),
                     nvcc=_version(["nvcc", "--version"], r"release (\d+\.\d+)"), compiler=compiler)


def recommend_preset(presets: Mapping[str, object], *, nvidia: list[NvidiaGpu], system: str, machine: str,
                     vulkan_loader: bool) -> tuple[str, str]:
    """(preset name, why) for this machine. Pure.

    NVIDIA GPU: the ``cuda-smXY`` preset of its compute capability (the lowest card's when mixed),
    else ``cuda-native`` (CMake detects the architecture at build time). Apple Silicon: ``metal``.
    Otherwise the CPU build, or ``vulkan`` when a Vulkan loader is present (AMD/Intel GPUs).
    """
    if nvidia:
        gpu = min(nvidia, key=lambda g: g.compute_capability)
        major, minor = gpu.compute_capability
        exact = f"cuda-sm{major}{minor}"
        if exact in presets:
            return exact, f"{gpu.name} has compute capability {major}.{minor}"
        if "cuda-native" in presets:
            return "cuda-native", (f"{gpu.name} has compute capability {major}.{minor}, which no preset names; "
                                   f"cuda-native builds for the GPUs of the build machine")
    if system == "Darwin" and machine in ("arm64", "aarch64") and "metal" in presets:
        return "metal", "Apple Silicon: Metal"
    if vulkan_loader and "vulkan" in presets:
        return "vulkan", "no NVIDIA GPU, but a Vulkan loader is installed (AMD/Intel GPUs; needs the Vulkan SDK to build)"
    return "cpu-native", "no GPU found: the CPU build tuned to this machine"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    versions: dict[str, str]
    library: str | None
    lib_path_env: str | None
    backends: list[str]
    devices: list[BackendDevice]
    offload: bool
    cpu: dict[str, str]
    nvidia: list[NvidiaGpu]
    driver: str | None
    tools: Toolchain
    preset: str
    preset_reason: str
    warnings: list[str]


def diagnose() -> Diagnosis:
    """Probe everything :func:`qembed_gguf.report.render_doctor` prints."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__, backend

    versions = {"qembed-gguf": __version__, "python": platform.python_version()}
    for dist in ("llama-cpp-python", "gguf", "numpy"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "not installed"
    devices = backend_devices()
    backends = list(dict.fromkeys(d.backend for d in devices))
    offload = gpu_offload_supported()
    gpus, driver = nvidia_gpus()
    presets = backend.load_presets()
    vulkan = ctypes.util.find_library("vulkan") is not None
    preset, why = recommend_preset(presets, nvidia=gpus, system=platform.system(), machine=platform.machine(),
                                   vulkan_loader=vulkan)
    tools = toolchain()
    warnings = []
    if versions["llama-cpp-python"] not in ("not installed", backend.LLAMA_CPP_PYTHON_VERSION):
        warnings.append(f"llama-cpp-python {versions['llama-cpp-python']} is not the tested "
                        f"{backend.LLAMA_CPP_PYTHON_VERSION}")
    if gpus and not offload:
        warnings.append("an NVIDIA GPU is present but this llama.cpp build has no GPU backend: n_gpu_layers does "
                        f"nothing until you install the {preset} build")
    if preset.startswith("cuda") and not offload and tools.nvcc is None:
        warnings.append("nvcc (the CUDA toolkit) is not on PATH: the CUDA build needs it (CUDA 12.x)")
    if tools.cmake is None or tools.compiler is None:
        warnings.append("a source build needs cmake and a C++ compiler on PATH")
    lib_dir = _llama_lib_dir()
    return Diagnosis(versions=versions, library=str(lib_dir) if lib_dir else None,
                     lib_path_env=os.environ.get("LLAMA_CPP_LIB_PATH"), backends=backends, devices=devices,
                     offload=offload, cpu=cpu_features(), nvidia=gpus, driver=driver, tools=tools, preset=preset,
                     preset_reason=why, warnings=warnings)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's limit, taskset), else all."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


CPU_SHARING = ("split", "time")  # how the models of one server share the CPU (qembed_gguf.server.cpu)


def split_threads(total: int, n_models: int) -> list[int]:
    """``total`` CPU threads shared out among ``n_models`` models, as evenly as possible (the first
    ones get the remainder), each at least 1 (more models than threads: each gets 1)."""
    if isinstance(total, bool) or not isinstance(total, int) or total < 1:
        raise InputError(f"the thread count to split must be an integer >= 1, got {total!r}")
    if isinstance(n_models, bool) or not isinstance(n_models, int) or n_models < 1:
        raise InputError(f"the number of models must be an integer >= 1, got {n_models!r}")
    base, extra = divmod(total, n_models)
    return [max(1, base + (k < extra)) for k in range(n_models)]
