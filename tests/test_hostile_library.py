"""Hostile input to the library and the `embed` command (issue 16): context arguments that used to
reach llama.cpp's asserts, settings that allocated without bound, text that is not Unicode, the
server's hook for cancelled work, and a streamed standard input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import gguf
import numpy as np
import pytest
from click.testing import CliRunner

from qembed_gguf import Embedder
from qembed_gguf.cli import main
from qembed_gguf.errors import InputError, InvalidTextError, ModelLoadError
from qembed_gguf.jobs import JobSettings, job_dir, run_embed_job


@pytest.fixture(scope="module")
def model(converted):
    return converted("tiny", "q8_0")


@pytest.fixture(scope="module")
def embedder(model):
    with Embedder(model) as e:
        yield e


# -- context arguments llama.cpp asserts on ---------------------------------------------------------------
def test_small_micro_batches_and_contexts_run_in_a_subprocess(model, tmp_path):
    """n_ubatch=8 or an n_ctx below max_batch_sequences used to abort on
    GGML_ASSERT(n_outputs_max <= cparams.n_outputs_max); each must embed what the defaults embed."""
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(f"""
        import json, numpy as np
        from qembed_gguf import Embedder
        texts = [f"a b c {{i}}" for i in range(70)] + ["x " * 30, "one more input"]
        # flash attention off: its CPU kernel accumulates in f16, and with 8-token micro-batches a
        # long input drifts (cos 0.98 on this random-weight model), which is not what is tested here
        ref = Embedder({str(model)!r}, flash_attn=False, max_tokens=16).embed(texts)
        out = {{}}
        for kw in [dict(n_ubatch=8), dict(n_ubatch=1), dict(n_ctx=16), dict(n_ctx=16, max_batch_sequences=256),
                   dict(n_ubatch=8, max_batch_sequences=256), dict(n_ctx=1, max_tokens=1)]:
            e = Embedder({str(model)!r}, flash_attn=False, **{{"max_tokens": 16, **kw}})
            v = e.embed(texts)
            out[repr(kw)] = [bool(np.isfinite(v).all()), float((v * ref).sum(1).min()) if kw.get("max_tokens") != 1
                             else 1.0, e.stats.decode_calls]
        print(json.dumps(out))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, f"rc {proc.returncode} (negative: killed by a signal)\n{proc.stderr[-3000:]}"
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for kw, (finite, cos, calls) in results.items():
        assert finite and cos > 0.9999, (kw, cos)
        assert calls >= 1
    assert results["{'n_ubatch': 1}"][2] == 72  # one sequence per decode call


@pytest.mark.parametrize("kwargs, match", [
    ({"max_tokens": 10**9}, r"max_tokens=1000000000 is more than the model's trained context .* 32768"),
    ({"n_ctx": 10**9}, r"n_ctx=1000000000 is more than the model's trained context"),
    ({"max_tokens": 32769}, r"more than the model's trained context"),
    ({"n_ctx": 100, "max_tokens": 200}, r"n_ctx \(100\) must be >= max_tokens \(200\)"),
    ({"max_batch_sequences": 257}, r"max_batch_sequences=257 is more than llama.cpp's LLAMA_MAX_SEQ, 256"),
    ({"n_threads": 0}, r"n_threads must be a positive integer, got 0"),
    ({"n_threads": 100_000}, r"GGML_MAX_N_THREADS, 512"),
    ({"n_ubatch": True}, r"n_ubatch must be a positive integer, got True"),
    ({"max_tokens": 2.5}, r"max_tokens must be a positive integer, got 2.5"),
    ({"flash_attn": "yes"}, r"flash_attn must be True, False or None, got 'yes'"),
])
def test_settings_out_of_bounds_are_refused_before_any_allocation(model, kwargs, match):
    """max_tokens=10**9 used to allocate until the machine killed the process."""
    with pytest.raises(InputError, match=match):
        Embedder(model, **kwargs)


