"""``embed``: an offline job (resumable, streaming), locally or on a Ray cluster."""

from __future__ import annotations

import click

from ..jobio import INPUT_FORMATS, spans_path
from ..longinputs import max_overlap
from ..postprocess import PRECISIONS
from ._common import device_options, library_errors, long_input_options, main, setup_logging


@main.command()
@click.argument("model")
@click.argument("input_path", metavar="INPUT")
@click.option("--output", "-o", "output", required=True, type=click.Path(),
              help="Output .npy file (row i = input i); ids go to OUT.ids.json. With --chunk-tokens: row i = "
              "chunk i, its text's id and span in line i of OUT.spans.jsonl. With --ray: a folder of Parquet shards.")
@click.option("--format", "fmt", type=click.Choice([*INPUT_FORMATS, "parquet"]), default="auto",
              show_default=True, help="Input format; auto: .jsonl/.ndjson are JSON lines, anything else one text per "
              "line (with --ray: .parquet files and folders are Parquet).")
@click.option("--field", default="text", show_default=True, help="Text field of .jsonl (or Parquet) input.")
@click.option("--dim", type=int, default=None, help="Output dimension (Matryoshka); default: full.")
@click.option("--query", is_flag=True, help="Embed the inputs as queries (with the instruction).")
@click.option("--task", default=None, help="Task instruction for --query (default: the model's).")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None, help="Token budget for packing short inputs into one decode call (default: n_ubatch, 512).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Longest input in tokens.")
@long_input_options(default="truncate", what="fail")
@click.option("--no-truncate", is_flag=True, help="The same as --long-inputs error.")
@click.option("--chunk-tokens", type=click.IntRange(min=2), default=None,
              help="One output row per chunk of each text: chunks of at most this many tokens (the pooling token "
              "included; at most --max-tokens), cut at paragraph and sentence breaks where it can; their spans go "
              "to OUT.spans.jsonl.")
@click.option("--overlap", type=click.IntRange(min=0), default=None,
              help="--chunk-tokens: tokens consecutive chunks of a text share [default: 0].")
@click.option("--precision", type=click.Choice(PRECISIONS), default="float32",
              show_default=True)
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output.")
@click.option("--restart", is_flag=True, help="Discard the work of an interrupted run of this job instead of resuming it.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Texts per checkpoint: an interrupted job resumes from the last finished chunk.")
@device_options
@click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
              help="Run on a Ray cluster (needs qembed-gguf[ray]); -o is then a folder of Parquet shards. Without "
              "a value: the local Ray instance (started if none); 'auto', HOST:6379 or ray://HOST:10001: that "
              "cluster (give --ray after MODEL INPUT, or as --ray=ADDRESS). MODEL must be a path every node can "
              "read, or a model name.")
@click.option("--concurrency", type=click.IntRange(min=1), default=None,
              help="--ray: workers, each with its own copy of the model [default: the cluster's GPUs / "
              "--gpus-per-worker, else (its CPUs - 1) / --cpus-per-worker].")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="--ray: CPUs Ray reserves per worker (its llama.cpp threads, unless --threads).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="--ray: GPUs per worker (0.5: two share one); > 0 offloads all layers unless --n-gpu-layers.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True,
              help="--ray: rows per Embedder call and per block of the input (a block is what a dead worker's "
              "retry redoes).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.pass_context
