"""What every ``qembed-gguf`` command shares: the group, logging, and the one place where library
errors become one-line messages (exit code 1; usage errors exit with 2, click's convention)."""

from __future__ import annotations

import functools
import logging
import sys

import click

from .. import __version__, backend
from ..longinputs import LONG_INPUTS
from ..errors import QembedError

__all__ = ["main", "setup_logging", "library_errors", "device_options", "long_input_options", "GPU_LAYERS",
           "GPU_HELP"]

log = logging.getLogger("qembed_gguf")


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:  # keep third-party chatter down unless asked
        for name in ("gguf", "huggingface_hub", "filelock"):
            logging.getLogger(name).setLevel(logging.WARNING)


def library_errors(func):
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
GPU_HELP = "Layers to offload to a GPU: a number (-1: all) or 'auto' (what fits the free VRAM or --vram)."


def device_options(func):
    """``--threads``, ``--n-gpu-layers`` and ``--vram``: where a command's Embedder computes."""
    for option in reversed((
            click.option("--threads", type=click.IntRange(min=1), default=None,
                         help="CPU threads [default: every CPU this process may use]."),
            click.option("--n-gpu-layers", type=GPU_LAYERS, default="0", show_default=True, help=GPU_HELP),
            click.option("--vram", default=None, help="With --n-gpu-layers auto: the most VRAM to use, e.g. 3.5GB."))):
        func = option(func)
    return func


def long_input_options(default: str, what: str):
    """``--long-inputs`` (default ``default``) and ``--chunk-overlap``: what an input longer than
    ``--max-tokens`` gets (:mod:`qembed_gguf.longinputs`); ``what`` says what "error" does."""
    def decorate(func):
        for option in reversed((
                click.option("--long-inputs", type=click.Choice(LONG_INPUTS), default=default, show_default=True,
                             help=f"An input longer than --max-tokens: cut (truncate), {what} (error), or embedded "
                                  "in windows of --max-tokens whose vectors are averaged (chunk)."),
                click.option("--chunk-overlap", type=click.IntRange(min=0), default=0, show_default=True,
                             help="--long-inputs chunk: tokens consecutive windows share."))):
            func = option(func)
        return func
    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="qembed-gguf")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.pass_context
def main(ctx: click.Context, verbose: int) -> None:
    """Qwen3-Embedding models as quantized GGUF files, run through llama.cpp, offline."""
    ctx.obj = {"verbose": verbose}
