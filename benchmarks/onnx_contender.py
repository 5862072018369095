#!/usr/bin/env python3
"""The "ONNX Runtime int8" contender of benchmarks/embed_bench.py: the path fastembed-style libraries
take on CPUs.

1. ``export_fp32``: the checkpoint folder's ``Qwen3Model`` (``AutoModel``, fp32) goes to ONNX through
   ``torch.onnx.export(..., dynamo=True)`` (torch.export + onnxscript; opset 20): inputs
   ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes), output
   ``last_hidden_state``. SDPA is decomposed into MatMul/Softmax, so attention materialises a
   batch x heads x seq x seq score tensor (see ``OnnxEmbedder``'s ``max_attention_mb``). Weights
   go to an external ``.data`` file when they would not fit a 2 GB protobuf.
2. ``export_int8``: ``onnxruntime.quantization.quantize_dynamic`` with ``QuantType.QInt8`` weights,
   per-channel (one scale per output column of each MatMul weight), on the MatMul and Gather
   (token embedding) nodes; activations are quantized per tensor at run time (uint8). Only
   MatMuls with a constant B are touched (ORT's default), so attention's Q.K^T and P.V stay fp32.
3. ``OnnxEmbedder``: onnxruntime's CPU provider, ``intra_op_num_threads=threads``; the folder's
   tokenizer.json (HF ``tokenizers``, whose post-processor appends ``<|endoftext|>``), inputs sorted
   by length into batches, right padding, the hidden state of each sequence's last real token
   (its ``<|endoftext|>``: last-token pooling), L2-normalised, returned in input order.

Both exports are cached in ``out_dir`` (``model.fp32.onnx``, ``model.int8.onnx``, each possibly with
a ``.data`` file beside it) and written atomically: a file that exists is complete.

    python benchmarks/onnx_contender.py FOLDER OUT_DIR --texts 20 --threads 2 --check
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger("onnx_contender")

FP32_NAME = "model.fp32.onnx"
INT8_NAME = "model.int8.onnx"
INPUTS = ["input_ids", "attention_mask"]
OUTPUT = "last_hidden_state"
EOS = "<|endoftext|>"
# a protobuf is capped at 2 GiB; stay well below it (the graph itself and the other fields need room)
_PROTOBUF_BUDGET = 1_800_000_000


# -- export -------------------------------------------------------------------------------------------------
def _config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text("utf-8"))


def _param_count(cfg: dict) -> int:
    """Parameters of a Qwen3Model (no lm_head) from its config.json."""
    h, layers, vocab, ffn = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["vocab_size"], cfg["intermediate_size"]
    hd = cfg.get("head_dim") or h // cfg["num_attention_heads"]
    q, kv = cfg["num_attention_heads"] * hd, cfg["num_key_value_heads"] * hd
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * ffn + 2 * h + 2 * hd
    return vocab * h + layers * per_layer + h


def _metadata(folder: Path, cfg: dict) -> dict[str, str]:
    return {
        "qembed.source": str(folder.resolve()),
        "qembed.hidden_size": str(cfg["hidden_size"]),
        "qembed.num_attention_heads": str(cfg["num_attention_heads"]),
        "qembed.num_hidden_layers": str(cfg["num_hidden_layers"]),
        "qembed.vocab_size": str(cfg["vocab_size"]),
        "qembed.pooling": "last",
    }


def _publish(tmp_dir: Path, out_dir: Path, name: str) -> Path:
    """Move ``tmp_dir/name`` (and its ``.data``) into ``out_dir``: the data first, the .onnx last."""
    data = tmp_dir / f"{name}.data"
    if data.exists():
        os.replace(data, out_dir / data.name)
    else:  # a stale .data from an earlier external-data export would only mislead
        (out_dir / f"{name}.data").unlink(missing_ok=True)
    os.replace(tmp_dir / name, out_dir / name)
    return out_dir / name


def _check_source(path: Path, folder: Path) -> None:
    """Warn when a cached export was made from another checkpoint folder (its metadata says which)."""
    import onnx

    try:
        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    except Exception as exc:  # noqa: BLE001 - a cache check must not break the run
        log.warning("could not read %s's metadata: %s", path, exc)
        return
    source = props.get("qembed.source")
    if source and source != str(folder.resolve()):
        log.warning("%s was exported from %s, not %s; delete it to re-export", path, source, folder)


class _DropRootInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:  # ...but its advice to pre-process is not for us
            return "pre-processing before quantization" not in record.getMessage()
        return False


@contextlib.contextmanager
def _quiet_exporters():
    """The exporter's and quantizer's INFO chatter (one line per deduplicated initializer, per skipped
    MatMul, ...; the quantizer logs on the root logger itself) stays out of a caller's INFO log."""
    levels = {"onnx_ir": logging.WARNING, "onnxscript": logging.WARNING, "torch.export": logging.WARNING,
              "torch._export": logging.WARNING, "torch.onnx": logging.ERROR}  # ERROR: "torchvision is not installed"
    saved = {n: logging.getLogger(n).level for n in levels}
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
    root_filter = _DropRootInfo()
    logging.getLogger().addFilter(root_filter)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*axis name.*will not be used")
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logging.getLogger().removeFilter(root_filter)
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def _onnx_bytes(path: Path) -> int:
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


