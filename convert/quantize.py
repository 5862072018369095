"""Output types, the per-tensor type policy (pure), row-chunk encoding, and llama.cpp's quantize step.

* f32 / f16 / bf16 / q8_0 / q4_0 are written here in Python with ``gguf.quants`` (Q8_0 and BF16
  are bit-exact with libggml). The policy is llama.cpp's converter's: 1-D tensors and norms stay
  F32; a tensor whose rows are not a multiple of the block size falls back to F16.
* K-quants (q4_k_m, q5_k_m, q6_k …) and the i-quants iq4_xs / iq4_nl are llama.cpp's own quantizer
  (``llama_model_quantize`` through llama-cpp-python), run on a lossless intermediate GGUF. These
  are the imatrix-aware types: given an importance matrix (:mod:`.calibrate`) the quantizer
  minimises the error weighted by each input column's mean squared activation.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Mapping

import gguf
import numpy as np

from qembed_gguf.devices import usable_cpus
from qembed_gguf.errors import BackendError, ConversionError, InputError

__all__ = ["OutType", "OUTTYPES", "get_outtype", "choose_type", "predict_type", "encode_rows", "llama_quantize",
           "llama_quiet"]

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType
BLOCK_WEIGHT = re.compile(r"blk\.(\d+)\.(\w+)\.weight$")  # a block's matrix: (layer, kind)
FT = gguf.LlamaFileType


@dataclasses.dataclass(frozen=True)
class OutType:
    """An output type: written by Python (``qtype`` set) or by llama.cpp's quantizer (``llama_ftype``)."""

    name: str
    file_type: gguf.LlamaFileType
    description: str
    qtype: gguf.GGMLQuantizationType | None = None   # Python path
    llama_ftype: str | None = None                   # llama_cpp constant name, K-quant path

    @property
    def by_llama(self) -> bool:
        return self.llama_ftype is not None


OUTTYPES: dict[str, OutType] = {t.name: t for t in (
    OutType("f32", FT.ALL_F32, "32-bit float, reference precision", qtype=Q.F32),
    OutType("f16", FT.MOSTLY_F16, "16-bit float, lossless for bf16 weights in range", qtype=Q.F16),
    OutType("bf16", FT.MOSTLY_BF16, "bfloat16, bit-exact copy of the released weights", qtype=Q.BF16),
    OutType("q8_0", FT.MOSTLY_Q8_0, "8.5 bits/weight, near-lossless (default)", qtype=Q.Q8_0),
    OutType("q4_0", FT.MOSTLY_Q4_0, "4.5 bits/weight, legacy 4-bit, fast on CPU", qtype=Q.Q4_0),
    OutType("q6_k", FT.MOSTLY_Q6_K, "6.6 bits/weight, llama.cpp K-quant", llama_ftype="LLAMA_FTYPE_MOSTLY_Q6_K"),
    OutType("q5_k_m", FT.MOSTLY_Q5_K_M, "~5.7 bits/weight, llama.cpp K-quant mix", llama_ftype="LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    OutType("q5_k_s", FT.MOSTLY_Q5_K_S, "~5.5 bits/weight, llama.cpp K-quant", llama_ftype="LLAMA_FTYPE_MOSTLY_Q5_K_S"),
    OutType("q4_k_m", FT.MOSTLY_Q4_K_M, "~4.9 bits/weight, llama.cpp K-quant mix", llama_ftype="LLAMA_FTYPE_MOSTLY_Q4_K_M"),
    OutType("q4_k_s", FT.MOSTLY_Q4_K_S, "~4.6 bits/weight, llama.cpp K-quant", llama_ftype="LLAMA_FTYPE_MOSTLY_Q4_K_S"),
    OutType("q3_k_m", FT.MOSTLY_Q3_K_M, "~3.9 bits/weight, llama.cpp K-quant mix (lossy)", llama_ftype="LLAMA_FTYPE_MOSTLY_Q3_K_M"),
    OutType("iq4_xs", FT.MOSTLY_IQ4_XS, "~4.3 bits/weight, llama.cpp i-quant (best with --calibrate)",
            llama_ftype="LLAMA_FTYPE_MOSTLY_IQ4_XS"),
    OutType("iq4_nl", FT.MOSTLY_IQ4_NL, "~4.5 bits/weight, llama.cpp non-linear 4-bit (best with --calibrate)",
            llama_ftype="LLAMA_FTYPE_MOSTLY_IQ4_NL"),
)}


def get_outtype(name: str) -> OutType:
    try:
        return OUTTYPES[name.lower()]
    except KeyError:
        raise ConversionError(f"unknown output type {name!r}; choose one of {', '.join(OUTTYPES)}") from None


def choose_type(gguf_name: str, shape: tuple[int, ...], outtype: OutType) -> tuple[gguf.GGMLQuantizationType, str | None]:
    """The GGML type of one tensor for a Python-written ``outtype``, and a note if it fell back.

    ``shape`` is in HF order (rows, cols). Mirrors llama.cpp's convert_hf_to_gguf.py policy.
    """
    if outtype.qtype is None:
        raise ConversionError(f"{outtype.name} is written by llama.cpp's quantizer, not by choose_type")
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return Q.F32, None
    qtype = outtype.qtype
    block, _ = gguf.GGML_QUANT_SIZES[qtype]
    if shape[-1] % block:
        return Q.F16, f"rows of {shape[-1]} are not a multiple of the {qtype.name} block size {block}: F16"
    return qtype, None


# llama.cpp's K-quant mixes, for the Qwen3 tensors (src/llama-quant.cpp, llama_tensor_get_type):
# (default type, attn_v and ffn_down in the "more bits" layers, attn_v elsewhere, ffn_down elsewhere,
#  attn_output). token_embd (no output.weight: llama.cpp treats the embeddings as tied) is Q6_K. A
# reranker's cls.output.weight falls in llama.cpp's OTHER category: the default type (with the
# usual block-size fallback), like attn_q/attn_k/ffn_gate/ffn_up.
_KQUANT_MIX = {
    "q6_k": (Q.Q6_K, Q.Q6_K, Q.Q6_K, Q.Q6_K, Q.Q6_K),
    "q5_k_m": (Q.Q5_K, Q.Q6_K, Q.Q5_K, Q.Q5_K, Q.Q5_K),
    "q5_k_s": (Q.Q5_K, Q.Q5_K, Q.Q5_K, Q.Q5_K, Q.Q5_K),
    "q4_k_m": (Q.Q4_K, Q.Q6_K, Q.Q4_K, Q.Q4_K, Q.Q4_K),
}
# a 256-value K-quant block that does not divide a row falls back to a 32-value type
_KQUANT_FALLBACK = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.Q3_K: Q.Q4_0}


