"""Calibrated quantization: an importance matrix (imatrix) from a text corpus, and llama.cpp's imatrix file.

An importance matrix holds, for each input column ``j`` of each matmul weight, the mean over
tokens of the squared input activation ``x_j**2`` on a calibration corpus; llama.cpp's quantizer
then minimises the quantization error of each weight row weighted by it, spending precision on the
columns that carry the signal. This module computes it as llama.cpp's ``llama-imatrix`` does, but
without llama.cpp's graph or torch: a numpy forward pass of the Qwen3 decoder (RMSNorm, per-head
q/k norm, RoPE, GQA causal attention, SwiGLU) over the checkpoint's own weights, one layer at a time
over every chunk, so memory holds one layer's float32 weights and the corpus's hidden states.

The corpus is tokenized by llama.cpp's tokenizer from a vocab-only load of the lossless GGUF the
converter writes anyway (the tokens the Embedder feeds the model, with no extra dependency: HF
``tokenizers`` is only a test reference here) and split into chunks of :data:`CHUNK_TOKENS`
tokens, each ending with ``<|endoftext|>`` as every embedded input does (when the GGUF appends
one), at most :data:`MAX_CHUNKS` of them.

Files are llama.cpp's GGUF imatrix format (``llama-imatrix -o x.gguf``; ``llama-quantize --imatrix``
reads it): ``general.type = "imatrix"``, ``imatrix.datasets`` / ``imatrix.chunk_count`` /
``imatrix.chunk_size``, and per weight ``<name>.in_sum2`` (the raw sums, F32, ne = (cols, n_mat))
and ``<name>.counts`` (tokens summed, F32, ne = (1, n_mat)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
import unicodedata
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import gguf
import numpy as np

from qembed_gguf.atomic import atomic_path
from qembed_gguf.errors import BackendError, CalibrationError

from .checkpoint import Checkpoint
from .mapping import Qwen3Params
from .quantize import BLOCK_WEIGHT

__all__ = ["Imatrix", "CHUNK_TOKENS", "MAX_CHUNKS", "MATMUL_INPUTS", "matmul_weights", "split_chunks",
           "tokenize_corpus", "decoder_layer", "rope_tables", "compute_imatrix", "check_imatrix",
           "save_imatrix", "load_imatrix", "quantize_metadata", "n_flops"]

log = logging.getLogger(__name__)

CHUNK_TOKENS = 512   # tokens per chunk, the pooling token included (llama-imatrix's default context)
MAX_CHUNKS = 64      # at most this many chunks (32,768 tokens) are read from a corpus
#: the input each matmul weight of a block multiplies, by GGUF weight kind (llama.cpp's graph)
MATMUL_INPUTS = {"attn_q": "attn_in", "attn_k": "attn_in", "attn_v": "attn_in", "attn_output": "attn_out",
                 "ffn_gate": "ffn_in", "ffn_up": "ffn_in", "ffn_down": "ffn_act"}
_READ_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Imatrix:
    """Per matmul weight (GGUF name): ``sums`` of squared inputs (float32, ``n_mat × cols`` values,
    one matrix for a dense model) and ``counts`` of tokens summed (one per matrix)."""

    sums: Mapping[str, np.ndarray]
    counts: Mapping[str, np.ndarray]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0

    def values(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantizer takes: each weight's sums over its counts (float32), a
        matrix no token reached all ones (as ``llama-quantize`` loads it)."""
        out = {}
        for name, sums in self.sums.items():
            counts = np.asarray(self.counts[name], dtype=np.float64)
            per = sums.reshape(len(counts), -1).astype(np.float64)
            safe = np.where(counts > 0, counts, 1.0)[:, None]
            out[name] = np.where(counts[:, None] > 0, per / safe, 1.0).astype(np.float32).reshape(-1)
        return out

    def __len__(self) -> int:
        return len(self.sums)


