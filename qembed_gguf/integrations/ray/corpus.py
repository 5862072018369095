"""Reading a job's input for Ray: text/JSONL lines through the driver, Parquet by the cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterator

import numpy as np

from ...errors import InputError
from ...jobio import NO_ID, input_format, iter_records, open_input
from ...validate import check_int
from ._base import DEFAULT_BATCH_SIZE, ID_COLUMN, ROW_COLUMN, ray_module

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa
    import ray.data

__all__ = ["read_corpus", "filesystem", "parquet_files", "parquet_footer"]

log = logging.getLogger(__name__)


def _input_kind(path: str, fmt: str) -> str:
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


def filesystem(folder: str | os.PathLike[str]):
    """(pyarrow filesystem, path inside it, the string Ray is given) of a local path or a URI."""
    import pyarrow.fs as pafs

    text = os.fspath(folder)
    if "://" in text:
        fs, path = pafs.FileSystem.from_uri(text)
        return fs, path, text
    path = str(Path(text).expanduser().absolute())  # Ray's workers do not share the driver's cwd
    return pafs.LocalFileSystem(), path, path


def parquet_files(fs, path: str) -> list[str]:
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


def parquet_footer(fs, file: str):
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
        meta = parquet_footer(fs, file)
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
    ray = ray_module()
    check_int("block_rows", block_rows, lo=1)
    if field in (ROW_COLUMN, ID_COLUMN) or not isinstance(field, str) or not field:
        raise InputError(f"the text field must be a name other than {ROW_COLUMN!r} and {ID_COLUMN!r} (the key "
                         f"columns), got {field!r}")
    kind = _input_kind(path, fmt)
    with contextlib.ExitStack() as stack:
        if kind == "parquet":
            fs, fpath, _ = filesystem(path)
            files = parquet_files(fs, fpath)
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
            fh, source = stack.enter_context(open_input(path, stdin))
            tables = _record_tables(iter_records(fh, fmt=kind, field=field, source=source), field, source,
                                    block_rows)
        refs, rows = [], 0
        for table in tables:
            refs.append(ray.put(table))
            rows += table.num_rows
    if not refs:
        raise InputError(f"{source}: no texts to embed")
    return ray.data.from_arrow_refs(refs), rows