def _more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers and every third between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def predict_type(gguf_name: str, shape: tuple[int, ...], outtype: OutType, *, n_layer: int) -> gguf.GGMLQuantizationType:
    """The GGML type ``gguf_name`` gets in an ``outtype`` file written by ``qembed-gguf convert``.

    Python-written types follow :func:`choose_type`. The K-quant mixes mirror llama.cpp's quantizer
    for the tensors of a Qwen3 embedding or reranker model converted here (layers in file order, no
    ``output.weight``); the tests check the mirror against files llama.cpp's quantizer wrote.
    ``shape`` is in HF order (rows, cols). Used to plan memory before a file exists.
    """
    if outtype.qtype is not None:
        return choose_type(gguf_name, shape, outtype)[0]
    if outtype.name not in _KQUANT_MIX:
        raise InputError(f"no type prediction for {outtype.name} (only {', '.join(_KQUANT_MIX)} and the Python-written "
                         f"types); plan from a converted file instead")
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return Q.F32
    default, more, attn_v, ffn_down, attn_output = _KQUANT_MIX[outtype.name]
    cols = shape[-1]
    if gguf_name == "token_embd.weight":
        return Q.Q6_K if cols % 256 == 0 else Q.Q8_0
    m = BLOCK_WEIGHT.match(gguf_name)
    kind = m.group(2) if m else ""
    if kind in ("attn_v", "ffn_down"):
        qtype = more if _more_bits(int(m.group(1)), n_layer) else (attn_v if kind == "attn_v" else ffn_down)
    elif kind == "attn_output":
        qtype = attn_output
    else:
        qtype = default
    if cols % gguf.GGML_QUANT_SIZES[qtype][0]:
        qtype = _KQUANT_FALLBACK.get(qtype, Q.F16)
        if cols % gguf.GGML_QUANT_SIZES[qtype][0]:
            qtype = Q.F16
    return qtype


def row_nbytes(qtype: gguf.GGMLQuantizationType, cols: int) -> int:
    block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    return cols // block * type_size


