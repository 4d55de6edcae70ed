"""Bring your own interactions: any event log -> cora splits, with CoLLM's protocol generalised.

``cora data import-interactions`` reads one row per event (user, item, a rating or a 0/1 label,
a time) plus, usually, an items table (item id -> title, extra columns kept), and builds the same
folder every other importer writes (:func:`cora.data.store.write_dataset`), so every method runs on
it unchanged. The protocol is the one ``cora data prepare movielens`` follows (DESIGN sec. 7), and
both call the protocol functions of :mod:`cora.data.protocol`, so the two cannot drift apart:

1. **Window and splits.** Times are unix seconds in UTC (ISO dates are read as UTC unless they
   carry an offset). ``--split-dates A,B,C,D``: train = [A, B), valid = [B, C), test = [C, D); rows
   outside [A, D) are dropped. ML-1M's "June 2001-March 2002" months are
   ``2001-06-01,2002-04-01,2002-09-01,2003-02-01``. ``--split-fractions 0.8,0.1,0.1`` (the default)
   cuts the time line at the timestamps below which 80 % and 90 % of all events lie; events that
   share the cut second go to the later split, so a second is never divided between splits.
2. **Label** = ``rating >= --positive-threshold`` (default 4, ML-1M's rule) or a 0/1 ``--label``;
   with ``--negatives N`` every event is a positive and N negatives are sampled per positive
   (NCF's protocol, :mod:`cora.data.negatives`).
3. **Order.** Rows are sorted by (user, time), users in order of first appearance in the file.
   Events of one user in the same second (without finer times: milliseconds or fractional
   seconds order them) are ordered by the item's first appearance in the file, then file order:
   the order CoLLM's inner merge of ratings with movies produced for ML-1M.
4. **Histories** over all three splits: ``his = [0] + the user's earlier positive items``,
   ``his_title = [''] + their titles`` (stored once per user: :mod:`cora.data.histories`).
5. **Ids** re-indexed 1..N in order of first appearance in that order (0 = padding);
   ``not_cold`` = user and item both seen in train; ``valid_small`` =
   ``valid.sample(frac=--valid-small-frac, random_state=--seed)``.

Besides the four splits and meta.json the folder holds ``users.parquet`` (uid -> your user id)
and ``items.parquet`` (iid -> your item id, title, and the items table's other columns), so
results can be mapped back to your ids.

Bad input (missing or ambiguous columns, unparsable values, duplicate events unless
``--duplicates drop|keep-last``, items without a title, an empty split) is a one-line
:class:`CoraError` naming the file, the column and an example row; nothing is written. What the
tables do not show (millisecond or date-only times and the ties they leave, removed duplicates,
re-interactions with both labels, sampled negatives) goes into ``meta.json`` and the command's
summary (:mod:`cora.data.log_report`).
"""

from __future__ import annotations

import codecs
import csv
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cora.data.log_report import reinteractions, time_ties
from cora.data.negatives import insert_negatives
from cora.data.protocol import (
    SplitWindows,
    build_table,
    iso_utc,
    make_splits,
    order_events,
    parse_split_dates,
    parse_split_fractions,
    tie_order,
    windows_from_fractions,
)
from cora.data.store import write_with_id_maps
from cora.errors import CoraError, one_line
from cora.io import sha256_file
from cora.ranges import check_flags

FORMATS = ("csv", "tsv", "parquet", "recbole")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
DEFAULT_THRESHOLD = 4.0
DEFAULT_DOMAIN = "items"  # the prompt's plural noun: "... the following items: ..."
VALID_SMALL_FRACTION = 0.5
VALID_SMALL_SEED = 2023
# A "unix seconds" value past year 5000 is almost surely milliseconds (and every millisecond
# value after March 1973 is past it); past 10**14 milliseconds (year 5138) it is neither.
MAX_SECONDS = 10**11
MAX_MILLISECONDS = 10**14
DUPLICATES = ("error", "drop", "keep-last")  # --duplicates: what to do with repeated (user, item, time) events

