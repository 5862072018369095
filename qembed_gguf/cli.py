"""The ``qembed-gguf`` command: a thin click layer over the library.

Library errors (:class:`QembedError`) become one-line messages and exit code 1 here, and only
here; usage errors exit with 2 (click's convention).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys

import click

from . import __version__, backend, keys, registry
from .errors import QembedError

log = logging.getLogger("qembed_gguf")


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:  # keep third-party chatter down unless asked
        for name in ("gguf", "huggingface_hub", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)


def _library_errors(func):
    """Translate library errors into click errors at the boundary."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except QembedError as exc:
            raise click.ClickException(f"{type(exc).__name__}: {exc}") from None
        except backend.PresetError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted; no partial output was left behind", err=True)
            sys.exit(130)
    return wrapper


class _GpuLayers(click.ParamType):
    """``--n-gpu-layers``: an integer (-1: all) or ``auto``."""

    name = "INT|auto"

    def convert(self, value, param, ctx):
        if isinstance(value, int) or value == "auto":
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither an integer nor 'auto'", param, ctx)


GPU_LAYERS = _GpuLayers()
_GPU_HELP = "Layers to offload to a GPU: a number (-1: all) or 'auto' (what fits the free VRAM or --vram)."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qembed-gguf")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Qwen3-Embedding models as quantized GGUF files, run through llama.cpp, offline."""
    ctx.obj = {"verbose": verbose}


@main.command()
@click.argument("src")
@click.option("--outtype", "-t", default="q8_0", show_default=True,
              type=click.Choice(["f32", "f16", "bf16", "q8_0", "q4_0", "q6_k", "q5_k_m", "q5_k_s", "q4_k_m", "q4_k_s",
                                 "q3_k_m"], case_sensitive=False),
              help="Output type: f32/f16/bf16/q8_0/q4_0 written in Python; K-quants by llama.cpp's quantizer.")
@click.option("--outfile", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Output .gguf path [default: ./<name>-<OUTTYPE>.gguf].")
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output file.")
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) for hub ids.")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for llama.cpp's quantizer.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar, no summary, warnings only.")
@click.pass_context
@_library_errors
def convert(ctx, src, outtype, outfile, force, revision, threads, quiet):
    """Convert SRC (a checkpoint folder, a model name or a hub id) to GGUF.

    \b
    Examples:
      qembed-gguf convert tiny -o tiny.gguf
      qembed-gguf convert Qwen/Qwen3-Embedding-4B --outtype q4_k_m
      HF_HUB_OFFLINE=1 qembed-gguf convert ./Qwen3-Embedding-0.6B -t f16
    """
    from .convert import convert as run_convert
    from .fileinfo import read_gguf_info
    from .report import render_summary

    _setup_logging(ctx.obj["verbose"], quiet)
    out = run_convert(src, outtype=outtype.lower(), outfile=outfile, force=force, revision=revision,
                      quiet=quiet, threads=threads)
    if not quiet:
        click.echo(render_summary(read_gguf_info(out)))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@_library_errors
