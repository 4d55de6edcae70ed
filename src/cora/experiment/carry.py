"""What crosses machines in the repository: committed trainings and kept CF runs.

Committed rows carry over: run folders live outside the repository and are lost with a machine,
while ``results`` (a folder in the repository) keeps each finished row's numbers, the settings it
ran with and its predictions. A row with no run folder here is taken from that committed
results.json when its settings still equal what the experiment file asks for and its committed
predictions reproduce its numbers; results.md marks it. So a table grows across machines row by
row, and a row whose settings changed is reported missing (stale), never carried.

Kept CF runs (``keep_cf`` / ``cf_store``): a finished CF run copied into the repository, restored
on a machine without its run folder, so every machine scores with the same CF weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from cora import layout
from cora.config import PLACEMENT_FIELDS, CFConfig
from cora.errors import CoraError
from cora.eval.bootstrap import read_predictions
from cora.eval.metrics import evaluate_predictions
from cora.eval.report import ATTRS
from cora.io import atomic_dir, read_json
from cora.progress import make_console

if TYPE_CHECKING:
    from cora.experiment.plan import Training
    from cora.experiment.spec import Experiment

console = make_console(stderr=True)


def committed_results(exp: Experiment, folder: Path | None = None) -> tuple[dict, dict]:
    """The finished trainings (by :attr:`Training.name`) and curves of the committed
    results.json (of ``folder``, default the experiment's results), if there is one. A file
    written before ``runs`` existed gives its unseeded rows."""
    path = Path(folder or exp.results_root) / "results.json"
    if not path.exists():
        return {}, {}
    saved = read_json(path, "results file", mapping=True)
    runs = saved.get("runs")
    if not isinstance(runs, dict):
        runs = {r["method"]: r for r in saved.get("rows") or []
                if isinstance(r, dict) and "method" in r and "seeds" not in r}
    return runs, saved.get("curves") or {}


def committed_predictions(exp: Experiment, folder: Path | None = None) -> dict:
    """(row name, seed) -> (file, frame) of the committed predictions on the experiment's test key
    (in ``folder``, default the experiment's results)."""
    folder = Path(folder or exp.results_root) / "predictions"
    files = {}
    for path in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        frame = read_predictions(path)
        info = frame.attrs.get(ATTRS) or {}
        if info.get("row") is not None and info.get("split", exp.key) == exp.key:
            files[(info["row"], info.get("seed"))] = (path, frame)
    return files


def _settings_diff(saved: dict, now: dict) -> list[str]:
    """Fields both know whose values differ (a field added to the code since is not a change)."""
    def canon(v):  # as results.json stores it (tuples become lists, keys strings)
        return json.dumps(v, sort_keys=True, default=str)

    return [k for k in now if k in saved and k not in PLACEMENT_FIELDS and canon(saved[k]) != canon(now[k])]


def carried_run(exp: Experiment, t: Training, committed: dict, files: dict) -> dict | None:
    """The training from the committed results.json and predictions/, for one whose run folder is
    not on this machine; None when there is none or it ran with other settings (stale). A
    committed file that no longer reproduces its numbers is an error: the table would not be
    recomputable."""
    key, where = t.name, exp.results_root / "results.json"
    if t.row is not None and t.row.carry:  # a training of another experiment's committed results
        key, where = t.row.carry["training"], Path(t.row.carry["from"]) / "results.json"
        committed, _ = committed_results(exp, where.parent)
        files = committed_predictions(exp, where.parent) if committed else {}
        if key not in committed:
            console.print(f"[yellow]{where}: no committed training '{key}' to carry into '{t.name}'")
            return None
    elif t.run.exists() or key not in committed:
        return None
    entry = dict(committed[key])
    # A file written by an older version may hold the difference to its reference: the report
    # computes that afresh (and with today's sign, reference - row), so the carried entry does not.
    entry.pop("vs_reference", None)
    now = t.config.to_dict()
    if "settings" not in entry:
        console.print(f"[yellow]{where}: '{key}' has no recorded settings: not carried (run it)")
        return None
    if diff := _settings_diff(entry["settings"], now):
        console.print(f"[yellow]{where}: '{key}' ran with other settings for {', '.join(diff)}: stale, "
                      "not carried (run it again)")
        return None
    # The committed training's own row and seed (another experiment's, for a carried row): a
    # training's name is its row's, plus " seed N" for a seeded row's (Plan's naming).
    seed = entry.get("seed")
    file_key = (key.removesuffix(f" seed {seed}") if seed is not None else key, seed)
    if file_key not in files:
        raise CoraError(f"{where.parent / 'predictions'}: no predictions file for committed '{key}' on "
                        f"{exp.key} (restore it, or delete '{key}' from {where})")
    path, frame = files[file_key]
    m = evaluate_predictions(frame)
    if len(frame) != entry["n"] or abs(m["auc"] - entry["auc"]) > 1e-5 or (
            entry.get("uauc") is not None and abs(m["uauc"] - entry["uauc"]) > 1e-5):
        raise CoraError(f"{path}: does not reproduce committed '{key}' ({len(frame):,} rows, AUC {m['auc']:.6f}; "
                        f"results.json: {entry['n']:,}, {entry['auc']:.6f})")
    entry.update(carried=True, seed=t.seed)
    return {"entry": entry, "frame": frame, "source": str(path)}


# ------------------------------------------------------------------ kept CF runs
CF_KEPT_NEEDS = (layout.CONFIG, layout.WEIGHTS, layout.METRICS)


def restore_cf(cfg: CFConfig, kept: Path, out: Path) -> None:
    """A CF run kept in the repository by another machine becomes this machine's run folder
    (train_cf then finds it finished), unless it was trained with other settings."""
    from cora.cf.train import differing_settings

    if not all((kept / f).exists() for f in CF_KEPT_NEEDS):
        return
    if diff := differing_settings(cfg, kept):
        console.print(f"[yellow]{kept}: kept with other settings ({', '.join(diff)}); training {out} anew")
        return
    console.print(f"{out}: restored from {kept}")
    copy_files(kept, out, [f.name for f in kept.iterdir() if f.is_file()])


def keep_cf(cfg: CFConfig, out: Path, kept: Path) -> None:
    """Copy the finished CF run (weights, config, metrics, log, predictions) to ``kept``; a kept
    run of other settings is left alone (the rows computed from it name its weights' sha256)."""
    from cora.cf.train import differing_settings

    if kept.exists() and all((kept / f).exists() for f in CF_KEPT_NEEDS) and (diff := differing_settings(cfg, kept)):
        console.print(f"[yellow]{out}: not kept: {kept} holds a run of other settings ({', '.join(diff)})")
        return
    copy_files(out, kept, [f.name for f in out.iterdir() if f.is_file()])


def copy_files(src: Path, dst: Path, names: list[str]) -> None:
    """Replace ``dst`` with a folder holding ``names`` from ``src``, in one atomic swap; nothing
    is written when ``dst`` holds exactly those files already."""
    if dst.exists() and sorted(f.name for f in dst.iterdir()) == sorted(names) and all(
            (dst / f).read_bytes() == (src / f).read_bytes() for f in names):
        return
    with atomic_dir(dst, overwrite=True) as tmp:
        for f in names:
            shutil.copyfile(src / f, tmp / f)