# Names each column is recognised by, compared without case, "_", "-" or spaces.
CANDIDATES = {
    "user": ("user", "user_id", "userId", "uid", "reviewerID", "customer_id", "visitor_id"),
    "item": ("item", "item_id", "movieId", "iid", "asin", "product_id", "book_id", "isbn"),
    "time": ("timestamp", "time", "date", "datetime", "unixReviewTime", "ts"),
    "rating": ("rating", "overall", "stars"),
    "label": ("label", "click", "clicked", "liked"),
    "title": ("title", "movie_title", "item_title", "book_title", "name"),
}
# Item genres ("Action|Crime", as in movies.dat) kept in items.parquet for `cora probe`.
GENRE_COLUMNS = ("genres", "genre")
OPTION = {"user": "--user", "item": "--item", "time": "--time", "rating": "--rating", "label": "--label",
          "title": "--title"}


# ----------------------------------------------------------------------------- reading
@dataclass
class Source:
    """One input table and how to name its rows in messages."""

    path: Path
    table: pd.DataFrame
    fmt: str

    def where(self, idx: int) -> str:
        """'line N' for text files (header = line 1), 'row N' for Parquet (1-based)."""
        return f"row {idx + 1}" if self.fmt == "parquet" else f"line {idx + 2}"

    def example(self, idx: int) -> str:
        """``line 7: user=3, item=9, ...`` for an error message, on one line."""
        values = ", ".join(f"{c}={_clip(v)}" for c, v in self.table.loc[idx].items())
        return f"{self.where(idx)}: {values[:200]}"


def _clip(value) -> str:
    text = " ".join(str(value).split()) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def infer_format(path: Path, given: str | None) -> str:
    if given is not None:
        if given not in FORMATS:
            raise CoraError(f"--format {given}: choose from {', '.join(FORMATS)}")
        return given
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz", ".zst", ".zip"):
        suffixes = suffixes[:-1]  # pandas decompresses these by the file name
    kind = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".parquet": "parquet", ".pq": "parquet",
            ".inter": "recbole", ".item": "recbole"}.get(suffixes[-1] if suffixes else "")
    if kind is None:
        raise CoraError(f"{path}: cannot tell the format from the file name; pass --format {'|'.join(FORMATS)}")
    return kind


def read_source(path: Path, fmt: str, encoding: str = "utf-8") -> Source:
    """Read a whole table; text formats as strings, so every value is parsed (and reported) here.
    ``encoding`` is that of text files (Parquet says its own)."""
    if not path.is_file():
        raise CoraError(f"{path}: no such file")
    try:
        table = pd.read_parquet(path) if fmt == "parquet" else _read_text_table(path, fmt, encoding)
    except CoraError:
        raise
    except UnicodeDecodeError as e:
        if codecs.lookup(encoding).name == "utf-8":
            raise CoraError(f"{path}: not UTF-8 text (byte {e.start}); pass --encoding (e.g. --encoding latin-1) "
                            "or save it as UTF-8") from None
        raise CoraError(f"{path}: not {encoding} text (byte {e.start}); pass the file's --encoding") from None
    except pd.errors.EmptyDataError:
        raise CoraError(f"{path}: file is empty") from None
    # ParserError / ArrowInvalid are ValueErrors; gzip and OS trouble are OSError / EOFError / zlib.error.
    except (ValueError, OSError, EOFError, zlib.error, ImportError) as e:
        raise CoraError(f"{path}: cannot read as {fmt} ({type(e).__name__}: {one_line(e)})") from None
    if fmt == "recbole":  # typed headers: 'user_id:token' -> 'user_id'
        table.columns = [str(c).split(":", 1)[0] for c in table.columns]
    table.columns = [str(c).strip() for c in table.columns]
    if len(set(table.columns)) != len(table.columns):
        dup = next(c for c in table.columns if list(table.columns).count(c) > 1)
        raise CoraError(f"{path}: column '{dup}' appears twice in the header")
    if table.empty:
        raise CoraError(f"{path}: no data rows")
    return Source(path, table, fmt)  # index = position in the file, for line numbers