def test_the_trained_context_is_accepted_and_memory_follows_use(model):
    with Embedder(model, max_tokens=32768) as e:  # the tiny model's context_length
        assert e.max_tokens == e.n_ctx == 32768
        assert e._runtime.n_ctx == 512 and e._runtime._capacity == 512  # KV cache and batch buffers: as used
        text = "word " * 1500
        (n,) = e.count_tokens([text])
        e.embed([text])
        grown = 512 * 2 ** int(np.ceil(np.log2(n / 512)))  # doubled from 512 until the input fits
        assert e._runtime.n_ctx == grown < 32768 and n <= e._runtime._capacity <= grown


def test_cli_max_tokens_out_of_range_is_a_clear_error(model, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("hello\n")
    result = CliRunner().invoke(main, ["embed", str(model), str(src), "-o", str(tmp_path / "o.npy"), "-q",
                                       "--max-tokens", "1000000000"])
    assert result.exit_code != 0
    assert "max_tokens=1000000000 is more than the model's trained context" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.npy").exists()


# -- text that is not Unicode ------------------------------------------------------------------------------
@pytest.mark.parametrize("call, where, index, position", [
    (lambda e: e.embed(["fine", "bad \ud800 here"]), "texts[1]", 1, 4),
    (lambda e: e.embed("\udfff"), "texts[0]", 0, 0),
    (lambda e: e.count_tokens(["ok", "ok", "é\ud83d"]), "texts[2]", 2, 1),
    (lambda e: e.embed_query(["ok"], task="find \ud800"), "instruction", None, 5),
    (lambda e: e.embed(["ok"], instruction="\ud800"), "instruction", None, 0),
    (lambda e: e.encode(["ok"], prompt="p\udc80: "), "prompt", None, 1),
])
def test_a_lone_surrogate_is_an_input_error_naming_index_and_position(embedder, call, where, index, position):
    with pytest.raises(InvalidTextError) as info:
        call(embedder)
    err = info.value
    assert isinstance(err, InputError) and not isinstance(err, UnicodeError)
    assert str(err).startswith(f"{where} holds a lone surrogate") and f"at character {position}" in str(err)
    assert (err.index, err.position) == (index, position)
    assert embedder.embed(["still works"]).shape == (1, embedder.dim)


def test_a_surrogate_pair_is_fine(embedder):
    """Python strings from proper JSON never hold surrogate pairs, but a proper astral character must work."""
    assert embedder.embed(["emoji 🦙"]).shape == (1, embedder.dim)


# -- cancelled work (what the server uses for clients that disconnected) ---------------------------------
def test_pool_skips_cancelled_sequences_and_keeps_the_rest_exact(embedder):
    texts = [f"input number {i} " * (1 + i % 5) for i in range(40)]
    seqs = embedder.prepare_texts(texts)
    want = embedder.pool(seqs, batch_tokens=64)
    calls_full = embedder.stats.decode_calls
    before = embedder.stats.decode_calls
    cancelled = set(range(0, 40, 2))  # every other input, e.g. one request's of two
    got = embedder.pool(seqs, batch_tokens=64, cancelled=lambda i: i in cancelled)
    assert np.isnan(got[sorted(cancelled)]).all()
    keep = sorted(set(range(40)) - cancelled)
    # the same rows as without cancellation, up to the packing's numerics (flash attention's CPU
    # kernel accumulates in f16; the README's batched-vs-alone figures)
    a, b = got[keep], want[keep]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999, cos.min()
    assert embedder.stats.decode_calls - before < calls_full  # fewer decode calls than the whole set

    # cancelled midway: decode calls stop once it says so
    asked, before = [], embedder.stats.decode_calls
    def gone_after_first_call(i):
        asked.append(i)
        return embedder.stats.decode_calls > before
    got = embedder.pool(seqs, batch_tokens=64, cancelled=gone_after_first_call)
    assert embedder.stats.decode_calls - before == 1
    assert np.isfinite(got).all(axis=1).sum() >= 1 and np.isnan(got).any()


# -- `embed -`: standard input is streamed, not held --------------------------------------------------------
class _Pipe:
    """A pipe-like binary stdin that refuses an unbounded read() and records the sizes asked for."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.sizes = data, 0, []

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            raise AssertionError("stdin was read whole")
        self.sizes.append(n)
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk


def test_stdin_is_streamed_to_a_spool_file_that_is_removed(embedder, tmp_path):
    lines = [f"line {i} of a piped corpus" for i in range(300)]
    pipe = _Pipe(("\n".join(lines) + "\n").encode())
    out = tmp_path / "o.npy"
    result = run_embed_job(embedder, "-", out, JobSettings(chunk_size=64), stdin=pipe)
    assert result.n_texts == result.n_embedded == 300 and max(pipe.sizes) <= 1 << 20
    whole = np.concatenate([embedder.embed(lines[k:k + 64]) for k in range(0, 300, 64)])  # as the job's chunks
    np.testing.assert_array_equal(np.load(out), whole)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npy"]  # no spool, no job folder left

    bad = _Pipe(b'{"text": "ok"}\n{"text": "\\ud800 broken escape"}\n')
    with pytest.raises(InputError, match=r"<stdin>: line 2: 'text' holds a lone surrogate .* at character 0"):
        run_embed_job(embedder, "-", tmp_path / "b.npy", JobSettings(fmt="jsonl"), stdin=bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npy"]
    # an id is written to .ids.json / .spans.jsonl as UTF-8: a lone surrogate in it is refused in the first pass
    bad_id = _Pipe(b'{"text": "ok", "id": 1}\n{"text": "fine", "id": {"k": ["x\\udc00"]}}\n')
    with pytest.raises(InputError, match=r"<stdin>: line 2: the 'id' holds a lone surrogate"):
        run_embed_job(embedder, "-", tmp_path / "c.npy", JobSettings(fmt="jsonl"), stdin=bad_id)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.npy"]


def test_a_resumed_job_counts_only_what_it_embedded(embedder, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("".join(f"text {i}\n" for i in range(40)))
    out = tmp_path / "out.npy"

    class Stop(Exception):
        pass

    calls = []

    def stop_after_three(n):
        calls.append(n)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        run_embed_job(embedder, str(src), out, JobSettings(chunk_size=8), progress=stop_after_three)
    assert len(list(job_dir(out).glob("chunk-*.npy"))) == 3
    result = run_embed_job(embedder, str(src), out, JobSettings(chunk_size=8))
    assert (result.n_texts, result.n_embedded, result.resumed_chunks) == (40, 16, 3)
    assert result.texts_per_second == pytest.approx(16 / result.seconds)
    assert result.n_tokens == sum(embedder.count_tokens([f"text {i}" for i in range(24, 40)]))


def test_a_bad_setting_leaves_no_job_folder_to_poison_the_corrected_run(model, tmp_path):
    src = tmp_path / "in.txt"
    src.write_text("a\nb\n")
    out = tmp_path / "o.npy"
    for args, match in [(["--dim", "7"], "dim must be an integer in"), (["--batch-tokens", "100000"], "batch_tokens"),
                        (["--query", "--task", "bad \ud800"], "instruction holds a lone surrogate")]:
        result = CliRunner().invoke(main, ["embed", str(model), str(src), "-o", str(out), "-q", *args])
        assert result.exit_code != 0 and match in result.output, result.output
        assert not job_dir(out).exists() and not out.exists()
    result = CliRunner().invoke(main, ["embed", str(model), str(src), "-o", str(out), "-q", "--dim", "64"])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape == (2, 64)


def test_a_foreign_pre_tokenizer_is_not_claimed_corrected(model, tmp_path, caplog):
    """The Embedder makes up for a missing pooling type or EOS flag, not for the pre-tokenizer
    llama.cpp tokenizes with: its warning must say so."""
    from gguf_edit import copy_with_changes

    foreign = copy_with_changes(model, tmp_path / "llama3-pre.gguf", values={"tokenizer.ggml.pre": ("llama3", gguf.GGUFValueType.STRING)})
    with caplog.at_level("WARNING", logger="qembed_gguf"):
        Embedder(foreign).close()
    line = next(r.getMessage() for r in caplog.records if "tokenizer.ggml.pre" in r.getMessage())
    assert "NOT corrected" in line and "pre-tokenizer" in line and "corrected at run time" not in line


def test_a_fifo_is_refused_by_the_embedder_for_what_it_is(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(ModelLoadError, match=r"is a FIFO \(named pipe\), not a regular file"):
        Embedder(fifo)  # a blocking open would hang here
    with pytest.raises(ModelLoadError, match=r"is a character device"):
        Embedder("/dev/zero")
