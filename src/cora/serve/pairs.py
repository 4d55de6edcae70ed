"""Offline scoring of a file of (user, item) pairs: ``cora score RUN --pairs PAIRS.csv``.

The file is read as ``cora data import-interactions`` reads a log (:mod:`cora.data.interactions`):
csv, tsv or parquet by its name (csv otherwise), the user and item columns found by the same names
(``user,item``, ``userId,movieId``, ``user_id,item_id``, ...) or named with ``--user COL`` /
``--item COL``; other columns are ignored. Ids are the dataset's own (its ``users.parquet`` /
``items.parquet``), or cora's internal ones with ``internal=True`` (``--internal-ids``).

Everything is checked before the (slow) model loads: the file, then every id (the id maps first,
then the dataset's catalog), so a typo in row 90,000 fails in seconds with one line naming the
file, the column, the line and the id, not after an hour of scoring. (The model stack is imported
only after that.)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cora.data.interactions import (
    Source,
    find_column,
    ids_as_text,
    infer_format,
    read_source,
)
from cora.errors import CoraError
from cora.io import write_parquet
from cora.serve.ids import DatasetIds

ROLES = ("user", "item")


@dataclass
class PairsFile:
    """The pairs as written: ids as text, and where each row is in the file (for messages)."""

    source: Source
    columns: dict[str, str]  # role -> the file's column
    ids: dict[str, list[str]]  # role -> the ids, in file order

    def where(self, row: int) -> str:
        return self.source.where(self.source.table.index[row])

    def __len__(self) -> int:
        return len(self.ids["user"])


FORMATS = ("csv", "tsv", "parquet")


def read_pairs(path: str | Path, user: str | None = None, item: str | None = None,
               fmt: str | None = None) -> PairsFile:
    """The user and item columns of ``path`` (named by ``user`` / ``item``, or found as the
    importer finds them); ``fmt`` csv | tsv | parquet (default: by the file's name, csv for other
    names; a RecBole .inter by its name too). One-line errors naming the file, the column and the line."""
    path = Path(path)
    if fmt is not None and fmt not in FORMATS:
        raise CoraError(f"--format {fmt}: choose from {', '.join(FORMATS)}")
    if fmt is None:
        try:
            fmt = infer_format(path, None)
        except CoraError:
            fmt = "csv"  # any other name (pairs.txt): CSV
    src = read_source(path, fmt)
    columns = {"user": find_column(src, "user", user), "item": find_column(src, "item", item)}
    if columns["user"] == columns["item"]:
        raise CoraError(f"{path}: column '{columns['user']}' cannot be both the user and the item column")
    return PairsFile(src, columns, {role: ids_as_text(src, col).tolist() for role, col in columns.items()})


def resolve_pairs(pairs: PairsFile, data, internal: bool = False) -> list[tuple[int, int]]:
    """Internal (uid, iid) of every row, through ``data``'s maps and catalog (a
    :class:`~cora.serve.preflight.RunData`), or an error naming the file, column, line and id."""
    out, lookup = [], {"user": data.user, "item": data.item}
    cache: dict[tuple[str, str], int] = {}  # a user's id recurs on many rows: look it up once
    for row, (u, i) in enumerate(zip(pairs.ids["user"], pairs.ids["item"])):
        found = []
        for role, value in (("user", u), ("item", i)):
            key = (role, value)
            if key not in cache:
                try:
                    cache[key] = lookup[role](value, internal=internal)
                except CoraError as e:
                    raise CoraError(f"{pairs.source.path}: column '{pairs.columns[role]}', {pairs.where(row)}: "
                                    f"{e}") from None
            found.append(cache[key])
        out.append((found[0], found[1]))
    return out


def scored_frame(pairs: list[tuple[int, int]], logits: np.ndarray, ids: DatasetIds, titles: dict[int, str],
                 internal: bool = False) -> pd.DataFrame:
    """user, item (the dataset's own ids), title, score (the Yes logit), probability; uid, iid
    (cora's) after user, item with ``internal``."""
    from cora.serve.recommend import sigmoid

    uids = np.array([u for u, _ in pairs], dtype=np.int64)
    iids = np.array([i for _, i in pairs], dtype=np.int64)
    df = pd.DataFrame({"user": _column([ids.users.original(u) for u in uids]),
                       "item": _column([ids.items.original(i) for i in iids])})
    if internal:
        df["uid"], df["iid"] = uids, iids
    df["title"] = [titles[int(i)] for i in iids]
    df["score"], df["probability"] = np.asarray(logits, dtype=np.float64), sigmoid(logits)
    return df


def _column(values: list) -> pd.Series:
    """Original ids as one column: int64 when they are numbers, text otherwise."""
    if all(isinstance(v, int) for v in values):
        return pd.Series(values, dtype=np.int64)
    return pd.Series([str(v) for v in values], dtype=object)


def score_file(run: str | Path, pairs_file: str | Path, out: str | Path, batch_size: int | None = None,
               show_progress: bool = True, backbone=None, internal: bool = False, user: str | None = None,
               item: str | None = None, fmt: str | None = None, placement=None,
               say=lambda line: None) -> pd.DataFrame:
    """Score every pair of ``pairs_file`` with ``run``; write ``out`` (Parquet, atomically) in
    the file's row order (columns: :func:`scored_frame`). ``placement``: device / dtype / threads."""
    from cora.serve.preflight import RunData

    pairs = read_pairs(pairs_file, user=user, item=item, fmt=fmt)  # a bad file fails before anything loads
    data = RunData.open(run)
    internal_pairs = resolve_pairs(pairs, data, internal=internal)  # ... and so does an unknown id
    rec = data.recommender(backbone=backbone, placement=placement, say=say)
    logits = rec.logits(internal_pairs, batch_size=batch_size, show_progress=show_progress)
    df = scored_frame(internal_pairs, logits, rec.ids, rec.catalog.titles, internal=internal)
    write_parquet(out, df)
    return df
