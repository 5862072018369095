"""The Embedder on a checkpoint with the REAL 151,669-token Qwen3 vocabulary and tokenizer (hidden 256,
random weights): token ids, fidelity to HF transformers, batching, long inputs spread over several
llama.cpp micro-batches, and the proof that the 151,669-wide logits matmul is not computed.

References are independent of the code under test: HF ``tokenizers``/``transformers`` on the same
checkpoint folder, and llama-cpp-python's own embedding mode for the compute buffer it reports.
"""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import TEXTS

llama_cpp = pytest.importorskip("llama_cpp")

# TEXTS plus what the tokenizer is easiest to get wrong: other scripts, decomposed accents (the
# official normaliser composes them: NFC), digits, whitespace runs, long repeats
MULTILINGUAL = TEXTS + [
    "مرحبا بالعالم، هذا اختبار للغة العربية ١٢٣.",
    "नमस्ते दुनिया, यह हिंदी में एक परीक्षण है।",
    "cafe\u0301 \u1100\u1161\u11a8 e\u0301le\u0300ve Å ﬁ ｆｕｌｌｗｉｄｔｈ",
    "👨‍👩‍👧‍👦 🇯🇵🇫🇷 👍🏽 ❤️",
    "0 12 345 6789 3.14159 1e-10 0x1F 1,000,000",
    "\t\tindented\n\n\n\n    four spaces\r\n\r\nwindows\u00a0nbsp\u3000ideographic   ",
    "fn main() {\n\tlet v: Vec<u8> = vec![0xFF; 16];\n}\n",
    "text with <|endoftext|> and <|im_end|> typed by a user",
    "a" * 700, "的" * 300, "=-" * 200, "😀" * 40,
]
THRESHOLDS = {"f16": 0.9999, "q8_0": 0.999}
N_VOCAB = 151669


@pytest.fixture(scope="module")
def hf(realvocab_ckpt):
    """HF tokenizer and last-token-pooled, normalised transformers vectors (float32) of the checkpoint."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    tok = transformers.AutoTokenizer.from_pretrained(realvocab_ckpt)
    model = transformers.AutoModel.from_pretrained(realvocab_ckpt, dtype=torch.float32).eval()
    cache: dict[str, np.ndarray] = {}

    def vector(text: str) -> np.ndarray:
        if text not in cache:
            ids = tok(text, return_tensors="pt", split_special_tokens=True)  # user text stays text
            assert ids["input_ids"][0, -1] == 151643
            with torch.no_grad():
                h = model(**ids).last_hidden_state[0, -1].double().numpy()
            cache[text] = h / np.linalg.norm(h)
        return cache[text]

    return tok, vector


@pytest.fixture(scope="module")
def embedder_f16(realvocab_gguf):
    from qembed_gguf import Embedder

    with Embedder(realvocab_gguf("f16")) as e:
        yield e


def test_token_ids_equal_hf_tokenizers(embedder_f16, hf):
    tok, _ = hf
    assert embedder_f16.n_vocab == N_VOCAB
    for i, text in enumerate(MULTILINGUAL):
        # special-token text typed by a user stays text (by design): HF's split_special_tokens
        want = tok(text, split_special_tokens=True)["input_ids"]
        if "<|" not in text:
            assert want == tok(text)["input_ids"]
        assert embedder_f16.prepare_texts([text])[0] == want, (i, text[:40])
        assert want[-1] == embedder_f16.pooling_token_id == 151643


@pytest.mark.parametrize("outtype", list(THRESHOLDS))
def test_vectors_match_transformers(outtype, realvocab_gguf, hf):
    from qembed_gguf import Embedder

    _, ref_vector = hf
    texts = [t for t in MULTILINGUAL if t]
    ref = np.stack([ref_vector(t) for t in texts])
    off_diagonal = (ref @ ref.T)[np.triu_indices(len(texts), 1)]
    assert off_diagonal.mean() < 0.5, "reference vectors too alike to test anything"
    with Embedder(realvocab_gguf(outtype)) as e:
        got = e.embed(texts).astype(np.float64)
    cos = np.sum(got * ref, axis=1)
    assert cos.min() >= THRESHOLDS[outtype], dict(zip((t[:20] for t in texts), np.round(cos, 6)))


def test_batched_equals_alone(embedder_f16):
    texts = MULTILINGUAL
    together = embedder_f16.embed(texts)
    alone = np.concatenate([embedder_f16.embed([t]) for t in texts])
    cos = np.sum(together * alone, axis=1)
    assert cos.min() >= 0.9995, np.round(cos, 6)


def test_long_inputs_over_several_micro_batches(realvocab_gguf, hf):
    """n_ubatch 32: a 789-token input takes 25 micro-batches (only the last has an output row), and
    one decode call of many inputs (batch_tokens 4096) spans micro-batches that hold no last token,
    one, or several; every row must come back to its own input."""
    from qembed_gguf import Embedder

    _, ref_vector = hf
    texts = [t for t in MULTILINGUAL if t] + [" ".join(MULTILINGUAL[:12]) * 4]
    ref = np.stack([ref_vector(t) for t in texts])
    with Embedder(realvocab_gguf("f16"), n_ubatch=32, max_tokens=4096) as e:
        lengths = e.count_tokens(texts)
        assert max(lengths) > 24 * 32
        one_call = e.embed(texts, batch_tokens=4096)
        assert e.stats.decode_calls == 1
        per_input = e.embed(texts)
    for got in (one_call, per_input):
        cos = np.sum(got.astype(np.float64) * ref, axis=1)
        assert cos.min() >= 0.9999, dict(zip(lengths, np.round(cos, 6)))


def test_no_logits_are_computed(embedder_f16):
    """The eval callback stops every graph at result_norm: llama.cpp never asked about the lm_head's
    node (had it, it would have computed it), and it did ask about the nodes before it."""
    tap = embedder_f16._runtime._tap
    before_asked, before_head = tap.nodes_asked, tap.head_asked
    embedder_f16.embed(["the lm_head must not run", "nor here " * 50])
    assert tap.nodes_asked > before_asked
    assert tap.head_asked == before_head == 0


_COMPUTE = re.compile(r"CPU compute buffer size\s*=\s*([0-9.]+) MiB")

_PROBE = r"""
import json, sys
from qembed_gguf import Embedder
import llama_cpp
path, which = sys.argv[1], sys.argv[2]
if which == "embedder":
    e = Embedder(path, n_threads=1, verbose=True)
    e.embed(["hello"])
