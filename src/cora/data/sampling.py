"""Row subsets that keep evaluation meaningful: whole users, seeded, original order."""

from __future__ import annotations

import pandas as pd

from cora.errors import CoraError


def sample_users(df: pd.DataFrame, max_rows: int | None, seed: int, per_user: int | None = None) -> pd.DataFrame:
    """At most ~``max_rows`` rows made of whole users (drawn at random with ``seed``), in the
    original row order, so per-user AUC stays meaningful on a limited evaluation.

    ``per_user`` keeps at most that many rows of each drawn user (a seeded random subset): on
    ML-1M's test split a few users hold hundreds of rows, so a ~500-row sample of whole users can
    be 11 users (85 % cold rows against 43 % in the split) and say little about the split; capped,
    the same budget spreads over ~``max_rows / per_user`` users."""
    if per_user is not None and per_user < 2:
        raise CoraError(f"per_user {per_user}: keep at least 2 rows of a user (UAUC needs both labels)")
    if max_rows is None or (len(df) <= max_rows and per_user is None):
        return df
    users = df["uid"].drop_duplicates().sample(frac=1.0, random_state=seed).to_numpy()
    counts = df["uid"].value_counts()
    keep, total = [], 0
    for u in users:
        if total >= max_rows:
            break
        keep.append(u)
        total += min(int(counts[u]), per_user or int(counts[u]))
    kept = df[df["uid"].isin(set(keep))]
    if per_user is not None:
        kept = kept.sample(frac=1.0, random_state=seed).groupby("uid").head(per_user).sort_index()
    return kept


# The rows per user a limited sample keeps unless told otherwise (CLI --limit, experiments'
# test_limit, training's limit_valid in new runs): ~N rows then spread over ~N/10 users.
DEFAULT_PER_USER = 10


def resolve_per_user(limit: int | None, per_user: int | None, whole_users: bool = False) -> int | None:
    """The per-user cap of a sample of ~``limit`` rows: ``per_user`` if given, none if whole users
    are asked for (or there is no limit), else :data:`DEFAULT_PER_USER`."""
    if limit is None or whole_users:
        return None
    return DEFAULT_PER_USER if per_user is None else per_user


def sample_rows(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows is None or len(df) <= max_rows:
        return df
    return df.sample(n=max_rows, random_state=seed).sort_index()


def split_key(split: str, limit: int | None, per_user: int | None = None) -> str:
    """Metrics of a limited evaluation are kept apart from the full split's: ``test-limit2000``,
    ``test-limit1000-per10`` (at most 10 rows per user)."""
    if limit is None:
        return split
    return f"{split}-limit{limit}" + (f"-per{per_user}" if per_user is not None else "")
