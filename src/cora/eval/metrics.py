"""AUC, UAUC and the warm / cold breakdown (DESIGN sec. 5 and 7).

AUC is sklearn's ``roc_auc_score`` over a split. UAUC is the unweighted mean of per-user AUC,
skipping users with a single row or a single class — the reference code's rule. Both are also
computed on the warm (``not_cold == 1``) and cold (``not_cold == 0``) subsets.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score


def auc(labels, scores) -> float:
    """ROC AUC; NaN when only one class is present (undefined, not an error)."""
    labels = np.asarray(labels)
    if len(labels) == 0 or len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))


def uauc(users, labels, scores) -> tuple[float, int]:
    """Mean per-user AUC over users with >= 2 rows and both labels; returns (uauc, n_users used)."""
    df = pd.DataFrame({"u": np.asarray(users), "y": np.asarray(labels), "s": np.asarray(scores, dtype=np.float64)})
    values = []
    for _, g in df.groupby("u", sort=False):
        if len(g) < 2 or g["y"].nunique() < 2:
            continue
        values.append(roc_auc_score(g["y"].to_numpy(), g["s"].to_numpy()))
    if not values:
        return float("nan"), 0
    return float(np.mean(values)), len(values)


def _block(df: pd.DataFrame) -> dict:
    u, n_users = uauc(df["uid"], df["label"], df["score"])
    return {"n": len(df), "auc": _clean(auc(df["label"], df["score"])), "uauc": _clean(u), "uauc_users": n_users}


def _clean(x: float) -> float | None:
    # JSON has no NaN: an undefined metric is written as null.
    return None if x is None or math.isnan(x) else round(float(x), 6)


def evaluate_predictions(pred: pd.DataFrame) -> dict:
    """Metrics of one split in the project's schema: {n, auc, uauc, uauc_users, warm: {...}, cold: {...}}.

    ``pred`` needs columns uid, label, score, not_cold.
    """
    out = _block(pred)
    out["warm"] = _block(pred[pred["not_cold"] == 1])
    out["cold"] = _block(pred[pred["not_cold"] == 0])
    return out