def matmul_weights(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, int]:
    """GGUF name → input columns of every block matmul weight an imatrix covers (``shapes``: GGUF
    name → HF-order shape, e.g. from the converter's plan)."""
    return {name: shape[-1] for name, shape in shapes.items()
            if (m := BLOCK_WEIGHT.match(name)) and m.group(2) in MATMUL_INPUTS and len(shape) == 2}


# -- the corpus ------------------------------------------------------------------------------------
def _corpus_texts(path: Path) -> Iterator[str]:
    """The corpus as NFC text pieces that end at line breaks, read a block at a time."""
    try:
        fh = open(path, "rb")
    except OSError as exc:
        raise CalibrationError(f"the calibration corpus cannot be read: {exc.strerror}", path=path) from None
    with fh:
        pending, start = b"", 0
        while True:
            block = fh.read(_READ_BLOCK)
            data = pending + block
            if start == 0 and data.startswith(b"\xef\xbb\xbf"):
                data, start = data[3:], 3
            cut = len(data) if not block else data.rfind(b"\n") + 1
            if block and not cut and len(data) > 16 * _READ_BLOCK:  # one huge line: cut between characters
                cut = len(data) - next((i for i in range(1, 5) if data[-i] & 0xC0 != 0x80), 1)
            try:
                text = data[:cut].decode("utf-8")
            except UnicodeDecodeError as exc:
                raise CalibrationError(f"the calibration corpus is not UTF-8 text (byte offset {start + exc.start})",
                                       path=path) from None
            if text:
                yield unicodedata.normalize("NFC", text)
            pending, start = data[cut:], start + cut
            if not block:
                return


def split_chunks(ids: Sequence[int], *, eos: int | None, chunk_tokens: int = CHUNK_TOKENS,
                 max_chunks: int = MAX_CHUNKS) -> list[np.ndarray]:
    """Token ids cut into chunks of ``chunk_tokens`` (the last may be shorter), each ending with
    ``eos`` when given; at most ``max_chunks`` of them. Pure."""
    if chunk_tokens < 2 or max_chunks < 1:
        raise CalibrationError(f"chunks need at least 2 tokens and 1 chunk, got {chunk_tokens} x {max_chunks}")
    body = chunk_tokens - (eos is not None)
    ids = np.asarray(ids, dtype=np.int64)[:body * max_chunks]
    tail = [] if eos is None else [eos]
    return [np.concatenate([ids[i:i + body], np.asarray(tail, dtype=np.int64)]) for i in range(0, len(ids), body)]


@contextlib.contextmanager
def _llama_vocab(gguf_path: Path):
    """llama.cpp's tokenizer of ``gguf_path`` (a vocab-only load): (llama_cpp module, vocab)."""
    import llama_cpp

    from .quantize import llama_quiet

    mparams = llama_cpp.llama_model_default_params()
    mparams.vocab_only = True
    with llama_quiet():
        llama_cpp.llama_backend_init()
        model = llama_cpp.llama_model_load_from_file(str(gguf_path).encode(), mparams)
    if not model:
        raise BackendError(f"llama.cpp could not load the vocabulary of {gguf_path}")
    try:
        yield llama_cpp, llama_cpp.llama_model_get_vocab(model)
    finally:
        llama_cpp.llama_model_free(model)


