"""``embed_dataset``: a Ray Dataset's text column through a pool of :class:`EmbedBatches` actors."""

from __future__ import annotations

import inspect
import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ... import registry
from ...errors import InputError
from ...facts import ModelFacts
from ...fileinfo import read_gguf_info
from ...gguf_check import check_gguf
from ...validate import check_int, check_number
from ._base import DEFAULT_BATCH_SIZE, DEFAULT_MAX_RESTARTS, DEFAULT_MAX_TASK_RETRIES, ray_module
from .worker import EmbedBatches

if TYPE_CHECKING:  # pragma: no cover
    import ray.data

__all__ = ["embed_dataset"]

log = logging.getLogger(__name__)

# Embedder options embed_dataset sets itself (from its own arguments)
_RESERVED_KWARGS = {"n_threads": "n_threads", "dim": "dim"}


def _model_for_workers(model: Any) -> tuple[str, tuple[int, int] | None]:
    """The model argument the workers get, and its Matryoshka range (min, full) where the driver
    can know it without loading the model: from a local GGUF's header or the registry."""
    from ...embedder import Embedder

    if isinstance(model, Embedder):
        raise InputError("embed_dataset needs a model path or name that every worker can open, not an open "
                         "Embedder (it cannot be sent to other processes); pass its path: Embedder.path")
    if not isinstance(model, (str, os.PathLike)):
        raise InputError(f"model must be a path or a model name, got {type(model).__name__}")
    path = Path(model).expanduser()
    if path.suffix == ".gguf" or path.is_file():
        path = path.absolute()  # a relative path means nothing on another node
        if not path.is_file():
            log.info("%s is not on this machine: each worker must find it at that path (shared storage)", path)
            return str(path), None
        header = check_gguf(path)  # header only: a corrupt file fails here, not in every worker
        facts = ModelFacts.from_info(read_gguf_info(path, header=header))
        return str(path), (facts.mrl_min_dim, facts.dim)
    if path.is_dir():  # a checkpoint folder: converted by each worker, so it must be shared too
        return str(path.absolute()), None
    spec = registry.find_spec(str(model))
    if spec is not None:
        return str(model), (min(spec.mrl_min_dim, spec.dim), spec.dim)
    return str(model), None  # a hub id, resolved (downloaded and converted) by each worker


def _check_embedder_kwargs(embedder_kwargs: Any) -> dict[str, Any]:
    from ...embedder import Embedder

    if embedder_kwargs is None:
        return {}
    if not isinstance(embedder_kwargs, dict):
        raise InputError(f"embedder_kwargs must be a dict, got {type(embedder_kwargs).__name__}")
    for key, instead in _RESERVED_KWARGS.items():
        if key in embedder_kwargs:
            raise InputError(f"embedder_kwargs must not set {key!r}: pass embed_dataset's {instead}= instead")
    known = set(inspect.signature(Embedder).parameters) - {"model"}
    unknown = sorted(set(embedder_kwargs) - known)
    if unknown:
        raise InputError(f"unknown Embedder option(s) in embedder_kwargs: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known - set(_RESERVED_KWARGS)))}")
    return dict(embedder_kwargs)


