"""The interaction-table schema shared by CoLLM, BinLLM and CoRA (DESIGN sec. 3).

One row per user-item event. Ids start at 1; 0 is padding (``his`` starts with a 0 pad, as in
the reference data). On disk a row holds either its own ``his`` / ``his_title`` (:data:`COLUMNS`)
or, with the user's history stored once (:mod:`cora.data.histories`), only ``his_len``
(:data:`STORED_COLUMNS`); readers always get :data:`COLUMNS`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cora.errors import CoraError

COLUMNS = ["uid", "iid", "label", "timestamp", "his", "his_title", "title", "not_cold"]
SPLITS = ["train", "valid", "valid_small", "test"]
INT_COLUMNS = ["uid", "iid", "label", "timestamp", "not_cold"]
# A row whose history lives in histories.parquet: his = the user's his[:his_len + 1].
STORED_COLUMNS = ["uid", "iid", "label", "timestamp", "his_len", "title", "not_cold"]


def validate_table(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check ``df`` against the schema and return it with canonical dtypes and column order:
    :data:`COLUMNS`, or :data:`STORED_COLUMNS` for a table with ``his_len`` instead of histories.

    ``source`` names the file (or file:split) in error messages.
    """
    per_user = "his_len" in df.columns and "his" not in df.columns
    columns = STORED_COLUMNS if per_user else COLUMNS
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CoraError(f"{source}: missing column(s) {', '.join(missing)} (expected {', '.join(columns)})")
    if len(df) == 0:
        raise CoraError(f"{source}: table has no rows")
    out = pd.DataFrame(index=range(len(df)))
    for col in INT_COLUMNS + (["his_len"] if per_user else []):
        values = pd.to_numeric(df[col].reset_index(drop=True), errors="coerce")
        if values.isna().any():
            row = int(values.isna().to_numpy().nonzero()[0][0])
            raise CoraError(f"{source}: field '{col}' has a missing or non-numeric value at row {row}")
        if not np.all(np.equal(np.mod(values.to_numpy(dtype=float), 1), 0)):
            raise CoraError(f"{source}: field '{col}' must hold integers")
        out[col] = values.astype("int64")
    for col in ("uid", "iid"):
        bad = out[col] <= 0
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise CoraError(f"{source}: field '{col}' must be >= 1 (0 is padding); found {out[col][row]} at row {row}")
    for col in ("label", "not_cold"):
        bad = ~out[col].isin([0, 1])
        if bad.any():
            row = int(bad.to_numpy().nonzero()[0][0])
            raise CoraError(f"{source}: field '{col}' must be 0 or 1; found {out[col][row]} at row {row}")
    titles = df["title"].reset_index(drop=True)
    if titles.isna().any():
        raise CoraError(f"{source}: field 'title' is missing at row {int(titles.isna().to_numpy().nonzero()[0][0])}")
    out["title"] = titles.map(str)
    if per_user:
        if (out["his_len"] < 0).any():
            raise CoraError(f"{source}: field 'his_len' must be >= 0")
        return out[STORED_COLUMNS]
    out["his"] = _list_column(df["his"], source, "his", int)
    out["his_title"] = _list_column(df["his_title"], source, "his_title", str)
    bad_his = out["his"].map(lambda h: any(x < 0 for x in h))
    if bad_his.any():
        raise CoraError(f"{source}: field 'his' holds a negative item id at row {int(bad_his.to_numpy().nonzero()[0][0])}")
    return out[COLUMNS]


def _list_column(col: pd.Series, source: str, name: str, kind: type) -> pd.Series:
    def convert(value, row):
        if isinstance(value, str) or not hasattr(value, "__iter__"):
            raise CoraError(f"{source}: field '{name}' must be a list at row {row}; found {type(value).__name__}")
        try:
            return [kind(v) for v in value]
        except (TypeError, ValueError):
            raise CoraError(f"{source}: field '{name}' holds a non-{kind.__name__} value at row {row}") from None

    return pd.Series([convert(v, i) for i, v in enumerate(col)], dtype=object)
