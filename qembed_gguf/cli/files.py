"""``convert``, ``info``, ``verify``, ``models`` and ``demo``: model files and the registry."""

from __future__ import annotations

import json
import sys

import click

from .. import keys, registry
from ..converter.quantize import OUTTYPES
from ._common import library_errors, main, setup_logging


@main.command()
@click.argument("src")
@click.option("--outtype", "-t", default="q8_0", show_default=True,
              type=click.Choice(list(OUTTYPES), case_sensitive=False),
              help="Output type: f32/f16/bf16/q8_0/q4_0 written in Python; K-quants and i-quants by llama.cpp's "
                   "quantizer.")
@click.option("--outfile", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Output .gguf path [default: ./<name>-<OUTTYPE>.gguf].")
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output file.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) for hub ids.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for llama.cpp's quantizer.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary, warnings only.")
@click.option("--calibrate", "corpus", type=click.Path(exists=True, dir_okay=False), default=None,
              help="UTF-8 text corpus: quantize with an importance matrix of the model's activations on it "
                   "(llama.cpp's types only: K-quants, iq4_xs, iq4_nl).")
@click.option("--imatrix", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Quantize with this GGUF importance matrix (from --save-imatrix or llama-imatrix).")
@click.option("--save-imatrix", type=click.Path(dir_okay=False, writable=True), default=None,
              help="With --calibrate: also write the importance matrix (llama.cpp's GGUF imatrix format).")
@click.pass_context
@library_errors
def convert(ctx, src, outtype, outfile, force, revision, threads, quiet, corpus, imatrix, save_imatrix):
    """Convert SRC (a checkpoint folder, a model name or a hub id) to GGUF.

    \b
    Examples:
      qembed-gguf convert tiny -o tiny.gguf
      qembed-gguf convert Qwen/Qwen3-Embedding-4B --outtype q4_k_m
      qembed-gguf convert Qwen/Qwen3-Embedding-4B -t iq4_xs --calibrate corpus.txt --save-imatrix 4b.imatrix.gguf
      HF_HUB_OFFLINE=1 qembed-gguf convert ./Qwen3-Embedding-0.6B -t f16
    """
    from ..converter import check_calibration
    from ..converter import convert as run_convert
    from ..errors import CalibrationError
    from ..fileinfo import read_gguf_info
    from ..report import render_summary

    try:
        check_calibration(outtype, calibrate=corpus, imatrix=imatrix, save_imatrix=save_imatrix, force=force)
    except CalibrationError as exc:
        raise click.UsageError(str(exc)) from None
    setup_logging(ctx.obj["verbose"], quiet)
    out = run_convert(src, outtype=outtype.lower(), outfile=outfile, force=force, revision=revision,
                      quiet=quiet, threads=threads, calibrate=corpus, imatrix=imatrix, save_imatrix=save_imatrix)
    if not quiet:
        click.echo(render_summary(read_gguf_info(out)))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def info(ctx, file, as_json):
    """Show what a GGUF file holds, which kind of model it is (embedding or reranker) and whether it
    is right for Qwen3 embeddings (or Qwen3-Reranker scores).

    The file is validated as the Embedder and `verify` validate it (check_gguf). Exits with 1 when
    it is refused (the error names the field and byte offset; with --json it is the "error"
    object), and with 3 when it is well-formed but lacks something correct embeddings need.
    """
    from ..errors import ModelLoadError
    from ..fileinfo import read_gguf_info
    from ..gguf_check import check_gguf
    from ..gguf_reader import read_header
    from ..report import render_info

    setup_logging(ctx.obj["verbose"], quiet=True)
    try:
        header, refusal = check_gguf(file), None
    except ModelLoadError as exc:  # refused: still describe the file if its header parses at all
        header, refusal = read_header(file), exc
    gi = read_gguf_info(file, header=header)
    problems = gi.problems()
    sealed = isinstance(gi.get(keys.INTEGRITY), str)
    if as_json:
        click.echo(json.dumps(gi.to_dict(refusal=refusal), indent=2))
        if refusal is not None:
            sys.exit(1)
    else:
        click.echo(render_info(gi, refusal=refusal))
        click.echo(f"kind:      {gi.kind}" + (" (Qwen3-Reranker: RANK pooling, yes/no head cls.output.weight)"
                                              if gi.kind == "reranker" else ""))
        click.echo("integrity: " + ("sealed (qembed-gguf verify FILE checks every byte)" if sealed else
                                    "no seal (not written by qembed-gguf convert; cannot be verified)"))
        if gi.get("quantize.imatrix.entries_count") is not None:  # what llama-quantize --imatrix records
            click.echo(f"calibrated: importance matrix of {gi.get('quantize.imatrix.entries_count')} tensors from "
                       f"{gi.get('quantize.imatrix.dataset', '?')!r}, {gi.get('quantize.imatrix.chunks_count', '?')} "
                       f"chunks (imatrix {gi.get('quantize.imatrix.file', 'not saved')})")
        if refusal is not None:
            raise refusal  # one line on stderr, exit 1 (library_errors)
    if problems:
        sys.exit(3)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
@library_errors
def verify(ctx, file):
    """Check a GGUF file: its header and Qwen3 layout, then every byte against its integrity seal.

    Exits with 0 when all is well, 1 when the file is malformed, refused (the error names the field
    and byte offset; a FIFO or device is refused unread) or does not match its seal, and 3 when it
    is well-formed but carries no seal (not written by qembed-gguf convert).
    """
    import time

    from ..gguf_check import check_gguf
    from ..integrity import verify_integrity

    setup_logging(ctx.obj["verbose"], quiet=True)
    start = time.perf_counter()
    header = check_gguf(file)
    status = verify_integrity(file)
    seconds = time.perf_counter() - start
    if not status.sealed:
        click.echo(f"{file}: header and Qwen3 layout valid; no integrity seal, so its bytes cannot be verified")
        sys.exit(3)
    status.raise_for(file)  # a mismatch: IntegrityError, exit 1
    click.echo(f"{file}: OK — header and Qwen3 layout valid, all {header.file_size} bytes match the seal "
               f"(blake2b {status.actual[:16]}…) in {seconds:.1f} s")


@main.command("models")
def list_models():
    """List the models qembed-gguf knows by name, with their kind (embedding or reranker)."""
    for spec in registry.all_specs():
        where = spec.hub_id or f"bundled ({spec.bundled})"
        note = "" if spec.semantic else "  [random weights, non-semantic]"
        output = f"MRL {spec.mrl_min_dim}..{spec.dim}" if spec.kind == "embedding" else "scores (query, document)"
        click.echo(f"{spec.name:24} {where:34} {spec.kind:9}  dim {spec.dim:5}  layers {spec.shape.layers:3}  "
                   f"{output}{note}")


# the demo's texts: each query has one right document (its index in DEMO_ANSWERS), the last document none
DEMO_QUERIES = ["How do I bake bread at home?", "What is a database index?", "Which planet is closest to the sun?"]
DEMO_DOCUMENTS = [
    "Mix flour, water, salt and yeast; let the dough rise, then bake it in a hot oven.",
    "An index is a data structure that lets a database find rows without scanning the whole table.",
    "Mercury is the smallest planet of the solar system and the nearest one to the sun.",
    "The violin is a bowed string instrument with four strings.",
]
DEMO_ANSWERS = [0, 1, 2]


@main.command()
@click.option("--model", default="mini", show_default=True,
              help="Model to demonstrate (bundled: mini, trained, English; tiny, random weights).")
@click.pass_context
@library_errors
def demo(ctx, model):
    """Embed a few example texts and print dimensions, a similarity table and throughput."""
    import time

    import numpy as np

    from ..embedder import Embedder

    setup_logging(ctx.obj["verbose"], quiet=True)
    queries, documents = DEMO_QUERIES, DEMO_DOCUMENTS
    with Embedder(model) as e:
        spec = registry.find_spec(model)
        if spec is not None and not spec.semantic:
            click.echo(f"model {model}: RANDOM WEIGHTS (pipeline demo only) — the similarities below mean nothing")
        start = time.perf_counter()
        q = e.embed_query(queries)
        d = e.embed_documents(documents)
        seconds = time.perf_counter() - start
        tokens = sum(e.count_tokens([e.format_query(x) for x in queries])) + sum(e.count_tokens(documents))
        click.echo(f"file {e.path.name}: {e.info.file_type}, full dim {e.dim}, MRL dims {e.mrl_min_dim}..{e.dim}, "
                   f"max {e.max_tokens} tokens")
        click.echo(f"queries {q.shape}, documents {d.shape}, float32, L2-normalised")
        click.echo("cosine similarity (query × document); best: the document ranked first")
        click.echo("      " + "  ".join(f"doc{j}" for j in range(len(documents))) + "  best")
        for i, row in enumerate(q @ d.T):
            click.echo(f"  q{i}  " + "  ".join(f"{v:+.2f}" for v in row) + f"  doc{int(np.argmax(row))}  {queries[i]}")
        for j, text in enumerate(documents):
            click.echo(f"  doc{j}: {text}")
        small = e.embed_documents(documents, dim=e.mrl_min_dim)
        click.echo(f"MRL: the same documents at dim {e.mrl_min_dim}: shape {small.shape}, norms "
                   f"{np.round(np.linalg.norm(small, axis=1), 3).tolist()}")
        click.echo(f"throughput: {len(queries) + len(documents)} texts, {tokens} tokens in {seconds * 1000:.0f} ms "
                   f"({tokens / seconds:.0f} tokens/s; model loaded beforehand, {e.batch_tokens}-token batches)")
