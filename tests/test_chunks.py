"""``Embedder.embed_chunks``: spans that cover each text, break at paragraphs and sentences, and
vectors that are the model's vectors of those spans.

References: Python's own string slicing and ``unicodedata`` for the spans; HF ``tokenizers`` for
the token boundaries; ``embed_tokens`` / ``embed`` of the same Embedder for the vectors.
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest

from qembed_gguf import Embedder, InputError, registry
from qembed_gguf.chunks import break_quality, nfc_with_offsets, plan_token_spans

from test_realvocab_embedder import MULTILINGUAL

tokenizers = pytest.importorskip("tokenizers")

PARAGRAPHS = "\n\n".join(
    f"Paragraph {i} talks about topic number {i}. It has a second sentence, and it ends here."
    for i in range(12))
SENTENCES = " ".join(f"Sentence {i} is short and ends with a full stop." for i in range(40))
NFD = unicodedata.normalize("NFD", "École, café, naïve, Ångström, Việt Nam. ") * 12
TEXTS = [PARAGRAPHS, SENTENCES, NFD, "\n".join(MULTILINGUAL) * 3, "short", "", "😀" * 40, "x" * 300]


@pytest.fixture(scope="module")
def tiny():
    with Embedder("tiny", flash_attn=False) as e:
        yield e


@pytest.fixture(scope="module")
def hf():
    return tokenizers.Tokenizer.from_file(str(registry.bundled_dir(registry.get_spec("tiny")) / "tokenizer.json"))


def _check_cover(text: str, chunks, chunk_tokens: int) -> None:
    assert [c.chunk for c in chunks] == list(range(len(chunks)))
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    for a, b in zip(chunks, chunks[1:]):
        assert a.start <= b.start <= a.end and a.end <= b.end, (a, b)
        # tokens that split a character (byte-level BPE) can give two tiny chunks one span; otherwise each moves on
        assert a.start < b.start or chunk_tokens < 8, (a, b)
    assert all(c.start < c.end for c in chunks) or text == ""
    assert all(2 <= c.n_tokens <= chunk_tokens for c in chunks) or text == ""


@pytest.mark.parametrize("chunk_tokens, overlap", [(24, 0), (24, 6), (64, 0), (64, 31), (5, 2), (2, 0)])
def test_spans_cover_every_text_in_order(tiny, chunk_tokens, overlap):
    chunks = tiny.embed_chunks(TEXTS, chunk_tokens=chunk_tokens, overlap=overlap)
    assert [c.index for c in chunks] == sorted(c.index for c in chunks)
    for i, text in enumerate(TEXTS):
        _check_cover(text, [c for c in chunks if c.index == i], chunk_tokens)
    assert all(c.vector.shape == (tiny.dim,) and c.vector.dtype == np.float32 for c in chunks)


def test_chunk_vectors_are_their_tokens_and_nearly_their_text(tiny, hf):
    chunks = tiny.embed_chunks(TEXTS[:4], chunk_tokens=40, overlap=4, dim=64)
    hf.encode_special_tokens = True  # special-token text a user typed stays text, as the Embedder reads it
    encodings = {i: hf.encode(unicodedata.normalize("NFC", TEXTS[i])) for i in {c.index for c in chunks}}
    for c in chunks:
        text = TEXTS[c.index]
        piece = text[c.start:c.end]
        # the tokens of the whole text, sliced at the chunk's character span, are the chunk's tokens
        enc = encodings[c.index]
        a, b = (len(unicodedata.normalize("NFC", text[:k])) for k in (c.start, c.end))
        ids = [t for t, (s, e) in zip(enc.ids[:-1], enc.offsets[:-1]) if s >= a and e <= b]
        assert len(ids) + 1 == c.n_tokens, (c, piece)
        assert float(c.vector @ tiny.embed_tokens([ids], dim=64)[0]) > 0.9999  # batch composition aside, equal
        alone = tiny.embed([piece], dim=64)[0]
        assert float(alone @ c.vector) > 0.97, (c, piece)


def test_chunks_end_at_paragraphs_then_sentences(tiny):
    for c in tiny.embed_chunks([PARAGRAPHS], chunk_tokens=64)[:-1]:  # a paragraph: 47-49 tokens
        assert PARAGRAPHS[:c.end].endswith("\n\n"), repr(PARAGRAPHS[c.start:c.end])
    for c in tiny.embed_chunks([SENTENCES], chunk_tokens=32)[:-1]:  # a sentence: about 25 tokens
        assert SENTENCES[:c.end].rstrip().endswith("."), repr(SENTENCES[c.start:c.end])


def test_query_chunks_are_queries(tiny, hf):
    task = "Find the sentence"
    texts = [SENTENCES, "𓀀" * 20 + " Ωmega"]  # a glyph of 4 byte tokens: re-tokenised spans would grow
    chunks = tiny.embed_chunks(texts, chunk_tokens=40, query=True, task=task)
    assert len(chunks) > 3 and all(c.n_tokens <= 40 for c in chunks)
    # HF's tokens: the template's (all but its pooling token), then the chunk's slice of the whole text's
    prefix = hf.encode(f"Instruct: {task}\nQuery:").ids[:-1]
    for c in chunks:
        if c.index == 0:  # ASCII: the slice is the tokens of the span
            ids = hf.encode(texts[0][c.start:c.end]).ids[:-1]
            assert c.n_tokens == len(prefix) + len(ids) + 1
            assert float(c.vector @ tiny.embed_tokens([prefix + ids])[0]) > 0.9999
    # and nearly what embed_query gives the span's text (which may merge "Query:" with its first word)
    want = tiny.embed_query([texts[c.index][c.start:c.end] for c in chunks], task=task)
    assert min(float(v @ w) for v, w in zip((c.vector for c in chunks), want)) > 0.98
    with pytest.raises(InputError, match="no room for text after the query template"):
        tiny.embed_chunks(["x"], chunk_tokens=5, query=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"chunk_tokens": 1}, r"chunk_tokens must be"),
    ({"chunk_tokens": 10**6}, r"chunk_tokens=1000000 is more than this Embedder's max_tokens, 8192"),
    ({"chunk_tokens": True}, r"chunk_tokens must be"),
    ({"chunk_tokens": 10, "overlap": 5}, r"overlap=5 is more than half of the 9 text tokens of a chunk of 10, 4"),
    ({"chunk_tokens": 10, "overlap": -1}, r"overlap must be"),
])
def test_bad_chunk_settings(tiny, kwargs, match):
    with pytest.raises(InputError, match=match):
        tiny.embed_chunks(["some text"], **kwargs)


def test_bad_texts_name_their_index(tiny):
    with pytest.raises(InputError, match=r"texts\[1\] is NoneType"):
        tiny.embed_chunks(["fine", None], chunk_tokens=8)


def test_nfc_offsets_map_back_to_the_text_as_given():
    hostile = "a" + "\u0301\u0323" * 500 + "b c"  # a long run of combining marks: never cut inside, quickly
    for text in [NFD, "plain ascii", "한국어" + unicodedata.normalize("NFD", "한국어"), "e\u0301\u0323x", "", hostile,
                 "\u0915\u094d\u0937\u093f " * 3 + unicodedata.normalize("NFD", "é")]:
        nfc, back = nfc_with_offsets(text)
        assert nfc == unicodedata.normalize("NFC", text)
        if text == NFD:  # fine-grained: nearly every offset maps exactly (a fallback to [0, len] would not)
            assert len({back(i, True) for i in range(len(nfc) + 1)}) > len(nfc) * 0.9
        assert back(0, False) == 0 and back(len(nfc), True) == len(text)
        for i in range(len(nfc) + 1):
            lo, hi = back(i, False), back(i, True)
            assert lo <= hi
            # every offset it returns cuts the text where normalising the halves apart changes nothing
            for j in (lo, hi):
                assert unicodedata.normalize("NFC", text[:j]) + unicodedata.normalize("NFC", text[j:]) == nfc


def test_break_quality_and_planner():
    text = "One. Two\nthree\n\nfour five"
    assert break_quality(text, text.index("Two")) == 3
    assert break_quality(text, text.index("three")) == 2
    assert break_quality(text, text.index("four")) == 4
    assert break_quality(text, text.index("five")) == 1
    assert break_quality(text, 2) == 0
    crlf = text.replace("\n", "\r\n")  # Windows line ends: the same breaks
    assert [break_quality(crlf, crlf.index(w)) for w in ("Two", "three", "four", "five")] == [3, 2, 4, 1]
    bounds = list(range(11))
    assert plan_token_spans(bounds, budget=4, overlap=0, quality=lambda p: 0) == [(0, 4), (4, 8), (8, 10)]
    assert plan_token_spans(bounds, budget=4, overlap=1, quality=lambda p: 0) == [(0, 4), (3, 7), (6, 10)]
    assert plan_token_spans(bounds, budget=4, overlap=0, quality=lambda p: 4 if p == 3 else 0)[0] == (0, 3)
    mid = [0, None, None, 3, None, 5]  # token boundaries inside characters
    # no boundary between characters in the first window: it ends inside one (its text rounds outwards)
    assert plan_token_spans(mid, budget=2, overlap=0, quality=lambda p: 0) == [(0, 2), (2, 3), (3, 5)]
    assert plan_token_spans(mid, budget=3, overlap=0, quality=lambda p: 0) == [(0, 3), (3, 5)]
    assert plan_token_spans([0], budget=4, overlap=0, quality=lambda p: 0) == [(0, 0)]


def test_real_vocabulary_pieces_spell_the_text(realvocab_gguf):
    with Embedder(realvocab_gguf("f16")) as e:
        for text in MULTILINGUAL:
            ids = e.tokenize(text)[0][:-1]
            assert sum(e.piece_lengths(ids)) == len(unicodedata.normalize("NFC", text).encode("utf-8"))
        chunks = e.embed_chunks(MULTILINGUAL, chunk_tokens=8, overlap=2)
        for i, text in enumerate(MULTILINGUAL):
            _check_cover(text, [c for c in chunks if c.index == i], 8)
