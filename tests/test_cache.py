"""The vector cache: one suite, run against SQLite, a real Redis server and the in-memory backend."""

from __future__ import annotations

import logging
import uuid

import httpx
import numpy as np
import openai
import pytest

from qembed_gguf import Embedder
from qembed_gguf.cache import MemoryCache, RedisCache, SQLiteCache, cache_key, open_cache
from qembed_gguf.errors import CacheError
from qembed_gguf.server import ServerConfig

from conftest import TEXTS


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis), "memory"])
def backend_spec(request, tmp_path):
    """A spec string for a fresh, empty cache of each kind (Redis: a unique key prefix)."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'vectors.db'}"
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return f"{url}?prefix=test-{uuid.uuid4().hex}:"
    return "memory"


@pytest.fixture
def backend(backend_spec):
    cache = open_cache(backend_spec)
    yield cache
    cache.close()


def test_hit_returns_the_identical_vector_without_a_decode(backend):
    texts = TEXTS[:6]
    with Embedder("tiny", cache=backend) as e, Embedder("tiny") as plain:
        first = e.embed_documents(texts)
        decodes = e.stats.decode_calls
        assert (e.stats.cache_misses, e.stats.cache_hits) == (len(texts), 0) and decodes > 0
        second = e.embed_documents(texts)
        np.testing.assert_array_equal(second, first)
        assert e.stats.decode_calls == decodes  # no model work at all
        assert (e.stats.cache_hits, e.stats.sequences_decoded) == (len(texts), len(texts))
        np.testing.assert_array_equal(first, plain.embed_documents(texts))  # the cache changes nothing


def test_partial_hits_and_duplicates_in_one_call(backend):
    with Embedder("tiny", cache=backend) as e, Embedder("tiny") as plain:
        e.embed_documents(TEXTS[:3])
        mixed = [TEXTS[1], TEXTS[5], TEXTS[5], TEXTS[0], TEXTS[6]]
        before = e.stats.sequences_decoded
        got = e.embed_documents(mixed)
        assert e.stats.sequences_decoded - before == 2  # TEXTS[5] once, TEXTS[6]
        for i, t in enumerate(mixed):
            np.testing.assert_allclose(got[i], plain.embed_documents(t)[0], atol=5e-3)  # batch-dependent, see server
        np.testing.assert_array_equal(got[1], got[2])


def test_key_covers_dim_instruction_normalize_and_model(backend, converted):
    text = ["what is gguf?"]
    with Embedder("tiny", cache=backend) as e:
        base = e.embed_documents(text)
        for call in (lambda: e.embed_documents(text, dim=64), lambda: e.embed_query(text),
                     lambda: e.embed_query(text, task="Find code"), lambda: e.embed_documents(text, normalize=False)):
            misses = e.stats.cache_misses
            call()
            assert e.stats.cache_misses == misses + 1
        assert e.embed_documents(text, dim=64).shape == (1, 64)
        np.testing.assert_array_equal(e.embed_documents(text), base)
    # another model file (same tokenizer, other weights) never sees these entries
    with Embedder(converted("tiny", "f16"), cache=backend) as other:
        other.embed_documents(text)
        assert other.stats.cache_hits == 0


def test_entries_persist_across_embedders(backend_spec):
    if backend_spec == "memory":
        pytest.skip("an in-process cache lives as long as its object")
    with Embedder("tiny", cache=backend_spec) as e:
        first = e.embed_documents(TEXTS[:4])
    with Embedder("tiny", cache=backend_spec) as e:  # a new process would see the same
        np.testing.assert_array_equal(e.embed_documents(TEXTS[:4]), first)
        assert e.stats.decode_calls == 0 and e.stats.cache_hits == 4


def test_a_damaged_entry_is_a_miss_and_is_rewritten(backend, caplog):
    with Embedder("tiny", cache=backend) as e:
        want = e.embed_documents(TEXTS[:1])
        key = e.cache.keys(TEXTS[:1], e.dim, True)[0]
        backend.put_many([(key, b"\x00" * 12)])
        with caplog.at_level(logging.WARNING, logger="qembed_gguf.cache"):
            np.testing.assert_array_equal(e.embed_documents(TEXTS[:1]), want)
        assert "not a 256-dim float32 vector" in caplog.text
        assert len(backend.get_many([key])[0]) == 4 * e.dim


def test_server_answers_hits_from_the_cache(backend, live_app):
    with Embedder("tiny", cache=backend) as e, Embedder("tiny") as plain:
        url = live_app(e, ServerConfig(model_names=("tiny",)))
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        first = client.embeddings.create(model="tiny", input=TEXTS[:5], dimensions=64)
        decodes = e.stats.decode_calls
        again = client.embeddings.create(model="tiny", input=TEXTS[:5], dimensions=64)
        assert [d.embedding for d in again.data] == [d.embedding for d in first.data]
        assert e.stats.decode_calls == decodes
        assert again.usage.prompt_tokens == first.usage.prompt_tokens  # tokens still counted
        np.testing.assert_array_equal(np.array([d.embedding for d in first.data], dtype=np.float32),
                                      plain.embed_documents(TEXTS[:5], dim=64))
        query = client.embeddings.create(model="tiny", input=TEXTS[0], extra_body={"input_type": "query"})
        np.testing.assert_array_equal(np.array(query.data[0].embedding, dtype=np.float32), plain.embed_query(TEXTS[0])[0])
        health = httpx.get(url + "/health").json()
        assert health["cache"]["hits"] == 5 and health["cache"]["misses"] == 6


# -- backend specifics ------------------------------------------------------------------------------
@pytest.mark.redis
def test_redis_outage_degrades_to_misses(redis_url, caplog):
    import redis
    import redis.backoff
    import redis.retry

    cache = RedisCache(f"{redis_url}?prefix=outage-{uuid.uuid4().hex}:")
    with Embedder("tiny", cache=cache) as e:
        want = e.embed_documents(TEXTS[:3])
        cache._redis.connection_pool.disconnect()
        # nothing listens on port 1; no retries (redis-py's default backs off for seconds): the point is
        # that a failing backend degrades to misses, not how long the client retries
        cache._redis = redis.Redis(port=1, socket_connect_timeout=0.2,
                                   retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
        with caplog.at_level(logging.WARNING, logger="qembed_gguf.cache"):
            np.testing.assert_array_equal(e.embed_documents(TEXTS[:3]), want)
        assert "carrying on without it" in caplog.text


def test_unreachable_or_malformed_caches_fail_at_open(tmp_path):
    with pytest.raises(CacheError, match="cannot reach the Redis cache"):
        open_cache("redis://127.0.0.1:1/0")
    with pytest.raises(CacheError, match="unknown cache scheme"):
        open_cache("mongodb://x")
    with pytest.raises(CacheError, match="not a cache spec"):
        open_cache("memroy")  # a typo is not silently a new SQLite file
    with pytest.raises(CacheError, match="absolute"):
        open_cache("sqlite://relative.db")
    with pytest.raises(CacheError, match="ttl"):
        open_cache("redis://127.0.0.1:1/0?ttl=soon")
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(CacheError, match="cannot open the SQLite cache"):
        open_cache(str(tmp_path / "dir.db"))
    assert isinstance(open_cache(str(tmp_path / "v.sqlite")), SQLiteCache)
    assert isinstance(open_cache("memory"), MemoryCache)


def test_keys_are_unambiguous():
    assert cache_key("m", 64, True, "ab") != cache_key("m", 64, True, "ab ")
    assert cache_key("m|1", 64, True, "x") != cache_key("m", 1, True, "|64x")  # length-prefixed fields
    assert cache_key("m", 64, True, "x") != cache_key("m", 64, False, "x")
    assert cache_key("m", 64, True, "x") == cache_key("m", 64, True, "x") and len(cache_key("m", 1, True, "")) == 32


def test_sqlite_cache_is_bounded(tmp_path):
    cache = SQLiteCache(tmp_path / "small.db", max_entries=10)
    for i in range(40):
        cache.put_many([(f"k{i}".encode(), b"v")])
    assert len(cache) <= 11
    assert cache.get_many([b"k39"]) == [b"v"] and cache.get_many([b"k0"]) == [None]
    cache.close()
