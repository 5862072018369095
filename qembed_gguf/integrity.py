"""The integrity seal of a GGUF file written by ``qembed-gguf convert``.

Files written by the converter carry ``qembed.integrity.blake2b``, the BLAKE2b-256 of the whole
file with the 64 hex digits of that value read as ``0``; :func:`verify_integrity` recomputes it
(streaming) so any changed byte — header or tensor data — is detected. It guards against
corruption (a truncated or bit-flipped download that still parses), not against an attacker, who
could recompute the seal.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

from . import keys
from .errors import CorruptModelError, IntegrityError, ModelLoadError
from .gguf_reader import GGUFHeader, open_regular, read_header

__all__ = ["DIGEST_HEX", "IntegrityStatus", "seal", "verify_integrity", "content_fingerprint", "require_integrity"]

DIGEST_HEX = 64


@dataclasses.dataclass(frozen=True)
class IntegrityStatus:
    sealed: bool
    ok: bool | None          # None when the file carries no seal
    expected: str | None
    actual: str | None

    def raise_for(self, path: str | os.PathLike[str]) -> None:
        """Raise :class:`IntegrityError` unless the file was sealed and every byte matched."""
        if not self.sealed:
            raise IntegrityError(f"{path}: carries no {keys.INTEGRITY} seal (not written by qembed-gguf convert), "
                                 f"so it cannot be verified; convert it again or load it without verify=True")
        if not self.ok:
            raise IntegrityError(f"{path}: content does not match its seal (expected {self.expected[:16]}…, "
                                 f"got {self.actual[:16]}…): the file is corrupted or was modified")


def _seal_offset(h: GGUFHeader) -> int | None:
    value = h.get(keys.INTEGRITY)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) != DIGEST_HEX:
        raise CorruptModelError(f"must be a {DIGEST_HEX}-character hex string", path=h.path, field=keys.INTEGRITY,
                                offset=h.value_offsets.get(keys.INTEGRITY))
    return h.value_offsets[keys.INTEGRITY]


def _digest(path: Path, seal_at: int, chunk: int = 8 << 20) -> str:
    """BLAKE2b-256 of the file with the seal's 64 bytes read as ASCII '0's."""
    h = hashlib.blake2b(digest_size=32)
    zeros = b"0" * DIGEST_HEX
    pos = 0
    with open_regular(path, buffering=0) as fh:
        buf = bytearray(chunk)
        view = memoryview(buf)
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            lo, hi = max(seal_at, pos), min(seal_at + DIGEST_HEX, pos + n)
            if lo < hi:
                buf[lo - pos:hi - pos] = zeros[lo - seal_at:hi - seal_at]
            h.update(view[:n])
            pos += n
    return h.hexdigest()


def seal(path: str | os.PathLike[str]) -> str:
    """Write the integrity digest into a file whose header has the ``qembed.integrity.blake2b`` key."""
    path = Path(path)
    h = read_header(path)
    at = _seal_offset(h)
    if at is None:
        raise ModelLoadError(f"{path}: no {keys.INTEGRITY} key to seal")
    digest = _digest(path, at)
    with open(path, "r+b") as fh:
        fh.seek(at)
        fh.write(digest.encode("ascii"))
        fh.flush()
        os.fsync(fh.fileno())
    return digest


def verify_integrity(path: str | os.PathLike[str]) -> IntegrityStatus:
    """Recompute a sealed file's digest; ``ok`` is None for a file without a seal."""
    path = Path(path)
    h = read_header(path)
    at = _seal_offset(h)
    if at is None:
        return IntegrityStatus(False, None, None, None)
    expected = h.get(keys.INTEGRITY)
    actual = _digest(path, at)
    return IntegrityStatus(True, actual == expected, expected, actual)


def content_fingerprint(path: str | os.PathLike[str], header: GGUFHeader | None = None) -> str:
    """A BLAKE2b-256 of the file's content: its seal when sealed (no read), else computed (~1 s/GB).

    ``header``: the file's already-parsed header, if the caller has it. A sealed file that was
    modified afterwards keeps its old seal; ``verify`` detects that.
    """
    path = Path(path)
    h = header if header is not None else read_header(path)
    at = _seal_offset(h)
    sealed = h.get(keys.INTEGRITY) if at is not None else None
    if sealed and sealed != "0" * DIGEST_HEX:
        return sealed
    return _digest(path, at if at is not None else -DIGEST_HEX)


def require_integrity(path: str | os.PathLike[str]) -> None:
    """Raise :class:`IntegrityError` unless ``path`` is sealed and every byte matches its seal."""
    verify_integrity(path).raise_for(path)
