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
                      eval_batch_size=7, device="cpu", lr=0.05)
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


@pytest.mark.parametrize("flag, name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharded_launch_is_refused_rather_than_run_as_something_else(monkeypatch, tmp_path, flag, name):
    """accelerate 1.16 runs an FSDP launch on a CPU as plain DDP (measured: DistributedType.MULTI_CPU);
    on a GPU the loop's one-writer checkpoints would meet sharded parameters."""
    from cora.errors import CoraError
    from cora.train.loop import make_accelerator

    monkeypatch.setenv(flag, "true")
    with pytest.raises(CoraError, match=f"{name} \\(sharded training\\) is not supported yet: .* --multi_gpu"):
        make_accelerator(tiny_config(tmp_path))
