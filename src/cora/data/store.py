"""The project's on-disk dataset: one Parquet file per split plus ``meta.json``.

Every importer and raw processor ends in :func:`write_dataset`, so all datasets share one
layout and one set of statistics, and are written atomically (built in a temporary folder).
Histories are stored once per user in ``histories.parquet`` (:mod:`cora.data.histories`; meta
``histories: per-user``) whenever every row's history is a prefix of its user's, which the
protocol guarantees; otherwise (and in folders written before) each row keeps its own lists.
Either way :meth:`Dataset.split` returns the columns of :data:`cora.data.schema.COLUMNS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cora.data.histories import (
    HISTORY_FILE,
    UserHistories,
    per_user_from_rows,
    validate_histories,
)
from cora.data.schema import COLUMNS, SPLITS, STORED_COLUMNS, validate_table
from cora.errors import CoraError
from cora.io import atomic_dir, read_json, read_parquet, write_json

DOMAINS = {"movielens": "movies", "ml-1m": "movies", "amazon-book": "books"}
META_FIELDS = {"name": str, "domain": str, "n_users": int, "n_items": int, "users_seen": int, "items_seen": int,
               "splits": dict}  # what readers of meta.json (and `cora data info`) use


def split_stats(df: pd.DataFrame) -> dict:
    return {
        "rows": len(df),
        "users": int(df["uid"].nunique()),
        "items": int(df["iid"].nunique()),
        "positive_rate": round(float(df["label"].mean()), 6),
        "warm_rows": int(df["not_cold"].sum()),
    }


def write_dataset(out: str | Path, splits: dict[str, pd.DataFrame], *, name: str, domain: str,
                  source: dict | None = None, overwrite: bool = False, extra: dict | None = None,
                  histories: pd.DataFrame | None = None) -> dict:
    """Validate every split and write ``out/<split>.parquet`` + ``out/meta.json`` atomically.

    ``histories`` (uid, his, his_title per user) goes with splits that carry ``his_len`` instead
    of per-row histories; splits with per-row histories are stored per user when they allow it.
    """
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise CoraError(f"{out}: dataset lacks split(s) {', '.join(missing)}")
    tables = {s: validate_table(splits[s], f"{name}:{s}") for s in SPLITS}
    if histories is None and (converted := per_user_from_rows(tables)) is not None:
        histories, tables = converted
    if histories is not None:
        histories = validate_histories(histories, f"{name}:{HISTORY_FILE}")
        lookup = UserHistories.from_table(histories, f"{name}:{HISTORY_FILE}")
        for s, df in tables.items():
            if "his_len" not in df.columns:
                raise CoraError(f"{name}:{s}: rows hold their own histories, but a per-user history table was given")
            lookup.rows(df["uid"], df["his_len"], f"{name}:{s}")  # every row's history is there
        max_his = max((int(h.max()) for h in histories["his"]), default=0)
    else:
        his = pd.concat([tables[s]["his"] for s in ("train", "valid", "test")], ignore_index=True)
        max_his = max((max(h) for h in his if len(h)), default=0)
    all_rows = pd.concat([tables[s] for s in ("train", "valid", "test")], ignore_index=True)
    meta = {
        "name": name,
        "domain": domain,
        "n_users": int(all_rows["uid"].max()) + 1,
        "n_items": int(max(all_rows["iid"].max(), max_his)) + 1,
        "users_seen": int(all_rows["uid"].nunique()),
        "items_seen": int(all_rows["iid"].nunique()),
        "splits": {s: split_stats(tables[s]) for s in SPLITS},
        "histories": "per-row" if histories is None else "per-user",
        "source": source or {},
        **(extra or {}),
    }
    with atomic_dir(out, overwrite=overwrite) as tmp:
        for s, df in tables.items():
            df.to_parquet(tmp / f"{s}.parquet", index=False)
        if histories is not None:
            histories.to_parquet(tmp / HISTORY_FILE, index=False)
        write_json(tmp / "meta.json", meta)
    return meta


@dataclass
class Dataset:
    """A prepared dataset folder: lazy access to its splits and its metadata."""

    root: Path
    meta: dict
    _histories: UserHistories | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def domain(self) -> str:
        return self.meta["domain"]

    @property
    def n_users(self) -> int:
        return int(self.meta["n_users"])

    @property
    def n_items(self) -> int:
        return int(self.meta["n_items"])

    def split(self, name: str) -> pd.DataFrame:
        if name not in SPLITS:
            raise CoraError(f"unknown split '{name}' (choose from {', '.join(SPLITS)})")
        path = self.root / f"{name}.parquet"
        per_user = self.meta.get("histories") == "per-user"
        df = read_parquet(path, f"'{name}' split file", columns=STORED_COLUMNS if per_user else COLUMNS)
        # Embedding tables have n_users / n_items rows (meta.json): a larger id would fail deep in torch.
        for col, n in (("uid", self.n_users), ("iid", self.n_items)):
            if not pd.api.types.is_integer_dtype(df[col]):
                raise CoraError(f"{path}: column '{col}' holds {df[col].dtype} values, expected integer ids")
            if len(df) and not 0 < int(df[col].min()) <= int(df[col].max()) < n:
                raise CoraError(f"{path}: '{col}' ids run from {df[col].min()} to {df[col].max()}, outside 1..{n - 1} "
                                f"of {self.root / 'meta.json'} (a file of another dataset?)")
        if per_user:
            # Views of the user's arrays (cora.data.histories): the same items and titles as
            # per-row lists, in ~100 bytes a row.
            df["his"], df["his_title"] = self.user_histories().rows(df["uid"], df["his_len"], str(path))
            return df[COLUMNS]
        # Parquet gives numpy arrays for list columns; the rest of the code expects lists.
        df["his"] = df["his"].map(list)
        df["his_title"] = df["his_title"].map(list)
        return df

    def user_histories(self) -> UserHistories:
        """Each user's history after all their events (read once; per-user folders only)."""
        if self.meta.get("histories") != "per-user":
            raise CoraError(f"{self.root}: rows of this dataset hold their own histories (no {HISTORY_FILE})")
        if self._histories is None:
            path = self.root / HISTORY_FILE
            table = read_parquet(path, "per-user history table", columns=["uid", "his", "his_title"])
            self._histories = UserHistories.from_table(table, str(path))
        return self._histories

    def titles(self) -> dict[int, str]:
        """Item id -> title, from every split's targets and histories."""
        out: dict[int, str] = {}
        for s in ("train", "valid", "test"):
            df = self.split(s)
            out.update(zip(df["iid"].tolist(), df["title"].tolist()))
        return out

    def item_table(self) -> pd.DataFrame | None:
        """``items.parquet`` (iid, title and what the importer kept beside them: the raw id, genres),
        or None for a folder without one (the CoLLM import carries titles only)."""
        path = self.root / "items.parquet"
        if not path.exists():
            return None
        return read_parquet(path, "items table", columns=["iid", "title"])


