"""qembed-gguf: Qwen3-Embedding models as quantized GGUF files, run through llama.cpp, offline.

Public API::

    from qembed_gguf import Embedder           # texts → float32 vectors (numpy)
    from qembed_gguf import Reranker           # (query, documents) → relevance scores (Qwen3-Reranker)
    from qembed_gguf import convert            # HF checkpoint → GGUF
    from qembed_gguf import read_gguf_info     # what a GGUF file holds, and what it lacks
    from qembed_gguf import registry, errors   # supported models; the error hierarchy
"""

from __future__ import annotations

__version__ = "0.1.0"

from pathlib import Path as _Path  # noqa: E402

from . import _checkout  # noqa: E402

_checkout.install(_Path(__file__).resolve().parent)  # a source checkout: convert/ and models/ at its top

from . import errors, registry  # noqa: E402
from .errors import *  # noqa: E402,F403 - every error class, exactly as errors.__all__ lists them
from .embedder import Embedder  # noqa: E402
from .reranker import Reranker  # noqa: E402
from .fileinfo import GGUFInfo, read_gguf_info  # noqa: E402

from .converter import convert  # noqa: E402  (the subpackage: the repository's convert/ folder)


__all__ = ["__version__", "Embedder", "Reranker", "convert", "read_gguf_info", "GGUFInfo", "errors", "registry",
           *errors.__all__]
