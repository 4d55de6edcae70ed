"""`cora data import-interactions` on the logs real systems keep: positives only (sampled
negatives, --negatives), repeated events (--duplicates), millisecond and date-only times, Latin-1.

Small hand-made logs in tmp_path; the leakage check also runs on the real ML-1M ratings of
shared/data/raw-ml-1m-partial read as a click log.
"""

from __future__ import annotations

import calendar
import gzip
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cora.data.interactions import import_interactions
from cora.data.store import load_dataset

from helpers import main_in_process

SPLITS = ("train", "valid", "test")


def ts(year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second))


def write_csv(path: Path, header: str, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((header + "\n" + "\n".join(lines) + "\n").encode(encoding))
    return path


def titles_csv(folder: Path, n_items: int = 30, encoding: str = "utf-8") -> Path:
    return write_csv(folder / "items.csv", "item,title", [f"i{k},Title {k} (19{k:02d})" for k in range(n_items)],
                     encoding)


def all_rows(out: Path) -> pd.DataFrame:
    ds = load_dataset(out)
    return pd.concat([ds.split(s).assign(split=s) for s in SPLITS], ignore_index=True)


def id_maps(out: Path) -> tuple[dict, dict]:
    users = pd.read_parquet(out / "users.parquet").set_index("uid")["user"].to_dict()
    items = pd.read_parquet(out / "items.parquet").set_index("iid")["item"].to_dict()
    return users, items


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    code, out, err = main_in_process(monkeypatch, capsys, *args, columns=250)
    return code, out + err


# ----------------------------------------------------------------------------- --negatives
def click_log(folder: Path, n_users: int = 12, n_items: int = 30, per_user: int = 8, seed: int = 0) -> Path:
    """A positives-only log (user,item,timestamp): each user clicks ``per_user`` distinct items."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(n_users):
        for k, item in enumerate(rng.choice(n_items, size=per_user, replace=False)):
            lines.append(f"u{u},i{item},{ts(2020, 1 + k % 6, 1 + u, 10, k)}")
    return write_csv(folder / "clicks.csv", "user,item,timestamp", lines)


def test_positives_only_log_is_refused_without_negatives(tmp_path, monkeypatch, capsys):
    clicks, items = click_log(tmp_path / "in"), titles_csv(tmp_path / "in")
    code, output = cli(monkeypatch, capsys, "data", "import-interactions", clicks, "--items", items,
                       "--out", tmp_path / "out")
    assert code == 1 and "no rating or label column" in output and "--negatives N" in output, output


def test_negatives_keep_the_ratio_in_every_split_and_never_leak(tmp_path, monkeypatch, capsys):
    clicks, items = click_log(tmp_path / "in"), titles_csv(tmp_path / "in")
    out = tmp_path / "out"
    code, output = cli(monkeypatch, capsys, "data", "import-interactions", clicks, "--items", items, "--out", out,
                       "--negatives", "3", "--split-fractions", "0.6,0.2,0.2")
    assert code == 0, output
    assert "negatives: 3 per positive sampled (NCF, He et al. 2017; seed 2023)" in output
    r = all_rows(out)
    for split in SPLITS:
        labels = r.loc[r["split"] == split, "label"]
        assert (labels == 0).sum() == 3 * (labels == 1).sum() > 0, split
    # No sampled negative is an item the user clicked, in any split (test positives included).
    users, items_of = id_maps(out)
    raw = pd.read_csv(clicks, dtype=str)
    clicked = raw.groupby("user")["item"].apply(set).to_dict()
    neg = r[r["label"] == 0]
    leaks = [(users[u], items_of[i]) for u, i in zip(neg["uid"], neg["iid"]) if items_of[i] in clicked[users[u]]]
    assert leaks == []
    test_pos = {(u, i) for u, i in zip(r.loc[(r["split"] == "test") & (r["label"] == 1), "uid"],
                                       r.loc[(r["split"] == "test") & (r["label"] == 1), "iid"])}
    assert not test_pos & set(zip(neg["uid"], neg["iid"]))
    # Each positive's 3 negatives are distinct, come just before it, with its time and history.
    for split in SPLITS:
        rows = r[r["split"] == split].reset_index(drop=True)
        for k in np.flatnonzero(rows["label"].to_numpy() == 1):
            group = rows.iloc[k - 3:k + 1]
            assert group["label"].tolist() == [0, 0, 0, 1] and group["uid"].nunique() == 1
            assert group["timestamp"].nunique() == 1 and group["iid"].nunique() == 4
            assert len({tuple(h) for h in group["his"]}) == 1
    # Histories hold positives only.
    positives = set(zip(r.loc[r["label"] == 1, "uid"], r.loc[r["label"] == 1, "iid"]))
    assert all((u, i) in positives for u, h in zip(r["uid"], r["his"]) for i in h[1:])
    meta = load_dataset(out).meta["source"]
    assert meta["label"] == "every event is a positive (--negatives)"
    assert meta["negatives"]["per_positive"] == 3 and meta["negatives"]["rows_added"] == 3 * len(raw)


def test_negatives_are_seeded(tmp_path):
    clicks, items = click_log(tmp_path / "in"), titles_csv(tmp_path / "in")
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        import_interactions(clicks, tmp_path / name, items=items, negatives=2, seed=seed)
        runs[name] = all_rows(tmp_path / name)[["uid", "iid", "label"]]
    assert runs["a"].equals(runs["b"]) and not runs["a"].equals(runs["c"])


def test_a_rating_column_is_ignored_with_negatives(tmp_path, monkeypatch, capsys):
    log = write_csv(tmp_path / "in" / "r.csv", "user,item,rating,timestamp",
                    [f"u{u},i{(k + 2 * u) % 12},{1 + k % 5},{ts(2020, 1 + k % 6, 1 + u)}" for u in range(6)
                     for k in range(6)])
    code, output = cli(monkeypatch, capsys, "data", "import-interactions", log, "--items", titles_csv(tmp_path / "in"),
                       "--out", tmp_path / "out", "--negatives", "1")
    assert code == 0 and "column 'rating' not used: with --negatives every event is a positive" in output, output
    assert (all_rows(tmp_path / "out")["label"] == 1).sum() == 36


@pytest.mark.slow
def test_real_ml1m_as_a_click_log_samples_no_positive_of_the_user(shared_data, tmp_path):
    """The first 60,000 ML-1M ratings read as clicks (every rating a positive): 1 negative per
    positive, none of them an item the user rated anywhere in the file."""
    text = gzip.decompress((shared_data / "raw-ml-1m-partial" / "ratings.dat.gz").read_bytes()).decode("latin-1")
    lines = [",".join(ln.split("::")[:2] + ln.split("::")[3:]) for ln in text.splitlines()[:60_000]]
    clicks = write_csv(tmp_path / "clicks.csv", "user,item,timestamp", lines)
    movies = [ln.split("::") for ln in (shared_data / "raw-ml-1m-partial" / "movies.dat").read_text("latin-1")
              .splitlines() if ln]
    items = tmp_path / "movies.csv"
    pd.DataFrame([(m[0], m[1]) for m in movies], columns=["item", "title"]).to_csv(items, index=False)
    meta = import_interactions(clicks, tmp_path / "out", items=items, negatives=1)
    r = all_rows(tmp_path / "out")
    for split in SPLITS:
        labels = r.loc[r["split"] == split, "label"]
        assert (labels == 0).sum() == (labels == 1).sum() > 1000, split
    users, items_of = id_maps(tmp_path / "out")
    rated = pd.read_csv(clicks, dtype=str).groupby("user")["item"].apply(set).to_dict()
    neg = r[r["label"] == 0]
    assert not any(items_of[i] in rated[users[u]] for u, i in zip(neg["uid"], neg["iid"]))
    assert meta["source"]["negatives"]["rows_added"] == 60_000


# ----------------------------------------------------------------------------- --duplicates, re-interactions
DUP_LOG = ["a,i1,5,{t1}", "a,i2,2,{t2}", "a,i2,5,{t2}", "a,i3,4,{t3}", "b,i1,4,{t1}", "b,i1,1,{t3}",
           "b,i2,5,{t2}", "b,i3,5,{t3}", "c,i1,4,{t1}", "c,i3,4,{t3}"]


def dup_log(folder: Path) -> tuple[Path, Path]:
    t = {"t1": ts(2020, 1, 5), "t2": ts(2020, 2, 5), "t3": ts(2020, 3, 5)}
    log = write_csv(folder / "ratings.csv", "user,item,rating,timestamp", [ln.format(**t) for ln in DUP_LOG])
    return log, titles_csv(folder, 5)


@pytest.mark.parametrize("policy, kept_label", [("drop", 0), ("keep-last", 1)])
def test_duplicates_policy_keeps_one_event_and_says_so(tmp_path, monkeypatch, capsys, policy, kept_label):
    log, items = dup_log(tmp_path / "in")
    code, output = cli(monkeypatch, capsys, "data", "import-interactions", log, "--items", items,
                       "--out", tmp_path / "out", "--split-fractions", "0.3,0.3,0.4", "--duplicates", policy)
    assert code == 0, output
    r = all_rows(tmp_path / "out")
    users, items_of = id_maps(tmp_path / "out")
    a_i2 = r[[(users[u], items_of[i]) == ("a", "i2") for u, i in zip(r["uid"], r["iid"])]]
    assert a_i2["label"].tolist() == [kept_label]  # line 3 (rating 2) first, line 4 (rating 5) last
    assert len(r) == len(DUP_LOG) - 1
    first_or_last = "first" if policy == "drop" else "last"
    assert (f"duplicates: 1 events removed (--duplicates {policy}: the {first_or_last} of each set of events with "
            "the same user, item and time kept); 1 of those sets disagreed on the label") in output
    # b rated i1 high in January and low in March: a re-interaction with both labels, both kept.
    assert ("re-interactions: 1 user-item pairs occur more than once (2 events), 1 of them with both labels; "
            "each event is its own row") in output
    meta = load_dataset(tmp_path / "out").meta["source"]
    assert meta["duplicates"] == {"policy": policy, "events_removed": 1, "sets_with_both_labels": 1}
    assert meta["reinteractions"] == {"pairs": 1, "events": 2, "pairs_with_both_labels": 1}


def test_duplicates_stop_the_import_by_default(tmp_path, monkeypatch, capsys):
    log, items = dup_log(tmp_path / "in")
    code, output = cli(monkeypatch, capsys, "data", "import-interactions", log, "--items", items,
                       "--out", tmp_path / "out", "--split-fractions", "0.3,0.3,0.4")
    assert code == 1 and "duplicate event" in output and "at line 3" in output and "again at line 4" in output
    assert "--duplicates drop|keep-last" in output and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- times and encodings
def test_millisecond_times_are_read_and_order_events_within_a_second(tmp_path, monkeypatch, capsys):
    base = ts(2020, 1, 5)
    # u1's two events share a second; the file lists the later one (by ms) first.
    lines = [f"u1,i1,5,{base * 1000 + 900}", f"u1,i2,5,{base * 1000 + 100}", f"u1,i3,5,{ts(2020, 2, 1) * 1000}",
             f"u1,i4,1,{ts(2020, 3, 1) * 1000}", f"u2,i1,4,{ts(2020, 1, 9) * 1000}", f"u2,i3,5,{ts(2020, 2, 9) * 1000}",
             f"u2,i2,5,{ts(2020, 3, 9) * 1000}"]
    log = write_csv(tmp_path / "in" / "ratings.csv", "user,item,rating,ts", lines)
    code, output = cli(monkeypatch, capsys, "data", "import-interactions", log, "--items", titles_csv(tmp_path / "in"),
                       "--out", tmp_path / "out", "--split-dates", "2020-01-01,2020-02-01,2020-03-01,2020-04-01")
    assert code == 0, output
    assert "times: unix milliseconds (column 'ts'), stored as seconds" in output
    r = all_rows(tmp_path / "out")
    _, items_of = id_maps(tmp_path / "out")
    u1 = r[r["uid"] == 1]
    assert [items_of[i] for i in u1["iid"]] == ["i2", "i1", "i3", "i4"]  # ms order, not file order
    assert u1["timestamp"].tolist()[:2] == [base, base]
    assert [items_of[i] for i in u1["his"].iloc[2][1:]] == ["i2", "i1"]
    assert load_dataset(tmp_path / "out").meta["source"]["times"]["unit"] == "unix milliseconds"


def test_date_only_times_report_the_ties_they_leave(tmp_path, monkeypatch, capsys):
    lines = [f"u{u},i{k},{4 + (u + k) % 2},2020-0{1 + k % 3}-0{1 + u}" for u in range(4) for k in range(6)]
    log = write_csv(tmp_path / "in" / "ratings.csv", "user,item,rating,date", lines)
    code, output = cli(monkeypatch, capsys, "data", "import-interactions", log, "--items", titles_csv(tmp_path / "in"),
                       "--out", tmp_path / "out", "--split-dates", "2020-01-01,2020-02-01,2020-03-01,2020-04-01")
    assert code == 0, output
    times = load_dataset(tmp_path / "out").meta["source"]["times"]
    # Each user has 2 events a day (items k and k + 3 share their month and day): all 24 tie.
    assert times["date_only"] is True and times["events_sharing_user_time"] == 24
    # u0's days are the 1st: 2 events on Feb 1 and 2 on Mar 1, valid's and test's first days.
    assert times["events_at_cuts"] == {"valid_start": 2, "test_start": 2}
    assert ("times: dates without a time of day (column 'date'): 24 events share their day with another event of "
            "their user") in output
    assert "2 events on valid's first day (2020-02-01) and 2 on test's (2020-03-01)" in output


def test_times_of_day_are_not_reported_as_dates(tmp_path):
    log = write_csv(tmp_path / "in" / "ratings.csv", "user,item,rating,timestamp",
                    [f"u{u},i{k},5,{ts(2020, 1 + k % 3, 1 + u, hour=k)}" for u in range(3) for k in range(6)])
    meta = import_interactions(log, tmp_path / "out", items=titles_csv(tmp_path / "in"),
                               split_dates="2020-01-01,2020-02-01,2020-03-01,2020-04-01")
    assert meta["source"]["times"]["date_only"] is False
    assert meta["source"]["times"]["unit"] == "unix seconds"


def test_latin1_files_with_encoding(tmp_path, monkeypatch, capsys):
    log = write_csv(tmp_path / "in" / "ratings.csv", "user,item,rating,timestamp",
                    [f"José,i{k},5,{ts(2020, 1 + k % 3, 3)}" for k in range(6)] +
                    [f"Zoë,i{k},4,{ts(2020, 1 + k % 3, 4)}" for k in range(6)], encoding="latin-1")
    items = write_csv(tmp_path / "in" / "items.csv", "item,title",
                      [f"i{k},Amélie {k} (2001)" for k in range(6)], encoding="latin-1")
    args = ["data", "import-interactions", log, "--items", items, "--out", tmp_path / "out",
            "--split-dates", "2020-01-01,2020-02-01,2020-03-01,2020-04-01"]
    code, output = cli(monkeypatch, capsys, *args)
    assert code == 1 and "not UTF-8 text" in output and "--encoding latin-1" in output
    code, output = cli(monkeypatch, capsys, *args, "--encoding", "latin-1")
    assert code == 0, output
    users, _ = id_maps(tmp_path / "out")
    assert sorted(users.values()) == ["José", "Zoë"]
    assert all_rows(tmp_path / "out")["title"].str.startswith("Amélie").all()
    assert load_dataset(tmp_path / "out").meta["source"]["encoding"] == "latin-1"
