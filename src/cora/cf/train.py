"""The one CF training loop: pointwise BCE on the explicit 0/1 labels, Adam + L2, early stopping
on full-valid AUC, resumable run folder.

Run folder: config.yaml, model.safetensors (best), metrics.json, predictions-{valid,test}.parquet,
log.jsonl, and checkpoint/ (last state for --resume; removed when the run finishes):
``state.safetensors`` (model, optimizer and RNG tensors) + ``state.json`` (the rest), no pickle
(cora.safe_state), swapped in whole after every epoch (cora.io.atomic_dir). Killed at any moment
and run again, a run ends with the same model and metrics as one that ran through.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from cora import layout
from cora.cf.data import batches, table_tensors
from cora.cf.models import CFModel, LightGCN, build_cf_model
from cora.config import CFConfig
from cora.data.store import Dataset, load_dataset
from cora.errors import CoraError
from cora.eval.metrics import auc, evaluate_predictions
from cora.io import (atomic_dir, atomic_path, check_tensors, is_no_space, kill_point, no_space_error, read_json,
                     read_safetensors, read_yaml_mapping, remove_partial, removed_on_failure, update_json,
                     write_json, write_parquet)
from cora.progress import progress_bar
from cora.safe_state import has_state, read_state, save_tensor_file, write_state


def make_optimizer(model: CFModel, cfg: CFConfig) -> torch.optim.Optimizer:
    """The reference's Adam with L2 (``weight_decay``: every row, every step; its moments also
    move rows the batch does not hold), or, for MF with ``optimizer: sparse-adam``, SparseAdam
    over sparse embedding gradients: only the batch's rows change, L2 on those rows only
    (:func:`_batch_l2`). Not the same optimisation, so not the same numbers (docs/own-data.md)."""
    if cfg.optimizer == "sparse-adam":
        return torch.optim.SparseAdam(list(model.parameters()), lr=cfg.lr)
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _batch_l2(model: CFModel, batch: dict[str, torch.Tensor], cfg: CFConfig) -> torch.Tensor | float:
    """sparse-adam's L2: weight_decay / 2 * the squared norm of each looked-up row (the gradient
    Adam's weight_decay adds, for the rows in the batch)."""
    if cfg.optimizer != "sparse-adam":
        return 0.0
    return cfg.weight_decay / 2 * (model.user(batch["uid"]).pow(2).sum() + model.item(batch["iid"]).pow(2).sum())


def _history_len(model: CFModel, cfg: CFConfig) -> int:
    return cfg.max_len if model.uses_history else 0


def prepare_model(cfg: CFConfig, ds: Dataset) -> CFModel:
    model = build_cf_model(cfg, ds.n_users, ds.n_items)
    if isinstance(model, LightGCN):
        train = ds.split("train")
        pos = train[train["label"] == 1]
        model.set_graph(torch.tensor(pos["uid"].to_numpy()), torch.tensor(pos["iid"].to_numpy()))
    return model


@torch.no_grad()
def predict(model: CFModel, df: pd.DataFrame, max_len: int, batch_size: int = 4096) -> pd.DataFrame:
    model.eval()
    t = table_tensors(df, max_len)
    scores = torch.cat([model(b) for b in batches(t, batch_size, shuffle=False)])
    return pd.DataFrame({"uid": df["uid"].to_numpy(), "iid": df["iid"].to_numpy(), "label": df["label"].to_numpy(),
                         "score": scores.numpy(), "not_cold": df["not_cold"].to_numpy()})


@torch.no_grad()
def _valid_auc(model: CFModel, tensors: dict[str, torch.Tensor]) -> float | None:
    model.eval()
    scores = torch.cat([model(b) for b in batches(tensors, 8192, shuffle=False)])
    value = auc(tensors["label"].numpy(), scores.numpy())
    return None if math.isnan(value) else value


def _save_state(path: Path, model, opt, epoch: int, best: dict, bad: int, gen: torch.Generator,
                elapsed_s: float, log_bytes: int) -> None:
    with atomic_dir(path, overwrite=True) as tmp:
        write_state(tmp, "state", {"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "best": best,
                                   "bad": bad, "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                                   "elapsed_s": elapsed_s, "log_bytes": log_bytes})


def differing_settings(cfg: CFConfig, run: Path) -> list[str]:
    """The settings of ``cfg`` that differ from those the run folder ``run`` was trained with,
    minus the ones that may be raised to continue a run (epochs, patience)."""
    return cfg.differing_fields(CFConfig.load(run / layout.CONFIG), ignore={"epochs", "patience"})


def _check_same_settings(cfg: CFConfig, out: Path) -> None:
    """Resuming (or reusing a finished run) with other settings would mix two models in one folder."""
    if diff := differing_settings(cfg, out):
        saved = CFConfig.load(out / layout.CONFIG)
        raise CoraError(f"{out}: the run there used other settings for {', '.join(diff)} "
                        f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in diff)}); use another --out or the same settings")


