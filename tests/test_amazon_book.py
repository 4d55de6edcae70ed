"""Amazon-Book (2018) processing: every protocol rule of DESIGN sec. 7 on a small hand-made fixture.

The fixture is written into tmp_path in the real format (gzipped JSON lines), never committed.
Every review gets a unique timestamp, so an output row's timestamp names its raw review.
"""

from __future__ import annotations

import gzip
import json
import random
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from cora.data.amazon import prepare_amazon_book
from cora.data.store import load_dataset

from helpers import run_cli

# ----------------------------------------------------------------------------- fixture
GRID_USERS = [f"g{k:02d}" for k in range(1, 23)]  # 22 users x 22 items, every pair rated once
GRID_ITEMS = [f"b{k:02d}" for k in range(1, 23)]
DECEMBER_ITEMS = {"b20", "b21"}  # rated in December by even-numbered users, earlier by the others
USER_INDEX = {**{u: k for k, u in enumerate(GRID_USERS, 1)},
              "lo20": 30, "lo_years": 31, "lo_missing": 32, "hi21": 33, "ufall": 34, "dec_only": 35,
              "lo_a": 36, "lo_b": 37}
ITEM_INDEX = {**{i: k for k, i in enumerate(GRID_ITEMS, 1)},
              "x20": 30, "x21": 31, "xfall": 32, "xlo": 33, "xdec": 34, "nometa": 35, "blank": 36, "junk": 37}


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc).timestamp())


@dataclass
class AmazonFixture:
    reviews: Path
    meta: Path
    records: list[dict] = field(default_factory=list)  # every review record written (incl. bad ones)

    def by_ts(self) -> dict[int, dict]:
        return {r["unixReviewTime"]: r for r in self.records if r.get("unixReviewTime") is not None}


def _review(user: str, item: str, *, month: int | None = None, day: int | None = None, year: int = 2017,
            rating: float | None = None, ts: int | None = None) -> dict:
    u, i = USER_INDEX[user], ITEM_INDEX[item]
    if ts is None:
        if month is None:
            december = item == "xdec" or (item in DECEMBER_ITEMS and u % 2 == 0)
            month = 12 if december else 1 + (u + i) % 11
        day = day or 1 + (u + i) % 28
        ts = utc(year, month, day) + u * 1000 + i * 10  # unique second for each (user, item)
    if rating is None:
        rating = 3.0 if (u * i) % 11 == 0 else (5.0 if (u + 2 * i) % 3 else 4.0)
    return {"overall": rating, "verified": True, "reviewTime": "01 1, 2017", "reviewerID": user, "asin": item,
            "style": {"Format:": " Paperback"}, "reviewerName": "A Reader", "reviewText": "Fine.",
            "summary": "Stars", "unixReviewTime": ts}


