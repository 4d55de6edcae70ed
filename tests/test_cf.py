"""CF models (MF, LightGCN, SASRec) and their training loop: shapes, graph maths, padding,
resume, evaluate round trip, and MF on the paper's real ML-1M splits."""

from __future__ import annotations

import json

import pandas as pd
import yaml
import pytest
import torch
from safetensors.torch import load_file

from cora.cf import train as cf_train_module
from cora.cf.data import pad_histories
from cora.cf.models import SASRec, LightGCN, MatrixFactorization
from cora.cf.train import evaluate_cf_run, load_cf_run, train_cf
from cora.config import CFConfig
from cora.data.store import write_dataset
from cora.errors import CoraError

from helpers import run_cli, synthetic_splits

METRIC_KEYS = {"n", "auc", "uauc", "uauc_users", "warm", "cold"}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    out = tmp_path_factory.mktemp("cf") / "data"
    write_dataset(out, synthetic_splits(n_rows=400, n_users=12, n_items=30), name="toy", domain="movies")
    return out


def small_cfg(model: str, data, **kw) -> CFConfig:
    base = dict(data=str(data), dim=8, epochs=6, patience=6, batch_size=64, max_len=5)
    base.update(kw)
    return CFConfig.for_model(model, **base)


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("cls", [MatrixFactorization, LightGCN, SASRec])
def test_embedding_shapes_and_score_is_dot_product(cls):
    torch.manual_seed(0)
    model = cls(7, 11, dim=6)
    if cls is LightGCN:
        model.set_graph(torch.tensor([1, 2, 3, 3]), torch.tensor([4, 5, 5, 6]))
    model.eval()
    batch = {"uid": torch.tensor([1, 2, 6]), "iid": torch.tensor([3, 10, 4]),
             "his": torch.tensor([[0, 0, 1, 2, 3], [0, 0, 0, 0, 9], [0, 0, 0, 0, 0]])}
    u, i = model.user_embedding(batch), model.item_embedding(batch["iid"])
    assert u.shape == (3, 6) and i.shape == (3, 6)
    torch.testing.assert_close(model(batch), (u * i).sum(-1))


def test_lightgcn_adjacency_is_symmetric_normalised_and_propagation_matches_dense():
    model = LightGCN(4, 5, dim=3, n_layers=2)
    # Duplicated pair (1, 2) must count once; user 3 and item 4 have no edges.
    model.set_graph(torch.tensor([1, 1, 1, 2]), torch.tensor([2, 2, 3, 2]))
    dense = model.adj.to_dense()
    torch.testing.assert_close(dense, dense.T)
    n_u = 4
    deg_u1, deg_u2, deg_i2, deg_i3 = 2, 1, 2, 1
    assert dense[1, n_u + 2].item() == pytest.approx(1 / (deg_u1 * deg_i2) ** 0.5)
    assert dense[2, n_u + 2].item() == pytest.approx(1 / (deg_u2 * deg_i2) ** 0.5)
    assert dense[1, n_u + 3].item() == pytest.approx(1 / (deg_u1 * deg_i3) ** 0.5)
    assert dense[3].abs().sum() == 0 and dense[n_u + 4].abs().sum() == 0
    x0 = torch.cat([model.user.weight, model.item.weight])
    expected = (x0 + dense @ x0 + dense @ dense @ x0) / 3
    users, items = model.propagate()
    torch.testing.assert_close(torch.cat([users, items]), expected)
    # An isolated user keeps a third of its own embedding (layer 0 only).
    torch.testing.assert_close(users[3], model.user.weight[3] / 3)


def test_lightgcn_frozen_cache_equals_live_propagation():
    model = LightGCN(4, 5, dim=3)
    model.set_graph(torch.tensor([1, 2]), torch.tensor([2, 3]))
    live = model.propagate()[0].detach().clone()
    model.freeze_propagation()
    torch.testing.assert_close(model.user_embedding({"uid": torch.arange(4)}), live)


def test_lightgcn_without_graph_is_a_clear_error():
    with pytest.raises(CoraError, match="set_graph"):
        LightGCN(3, 3, dim=2).propagate()


def test_pad_histories_keeps_last_items_left_padded():
    out = pad_histories(pd.Series([[0, 5, 6, 7], [0], [0, 1, 2, 3, 4, 5, 6]]), 4)
    assert out.tolist() == [[0, 5, 6, 7], [0, 0, 0, 0], [3, 4, 5, 6]]


@pytest.mark.parametrize("block", ["reference", "preln"])
def test_sasrec_padding_does_not_change_the_user_vector_and_empty_history_is_finite(block):
    torch.manual_seed(0)
    model = SASRec(5, 12, dim=8, max_len=6, n_blocks=2, block=block).eval()
    short = {"his": torch.tensor([[0, 0, 0, 3, 4, 5]])}
    # Same items, with the padding positions holding different embeddings: must not matter.
    with torch.no_grad():
        model.item.weight[0].normal_()
    a = model.user_embedding(short)
    model.item.weight.data[0].zero_()
    b = model.user_embedding(short)
    torch.testing.assert_close(a, b)
    empty = model.user_embedding({"his": torch.zeros(2, 6, dtype=torch.long)})
    assert torch.isfinite(empty).all()


