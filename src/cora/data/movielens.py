"""Build the ML-1M splits from the raw GroupLens files with CoLLM's protocol (DESIGN sec. 7).

The output is meant to be row-for-row the data CoLLM / BinLLM / CoRA trained on
(``train_ood2.pkl`` and friends), so three details of their notebook are reproduced on purpose:

* Months are calendar months in UTC (``pd.to_datetime(ts, unit="s")``); local time moves ratings
  near a month boundary into the neighbouring split.
* Ratings with the same user and timestamp keep the order that an old-pandas inner merge with
  movies.dat produced: grouped by movie in order of the movie's first appearance in ratings.dat,
  then file order. A stable sort on (user, timestamp) then keeps that order. Plain file order
  gives different histories for most users with such ties.
* ``valid_small`` is ``valid.sample(frac=0.5, random_state=2023)``; pandas samples by position, so
  it is the same rows as theirs as long as valid's row order is.

users.dat is not read: the protocol uses no user attributes. Besides the splits the folder holds
``users.parquet`` (uid -> raw user id) and ``items.parquet`` (iid -> raw movie id, title and the
``|``-separated genres of movies.dat), as ``cora data import-interactions`` writes them; the
genres feed ``cora probe``, nothing in training reads them.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cora.data.protocol import (
    build_table,
    make_splits,
    order_events,
    parse_split_dates,
    sample_split,
    tie_order,
)
from cora.data.store import write_with_id_maps
from cora.errors import CoraError
from cora.io import sha256_file

RATINGS_FILES = ("ratings.dat", "ratings.dat.gz")  # first found wins
MOVIES_FILE = "movies.dat"
ENCODING = "iso-8859-1"
SEPARATOR = "::"

# CoLLM's calendar months (month index 14-23 / 24-28 / 29-33 from April 2000) as UTC bounds:
# train = June 2001-March 2002, valid = April-August 2002, test = September 2002-January 2003.
SPLIT_DATES = ("2001-06-01", "2002-04-01", "2002-09-01", "2003-02-01")
SPLIT_WINDOWS = {"train": "June 2001-March 2002", "valid": "April-August 2002",
                 "test": "September 2002-January 2003"}
POSITIVE_RATING = 4
VALID_SMALL_FRACTION = 0.5
VALID_SMALL_SEED = 2023


# ----------------------------------------------------------------------------- locating files
@dataclass
class RawFile:
    """One raw file: a label for messages (path or zip:member) and a way to get its bytes."""

    label: str
    name: str
    read: Callable[[], bytes]


def _locate(raw: Path) -> dict[str, RawFile]:
    """Find the raw files in a folder or zip, at the top or one folder deep (GroupLens: ml-1m/)."""
    if raw.is_dir():
        candidates = [(p.relative_to(raw).as_posix(), str(p), p.read_bytes)
                      for p in sorted(raw.iterdir()) + sorted(raw.glob("*/*")) if p.is_file()]
    elif raw.is_file():
        candidates = _zip_members(raw)
    else:
        raise CoraError(f"{raw}: no such file or folder (expected a folder or .zip with ratings.dat and movies.dat)")
    found: dict[str, RawFile] = {}
    wanted = set(RATINGS_FILES) | {MOVIES_FILE}
    for rel, label, reader in candidates:
        parts = rel.split("/")
        name = parts[-1]
        # macOS zips carry "__MACOSX/ml-1m/._ratings.dat" resource forks next to the real files.
        if name in wanted and name not in found and len(parts) <= 2 and parts[0] != "__MACOSX":
            found[name] = RawFile(label=label, name=name, read=reader)
    return found


def _zip_members(raw: Path) -> list[tuple[str, str, Callable[[], bytes]]]:
    try:
        zf = zipfile.ZipFile(raw)
        names = [n for n in zf.namelist() if not n.endswith("/")]
    except (zipfile.BadZipFile, OSError) as e:
        raise CoraError(f"{raw}: not a folder or a readable zip file ({e}); is the download truncated?") from None
    # Shallow members first, so ratings.dat at the top beats a copy in a subfolder.
    names.sort(key=lambda n: (n.count("/"), n))
    return [(n, f"{raw}:{n}", lambda n=n: zf.read(n)) for n in names]


def _read_text(f: RawFile) -> tuple[str, str]:
    """Decode a raw file (gunzipping .gz); return its text and the sha256 of the plain bytes."""
    try:
        data = f.read()
        if f.name.endswith(".gz"):
            data = gzip.decompress(data)
    # RuntimeError / NotImplementedError: encrypted or exotically compressed zip members.
    except (OSError, EOFError, zlib.error, zipfile.BadZipFile, RuntimeError, NotImplementedError) as e:
        raise CoraError(f"{f.label}: cannot read ({type(e).__name__}: {e}); is the file truncated?") from None
    return data.decode(ENCODING), hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- parsing
def _parse_dat(text: str, label: str, columns: list[str], numeric: dict[str, str]) -> pd.DataFrame:
    """Parse a ``::``-separated .dat file; ``numeric`` maps columns to "int64" / "float64", the rest stay text.

    Every problem is reported as the file, the 1-based line and the field; blank lines are skipped.
    """
    lines = pd.Series(text.replace("\r\n", "\n").replace("\r", "\n").split("\n"), dtype=object)
    lines.index = np.arange(1, len(lines) + 1)  # index = line number, for messages
    lines = lines[lines.str.strip() != ""]
    if lines.empty:
        raise CoraError(f"{label}: file has no data lines")
    _check_field_counts(lines, label, len(columns))
    try:
        return _split_fields(lines, columns, {c: numeric.get(c, str) for c in columns}, label)
    except (ValueError, OverflowError):
        pass  # some numeric field does not parse: find which line and say so
    table = _split_fields(lines, columns, str, label)
    for col, dtype in numeric.items():
        table[col] = _to_number(table[col], label, col, integer=dtype == "int64")
    return table


def _check_field_counts(lines: pd.Series, label: str, expected: int) -> None:
    counts = lines.str.count(SEPARATOR) + 1
    bad = counts != expected
    if bad.any():
        line_no = int(counts.index[bad.to_numpy().argmax()])
        raise CoraError(f"{label} line {line_no}: expected {expected} fields separated by '{SEPARATOR}', "
                        f"found {int(counts[line_no])}")


def _split_fields(lines: pd.Series, columns: list[str], dtype, label: str) -> pd.DataFrame:
    """Split validated lines into columns with pandas' C parser (str.split is ~5x slower)."""
    text = "\n".join(lines.tolist())
    # The C parser needs a one-character separator that occurs nowhere in the data.
    sep = next((c for c in ("\t", "\x1f", "\x1e", "\x1d") if c not in text), None)
    if sep is None:
        raise CoraError(f"{label}: holds tab and ASCII control characters; not a MovieLens .dat file")
    # QUOTE_NONE: ML-1M titles contain double quotes ('"Great Performances" Cats (1998)').
    table = pd.read_csv(io.StringIO(text.replace(SEPARATOR, sep)), sep=sep, header=None, names=columns,
                        dtype=dtype, quoting=csv.QUOTE_NONE, na_filter=False, skip_blank_lines=False,
                        engine="c")
    table.index = lines.index
    return table


