"""Row subsets that keep evaluation meaningful: whole users, seeded, original order."""

from __future__ import annotations

import pandas as pd


def sample_users(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    """At most ~``max_rows`` rows made of whole users (drawn at random with ``seed``), in the
    original row order, so per-user AUC stays meaningful on a limited evaluation."""
    if max_rows is None or len(df) <= max_rows:
        return df
    users = df["uid"].drop_duplicates().sample(frac=1.0, random_state=seed).to_numpy()
    counts = df["uid"].value_counts()
    keep, total = [], 0
    for u in users:
        if total >= max_rows:
            break
        keep.append(u)
        total += int(counts[u])
    return df[df["uid"].isin(set(keep))]


def sample_rows(df: pd.DataFrame, max_rows: int | None, seed: int) -> pd.DataFrame:
    if max_rows is None or len(df) <= max_rows:
        return df
    return df.sample(n=max_rows, random_state=seed).sort_index()


def split_key(split: str, limit: int | None) -> str:
    """Metrics of a limited evaluation are kept apart from the full split's: ``test-limit2000``."""
    return split if limit is None else f"{split}-limit{limit}"
