"""What the Embedder takes from a GGUF file: dimensions, Matryoshka range, query template, context.

The file's ``qembed.*`` keys (written by the converter) first, the registry's family defaults
where a community file lacks them. Also the file's kind (an embedding model or a Qwen3-Reranker:
each has its own class) and the warnings about what the file lacks.
"""

from __future__ import annotations

import dataclasses
import logging

from . import keys, registry
from .errors import ModelLoadError
from .fileinfo import CLS_OUT, GGUFInfo

__all__ = ["ModelFacts", "require_kind", "log_problems"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelFacts:
    """What the Embedder uses from the file, with the registry as fallback."""

    dim: int
    mrl_min_dim: int
    query_template: str
    default_task: str
    context: int

    @classmethod
    def from_info(cls, info: GGUFInfo) -> "ModelFacts":
        """The facts of a file whose header :func:`~qembed_gguf.fileinfo.read_gguf_info` read."""
        family = registry.family_spec()
        dim = info.dim
        if not isinstance(dim, int) or dim <= 0:
            raise ModelLoadError(f"{info.path}: no valid embedding_length in the GGUF metadata")
        template = info.get(keys.QUERY_TEMPLATE) or family.query_template
        if "{task}" not in template or "{text}" not in template:
            log.warning("%s: qembed.query_template %r lacks {task}/{text}; using the registry's", info.path, template)
            template = family.query_template
        return cls(
            dim=dim,
            mrl_min_dim=min(info.get(keys.MRL_MIN_DIM) or family.mrl_min_dim, dim),
            query_template=template,
            default_task=info.get(keys.DEFAULT_TASK) or family.default_task,
            context=info.arch_key("context_length") or family.context,
        )


def require_spec_kind(model, kind: str) -> None:
    """Refuse, before anything is downloaded or converted, a registry name or hub id the registry
    knows as the other kind (``Embedder("qwen3-reranker-0.6b")``, ``Reranker("qwen3-embedding-8b")``)."""
    spec = registry.find_spec(model) if isinstance(model, str) else None
    if spec is not None and spec.kind != kind:
        use = "qembed_gguf.Reranker" if spec.kind == "reranker" else "qembed_gguf.Embedder"
        raise ModelLoadError(f"{model!r} is {'a Qwen3-Reranker' if spec.kind == 'reranker' else 'an embedding model'}"
                             f" ({spec.name}): use {use}")


def require_kind(info: GGUFInfo, kind: str) -> None:
    """Refuse, with :class:`ModelLoadError`, a file the class reading it as ``kind`` cannot use: a
    Qwen3-Reranker (:attr:`GGUFInfo.kind`) given to the Embedder, whose vectors from it would be
    meaningless; a file without the reranker's yes/no head (``cls.output.weight``) given to the Reranker."""
    if kind == "embedding" and info.kind == "reranker":
        raise ModelLoadError(f"{info.path} is a Qwen3-Reranker (pooling {info.pooling!r}, {CLS_OUT}): use "
                             f"qembed_gguf.Reranker to score documents with it")
    if kind == "reranker" and not any(t.name == CLS_OUT for t in info.tensors):
        raise ModelLoadError(f"{info.path} has no {CLS_OUT} (a reranker's yes/no head): an embedding model; use "
                             f"qembed_gguf.Embedder")


def log_problems(info: GGUFInfo, *, kind: str = "embedding") -> None:
    """One warning per :meth:`GGUFInfo.problems` entry, saying whether it is corrected at run time
    (for a reranker, ``kind="reranker"``, by the Reranker's own prompt and yes/no head)."""
    fix = ("pooling LAST forced, <|endoftext|> appended, no BOS" if kind == "embedding" else
           "the prompt template applied as tokens, nothing appended, no BOS, the yes/no head applied in numpy")
    for problem in info.problems():
        if info.corrected_at_run_time(problem):
            log.warning("%s: %s — corrected at run time (%s)", info.path.name, problem, fix)
        else:
            log.warning("%s: %s — NOT corrected: llama.cpp tokenizes with the file's pre-tokenizer, so token "
                        "ids (and vectors) may differ from the official tokenizer's; convert the checkpoint "
                        "with qembed-gguf convert", info.path.name, problem)
