"""Fuzz the two file formats qembed-gguf reads from the internet: GGUF models and safetensors checkpoints.

Mutants of a valid file (the bundled tiny model, converted) are loaded in worker subprocesses —
GGUF through ``qembed-gguf info`` (text and ``--json``), :func:`~qembed_gguf.gguf_check.check_gguf`
and ``Embedder(path).embed([...])`` (so llama.cpp sees whatever passes validation), safetensors
through ``qembed_gguf.convert`` — and each outcome is classified:

* ``ok``: loaded and ran (e.g. a byte flipped inside tensor data: only ``verify=True`` catches that);
* ``typed``: refused with a :class:`~qembed_gguf.errors.QembedError` (the goal for malformed files);
  ``stages`` counts where: ``check`` (by ``check_gguf``, before llama.cpp saw the file), ``load``
  (llama.cpp or the Embedder refused it), ``embed`` (a typed error only when embedding, e.g. NaN
  vectors: the file should have been refused before llama.cpp saw it);
* ``untyped``: any other exception (also from ``info``) — a bug;  ``crash``: the worker died of a
  signal (a failed ``GGML_ASSERT`` aborts) — a bug;  ``hang``: no answer within the time limit
  (10 s) — a bug;  ``bad_vectors``: embedding returned non-finite or all-zero vectors without an
  error — a bug.

A worker handles many mutants in turn and is restarted after a crash or hang.

    python tools/fuzz.py --gguf 2000 --safetensors 2000 --out benchmarks/results/fuzz.json
    python tools/fuzz.py --gguf 0 --safetensors 0 --values 2500 --out benchmarks/results/fuzz-values.json

Structure mutations (``--gguf``): truncation at every region boundary and at random points; bit
flips in the header, key/values and tensor infos; huge counts and lengths; overlapping and
out-of-bounds offsets; wrong value and tensor types; and, for safetensors (``--safetensors``),
header-length, JSON, dtype, shape and offset edits.

Value mutations (``--values``): well-formed files with hostile *values*, re-serialised from the
key/value records (:class:`GGUFImage`): every scalar key set to the edge values of its type (0,
-1, type max, NaN, ±inf, -0.0, denormals, huge; strings empty, 100 KB long, non-ASCII, other
pre-tokenizers and tokenizer models), retyped (u32 <-> i32/u64/f32/string/array ...), deleted;
the keys llama.cpp reads that the file lacks, added with edge values; the vocabulary edited
(duplicate, empty and missing tokens, token types out of range, broken merges, special-token
ids at the edges); then random combinations of two or three of these. Files whose shapes agree
with hostile hyperparameters (513 blocks, an odd head size) are built from synthetic checkpoints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("fuzz")
TIMEOUT_S = 10.0


# -- GGUF layout: where each field of a valid file lives ------------------------------------------------
def gguf_layout(data: bytes) -> dict[str, list[int]]:
    """Byte offsets of the fields of a (valid) GGUF file, by kind."""
    u32 = lambda p: struct.unpack_from("<I", data, p)[0]  # noqa: E731
    u64 = lambda p: struct.unpack_from("<Q", data, p)[0]  # noqa: E731
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    out: dict[str, list[int]] = {k: [] for k in ("count", "strlen", "vtype", "arrcount", "ndims", "dim", "ttype",
                                                 "toffset", "boundary")}
    out["count"] += [8, 16]
    pos = 24
    n_tensors, n_kv = u64(8), u64(16)
    out["boundary"] += [4, 8, 16, 24]

    def string(p):
        out["strlen"].append(p)
        return p + 8 + u64(p)

    for _ in range(n_kv):
        pos = string(pos)
        out["vtype"].append(pos)
        t = u32(pos)
        pos += 4
        if t == 8:
            pos = string(pos)
        elif t == 9:
            et = u32(pos)
            out["arrcount"].append(pos + 4)
            n = u64(pos + 4)
            pos += 12
            if et == 8:
                for _ in range(n):
                    pos += 8 + u64(pos)
            else:
                pos += n * sizes[et]
        else:
            pos += sizes[t]
        out["boundary"].append(pos)
    for _ in range(n_tensors):
        pos = string(pos)
        out["ndims"].append(pos)
        nd = u32(pos)
        pos += 4
        out["dim"] += [pos + 8 * i for i in range(nd)]
        pos += 8 * nd
        out["ttype"].append(pos)
        out["toffset"].append(pos + 4)
        pos += 12
        out["boundary"].append(pos)
    out["header_end"] = [pos]
    return out


HUGE = [2**64 - 1, 2**63, 2**63 - 1, 2**32, 2**32 - 1, 2**31, 10**12]


def gguf_mutants(data: bytes, n: int, seed: int = 0):
    """Yield (description, bytes) for ``n`` mutants of a valid GGUF file."""
    rng = random.Random(seed)
    lay = gguf_layout(data)
    header_end = lay["header_end"][0]
    offs = [struct.unpack_from("<Q", data, p)[0] for p in lay["toffset"]]
    made = 0

    def put64(b: bytearray, p: int, v: int) -> None:
        struct.pack_into("<Q", b, p, v % 2**64)

    boundaries = sorted(set(lay["boundary"]))
    for b in boundaries:  # truncation at every region boundary (and one byte either side)
        for cut in (b - 1, b, b + 1):
            if made < n and 0 < cut < len(data):
                made += 1
                yield f"truncate at {cut} (boundary {b})", data[:cut]
    kinds = ["trunc_random", "bitflip_header", "huge", "small_len", "vtype", "ttype", "ndims", "dim", "overlap",
             "oob", "misalign", "dataflip", "swap_kv_type_array"]
    while made < n:
        kind = kinds[made % len(kinds)]
        m = bytearray(data)
        if kind == "trunc_random":
            cut = rng.randrange(1, len(data))
            made += 1
            yield f"truncate at {cut}", bytes(data[:cut])
            continue
        if kind == "bitflip_header":
            for _ in range(rng.choice([1, 1, 2, 4, 16])):
                p = rng.randrange(0, header_end)
                m[p] ^= 1 << rng.randrange(8)
            desc = "bit flips in the header"
        elif kind == "huge":
            field = rng.choice(["count", "strlen", "arrcount", "dim"])
            p = rng.choice(lay[field])
            v = rng.choice(HUGE + [len(data), len(data) + 1])
            put64(m, p, v)
            desc = f"{field} at {p} = {v}"
        elif kind == "small_len":
            p = rng.choice(lay["strlen"] + lay["arrcount"])
            v = struct.unpack_from("<Q", data, p)[0]
            put64(m, p, max(0, v + rng.choice([-3, -1, 1, 3])))
            desc = f"length at {p} off by a little"
        elif kind == "vtype":
            p = rng.choice(lay["vtype"])
            v = rng.choice([0, 4, 6, 7, 8, 9, 10, 12, 13, 255, 2**32 - 1])
            struct.pack_into("<I", m, p, v)
            desc = f"value type at {p} = {v}"
        elif kind == "ttype":
            p = rng.choice(lay["ttype"])
            v = rng.choice([0, 1, 2, 8, 12, 14, 24, 30, 31, 39, 40, 1000])
            struct.pack_into("<I", m, p, v)
            desc = f"tensor type at {p} = {v}"
        elif kind == "ndims":
            p = rng.choice(lay["ndims"])
            v = rng.choice([0, 3, 4, 5, 2**32 - 1])
            struct.pack_into("<I", m, p, v)
            desc = f"n_dims at {p} = {v}"
        elif kind == "dim":
            p = rng.choice(lay["dim"])
            v = rng.choice([0, 1, 2, 31, 33, 4097, 2**20])
            put64(m, p, v)
            desc = f"dimension at {p} = {v}"
        elif kind == "overlap":
            i, j = rng.sample(range(len(offs)), 2)
            put64(m, lay["toffset"][i], offs[j])
            desc = f"tensor {i} offset = tensor {j}'s"
        elif kind == "oob":
            i = rng.randrange(len(offs))
            put64(m, lay["toffset"][i], rng.choice([len(data), len(data) - header_end, 2**40, 2**64 - 32]))
            desc = f"tensor {i} offset out of bounds"
        elif kind == "misalign":
            i = rng.randrange(len(offs))
            put64(m, lay["toffset"][i], offs[i] + rng.choice([1, 4, 8, 16]))
            desc = f"tensor {i} offset misaligned"
        elif kind == "dataflip":
            p = rng.randrange(header_end, len(data))
            m[p] ^= 1 << rng.randrange(8)
            desc = f"bit flip in tensor data at {p}"
        else:
            p = rng.choice(lay["vtype"])
            struct.pack_into("<I", m, p, 9)
            desc = f"value type at {p} = array"
        made += 1
        yield desc, bytes(m)


# -- GGUF value mutations: the key/value records, edited and written again ----------------------------------
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q", I64: "<q",
        F64: "<d"}
_INT_RANGE = {U8: (0, 2**8 - 1), I8: (-2**7, 2**7 - 1), U16: (0, 2**16 - 1), I16: (-2**15, 2**15 - 1),
              U32: (0, 2**32 - 1), I32: (-2**31, 2**31 - 1), U64: (0, 2**64 - 1), I64: (-2**63, 2**63 - 1)}
NAN, INF = float("nan"), float("inf")
F32_MAX = 3.4028234663852886e38


def encode_value(vtype: int, value, etype: int | None = None) -> bytes:
    """The bytes of a value of GGUF type ``vtype`` (after its type field); arrays need ``etype``."""
    if vtype in _FMT:
        return struct.pack(_FMT[vtype], value)
    if vtype == STR:
        raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARR:
        return struct.pack("<IQ", etype, len(value)) + b"".join(encode_value(etype, v) for v in value)
    raise ValueError(f"unknown value type {vtype}")


def decode_value(vtype: int, payload: bytes):
    """A record's value: a number, bytes (a string) or (element type, list) for an array."""
    if vtype in _FMT:
        return struct.unpack(_FMT[vtype], payload)[0]
    if vtype == STR:
        return payload[8:]
    etype, n = struct.unpack_from("<IQ", payload, 0)
    pos, items = 12, []
    for _ in range(n):
        if etype == STR:
            (length,) = struct.unpack_from("<Q", payload, pos)
            items.append(payload[pos + 8:pos + 8 + length])
            pos += 8 + length
        else:
            items.append(struct.unpack_from(_FMT[etype], payload, pos)[0])
            pos += struct.calcsize(_FMT[etype])
    return etype, items