def write_with_id_maps(out: Path, splits: dict[str, pd.DataFrame], users: pd.DataFrame, items: pd.DataFrame, *,
                       name: str, domain: str, source: dict, overwrite: bool,
                       histories: pd.DataFrame | None = None) -> dict:
    """The shared writer fills the folder; the id maps join it inside the same atomic build
    (``cora data import-interactions`` and ``cora data prepare movielens``: both folders have the same layout)."""
    extra = {"id_maps": {"users": "users.parquet", "items": "items.parquet"}}
    with atomic_dir(out, overwrite=overwrite) as tmp:
        meta = write_dataset(tmp, splits, name=name, domain=domain, source=source, overwrite=True, extra=extra,
                             histories=histories)
        users.to_parquet(tmp / "users.parquet", index=False)
        items.to_parquet(tmp / "items.parquet", index=False)
    return meta


def load_dataset(root: str | Path) -> Dataset:
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.exists():
        raise CoraError(f"{root}: not a cora dataset folder (no meta.json); create one with 'cora data import-collm' or 'cora data prepare'")
    meta = read_json(meta_path, "dataset meta file", mapping=True)
    # Checked here so that a hand-edited or foreign meta.json is one line, not a KeyError later.
    for key, kind in META_FIELDS.items():
        if not isinstance(meta.get(key), kind) or isinstance(meta.get(key), bool):
            raise CoraError(f"{meta_path}: field '{key}' is missing or not a "
                            f"{ {str: 'string', int: 'whole number', dict: 'mapping'}[kind]}")
    return Dataset(root=root, meta=meta)