def _compute(ray, concurrency: Any, num_cpus: float, num_gpus: float):
    """The actor pool: a fixed size, a (min, max) autoscaling range, or (None) what the cluster
    holds now: one worker per ``num_gpus`` GPUs, else per ``num_cpus`` CPUs, leaving one CPU free.

    Ray Data's read and write tasks need a CPU each: a fixed pool that reserves every CPU of the
    cluster leaves them none, and a job whose input is read by the cluster (``read_parquet``)
    then waits forever (measured with Ray 2.60: no progress in 5 minutes). Hence the free CPU,
    and a warning when a given pool size leaves none.
    """
    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0)
    if concurrency is None:
        if num_gpus:
            size = int(resources.get("GPU", 0) // num_gpus)
            if size < 1:
                raise InputError(f"num_gpus_per_worker={num_gpus:g} but the Ray cluster has "
                                 f"{resources.get('GPU', 0):g} GPU(s); set concurrency to wait for GPU nodes")
            size = min(size, max(1, int((cpus - 1) // num_cpus)))
        else:
            size = max(1, int((cpus - 1) // num_cpus))
        log.info("embedding with %d worker(s) (%g CPU(s)%s each; the cluster has %g CPUs)", size, num_cpus,
                 f", {num_gpus:g} GPU(s)" if num_gpus else "", cpus)
        return ray.data.ActorPoolStrategy(size=size)
    if isinstance(concurrency, tuple) and len(concurrency) == 2:
        lo = check_int("concurrency[0]", concurrency[0], lo=1)
        hi = check_int("concurrency[1]", concurrency[1], lo=1)
        if lo > hi:
            raise InputError(f"concurrency (min, max) must have min <= max, got {concurrency!r}")
        strategy, size = ray.data.ActorPoolStrategy(min_size=lo, max_size=hi), hi
    elif isinstance(concurrency, tuple):
        raise InputError(f"concurrency must be a number of workers or a (min, max) pair, got {concurrency!r}")
    else:
        size = check_int("concurrency", concurrency, lo=1)
        strategy = ray.data.ActorPoolStrategy(size=size)
    if size * num_cpus > cpus - 1:
        log.warning("%d worker(s) x %g CPU(s) leave no CPU of the cluster's %g free for Ray Data's read and write "
                    "tasks: unless the cluster grows, a job reading its input on the cluster stalls", size,
                    num_cpus, cpus)
    return strategy


def _check_columns(ds: "ray.data.Dataset", column: str, new_columns: list[str]) -> None:
    import pyarrow as pa

    schema = ds.schema(fetch_if_missing=False)
    if schema is None:  # unknown until the dataset runs (it is not run for this): the workers check it
        return
    names = list(schema.names)
    if column not in names:
        raise InputError(f"the dataset has no column {column!r} (its columns: {', '.join(names) or 'none'}); "
                         f"name the text column with column=")
    for name in new_columns:
        if name in names:
            raise InputError(f"the dataset already has a column {name!r}; choose another output name")
    kind = dict(zip(names, schema.types))[column]
    if isinstance(kind, pa.DataType) and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise InputError(f"column {column!r} holds {kind}, not strings: texts must be strings")


def embed_dataset(
    ds: "ray.data.Dataset",
    model: str | os.PathLike[str],
    *,
    column: str = "text",
    output_column: str = "embedding",
    dim: int | None = None,
    query: bool = False,
    task: str | None = None,
    concurrency: int | tuple[int, int] | None = None,
    num_cpus_per_worker: float = 1,
    num_gpus_per_worker: float = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    n_threads: int | None = None,
    batch_tokens: int | None = None,
    embedder_kwargs: dict[str, Any] | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    max_task_retries: int = DEFAULT_MAX_TASK_RETRIES,
    worker_column: str | None = None,
) -> "ray.data.Dataset":
    """Embed the ``column`` of a Ray Dataset with a pool of workers, one Embedder each.

    Returns a (lazy) Dataset with every input column, ids included, plus ``output_column``:
    ``fixed_size_list<float32>[dim]``, each row the vector ``Embedder.embed`` gives for that text.
    Nothing runs until it is consumed (:func:`write_embeddings`, ``write_parquet``,
    ``iter_batches`` …). Rows come out in the order workers finish, not input order: keep a key
    column (see the module's notes on order).

    Args:
        ds: the dataset; ``column`` must hold strings (no nulls).
        model: a ``.gguf`` file at the same path on every node, or a registry name / hub id /
            checkpoint folder that each worker resolves (converts once per node).
        column: the text column.
        output_column: the embedding column to add.
        dim: Matryoshka output dimension (default: the model's full dimension).
        query: embed as search queries with the instruction (``task``, default the model's).
            False: documents, raw text.
        task: the query instruction; giving one implies ``query``.
        concurrency: workers (Ray actors, each with its own model in memory): a number, a
            ``(min, max)`` autoscaling range, or None for as many as the cluster holds now
            (its GPUs / ``num_gpus_per_worker``, else its CPUs minus one / ``num_cpus_per_worker``:
            Ray Data's read and write tasks need a free CPU, or the job stalls).
        num_cpus_per_worker: CPUs Ray reserves per worker.
        num_gpus_per_worker: GPUs Ray reserves per worker (fractions share a GPU); > 0 offloads
            every layer (``n_gpu_layers=-1``) unless ``embedder_kwargs`` says otherwise.
        batch_size: rows per Embedder call in a worker. A worker's task is a whole block of the
            dataset (Ray Data joins smaller blocks up to ``batch_size`` rows and never splits a
            bigger one): the block is what is spread over the workers and what a dead worker's
            retry redoes. :func:`read_corpus` cuts blocks of ``batch_size`` rows; for a dataset of
            big blocks, ``ds.repartition(target_num_rows_per_block=batch_size)`` first.
        n_threads: llama.cpp threads per worker (default: ``num_cpus_per_worker``, at least 1).
        batch_tokens: the Embedder's token budget per decode call (default: its ``n_ubatch``).
        embedder_kwargs: other :class:`~qembed_gguf.Embedder` options (``max_tokens``,
            ``n_gpu_layers``, ``flash_attn`` …), checked here against its signature.
        max_restarts: how often Ray restarts a dead worker (-1: always; 0: never).
        max_task_retries: how often a task whose worker died (the block it was embedding) is run
            again (-1: forever). Errors the library raises (bad input) are never retried.
        worker_column: if set, add a column of ``host:pid`` of the worker that embedded each row.

    Raises:
        InputError: a bad argument, a missing or non-string ``column``, an output column that
            exists, a ``dim`` outside the model's Matryoshka range (when the driver can read the
            model's header or registry entry), an unknown Embedder option.
        ImportError: Ray Data is not installed.
        ModelLoadError: a local ``.gguf`` file is not a valid Qwen3 GGUF.
    """
    ray = ray_module()
    if not isinstance(ds, ray.data.Dataset):
        raise InputError(f"ds must be a ray.data.Dataset, got {type(ds).__name__}")
    for name, value in (("column", column), ("output_column", output_column)):
        if not isinstance(value, str) or not value:
            raise InputError(f"{name} must be a non-empty string, got {value!r}")
    if worker_column is not None and (not isinstance(worker_column, str) or not worker_column):
        raise InputError(f"worker_column must be a non-empty string or None, got {worker_column!r}")
    new_columns = [output_column] + ([worker_column] if worker_column else [])
    if column in new_columns or len(set(new_columns)) != len(new_columns):
        raise InputError(f"column, output_column and worker_column must differ, got {column!r}, {output_column!r}, "
                         f"{worker_column!r}")
    if task is not None and not isinstance(task, str):
        raise InputError(f"task must be a string or None, got {type(task).__name__}")
    query = bool(query) or task is not None
    num_cpus = check_number("num_cpus_per_worker", num_cpus_per_worker, positive=True)
    num_gpus = check_number("num_gpus_per_worker", num_gpus_per_worker, positive=False)
    batch_size = check_int("batch_size", batch_size, lo=1)
    threads = max(1, int(num_cpus)) if n_threads is None else check_int("n_threads", n_threads, lo=1)
    if batch_tokens is not None:
        batch_tokens = check_int("batch_tokens", batch_tokens, lo=1)
    max_restarts = check_int("max_restarts", max_restarts, lo=-1)
    max_task_retries = check_int("max_task_retries", max_task_retries, lo=-1)
    kwargs = _check_embedder_kwargs(embedder_kwargs)
    if num_gpus:
        kwargs.setdefault("n_gpu_layers", -1)
    model_arg, mrl = _model_for_workers(model)
    if dim is not None:
        dim = check_int("dim", dim, lo=1)
        if mrl is not None and not mrl[0] <= dim <= mrl[1]:
            raise InputError(f"dim must be an integer in [{mrl[0]}, {mrl[1]}] (Matryoshka range of this model), "
                             f"got {dim!r}")
    compute = _compute(ray, concurrency, num_cpus, num_gpus)
    _check_columns(ds, column, new_columns)

    # a worker's library error reaches the driver as itself (errors pickle), not wrapped in Ray
    # Data's UserCodeException, which keeps only its text
    ds.context.raise_original_map_exception = True
    with warnings.catch_warnings():
        # Ray 2.60 marks **ray_remote_args deprecated (removal announced for 2.64, hence the
        # "<2.64" pin); they are still the only way to bound actor restarts and task retries
        warnings.filterwarnings("ignore", message=r".*ray_remote_args.* deprecated")
        return ds.map_batches(
            EmbedBatches,
            fn_constructor_args=(model_arg,),
            fn_constructor_kwargs={"column": column, "output_column": output_column, "dim": dim, "query": query,
                                   "task": task, "n_threads": threads, "batch_tokens": batch_tokens,
                                   "embedder_kwargs": kwargs, "worker_column": worker_column},
            batch_size=batch_size,
            batch_format="pyarrow",
            compute=compute,
            num_cpus=num_cpus,
            num_gpus=num_gpus or None,
            udf_modifying_row_count=False,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
        )
