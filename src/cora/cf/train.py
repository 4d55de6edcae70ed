"""The one CF training loop: pointwise BCE on the explicit 0/1 labels, Adam + L2, early stopping
on full-valid AUC, resumable run folder.

Run folder: config.yaml, model.safetensors (best), metrics.json, predictions-{valid,test}.parquet,
log.jsonl, and checkpoint/ (last state for --resume; removed when the run finishes).
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from safetensors.torch import load_file, save_file

from cora.cf.data import batches, table_tensors
from cora.cf.models import CFModel, LightGCN, build_cf_model
from cora.config import CFConfig
from cora.data.store import Dataset, load_dataset
from cora.errors import CoraError
from cora.eval.metrics import auc, evaluate_predictions
from cora.io import atomic_path, read_json, write_json, write_parquet


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
                elapsed_s: float) -> None:
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / "state.pt") as tmp:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "best": best,
                    "bad": bad, "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                    "elapsed_s": elapsed_s}, tmp)


def _check_same_settings(cfg: CFConfig, out: Path) -> None:
    """Resuming (or reusing a finished run) with other settings would mix two models in one folder."""
    saved = CFConfig.load(out / "config.yaml")
    keep_free = {"epochs", "patience"}  # may be raised to continue a run
    if diff := cfg.differing_fields(saved, ignore=keep_free):
        raise CoraError(f"{out}: the run there used other settings for {', '.join(diff)} "
                        f"({', '.join(f'{k}={getattr(saved, k)!r}' for k in diff)}); use another --out or the same settings")


def train_cf(cfg: CFConfig, out: str | Path, resume: bool = True, show_progress: bool = True) -> dict:
    """Train until ``patience`` epochs pass without a valid-AUC gain; returns metrics (valid, test)."""
    out = Path(out)
    ds = load_dataset(cfg.data)
    if (out / "metrics.json").exists() and (out / "model.safetensors").exists():
        if resume:
            _check_same_settings(cfg, out)
            return read_json(out / "metrics.json")
        raise CoraError(f"{out}: a finished run is already there (choose another --out)")
    if out.exists() and not resume and any(out.iterdir()):
        raise CoraError(f"{out}: run folder exists and is not empty")
    if (out / "config.yaml").exists():
        _check_same_settings(cfg, out)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out / "config.yaml")

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = prepare_model(cfg, ds)
    max_len = _history_len(model, cfg)
    train_t = table_tensors(ds.split("train"), max_len)
    valid_df = ds.split("valid")
    # Selection needs only the full-valid AUC; tensors are built once, not per epoch.
    valid_t = table_tensors(valid_df, max_len)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    start_epoch, best, bad, elapsed_before = 0, {"auc": -1.0, "epoch": -1}, 0, 0.0
    ckpt = out / "checkpoint" / "state.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        start_epoch, best, bad = state["epoch"] + 1, state["best"], state["bad"]
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        elapsed_before = state.get("elapsed_s", 0.0)  # a resumed run reports its time in all

    t0 = time.time() - elapsed_before
    log = open(out / "log.jsonl", "a")
    n_batches = math.ceil(len(train_t["uid"]) / cfg.batch_size)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), disable=not show_progress, transient=False) as progress:
        task = progress.add_task(f"{cfg.model}", total=cfg.epochs, completed=start_epoch, info="")
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            total = 0.0
            for batch in batches(train_t, cfg.batch_size, shuffle=True, generator=gen):
                loss = F.binary_cross_entropy_with_logits(model(batch), batch["label"])
                if not torch.isfinite(loss):
                    raise CoraError(f"{cfg.model}: loss became {loss.item()} at epoch {epoch}; lower --lr")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.item()
            valid_auc = _valid_auc(model, valid_t)
            improved = valid_auc is not None and valid_auc > best["auc"]
            if improved:
                best, bad = {"auc": valid_auc, "epoch": epoch}, 0
                with atomic_path(out / "model.safetensors.part") as tmp:
                    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
            else:
                bad += 1
            log.write(json.dumps({"epoch": epoch, "loss": total / n_batches, "valid_auc": valid_auc,
                                  "best_auc": best["auc"], "time": round(time.time() - t0, 2)}) + "\n")
            log.flush()
            _save_state(out / "checkpoint", model, opt, epoch, best, bad, gen, time.time() - t0)
            progress.update(task, completed=epoch + 1,
                            info=f"loss {total / n_batches:.4f}  valid AUC {valid_auc or float('nan'):.4f}  best {best['auc']:.4f}@{best['epoch']}")
            if bad >= cfg.patience:
                break
    log.close()
    best_part = out / "model.safetensors.part"
    if not best_part.exists():
        raise CoraError(f"{out}: no epoch produced a valid AUC (is the valid split single-class?)")
    best_part.replace(out / "model.safetensors")
    metrics = _final_metrics(out, cfg, ds)
    metrics["train"] = {"best_epoch": best["epoch"], "epochs_run": epoch + 1, "wall_time_s": round(time.time() - t0, 1),
                        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    write_json(out / "metrics.json", metrics)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    return metrics


def load_cf_run(run: str | Path) -> tuple[CFModel, CFConfig, Dataset]:
    """Load a finished CF run's best model (frozen, eval mode) with its config and dataset."""
    run = Path(run)
    if not (run / "config.yaml").exists() or not (run / "model.safetensors").exists():
        raise CoraError(f"{run}: not a finished CF run (needs config.yaml and model.safetensors)")
    cfg = CFConfig.load(run / "config.yaml")
    ds = load_dataset(cfg.data)
    model = prepare_model(cfg, ds)
    model.load_state_dict(load_file(str(run / "model.safetensors")))
    model.eval()
    model.requires_grad_(False)
    if isinstance(model, LightGCN):
        model.freeze_propagation()
    return model, cfg, ds


def _final_metrics(out: Path, cfg: CFConfig, ds: Dataset) -> dict:
    model, _, _ = load_cf_run(out)
    metrics = {}
    for split in ("valid", "test"):
        pred = predict(model, ds.split(split), _history_len(model, cfg))
        write_parquet(out / f"predictions-{split}.parquet", pred)
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
    write_parquet(Path(run) / f"predictions-{key}.parquet", pred)
    metrics = evaluate_predictions(pred)
    path = Path(run) / "metrics.json"
    all_metrics = read_json(path) if path.exists() else {}
    all_metrics[key] = metrics
    write_json(path, all_metrics)
    return metrics
