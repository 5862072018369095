"""llama.cpp backend builds: CMakePresets.json → the CMAKE_ARGS that (re)build llama-cpp-python.

CMakePresets.json (repository root, shipped inside the package) is the single source of the
build flags. This module only reads it and composes commands; it imports nothing outside the
standard library, so CI can run it as a plain script before anything is installed::

    python qembed_gguf/backend.py cmake-args cpu-native     # → -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON …

``qembed-gguf backend install --preset cuda-sm86`` prints and runs the pip command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import sys
from pathlib import Path

__all__ = ["Preset", "load_presets", "cmake_args", "install_command", "presets_path", "PresetError"]

LLAMA_CPP_PYTHON_VERSION = "0.3.36"  # the tested version (pyproject.toml pins the range)


try:
    from .errors import PresetError
except ImportError:  # run as a plain script (CI, before installation): the standard library only
    class PresetError(ValueError):  # type: ignore[no-redef]
        """CMakePresets.json is missing or malformed, or a preset is unknown."""


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    display_name: str
    description: str
    cache_variables: dict[str, str]


def presets_path() -> Path:
    """CMakePresets.json: in the package (installed) or at the repository root (checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "CMakePresets.json", here.parent / "CMakePresets.json"):
        if candidate.is_file():
            return candidate
    raise PresetError(f"CMakePresets.json not found next to {here}")


def _cache_value(value) -> str:
    if isinstance(value, dict):  # {"type": "BOOL", "value": "ON"}
        value = value.get("value")
    if isinstance(value, bool):
        return "ON" if value else "OFF"
    if not isinstance(value, (str, int)):
        raise PresetError(f"unsupported cache variable value {value!r}")
    return str(value)


def load_presets(path: Path | None = None) -> dict[str, Preset]:
    """The visible configure presets, with inherited cache variables resolved."""
    path = path or presets_path()
    try:
        data = json.loads(path.read_text("utf-8"))
        raw = {p["name"]: p for p in data["configurePresets"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PresetError(f"{path}: cannot read configure presets ({exc})") from None

    def resolve(name: str, seen: tuple[str, ...] = ()) -> dict[str, str]:
        if name in seen:
            raise PresetError(f"{path}: preset inheritance cycle through {name!r}")
        if name not in raw:
            raise PresetError(f"{path}: unknown preset {name!r}")
        preset = raw[name]
        parents = preset.get("inherits", [])
        variables: dict[str, str] = {}
        for parent in [parents] if isinstance(parents, str) else parents:
            variables.update(resolve(parent, seen + (name,)))
        variables.update({k: _cache_value(v) for k, v in preset.get("cacheVariables", {}).items()})
        return variables

    return {
        name: Preset(name, p.get("displayName", name), p.get("description", ""), resolve(name))
        for name, p in raw.items() if not p.get("hidden")
    }


def get_preset(name: str, path: Path | None = None) -> Preset:
    presets = load_presets(path)
    if name not in presets:
        raise PresetError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    return presets[name]


def cmake_args(preset: Preset) -> list[str]:
    """``-DNAME=VALUE`` arguments, in a stable order (what CMAKE_ARGS should hold)."""
    return [f"-D{k}={v}" for k, v in sorted(preset.cache_variables.items())]


def install_command(preset: Preset, *, version: str = LLAMA_CPP_PYTHON_VERSION,
                    python: str | None = None) -> tuple[dict[str, str], list[str]]:
    """(environment additions, argv) that rebuild llama-cpp-python from source with ``preset``."""
    env = {"CMAKE_ARGS": " ".join(cmake_args(preset)), "FORCE_CMAKE": "1"}
    argv = [python or sys.executable, "-m", "pip", "install", "--force-reinstall", "--no-deps", "--no-cache-dir",
            "--no-binary=llama-cpp-python", f"llama-cpp-python=={version}"]
    return env, argv


def format_command(env: dict[str, str], argv: list[str]) -> str:
    """The command as a user would type it in a POSIX shell."""
    return " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *map(shlex.quote, argv)])


def _main(argv: list[str]) -> int:
    usage = "usage: backend.py (cmake-args PRESET | list)"
    if argv[:1] == ["list"]:
        for p in load_presets().values():
            print(f"{p.name}\t{p.display_name}")
        return 0
    if len(argv) == 2 and argv[0] == "cmake-args":
        try:
            print(" ".join(cmake_args(get_preset(argv[1]))))
        except PresetError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    sys.exit(_main(sys.argv[1:]))