@pytest.mark.parametrize("block", ["reference", "preln"])
def test_sasrec_is_causal_in_time_order(block):
    """The last position sees everything; changing an earlier position changes the output,
    while the output at an earlier position ignores later items."""
    torch.manual_seed(0)
    model = SASRec(5, 12, dim=8, max_len=4, n_blocks=2, block=block).eval()
    y1, y2 = model.encode(torch.tensor([[1, 2, 3, 4]])), model.encode(torch.tensor([[1, 2, 3, 9]]))
    torch.testing.assert_close(y1[:, :3], y2[:, :3])
    assert not torch.allclose(y1[:, 3], y2[:, 3])
    y3 = model.encode(torch.tensor([[1, 7, 3, 4]]))
    assert not torch.allclose(y1[:, 3], y3[:, 3]) and torch.equal(y1[:, 0], y3[:, 0])


def test_reference_sasrec_block_computes_the_reference_formula():
    """x <- LN1(x) + Attn(q=LN1(x), k=v=x); x <- LN2(x); x <- (x + FFN(x)) * keep, written out by hand."""
    torch.manual_seed(0)
    model = SASRec(5, 12, dim=8, max_len=4, n_blocks=1, block="reference").eval()
    blk, seq = model.blocks[0], torch.tensor([[0, 2, 3, 4]])
    x = (model.item(seq) * 8 ** 0.5 + model.pos.weight) * (seq != 0).unsqueeze(-1)
    q = blk.attn_norm(x)
    w_q, w_k, w_v = blk.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = blk.attn.in_proj_bias.chunk(3)
    scores = (q @ w_q.T + b_q) @ (x @ w_k.T + b_k).transpose(1, 2) / 8 ** 0.5
    scores = scores.masked_fill(torch.triu(torch.ones(4, 4, dtype=torch.bool), 1), float("-inf"))
    h = q + blk.attn.out_proj(scores.softmax(-1) @ (x @ w_v.T + b_v))
    h = blk.ffn_norm(h)
    ffn = blk.ffn[3](torch.relu(blk.ffn[0](h)))
    expected = (h + ffn) * (seq != 0).unsqueeze(-1)
    torch.testing.assert_close(model.encode(seq), expected)
    with pytest.raises(CoraError, match="unknown SASRec block 'post'"):
        SASRec(5, 12, block="post")


def test_sasrec_runs_without_the_block_field_load_the_preln_block(toy, tmp_path):
    """Runs written before the reference block existed have no sas_block in config.yaml: they were
    trained with the pre-LN block and must load with it; new runs get the reference block."""
    new = tmp_path / "new"
    train_cf(small_cfg("sasrec", toy, epochs=1, patience=1), new, show_progress=False)
    assert yaml.safe_load((new / "config.yaml").read_text())["sas_block"] == "reference"
    model, _, _ = load_cf_run(new)
    assert model.block == "reference"
    legacy = tmp_path / "legacy"
    train_cf(small_cfg("sasrec", toy, epochs=1, patience=1, sas_block="preln"), legacy, show_progress=False)
    cfg = yaml.safe_load((legacy / "config.yaml").read_text())
    del cfg["sas_block"]
    (legacy / "config.yaml").write_text(yaml.safe_dump(cfg))
    model, _, _ = load_cf_run(legacy)
    assert model.block == "preln" and hasattr(model, "encoder")