class GGUFImage:
    """A valid GGUF file as its key/value records ``(key, value type, value bytes)`` and the bytes
    around them. :meth:`build` writes a file with other records and the same tensor infos and data
    (tensor offsets are relative to the data section, which is aligned again)."""

    def __init__(self, data: bytes):
        u32 = lambda p: struct.unpack_from("<I", data, p)[0]  # noqa: E731
        u64 = lambda p: struct.unpack_from("<Q", data, p)[0]  # noqa: E731
        self.version, self.n_tensors = u32(4), u64(8)
        pos, self.records = 24, []
        for _ in range(u64(16)):
            n = u64(pos)
            key = data[pos + 8:pos + 8 + n].decode()
            vtype = u32(pos + 8 + n)
            start = pos = pos + 12 + n
            if vtype == STR:
                pos += 8 + u64(pos)
            elif vtype == ARR:
                etype, count = u32(pos), u64(pos + 4)
                pos += 12
                if etype == STR:
                    for _ in range(count):
                        pos += 8 + u64(pos)
                else:
                    pos += count * struct.calcsize(_FMT[etype])
            else:
                pos += struct.calcsize(_FMT[vtype])
            self.records.append((key, vtype, data[start:pos]))
        header_end = gguf_layout(data)["header_end"][0]
        self.tensor_infos = data[pos:header_end]
        align = dict((k, v) for k, _, v in self.records).get("general.alignment")
        self.alignment = struct.unpack("<I", align)[0] if align else 32
        self.tensor_data = data[-(-header_end // self.alignment) * self.alignment:]

    def value(self, key: str):
        for k, vtype, payload in self.records:
            if k == key:
                return vtype, decode_value(vtype, payload)
        return None

    def build(self, records) -> bytes:
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, self.n_tensors, len(records)))
        for key, vtype, payload in records:
            raw = key.encode("utf-8") if isinstance(key, str) else key
            out += struct.pack("<Q", len(raw)) + raw + struct.pack("<I", vtype) + payload
        out += self.tensor_infos
        out += b"\0" * (-len(out) % self.alignment)
        return bytes(out + self.tensor_data)


