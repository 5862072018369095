"""The long-input policy (``long_inputs="truncate" | "error" | "chunk"``, ``chunk_overlap``).

The reference for ``"chunk"`` is the rule written in the issue, computed here independently: HF
``tokenizers``' ids of the text, windows of ``max_tokens - 1`` content tokens stepping by
``max_tokens - 1 - overlap`` (written out below, not taken from the library), each embedded alone
through ``embed_tokens`` of a plain Embedder, truncated to ``dim`` and normalised, averaged with
weights = the window's content tokens, normalised again.
"""

from __future__ import annotations

import numpy as np
import pytest

from qembed_gguf import Embedder, InputError, InputTooLongError, registry
from qembed_gguf.longinputs import plan, window_spans

tokenizers = pytest.importorskip("tokenizers")

MAX = 32  # max_tokens of the chunking Embedders: 31 content tokens per window
WORDS = ("the model reads every window of a long document and averages what it saw; "
         "numbers 12345 and 67890, words like tokenizer, embedding, Matryoshka. ")


def _text(n_tokens: int, hf) -> str:
    """A text of about ``n_tokens`` tokens (pooling token excluded)."""
    text = ""
    while len(hf.encode(text).ids) - 1 < n_tokens:
        text += WORDS
    ids = hf.encode(text).ids[:-1][:n_tokens]
    return hf.decode(ids)


def _windows(content: list[int], window: int, overlap: int) -> list[list[int]]:
    starts = [0]
    while starts[-1] + window < len(content):
        starts.append(starts[-1] + window - overlap)
    return [content[s:s + window] for s in starts]