def _reviews() -> list[dict]:
    rows = [_review(u, i) for u in GRID_USERS for i in GRID_ITEMS]
    rows.append(_review("g01", "b20", month=12, day=30))  # a repeated review, also makes December odd
    rows += [_review("lo20", i) for i in GRID_ITEMS[:20]]  # exactly 20 -> dropped
    rows += [_review("lo_years", i) for i in GRID_ITEMS[:20]]  # 20 in 2017 + 2 outside -> dropped
    rows.append(_review("lo_years", "b21", ts=utc(2016, 12, 31, 23, 59, 59)))
    rows.append(_review("lo_years", "b22", ts=utc(2018, 1, 1)))
    rows.append(_review("g01", "b01", ts=utc(2016, 12, 31, 23, 59, 58)))
    rows.append(_review("g02", "b02", ts=utc(2018, 1, 1, 0, 0, 1)))
    rows += [_review("lo_missing", i) for i in GRID_ITEMS[:20]]  # 20 valid + 2 with no rating -> dropped
    no_overall = _review("lo_missing", "b21")
    del no_overall["overall"]
    rows += [no_overall, {**_review("lo_missing", "b22"), "overall": None}]
    no_user = _review("g03", "b01", day=28, month=6)
    del no_user["reviewerID"]
    rows.append(no_user)
    rows += [_review("hi21", i) for i in GRID_ITEMS[:21]]  # exactly 21 -> kept
    rows += [_review("ufall", i) for i in GRID_ITEMS[:19]] + [_review("ufall", "x20"), _review("ufall", "xlo")]
    rows += [_review("dec_only", i, month=12) for i in GRID_ITEMS[:21]]  # never in train -> cold
    rows += [_review(u, "x20") for u in GRID_USERS[:19]]  # 19 + ufall = 20 -> dropped
    rows += [_review(u, "x21") for u in GRID_USERS[:21]]  # 21 -> kept
    rows += [_review(u, "xfall") for u in GRID_USERS[:19]] + [_review("lo_a", "xfall"), _review("lo_b", "xfall")]
    rows += [_review(u, "xdec") for u in GRID_USERS[:21]]  # only in December -> cold item
    rows += [_review(u, "nometa") for u in GRID_USERS[:21]]  # asin absent from meta -> dropped
    rows += [_review(u, "blank") for u in GRID_USERS[:21]]  # empty title '' -> kept
    rows += [_review(u, "junk") for u in GRID_USERS[:21]]  # last meta title is JS junk -> earlier one
    random.Random(0).shuffle(rows)  # file order is not time order
    return rows


def _meta() -> list[dict]:
    def rec(asin: str | None, **kw) -> dict:
        base = {"category": ["Books"], "tech1": "", "description": ["A book."], "fit": "", "also_buy": [],
                "brand": "Someone", "feature": [], "rank": "1 in Books (", "also_view": [], "main_cat": "Books",
                "similar_item": "", "date": "", "price": "$9.99", "imageURL": [], "imageURLHighRes": []}
        if asin is not None:
            base["asin"] = asin
        return {**base, **kw}

    items = [i for i in ITEM_INDEX if i not in ("nometa", "blank", "junk", "b05", "b22")]
    first = [rec("b05", title="Old edition of b05"), rec("b22", title="Book b22"),
             rec("junk", title="Junk ok title"), rec(None, title="A record without asin")]
    middle = [rec(i, title=f"Book {i}") for i in items] + [rec("blank", title=""), rec("unreviewed", title="Never")]
    no_title = rec("b22")
    last = [rec("b05", title="Book b05"), no_title, rec("junk", title="var t = new Date().getTime();")]
    return first + middle + last


def write_jsonl_gz(path: Path, records: list[dict], blank_line_at: int | None = None) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for k, r in enumerate(records):
            if k == blank_line_at:
                f.write("\n")  # a blank line is tolerated
            f.write(json.dumps(r) + "\n")
    return path


def make_amazon_fixture(folder: Path) -> AmazonFixture:
    folder.mkdir(parents=True, exist_ok=True)
    records = _reviews()
    reviews = write_jsonl_gz(folder / "Books_5.json.gz", records, blank_line_at=7)
    meta = write_jsonl_gz(folder / "meta_Books.json.gz", _meta())
    return AmazonFixture(reviews=reviews, meta=meta, records=records)


# ----------------------------------------------------------------------------- prepared once
@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("amazon")
    fx = make_amazon_fixture(root / "raw")
    meta = prepare_amazon_book(fx.reviews, fx.meta, root / "out")
    ds = load_dataset(root / "out")
    splits = {s: ds.split(s) for s in ("train", "valid", "valid_small", "test")}
    raw = fx.by_ts()
    for s in ("train", "valid", "test"):  # name each output row by its raw review
        splits[s]["user"] = splits[s]["timestamp"].map(lambda t: raw[t]["reviewerID"])
        splits[s]["asin"] = splits[s]["timestamp"].map(lambda t: raw[t]["asin"])
        splits[s]["rating"] = splits[s]["timestamp"].map(lambda t: raw[t]["overall"])
        splits[s]["split"] = s
    return fx, meta, splits


def _all(splits) -> pd.DataFrame:
    return pd.concat([splits[s] for s in ("train", "valid", "test")], ignore_index=True)


