"""Build step pyproject.toml cannot express: the repository's CMakePresets.json (top level, where
CMake and `cmake --list-presets` expect it) is copied into the built package, so that
`qembed-gguf backend` finds the same presets in a wheel. Everything else is in pyproject.toml."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildWithPresets(build_py):
    """build_py, plus CMakePresets.json into the package (an editable install reads the checkout's)."""

    def _target(self):
        return os.path.join(self.build_lib, "qembed_gguf", "CMakePresets.json")

    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.mkpath(os.path.dirname(self._target()))
            self.copy_file("CMakePresets.json", self._target(), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        extra = [] if getattr(self, "editable_mode", False) else [self._target()]
        return [*super().get_outputs(include_bytecode), *extra]


setup(cmdclass={"build_py": BuildWithPresets})
