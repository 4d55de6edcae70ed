"""Evaluation samples (cora.data.sampling): whole users, seeded, original order; the per-user cap
spreads a budget over more users; the metrics key names the sample."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cora.data.sampling import sample_users, split_key
from cora.errors import CoraError


def _split() -> pd.DataFrame:
    # 3 heavy users (100 rows each) and 60 light ones (5 rows each): 600 rows, interleaved.
    uids = [u for u in range(3) for _ in range(100)] + [u for u in range(3, 63) for _ in range(5)]
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"uid": uids, "label": rng.integers(0, 2, len(uids))})
    return df.sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_whole_users_in_original_order_and_seeded():
    df = _split()
    a, b = sample_users(df, 200, seed=0), sample_users(df, 200, seed=0)
    assert a.index.equals(b.index) and a.index.is_monotonic_increasing
    counts = df["uid"].value_counts()
    assert all(a["uid"].value_counts()[u] == counts[u] for u in a["uid"].unique())  # whole users
    assert len(a) >= 200 and len(a) - 200 < 100  # stops at the first user past the budget
    assert not sample_users(df, 200, seed=1).index.equals(a.index)
    assert sample_users(df, None, seed=0) is df and sample_users(df, 10_000, seed=0) is df


def test_per_user_cap_spreads_the_budget_over_more_users():
    df = _split()
    capped = sample_users(df, 200, seed=0, per_user=4)
    assert capped["uid"].value_counts().max() <= 4
    assert 200 <= len(capped) < 204 and capped["uid"].nunique() >= 50
    assert capped.index.is_monotonic_increasing
    assert capped.index.equals(sample_users(df, 200, seed=0, per_user=4).index)
    # The rows kept of a user are a subset of that user's rows (not just its first ones every time).
    assert set(capped.index) <= set(df.index)
    # A cap applies even when the whole split fits the budget.
    assert sample_users(df, 10_000, seed=0, per_user=4)["uid"].value_counts().max() == 4
    with pytest.raises(CoraError, match="per_user 1: keep at least 2 rows"):
        sample_users(df, 200, seed=0, per_user=1)


def test_split_key_names_the_sample():
    assert split_key("test", None) == "test" and split_key("test", None, 10) == "test"
    assert split_key("test", 500) == "test-limit500"
    assert split_key("test", 1000, 10) == "test-limit1000-per10"


def test_cli_limit_caps_rows_per_user_unless_whole_users_are_asked_for(run):
    """`--limit N` alone spreads ~N rows over many users (issue 16); --whole-users is the old sample."""
    import json

    from typer.testing import CliRunner

    from cora.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["evaluate", str(run), "--split", "valid", "--limit", "30"]).exit_code == 0
    assert runner.invoke(app, ["evaluate", str(run), "--split", "valid", "--limit", "30", "--whole-users"]).exit_code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"valid-limit30-per10", "valid-limit30"} <= set(metrics)
    import pandas as pd

    capped = pd.read_parquet(run / "predictions-valid-limit30-per10.parquet")
    assert capped.groupby("uid").size().max() <= 10
    done = runner.invoke(app, ["evaluate", str(run), "--split", "valid", "--whole-users"])
    assert done.exit_code != 0 and "go with --limit" in str(done.exception)  # app: main() prints it