def _raw_2017(fx: AmazonFixture, key: str, value: str) -> int:
    return sum(1 for r in fx.records if r.get(key) == value and utc(2017, 1, 1) <= r["unixReviewTime"] < utc(2018, 1, 1)
               and r.get("overall") is not None and r.get("reviewerID") is not None)


def test_year_filter_drops_2016_and_2018(prepared):
    fx, _, splits = prepared
    rows = _all(splits)
    assert rows["timestamp"].between(utc(2017, 1, 1), utc(2018, 1, 1) - 1).all()
    assert "lo_years" not in set(rows["user"])  # 20 ratings in 2017, 22 in all years
    outside = {r["unixReviewTime"] for r in fx.records
               if not utc(2017, 1, 1) <= r["unixReviewTime"] < utc(2018, 1, 1)}
    assert len(outside) == 4 and not outside & set(rows["timestamp"])


def test_user_filter_keeps_more_than_20(prepared):
    fx, _, splits = prepared
    users = _all(splits)["user"].value_counts()
    assert _raw_2017(fx, "reviewerID", "lo20") == 20 and "lo20" not in users
    assert _raw_2017(fx, "reviewerID", "hi21") == 21 and users["hi21"] == 21
    assert "lo_missing" not in users  # its two rating-less reviews must not count
    assert not {"lo_a", "lo_b"} & set(users.index)


def test_filters_are_one_pass_on_unfiltered_counts(prepared):
    fx, _, splits = prepared
    rows = _all(splits)
    items, users = rows["asin"].value_counts(), rows["user"].value_counts()
    assert _raw_2017(fx, "asin", "x20") == 20 and "x20" not in items
    assert _raw_2017(fx, "asin", "x21") == 21 and items["x21"] == 21
    # xfall has 21 raters, two of whom the user filter drops: it stays, with 19 rows.
    assert _raw_2017(fx, "asin", "xfall") == 21 and items["xfall"] == 19
    # ufall has 21 ratings, two on items the item filter drops: he stays, with 19 rows.
    assert _raw_2017(fx, "reviewerID", "ufall") == 21 and users["ufall"] == 19
    assert "xlo" not in items


def test_label_is_rating_5(prepared):
    _, _, splits = prepared
    rows = _all(splits)
    assert (rows["label"] == (rows["rating"] >= 5).astype(int)).all()
    assert set(rows.loc[rows["rating"] == 4.0, "label"]) == {0}
    assert set(rows.loc[rows["rating"] == 5.0, "label"]) == {1}
    assert set(rows.loc[rows["rating"] == 3.0, "label"]) == {0}


def test_train_is_jan_to_nov_and_december_is_cut_in_half_by_time(prepared):
    _, _, splits = prepared
    month = lambda df: pd.to_datetime(df["timestamp"], unit="s", utc=True).dt.month  # noqa: E731
    assert month(splits["train"]).between(1, 11).all()
    assert (month(splits["valid"]) == 12).all() and (month(splits["test"]) == 12).all()
    n = len(splits["valid"]) + len(splits["test"])
    assert n % 2 == 1, "the fixture has an odd December so the cut rule is visible"
    assert len(splits["valid"]) == n // 2 and len(splits["test"]) == n - n // 2
    assert splits["valid"]["timestamp"].max() < splits["test"]["timestamp"].min()


def test_meta_duplicates_keep_the_last_record(prepared):
    _, _, splits = prepared
    rows = _all(splits)
    titles = rows.groupby("asin")["title"].agg(set)
    assert titles["b05"] == {"Book b05"}
    assert "b22" not in titles  # its last record has no title: missing field -> rows dropped
    assert titles["junk"] == {"Junk ok title"}  # a getTime title is discarded before de-duplication
    assert titles["blank"] == {""}  # an empty title is not a missing one (as in the reference)
    assert not any("Old edition" in t for h in rows["his_title"] for t in h)


