"""The results of an experiment, from whatever has finished.

results.md / results.json give every AUC / UAUC with the 95 % interval of a user-level paired
bootstrap and each row's difference to the reference (cora.eval.bootstrap), and
``predictions/<row>[-seed<N>].parquet`` holds each row's test predictions, from which
``cora report --predictions <out>/predictions`` rebuilds the table without the run folders.

A result row is a dict (cora.eval.report): its ``method`` is the row's name, its ``kind`` the
LLM method or CF model; results.json and the predictions files' attrs keep those keys.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from cora import layout
from cora.errors import CoraError
from cora.eval.bootstrap import COLUMNS
from cora.eval.curves import curves_table, run_curve
from cora.eval.plots import PLOTS, TRAINING_PLOTS
from cora.eval.report import (
    add_intervals,
    contrast_table,
    markdown_table,
    prediction_attrs,
    report_rows,
    run_predictions,
    seeded_row,
    verdict_table,
)
from cora.experiment.carry import carried_run, committed_predictions, committed_results
from cora.io import (
    atomic_path,
    read_json,
    read_yaml_mapping,
    sha256_file,
    write_json,
    write_parquet,
)

if TYPE_CHECKING:
    from cora.experiment.plan import Row, Training
    from cora.experiment.spec import Experiment


def _train_info(run: Path) -> dict:
    summary = run / layout.SUMMARY
    if summary.exists():
        s = read_json(summary)
        # A staged run's summary is its last (trained) stage's, hardware included.
        return {"steps": s.get("steps"), "train_time_s": s.get("wall_time_s"), "samples_per_s": s.get("samples_per_s"),
                "stopped": _stopped(s), **({"hardware": s["hardware"]} if s.get("hardware") else {})}
    metrics = read_json(run / layout.METRICS).get("train", {})
    return {"epochs": metrics.get("epochs_run"), "train_time_s": metrics.get("wall_time_s")}


def _stopped(summary: dict) -> str:
    """Why each trained stage ended, for the table: 'patience (best 600)', 'cap (best 1000)';
    a stage taken from another run says so."""
    def one(s: dict) -> str:
        if s.get("reused_from"):
            return "taken from " + Path(s["reused_from"]).name
        why = {"max_steps": "cap", "patience": "patience"}.get(s.get("stop_reason"), s.get("stop_reason") or "?")
        return f"{why} (best {s['best_step']})" if s.get("best_step") else why

    stages = summary.get("stages")
    return "; ".join(f"{name}: {one(st)}" for name, st in stages.items()) if stages else one(summary)


def _local_run(exp: Experiment, t: Training) -> dict | None:
    """The training from its run folder here, with its test predictions; None while it has no
    metrics for the experiment's test key (not trained, or still training)."""
    run = t.run
    try:
        entry = report_rows([run], exp.key)[0]
    except CoraError:
        return None
    entry.update(_train_info(run), seed=t.seed)
    # What it actually ran with (its config.yaml), so that another machine can carry it.
    entry["settings"] = read_yaml_mapping(run / layout.CONFIG, "run config")
    if "hardware" not in entry:  # a run from before summaries recorded it: the device it asked for
        s = entry["settings"]
        llm = t.row.method is not None
        entry["hardware"] = s.get("device", "cpu") + (" tf32" if s.get("tf32") else "") if llm else "cpu"
    # The CF weights it read (or is): a CF run trained again elsewhere may differ.
    weights = exp.cf_dir(t.cf) / layout.WEIGHTS if t.cf else None
    if weights is not None and weights.exists():
        entry["cf_sha256"] = sha256_file(weights)
    # A finished run with a corrupt or stale predictions file is an error, not "missing".
    frame = run_predictions(run, exp.key, entry["n"])
    return {"entry": entry, "frame": frame, "source": str(run / layout.predictions(exp.key))}


def _finished(exp: Experiment, t: Training, committed: dict, files: dict) -> dict | None:
    """The training from its run folder when it is here, else from the committed results (so the
    seeds of one row may be trained on different machines); None when neither has it."""
    return _local_run(exp, t) or carried_run(exp, t, committed, files)


