"""The results of a job: Parquet shards written by the cluster, and read back in input order."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from ...errors import BackendError, InputError, OutputExistsError, QembedError
from ._base import ID_COLUMN, ROW_COLUMN, ray_module
from .corpus import filesystem, parquet_files, parquet_footer

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

__all__ = ["WriteResult", "Embeddings", "write_embeddings", "read_embeddings", "prepare_output"]

log = logging.getLogger(__name__)


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


def _worker_error(exc: BaseException) -> QembedError:
    """The library error a Ray worker raised, as itself: errors pickle (see :class:`QembedError`)
    and embed_dataset has Ray Data raise them unwrapped, so the job's failure carries it as its
    ``cause``; marked "(raised in a Ray worker)". Anything else is a BackendError naming it."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, QembedError):
        cause.args = (f"{cause.message} (raised in a Ray worker)",)
        return cause
    what = cause if cause is not None else exc
    lines = [line.strip() for line in str(what).splitlines() if line.strip()]
    return BackendError(f"the Ray job failed: {type(what).__name__}: {lines[0] if lines else 'no message'}")


def prepare_output(folder: str | os.PathLike[str], force: bool):
    """Check (and with ``force`` empty of .parquet files) the output folder; (fs, path, uri)."""
    import pyarrow.fs as pafs

    fs, path, uri = filesystem(folder)
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
    ray = ray_module()
    fs, path, uri = prepare_output(folder, force)
    _warn_if_local_path_on_cluster(ray, uri)
    started = time.perf_counter()
    try:
        ds.write_parquet(uri)
    except ray.exceptions.RayError as exc:
        raise _worker_error(exc) from exc
    seconds = time.perf_counter() - started
    try:
        files = parquet_files(fs, path)
        rows = sum(parquet_footer(fs, file).num_rows for file in files)
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

    fs, path, uri = filesystem(folder)
    files = parquet_files(fs, path)
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
