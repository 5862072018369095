"""The ``qembed-gguf`` command: a thin click layer over the library, one module per family of
commands (:mod:`.files`, :mod:`.embed`, :mod:`.serve`, :mod:`.gpu`) on the group of :mod:`._common`."""

from __future__ import annotations

from . import embed, files, gpu, serve  # noqa: F401  (each registers its commands on main)
from ._common import main

__all__ = ["main"]
