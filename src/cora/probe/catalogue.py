"""The items probe questions are built from: iid, title, genres (a tuple, or None if unknown).

Sources, in this order: the dataset folder's ``items.parquet`` (written by ``cora data prepare
movielens`` and ``cora data import-interactions``; genres where the importer kept a genres
column), else the titles in its splits (the CoLLM import has no items table and no genres).
``--movies movies.dat`` joins genres by exact title, so the CoLLM splits of ML-1M (whose titles
are movies.dat's, year included) get them too; without a dataset, the movie list itself is the
catalogue.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cora.data.interactions import GENRE_COLUMNS
from cora.data.movielens import read_movies
from cora.data.store import load_dataset


def parse_genres(value) -> tuple[str, ...] | None:
    """``"Action|Crime"`` (movies.dat) or a list -> ("Action", "Crime"); empty or missing -> None."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    parts = value.split("|") if isinstance(value, str) else [str(v) for v in value]
    # "(no genres listed)" is MovieLens' own word for "unknown" (ML-20M and later).
    genres = tuple(dict.fromkeys(p.strip() for p in parts if p.strip() and p.strip() != "(no genres listed)"))
    return genres or None


def _genre_column(table: pd.DataFrame) -> str | None:
    return next((c for c in table.columns if str(c).strip().lower() in GENRE_COLUMNS), None)


def item_catalogue(data: str | Path | None, movies: str | Path | None) -> tuple[pd.DataFrame, str, list[str]]:
    """(iid, title, genres) sorted by iid, the dataset's domain word ("movies") and notes saying
    where titles and genres came from."""
    notes: list[str] = []
    domain = "movies"
    if data is not None:
        ds = load_dataset(data)
        domain = ds.domain
        table = ds.item_table()
        if table is None:
            table = pd.DataFrame(sorted(ds.titles().items()), columns=["iid", "title"])
            notes.append(f"items: {len(table):,} titles from the splits of {data} (no items.parquet)")
        else:
            notes.append(f"items: {len(table):,} from {Path(data) / 'items.parquet'}")
        col = _genre_column(table)
        genres = table[col].map(parse_genres) if col else pd.Series([None] * len(table), dtype=object)
        items = pd.DataFrame({"iid": table["iid"].astype("int64"), "title": table["title"].astype(str),
                              "genres": genres.to_numpy(dtype=object)})
    elif movies is not None:
        items = None  # the movie list below is the whole catalogue
    else:
        from cora.errors import CoraError

        raise CoraError("no items to ask about: give a RUN, --data DIR or --movies movies.dat")
    if movies is not None:
        movie_table = read_movies(movies)
        movie_genres = movie_table.assign(genres=movie_table["genres"].map(parse_genres))
        if items is None:
            items = movie_genres[["iid", "title", "genres"]]
            notes.append(f"items: {len(items):,} movies of {movies}")
        else:
            # First listing wins if a title repeats; exact titles only, never a fuzzy match.
            by_title = movie_genres.drop_duplicates("title").set_index("title")["genres"]
            joined = items["title"].map(by_title)
            items = items.assign(genres=[g if isinstance(g, tuple) else None for g in joined])
            found = int(items["genres"].map(lambda g: g is not None).sum())
            notes.append(f"genres: {found:,} of {len(items):,} items joined by exact title from {movies}")
    elif data is not None:
        found = int(items["genres"].map(lambda g: g is not None).sum())
        if found:
            notes.append(f"genres: {found:,} of {len(items):,} items have genres in items.parquet")
    items = items.sort_values("iid", kind="stable").reset_index(drop=True)
    return items, domain, notes
