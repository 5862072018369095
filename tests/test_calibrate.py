"""Calibrated quantization (``convert --calibrate / --imatrix``): the importance matrix and its use.

Against independent references: the corpus's tokens against HF ``tokenizers``; the numpy forward's
matmul inputs (and so the importance matrix) against HF transformers' Qwen3Model through forward
hooks; the imatrix file against llama.cpp's own C GGUF parser (as ``llama-quantize`` reads it);
each quantized tensor's importance-weighted error, dequantized by gguf-py, against the stock
quantization's; the uncalibrated path against a direct ``llama_model_quantize`` call.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import TEXTS
from qembed_gguf import convert
from qembed_gguf.cli import main
from qembed_gguf.converter import calibrate as cal
from qembed_gguf.converter.checkpoint import Checkpoint
from qembed_gguf.converter.mapping import Qwen3Params, plan_tensors
from qembed_gguf.errors import CalibrationError, ConversionError, OutputExistsError
from qembed_gguf.integrity import seal

CHUNK = 96  # small chunks keep the HF comparison fast; the defaults are 512 x 64


# -- fixtures --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """~5,000 tokens of the multilingual probe texts, varied so that no two lines repeat exactly."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    lines = [f"{t} ({i})" for i in range(24) for t in TEXTS if t]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Model:
    """A checkpoint opened with its plan: GGUF name → checkpoint name and HF-order shape."""

    def __init__(self, folder: Path):
        self.ckpt = Checkpoint(folder)
        self.params = Qwen3Params.from_config(self.ckpt.config)
        plan = plan_tensors({n: r.shape for n, r in self.ckpt.tensors.items()}, self.params)
        self.names = {p.gguf_name: p.hf_name for p in plan}
        self.shapes = {p.gguf_name: p.shape for p in plan}

    def weight(self, gguf_name: str) -> np.ndarray:
        return np.concatenate(list(self.ckpt.iter_rows_f32(self.names[gguf_name])))

    def layer(self, i: int) -> dict[str, np.ndarray]:
        prefix = f"blk.{i}."
        return {g[len(prefix):-len(".weight")]: self.weight(g) for g in self.names if g.startswith(prefix)}


@pytest.fixture(scope="module")
def models(checkpoints):
    opened = {shape: Model(folder) for shape, folder in checkpoints.items()}
    yield opened
    for m in opened.values():
        m.ckpt.close()


@pytest.fixture(scope="module")
def chunks(converted, corpus):
    """The corpus's chunks per shape, tokenized by llama.cpp from the shape's bf16 GGUF."""
    return {shape: cal.tokenize_corpus(corpus, converted(shape, "bf16"), chunk_tokens=CHUNK, max_chunks=6)
            for shape in ("tiny", "odd")}


@pytest.fixture(scope="module")
def saved_imatrix(checkpoints, corpus, tmp_path_factory):
    """``convert(tiny, q4_k_m, calibrate=corpus, save_imatrix=...)``: (the GGUF, the imatrix file)."""
    out = tmp_path_factory.mktemp("calibrated")
    gguf_path = convert(checkpoints["tiny"], outtype="q4_k_m", outfile=out / "cal-q4_k_m.gguf", quiet=True,
                        calibrate=corpus, save_imatrix=out / "tiny.imatrix.gguf")
    return gguf_path, out / "tiny.imatrix.gguf"


def _tensors(path: Path) -> dict[str, gguf.ReaderTensor]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def _weighted_errors(model: Model, path: Path, importance: dict[str, np.ndarray]) -> dict[str, tuple[str, float]]:
    """Per weight of ``importance``: (GGML type, sum over columns j of importance_j * (w - dequant(w))**2)."""
    tensors, out = _tensors(path), {}
    for name, imp in importance.items():
        w, t = model.weight(name), tensors[name]
        deq = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(w.shape)
        out[name] = (t.tensor_type.name, float(((w - deq).astype(np.float64) ** 2 * imp).sum()))
    return out