def tokenize_corpus(corpus: str | os.PathLike[str], vocab_gguf: str | os.PathLike[str], *,
                    chunk_tokens: int = CHUNK_TOKENS, max_chunks: int = MAX_CHUNKS) -> list[np.ndarray]:
    """The chunks of a UTF-8 text file, tokenized as the Embedder tokenizes (NFC, no BOS, special-token
    text left as text) by llama.cpp with the vocabulary of ``vocab_gguf``; each chunk ends with the
    end-of-sequence token when that GGUF appends one (an embedding model's ``<|endoftext|>``)."""
    corpus = Path(corpus)
    with _llama_vocab(Path(vocab_gguf)) as (lc, vocab):
        eos = lc.llama_vocab_eos(vocab) if lc.llama_vocab_get_add_eos(vocab) else None
        wanted = (chunk_tokens - (eos is not None)) * max_chunks
        pieces, total = [], 0
        for text in _corpus_texts(corpus):
            data = text.encode()
            buf = (lc.llama_token * (len(data) + 16))()  # byte-level BPE: at most one token per byte
            n = lc.llama_tokenize(vocab, data, len(data), buf, len(buf), False, False)
            if n < 0:
                raise BackendError(f"llama.cpp could not tokenize {len(data)} bytes of {corpus}")
            pieces.append(np.ctypeslib.as_array(buf)[:n].astype(np.int64))
            total += n
            if total >= wanted:
                break
    ids = np.concatenate(pieces) if pieces else np.empty(0, dtype=np.int64)
    if not len(ids):
        raise CalibrationError("the calibration corpus holds no text", path=corpus)
    chunks = split_chunks(ids, eos=eos, chunk_tokens=chunk_tokens, max_chunks=max_chunks)
    n_tokens = sum(len(c) for c in chunks)
    log.info("calibration corpus %s: %d tokens in %d chunks of up to %d", corpus.name, n_tokens, len(chunks),
             chunk_tokens)
    if n_tokens < 8 * chunk_tokens:
        log.warning("the calibration corpus %s gives only %d tokens; an importance matrix is more reliable from "
                    "%d or more (diverse text like the inputs the model will see)", corpus.name, n_tokens,
                    8 * chunk_tokens)
    return chunks


# -- the Qwen3 decoder, in numpy (pure) ------------------------------------------------------------------
def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(np.square(x), axis=-1, keepdims=True) + np.float32(eps)) * weight


