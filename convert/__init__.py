"""The converter: a Hugging Face Qwen3-Embedding or Qwen3-Reranker checkpoint → a correct GGUF file.

A pipeline of small steps — resolve the source, read config + safetensors, tell the kind of model
(:mod:`.rerank`), map tensor names, choose a type per tensor, quantize a row chunk at a time,
write — whose only side effect is the final atomic rename. The repository folder ``convert/``
installs as ``qembed_gguf.converter``; its entry point is re-exported as
``qembed_gguf.convert(src, outtype=...)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from qembed_gguf import __version__, registry
from qembed_gguf.atomic import temporary_path
from qembed_gguf.errors import CalibrationError
from qembed_gguf.integrity import seal

from . import calibrate as _calibrate
from .checkpoint import Checkpoint
from .mapping import Qwen3Params, TensorPlan, plan_tensors
from .metadata import ModelInfo, write_metadata
from .quantize import OUTTYPES, OutType, choose_type, encode_rows, get_outtype, llama_quantize
from .rerank import checkpoint_kind
from .source import Source, resolve_source
from .tokenizer import read_vocab
from .writer import TensorOut, atomic_output, check_output, write_gguf

__all__ = ["convert", "OUTTYPES", "default_outfile", "check_calibration"]

log = logging.getLogger(__name__)

_LOSSLESS_INTERMEDIATE = {frozenset({"BF16"}): "bf16", frozenset({"F16"}): "f16"}
_CHUNK_BYTES = 32 << 20  # float32 bytes converted per step: bounds memory for any tensor size


def default_outfile(name: str, outtype: OutType) -> Path:
    return Path(f"{name}-{outtype.name.upper()}.gguf")


def _model_info(source: Source, params: Qwen3Params, n_params: int, kind: str) -> ModelInfo:
    family = source.spec or registry.family_spec(kind)
    reranker = kind == "reranker"
    return ModelInfo(
        name=source.spec.name if source.spec else source.label.rsplit("/", 1)[-1],
        source=source.label,
        mrl_min_dim=None if reranker else min(family.mrl_min_dim, params.hidden),
        query_template=None if reranker else family.query_template,
        default_task=family.default_task,
        converter=f"qembed-gguf {__version__}",
        n_params=n_params,
        kind=kind,
        rerank_template=family.rerank_chat_template() if reranker else None,
    )


def _read_readme(folder: Path) -> str | None:
    """The checkpoint's README.md (its model card; one of the reranker hints), if it has one."""
    path = folder / "README.md"
    try:
        with open(path, "rb") as fh:
            return fh.read(1 << 20).decode("utf-8", errors="replace")
    except OSError:
        return None


