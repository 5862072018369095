"""Importing qembed_gguf from a source checkout, laid out as the repository is.

The repository keeps the converter (``convert/``) and the model specs with the bundled
checkpoints (``models/``) at its top level; a wheel installs them as ``qembed_gguf.converter`` and
``qembed_gguf.models`` (pyproject.toml's ``package-dir``). So that ``python -c "import qembed_gguf"``
(and ``python -m qembed_gguf``, tests, benchmarks) work from the repository root too, without an
install shadowing anything, this finder maps those two names onto the top-level folders when the
package is imported from a checkout. An installed package has them inside and never installs it.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__all__ = ["SUBPACKAGES", "install"]

SUBPACKAGES = {"qembed_gguf.converter": "convert", "qembed_gguf.models": "models"}


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds the subpackages of :data:`SUBPACKAGES` in the checkout's top-level folders."""

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname, path=None, target=None):
        folder = SUBPACKAGES.get(fullname)
        if folder is None:
            return None
        init = self.root / folder / "__init__.py"
        return importlib.util.spec_from_file_location(fullname, init, submodule_search_locations=[str(init.parent)])


def install(package_dir: Path) -> None:
    """Map the subpackages when ``package_dir`` (qembed_gguf/) sits in a checkout; else nothing."""
    if (package_dir / "converter").is_dir():  # installed: the subpackages are inside
        return
    root = package_dir.parent
    if not all((root / folder / "__init__.py").is_file() for folder in SUBPACKAGES.values()):
        return
    if not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.append(_CheckoutFinder(root))