def encode_rows(rows_f32: np.ndarray, qtype: gguf.GGMLQuantizationType) -> np.ndarray:
    """Encode a float32 chunk of whole rows as ``qtype`` (the bytes llama.cpp reads)."""
    if qtype == Q.F32:
        return np.ascontiguousarray(rows_f32, dtype=np.float32)
    if qtype == Q.F16:
        return rows_f32.astype(np.float16)
    return gguf.quants.quantize(rows_f32, qtype)


@contextlib.contextmanager
def _silenced_stderr(enabled: bool):
    """Mute C-level stderr (llama.cpp prints its quantize log there) unless ``enabled`` is False."""
    if not enabled:
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@contextlib.contextmanager
def llama_quiet():
    """llama.cpp's log (through llama-cpp-python's logger, and C stderr) muted unless this module
    logs at DEBUG level."""
    show = log.isEnabledFor(logging.DEBUG)
    # llama-cpp-python routes llama.cpp's log through this logger's level; C code may also write
    # to fd 2 directly, hence both
    bindings_log = logging.getLogger("llama-cpp-python")
    saved_level = bindings_log.level
    bindings_log.setLevel(logging.DEBUG if show else logging.ERROR)
    try:
        with _silenced_stderr(not show):
            yield
    finally:
        bindings_log.setLevel(saved_level)


def _imatrix_array(llama_cpp, imatrix: Mapping[str, np.ndarray], keep: list):
    """``imatrix`` as llama.cpp's array of ``llama_model_imatrix_data``, ended by a null name.
    Every buffer it points into is appended to ``keep`` (alive until the quantizer returns)."""
    entries = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()  # zeroed: the terminator
    for entry, (name, values) in zip(entries, imatrix.items()):
        data = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        raw = name.encode()
        keep += [data, raw]
        entry.name, entry.size = raw, data.size
        entry.data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
    keep.append(entries)
    return ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))


def _kv_overrides(llama_cpp, metadata: Mapping[str, str | int], keep: list):
    """``metadata`` as llama.cpp's key/value overrides (strings and integers; the quantizer writes them
    into the output, integers as uint32), ended by an empty key."""
    overrides = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for o, (key, value) in zip(overrides, metadata.items()):
        if len(key.encode()) > 127:
            raise ConversionError(f"metadata key {key[:40]!r}… is longer than llama.cpp's 127 bytes")
        o.key = key.encode()
        if isinstance(value, int) and not isinstance(value, bool):
            o.tag, o.value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, value
        else:  # llama.cpp's 128-byte field, cut at a character boundary
            o.tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            o.value.val_str = str(value).encode()[:127].decode("utf-8", "ignore").encode()
    keep.append(overrides)
    return ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))


def llama_quantize(src: Path, dst: Path, outtype: OutType, *, threads: int | None = None,
                   imatrix: Mapping[str, np.ndarray] | None = None,
                   metadata: Mapping[str, str | int] | None = None) -> None:
    """Quantize GGUF ``src`` into ``dst`` with llama.cpp's quantizer (K-quants, i-quants).

    ``imatrix``: GGUF weight name → importance of each input column (float32, the mean squared
    activation: :meth:`.calibrate.Imatrix.values`), as llama.cpp's ``llama-quantize --imatrix``
    passes it. ``metadata``: keys to add to ``dst`` (string or integer values). llama.cpp's
    per-tensor log (C stderr) is shown only when this module logs at DEBUG level.
    """
    try:
        import llama_cpp
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise BackendError(f"llama-cpp-python is needed for {outtype.name}: {exc}") from exc
    ftype = getattr(llama_cpp, outtype.llama_ftype or "", None)
    if ftype is None:
        raise BackendError(f"this llama-cpp-python build has no {outtype.llama_ftype}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or usable_cpus()  # this process's affinity mask
    keep: list = []  # the C arrays and every buffer they point into, alive until the call returns
    if imatrix:
        params.imatrix = _imatrix_array(llama_cpp, imatrix, keep)
    if metadata:
        params.kv_overrides = _kv_overrides(llama_cpp, metadata, keep)
    with llama_quiet():
        llama_cpp.llama_backend_init()
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    del keep
    if rc != 0:
        raise BackendError(f"llama.cpp's quantizer failed with code {rc} while writing {outtype.name} ({dst})"
                           + (" with an importance matrix" if imatrix else ""))
