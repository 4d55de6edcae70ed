"""On a CUDA device (skipped without one; benchmarks/gpu_check.sh runs these on a GPU machine):
every LLM method trains and scores there, fp32 on the GPU matches the CPU up to summation order,
and TF32 stays within a bound of fp32."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from cora.train.run import evaluate_run, train_run

from llm_fixtures import tiny_config

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("cuda")


def _scores(cfg, out) -> np.ndarray:
    train_run(cfg, out, show_progress=False)
    evaluate_run(out, "test", show_progress=False)
    return pd.read_parquet(out / "predictions-test.parquet")["score"].to_numpy()


@pytest.mark.parametrize("method", ["cora", "tallrec", "collm", "binllm", "prompt4nr", "personprompt"])
def test_method_trains_on_cuda_and_matches_the_cpu(root, tmp_path, method):
    # Dropout off: CUDA draws other masks than the CPU from the same seed (measured on an H200,
    # 2026-12-04: CoRA's scores then differ by up to 0.015 after two steps), and the comparison is
    # about the computation, not the random stream. Batches, init and shuffles are CPU-seeded.
    cfg = tiny_config(root, method=method, max_steps=2, eval_every=2, limit_valid=16, lora_dropout=0.0,
                      gen_dropout=0.0)
    cpu = _scores(cfg, tmp_path / "cpu")
    gpu = _scores(dataclasses.replace(cfg, device="cuda"), tmp_path / "cuda")
    # Two steps of AdamW on another device's kernels: only summation order differs, whose effect on
    # a tiny model's logits is far below 1e-3 (a batch on the wrong device fails; a wrong
    # weight moves them by O(0.01) or more).
    assert np.isfinite(gpu).all() and np.abs(gpu - cpu).max() < 1e-3


def test_tf32_and_bf16_stay_near_fp32_on_cuda(root, tmp_path):
    cfg = tiny_config(root, method="cora", device="cuda", max_steps=2, eval_every=2, limit_valid=16)
    fp32 = _scores(cfg, tmp_path / "fp32")
    tf32 = _scores(dataclasses.replace(cfg, tf32=True), tmp_path / "tf32")
    assert torch.backends.cuda.matmul.allow_tf32  # the run set it from its config
    bf16 = _scores(dataclasses.replace(cfg, dtype="bf16"), tmp_path / "bf16")
    assert np.abs(tf32 - fp32).max() < 5e-2 and np.abs(bf16 - fp32).max() < 2e-1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_1_is_honoured_by_train_and_evaluate(root, tmp_path):
    """--device cuda:1 trains and scores on the second GPU, not on cuda:0 or the CPU."""
    cfg = tiny_config(root, method="cora", max_steps=2, eval_every=2, limit_valid=16, lora_dropout=0.0,
                      gen_dropout=0.0)
    first = _scores(dataclasses.replace(cfg, device="cuda:0"), tmp_path / "gpu0")
    torch.cuda.reset_peak_memory_stats(1)
    second = _scores(dataclasses.replace(cfg, device="cuda:1"), tmp_path / "gpu1")
    assert torch.cuda.max_memory_allocated(1) > 0
    assert np.abs(second - first).max() < 1e-4  # the same kernels on the same kind of card