def info(ctx, file, as_json):
    """Show what a GGUF file holds and whether it is right for Qwen3 embeddings.

    The file is validated as the Embedder and `verify` validate it (check_gguf). Exits with 1 when
    it is refused (the error names the field and byte offset; with --json it is the "error"
    object), and with 3 when it is well-formed but lacks something correct embeddings need.
    """
    import math

    from .errors import ModelLoadError
    from .fileinfo import read_gguf_info
    from .gguf_check import check_gguf, read_header
    from .report import render_info

    _setup_logging(ctx.obj["verbose"], quiet=True)
    try:
        header, refusal = check_gguf(file), None
    except ModelLoadError as exc:  # refused: still describe the file if its header parses at all
        header, refusal = read_header(file), exc
    gi = read_gguf_info(file, header=header)
    problems = gi.problems()
    sealed = isinstance(gi.get(keys.INTEGRITY), str)
    if as_json:
        def plain(v):  # JSON has no NaN or infinity; a crafted file may hold them
            if isinstance(v, float) and not math.isfinite(v):
                return repr(v)
            return v if isinstance(v, (str, int, float, bool)) or v is None else repr(v)

        meta = {k: plain(v) for k, v in gi.metadata.items()
                if not k.startswith("tokenizer.ggml.") or not hasattr(v, "__len__")}
        error = None if refusal is None else {
            "type": type(refusal).__name__, "message": str(refusal), "field": getattr(refusal, "field", None),
            "offset": getattr(refusal, "offset", None)}
        click.echo(json.dumps({
            "path": str(gi.path), "file_size": gi.file_size, "architecture": plain(gi.architecture),
            "dim": plain(gi.dim), "layers": plain(gi.layers), "pooling": gi.pooling, "eos_token": gi.eos_token,
            "file_type": gi.file_type, "bits_per_weight": round(gi.bits_per_weight, 4), "type_mix": gi.type_mix,
            "valid": refusal is None, "error": error, "problems": problems, "sealed": sealed, "metadata": meta,
        }, indent=2))
        if refusal is not None:
            sys.exit(1)
    else:
        click.echo(render_info(gi, refusal=refusal))
        click.echo("integrity: " + ("sealed (qembed-gguf verify FILE checks every byte)" if sealed else
                                    "no seal (not written by qembed-gguf convert; cannot be verified)"))
        if refusal is not None:
            raise refusal  # one line on stderr, exit 1 (_library_errors)
    if problems:
        sys.exit(3)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.pass_context
@_library_errors
def verify(ctx, file):
    """Check a GGUF file: its header and Qwen3 layout, then every byte against its integrity seal.

    Exits with 0 when all is well, 1 when the file is malformed, refused (the error names the field
    and byte offset; a FIFO or device is refused unread) or does not match its seal, and 3 when it
    is well-formed but carries no seal (not written by qembed-gguf convert).
    """
    import time

    from .errors import IntegrityError
    from .gguf_check import check_gguf, verify_integrity

    _setup_logging(ctx.obj["verbose"], quiet=True)
    start = time.perf_counter()
    header = check_gguf(file)
    status = verify_integrity(file)
    seconds = time.perf_counter() - start
    if not status.sealed:
        click.echo(f"{file}: header and Qwen3 layout valid; no integrity seal, so its bytes cannot be verified")
        sys.exit(3)
    if not status.ok:
        raise IntegrityError(f"{file}: content does not match its seal (expected {status.expected}, got "
                             f"{status.actual}): the file is corrupted or was modified")
    click.echo(f"{file}: OK — header and Qwen3 layout valid, all {header.file_size} bytes match the seal "
               f"(blake2b {status.actual[:16]}…) in {seconds:.1f} s")


@main.command()
@click.argument("model")
@click.argument("input_path", metavar="INPUT")
@click.option("--output", "-o", "output", required=True, type=click.Path(),
              help="Output .npy file (row i = input i); ids go to OUT.ids.json. With --ray: a folder of Parquet shards.")
@click.option("--format", "fmt", type=click.Choice(["auto", "txt", "jsonl", "parquet"]), default="auto",
              show_default=True, help="Input format; auto: .jsonl/.ndjson are JSON lines, anything else one text per "
              "line (with --ray: .parquet files and folders are Parquet).")
@click.option("--field", default="text", show_default=True, help="Text field of .jsonl (or Parquet) input.")
@click.option("--dim", type=int, default=None, help="Output dimension (Matryoshka); default: full.")
@click.option("--query", is_flag=True, help="Embed the inputs as queries (with the instruction).")
@click.option("--task", default=None, help="Task instruction for --query (default: the model's).")
@click.option("--batch-tokens", type=click.IntRange(min=1), default=None, help="Token budget for packing short inputs into one decode call (default: n_ubatch, 512).")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Longest input in tokens.")
@click.option("--no-truncate", is_flag=True, help="Fail on inputs longer than --max-tokens instead of truncating.")
@click.option("--precision", type=click.Choice(["float32", "int8", "uint8", "binary", "ubinary"]), default="float32",
              show_default=True)