def _to_number(values: pd.Series, label: str, col: str, *, integer: bool) -> pd.Series:
    numbers = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = numbers.isna()
    if integer:
        bad |= numbers.notna() & ((numbers % 1 != 0) | (numbers.abs() >= 2**62))
    if bad.any():
        line_no = int(values.index[bad.to_numpy().argmax()])
        kind = "an integer" if integer else "a number"
        raise CoraError(f"{label} line {line_no}: field '{col}' must be {kind}, found {values[line_no]!r}")
    return numbers.astype("int64" if integer else "float64")


def _read_ratings(f: RawFile) -> tuple[pd.DataFrame, str]:
    text, sha = _read_text(f)
    ratings = _parse_dat(text, f.label, ["uid", "iid", "rating", "timestamp"],
                         numeric={"uid": "int64", "iid": "int64", "rating": "float64", "timestamp": "int64"})
    return ratings.reset_index(drop=True), sha


def _read_movies(f: RawFile) -> pd.DataFrame:
    text, _ = _read_text(f)
    movies = _parse_dat(text, f.label, ["iid", "title", "genres"], numeric={"iid": "int64"})
    dup = movies["iid"].duplicated()
    if dup.any():
        line_no = int(movies.index[dup.to_numpy().argmax()])
        raise CoraError(f"{f.label} line {line_no}: movie id {movies.loc[line_no, 'iid']} is listed twice")
    return movies[["iid", "title", "genres"]].reset_index(drop=True)


def read_movies(path: str | Path) -> pd.DataFrame:
    """A GroupLens ``movies.dat`` file (``id::title::genres``) as iid, title, genres (text,
    ``|``-separated as in the file); every problem is one line naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CoraError(f"{path}: movie list not found (expected a GroupLens movies.dat: id::title::genres)")
    return _read_movies(RawFile(label=str(path), name=path.name, read=path.read_bytes))


# ----------------------------------------------------------------------------- protocol
def _join_titles(ratings: pd.DataFrame, movies: pd.DataFrame) -> pd.DataFrame:
    """Inner-join ratings with titles, in the row order CoLLM's merge produced (see module doc).

    Columns user, item, rating, timestamp, title: the events of the shared protocol.
    """
    # A map, not a merge, so the row order does not hang on how this pandas version orders a merge.
    title = ratings["iid"].map(movies.set_index("iid")["title"])
    events = ratings.assign(title=title)[title.notna()].rename(columns={"uid": "user", "iid": "item"})
    return tie_order(events)


def _protocol_splits(joined: pd.DataFrame,
                     ratings_label: str) -> tuple[dict[str, pd.DataFrame], pd.DataFrame, pd.Index, pd.Index]:
    """The shared protocol (cora.data.protocol): windows, (uid, time) order, histories, ids.
    Also returns the per-user histories and the raw user and movie ids of uids / iids 1..N."""
    events = joined.assign(label=(joined["rating"] >= POSITIVE_RATING).astype("int64"))
    table, histories, users, items = build_table(order_events(events, parse_split_dates(SPLIT_DATES)))

    def empty(split: str, valid_rows: int) -> str:
        if split == "valid_small":
            return f"{ratings_label}: too few validation ratings ({valid_rows}) for valid_small"
        return (f"{ratings_label}: no ratings fall in the {split} window ({SPLIT_WINDOWS[split]}, UTC); "
                "is this the ML-1M ratings file?")

    return make_splits(table, frac=VALID_SMALL_FRACTION, seed=VALID_SMALL_SEED, empty=empty), histories, users, items


def sample_valid_small(valid: pd.DataFrame) -> pd.DataFrame:
    """CoLLM's model-selection split: a 50 % positional sample of valid with seed 2023."""
    return sample_split(valid, VALID_SMALL_FRACTION, VALID_SMALL_SEED)


# ----------------------------------------------------------------------------- entry point
def prepare_movielens(raw: str | Path, out: str | Path, *, overwrite: bool = False) -> dict:
    """Build ``out`` (train / valid / valid_small / test + meta.json) from raw ML-1M files.

    ``raw`` is a folder or zip holding ratings.dat (or ratings.dat.gz) and movies.dat, at the top
    or one folder deep. Returns the dataset's meta dict. Nothing is written unless all succeeds.
    """
    raw = Path(raw)
    files = _locate(raw)
    ratings_file = next((files[n] for n in RATINGS_FILES if n in files), None)
    if ratings_file is None:
        raise CoraError(f"{raw}: missing ratings file (ratings.dat or ratings.dat.gz)")
    if MOVIES_FILE not in files:
        raise CoraError(f"{raw}: missing movie list ({MOVIES_FILE})")
    ratings, ratings_sha = _read_ratings(ratings_file)
    movies = _read_movies(files[MOVIES_FILE])
    joined = _join_titles(ratings, movies)
    splits, histories, users, items = _protocol_splits(joined, ratings_file.label)
    source = {
        "path": str(raw.resolve()),
        "format": "grouplens-ml-1m",
        "protocol": "collm-ood2",
        "ratings_file": ratings_file.label,
        "ratings_sha256": ratings_sha,  # of the uncompressed ratings.dat bytes
        "ratings_read": len(ratings),
        "ratings_without_movie": int(len(ratings) - len(joined)),
        "valid_small": f"sample(frac={VALID_SMALL_FRACTION}, seed={VALID_SMALL_SEED}) of valid",
    }
    if raw.is_file():
        source["sha256"] = sha256_file(raw)
    user_rows = pd.DataFrame({"uid": np.arange(1, len(users) + 1), "user": np.asarray(users, dtype=np.int64)})
    item_rows = pd.DataFrame({"iid": np.arange(1, len(items) + 1), "item": np.asarray(items, dtype=np.int64)})
    item_rows = item_rows.merge(movies.rename(columns={"iid": "item"}), on="item", how="left")
    return write_with_id_maps(out, splits, user_rows, item_rows, name="ml-1m", domain="movies", source=source,
                              overwrite=overwrite, histories=histories)
