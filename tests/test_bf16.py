"""Every LLM method trains and scores on a bf16 backbone (GPU runs use one, and a CPU with
AVX512-BF16 runs it faster): the trainable tensors stay fp32, the loss and the scores are finite,
and what is saved is fp32."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from cora.train.run import evaluate_run, train_run

from llm_fixtures import tiny_config

TRAINED = ("cora", "tallrec", "collm", "binllm", "prompt4nr", "personprompt")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("bf16")


@pytest.mark.parametrize("method", TRAINED)
def test_method_trains_on_a_bf16_backbone(root, tmp_path, method):
    cfg = tiny_config(root, method=method, dtype="bf16", max_steps=2, eval_every=2, limit_valid=16)
    if method == "prompt4nr":
        cfg.soft_prompt, cfg.soft_tokens, cfg.prompt_lora = "slots", 3, True  # the reference layout
    train_run(cfg, tmp_path / "run", show_progress=False)
    losses = [r["loss"] for line in (tmp_path / "run").rglob("log.jsonl")
              for r in map(json.loads, line.read_text().splitlines()) if "loss" in r]
    assert losses and np.isfinite(losses).all()
    saved = load_file(str(tmp_path / "run" / "model.safetensors"))
    floats = {k: v.dtype for k, v in saved.items() if v.is_floating_point()}
    assert floats and set(floats.values()) == {torch.float32}, floats
    metrics = evaluate_run(tmp_path / "run", "test", show_progress=False)
    scores = pd.read_parquet(tmp_path / "run" / "predictions-test.parquet")["score"]
    assert np.isfinite(scores).all() and scores.nunique() > 1 and 0 <= metrics["auc"] <= 1