def _put(key: str, vtype: int, payload: bytes):
    """An edit: set ``key`` (in place when present, else appended)."""
    def edit(records):
        out = [(k, vtype, payload) if k == key else (k, t, p) for k, t, p in records]
        return out if any(k == key for k, _, _ in records) else out + [(key, vtype, payload)]
    return edit


def _drop(key: str):
    return lambda records: [r for r in records if r[0] != key]


def _int_edges(vtype: int, orig: int | None = None) -> list[int]:
    lo, hi = _INT_RANGE[vtype]
    values = {0, 1, 2, 3, 7, 31, 32, 33, 63, 64, 65, 127, 128, 255, 256, 511, 512, 513, 1023, 1024, 1025, 4095, 4096,
              4097, 65535, 65536, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1, -1, -2, -2**31, -2**63, lo, hi}
    if orig is not None:
        values |= {orig - 1, orig + 1, orig * 2, orig // 2, orig - 2}
    return sorted(v for v in values if lo <= v <= hi)


def _float_edges(orig: float | None = None) -> list[float]:
    values = [0.0, -0.0, 1.0, -1.0, NAN, INF, -INF, 1e-45, 1e-40, 1.1754943508222875e-38, 1e-12, 1e-6, 1e-5, 1e-3,
              1e-2, 0.011, 0.1, 0.5, 2.0, 10.0, 1024.0, 1025.0, 1e6, 1e12, 1.1e12, F32_MAX, -F32_MAX]
    if orig is not None and math.isfinite(orig):
        values += [orig * 2, orig / 2, -orig, orig * 1e6]
    return [v for v in values if not math.isfinite(v) or abs(v) <= F32_MAX]


STRING_EDGES = list(dict.fromkeys(["", "x" * 100_000, "é中文🚀", "qw\0en2", " qwen2", "QWEN2",
                # pre-tokenizers: known to llama.cpp (other splits), unknown
                "qwen2", "qwen35", "llama3", "gpt-2", "default", "deepseek-llm", "whitespace", "kimi-k2", "gemma4",
                "tekken", "qwen9",
                # tokenizer models llama.cpp knows, and not
                "gpt2", "llama", "bert", "t5", "none", "no_vocab", "rwkv", "plamo2", "hybriddna", "test", "gpt3",
                # architectures and rope scaling types
                "qwen3", "phi3", "yarn", "linear", "longrope", "bogus"]))

# keys llama.cpp reads for Qwen3 that a converted file does not carry, with values to add them with
_ADDED = [
    ("qwen3.rope.dimension_count", U32, [0, 1, 2, 32, 63, 64, 65, 128, 2**32 - 1]),
    ("qwen3.rope.dimension_count", F32, [64.0]),
    ("qwen3.rope.dimension_count_swa", U32, [0, 32, 64, 2**32 - 1]),
    ("qwen3.attention.key_length_swa", U32, [0, 1, 64, 2**32 - 1]),
    ("qwen3.attention.value_length_swa", U32, [0, 64, 2**32 - 1]),
    ("qwen3.rope.scaling.type", STR, ["none", "linear", "yarn", "longrope", "", "bogus", "YARN", "x" * 5000]),
    ("qwen3.rope.scaling.type", U32, [1]),
    ("qwen3.rope.scaling.factor", F32, [0.0, -0.0, 1.0, 4.0, 1024.0, 0.5, -1.0, NAN, INF, -INF, 1e-45, F32_MAX]),
    ("qwen3.rope.scaling.factor", F64, [4.0]),
    ("qwen3.rope.scale_linear", F32, [0.0, 2.0, -2.0, NAN, INF, 1e-45]),
    ("qwen3.rope.scaling.attn_factor", F32, [0.0, 1.0, -1.0, NAN, INF, 1e-45, 2.0, 100.0]),
    ("qwen3.rope.scaling.alpha", F32, [0.0, 1.0, NAN, INF]),
    ("qwen3.rope.scaling.original_context_length", U32, [0, 1, 4096, 2**32 - 1]),
    ("qwen3.rope.scaling.finetuned", BOOL, [True, False]),
    ("qwen3.rope.scaling.finetuned", U8, [1]),
    ("qwen3.rope.scaling.yarn_ext_factor", F32, [NAN, 1.0]),
    ("qwen3.rope.freq_base_swa", F32, [NAN]),
    ("qwen3.attention.causal", BOOL, [True, False]),
    ("qwen3.attention.causal", U8, [0]),
    ("qwen3.nextn_predict_layers", U32, [0, 1, 2, 3, 2**32 - 1]),
    ("qwen3.expert_count", U32, [0, 1, 2, 8, 1024, 1025, 2**32 - 1]),
    ("qwen3.expert_used_count", U32, [0, 1, 2, 9]),
    ("qwen3.expert_group_count", U32, [0, 1, 2]),
    ("qwen3.expert_group_used_count", U32, [0, 1]),
    ("qwen3.embedding_length_out", U32, [0, 1, 128, 256, 257, 4096, 2**32 - 1]),
    ("qwen3.classifier.pooling_type", U32, [0, 1, 99]),
    ("qwen3.attention.sliding_window", U32, [0, 16]),
    ("qwen3.attention.layer_norm_epsilon", F32, [NAN, -1.0]),
    ("qwen3.vocab_size", U32, [0, 4096, 2**32 - 1]),
    ("split.count", U16, [0, 1, 2, 65535]),
    ("split.count", U32, [2]),
    ("split.no", U16, [0, 1]),
    ("general.alignment", U32, [32, 1, 2, 16, 64, 0, 3, 2**31]),
    ("general.alignment", U64, [32]),
    ("general.name", STR, ["phi3 test", "phi-3", "modern-bert", "", "x" * 100_000]),
    ("general.file_type", U32, [0, 1, 37, 2**32 - 1]),
    ("general.file_type", STR, ["q8_0"]),
    ("tokenizer.ggml.add_space_prefix", BOOL, [True, False]),
    ("tokenizer.ggml.add_space_prefix", U32, [1]),
    ("tokenizer.ggml.remove_extra_whitespaces", BOOL, [True]),
    ("tokenizer.ggml.normalizer.lowercase", BOOL, [True]),
    ("tokenizer.ggml.normalizer.strip_accents", U8, [1]),
    ("tokenizer.ggml.token_type_count", U32, [0, 2, 2**32 - 1]),
    ("tokenizer.chat_template", STR, ["{{ x }}", "{% for %}"]),
]
_ADDED_TOKEN_IDS = ("unknown", "seperator", "mask", "cls", "eom", "fim_pre", "fim_suf", "fim_mid", "fim_pad",
                    "fim_rep", "fim_sep", "prefix", "suffix", "middle")


def _convert(value, vtype: int):
    """``value`` (of another type) as a value of type ``vtype``, for retyping a key; None if impossible."""
    if isinstance(value, bytes):
        number = len(value)
    elif isinstance(value, bool):
        number = int(value)
    else:
        number = value
    if vtype in _INT_RANGE:
        lo, hi = _INT_RANGE[vtype]
        try:
            as_int = int(number)
        except (ValueError, OverflowError):
            as_int = 0
        return min(max(as_int, lo), hi)
    if vtype in (F32, F64):
        return float(number) if abs(float(number)) <= F32_MAX or not math.isfinite(float(number)) else F32_MAX
    if vtype == BOOL:
        return bool(number)
    if vtype == STR:
        return value if isinstance(value, bytes) else str(value).encode()
    return None


def value_mutations(image: GGUFImage) -> list[tuple[str, object]]:
    """The deterministic catalogue of value mutations of ``image``: ``(description, edit)`` pairs,
    where ``edit(records) -> records``."""
    out: list[tuple[str, object]] = []

    def add(desc, edit):
        out.append((desc, edit))

    n_vocab = len(image.value("tokenizer.ggml.tokens")[1][1])
    for key, vtype, payload in image.records:
        value = decode_value(vtype, payload)
        if vtype in _INT_RANGE:
            for v in _int_edges(vtype, value):
                add(f"{key} = {v}", _put(key, vtype, encode_value(vtype, v)))
        elif vtype in (F32, F64):
            for v in _float_edges(value):
                add(f"{key} = {v!r}", _put(key, vtype, encode_value(vtype, v)))
        elif vtype == BOOL:
            for v in (False, True):
                add(f"{key} = {v}", _put(key, vtype, encode_value(vtype, v)))
        elif vtype == STR:
            edges = STRING_EDGES + [value.decode(errors="replace").upper()]
            for v in edges:
                add(f"{key} = {v[:40]!r}", _put(key, vtype, encode_value(vtype, v)))
        if vtype != ARR:  # retyped: the same value as each other type
            for other in (U8, I8, U16, I32, U32, U64, I64, F32, F64, BOOL, STR):
                converted = _convert(value, other)
                if other != vtype and converted is not None:
                    add(f"{key} retyped {vtype} -> {other}", _put(key, other, encode_value(other, converted)))
            add(f"{key} retyped {vtype} -> array", _put(key, ARR, encode_value(ARR, [_convert(value, U32)] * 2, U32)))
            add(f"{key} retyped {vtype} -> array of strings",
                _put(key, ARR, encode_value(ARR, [_convert(value, STR)], STR)))
        add(f"{key} deleted", _drop(key))
    for key, vtype, values in _ADDED:
        for v in values:
            add(f"+{key} = {v!r:.40} ({vtype})", _put(key, vtype, encode_value(vtype, v)))
    from qembed_gguf.gguf_check import LLAMA_CPP_PRE_TOKENIZERS

    for name in sorted(LLAMA_CPP_PRE_TOKENIZERS - set(STRING_EDGES)):  # every split llama.cpp knows
        add(f"tokenizer.ggml.pre = {name!r}", _put("tokenizer.ggml.pre", STR, encode_value(STR, name)))
    add("+qwen3.classifier.output_labels", _put("qwen3.classifier.output_labels", ARR,
                                                encode_value(ARR, [b"a", b"b"], STR)))
    add("+qwen3.expert_used_count as an array", _put("qwen3.expert_used_count", ARR, encode_value(ARR, [1, 1], U32)))
    add("qwen3.feed_forward_length as an array", _put("qwen3.feed_forward_length", ARR,
                                                      encode_value(ARR, [768, 768], U32)))
    add("qwen3.attention.head_count as a 3-array", _put("qwen3.attention.head_count", ARR,
                                                        encode_value(ARR, [4, 4, 4], U32)))
    for name in _ADDED_TOKEN_IDS:
        for v in (0, n_vocab - 1, n_vocab, 2**31, 2**32 - 1):
            add(f"+tokenizer.ggml.{name}_token_id = {v}", _put(f"tokenizer.ggml.{name}_token_id", U32,
                                                                 encode_value(U32, v)))
    for name in ("bos", "eos", "eot", "padding"):
        add(f"tokenizer.ggml.{name}_token_id as i32 -1", _put(f"tokenizer.ggml.{name}_token_id", I32,
                                                              encode_value(I32, -1)))
    add("+tokenizer.ggml.suppress_tokens", _put("tokenizer.ggml.suppress_tokens", ARR,
                                                encode_value(ARR, [-1, 0, n_vocab, 2**31 - 1], I32)))
    add("+tokenizer.ggml.suppress_tokens (u32)", _put("tokenizer.ggml.suppress_tokens", ARR,
                                                      encode_value(ARR, [1], U32)))
    add("+tokenizer.ggml.precompiled_charsmap", _put("tokenizer.ggml.precompiled_charsmap", ARR,
                                                     encode_value(ARR, [1, 2, 3], U8)))
    for scores, etype in (([0.0] * n_vocab, F32), ([NAN] * n_vocab, F32), ([1] * n_vocab, I32),
                          ([0.0] * (n_vocab - 1), F32), ([0] * n_vocab, U32)):
        add(f"+tokenizer.ggml.scores ({len(scores)} of type {etype})",
            _put("tokenizer.ggml.scores", ARR, encode_value(ARR, scores, etype)))
    out.extend(vocabulary_mutations(image))
    return out


def _array_edit(image: GGUFImage, key: str, change, etype: int | None = None):
    """An edit of array ``key``: ``change(list) -> list``, written with ``etype`` (default: its own)."""
    old_etype, items = image.value(key)[1]

    def edit(records):
        new = change(list(items))
        return _put(key, ARR, encode_value(ARR, new, old_etype if etype is None else etype))(records)
    return edit


def vocabulary_mutations(image: GGUFImage) -> list[tuple[str, object]]:
    """Duplicate, empty, missing and odd token strings; token types out of range; broken merges."""
    T, TT, M = "tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"
    tokens = image.value(T)[1][1]
    merges = image.value(M)[1][1]
    n = len(tokens)
    eos = tokens.index(b"<|endoftext|>")
    space = tokens.index("Ġ".encode())
    out = []

    def setitem(items, i, v):
        items[i] = v
        return items

    for i, j in ((5, 6), (0, 1), (n - 1, n - 2), (eos, 100), (100, eos), (space, 300)):
        out.append((f"token {i} = token {j}", _array_edit(image, T, lambda t, i=i, j=j: setitem(t, i, t[j]))))
    for i in (0, 100, eos, n - 1):
        out.append((f"token {i} empty", _array_edit(image, T, lambda t, i=i: setitem(t, i, b""))))
    out.append(("token 7 empty and token 8 '[EMPTY_7]'",
                _array_edit(image, T, lambda t: setitem(setitem(t, 7, b""), 8, b"[EMPTY_7]"))))
    out.append(("byte token 'Ġ' renamed", _array_edit(image, T, lambda t: setitem(t, space, b"\xc4\xa0unique"))))
    out.append(("byte token '!' renamed", _array_edit(image, T, lambda t: setitem(t, 0, b"!!!unique"))))
    out.append(("token 50 invalid UTF-8", _array_edit(image, T, lambda t: setitem(t, 50, b"\xff\xfe"))))
    out.append(("token 51 100 KB long", _array_edit(image, T, lambda t: setitem(t, 51, b"z" * 100_000))))
    out.append(("token 52 holds a NUL", _array_edit(image, T, lambda t: setitem(t, 52, b"a\0b"))))
    out.append(("<|endoftext|> renamed", _array_edit(image, T, lambda t: setitem(t, eos, b"<|end|>"))))
    out.append(("one token fewer", _array_edit(image, T, lambda t: t[:-1])))
    out.append(("one token more", _array_edit(image, T, lambda t: t + [b"extra-token"])))
    out.append(("tokens as u32 array", _array_edit(image, T, lambda t: list(range(len(t))), U32)))
    for v in (-1, 7, 8, 99, 2**31 - 1, -2**31):
        out.append((f"token type of token 0 = {v}", _array_edit(image, TT, lambda t, v=v: setitem(t, 0, v))))
    for v in (0, 2, 3, 4, 5, 6):
        out.append((f"every token type = {v}", _array_edit(image, TT, lambda t, v=v: [v] * len(t))))
    out.append(("token types as u32", _array_edit(image, TT, lambda t: t, U32)))
    out.append(("token types as i8", _array_edit(image, TT, lambda t: [max(-128, min(127, x)) for x in t], I8)))
    out.append(("token types one short", _array_edit(image, TT, lambda t: t[:-1])))
    for i in (0, len(merges) - 1):
        for bad in (b"ab", b" ab", b"ab ", b"a  b", b"", b" ", b"zzzq x", b"\xc4\xa0 \xc4\xa0\xc4\xa0\xc4\xa0",
                    b"a b c", merges[1]):
            out.append((f"merge {i} = {bad!r}", _array_edit(image, M, lambda m, i=i, bad=bad: setitem(m, i, bad))))
    out.append(("merges reversed", _array_edit(image, M, lambda m: m[::-1])))
    out.append(("merges halved", _array_edit(image, M, lambda m: m[: len(m) // 2])))
    out.append(("merges as u32 array", _array_edit(image, M, lambda m: list(range(len(m))), U32)))
    out.append(("merges as a string", _put(M, STR, encode_value(STR, b"a b"))))
    return out


def gguf_value_mutants(data: bytes, n: int, seed: int = 0):
    """Yield (description, bytes) for ``n`` value mutants of a valid GGUF file: the catalogue of
    :func:`value_mutations` in order (an even sample of it when ``n`` is smaller), then random
    combinations of two or three of its entries."""
    rng = random.Random(seed)
    image = GGUFImage(data)
    catalogue = value_mutations(image)
    if n < len(catalogue):  # an even sample of the whole catalogue, so every kind of mutation is tried
        catalogue = [catalogue[i * len(catalogue) // n] for i in range(n)]
    for desc, edit in catalogue:
        yield desc, image.build(edit(image.records))
    for _ in range(n - len(catalogue)):
        picked = rng.sample(catalogue, rng.choice([2, 2, 3]))
        records = image.records
        for _, edit in picked:
            records = edit(records)
        yield " + ".join(d for d, _ in picked), image.build(records)


# shapes whose tensors agree with hyperparameters llama.cpp cannot run (made from synthetic checkpoints)
CONSISTENT_SHAPES = {
    "513 blocks": dict(hidden=32, layers=513, heads=1, kv_heads=1, head_dim=32, ffn=32),
    "odd head size 33": dict(hidden=66, layers=1, heads=2, kv_heads=1, head_dim=33, ffn=32),
    "head size 2": dict(hidden=32, layers=1, heads=16, kv_heads=16, head_dim=2, ffn=32),
    "kv heads 3 of 4": dict(hidden=64, layers=1, heads=4, kv_heads=3, head_dim=16, ffn=32),
}


def shape_mutants(work: Path):
    """Yield (description, bytes) for GGUF files whose tensors match hostile shape hyperparameters."""
    from qembed_gguf import convert, registry
    from qembed_gguf.synthetic import Qwen3Shape, write_checkpoint

    tiny = registry.bundled_dir(registry.get_spec("tiny"))
    for i, (name, dims) in enumerate(CONSISTENT_SHAPES.items()):
        folder, out = work / f"shape-{i}", work / f"shape-{i}.gguf"
        try:
            write_checkpoint(folder, Qwen3Shape(vocab=4096, **dims), tokenizer_from=tiny, seed=1)
            convert(folder, outtype="f16", outfile=out, quiet=True, force=True)
        except Exception as exc:  # noqa: BLE001 - the converter refusing the shape is fine: nothing to load
            log.info("shape %s: not convertible (%s: %s)", name, type(exc).__name__, exc)
            continue
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        yield f"shape: {name}", out.read_bytes()


def safetensors_mutants(data: bytes, n: int, seed: int = 0):
    """Yield (description, bytes) for ``n`` mutants of a valid safetensors file."""
    rng = random.Random(seed)
    hlen = struct.unpack_from("<Q", data, 0)[0]
    header = json.loads(data[8:8 + hlen])
    names = [k for k in header if k != "__metadata__"]
    made = 0
    for cut in sorted({1, 7, 8, 9, 8 + hlen // 2, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, len(data) - 1}):
        if made < n:
            made += 1
            yield f"truncate at {cut}", data[:cut]

    def rebuild(h: dict) -> bytes:
        raw = json.dumps(h).encode()
        raw += b" " * (-len(raw) % 8)
        return struct.pack("<Q", len(raw)) + raw + data[8 + hlen:]

    kinds = ["trunc", "hlen", "jsonflip", "dtype", "shape", "offsets", "overlap", "oob", "types", "dataflip", "extra"]
    while made < n:
        kind = kinds[made % len(kinds)]
        h = json.loads(data[8:8 + hlen])
        name = rng.choice(names)
        if kind == "trunc":
            cut = rng.randrange(1, len(data))
            out, desc = data[:cut], f"truncate at {cut}"
        elif kind == "hlen":
            v = rng.choice(HUGE + [0, 1, hlen - 1, hlen + 1, len(data), 100 * 2**20 + 1])
            out, desc = struct.pack("<Q", v % 2**64) + data[8:], f"header length = {v}"
        elif kind == "jsonflip":
            m = bytearray(data)
            for _ in range(rng.choice([1, 2, 8])):
                m[8 + rng.randrange(hlen)] ^= 1 << rng.randrange(8)
            out, desc = bytes(m), "bit flips in the JSON header"
        elif kind == "dtype":
            h[name]["dtype"] = rng.choice(["F64", "I8", "BOOL", "F8_E4M3", "XX", 7, None, "bf16"])
            out, desc = rebuild(h), f"{name} dtype = {h[name]['dtype']!r}"
        elif kind == "shape":
            s = list(h[name]["shape"])
            choice = rng.choice(["neg", "zero", "big", "drop", "add", "str", "swap"])
            if choice == "neg":
                s[0] = -s[0]
            elif choice == "zero":
                s[0] = 0
            elif choice == "big":
                s[0] = 2**62
            elif choice == "drop" and len(s) > 1:
                s = s[:1]
            elif choice == "add":
                s = s + [1]
            elif choice == "str":
                s = [str(x) for x in s]
            else:
                s = s[::-1]
            h[name]["shape"] = s
            out, desc = rebuild(h), f"{name} shape = {s}"
        elif kind in ("offsets", "overlap", "oob"):
            a, b = h[name]["data_offsets"]
            other = h[rng.choice(names)]["data_offsets"]
            new = {"offsets": [b, a], "overlap": list(other), "oob": [a, len(data) * 2]}[kind]
            h[name]["data_offsets"] = new
            out, desc = rebuild(h), f"{name} data_offsets = {new}"
        elif kind == "types":
            h[name] = rng.choice([[], "x", None, 3, {"dtype": "F32"}, {"dtype": "F32", "shape": [1], "data_offsets": [0]}])
            out, desc = rebuild(h), f"{name} entry = {h[name]!r}"
        elif kind == "dataflip":
            m = bytearray(data)
            m[rng.randrange(8 + hlen, len(data))] ^= 1 << rng.randrange(8)
            out, desc = bytes(m), "bit flip in tensor data"
        else:
            h["__metadata__"] = rng.choice([{"format": "pt"}, {"a": 1}, "x", None])
            out, desc = rebuild(h), f"__metadata__ = {h['__metadata__']!r}"
        made += 1
        yield desc, out


# -- the worker: loads mutants sent on stdin, one JSON line each way ------------------------------------------
def _load_gguf(path: str) -> dict:
    """``info`` (text and --json), then check_gguf, then the Embedder: the outcome and where it was decided."""
    import numpy as np
    from click.testing import CliRunner

    from qembed_gguf import Embedder
    from qembed_gguf.cli import main as cli
    from qembed_gguf.errors import QembedError
    from qembed_gguf.gguf_check import check_gguf

    for args in (["info", path], ["info", "--json", path]):
        result = CliRunner().invoke(cli, args)
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            exc = result.exception
            return {"outcome": "untyped", "stage": "info", "error": f"info: {type(exc).__name__}: {exc}"[:300]}
        if result.exit_code not in (0, 1, 3):
            return {"outcome": "untyped", "stage": "info", "error": f"info exited with {result.exit_code}"}
    stage = "check"
    try:
        check_gguf(path)
        stage = "load"
        with Embedder(path, n_threads=1) as e:
            stage = "embed"
            v = e.embed(["hello world", "bonjour", ""])
    except QembedError as exc:
        return {"outcome": "typed", "stage": stage, "error": f"{type(exc).__name__}: {exc}"[:300]}
    if not np.isfinite(v).all():
        return {"outcome": "bad_vectors", "stage": "embed", "error": "non-finite vectors without a typed error"}
    if (np.abs(v).max(axis=1) == 0).any():
        return {"outcome": "bad_vectors", "stage": "embed", "error": "all-zero vectors without an error"}
    return {"outcome": "ok"}


def worker() -> None:
    from qembed_gguf import convert
    from qembed_gguf.errors import QembedError

    # answers go to a private copy of stdout; whatever llama.cpp prints to fd 1 goes to stderr
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    for line in sys.stdin:
        job = json.loads(line)
        try:
            if job["kind"] == "gguf":
                res = _load_gguf(job["path"])
            else:
                convert(job["path"], outtype="f16", outfile=job["out"], force=True, quiet=True)
                res = {"outcome": "ok"}
        except QembedError as exc:
            res = {"outcome": "typed", "error": f"{type(exc).__name__}: {exc}"[:300]}
        except Exception as exc:  # noqa: BLE001 - that is what we are looking for
            res = {"outcome": "untyped", "error": f"{type(exc).__name__}: {exc}"[:300]}
        answers.write(json.dumps(res) + "\n")
        answers.flush()


BUGS = ("untyped", "crash", "hang", "bad_vectors")


class Pool:
    """One worker subprocess, restarted after a crash or a hang."""

    def __init__(self):
        self.proc = None

    def _start(self):
        # the worker imports the installed qembed_gguf, as the tests and users do
        # GGML_NO_BACKTRACE: a failed GGML_ASSERT aborts at once instead of attaching gdb first
        self.proc = subprocess.Popen([sys.executable, __file__, "_worker"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     env={**os.environ, "GGML_NO_BACKTRACE": "1"})

    def run(self, job: dict, timeout: float) -> dict:
        import selectors

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        # the first job of a fresh worker also pays its imports
        ready = sel.select(timeout + (5 if job.get("_fresh") else 0))
        sel.close()
        if not ready:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
            return {"outcome": "hang"}
        line = self.proc.stdout.readline()
        if not line:
            rc = self.proc.wait()
            self.proc = None
            return {"outcome": "crash", "error": f"worker died with {rc}"}
        return json.loads(line)

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait()


def fuzz(kind: str, n: int, work: Path, *, seed: int = 0, timeout: float = TIMEOUT_S, base: Path | None = None) -> dict:
    """Generate ``n`` mutants of ``kind`` and load each; a summary.

    ``kind``: 'gguf' (structure mutations), 'values' (value mutations of GGUF files, the
    consistent-shape files first) or 'safetensors'. ``base``: the GGUF file to mutate (default:
    the bundled tiny model, converted to Q8_0).
    """
    import itertools

    from qembed_gguf import convert, registry

    tiny = registry.bundled_dir(registry.get_spec("tiny"))
    work.mkdir(parents=True, exist_ok=True)
    if kind in ("gguf", "values"):
        if base is None:
            base = work / "base.gguf"
            if not base.exists():
                convert(tiny, outtype="q8_0", outfile=base, quiet=True, force=True)
        if kind == "gguf":
            mutants = gguf_mutants(base.read_bytes(), n, seed)
        else:
            shapes = list(itertools.islice(shape_mutants(work), n))
            mutants = itertools.chain(shapes, gguf_value_mutants(base.read_bytes(), n - len(shapes), seed))
    else:
        folder = work / "ckpt"
        if folder.exists():
            shutil.rmtree(folder)
        shutil.copytree(tiny, folder)
        base = folder / "model.safetensors"
        original = base.read_bytes()
        mutants = safetensors_mutants(original, n, seed)
    is_gguf = kind != "safetensors"
    pool = Pool()
    counts: dict[str, int] = {}
    stages: dict[str, int] = {}
    bugs, late = [], []
    started = time.time()
    fresh = True
    try:
        for i, (desc, blob) in enumerate(mutants):
            path = work / "mutant.gguf" if is_gguf else base
            path.write_bytes(blob)
            job = {"kind": "gguf" if is_gguf else kind, "path": str(path if is_gguf else folder),
                   "out": str(work / "out.gguf"), "_fresh": fresh}
            res = pool.run(job, timeout)
            fresh = res["outcome"] in ("crash", "hang")
            counts[res["outcome"]] = counts.get(res["outcome"], 0) + 1
            if res["outcome"] == "typed" and "stage" in res:
                stages[res["stage"]] = stages.get(res["stage"], 0) + 1
                if res["stage"] != "check" and len(late) < 100:  # refused only after llama.cpp saw the file
                    late.append({"mutant": i, "mutation": desc, **res})
            if res["outcome"] in BUGS:
                bugs.append({"mutant": i, "mutation": desc, **res})
                (work / f"bug-{i}.{'gguf' if is_gguf else kind}").write_bytes(blob)
                log.warning("mutant %d (%s): %s %s", i, desc, res["outcome"], res.get("error", ""))
            if (i + 1) % 250 == 0:
                log.info("%s: %d mutants, %s", kind, i + 1, counts)
    finally:
        pool.close()
    summary = {"format": kind, "mutants": n, "outcomes": counts, "bugs": bugs,
               "seconds": round(time.time() - started, 1)}
    if stages:
        summary["stages"] = stages
        summary["refused_after_check"] = late
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", type=int, default=2000, help="GGUF mutants")
    p.add_argument("--safetensors", type=int, default=2000, help="safetensors mutants")
    p.add_argument("--values", type=int, default=0, help="GGUF value mutants (hostile values in well-formed files)")
    p.add_argument("--base", type=Path, default=None,
                   help="GGUF file to mutate (--gguf, --values; default: the bundled tiny model as Q8_0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the summary JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    results = []
    with tempfile.TemporaryDirectory(prefix="qembed-fuzz-") as tmp:
        for kind, n in (("gguf", args.gguf), ("values", args.values), ("safetensors", args.safetensors)):
            if n:
                r = fuzz(kind, n, Path(tmp) / kind, seed=args.seed, base=args.base if kind != "safetensors" else None)
                log.info("%s: %d mutants in %.0f s: %s", kind, n, r["seconds"], r["outcomes"])
                results.append(r)
    summary = {"timeout_s": TIMEOUT_S, "seed": args.seed, "base": str(args.base) if args.base else "tiny (Q8_0)",
               "results": results}
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(json.dumps({r["format"]: r["outcomes"] for r in results}))
    return 1 if any(r["bugs"] for r in results) else 0


if __name__ == "__main__":
    if sys.argv[1:] == ["_worker"]:
        logging.disable(logging.CRITICAL)
        worker()
        sys.exit(0)
    sys.exit(main())
