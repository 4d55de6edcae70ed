"""Sampled negatives for logs of positives only (clicks, plays, purchases): ``--negatives N``.

The protocol is NCF's (He et al., "Neural Collaborative Filtering", WWW 2017, sec. 4.1: "for
each positive instance, we sample N negative instances" among the items the user has not
interacted with), the common way of turning implicit feedback into the 0/1 rows that cora's
methods train and are evaluated on:

* Every event of the log is a positive (label 1).
* For each positive of the dataset (every split), N distinct items are drawn uniformly at random
  from the dataset's items (those of the events kept in the split window) that the user never
  interacted with anywhere in the log, in or outside the window. So a sampled negative is never
  a positive of that user, of any split: no test positive leaks into training as a negative,
  nor a training positive into test.
* A negative takes its positive's user and time, so it lands in the same split, and goes just
  before it: it sees the same history (the user's earlier positives) and the prompt differs only
  in the target item. Each split keeps the ratio N negatives per positive.
* The draw is seeded (``--seed``): the same file and seed give the same rows.

NCF's own code draws with replacement and may repeat an item for one positive; here the N items
of one positive are distinct (a repeat would be the same row twice).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cora.errors import CoraError

PROTOCOL = ("NCF (He et al. 2017): N distinct items per positive, uniform over the dataset's items the user "
            "never interacted with anywhere in the log; same user, time and split as the positive, placed just "
            "before it")
# Rejection sampling redraws only the rejected draws; rows still rejected after this many rounds
# (users who touched almost every item) are drawn exactly from their remaining items.
REDRAW_ROUNDS = 50


def insert_negatives(data: pd.DataFrame, n: int, seed: int, touched_users: np.ndarray, touched_items: np.ndarray,
                     user_name) -> tuple[pd.DataFrame, dict]:
    """``data`` (ordered events: user code, item, label, timestamp, title, ...) with ``n`` sampled
    negatives before each positive, and the facts for meta.json.

    ``touched_users`` / ``touched_items``: every (user code, item) pair of the log, in or outside
    the window. ``user_name(code)`` names a user in an error.
    """
    item_codes, pool = pd.factorize(data["item"])
    n_pool = len(pool)
    pool_index = pd.Index(pool)
    titles = data["title"].to_numpy(dtype=object)[np.unique(item_codes, return_index=True)[1]]
    t_item = pool_index.get_indexer(pd.Index(touched_items))
    inside = t_item >= 0
    keys = np.unique(np.asarray(touched_users, dtype=np.int64)[inside] * n_pool + t_item[inside])

    positives = np.flatnonzero(data["label"].to_numpy() == 1)
    users = data["user"].to_numpy(dtype=np.int64)[positives]
    _check_room(users, keys, n_pool, n, user_name)
    draws = _draw(users, keys, n_pool, n, np.random.default_rng(seed))

    negatives = data.iloc[np.repeat(positives, n)].assign(
        item=np.asarray(pool, dtype=object)[draws.ravel()], label=0, title=titles[draws.ravel()],
        _at=np.repeat(positives, n), _k=0)
    merged = pd.concat([negatives, data.assign(_at=np.arange(len(data)), _k=1)], ignore_index=True)
    merged = merged.sort_values(["_at", "_k"], kind="stable").drop(columns=["_at", "_k"]).reset_index(drop=True)
    facts = {"per_positive": n, "seed": seed, "rows_added": int(draws.size), "item_pool": n_pool,
             "protocol": PROTOCOL}
    return merged, facts


def _check_room(users: np.ndarray, keys: np.ndarray, n_pool: int, n: int, user_name) -> None:
    """Every user with a positive needs ``n`` items they never touched."""
    touched = np.bincount(keys // max(n_pool, 1), minlength=int(users.max(initial=0)) + 1)
    short = np.flatnonzero(n_pool - touched[np.unique(users)] < n)
    if len(short):
        code = np.unique(users)[short[0]]
        free = n_pool - int(touched[code])
        raise CoraError(f"--negatives {n}: user '{user_name(code)}' interacted with {n_pool - free:,} of the "
                        f"{n_pool:,} items, which leaves {free} to sample from ({len(short):,} such user(s)); "
                        "lower --negatives")


def _draw(users: np.ndarray, keys: np.ndarray, n_pool: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(positives, n) item codes: distinct per row, none a (user, item) pair of ``keys``."""
    draws = np.sort(rng.integers(0, n_pool, size=(len(users), n)), axis=1)
    for _ in range(REDRAW_ROUNDS):
        bad = _rejected(draws, users, keys, n_pool)
        if not bad.any():
            return draws
        draws[bad] = rng.integers(0, n_pool, int(bad.sum()))
        draws.sort(axis=1)
    for row in np.flatnonzero(_rejected(draws, users, keys, n_pool).any(axis=1)):
        mine = keys[(keys // n_pool) == users[row]] % n_pool
        draws[row] = np.sort(rng.choice(np.setdiff1d(np.arange(n_pool), mine), size=n, replace=False))
    return draws


def _rejected(draws: np.ndarray, users: np.ndarray, keys: np.ndarray, n_pool: int) -> np.ndarray:
    """A draw the user touched, or a repeat of the previous draw of its (sorted) row."""
    pairs = users[:, None] * n_pool + draws
    if len(keys):
        at = np.minimum(np.searchsorted(keys, pairs), len(keys) - 1)
        bad = keys[at] == pairs
    else:
        bad = np.zeros(draws.shape, dtype=bool)
    bad[:, 1:] |= draws[:, 1:] == draws[:, :-1]
    return bad