def _no_leftovers(folder: Path, keep: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == keep, sorted(p.name for p in folder.iterdir())


# -- the corpus --------------------------------------------------------------------------------------------
def test_corpus_tokens_match_hf_tokenizers(chunks, corpus, checkpoints):
    tokenizers = pytest.importorskip("tokenizers")
    tok = tokenizers.Tokenizer.from_file(str(checkpoints["tiny"] / "tokenizer.json"))
    eos = tok.token_to_id("<|endoftext|>")
    expected = tok.encode(corpus.read_text("utf-8"), add_special_tokens=False).ids
    got = chunks["tiny"]
    assert [len(c) for c in got] == [CHUNK] * 6
    assert all(c[-1] == eos for c in got)
    assert np.concatenate([c[:-1] for c in got]).tolist() == expected[:6 * (CHUNK - 1)]


def test_split_chunks_is_pure_and_capped():
    parts = cal.split_chunks(range(10), eos=99, chunk_tokens=4, max_chunks=3)
    assert [p.tolist() for p in parts] == [[0, 1, 2, 99], [3, 4, 5, 99], [6, 7, 8, 99]]
    assert [p.tolist() for p in cal.split_chunks(range(5), eos=None, chunk_tokens=4)] == [[0, 1, 2, 3], [4]]


@pytest.mark.parametrize("content", [b"", b"\xef\xbb\xbf"])
def test_empty_corpus_is_a_typed_error(content, converted, checkpoints, tmp_path):
    corpus = tmp_path / "empty.txt"
    corpus.write_bytes(content)
    with pytest.raises(CalibrationError, match="holds no text") as info:
        cal.tokenize_corpus(corpus, converted("tiny", "bf16"))
    assert info.value.path == corpus and isinstance(info.value, ValueError)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CalibrationError, match="empty.txt: the calibration corpus holds no text"):
        convert(checkpoints["tiny"], outtype="q4_k_m", outfile=out / "x.gguf", calibrate=corpus,
                save_imatrix=out / "x.imatrix.gguf", quiet=True)
    _no_leftovers(out, set())


def test_corpus_that_is_not_utf8_names_the_byte(converted, tmp_path):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("hello\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(CalibrationError, match=r"latin1.txt: .*not UTF-8 text \(byte offset 9\)"):
        cal.tokenize_corpus(corpus, converted("tiny", "bf16"))


def test_corpus_read_in_small_blocks_is_the_whole_text_and_offsets_count_from_the_file(monkeypatch, converted,
                                                                                       corpus, tmp_path):
    """Blocks of 7 bytes: lines carried over between blocks come back whole (BOM stripped), a line
    longer than 16 blocks is cut between characters, and a bad byte many blocks in is named by
    its offset in the file."""
    monkeypatch.setattr(cal, "_READ_BLOCK", 7)
    assert "".join(cal._corpus_texts(corpus)) == corpus.read_text("utf-8")
    long = tmp_path / "long.txt"
    long.write_bytes(b"\xef\xbb\xbf" + "a 東京".encode() * 50 + b"\nend\n")  # 400 bytes in one line
    assert "".join(cal._corpus_texts(long)) == "a 東京" * 50 + "\nend\n"  # no cut inside a character
    head = b"\xef\xbb\xbf" + b"".join(f"line {i}\n".encode() for i in range(20))
    bad = tmp_path / "bad.txt"
    bad.write_bytes(head + b"abc\xff tail\n")
    with pytest.raises(CalibrationError, match=rf"not UTF-8 text \(byte offset {len(head) + 3}\)"):
        cal.tokenize_corpus(bad, converted("tiny", "bf16"))


# -- the numpy forward against HF transformers -------------------------------------------------------------
@pytest.mark.parametrize("shape", ["tiny", "odd"])
def test_matmul_inputs_and_imatrix_match_transformers(shape, models, chunks, checkpoints):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, seqs = models[shape], chunks[shape][:2]
    hf = transformers.AutoModel.from_pretrained(checkpoints[shape], dtype=torch.float32).eval()
    captured: dict[tuple[int, str], np.ndarray] = {}
    hooks = []
    for i, layer in enumerate(hf.layers):
        for kind, module in (("attn_q", layer.self_attn.q_proj), ("attn_k", layer.self_attn.k_proj),
                             ("attn_v", layer.self_attn.v_proj), ("attn_output", layer.self_attn.o_proj),
                             ("ffn_gate", layer.mlp.gate_proj), ("ffn_up", layer.mlp.up_proj),
                             ("ffn_down", layer.mlp.down_proj)):
            hooks.append(module.register_forward_pre_hook(
                lambda mod, args, key=(i, kind): captured.__setitem__(key, args[0][0].double().numpy())))
    hf_sums = {}
    rope = cal.rope_tables(max(len(s) for s in seqs), model.params.head_dim, model.params.rope_theta)
    layers = [model.layer(i) for i in range(model.params.layers)]
    table = model.weight("token_embd.weight")
    for seq in seqs:
        captured.clear()
        with torch.no_grad():
            hf(input_ids=torch.tensor(seq)[None])
        h = table[seq]
        for i, w in enumerate(layers):
            h, inputs = cal.decoder_layer(h, w, model.params, rope)
            for kind, source in cal.MATMUL_INPUTS.items():
                ref, ours = captured[i, kind], inputs[source]
                assert ours.shape == ref.shape and ours.dtype == np.float32
                np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-5 * np.abs(ref).max(),
                                           err_msg=f"layer {i} {kind}")
                name = f"blk.{i}.{kind}.weight"
                hf_sums[name] = hf_sums.get(name, 0) + (ref ** 2).sum(axis=0)
    for hook in hooks:
        hook.remove()

    imatrix = cal.compute_imatrix(model.ckpt, model.names, model.params, seqs, dataset="probe")
    assert sorted(imatrix.sums) == sorted(hf_sums) == sorted(cal.matmul_weights(model.shapes))
    for name, ref in hf_sums.items():
        np.testing.assert_allclose(imatrix.sums[name], ref, rtol=1e-5, err_msg=name)
        assert imatrix.counts[name].tolist() == [sum(len(s) for s in seqs)]
    assert (imatrix.datasets, imatrix.chunk_count, imatrix.chunk_size) == (("probe",), 2, CHUNK)