def _read_text_table(path: Path, fmt: str, encoding: str) -> pd.DataFrame:
    # CSV follows the usual quoting rules; tab-separated files (and RecBole's) are read literally,
    # since titles such as '"Great Performances" Cats (1998)' start with a quote.
    tabbed = fmt != "csv"
    table = pd.read_csv(path, sep="\t" if tabbed else ",", dtype=str, keep_default_na=False, na_filter=False,
                        quoting=csv.QUOTE_NONE if tabbed else csv.QUOTE_MINIMAL,
                        encoding="utf-8-sig" if codecs.lookup(encoding).name == "utf-8" else encoding,
                        skip_blank_lines=False, engine="c")
    # Blank lines are dropped here rather than by the parser, so the index still gives line numbers.
    blank = (table == "").all(axis=1)
    return table[~blank]




# ----------------------------------------------------------------------------- columns
def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", str(name).lower())


def find_column(src: Source, role: str, given: str | None, *, required: bool = True) -> str | None:
    """The column playing ``role``: the one named by its option, else the one known name present."""
    cols = list(src.table.columns)
    if given is not None:
        for name in (given, given.split(":", 1)[0]):  # RecBole users may pass 'user_id:token'
            if name in cols:
                return name
        raise CoraError(f"{src.path}: no column '{given}' ({OPTION[role]}); columns are {_names(cols)}")
    known = {_norm(c) for c in CANDIDATES[role]}
    hits = [c for c in cols if _norm(c) in known]
    if len(hits) > 1:
        raise CoraError(f"{src.path}: columns {_names(hits, ' and ')} could each be the {role} column; "
                        f"pass {OPTION[role]} COL to choose")
    if hits:
        return hits[0]
    if not required:
        return None
    hint = " (only one column: is the separator right? pass --format)" if len(cols) == 1 else ""
    raise CoraError(f"{src.path}: no {role} column (looked for {', '.join(CANDIDATES[role])}); columns are "
                    f"{_names(cols)}{hint}; pass {OPTION[role]} COL")


def _names(cols: Sequence[str], sep: str = ", ") -> str:
    shown = sep.join(f"'{_clip(c)}'" for c in cols[:12])
    return shown + (f" and {len(cols) - 12} more" if len(cols) > 12 else "")


# ----------------------------------------------------------------------------- values
def _first_bad(mask: np.ndarray | pd.Series) -> int | None:
    mask = np.asarray(mask, dtype=bool)
    return int(mask.argmax()) if mask.any() else None


def _fail(src: Source, col: str, problem: str, pos: int) -> CoraError:
    idx = src.table.index[pos]
    return CoraError(f"{src.path}: column '{col}' {problem} at {src.example(idx)}")


def _is_missing(values: pd.Series) -> np.ndarray:
    missing = values.isna().to_numpy()
    if values.dtype == object or pd.api.types.is_string_dtype(values):
        missing = missing | values.astype(str).str.strip().eq("").to_numpy()
    return missing


def _require_present(src: Source, col: str) -> pd.Series:
    values = src.table[col]
    if (pos := _first_bad(_is_missing(values))) is not None:
        raise _fail(src, col, "is empty", pos)
    return values


def ids_as_text(src: Source, col: str) -> pd.Series:
    """Ids as stripped text, so '7' in one file meets 7 in another."""
    values = _require_present(src, col)
    if pd.api.types.is_float_dtype(values):
        whole = np.equal(np.mod(values.to_numpy(dtype=float), 1), 0)
        if (pos := _first_bad(~whole)) is not None:
            raise _fail(src, col, "holds a non-integer id", pos)
        values = values.astype("int64")
    return values.astype(str).str.strip().astype(object)