def test_rows_with_missing_fields_are_dropped(prepared):
    _, meta, splits = prepared
    rows = _all(splits)
    assert "nometa" not in set(rows["asin"])  # no meta record: no title
    assert "Never" not in set(rows["title"])  # meta record without reviews
    assert meta["source"]["reviews"]["dropped_missing"] == 3  # 2 without rating, 1 without reviewerID
    assert meta["source"]["meta"]["without_asin"] == 1
    assert rows["title"].notna().all()


def test_histories_are_earlier_positives_over_all_splits(prepared):
    _, _, splits = prepared
    rows = _all(splits)
    iid_of = dict(zip(rows["asin"], rows["iid"]))
    title_of = dict(zip(rows["asin"], rows["title"]))
    for user, group in rows.sort_values("timestamp").groupby("user"):
        his, his_title = [0], [""]
        for r in group.itertuples():
            assert list(r.his) == his, (user, r.timestamp)
            assert list(r.his_title) == his_title
            if r.label:
                his.append(iid_of[r.asin])
                his_title.append(title_of[r.asin])
    # histories cross split borders: a test row sees positives from valid and train
    valid_pos = splits["valid"][splits["valid"]["label"] == 1]
    later = splits["test"].merge(valid_pos[["uid", "iid", "timestamp"]], on="uid", suffixes=("", "_v"))
    later = later[later["timestamp_v"] < later["timestamp"]]
    assert len(later) and all(v in h for h, v in zip(later["his"], later["iid_v"]))


def test_ids_are_reindexed_by_first_appearance(prepared):
    _, meta, splits = prepared
    rows = _all(splits)
    n_users, n_items = rows["uid"].nunique(), rows["iid"].nunique()
    assert sorted(rows["uid"].unique()) == list(range(1, n_users + 1))
    assert sorted(rows["iid"].unique()) == list(range(1, n_items + 1))
    assert meta["n_users"] == n_users + 1 and meta["n_items"] == n_items + 1
    order = rows.sort_values(["uid", "timestamp"])
    assert list(pd.unique(order["iid"])) == list(range(1, n_items + 1))
    assert rows.groupby("uid")["user"].nunique().eq(1).all() and rows.groupby("user")["uid"].nunique().eq(1).all()
    assert all(h[0] == 0 and all(0 < x <= n_items for x in h[1:]) for h in rows["his"])


def test_not_cold_is_user_and_item_seen_in_train(prepared):
    _, _, splits = prepared
    train_u, train_i = set(splits["train"]["uid"]), set(splits["train"]["iid"])
    assert (splits["train"]["not_cold"] == 1).all()
    for s in ("valid", "test"):
        df = splits[s]
        expected = (df["uid"].isin(train_u) & df["iid"].isin(train_i)).astype(int)
        assert (df["not_cold"] == expected).all()
    rows = _all(splits)
    assert set(rows.loc[rows["user"] == "dec_only", "not_cold"]) == {0}
    assert set(rows.loc[rows["asin"] == "xdec", "not_cold"]) == {0}
    assert rows.loc[rows["split"] != "train", "not_cold"].sum() > 0


def test_valid_small_is_a_quarter_sample_of_valid(prepared):
    _, _, splits = prepared
    valid = splits["valid"].drop(columns=["user", "asin", "rating", "split"])
    expected = valid.sample(frac=0.25, random_state=2023).reset_index(drop=True)
    small = splits["valid_small"]
    assert len(small) == round(0.25 * len(valid))
    pd.testing.assert_frame_equal(small[["uid", "iid", "timestamp", "label"]],
                                  expected[["uid", "iid", "timestamp", "label"]])


def test_uncompressed_input_gives_the_same_dataset(prepared, tmp_path):
    fx, meta, _ = prepared
    plain = tmp_path / "Books_5.json"
    plain.write_bytes(gzip.decompress(fx.reviews.read_bytes()))
    again = prepare_amazon_book(plain, fx.meta, tmp_path / "out")
    assert again["splits"] == meta["splits"]


# ----------------------------------------------------------------------------- CLI and errors
def prepare_cli(*args: str) -> subprocess.CompletedProcess:
    return run_cli("data", "prepare", "amazon-book", *args, timeout=120)