# -- quantizing with it -------------------------------------------------------------------------------------
def test_stock_path_is_unchanged(converted, tmp_path):
    """Without calibration the K-quant file is byte for byte what llama_model_quantize makes with its
    default parameters from the same lossless GGUF (then sealed)."""
    import llama_cpp

    ours = converted("tiny", "q4_k_m")
    direct = tmp_path / "direct.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
    params.nthread = os.cpu_count() or 1
    assert llama_cpp.llama_model_quantize(str(converted("tiny", "bf16")).encode(), str(direct).encode(),
                                          ctypes.byref(params)) == 0
    seal(direct)
    assert hashlib.sha256(ours.read_bytes()).digest() == hashlib.sha256(direct.read_bytes()).digest()
    assert not any(k.startswith("quantize.imatrix") for k in gguf.GGUFReader(ours).fields)


@pytest.mark.parametrize("outtype", ["q4_k_m", "iq4_xs", "iq4_nl", "q3_k_m"])
def test_calibration_lowers_the_importance_weighted_error(outtype, saved_imatrix, converted, models, tmp_path):
    cal_path, imatrix_file = saved_imatrix
    if outtype != "q4_k_m":  # the saved imatrix, through --imatrix
        cal_path = convert(models["tiny"].ckpt.folder, outtype=outtype, outfile=tmp_path / f"{outtype}.gguf",
                           imatrix=imatrix_file, quiet=True)
    stock = converted("tiny", outtype)
    importance = cal.load_imatrix(imatrix_file).values()
    ours, theirs = (_weighted_errors(models["tiny"], p, importance) for p in (cal_path, stock))
    same_type = [n for n in importance if ours[n][0] == theirs[n][0]]
    assert len(same_type) >= len(importance) - 2, (ours, theirs)  # llama.cpp's mix may differ with an imatrix
    for name in same_type:
        assert ours[name][1] < theirs[name][1], (name, ours[name], theirs[name])
    assert sum(ours[n][1] for n in same_type) < 0.99 * sum(theirs[n][1] for n in same_type)
    fields = gguf.GGUFReader(cal_path).fields
    assert fields["quantize.imatrix.file"].contents() == "tiny.imatrix.gguf"
    assert fields["quantize.imatrix.dataset"].contents() == "corpus.txt"
    assert fields["quantize.imatrix.entries_count"].contents() == len(importance) == 14
    assert fields["quantize.imatrix.chunks_count"].contents() == cal.load_imatrix(imatrix_file).chunk_count


def test_each_entry_weights_its_own_tensor(models, converted, tmp_path):
    """A strongly uneven importance (log-normal, per tensor), written as llama-imatrix lays its file
    out (with gguf-py here, not save_imatrix): the quantizer must apply entry X to tensor X."""
    model, rng = models["tiny"], np.random.default_rng(7)
    wanted = cal.matmul_weights(model.shapes)
    importance = {n: np.exp(2.0 * rng.standard_normal(cols)).astype(np.float32) for n, cols in wanted.items()}
    path = tmp_path / "lognormal.imatrix.gguf"
    writer = gguf.GGUFWriter(path, "imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", ["synthetic"])
    writer.add_uint32("imatrix.chunk_count", 3)
    writer.add_uint32("imatrix.chunk_size", 512)
    for name in sorted(importance):
        writer.add_tensor(f"{name}.in_sum2", (importance[name] * 1536)[None, :])  # sums = mean x 1536 tokens
        writer.add_tensor(f"{name}.counts", np.array([[1536.0]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    out = convert(model.ckpt.folder, outtype="q4_k_m", outfile=tmp_path / "lognormal.gguf", imatrix=path, quiet=True)
    ours, stock = (_weighted_errors(model, p, importance) for p in (out, converted("tiny", "q4_k_m")))
    for name in importance:
        assert ours[name][0] == stock[name][0] and ours[name][1] < 0.9 * stock[name][1], (name, ours[name], stock[name])


# -- the imatrix file ---------------------------------------------------------------------------------------
def _ggml_base():
    from qembed_gguf.devices import load_llama_library

    p, i64, s = ctypes.c_void_p, ctypes.c_int64, ctypes.c_size_t

    class InitParams(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]

    lib = load_llama_library("ggml-base", (
        ("gguf_init_from_file", p, [ctypes.c_char_p, InitParams]), ("gguf_free", None, [p]),
        ("gguf_find_key", i64, [p, ctypes.c_char_p]), ("gguf_get_kv_type", ctypes.c_int, [p, i64]),
        ("gguf_get_arr_type", ctypes.c_int, [p, i64]), ("gguf_get_arr_n", s, [p, i64]),
        ("gguf_get_arr_str", ctypes.c_char_p, [p, i64, s]), ("gguf_get_val_u32", ctypes.c_uint32, [p, i64]),
        ("gguf_get_val_str", ctypes.c_char_p, [p, i64]), ("gguf_get_n_tensors", i64, [p]),
        ("gguf_get_tensor_name", ctypes.c_char_p, [p, i64]), ("gguf_get_tensor_type", ctypes.c_int, [p, i64]),
        ("gguf_get_tensor_offset", s, [p, i64]), ("gguf_get_tensor_size", s, [p, i64]),
        ("gguf_get_data_offset", s, [p])))
    if lib is None:
        pytest.skip("no libggml-base with the gguf_* functions next to llama-cpp-python")
    return lib, InitParams


def test_saved_imatrix_reads_back_and_llama_cpp_parses_it(saved_imatrix, models, tmp_path):
    _, path = saved_imatrix
    im = cal.load_imatrix(path)
    again = cal.load_imatrix(cal.save_imatrix(im, tmp_path / "again.gguf"))
    assert (again.datasets, again.chunk_count, again.chunk_size) == (im.datasets, im.chunk_count, im.chunk_size)
    assert im.datasets == ("corpus.txt",) and im.chunk_size == 512 and im.chunk_count >= 1
    for name in im.sums:
        assert np.array_equal(again.sums[name], im.sums[name]) and np.array_equal(again.counts[name], im.counts[name])
    assert sorted(im.sums) == sorted(cal.matmul_weights(models["tiny"].shapes))

    # llama.cpp's C parser, as common_imatrix_load reads it for llama-quantize --imatrix
    lib, InitParams = _ggml_base()
    ctx = lib.gguf_init_from_file(str(path).encode(), InitParams(True, None))
    assert ctx, "llama.cpp's gguf parser refused the file"
    try:
        GGUF_UINT32, GGUF_STRING, GGUF_ARRAY = 4, 8, 9
        key = {k: lib.gguf_find_key(ctx, k.encode()) for k in
               ("general.type", "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size")}
        assert all(v >= 0 for v in key.values()), key
        assert lib.gguf_get_val_str(ctx, key["general.type"]) == b"imatrix"
        assert lib.gguf_get_kv_type(ctx, key["imatrix.datasets"]) == GGUF_ARRAY
        assert lib.gguf_get_arr_type(ctx, key["imatrix.datasets"]) == GGUF_STRING
        assert lib.gguf_get_arr_str(ctx, key["imatrix.datasets"], 0) == b"corpus.txt"
        assert lib.gguf_get_kv_type(ctx, key["imatrix.chunk_count"]) == GGUF_UINT32
        assert lib.gguf_get_val_u32(ctx, key["imatrix.chunk_count"]) == im.chunk_count
        assert lib.gguf_get_val_u32(ctx, key["imatrix.chunk_size"]) == 512
        raw, base = path.read_bytes(), lib.gguf_get_data_offset(ctx)
        seen = {}
        for t in range(lib.gguf_get_n_tensors(ctx)):
            assert lib.gguf_get_tensor_type(ctx, t) == 0  # GGML_TYPE_F32
            at, size = base + lib.gguf_get_tensor_offset(ctx, t), lib.gguf_get_tensor_size(ctx, t)
            seen[lib.gguf_get_tensor_name(ctx, t).decode()] = np.frombuffer(raw[at:at + size], dtype="<f4")
    finally:
        lib.gguf_free(ctx)
    assert sorted(seen) == sorted(f"{n}.{part}" for n in im.sums for part in ("in_sum2", "counts"))
    for name in im.sums:
        assert np.array_equal(seen[f"{name}.in_sum2"], im.sums[name])
        assert seen[f"{name}.counts"].tolist() == im.counts[name].tolist()


def _edited(im: cal.Imatrix, path: Path, changes: dict[str, np.ndarray | None]) -> Path:
    """``im`` with entries replaced (None: removed), saved to ``path``."""
    sums, counts = dict(im.sums), dict(im.counts)
    for name, value in changes.items():
        if value is None:
            del sums[name], counts[name]
        else:
            sums[name] = value
            counts.setdefault(name, np.array([10]))
    return cal.save_imatrix(cal.Imatrix(sums, counts, im.datasets, im.chunk_count, im.chunk_size), path)


@pytest.mark.parametrize("case, pattern", [
    ("short", r"tensor 'blk\.0\.attn_q\.weight': holds 255 values but the weight has 256 input columns"),
    ("missing", r"tensor 'blk\.1\.ffn_down\.weight': has no entry for this weight of the model"),
    ("nan", r"tensor 'blk\.0\.ffn_up\.weight': holds non-finite values"),
    ("unknown", r"tensor 'blk\.7\.attn_q\.weight': is not a matmul weight of this model"),
])
def test_mismatched_imatrix_names_the_tensor(case, pattern, saved_imatrix, checkpoints, tmp_path):
    im = cal.load_imatrix(saved_imatrix[1])
    bad = {"short": {"blk.0.attn_q.weight": np.ones(255, np.float32)},
           "missing": {"blk.1.ffn_down.weight": None},
           "nan": {"blk.0.ffn_up.weight": np.where(np.arange(256) == 3, np.nan, 1.0).astype(np.float32)},
           "unknown": {"blk.7.attn_q.weight": np.ones(256, np.float32)}}[case]
    path = _edited(im, tmp_path / f"{case}.imatrix.gguf", bad)
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CalibrationError, match=pattern) as info:
        convert(checkpoints["tiny"], outtype="q4_k_m", outfile=out / "x.gguf", imatrix=path, quiet=True)
    assert info.value.path == path and info.value.tensor is not None and isinstance(info.value, ConversionError)
    _no_leftovers(out, set())


def test_a_model_gguf_is_not_an_imatrix(converted):
    with pytest.raises(CalibrationError, match="not an importance matrix"):
        cal.load_imatrix(converted("tiny", "bf16"))


def test_odd_shapes_fall_back_and_still_calibrate(checkpoints, corpus, converted, tmp_path):
    """Rows of 96 / 160 values: llama.cpp falls back to 32-value blocks, which take the imatrix too."""
    out = convert(checkpoints["odd"], outtype="iq4_xs", outfile=tmp_path / "odd.gguf", calibrate=corpus, quiet=True)
    assert gguf.GGUFReader(out).fields["quantize.imatrix.entries_count"].contents() == 21
    a, b = _tensors(out), _tensors(converted("odd", "iq4_xs"))
    assert a["blk.0.attn_q.weight"].tensor_type == b["blk.0.attn_q.weight"].tensor_type == gguf.GGMLQuantizationType.IQ4_NL
    assert not np.array_equal(a["blk.0.attn_q.weight"].data, b["blk.0.attn_q.weight"].data)


# -- options and the command line ---------------------------------------------------------------------------
def test_option_errors_are_typed_and_early(checkpoints, corpus, saved_imatrix, tmp_path):
    src = checkpoints["tiny"]
    with pytest.raises(CalibrationError, match="f16 is written in Python and is not imatrix-aware"):
        convert(src, outtype="f16", outfile=tmp_path / "a.gguf", calibrate=corpus)
    with pytest.raises(CalibrationError, match="q4_0 is written in Python"):
        convert(src, outtype="q4_0", outfile=tmp_path / "a.gguf", imatrix=saved_imatrix[1])
    with pytest.raises(CalibrationError, match="not both"):
        convert(src, outtype="q4_k_m", outfile=tmp_path / "a.gguf", calibrate=corpus, imatrix=saved_imatrix[1])
    with pytest.raises(CalibrationError, match="needs --calibrate"):
        convert(src, outtype="q4_k_m", outfile=tmp_path / "a.gguf", save_imatrix=tmp_path / "i.gguf")
    with pytest.raises(CalibrationError, match="folder of the imatrix output .* does not exist"):
        convert(src, outtype="q4_k_m", outfile=tmp_path / "a.gguf", calibrate=corpus,
                save_imatrix=tmp_path / "missing" / "i.gguf")
    (tmp_path / "i.gguf").write_bytes(b"keep")
    with pytest.raises(OutputExistsError, match="i.gguf already exists"):
        convert(src, outtype="q4_k_m", outfile=tmp_path / "a.gguf", calibrate=corpus, save_imatrix=tmp_path / "i.gguf")
    _no_leftovers(tmp_path, {"i.gguf"})


def test_cli_calibrate_then_imatrix_gives_the_same_file(checkpoints, corpus, tmp_path):
    from qembed_gguf import Embedder

    runner = CliRunner()
    first, second, imatrix = tmp_path / "a.gguf", tmp_path / "b.gguf", tmp_path / "tiny.imatrix.gguf"
    src = str(checkpoints["tiny"])
    result = runner.invoke(main, ["convert", src, "-t", "iq4_xs", "-o", str(first), "--calibrate", str(corpus),
                                  "--save-imatrix", str(imatrix)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["convert", src, "-t", "iq4_xs", "-o", str(second), "--imatrix", str(imatrix)])
    assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()  # the same importance, the same keys
    info = runner.invoke(main, ["info", str(first)])
    assert info.exit_code == 0, info.output
    assert "calibrated: importance matrix of 14 tensors from 'corpus.txt'" in info.output
    assert "(imatrix tiny.imatrix.gguf)" in info.output
    assert runner.invoke(main, ["verify", str(first)]).exit_code == 0
    with Embedder(first) as e:
        vectors = e.embed_documents(["calibrated", "quantization"])
    assert vectors.shape == (2, 256) and np.isfinite(vectors).all()

    refused = runner.invoke(main, ["convert", src, "-t", "bf16", "-o", str(tmp_path / "c.gguf"),
                                   "--calibrate", str(corpus)])
    assert refused.exit_code == 2 and "bf16 is written in Python and is not imatrix-aware" in refused.output
    _no_leftovers(tmp_path, {"a.gguf", "b.gguf", "tiny.imatrix.gguf"})