def _finished_row(exp: Experiment, row: Row, committed: dict, files: dict) -> tuple[dict, list] | None:
    """The row's result (a seeded row: mean over its seeds, per-seed rows under ``seeds``) and its
    trainings as (training, finished) pairs, or None while one of them is neither finished here
    nor committed."""
    got = []
    for t in exp.plan.of(row):
        one = _finished(exp, t, committed, files)
        if one is None:
            return None
        got.append((t, one))
    per_seed = [dict(one["entry"]) for _, one in got]
    carried = [p["seed"] for p in per_seed if p.get("carried")]
    if row.seeds:
        r = seeded_row(per_seed, [p["seed"] for p in per_seed])
        r["train_time_s"] = sum(p.get("train_time_s") or 0 for p in per_seed)  # all its seeds
        for entry, p in zip(r["seeds"], per_seed):  # each seed keeps its own training record
            entry.update({k: p[k] for k in ("steps", "epochs", "train_time_s", "samples_per_s", "stopped",
                                            "carried", "cf_sha256", "hardware") if k in p})
    else:
        r = per_seed[0]
    r.pop("seed", None)
    r.pop("carried", None)
    r.pop("settings", None)  # kept once, under results.json's "runs"
    if carried:
        r["carried"] = carried if row.seeds else True
    r.update(_row_identity(exp, row))
    if shas := {p["cf_sha256"] for p in per_seed if p.get("cf_sha256")}:
        r["cf_sha256"] = sorted(shas)[0] if len(shas) == 1 else sorted(shas)
    return r, got


def _cf_weight_notes(exp: Experiment, done: list[dict]) -> list[str]:
    """One line per CF key whose rows were computed from different CF weights (a CF run trained
    again on another machine that did not reproduce the same bits)."""
    notes = []
    for key in exp.cf:
        shas = set()
        for r in done:
            if exp.row(r["method"]).cf == key and r.get("cf_sha256"):
                shas |= set([r["cf_sha256"]] if isinstance(r["cf_sha256"], str) else r["cf_sha256"])
        if len(shas) > 1:
            notes.append(f"Rows on cf '{key}' were computed from {len(shas)} different CF weight files "
                         f"(sha256 {', '.join(sorted(s[:12] for s in shas))}; see cf_sha256 in results.json).")
    return notes


def _curve(exp: Experiment, t: Training, committed: dict) -> dict:
    """A training's valid curve from its run folder, else the committed one (a run lost with a
    machine; a carried row: the one committed with it in the other experiment's results)."""
    key = t.name
    if t.row is not None and t.row.carry:
        _, committed = committed_results(exp, Path(t.row.carry["from"]))
        key = t.row.carry["training"]
    if t.run.exists() or not isinstance(committed.get(key), dict):
        return run_curve(t.run)
    return committed[key]


def _row_identity(exp: Experiment, row: Row) -> dict:
    """How a row is named and drawn in the table and in its predictions files' attrs."""
    kind = row.method or exp.cf[row.cf].get("model", row.cf)
    # id_only only where set, so the tables committed before it existed rebuild unchanged.
    id_only = {"id_only": True} if row.settings.get("id_only", exp.llm.get("id_only")) else {}
    return {"method": row.name, "kind": kind, "label": row.label,
            "no_titles": bool(row.settings.get("no_titles")), **id_only, "stage_from": row.stage_from,
            "modules": row.settings.get("modules", exp.llm.get("modules", "qkvo"))}


def _copy_predictions(exp: Experiment, trainings: dict[str, tuple[Training, dict]]) -> None:
    """<out>/predictions/<row>[-seed<N>].parquet for every finished training (a seed of a row
    still missing others included): the results folder alone rebuilds the table (`cora report
    --predictions`) and carries the training to another machine; the file's attrs keep the row's
    name, seed and position."""
    folder, stems = exp.results_root / "predictions", {}
    for row in exp.rows:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", row.name).strip("-") or "row"
        stems[row.name] = stem if stem not in stems.values() else f"{stem}-{row.index}"  # 'A B', 'A-B'
    for t, one in trainings.values():
        copy = one["frame"][list(COLUMNS)].reset_index(drop=True)
        copy.attrs = prediction_attrs(_row_identity(exp, t.row), t.row.index, t.seed, exp.key)
        write_parquet(folder / (stems[t.row.name] + ("" if t.seed is None else f"-seed{t.seed}") + ".parquet"), copy)


def write_results(exp: Experiment) -> dict:
    """results.md (Table 3 layout + warm/cold, with 95 % intervals and differences to the
    reference), results.json, predictions/ and the configured plots, from the rows that have
    finished; rows still missing are listed, not invented."""
    done, missing, loaded = [], [], []
    trainings: dict[str, tuple[Training, dict]] = {}  # every finished training by name
    committed, committed_curves = committed_results(exp)
    files = committed_predictions(exp) if committed else {}
    for row in exp.rows:
        finished = _finished_row(exp, row, committed, files)
        if finished is None:
            missing.append(row.name)
            # Its trainings that have finished (seed 1 of 3) are kept for the machine that ends it.
            for t in exp.plan.of(row):
                if one := _finished(exp, t, committed, files):
                    trainings[t.name] = (t, one)
            continue
        r, got = finished
        done.append(r)
        loaded.append(([one["frame"] for _, one in got], [one["source"] for _, one in got]))
        trainings.update({t.name: (t, one) for t, one in got})
    frames = [f for f, _ in loaded]
    reference = exp.reference if exp.reference in {r["method"] for r in done} else None
    meta = add_intervals(done, frames, sources=[s for _, s in loaded], reference=reference,
                         contrasts=exp.contrast_weights({r["method"] for r in done}) or None) if done else None
    _copy_predictions(exp, trainings)
    out = exp.results_root
    lines = [f"# {exp.name}", "", f"- data: `{exp.data}`; test rows: `{exp.key}`",
             f"- backbone: `{exp.llm.get('backbone', 'smollm2-135m')}`", f"- budget: {exp.budget or 'n/a'}", ""]
    if exp.reference and reference is None:
        lines += [f"Reference row {exp.reference} has not finished: differences are to "
                  f"{meta['reference'] if meta else 'none'}.", ""]
    lines.append(markdown_table(done, exp.key, meta) if done else "_no finished rows yet_\n")
    if verdicts := verdict_table(done, meta):
        lines += ["", verdicts]
    if contrasts := contrast_table(meta):
        lines += ["", contrasts]
    lines += ["", "| method | training | stopped by (best step) | samples/s | time (s) | trained on |",
              "|---|---|---|---:|---:|---|"]
    for r in done:
        what = f"{r['steps']} steps" if r.get("steps") is not None else f"{r.get('epochs')} epochs"
        if "seeds" in r:
            what += f" x {len(r['seeds'])} seeds ({', '.join(str(s['seed']) for s in r['seeds'])})"
        # A stage taken from another row counts in both rows' steps and time: say so.
        what += "".join(f"; stage {stage} = {donor}'s" for stage, donor in r.get("stage_from", {}).items())
        runs = r["seeds"] if "seeds" in r else [r]
        stopped = " / ".join(s.get("stopped") or "-" for s in runs)  # one per seed
        rate = " / ".join(f"{s['samples_per_s']:.2f}" if s.get("samples_per_s") else "-" for s in runs)
        where = " / ".join(sorted({s.get("hardware") or "cpu" for s in runs}))  # runs before it was recorded: cpu
        lines.append(f"| {r['method']} | {what} | {stopped} | {rate} | {r.get('train_time_s') or 0:.0f} | {where} |")
    if notes := _cf_weight_notes(exp, done):
        lines += [""] + notes
    if carried := [r["method"] + ("" if r["carried"] is True else f" (seeds {', '.join(map(str, r['carried']))})")
                   for r in done if r.get("carried")]:
        lines += ["", f"Carried from the committed results (no run folder on this machine; their committed "
                      f"predictions re-checked): {', '.join(carried)}"]
    if missing:
        lines += ["", f"Not finished: {', '.join(missing)}"]
    # Valid-AUC curves of every LLM row that has trained at all (a row still training included).
    training = [{"method": t.name, "label": t.row.label + ("" if t.seed is None else f" (seed {t.seed})"),
                 "curve": _curve(exp, t, committed_curves)}
                for t in exp.plan.trainings if t.row.method is not None]
    curves = {r["method"]: r["curve"] for r in training}
    if table := curves_table(curves):
        lines += ["", "Valid AUC by step, on the fixed validation sample (rows still training included):", "", table]
    with atomic_path(out / "results.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    results = {"name": exp.name, "key": exp.key, "budget": exp.budget, "bootstrap": meta, "rows": done,
               "missing": missing, "curves": curves,
               # Every finished training with the settings it ran with: what another machine carries.
               "runs": {name: one["entry"] for name, (_, one) in trainings.items()}}
    write_json(out / "results.json", results)
    for plot in exp.plots:
        if plot in TRAINING_PLOTS:
            if any(r["curve"]["steps"] for r in training):  # nothing logged yet: no empty figure
                PLOTS[plot](training, out / f"{plot}.png")
        elif done:
            PLOTS[plot](done, out / f"{plot}.png")
    return results