def test_cli_prepares_the_dataset(tmp_path):
    fx = make_amazon_fixture(tmp_path / "raw")
    res = prepare_cli("--reviews", str(fx.reviews), "--meta", str(fx.meta), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    assert load_dataset(tmp_path / "out").name == "amazon-book"
    assert load_dataset(tmp_path / "out").domain == "books"


def _assert_one_line_error(res: subprocess.CompletedProcess, out: Path, *needles: str) -> None:
    assert res.returncode != 0
    err = res.stderr.strip()
    assert "\n" not in err, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*")), "a temporary folder was left behind"


@pytest.fixture
def raw_files(tmp_path):
    return make_amazon_fixture(tmp_path / "raw")


def test_error_malformed_json_line_names_file_and_line(raw_files, tmp_path):
    lines = gzip.decompress(raw_files.reviews.read_bytes()).splitlines(keepends=True)
    lines[2] = b'{"reviewerID": "x", "asin": \n'  # line 3
    raw_files.reviews.write_bytes(gzip.compress(b"".join(lines)))
    res = prepare_cli("--reviews", str(raw_files.reviews), "--meta", str(raw_files.meta), "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "Books_5.json.gz", "line 3", "not valid JSON")


def test_error_line_that_is_not_an_object(raw_files, tmp_path):
    meta = write_jsonl_gz(tmp_path / "meta_Books.json.gz", [{"asin": "b01", "title": "t"}, ["not", "an", "object"]])
    res = prepare_cli("--reviews", str(raw_files.reviews), "--meta", str(meta), "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "meta_Books.json.gz", "line 2", "not a JSON object")


def test_error_required_field_absent(raw_files, tmp_path):
    records = [{k: v for k, v in r.items() if k != "overall"} for r in raw_files.records]
    reviews = write_jsonl_gz(tmp_path / "Books_5.json.gz", records)
    res = prepare_cli("--reviews", str(reviews), "--meta", str(raw_files.meta), "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "Books_5.json.gz", "'overall'")


def test_error_field_of_the_wrong_type(raw_files, tmp_path):
    records = list(raw_files.records)
    records[4] = {**records[4], "overall": "five"}
    reviews = write_jsonl_gz(tmp_path / "Books_5.json.gz", records)
    res = prepare_cli("--reviews", str(reviews), "--meta", str(raw_files.meta), "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "Books_5.json.gz", "line 5", "'overall'")


def test_error_truncated_gzip(raw_files, tmp_path):
    data = raw_files.reviews.read_bytes()
    raw_files.reviews.write_bytes(data[: len(data) // 2])
    res = prepare_cli("--reviews", str(raw_files.reviews), "--meta", str(raw_files.meta), "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "Books_5.json.gz", "truncated")


def test_error_not_gzip(raw_files, tmp_path):
    raw_files.meta.write_bytes(b"<html>404 Not Found</html>\n")
    res = prepare_cli("--reviews", str(raw_files.reviews), "--meta", str(raw_files.meta), "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "meta_Books.json.gz", "not a gzip file")


def test_error_missing_file(raw_files, tmp_path):
    res = prepare_cli("--reviews", str(tmp_path / "nope.json.gz"), "--meta", str(raw_files.meta),
                  "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "nope.json.gz", "no such file")


def test_error_output_exists_is_left_untouched(raw_files, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = prepare_cli("--reviews", str(raw_files.reviews), "--meta", str(raw_files.meta), "--out", str(out))
    assert res.returncode != 0 and "not empty" in res.stderr and "\n" not in res.stderr.strip()
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_error_missing_meta_is_reported_before_reading_reviews(raw_files, tmp_path):
    res = prepare_cli("--reviews", str(raw_files.reviews), "--meta", str(tmp_path / "meta_nope.json.gz"),
                  "--out", str(tmp_path / "out"))
    _assert_one_line_error(res, tmp_path / "out", "meta_nope.json.gz", "no such file")
