"""MF's optimiser: the reference's dense Adam by default, SparseAdam only when asked.

The reference (CoLLM's baseline_train_mf_ood.py) trains MF with ``torch.optim.Adam(params, lr,
weight_decay=wd)``: L2 reaches every row at every step and Adam's moments keep moving rows the
batch does not hold. SparseAdam updates the batch's rows only, so it is an option
(``optimizer: sparse-adam``), never the default.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F

from cora.cf.models import build_cf_model
from cora.cf.train import _batch_l2, make_optimizer
from cora.config import CFConfig
from cora.errors import CoraError

from helpers import run_cli
from llm_fixtures import tiny_dataset


def mf(optimizer: str, **kw):
    cfg = CFConfig.for_model("mf", data="unused", dim=4, optimizer=optimizer, **kw)
    return cfg, build_cf_model(cfg, n_users=10, n_items=12)


def one_step(cfg, model) -> tuple[torch.Tensor, torch.Tensor]:
    """User and item tables after one step on users 1, 2 and items 3, 4."""
    opt = make_optimizer(model, cfg)
    batch = {"uid": torch.tensor([1, 2]), "iid": torch.tensor([3, 4]), "label": torch.tensor([1.0, 0.0])}
    loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"]) + _batch_l2(model, batch, cfg)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return model.user.weight.detach().clone(), model.item.weight.detach().clone()


def test_default_is_the_references_dense_adam_with_l2_on_every_row():
    cfg, model = mf("adam")
    assert cfg.optimizer == "adam" and CFConfig.for_model("mf").optimizer == "adam"
    opt = make_optimizer(model, cfg)
    assert type(opt) is torch.optim.Adam and opt.defaults["weight_decay"] == cfg.weight_decay == 1e-4
    before = model.user.weight.detach().clone()
    users, _ = one_step(cfg, model)
    assert not torch.equal(users[5], before[5])  # a user outside the batch moves (its L2 gradient)


def test_sparse_adam_moves_only_the_rows_of_the_batch():
    cfg, model = mf("sparse-adam")
    assert model.user.sparse and model.item.sparse
    assert type(make_optimizer(model, cfg)) is torch.optim.SparseAdam
    users0, items0 = model.user.weight.detach().clone(), model.item.weight.detach().clone()
    users, items = one_step(cfg, model)
    changed_users = [r for r in range(10) if not torch.equal(users[r], users0[r])]
    changed_items = [r for r in range(12) if not torch.equal(items[r], items0[r])]
    assert changed_users == [1, 2] and changed_items == [3, 4]


@pytest.mark.parametrize("model", ["lightgcn", "sasrec"])
def test_sparse_adam_is_for_mf_only(model):
    cfg = CFConfig.for_model(model, data="unused", dim=4, optimizer="sparse-adam")
    with pytest.raises(CoraError, match=f"--optimizer sparse-adam is for mf, not {model}"):
        build_cf_model(cfg, 10, 12)


def test_a_killed_sparse_adam_run_resumes_to_the_same_model(tmp_path):
    """SparseAdam's state goes through the checkpoint: killed in its third epoch and run again,
    the run ends with the metrics of one that ran through."""
    data = tiny_dataset(tmp_path)
    args = ["cf", "train", "--data", data, "--model", "mf", "--dim", "8", "--epochs", "4", "--patience", "4",
            "--batch-size", "64", "--optimizer", "sparse-adam"]
    killed = run_cli(*args, "--out", tmp_path / "killed", env={**os.environ, "CORA_TEST_KILL_AT": "cf-epoch:3"})
    assert killed.returncode != 0 and (tmp_path / "killed" / "checkpoint").exists()
    assert run_cli(*args, "--out", tmp_path / "killed").returncode == 0
    assert run_cli(*args, "--out", tmp_path / "whole").returncode == 0
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("killed", "whole")]
    assert metrics[0]["test"] == metrics[1]["test"] and metrics[0]["valid"] == metrics[1]["valid"]
