"""Two CPU processes (accelerate + gloo) train and evaluate like one process (issue 5)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from llm_fixtures import tiny_config

# benchmarks/gpu_check.sh runs these on 2 GPUs (NCCL) with CORA_TEST_DEVICE=cuda; CI on gloo CPUs.
DEVICE = os.environ.get("CORA_TEST_DEVICE", "cpu")


SGD_CORA = str(Path(__file__).with_name("sgd_cora.py"))


def _cora(args: list[str], processes: int, tmp_path, sgd: bool = False) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "ACCELERATE_CONFIG_FILE": str(tmp_path / "none.yaml")}
    entry = [SGD_CORA] if sgd else ["-m", "cora"]
    if processes == 1:
        cmd = [sys.executable, *entry, *args]
    else:
        # accelerate's `--cpu` flag starts one process; its torchrun launcher sits behind
        # `--multi_gpu`, and with device "cpu" each process joins a gloo group on the CPU.
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "29517", *entry, *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def test_two_processes_equal_one_process_with_the_doubled_batch(tmp_path):
    # No dropout: each process draws its own masks, so only the arithmetic is compared. Plain SGD
    # (tests/sgd_cora.py): two processes sum the gradient in another float order than one, and
    # AdamW's 1/sqrt(v) turns those ulps into lr-sized steps wherever a gradient is near 0, on
    # some CPUs and not others. SGD keeps the difference linear in the gradient's rounding.
    cfg = tiny_config(tmp_path, max_steps=3, eval_every=3, warmup_steps=1, gen_dropout=0.0, lora_dropout=0.0,
                      eval_batch_size=7, device=DEVICE, lr=0.05)
    cfg.save(tmp_path / "cfg.yaml")
    _cora(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "one"), "--batch-size", "4"],
          1, tmp_path, sgd=True)
    _cora(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(tmp_path / "two"), "--batch-size", "2"],
          2, tmp_path, sgd=True)
    one = load_file(str(tmp_path / "one" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "model.safetensors"))
    # How the global batch was made is recorded: the same 4 rows per step, 1 x 4 or 2 x 2.
    for run, processes, per_process in (("one", 1, 4), ("two", 2, 2)):
        summary = json.loads((tmp_path / run / "train_summary.json").read_text())
        assert (summary["processes"], summary["per_process_batch"], summary["grad_accum"],
                summary["global_batch"]) == (processes, per_process, 1, 4)
    from cora.train.run import build_method

    init = build_method(cfg)[0].trainable_state_dict()  # the seeded initial weights both runs start from
    assert one.keys() == two.keys() == init.keys() and len(one) > 1
    moved = 0
    for name in one:
        if name == "logit_offset":  # a forward-only constant: compared as a score below
            assert float(two[name]) == pytest.approx(float(one[name]), abs=1e-5)
            continue
        update = (one[name] - init[name]).abs().max().item()
        # The same rows and loss give the same SGD update up to float rounding (~1e-7 of it); a
        # batch split wrongly (other rows, another mean) changes it by a sizeable fraction.
        diff = (two[name] - one[name]).abs().max().item()
        assert diff <= 1e-4 * update + 1e-8, (name, diff, update)
        moved += int(update > 0)
    assert moved > 0 and any("lowrank_B" in n and one[n].abs().sum() > 0 for n in one)  # B left 0: training happened

    # Evaluation: 2 processes shard the rows and gather them; no row twice, same scores.
    _cora(["evaluate", str(tmp_path / "one"), "--split", "valid"], 1, tmp_path)
    single = pd.read_parquet(tmp_path / "one" / "predictions-valid.parquet")
    os.rename(tmp_path / "one" / "predictions-valid.parquet", tmp_path / "single.parquet")
    _cora(["evaluate", str(tmp_path / "one"), "--split", "valid"], 2, tmp_path)
    double = pd.read_parquet(tmp_path / "one" / "predictions-valid.parquet")
    assert len(double) == len(single)  # a padding sampler would have repeated rows to fill 2 x 7
    assert len(single) % (2 * 7) != 0
    assert double[["uid", "iid", "label"]].equals(single[["uid", "iid", "label"]])
    # Forward only, no optimizer to amplify: one row's score depends only on its own prompt (and
    # its padding in a batch, which the length-sorted shards may change), to a few ulps.
    assert double["score"].to_numpy() == pytest.approx(single["score"].to_numpy(), abs=1e-5, rel=1e-5)


def test_an_accelerate_config_asking_for_mixed_precision_is_one_line(monkeypatch, tmp_path):
    """cora's precision is its --dtype; an accelerate config's mixed_precision would be silently
    overridden, so it is refused with what to do instead."""
    from cora.errors import CoraError
    from cora.train.loop import make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    with pytest.raises(CoraError, match="asks for mixed_precision bf16; .* set mixed_precision: no .* --dtype bf16"):
        make_accelerator(tiny_config(tmp_path))


def test_a_deepspeed_launch_is_refused_rather_than_run_as_something_else(monkeypatch, tmp_path):
    from cora.errors import CoraError
    from cora.train.loop import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(CoraError, match="DeepSpeed is not supported: .* configs/accelerate-fsdp.yaml .* --multi_gpu"):
        make_accelerator(tiny_config(tmp_path))


@pytest.mark.parametrize("version, dtype, message", [
    ("1", "fp32", "asks for FSDP version 1; cora trains under FSDP2 only: set fsdp_version: 2"),
    ("2", "fp16", "--dtype fp16 .* is not supported under FSDP: use --dtype bf16 or fp32"),
])
def test_an_fsdp_launch_the_loop_cannot_run_is_one_line(monkeypatch, tmp_path, version, dtype, message):
    """FSDP1's flat parameters hide the B's the adapter reads; fp16's scaler does not unscale shards."""
    from cora.errors import CoraError
    from cora.train.loop import make_accelerator

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", version)
    with pytest.raises(CoraError, match=message):
        make_accelerator(tiny_config(tmp_path, dtype=dtype))


def test_a_method_trained_in_stages_is_refused_under_fsdp(tmp_path):
    """FSDP shards once, at prepare; CoLLM's stages change which parameters train."""
    from types import SimpleNamespace

    from cora.errors import CoraError
    from cora.train.run import _train_run

    sharded = SimpleNamespace(is_fsdp2=True, is_main_process=True, wait_for_everyone=lambda: None)
    with pytest.raises(CoraError, match=r"method 'collm' trains in stages \(.*\), which FSDP does not support yet"):
        _train_run(tiny_config(tmp_path, method="collm"), tmp_path / "run", sharded, False, False, None, None, False)
