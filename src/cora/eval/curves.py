"""Validation curves of LLM runs, read from their logs (``log.jsonl``: one line per validation).

A staged run (CoLLM, BinLLM) logs each stage in ``stage-<k>-<name>/``; its curve joins the
stages in order, each stage's steps counted on from the steps before it. A stage taken from
another run (``reused_from`` in its train_summary.json) is read from that run's log, so a
CoLLM curve starts with the TALLRec stage it was built on.
"""

from __future__ import annotations

import json
from pathlib import Path

from cora import layout
from cora.errors import CoraError
from cora.io import read_json


def read_log(path: Path) -> list[dict]:
    """The records of one log.jsonl; a torn last line (a run killed mid-write) is skipped."""
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    records = []
    for n, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines):  # only the last line may be torn
                raise CoraError(f"{path}: line {n} is not JSON") from None
    return records


def run_curve(run: str | Path, metric: str = "auc") -> dict:
    """{"steps": [...], "valid": [...], "loss": [...], "stage_starts": [(step, name), ...]} of one
    run folder; ``loss`` is the mean training loss since the previous validation (a diverging run
    shows there before its valid AUC falls). A run whose first stages were taken from another run
    (CoLLM's TALLRec stage) also has ``shared_until``: the step where its own training starts, so
    a plot can draw the shared part once, with the donor's row."""
    run = Path(run)
    key = f"valid_{metric}"
    parts = [(name, *_stage_log(p)) for name, p in stage_folders(run)] or [("train", run / layout.LOG, False)]
    steps, values, losses, starts, offset, shared_until, leading = [], [], [], [], 0, 0, True
    for name, log, reused in parts:
        records = [r for r in read_log(log) if key in r]
        starts.append((offset, name))
        steps += [offset + r["step"] for r in records]
        values += [r[key] for r in records]
        losses += [r.get("loss") for r in records]
        offset += records[-1]["step"] if records else 0
        leading = leading and reused
        if leading:
            shared_until = offset
    curve = {"steps": steps, "valid": values, "loss": losses, "stage_starts": starts if len(parts) > 1 else []}
    return {**curve, "shared_until": shared_until} if shared_until else curve


def stage_folders(run: Path) -> list[tuple[str, Path]]:
    """(stage name, folder) of a staged run's ``stage-<k>-<name>/`` folders in stage order; empty
    for a single-stage run."""
    stages = sorted(Path(run).glob("stage-*-*/"), key=lambda p: int(p.name.split("-")[1]))
    return [(p.name.split("-", 2)[2], p) for p in stages]


def _stage_log(stage: Path) -> tuple[Path, bool]:
    """(the log to read, whether the stage was taken from another run: then its donor's log)."""
    summary = stage / layout.SUMMARY
    if summary.exists():
        donor = read_json(summary, "stage summary", mapping=True).get("reused_from")
        if donor:
            return Path(donor) / layout.LOG, True
    return stage / layout.LOG, False


def curves_table(curves: dict[str, dict], max_columns: int = 20) -> str:
    """Markdown: one line per row, its valid AUC at each validated step (the union of all rows'
    steps, thinned evenly to ``max_columns`` when longer) and its best (step). Rows that have
    not validated yet are left out; empty when none has."""
    logged = {name: c for name, c in curves.items() if c["steps"]}
    if not logged:
        return ""
    steps = sorted({s for c in logged.values() for s in c["steps"]})
    if len(steps) > max_columns:  # keep the first and the last, evenly between
        picks = {round(k * (len(steps) - 1) / (max_columns - 1)) for k in range(max_columns)}
        steps = [steps[k] for k in sorted(picks)]
    lines = ["| row | " + " | ".join(str(s) for s in steps) + " | best (step) |",
             "|---|" + "---:|" * (len(steps) + 1)]
    for name, c in logged.items():
        at = dict(zip(c["steps"], c["valid"]))
        best = max(range(len(c["valid"])), key=lambda k: (c["valid"][k], -k))  # first best, as the loop keeps
        cells = [f"{at[s]:.3f}" if s in at else "" for s in steps]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {c['valid'][best]:.3f} ({c['steps'][best]}) |")
    return "\n".join(lines) + "\n"
