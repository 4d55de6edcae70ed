"""`cora data import-interactions` (cora.data.interactions): your own event log -> cora splits.

The equivalence test converts the real raw ML-1M files in shared/data/raw-ml-1m-partial into a
plain `user,item,rating,timestamp` CSV and an `item,title` CSV and checks that importing them with
the ML-1M dates gives exactly what `cora data prepare movielens` gives on the raw files. The other
tests write small hand-made files into tmp_path; bad input is checked through the command line.
"""

from __future__ import annotations

import calendar
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cora.data.interactions import Source, import_interactions, unix_seconds
from cora.data.movielens import prepare_movielens
from cora.data.store import load_dataset

from helpers import main_in_process, run_cli

SPLITS = ("train", "valid", "test")
ALL_SPLITS = (*SPLITS, "valid_small")
ML1M_DATES = "2001-06-01,2002-04-01,2002-09-01,2003-02-01"
SCHEMA = ["uid", "iid", "label", "timestamp", "his", "his_title", "title", "not_cold"]


def ts(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> int:
    """Unix time of a UTC date."""
    return calendar.timegm((year, month, day, hour, minute, second))


def splits_of(out: Path) -> dict[str, pd.DataFrame]:
    ds = load_dataset(out)
    return {s: ds.split(s) for s in ALL_SPLITS}


# ----------------------------------------------------------------------------- real data: equivalence
def raw_to_csv(raw: Path, folder: Path) -> tuple[Path, Path]:
    """ratings.dat.gz -> ratings.csv (user,item,rating,timestamp), movies.dat -> movies.csv (item,title)."""
    folder.mkdir(parents=True, exist_ok=True)
    ratings_text = gzip.decompress((raw / "ratings.dat.gz").read_bytes()).decode("iso-8859-1")
    ratings = folder / "ratings.csv"
    ratings.write_text("user,item,rating,timestamp\n" + ratings_text.replace("::", ","), encoding="utf-8")
    movies = [line.split("::") for line in (raw / "movies.dat").read_text("iso-8859-1").splitlines() if line]
    items = folder / "movies.csv"
    # to_csv quotes titles holding commas or quotes ('"Great Performances" Cats (1998)').
    pd.DataFrame([(m[0], m[1]) for m in movies], columns=["item", "title"]).to_csv(items, index=False)
    return ratings, items


@pytest.fixture(scope="module")
def ml1m_both(shared_data: Path, tmp_path_factory) -> dict:
    """The partial raw ML-1M through both paths, once for the module (each takes ~1.5 s)."""
    root = tmp_path_factory.mktemp("own-ml1m")
    raw = shared_data / "raw-ml-1m-partial"
    ratings, items = raw_to_csv(raw, root / "csv")
    prepared = prepare_movielens(raw, root / "prepared")
    imported = import_interactions(ratings, root / "imported", items=items, split_dates=ML1M_DATES,
                                   positive_threshold=4, domain="movies")
    return {"root": root, "ratings": ratings, "items": items, "prepared_meta": prepared,
            "imported_meta": imported, "prepared": splits_of(root / "prepared"),
            "imported": splits_of(root / "imported")}


def values(df: pd.DataFrame, col: str) -> list:
    """A column as plain values; histories (numpy views of the per-user arrays) as lists."""
    return [list(v) for v in df[col]] if col in ("his", "his_title") else df[col].tolist()


def assert_same_splits(mine: dict[str, pd.DataFrame], ref: dict[str, pd.DataFrame]) -> None:
    for s in ALL_SPLITS:
        assert len(mine[s]) == len(ref[s]), s
        for col in SCHEMA:
            assert values(mine[s], col) == values(ref[s], col), (s, col)


@pytest.mark.slow
def test_ml1m_csv_import_equals_prepare_movielens(ml1m_both):
    assert_same_splits(ml1m_both["imported"], ml1m_both["prepared"])
    ref, mine = ml1m_both["prepared_meta"], ml1m_both["imported_meta"]
    assert mine["splits"] == ref["splits"]
    assert [mine["splits"][s]["rows"] for s in ALL_SPLITS] == [21_848, 5_979, 4_115, 2_990]
    assert (mine["n_users"], mine["n_items"], mine["users_seen"]) == (ref["n_users"], ref["n_items"], 460)
    assert mine["domain"] == "movies" and mine["name"] == "imported"
    src = mine["source"]
    assert src["interactions"]["rows"] == 487_650 and src["rows_outside_window"] == 487_650 - 31_942
    assert src["split"]["train_start"] == "2001-06-01" and src["split"]["timezone"] == "UTC"
    assert len(src["sha256"]) == 64 and len(src["items"]["sha256"]) == 64
    assert src["label"] == "rating >= 4"


@pytest.mark.slow
def test_ml1m_id_maps_point_back_to_the_raw_ids(ml1m_both):
    root, train = ml1m_both["root"], ml1m_both["imported"]["train"]
    users = pd.read_parquet(root / "imported" / "users.parquet")
    items = pd.read_parquet(root / "imported" / "items.parquet")
    assert users["uid"].tolist() == list(range(1, len(users) + 1))
    assert items["iid"].tolist() == list(range(1, len(items) + 1))
    raw = pd.read_csv(ml1m_both["ratings"], dtype=str)
    first = train.iloc[0]
    user_id = users.set_index("uid").loc[first["uid"], "user"]
    item_id, title = items.set_index("iid").loc[first["iid"], ["item", "title"]]
    assert title == first["title"]
    match = raw[(raw["user"] == user_id) & (raw["item"] == item_id)]
    assert match["timestamp"].astype(int).tolist() == [first["timestamp"]]


@pytest.mark.slow
def test_ml1m_times_as_iso_strings_with_an_offset_are_the_same_instants(ml1m_both):
    """Real timestamps written as ISO text in UTC+9 ('2001-01-01T07:12:40+09:00') parses back
    to the same unix second; naive ISO text is UTC."""
    # Every 10th rating: the parse is the point, not the volume.
    seconds = pd.read_csv(ml1m_both["ratings"], usecols=["timestamp"])["timestamp"].to_numpy()[::10]
    local = np.char.add(np.datetime_as_string((seconds + 9 * 3600).astype("datetime64[s]"), unit="s"), "+09:00")
    naive = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s")
    table = pd.DataFrame({"local": local, "naive": naive})
    src = Source(Path("ratings.csv"), table, "csv")
    assert (unix_seconds(src, "local") == seconds).all() and (unix_seconds(src, "naive") == seconds).all()


# ----------------------------------------------------------------------------- small hand-made files
EVENTS = [  # user, item, rating, time (UTC)
    ("alice", "m3", 5, ts(2020, 1, 5)),
    ("alice", "m1", 2, ts(2020, 1, 6)),
    ("bob", "m1", 4, ts(2020, 1, 7)),
    ("alice", "m2", 4, ts(2020, 3, 2)),
    ("bob", "m4", 5, ts(2020, 3, 10)),  # same second as the next row: m2 appeared first in the file,
    ("bob", "m2", 5, ts(2020, 3, 10)),  # so m2 goes first (the order CoLLM's merge gave ML-1M)
    ("alice", "m5", 1, ts(2020, 4, 15)),
    ("bob", "m5", 4, ts(2020, 4, 20)),
    ("carol", "m1", 5, ts(2019, 12, 31, 23, 59, 59)),  # before the train start: dropped
    ("carol", "m2", 5, ts(2020, 5, 1, 0, 0, 0)),  # the end is exclusive: dropped
]
TITLES = {"m1": "Alpha (1990)", "m2": 'Beta, "the" (1991)', "m3": "Gamma (1992)", "m4": "Delta (1993)",
          "m5": "Épsilon (1994)", "m9": "Unused (1999)"}
DATES = "2020-01-01,2020-03-01,2020-04-01,2020-05-01"


def write_events(folder: Path, events=EVENTS, header=("user", "item", "rating", "timestamp"),
                 titles=TITLES, name="ratings.csv") -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    ratings = folder / name
    pd.DataFrame(events, columns=list(header)).to_csv(ratings, index=False)
    items = folder / "movies.csv"
    pd.DataFrame({"item": list(titles), "title": list(titles.values()),
                  "genres": [f"g{i}" for i in range(len(titles))]}).to_csv(items, index=False)
    return ratings, items


def rows(out: Path) -> pd.DataFrame:
    s = splits_of(out)
    return pd.concat([s[k].assign(split=k) for k in SPLITS]).sort_values(["uid", "timestamp"], kind="stable")


def test_small_log_follows_the_protocol(tmp_path):
    ratings, items = write_events(tmp_path / "in")
    meta = import_interactions(ratings, tmp_path / "out", items=items, split_dates=DATES)
    r = rows(tmp_path / "out")
    got = list(zip(r["uid"], r["iid"], r["label"], values(r, "his"), r["split"], r["not_cold"]))
    # Items numbered by first appearance in (user, time) order: m3, m1, m2, m5, m4 -> 1..5.
    assert got == [
        (1, 1, 1, [0], "train", 1),
        (1, 2, 0, [0, 1], "train", 1),
        (1, 3, 1, [0, 1], "valid", 0),
        (1, 4, 0, [0, 1, 3], "test", 0),
        (2, 2, 1, [0], "train", 1),
        (2, 3, 1, [0, 2], "valid", 0),
        (2, 5, 1, [0, 2, 3], "valid", 0),
        (2, 4, 1, [0, 2, 3, 5], "test", 0),
    ]
    assert list(r["his_title"].iloc[-1]) == ["", "Alpha (1990)", 'Beta, "the" (1991)', "Delta (1993)"]
    assert r["title"].iloc[3] == "Épsilon (1994)"
    assert meta["n_users"] == 3 and meta["n_items"] == 6 and meta["domain"] == "items"
    assert meta["splits"]["valid_small"]["rows"] == 2 and meta["source"]["rows_outside_window"] == 2
    users = pd.read_parquet(tmp_path / "out" / "users.parquet")
    items_out = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert users.to_dict("list") == {"uid": [1, 2], "user": ["alice", "bob"]}
    assert items_out["item"].tolist() == ["m3", "m1", "m2", "m5", "m4"]
    assert items_out["genres"].tolist() == ["g2", "g0", "g1", "g4", "g3"]  # extra columns kept


def test_valid_small_fraction_and_seed(tmp_path):
    events = [(f"u{u}", f"i{i}", 1 + (u * i) % 5, ts(2020, 1 + (i % 3), 1 + u, i)) for u in range(20) for i in range(9)]
    ratings, items = write_events(tmp_path / "in", events, titles={f"i{i}": f"Item {i}" for i in range(9)})
    a = import_interactions(ratings, tmp_path / "a", items=items,
                            split_dates="2020-01-01,2020-02-01,2020-03-01,2020-04-01",
                            valid_small_frac=0.25, seed=7)
    b = splits_of(tmp_path / "a")
    expected = b["valid"].sample(frac=0.25, random_state=7)
    assert b["valid_small"][["uid", "iid", "timestamp"]].values.tolist() == \
        expected[["uid", "iid", "timestamp"]].values.tolist()
    assert a["source"]["valid_small"] == "sample(frac=0.25, seed=7) of valid"


def test_split_fractions_cut_at_timestamps(tmp_path):
    # 10 events of one user, the 6th and 7th in the same second: the 60 % cut falls on that second,
    # and both go to valid (a second is never divided between splits).
    times = [ts(2020, 1, d) for d in (1, 2, 3, 4, 5, 6, 6, 8, 9, 10)]
    events = [("u", f"i{k}", 5, t) for k, t in enumerate(times)]
    ratings, items = write_events(tmp_path / "in", events, titles={f"i{k}": f"Item {k}" for k in range(10)})
    meta = import_interactions(ratings, tmp_path / "out", items=items, split_fractions="0.6,0.2,0.2")
    assert [meta["splits"][s]["rows"] for s in SPLITS] == [5, 3, 2]
    split = meta["source"]["split"]
    assert split["by"] == "fractions 0.6,0.2,0.2"
    assert (split["valid_start"], split["test_start"]) == ("2020-01-06T12:00:00Z", "2020-01-09T12:00:00Z")
    assert meta["source"]["rows_outside_window"] == 0
    events = [("u", f"i{k}", 5, ts(2020, 1, 1 + k)) for k in range(20)]
    ratings, items = write_events(tmp_path / "in20", events, titles={f"i{k}": f"Item {k}" for k in range(20)})
    default = import_interactions(ratings, tmp_path / "default", items=items)  # 0.8,0.1,0.1
    assert [default["splits"][s]["rows"] for s in SPLITS] == [16, 2, 2]


def test_auto_detected_columns_movielens_latest_style(tmp_path):
    """ratings.csv (userId,movieId,rating,timestamp) + movies.csv (movieId,title,genres), as GroupLens ships."""
    ratings, _ = write_events(tmp_path / "in", header=("userId", "movieId", "rating", "timestamp"))
    movies = tmp_path / "in" / "movies.csv"
    movie_table = pd.DataFrame({"movieId": list(TITLES), "title": list(TITLES.values()), "genres": "Drama"})
    movie_table.to_csv(movies, index=False)
    meta = import_interactions(ratings, tmp_path / "out", items=movies, split_dates=DATES)
    assert meta["source"]["columns"] == {"user": "userId", "item": "movieId", "time": "timestamp",
                                         "rating": "rating", "title": "title"}
    assert rows(tmp_path / "out")["iid"].tolist() == [1, 2, 3, 4, 2, 3, 5, 4]


def test_label_column_iso_dates_titles_in_the_log(tmp_path):
    """0/1 (or true/false) labels; naive ISO times are UTC, an offset is honoured; titles in the log."""
    log = tmp_path / "log.csv"
    log.write_text(
        "uid,asin,click,date,name\n"
        "a,b1,1,2020-01-10,Book One\n"
        "a,b2,false,2020-02-29T23:30:00,Book Two\n"  # UTC: still train
        "a,b3,true,2020-03-01T00:30:00+02:00,Book Three\n"  # = 2020-02-29T22:30Z: train
        "a,b4,0,2020-03-01T00:00:00,Book Four\n"  # first second of valid
        "b,b1,1,2020-01-11,\n"  # empty title: b1 has one from its first row
        "b,b2,1,2020-04-02,Book Two\n"
        "\n"  # a blank line is skipped
        "b,b3,0,2020-04-03,Book Three\n", encoding="utf-8")
    meta = import_interactions(log, tmp_path / "out", split_dates=DATES, domain="books", valid_small_frac=1)
    r = rows(tmp_path / "out")
    # User a in time order: b1, b3 (22:30 UTC), b2 (23:30 UTC), b4.
    assert r["title"].tolist() == ["Book One", "Book Three", "Book Two", "Book Four", "Book One", "Book Two",
                                   "Book Three"]
    assert r["label"].tolist() == [1, 1, 0, 0, 1, 1, 0]
    assert r["split"].tolist() == ["train", "train", "train", "valid", "train", "test", "test"]
    assert r["timestamp"].iloc[1] == ts(2020, 2, 29, 22, 30)
    assert meta["source"]["label"] == "column 'click' (0/1)" and meta["domain"] == "books"


def test_recbole_atomic_files(tmp_path):
    """NAME.inter + NAME.item (tab-separated, typed headers); the .item is found beside the .inter."""
    inter, item = tmp_path / "ml.inter", tmp_path / "ml.item"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{float(r)}\t{float(t)}" for u, i, r, t in EVENTS]
    inter.write_text("\n".join(lines) + "\n", encoding="utf-8")
    item.write_text("item_id:token\tmovie_title:token_seq\trelease_year:token\n"
                    + "".join(f"{k}\t{v}\t{1990 + n}\n" for n, (k, v) in enumerate(TITLES.items())), encoding="utf-8")
    meta = import_interactions(inter, tmp_path / "out", split_dates=DATES)
    assert meta["source"]["format"] == "recbole" and meta["source"]["items"]["path"] == str(item.resolve())
    r = rows(tmp_path / "out")
    assert list(r["his_title"].iloc[-1]) == ["", "Alpha (1990)", 'Beta, "the" (1991)', "Delta (1993)"]
    items_out = pd.read_parquet(tmp_path / "out" / "items.parquet")
    assert items_out["release_year"].tolist() == ["1992", "1990", "1991", "1994", "1993"]


def test_parquet_with_typed_columns_equals_the_csv(tmp_path):
    """Integer ids, datetime64 times (naive = UTC) and a bool label from Parquet import like the CSV."""
    ratings, items = write_events(tmp_path / "in")
    import_interactions(ratings, tmp_path / "from-csv", items=items, split_dates=DATES)
    events = pd.DataFrame(EVENTS, columns=["user", "item", "rating", "timestamp"])
    events["user"] = events["user"].map({"alice": 10, "bob": 20, "carol": 30})
    events["item"] = events["item"].str[1:].astype(int)
    events["when"] = pd.to_datetime(events.pop("timestamp"), unit="s")
    events["liked"] = events.pop("rating") >= 4
    events.to_parquet(tmp_path / "events.parquet")
    item_table = pd.DataFrame({"item": [int(k[1:]) for k in TITLES], "title": list(TITLES.values())})
    item_table.to_parquet(tmp_path / "items.pq")
    meta = import_interactions(tmp_path / "events.parquet", tmp_path / "from-parquet", items=tmp_path / "items.pq",
                               time="when", split_dates=DATES)
    assert meta["source"]["label"] == "column 'liked' (0/1)"
    assert_same_splits(splits_of(tmp_path / "from-parquet"), splits_of(tmp_path / "from-csv"))
    assert pd.read_parquet(tmp_path / "from-parquet" / "users.parquet")["user"].tolist() == ["10", "20"]


def test_explicit_format_for_any_file_name(tmp_path):
    events = tmp_path / "events.txt"  # a tab-separated log under a name that says nothing
    events.write_text("user\titem\trating\ttimestamp\ttitle\n"
                      + "".join(f"{u}\t{i}\t{r}\t{t}\t{TITLES[i]}\n" for u, i, r, t in EVENTS), encoding="utf-8")
    meta = import_interactions(events, tmp_path / "out", fmt="tsv", split_dates=DATES)
    assert meta["source"]["format"] == "tsv" and meta["source"]["columns"]["title"] == "title"
    assert list(rows(tmp_path / "out")["his_title"].iloc[-1]) == ["", "Alpha (1990)", 'Beta, "the" (1991)', "Delta (1993)"]


def test_imported_data_trains_a_cf_model(tmp_path):
    """The folder is an ordinary cora dataset: MF trains on it unchanged."""
    from cora.cf.train import train_cf
    from cora.config import CFConfig

    rng = np.random.default_rng(0)
    events = [(f"u{u}", f"i{i}", int(rng.integers(1, 6)), ts(2020, 1 + m, 1 + u, i))
              for u in range(15) for m in range(3) for i in rng.choice(20, 4, replace=False)]
    ratings, items = write_events(tmp_path / "in", events, titles={f"i{i}": f"Item {i}" for i in range(20)})
    import_interactions(ratings, tmp_path / "data", items=items,
                        split_dates="2020-01-01,2020-02-01,2020-03-01,2020-04-01")
    metrics = train_cf(CFConfig.for_model("mf", data=str(tmp_path / "data"), epochs=2, dim=8), tmp_path / "mf",
                       show_progress=False)
    assert 0.0 <= metrics["test"]["auc"] <= 1.0


# ----------------------------------------------------------------------------- bad input, through the CLI
def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`cora ARGS` in this process, through cora.cli.main (what the console script runs)."""
    code, out, err = main_in_process(monkeypatch, capsys, *args)
    return code, out + err


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.") or
                p.name.startswith(f"..{out.name}.")]


def _rename(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new, 1))


def _edit_line(path: Path, line_no: int, new: str) -> None:
    lines = path.read_text().splitlines()
    lines[line_no - 1] = new
    path.write_text("\n".join(lines) + "\n")


def _case_missing_column(r, i):  # the header's 'timestamp' is called 'when'
    _rename(r, "timestamp", "when")
    return [], ["ratings.csv", "no time column", "'when'", "--time"]


def _case_ambiguous_column(r, i):
    df = pd.read_csv(r)
    df.insert(1, "user_id", df["user"])
    df.to_csv(r, index=False)
    return [], ["ratings.csv", "'user' and 'user_id' could each be the user column", "--user"]


def _case_unknown_column_option(r, i):
    return ["--user", "customer"], ["ratings.csv", "no column 'customer' (--user)", "'user'"]


def _case_bad_timestamp(r, i):
    _edit_line(r, 4, "bob,m1,4,yesterday")
    return [], ["ratings.csv", "column 'timestamp'", "line 4", "timestamp=yesterday"]


def _case_seconds_mixed_with_milliseconds(r, i):
    _edit_line(r, 4, f"bob,m1,4,{ts(2020, 1, 7) * 1000}")  # whole-column milliseconds are fine, a mix is not
    return [], ["ratings.csv", "column 'timestamp'", "mixes unix seconds (first row) with milliseconds", "line 4"]


def _case_empty_split(r, i):
    return ["--split-dates", "2020-01-01,2020-03-01,2020-04-01,2020-04-02"], \
        ["ratings.csv", "column 'timestamp'", "test split [2020-04-01, 2020-04-02)", "data spans"]


def _case_fractions_leave_a_split_empty(r, i):  # 10 events: the 98 % and 99 % cuts fall on the last one
    return ["--split-dates", None, "--split-fractions", "0.98,0.01,0.01"], \
        ["ratings.csv", "column 'timestamp'", "valid split", "--split-fractions 0.98,0.01,0.01"]


def _case_unknown_format(r, i):
    txt = r.with_suffix(".txt")
    r.rename(txt)
    return ["INTERACTIONS", txt], ["ratings.txt", "cannot tell the format", "--format"]


def _case_item_not_listed(r, i):
    _edit_line(r, 3, f"alice,m7,2,{ts(2020, 1, 6)}")
    return [], ["ratings.csv", "item 'm7' (column 'item') is not listed in", "movies.csv", "column 'title'",
                "line 3"]


def _case_empty_title(r, i):
    df = pd.read_csv(i)
    df.loc[df["item"] == "m4", "title"] = ""
    df.to_csv(i, index=False)
    return [], ["item 'm4'", "has an empty title", "movies.csv", "column 'title'", "line 6"]


def _case_no_titles(r, i):
    return ["--items", None], ["ratings.csv", "no titles", "--items", "--title"]


def _case_items_listed_twice(r, i):
    i.write_text(i.read_text() + "m3,Gamma again (1992),g9\n")
    return [], ["movies.csv", "item 'm3' (column 'item') is listed twice", "line 4", "line 8"]


def _case_duplicate_event(r, i):
    _edit_line(r, 8, f"bob,m5,1,{ts(2020, 4, 15)}")
    _edit_line(r, 9, f"bob,m5,3,{ts(2020, 4, 15)}")
    return [], ["ratings.csv", "duplicate event", "'user', 'item', 'timestamp'", "line 8: user=bob", "again at line 9"]


def _case_non_numeric_rating(r, i):
    _edit_line(r, 5, f"alice,m2,five,{ts(2020, 3, 2)}")
    return [], ["ratings.csv", "column 'rating' must be a number", "line 5", "rating=five"]


def _case_empty_user(r, i):
    _edit_line(r, 2, f",m3,5,{ts(2020, 1, 5)}")
    return [], ["ratings.csv", "column 'user' is empty", "line 2"]


def _case_threshold_with_label(r, i):
    return ["--label", "rating", "--positive-threshold", "4"], ["--positive-threshold", "--label"]


def _case_both_split_options(r, i):
    return ["--split-fractions", "0.8,0.1,0.1"], ["either --split-dates or --split-fractions"]


def _case_bad_split_date(r, i):
    return ["--split-dates", "2020-01-01,2020-13-01,2020-04-01,2020-05-01"], ["--split-dates", "'2020-13-01'"]


def _case_missing_file(r, i):
    r.unlink()
    return [], ["ratings.csv: no such file"]


def _case_corrupt_parquet(r, i):
    bad = r.with_suffix(".parquet")
    bad.write_bytes(b"PAR1" + b"\x00" * 100)
    return ["INTERACTIONS", bad], ["ratings.parquet", "cannot read as parquet"]


def _case_not_utf8(r, i):
    i.write_bytes(i.read_text().encode("iso-8859-1"))  # 'Épsilon' as one Latin-1 byte
    return [], ["movies.csv", "not UTF-8", "--encoding latin-1"]


def _case_unknown_encoding(r, i):
    return ["--encoding", "klingon"], ["--encoding klingon: unknown encoding"]


def _case_unknown_duplicates_policy(r, i):
    return ["--duplicates", "merge"], ["--duplicates merge: choose from error, drop, keep-last"]


def _case_negatives_with_a_rating_column(r, i):
    return ["--negatives", "2", "--rating", "rating"], ["--negatives makes every event a positive", "--rating"]


def _case_zero_negatives(r, i):
    return ["--negatives", "0"], ["--negatives"]


def _case_no_room_for_negatives(r, i):
    # alice touches m1, m2, m3 and m5 of the 5 items of the window: one left for 2 negatives.
    return ["--negatives", "2"], ["--negatives 2: user 'alice' interacted with 4 of the 5 items", "leaves 1",
                                  "lower --negatives"]


BAD_CASES = {name[len("_case_"):]: f for name, f in dict(globals()).items() if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    ratings, items = write_events(tmp_path / "in")
    extra, expected = BAD_CASES[case](ratings, items)
    args = {"INTERACTIONS": ratings, "--items": items, "--out": tmp_path / "out", "--split-dates": DATES}
    args.update(zip(extra[::2], extra[1::2]))  # a case adds options, or drops one with None
    argv = ["data", "import-interactions", args.pop("INTERACTIONS")]
    for key, value in args.items():
        if value is not None:
            argv += [key, value]
    code, output = cli(monkeypatch, capsys, *argv)
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert code == 1, output
    assert 1 <= len(lines) <= 3 and "Traceback" not in output, output
    for part in expected:
        assert part in output, (part, output)
    assert_nothing_written(tmp_path / "out")


def test_bad_input_through_a_real_process(tmp_path):
    ratings, items = write_events(tmp_path / "in")
    _edit_line(ratings, 5, f"alice,m2,five,{ts(2020, 3, 2)}")
    out = tmp_path / "out"
    done = run_cli("data", "import-interactions", ratings, "--items", items, "--out", out, "--split-dates", DATES,
                   timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ratings.csv: column 'rating' must be a number at line 5" in lines[0]
    assert_nothing_written(out)


def test_cli_imports_and_refuses_to_overwrite(tmp_path, monkeypatch, capsys):
    ratings, items = write_events(tmp_path / "in")
    out = tmp_path / "out"
    base = ["data", "import-interactions", ratings, "--items", items, "--out", out, "--split-dates", DATES,
            "--rating", "rating", "--positive-threshold", "4.5", "--domain", "movies"]
    code, output = cli(monkeypatch, capsys, *base)
    assert code == 0 and "valid_small" in output, output
    assert load_dataset(out).meta["source"]["label"] == "rating >= 4.5"
    assert sorted(p.name for p in out.iterdir()) == ["histories.parquet", "items.parquet", "meta.json", "test.parquet",
                                                     "train.parquet", "users.parquet", "valid.parquet",
                                                     "valid_small.parquet"]
    code, output = cli(monkeypatch, capsys, *base)
    assert code == 1 and "output folder exists and is not empty" in output
    code, output = cli(monkeypatch, capsys, *base, "--overwrite")
    assert code == 0, output