@click.option("--force", "-f", is_flag=True, help="Overwrite an existing output.")
@click.option("--restart", is_flag=True, help="Discard the work of an interrupted run of this job instead of resuming it.")
@click.option("--chunk-size", type=click.IntRange(min=1), default=2048, show_default=True,
              help="Texts per checkpoint: an interrupted job resumes from the last finished chunk.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--n-gpu-layers", type=GPU_LAYERS, default="0", show_default=True, help=_GPU_HELP)
@click.option("--vram", default=None, help="With --n-gpu-layers auto: the most VRAM to use, e.g. 3.5GB.")
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
@_library_errors
def embed(ctx, model, input_path, output, fmt, field, dim, query, task, batch_tokens, max_tokens, no_truncate,
          precision, force, restart, chunk_size, threads, n_gpu_layers, vram, ray_address, concurrency,
          cpus_per_worker, gpus_per_worker, batch_size, quiet):
    """Embed the texts of INPUT (.txt, .jsonl, or - for stdin) with MODEL into a .npy file.

    Large inputs are streamed and checkpointed every --chunk-size texts: if the job is killed,
    running the same command again resumes it (the input's hash is checked) and the output is
    identical to an uninterrupted run's.

    With --ray the same job runs on a Ray cluster, one model per worker, and writes Parquet
    shards (columns row and/or id, embedding) into the folder -o; INPUT may also be Parquet.

    \b
    Examples:
      qembed-gguf embed tiny docs.txt -o docs.npy
      qembed-gguf embed model.gguf corpus.jsonl -o corpus.npy --dim 256 --precision int8
      cat queries.txt | qembed-gguf embed model.gguf - -o q.npy --query
      qembed-gguf embed /shared/model.gguf /shared/corpus/ -o /shared/vectors/ --ray auto --cpus-per-worker 4
    """
    from pathlib import Path

    from click.core import ParameterSource

    from .embedder import Embedder
    from .jobs import JobSettings, run_embed_job

    _setup_logging(ctx.obj["verbose"], quiet)
    if task is not None and not query:
        raise click.UsageError("--task applies to --query")

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if ray_address is not None:
        from .integrations.ray import embed_corpus

        if precision != "float32" or restart or given("chunk_size"):
            raise click.UsageError("--precision, --restart and --chunk-size apply to the local job, not to --ray")
        if output.endswith(".npy"):
            raise click.UsageError("with --ray, -o names a folder of Parquet shards, not a .npy file")
        options = {"max_tokens": max_tokens, "truncate": not no_truncate,
                   "n_gpu_layers": n_gpu_layers if given("n_gpu_layers") else None, "vram_budget": vram}
        try:
            result = embed_corpus(
                model, input_path, output, address=ray_address or None, fmt=fmt, field=field, force=force,
                progress=not quiet, dim=dim, query=query, task=task, concurrency=concurrency,
                num_cpus_per_worker=cpus_per_worker, num_gpus_per_worker=gpus_per_worker, batch_size=batch_size,
                n_threads=threads, batch_tokens=batch_tokens,
                embedder_kwargs={k: v for k, v in options.items() if v is not None})
        except ImportError as exc:
            raise click.ClickException(str(exc)) from None
        if not quiet:
            click.echo(f"{result.rows} texts → {result.output} ({result.files} Parquet file(s), {result.dim} dims) "
                       f"in {result.seconds:.2f} s, {result.job_seconds:.2f} s of them running the job on Ray "
                       f"(workers started, embedding, writing): {result.rows / result.job_seconds:.1f} docs/s",
                       err=True)
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
                        max_tokens=max_tokens, truncate=not no_truncate)

    settings = JobSettings(fmt=fmt, field=field, query=query, task=task, dim=dim, precision=precision,
                           batch_tokens=batch_tokens, chunk_size=chunk_size)
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
        click.echo(f"{result.n_texts} texts → {out} ({result.dim} dims, {precision}){resumed}; embedded "
                   f"{result.n_embedded} texts, {result.n_tokens} tokens in {result.seconds:.2f} s: "
                   f"{result.texts_per_second:.1f} docs/s, "
                   f"{result.n_tokens / result.seconds if result.seconds > 0 else 0:.0f} tokens/s", err=True)


