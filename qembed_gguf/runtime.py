"""One llama.cpp model and context, driven through llama-cpp-python's C bindings.

The high-level ``llama_cpp.Llama`` object is deliberately not used: it compiles the file's chat
template with Jinja (a code-execution surface an embedding model does not need), prints to stderr
by default, and its ``embed`` truncates inputs at ``n_batch`` without saying so. Here:

* the pooled vector is taken without the language-model head. llama.cpp's qwen3 graph multiplies
  every output row by the 151,669 x hidden output matrix after ``result_norm``, and an
  *embedding* context makes every token an output, so a 0.6B model spent a third more FLOPs
  (and a 311 MB float logits tensor per 512-token micro-batch) on logits nobody reads. Instead the
  context is a plain one whose only outputs are each sequence's last token (``<|endoftext|>``):
  llama.cpp prunes the last block's rows to those tokens, which is exactly pooling LAST. The
  scheduler's eval callback (:class:`_ResultNormTap`) copies ``result_norm`` (the final RMSNorm,
  what LAST pooling returns) when it is computed and returns false, which ends the graph before
  the head. ``n_outputs_max`` bounds the reserved logits rows to the sequences of one batch;
* a decode batch is a set of numpy buffers wrapped once in a ``llama_batch`` struct, so filling a
  batch of thousands of tokens is a few vectorised copies;
* llama.cpp's log is silent unless ``verbose``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

import gguf
import numpy as np

from .errors import BackendError, InputError, ModelLoadError

__all__ = ["LlamaRuntime", "set_llama_verbosity"]

log = logging.getLogger(__name__)

# ggml types llama.cpp's CPU backend multiplies with its tiled kernel (ggml-cpu/tiled: the
# K-quants and the 256-block IQ types); repacked weights never take it
TILED_TYPES = frozenset(int(gguf.GGMLQuantizationType[n]) for n in (
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S",
    "IQ1_M"))

POOLED_TENSOR = b"result_norm"  # the final RMSNorm's output in llama.cpp's qwen3 graph (res->t_embd)
HEAD_TENSOR = b"result_output"  # the lm_head's output: never computed here


def _ggml_base() -> ctypes.CDLL:
    """libggml-base as llama-cpp-python loaded it, with the tensor functions the tap calls."""
    from .devices import load_llama_library

    p = ctypes.c_void_p
    lib = load_llama_library("ggml-base", (
        ("ggml_get_name", ctypes.c_char_p, [p]), ("ggml_nelements", ctypes.c_int64, [p]),
        ("ggml_nrows", ctypes.c_int64, [p]), ("ggml_nbytes", ctypes.c_size_t, [p]),
        ("ggml_is_contiguous", ctypes.c_bool, [p]),
        ("ggml_backend_tensor_get", None, [p, p, ctypes.c_size_t, ctypes.c_size_t])))
    if lib is None:
        raise BackendError("no libggml-base with the tensor functions qembed-gguf needs next to this "
                           "llama-cpp-python's libllama (0.3.36 is tested)")
    return lib


class _ResultNormTap:
    """The scheduler's eval callback: copy ``result_norm`` out, then stop the graph before the head.

    llama.cpp asks the callback about every node (``ask=True``) and computes the nodes up to the
    first one it wants; then it calls again with ``ask=False`` and the computed tensor, and a false
    answer ends that graph split there (later splits still run: on CPU there is one; with
    ``n_gpu_layers >= 1`` llama.cpp puts the output layer on the GPU first, so ``result_norm`` and
    the head share the last split; a GPU build with ``n_gpu_layers=0`` may op-offload the head's
    matmul into a split of its own, which then runs, and a warning says so). The only node wanted
    is ``result_norm``: it holds one row per output token of the micro-batch (here: each
    sequence's last token), in batch order, so the rows of a decode call's micro-batches, appended
    in call order, are its sequences' pooled vectors. ``ggml_backend_tensor_get`` reads host and
    device (GPU-offloaded) tensors alike.

    The callback is Python, so each node takes the interpreter lock: measured on the 2-layer tiny
    model, a bursty Python thread beside the Embedder (the server's event loop) slowed embedding
    1.04x (the code before this callback: 1.26x), but a thread spinning in pure Python without
    pause slows it several times over.

    Counters (for tests and benchmarks): ``nodes_asked``, every node llama.cpp asked about;
    ``head_asked``, how often it asked about the lm_head's node, which it would then have
    computed: it must stay 0. A graph without a ``result_norm`` node (a llama.cpp that renamed it)
    gives no rows, and :meth:`LlamaRuntime.embed_batch` raises instead of returning stale ones.
    """

    def __init__(self, lib: ctypes.CDLL, n_embd: int, capacity: int):
        import llama_cpp

        self._lib = lib
        self._n_embd = n_embd
        self.rows = np.zeros((capacity, n_embd), dtype=np.float32)
        self.n_rows = 0
        self.head_asked = 0
        self.nodes_asked = 0
        self.error: str | None = None
        self.exception: BaseException | None = None
        self.callback = llama_cpp.ggml_backend_sched_eval_callback(self._on_node)

    def reset(self) -> None:
        self.n_rows, self.error, self.exception = 0, None, None

    def _on_node(self, tensor, ask, _user_data) -> bool:
        try:
            name = self._lib.ggml_get_name(tensor)
            if ask:
                self.nodes_asked += 1
                if name == HEAD_TENSOR:
                    self.head_asked += 1
                return name == POOLED_TENSOR
            if name != POOLED_TENSOR:  # pragma: no cover - llama.cpp only hands back what was asked for
                return True
            return self._copy(tensor)
        except BaseException as exc:  # noqa: BLE001 - an exception must not unwind through C
            self.error = f"{type(exc).__name__}: {exc}"
            self.exception = exc  # re-raised by embed_batch once llama.cpp has returned
            return False

    def _copy(self, tensor) -> bool:
        lib = self._lib
        rows, n = lib.ggml_nrows(tensor), lib.ggml_nelements(tensor)
        if rows and (n != rows * self._n_embd or lib.ggml_nbytes(tensor) != 4 * n or not lib.ggml_is_contiguous(tensor)):
            self.error = (f"result_norm is {n} values in {rows} rows ({lib.ggml_nbytes(tensor)} bytes), not "
                          f"contiguous float32 rows of {self._n_embd}")
            return False
        if self.n_rows + rows > len(self.rows):
            self.error = f"{self.n_rows + rows} pooled rows for a batch of {len(self.rows)} sequences"
            return False
        if rows:
            dest = self.rows[self.n_rows:self.n_rows + rows]
            lib.ggml_backend_tensor_get(tensor, dest.ctypes.data, 0, 4 * n)
            self.n_rows += rows
        return False  # stop this graph here: the lm_head after result_norm is not computed


def _tiled_kernel_available() -> bool:
    """llama.cpp's tiled CPU matmul is built for x86 (AVX and up) and on unless GGML_CPU_TILED_MM=0."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "x86", "i686"):
        return False
    try:
        return int(os.environ.get("GGML_CPU_TILED_MM", "1")) != 0
    except ValueError:  # llama.cpp reads it with atoi(): text is 0, off
        return False


def default_repack(tensors) -> bool:
    """Whether llama.cpp should repack a file's weights (``use_extra_bufts``), from its tensors
    (objects with ``name``, ``ggml_type``, ``shape`` and ``nbytes``, e.g. a header's spans).

    Measured on an AVX-512 VNNI machine (0.6B shapes, real vocabulary; benchmarks/results): files
    whose weight matrices are K-quants or IQ4_XS run fastest on the tiled kernel, which repacked
    weights skip (Q4_K_M 335 tokens/s unrepacked vs 245 repacked); Q4_0, IQ4_NL and BF16 run
    fastest repacked (Q4_0 240 vs 178). So: repack unless most matrix bytes are in a tiled type.
    The token embedding is a row lookup and the output matrix is never multiplied here: neither
    counts. Where the tiled kernel does not exist (it is x86-only) or is switched off, repack.
    """
    if not _tiled_kernel_available():
        return True  # elsewhere (ARM, GGML_CPU_TILED_MM=0) repacking is llama.cpp's fast path for K-quants
    by_type: dict[int, int] = {}
    for t in tensors:
        if len(t.shape) == 2 and t.name not in ("token_embd.weight", "output.weight"):
            by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.nbytes
    if not by_type:
        return False
    return max(by_type, key=by_type.get) not in TILED_TYPES


def _set_fields(struct: ctypes.Structure, **values) -> None:
    """Assign ctypes struct fields, refusing names the struct lacks (a plain setattr would not)."""
    names = {f[0] for f in type(struct)._fields_}
    for name, value in values.items():
        if name not in names:
            raise BackendError(f"this llama-cpp-python has no {type(struct).__name__}.{name}; "
                               f"qembed-gguf needs a compatible version (0.3.36 is tested)")
        setattr(struct, name, value)


# ggml_log_level as ggml.h numbers it (NONE 0, DEBUG 1, INFO 2, WARN 3, ERROR 4, CONT 5).
# llama-cpp-python 0.3.36's own log callback still maps an older numbering (1 INFO, 2 WARN,
# 3 ERROR, 4 DEBUG): llama.cpp's warnings reach stderr however quiet it is asked to be (every
# real-vocabulary load printed "control-looking token: 128247 '</s>'"), and its errors are hidden
_GGML_LOG_LEVELS = {0: logging.CRITICAL, 1: logging.DEBUG, 2: logging.INFO, 3: logging.WARNING, 4: logging.ERROR}
_log_state = {"callback": None, "last": logging.DEBUG}


def _install_log_callback() -> None:
    """Route llama.cpp's log through a callback with ggml's level numbering (installed once, kept alive)."""
    if _log_state["callback"] is not None:
        return
    import llama_cpp

    bindings_log = logging.getLogger("llama-cpp-python")

    def on_log(level: int, text: bytes, _user_data) -> None:
        try:
            mapped = _log_state["last"] if level == 5 else _GGML_LOG_LEVELS.get(level, logging.ERROR)
            _log_state["last"] = mapped
            if bindings_log.level <= mapped:
                sys.stderr.write(text.decode("utf-8", errors="replace"))
                sys.stderr.flush()
        except Exception:  # noqa: BLE001 - nothing may unwind into C
            pass

    _log_state["callback"] = llama_cpp.llama_log_callback(on_log)
    llama_cpp.llama_log_set(_log_state["callback"], ctypes.c_void_p(0))


def set_llama_verbosity(verbose: bool) -> None:
    """Show llama.cpp's log (verbose) or only its errors: through the ``llama-cpp-python`` logger's
    level, which the quantizer also uses, with ggml's own level numbers."""
    _install_log_callback()
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)


class LlamaRuntime:
    """A loaded GGUF model with a context that pools LAST without the language-model head.

    ``n_ctx`` bounds the total tokens of one decode batch (all its sequences share the unified KV
    cache); the context starts at ``initial_ctx`` tokens and grows on demand (see :meth:`reserve`).
    ``n_seq_max`` bounds the sequences per batch. ``repack`` lets llama.cpp's CPU backend repack
    weights into its interleaved layouts ("extra buffer types"; see :func:`default_repack`).
    """

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int, n_ubatch: int, n_seq_max: int,
                 n_threads: int, n_gpu_layers: int = 0, flash_attn: bool | None = None, use_mmap: bool = True,
                 kv_type: int | None = None, repack: bool = False, initial_ctx: int | None = None,
                 verbose: bool = False):
        import llama_cpp

        self._llama = llama_cpp
        self.path = Path(path)
        set_llama_verbosity(verbose)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        _set_fields(mparams, n_gpu_layers=n_gpu_layers, use_extra_bufts=repack,
                    load_mode=llama_cpp.LLAMA_LOAD_MODE_MMAP if use_mmap else llama_cpp.LLAMA_LOAD_MODE_NONE)
        self.model = llama_cpp.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {self.path} (run with verbose=True to see why)")
        self.ctx = None
        self._warned_head = False
        try:
            self.vocab = llama_cpp.llama_model_get_vocab(self.model)
            self.n_embd = llama_cpp.llama_model_n_embd(self.model)
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
            self.n_seq_max = max(1, min(n_seq_max, llama_cpp.llama_max_parallel_sequences()))
            self._tap = _ResultNormTap(_ggml_base(), self.n_embd, self.n_seq_max)
            cparams = llama_cpp.llama_context_default_params()
            flash = {None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                     False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
            # a plain (non-embedding) context: only the tokens flagged as outputs (each sequence's
            # last) reach the last block's output rows, and the tap stops the graph before the head
            _set_fields(cparams, n_seq_max=self.n_seq_max, n_threads=n_threads, n_threads_batch=n_threads,
                        embeddings=False, kv_unified=True, flash_attn_type=flash, n_outputs_max=self.n_seq_max,
                        cb_eval=self._tap.callback, cb_eval_user_data=None)
            if kv_type is not None:
                _set_fields(cparams, type_k=kv_type, type_v=kv_type)
            self._cparams = cparams
            self._n_ubatch = n_ubatch
            self.max_ctx = n_ctx
            self.n_ctx = 0
            self._make_context(min(n_ctx, initial_ctx or n_ctx))
            self._alloc_batch(self.n_ctx)  # grown with the context: memory follows use, not max_ctx
        except BaseException:
            self.close()
            raise

    # -- context ------------------------------------------------------------------------------
    def _make_context(self, n_ctx: int) -> None:
        """(Re)create the context for ``n_ctx`` tokens; the previous one is freed first (lower peak)."""
        lc = self._llama
        if self.ctx:
            lc.llama_free(self.ctx)
            self.ctx = None
            self.n_ctx = 0
        _set_fields(self._cparams, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=min(self._n_ubatch, n_ctx))
        ctx = lc.llama_init_from_model(self.model, self._cparams)
        if not ctx:
            raise BackendError(f"llama.cpp could not create a context with n_ctx={n_ctx} for {self.path} "
                               f"(out of memory?)")
        self.ctx, self.n_ctx = ctx, n_ctx
        log.debug("context of %d tokens created", n_ctx)

    def reserve(self, n_tokens: int) -> None:
        """Make the context hold ``n_tokens`` (<= ``max_ctx``), growing it (doubling) if needed.

        The KV cache is allocated, and zeroed, when a context is created, so its memory is
        resident whether used or not: starting small and growing on demand keeps short-text
        workloads at a small footprint while long inputs still fit. A context never shrinks.
        """
        if n_tokens <= self.n_ctx:
            return
        if n_tokens > self.max_ctx:
            raise InputError(f"{n_tokens} tokens do not fit the largest context ({self.max_ctx})")
        target = self.n_ctx or 256
        while target < n_tokens:
            target *= 2
        target = min(self.max_ctx, target)
        previous = self.n_ctx
        try:
            self._make_context(target)
        except BackendError:
            if previous:
                self._make_context(previous)
            raise BackendError(f"llama.cpp could not grow the context from {previous} to {target} tokens "
                               f"for a {n_tokens}-token batch (out of memory?); smaller inputs still work") from None

    # -- batch buffers ------------------------------------------------------------------------
    def _alloc_batch(self, capacity: int) -> None:
        lc = self._llama
        self._capacity = capacity
        self._tokens = np.zeros(capacity, dtype=np.int32)
        self._pos = np.zeros(capacity, dtype=np.int32)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        self._seq = np.zeros(capacity, dtype=np.int32)
        self._logits = np.zeros(capacity, dtype=np.int8)
        seq_type = ctypes.POINTER(lc.llama_seq_id)
        self._seq_ptrs = (seq_type * capacity)(
            *(ctypes.cast(self._seq.ctypes.data + 4 * i, seq_type) for i in range(capacity)))
        batch = lc.llama_batch()
        batch.token = self._tokens.ctypes.data_as(ctypes.POINTER(lc.llama_token))
        batch.embd = None
        batch.pos = self._pos.ctypes.data_as(ctypes.POINTER(lc.llama_pos))
        batch.n_seq_id = self._n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        batch.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(seq_type))
        batch.logits = self._logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self._batch = batch

    # -- tokens ---------------------------------------------------------------------------------
    def tokenize(self, text: str, *, parse_special: bool = False) -> list[int]:
        """Token ids of ``text``: no BOS/EOS added, special-token text NOT parsed (user text stays text)."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (self._llama.llama_token * cap)()
        n = self._llama.llama_tokenize(self.vocab, data, len(data), buf, cap, False, parse_special)
        if n < 0:
            cap = -n
            buf = (self._llama.llama_token * cap)()
            n = self._llama.llama_tokenize(self.vocab, data, len(data), buf, cap, False, parse_special)
            if n < 0:
                raise BackendError(f"llama.cpp could not tokenize a {len(data)}-byte input")
        return list(buf[:n])

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids, each in ``[0, n_vocab)`` (llama.cpp does not check them): special
        tokens rendered as their text, none removed; bytes that are not UTF-8 (ids cut inside a
        character) become U+FFFD, as HF ``tokenizers`` decodes them."""
        if not ids:
            return ""
        lc = self._llama
        tokens = (lc.llama_token * len(ids))(*ids)
        cap = 4 * len(ids) + 64
        for _ in range(2):  # a too-small buffer gets the size needed, negated
            buf = ctypes.create_string_buffer(cap)
            n = lc.llama_detokenize(self.vocab, tokens, len(ids), buf, cap, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            cap = -n
        raise BackendError(f"llama.cpp could not detokenize {len(ids)} token ids")

    def piece_lengths(self, ids: Sequence[int]) -> list[int]:
        """The UTF-8 bytes each token id stands for, special tokens as their text (ids in ``[0, n_vocab)``):
        the byte offsets of token boundaries in the text they came from."""
        lc, vocab = self._llama, self.vocab
        buf = ctypes.create_string_buffer(256)
        lengths = []
        for token in ids:
            n = lc.llama_token_to_piece(vocab, token, buf, 256, 0, True)
            if n < 0:  # longer than the buffer: -n is the length
                n = -n
            lengths.append(n)
        return lengths

    def special_token_id(self, text: str) -> int | None:
        """The id of a special token given as text (e.g. ``<|endoftext|>``), or None."""
        ids = self.tokenize(text, parse_special=True)
        return ids[0] if len(ids) == 1 else None

    # -- decoding -------------------------------------------------------------------------------
    def embed_batch(self, sequences: Sequence[Sequence[int]]) -> np.ndarray:
        """Pooled (LAST) hidden states of up to ``n_seq_max`` sequences in one decode: (n, n_embd)."""
        lengths = [len(s) for s in sequences]
        total = sum(lengths)
        if not sequences or len(sequences) > self.n_seq_max or total > self.max_ctx or min(lengths) < 1:
            raise InputError(f"batch of {len(sequences)} sequences / {total} tokens does not fit "
                             f"n_seq_max={self.n_seq_max}, n_ctx={self.max_ctx}")
        self.reserve(total)
        if total > self._capacity:
            self._alloc_batch(min(self.max_ctx, max(total, 2 * self._capacity)))
        offset = 0
        for s, seq in enumerate(sequences):
            n = len(seq)
            self._tokens[offset:offset + n] = seq
            self._pos[offset:offset + n] = np.arange(n, dtype=np.int32)
            self._seq[offset:offset + n] = s
            offset += n
        self._logits[:total] = 0
        self._logits[np.cumsum(lengths) - 1] = 1  # one output per sequence: its last token
        self._batch.n_tokens = total
        lc = self._llama
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        tap = self._tap
        tap.reset()
        head_before = tap.head_asked
        rc = lc.llama_decode(self.ctx, self._batch)
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc} on a batch of {len(sequences)} sequences / "
                               f"{total} tokens")
        if tap.exception is not None and not isinstance(tap.exception, Exception):
            raise tap.exception  # KeyboardInterrupt, SystemExit: not a backend failure
        if tap.head_asked != head_before and not self._warned_head:
            self._warned_head = True
            log.warning("llama.cpp computed the lm_head in a graph split after result_norm (a GPU build's op "
                        "offload with n_gpu_layers=0?): correct vectors, wasted work")
        if tap.error is not None or tap.n_rows != len(sequences):
            raise BackendError(f"reading the pooled hidden states failed on a batch of {len(sequences)} sequences "
                               f"/ {total} tokens: {tap.error or f'{tap.n_rows} rows came back'}") from tap.exception
        return tap.rows[:len(sequences)].copy()

    def close(self) -> None:
        lc = self._llama
        if getattr(self, "ctx", None):
            lc.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            lc.llama_model_free(self.model)
            self.model = None

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass
