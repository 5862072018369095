"""``Embedder.tokenize`` / ``detokenize`` and the server's ``POST /tokenize`` / ``POST /detokenize``.

References: HF ``tokenizers`` on the checkpoint's own tokenizer.json (its post-processor appends
``<|endoftext|>``), on the bundled tiny model and on the real 151,669-token Qwen3 vocabulary.
"""

from __future__ import annotations

import json
import threading
import time
import unicodedata

import httpx
import numpy as np
import pytest

from qembed_gguf import Embedder, InputError, InputTypeError, InvalidTextError, registry
from qembed_gguf.server import Limits, ServerConfig

from test_realvocab_embedder import MULTILINGUAL, N_VOCAB

tokenizers = pytest.importorskip("tokenizers")

KEY = "tokens-key"
# the probe set of the real-vocabulary tests, plus added tokens that are not special (matched as
# tokens, as HF does), spaces before punctuation (which llama.cpp's detokenizer could "clean"),
# control characters
PROBES = MULTILINGUAL + ["<think>\nhi</think> <tool_call>x", "a . b , c ! d ? 's n't", "x\x00y\x01\r \ufeffbom"]
EOS_TEXT = "<|endoftext|>"


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _hf_ids(tok, text: str) -> list[int]:
    """HF tokenizers' ids, special-token text typed by a user left as text (encode_special_tokens):
    the Embedder's rule; for text without it, plain ``encode(text).ids``."""
    tok.encode_special_tokens = "<|" in text
    try:
        return tok.encode(text).ids
    finally:
        tok.encode_special_tokens = False


@pytest.fixture(scope="module")
def tiny():
    with Embedder("tiny") as e:
        yield e


@pytest.fixture(scope="module")
def tiny_hf():
    return tokenizers.Tokenizer.from_file(str(registry.bundled_dir(registry.get_spec("tiny")) / "tokenizer.json"))


@pytest.fixture(scope="module")
def real(realvocab_gguf):
    with Embedder(realvocab_gguf("f16")) as e:
        yield e


@pytest.fixture(scope="module")
def real_hf(realvocab_ckpt):
    return tokenizers.Tokenizer.from_file(str(realvocab_ckpt / "tokenizer.json"))


@pytest.fixture(params=["tiny", "real"])
def pair(request):
    """(Embedder, HF tokenizer) of one vocabulary."""
    return request.getfixturevalue(request.param), request.getfixturevalue(request.param + "_hf")


# -- the library ------------------------------------------------------------------------------------
def test_tokenize_equals_hf_tokenizers(pair):
    e, tok = pair
    assert e.n_vocab == tok.get_vocab_size(with_added_tokens=True)
    got = e.tokenize(PROBES)
    for i, text in enumerate(PROBES):
        if "<|" not in text:
            assert got[i] == tok.encode(text).ids, (i, text[:40])
        assert got[i] == _hf_ids(tok, text), (i, text[:40])
        assert got[i][-1] == e.pooling_token_id and got[i].count(e.pooling_token_id) == 1
    assert got == e.prepare_texts(PROBES)
    assert [len(ids) for ids in got] == e.count_tokens(PROBES)
    assert e.tokenize(PROBES[1]) == [got[1]]  # one string: a list of one list
    assert e.tokenize([]) == []


def test_real_vocabulary_is_the_real_one(real):
    assert real.n_vocab == N_VOCAB and real.pooling_token_id == 151643
    assert real.tokenize("hello world") == [[14990, 1879, 151643]]
    assert real.tokenize("<think>")[0][0] == 151667  # an added token that is not special


def test_detokenize_round_trip(pair):
    """``detokenize(tokenize(t)[0][:-1]) == NFC(t)`` for every probe text, typed special-token text
    included (it was tokenized as text); HF tokenizers decodes the same ids to the same text."""
    e, tok = pair
    for text, ids in zip(PROBES, e.tokenize(PROBES)):
        assert e.detokenize(ids[:-1]) == _nfc(text), text[:40]
        assert e.detokenize(ids) == _nfc(text) + EOS_TEXT  # the pooling token rendered as its text
        assert e.detokenize(ids) == tok.decode(ids, skip_special_tokens=False), text[:40]
    assert e.detokenize([]) == ""
    assert e.detokenize(np.array(ids, dtype=np.int64)) == e.detokenize(tuple(ids))


def test_detokenize_renders_special_tokens_and_cut_characters(real, real_hf):
    assert real.detokenize([151644, 151645, 151643]) == "<|im_start|><|im_end|><|endoftext|>"
    typed = real.tokenize("<|im_start|>")[0]
    assert typed[0] != 151644 and real.detokenize(typed[:-1]) == "<|im_start|>"  # text stays text
    # ids that split a character: U+FFFD, as HF tokenizers decodes them
    split = real.tokenize("𠀀")[0][:-1]  # three byte tokens
    assert len(split) == 3 and real.detokenize(split) == "𠀀"
    for k in (1, 2):
        assert real.detokenize(split[:k]) == real_hf.decode(split[:k]) == "\ufffd"
    # three continuation bytes, then the character: one U+FFFD per byte that starts no character
    assert real.detokenize(split[1:] + split) == real_hf.decode(split[1:] + split) == "\ufffd" * 3 + "𠀀"
    # random ids of the whole vocabulary (special ones included): the same text as HF tokenizers'
    rng = np.random.default_rng(0)
    for _ in range(20):
        ids = rng.integers(0, N_VOCAB, size=int(rng.integers(1, 40))).tolist()
        assert real.detokenize(ids) == real_hf.decode(ids, skip_special_tokens=False), ids
    # pieces far longer than 4 bytes a token: the buffer is grown
    long_ids = real.tokenize("=" * 4096 + " " * 4096)[0]
    assert len(long_ids) * 4 + 64 < 8192 + len(EOS_TEXT)
    assert real.detokenize(long_ids) == "=" * 4096 + " " * 4096 + EOS_TEXT


@pytest.mark.parametrize("texts, error, where", [
    (["ok", 3], InputTypeError, "texts[1]"),
    (["ok", None], InputTypeError, "texts[1]"),
    (b"bytes", InputTypeError, "texts must be"),
    (["ok", "bad \ud800"], InvalidTextError, "texts[1]"),
])
def test_tokenize_errors(tiny, texts, error, where):
    with pytest.raises(error, match=where.replace("[", r"\[")) as err:
        tiny.tokenize(texts)
    if error is InvalidTextError:
        assert (err.value.index, err.value.position) == (1, 4)


@pytest.mark.parametrize("ids, error, where", [
    ([1, 2, 4096], InputError, r"ids\[2\] = 4096 .*0\.\.4095"),
    ([5, -1], InputError, r"ids\[1\] = -1"),
    ([True], InputTypeError, r"ids\[0\] is bool"),
    ([1, 2.0], InputTypeError, r"ids\[1\] is float"),
    ([[1, 2]], InputTypeError, r"ids\[0\] is list.*one sequence"),
    ("abc", InputTypeError, "ids must be a sequence"),
    (np.array([1.0]), InputTypeError, "ids must be a sequence"),
    (None, InputTypeError, "ids must be a sequence"),
])
def test_detokenize_errors(tiny, ids, error, where):
    with pytest.raises(error, match=where):
        tiny.detokenize(ids)


def test_a_closed_embedder_refuses():
    e = Embedder("tiny")
    e.close()
    for call in (lambda: e.tokenize("x"), lambda: e.detokenize([1])):
        with pytest.raises(InputError, match="closed"):
            call()


# -- the server -----------------------------------------------------------------------------------
@pytest.fixture
def served(live_app, tiny):
    return live_app(tiny, ServerConfig(model_names=("tiny", "alias"), api_key=KEY,
                                       limits=Limits(max_inputs=12, max_body_bytes=100_000, max_request_tokens=3000)))


def _post(url: str, path: str, body=None, *, key: str | None = KEY, raw: bytes | None = None,
          content_type: str = "application/json") -> httpx.Response:
    headers = {"Content-Type": content_type, **({"Authorization": f"Bearer {key}"} if key else {})}
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers=headers, timeout=30)


def test_server_round_trip(served, tiny):
    texts = MULTILINGUAL[:11]  # + one empty sequence: max_inputs
    r = _post(served, "/tokenize", {"model": "tiny", "input": texts})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    tokens = r.json()["tokens"]
    assert tokens == tiny.tokenize(texts) and set(r.json()) == {"tokens"}
    assert _post(served, "/tokenize", {"model": "alias", "input": texts[1]}).json() == {"tokens": [tokens[1]]}
    r = _post(served, "/detokenize", {"model": "tiny", "tokens": [t[:-1] for t in tokens] + [[]]})
    assert r.status_code == 200 and r.json() == {"text": [_nfc(t) for t in texts] + [""]}
    flat = _post(served, "/detokenize", {"model": "tiny", "tokens": tokens[0]})  # a flat list: one sequence
    assert flat.json() == {"text": [texts[0] + EOS_TEXT]}


@pytest.mark.parametrize("path, body, status, param, code", [
    ("/tokenize", {"model": "nope", "input": "x"}, 404, "model", "model_not_found"),
    ("/tokenize", {"input": "x"}, 400, "model", "missing_required_parameter"),
    ("/tokenize", {"model": "tiny"}, 400, "input", "missing_required_parameter"),
    ("/tokenize", {"model": "tiny", "input": 3}, 400, "input", "invalid_type"),
    ("/tokenize", {"model": "tiny", "input": []}, 400, "input", "invalid_value"),
    ("/tokenize", {"model": "tiny", "input": ["a", 3]}, 400, "input[1]", "invalid_type"),
    ("/tokenize", {"model": "tiny", "input": ["a", [1]]}, 400, "input[1]", "invalid_type"),
    ("/tokenize", {"model": "tiny", "input": ["a"] * 13}, 400, "input", "too_many_inputs"),
    ("/detokenize", {"model": "nope", "tokens": [1]}, 404, "model", "model_not_found"),
    ("/detokenize", {"model": "tiny"}, 400, "tokens", "missing_required_parameter"),
    ("/detokenize", {"model": "tiny", "tokens": "1 2"}, 400, "tokens", "invalid_type"),
    ("/detokenize", {"model": "tiny", "tokens": []}, 400, "tokens", "invalid_value"),
    ("/detokenize", {"model": "tiny", "tokens": [1, 4096]}, 400, "tokens", "invalid_value"),
    ("/detokenize", {"model": "tiny", "tokens": [1, -1]}, 400, "tokens", "invalid_value"),
    ("/detokenize", {"model": "tiny", "tokens": [True]}, 400, "tokens", "invalid_type"),
    ("/detokenize", {"model": "tiny", "tokens": [1, 2.0]}, 400, "tokens", "invalid_type"),
    ("/detokenize", {"model": "tiny", "tokens": [[1], [2, 4096]]}, 400, "tokens[1]", "invalid_value"),
    ("/detokenize", {"model": "tiny", "tokens": [[1], 2]}, 400, "tokens[1]", "invalid_type"),
    ("/detokenize", {"model": "tiny", "tokens": [[1], [None]]}, 400, "tokens[1]", "invalid_type"),
    ("/detokenize", {"model": "tiny", "tokens": [[1]] * 13}, 400, "tokens", "too_many_inputs"),
    ("/detokenize", {"model": "tiny", "tokens": [[1] * 1000] * 3 + [[2]]}, 400, "tokens", "max_tokens_per_request"),
    ("/detokenize", ["not", "an", "object"], 400, None, "invalid_json"),
])
def test_server_bad_requests(served, path, body, status, param, code):
    r = _post(served, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    if param and "[" in param:
        assert param in error["message"]


def test_server_refuses_broken_json_text(served):
    r = _post(served, "/tokenize", raw=b'{"model": "tiny", "input": ["a", "b \\ud800"]}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"
    assert "lone surrogate" in r.json()["error"]["message"]
    r = _post(served, "/detokenize", raw=b'{"model": "tiny", "tokens": [1], "x": NaN}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = _post(served, "/tokenize", raw=b'{"model": "tiny", "input": ')
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


CALLS = (("/tokenize", {"model": "tiny", "input": "x"}), ("/detokenize", {"model": "tiny", "tokens": [1]}))


def test_server_key_media_type_and_method(served):
    for path, body in CALLS:
        for key in (None, "wrong"):
            r = _post(served, path, body, key=key)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = _post(served, path, body, content_type="text/plain")
        assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
        r = httpx.get(served + path, headers={"Authorization": f"Bearer {KEY}"})
        assert r.status_code == 405
    assert httpx.post(served + "/v1/tokenize", json={}, headers={"Authorization": f"Bearer {KEY}"}).status_code == 404


def test_tokenization_waits_off_the_event_loop(live_app):
    """While the Embedder's lock is held (as by a long decode call), a /tokenize request waits in a
    worker thread: the server keeps answering; then the request completes."""
    with Embedder("tiny") as e:
        url = live_app(e, ServerConfig(model_names=("tiny",)))
        answers: dict[str, httpx.Response] = {}
        with e._lock:
            thread = threading.Thread(target=lambda: answers.setdefault(
                "r", _post(url, "/tokenize", {"model": "tiny", "input": "waits"}, key=None)))
            thread.start()
            time.sleep(0.3)  # the request is in, waiting for the lock
            assert "r" not in answers
            start = time.monotonic()
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            assert time.monotonic() - start < 2
        thread.join(30)
        assert answers["r"].json() == {"tokens": e.tokenize("waits")}


def test_an_unloaded_model_is_503(live_app):
    e = Embedder("tiny")
    url = live_app(e, ServerConfig(model_names=("tiny",)))
    assert _post(url, "/detokenize", {"model": "tiny", "tokens": [1]}, key=None).status_code == 200
    e.close()
    for path, body in CALLS:
        r = _post(url, path, body, key=None)
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_unloaded"
