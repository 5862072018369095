"""``serve``: the OpenAI-compatible server."""

from __future__ import annotations

import logging
from pathlib import Path

import click
from click.core import ParameterSource

from ..devices import CPU_SHARING
from ._common import device_options, library_errors, long_input_options, main, setup_logging

log = logging.getLogger(__name__)


@main.command()
@click.argument("models", metavar="MODEL...", nargs=-1, required=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--api-key", envvar="QEMBED_API_KEY", default=None,
              help="Require 'Authorization: Bearer KEY' (env QEMBED_API_KEY).")
@click.option("--model-name", "model_names", multiple=True,
              help="Model id clients send as 'model' (repeatable; default: the MODEL argument, or a file's stem). "
                   "One MODEL: every name is an id of it. Several: one name per MODEL, in order.")
@click.option("--cpu-sharing", type=click.Choice(CPU_SHARING), default="split", show_default=True,
              help="Several models: split the threads among them (they decode at once), or give each all the "
                   "threads and let their decode calls take turns (time).")
@click.option("--cache", "cache_spec", default=None, envvar="QEMBED_SERVE_CACHE",
              help="Vector cache: sqlite:///path.db, a .db path, redis://host:6379/0, or memory.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=None, help="Longest input in tokens.")
@long_input_options(default="error", what="answer 400")
@click.option("--truncate", is_flag=True, hidden=True, help="Deprecated: --long-inputs truncate.")
@click.option("--max-inputs", type=click.IntRange(min=1), default=2048, show_default=True, help="Inputs per request.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=16.0, show_default=True,
              help="Largest request body, MiB.")
@click.option("--max-queue", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Inputs waiting before requests get 429.")
@click.option("--max-request-tokens", type=click.IntRange(min=1), default=300_000, show_default=True,
              help="Tokens of all inputs of one request together (OpenAI's limit).")
@click.option("--batch-wait-ms", type=click.FloatRange(min=0), default=5.0, show_default=True,
              help="How long a batch waits for requests still arriving.")
@click.option("--short-call-ms", type=click.FloatRange(min=0), default=300.0, show_default=True,
              help="While small requests keep arriving, big ones decode in calls of about this long, so a query "
                   "waits for at most one such call; an input longer than the cut decodes whole (0: never cut).")
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
@click.option("--metrics-need-key", is_flag=True,
              help="Ask for the API key on /metrics too (by default it is open, as /health).")
@click.option("--flash-attn/--no-flash-attn", default=True, show_default=True,
              help="Flash attention (faster; off: vectors vary less with what shares their batch).")
@device_options
@click.pass_context
@library_errors
def serve(ctx, models, host, port, api_key, model_names, cpu_sharing, cache_spec, max_tokens, long_inputs,
          chunk_overlap, truncate, max_inputs, max_body_mb, max_queue, max_request_tokens, batch_wait_ms, short_call_ms,
          allowed_hosts, cors_origins, read_timeout, shutdown_timeout, metrics_need_key, flash_attn, threads,
          n_gpu_layers, vram):
    """Serve each MODEL as an OpenAI-compatible API: /v1/embeddings, or /v1/rerank for a Qwen3-Reranker file.

    Also /v1/models, /health, /metrics, /tokenize and /detokenize.

    \b
    Example:
      qembed-gguf serve Qwen3-Embedding-0.6B-Q8_0.gguf --port 8000
      curl localhost:8000/v1/embeddings -H 'content-type: application/json' \\
           -d '{"model": "Qwen3-Embedding-0.6B-Q8_0", "input": ["hello"], "dimensions": 256}'
      qembed-gguf serve 0.6B.gguf 4B.gguf --model-name query --model-name docs

    Several models: each has its own worker and queue, and requests go to the one their "model"
    names; the other options apply to each.

    --long-inputs is the default of the request field "long_inputs", which a request may change;
    --chunk-overlap applies to every request that chunks.
    """
    try:
        from ..server import Limits, ServedModel, ServerConfig, ServerStartError, run
    except ImportError as e:
        raise click.ClickException(str(e)) from None
    from ..devices import split_threads, usable_cpus
    from ..opening import open_model

    setup_logging(ctx.obj["verbose"], quiet=False)
    if truncate:
        if ctx.get_parameter_source("long_inputs") is not ParameterSource.DEFAULT and long_inputs != "truncate":
            raise click.UsageError(f"--truncate (the older spelling of --long-inputs truncate) contradicts "
                                   f"--long-inputs {long_inputs}")
        log.warning("--truncate is deprecated: use --long-inputs truncate")
        long_inputs = "truncate"
    names = _model_names(models, model_names)
    try:  # the configuration is checked before the models load
        config = ServerConfig(model_names=names[0] if len(models) == 1 else (), api_key=api_key or None,
                              long_inputs=long_inputs, chunk_overlap=chunk_overlap,
                              limits=Limits(max_inputs=max_inputs, max_body_bytes=int(max_body_mb * (1 << 20)),
                                            max_request_tokens=max_request_tokens),
                              max_wait_ms=batch_wait_ms, short_call_ms=short_call_ms, max_queue_inputs=max_queue,
                              allowed_hosts=allowed_hosts, cors_origins=cors_origins, read_timeout_s=read_timeout,
                              shutdown_timeout_s=shutdown_timeout, metrics_need_key=metrics_need_key,
                              cpu_sharing=cpu_sharing)
    except ValueError as e:
        raise click.UsageError(str(e)) from None
    if len(models) > 1 and cpu_sharing == "split":
        threads_each = split_threads(threads or usable_cpus(), len(models))
        log.info("%d models share %d CPU threads: %s each", len(models), sum(threads_each),
                 "/".join(map(str, threads_each)))
    else:
        threads_each = [threads] * len(models)
    # the Embedder's policy names the cache's key: requests under it may cache vectors of over-long
    # inputs. "error" caches none, so an "error" server's Embedder truncates, as before (the keys of
    # existing caches unchanged, and requests that send "truncate" are cached)
    served = []
    try:
        for path, ids, n_threads in zip(models, names, threads_each):
            opened = open_model(path, n_threads=n_threads, n_gpu_layers=n_gpu_layers, vram_budget=vram,
                                max_tokens=max_tokens, flash_attn=flash_attn,
                                embedding_options=dict(cache=cache_spec, chunk_overlap=chunk_overlap,
                                                       long_inputs="chunk" if long_inputs == "chunk" else "truncate"))
            # an Embedder, or a Reranker for a reranker file
            served.append(ServedModel(opened, ids))
    except BaseException:
        for m in served:
            m.model.close()
        raise
    try:
        run(served[0].model if len(served) == 1 else served, config, host=host, port=port,
            log_level="debug" if ctx.obj["verbose"] > 1 else "info")
    except ServerStartError as e:
        raise click.ClickException(str(e)) from None


def _default_name(model: str) -> str:
    return Path(model).stem if model.endswith(".gguf") else model


def _model_names(models: tuple[str, ...], given: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Each MODEL's ids: with one MODEL, every ``--model-name`` (default: its name); with several,
    one ``--model-name`` per MODEL in order, or none (each its file's stem, or the name given)."""
    if len(models) == 1:
        twice = sorted({n for n in given if given.count(n) > 1})
        if twice:
            raise click.UsageError(f"--model-name {twice[0]!r} is given twice")
        return [tuple(given) or (_default_name(models[0]),)]
    if given and len(given) != len(models):
        raise click.UsageError(f"{len(models)} models take one --model-name each (in order) or none; "
                               f"got {len(given)}")
    names = [(n,) for n in given] if given else [(_default_name(m),) for m in models]
    flat = [n for (n,) in names]
    twice = sorted({n for n in flat if flat.count(n) > 1})
    if twice:
        raise click.UsageError(f"two models would both be called {twice[0]!r}: give each its own --model-name")
    return names
