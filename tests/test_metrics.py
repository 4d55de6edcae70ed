"""AUC / UAUC against hand-computed cases and sklearn, with the reference's UAUC skip rules."""

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cora.eval.metrics import auc, evaluate_predictions, uauc


def test_auc_hand_computed():
    # 2 positives x 2 negatives = 4 pairs; pos 0.9 beats both, pos 0.4 beats 0.3 only, ties count half.
    assert auc([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.3]) == pytest.approx(0.75)
    assert auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert np.isnan(auc([1, 1], [0.1, 0.2]))


def test_uauc_skips_single_row_and_single_class_users():
    users = [1, 1, 1, 2, 2, 3, 4, 4]
    labels = [1, 0, 0, 1, 0, 1, 1, 1]
    scores = [0.9, 0.1, 0.95, 0.2, 0.8, 0.5, 0.3, 0.4]
    # user 1: pos 0.9 vs neg 0.1 (win), 0.95 (loss) -> 0.5; user 2: 0.2 < 0.8 -> 0.0;
    # user 3 has one row, user 4 one class: both skipped.
    value, n = uauc(users, labels, scores)
    assert n == 2
    assert value == pytest.approx(0.25)


def test_uauc_matches_sklearn_per_user_mean():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 2000)
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(size=2000) + labels * 0.5
    expected = []
    for u in np.unique(users):
        m = users == u
        if m.sum() > 1 and len(np.unique(labels[m])) == 2:
            expected.append(roc_auc_score(labels[m], scores[m]))
    value, n = uauc(users, labels, scores)
    assert n == len(expected)
    assert value == pytest.approx(np.mean(expected), abs=1e-12)
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_evaluate_predictions_schema_and_warm_cold():
    rng = np.random.default_rng(1)
    n = 400
    df = pd.DataFrame({"uid": rng.integers(1, 20, n), "iid": rng.integers(1, 50, n), "label": rng.integers(0, 2, n),
                       "score": rng.normal(size=n), "not_cold": (np.arange(n) % 3 != 0).astype(int)})
    m = evaluate_predictions(df)
    assert set(m) == {"n", "auc", "uauc", "uauc_users", "warm", "cold"}
    assert m["n"] == n and m["warm"]["n"] + m["cold"]["n"] == n
    warm = df[df.not_cold == 1]
    assert m["warm"]["auc"] == pytest.approx(roc_auc_score(warm.label, warm.score), abs=1e-6)
    assert set(m["cold"]) == {"n", "auc", "uauc", "uauc_users"}


def test_undefined_metrics_are_null():
    df = pd.DataFrame({"uid": [1, 2], "iid": [1, 2], "label": [1, 1], "score": [0.1, 0.2], "not_cold": [1, 1]})
    m = evaluate_predictions(df)
    assert m["auc"] is None and m["uauc"] is None and m["uauc_users"] == 0
    assert m["cold"]["n"] == 0 and m["cold"]["auc"] is None
