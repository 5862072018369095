"""Every output type, loaded by llama-cpp-python in embedding mode, against HF transformers'
last-token-pooled, normalised output on the same checkpoint; and llama.cpp's tokenization of our
GGUF against HF tokenizers' ids (EOS included)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

from conftest import TEXTS

llama_cpp = pytest.importorskip("llama_cpp")

# minimum cosine to the HF reference, per output type (the thresholds)
THRESHOLDS = {"f32": 0.9999, "f16": 0.9999, "bf16": 0.9999, "q8_0": 0.999, "q6_k": 0.99, "q4_k_m": 0.96, "q4_0": 0.96}


@contextlib.contextmanager
def _llama(path):
    llm = llama_cpp.Llama(str(path), embedding=True, n_ctx=2048, n_batch=2048, n_ubatch=2048, verbose=False)
    try:
        yield llm
    finally:
        llm.close()


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["tiny", "odd"])
@pytest.mark.parametrize("outtype", list(THRESHOLDS))
def test_embeddings_match_transformers(shape, outtype, converted, hf_reference):
    _, ref = hf_reference(shape)
    # the reference itself must discriminate, or a high cosine would prove nothing
    off_diagonal = (ref @ ref.T)[np.triu_indices(len(TEXTS), 1)]
    assert off_diagonal.max() < 0.9 and off_diagonal.mean() < 0.5, "reference vectors too alike to test anything"

    with _llama(converted(shape, outtype)) as llm:
        got = np.array([llm.embed(t, normalize=True) for t in TEXTS], dtype=np.float64)
    cos = np.sum(got * ref, axis=1)
    assert cos.min() >= THRESHOLDS[outtype], dict(zip(TEXTS, np.round(cos, 6)))


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["tiny", "odd"])
def test_llama_cpp_tokenization_matches_hf(shape, converted, hf_reference):
    tok, _ = hf_reference(shape)
    with _llama(converted(shape, "q8_0")) as llm:
        for text in TEXTS:
            hf_ids = tok(text)["input_ids"]
            ll_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
            assert ll_ids == hf_ids, text
            assert ll_ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
            assert ll_ids.count(ll_ids[-1]) == 1  # exactly one EOS, at the end