def epoch_bound(cfg: CFConfig, best: dict, done: int) -> int:
    """The epoch count the run ends at unless valid AUC improves again: ``patience`` epochs after
    the best one (or after the start), never beyond ``epochs``. The bar's total: "48/1000" read as
    a long way to go where early stopping ends the run at 53."""
    return max(done, min(cfg.epochs, best["epoch"] + 1 + cfg.patience if best["epoch"] >= 0 else cfg.patience))


def train_cf(cfg: CFConfig, out: str | Path, resume: bool = True, show_progress: bool = True) -> dict:
    """Train until ``patience`` epochs pass without a valid-AUC gain; returns metrics (valid, test).
    A run that fails before its first checkpoint (bad data, a loss that is nan at once) leaves
    nothing in ``out``; one that fails later keeps its checkpoint for resuming."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CoraError(f"{out}: exists and is not a folder (choose another --out)")
    keep = lambda o: (o / layout.CHECKPOINT).exists() or (o / layout.WEIGHTS).exists()  # noqa: E731
    with removed_on_failure(out, keep=keep):
        return _train_cf(cfg, out, resume, show_progress)


def _train_cf(cfg: CFConfig, out: Path, resume: bool, show_progress: bool) -> dict:
    ds = load_dataset(cfg.data)
    ckpt = out / layout.CHECKPOINT
    if (out / layout.METRICS).exists() and (out / layout.WEIGHTS).exists():
        if resume:
            _check_same_settings(cfg, out)
            shutil.rmtree(ckpt, ignore_errors=True)  # killed between writing the metrics and deleting it
            return read_json(out / layout.METRICS)
        raise CoraError(f"{out}: a finished run is already there (choose another --out)")
    if out.exists() and not resume and any(out.iterdir()):
        raise CoraError(f"{out}: run folder exists and is not empty")
    if (out / layout.CONFIG).exists():
        _check_same_settings(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / layout.CONFIG)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = prepare_model(cfg, ds)
    max_len = _history_len(model, cfg)
    train_t = table_tensors(ds.split("train"), max_len)
    valid_df = ds.split("valid")
    # Selection needs only the full-valid AUC; tensors are built once, not per epoch.
    valid_t = table_tensors(valid_df, max_len)
    opt = make_optimizer(model, cfg)

    start_epoch, best, bad, elapsed_before, log_bytes = 0, {"auc": -1.0, "epoch": -1}, 0, 0.0, 0
    best_part = out / "model.safetensors.part"
    # Leftovers of writes a kill interrupted: a checkpoint swapped aside goes back, temporaries go.
    for name in (layout.WEIGHTS, "predictions-valid.parquet", "predictions-test.parquet", layout.METRICS):
        remove_partial(out / name)  # (model.safetensors' pattern covers model.safetensors.part's too)
    remove_partial(ckpt)
    if resume and has_state(ckpt, "state"):
        state = read_state(ckpt, "state")  # refuses an older version's pickle (state.pt)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, best, bad = state["epoch"] + 1, state["best"], state["bad"]
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        elapsed_before, log_bytes = state["elapsed_s"], state["log_bytes"]  # a resumed run reports its time in all
    log_path = out / layout.LOG
    if log_path.exists() and log_path.stat().st_size > log_bytes:
        # Epochs logged after the checkpoint this run starts from are trained and logged again.
        os.truncate(log_path, log_bytes)

    t0 = time.time() - elapsed_before
    log = open(log_path, "a")
    # A checkpoint of the epoch that ran out of patience (killed before the metrics) has nothing
    # left to train; one that had all its epochs neither.
    last_epoch = cfg.epochs if bad < cfg.patience else start_epoch
    epochs_run = start_epoch
    n_batches = math.ceil(len(train_t["uid"]) / cfg.batch_size)
    with progress_bar(show_progress, remaining=False) as progress:
        task = progress.add_task(f"{cfg.model}", total=epoch_bound(cfg, best, start_epoch), completed=start_epoch,
                                 info=f"stops after epoch {epoch_bound(cfg, best, start_epoch)} unless valid AUC "
                                      f"improves (patience {cfg.patience})")
        for epoch in range(start_epoch, last_epoch):
            model.train()
            total = 0.0
            for batch in batches(train_t, cfg.batch_size, shuffle=True, generator=gen):
                loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"]) + _batch_l2(model, batch, cfg)
                if not torch.isfinite(loss):
                    raise CoraError(f"{cfg.model}: loss became {loss.item()} at epoch {epoch}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            kill_point("cf-epoch")  # the kill -9 tests' mid-epoch moment (cora.io.kill_point)
            valid_auc = _valid_auc(model, valid_t)
            improved = valid_auc is not None and valid_auc > best["auc"]
            if improved:
                best, bad = {"auc": valid_auc, "epoch": epoch}, 0
                with atomic_path(best_part) as tmp:
                    save_tensor_file(tmp, model.state_dict())
            else:
                bad += 1
            try:
                log.write(json.dumps({"epoch": epoch, "loss": total / n_batches, "valid_auc": valid_auc,
                                      "best_auc": best["auc"], "time": round(time.time() - t0, 2)}) + "\n")
                log.flush()
            except OSError as e:
                if is_no_space(e):
                    raise no_space_error(log_path, "the last checkpoint is intact") from None
                raise
            epochs_run = epoch + 1
            _save_state(ckpt, model, opt, epoch, best, bad, gen, time.time() - t0, os.fstat(log.fileno()).st_size)
            progress.update(task, completed=epoch + 1, total=epoch_bound(cfg, best, epoch + 1),
                            info=f"loss {total / n_batches:.4f}  valid AUC {valid_auc or float('nan'):.4f}  best "
                                 f"{best['auc']:.4f}@{best['epoch']}  no gain {bad}/{cfg.patience}")
            if bad >= cfg.patience:
                break
    log.close()
    if best_part.exists():
        best_part.replace(out / layout.WEIGHTS)
    elif best["epoch"] < 0 or not (out / layout.WEIGHTS).exists():  # else: moved there before a kill
        raise CoraError(f"{out}: no epoch produced a valid AUC (is the valid split single-class?)")
    metrics = _final_metrics(out, cfg, ds)
    metrics["train"] = {"best_epoch": best["epoch"], "epochs_run": epochs_run, "wall_time_s": round(time.time() - t0, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    write_json(out / layout.METRICS, metrics)
    shutil.rmtree(ckpt, ignore_errors=True)
    return metrics


def load_cf_run(run: str | Path) -> tuple[CFModel, CFConfig, Dataset]:
    """Load a finished CF run's best model (frozen, eval mode) with its config and dataset."""
    run = Path(run)
    if not (run / layout.CONFIG).exists() or not (run / layout.WEIGHTS).exists():
        raise CoraError(f"{run}: not a finished CF run (needs config.yaml and model.safetensors)")
    if "method" in read_yaml_mapping(run / layout.CONFIG, "run config"):
        raise CoraError(f"{run}: an LLM run, not a CF run (its config.yaml names a method)")
    cfg = CFConfig.load(run / layout.CONFIG)
    state = read_safetensors(run / layout.WEIGHTS, "CF model file")  # a corrupt file fails before any work
    ds = load_dataset(cfg.data)
    model = prepare_model(cfg, ds)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_tensors(run / layout.WEIGHTS, state, expected, f"a {cfg.model} model of '{ds.name}' with dim {cfg.dim}")
    model.load_state_dict(state)
    model.eval()
    model.requires_grad_(False)
    if isinstance(model, LightGCN):
        model.freeze_propagation()
    return model, cfg, ds