def _last_hidden_wrapper(model):
    """Qwen3Model as a module with exactly (input_ids, attention_mask) -> last_hidden_state."""
    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    return LastHidden(model).eval()


def _reusable(out: Path, folder: Path) -> bool:
    """An export already in place (exports are published atomically: one that exists is complete)."""
    if not out.exists():
        return False
    log.info("reusing %s", out)
    _check_source(out, folder)
    return True


def export_fp32(folder: str | Path, out_dir: str | Path) -> Path:
    """``out_dir/model.fp32.onnx``: the checkpoint's Qwen3Model in fp32 (reused when it exists)."""
    folder, out_dir = Path(folder), Path(out_dir)
    out = out_dir / FP32_NAME
    if _reusable(out, folder):
        return out
    import torch
    from transformers import AutoModel

    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = _config(folder)
    external = _param_count(cfg) * 4 > _PROTOBUF_BUDGET
    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()
    if type(model).__name__ != "Qwen3Model":
        log.warning("AutoModel loaded %s, not Qwen3Model", type(model).__name__)
    wrapper = _last_hidden_wrapper(model)
    # a right-padded batch of two: the traced graph sees a real mask; both axes are symbolic
    ids = torch.randint(0, min(cfg["vocab_size"], 1000), (2, 8), dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    log.info("exporting %s to ONNX fp32 (torch %s, dynamo exporter, external data: %s)", folder, torch.__version__,
             external)
    with torch.no_grad(), _quiet_exporters():
        program = torch.onnx.export(
            wrapper, (ids, mask), None, input_names=INPUTS, output_names=[OUTPUT],
            dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}},
            dynamo=True, external_data=external, optimize=True, verify=False, verbose=False,
        )
    for key, value in _metadata(folder, cfg).items():
        program.model.metadata_props[key] = value
    tmp_dir = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        program.save(tmp_dir / FP32_NAME, external_data=external)
        del program, wrapper, model
        gc.collect()
        _publish(tmp_dir, out_dir, FP32_NAME)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("wrote %s (%.0f MB) in %.1f s", out, _onnx_bytes(out) / 1e6, time.perf_counter() - t0)
    return out


def export_int8(folder: str | Path, out_dir: str | Path, *, per_channel: bool = True,
                op_types: Sequence[str] = ("MatMul", "Gather"), keep_fp32: bool = True) -> Path:
    """``out_dir/model.int8.onnx``: the fp32 export, dynamically quantized (QInt8 weights).

    Reused when it exists (the fp32 export is not even looked at then). ``keep_fp32=False``
    deletes the fp32 export once the int8 one is written.
    """
    folder, out_dir = Path(folder), Path(out_dir)
    out = out_dir / INT8_NAME
    if _reusable(out, folder):
        return out
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = export_fp32(folder, out_dir)
    # int8 MatMul weights; the embedding is int8 too when Gather is quantized
    external = _param_count(_config(folder)) * (1 if "Gather" in op_types else 2) > _PROTOBUF_BUDGET
    t0 = time.perf_counter()
    log.info("quantizing %s to int8 (per-channel: %s, ops: %s, external data: %s)", fp32, per_channel,
             ",".join(op_types), external)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".quant-", dir=out_dir))
    try:
        tmp = tmp_dir / INT8_NAME
        with _quiet_exporters():
            quantize_dynamic(fp32, tmp, op_types_to_quantize=list(op_types), per_channel=per_channel,
                             reduce_range=False, weight_type=QuantType.QInt8, use_external_data_format=external)
        gc.collect()
        # quantize_dynamic keeps the model's metadata_props; make sure, without loading the weights
        proto = onnx.load(str(tmp), load_external_data=False)
        have = {p.key for p in proto.metadata_props}
        missing = {k: v for k, v in _metadata(folder, _config(folder)).items() if k not in have}
        if missing:
            onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props}, **missing})
            onnx.save(proto, str(tmp))
        del proto
        _publish(tmp_dir, out_dir, INT8_NAME)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    log.info("wrote %s (%.0f MB) in %.1f s", out, _onnx_bytes(out) / 1e6, time.perf_counter() - t0)
    if not keep_fp32:
        fp32.unlink(missing_ok=True)
        fp32.with_name(fp32.name + ".data").unlink(missing_ok=True)
    return out


