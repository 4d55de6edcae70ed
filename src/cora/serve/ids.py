"""The dataset's own ids (the user's) at every serving boundary; cora's internal ids behind a flag.

Importers re-index users and items 1..N (0 is padding) and keep the maps in the dataset folder,
``users.parquet`` (uid, user) and ``items.parquet`` (iid, item, title, ...), written by
:func:`cora.data.store.write_with_id_maps` (``cora data import-interactions``, ``cora data prepare
movielens``). ``cora recommend``, ``cora score``, ``cora serve`` and ``cora evaluate --ranking``
take and return those original ids; the internal ones only with ``--internal-ids`` (HTTP:
``"internal_ids": true``). Inside, the library (:class:`~cora.serve.recommend.Recommender`, the
catalog, the models) works on internal ids: the maps are applied at the edge, here.

A dataset without maps (``cora data import-collm``, ``cora data prepare amazon-book``, tables
written by hand) has no other ids: its original ids are its internal ones, and an id is known
when the dataset serves it (a user with interactions, an item with a title).

How an original id is compared: the importer keeps ids as text ("7" in one file meets 7 in
another), so a lookup compares the stripped text of the id, and a JSON number 260 finds "260".
Maps of integers (``prepare movielens``) compare integer values ("0260" finds 260). An original id
comes back as the map stores it: text for an imported log, a number for the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cora.data.store import Dataset
from cora.errors import CoraError
from cora.io import read_parquet
from cora.serve.catalog import Catalog, UnknownIdError, shown

MAP_FILES = {"user": ("users.parquet", "uid"), "item": ("items.parquet", "iid")}
_INTEGER = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class IdMap:
    """Original <-> internal ids of one kind ("user" or "item") of one dataset."""

    kind: str
    by_original: dict[str, int]  # lookup key of the original id -> internal id
    by_internal: dict[int, int | str]  # internal id -> the original as the map stores it
    integer: bool  # originals are integers (compared as numbers) rather than text
    source: Path | None = None  # the map file; None: the dataset has none (original = internal)

    def key(self, original) -> str | None:
        """The lookup key of an original id (a JSON number or text), None for what is no id."""
        if isinstance(original, bool):
            return None
        if isinstance(original, float):
            original = int(original) if original.is_integer() else original
        text = str(original).strip()
        if self.integer and _INTEGER.fullmatch(text):
            return str(int(text))
        return text

    def internal(self, original) -> int:
        """The internal id of ``original``, or :class:`UnknownIdError` naming it."""
        found = self.by_original.get(self.key(original))
        if found is None:
            # The map's file name, not its path: the HTTP service answers with this message.
            why = (f"not in the dataset's {self.source.name}" if self.source is not None else
                   "no interactions in the dataset" if self.kind == "user" else "not an item of the dataset (no title)")
            raise UnknownIdError(self.kind, original, why=why)
        return found

    def original(self, internal: int) -> int | str:
        return self.by_internal[int(internal)]


@dataclass(frozen=True)
class DatasetIds:
    users: IdMap
    items: IdMap

    @property
    def mapped(self) -> bool:
        return self.users.source is not None

    def of(self, kind: str) -> IdMap:
        return self.users if kind == "user" else self.items


def read_id_map(ds: Dataset, kind: str) -> IdMap | None:
    """``kind``'s map from the dataset folder (no split is read), None when the folder has none."""
    name, internal_col = MAP_FILES[kind]
    path = ds.root / name
    if not path.exists():
        return None
    table = read_parquet(path, f"{kind} id map", columns=[internal_col, kind])
    if not pd.api.types.is_integer_dtype(table[internal_col]):
        raise CoraError(f"{path}: column '{internal_col}' holds {table[internal_col].dtype} values, expected integer ids")
    integer = pd.api.types.is_integer_dtype(table[kind])
    internals = table[internal_col].astype(int).tolist()
    originals = [int(v) if integer else str(v) for v in table[kind].tolist()]
    m = IdMap(kind, {}, dict(zip(internals, originals)), integer, source=path)
    for internal, original in zip(internals, originals):
        if m.by_original.setdefault(m.key(original), internal) != internal:
            raise CoraError(f"{path}: {kind} {shown(original)} is listed twice (internal ids "
                            f"{m.by_original[m.key(original)]} and {internal}; ids compare as stripped text)")
    return m


def read_id_maps(ds: Dataset) -> DatasetIds | None:
    """Both maps, or None for a dataset without them (one without the other is refused)."""
    users, items = read_id_map(ds, "user"), read_id_map(ds, "item")
    if (users is None) != (items is None):
        present, missing = ("users.parquet", "items.parquet") if users is not None else ("items.parquet", "users.parquet")
        raise CoraError(f"{ds.root}: has {present} but no {missing} (id maps come in pairs; re-import the dataset)")
    return None if users is None else DatasetIds(users, items)


def identity_ids(catalog: Catalog) -> DatasetIds:
    """A dataset without maps: original = internal, known = what the catalog serves."""
    def identity(kind: str, ids) -> IdMap:
        ids = sorted(int(i) for i in ids)
        return IdMap(kind, {str(i): i for i in ids}, {i: i for i in ids}, integer=True)

    return DatasetIds(identity("user", catalog.histories), identity("item", catalog.titles))


def dataset_ids(ds: Dataset, catalog: Catalog) -> DatasetIds:
    return read_id_maps(ds) or identity_ids(catalog)


def internal_id(kind: str, value) -> int:
    """An id given as internal (``--internal-ids``, ``"internal_ids": true``): a whole number (or
    its text), else :class:`UnknownIdError` (no internal id has that name)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    text = str(value).strip()
    if not _INTEGER.fullmatch(text):
        raise UnknownIdError(kind, value, why="cora's internal ids are whole numbers (without internal ids, "
                                              "ids are the dataset's own)")
    return int(text)
