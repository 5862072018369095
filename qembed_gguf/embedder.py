"""The Embedder: Qwen3-Embedding vectors from a GGUF file, correct whatever the file's metadata.

The recipe (../shared/QWEN3_EMBEDDING.md), applied here rather than trusted to the file:

1. queries are formatted ``Instruct: {task}\\nQuery:{text}``; documents are raw text;
2. text is NFC-normalised (the official tokenizer.json's normaliser), tokenized without BOS and with
   special-token text left as text, then the pooling token ``<|endoftext|>`` is appended exactly once;
3. the context pools LAST (forced), so the vector is the hidden state of that token;
4. Matryoshka truncation to ``dim``, THEN L2 normalisation, in numpy.

Inputs are tokenized once, packed longest-first into decode calls of one llama.cpp micro-batch
each (see :mod:`qembed_gguf.batching` for why) and returned in input order. Nothing is cut
silently: an input longer than ``max_tokens`` is truncated with a warning (``long_inputs="truncate"``,
the default, keeping the pooling token last), rejected with :class:`InputTooLongError`
(``"error"``) or embedded in overlapping windows whose vectors are averaged (``"chunk"``; the exact
rule is in :mod:`qembed_gguf.longinputs`). :meth:`Embedder.embed_chunks` instead returns one vector
per chunk with its character span, for knowledge bases.
"""

from __future__ import annotations

import logging
import os
import threading
from operator import attrgetter
from typing import Callable, Sequence

import numpy as np

from .batching import plan_batches
from .cache import RECIPE_VERSION, EmbeddingCache, VectorCache, open_cache
from .chunks import Chunk, embed_chunks
from .errors import InputError, ModelLoadError
from .facts import ModelFacts, log_problems, require_kind, require_spec_kind
from .fileinfo import read_gguf_info
from .devices import gpu_free_bytes, gpu_offload_supported, usable_cpus
from .gguf_check import check_gguf
from .integrity import content_fingerprint, require_integrity
from . import longinputs
from .longinputs import check_policy, resolve_policy
from .lookup import Pending
from .gpuplan import KV_CACHE_TYPES, ModelGeometry, Plan, check_gpu_request, resolve_gpu_layers
from .modelcache import resolve_model
from .postprocess import check_finite, l2_normalize, truncate_dim
from .runtime import LlamaRuntime, default_repack
from .stats import EmbedderStats
from .st_compat import SentenceTransformersAPI
from .tokens import POOLING_TOKEN, TokensAPI
from .validate import (MAX_SEQUENCES, MAX_THREADS, check_int, check_texts, context_sizes, fit_sequences)

__all__ = ["Embedder", "ModelFacts", "EmbedderStats"]

log = logging.getLogger(__name__)

