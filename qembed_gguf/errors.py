"""The one exception hierarchy of qembed-gguf.

Every error the library raises on purpose is a :class:`QembedError`. Each concrete class also
subclasses the builtin that matches its meaning, so that callers' existing ``except ValueError`` /
``except FileExistsError`` clauses keep working::

    QembedError
    ├── ConversionError(ValueError)          the checkpoint cannot become a correct GGUF
    │   ├── CheckpointFormatError            a safetensors/config/tokenizer file is malformed
    │   ├── UnsupportedModelError            not a Qwen3 (embedding) checkpoint, or a pickle
    │   ├── TensorMismatchError              unknown, missing or wrongly shaped tensor
    │   └── CalibrationError                 no importance matrix: bad corpus or imatrix file, wrong type
    ├── OutputExistsError(FileExistsError)   refusing to overwrite without ``force``
    ├── ModelLoadError(OSError)              a GGUF cannot be opened / read / loaded
    │   ├── CorruptModelError                the GGUF header is malformed (field + byte offset)
    │   └── IntegrityError                   the file does not match its integrity seal
    ├── UnknownModelError(LookupError)       a name is not in the registry
    ├── ModelSpecError(ValueError)           a model spec (models/*.toml) is malformed
    ├── PresetError(ValueError)              CMakePresets.json is missing or malformed, or a preset unknown
    ├── BackendError(RuntimeError)           llama.cpp / llama-cpp-python cannot do what was asked
    ├── CacheError(OSError)                  an embedding cache cannot be opened or reached
    └── InputError(ValueError)               bad user input
        ├── InputTypeError(TypeError)        an input or argument of the wrong type
        ├── InputTooLongError                an input exceeds ``max_tokens`` with truncate=False
        └── InvalidTextError                 an input is not encodable text (a lone surrogate)

Messages always name *where* the problem is (a file, a tensor, a key, a byte offset, an input
index), and the same facts are available as attributes for programs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "QembedError",
    "ConversionError",
    "CheckpointFormatError",
    "UnsupportedModelError",
    "TensorMismatchError",
    "CalibrationError",
    "OutputExistsError",
    "ModelLoadError",
    "CorruptModelError",
    "IntegrityError",
    "UnknownModelError",
    "ModelSpecError",
    "PresetError",
    "BackendError",
    "CacheError",
    "InputError",
    "InputTypeError",
    "InputTooLongError",
    "InvalidTextError",
]


class QembedError(Exception):
    """Base class of every error raised on purpose by qembed-gguf.

    Errors pickle with their message and attributes (``path``, ``offset``, ``index`` …) although
    several take keyword-only arguments, so they cross process boundaries (Ray workers,
    multiprocessing) as themselves.
    """

    def __init__(self, *args):
        super().__init__(*args)
        self.message = str(args[0]) if args else ""
        """The message as raised (frameworks such as Ray Data append to ``args``; this stays)."""

    def __reduce__(self):
        return _restore, (type(self), self.args, dict(self.__dict__))


def _restore(cls: type, args: tuple, state: dict) -> QembedError:
    err = cls.__new__(cls, *args)  # no __init__: the message is already formatted
    err.args = args
    err.__dict__.update(state)
    return err


class ConversionError(QembedError, ValueError):
    """A checkpoint cannot be converted into a correct GGUF file."""


class CheckpointFormatError(ConversionError):
    """A checkpoint file (safetensors, config.json, tokenizer.json …) is malformed.

    ``path`` is the offending file and ``offset`` the byte offset where it went wrong, if known.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, offset: int | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if offset is not None:
            where.append(f"byte offset {offset}")
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.path = Path(path) if path is not None else None
        self.offset = offset


class UnsupportedModelError(ConversionError):
    """The checkpoint is not something qembed-gguf converts (architecture, pickle format …)."""


class TensorMismatchError(ConversionError):
    """A tensor is unknown, missing, or has a shape/dtype that config.json does not allow."""

    def __init__(self, message: str, *, tensor: str):
        super().__init__(f"tensor {tensor!r}: {message}")
        self.tensor = tensor


class CalibrationError(ConversionError):
    """Calibrated quantization cannot go ahead: the corpus is empty or unreadable, an importance-matrix
    (imatrix) file is malformed or does not fit the model, or the output type cannot use one.

    ``path`` is the corpus or imatrix file and ``tensor`` the imatrix entry at fault, when known.
    """

    def __init__(self, message: str, *, path: Path | str | None = None, tensor: str | None = None):
        where = ": ".join(w for w in (str(path) if path is not None else None,
                                      f"tensor {tensor!r}" if tensor is not None else None) if w)
        super().__init__(f"{where}: {message}" if where else message)
        self.path = Path(path) if path is not None else None
        self.tensor = tensor


class OutputExistsError(QembedError, FileExistsError):
    """The output file exists and ``force`` was not given."""


class ModelLoadError(QembedError, OSError):
    """A GGUF file cannot be read or loaded."""


class CorruptModelError(ModelLoadError):
    """A GGUF file is malformed; ``field`` names the key/tensor and ``offset`` the byte where it went wrong."""

    def __init__(self, message: str, *, path: Path | str, field: str, offset: int | None):
        where = f"at byte offset {offset}" if offset is not None else "absent"
        super().__init__(f"{path}: {field} ({where}): {message}")
        self.path = Path(path)
        self.field = field
        self.offset = offset


class IntegrityError(ModelLoadError):
    """A sealed file's content no longer matches its seal, or a file to verify has no seal."""


class UnknownModelError(QembedError, LookupError):
    """A model name is neither a registry entry nor a path."""

    def __str__(self) -> str:  # LookupError's str() would repr() the message
        return str(self.args[0]) if self.args else ""


class ModelSpecError(QembedError, ValueError):
    """A model spec (``models/*.toml``, or a mapping given to the registry) is malformed."""


class PresetError(QembedError, ValueError):
    """CMakePresets.json is missing or malformed, or a preset is unknown."""


class BackendError(QembedError, RuntimeError):
    """llama.cpp (through llama-cpp-python) failed or lacks a needed feature."""


class CacheError(QembedError, OSError):
    """An embedding cache (SQLite file, Redis server) cannot be opened or reached."""


class InputError(QembedError, ValueError):
    """Bad input given to the library."""


class InputTypeError(InputError, TypeError):
    """An input or argument has the wrong type (``texts[2] is int, not str``)."""


class InputTooLongError(InputError):
    """An input has more tokens than allowed and truncation is off."""

    def __init__(self, message: str, *, index: int, n_tokens: int, max_tokens: int):
        super().__init__(message)
        self.index = index
        self.n_tokens = n_tokens
        self.max_tokens = max_tokens


class InvalidTextError(InputError):
    """An input string cannot be encoded as UTF-8: it holds a lone surrogate (e.g. ``"\\ud800"``,
    what ``json.loads`` or ``bytes.decode(errors="surrogateescape")`` produce from broken data); or
    it holds a run of more combining marks than :data:`qembed_gguf.validate.MAX_MARK_RUN`, which
    Unicode normalisation would take quadratic time to sort.

    ``index`` is the input's index (None for a setting such as the instruction), ``position`` the
    character offset of the first surrogate and ``what`` names the argument.
    """

    def __init__(self, message: str, *, what: str, index: int | None, position: int):
        super().__init__(message)
        self.what = what
        self.index = index
        self.position = position
