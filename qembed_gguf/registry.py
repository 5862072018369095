"""The supported models, as data: one ``models/*.toml`` file per model, read into :class:`ModelSpec`.

The TOML files ship inside the wheel as the data package ``qembed_gguf.models`` (the repository's
top-level ``models/`` folder), next to the tiny bundled checkpoint used by the offline demo.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

from .errors import ModelSpecError, UnknownModelError
from .layout import Qwen3Shape

__all__ = ["ModelSpec", "all_specs", "get_spec", "find_spec", "family_spec", "bundled_dir"]

_MODELS_PACKAGE = "qembed_gguf.models"
_TOML_KEYS = {"hidden": "dim"}  # Qwen3Shape field -> the TOML key that holds it


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What qembed-gguf knows about one Qwen3-Embedding model.

    ``hub_id`` names a Hugging Face repository; ``bundled`` (for the tiny demo model) names a
    checkpoint folder shipped inside the package instead.
    """

    name: str
    shape: Qwen3Shape           # from the TOML's layers, dim (the hidden size), heads, … context keys
    mrl_min_dim: int
    query_template: str
    default_task: str
    license: str
    architecture: str = "Qwen3ForCausalLM"
    pooling: str = "last"
    eos_token: str = "<|endoftext|>"
    hub_id: str | None = None
    bundled: str | None = None
    aliases: tuple[str, ...] = ()
    semantic: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(Qwen3Shape):
            value = getattr(self.shape, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                key = _TOML_KEYS.get(field.name, field.name)
                raise ModelSpecError(f"model spec {self.name!r}: {key} must be a positive integer, got {value!r}")
        if not 0 < self.mrl_min_dim <= self.dim:
            raise ModelSpecError(f"model spec {self.name!r}: mrl_min_dim {self.mrl_min_dim} not in [1, dim={self.dim}]")
        if self.shape.heads % self.shape.kv_heads:
            raise ModelSpecError(f"model spec {self.name!r}: heads {self.shape.heads} not a multiple of kv_heads "
                                 f"{self.shape.kv_heads}")
        if "{task}" not in self.query_template or "{text}" not in self.query_template:
            raise ModelSpecError(f"model spec {self.name!r}: query_template must contain {{task}} and {{text}}")
        if self.pooling != "last":
            raise ModelSpecError(f"model spec {self.name!r}: only pooling = 'last' is supported, got {self.pooling!r}")
        if (self.hub_id is None) == (self.bundled is None):
            raise ModelSpecError(f"model spec {self.name!r}: exactly one of hub_id and bundled must be set")

    @property
    def dim(self) -> int:
        """The full embedding dimension (the hidden size)."""
        return self.shape.hidden

    @property
    def names(self) -> tuple[str, ...]:
        """Every name this model answers to (case-insensitive)."""
        extra = (self.hub_id,) if self.hub_id else ()
        return (self.name, *self.aliases, *extra)

    def format_query(self, text: str, task: str | None = None) -> str:
        """Apply the query instruction template (``task`` defaults to :attr:`default_task`)."""
        return self.query_template.format(task=task if task is not None else self.default_task, text=text)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "<mapping>") -> "ModelSpec":
        """A spec from a TOML file's flat keys (the shape's among them, ``dim`` for the hidden size)."""
        shape_keys = {_TOML_KEYS.get(f.name, f.name): f.name for f in dataclasses.fields(Qwen3Shape)}
        known = ({f.name for f in dataclasses.fields(cls)} - {"shape"}) | set(shape_keys)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelSpecError(f"{source}: unknown key(s) {', '.join(unknown)}")
        kwargs = {k: v for k, v in data.items() if k not in shape_keys}
        missing = sorted(k for k in shape_keys if k not in data and k != "context")
        if missing:
            raise ModelSpecError(f"{source}: missing key(s) {', '.join(missing)}")
        kwargs["shape"] = Qwen3Shape(**{shape_keys[k]: v for k, v in data.items() if k in shape_keys})
        if "aliases" in kwargs:
            kwargs["aliases"] = tuple(kwargs["aliases"])
        try:
            return cls(**kwargs)
        except TypeError as exc:  # a missing required key
            raise ModelSpecError(f"{source}: {exc}") from None


@functools.lru_cache(maxsize=1)
def all_specs() -> tuple[ModelSpec, ...]:
    """Every model spec shipped with the package, sorted by name."""
    specs = []
    for entry in resources.files(_MODELS_PACKAGE).iterdir():
        if entry.name.endswith(".toml"):
            with entry.open("rb") as fh:
                data = tomllib.load(fh)
            specs.append(ModelSpec.from_mapping(data, source=f"models/{entry.name}"))
    return tuple(sorted(specs, key=lambda s: s.name))


def find_spec(name: str) -> ModelSpec | None:
    """The spec whose name, alias or hub id equals ``name`` (case-insensitive), or None."""
    wanted = name.strip().lower()
    for spec in all_specs():
        if wanted in (n.lower() for n in spec.names):
            return spec
    return None


def get_spec(name: str) -> ModelSpec:
    """Like :func:`find_spec`, but raise :class:`UnknownModelError` listing the known names."""
    spec = find_spec(name)
    if spec is None:
        known = ", ".join(s.name for s in all_specs())
        raise UnknownModelError(f"unknown model {name!r}; known models: {known}")
    return spec


def family_spec() -> ModelSpec:
    """A hub model's spec, for the family-wide facts (query template, default task, MRL minimum).

    Used for checkpoints that match no registry entry (fine-tunes, local copies); every hub spec
    agrees on those facts, which is checked here.
    """
    hub = [s for s in all_specs() if s.hub_id]
    facts = {(s.query_template, s.default_task, s.mrl_min_dim) for s in hub}
    if len(facts) != 1:
        raise ModelSpecError(f"model specs disagree on the family defaults: {sorted(facts)}")
    return hub[0]


def bundled_dir(spec: ModelSpec) -> Path:
    """The folder of a checkpoint shipped inside the package (the tiny demo model)."""
    if spec.bundled is None:
        raise UnknownModelError(f"model {spec.name!r} is not bundled; it comes from the hub as {spec.hub_id!r}")
    path = Path(str(resources.files(_MODELS_PACKAGE).joinpath(spec.bundled)))
    if not (path / "config.json").is_file():
        raise UnknownModelError(f"bundled checkpoint {spec.bundled!r} is missing from the installation ({path})")
    return path