class Embedder(TokensAPI, SentenceTransformersAPI):
    """Embed texts with a Qwen3-Embedding GGUF model through llama.cpp.

    Args:
        model: a ``.gguf`` file; or a checkpoint folder, registry name (``qwen3-embedding-0.6b``,
            ``tiny``) or hub id, converted once to ``convert_type`` into ``cache_dir`` and reused.
        n_gpu_layers: layers to offload to the GPU: an int (-1: all; llama.cpp offloads the
            output layer first, then the last blocks), or ``"auto"``: the most that fit the free
            VRAM (or ``vram_budget``) with this context, from :mod:`qembed_gguf.gpuplan`; the plan
            is logged and kept in :attr:`gpu_plan`. A CPU-only llama.cpp build runs on the CPU
            with one log line either way.
        vram_budget: with ``n_gpu_layers="auto"``, the most VRAM to plan for (bytes, or ``"3.5GB"``;
            binary units); the smaller of this and the free VRAM the backend reports is used.
        n_threads: CPU threads (default: every CPU this process may use, per its affinity mask).
        max_tokens: longest input, in tokens including the pooling token (default
            min(8192, the model's trained context)); at most the trained context.
        n_ctx: largest llama.cpp context (default ``max(max_tokens, n_ubatch)``), in
            ``[max_tokens, trained context]`` (:func:`qembed_gguf.validate.context_sizes`). The
            KV cache starts at ``n_ubatch`` tokens and doubles on demand up to this, never shrinking.
        n_ubatch: llama.cpp micro-batch size (tokens computed together), and the default token
            budget for packing several short inputs into one decode call.
        max_batch_sequences: most inputs packed into one decode call (at most 256, llama.cpp's
            ``LLAMA_MAX_SEQ``).
        dim: default output dimension (Matryoshka), in ``[mrl_min_dim, full dim]``; None = full.
        normalize: L2-normalise outputs by default.
        long_inputs: what an input longer than ``max_tokens`` gets: ``"truncate"`` (default): cut,
            keeping the pooling token last, with one warning per call; ``"error"``:
            :class:`InputTooLongError`; ``"chunk"``: split into windows of ``max_tokens - 1`` tokens
            that overlap by ``chunk_overlap``, embedded separately and averaged
            (:mod:`qembed_gguf.longinputs` has the exact rule).
        chunk_overlap: tokens consecutive windows share under ``"chunk"``, in ``[0, (max_tokens - 1) // 2]``.
        truncate: the older spelling: True is ``long_inputs="truncate"``, False ``"error"``.
        flash_attn: llama.cpp flash attention (default on: 1.3x faster on CPU; its kernel
            accumulates in half precision, see the README). False: off; None: llama.cpp decides.
        kv_cache_type: ``"f16"`` (default) or ``"q8_0"`` (half the KV-cache memory, for long
            contexts on small machines; needs flash attention) or ``"f32"``.
        repack: let llama.cpp's CPU backend repack the weights (``use_extra_bufts``). None
            (default): only for types its faster tiled kernel does not take (K-quants and IQ4_XS
            run unrepacked; :func:`qembed_gguf.runtime.default_repack` has the measurements).
        use_mmap: map the file (its pages shared by every process that maps it) instead of
            reading it. None (default): map it unless the weights are repacked (a mapping would
            then stay resident next to the repacked copy).
        verify: check, before loading, that every byte of the file matches the integrity seal the
            converter wrote (``qembed.integrity.blake2b``; about 1 s per GB); a mismatch or a file
            without a seal raises :class:`IntegrityError`. Whatever this says, the header is always
            validated (:func:`qembed_gguf.gguf_check.check_gguf`) before llama.cpp reads it.
        cache: a persistent vector cache (:mod:`qembed_gguf.cache`): ``"sqlite:///path.db"`` (or
            a ``.db`` path), ``"redis://host:6379/0"``, ``"memory"`` or an ``EmbeddingCache``; a hit
            skips the model. Text inputs only. A cache opened from a spec is closed with the Embedder.
        verbose: show llama.cpp's own log.
        cache_dir, convert_type, revision: where and how checkpoints are converted (default Q6_K:
            as fast as Q4_K_M on llama.cpp's tiled CPU kernel, 1.6x Q8_0, closest to the source).

    One Embedder may be shared by threads: calls into llama.cpp are serialised internally.
    """

    _KIND = "embedding"  # the file kind this class reads (facts.require_kind); the Reranker's decoder: "reranker"

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        n_gpu_layers: int | str = 0,
        vram_budget: int | str | None = None,
        n_threads: int | None = None,
        max_tokens: int | None = None,
        n_ctx: int | None = None,
        n_ubatch: int = 512,
        max_batch_sequences: int = 64,
        dim: int | None = None,
        normalize: bool = True,
        long_inputs: str | None = None,
        chunk_overlap: int = 0,
        truncate: bool | None = None,
        flash_attn: bool | None = True,
        kv_cache_type: str = "f16",
        use_mmap: bool | None = None,
        repack: bool | None = None,
        verify: bool = False,
        cache: "str | os.PathLike[str] | EmbeddingCache | None" = None,
        verbose: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        convert_type: str = "q6_k",
        revision: str | None = None,
    ):
        check_gpu_request(n_gpu_layers, vram_budget)  # before any conversion or loading
        require_spec_kind(model, self._KIND)  # before a hub download or a conversion
        self.path = resolve_model(model, cache_dir=cache_dir, outtype=convert_type, revision=revision)
        header = check_gguf(self.path)  # before llama.cpp's own parser sees the file
        if verify:
            require_integrity(self.path)
        self.info = read_gguf_info(self.path, header=header)  # the header check_gguf already walked
        require_kind(self.info, self._KIND)
        self.facts = ModelFacts.from_info(self.info)
        log_problems(self.info, kind=self._KIND)

        self._max_tokens, self._n_ctx, self._n_ubatch = context_sizes(
            max_tokens=max_tokens, n_ctx=n_ctx, n_ubatch=n_ubatch, trained=self.facts.context)
        check_int("max_batch_sequences", max_batch_sequences, hi=MAX_SEQUENCES,
                   why="llama.cpp's LLAMA_MAX_SEQ")
        if n_threads is not None:
            check_int("n_threads", n_threads, hi=MAX_THREADS, why="ggml's GGML_MAX_N_THREADS")
        if flash_attn not in (None, True, False):
            raise InputError(f"flash_attn must be True, False or None, got {flash_attn!r}")
        if kv_cache_type not in KV_CACHE_TYPES:
            raise InputError(f"kv_cache_type must be one of {', '.join(KV_CACHE_TYPES)}, got {kv_cache_type!r}")
        if kv_cache_type not in ("f16", "f32") and flash_attn is False:
            raise InputError(f"kv_cache_type={kv_cache_type!r} needs flash_attn (llama.cpp cannot use a "
                             f"quantized V cache without it)")
        self.normalize = bool(normalize)
        self.long_inputs, self.chunk_overlap = resolve_policy(long_inputs, truncate, chunk_overlap,
                                                             max_tokens=self._max_tokens)
        self._dim = self.check_dim(dim)

        offload = gpu_offload_supported()
        decision = resolve_gpu_layers(
            n_gpu_layers, vram_budget=vram_budget, offload_supported=offload,
            free_bytes=gpu_free_bytes() if offload and n_gpu_layers == "auto" else None,
            geometry=lambda: ModelGeometry.from_header(header), n_ctx=self._n_ctx, n_ubatch=self._n_ubatch,
            kv_type=kv_cache_type, flash_attn=flash_attn is not False)
        if decision.reason:
            log.info("%s: %s", self.path.name, decision.reason)
        self.gpu_plan: Plan | None = decision.plan
        """The offload plan when ``n_gpu_layers="auto"`` found a GPU backend, else None."""
        self.n_gpu_layers: int = decision.n_gpu_layers
        """What was passed to llama.cpp."""
        self.repack = default_repack(header.tensors) if repack is None else bool(repack)
        """Whether llama.cpp repacked the weights (see ``repack``)."""
        use_mmap = not self.repack if use_mmap is None else bool(use_mmap)
        self._lock = threading.RLock()
        self._runtime = LlamaRuntime(
            self.path, n_ctx=self._n_ctx, n_ubatch=self._n_ubatch, n_seq_max=max_batch_sequences,
            n_threads=n_threads or usable_cpus(), n_gpu_layers=self.n_gpu_layers, flash_attn=flash_attn,
            kv_type=int(KV_CACHE_TYPES[kv_cache_type]), use_mmap=use_mmap, repack=self.repack, initial_ctx=self._n_ubatch,
            verbose=verbose)
        eos = self._runtime.special_token_id(POOLING_TOKEN)
        if eos is None:
            self.close()
            raise ModelLoadError(f"{self.path}: the vocabulary has no {POOLING_TOKEN} token to pool on")
        self._eos = eos
        self.stats = EmbedderStats()
        self._owns_cache = cache is not None and not isinstance(cache, EmbeddingCache)
        self._cache: VectorCache | None = None
        try:
            backend = open_cache(cache)
            if backend is not None:
                policy = f"truncate={self.truncate}" if self.long_inputs != "chunk" else \
                    f"long_inputs=chunk,overlap={self.chunk_overlap}"  # the keys of older caches unchanged
                settings = (f"{RECIPE_VERSION}|max_tokens={self._max_tokens}|{policy}|"
                            f"flash_attn={flash_attn}|kv={kv_cache_type}")
                self._cache = VectorCache(backend, f"{content_fingerprint(self.path, header)}|{settings}")
                log.info("embedding cache: %s", backend.description)
        except BaseException:
            self.close()
            raise

    # -- validation -------------------------------------------------------------------------------
    def check_dim(self, dim: int | None) -> int | None:
        """``dim`` if it is None or in this model's Matryoshka range ``[mrl_min_dim, dim]``; else InputError."""
        if dim is None:
            return None
        lo, hi = self.facts.mrl_min_dim, self.facts.dim
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not lo <= dim <= hi:
            raise InputError(f"dim must be an integer in [{lo}, {hi}] (Matryoshka range of this model), got {dim!r}")
        return int(dim)

    # -- properties -----------------------------------------------------------------------------
    dim = property(attrgetter("facts.dim"), doc="The full embedding dimension.")
    mrl_min_dim = property(attrgetter("facts.mrl_min_dim"), doc="The smallest Matryoshka dimension ``dim=`` accepts.")
    max_tokens = property(attrgetter("_max_tokens"), doc="The longest input, in tokens, the pooling token included.")
    n_ctx = property(attrgetter("_n_ctx"),
                     doc="The largest llama.cpp context: the most tokens one decode batch may hold.")
    batch_tokens = property(attrgetter("_n_ubatch"),
                            doc="The default token budget of one decode call (``n_ubatch``).")
    pooling_token_id = property(attrgetter("_eos"), doc="The id of ``<|endoftext|>``, which ends every input.")
    cache = property(attrgetter("_cache"), doc="The vector cache bound to this model and its settings, or None.")

    @property
    def n_vocab(self) -> int:
        """Tokens in the model's vocabulary."""
        self._require_open()
        return self._runtime.n_vocab

    @property
    def truncate(self) -> bool:
        """Whether over-long inputs are cut (``long_inputs == "truncate"``)."""
        return self.long_inputs == "truncate"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` freed the model."""
        return self._runtime is None

    # -- embedding --------------------------------------------------------------------------------
    def embed(
        self,
        texts: str | Sequence[str],
        *,
        dim: int | None = None,
        instruction: str | None = None,
        normalize: bool | None = None,
        batch_tokens: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed ``texts``; a float32 array of shape ``(len(texts), dim)``, rows in input order.

        ``instruction`` formats every text as a query with that task; ``dim`` and ``normalize``
        override the Embedder's defaults for this call; ``batch_tokens`` is this call's budget for
        packing several inputs into one decode call, in ``[1, n_ctx]`` (default ``n_ubatch``, the
        fastest measured; a longer input is always decoded alone).
        """
        items = check_texts(texts)
        if instruction is not None:
            items = self.format_queries(items, instruction)
        return self._embed(items, dim=dim, normalize=normalize, batch_tokens=batch_tokens,
                           max_seqs=None, show_progress=show_progress)

    def embed_tokens(
        self,
        inputs: Sequence[Sequence[int]],
        *,
        dim: int | None = None,
        normalize: bool | None = None,
        batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed pre-tokenized inputs (lists of token ids, as OpenAI's API accepts them).

        ``<|endoftext|>`` is appended to every input that does not already end with it (the
        pooling token must end each input exactly once). Ids are checked against the vocabulary;
        the cache is not used (it keys on text).
        """
        planned = self.plan(self.prepare_tokens(inputs))
        return planned.combine(self.pool(planned.sequences, batch_tokens=batch_tokens),
                               dim=self.check_dim(dim) if dim is not None else self._dim,
                               normalize=self.normalize if normalize is None else normalize)

    def pool(self, sequences: list[list[int]], *, batch_tokens: int | None = None,
             max_seqs: int | None = None, show_progress: bool = False,
             cancelled: Callable[[int], bool] | None = None) -> np.ndarray:
        """Raw pooled hidden states, ``(len(sequences), dim)`` float32, of prepared token sequences.

        The low-level step under every ``embed*`` call (the server batches requests through it):
        applies the ``max_tokens`` rule (:meth:`fit`; under ``long_inputs="chunk"`` give it
        :meth:`plan`'s sequences), packs the sequences into decode calls and returns the
        rows in input order, neither truncated (Matryoshka) nor normalised.

        ``cancelled(i)``, when given, is asked before each decode call about every sequence ``i``
        of that call: the cancelled ones are left out (their rows are NaN), and a call whose
        sequences are all cancelled is skipped. The server uses it to stop working for clients
        that disconnected.
        """
        budget = self._n_ubatch if batch_tokens is None else check_int("batch_tokens", batch_tokens)
        if budget > self._n_ctx:
            raise InputError(f"batch_tokens must be in [1, n_ctx={self._n_ctx}], got {budget}")
        pooled = np.empty((len(sequences), self.dim), dtype=np.float32)
        if not sequences:
            return pooled
        sequences = self.fit(sequences)
        with self._lock:
            self._require_open()
            seqs_per_batch = min(max_seqs or self._runtime.n_seq_max, self._runtime.n_seq_max)
        batches = plan_batches([len(s) for s in sequences], budget=budget, max_seqs=seqs_per_batch)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(sequences), unit="text", desc="embedding")
        dropped: list[int] = []
        try:
            for batch in batches:
                if cancelled is not None:
                    gone = {i for i in batch if cancelled(i)}
                    if gone:
                        dropped.extend(gone)
                        batch = [i for i in batch if i not in gone]
                if batch:
                    with self._lock:
                        self._require_open()
                        pooled[batch] = self._runtime.embed_batch([sequences[i] for i in batch])
                    self.stats.add(decode_calls=1, sequences_decoded=len(batch),
                                   tokens_decoded=sum(len(sequences[i]) for i in batch))
                if bar is not None:
                    bar.update(len(batch))
        finally:
            if bar is not None:
                bar.close()
        if dropped:
            pooled[dropped] = 0.0  # finite while checked, then NaN: a cancelled row is no vector
            check_finite(pooled)
            pooled[dropped] = np.nan
        else:
            check_finite(pooled)
        return pooled

    def finish(self, pooled: np.ndarray, *, dim: int | None = None, normalize: bool | None = None) -> np.ndarray:
        """Pooled rows (:meth:`pool`) as vectors: Matryoshka truncation to ``dim``, then L2
        normalisation (this Embedder's defaults where None)."""
        dim = self.check_dim(dim) if dim is not None else self._dim
        vectors = truncate_dim(pooled, dim)
        return l2_normalize(vectors) if (self.normalize if normalize is None else normalize) \
            else np.ascontiguousarray(vectors, dtype=np.float32)

    def _embed(self, items: list[str], *, dim: int | None, normalize: bool | None, batch_tokens: int | None,
               max_seqs: int | None, show_progress: bool) -> np.ndarray:
        """Embed model-ready texts: each distinct text is looked up in the cache (if any) and
        decoded at most once, however often it occurs in ``items`` (:class:`~qembed_gguf.lookup.Pending`)."""
        dim = self.check_dim(dim) if dim is not None else self._dim
        normalize = self.normalize if normalize is None else normalize
        if not items:
            self.pool([], batch_tokens=batch_tokens)  # validates batch_tokens
            return np.empty((0, dim or self.dim), dtype=np.float32)
        pending = Pending.look_up(items, self._cache, dim=dim or self.dim, normalize=normalize)
        if self._cache is not None:
            self.stats.add(cache_hits=pending.hits, cache_misses=pending.misses)
        missing = pending.missing
        fresh = np.empty((0, dim or self.dim), dtype=np.float32)
        if missing:
            planned = self.plan(self._tokenize([pending.texts[k] for k in missing]),
                                rows=[pending.rows[k] for k in missing])
            fresh = planned.combine(self.pool(planned.sequences, batch_tokens=batch_tokens, max_seqs=max_seqs,
                                              show_progress=show_progress), dim=dim, normalize=normalize)
        return pending.complete(fresh)  # cut ones too: the cache's settings name the policy

    def plan(self, sequences: list[list[int]], *, long_inputs: str | None = None,
             rows: Sequence[Sequence[int]] | None = None) -> longinputs.Plan:
        """Prepared sequences with the long-input policy (default: the Embedder's) applied: what to
        decode (:meth:`pool`) and how to put it back together (:meth:`Plan.combine`); see
        :mod:`qembed_gguf.longinputs`. ``rows[k]``: the caller's inputs sequence ``k`` stands for
        (error messages name the first)."""
        policy = self.long_inputs if long_inputs is None else check_policy(
            long_inputs, self.chunk_overlap, max_tokens=self._max_tokens)[0]
        return longinputs.plan(sequences, limit=self._max_tokens, eos=self._eos, long_inputs=policy,
                         overlap=self.chunk_overlap, rows=rows)

    def fit(self, sequences: list[list[int]], *, truncate: bool | None = None,
            rows: Sequence[Sequence[int]] | None = None) -> list[list[int]]:
        """The ``max_tokens`` rule on prepared sequences (:func:`qembed_gguf.validate.fit_sequences`):
        cut keeping the pooling token last, or, with ``truncate`` False (default: True only under
        ``long_inputs="truncate"``), :class:`InputTooLongError` naming the first."""
        return fit_sequences(sequences, limit=self._max_tokens, eos=self._eos,
                             truncate=self.truncate if truncate is None else truncate, rows=rows)

    def embed_chunks(self, texts: str | Sequence[str], *, chunk_tokens: int, overlap: int = 0, dim: int | None = None,
                     query: bool = False, task: str | None = None, normalize: bool | None = None,
                     batch_tokens: int | None = None) -> list[Chunk]:
        """Split each text into chunks of at most ``chunk_tokens`` tokens (pooling token included; in
        ``[2, max_tokens]``), consecutive chunks sharing ``overlap`` tokens, and embed every chunk.

        Returns one :class:`~qembed_gguf.chunks.Chunk` per chunk, texts in order and each text's
        chunks in order: ``.index`` (the text), ``.chunk``, ``.start``/``.end`` (``text[start:end]``
        is the chunk; a text's chunks run from 0 to ``len(text)``), ``.n_tokens`` and ``.vector``.
        Chunks end at token boundaries, preferring a paragraph, then a sentence break near the end
        of the window (:mod:`qembed_gguf.chunks`). ``query``: each chunk is embedded as a query
        with ``task`` (the template's tokens, then the chunk's; all count in ``chunk_tokens``). The cache is not used."""
        return embed_chunks(self, texts, chunk_tokens=chunk_tokens, overlap=overlap, dim=dim, query=query,
                            task=task, normalize=normalize, batch_tokens=batch_tokens)

    def embed_query(self, texts: str | Sequence[str], *, task: str | None = None, **kwargs) -> np.ndarray:
        """Embed search queries: each text becomes ``Instruct: {task}\\nQuery:{text}``."""
        return self.embed(texts, instruction=self.facts.default_task if task is None else task, **kwargs)

    def embed_documents(self, texts: str | Sequence[str], **kwargs) -> np.ndarray:
        """Embed documents: raw text, no instruction."""
        return self.embed(texts, **kwargs)

    # -- lifetime -----------------------------------------------------------------------------------
    def warm_up(self) -> None:
        """One decode of the pooling token alone, not counted in :attr:`stats`: pages the weights in
        and allocates llama.cpp's compute buffers before the first real call (the server runs it)."""
        with self._lock:
            self._require_open()
            self._runtime.embed_batch([[self._eos]])

    def _require_open(self) -> None:
        if self._runtime is None:
            raise InputError("this Embedder is closed")

    def close(self) -> None:
        """Free the llama.cpp model and context, and a cache opened from a spec (idempotent)."""
        with getattr(self, "_lock", threading.RLock()):
            runtime, self._runtime = getattr(self, "_runtime", None), None
            if runtime is not None:
                runtime.close()
            cache, self._cache = getattr(self, "_cache", None), None
            if cache is not None and self._owns_cache:
                cache.backend.close()

    def __enter__(self) -> "Embedder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Embedder({str(self.path)!r}, dim={self.dim}, max_tokens={self.max_tokens}, "
                f"quant={self.info.file_type})")
