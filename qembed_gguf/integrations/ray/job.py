"""``qembed-gguf embed --ray``: connect, read, embed, write, check, as one call."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import time
from typing import IO, Any, Iterator

from ...errors import BackendError
from ._base import DEFAULT_BATCH_SIZE, ID_COLUMN, ROW_COLUMN, ray_module
from .corpus import filesystem, parquet_files, read_corpus
from .dataset import embed_dataset
from .shards import prepare_output, write_embeddings

__all__ = ["ray_session", "RayJobResult", "embed_corpus"]

log = logging.getLogger(__name__)


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
    ray = ray_module()
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
    ray_module()
    if not force:
        prepare_output(output, False)  # fail before connecting or reading (write_embeddings checks again)
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

        fs, path, _ = filesystem(output)
        with fs.open_input_file(parquet_files(fs, path)[0]) as fh:
            dim = pq.read_schema(fh).field(output_column).type.list_size
    return RayJobResult(rows, written.files, dim, time.perf_counter() - started, written.seconds, written.folder)
