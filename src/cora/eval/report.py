"""One comparison table from several run folders (CF runs and LLM runs alike), or from bare
predictions files, with a 95 % interval on every number (:mod:`cora.eval.bootstrap`).

Every run folder holds ``metrics.json`` keyed by split (``test``, ``test-limit2000``, ...),
``predictions-<split>.parquet`` and a ``config.yaml`` that tells what the run is; the table puts
the same split of each run side by side. An experiment's results folder holds a copy of each
row's predictions (``predictions/<row>[-seed<N>].parquet``, the row's name and order in the
file's pandas attrs), from which :func:`predictions_rows` rebuilds the same table without the
run folders.

A row is a dict: ``method`` (its unique name), ``kind`` (the LLM method or CF model), ``n``,
the six metrics of :data:`cora.eval.bootstrap.METRICS`, and after :func:`add_intervals`
``<metric>_ci95`` and ``vs_reference`` (the reference minus the row: every table here shows
differences with that one sign). A seeded row carries its per-seed rows under ``seeds``,
the mean over seeds as its metrics and ``<metric>_std`` (sample standard deviation, ddof 1).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cora import layout
from cora.errors import CoraError
from cora.eval.bootstrap import METRICS, paired_bootstrap, read_predictions
from cora.eval.metrics import evaluate_predictions
from cora.io import read_json, read_yaml_mapping

METHOD_NAMES = {"cora": "CoRA", "icl": "ICL (zero-shot)", "mf": "MF", "lightgcn": "LightGCN", "sasrec": "SASRec"}
ATTRS = "cora"  # key of the row's identity in a copied predictions file's pandas attrs
# Below this many test users behind a metric, reports print a warning: the percentile interval of
# the user bootstrap then holds the true value less often than its 95 % says. Measured with
# scripts/bootstrap_coverage.py on ml1m-cpu's predictions (docs/experiments.md): at 5 users the
# UAUC interval held it 72-74 % of the time, at 10 users 87 %, at 20 users 92 %, at 30 users 94-97 %.
MIN_USERS = 30
_SEED_SUFFIX = re.compile(r"^(?P<row>.+)-seed(?P<seed>\d+)$")


def run_label(run: Path) -> str:
    """A readable row name: 'MF', 'CoRA-MF', 'ICL (zero-shot)'."""
    return _run_identity(run)[0]


def _run_identity(run: Path) -> tuple[str, str]:
    """(row name, kind: the LLM method or the CF model)."""
    cfg_path = run / layout.CONFIG
    if not cfg_path.exists():
        raise CoraError(f"{run}: not a run folder (no config.yaml)")
    cfg = read_yaml_mapping(cfg_path, "run config")
    if "method" not in cfg:  # a CF run
        model = str(cfg.get("model"))
        return METHOD_NAMES.get(model, model), model
    name = METHOD_NAMES.get(cfg["method"], cfg["method"])
    if cfg.get("cf"):
        cf_cfg = Path(cfg["cf"]) / layout.CONFIG
        if cf_cfg.exists():
            cf_model = str(read_yaml_mapping(cf_cfg, "CF run config").get("model", ""))
            name += "-" + METHOD_NAMES.get(cf_model, cf_model)
    return name, cfg["method"]


def _metric_fields(m: dict) -> dict:
    return {"n": m["n"], "auc": m["auc"], "uauc": m["uauc"], "warm_auc": m["warm"]["auc"],
            "warm_uauc": m["warm"]["uauc"], "cold_auc": m["cold"]["auc"], "cold_uauc": m["cold"]["uauc"]}


def report_rows(runs: list[Path], split: str) -> list[dict]:
    """One row per run folder from its metrics.json; two runs with the same label get their
    folder name added, so every row name is unique (the bootstrap keys rows by name)."""
    rows = []
    for run in runs:
        path = run / layout.METRICS
        metrics = read_json(path, "metrics file", mapping=True) if path.exists() else {}
        if split not in metrics:
            have = ", ".join(k for k in metrics if isinstance(metrics[k], dict) and "auc" in metrics[k]) or "none"
            raise CoraError(f"{path}: no metrics for split '{split}' (has: {have}); run the evaluate command first")
        name, kind = _run_identity(run)
        rows.append({"run": str(run), "method": name, "kind": kind, **_metric_fields(metrics[split])})
    names = [r["method"] for r in rows]
    for r in rows:
        if names.count(r["method"]) > 1:
            r["method"] = f"{r['method']} ({r['run']})"
    return rows


def run_predictions(run: str | Path, split: str, n: int | None = None) -> pd.DataFrame:
    """A run's ``predictions-<split>.parquet``; ``n`` (its metrics.json row count) guards against
    predictions overwritten by a later evaluation of another sample."""
    path = Path(run) / layout.predictions(split)
    df = read_predictions(path)
    if n is not None and len(df) != n:
        raise CoraError(f"{path}: {len(df):,} rows but metrics.json counts {n:,} for '{split}' "
                        "(stale predictions: evaluate the run again)")
    return df


def seeded_row(per_seed: list[dict], seeds: list[int]) -> dict:
    """A row trained once per seed: metrics = mean over seeds, ``<metric>_std`` = their sample
    standard deviation (None with one seed), per-seed rows under ``seeds``."""
    row = {k: v for k, v in per_seed[0].items() if k not in METRICS and k != "run"}
    for m in METRICS:
        values = [r[m] for r in per_seed]
        defined = None not in values
        row[m] = round(float(np.mean(values)), 6) if defined else None
        row[f"{m}_std"] = round(float(np.std(values, ddof=1)), 6) if defined and len(values) > 1 else None
    row["seeds"] = [{"seed": s, **{k: r[k] for k in ("run", "n", *METRICS) if k in r}} for s, r in zip(seeds, per_seed)]
    return row


# ----------------------------------------------------------------------------- predictions only
def _expand(paths: list[Path]) -> list[Path]:
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.parquet"))
            if not found:
                raise CoraError(f"{p}: no .parquet predictions files in this folder")
            files += found
        else:
            files.append(p)  # read_predictions names it if it is missing
    return files


def predictions_rows(paths: list[Path]) -> tuple[list[dict], list[list[pd.DataFrame]], list[list[str]]]:
    """Rows from predictions files alone (files, or folders of them such as an experiment's
    ``<out>/predictions/``): returns (rows, frames per row and seed, file names per row and seed).

    A file written by ``cora experiment`` names its row, seed and position in its attrs; any
    other file is named by its stem, ``NAME-seedN.parquet`` being seed N of row NAME. Files of a
    folder come in the experiment's row order (else by name); files given one by one keep their
    order. Metrics are recomputed from the predictions with :func:`evaluate_predictions`.
    """
    entries = []
    for i, path in enumerate(_expand(paths)):
        df = read_predictions(path)
        info = dict(df.attrs.get(ATTRS) or {})
        if "row" not in info:  # not written by `cora experiment`: the file name tells
            match = _SEED_SUFFIX.match(path.stem)
            if match:
                info.update(row=match["row"], seed=int(match["seed"]))
            else:
                info.update(row=path.stem)
        entries.append((info.get("order", float("inf")), i, path, df, info))
    if any(p.is_dir() for p in map(Path, paths)):
        entries.sort(key=lambda e: (e[0], e[2].name))
    groups: dict[str, list] = {}
    for _, _, path, df, info in entries:
        groups.setdefault(str(info["row"]), []).append((path, df, info))
    rows, frames, sources = [], [], []
    for name, members in groups.items():
        info = members[0][2]
        kind = info.get("kind") or ("cora" if name.lower().startswith("cora") else None)
        extra = {k: info[k] for k in ("label", "no_titles", "id_only", "modules", "split") if info.get(k) is not None}
        per_seed = [{"run": str(path), "method": name, "kind": kind, **extra,
                     **_metric_fields(evaluate_predictions(df))} for path, df, _ in members]
        seeds = [m[2].get("seed") for m in members]
        if len(members) > 1 and (None in seeds or len(set(seeds)) < len(seeds)):
            raise CoraError(f"{', '.join(str(m[0]) for m in members)}: several files for row '{name}' "
                            "without distinct seeds")
        rows.append(per_seed[0] if seeds == [None] else seeded_row(per_seed, seeds))
        frames.append([df for _, df, _ in members])
        sources.append([str(path) for path, _, _ in members])
    return rows, frames, sources


def prediction_attrs(row: dict, order: int, seed: int | None, split: str) -> dict:
    """What a copied predictions file records about its row (read back by predictions_rows)."""
    return {ATTRS: {"row": row["method"], "seed": seed, "order": order, "kind": row.get("kind"), "split": split,
                    **{k: row[k] for k in ("label", "no_titles", "id_only", "modules") if k in row}}}


# ----------------------------------------------------------------------------- intervals
def default_reference(rows: list[dict]) -> str | None:
    """The first CoRA row, else the first row (None without rows)."""
    for r in rows:
        if r.get("kind") == "cora":
            return r["method"]
    return rows[0]["method"] if rows else None


def resolve_reference(rows: list[dict], reference: str | None) -> str | None:
    """A row name from a name or a run folder path; unknown names are a one-line error."""
    if reference is None:
        return default_reference(rows)
    for r in rows:
        if reference == r["method"]:
            return r["method"]
    for r in rows:  # a run folder names its row too
        if r.get("run") and Path(reference) == Path(r["run"]):
            return r["method"]
    raise CoraError(f"reference '{reference}' is not a row (rows: {', '.join(r['method'] for r in rows)})")


def add_intervals(rows: list[dict], frames: list[list[pd.DataFrame]], *, sources: list[list[str]] | None = None,
                  reference: str | None = None, resamples: int = 1000, seed: int = 0,
                  contrasts: dict[str, dict[str, float]] | None = None) -> dict:
    """Add ``<metric>_ci95`` and ``vs_reference`` to every row (per-seed intervals to its seeds)
    from one paired bootstrap over ``frames`` (row i's predictions, one frame per seed). Returns
    the bootstrap's settings for the table's header: {resamples, seed, users, reference}, and
    ``contrasts`` (see :func:`cora.eval.bootstrap.paired_bootstrap`) when asked for."""
    ref = resolve_reference(rows, reference)
    names = [r["method"] for r in rows]
    boot = paired_bootstrap(dict(zip(names, frames)), ref, n_resamples=resamples, seed=seed,
                            sources=dict(zip(names, sources)) if sources else None, contrasts=contrasts)
    for r in rows:
        b = boot["by_row"][r["method"]]
        r.update({f"{m}_ci95": b[f"{m}_ci95"] for m in METRICS})
        r["vs_reference"] = b["vs_reference"]
        for s, ps in zip(r.get("seeds", []), b["per_seed"]):
            s.update({f"{m}_ci95": ps[f"{m}_ci95"] for m in METRICS})
    return {k: boot[k] for k in ("resamples", "seed", "users", "reference", "delta", "metric_users", "contrasts")
            if k in boot}


def build_report(runs: list[Path] | None, predictions: list[Path] | None, split: str, *,
                 reference: str | None = None, resamples: int = 1000, seed: int = 0) -> tuple[list[dict], dict]:
    """Rows with intervals from run folders (their ``split``) or from predictions files alone."""
    if bool(runs) == bool(predictions):
        raise CoraError("give run folders or --predictions files, not both and not neither")
    if predictions:
        rows, frames, sources = predictions_rows(predictions)
    else:
        rows = report_rows(list(runs), split)
        frames = [[run_predictions(r["run"], split, r["n"])] for r in rows]
        sources = [[str(Path(r["run"]) / layout.predictions(split))] for r in rows]
    return rows, add_intervals(rows, frames, sources=sources, reference=reference, resamples=resamples, seed=seed)


# ----------------------------------------------------------------------------- tables
_HEADS = {"auc": "AUC", "uauc": "UAUC", "warm_auc": "warm AUC", "warm_uauc": "warm UAUC", "cold_auc": "cold AUC",
          "cold_uauc": "cold UAUC"}


def _value(r: dict, m: str) -> str:
    v, ci = r.get(m), r.get(f"{m}_ci95")
    if v is None:
        return "-"
    return f"{v:.4f}" if not ci else f"{v:.4f} ± {(ci[1] - ci[0]) / 2:.4f}"


def p_value(p: float | None, resamples: int) -> str:
    """'p=0.003'; 'p<0.001' where no resample of 1,000 had the difference <= 0 (its resolution)."""
    if p is None:
        return "p=-"
    return f"p<{1 / resamples:.3g}" if p == 0 else f"p={p:.3f}"


def _delta(r: dict, meta: dict) -> str:
    d = r.get("vs_reference")
    if not d:
        return "-"
    if d["row"] == r["method"]:
        return "(reference)"
    ci = d.get("delta_auc_ci95")
    if d.get("delta_auc") is None or not ci:
        return "-"
    return f"{d['delta_auc']:+.4f} [{ci[0]:+.4f}, {ci[1]:+.4f}] {p_value(d.get('p_delta_le_0'), meta['resamples'])}"


def _seeds(r: dict) -> str:
    if "seeds" not in r:
        return "-"
    sd = lambda x: "-" if x is None else f"{x:.4f}"
    return f"{len(r['seeds'])} (sd {sd(r.get('auc_std'))} / {sd(r.get('uauc_std'))})"


def table_columns(split: str, meta: dict | None, seeded: bool) -> list[str]:
    cols = [f"method ({split})", "n", *_HEADS.values()]
    if meta and meta.get("reference"):
        cols.append(f"{meta['reference']} - row, AUC [95 %], p")
    if seeded:
        cols.append("seeds (sd AUC / UAUC)")
    return cols


def table_cells(r: dict, meta: dict | None, seeded: bool) -> list[str]:
    cells = [r["method"], f"{r['n']:,}", *(_value(r, m) for m in _HEADS)]
    if meta and meta.get("reference"):
        cells.append(_delta(r, meta))
    if seeded:
        cells.append(_seeds(r))
    return cells


def interval_note(meta: dict | None, seeded: bool) -> str:
    """The line above a table that says what its ± and brackets mean."""
    if not meta:
        return ""
    note = (f"Cells: value ± half-width of the 95 % interval of a user-level paired bootstrap "
            f"({meta['resamples']:,} resamples of the {meta['users']:,} test users, seed {meta['seed']}).")
    if ref := meta.get("reference"):
        note += (f" {ref} - row: the difference in AUC [95 % interval] and p, the one-sided bootstrap p-value of "
                 f"'{ref} is better than the row' (the share of resamples where {ref} - row <= 0; small: {ref} "
                 "better, near 1: the row better).")
    if seeded:
        note += " Seeded rows: mean over seeds (interval: bootstrap of that mean); sd = standard deviation over seeds."
    return note


def small_sample_warning(meta: dict | None, minimum: int = MIN_USERS) -> str:
    """One line when a metric rests on fewer than ``minimum`` test users (its interval and p-value
    are then too optimistic), naming each such metric and its user count; '' otherwise."""
    users = (meta or {}).get("metric_users") or {}
    few = [f"{_HEADS[m]} {users[m]:,}" for m in _HEADS if m in users and users[m] < minimum]
    if not few:
        return ""
    return (f"Warning: fewer than {minimum} test users behind {', '.join(few)}: at this size a 95 % bootstrap "
            "interval holds the true value less often than 95 % (docs/experiments.md), so read these intervals and "
            "p-values as rough.")


def markdown_table(rows: list[dict], split: str, meta: dict | None = None) -> str:
    """The comparison as Markdown; with ``meta`` (from :func:`add_intervals`) a note line, ±
    intervals, the difference to the reference and, for small samples, a warning line."""
    seeded = any("seeds" in r for r in rows)
    cols = table_columns(split, meta, seeded)
    lines = [interval_note(meta, seeded), ""] if meta else []
    if warning := small_sample_warning(meta):
        lines += [warning, ""]
    lines += ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    lines += ["| " + " | ".join(table_cells(r, meta, seeded)) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def verdict(delta_ci: list | None, words: tuple[str, str] = ("better", "worse")) -> str:
    """What a 95 % interval of (reference - row), the stored difference, decides: the reference is
    'better' where the whole interval is above 0, 'worse' where it is below, 'n.s.' (not
    distinguishable) where it holds 0."""
    if not delta_ci or None in delta_ci:
        return "-"
    return words[0] if delta_ci[0] > 0 else words[1] if delta_ci[1] < 0 else "n.s."


def _decided_cells(diffs: dict, words: tuple[str, str] = ("better", "worse")) -> list[str]:
    """One cell per metric of ``diffs`` (``delta_<m>`` and ``delta_<m>_ci95``):
    'decision (value [95 % interval])', or '-' where it is undefined."""
    cells = []
    for m in _HEADS:
        d, ci = diffs.get(f"delta_{m}"), diffs.get(f"delta_{m}_ci95")
        if d is None or not ci or None in ci:
            cells.append("-")
            continue
        lo, hi = 0.0 + ci[0], 0.0 + ci[1]  # 0.0 + x: no "-0.000"
        cells.append(f"{verdict([lo, hi], words)} ({0.0 + d:+.3f} [{lo:+.3f}, {hi:+.3f}])")
    return cells


def verdict_table(rows: list[dict], meta: dict | None) -> str:
    """One line per row: is the reference better than it, worse, or not distinguishable, for each
    metric (AUC, UAUC, warm, cold)? Each cell: the verdict, then reference - row [95 % interval]
    from the paired bootstrap. Empty without a reference."""
    ref = (meta or {}).get("reference")
    others = [r for r in rows if (r.get("vs_reference") or {}).get("row") == ref and r["method"] != ref]
    if not ref or not others:
        return ""
    lines = [f"Is {ref} better than each row? Cell: verdict ({ref} - row [95 % interval]); 'better' / "
             "'worse' where the interval excludes 0, 'n.s.' where it holds 0.", "",
             "| row | " + " | ".join(_HEADS.values()) + " |", "|---|" + "---|" * len(_HEADS)]
    for r in others:  # the stored difference: reference - row, as in the table above
        lines.append(f"| {r['method']} | " + " | ".join(_decided_cells(r["vs_reference"])) + " |")
    return "\n".join(lines) + "\n"


def contrast_table(meta: dict | None) -> str:
    """The experiment's contrasts (weighted sums of rows on the same resamples): one line each,
    the value and 95 % interval of every metric and what the interval decides ('> 0' / '< 0'
    where it excludes 0, 'n.s.' where it holds 0). Empty without contrasts."""
    contrasts = (meta or {}).get("contrasts")
    if not contrasts:
        return ""
    lines = ["Contrasts (weighted sums of rows, on the same resampled users). Cell: decision (value [95 % interval]); "
             "'> 0' / '< 0' where the interval excludes 0, 'n.s.' where it holds 0.", "",
             "| contrast | " + " | ".join(_HEADS.values()) + " |", "|---|" + "---|" * len(_HEADS)]
    for name, c in contrasts.items():
        cells = _decided_cells(c, words=("> 0", "< 0"))
        terms = " ".join(f"{'+' if w > 0 else '-'} {'' if abs(w) == 1 else f'{abs(w):g} '}{row}"
                         for row, w in c["weights"].items()).lstrip("+ ")
        lines.append(f"| {name}: {terms} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
