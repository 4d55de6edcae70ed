"""What a live recommender knows without a model: each user's history "now" and every item's title.

Built once from the dataset's tables (train, valid and test; valid_small is a subset of valid).

The history "now" is the prompt history of a hypothetical next row of the user: the ``his`` of
their latest row (by timestamp, ties broken by split order train < valid < test, then row order)
plus that row's own item when it was a positive. Because every row's ``his`` holds all earlier
positives of any split (DESIGN sec. 7), this is every positive item the user has, in time order,
which is exactly what a training row would have shown the model had the next event happened now.
Titles come from the tables too (targets, and history titles for items only seen in histories):
an item without a title cannot be written into a prompt, so it is not servable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from cora.data.store import Dataset
from cora.errors import CoraError


def shown(value) -> str:
    """An id as a message shows it: numbers bare, text quoted (so ' 7' and '' stay visible)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else repr(str(value))


class UnknownIdError(CoraError):
    """A user or item id the service does not know (the HTTP service answers 404 with the message).
    ``id_``: an internal id, or an original one (:mod:`cora.serve.ids`) with ``why`` saying where it
    was looked up."""

    def __init__(self, kind: str, id_, why: str | None = None):
        why = why or ("no interactions in the dataset" if kind == "user" else "not an item of the dataset (no title)")
        super().__init__(f"unknown {kind} {shown(id_)}: {why}")
        self.kind, self.id = kind, id_


def train_ids(ds: Dataset) -> dict[str, frozenset[int]]:
    """The users and items of the training split: a pair of both is warm (``not_cold`` 1)."""
    train = ds.split("train")
    return {"train_users": frozenset(train["uid"].astype(int).tolist()),
            "train_items": frozenset(train["iid"].astype(int).tolist())}


@dataclass
class Catalog:
    histories: dict[int, tuple[list[int], list[str]]]  # uid -> (his, his_title) now, with the 0 / '' pad
    interacted: dict[int, np.ndarray]  # uid -> every item id in any of the user's rows or history
    titles: dict[int, str]  # iid -> title
    train_users: frozenset[int]
    train_items: frozenset[int]

    @classmethod
    def from_dataset(cls, ds: Dataset) -> Catalog:
        tables = []
        for order, name in enumerate(("train", "valid", "test")):
            df = ds.split(name)
            tables.append(df.assign(_split=order, _row=np.arange(len(df))))
        rows = pd.concat(tables, ignore_index=True)
        rows = rows.sort_values(["uid", "timestamp", "_split", "_row"], kind="stable")
        latest = rows.groupby("uid", sort=False).tail(1)

        titles: dict[int, str] = {}
        for his, his_title in zip(latest["his"], latest["his_title"]):
            titles.update((int(i), str(t)) for i, t in zip(his, his_title) if i != 0 and t)
        titles.update(zip(rows["iid"].astype(int).tolist(), rows["title"].map(str).tolist()))

        histories = {}
        for uid, his, his_title, iid, title, label in zip(latest["uid"], latest["his"], latest["his_title"],
                                                          latest["iid"], latest["title"], latest["label"]):
            his, his_title = [int(x) for x in his], [str(t) for t in his_title]
            if label == 1:
                his, his_title = his + [int(iid)], his_title + [str(title)]
            histories[int(uid)] = (his, his_title)

        interacted = {}
        for uid, items in rows.groupby("uid", sort=False)["iid"]:
            his = histories[int(uid)][0]
            interacted[int(uid)] = np.unique(np.concatenate([items.to_numpy(dtype=np.int64),
                                                             np.asarray(his, dtype=np.int64)]))
        return cls(histories=histories, interacted=interacted, titles=titles, **train_ids(ds))

    def check_user(self, uid: int) -> None:
        if uid not in self.histories:
            raise UnknownIdError("user", uid)

    def check_item(self, iid: int) -> None:
        if iid not in self.titles:
            raise UnknownIdError("item", iid)

    def check_pairs(self, pairs: list[tuple[int, int]]) -> None:
        """Raise :class:`UnknownIdError` for the first unknown user or item."""
        for uid, iid in pairs:
            self.check_user(uid)
            self.check_item(iid)

    def prompt_rows(self, pairs: list[tuple[int, int]]) -> pd.DataFrame:
        """One interaction row per (user, item) pair, in the tables' schema (label 0: unknown)."""
        self.check_pairs(pairs)
        users = [u for u, _ in pairs]
        items = [i for _, i in pairs]
        return pd.DataFrame({
            "uid": np.asarray(users, dtype=np.int64),
            "iid": np.asarray(items, dtype=np.int64),
            "label": np.zeros(len(pairs), dtype=np.int64),
            "his": [list(self.histories[u][0]) for u in users],
            "his_title": [list(self.histories[u][1]) for u in users],
            "title": [self.titles[i] for i in items],
            "not_cold": np.asarray([int(u in self.train_users and i in self.train_items) for u, i in pairs],
                                   dtype=np.int64),
        })


def check_k(k: int, candidates: int) -> None:
    """``k`` items out of ``candidates`` retrieved ones: 1 <= k <= candidates."""
    if k < 1:
        raise CoraError(f"k must be >= 1, got {k}")
    if candidates < k:
        raise CoraError(f"candidates ({candidates}) must be >= k ({k})")
