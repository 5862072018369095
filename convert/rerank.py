"""Which kind of Qwen3 checkpoint this is — Qwen3-Embedding or Qwen3-Reranker — decided, pure.

Both ship as ``Qwen3ForCausalLM``; nothing in config.json tells them apart. In order:

1. ``*ForSequenceClassification`` is refused: such a checkpoint (e.g. a Qwen3-Reranker re-exported
   with a ``score`` head) stores a classifier whose rows are not the lm_head's yes/no rows, and
   llama.cpp's Qwen3 RANK graph (cls.output + softmax over two logits) would score it wrongly.
2. A registry entry the user named (``qwen3-reranker-0.6b``, ``Qwen/Qwen3-Reranker-4B``) says it.
3. Otherwise the names llama.cpp's converter also looks at: the folder / hub repository name and
   config.json's ``_name_or_path`` containing ``qwen3-reranker``, or a README whose heading names
   a Qwen3-Reranker. Anything else is an embedding model, as before.

The README is the weakest hint and the last one consulted (a model card is prose, not a format).
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Mapping

from qembed_gguf.errors import UnsupportedModelError
from qembed_gguf.registry import ModelSpec

__all__ = ["checkpoint_kind", "RERANKER_HINT"]

RERANKER_HINT = "qwen3-reranker"
# a Markdown heading that names the model: "# Qwen3-Reranker-0.6B", "## Qwen3-Reranker"
_README_HEADING = re.compile(r"^[ \t]{0,3}#{1,6}[ \t]*qwen3-reranker", re.IGNORECASE | re.MULTILINE)


def checkpoint_kind(config: Mapping[str, Any], *, names: Iterable[str] = (), readme: str | None = None,
                    spec: ModelSpec | None = None) -> str:
    """``"reranker"`` or ``"embedding"`` for a checkpoint with ``config`` (config.json), known by
    ``names`` (its folder name, hub id …), whose README.md reads ``readme`` (None: none), named
    through the registry entry ``spec`` (None: not named so).

    Raises :class:`UnsupportedModelError` for a sequence-classification checkpoint, and when the
    registry entry and the checkpoint disagree (an embedding model's entry whose checkpoint is named
    a Qwen3-Reranker: the conversion would write the wrong pooling and head). A reranker's entry
    decides for its own repository, whatever the names say.
    """
    archs = config.get("architectures") or []
    archs = [a for a in archs if isinstance(a, str)] if isinstance(archs, list) else []
    classifier = next((a for a in archs if a.lower().endswith("forsequenceclassification")), None)
    if classifier is not None:
        raise UnsupportedModelError(
            f"config.json 'architectures' is {archs!r}: a {classifier} checkpoint has a 'score' classification head, "
            f"not the lm_head whose 'yes'/'no' rows a Qwen3-Reranker GGUF needs (llama.cpp's RANK pooling soft-maxes "
            f"exactly those two logits). Convert the Qwen3ForCausalLM checkpoint the hub ships (Qwen/Qwen3-Reranker-*)")
    hints = [str(n).lower() for n in (*names, config.get("_name_or_path") or "") if n]
    by_name = any(RERANKER_HINT in h for h in hints)
    by_readme = readme is not None and _README_HEADING.search(readme) is not None
    detected = "reranker" if by_name or by_readme else "embedding"
    if spec is None:
        return detected
    if by_name and spec.kind != "reranker":
        raise UnsupportedModelError(f"registry model {spec.name!r} is an {spec.kind} model, but the checkpoint is "
                                    f"named as a Qwen3-Reranker ({', '.join(h for h in hints if RERANKER_HINT in h)})")
    return spec.kind
