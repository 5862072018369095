"""``plan``, ``doctor`` and ``backend``: GPUs, llama.cpp builds and what fits."""

from __future__ import annotations

import json
import os
import subprocess

import click

from .. import backend, registry
from ..gpuplan import KV_CACHE_TYPES
from ..report import readme_fit_table
from ._common import library_errors, main, setup_logging


@main.command()
@click.argument("model", required=False)
@click.option("--vram", default=None, help="VRAM budget, e.g. 4GB, 3.5GiB, 3500MiB (binary units) "
                                           "[default: the free memory of the GPUs llama.cpp sees].")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=1), default=8192, show_default=True,
              help="Context (tokens): the longest input, or the most tokens of one decode batch.")
@click.option("--ubatch", "n_ubatch", type=click.IntRange(min=1), default=512, show_default=True,
              help="llama.cpp micro-batch (sizes the compute buffer).")
@click.option("--kv-type", type=click.Choice(list(KV_CACHE_TYPES)), default="f16", show_default=True)
@click.option("--flash-attn/--no-flash-attn", default=True, show_default=True)
@click.option("--quant", default=None, help="For a model name: the type it would be converted to "
                                            "(f16, bf16, q8_0, q4_0, q6_k, q5_k_m, q5_k_s, q4_k_m).")
@click.option("--table", is_flag=True, help="Print the README's what-fits table (0.6B/4B/8B) instead.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
@library_errors
def plan(ctx, model, vram, n_ctx, n_ubatch, kv_type, flash_attn, quant, table, as_json):
    """Plan GPU offload for MODEL (a .gguf file, or a model name with --quant) before loading it.

    \b
    Examples:
      qembed-gguf plan Qwen3-Embedding-4B-Q4_K_M.gguf --vram 4GB --ctx 8192
      qembed-gguf plan qwen3-embedding-8b --quant q4_k_m --vram 6GB --ctx 32768 --kv-type q8_0
      qembed-gguf plan --table
    """
    import dataclasses as dc

    from ..devices import gpu_free_bytes
    from ..gguf_check import check_gguf
    from ..gpuplan import ModelGeometry, max_full_context, parse_size, plan_offload
    from ..report import render_plan

    setup_logging(ctx.obj["verbose"], quiet=True)
    if table:
        click.echo(readme_fit_table())
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
@library_errors
def doctor(ctx):
    """Show the llama.cpp backend in use, CPU features, GPUs, and the build preset for this machine."""
    from ..devices import diagnose
    from ..report import render_doctor

    setup_logging(ctx.obj["verbose"], quiet=True)
    click.echo(render_doctor(diagnose()))


@main.group("backend")
def backend_group():
    """llama.cpp backend builds from CMakePresets.json."""


@backend_group.command("presets")
@library_errors
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
@library_errors
def backend_install(preset, version, dry_run):
    """Rebuild llama-cpp-python from source with a preset's CMake arguments."""
    env, argv = backend.install_command(backend.get_preset(preset), version=version)
    click.echo(backend.format_command(env, argv))
    if dry_run:
        return
    rc = subprocess.call(argv, env={**os.environ, **env})
    if rc:
        raise click.ClickException(f"pip exited with {rc}")
