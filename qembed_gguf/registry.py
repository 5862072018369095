"""The supported models, as data: one ``models/*.toml`` file per model, read into :class:`ModelSpec`.

Two kinds (``kind = "embedding"``, the default, or ``"reranker"``): Qwen3-Embedding and
Qwen3-Reranker share the decoder and differ in what the GGUF adds (pooling, the yes/no head).

The TOML files ship inside the wheel as the data package ``qembed_gguf.models`` (the repository's
top-level ``models/`` folder), next to the bundled checkpoints (``mini``, trained, for the offline demo; ``tiny``, random, for tests).
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
from .layout import KINDS, Qwen3Shape

__all__ = ["ModelSpec", "KINDS", "all_specs", "get_spec", "find_spec", "family_spec", "bundled_dir"]

_MODELS_PACKAGE = "qembed_gguf.models"
_TOML_KEYS = {"hidden": "dim"}  # Qwen3Shape field -> the TOML key that holds it
_POOLING = {"embedding": "last", "reranker": "rank"}  # llama.cpp's pooling of each kind


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What qembed-gguf knows about one Qwen3-Embedding or Qwen3-Reranker model.

    ``hub_id`` names a Hugging Face repository; ``bundled`` (``mini``, ``tiny``) names a
    checkpoint folder shipped inside the package instead. ``kind`` says which of the two the model
    is: an embedding model has a Matryoshka minimum and a query template, a reranker has neither
    but a ``rerank_template`` (the prompt its yes/no head scores, with ``{task}``, ``{query}`` and
    ``{document}``).
    """

    name: str
    shape: Qwen3Shape           # from the TOML's layers, dim (the hidden size), heads, … context keys
    default_task: str
    license: str
    kind: str = "embedding"
    mrl_min_dim: int | None = None      # embedding models only
    query_template: str | None = None   # embedding models only: {task} and {text}
    rerank_template: str | None = None  # rerankers only: {task}, {query} and {document}
    architecture: str = "Qwen3ForCausalLM"
    pooling: str | None = None          # "last" for embedding models, "rank" for rerankers (the default)
    eos_token: str = "<|endoftext|>"
    hub_id: str | None = None
    bundled: str | None = None
    aliases: tuple[str, ...] = ()
    semantic: bool = True
    description: str = ""

    def __post_init__(self) -> None:
        def bad(message: str) -> ModelSpecError:
            return ModelSpecError(f"model spec {self.name!r}: {message}")

        for field in dataclasses.fields(Qwen3Shape):
            value = getattr(self.shape, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                key = _TOML_KEYS.get(field.name, field.name)
                raise bad(f"{key} must be a positive integer, got {value!r}")
        if self.shape.heads % self.shape.kv_heads:
            raise bad(f"heads {self.shape.heads} not a multiple of kv_heads {self.shape.kv_heads}")
        if self.kind not in KINDS:
            raise bad(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        pooling = _POOLING[self.kind]
        if self.pooling is None:
            object.__setattr__(self, "pooling", pooling)
        elif self.pooling != pooling:
            raise bad(f"a {self.kind} model has pooling = {pooling!r}, got {self.pooling!r}")
        if not isinstance(self.default_task, str) or not self.default_task:
            raise bad("default_task must be a non-empty string")
        if self.kind == "embedding":
            if not isinstance(self.mrl_min_dim, int) or isinstance(self.mrl_min_dim, bool) \
                    or not 0 < self.mrl_min_dim <= self.dim:
                raise bad(f"mrl_min_dim {self.mrl_min_dim!r} not in [1, dim={self.dim}]")
            if not isinstance(self.query_template, str) or "{task}" not in self.query_template \
                    or "{text}" not in self.query_template:
                raise bad("query_template must contain {task} and {text}")
            if self.rerank_template is not None:
                raise bad("rerank_template is for rerankers (kind = 'reranker')")
        else:
            for key in ("mrl_min_dim", "query_template"):
                if getattr(self, key) is not None:
                    raise bad(f"{key} is for embedding models; a reranker scores (query, document) pairs and "
                              f"has no vectors")
            template = self.rerank_template
            missing = [p for p in ("{task}", "{query}", "{document}") if not isinstance(template, str) or p not in template]
            if missing:
                raise bad(f"rerank_template must contain {{task}}, {{query}} and {{document}} (lacks {', '.join(missing)})")
        if (self.hub_id is None) == (self.bundled is None):
            raise bad("exactly one of hub_id and bundled must be set")

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
        if self.query_template is None:
            raise ModelSpecError(f"model {self.name!r} is a {self.kind}; it has no query template")
        return self.query_template.format(task=task if task is not None else self.default_task, text=text)

    def rerank_chat_template(self, task: str | None = None) -> str:
        """The reranker's prompt with its instruction filled in (``task`` defaults to
        :attr:`default_task`) and ``{query}`` / ``{document}`` left for each pair: the GGUF's
        ``tokenizer.chat_template.rerank``, as llama.cpp's converter writes it."""
        if self.rerank_template is None:
            raise ModelSpecError(f"model {self.name!r} is a {self.kind}; it has no rerank template")
        return self.rerank_template.replace("{task}", task if task is not None else self.default_task)

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


def family_spec(kind: str = "embedding") -> ModelSpec:
    """A hub model's spec of ``kind``, for the family-wide facts (embedding models: query template,
    default task, MRL minimum; rerankers: rerank template, default task).

    Used for checkpoints that match no registry entry (fine-tunes, local copies); every hub spec
    of a kind agrees on those facts, which is checked here.
    """
    if kind not in KINDS:
        raise ModelSpecError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    hub = [s for s in all_specs() if s.hub_id and s.kind == kind]
    facts = {(s.query_template, s.rerank_template, s.default_task, s.mrl_min_dim) for s in hub}
    if len(facts) != 1:
        raise ModelSpecError(f"{kind} model specs disagree on the family defaults: {sorted(facts, key=repr)}")
    return hub[0]


def bundled_dir(spec: ModelSpec) -> Path:
    """The folder of a checkpoint shipped inside the package (``mini``, ``tiny``)."""
    if spec.bundled is None:
        raise UnknownModelError(f"model {spec.name!r} is not bundled; it comes from the hub as {spec.hub_id!r}")
    path = Path(str(resources.files(_MODELS_PACKAGE).joinpath(spec.bundled)))
    if not (path / "config.json").is_file():
        raise UnknownModelError(f"bundled checkpoint {spec.bundled!r} is missing from the installation ({path})")
    return path