# -- embedding ----------------------------------------------------------------------------------------------
class OnnxEmbedder:
    """Last-token-pooled, L2-normalised embeddings from an exported Qwen3Model, on onnxruntime's CPU provider.

    ``batch_size`` caps the sequences per ``session.run``; ``max_attention_mb`` caps the batch's
    attention score tensor (batch x heads x seq^2 x 4 bytes, one per layer at a time), so a batch
    of long texts is split further (a single text over the cap still runs, alone).
    """

    def __init__(self, onnx_path: str | Path, tokenizer_json: str | Path, threads: int = 1, batch_size: int = 32,
                 *, max_attention_mb: float | None = 1024.0):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {batch_size}")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        inputs = {i.name: i for i in self.session.get_inputs()}
        if set(inputs) != set(INPUTS):
            raise ValueError(f"{onnx_path}: inputs {sorted(inputs)}, expected {INPUTS}")
        self._dtypes = {n: np.int32 if inputs[n].type == "tensor(int32)" else np.int64 for n in INPUTS}
        meta = self.session.get_modelmeta().custom_metadata_map
        hidden = self.session.get_outputs()[0].shape[-1]
        self.dim = int(hidden) if isinstance(hidden, int) else int(meta["qembed.hidden_size"])
        self.heads = int(meta.get("qembed.num_attention_heads", 32))
        self.batch_size = int(batch_size)
        self.max_attention_mb = max_attention_mb

        self._tok = Tokenizer.from_file(str(tokenizer_json))
        self._tok.no_padding()
        self._tok.no_truncation()
        eos = self._tok.token_to_id(EOS)
        if eos is None:
            raise ValueError(f"{tokenizer_json} has no {EOS} token")
        self.eos_id = eos
        self._warned_eos = False

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids as the model sees them: ending in ``<|endoftext|>`` (appended if the tokenizer did not)."""
        out = []
        for enc in self._tok.encode_batch(list(texts), add_special_tokens=True):
            ids = list(enc.ids)
            if not ids or ids[-1] != self.eos_id:
                if not self._warned_eos:
                    log.warning("the tokenizer did not append %s; appending it", EOS)
                    self._warned_eos = True
                ids.append(self.eos_id)
            out.append(ids)
        return out

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Indices sorted by length, cut into batches of at most batch_size (and the attention cap)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        cap = None if self.max_attention_mb is None else self.max_attention_mb * 1e6 / (4.0 * self.heads)
        batches: list[list[int]] = []
        cur: list[int] = []
        for i in order:
            longest = lengths[i]  # ascending order: the newcomer is the longest
            if cur and (len(cur) >= self.batch_size or (cap is not None and (len(cur) + 1) * longest ** 2 > cap)):
                batches.append(cur)
                cur = []
            cur.append(i)
        if cur:
            batches.append(cur)
        return batches

    def embed_ids(self, ids: Sequence[Sequence[int]]) -> np.ndarray:
        """Embeddings of pre-tokenized inputs (each already ending in ``<|endoftext|>``)."""
        lengths = [len(x) for x in ids]
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for batch in self._batches(lengths):
            width = max(lengths[i] for i in batch)
            input_ids = np.full((len(batch), width), self.eos_id, dtype=self._dtypes["input_ids"])
            mask = np.zeros((len(batch), width), dtype=self._dtypes["attention_mask"])
            for row, i in enumerate(batch):  # right padding: positions 0..n-1 as in an unpadded run
                input_ids[row, :lengths[i]] = ids[i]
                mask[row, :lengths[i]] = 1
            (hidden,) = self.session.run([OUTPUT], {"input_ids": input_ids, "attention_mask": mask})
            last = hidden[np.arange(len(batch)), np.asarray([lengths[i] - 1 for i in batch])].astype(np.float32)
            norms = np.linalg.norm(last, axis=1, keepdims=True)
            out[batch] = last / np.maximum(norms, 1e-12)
        return out

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), hidden) float32, L2-normalised, in input order."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_ids(self.tokenize(texts))


# -- reference (for --check) ----------------------------------------------------------------------------------
def hf_reference(folder: str | Path, texts: Sequence[str], tokenizer_json: str | Path | None = None) -> np.ndarray:
    """HF transformers fp32, one unpadded text at a time: last-token hidden state, L2-normalised."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoModel

    folder = Path(folder)
    tok = Tokenizer.from_file(str(tokenizer_json or folder / "tokenizer.json"))
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([tok.encode(text).ids])
            h = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).last_hidden_state[0, -1]
            out.append(torch.nn.functional.normalize(h, dim=0).numpy())
    return np.stack(out).astype(np.float32)


