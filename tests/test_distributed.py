"""Two CPU processes (accelerate + gloo) train and evaluate like one process (issue 5)."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from llm_fixtures import tiny_config


def _cora(args: list[str], processes: int, tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    if processes == 1:
        cmd = [sys.executable, "-m", "cora", *args]
    else:
        # accelerate's `--cpu` flag starts one process; its torchrun launcher sits behind
        # `--multi_gpu`, and with device "cpu" each process joins a gloo group on the CPU.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29517", "-m", "cora", *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_two_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    # No dropout: each process draws its own masks, so only the arithmetic is compared.
    cfg = tiny_config(tmp_path, max_steps=3, eval_every=3, warmup_steps=1, gen_dropout=0.0, lora_dropout=0.0,
                      eval_batch_size=7, device="cpu")
    cfg.save(tmp_path / "cfg.yaml")
    _cora(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "one"), "--batch-size", "4"],
          1, tmp_path)
    _cora(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "two"), "--batch-size", "2"],
          2, tmp_path)
    one = load_file(str(tmp_path / "one" / "checkpoint" / "trainable.safetensors"))
    two = load_file(str(tmp_path / "two" / "checkpoint" / "trainable.safetensors"))
    assert one.keys() == two.keys() and len(one) > 0
    moved = 0
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=0)
        moved += int(one[name].abs().sum() > 0)
    assert moved > 0  # B left zero: training happened

    # Evaluation: 2 processes shard the rows and gather them; no row twice, same scores.
    _cora(["evaluate", str(tmp_path / "one"), "--split", "valid"], 1, tmp_path)
    single = pd.read_parquet(tmp_path / "one" / "predictions-valid.parquet")
    os.rename(tmp_path / "one" / "predictions-valid.parquet", tmp_path / "single.parquet")
    _cora(["evaluate", str(tmp_path / "one"), "--split", "valid"], 2, tmp_path)
    double = pd.read_parquet(tmp_path / "one" / "predictions-valid.parquet")
    assert len(double) == len(single)  # a padding sampler would have repeated rows to fill 2 x 7
    assert len(single) % (2 * 7) != 0
    assert double[["uid", "iid", "label"]].equals(single[["uid", "iid", "label"]])
    assert double["score"].to_numpy() == pytest.approx(single["score"].to_numpy(), abs=1e-5)