else:  # llama-cpp-python's own embedding mode, the same micro-batch
    m = llama_cpp.Llama(path, embedding=True, n_ctx=512, n_batch=512, n_ubatch=512, n_threads=1, verbose=True)
    m.embed("hello")
"""


def _compute_buffer_mib(path, which: str, tmp_path) -> float:
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(path), which], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = [float(m) for m in _COMPUTE.findall(proc.stderr)]
    assert sizes, proc.stderr[-2000:]
    return max(sizes)


def test_compute_buffer_holds_no_full_logits_tensor(realvocab_gguf, tmp_path):
    """llama.cpp's reported compute buffer: an embedding context reserves a 512 x 151,669 float
    logits tensor (296 MiB); the Embedder's holds at most one logits row per sequence of a batch."""
    path = realvocab_gguf("q8_0")
    logits_mib = 512 * N_VOCAB * 4 / 2**20
    reference = _compute_buffer_mib(path, "llama-cpp-python", tmp_path)
    ours = _compute_buffer_mib(path, "embedder", tmp_path)
    assert reference >= logits_mib, (reference, logits_mib)  # the measurement can see the logits tensor
    assert ours < logits_mib / 4, (ours, reference)


def test_quiet_by_default_errors_still_shown(realvocab_gguf, tmp_path):
    """llama-cpp-python 0.3.36 maps ggml's log levels with an old numbering (its WARN is ggml's INFO,
    ggml's WARN lands on ERROR): loading the real vocabulary printed a llama.cpp warning however
    quiet. The Embedder's own callback keeps a quiet load quiet and a verbose one complete."""
    path = realvocab_gguf("q8_0")
    probe = "import sys; from qembed_gguf import Embedder; Embedder(sys.argv[1], verbose=sys.argv[2] == '1').embed(['x'])"
    quiet = subprocess.run([sys.executable, "-c", probe, str(path), "0"], capture_output=True, text=True,
                           timeout=300, cwd=tmp_path)
    loud = subprocess.run([sys.executable, "-c", probe, str(path), "1"], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert quiet.returncode == loud.returncode == 0, quiet.stderr[-2000:] + loud.stderr[-2000:]
    assert quiet.stderr.strip() == "", quiet.stderr[-2000:]
    assert "control-looking token" in loud.stderr and "compute buffer size" in loud.stderr
