"""The vocabulary checks of a GGUF file, vectorised: unique, non-empty token strings, the 256
byte-level tokens, ``<|endoftext|>``, merges ``"A B"`` whose ``AB`` is a token.

llama.cpp aborts on a duplicated token (``GGML_ASSERT(id_to_token.size() == token_to_id.size())``)
and silently tokenizes differently without byte tokens or with broken merges. Hashing every string
in a few numpy passes keeps the real 151,669-token vocabulary and its 151,387 merges at tens of
milliseconds; a duplicate is confirmed byte for byte before it is reported.
"""

from __future__ import annotations

import array
import functools

import numpy as np

from .errors import CorruptModelError
from .gguf_reader import ArrayValue, GGUFHeader, field_error

__all__ = ["check_vocabulary", "POOLING_TOKEN", "TOKEN_TYPE_NAMES"]

# LLAMA_TOKEN_TYPE_UNDEFINED, NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE (include/llama.h)
TOKEN_TYPE_NAMES = ("undefined", "normal", "unknown", "control", "user-defined", "unused", "byte")


# -- the vocabulary, vectorised ------------------------------------------------------------------------
# Each byte string s gets h(s) = sum((s[j] + 1) * B**j) mod 2**64, B odd (so invertible), the length
# mixed in. For strings that lie in one region, h(region[a:b]) = (P[b] - P[a]) * B**-a from the
# prefix sums P of the whole region. P is computed in chunks of 64 KiB and kept only where a string
# starts or ends, so the memory stays small (fresh pages are what costs most here). A merge's "AB"
# is hashed in the merges' region with the separators taken out. Equal strings hash equal wherever
# they lie, and a duplicate is confirmed byte for byte before it is reported, so a forged collision
# can only make a membership test pass wrongly (a broken merge or a missing byte token: a
# tokenisation difference, never a crash).
_HASH_BASE = 0x9E3779B97F4A7C15
_HASH_BASE_INV = pow(_HASH_BASE, -1, 1 << 64)
_HASH_LENGTH = 0xC2B2AE3D27D4EB4F
_HASH_BITS = 16
_HASH_CHUNK = 1 << _HASH_BITS
_M64 = (1 << 64) - 1


def _power_table(base: int, n: int) -> np.ndarray:
    """base**0 .. base**(n-1) mod 2**64."""
    table = np.full(n, base, dtype=np.uint64)
    table[0] = 1
    return np.multiply.accumulate(table)


@functools.lru_cache(maxsize=2)
def _low_powers(base: int) -> np.ndarray:
    return _power_table(base, _HASH_CHUNK)


def _powers(base: int, exponents: np.ndarray) -> np.ndarray:
    """base**e mod 2**64 for each e of ``exponents`` (non-negative int64): a 64 Ki table and a small one."""
    top = int(exponents.max(initial=0)) >> _HASH_BITS
    high = _power_table(pow(base, _HASH_CHUNK, 1 << 64), top + 1)
    return _low_powers(base)[exponents & (_HASH_CHUNK - 1)] * high[exponents >> _HASH_BITS]


def _prefix_at(data: bytes, positions: np.ndarray) -> np.ndarray:
    """P[p] = sum((data[j] + 1) * B**j for j < p) mod 2**64 at each of the sorted ``positions``."""
    x = np.frombuffer(data, dtype=np.uint8)
    n, low = len(x), _low_powers(_HASH_BASE)
    out = np.empty(len(positions), dtype=np.uint64)
    # positions p < c1 belong to the chunk [c0, c1); the end of the data to the last one
    bounds = np.searchsorted(positions, np.arange(_HASH_CHUNK, n, _HASH_CHUNK), side="left").tolist() + [len(positions)]
    local = np.zeros(_HASH_CHUNK + 1, dtype=np.uint64)
    step = pow(_HASH_BASE, _HASH_CHUNK, 1 << 64)
    carry, scale, lo = 0, 1, 0
    for chunk, c0 in enumerate(range(0, max(n, 1), _HASH_CHUNK)):
        m = min(_HASH_CHUNK, n - c0)
        sums = local[1:m + 1]
        np.multiply(x[c0:c0 + m], low[:m], out=sums)
        sums += low[:m]
        np.cumsum(sums, out=sums)
        hi = bounds[chunk]
        if hi > lo:
            out[lo:hi] = local[positions[lo:hi] - c0] * np.uint64(scale) + np.uint64(carry)
        carry = (carry + int(local[m]) * scale) & _M64
        scale = (scale * step) & _M64
        lo = hi
    return out


def _mix_length(raw: np.ndarray, length: np.ndarray) -> np.ndarray:
    return raw ^ (length.astype(np.uint64) * np.uint64(_HASH_LENGTH))


