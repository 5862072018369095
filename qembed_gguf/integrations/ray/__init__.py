"""Embed a corpus on a Ray cluster with the same Embedder: Ray Data actors in, Parquet shards out.

Modules: :mod:`.worker` (the actor), :mod:`.dataset` (``embed_dataset``), :mod:`.corpus`
(reading inputs), :mod:`.shards` (writing and reading results), :mod:`.job` (the CLI's job).

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
:func:`write_embeddings` re-raises the worker's exception itself (errors pickle, with their
attributes such as ``index``), marked ``(raised in a Ray worker)``. A job does not resume: if the driver (or the head
node) dies, or the job fails, the shards written so far stay and the job is run again with
``force``; split a very large corpus into several jobs to bound what such a failure costs.
"""

from __future__ import annotations

from ._base import DEFAULT_BATCH_SIZE, DEFAULT_MAX_RESTARTS, DEFAULT_MAX_TASK_RETRIES, ID_COLUMN, ROW_COLUMN
from .corpus import read_corpus
from .dataset import embed_dataset
from .job import RayJobResult, embed_corpus, ray_session
from .shards import Embeddings, WriteResult, read_embeddings, write_embeddings
from .worker import EmbedBatches

__all__ = ["embed_dataset", "EmbedBatches", "read_corpus", "write_embeddings", "read_embeddings",
           "embed_corpus", "ray_session", "Embeddings", "WriteResult", "RayJobResult",
           "ROW_COLUMN", "ID_COLUMN", "DEFAULT_BATCH_SIZE", "DEFAULT_MAX_RESTARTS", "DEFAULT_MAX_TASK_RETRIES"]
