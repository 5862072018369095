"""On a llama.cpp build with a GPU backend (CUDA, Vulkan, Metal): offloaded vectors equal CPU
vectors, and the planner's prediction covers what the GPU really used. Skipped, with the reason,
everywhere else — CI has no GPU. Run with `pytest -m gpu` on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest

from qembed_gguf import Embedder, devices

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not devices.gpu_offload_supported(),
                       reason="this llama.cpp build has no GPU backend (llama_supports_gpu_offload() is false); "
                              "install one with `qembed-gguf backend install --preset ...` (see `qembed-gguf doctor`)"),
]

TEXTS = ["A GPU offload must not change the vectors.", "東京は日本の首都です。", "def f(x): return x * 2", "",
         "word " * 300]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("outtype", ["q8_0", "f16"])
def test_gpu_vectors_equal_cpu_vectors(converted, outtype):
    path = converted("tiny", outtype)
    with Embedder(path, n_gpu_layers=0) as cpu:
        ref = cpu.embed(TEXTS, normalize=False)
    for layers in (-1, 2):  # everything, and a partial offload
        with Embedder(path, n_gpu_layers=layers) as gpu:
            got = gpu.embed(TEXTS, normalize=False)
        assert got.dtype == np.float32 and got.shape == ref.shape
        assert cosine_rows(got, ref).min() >= 0.999, (layers, cosine_rows(got, ref))


def test_auto_plans_and_the_plan_covers_the_measured_use(converted):
    path = converted("tiny", "q8_0")
    gpus, _ = devices.nvidia_gpus()
    before = gpus[0].total - gpus[0].free if gpus else None
    with Embedder(path, n_gpu_layers="auto", max_tokens=4096) as e:
        assert e.gpu_plan is not None and e.gpu_plan.fits_fully and e.n_gpu_layers == e.gpu_plan.n_gpu_layers
        e._runtime.reserve(e.n_ctx)  # the full context, as planned
        vectors = e.embed(TEXTS)
        if gpus:
            after = devices.nvidia_gpus()[0][0]
            used = (after.total - after.free) - before
            assert used <= e.gpu_plan.gpu_bytes, (used, e.gpu_plan.describe())
    assert np.isfinite(vectors).all()
