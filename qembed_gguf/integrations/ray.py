"""Embed a corpus on a Ray cluster with the same Embedder: Ray Data actors in, Parquet shards out.

::

    import ray
    from qembed_gguf.integrations.ray import embed_dataset, read_embeddings, write_embeddings

    ray.init("auto")                                        # or ray.init() / "ray://head:10001"
    ds = ray.data.read_parquet("/shared/corpus/")           # columns: id, text (+ any others)
    out = embed_dataset(ds, "/shared/models/Qwen3-Embedding-0.6B-Q8_0.gguf", dim=512,
                        concurrency=8, num_cpus_per_worker=4)
    write_embeddings(out, "/shared/embeddings/")            # Parquet shards: id, text, embedding
    got = read_embeddings("/shared/embeddings/")            # got.ids, got.vectors (n, 512) float32

:func:`embed_dataset` maps the dataset's batches through an actor pool; each actor
(:class:`EmbedBatches`) loads ONE :class:`~qembed_gguf.Embedder` when it starts and embeds every
batch it is given with it, exactly as a local ``Embedder.embed`` call would. Every input column is
kept and a fixed-size ``float32`` list column ``embedding`` is appended.

**The model must be readable by every node.** A ``.gguf`` path is passed to the workers as an
absolute path: put the file on storage mounted at the same path on every node (NFS, a shared
volume), or copy it to that path on each node. A registry name (``tiny``,
``qwen3-embedding-0.6b``) or hub id is resolved by each worker, i.e. converted once per node into
that node's cache (``$QEMBED_CACHE``) and reused (hub models need the hub, or a pre-filled cache,
on every node). Every node needs qembed-gguf with the ``[ray]`` extra installed, with a
llama-cpp-python built for that node (a CUDA build on GPU nodes).

**Order.** Ray Data hands blocks to whichever worker is free and emits them as they finish, so
rows are not written in input order. Rows keep their columns, so give them a key: an ``id``
column (kept unchanged), or the ``row`` column (0-based input position) that :func:`read_corpus`
adds to inputs read through the driver. :func:`read_embeddings` sorts by ``row`` if present,
else by ``id``, and refuses a folder whose keys repeat (or, for ``row``, skip a number).

**Faults.** Each worker is a Ray actor started with ``max_restarts`` (default -1: a dead worker,
e.g. one on a lost node, is always replaced) and its tasks with ``max_task_retries`` (default 3:
a task whose worker died, i.e. the block of rows it was embedding, is run again on the restarted
worker up to 3 more times; a block that kills its worker every time then fails the job instead of
looping). A task's rows exist only once it has finished, and a retried write task rewrites the
same file name, so a worker killed mid-job loses and duplicates no rows. Errors raised by the
library (bad input, a model that cannot load) are not retried: they fail the job, and
:func:`write_embeddings` re-raises them as the same :class:`~qembed_gguf.errors.QembedError`
class, marked ``(raised in a Ray worker)``. A job does not resume: if the driver (or the head
node) dies, or the job fails, the shards written so far stay and the job is run again with
``force``; split a very large corpus into several jobs to bound what such a failure costs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import logging
import math
import os
import re
import socket
import time
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

import numpy as np

from .. import errors, registry
from ..errors import BackendError, InputError, OutputExistsError, QembedError

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

__all__ = ["embed_dataset", "EmbedBatches", "read_corpus", "write_embeddings", "read_embeddings",
           "embed_corpus", "ray_session", "Embeddings", "WriteResult", "RayJobResult",
           "ROW_COLUMN", "ID_COLUMN", "DEFAULT_BATCH_SIZE", "DEFAULT_MAX_RESTARTS", "DEFAULT_MAX_TASK_RETRIES"]

log = logging.getLogger(__name__)

INSTALL_HINT = 'qembed_gguf.integrations.ray needs Ray Data: pip install "qembed-gguf[ray]"'
ROW_COLUMN = "row"    # 0-based input position, added to inputs read through the driver
ID_COLUMN = "id"      # the user's ids, kept unchanged
DEFAULT_BATCH_SIZE = 256         # rows per Embedder call, and per block of the inputs read_corpus cuts
DEFAULT_MAX_RESTARTS = -1        # a dead worker is always replaced
DEFAULT_MAX_TASK_RETRIES = 3     # a task (block) whose worker died runs again up to 3 times
# Embedder options embed_dataset sets itself (from its own arguments)
_RESERVED_KWARGS = {"n_threads": "n_threads", "dim": "dim"}


def _ray():
    """The ``ray`` module with Ray Data, or an ImportError that says what to install."""
    try:
        importlib.import_module("pyarrow")  # Ray Data's block format, installed by ray[data]
        import ray
        import ray.data
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return ray


# -- the worker ----------------------------------------------------------------------------------
class EmbedBatches:
    """The callable class :func:`embed_dataset` maps batches through: one instance per Ray actor.

    ``__init__`` loads ONE :class:`~qembed_gguf.Embedder` (so a model is loaded once per worker,
    never per batch); each call embeds the ``column`` of a ``pyarrow.Table`` batch and returns the
    batch with ``output_column`` appended (``fixed_size_list<float32>[dim]``, L2-normalised as
    ``Embedder.embed`` returns it) and, if asked, ``worker_column`` (``host:pid`` of this worker).

    Args:
        model: what :class:`~qembed_gguf.Embedder` accepts, as seen from the worker's node.
        column: the text column.
        output_column: the embedding column to append.
        dim: Matryoshka dimension (None: the model's full dimension).
        query: embed as queries, with the instruction ``task`` (None: the model's own).
        task: the query instruction; only with ``query``.
        n_threads: llama.cpp threads of this worker.
        batch_tokens: the Embedder's per-call packing budget (None: its default).
        embedder_kwargs: further :class:`~qembed_gguf.Embedder` options.
        worker_column: if set, a string column recording which worker embedded each row.

    Raises:
        InputError: from a call, when the text column is not a string column or holds a null
            (naming the row by its ``row``/``id`` values when the batch has them).
    """

    def __init__(self, model: str, *, column: str, output_column: str, dim: int | None, query: bool,
                 task: str | None, n_threads: int | None, batch_tokens: int | None,
                 embedder_kwargs: dict[str, Any], worker_column: str | None = None) -> None:
        from ..embedder import Embedder

        started = time.perf_counter()
        self._embedder = Embedder(model, n_threads=n_threads, **embedder_kwargs)
        self._column, self._output_column, self._worker_column = column, output_column, worker_column
        self._dim = dim
        self._out_dim = dim or self._embedder.dim
        self._batch_tokens = batch_tokens
        facts = self._embedder.facts
        self._instruction = (facts.default_task if task is None else task) if query else None
        self._worker = f"{socket.gethostname()}:{os.getpid()}"
        log.info("worker %s loaded %s in %.1f s (%s threads)", self._worker, self._embedder.path.name,
                 time.perf_counter() - started, n_threads)

    def __call__(self, batch: "pa.Table") -> "pa.Table":
        import pyarrow as pa

        texts = batch.column(self._column)
        if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
            raise InputError(f"column {self._column!r} holds {texts.type}, not strings: texts must be strings")
        if texts.null_count:
            i = int(np.flatnonzero(texts.is_null().to_numpy(zero_copy_only=False))[0])
            raise InputError(f"{_describe_row(batch, i)} has no text: column {self._column!r} is null")
        started = time.perf_counter()
        vectors = self._embedder.embed(texts.to_pylist(), dim=self._dim, instruction=self._instruction,
                                       batch_tokens=self._batch_tokens)
        log.debug("worker %s embedded %d rows in %.3f s", self._worker, len(vectors), time.perf_counter() - started)
        embeddings = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=pa.float32()),
                                                       self._out_dim)
        batch = batch.append_column(pa.field(self._output_column, embeddings.type), embeddings)
        if self._worker_column is not None:
            batch = batch.append_column(self._worker_column, pa.array([self._worker] * batch.num_rows,
                                                                      type=pa.string()))
        return batch


def _describe_row(batch: "pa.Table", i: int) -> str:
    keys = [f"{name}={batch.column(name)[i].as_py()!r}" for name in (ROW_COLUMN, ID_COLUMN)
            if name in batch.column_names]
    if keys:
        return f"the row with {', '.join(keys)}"
    return f"row {i} of a batch of {batch.num_rows} (give the rows an {ID_COLUMN!r} column to have errors name them)"


# -- embed_dataset ---------------------------------------------------------------------------------
def _model_for_workers(model: Any) -> tuple[str, tuple[int, int] | None]:
    """The model argument the workers get, and its Matryoshka range (min, full) where the driver
    can know it without loading the model: from a local GGUF's header or the registry."""
    from ..embedder import Embedder

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
        from ..embedder import _facts
        from ..fileinfo import read_gguf_info
        from ..gguf_check import check_gguf

        header = check_gguf(path)  # header only: a corrupt file fails here, not in every worker
        facts = _facts(read_gguf_info(path, header=header))
        return str(path), (facts.mrl_min_dim, facts.dim)
    if path.is_dir():  # a checkpoint folder: converted by each worker, so it must be shared too
        return str(path.absolute()), None
    spec = registry.find_spec(str(model))
    if spec is not None:
        return str(model), (min(spec.mrl_min_dim, spec.dim), spec.dim)
    return str(model), None  # a hub id, resolved (downloaded and converted) by each worker


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_number(name: str, value: Any, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
            value < 0 or (positive and value == 0):
        raise InputError(f"{name} must be a {'positive' if positive else 'non-negative'} number, got {value!r}")
    return value


def _check_embedder_kwargs(embedder_kwargs: Any) -> dict[str, Any]:
    from ..embedder import Embedder

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
        lo = _check_int("concurrency[0]", concurrency[0], minimum=1)
        hi = _check_int("concurrency[1]", concurrency[1], minimum=1)
        if lo > hi:
            raise InputError(f"concurrency (min, max) must have min <= max, got {concurrency!r}")
        strategy, size = ray.data.ActorPoolStrategy(min_size=lo, max_size=hi), hi
    elif isinstance(concurrency, tuple):
        raise InputError(f"concurrency must be a number of workers or a (min, max) pair, got {concurrency!r}")
    else:
        size = _check_int("concurrency", concurrency, minimum=1)
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
    ray = _ray()
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
    num_cpus = _check_number("num_cpus_per_worker", num_cpus_per_worker, positive=True)
    num_gpus = _check_number("num_gpus_per_worker", num_gpus_per_worker, positive=False)
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    threads = max(1, int(num_cpus)) if n_threads is None else _check_int("n_threads", n_threads, minimum=1)
    if batch_tokens is not None:
        batch_tokens = _check_int("batch_tokens", batch_tokens, minimum=1)
    max_restarts = _check_int("max_restarts", max_restarts, minimum=-1)
    max_task_retries = _check_int("max_task_retries", max_task_retries, minimum=-1)
    kwargs = _check_embedder_kwargs(embedder_kwargs)
    if num_gpus:
        kwargs.setdefault("n_gpu_layers", -1)
    model_arg, mrl = _model_for_workers(model)
    if dim is not None:
        dim = _check_int("dim", dim, minimum=1)
        if mrl is not None and not mrl[0] <= dim <= mrl[1]:
            raise InputError(f"dim must be an integer in [{mrl[0]}, {mrl[1]}] (Matryoshka range of this model), "
                             f"got {dim!r}")
    compute = _compute(ray, concurrency, num_cpus, num_gpus)
    _check_columns(ds, column, new_columns)

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


# -- reading inputs --------------------------------------------------------------------------------
def _input_kind(path: str, fmt: str) -> str:
    from ..jobio import input_format

    if fmt == "parquet" or (fmt == "auto" and path != "-" and
                            (str(path).endswith(".parquet") or os.path.isdir(path) or "://" in str(path))):
        return "parquet"
    return input_format(path, fmt)


def _check_id(id_: Any, lineno: int, source: str, kind: type | None) -> type:
    if isinstance(id_, bool) or not isinstance(id_, (str, int)):
        raise InputError(f"{source}: line {lineno}: id {id_!r} is {type(id_).__name__}; Parquet output needs "
                         f"string or integer ids")
    if isinstance(id_, int) and not -(1 << 63) <= id_ < (1 << 63):
        raise InputError(f"{source}: line {lineno}: id {id_} does not fit a 64-bit integer")
    if kind is not None and type(id_) is not kind:
        raise InputError(f"{source}: line {lineno}: id {id_!r} is {type(id_).__name__}, but the ids before it are "
                         f"{kind.__name__}s; ids must all be strings or all integers")
    return type(id_)


def _record_tables(records: Iterator[tuple[int, str, Any]], field: str, source: str,
                   block_rows: int) -> Iterator["pa.Table"]:
    """Blocks of ``block_rows`` records: ``row`` (input position), ``id`` (if given), ``field``."""
    import pyarrow as pa

    from ..jobio import NO_ID

    rows, ids, texts = [], [], []
    kind: type | None = None
    n = 0

    def table() -> "pa.Table":
        columns = {ROW_COLUMN: pa.array(rows, type=pa.int64())}
        if ids:
            columns[ID_COLUMN] = pa.array(ids, type=pa.int64() if kind is int else pa.string())
        columns[field] = pa.array(texts, type=pa.string())
        return pa.table(columns)

    for lineno, text, id_ in records:
        if id_ is not NO_ID:
            kind = _check_id(id_, lineno, source, kind)
            ids.append(id_)
        rows.append(n)
        texts.append(text)
        n += 1
        if len(rows) == block_rows:
            yield table()
            rows, ids, texts = [], [], []
    if rows:
        yield table()


def _filesystem(folder: str | os.PathLike[str]):
    """(pyarrow filesystem, path inside it, the string Ray is given) of a local path or a URI."""
    import pyarrow.fs as pafs

    text = os.fspath(folder)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path, text
    path = str(Path(text).expanduser().absolute())  # Ray's workers do not share the driver's cwd
    return pafs.LocalFileSystem(), path, path


def _parquet_files(fs, path: str) -> list[str]:
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [path]
    if info.type != pafs.FileType.Directory:
        raise InputError(f"{path}: no such Parquet file or folder")
    found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    return sorted(f.path for f in found if f.type == pafs.FileType.File and f.path.endswith(".parquet")
                  and not any(part.startswith((".", "_")) for part in Path(f.path[len(path):]).parts))


def _parquet_tables(fs, files: list[str], field: str, block_rows: int) -> Iterator["pa.Table"]:
    """Blocks of ``block_rows`` Parquet rows without ids (the last may be shorter), numbered
    across the files in file-name order (``row``); a null text is refused, naming file and row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pending: list["pa.Array"] = []
    held = n = 0

    def block(rows: int) -> "pa.Table":
        nonlocal pending, held, n
        texts = pa.concat_arrays([a.cast(pa.string()) for a in pending])
        pending, held = ([texts.slice(rows)] if rows < len(texts) else []), len(texts) - rows
        table = pa.table({ROW_COLUMN: pa.array(np.arange(n, n + rows, dtype=np.int64)), field: texts.slice(0, rows)})
        n += rows
        return table

    for file in files:
        with fs.open_input_file(file) as fh:
            local = 0
            for rb in pq.ParquetFile(fh).iter_batches(batch_size=block_rows, columns=[field]):
                texts = rb.column(0)
                if texts.null_count:
                    i = int(np.flatnonzero(texts.is_null().to_numpy(zero_copy_only=False))[0])
                    raise InputError(f"{file}: row {local + i} has no text: column {field!r} is null")
                local += len(texts)
                pending.append(texts)
                held += len(texts)
                while held >= block_rows:
                    yield block(block_rows)
    if held:
        yield block(held)


def _footer(fs, file: str):
    import pyarrow.parquet as pq

    try:
        with fs.open_input_file(file) as fh:
            return pq.ParquetFile(fh).metadata
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{file}: cannot read it as Parquet ({exc})") from None


def _scan_parquet(fs, files: list[str], field: str) -> tuple[bool, int]:
    """Check every file's footer (``field`` a string column, ``id`` in all files or none);
    (whether they have ids, their number of rows)."""
    import pyarrow as pa

    has_ids, rows = None, 0
    for file in files:
        meta = _footer(fs, file)
        schema = meta.schema.to_arrow_schema()
        if field not in schema.names:
            raise InputError(f"{file} has no column {field!r} (its columns: {', '.join(schema.names)}); "
                             f"name the text column with --field")
        kind = schema.field(field).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise InputError(f"{file}: column {field!r} holds {kind}, not strings")
        if has_ids is not None and has_ids != (ID_COLUMN in schema.names):
            raise InputError(f"{file} {'has' if not has_ids else 'lacks'} an {ID_COLUMN!r} column, unlike "
                             f"{files[0]}: ids must be in all files or none")
        has_ids = ID_COLUMN in schema.names
        rows += meta.num_rows
    return bool(has_ids), rows


def read_corpus(path: str, *, fmt: str = "auto", field: str = "text", block_rows: int = DEFAULT_BATCH_SIZE,
                stdin: IO[bytes] | None = None) -> tuple["ray.data.Dataset", int]:
    """A job's input as a Ray Dataset, and its number of rows.

    - ``.txt`` (a text per line), ``.jsonl`` (objects with ``field`` and an optional ``id``) or
      ``-`` (standard input): read and validated by the driver line by line, exactly as the local
      job does (errors name the line), and put into the object store in blocks of
      ``block_rows`` rows with columns ``row`` (0-based input position), ``id`` (if the lines have
      ids; strings or integers) and ``field``. The whole input passes through the driver: for
      corpora of many GB, write Parquet shards with an ``id`` column instead.
    - Parquet (a ``.parquet`` file, a folder of them, or a URI such as ``s3://bucket/corpus/``):
      with an ``id`` column it is read by the cluster in parallel (columns ``id`` and ``field``);
      without one, the driver streams it to number the rows (``row``, in file-name order).

    Raises:
        InputError: an unreadable or malformed input (line/row named), no texts.
    """
    ray = _ray()
    _check_int("block_rows", block_rows, minimum=1)
    if field in (ROW_COLUMN, ID_COLUMN) or not isinstance(field, str) or not field:
        raise InputError(f"the text field must be a name other than {ROW_COLUMN!r} and {ID_COLUMN!r} (the key "
                         f"columns), got {field!r}")
    kind = _input_kind(path, fmt)
    with contextlib.ExitStack() as stack:
        if kind == "parquet":
            fs, fpath, _ = _filesystem(path)
            files = _parquet_files(fs, fpath)
            if not files:
                raise InputError(f"{path}: no .parquet files")
            has_ids, rows = _scan_parquet(fs, files, field)
            if not rows:
                raise InputError(f"{path}: no rows")
            if has_ids:
                # blocks of block_rows rows: a worker's task is a whole block, so this spreads the
                # work over the workers and bounds what a dead worker's retry redoes
                ds = ray.data.read_parquet(files, filesystem=fs).select_columns([ID_COLUMN, field])
                return ds.repartition(target_num_rows_per_block=block_rows), rows
            log.info("%s has no %r column: the driver reads it to number its rows; give it ids to have the "
                     "cluster read it in parallel", path, ID_COLUMN)
            tables, source = _parquet_tables(fs, files, field, block_rows), path
        else:
            from ..jobio import iter_records
            from ..jobs import _open_input

            opener, source = _open_input(path, stdin)
            fh = stack.enter_context(opener())
            tables = _record_tables(iter_records(fh, fmt=kind, field=field, source=source), field, source,
                                    block_rows)
        refs, rows = [], 0
        for table in tables:
            refs.append(ray.put(table))
            rows += table.num_rows
    if not refs:
        raise InputError(f"{source}: no texts to embed")
    return ray.data.from_arrow_refs(refs), rows


# -- writing and reading results -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class WriteResult:
    """What :func:`write_embeddings` wrote."""

    folder: str
    rows: int | None      # rows in the written files (None: the driver cannot read the folder)
    files: int | None
    seconds: float


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """Embeddings read back by :func:`read_embeddings`: ``vectors[i]`` belongs to ``ids[i]``."""

    ids: np.ndarray       # the ``id`` column, else the ``row`` numbers
    vectors: np.ndarray   # float32 (n, dim)
    order: str            # the column the rows are sorted by: "row" or "id"


_REMOTE_ERROR = re.compile(r"^qembed_gguf\.errors\.(\w+): (.*?)(?=\n\s*\n|\Z)", re.M | re.S)


def _worker_error(exc: BaseException) -> QembedError:
    """The library error a Ray worker raised, rebuilt from the job's failure (Ray Data keeps only
    its traceback text), or a BackendError quoting the failure's last line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = list(_REMOTE_ERROR.finditer(text))
    if found:
        name, message = found[-1].group(1), found[-1].group(2).strip()
        cls = getattr(errors, name, None)
        bases = cls.__mro__ if isinstance(cls, type) and issubclass(cls, QembedError) else ()
        for klass in bases:
            if issubclass(klass, QembedError):
                try:
                    return klass(f"{message} (raised in a Ray worker)")
                except TypeError:  # a class with required keyword fields: its nearest simple base
                    continue
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return BackendError(f"the Ray job failed: {lines[-1] if lines else type(exc).__name__}")


def _prepare_output(folder: str | os.PathLike[str], force: bool):
    """Check (and with ``force`` empty of .parquet files) the output folder; (fs, path, uri)."""
    import pyarrow.fs as pafs

    fs, path, uri = _filesystem(folder)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise OutputExistsError(f"{uri} is a file; the output is a folder of Parquet shards")
    if info.type == pafs.FileType.Directory:
        entries = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        shards = [e.path for e in entries if e.type == pafs.FileType.File and e.path.endswith(".parquet")]
        others = [e.path for e in entries if e.type == pafs.FileType.File and not e.path.endswith(".parquet")]
        if entries and not force:
            raise OutputExistsError(f"{uri} exists and is not empty; pass force=True (--force) to replace its "
                                    f".parquet files")
        if others:
            raise OutputExistsError(f"{uri} holds files other than .parquet shards (e.g. {others[0]}); "
                                    f"refusing to write there")
        for shard in shards:
            fs.delete_file(shard)
    return fs, path, uri


def _warn_if_local_path_on_cluster(ray, uri: str) -> None:
    if "://" in uri:
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) > 1:
        log.warning("%s is a local path and the cluster has %d nodes: each node writes its shards to its own "
                    "disk. Use a folder shared at the same path by every node, or a URI (s3://…)", uri, len(nodes))


def write_embeddings(ds: "ray.data.Dataset", folder: str | os.PathLike[str], *, force: bool = False) -> WriteResult:
    """Run ``ds`` (from :func:`embed_dataset`) and write it as Parquet shards into ``folder``.

    ``folder`` is a local path (made absolute: on a multi-node cluster it must be shared storage
    mounted at that path everywhere) or a URI (``s3://…``, ``gs://…``). It must not exist or be
    empty; ``force`` deletes the ``.parquet`` files already there first (shards of two runs
    would otherwise mix). Each shard holds whole rows with every column of ``ds``; shards have
    no order among themselves, so read them back by key (:func:`read_embeddings`). A library
    error raised by a worker is re-raised as the same class.

    Raises:
        OutputExistsError: ``folder`` is a file, or a non-empty folder without ``force``.
        QembedError: what a worker raised (InputError for bad rows, ModelLoadError …), or
            BackendError for any other failure of the job.
    """
    ray = _ray()
    fs, path, uri = _prepare_output(folder, force)
    _warn_if_local_path_on_cluster(ray, uri)
    started = time.perf_counter()
    try:
        ds.write_parquet(uri)
    except ray.exceptions.RayError as exc:
        raise _worker_error(exc) from exc
    seconds = time.perf_counter() - started
    try:
        files = _parquet_files(fs, path)
        rows = sum(_footer(fs, file).num_rows for file in files)
    except (OSError, InputError) as exc:  # e.g. a node-local path this machine does not have
        log.info("cannot read back %s from this machine (%s); not counting its rows", uri, exc)
        return WriteResult(uri, None, None, seconds)
    log.info("wrote %d rows in %d Parquet file(s) to %s in %.1f s", rows, len(files), uri, seconds)
    return WriteResult(uri, rows, len(files), seconds)


def _matrix(column: "pa.ChunkedArray", name: str) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    array = column.combine_chunks()
    if array.null_count:
        raise InputError(f"column {name!r} has {array.null_count} null vector(s)")
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
    elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        dim = int(lengths[0]) if len(lengths) else 0
        if len(lengths) and (lengths != dim).any():
            raise InputError(f"column {name!r} holds vectors of different lengths ({lengths.min()}..{lengths.max()})")
    else:
        raise InputError(f"column {name!r} holds {array.type}, not vectors")
    values = array.flatten().to_numpy(zero_copy_only=False)
    return np.ascontiguousarray(values.reshape(len(array), dim), dtype=np.float32)


def read_embeddings(folder: str | os.PathLike[str], *, column: str = "embedding") -> Embeddings:
    """Read the Parquet shards of a job back: ids and a float32 ``(n, dim)`` matrix, in order.

    Rows are sorted by ``row`` (input position) if the shards have it, else by ``id``. Only
    pyarrow is needed (no Ray). A repeated key, a null key or, for ``row``, a missing number
    raises: it means shards of different runs were mixed or some are missing.

    Raises:
        InputError: no shards, no ``row``/``id`` column, a key problem as above, or ``column``
            missing or not holding equal-length vectors.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    fs, path, uri = _filesystem(folder)
    files = _parquet_files(fs, path)
    if not files:
        raise InputError(f"{uri}: no .parquet files to read")
    dataset = pads.dataset(files, filesystem=fs, format="parquet")
    names = dataset.schema.names
    if column not in names:
        raise InputError(f"{uri}: no column {column!r} (columns: {', '.join(names)})")
    keys = [k for k in (ROW_COLUMN, ID_COLUMN) if k in names]
    if not keys:
        raise InputError(f"{uri}: neither a {ROW_COLUMN!r} nor an {ID_COLUMN!r} column: the rows cannot be put in order")
    order = keys[0]
    table = dataset.to_table(columns=keys + [column])
    key = table.column(order)
    if key.null_count:
        raise InputError(f"{uri}: {key.null_count} row(s) have a null {order!r}")
    table = table.take(pc.sort_indices(table, sort_keys=[(order, "ascending")]))
    key = table.column(order).combine_chunks()
    if len(key) > 1:
        same = pc.equal(key.slice(1), key.slice(0, len(key) - 1)).to_numpy(zero_copy_only=False)
        if same.any():
            value = key[int(np.argmax(same))].as_py()
            raise InputError(f"{uri}: {order} {value!r} appears more than once: the folder mixes shards of several "
                             f"runs, or the input repeats ids")
    if order == ROW_COLUMN:
        rows = key.to_numpy(zero_copy_only=False)
        if len(rows) and (rows[0] != 0 or rows[-1] != len(rows) - 1):
            missing = int(np.flatnonzero(rows != np.arange(len(rows)))[0])
            raise InputError(f"{uri}: row {missing} is missing ({len(rows)} rows, numbered up to {rows[-1]}): "
                             f"shards are missing")
    ids = table.column(ID_COLUMN if ID_COLUMN in keys else ROW_COLUMN)
    return Embeddings(ids=ids.to_numpy(), vectors=_matrix(table.column(column), column), order=order)


# -- the CLI's job ---------------------------------------------------------------------------------
def _check_reachable(address: str | None, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries such an address for minutes)."""
    if not address or address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # not HOST:PORT: Ray says what is wrong with it
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BackendError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None


@contextlib.contextmanager
def ray_session(address: str | None = None, *, quiet: bool = False) -> Iterator[Any]:
    """Connect to Ray for the duration of a ``with`` block; yields the ``ray`` module.

    ``address`` None: the local instance (``RAY_ADDRESS``, a ``ray start`` on this machine, or a
    new one started here); ``"auto"``: an existing cluster or an error; ``"HOST:6379"`` or
    ``"ray://HOST:10001"``: that cluster. A process already connected keeps its session (and it
    is not shut down at the end); otherwise the connection is closed on exit.

    Raises:
        BackendError: the cluster cannot be reached.
    """
    ray = _ray()
    if ray.is_initialized():
        log.info("using the Ray session this process already has%s",
                 f" (not connecting to {address})" if address else "")
        yield ray
        return
    _check_reachable(address)
    try:
        ray.init(address=address, logging_level=logging.WARNING if quiet else logging.INFO,
                 log_to_driver=not quiet)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as exc:
        raise BackendError(f"cannot start or reach Ray at {address or 'the local instance'}: {exc}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


@dataclasses.dataclass(frozen=True)
class RayJobResult:
    """What :func:`embed_corpus` did."""

    rows: int
    files: int | None
    dim: int | None
    seconds: float        # the whole call: connecting, reading, starting workers, embedding, writing
    job_seconds: float    # running the dataset: starting workers, embedding, writing
    output: str


def embed_corpus(model: str | os.PathLike[str], input_path: str, output: str | os.PathLike[str], *,
                 address: str | None = None, fmt: str = "auto", field: str = "text", force: bool = False,
                 progress: bool = True, stdin: IO[bytes] | None = None, **options: Any) -> RayJobResult:
    """``qembed-gguf embed MODEL INPUT -o OUTPUT --ray [ADDRESS]``: a whole job on a Ray cluster.

    Connects (:func:`ray_session`), reads ``input_path`` (:func:`read_corpus`), embeds it
    (:func:`embed_dataset` with ``options``: ``dim``, ``query``, ``task``, ``concurrency``,
    ``num_cpus_per_worker`` …) and writes Parquet shards with the key columns (``row`` and/or
    ``id``) and ``embedding`` into the folder ``output`` (:func:`write_embeddings`); the text
    itself is not copied. Then checks that as many rows were written as were read.

    Raises:
        OutputExistsError: ``output`` exists and is not empty (without ``force``).
        InputError, ModelLoadError, BackendError: as the functions above.
    """
    _ray()
    if not force:
        _prepare_output(output, False)  # fail before connecting or reading (write_embeddings checks again)
    started = time.perf_counter()
    with ray_session(address, quiet=not progress):
        ds, rows = read_corpus(input_path, fmt=fmt, field=field,
                               block_rows=options.get("batch_size", DEFAULT_BATCH_SIZE), stdin=stdin)
        keys = [k for k in (ROW_COLUMN, ID_COLUMN) if k in ds.schema().names]
        output_column = options.get("output_column", "embedding")
        out = embed_dataset(ds, model, column=field, **options).select_columns(keys + [output_column])
        out.context.enable_progress_bars = progress
        written = write_embeddings(out, output, force=force)
    if written.rows is not None and written.rows != rows:
        raise BackendError(f"{written.folder}: {written.rows} rows were written for {rows} input rows")
    dim = None
    if written.files:
        import pyarrow.parquet as pq

        fs, path, _ = _filesystem(output)
        with fs.open_input_file(_parquet_files(fs, path)[0]) as fh:
            dim = pq.read_schema(fh).field(output_column).type.list_size
    return RayJobResult(rows, written.files, dim, time.perf_counter() - started, written.seconds, written.folder)

