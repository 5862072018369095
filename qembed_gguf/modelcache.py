"""Resolve the ``model`` an Embedder is given to a GGUF file, converting a checkpoint once.

A ``.gguf`` path is used as it is. A checkpoint folder, registry name or hub id is converted (by
default to Q8_0) into the cache folder and reused on later calls; the cache key includes the source
and the size and modification time of its weight and config files, so a changed
checkpoint is converted again rather than silently served stale.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

from .errors import ModelLoadError

__all__ = ["default_cache_dir", "resolve_model"]

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$QEMBED_CACHE``, else ``$XDG_CACHE_HOME/qembed-gguf``, else ``~/.cache/qembed-gguf``."""
    if os.environ.get("QEMBED_CACHE"):
        return Path(os.environ["QEMBED_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "qembed-gguf"


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.suffix in (".safetensors", ".json")):
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def resolve_model(model: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str] | None = None,
                  outtype: str = "q6_k", revision: str | None = None) -> Path:
    """The GGUF file for ``model`` (converting a checkpoint into the cache on first use)."""
    path = Path(model).expanduser()
    if path.exists() and not path.is_dir() and not path.is_file():  # a FIFO, a device, a socket
        from .gguf_reader import open_regular

        open_regular(path).close()  # raises, naming what it is
    if path.suffix == ".gguf" or path.is_file():
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such GGUF file")
        return path
    from .converter import convert
    from .converter.source import resolve_source

    source = resolve_source(model, revision=revision)
    key = f"{source.label}-{_fingerprint(source.folder)}"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", key).strip("_")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / f"{safe}-{outtype.upper()}.gguf"
    if target.is_file():
        log.debug("using cached %s", target)
        return target
    log.info("converting %s to %s (once; cached in %s)", source.label, outtype, cache)
    # the converter writes atomically: a concurrent or interrupted run never leaves a partial file
    return convert(model, outtype=outtype, outfile=target, revision=revision, quiet=True, force=True)