def _reference(plain: Embedder, ids: list[int], *, overlap: int, dim: int | None) -> np.ndarray:
    content = ids[:-1]
    if len(ids) <= MAX:
        return plain.embed_tokens([ids], dim=dim)[0]
    windows = _windows(content, MAX - 1, overlap)
    vecs = plain.embed_tokens(windows, dim=dim, batch_tokens=MAX)  # each its own decode call
    mean = (np.array([len(w) for w in windows], dtype=np.float64)[:, None] * vecs).sum(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


@pytest.fixture(scope="module")
def hf():
    return tokenizers.Tokenizer.from_file(str(registry.bundled_dir(registry.get_spec("tiny")) / "tokenizer.json"))


@pytest.fixture(scope="module")
def plain():
    with Embedder("tiny", flash_attn=False) as e:
        yield e


@pytest.fixture(scope="module")
def texts(hf):
    # 1 window (fits), exactly max_tokens, 2 windows, many windows, empty
    return [_text(10, hf), _text(MAX - 1, hf), _text(45, hf), _text(400, hf), ""]


def test_window_spans():
    assert window_spans(5, 8, 2) == [(0, 5)]
    assert window_spans(8, 8, 2) == [(0, 8)]
    assert window_spans(9, 8, 0) == [(0, 8), (8, 9)]
    assert window_spans(20, 8, 3) == [(0, 8), (5, 13), (10, 18), (15, 20)]
    for n, w, o in [(100, 7, 0), (100, 7, 6), (31, 31, 30), (1000, 31, 5)]:
        spans = window_spans(n, w, o)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(b - a <= w for a, b in spans)
        assert all(b1 - a2 == o for (_, b1), (a2, _) in zip(spans, spans[1:]))
    with pytest.raises(InputError):
        window_spans(10, 4, 4)


@pytest.mark.parametrize("overlap", [0, 5, 15])
def test_chunk_policy_is_the_formula(overlap, plain, hf, texts):
    with Embedder(plain.path, max_tokens=MAX, long_inputs="chunk", chunk_overlap=overlap, flash_attn=False) as e:
        assert e.long_inputs == "chunk" and e.chunk_overlap == overlap and not e.truncate
        for dim in (None, 64, 32):
            got = e.embed(texts, dim=dim)
            for i, text in enumerate(texts):
                want = _reference(plain, hf.encode(text).ids, overlap=overlap, dim=dim)
                np.testing.assert_allclose(got[i], want, atol=3e-5, err_msg=f"text {i}, dim {dim}")
        # pre-tokenized inputs follow the same rule
        ids = [hf.encode(t).ids for t in texts]
        np.testing.assert_allclose(e.embed_tokens(ids, dim=64), e.embed(texts, dim=64), atol=3e-5)


def test_chunked_input_is_not_its_truncation(plain, texts):
    with Embedder(plain.path, max_tokens=MAX, long_inputs="chunk") as chunk, \
            Embedder(plain.path, max_tokens=MAX, long_inputs="truncate") as cut:
        a, b = chunk.embed(texts), cut.embed(texts)
    np.testing.assert_allclose(a[:2], b[:2], atol=1e-6)  # inputs that fit: the same vector
    assert float(a[3] @ b[3]) < 0.999  # 400 tokens: the average of 13 windows, not the first


def test_unnormalised_chunks_average_unit_windows(plain, hf, texts):
    with Embedder(plain.path, max_tokens=MAX, long_inputs="chunk", normalize=False, flash_attn=False) as e:
        got = e.embed(texts, dim=64)
    np.testing.assert_allclose(got[0], plain.embed([texts[0]], dim=64, normalize=False)[0], atol=3e-5)
    content = hf.encode(texts[3]).ids[:-1]
    windows = _windows(content, MAX - 1, 0)
    unit = plain.embed_tokens(windows, dim=64)
    weights = np.array([len(w) for w in windows], dtype=np.float64)
    np.testing.assert_allclose(got[3], (weights[:, None] * unit).sum(0) / weights.sum(), atol=3e-5)
    assert np.linalg.norm(got[3]) < 1.0


def test_queries_and_encode_chunk_the_formatted_text(plain, hf, texts):
    with Embedder(plain.path, max_tokens=MAX, long_inputs="chunk", chunk_overlap=3, flash_attn=False) as e:
        q = e.embed_query(texts[3])
        want = _reference(plain, hf.encode(e.format_query(texts[3])).ids, overlap=3, dim=None)
        np.testing.assert_allclose(q[0], want, atol=3e-5)
        np.testing.assert_allclose(e.encode(texts[2:4]), e.embed(texts[2:4]), atol=1e-6)


def test_identical_long_inputs_decode_their_windows_once(plain, texts):
    with Embedder(plain.path, max_tokens=MAX, long_inputs="chunk") as e:
        e.embed(texts[3:4])
        windows = e.stats.sequences_decoded
        assert windows == 13
        e.embed([texts[3]] * 5 + [texts[0]])
        assert e.stats.sequences_decoded == 2 * windows + 1


def test_truncate_and_error_policies(plain, texts, hf):
    with Embedder(plain.path, max_tokens=MAX, long_inputs="error") as e:
        assert not e.truncate
        e.embed(texts[:2])  # exactly max_tokens fits
        with pytest.raises(InputTooLongError, match="input 2 has 46 tokens") as info:
            e.embed(texts)
        assert info.value.index == 2 and info.value.max_tokens == MAX
    with Embedder(plain.path, max_tokens=MAX) as e:  # the default
        assert e.long_inputs == "truncate" and e.truncate
        ids = hf.encode(texts[3]).ids
        np.testing.assert_allclose(e.embed(texts[3:4]), e.embed_tokens([ids[:MAX - 1]]), atol=3e-5)
    # the older spelling
    with Embedder(plain.path, truncate=False) as e:
        assert e.long_inputs == "error"
    with Embedder(plain.path, truncate=True, long_inputs="truncate") as e:
        assert e.long_inputs == "truncate"


@pytest.mark.parametrize("kwargs, match", [
    ({"long_inputs": "split"}, "long_inputs must be one of"),
    ({"long_inputs": "chunk", "truncate": False}, "contradicts truncate=False"),
    ({"long_inputs": "chunk", "chunk_overlap": 16}, r"chunk_overlap must be an integer in \[0, 15\] \(at most half"),
    ({"long_inputs": "chunk", "chunk_overlap": -1}, r"\[0, 15\]"),
    ({"long_inputs": "chunk", "chunk_overlap": 2.0}, r"\[0, 15\]"),
    ({"truncate": "yes"}, "truncate must be True or False"),
])
def test_bad_policies_are_refused(plain, kwargs, match):
    with pytest.raises(InputError, match=match):
        Embedder(plain.path, max_tokens=MAX, **kwargs)


def test_the_cache_keeps_policies_apart(plain, texts, tmp_path):
    db = tmp_path / "vectors.db"
    with Embedder(plain.path, max_tokens=MAX, cache=db) as cut:
        truncated = cut.embed(texts)
    with Embedder(plain.path, max_tokens=MAX, long_inputs="chunk", cache=db) as chunk:
        chunked = chunk.embed(texts)
        assert chunk.stats.cache_hits == 0  # another policy: another namespace
        again = chunk.embed(texts)
        assert chunk.stats.cache_hits == len(texts)
    np.testing.assert_array_equal(chunked, again)
    assert float(chunked[3] @ truncated[3]) < 0.999


def test_plan_names_the_callers_input_and_selects():
    seqs = [[1, 2, 9], [1, 2, 3, 4, 5, 6, 9], [9]]
    with pytest.raises(InputTooLongError, match="input 7 has 7 tokens"):
        plan(seqs, limit=4, eos=9, long_inputs="error", rows=[[0], [7, 8], [3]])
    p = plan(seqs, limit=4, eos=9, long_inputs="chunk", overlap=1)
    assert p.sequences == [[1, 2, 9], [1, 2, 3, 9], [3, 4, 5, 9], [5, 6, 9], [9]]
    assert p.owner.tolist() == [0, 1, 1, 1, 2] and p.n_tokens == [3, 11, 1] and p.cut == [False, True, False]
    sub = p.select([False, True, True])
    assert sub.sequences == p.sequences[1:] and sub.owner.tolist() == [0, 0, 0, 1] and sub.n_tokens == [11, 1]
