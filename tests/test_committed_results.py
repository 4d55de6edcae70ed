"""Every results table the README quotes is recomputable from the predictions committed beside it.

For each ``results/<name>/results.json`` in the repository, every row that has a committed
``predictions/*.parquet`` is recomputed here with sklearn (AUC), a pair count (per-user AUC) and pandas alone (not through
``cora.eval``, so a bug there cannot hide itself) and must match the stored AUC / UAUC and their
warm / cold parts to 1e-6 (results.json rounds to 6 decimals); the rows of one table must have been
scored on identical test rows; and a row whose predictions were lost must not be reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
TABLES = sorted((ROOT / "results").glob("*/results.json"))


def _auc(df: pd.DataFrame) -> float | None:
    return float(roc_auc_score(df["label"], df["score"])) if df["label"].nunique() == 2 else None


def _pair_auc(label: np.ndarray, score: np.ndarray) -> float:
    # AUC as the share of (positive, negative) pairs ordered right, ties half: the definition itself,
    # a second route beside sklearn's, and fast for one user's ~10 rows.
    pos, neg = score[label == 1][:, None], score[label == 0][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def _uauc(df: pd.DataFrame) -> float | None:
    # The reference's rule: users with a single row or a single class are skipped, the rest averaged.
    per = [_pair_auc(g["label"].to_numpy(), g["score"].to_numpy(dtype=np.float64))
           for _, g in df.groupby("uid") if len(g) > 1 and g["label"].nunique() == 2]
    return float(np.mean(per)) if per else None


def _metrics(df: pd.DataFrame) -> dict:
    warm, cold = df[df["not_cold"] == 1], df[df["not_cold"] == 0]
    return {"auc": _auc(df), "uauc": _uauc(df), "warm_auc": _auc(warm), "warm_uauc": _uauc(warm),
            "cold_auc": _auc(cold), "cold_uauc": _uauc(cold)}


def _predictions(table: Path) -> dict[tuple[str, int | None], pd.DataFrame]:
    """(row name, seed) -> predictions, named by the row identity the file's attrs carry."""
    out = {}
    for path in sorted((table.parent / "predictions").glob("*.parquet")):
        df = pd.read_parquet(path)
        info = df.attrs.get("cora") or {}
        assert info.get("row"), f"{path}: no row name in its attrs"
        out[(info["row"], info.get("seed"))] = df
    return out


def test_there_are_committed_tables_to_check():
    names = {t.parent.name for t in TABLES}
    assert {"ml1m-cpu", "ml1m-curves", "ml1m-probe"} <= names


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.parent.name)
def test_every_row_recomputes_from_its_committed_predictions(table):
    rows = json.loads(table.read_text())["rows"]
    preds = _predictions(table)
    checked = 0
    for row in rows:
        seeds = [s["seed"] for s in row.get("seeds") or []] or [None]
        frames = [preds.get((row["method"], s)) for s in seeds]
        assert all(f is not None for f in frames), f"{table}: row {row['method']} is reported without its predictions"
        got = [_metrics(f) for f in frames]
        for field in ("auc", "uauc", "warm_auc", "warm_uauc", "cold_auc", "cold_uauc"):
            values = [g[field] for g in got]
            if row.get(field) is None:
                assert all(v is None for v in values), (row["method"], field)
                continue
            want = float(np.mean(values))  # a seeded row reports the mean over its seeds
            assert row[field] == pytest.approx(want, abs=1e-6), f"{table.parent.name}: {row['method']} {field}"
        assert row["n"] == len(frames[0]), row["method"]
        checked += 1
    assert checked == len(rows) > 0


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.parent.name)
def test_the_rows_of_one_table_were_scored_on_identical_test_rows(table):
    keys = {}
    for name, df in _predictions(table).items():
        keys[name] = df[["uid", "iid", "label", "not_cold"]].sort_values(["uid", "iid", "label"]).to_numpy()
    first_name, first = next(iter(keys.items()))
    for name, k in keys.items():
        assert k.shape == first.shape and (k == first).all(), f"{table.parent.name}: {name} and {first_name} differ"
