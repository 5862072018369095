"""What every part of the Ray integration shares: the column names, the defaults, and Ray itself."""

from __future__ import annotations

import importlib

__all__ = ["INSTALL_HINT", "ROW_COLUMN", "ID_COLUMN", "DEFAULT_BATCH_SIZE", "DEFAULT_MAX_RESTARTS",
           "DEFAULT_MAX_TASK_RETRIES", "ray_module"]

INSTALL_HINT = 'qembed_gguf.integrations.ray needs Ray Data: pip install "qembed-gguf[ray]"'
ROW_COLUMN = "row"    # 0-based input position, added to inputs read through the driver
ID_COLUMN = "id"      # the user's ids, kept unchanged
DEFAULT_BATCH_SIZE = 256         # rows per Embedder call, and per block of the inputs read_corpus cuts
DEFAULT_MAX_RESTARTS = -1        # a dead worker is always replaced
DEFAULT_MAX_TASK_RETRIES = 3     # a task (block) whose worker died runs again up to 3 times


def ray_module():
    """The ``ray`` module with Ray Data, or an ImportError that says what to install."""
    try:
        importlib.import_module("pyarrow")  # Ray Data's block format, installed by ray[data]
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray
