"""Resolve what the user named (folder, registry name, hub id) to a local checkpoint folder.

Hub ids are fetched with ``huggingface_hub.snapshot_download``, limited to the files conversion
needs (never pickles), honouring ``HF_HUB_OFFLINE`` / the local cache and a ``revision``.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path

from qembed_gguf import registry
from qembed_gguf.errors import CheckpointFormatError, ConversionError, UnknownModelError
from qembed_gguf.registry import ModelSpec

__all__ = ["Source", "resolve_source", "HUB_FILES"]

log = logging.getLogger(__name__)

HUB_FILES = [
    "config.json", "*.safetensors", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
    "modules.json", "config_sentence_transformers.json", "sentence_bert_config.json", "1_Pooling/config.json",
    "README.md",  # the model card: names a Qwen3-Reranker that the registry does not know (rerank.checkpoint_kind)
]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")


@dataclasses.dataclass(frozen=True)
class Source:
    folder: Path
    label: str                 # hub id or folder name, recorded as qembed.source
    spec: ModelSpec | None     # registry entry when the user named one (by name or hub id)


def resolve_source(src: str | Path, *, revision: str | None = None) -> Source:
    path = Path(src).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointFormatError("give the checkpoint folder (with config.json), not a file", path=path)
        return Source(path, path.resolve().name, None)
    spec = registry.find_spec(str(src))
    if spec is not None and spec.bundled is not None:
        return Source(registry.bundled_dir(spec), spec.name, spec)
    repo_id = spec.hub_id if spec is not None else str(src)
    if not _REPO_ID.match(repo_id):
        raise UnknownModelError(f"{src!r} is neither a folder, a registry name nor a hub id (owner/name); "
                                f"known names: {', '.join(s.name for s in registry.all_specs())}")
    return Source(_download(repo_id, revision), repo_id + (f"@{revision}" if revision else ""), spec)


def _download(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    log.info("resolving %s%s with huggingface_hub", repo_id, f"@{revision}" if revision else "")
    try:
        folder = snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES)
    except LocalEntryNotFoundError as exc:
        raise ConversionError(
            f"{repo_id} is not in the local Hugging Face cache and cannot be downloaded (offline: HF_HUB_OFFLINE "
            f"is set or the hub is unreachable). Download it once with network, or pass a local folder. ({exc})"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ConversionError(f"cannot fetch {repo_id} from the hub: {exc}") from None
    return Path(folder)
