"""Offline scoring of a file of (user, item) pairs: ``cora score RUN --pairs PAIRS.csv``.

The CSV is checked completely before the (slow) model starts, so a typo in row 90,000 fails in a
second with one line naming the file, the column and the row, not after an hour of scoring.
Rows are counted from 1, the header excluded. (The model stack is imported only after that.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cora.errors import CoraError
from cora.io import read_csv, write_parquet

COLUMNS = ("user", "item")


def read_pairs_csv(path: str | Path) -> list[tuple[int, int]]:
    """(user, item) id pairs from a CSV with columns ``user`` and ``item`` (others are ignored)."""
    path = Path(path)
    df = read_csv(path, "pairs file", dtype=str, keep_default_na=False, skipinitialspace=True)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CoraError(f"{path}: missing column(s) {', '.join(repr(c) for c in missing)} "
                        f"(expected a header with {', '.join(COLUMNS)}; found {', '.join(map(repr, df.columns)) or 'none'})")
    if len(df) == 0:
        raise CoraError(f"{path}: no pairs (the file has a header only)")
    ids = {}
    for col in COLUMNS:
        text = df[col].str.strip()
        ok = text.str.fullmatch(r"\d+")
        if not ok.all():
            row = int(np.flatnonzero(~ok.to_numpy())[0])
            raise CoraError(f"{path}: column '{col}', row {row + 1}: {df[col].iloc[row]!r} is not an id "
                            "(a whole number >= 0)")
        ids[col] = text.map(int).tolist()
    return list(zip(ids["user"], ids["item"]))


def check_pairs_file(rec, pairs: list[tuple[int, int]], path: str | Path) -> None:
    """Every id known to ``rec`` (a Recommender), or an error naming the file, column and row."""
    from cora.serve.catalog import UnknownIdError

    for row, (uid, iid) in enumerate(pairs, 1):
        try:
            rec.check_pairs([(uid, iid)])
        except UnknownIdError as e:
            raise CoraError(f"{path}: column '{e.kind}', row {row}: {e}") from None


def score_file(run: str | Path, pairs_csv: str | Path, out: str | Path, batch_size: int | None = None,
               show_progress: bool = True, backbone=None) -> pd.DataFrame:
    """Score every pair of ``pairs_csv`` with ``run``; write ``out`` (Parquet, atomically) with
    columns user, item, score (the Yes logit) and probability, in the file's row order."""
    pairs = read_pairs_csv(pairs_csv)  # before importing torch and loading the model: a bad file fails at once
    from cora.serve.recommend import Recommender, sigmoid

    rec = Recommender.from_run(run, backbone=backbone)
    check_pairs_file(rec, pairs, pairs_csv)
    logits = rec.logits(pairs, batch_size=batch_size, show_progress=show_progress)
    df = pd.DataFrame({"user": np.array([u for u, _ in pairs], dtype=np.int64),
                       "item": np.array([i for _, i in pairs], dtype=np.int64),
                       "score": logits, "probability": sigmoid(logits)})
    write_parquet(out, df)
    return df
