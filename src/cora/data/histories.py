"""Histories stored once per user, handed to readers as per-row views.

Every row's ``his`` is ``[0]`` + the user's earlier positive items over all splits, in time order
(DESIGN sec. 7), so the histories of one user's rows are prefixes of one sequence: the ``his`` of
a row that would follow all of that user's events. A dataset folder keeps that sequence once per
user (``histories.parquet``: ``uid, his, his_title``, each with the ``0`` / ``''`` pad) and, per
row, only ``his_len``: how many history items the row sees. Stored per row with titles, the
histories grew with the square of a user's activity (ML-1M, 487,650 events: 53 M history
entries, ~11 kB per event in memory).

:meth:`UserHistories.rows` gives each row its ``his`` / ``his_title`` back as read-only numpy
views of the user's arrays: ~100 bytes a row whatever the history's length, and the same items
and titles, in the same order, as the per-row lists were; prompts and CF batches read them
unchanged (they iterate and slice).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cora.errors import CoraError

HISTORY_FILE = "histories.parquet"
HISTORY_COLUMNS = ["uid", "his", "his_title"]


def positive_histories(uid: np.ndarray, iid: np.ndarray, label: np.ndarray,
                       title: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
    """``his_len`` of every row and the per-user table, for rows sorted by user then time.

    ``uid`` must come in contiguous runs (one per user); a row's history is the user's positives
    in the rows before it, so ``his_len`` counts them and the user's sequence lists them all.
    """
    uid, iid, label = (np.asarray(a, dtype=np.int64) for a in (uid, iid, label))
    title = np.asarray(title, dtype=object)
    starts = np.flatnonzero(np.r_[True, uid[1:] != uid[:-1]]) if len(uid) else np.zeros(0, dtype=np.int64)
    ends = np.r_[starts[1:], len(uid)].astype(np.int64)
    users = uid[starts]
    if len(np.unique(users)) != len(users):
        raise ValueError("positive_histories: each user's rows must be contiguous")
    before = np.r_[0, np.cumsum(label)]  # positives in the rows before each row (any user)
    his_len = before[:-1] - np.repeat(before[starts], ends - starts)
    # A user's positives are one contiguous run of all positives, in row order.
    positive = label == 1
    pos_items, pos_titles = iid[positive], title[positive]
    pad_title = np.array([""], dtype=object)
    table = pd.DataFrame({
        "uid": users,
        "his": _cells([np.concatenate([[0], pos_items[a:b]]) for a, b in zip(before[starts], before[ends])]),
        "his_title": _cells([np.concatenate([pad_title, pos_titles[a:b]])
                             for a, b in zip(before[starts], before[ends])]),
    })
    return his_len, table


def per_user_from_rows(tables: dict[str, pd.DataFrame]) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]] | None:
    """Per-row ``his`` / ``his_title`` (an importer's or CoLLM's pickles) as the per-user table
    and ``his_len`` columns, or None where some row's history is not a prefix of its user's
    longest one (such a table keeps its per-row histories)."""
    rows = pd.concat([t[["uid", "his", "his_title"]] for t in tables.values()], ignore_index=True)
    if rows.empty:
        return None
    lengths = rows["his"].map(len).to_numpy()
    longest = pd.Series(lengths).groupby(rows["uid"].to_numpy()).idxmax()
    seq = {int(u): (list(rows["his"].iat[i]), list(rows["his_title"].iat[i])) for u, i in longest.items()}
    for u, his, his_title in zip(rows["uid"].to_numpy(), rows["his"], rows["his_title"]):
        full, titles = seq[int(u)]
        n = len(his)
        if n == 0 or len(his_title) != n or full[:n] != list(his) or titles[:n] != list(his_title):
            return None
    if any(his[0] != 0 or titles[0] != "" for his, titles in seq.values()):
        return None
    users = sorted(seq)
    table = pd.DataFrame({"uid": np.asarray(users, dtype=np.int64),
                          "his": _cells([np.asarray(seq[u][0], dtype=np.int64) for u in users]),
                          "his_title": _cells([np.asarray(seq[u][1], dtype=object) for u in users])})
    compact = {name: t.drop(columns=["his", "his_title"]).assign(his_len=t["his"].map(len).to_numpy() - 1)
               for name, t in tables.items()}
    return table, compact


def _cells(arrays: list[np.ndarray]) -> np.ndarray:
    """An object array holding one array per cell (a list of equal-length arrays would
    otherwise become a 2-D array)."""
    out = np.empty(len(arrays), dtype=object)
    for k, a in enumerate(arrays):
        out[k] = a
    return out


def validate_histories(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """The per-user table with canonical dtypes: unique uids >= 1, ``his`` int ids starting with
    the 0 pad, ``his_title`` text of the same length starting with ''."""
    missing = [c for c in HISTORY_COLUMNS if c not in table.columns]
    if missing:
        raise CoraError(f"{source}: missing column(s) {', '.join(missing)} (expected {', '.join(HISTORY_COLUMNS)})")
    uid = pd.to_numeric(table["uid"], errors="coerce")
    if uid.isna().any() or (uid <= 0).any() or uid.duplicated().any():
        raise CoraError(f"{source}: field 'uid' must hold distinct user ids >= 1")
    his, his_title = [], []
    for row, (h, t) in enumerate(zip(table["his"], table["his_title"])):
        h, t = np.asarray(h, dtype=np.int64), np.asarray(list(t), dtype=object)
        if len(h) == 0 or h[0] != 0 or len(t) != len(h) or t[0] != "" or (h[1:] <= 0).any():
            raise CoraError(f"{source}: row {row} (uid {int(uid.iat[row])}): 'his' must be [0] + item ids >= 1 and "
                            "'his_title' as long, starting with ''")
        his.append(h)
        his_title.append(t)
    return pd.DataFrame({"uid": uid.astype("int64").to_numpy(), "his": _cells(his), "his_title": _cells(his_title)})


@dataclass
class UserHistories:
    """uid -> the user's full ``his`` / ``his_title`` (read-only arrays, pad included)."""

    his: dict[int, np.ndarray]
    his_title: dict[int, np.ndarray]
    source: str = HISTORY_FILE

    @classmethod
    def from_table(cls, table: pd.DataFrame, source: str = HISTORY_FILE) -> UserHistories:
        his, his_title = {}, {}
        for u, h, t in zip(table["uid"].to_numpy(), table["his"], table["his_title"]):
            h, t = np.array(h, dtype=np.int64), np.array(t, dtype=object)
            h.flags.writeable = t.flags.writeable = False  # views of these are shared by many rows
            his[int(u)], his_title[int(u)] = h, t
        return cls(his, his_title, source)

    def rows(self, uid: pd.Series, his_len: pd.Series, where: str) -> tuple[np.ndarray, np.ndarray]:
        """Each row's ``his`` / ``his_title``: the first ``his_len`` items of its user's, after the pad."""
        lengths = pd.to_numeric(his_len, errors="coerce")
        if lengths.isna().any() or (lengths < 0).any():
            raise CoraError(f"{where}: column 'his_len' must hold counts >= 0")
        his, his_title = np.empty(len(uid), dtype=object), np.empty(len(uid), dtype=object)
        for row, (u, n) in enumerate(zip(uid.to_numpy(), lengths.to_numpy(dtype=np.int64))):
            full = self.his.get(int(u))
            if full is None or n >= len(full):
                held = 0 if full is None else len(full) - 1
                raise CoraError(f"{where}: row {row} (uid {int(u)}) has his_len {n}, but {self.source} holds "
                                f"{held} history item(s) for that user (a file of another dataset?)")
            his[row], his_title[row] = full[:n + 1], self.his_title[int(u)][:n + 1]
        return his, his_title
