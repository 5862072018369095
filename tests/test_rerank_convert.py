"""Qwen3-Reranker checkpoints → GGUF files llama.cpp loads as rerankers (issue 20, item 1).

Our files against llama.cpp's own convert_hf_to_gguf.py on the same checkpoints (tied and untied
embeddings, the real 151,669-token vocabulary): the same keys and values, tensor names, shapes,
types and bytes. Independently of both converters: the yes/no head's rows read straight from the
safetensors with numpy, and llama.cpp's RANK score equal to the softmax of the lm_head's own
"yes"/"no" logits. Also: detection, the registry's reranker specs, the K-quant path, the header
checks, bad inputs (typed errors, no partial file) and that only two rows of the lm_head are read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from gguf_edit import V, copy_with_changes
from qembed_gguf import convert, keys, registry
from qembed_gguf.cli import main
from qembed_gguf.converter import checkpoint as checkpoint_module
from qembed_gguf.converter import source as source_module
from qembed_gguf.converter.quantize import get_outtype, predict_type
from qembed_gguf.converter.rerank import checkpoint_kind
from qembed_gguf.errors import CorruptModelError, ModelSpecError, TensorMismatchError, UnsupportedModelError
from qembed_gguf.fileinfo import read_gguf_info
from qembed_gguf.gguf_check import check_gguf
from qembed_gguf.gguf_reader import SCALAR_FORMATS, STRING, ArrayValue, read_header

ROOT = Path(__file__).resolve().parents[1]
YES, NO = 9693, 2152  # "yes" and "no" in the real Qwen3 vocabulary
KINDS = ("tied", "untied")
from conftest import RERANK_REFERENCE_TYPES as REFERENCE  # noqa: E402
DESCRIPTIVE = {"general.name", "general.size_label", "general.basename", "general.finetune", "general.version"}
TEMPLATE = (  # llama.cpp's conversion/qwen.py Qwen3Model, as it writes tokenizer.chat_template.rerank
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: Given a "
    "web search query, retrieve relevant passages that answer the query\n<Query>: {query}\n<Document>: {document}"
    "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


# -- conversions, once per (checkpoint, type) per session ------------------------------------------------
@pytest.fixture(scope="session")
def ours(reranker_gguf):
    return reranker_gguf


@pytest.fixture(scope="session")
def reference(reranker_reference):
    return reranker_reference


def _small_strings(raw: bytes, arr: ArrayValue) -> list[str]:
    out, pos = [], arr.offset
    for _ in range(arr.count):
        (n,) = struct.unpack_from("<Q", raw, pos)
        out.append(raw[pos + 8:pos + 8 + n].decode())
        pos += 8 + n
    return out


def _read(path: Path) -> tuple[dict, dict]:
    """(key → (GGUF type, value), tensor name → (ggml type, ggml shape, data bytes)) of a file, read
    with the project's header parser (gguf-py's GGUFReader takes seconds per 151k-token vocabulary).
    Arrays are compared by their raw bytes (the vocabulary) or decoded (small string arrays)."""
    h, raw = read_header(path), Path(path).read_bytes()
    kv = {}
    for key, value in h.metadata.items():
        if key in DESCRIPTIVE:
            continue
        if isinstance(value, ArrayValue):
            if key in h.string_offsets:  # tokens, merges: every element's bytes
                value = (value.type, raw[value.offset:h.string_offsets[key][-1]])
            elif value.type == STRING:
                value = (value.type, _small_strings(raw, value))
            else:
                size = struct.calcsize(SCALAR_FORMATS[value.type])
                value = (value.type, raw[value.offset:value.offset + value.count * size])
        kv[key] = (h.value_types[key], value)
    tensors = {t.name: (t.ggml_type, t.shape, raw[t.offset:t.offset + t.nbytes]) for t in h.tensors}
    return kv, tensors


def _tensor(path: Path, name: str) -> np.ndarray:
    """A tensor's data as stored (F16: a float16 (rows, cols) array)."""
    h = read_header(path)
    t = next(t for t in h.tensors if t.name == name)
    assert t.ggml_type == gguf.GGMLQuantizationType.F16
    return np.fromfile(path, dtype=np.float16, count=t.nbytes // 2, offset=t.offset).reshape(t.shape[::-1])


def _patched(src: Path, dst: Path, *edits: tuple[bytes, bytes]) -> Path:
    """A copy of ``src`` with byte strings of its header replaced in place (same lengths): keys
    renamed away, scalar values changed, a tensor renamed."""
    data = bytearray(Path(src).read_bytes())
    end = read_header(src).data_offset
    for old, new in edits:
        assert len(old) == len(new) and data[:end].count(old) == 1, old
        at = data.index(old)
        data[at:at + len(old)] = new
    dst.write_bytes(bytes(data))
    return dst


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


def _u32_value(name: str, value: int) -> bytes:
    return _key(name) + struct.pack("<II", 4, value)


def _safetensors_rows(path: Path, name: str, rows: list[int]) -> np.ndarray:
    """Rows of a bf16 tensor, read with nothing but json and numpy (independent of convert/)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8:8 + n])[name]
    assert entry["dtype"] == "BF16"
    table = np.frombuffer(raw, dtype="<u2", offset=8 + n + entry["data_offsets"][0],
                          count=int(np.prod(entry["shape"]))).reshape(entry["shape"])
    return (table[rows].astype(np.uint32) << 16).view(np.float32)


# -- llama.cpp's own converter as the reference ----------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("outtype", REFERENCE)
@pytest.mark.parametrize("kind", KINDS)
def test_same_file_as_llama_cpp_converter(kind, outtype, ours, reference):
    (mine_kv, mine_t), (ref_kv, ref_t) = _read(ours(kind, outtype)), _read(reference(kind, outtype))
    assert sorted(mine_t) == sorted(ref_t)
    assert "cls.output.weight" in ref_t and "output.weight" not in ref_t and "token_embd.weight" in ref_t
    for name, (ggml_type, shape, data) in ref_t.items():
        assert mine_t[name][:2] == (ggml_type, shape), name
        assert mine_t[name][2] == data, f"{name}: tensor data differs from llama.cpp's converter"
    assert mine_t["cls.output.weight"][1] == (256, 2)  # ggml order: [hidden, labels]

    ours_only = {k for k in mine_kv if k.startswith("qembed.")}
    assert set(mine_kv) - ours_only == set(ref_kv)
    for key in ref_kv:
        assert mine_kv[key] == ref_kv[key], key
    value = {k: v for k, (_, v) in mine_kv.items()}
    assert value["qwen3.pooling_type"] == gguf.PoolingType.RANK
    assert value["qwen3.classifier.output_labels"] == (STRING, ["yes", "no"])
    assert value["tokenizer.chat_template.rerank"] == TEMPLATE
    assert value["tokenizer.chat_templates"] == (STRING, ["rerank"])
    assert "tokenizer.chat_template" not in value  # no Jinja chat template beyond the plain-text prompt
    assert value["tokenizer.ggml.add_bos_token"] is False and value["tokenizer.ggml.add_eos_token"] is False
    assert value[keys.KIND] == "reranker"
    assert value[keys.DEFAULT_TASK] == "Given a web search query, retrieve relevant passages that answer the query"
    assert keys.MRL_MIN_DIM not in value and keys.QUERY_TEMPLATE not in value


@pytest.mark.parametrize("kind", KINDS)
def test_head_rows_are_the_yes_and_no_rows_of_the_lm_head(kind, ours, reranker_ckpts):
    source = "model.embed_tokens.weight" if kind == "tied" else "lm_head.weight"
    want = _safetensors_rows(reranker_ckpts[kind] / "model.safetensors", source, [YES, NO])
    head = _tensor(ours(kind, "f16"), "cls.output.weight")
    assert head.shape == (2, 256)
    np.testing.assert_array_equal(head, want.astype(np.float16))
    if kind == "untied":  # the head is not the token embeddings' rows
        embed = _safetensors_rows(reranker_ckpts[kind] / "model.safetensors", "model.embed_tokens.weight", [YES, NO])
        assert not np.allclose(head, embed.astype(np.float16))
    assert check_gguf(ours(kind, "f16")).get("qwen3.pooling_type") == 4


# -- llama.cpp loads it as a reranker --------------------------------------------------------------------
def _llama_rank(path: Path, text: str, *, logits: bool = False) -> tuple[list, np.ndarray, np.ndarray | None]:
    """(labels, RANK output, the last token's "yes"/"no" logits when ``logits``) from llama.cpp."""
    import llama_cpp

    from qembed_gguf.runtime import set_llama_verbosity

    set_llama_verbosity(False)
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    assert model, f"llama.cpp could not load {path}"
    try:
        labels = [llama_cpp.llama_model_cls_label(model, i) for i in range(llama_cpp.llama_model_n_cls_out(model))]
        raw = text.encode()
        buf = (llama_cpp.llama_token * 512)()
        n = llama_cpp.llama_tokenize(llama_cpp.llama_model_get_vocab(model), raw, len(raw), buf, 512, False, True)
        assert 0 < n < 512

        def run(embeddings: bool) -> np.ndarray:
            params = llama_cpp.llama_context_default_params()
            params.embeddings = embeddings
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_RANK
            params.n_ctx = params.n_batch = params.n_ubatch = 512
            ctx = llama_cpp.llama_init_from_model(model, params)
            assert ctx
            try:
                assert llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(buf, n)) == 0
                if embeddings:
                    out = llama_cpp.llama_get_embeddings_seq(ctx, 0)
                    return np.array([out[i] for i in range(len(labels))], dtype=np.float64)
                out = llama_cpp.llama_get_logits_ith(ctx, -1)
                return np.array([out[YES], out[NO]], dtype=np.float64)
            finally:
                llama_cpp.llama_free(ctx)

        return labels, run(True), run(False) if logits else None
    finally:
        llama_cpp.llama_model_free(model)


PAIR = TEMPLATE.replace("{query}", "is the sky blue?").replace("{document}", "The sky is blue on a clear day.")


def test_rank_score_is_the_softmax_of_the_yes_no_logits(ours):
    # tied: the file's output layer is token_embd, so llama.cpp's own logits give the reference score
    labels, rank, logits = _llama_rank(ours("tied", "f16"), PAIR, logits=True)
    assert labels == [b"yes", b"no"]
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(rank, expected, atol=2e-4)


def test_k_quant_file_loads_as_reranker(ours):
    path = ours("tied", "q4_k_m")
    h = check_gguf(path)
    ot = get_outtype("q4_k_m")
    predicted = {t.name: predict_type(t.name, tuple(reversed(t.shape)), ot, n_layer=2) for t in h.tensors}
    assert {t.name: gguf.GGMLQuantizationType(t.ggml_type) for t in h.tensors} == predicted
    assert predicted["cls.output.weight"] == gguf.GGMLQuantizationType.Q4_K  # llama.cpp's "other": the default type
    info = read_gguf_info(path, header=h)
    assert info.kind == "reranker" and info.problems() == [] and info.get(keys.KIND) == "reranker"
    assert info.get("tokenizer.chat_template.rerank") == TEMPLATE  # the quantizer copied every key
    labels, rank, _ = _llama_rank(path, PAIR)
    _, rank_f16, _ = _llama_rank(ours("tied", "f16"), PAIR)
    assert labels == [b"yes", b"no"] and abs(rank.sum() - 1) < 1e-5
    assert abs(rank[0] - rank_f16[0]) < 0.1  # a 4-bit copy of the same head


# -- bounded memory: two rows of the lm_head are read, not the lm_head ------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_only_the_label_rows_are_read(kind, reranker_ckpts, tmp_path, monkeypatch):
    streamed, gathered = [], []
    st = checkpoint_module.SafetensorsFile
    iter_rows, read_rows = st.iter_rows_f32, st.read_rows_f32

    def spy_iter(self, ref, max_bytes=64 << 20):
        streamed.append(ref.name)
        return iter_rows(self, ref, max_bytes)

    def spy_read(self, ref, rows):
        gathered.append((ref.name, rows))
        return read_rows(self, ref, rows)

    monkeypatch.setattr(st, "iter_rows_f32", spy_iter)
    monkeypatch.setattr(st, "read_rows_f32", spy_read)
    out = convert(reranker_ckpts[kind], outtype="q4_0", outfile=tmp_path / "r.gguf", quiet=True)
    if kind == "untied":
        assert gathered == [("lm_head.weight", (YES, NO))] and "lm_head.weight" not in streamed
    else:
        assert gathered == [("model.embed_tokens.weight", (YES, NO))]
    assert streamed.count("model.embed_tokens.weight") == 1  # token_embd, streamed once in row chunks
    tensors = {t.name: t for t in read_header(out).tensors}
    assert tensors["cls.output.weight"].ggml_type == gguf.GGMLQuantizationType.Q4_0


# -- bad input: typed errors naming the culprit, no partial output ----------------------------------------
def _variant(src: Path, dst: Path, *, config=None, tokenizer=None, readme: bool = True) -> Path:
    """A copy of checkpoint ``src`` whose weights are symlinks, with config.json / tokenizer.json edited."""
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.suffix == ".safetensors":
            os.symlink(item, dst / item.name)
        elif item.name != "README.md" or readme:
            shutil.copyfile(item, dst / item.name)
    for name, edit in (("config.json", config), ("tokenizer.json", tokenizer)):
        if edit is not None:
            data = json.loads((dst / name).read_text("utf-8"))
            edit(data)
            (dst / name).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return dst


def _fails(src: Path, out_dir: Path, error, match: str):
    out_dir.mkdir()
    with pytest.raises(error, match=match) as info:
        convert(src, outfile=out_dir / "out.gguf", quiet=True)
    assert list(out_dir.iterdir()) == [], "conversion left files behind"
    return info.value


def test_tokenizer_without_yes_is_refused(reranker_ckpts, tmp_path):
    ckpt = _variant(reranker_ckpts["untied"], tmp_path / "no-yes-qwen3-reranker",
                    tokenizer=lambda t: t["model"]["vocab"].pop("yes"))
    _fails(ckpt, tmp_path / "out", UnsupportedModelError, r"no 'yes' token in the vocabulary")


def test_wrong_lm_head_shape_is_refused(reranker_ckpts, tmp_path):
    ckpt = tmp_path / "bad-qwen3-reranker"
    _variant(reranker_ckpts["untied"], ckpt)
    st = ckpt / "model.safetensors"
    raw = st.read_bytes()
    st.unlink()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["lm_head.weight"]["shape"] = header["lm_head.weight"]["shape"][::-1]  # same bytes, transposed
    new = json.dumps(header).encode()
    new += b" " * (-len(new) % 8)
    st.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])
    err = _fails(ckpt, tmp_path / "out", TensorMismatchError, r"shape \[256, 151669\]")
    assert err.tensor == "lm_head.weight"


def test_untied_config_without_lm_head_is_refused(reranker_ckpts, tmp_path):
    ckpt = _variant(reranker_ckpts["tied"], tmp_path / "headless-qwen3-reranker",
                    config=lambda c: c.update(tie_word_embeddings=False))
    err = _fails(ckpt, tmp_path / "out", TensorMismatchError, "tie_word_embeddings is false")
    assert err.tensor == "lm_head.weight"


def test_sequence_classification_is_refused(reranker_ckpts, tmp_path):
    ckpt = _variant(reranker_ckpts["tied"], tmp_path / "seqcls",
                    config=lambda c: c.update(architectures=["Qwen3ForSequenceClassification"]))
    _fails(ckpt, tmp_path / "out", UnsupportedModelError, "'score' classification head")


# -- detection and the registry ---------------------------------------------------------------------------
CAUSAL = {"architectures": ["Qwen3ForCausalLM"]}


@pytest.mark.parametrize("names, readme, config, kind", [
    ((), None, CAUSAL, "embedding"),
    (("Qwen3-Embedding-0.6B",), "# Qwen3-Embedding-0.6B\nSee also [Qwen3-Reranker](x).", CAUSAL, "embedding"),
    (("my-finetune",), "---\nlicense: apache-2.0\n---\n\n# Qwen3-Reranker-4B\n", CAUSAL, "reranker"),
    (("Qwen/Qwen3-Reranker-8B",), None, CAUSAL, "reranker"),
    (("snapshot-sha",), None, {**CAUSAL, "_name_or_path": "./qwen3-reranker-0.6b"}, "reranker"),
])
def test_checkpoint_kind(names, readme, config, kind):
    assert checkpoint_kind(config, names=names, readme=readme) == kind


def test_checkpoint_kind_trusts_the_registry_and_refuses_conflicts():
    reranker, embedding = registry.get_spec("qwen3-reranker-0.6b"), registry.get_spec("qwen3-embedding-0.6b")
    assert checkpoint_kind(CAUSAL, names=("abc",), spec=reranker) == "reranker"
    assert checkpoint_kind(CAUSAL, names=("abc",), readme="# Qwen3-Reranker", spec=embedding) == "embedding"
    with pytest.raises(UnsupportedModelError, match="named as a Qwen3-Reranker"):
        checkpoint_kind(CAUSAL, names=("Qwen/Qwen3-Reranker-0.6B",), spec=embedding)
    with pytest.raises(UnsupportedModelError, match="score"):
        checkpoint_kind({"architectures": ["Qwen3ForSequenceClassification"]}, spec=reranker)


RERANKERS = {  # the Qwen3 base models' shapes: layers, hidden, heads, kv heads, ffn
    "Qwen3-Reranker-0.6B": (28, 1024, 16, 8, 3072),
    "Qwen3-Reranker-4B": (36, 2560, 32, 8, 9728),
    "Qwen3-Reranker-8B": (36, 4096, 32, 8, 12288),
}


@pytest.mark.parametrize("name, shape", RERANKERS.items())
def test_reranker_specs(name, shape):
    spec = registry.get_spec(name.lower())
    s = spec.shape
    assert spec is registry.get_spec(f"Qwen/{name}") and spec.hub_id == f"Qwen/{name}"
    assert (s.layers, s.hidden, s.heads, s.kv_heads, s.ffn) == shape and s.head_dim == 128 and s.vocab == 151669
    assert spec.kind == "reranker" and spec.pooling == "rank" and spec.mrl_min_dim is None
    assert spec.query_template is None and spec.rerank_chat_template() == TEMPLATE
    with pytest.raises(ModelSpecError, match="reranker"):
        spec.format_query("x")


def test_embedding_specs_and_family_defaults_unchanged():
    for spec in registry.all_specs():
        if spec.name.startswith("Qwen3-Embedding") or spec.name == "tiny-qwen3-embedding":
            assert spec.kind == "embedding" and spec.pooling == "last" and spec.mrl_min_dim == 32
            assert spec.rerank_template is None and spec.query_template == "Instruct: {task}\nQuery:{text}"
    assert registry.family_spec().name == "Qwen3-Embedding-0.6B"
    assert registry.family_spec("reranker").kind == "reranker"


@pytest.mark.parametrize("change, match", [
    ({"mrl_min_dim": 32}, "mrl_min_dim is for embedding models"),
    ({"query_template": "{task}{text}"}, "query_template is for embedding models"),
    ({"rerank_template": "{query} {document}"}, r"lacks \{task\}"),
    ({"pooling": "last"}, "a reranker model has pooling = 'rank'"),
    ({"kind": "classifier"}, "kind must be one of"),
])
def test_reranker_spec_validation(change, match):
    spec = registry.get_spec("qwen3-reranker-4b")
    data = {k: v for k, v in spec.__dict__.items() if k != "shape" and v is not None}
    data.update({"dim" if k == "hidden" else k: v for k, v in dataclasses.asdict(spec.shape).items()})
    data.update(change)
    with pytest.raises(ModelSpecError, match=match):
        registry.ModelSpec.from_mapping(data)


def test_registry_name_routes_a_neutral_checkpoint_as_reranker(reranker_ckpts, tmp_path, monkeypatch):
    # a folder that names nothing, no README: only the registry entry says "reranker"
    neutral = _variant(reranker_ckpts["tied"], tmp_path / "snapshot", readme=False,
                       config=lambda c: c.update(_name_or_path="abc"))
    monkeypatch.setattr(source_module, "_download", lambda repo_id, revision: neutral)
    out = convert("qwen3-reranker-0.6b", outtype="q8_0", outfile=tmp_path / "r.gguf", quiet=True)
    info = read_gguf_info(out)
    assert info.kind == "reranker" and info.pooling == "rank" and info.get(keys.SOURCE) == "Qwen/Qwen3-Reranker-0.6B"
    assert info.get("general.name") == "Qwen3-Reranker-0.6B"


# -- header checks, problems and `info` -------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_reranker_files_pass_the_header_checks(kind, ours, reference):
    for path in (ours(kind, "q8_0"), reference(kind, "q8_0")):  # ours, and llama.cpp's (no qembed.* keys)
        info = read_gguf_info(path, header=check_gguf(path))
        assert info.kind == "reranker" and info.problems() == [], path


LABELS = "qwen3.classifier.output_labels"
LABEL_BYTES = struct.pack("<II", 9, 8) + struct.pack("<Q", 2)  # an array of 2 strings


def _labels(*labels: str) -> bytes:
    return _key(LABELS) + LABEL_BYTES + b"".join(struct.pack("<Q", len(x)) + x.encode() for x in labels)


@pytest.mark.parametrize("case", [
    ("pooling LAST, no qembed.kind", [(_u32_value("qwen3.pooling_type", 4), _u32_value("qwen3.pooling_type", 3)),
                                      (_key(keys.KIND), _key("qembed.kinx"))],
     "cls.output.weight", "yes/no head in a file without RANK pooling"),
    ("pooling LAST, qembed.kind reranker", [(_u32_value("qwen3.pooling_type", 4), _u32_value("qwen3.pooling_type", 3))],
     keys.KIND, "says 'reranker' but qwen3.pooling_type is 3"),
    ("labels swapped", [(_labels("yes", "no"), _labels("no", "yes"))], LABELS, r"is \['no', 'yes'\]"),
    ("no labels", [(_key(LABELS), _key(LABELS[:-1] + "z"))], LABELS, "is missing"),
    ("unknown kind", [(_key(keys.KIND) + struct.pack("<IQ", 8, 8) + b"reranker",
                       _key(keys.KIND) + struct.pack("<IQ", 8, 8) + b"rankerer")], keys.KIND, "not one of"),
    ("no head", [(_key("cls.output.weight"), _key("cls.outpux.weight"))], "cls.output.weight",
     "required tensor is missing"),
], ids=lambda c: c[0])
def test_malformed_reranker_headers(case, ours, tmp_path):
    _, edits, field, match = case
    bad = _patched(ours("untied", "q8_0"), tmp_path / "bad.gguf", *edits)
    with pytest.raises(CorruptModelError, match=match) as info:
        check_gguf(bad)
    assert info.value.field == field


def test_reranker_problems(ours, tmp_path):
    src = ours("untied", "q8_0")
    eos = _key("tokenizer.ggml.add_eos_token") + struct.pack("<I", 7)
    appended = _patched(src, tmp_path / "eos.gguf", (eos + b"\0", eos + b"\1"))
    gi = read_gguf_info(appended, header=check_gguf(appended))  # loadable, but its scores would be wrong
    assert [p for p in gi.problems() if "add_eos_token is true" in p]
    headless = read_gguf_info(_patched(src, tmp_path / "headless.gguf",
                                       (_key("cls.output.weight"), _key("cls.outpux.weight"))))
    assert headless.kind == "reranker" and any("no cls.output.weight" in p for p in headless.problems())
    no_kind = _patched(src, tmp_path / "nokind.gguf", (_key(keys.KIND), _key("qembed.kinx")))
    assert read_gguf_info(no_kind).kind == "reranker"  # RANK pooling and the head say so


def test_embedding_files_have_no_head(converted, tmp_path):
    embedding = converted("tiny", "q8_0")
    emb = read_gguf_info(embedding, header=check_gguf(embedding))
    assert emb.kind == "embedding" and emb.get(keys.KIND) == "embedding" and not emb.has_cls_head
    assert emb.problems() == [] and "cls.output.weight" not in {t.name for t in emb.tensors}
    # an embedding file claiming to be a reranker: its pooling says otherwise
    liar = copy_with_changes(embedding, tmp_path / "liar.gguf", values={keys.KIND: ("reranker", V.STRING)})
    with pytest.raises(CorruptModelError, match="says 'reranker'"):
        check_gguf(liar)


def test_info_says_the_kind(ours, converted):
    runner = CliRunner()
    text = runner.invoke(main, ["info", str(ours("untied", "q8_0"))])
    assert text.exit_code == 0, text.output
    assert "pooling:        rank" in text.output and "kind:      reranker" in text.output
    data = json.loads(runner.invoke(main, ["info", "--json", str(ours("untied", "q8_0"))]).output)
    assert data["kind"] == "reranker" and data["pooling"] == "rank" and data["problems"] == [] and data["valid"]
    data = json.loads(runner.invoke(main, ["info", "--json", str(converted("tiny", "q8_0"))]).output)
    assert data["kind"] == "embedding"
    models = runner.invoke(main, ["models"]).output
    assert any("Qwen/Qwen3-Reranker-8B" in line and "reranker" in line for line in models.splitlines())