def numbers(src: Source, col: str, what: str, values: pd.Series | None = None) -> np.ndarray:
    """A column as floats; ``values`` replaces the column's own (labels pass yes/no rewritten)."""
    values = _require_present(src, col) if values is None else values
    if pd.api.types.is_bool_dtype(values):
        return values.to_numpy(dtype=float)
    parsed = pd.to_numeric(values, errors="coerce")
    bad = parsed.isna().to_numpy() | ~np.isfinite(parsed.to_numpy(dtype=float, na_value=np.nan))
    if (pos := _first_bad(bad)) is not None:
        raise _fail(src, col, f"must be {what}", pos)
    return parsed.to_numpy(dtype=float)


def labels(src: Source, col: str) -> np.ndarray:
    values = _require_present(src, col)
    if not pd.api.types.is_bool_dtype(values) and not pd.api.types.is_numeric_dtype(values):
        text = values.astype(str).str.strip().str.lower()
        values = text.replace({"true": "1", "false": "0", "yes": "1", "no": "0"})
    out = numbers(src, col, "0 or 1", values)
    if (pos := _first_bad(~np.isin(out, (0.0, 1.0)))) is not None:
        raise _fail(src, col, "must be 0 or 1", pos)
    return out.astype(np.int64)


@dataclass
class EventTimes:
    """A time column read: UTC unix seconds, the part below the second where the column has one,
    what the column held, and whether every time is at one time of day (dates only)."""

    seconds: np.ndarray
    subsecond: np.ndarray | None  # nanoseconds within the second; None: whole seconds only
    unit: str  # "unix seconds" | "unix milliseconds" | "ISO 8601 text" | "Parquet timestamps"
    date_only: bool


def event_times(src: Source, col: str) -> EventTimes:
    """Event times as UTC unix seconds: numbers are seconds, or milliseconds when every value is
    one (>= 10**11: as seconds that would be past the year 5000); text is an ISO 8601 date/time
    (UTC unless it carries an offset). The first value decides between numbers and text."""
    values = _require_present(src, col)
    if pd.api.types.is_datetime64_any_dtype(values):
        stamps = values.dt.tz_localize("UTC") if values.dt.tz is None else values.dt.tz_convert("UTC")
        return _from_nanoseconds(_nanoseconds(stamps), "Parquet timestamps")
    as_number = pd.to_numeric(values, errors="coerce")
    if not pd.isna(as_number.iloc[0]):
        bad = as_number.isna().to_numpy()
        if (pos := _first_bad(bad)) is not None:
            raise _fail(src, col, "must be unix seconds like the rows before it", pos)
        number = as_number.to_numpy(dtype=float)
        if (pos := _first_bad(np.abs(number) >= MAX_MILLISECONDS)) is not None:
            raise _fail(src, col, "is neither unix seconds nor milliseconds (too large)", pos)
        big = np.abs(number) >= MAX_SECONDS
        if big.any() and not big.all():
            first, other = ("milliseconds", "seconds") if big[0] else ("seconds", "milliseconds")
            raise _fail(src, col, f"mixes unix {first} (first row) with {other}", _first_bad(big != big[0]))
        whole = np.floor(number)
        if big.all():
            return _from_nanoseconds(whole.astype(np.int64) * 1_000_000, "unix milliseconds")
        fraction = number - whole
        subsecond = np.round(fraction * 1e9).astype(np.int64) if fraction.any() else None
        return _times(whole.astype(np.int64), subsecond, "unix seconds")
    stamps = pd.to_datetime(values.astype(str).str.strip(), format="ISO8601", utc=True, errors="coerce")
    if (pos := _first_bad(stamps.isna())) is not None:
        raise _fail(src, col, "is not unix seconds or an ISO 8601 date (YYYY-MM-DD[THH:MM:SS])", pos)
    return _from_nanoseconds(_nanoseconds(stamps), "ISO 8601 text")


def unix_seconds(src: Source, col: str) -> np.ndarray:
    """Event times as UTC unix seconds (see :func:`event_times`)."""
    return event_times(src, col).seconds


def _nanoseconds(stamps: pd.Series) -> np.ndarray:
    return ((stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(nanoseconds=1)).to_numpy(dtype=np.int64)


def _from_nanoseconds(ns: np.ndarray, unit: str) -> EventTimes:
    seconds, subsecond = np.divmod(ns, 1_000_000_000)
    return _times(seconds, subsecond if subsecond.any() else None, unit)


def _times(seconds: np.ndarray, subsecond: np.ndarray | None, unit: str) -> EventTimes:
    # Several events, all at one time of day: a date-only column (midnight UTC, or a local one).
    date_only = subsecond is None and len(seconds) > 1 and np.unique(seconds % 86_400).size == 1
    return EventTimes(seconds.astype(np.int64), subsecond, unit, bool(date_only))


# ----------------------------------------------------------------------------- events and titles
@dataclass
class LabelRule:
    column: str | None  # None: every event is a positive (--negatives samples the negatives)
    threshold: float | None  # None: the column already holds 0/1 labels

    def describe(self) -> str:
        if self.column is None:
            return "every event is a positive (--negatives)"
        return f"column '{self.column}' (0/1)" if self.threshold is None else f"{self.column} >= {self.threshold:g}"


def choose_label(src: Source, rating: str | None, label: str | None, threshold: float | None,
                 negatives: int | None = None) -> LabelRule:
    if negatives is not None:
        return LabelRule(None, None)  # _check_options refused --rating / --label with --negatives
    if label is not None:
        return LabelRule(find_column(src, "label", label), None)
    if rating is not None or threshold is not None:
        return LabelRule(find_column(src, "rating", rating), DEFAULT_THRESHOLD if threshold is None else threshold)
    rating_col = find_column(src, "rating", None, required=False)
    label_col = find_column(src, "label", None, required=False)
    if rating_col and label_col:
        raise CoraError(f"{src.path}: both '{rating_col}' and '{label_col}' could give the label; pass "
                        f"--rating {rating_col} (with --positive-threshold) or --label {label_col}")
    if label_col:
        return LabelRule(label_col, None)
    if rating_col:
        return LabelRule(rating_col, DEFAULT_THRESHOLD)
    raise CoraError(f"{src.path}: no rating or label column (looked for {', '.join(CANDIDATES['rating'])}, "
                    f"{', '.join(CANDIDATES['label'])}); columns are {_names(list(src.table.columns))}; "
                    "pass --rating COL or --label COL, or --negatives N for a log of positives only (clicks, plays)")


def read_events(src: Source, cols: dict[str, str], rule: LabelRule,
                duplicates: str = "error") -> tuple[pd.DataFrame, EventTimes, dict]:
    """user, item, label, timestamp (+ subsecond where the times have it) per row, in file order,
    with every value checked; the times as read; what ``duplicates`` removed."""
    events = pd.DataFrame({"user": ids_as_text(src, cols["user"]), "item": ids_as_text(src, cols["item"])})
    if rule.column is None:
        events["label"] = np.ones(len(events), dtype=np.int64)
    elif rule.threshold is None:
        events["label"] = labels(src, rule.column)
    else:
        events["label"] = (numbers(src, rule.column, "a number") >= rule.threshold).astype(np.int64)
    times = event_times(src, cols["time"])
    events["timestamp"] = times.seconds
    if times.subsecond is not None:
        events["subsecond"] = times.subsecond
    events, removed = drop_duplicates(src, cols, events, duplicates)
    return events, times, removed


def drop_duplicates(src: Source, cols: dict[str, str], events: pd.DataFrame,
                    policy: str) -> tuple[pd.DataFrame, dict]:
    """Events with the same user, item and time: an error (``error``), or all but the first
    (``drop``) or the last (``keep-last``) of each set removed, in file order."""
    key = ["user", "item", "timestamp"] + (["subsecond"] if "subsecond" in events.columns else [])
    dup = events.duplicated(key, keep=False).to_numpy()
    facts = {"policy": policy, "events_removed": 0, "sets_with_both_labels": 0}
    if (pos := _first_bad(dup)) is None:
        return events, facts
    if policy == "error":
        first = events.iloc[pos]
        same = events[(events[key] == first[key]).all(axis=1)]
        raise CoraError(f"{src.path}: duplicate event (same '{cols['user']}', '{cols['item']}', '{cols['time']}') "
                        f"at {src.example(same.index[0])}; again at {src.where(same.index[1])}; keep one row per "
                        "event or pass --duplicates drop|keep-last")
    sets = events[dup].groupby(key, sort=False)["label"].nunique()
    kept = events[~events.duplicated(key, keep="first" if policy == "drop" else "last").to_numpy()]
    facts.update(events_removed=int(len(events) - len(kept)), sets_with_both_labels=int((sets > 1).sum()))
    return kept, facts


def items_table(src: Source, item_col: str | None, title_col: str | None) -> tuple[pd.DataFrame, str, str]:
    """The items file as item (text id), title and its other columns; one row per item."""
    item = find_column(src, "item", item_col if item_col in src.table.columns else None)
    title = find_column(src, "title", title_col)
    ids = ids_as_text(src, item)
    dup = ids.duplicated().to_numpy()
    if (pos := _first_bad(dup)) is not None:
        first = ids.index[int(np.flatnonzero(ids.to_numpy() == ids.iloc[pos])[0])]
        raise CoraError(f"{src.path}: item '{ids.iloc[pos]}' (column '{item}') is listed twice, at "
                        f"{src.where(first)} and {src.example(ids.index[pos])}")
    # Other columns keep their names; one that clashes with 'item' / 'title' gets a suffix.
    other = {c: (f"{c}_extra" if c in ("item", "title") else c) for c in src.table.columns if c not in (item, title)}
    table = pd.DataFrame({"item": ids.to_numpy(), "title": src.table[title].to_numpy(dtype=object)})
    for c, new in other.items():
        table[new] = src.table[c].to_numpy()
    return table, item, title


def attach_titles(events: pd.DataFrame, src: Source, item_col: str, titles: pd.DataFrame,
                  titles_path: Path, title_col: str) -> pd.DataFrame:
    """Each event's title; an item without one (absent, empty) is an error naming an example row."""
    title_of = titles.set_index("item")["title"]
    title = events["item"].map(title_of)
    missing = _is_missing(title)
    if (pos := _first_bad(missing)) is not None:
        item = events["item"].iloc[pos]
        why = "has an empty title" if item in title_of.index else "is not listed"
        raise CoraError(f"{src.path}: item '{item}' (column '{item_col}') {why} in {titles_path} (column "
                        f"'{title_col}'), used at {src.example(events.index[pos])}; every item needs a title")
    return events.assign(title=title.astype(str).to_numpy(dtype=object))


def titles_from_events(src: Source, item_col: str, title_col: str) -> pd.DataFrame:
    """item -> title when the interactions carry titles: the first non-empty title of each item,
    with that row's genres when the file has a genres column (an --items file keeps all its
    columns anyway; from an event log only these two would otherwise survive)."""
    values = src.table[title_col]
    table = pd.DataFrame({"item": ids_as_text(src, item_col).to_numpy(), "title": values.to_numpy(dtype=object)})
    if (genres := next((c for c in src.table.columns if _norm(c) in GENRE_COLUMNS), None)) is not None:
        table["genres"] = src.table[genres].to_numpy(dtype=object)
    given = table[~_is_missing(values)]
    firsts = given.drop_duplicates("item", keep="first")
    return pd.concat([firsts, table[~table["item"].isin(firsts["item"])].drop_duplicates("item")],
                     ignore_index=True)


# ----------------------------------------------------------------------------- entry point
def import_interactions(interactions: str | Path, out: str | Path, *, items: str | Path | None = None,
                        fmt: str | None = None, user: str | None = None, item: str | None = None,
                        time: str | None = None, rating: str | None = None,
                        positive_threshold: float | None = None, label: str | None = None,
                        title: str | None = None, split_dates: str | Sequence[str] | None = None,
                        split_fractions: str | Sequence[float] | None = None, domain: str = DEFAULT_DOMAIN,
                        valid_small_frac: float = VALID_SMALL_FRACTION, seed: int = VALID_SMALL_SEED,
                        negatives: int | None = None, duplicates: str = "error", encoding: str = "utf-8",
                        name: str | None = None, overwrite: bool = False) -> dict:
    """Build ``out`` (train / valid / valid_small / test + meta.json + users / items tables) from
    an event log; see the module doc for the protocol. Nothing is written unless all succeeds."""
    interactions, out = Path(interactions), Path(out)
    windows, fracs = _check_options(out, rating, label, positive_threshold, split_dates, split_fractions,
                                    valid_small_frac, seed, domain, overwrite, negatives, duplicates, encoding)
    fmt = infer_format(interactions, fmt)
    items_path = _items_path(interactions, items, fmt)
    src = read_source(interactions, fmt, encoding)
    cols = {r: find_column(src, r, g) for r, g in (("user", user), ("item", item), ("time", time))}
    rule = choose_label(src, rating, label, positive_threshold, negatives)
    events, times, removed = read_events(src, cols, rule, duplicates)

    if items_path is not None:
        items_src = read_source(items_path, infer_format(items_path, "recbole" if fmt == "recbole" else None),
                                encoding)
        catalogue, _, title_col = items_table(items_src, cols["item"], title)
        titles_path = items_path
    else:
        title_col = find_column(src, "title", title, required=False)
        if title_col is None:
            raise CoraError(f"{interactions}: no titles: pass --items FILE (item id -> title) or name a title "
                            f"column of this file with --title COL; columns are {_names(list(src.table.columns))}")
        catalogue, titles_path = titles_from_events(src, cols["item"], title_col), interactions
    events = attach_titles(events, src, cols["item"], catalogue, titles_path, title_col)

    if windows is None:
        windows = windows_from_fractions(events["timestamp"].to_numpy(), fracs)
    # Users sort by first appearance in the file (ML-1M's ratings.dat: by user id).
    user_rank, raw_users = pd.factorize(events["user"])
    data = order_events(tie_order(events.assign(user=user_rank)), windows)
    report = {"times": {"column": cols["time"], "unit": times.unit, "date_only": times.date_only,
                        **time_ties(data, windows)},
              "duplicates": removed, "reinteractions": reinteractions(events)}
    if negatives is not None:
        data, report["negatives"] = insert_negatives(data, negatives, seed, user_rank, events["item"].to_numpy(),
                                                     user_name=lambda code: raw_users[code])
        report["columns_ignored"] = [c for c in (find_column(src, r, None, required=False)
                                                 for r in ("rating", "label")) if c is not None]
    table, histories, user_ranks, item_keys = build_table(data)
    splits = make_splits(table, frac=valid_small_frac, seed=seed,
                         empty=_empty_message(interactions, cols["time"], windows, events, fracs, valid_small_frac))
    users = pd.DataFrame({"uid": np.arange(1, len(user_ranks) + 1),
                          "user": np.asarray(raw_users, dtype=object)[np.asarray(user_ranks)]})
    item_rows = pd.DataFrame({"iid": np.arange(1, len(item_keys) + 1), "item": np.asarray(item_keys, dtype=object)})
    item_rows = item_rows.merge(catalogue, on="item", how="left")
    source = _source_meta(interactions, items_path, fmt, cols, rule, title_col, windows, fracs, src, data,
                          valid_small_frac, seed) | report | ({} if fmt == "parquet" else {"encoding": encoding})
    return write_with_id_maps(out, splits, users, item_rows, name=name or out.name, domain=domain, source=source,
                              overwrite=overwrite, histories=histories)


def _check_options(out: Path, rating, label, threshold, split_dates, split_fractions, valid_small_frac, seed,
                   domain, overwrite, negatives=None, duplicates="error",
                   encoding="utf-8") -> tuple[SplitWindows | None, tuple[float, float, float] | None]:
    """Everything that needs no file, checked before minutes of reading."""
    if negatives is not None and (rating is not None or label is not None or threshold is not None):
        raise CoraError("--negatives makes every event a positive and samples the negatives; drop --rating, --label "
                        "and --positive-threshold (or drop --negatives to label events by a column)")
    if duplicates not in DUPLICATES:
        raise CoraError(f"--duplicates {duplicates}: choose from {', '.join(DUPLICATES)}")
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise CoraError(f"--encoding {encoding}: unknown encoding (e.g. utf-8, latin-1, cp1252)") from None
    if label is not None and threshold is not None:
        raise CoraError("--positive-threshold goes with a rating column, not with --label (a 0/1 column)")
    if label is not None and rating is not None:
        raise CoraError("pass either --rating COL (with --positive-threshold) or --label COL, not both")
    if split_dates is not None and split_fractions is not None:
        raise CoraError("pass either --split-dates or --split-fractions, not both")
    if not domain.strip():
        raise CoraError("--domain: give a plural noun for the prompt, e.g. movies, books, items")
    # The numbers by the one range table (ranges.RANGES['options']), named as the flags.
    check_flags("options", {"positive_threshold": threshold, "valid_small_frac": valid_small_frac, "seed": seed,
                            "negatives": negatives})
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise CoraError(f"{out}: output folder exists and is not empty (pass --overwrite to replace it)"
                        if out.is_dir() else f"{out}: exists and is not a folder")
    if split_dates is not None:
        return parse_split_dates(split_dates), None
    return None, parse_split_fractions(split_fractions) if split_fractions is not None else DEFAULT_FRACTIONS


def _items_path(interactions: Path, items: str | Path | None, fmt: str) -> Path | None:
    if items is not None:
        if not Path(items).is_file():  # say so now, not after reading a large log
            raise CoraError(f"{items}: no such file (--items)")
        return Path(items)
    beside = interactions.with_suffix(".item")
    # RecBole keeps NAME.item beside NAME.inter.
    return beside if fmt == "recbole" and beside.is_file() else None


def _empty_message(path: Path, time_col: str, windows: SplitWindows, events: pd.DataFrame,
                   fracs, valid_small_frac: float) -> Callable[[str, int], str]:
    ts = events["timestamp"]
    span = f"the data spans {iso_utc(ts.min())} .. {iso_utc(ts.max())}"

    def message(split: str, valid_rows: int) -> str:
        if split == "valid_small":
            return (f"{path}: valid has {valid_rows} row(s); --valid-small-frac {valid_small_frac:g} leaves "
                    "valid_small empty")
        shares = ",".join(f"{f:g}" for f in fracs or ())
        how = ("change --split-dates" if fracs is None else
               f"too few distinct times for --split-fractions {shares}; change them or use --split-dates")
        return (f"{path}: no events (column '{time_col}') fall in the {split} split {windows.describe(split)} UTC; "
                f"{span}; {how}")

    return message


def _source_meta(interactions, items_path, fmt, cols, rule, title_col, windows, fracs, src, data,
                 valid_small_frac, seed) -> dict:
    def file_meta(path: Path) -> dict:
        return {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": sha256_file(path)}

    return {
        "format": fmt,
        "protocol": "collm (generalised): window, label, (user, time) order, [0] + earlier positives",
        "sha256": sha256_file(interactions),  # of the interactions file, as source.sha256 of other importers
        "interactions": {"path": str(interactions.resolve()), "bytes": interactions.stat().st_size,
                         "rows": len(src.table)},
        **({"items": file_meta(items_path)} if items_path is not None else {}),
        "columns": {**cols, **({} if rule.column is None else
                               {"label" if rule.threshold is None else "rating": rule.column}), "title": title_col},
        "label": rule.describe(),
        "split": {"by": "dates" if fracs is None else f"fractions {','.join(f'{f:g}' for f in fracs)}",
                  **windows.to_meta()},
        "rows_outside_window": int(len(src.table) - len(data)),
        "valid_small": f"sample(frac={valid_small_frac:g}, seed={seed}) of valid",
    }
