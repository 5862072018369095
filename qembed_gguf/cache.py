"""A persistent cache of embedding vectors: SQLite (embedded, the default) or Redis (shared).

A vector is stored under a key derived from everything that determines it::

    (model content fingerprint, run-time settings, output dim, normalised?, exact model input)

where the model input is the text as the model sees it, i.e. with the query instruction already
applied (``Instruct: {task}\\nQuery:{text}``), so the instruction and the text are both in the key.
The fingerprint is the converter's integrity seal (a BLAKE2b of the file's content) or, for a
file without a seal, a BLAKE2b of the whole file computed once at load. A hit therefore returns
the vector stored by the first computation of that input (with this model file and settings).
Vectors computed on another backend (GPU offload) or in another decode batch may differ from it in
the last bits (see the README on batching); they are not distinguished.

Backends implement two batch operations, :meth:`EmbeddingCache.get_many` and
:meth:`EmbeddingCache.put_many`, on opaque byte keys and values. :func:`open_cache` turns a spec
into a backend::

    None                         no cache
    "memory" | "memory://"       in-process dict (tests, notebooks)
    "sqlite:///path/to/db" | a path ending in .db/.sqlite/.sqlite3 | an os.PathLike
    "redis://host:6379/0" | "rediss://…" | "unix:///run/redis.sock"   (needs the `redis` package)

A cache never changes results and never loses work: a backend that fails while running (Redis
restarted, disk full) is logged once and treated as a miss; only opening a cache that cannot be
reached raises :class:`~qembed_gguf.errors.CacheError`.
"""

from __future__ import annotations

import abc
import collections
import hashlib
import logging
import os
import sqlite3
import struct
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CacheError

__all__ = ["EmbeddingCache", "MemoryCache", "SQLiteCache", "RedisCache", "VectorCache", "open_cache",
           "cache_key", "RECIPE_VERSION"]

log = logging.getLogger(__name__)

# bump when the recipe that turns an input into a vector changes (pooling, EOS handling …)
RECIPE_VERSION = "qembed-recipe-2"  # 2: NFC before tokenizing


def cache_key(namespace: str, dim: int, normalize: bool, text: str) -> bytes:
    """A 32-byte key: BLAKE2b of the length-prefixed fields (no two field lists share a key)."""
    h = hashlib.blake2b(digest_size=32, person=b"qembed-cache-v1")
    for field in (namespace.encode(), str(int(dim)).encode(), b"1" if normalize else b"0", text.encode("utf-8")):
        h.update(struct.pack("<Q", len(field)))
        h.update(field)
    return h.digest()


