"""The split protocol every importer follows (CoLLM's, DESIGN sec. 7), in one place.

``cora data prepare movielens``, ``cora data prepare amazon-book`` and ``cora data
import-interactions`` (your own log) all build their tables here: time windows -> split flags,
rows ordered by (user, time), each row's history of the user's earlier positives over all
splits (stored once per user: :mod:`cora.data.histories`), ids by first appearance, ``not_cold``,
and CoLLM's ``valid_small`` sample. The steps are
described in :mod:`cora.data.interactions` (the user-facing importer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cora.data.histories import positive_histories
from cora.errors import CoraError

SPLIT_NAMES = ("train", "valid", "test")  # flag 0, 1, 2; -1 = outside the window


@dataclass(frozen=True)
class SplitWindows:
    """Train / valid / test windows as four UTC unix-second bounds; each window is [lo, hi)."""

    bounds: tuple[int, int, int, int]

    def flags(self, timestamps: np.ndarray) -> np.ndarray:
        """0 / 1 / 2 for train / valid / test, -1 outside [train start, end)."""
        flags = np.searchsorted(np.asarray(self.bounds, dtype=np.int64), timestamps, side="right") - 1
        flags[flags > 2] = -1
        return flags

    def describe(self, name: str) -> str:
        k = SPLIT_NAMES.index(name)
        return f"[{iso_utc(self.bounds[k])}, {iso_utc(self.bounds[k + 1])})"

    def to_meta(self) -> dict:
        keys = ("train_start", "valid_start", "test_start", "end")
        return {k: iso_utc(b) for k, b in zip(keys, self.bounds)} | {"timezone": "UTC", "end_exclusive": True}


def iso_utc(seconds: int) -> str:
    ts = pd.Timestamp(int(seconds), unit="s", tz="UTC")
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def order_events(events: pd.DataFrame, windows: SplitWindows) -> pd.DataFrame:
    """Rows inside the window with their split ``flag``, sorted by (user, timestamp).

    ``events`` has columns user (a sort key), item, label, timestamp, title, in tie order: the
    sort is stable, so rows of one user in one second keep the order they come in, unless a
    ``subsecond`` column (nanoseconds, from millisecond or fractional times) orders them.
    """
    flags = windows.flags(events["timestamp"].to_numpy(dtype=np.int64))
    kept = events[flags >= 0].assign(flag=flags[flags >= 0])
    by = ["user", "timestamp"] + (["subsecond"] if "subsecond" in kept.columns else [])
    return kept.sort_values(by, kind="stable").reset_index(drop=True)


def build_table(data: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.Index, pd.Index]:
    """Re-index users and items 1..N by first appearance, add histories and not_cold.

    A row's history is ``[0]`` + the user's positive items in the rows before it (any split):
    stored as the row's ``his_len`` and one per-user table (:func:`positive_histories`), not as
    per-row lists (see :mod:`cora.data.histories`). Returns the table (with ``flag``), the
    per-user histories and the original user / item keys of ids 1..N.
    """
    uid, users = pd.factorize(data["user"])
    iid, items = pd.factorize(data["item"])
    uid, iid = uid + 1, iid + 1
    label = data["label"].to_numpy()
    his_len, histories = positive_histories(uid, iid, label, data["title"].to_numpy(dtype=object))
    table = pd.DataFrame({
        "uid": uid, "iid": iid, "label": label, "timestamp": data["timestamp"].to_numpy(),
        "his_len": his_len, "title": data["title"].to_numpy(dtype=object), "flag": data["flag"].to_numpy(),
    })
    train = table["flag"] == 0
    warm = np.isin(uid, uid[train]) & np.isin(iid, iid[train])
    table["not_cold"] = warm.astype("int64")
    return table, histories, users, items


def sample_split(valid: pd.DataFrame, frac: float, seed: int) -> pd.DataFrame:
    """CoLLM's model-selection split: a positional sample of valid (pandas samples by position)."""
    return valid.sample(frac=frac, random_state=seed)


def make_splits(table: pd.DataFrame, *, frac: float, seed: int,
                empty: Callable[[str, int], str]) -> dict[str, pd.DataFrame]:
    """train / valid / test / valid_small frames; ``empty(split, valid_rows)`` words the error
    for a split left without rows."""
    # Each split keeps its row numbers in the combined table, as CoLLM's pickles do.
    splits = {name: table[table["flag"] == k].drop(columns="flag") for k, name in enumerate(SPLIT_NAMES)}
    for name in SPLIT_NAMES:
        if splits[name].empty:
            raise CoraError(empty(name, len(splits["valid"])))
    splits["valid_small"] = sample_split(splits["valid"], frac, seed)
    if splits["valid_small"].empty:
        raise CoraError(empty("valid_small", len(splits["valid"])))
    return splits


def tie_order(events: pd.DataFrame) -> pd.DataFrame:
    """Order rows by the item's first appearance in the file, then file order (see module doc)."""
    keyed = events.assign(file_pos=np.arange(len(events)), item_rank=pd.factorize(events["item"])[0])
    return keyed.sort_values(["item_rank", "file_pos"], kind="stable").drop(columns=["item_rank", "file_pos"])


# ----------------------------------------------------------------------------- split windows from options
def parse_time_text(text: str, what: str) -> int:
    """One date for an option: unix seconds or an ISO 8601 date/time (UTC unless it has an offset)."""
    text = text.strip()
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    try:  # ISO 8601 only: '01/06/2001' means different days in different countries
        ts = pd.to_datetime(text, format="ISO8601")
    except (ValueError, TypeError):
        ts = pd.NaT
    if ts is pd.NaT:
        raise CoraError(f"{what}: '{text}' is not an ISO date (YYYY-MM-DD[THH:MM:SS]) or unix seconds")
    ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
    return int((ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1))


def parse_split_dates(text: str | Sequence[str]) -> SplitWindows:
    parts = text.split(",") if isinstance(text, str) else list(text)
    if len(parts) != 4:
        raise CoraError(f"--split-dates {text}: give four dates TRAIN_START,VALID_START,TEST_START,END "
                        "(e.g. 2001-06-01,2002-04-01,2002-09-01,2003-02-01)")
    bounds = tuple(parse_time_text(str(p), "--split-dates") for p in parts)
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        raise CoraError(f"--split-dates {','.join(map(str, parts))}: the four dates must increase")
    return SplitWindows(bounds)


def parse_split_fractions(text: str | Sequence[float]) -> tuple[float, float, float]:
    parts = text.split(",") if isinstance(text, str) else list(text)
    try:
        fracs = tuple(float(p) for p in parts)
    except ValueError:
        fracs = ()
    if len(fracs) != 3 or not all(math.isfinite(f) and f > 0 for f in fracs) or abs(sum(fracs) - 1) > 1e-6:
        raise CoraError(f"--split-fractions {text}: give three positive fractions TRAIN,VALID,TEST that sum to 1 "
                        "(e.g. 0.8,0.1,0.1)")
    return fracs  # type: ignore[return-value]


def windows_from_fractions(timestamps: np.ndarray, fracs: Sequence[float]) -> SplitWindows:
    """Cut the time line at the timestamps below which fracs[0] and fracs[0]+fracs[1] of events lie."""
    s = np.sort(timestamps)
    n = len(s)
    k1 = min(int(round(fracs[0] * n)), n - 1)
    k2 = min(int(round((fracs[0] + fracs[1]) * n)), n - 1)
    return SplitWindows((int(s[0]), int(s[k1]), int(s[k2]), int(s[-1]) + 1))