def rope_tables(n: int, head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin (float32, ``(n, head_dim)``) of NEOX-style RoPE (HF's ``rotate_half``) for positions 0..n-1."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.arange(n, dtype=np.float64)[:, None] * inv_freq[None, :]
    angles = np.concatenate([angles, angles], axis=1)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """``x`` (T, heads, head_dim) rotated: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]


def _causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Grouped-query causal attention: q (T, heads, d), k and v (T, kv_heads, d) → (T, heads * d).

    Query head h reads kv head h // (heads / kv_heads), as HF's ``repeat_kv``. Every product is a
    contiguous 3-D batch, so numpy hands it to BLAS."""
    t, heads, d = q.shape
    kv = k.shape[1]
    group = heads // kv
    qg = np.ascontiguousarray(q.reshape(t, kv, group, d).transpose(1, 2, 0, 3)).reshape(kv, group * t, d)
    scores = (qg @ np.ascontiguousarray(k.transpose(1, 2, 0))).reshape(kv, group, t, t)
    scores *= np.float32(d ** -0.5)
    scores += np.triu(np.full((t, t), -np.inf, dtype=np.float32), 1)
    scores -= scores.max(axis=-1, keepdims=True)
    np.exp(scores, out=scores)
    scores /= scores.sum(axis=-1, keepdims=True)
    out = scores.reshape(kv, group * t, t) @ np.ascontiguousarray(v.transpose(1, 0, 2))  # (kv, group*T, d)
    return out.reshape(kv, group, t, d).transpose(2, 0, 1, 3).reshape(t, heads * d)


def decoder_layer(h: np.ndarray, w: Mapping[str, np.ndarray], params: Qwen3Params,
                  rope: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One Qwen3 decoder layer on one sequence's hidden states ``h`` (T, hidden), float32.

    ``w``: the layer's weights by GGUF kind (``attn_norm``, ``attn_q`` …, HF order: rows = outputs);
    ``rope``: :func:`rope_tables` for at least T positions. Returns the new hidden states and the
    input of each matmul by :data:`MATMUL_INPUTS` kind: ``attn_in`` (attn_norm's output: attn_q/k/v),
    ``attn_out`` (the attention before attn_output), ``ffn_in`` (ffn_norm's output: ffn_gate/up) and
    ``ffn_act`` (silu(gate) * up: ffn_down).
    """
    t, eps, d = len(h), params.rms_eps, params.head_dim
    cos, sin = rope[0][:t], rope[1][:t]
    x = _rms_norm(h, w["attn_norm"], eps)
    q = _rms_norm((x @ w["attn_q"].T).reshape(t, params.heads, d), w["attn_q_norm"], eps)
    k = _rms_norm((x @ w["attn_k"].T).reshape(t, params.kv_heads, d), w["attn_k_norm"], eps)
    v = (x @ w["attn_v"].T).reshape(t, params.kv_heads, d)
    attn = _causal_attention(_rope(q, cos, sin), _rope(k, cos, sin), v)
    h = h + attn @ w["attn_output"].T
    x2 = _rms_norm(h, w["ffn_norm"], eps)
    gate = x2 @ w["ffn_gate"].T
    act = gate * (np.float32(0.5) * (np.float32(1) + np.tanh(np.float32(0.5) * gate))) * (x2 @ w["ffn_up"].T)
    h = h + act @ w["ffn_down"].T
    return h, {"attn_in": x, "attn_out": attn, "ffn_in": x2, "ffn_act": act}


# -- the importance matrix ------------------------------------------------------------------------------
def _read_f32(ckpt: Checkpoint, hf_name: str) -> np.ndarray:
    ref = ckpt.tensors[hf_name]
    out = np.empty(ref.shape, dtype=np.float32)
    flat, at = out.reshape(-1), 0
    for rows in ckpt.iter_rows_f32(hf_name):
        flat[at:at + rows.size] = rows.reshape(-1)
        at += rows.size
    return out


def _layer_weights(ckpt: Checkpoint, names: Mapping[str, str], i: int) -> dict[str, np.ndarray]:
    prefix = f"blk.{i}."
    return {g[len(prefix):-len(".weight")]: _read_f32(ckpt, hf) for g, hf in names.items() if g.startswith(prefix)}


def compute_imatrix(ckpt: Checkpoint, names: Mapping[str, str], params: Qwen3Params, chunks: Sequence[np.ndarray],
                    *, dataset: str = "") -> Imatrix:
    """The importance matrix of the model in ``ckpt`` over token-id ``chunks`` (each one sequence).

    ``names``: GGUF name → checkpoint name of every tensor (the converter's plan). The layers run
    one at a time over every chunk: memory holds one layer's float32 weights, every chunk's hidden
    states and one chunk's activations. Progress is logged per layer.
    """
    if not chunks or not all(len(c) for c in chunks):
        raise CalibrationError("no tokens to calibrate on")
    all_ids = np.concatenate(chunks)
    if all_ids.min() < 0 or all_ids.max() >= params.vocab:
        raise CalibrationError(f"token ids must lie in [0, {params.vocab}); got {all_ids.min()}..{all_ids.max()}")
    unique, inverse = np.unique(all_ids, return_inverse=True)
    table = ckpt.read_rows_f32(names["token_embd.weight"], tuple(int(i) for i in unique))
    bounds = np.cumsum([0] + [len(c) for c in chunks])
    hidden = [table[inverse[a:b]] for a, b in zip(bounds[:-1], bounds[1:])]
    del table
    rope = rope_tables(max(len(c) for c in chunks), params.head_dim, params.rope_theta)
    n_tokens, sums, start = int(bounds[-1]), {}, time.monotonic()
    log.info("calibration: %d layers over %d tokens (~%.2g TFLOP in numpy float32)", params.layers, n_tokens,
             n_flops(params, n_tokens) / 1e12)
    for i in range(params.layers):
        w = _layer_weights(ckpt, names, i)
        acc = {kind: 0.0 for kind in set(MATMUL_INPUTS.values())}
        for c, h in enumerate(hidden):
            hidden[c], inputs = decoder_layer(h, w, params, rope)
            for kind, x in inputs.items():
                acc[kind] = acc[kind] + np.einsum("ij,ij->j", x, x, dtype=np.float64)
        for kind, source in MATMUL_INPUTS.items():
            name = f"blk.{i}.{kind}.weight"
            sums[name] = acc[source].astype(np.float32)
            if not np.isfinite(sums[name]).all():
                raise CalibrationError("the activations overflowed float32 (non-finite importance)", tensor=name)
        del w
        log.info("calibration: layer %d/%d done (%d tokens, %.0f s)", i + 1, params.layers, n_tokens,
                 time.monotonic() - start)
    counts = {name: np.array([n_tokens], dtype=np.int64) for name in sums}
    return Imatrix(sums, counts, (dataset,) if dataset else (), len(chunks), max(len(c) for c in chunks))


def check_imatrix(imatrix: Imatrix, shapes: Mapping[str, tuple[int, ...]], *, path: str | os.PathLike[str] | None = None
                  ) -> Imatrix:
    """``imatrix`` checked against a model (``shapes``: GGUF name → HF-order shape): every block matmul
    weight has an entry whose size is its input columns; entries for weights the model lacks are
    refused (an ``output.weight`` entry, which ``llama-imatrix --process-output`` adds, is dropped
    with a warning). Returns the imatrix restricted to the model's tensors."""
    wanted = matmul_weights(shapes)
    for name, cols in wanted.items():
        if name not in imatrix.sums:
            raise CalibrationError(f"has no entry for this weight of the model ({len(wanted)} expected, "
                                   f"{len(imatrix)} in the file): was it computed for another model?",
                                   path=path, tensor=name)
        size = imatrix.sums[name].size
        if size != cols:
            raise CalibrationError(f"holds {size} values but the weight has {cols} input columns: the imatrix was "
                                   f"computed for another model", path=path, tensor=name)
    for name, values in imatrix.sums.items():
        if name in wanted:
            continue
        if name == "output.weight" and name not in shapes:
            log.warning("%s: ignoring the imatrix entry for output.weight (this model has none)", path)
            continue
        shape = shapes.get(name)
        if shape is None or len(shape) != 2 or values.size != shape[-1]:
            raise CalibrationError(f"is not a matmul weight of this model with {values.size} input columns",
                                   path=path, tensor=name)
    keep = [n for n in imatrix.sums if n in shapes]
    for name in keep:
        if not (np.asarray(imatrix.counts[name]) > 0).all():
            log.warning("%s: imatrix entry %s has a zero count: uniform importance (llama-quantize does the same)",
                        path, name)
    return dataclasses.replace(imatrix, sums={n: imatrix.sums[n] for n in keep},
                               counts={n: imatrix.counts[n] for n in keep})


# -- llama.cpp's GGUF imatrix file ------------------------------------------------------------------------
def save_imatrix(imatrix: Imatrix, path: str | os.PathLike[str], *, force: bool = True) -> Path:
    """Write ``imatrix`` as llama.cpp's GGUF imatrix file (atomically: whole or not at all; a file
    that appears meanwhile is kept unless ``force``: OutputExistsError)."""
    path = Path(path)
    with atomic_path(path, overwrite=force) as tmp:
        writer = gguf.GGUFWriter(tmp, "imatrix")
        try:
            writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)  # llama-imatrix writes none
            writer.add_type(gguf.GGUFType.IMATRIX)
            # llama-quantize refuses a GGUF imatrix without the three imatrix.* keys: never an empty list
            writer.add_array(gguf.Keys.IMatrix.DATASETS, list(imatrix.datasets) or ["unknown"])
            writer.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, imatrix.chunk_count)
            writer.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, imatrix.chunk_size)
            for name in sorted(imatrix.sums):  # llama-imatrix's order
                counts = np.asarray(imatrix.counts[name], dtype=np.float32).reshape(-1, 1)
                sums = np.asarray(imatrix.sums[name], dtype=np.float32).reshape(len(counts), -1)
                writer.add_tensor(f"{name}.in_sum2", sums)
                writer.add_tensor(f"{name}.counts", counts)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    log.info("wrote the importance matrix %s (%d entries, %d chunks)", path, len(imatrix), imatrix.chunk_count)
    return path


def _field(reader: gguf.GGUFReader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read a GGUF imatrix file (``llama-imatrix -o x.gguf``, or :func:`save_imatrix`), checking every entry:
    paired F32 ``.in_sum2`` / ``.counts`` tensors, one count per matrix, finite non-negative values."""
    path = Path(path)
    try:
        reader = gguf.GGUFReader(path)
    except OSError as exc:
        raise CalibrationError(f"cannot be read: {exc.strerror or exc}", path=path) from None
    except Exception as exc:  # noqa: BLE001 - gguf-py raises ValueError, struct.error, IndexError …
        raise CalibrationError(f"is not a GGUF imatrix file ({type(exc).__name__}: {exc}); a legacy .dat imatrix "
                               f"converts with `llama-imatrix --in-file X.dat -o X.gguf`", path=path) from None
    kind = _field(reader, gguf.Keys.General.TYPE)
    if kind not in (None, gguf.GGUFType.IMATRIX):
        raise CalibrationError(f"is a GGUF of general.type {kind!r}, not an importance matrix", path=path)
    tensors = {t.name: t for t in reader.tensors}
    names = sorted({n.removesuffix(".in_sum2") for n in tensors if n.endswith(".in_sum2")})
    if not names:
        raise CalibrationError("holds no <tensor>.in_sum2 entries: not an importance matrix", path=path)
    sums, counts = {}, {}
    for name in names:
        s, c = tensors[f"{name}.in_sum2"], tensors.get(f"{name}.counts")
        if c is None:
            raise CalibrationError("has .in_sum2 but no .counts", path=path, tensor=name)
        if s.tensor_type != gguf.GGMLQuantizationType.F32 or c.tensor_type != gguf.GGMLQuantizationType.F32:
            raise CalibrationError(f"sums and counts must be F32, not {s.tensor_type.name} / {c.tensor_type.name}",
                                   path=path, tensor=name)
        values, n = np.array(s.data, dtype=np.float32).reshape(-1), np.array(c.data, dtype=np.float64).reshape(-1)
        if not len(n) or values.size % len(n):
            raise CalibrationError(f"{values.size} sums do not split into {len(n)} matrices", path=path, tensor=name)
        if not (np.isfinite(values).all() and np.isfinite(n).all()):
            raise CalibrationError("holds non-finite values (NaN or infinity)", path=path, tensor=name)
        if (values < 0).any() or (n < 0).any():
            raise CalibrationError("holds negative sums of squares or counts", path=path, tensor=name)
        sums[name], counts[name] = values, np.rint(n).astype(np.int64)
    datasets = _field(reader, gguf.Keys.IMatrix.DATASETS)
    chunk_count, chunk_size = _field(reader, gguf.Keys.IMatrix.CHUNK_COUNT), _field(reader, gguf.Keys.IMatrix.CHUNK_SIZE)
    return Imatrix(sums, counts, tuple(str(d) for d in datasets) if isinstance(datasets, list) else (),
                   int(chunk_count or 0), int(chunk_size or 0))


def quantize_metadata(imatrix: Imatrix, *, file: str | os.PathLike[str] | None = None) -> dict[str, str | int]:
    """The keys ``llama-quantize --imatrix`` writes into its output (``quantize.imatrix.*``): the imatrix
    file's name (not its folder), the first dataset, the entries and chunks it was computed with."""
    out: dict[str, str | int] = {}
    if file is not None:
        out["quantize.imatrix.file"] = Path(file).name
    if imatrix.datasets:
        out["quantize.imatrix.dataset"] = imatrix.datasets[0]
    out["quantize.imatrix.entries_count"] = len(imatrix)
    if imatrix.chunk_count > 0:
        out["quantize.imatrix.chunks_count"] = imatrix.chunk_count
    return out


def n_flops(params: Qwen3Params, n_tokens: int) -> float:
    """Approximate float operations of the calibration forward (2 per weight per token), for messages."""
    per_layer = params.hidden * (2 * params.q_dim + 2 * params.kv_dim) + 3 * params.hidden * params.ffn
    return 2.0 * per_layer * params.layers * n_tokens
