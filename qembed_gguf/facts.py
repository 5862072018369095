"""What the Embedder takes from a GGUF file: dimensions, Matryoshka range, query template, context.

The file's ``qembed.*`` keys (written by the converter) first, the registry's family defaults
where a community file lacks them.
"""

from __future__ import annotations

import dataclasses
import logging

from . import keys, registry
from .errors import ModelLoadError
from .fileinfo import GGUFInfo

__all__ = ["ModelFacts"]

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
