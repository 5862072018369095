"""One llama.cpp model and embedding context, driven through llama-cpp-python's C bindings.

The high-level ``llama_cpp.Llama`` object is deliberately not used: it compiles the file's chat
template with Jinja (a code-execution surface an embedding model does not need), prints to stderr
by default, and its ``embed`` truncates inputs at ``n_batch`` without saying so. Here:

* pooling is forced to LAST in the context parameters, whatever the file says;
* a decode batch is a set of numpy buffers wrapped once in a ``llama_batch`` struct, so filling a
  batch of thousands of tokens is a few vectorised copies;
* llama.cpp's log is silent unless ``verbose``.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BackendError, ModelLoadError

__all__ = ["LlamaRuntime", "set_llama_verbosity"]

log = logging.getLogger(__name__)


def _set_fields(struct: ctypes.Structure, **values) -> None:
    """Assign ctypes struct fields, refusing names the struct lacks (a plain setattr would not)."""
    names = {f[0] for f in type(struct)._fields_}
    for name, value in values.items():
        if name not in names:
            raise BackendError(f"this llama-cpp-python has no {type(struct).__name__}.{name}; "
                               f"qembed-gguf needs a compatible version (0.3.36 is tested)")
        setattr(struct, name, value)


def set_llama_verbosity(verbose: bool) -> None:
    """llama-cpp-python prints llama.cpp's log according to this logger's level."""
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)


class LlamaRuntime:
    """A loaded GGUF model with an embedding context (pooling LAST, unified KV cache).

    ``n_ctx`` bounds the total tokens of one decode batch (all its sequences share the KV cache);
    the context starts at ``initial_ctx`` tokens and grows on demand (see :meth:`reserve`).
    ``n_seq_max`` bounds the sequences per batch. ``repack`` lets llama.cpp's CPU backend repack
    quantized weights into its faster interleaved layouts ("extra buffer types").
    """

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int, n_ubatch: int, n_seq_max: int,
                 n_threads: int, n_gpu_layers: int = 0, flash_attn: bool | None = None, use_mmap: bool = True,
                 kv_type: int | None = None, repack: bool = True, initial_ctx: int | None = None,
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
        try:
            self.n_seq_max = max(1, min(n_seq_max, llama_cpp.llama_max_parallel_sequences()))
            cparams = llama_cpp.llama_context_default_params()
            flash = {None: llama_cpp.LLAMA_FLASH_ATTN_TYPE_AUTO, True: llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED,
                     False: llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED}[flash_attn]
            _set_fields(cparams, n_seq_max=self.n_seq_max, n_threads=n_threads, n_threads_batch=n_threads,
                        embeddings=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST, kv_unified=True,
                        flash_attn_type=flash)
            if kv_type is not None:
                _set_fields(cparams, type_k=kv_type, type_v=kv_type)
            self._cparams = cparams
            self._n_ubatch = n_ubatch
            self.max_ctx = n_ctx
            self.n_ctx = 0
            self._make_context(min(n_ctx, initial_ctx or n_ctx))
            self.vocab = llama_cpp.llama_model_get_vocab(self.model)
            self.n_embd = llama_cpp.llama_model_n_embd(self.model)
            self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
            self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(self.model)
            self._alloc_batch(n_ctx)
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
            raise ValueError(f"{n_tokens} tokens do not fit the largest context ({self.max_ctx})")
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

    # -- metadata and tokens --------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        """A GGUF metadata value as llama.cpp renders it, or None when absent."""
        buf = ctypes.create_string_buffer(4096)
        n = self._llama.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            self._llama.llama_model_meta_val_str(self.model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

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
            raise ValueError(f"batch of {len(sequences)} sequences / {total} tokens does not fit "
                             f"n_seq_max={self.n_seq_max}, n_ctx={self.max_ctx}")
        self.reserve(total)
        offset = 0
        for s, seq in enumerate(sequences):
            n = len(seq)
            self._tokens[offset:offset + n] = seq
            self._pos[offset:offset + n] = np.arange(n, dtype=np.int32)
            self._seq[offset:offset + n] = s
            offset += n
        self._logits[:total] = 1
        self._batch.n_tokens = total
        lc = self._llama
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        rc = lc.llama_decode(self.ctx, self._batch)
        if rc != 0:
            raise BackendError(f"llama_decode failed with code {rc} on a batch of {len(sequences)} sequences / "
                               f"{total} tokens")
        out = np.empty((len(sequences), self.n_embd), dtype=np.float32)
        for s in range(len(sequences)):
            ptr = lc.llama_get_embeddings_seq(self.ctx, s)
            if not ptr:
                raise BackendError(f"llama.cpp returned no pooled embedding for sequence {s}")
            out[s] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        return out

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