def _string_keys(data: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash keys of ``data[starts[i]:ends[i]]`` (ranges in order, not overlapping)."""
    at = np.empty(2 * len(starts), dtype=np.int64)
    at[0::2], at[1::2] = starts, ends
    p = _prefix_at(data, at)
    return _mix_length((p[1::2] - p[0::2]) * _powers(_HASH_BASE_INV, starts), ends - starts)


def _joined_keys(data: bytes, starts: np.ndarray, cuts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Hash keys of ``data[starts:cuts] + data[cuts + 1:ends]``: each range (in order, not
    overlapping) with the byte at ``cuts`` removed, by hashing ``data`` without those bytes."""
    keep = np.ones(len(data), dtype=bool)
    keep[cuts] = False
    shift = np.arange(len(starts))  # range i starts after i removed bytes and ends after i + 1
    return _string_keys(np.frombuffer(data, dtype=np.uint8)[keep].tobytes(), starts - shift, ends - shift - 1)


def _hash_bytes(s: bytes) -> int:
    """The hash key of one byte string, in Python (the same as :func:`_string_keys`)."""
    h, p = 0, 1
    for c in s:
        h = (h + (c + 1) * p) & _M64
        p = (p * _HASH_BASE) & _M64
    return h ^ ((len(s) * _HASH_LENGTH) & _M64)


def _byte_level_tokens() -> list[bytes]:
    """The 256 one-character tokens of byte-level BPE (GPT-2's bytes_to_unicode, as llama.cpp's
    unicode_byte_to_utf8): printable bytes stand for themselves, the others for U+0100 onwards."""
    keep = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    mapping, extra = {b: b for b in keep}, 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = 256 + extra
            extra += 1
    return [chr(mapping[b]).encode("utf-8") for b in range(256)]


_BYTE_TOKENS = _byte_level_tokens()
POOLING_TOKEN = b"<|endoftext|>"
_PHI3_TOKENS = (b"</s>", b"<unk>", b"<s>", b"<|endoftext|>")
_BYTE_TOKEN_KEYS = np.array([_hash_bytes(t) for t in _BYTE_TOKENS], dtype=np.uint64)


def _element_ranges(offsets: array.array) -> tuple[int, np.ndarray, np.ndarray]:
    """(region start, element starts, element ends) of a tracked string array, relative to the region."""
    off = np.frombuffer(offsets, dtype=np.int64)
    base = int(off[0])
    return base, off[:-1] - base + 8, off[1:] - base


def _unknown(sorted_keys: np.ndarray, query: np.ndarray) -> tuple[int, int] | None:
    """(index of the first, count of) ``query`` keys not among ``sorted_keys``; None when all are.
    Sorted queries are looked up several times faster; the indices are found only on failure."""
    if not len(query):
        return None
    last = len(sorted_keys) - 1
    ordered = np.sort(query)
    if (sorted_keys[np.minimum(np.searchsorted(sorted_keys, ordered), last)] == ordered).all():
        return None
    bad = np.flatnonzero(sorted_keys[np.minimum(np.searchsorted(sorted_keys, query), last)] != query)
    return int(bad[0]), len(bad)


def _first_duplicate(keys: np.ndarray, sorted_keys: np.ndarray, data: bytes, starts: np.ndarray,
                     ends: np.ndarray) -> tuple[int, int] | None:
    """(earlier, later) indices of the first token string that repeats an earlier one, confirmed byte for byte."""
    repeated = sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]
    seen: dict[bytes, int] = {}
    for i in np.flatnonzero(np.isin(keys, repeated)).tolist():
        j = seen.setdefault(data[starts[i]:ends[i]], i)
        if j != i:
            return j, i
    return None


def check_vocabulary(h: GGUFHeader, view: memoryview, tokens: ArrayValue, merges: ArrayValue,
                      token_type: ArrayValue | None) -> None:
    """Token strings unique, non-empty and with every byte-level token; token types llama.cpp
    knows; merges "A B" whose AB is a token. Works on copies of the regions (the map is released after)."""
    field = "tokenizer.ggml.tokens"
    t_offsets = h.string_offsets[field]
    base, starts, ends = _element_ranges(t_offsets)
    data = bytes(view[base:t_offsets[-1]])
    lengths = ends - starts
    empty = np.flatnonzero(lengths == 0)
    if empty.size:
        i = int(empty[0])
        raise CorruptModelError(f"token {i} is an empty string; llama.cpp renames it '[EMPTY_{i}]', which another "
                                f"token may already be", path=h.path, field=f"{field}[{i}]", offset=t_offsets[i])
    keys = _string_keys(data, starts, ends)
    sorted_keys = np.sort(keys)
    if (sorted_keys[1:] == sorted_keys[:-1]).any():
        dup = _first_duplicate(keys, sorted_keys, data, starts, ends)
        if dup is not None:
            j, i = dup
            text = data[starts[i]:ends[i]]
            raise CorruptModelError(f"token {i} {text[:60]!r} repeats token {j}: llama.cpp asserts that every "
                                    f"token string is unique (abort)", path=h.path, field=f"{field}[{i}]",
                                    offset=t_offsets[i])
    missing = _unknown(sorted_keys, _BYTE_TOKEN_KEYS)
    if missing is not None:
        b, count = missing
        raise CorruptModelError(f"has no token for byte 0x{b:02x} ({_BYTE_TOKENS[b].decode()!r} in byte-level BPE; "
                                f"{count} of the 256 are missing): llama.cpp silently drops such bytes from "
                                f"every input", path=h.path, field=field, offset=h.value_offsets.get(field))

    def has(text: bytes) -> bool:
        return _unknown(sorted_keys, np.array([_hash_bytes(text)], dtype=np.uint64)) is None

    if not has(POOLING_TOKEN):
        raise CorruptModelError(f"has no {POOLING_TOKEN.decode()} token: Qwen3-Embedding pools on it", path=h.path,
                                field=field, offset=h.value_offsets.get(field))
    name = h.get("general.name")
    if isinstance(name, str) and ("phi3" in name.lower() or "phi-3" in name.lower()):
        lacking = [t.decode() for t in _PHI3_TOKENS if not has(t)]
        if lacking:  # llama-vocab.cpp sets Phi-3 token attributes by name, with token_to_id.at()
            raise field_error(h, "general.name", f"{name[:60]!r} makes llama.cpp treat the model as Phi-3, which needs "
                                           f"the token(s) {', '.join(lacking)} this vocabulary lacks")
    if token_type is not None:
        types = np.frombuffer(bytes(view[token_type.offset:token_type.offset + 4 * tokens.count]), dtype="<i4")
        bad = np.flatnonzero((types < 0) | (types >= len(TOKEN_TYPE_NAMES)))
        if bad.size:
            i = int(bad[0])
            raise CorruptModelError(f"token type {int(types[i])} of token {i} is not one llama.cpp knows (0-6: "
                                    f"{', '.join(TOKEN_TYPE_NAMES)})", path=h.path,
                                    field=f"tokenizer.ggml.token_type[{i}]", offset=token_type.offset + 4 * i)
        # llama.cpp reads a byte-type token as SPM's '<0xXX>' (text[3:5]; a shorter text throws);
        # byte-level BPE has none: its 256 byte tokens are normal ones
        bad = np.flatnonzero(types == TOKEN_TYPE_NAMES.index("byte"))
        if bad.size:
            i = int(bad[0])
            raise CorruptModelError(f"token {i} {data[starts[i]:ends[i]][:60]!r} has the type byte, which llama.cpp "
                                    f"reads as an SPM '<0xXX>' token; byte-level BPE tokens are normal", path=h.path,
                                    field=f"tokenizer.ggml.token_type[{i}]", offset=token_type.offset + 4 * i)
    if merges.count:
        _check_merges(h, view, keys, sorted_keys)


def _check_merges(h: GGUFHeader, view: memoryview, token_keys: np.ndarray, sorted_keys: np.ndarray) -> None:
    """Every merge is "A B" as llama.cpp splits it (at the first space after its first byte), A
    and B non-empty, and AB a token (HF tokenizers refuses a file where it is not; llama.cpp would
    emit byte tokens instead)."""
    field = "tokenizer.ggml.merges"
    m_offsets = h.string_offsets[field]
    base, starts, ends = _element_ranges(m_offsets)
    data = bytes(view[base:m_offsets[-1]])
    spaces = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 0x20)
    at = np.searchsorted(spaces, starts + 1)
    space = spaces[np.minimum(at, len(spaces) - 1)] if len(spaces) else np.zeros_like(starts)
    bad = np.flatnonzero((at >= len(spaces)) | (space >= ends - 1))
    if bad.size:
        i = int(bad[0])
        raise CorruptModelError(f"merge {i} {data[starts[i]:ends[i]][:60]!r} is not two tokens 'A B'",
                                path=h.path, field=f"{field}[{i}]", offset=m_offsets[i])
    joined = _joined_keys(data, starts, space, ends)
    # byte-level BPE vocabularies list the 256 bytes, then each merge's result in rank order (Qwen's
    # does): compared in place first; a lookup among all tokens only for the merges that differ
    n = min(len(joined), len(token_keys) - 256)
    differ = np.flatnonzero(joined[:n] != token_keys[256:256 + n]) if n > 0 else np.arange(0)
    rest = np.concatenate([differ, np.arange(max(n, 0), len(joined))])
    unknown = _unknown(sorted_keys, joined[rest]) if rest.size else None
    if unknown is not None:
        i, count = int(rest[unknown[0]]), unknown[1]
        text, joined_text = data[starts[i]:ends[i]], data[starts[i]:space[i]] + data[space[i] + 1:ends[i]]
        raise CorruptModelError(f"merge {i} {text[:60]!r} joins into {joined_text[:60]!r}, which is not "
                                f"a token ({count} such merges): llama.cpp would emit byte tokens instead",
                                path=h.path, field=f"{field}[{i}]", offset=m_offsets[i])