def _write_python(ckpt: Checkpoint, plan: list[TensorPlan], params: Qwen3Params, vocab, info: ModelInfo,
                  outtype: OutType, path: Path, *, quiet: bool) -> None:
    """Write ``outtype`` (a Python-written type) to ``path``, streaming one row chunk at a time."""
    tensors, sources = [], {}
    for p in plan:
        qtype, note = choose_type(p.gguf_name, p.shape, outtype)
        if note:
            log.warning("%s: %s", p.gguf_name, note)
        t = TensorOut(p.gguf_name, p.shape, qtype)
        tensors.append(t)
        sources[t.name] = p.hf_name

    gathered = {p.gguf_name: p.rows for p in plan if p.rows is not None}

    def chunks(t: TensorOut):
        if t.name in gathered:  # the reranker head: a few rows of the lm_head, read alone
            yield encode_rows(ckpt.read_rows_f32(sources[t.name], gathered[t.name]), t.qtype)
            return
        for rows in ckpt.iter_rows_f32(sources[t.name], max_bytes=_CHUNK_BYTES):
            yield encode_rows(rows, t.qtype)

    bar = None
    if not quiet:
        from tqdm.auto import tqdm
        bar = tqdm(total=sum(t.nbytes for t in tensors), unit="B", unit_scale=True, disable=None,
                   desc=f"{outtype.name} {path.name[:24]}", leave=False)
    try:
        write_gguf(path, tensors, lambda w: write_metadata(w, params, vocab, info, outtype.file_type), chunks,
                   progress=(lambda t: bar.update(t.nbytes)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()


def check_calibration(outtype: str, *, calibrate=None, imatrix=None, save_imatrix=None, force: bool = False) -> None:
    """Refuse calibration options that cannot go together (before any work): :class:`CalibrationError`;
    an imatrix output that exists (unless ``force``) or is a folder: :class:`OutputExistsError`."""
    ot = get_outtype(outtype)
    if calibrate is not None and imatrix is not None:
        raise CalibrationError("give a corpus to calibrate on (--calibrate) or an imatrix file (--imatrix), not both")
    if save_imatrix is not None and calibrate is None:
        raise CalibrationError("--save-imatrix saves the importance matrix --calibrate computes; it needs --calibrate")
    if (calibrate is not None or imatrix is not None) and not ot.by_llama:
        aware = ", ".join(t.name for t in OUTTYPES.values() if t.by_llama)
        raise CalibrationError(f"{ot.name} is written in Python and is not imatrix-aware; an importance matrix "
                               f"applies to llama.cpp's quantizer types: {aware}")
    if save_imatrix is not None:
        check_output(Path(save_imatrix), force=force, what="imatrix output", missing=CalibrationError)


def _importance(ckpt: Checkpoint, plan: list[TensorPlan], params: Qwen3Params, vocab_gguf: Path, *,
                calibrate, imatrix, loaded: _calibrate.Imatrix | None, save_imatrix, force: bool):
    """The importance matrix and the output keys that record it, or (None, None) for stock quantization."""
    if loaded is None and calibrate is None:
        return None, None
    if loaded is None:
        chunks = _calibrate.tokenize_corpus(calibrate, vocab_gguf)
        loaded = _calibrate.compute_imatrix(ckpt, {p.gguf_name: p.hf_name for p in plan}, params, chunks,
                                            dataset=Path(calibrate).name)
        if save_imatrix is not None:  # saved at once: a failed quantization can be retried with --imatrix
            _calibrate.save_imatrix(loaded, save_imatrix, force=force)
    keys = _calibrate.quantize_metadata(loaded, file=imatrix if imatrix is not None else save_imatrix)
    log.info("quantizing with an importance matrix of %d tensors from %s", len(loaded),
             keys.get("quantize.imatrix.dataset", "an unnamed dataset"))
    return loaded.values(), keys


def convert(
    src: str | os.PathLike[str],
    *,
    outtype: str = "q8_0",
    outfile: str | os.PathLike[str] | None = None,
    force: bool = False,
    revision: str | None = None,
    quiet: bool = False,
    threads: int | None = None,
    calibrate: str | os.PathLike[str] | None = None,
    imatrix: str | os.PathLike[str] | None = None,
    save_imatrix: str | os.PathLike[str] | None = None,
) -> Path:
    """Convert a Qwen3-Embedding or Qwen3-Reranker checkpoint into a GGUF file and return its path.

    A Qwen3-Reranker (named so by the registry, its folder / hub / config name or its README's
    heading: :func:`~.rerank.checkpoint_kind`) becomes a file llama.cpp loads as a reranker: RANK
    pooling and the yes/no head ``cls.output.weight`` (see :mod:`.metadata`).

    Args:
        src: a local checkpoint folder, a registry name (``qwen3-embedding-4b``, ``qwen3-reranker-0.6b``,
            ``tiny``) or a hub id (``Qwen/Qwen3-Embedding-4B``, fetched with huggingface_hub; honours
            HF_HUB_OFFLINE).
        outtype: one of :data:`OUTTYPES` — ``f32 f16 bf16 q8_0 q4_0`` (written in Python) or
            ``q6_k q5_k_m q5_k_s q4_k_m q4_k_s q3_k_m iq4_xs iq4_nl`` (llama.cpp's quantizer). Default ``q8_0``.
        outfile: output path; default ``./<name>-<OUTTYPE>.gguf``.
        force: overwrite an existing ``outfile``.
        revision: hub revision (branch, tag or commit) for hub ids.
        quiet: no progress bar. (llama.cpp's quantizer log shows only at DEBUG log level.)
        threads: threads for llama.cpp's quantizer (default: all cores).
        calibrate: a UTF-8 text corpus: compute an importance matrix from the model's activations on it
            (:mod:`.calibrate`; up to 64 chunks of 512 tokens, a numpy forward of every layer) and hand it to
            llama.cpp's quantizer. Only for llama.cpp's types (K-quants, ``iq4_xs``, ``iq4_nl``).
        imatrix: a GGUF importance-matrix file instead (:func:`.calibrate.save_imatrix`'s or
            ``llama-imatrix``'s), checked against the model's tensors.
        save_imatrix: with ``calibrate``, also write the computed importance matrix there (as soon as it is
            computed; honours ``force``).

    Raises:
        ConversionError (and subclasses) naming the file, key, tensor or byte offset at fault;
        CalibrationError for an empty corpus, an imatrix file that does not fit the model, or calibration
        options with a Python-written type; OutputExistsError when ``outfile`` (or ``save_imatrix``)
        exists and not ``force``. No partial file is left behind.
    """
    check_calibration(outtype, calibrate=calibrate, imatrix=imatrix, save_imatrix=save_imatrix, force=force)
    if calibrate is not None and not Path(calibrate).is_file():
        raise CalibrationError("the calibration corpus is not a file", path=calibrate)
    loaded = _calibrate.load_imatrix(imatrix) if imatrix is not None else None
    ot = get_outtype(outtype)
    source = resolve_source(src, revision=revision)
    with Checkpoint(source.folder) as ckpt:
        kind = checkpoint_kind(ckpt.config, names=(source.folder.name, source.label),
                               readme=_read_readme(source.folder), spec=source.spec)
        params = Qwen3Params.from_config(ckpt.config)
        bos = ckpt.config.get("bos_token_id")
        vocab = read_vocab(source.folder, vocab_size=params.vocab, bos_token_id=bos, kind=kind)
        plan = plan_tensors({name: ref.shape for name, ref in ckpt.tensors.items()}, params, kind=kind,
                            label_ids=vocab.label_ids)
        if kind == "reranker" and vocab.post_processor_eos:
            log.warning("tokenizer.json appends <|endoftext|> to every input; a Qwen3-Reranker's does not (its "
                        "prompt template ends every input), and the GGUF sets add_eos_token=false")
        elif kind == "embedding" and not vocab.post_processor_eos:
            log.warning("tokenizer.json has no TemplateProcessing post-processor appending <|endoftext|>; the GGUF "
                        "still sets add_eos_token=true so that llama.cpp appends it")
        if loaded is not None:
            loaded = _calibrate.check_imatrix(loaded, {p.gguf_name: p.shape for p in plan}, path=imatrix)
        info = _model_info(source, params, sum(p.n_elements for p in plan), kind)
        out = Path(outfile) if outfile is not None else default_outfile(info.name, ot)
        log.info("converting %s (%s, %d layers, hidden %d) to %s as %s", source.label, kind, params.layers,
                 params.hidden, out, ot.name)
        with atomic_output(out, force=force) as tmp:
            if not ot.by_llama:
                _write_python(ckpt, plan, params, vocab, info, ot, tmp, quiet=quiet)
            else:
                inter = OUTTYPES[_LOSSLESS_INTERMEDIATE.get(frozenset(ckpt.dtypes), "f32")]
                with temporary_path(out.parent, out.name + "." + inter.name) as inter_path:
                    _write_python(ckpt, plan, params, vocab, info, inter, inter_path, quiet=quiet)
                    weights, keys = _importance(ckpt, plan, params, inter_path, calibrate=calibrate, imatrix=imatrix,
                                                loaded=loaded, save_imatrix=save_imatrix, force=force)
                    # copies every key, the seal's too; adds quantize.imatrix.* when calibrated
                    llama_quantize(inter_path, tmp, ot, threads=threads, imatrix=weights, metadata=keys)
            digest = seal(tmp)
            log.debug("sealed %s: blake2b %s", out.name, digest)
    log.info("wrote %s (%.1f MB)", out, out.stat().st_size / 1e6)
    return out
