#!/usr/bin/env python3
"""Regenerate the bundled random-weight test checkpoint ``models/tiny-qwen3-embedding/`` deterministically.

    python tools/make_tiny_model.py                 # rewrites models/tiny-qwen3-embedding/
    python tools/make_tiny_model.py --out DIR       # writes the same files into DIR

It trains a real byte-level BPE (Qwen2 pre-tokenizer regex, NFC normaliser, the Qwen3 added
tokens, the ``<|endoftext|>`` TemplateProcessing post-processor) on a seeded synthetic multilingual
corpus, writes the sentence-transformers side files, and random bf16 weights with the Qwen3 layout.
The weights are random: the model is NON-SEMANTIC and exists only to exercise the pipeline.

Needs qembed-gguf installed (for ``qembed_gguf.synthetic`` and ``qembed_gguf.realvocab``) and the
``tokenizers`` package (in the ``test`` extra); the runtime never imports this script.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
from pathlib import Path

# the Qwen3 tokenizer facts (split regex, added tokens, tokenizer_config.json) live in one place
from qembed_gguf.realvocab import QWEN2_PATTERN, QWEN3_ADDED, qwen3_tokenizer_config

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "tiny-qwen3-embedding"

VOCAB_SIZE = 4096  # BPE vocabulary + the 26 added tokens
DEFAULT_TASK = "Given a web search query, retrieve relevant passages that answer the query"

LEXICON = {
    "en": ("the of and to in is that for it as was with be by on not he this are or his from at which but have "
           "an they you were her she there been one all we their has would when if so no will more can said what "
           "about up out them into just time people year some could good new like other than then now look only "
           "come its over think also back after use two how our work first well way even want because any these "
           "give day most us search query document embedding model vector index retrieve passage answer language "
           "machine learning quantized laptop offline semantic similarity cluster database memory token context "
           "weather river mountain city music history science ocean forest garden kitchen coffee train").split(),
    "zh": list("的一是不了在人有我他这个们中来上大为和国地到以说时要就出会可也你对生能而子那得于着下自之年过发后作里"
               "用道行所然家种事成方多经么去法学如都同现当没动面起看定天分还进好小部其些主样理心她本前开但因只从想实"
               "日军者意无力它与长把机十民第公此已工使情明性知全三又关点正业外将两高间由问很最重并物手应战向头文体政"
               "搜索查询文档向量模型检索语言机器学习量化嵌入相似"),
    "ja": ("これ それ あれ わたし あなた 日本 東京 言語 検索 文書 質問 答え モデル ベクトル 学習 機械 です ます した "
           "する ある いる なる こと もの ため よう さん 今日 明日 天気 電車 コーヒー 音楽 歴史 科学").split(),
    "ko": ("이 그 저 나 너 우리 한국 서울 언어 검색 문서 질문 대답 모델 벡터 학습 기계 입니다 습니다 했다 하다 "
           "있다 없다 되다 것 수 때 사람 오늘 내일 날씨 기차 커피 음악 역사 과학").split(),
    "ru": ("и в не на я быть он с что а по это она этот к но они мы как из у который то за свой весь год от так о "
           "для ты же все тот мочь вы человек такой его сказать только или еще бы себя один поиск запрос документ "
           "вектор модель язык машина обучение погода город музыка история наука").split(),
    "code": ("def return import from class self if else elif for while in not and or None True False print len "
             "range list dict str int float numpy np array x y i j k = == != < > <= >= + - * / // % ( ) [ ] { } : , . "
             "-> fn let mut const var function => ; && || pub struct impl async await").split(),
    "emoji": list("😀😃😄😁😆😅😂🤣😊😇🙂🙃😉😌😍🥰😘🚀🌍🌟🔥💡📚✅❌🦙🐍🎉👍👋🙏"),
}


def corpus(seed: int = 0, n_lines: int = 6000) -> list[str]:
    """A seeded synthetic multilingual corpus: random 'sentences' over the lexicons above."""
    rng = random.Random(seed)
    langs = sorted(LEXICON)
    lines = []
    for _ in range(n_lines):
        lang = rng.choice(langs)
        words = [rng.choice(LEXICON[lang]) for _ in range(rng.randint(3, 18))]
        sep = "" if lang == "zh" else " "
        line = sep.join(words)
        if lang == "en" and rng.random() < 0.5:
            line = line.capitalize() + rng.choice([".", "?", "!", "'s", " 42.", " (2026)."])
        if rng.random() < 0.1:
            line += " " + rng.choice(LEXICON["emoji"])
        if rng.random() < 0.1:
            line += "\n" + " " * rng.randint(0, 8) + str(rng.randint(0, 10 ** rng.randint(1, 6)))
        lines.append(line)
    return lines


def train_tokenizer(lines: list[str] | None = None, vocab_size: int = VOCAB_SIZE):
    """A Qwen3-style byte-level BPE of ``vocab_size`` tokens (the 26 added ones included) trained on
    ``lines`` (default: the seeded synthetic corpus)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(QWEN3_ADDED), min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(corpus() if lines is None else lines, trainer)
    n_bpe = tok.get_vocab_size()
    if n_bpe != vocab_size - len(QWEN3_ADDED):
        raise SystemExit(f"corpus too small: BPE vocabulary has {n_bpe} tokens")
    for content, special in QWEN3_ADDED:
        added = AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False, rstrip=False)
        (tok.add_special_tokens if special else tok.add_tokens)([added])
    eos_id = tok.token_to_id("<|endoftext|>")
    assert eos_id == n_bpe, (eos_id, n_bpe)
    tok.post_processor = processors.TemplateProcessing(
        single="$A:0 <|endoftext|>:0",
        pair="$A:0 <|endoftext|>:0 $B:1 <|endoftext|>:1",
        special_tokens=[("<|endoftext|>", eos_id)],
    )
    return tok


