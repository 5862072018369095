"""Validation of user-given values shared by the library, the CLI and the server (pure functions).

Each raises an :class:`~qembed_gguf.errors.InputError` subclass whose message names the value and
what is wrong with it.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError, InvalidTextError

__all__ = ["check_int", "check_text", "lone_surrogate"]


def check_int(name: str, value, *, hi: int | None = None, why: str = "") -> int:
    """``value`` as an int in ``[1, hi]``; else :class:`InputError` saying so (numpy ints accepted).
    ``why`` names the upper bound, e.g. "ggml's GGML_MAX_N_THREADS"."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name} must be a positive integer, got {value!r}")
    if hi is not None and value > hi:
        raise InputError(f"{name}={value} is more than {why or 'the limit'}, {hi}")
    return int(value)


def lone_surrogate(text: str) -> int | None:
    """The character offset of the first lone surrogate in ``text`` (which UTF-8 cannot encode), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def check_text(text: str, what: str, index: int | None = None) -> str:
    """``text`` if it can be encoded as UTF-8; else :class:`InvalidTextError` naming the first
    lone surrogate's position (``json.loads('"\\ud800"')`` gives such a string)."""
    at = lone_surrogate(text)
    if at is None:
        return text
    where = f"{what}[{index}]" if index is not None else what
    raise InvalidTextError(
        f"{where} holds a lone surrogate {text[at]!r} at character {at}: it is not valid Unicode text (decode the "
        f"source bytes with errors='replace', or fix the escape)", what=what, index=index, position=at)