@library_errors
def embed(ctx, model, input_path, output, fmt, field, dim, query, task, batch_tokens, max_tokens, long_inputs,
          chunk_overlap, no_truncate, chunk_tokens, overlap, precision, force, restart, chunk_size, threads,
          n_gpu_layers, vram, ray_address, concurrency, cpus_per_worker, gpus_per_worker, batch_size, quiet):
    """Embed the texts of INPUT (.txt, .jsonl, or - for stdin) with MODEL into a .npy file.

    Large inputs are streamed and checkpointed every --chunk-size texts: if the job is killed,
    running the same command again resumes it (the input's hash is checked) and the output is
    identical to an uninterrupted run's.

    With --chunk-tokens each text is split into chunks, one row each; OUT.spans.jsonl has one
    line per row: {"id" (if the input has ids), "index" (of the text in INPUT), "chunk",
    "start", "end" (text[start:end] is the chunk), "n_tokens"}. No .ids.json is written then.

    With --ray the same job runs on a Ray cluster, one model per worker, and writes Parquet
    shards (columns row and/or id, embedding) into the folder -o; INPUT may also be Parquet.

    \b
    Examples:
      qembed-gguf embed tiny docs.txt -o docs.npy
      qembed-gguf embed model.gguf corpus.jsonl -o corpus.npy --dim 256 --precision int8
      qembed-gguf embed model.gguf books.jsonl -o books.npy --long-inputs chunk --chunk-overlap 64
      qembed-gguf embed model.gguf kb.jsonl -o kb.npy --chunk-tokens 512 --overlap 64
      cat queries.txt | qembed-gguf embed model.gguf - -o q.npy --query
      qembed-gguf embed /shared/model.gguf /shared/corpus/ -o /shared/vectors/ --ray auto --cpus-per-worker 4
    """
    from pathlib import Path

    from click.core import ParameterSource

    from ..embedder import Embedder
    from ..jobs import JobSettings, run_embed_job

    setup_logging(ctx.obj["verbose"], quiet)
    if task is not None and not query:
        raise click.UsageError("--task applies to --query")

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    long_inputs, chunk_overlap, overlap = _check_long_inputs(
        given, long_inputs=long_inputs, chunk_overlap=chunk_overlap, no_truncate=no_truncate, max_tokens=max_tokens,
        chunk_tokens=chunk_tokens, overlap=overlap, ray=ray_address is not None)
    if ray_address is not None:
        if precision != "float32" or restart or given("chunk_size"):
            raise click.UsageError("--precision, --restart and --chunk-size apply to the local job, not to --ray")
        _embed_on_ray(model, input_path, output, address=ray_address or None, fmt=fmt, field=field, force=force,
                      quiet=quiet, dim=dim, query=query, task=task, concurrency=concurrency,
                      num_cpus_per_worker=cpus_per_worker, num_gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                      n_threads=threads, batch_tokens=batch_tokens,
                      embedder_kwargs={k: v for k, v in {
                          "max_tokens": max_tokens, "long_inputs": long_inputs,
                          "chunk_overlap": chunk_overlap if long_inputs == "chunk" else None,
                          "n_gpu_layers": n_gpu_layers if given("n_gpu_layers") else None,
                          "vram_budget": vram}.items() if v is not None})
        return
    ray_only = [f"--{name.replace('_', '-')}" for name in ("concurrency", "cpus_per_worker", "gpus_per_worker",
                                                             "batch_size") if given(name)]
    if ray_only or fmt == "parquet":
        raise click.UsageError(f"{', '.join(ray_only) or '--format parquet'} applies to --ray")
    out = Path(output)
    if out.suffix != ".npy" or out.is_dir():
        raise click.UsageError("the output must be a .npy file")
    if not out.parent.is_dir():
        raise click.ClickException(f"output folder {out.parent} does not exist")

    def load() -> Embedder:  # only once the input has been validated
        return Embedder(model, n_threads=threads, n_gpu_layers=n_gpu_layers, vram_budget=vram,
                        max_tokens=max_tokens, long_inputs=long_inputs, chunk_overlap=chunk_overlap)

    settings = JobSettings(fmt=fmt, field=field, query=query, task=task, dim=dim, precision=precision,
                           batch_tokens=batch_tokens, chunk_size=chunk_size, chunk_tokens=chunk_tokens, overlap=overlap)
    bar = None
    if not quiet:
        from tqdm.auto import tqdm
        bar = tqdm(unit="text", desc="embedding")
    try:
        result = run_embed_job(load, input_path, out, settings, force=force, restart=restart,
                               progress=bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        # rates count only what this run embedded: a resumed job's earlier chunks took no time now
        resumed = (f" ({result.n_texts - result.n_embedded} of them done by an interrupted run: "
                   f"{result.resumed_chunks} chunk(s) resumed)" if result.resumed_chunks else "")
        rows = f"{result.n_texts} texts → {out}" if chunk_tokens is None else \
            f"{result.n_texts} texts in {result.n_rows} chunks → {out} and {spans_path(out).name}"
        click.echo(f"{rows} ({result.dim} dims, {precision}){resumed}; embedded "
                   f"{result.n_embedded} texts, {result.n_tokens} tokens in {result.seconds:.2f} s: "
                   f"{result.texts_per_second:.1f} docs/s, "
                   f"{result.n_tokens / result.seconds if result.seconds > 0 else 0:.0f} tokens/s", err=True)


def _check_long_inputs(given, *, long_inputs: str, chunk_overlap: int, no_truncate: bool, max_tokens: int | None,
                       chunk_tokens: int | None, overlap: int | None, ray: bool) -> tuple[str, int, int]:
    """The long-input and chunk options, checked against each other before anything is read:
    ``(long_inputs, chunk_overlap, overlap)``; a contradiction is a :class:`click.UsageError`.
    (That --chunk-tokens is at most the model's default --max-tokens is checked once it is loaded.)"""
    if chunk_tokens is not None:
        if ray:
            raise click.UsageError("--chunk-tokens is not supported with --ray")
        clashing = [f"--{name.replace('_', '-')}" for name in ("long_inputs", "chunk_overlap", "no_truncate")
                    if given(name)]
        if clashing:
            raise click.UsageError(f"{' and '.join(clashing)} {'does' if len(clashing) == 1 else 'do'} not apply "
                                   f"with --chunk-tokens: every chunk fits in --max-tokens (chunks share --overlap "
                                   f"tokens)")
        if max_tokens is not None and chunk_tokens > max_tokens:
            raise click.UsageError(f"--chunk-tokens {chunk_tokens} is more than --max-tokens {max_tokens}")
        overlap = overlap or 0
        if overlap > max_overlap(chunk_tokens):
            raise click.UsageError(f"--overlap must be at most {max_overlap(chunk_tokens)}: half of the "
                                   f"{chunk_tokens - 1} tokens of the text a chunk holds (and the pooling token)")
        return long_inputs, chunk_overlap, overlap
    if overlap is not None:
        raise click.UsageError("--overlap applies to --chunk-tokens")
    if no_truncate:
        if given("long_inputs") and long_inputs != "error":
            raise click.UsageError(f"--no-truncate is --long-inputs error; it contradicts --long-inputs {long_inputs}")
        long_inputs = "error"
    if given("chunk_overlap") and long_inputs != "chunk":
        raise click.UsageError("--chunk-overlap applies to --long-inputs chunk")
    if long_inputs == "chunk" and max_tokens is not None and chunk_overlap > max_overlap(max_tokens):
        raise click.UsageError(f"--chunk-overlap must be at most {max_overlap(max_tokens)}: half of the "
                               f"{max_tokens - 1} tokens of the text a window holds")
    return long_inputs, chunk_overlap, 0


def _embed_on_ray(model: str, input_path: str, output: str, *, quiet: bool, **options) -> None:
    """``embed --ray``: the job on a Ray cluster (:func:`qembed_gguf.integrations.ray.embed_corpus`)."""
    if output.endswith(".npy"):
        raise click.UsageError("with --ray, -o names a folder of Parquet shards, not a .npy file")
    try:
        from ..integrations.ray import embed_corpus
    except ImportError as exc:
        raise click.ClickException(str(exc)) from None
    result = embed_corpus(model, input_path, output, progress=not quiet, **options)
    if not quiet:
        click.echo(f"{result.rows} texts → {result.output} ({result.files} Parquet file(s), {result.dim} dims) "
                   f"in {result.seconds:.2f} s, {result.job_seconds:.2f} s of them running the job on Ray "
                   f"(workers started, embedding, writing): {result.rows / result.job_seconds:.1f} docs/s", err=True)