def tokenizer_config(tok) -> dict:
    return qwen3_tokenizer_config(tok.token_to_id("<|endoftext|>"), model_max_length=131072)


def write_side_files(out_dir: Path, tok, *, hidden: int, readme: str) -> None:
    """(Re)create ``out_dir`` with the tokenizer and the sentence-transformers files of a checkpoint
    (LAST pooling, normalised, the Qwen3 query prompt), everything but the weights and config.json."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (out_dir / "1_Pooling").mkdir(parents=True)
    tok.save(str(out_dir / "tokenizer.json"), pretty=False)
    write_json = lambda name, obj: (out_dir / name).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", "utf-8")  # noqa: E731
    write_json("tokenizer_config.json", tokenizer_config(tok))
    write_json("modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ])
    write_json("1_Pooling/config.json", {
        "word_embedding_dimension": hidden, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": True, "include_prompt": True,
    })
    write_json("sentence_bert_config.json", {"max_seq_length": 8192, "do_lower_case": False})
    write_json("config_sentence_transformers.json", {
        "prompts": {"query": f"Instruct: {DEFAULT_TASK}\nQuery:", "document": ""},
        "default_prompt_name": None, "similarity_fn_name": "cosine",
    })
    (out_dir / "2_Normalize").mkdir()
    (out_dir / "2_Normalize" / ".keep").write_text("")
    (out_dir / "README.md").write_text(readme, "utf-8")


README = """\
# tiny-qwen3-embedding — NON-SEMANTIC test model

Random weights with the real Qwen3-Embedding layout (hidden 256, 2 layers, 4/2 heads, head_dim 64,
FFN 768) and a real byte-level BPE tokenizer (4,096 tokens, Qwen2 pre-tokenizer, Qwen3 added
tokens, `<|endoftext|>` appended by a TemplateProcessing post-processor), trained on a synthetic
multilingual corpus. Its vectors carry NO meaning: it exists so that qembed-gguf's tests
run offline. Regenerate with `python tools/make_tiny_model.py`.
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output folder (default: {OUT.relative_to(ROOT)})")
    out_dir = ap.parse_args().out
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from qembed_gguf.synthetic import SHAPES, write_checkpoint

    tok = train_tokenizer()
    write_side_files(out_dir, tok, hidden=SHAPES["tiny"].hidden, readme=README)
    write_checkpoint(out_dir, SHAPES["tiny"], tokenizer_from=out_dir, seed=0, name="tiny-qwen3-embedding")
    logging.info("wrote %s", out_dir)


if __name__ == "__main__":
    main()