def _demo_texts(n: int, seed: int = 0) -> list[str]:
    words = ("the quick brown fox jumps over lazy dogs while embedding models read long documents about "
             "quantization retrieval and search le renard brun saute 敏捷的 棕色 狐狸 def embed(x): return 42").split()
    rng = np.random.default_rng(seed)
    return [" ".join(words[j] for j in rng.integers(len(words), size=int(k)))
            for k in np.exp(rng.uniform(np.log(1), np.log(200), n)).round()]


def _peak_rss_mb() -> float:
    """VmHWM: this address space's peak (ru_maxrss would carry a parent's RSS over fork + exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="a Qwen3-Embedding checkpoint folder")
    p.add_argument("out_dir", type=Path, help="where model.fp32.onnx / model.int8.onnx go (cached)")
    p.add_argument("--texts", type=int, default=20, help="demo texts to embed (default 20)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales instead of per-channel")
    p.add_argument("--check", action="store_true", help="cosine vs HF transformers fp32 (fp32 and int8 exports)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    log.setLevel(logging.INFO)

    t = time.perf_counter()
    fp32 = export_fp32(args.folder, args.out_dir)
    t_fp32 = time.perf_counter() - t
    t = time.perf_counter()
    int8 = export_int8(args.folder, args.out_dir, per_channel=not args.per_tensor)
    t_int8 = time.perf_counter() - t
    print(f"fp32 export {t_fp32:.1f} s ({_onnx_bytes(fp32) / 1e6:.0f} MB), int8 quantization {t_int8:.1f} s "
          f"({_onnx_bytes(int8) / 1e6:.0f} MB), peak RSS so far {_peak_rss_mb():.0f} MB")

    texts = _demo_texts(args.texts)
    tok_json = args.folder / "tokenizer.json"
    results = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        emb = OnnxEmbedder(path, tok_json, threads=args.threads, batch_size=args.batch_size)
        tokens = sum(len(x) for x in emb.tokenize(texts))
        emb.embed(texts[:2])
        t = time.perf_counter()
        results[name] = emb.embed(texts)
        sec = time.perf_counter() - t
        print(f"{name}: {len(texts)} texts, {tokens} tokens in {sec:.2f} s = {tokens / sec:.0f} tokens/s "
              f"({args.threads} threads, batch {args.batch_size}); finite: {bool(np.isfinite(results[name]).all())}")
        del emb
    cos = np.sum(results["fp32"] * results["int8"], axis=1)
    print(f"cosine int8 vs ONNX fp32: min {cos.min():.5f} mean {cos.mean():.5f}")
    if args.check:
        ref = hf_reference(args.folder, texts)
        for name in ("fp32", "int8"):
            c = np.sum(ref * results[name], axis=1)
            print(f"cosine ONNX {name} vs HF fp32: min {c.min():.6f} (1 - min = {1 - c.min():.1e}) mean {c.mean():.6f}")
    print(f"peak RSS {_peak_rss_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
