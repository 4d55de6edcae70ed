"""``cora experiment CONFIG --status``: where each training of an experiment stands, read from its
run folders alone (no model is loaded, nothing is written).

A table that runs for hours across sessions needs one look that says what is finished, what is
training (stage, step of the cap, best validation so far, when the last checkpoint was written,
samples/s) and how long the rest takes at most. "At most": a stage stops at its step cap or
earlier by patience, which no one can forecast.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from cora import layout
from cora.eval.curves import read_log, stage_folders
from cora.experiment.carry import committed_results
from cora.io import read_json


@dataclass
class TrainingStatus:
    name: str             # as results.json's runs: "CoLLM-MF seed 1", "cf:mf"
    state: str            # finished, committed, training, started, not started
    stage: str = ""       # a staged run's stage in progress ("2/2 mapping")
    step: int | None = None
    cap: int | None = None
    best: str = ""        # "0.7115 @ 100"
    saved: float | None = None  # when the last checkpoint (or the summary) was written
    rate: float | None = None   # samples/s of the last validation's process
    left_s: float | None = None  # to the cap at that rate (an upper bound)
    detail: str = ""
    placed: str = ""      # an LLM training's backbone, device and precision ("vicuna-7b-v1.5 cuda fp32+tf32")


def experiment_status(exp, only: list[str] | None = None) -> list[TrainingStatus]:
    """One status per training of the rows in ``only`` (default all), in the file's order."""
    committed, _ = committed_results(exp)
    out = []
    for t in exp.plan.needed(only):
        if t.row is None:  # a CF model
            out.append(_cf_status(t.name, t.run))
            continue
        if t.row.carry:  # never trained here
            out.append(TrainingStatus(t.name, "carried", detail=f"from {t.row.carry['from']}/results.json "
                                                                f"('{t.row.carry['training']}')"))
            continue
        status = _llm_status(t.name, t.run, t.config)
        if status.state == "not started" and t.name in committed:
            status.state, status.detail = "committed", f"from {exp.results_root / 'results.json'}"
        status.placed = placed(t.config)
        out.append(status)
    return out


def placed(cfg) -> str:
    """Where and how a training computes, as the file and the command's overrides set it."""
    backbone = Path(cfg.backbone).name if "/" in cfg.backbone and Path(cfg.backbone).exists() else cfg.backbone
    return f"{backbone} {cfg.device} {cfg.dtype}" + ("+tf32" if cfg.tf32 and cfg.dtype == "fp32" else "")


def _cf_status(name: str, run: Path) -> TrainingStatus:
    if (run / layout.METRICS).exists():
        return TrainingStatus(name, "finished", saved=(run / layout.METRICS).stat().st_mtime)
    if (run / layout.CHECKPOINT).exists():
        return TrainingStatus(name, "training", saved=(run / layout.CHECKPOINT).stat().st_mtime)
    return TrainingStatus(name, "not started")


def _llm_status(name: str, run: Path, cfg) -> TrainingStatus:
    summary = run / layout.SUMMARY
    if summary.exists():
        s = read_json(summary)
        best = s.get(f"best_valid_{cfg.selection_metric}")
        return TrainingStatus(name, "finished", step=s.get("steps"), saved=summary.stat().st_mtime,
                              best=f"{best:.4f} @ {s.get('best_step')}" if best is not None else "",
                              rate=s.get("samples_per_s"))
    if not run.exists():
        return TrainingStatus(name, "not started")
    stages = stage_folders(run)
    folder, stage, stage_cfg = run, "", cfg
    for k, (stage_name, sub) in enumerate(stages, 1):
        if not (sub / layout.SUMMARY).exists():  # the stage in progress
            folder, stage, stage_cfg = sub, f"{k}/{len(stages)} {stage_name}", cfg.for_stage(stage_name)
            break
    status = TrainingStatus(name, "started", stage=stage, cap=stage_cfg.max_steps, detail="no checkpoint yet")
    # Only the JSON half of the checkpoint (counters, best): its tensors are not needed here.
    state_file = folder / layout.CHECKPOINT / "state.json"
    if state_file.exists():
        state = read_json(state_file, "checkpoint state", mapping=True).get("state", {})
        status.state, status.detail = "training", ""
        status.step, status.saved = state.get("step"), state_file.stat().st_mtime
        best = state.get("best") or {}
        if best.get("step"):
            status.best = f"{best['score']:.4f} @ {best['step']}"
    records = read_log(folder / layout.LOG)  # a line being written now is skipped, not an error
    if records and status.step is not None:
        status.rate = records[-1].get("samples_per_s")
        if status.rate:
            rows_left = (stage_cfg.max_steps - status.step) * stage_cfg.batch_size * stage_cfg.grad_accum
            status.left_s = rows_left / status.rate
    return status


def status_table(statuses: list[TrainingStatus], now: float | None = None):
    """A rich Table of the statuses (ages and durations in minutes / hours); cells fold rather
    than being cut off in a narrow terminal."""
    from rich.table import Table

    now = time.time() if now is None else now
    table = Table(title="trainings", title_justify="left")
    for col in ("training", "backbone, device, precision", "state", "step", "best valid", "saved", "samples/s",
                "to the cap, at most"):
        table.add_column(col, justify="right" if col in ("step", "samples/s") else "left", overflow="fold")
    for s in statuses:
        step = "" if s.step is None else (f"{s.step}/{s.cap}" if s.cap else str(s.step))
        state = " ".join(x for x in (s.state, s.stage and f"(stage {s.stage})", s.detail) if x)
        table.add_row(s.name, s.placed, state, step, s.best, _ago(now - s.saved) if s.saved else "",
                      f"{s.rate:.2f}" if s.rate else "", _duration(s.left_s) if s.left_s is not None else "")
    return table


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def _ago(seconds: float) -> str:
    return _duration(max(seconds, 0)) + " ago"