# ------------------------------------------------------------------ training loop
@pytest.mark.parametrize("model", ["mf", "lightgcn", "sasrec"])
def test_train_writes_the_run_folder_and_evaluate_recomputes_it(toy, tmp_path, model):
    out = tmp_path / model
    metrics = train_cf(small_cfg(model, toy), out, show_progress=False)
    for name in ("config.yaml", "model.safetensors", "metrics.json", "predictions-valid.parquet",
                 "predictions-test.parquet", "log.jsonl"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint").exists()
    assert set(metrics["valid"]) == METRIC_KEYS and set(metrics["test"]) == METRIC_KEYS
    assert set(metrics["test"]["warm"]) == {"n", "auc", "uauc", "uauc_users"}
    assert metrics["test"]["n"] == 120 and metrics["test"]["warm"]["n"] + metrics["test"]["cold"]["n"] == 120
    pred = pd.read_parquet(out / "predictions-test.parquet")
    assert list(pred.columns) == ["uid", "iid", "label", "score", "not_cold"]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert metrics["train"]["best_epoch"] == max(range(len(log)), key=lambda e: log[e]["valid_auc"])
    again = evaluate_cf_run(out, "test")
    assert again["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert again["uauc"] == pytest.approx(metrics["test"]["uauc"], abs=1e-6)
    frozen, _, _ = load_cf_run(out)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_learns_a_learnable_signal(toy, tmp_path):
    metrics = train_cf(small_cfg("mf", toy, epochs=60, patience=60, lr=5e-2, init_std=0.1), tmp_path / "mf",
                       show_progress=False)
    assert metrics["valid"]["auc"] > 0.8


def test_interrupted_run_resumes_to_the_same_model(toy, tmp_path, monkeypatch):
    cfg = small_cfg("mf", toy, epochs=5, patience=5, lr=5e-2)
    full = train_cf(cfg, tmp_path / "full", show_progress=False)

    real_save, calls = cf_train_module._save_state, []

    def crash_after_two(*args, **kw):
        real_save(*args, **kw)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(cf_train_module, "_save_state", crash_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_cf(cfg, tmp_path / "cut", show_progress=False)
    assert (tmp_path / "cut" / "checkpoint" / "state.json").exists()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    monkeypatch.setattr(cf_train_module, "_save_state", real_save)
    # The time before the interruption counts (pretend it was 1000 s).
    from cora.safe_state import read_state, write_state

    state_dir = tmp_path / "cut" / "checkpoint"
    write_state(state_dir, "state", {**read_state(state_dir, "state"), "elapsed_s": 1000.0})
    resumed = train_cf(cfg, tmp_path / "cut", show_progress=False)
    # wall_time_s is rounded to 0.1 s: a fast CPU may finish the remaining epochs in under 0.05 s.
    assert 1000 <= resumed["train"]["wall_time_s"] < 1000 + 10 * full["train"]["wall_time_s"] + 60
    assert resumed["test"]["auc"] == pytest.approx(full["test"]["auc"], abs=1e-7)
    a, b = load_file(str(tmp_path / "full" / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert epochs == list(range(5))


def test_finished_run_is_not_overwritten(toy, tmp_path):
    cfg = small_cfg("mf", toy, epochs=1, patience=1)
    train_cf(cfg, tmp_path / "r", show_progress=False)
    with pytest.raises(CoraError, match="already there"):
        train_cf(cfg, tmp_path / "r", resume=False, show_progress=False)


def test_unknown_model_and_split_are_clear_errors(toy, tmp_path):
    with pytest.raises(CoraError, match="field 'model' = 'bpr': must be one of mf, lightgcn, sasrec"):
        train_cf(CFConfig(model="bpr", data=str(toy)), tmp_path / "x", show_progress=False)
    run = tmp_path / "mf"
    train_cf(small_cfg("mf", toy, epochs=1, patience=1), run, show_progress=False)
    with pytest.raises(CoraError, match="unknown split 'tset'"):
        evaluate_cf_run(run, "tset")


# ------------------------------------------------------------------ real data
def test_mf_on_real_ml1m_reaches_the_paper(ml1m, tmp_path):
    """MF with the paper's settings through the CLI on the paper's splits: test AUC >= 0.64
    (paper 0.6486), selection on valid only."""
    out = tmp_path / "mf"
    res = run_cli("cf", "train", "--data", ml1m, "--model", "mf", "--out", out)
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["auc"] >= 0.64, metrics["test"]
    assert metrics["test"]["n"] == 7_331 and metrics["valid"]["n"] == 10_401
    assert 0.5 < metrics["test"]["uauc"] < 0.75
    assert "test" in res.stdout and "AUC" in res.stdout
    res = run_cli("cf", "evaluate", out, "--split", "test")
    assert res.returncode == 0
    assert json.loads((out / "metrics.json").read_text())["test"]["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)


def test_lightgcn_moves_graph_and_frozen_cache_with_the_module():
    model = LightGCN(4, 5, dim=3)
    model.set_graph(torch.tensor([1, 2]), torch.tensor([2, 3]))
    model.freeze_propagation()
    model.to(torch.float64)
    assert model.adj.dtype == torch.float64 and model._cache[0].dtype == torch.float64


def test_resuming_or_reusing_a_run_with_other_settings_is_an_error(toy, tmp_path):
    out = tmp_path / "mf"
    train_cf(small_cfg("mf", toy, epochs=2, patience=2), out, show_progress=False)
    # More epochs may continue a run; other settings may not, finished or not.
    assert train_cf(small_cfg("mf", toy, epochs=9, patience=2), out, show_progress=False)["test"]["n"] == 120
    with pytest.raises(CoraError, match=r"other settings for lr, weight_decay \(lr=0.001, weight_decay=0.0001\)"):
        train_cf(small_cfg("mf", toy, epochs=2, patience=2, lr=0.5, weight_decay=0.0), out, show_progress=False)
    (out / "metrics.json").unlink()  # an unfinished run is checked the same way
    with pytest.raises(CoraError, match="other settings for dim"):
        train_cf(small_cfg("mf", toy, epochs=2, patience=2, dim=4), out, show_progress=False)