class EmbeddingCache(abc.ABC):
    """A store of ``bytes -> bytes``; implementations must be safe to call from several threads."""

    #: the backend's kind (shown by the server's ``/health``) and a description for logs (no secrets)
    kind: str = "cache"
    description: str = "cache"

    @abc.abstractmethod
    def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """The stored value of every key, None where absent."""

    @abc.abstractmethod
    def put_many(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        """Store every ``(key, value)``; an existing key is overwritten."""

    def close(self) -> None:
        """Release connections (idempotent)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


class MemoryCache(EmbeddingCache):
    """An in-process LRU dict, bounded by ``max_entries``."""

    def __init__(self, max_entries: int = 100_000):
        self._data: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._max = max_entries
        self._lock = threading.Lock()
        self.kind = "memory"
        self.description = f"memory, {max_entries} entries"

    def get_many(self, keys):
        with self._lock:
            out = []
            for k in keys:
                v = self._data.get(k)
                if v is not None:
                    self._data.move_to_end(k)
                out.append(v)
            return out

    def put_many(self, items):
        with self._lock:
            for k, v in items:
                self._data[k] = v
                self._data.move_to_end(k)
            while len(self._data) > self._max:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class SQLiteCache(EmbeddingCache):
    """An embedded SQLite file (WAL mode: several processes may share it).

    ``max_entries`` bounds the table: past it, the least recently used entries are deleted
    (checked every ``max_entries // 10`` insertions, so the table may overshoot by 10%).
    """

    _CHUNK = 500  # keys per SELECT (SQLite's default limit on bound parameters is 999+)

    def __init__(self, path: str | os.PathLike[str], *, max_entries: int | None = None, timeout: float = 10.0):
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=timeout, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS vectors (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
                             "used INTEGER NOT NULL) WITHOUT ROWID")
            self._db.execute("CREATE INDEX IF NOT EXISTS vectors_used ON vectors(used)")
        except (sqlite3.Error, OSError) as e:
            raise CacheError(f"cannot open the SQLite cache {self.path}: {e}") from e
        self._lock = threading.Lock()
        self._max = max_entries
        self._since_trim = 0
        self._tick = 0
        self.kind = "sqlite"
        self.description = f"sqlite {self.path}"

    def _now(self) -> int:
        """A strictly increasing recency stamp (ns), so eviction order never ties."""
        self._tick = max(time.time_ns(), self._tick + 1)
        return self._tick

    def get_many(self, keys):
        keys = list(keys)
        found: dict[bytes, bytes] = {}
        with self._lock:
            for i in range(0, len(keys), self._CHUNK):
                chunk = keys[i:i + self._CHUNK]
                marks = ",".join("?" * len(chunk))
                found.update(self._db.execute(f"SELECT key, value FROM vectors WHERE key IN ({marks})", chunk))
            if found and self._max is not None:  # recency only matters when entries are evicted
                now = self._now()
                try:
                    self._db.execute("BEGIN")
                    self._db.executemany("UPDATE vectors SET used=? WHERE key=?", [(now, k) for k in found])
                    self._db.execute("COMMIT")
                except sqlite3.Error as e:  # another process holds the write lock: the hits still count
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    log.debug("SQLite cache: recency update skipped: %s", e)
        return [found.get(k) for k in keys]

    def put_many(self, items):
        with self._lock:
            now = self._now()
            self._db.execute("BEGIN")
            try:
                self._db.executemany("INSERT OR REPLACE INTO vectors (key, value, used) VALUES (?, ?, ?)",
                                     [(k, v, now) for k, v in items])
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._since_trim += len(items)
            if self._max is not None and self._since_trim >= max(1, self._max // 10):
                self._since_trim = 0
                self._db.execute("DELETE FROM vectors WHERE key IN (SELECT key FROM vectors ORDER BY used DESC "
                                 "LIMIT -1 OFFSET ?)", (self._max,))

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0]

    def close(self):
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RedisCache(EmbeddingCache):
    """Redis (or a compatible server): one string per vector, under ``prefix``, optional TTL.

    The URL is redis-py's (``redis://[:password@]host:port/db``, ``rediss://``, ``unix://``);
    ``?ttl=SECONDS`` and ``?prefix=…`` in it set the expiry and the key prefix.
    """

    def __init__(self, url: str, *, ttl: int | None = None, prefix: str = "qembed:", timeout: float = 5.0):
        try:
            import redis
        except ImportError as e:
            raise CacheError('a Redis cache needs the redis package: pip install "qembed-gguf[redis]"') from e
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        if "ttl" in query:
            ttl = _positive_int(query.pop("ttl")[-1], f"ttl in {url!r}")
        if "prefix" in query:
            prefix = query.pop("prefix")[-1]
        clean = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, doseq=True)))
        self._ttl = ttl
        self._prefix = prefix.encode()
        try:
            self._redis = redis.Redis.from_url(clean, socket_timeout=timeout, socket_connect_timeout=timeout)
            self._redis.ping()
        except (redis.RedisError, ValueError) as e:
            raise CacheError(f"cannot reach the Redis cache at {_redact(url)}: {e}") from e
        self.kind = "redis"
        self.description = f"redis {_redact(clean)}" + (f", ttl {ttl}s" if ttl else "")

    def get_many(self, keys):
        keys = list(keys)
        if not keys:
            return []
        return list(self._redis.mget([self._prefix + k for k in keys]))

    def put_many(self, items):
        pipe = self._redis.pipeline(transaction=False)
        for k, v in items:
            pipe.set(self._prefix + k, v, ex=self._ttl)
        pipe.execute()

    def close(self):
        self._redis.close()


def _positive_int(value: str, what: str) -> int:
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise CacheError(f"{what} must be a positive integer, got {value!r}")
    return n


def _redact(url: str) -> str:
    """The URL without credentials, in the userinfo or the query (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = [(k, "***" if k.lower() in ("password", "username", "user") else v)
             for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=urllib.parse.urlencode(query)))


def open_cache(spec: "str | os.PathLike[str] | EmbeddingCache | None") -> EmbeddingCache | None:
    """A cache backend from a spec (see the module docstring), an existing backend, or None."""
    if spec is None or isinstance(spec, EmbeddingCache):
        return spec
    if isinstance(spec, os.PathLike):
        return SQLiteCache(spec)
    if not isinstance(spec, str) or not spec:
        raise CacheError(f"a cache must be a URL, a path or an EmbeddingCache, got {spec!r}")
    scheme = urllib.parse.urlsplit(spec).scheme.lower()
    if spec in ("memory", "memory://"):
        return MemoryCache()
    if scheme in ("redis", "rediss", "unix"):
        return RedisCache(spec)
    if scheme == "sqlite":
        path = spec[len("sqlite://"):]
        if not path.startswith("/"):
            raise CacheError(f"a SQLite cache URL is sqlite:///absolute/path.db, got {spec!r}")
        return SQLiteCache(path)
    if scheme and len(scheme) > 1:  # "C:\\…" is a Windows path, not a scheme
        raise CacheError(f"unknown cache scheme {scheme!r} in {spec!r}: use sqlite:///path.db, redis://host:port/db "
                         f"or memory")
    if not spec.endswith((".db", ".sqlite", ".sqlite3")):
        raise CacheError(f"{spec!r} is not a cache spec: use sqlite:///path.db (or a path ending in .db, .sqlite, "
                         f".sqlite3), redis://host:port/db or memory")
    return SQLiteCache(spec)


class VectorCache:
    """An :class:`EmbeddingCache` bound to one model and setting: float32 vectors in and out.

    ``namespace`` holds the model fingerprint and every run-time setting that changes a vector.
    Failures of the backend while running are logged (once per kind) and count as misses, so a
    cache outage slows a job down but never fails it.
    """

    def __init__(self, backend: EmbeddingCache, namespace: str):
        self.backend = backend
        self.namespace = namespace
        self._warned: set[str] = set()

    def _warn(self, what: str, error: Exception) -> None:
        if what not in self._warned:
            self._warned.add(what)
            log.warning("embedding cache (%s): %s failed, carrying on without it: %s", self.backend.description,
                        what, error)

    def keys(self, texts: Sequence[str], dim: int, normalize: bool) -> list[bytes]:
        return [cache_key(self.namespace, dim, normalize, t) for t in texts]

    def lookup(self, keys: Sequence[bytes], dim: int) -> list[np.ndarray | None]:
        """The cached vector of every key (float32, length ``dim``), None where absent."""
        try:
            values = self.backend.get_many(keys)
        except Exception as e:  # noqa: BLE001 - any backend failure is a miss, never a lost result
            self._warn("lookup", e)
            return [None] * len(keys)
        out: list[np.ndarray | None] = []
        for v in values:
            if v is not None and len(v) == 4 * dim:
                out.append(np.frombuffer(v, dtype="<f4").astype(np.float32))
            else:
                if v is not None:
                    self._warn("decoding", ValueError(f"an entry of {len(v)} bytes is not a {dim}-dim float32 vector"))
                out.append(None)
        return out

    def store(self, keys: Sequence[bytes], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        data = np.ascontiguousarray(vectors, dtype="<f4")
        try:
            self.backend.put_many([(k, data[i].tobytes()) for i, k in enumerate(keys)])
        except Exception as e:  # noqa: BLE001
            self._warn("store", e)