# What makes two dataset folders the same dataset for a CF model: its tables are sized by the counts.
_IDENTITY = ("name", "domain", "n_users", "n_items")


def check_cf_dataset(run: str | Path, cf_ds: Dataset, ds: Dataset) -> None:
    """A CF run (trained on ``cf_ds``) used with ``ds`` must come from the same dataset: the same
    name and domain, and the same id ranges (its embedding tables have one row per id)."""
    for key in _IDENTITY:
        theirs, ours = cf_ds.meta.get(key), ds.meta.get(key)
        if theirs != ours:
            raise CoraError(f"{run}: CF run of another dataset: its {key} is {theirs!r} ({cf_ds.root}), "
                            f"this dataset's is {ours!r} ({ds.root})")


def _final_metrics(out: Path, cfg: CFConfig, ds: Dataset) -> dict:
    model, _, _ = load_cf_run(out)
    metrics = {}
    for split in ("valid", "test"):
        pred = predict(model, ds.split(split), _history_len(model, cfg))
        write_parquet(out / layout.predictions(split), pred)
        metrics[split] = evaluate_predictions(pred)
    return metrics


def evaluate_cf_run(run: str | Path, split: str, limit: int | None = None, per_user: int | None = None) -> dict:
    """Recompute a split's metrics from the saved model. ``limit`` scores the same whole-user
    sample of ~N rows that ``cora evaluate --limit N`` scores, so CF and LLM runs compare."""
    from cora.data.sampling import sample_users, split_key

    if split not in ("valid", "valid_small", "test", "train"):
        raise CoraError(f"unknown split '{split}' (choose valid or test)")
    model, cfg, ds = load_cf_run(run)
    pred = predict(model, sample_users(ds.split(split), limit, seed=0, per_user=per_user), _history_len(model, cfg))
    key = split_key(split, limit, per_user)
    write_parquet(Path(run) / layout.predictions(key), pred)
    metrics = evaluate_predictions(pred)
    update_json(Path(run) / layout.METRICS, {key: metrics})
    return metrics