@main.command()
@click.argument("model")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="QEMBED_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (env QEMBED_API_KEY).")
@click.option("--model-name", "model_names", multiple=True,
              help="Model id clients send as 'model' (repeatable; default: the MODEL argument, or a file's stem).")
@click.option("--cache", "cache_spec", default=None, envvar="QEMBED_SERVE_CACHE",
              help="Vector cache: sqlite:///path.db, a .db path, redis://host:6379/0, or memory.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Longest input in tokens.")
@click.option("--truncate", is_flag=True, help="Cut over-long inputs by default instead of answering 400.")
@click.option("--max-inputs", type=click.IntRange(min=1), default=2048, show_default=True, help="Inputs per request.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="Largest request body, MiB.")
@click.option("--max-queue", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Inputs waiting before requests get 429.")
@click.option("--max-request-tokens", type=click.IntRange(min=1), default=300_000, show_default=True,
              help="Tokens of all inputs of one request together (OpenAI's limit).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits for requests still arriving.")
@click.option("--allowed-host", "allowed_hosts", multiple=True,
              help="A Host name to answer, any port (repeatable; '*' = any). Default: loopback names when bound "
                   "to loopback, any name otherwise.")
@click.option("--cors-origin", "cors_origins", multiple=True,
              help="A web origin allowed to call the API from a browser, e.g. http://localhost:3000 (repeatable; "
                   "'*' = any). Default: none.")
@click.option("--read-timeout", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Seconds a request body may take to arrive (then 408).")
@click.option("--shutdown-timeout", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Seconds a shutdown lets accepted requests finish before cancelling them (503).")
@click.option("--flash-attn/--no-flash-attn", default=True, show_default=True,
              help="Flash attention (faster; off: vectors vary less with what shares their batch).")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--n-gpu-layers", type=GPU_LAYERS, default="0", show_default=True, help=_GPU_HELP)
@click.option("--vram", default=None, help="With --n-gpu-layers auto: the most VRAM to use, e.g. 3.5GB.")
@click.pass_context
@_library_errors
def serve(ctx, model, host, port, api_key, model_names, cache_spec, max_tokens, truncate, max_inputs, max_body_mb,
          max_queue, max_request_tokens, batch_wait_ms, allowed_hosts, cors_origins, read_timeout, shutdown_timeout,
          flash_attn, threads, n_gpu_layers, vram):
    """Serve MODEL as an OpenAI-compatible embeddings API (/v1/embeddings, /v1/models, /health).

    \b
    Example:
      qembed-gguf serve Qwen3-Embedding-0.6B-Q8_0.gguf --port 8000
      curl localhost:8000/v1/embeddings -H 'content-type: application/json' \\
           -d '{"model": "Qwen3-Embedding-0.6B-Q8_0", "input": ["hello"], "dimensions": 256}'
    """
    from pathlib import Path

    try:
        from .server import Limits, ServerConfig, ServerStartError, run
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    from .embedder import Embedder

    _setup_logging(ctx.obj["verbose"], quiet=False)
    names = tuple(model_names) or (Path(model).stem if model.endswith(".gguf") else model,)
    try:  # the configuration is checked before the model loads
        config = ServerConfig(model_names=names, api_key=api_key or None, truncate=truncate,
                              limits=Limits(max_inputs=max_inputs, max_body_bytes=int(max_body_mb * (1 << 20)),
                                            max_request_tokens=max_request_tokens),
                              max_wait_ms=batch_wait_ms, max_queue_inputs=max_queue, allowed_hosts=allowed_hosts,
                              cors_origins=cors_origins, read_timeout_s=read_timeout,
                              shutdown_timeout_s=shutdown_timeout)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    embedder = Embedder(model, n_threads=threads, n_gpu_layers=n_gpu_layers, vram_budget=vram,
                        max_tokens=max_tokens, flash_attn=flash_attn, cache=cache_spec)
    try:
        run(embedder, config, host=host, port=port, log_level="debug" if ctx.obj["verbose"] > 1 else "info")
    except ServerStartError as e:
        raise click.ClickException(str(e)) from None


@main.command()
@click.option("--model", default="tiny", show_default=True, help="Model to demonstrate (bundled tiny: offline).")
@click.pass_context
@_library_errors
def demo(ctx, model):
    """Embed a few example texts and print dimensions, a similarity table and throughput."""
    import time

    import numpy as np

    from .embedder import Embedder

    _setup_logging(ctx.obj["verbose"], quiet=True)
    queries = ["How do I bake bread at home?", "什么是向量数据库？"]
    documents = [
        "Mix flour, water, salt and yeast; let the dough rise, then bake it at 230 °C.",
        "A vector database stores embeddings and finds the nearest ones to a query vector.",
        "東京は日本の首都で、人口は約1400万人です。",
        "def cosine(a, b): return a @ b / (norm(a) * norm(b))",
    ]
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
        click.echo("cosine similarity (query × document):")
        click.echo("      " + "  ".join(f"doc{j}" for j in range(len(documents))))
        for i, row in enumerate(q @ d.T):
            click.echo(f"  q{i}  " + "  ".join(f"{v:+.2f}" for v in row) + f"   {queries[i]}")
        small = e.embed_documents(documents, dim=e.mrl_min_dim)
        click.echo(f"MRL: the same documents at dim {e.mrl_min_dim}: shape {small.shape}, norms "
                   f"{np.round(np.linalg.norm(small, axis=1), 3).tolist()}")
        click.echo(f"throughput: {len(queries) + len(documents)} texts, {tokens} tokens in {seconds * 1000:.0f} ms "
                   f"({tokens / seconds:.0f} tokens/s; model loaded beforehand, {e.batch_tokens}-token batches)")


TABLE_BUDGETS = ("4GB", "6GB", "8GB", "12GB")
TABLE_CONTEXTS = (2048, 8192, 32768)
TABLE_QUANTS = ("q4_k_m", "q8_0", "f16")


def fit_table_markdown() -> str:
    """The README's GPU table: the 0.6B/4B/8B models at Q4_K_M/Q8_0/F16, 2K/8K/32K, 4-12 GB."""
    from .gpuplan import ModelGeometry, fit_table, parse_size
    from .report import render_fit_table

    budgets = [parse_size(b) for b in TABLE_BUDGETS]
    geoms = [ModelGeometry.from_spec(spec, q) for spec in registry.all_specs() if spec.hub_id for q in TABLE_QUANTS]
    return render_fit_table(fit_table(geoms, budgets=budgets, contexts=TABLE_CONTEXTS), budgets)


@main.command()
@click.argument("model", required=False)
@click.option("--vram", default=None, help="VRAM budget, e.g. 4GB, 3.5GiB, 3500MiB (binary units) "
                                           "[default: the free memory of the GPUs llama.cpp sees].")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Context (tokens): the longest input, or the most tokens of one decode batch.")
@click.option("--ubatch", "n_ubatch", type=click.IntRange(min=1), default=512, show_default=True,
              help="llama.cpp micro-batch (sizes the compute buffer).")
@click.option("--kv-type", type=click.Choice(["f16", "q8_0", "f32"]), default="f16", show_default=True)
@click.option("--flash-attn/--no-flash-attn", default=True, show_default=True)
@click.option("--quant", default=None, help="For a model name: the type it would be converted to "
                                            "(f16, bf16, q8_0, q4_0, q6_k, q5_k_m, q5_k_s, q4_k_m).")
@click.option("--table", is_flag=True, help="Print the README's what-fits table (0.6B/4B/8B) instead.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@_library_errors
def plan(ctx, model, vram, n_ctx, n_ubatch, kv_type, flash_attn, quant, table, as_json):
    """Plan GPU offload for MODEL (a .gguf file, or a model name with --quant) before loading it.

    \b
    Examples:
      qembed-gguf plan Qwen3-Embedding-4B-Q4_K_M.gguf --vram 4GB --ctx 8192
      qembed-gguf plan qwen3-embedding-8b --quant q4_k_m --vram 6GB --ctx 32768 --kv-type q8_0
      qembed-gguf plan --table
    """
    import dataclasses as dc

    from .devices import gpu_free_bytes
    from .gguf_check import check_gguf
    from .gpuplan import ModelGeometry, max_full_context, parse_size, plan_offload
    from .report import render_plan

    _setup_logging(ctx.obj["verbose"], quiet=True)
    if table:
        click.echo(fit_table_markdown())
        return
    if model is None:
        raise click.UsageError("MODEL is required (or --table)")
    if model.endswith(".gguf") or os.path.isfile(model):
        if quant:
            raise click.UsageError("--quant applies to a model name; a file's own tensor types are used")
        geom, source = ModelGeometry.from_header(check_gguf(model)), "from the file's tensors"
    else:
        if not quant:
            raise click.UsageError("a model name needs --quant (the type you would convert it to)")
        geom = ModelGeometry.from_spec(registry.get_spec(model), quant.lower())
        source = "tensor types predicted as `qembed-gguf convert` writes them"
    if vram is None:
        budget = gpu_free_bytes()
        if budget is None:
            raise click.UsageError("no GPU memory reported by this llama.cpp build; pass --vram (e.g. --vram 4GB)")
    else:
        budget = parse_size(vram)
    result = plan_offload(geom, budget_bytes=budget, n_ctx=n_ctx, n_ubatch=n_ubatch, kv_type=kv_type,
                          flash_attn=flash_attn)
    full_ctx = max_full_context(geom, budget_bytes=budget, n_ubatch=n_ubatch, kv_type=kv_type, flash_attn=flash_attn)
    if as_json:
        click.echo(json.dumps({"model": geom.label, "budget_bytes": budget, "n_ctx": n_ctx,
                               "n_gpu_layers": result.n_gpu_layers, "fits_fully": result.fits_fully,
                               "gpu": dc.asdict(result.usage), "full_offload": dc.asdict(result.full_usage),
                               "host_bytes": result.host_bytes, "max_full_offload_ctx": full_ctx}, indent=2))
        return
    click.echo(render_plan(result, geom, source=source, n_ubatch=n_ubatch, kv_type=kv_type, flash_attn=flash_attn,
                           max_full_ctx=full_ctx))


@main.command()
@click.pass_context
@_library_errors
def doctor(ctx):
    """Show the llama.cpp backend in use, CPU features, GPUs, and the build preset for this machine."""
    from .devices import diagnose
    from .report import render_doctor

    _setup_logging(ctx.obj["verbose"], quiet=True)
    click.echo(render_doctor(diagnose()))


@main.command("models")
def list_models():
    """List the models qembed-gguf knows by name."""
    for spec in registry.all_specs():
        where = spec.hub_id or f"bundled ({spec.bundled})"
        note = "" if spec.semantic else "  [random weights, non-semantic]"
        click.echo(f"{spec.name:24} {where:34} dim {spec.dim:5}  layers {spec.layers:3}  "
                   f"MRL {spec.mrl_min_dim}..{spec.dim}{note}")


@main.group("backend")
def backend_group():
    """llama.cpp backend builds from CMakePresets.json."""


@backend_group.command("presets")
@_library_errors
def backend_presets():
    """List the build presets and their CMake arguments."""
    for p in backend.load_presets().values():
        click.echo(f"{p.name:11} {p.display_name}\n            {' '.join(backend.cmake_args(p))}")


@backend_group.command("install")
@click.option("--preset", required=True,
              help="A CMakePresets.json preset (`qembed-gguf backend presets`; `qembed-gguf doctor` names yours).")
@click.option("--version", "version", default=backend.LLAMA_CPP_PYTHON_VERSION, show_default=True,
              help="llama-cpp-python version to build.")
@click.option("--dry-run", is_flag=True, help="Print the command without running it.")
@_library_errors
def backend_install(preset, version, dry_run):
    """Rebuild llama-cpp-python from source with a preset's CMake arguments."""
    env, argv = backend.install_command(backend.get_preset(preset), version=version)
    click.echo(backend.format_command(env, argv))
    if dry_run:
        return
    rc = subprocess.call(argv, env={**os.environ, **env})
    if rc:
        raise click.ClickException(f"pip exited with {rc}")


if __name__ == "__main__":  # python -m qembed_gguf.cli
    main()
