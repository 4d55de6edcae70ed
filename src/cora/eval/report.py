"""One comparison table from several run folders (CF runs and LLM runs alike).

Every run folder holds ``metrics.json`` keyed by split (``test``, ``test-limit2000``, ...) and a
``config.yaml`` that tells what the run is; the table puts the same split of each run side by side.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from cora.errors import CoraError
from cora.io import read_json

METHOD_NAMES = {"cora": "CoRA", "icl": "ICL (zero-shot)", "mf": "MF", "lightgcn": "LightGCN", "sasrec": "SASRec"}


def run_label(run: Path) -> str:
    """A readable row name: 'MF', 'CoRA-MF', 'ICL (zero-shot)'."""
    cfg_path = run / "config.yaml"
    if not cfg_path.exists():
        raise CoraError(f"{run}: not a run folder (no config.yaml)")
    cfg = yaml.safe_load(cfg_path.read_text()) or {}
    if "method" not in cfg:  # a CF run
        return METHOD_NAMES.get(cfg.get("model", ""), str(cfg.get("model")))
    name = METHOD_NAMES.get(cfg["method"], cfg["method"])
    if cfg.get("cf"):
        cf_cfg = Path(cfg["cf"]) / "config.yaml"
        if cf_cfg.exists():
            cf_model = (yaml.safe_load(cf_cfg.read_text()) or {}).get("model", "")
            name += "-" + METHOD_NAMES.get(cf_model, cf_model)
    return name


def report_rows(runs: list[Path], split: str) -> list[dict]:
    rows = []
    for run in runs:
        path = run / "metrics.json"
        metrics = read_json(path) if path.exists() else {}
        if split not in metrics:
            have = ", ".join(k for k in metrics if isinstance(metrics[k], dict) and "auc" in metrics[k]) or "none"
            raise CoraError(f"{path}: no metrics for split '{split}' (has: {have}); run the evaluate command first")
        m = metrics[split]
        rows.append({"run": str(run), "method": run_label(run), "n": m["n"], "auc": m["auc"], "uauc": m["uauc"],
                     "warm_auc": m["warm"]["auc"], "warm_uauc": m["warm"]["uauc"],
                     "cold_auc": m["cold"]["auc"], "cold_uauc": m["cold"]["uauc"]})
    return rows


def markdown_table(rows: list[dict], split: str) -> str:
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    lines = [f"| method ({split}) | n | AUC | UAUC | warm AUC | warm UAUC | cold AUC | cold UAUC |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['n']:,} | {f(r['auc'])} | {f(r['uauc'])} | {f(r['warm_auc'])} | "
                     f"{f(r['warm_uauc'])} | {f(r['cold_auc'])} | {f(r['cold_uauc'])} |")
    return "\n".join(lines) + "\n"
