"""Non-finite steps never kill hours of work silently (issue 30 item 3): a step whose loss or
gradient is not finite is skipped and counted, the gradient norm is logged, and N skipped steps in
a row stop the run with one true line, its last good checkpoint kept for a resume."""

from __future__ import annotations

import json
import math

import pytest
import torch

import cora.train.loop as loop
from cora.errors import CoraError
from cora.train.checkpoint import load_tensors
from cora.train.run import train_run

from llm_fixtures import tiny_config


class PlantedNaN:
    """Stands in for torch.nn.functional inside the loop: the training loss of the chosen calls
    (one per step here: grad_accum 1) is multiplied by NaN, so its gradient is NaN too."""

    def __init__(self, planted):
        self.planted, self.calls = planted, 0

    def binary_cross_entropy_with_logits(self, logits, labels):
        self.calls += 1
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)
        return loss * math.nan if self.planted(self.calls) else loss


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_a_planted_non_finite_step_is_skipped_counted_and_the_norm_logged(root, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "F", PlantedNaN(lambda k: k == 3))
    summary = train_run(tiny_config(root), tmp_path / "run", show_progress=False)
    assert summary["steps"] == 6 and summary["skipped_steps"] == 1
    log = _log(tmp_path / "run")
    assert [r["skipped_steps"] for r in log] == [0, 1, 1]
    assert all(r["grad_norm"] > 0 and r["grad_norm_max"] >= r["grad_norm"] for r in log)
    assert all(math.isfinite(r["loss"]) for r in log)  # the NaN loss is not averaged in
    assert all(torch.isfinite(t).all() for t in load_tensors(tmp_path / "run" / "model.safetensors").values())


def test_n_skipped_steps_in_a_row_stop_with_the_true_line_and_the_checkpoint_resumes(root, tmp_path, monkeypatch):
    cfg = tiny_config(root, max_skipped_steps=3)
    monkeypatch.setattr(loop, "F", PlantedNaN(lambda k: k >= 3))
    run = tmp_path / "run"
    with pytest.raises(CoraError) as e:
        train_run(cfg, run, show_progress=False)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("3 steps in a row (3-5) had a non-finite loss or gradient: training stopped")
    assert f"the last checkpoint ({run / 'checkpoint'}, step 4) is intact" in msg
    assert "best weights so far" in msg and "--max-grad-norm" in msg
    # The cause fixed, the run resumes from that checkpoint and finishes; the skips stay counted.
    monkeypatch.setattr(loop, "F", torch.nn.functional)
    summary = train_run(cfg, run, resume=True, show_progress=False)
    assert summary["steps"] == 6 and summary["skipped_steps"] == 2  # steps 3 and 4, saved at step 4


def test_a_run_stopped_before_its_first_checkpoint_says_so(root, tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "F", PlantedNaN(lambda k: True))
    with pytest.raises(CoraError, match=r"^2 steps in a row \(1-2\) .*no checkpoint was written yet"):
        train_run(tiny_config(root, max_skipped_steps=2), tmp_path / "run", show_progress=False)


def test_max_grad_norm_clips_and_the_logged_norm_is_before_clipping(root, tmp_path):
    free = train_run(tiny_config(root), tmp_path / "free", show_progress=False)
    clipped = train_run(tiny_config(root, max_grad_norm=1e-3), tmp_path / "clip", show_progress=False)
    assert free["steps"] == clipped["steps"] == 6
    assert _log(tmp_path / "clip")[0]["grad_norm"] > 1e-3  # the norm before clipping
    # Clipping changed the training: the same first step, then other weights.
    # The same gradient, its norm taken by two summation orders (torch's clip vs the loop's): fp32
    # rounding of a sum over ~1e4 squares, well inside 1e-5 relative.
    assert _log(tmp_path / "free")[0]["grad_norm"] == pytest.approx(_log(tmp_path / "clip")[0]["grad_norm"], rel=1e-5)
    assert [r["loss"] for r in _log(tmp_path / "free")] != [r["loss"] for r in _log(tmp_path / "clip")]
