"""ML-1M from the raw GroupLens files (cora.data.movielens), checked against CoLLM's own splits.

The real-data test runs on ``shared/data/raw-ml-1m-partial`` (every rating of users 1-2999) and
compares with the reference pickles in ``shared/data/collm-ml-1m.zip``. The small tests write
hand-made .dat files into tmp_path.
"""

from __future__ import annotations

import calendar
import io
import os
import subprocess
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from cora.data.movielens import prepare_movielens, sample_valid_small
from cora.data.store import load_dataset
from cora.errors import CoraError

from helpers import run_cli

SPLITS = ("train", "valid", "test")


def ts(year: int, month: int, day: int, hour: int = 12, minute: int = 0) -> int:
    """Unix time of a UTC date."""
    return calendar.timegm((year, month, day, hour, minute, 0))


# ----------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def reference(shared_data: Path) -> dict[str, pd.DataFrame]:
    """CoLLM's splits; the pickles are the project's own trusted test data."""
    with zipfile.ZipFile(shared_data / "collm-ml-1m.zip") as zf:
        return {s: pd.read_pickle(io.BytesIO(zf.read(f"ml-1m/{s}_ood2.pkl")))
                for s in (*SPLITS, "valid_small")}


@pytest.fixture(scope="module")
def built(shared_data: Path, tmp_path_factory) -> tuple[dict, dict[str, pd.DataFrame]]:
    out = tmp_path_factory.mktemp("ml1m") / "ml-1m"
    meta = prepare_movielens(shared_data / "raw-ml-1m-partial", out)
    ds = load_dataset(out)
    return meta, {s: ds.split(s) for s in (*SPLITS, "valid_small")}


def _signatures(splits: dict[str, pd.DataFrame]) -> dict[tuple, int]:
    """Each user's (timestamp, title) events: the key that matches users whose ids differ."""
    rows = pd.concat([splits[s][["uid", "timestamp", "title"]] for s in SPLITS])
    return {tuple(sorted(zip(g["timestamp"], g["title"]))): int(u) for u, g in rows.groupby("uid")}


@pytest.mark.slow
def test_partial_raw_reproduces_collm_users(built, reference):
    meta, ours = built
    ref_sig, our_sig = _signatures(reference), _signatures(ours)
    assert len(ref_sig) == 838 and sum(len(reference[s]) for s in SPLITS) == 51_623
    matched = set(ref_sig) & set(our_sig)
    # Data README: the partial ratings cover 460 of the 838 users, 31,942 of their 51,623 rows.
    assert len(matched) == 460 == len(our_sig)
    assert sum(len(sig) for sig in matched) == 31_942
    assert meta["users_seen"] == 460
    assert sum(meta["splits"][s]["rows"] for s in SPLITS) == 31_942

    # Users are re-indexed in raw-id order in both, so the id map is increasing.
    id_map = dict(sorted((our_sig[sig], ref_sig[sig]) for sig in matched))
    assert list(id_map.values()) == sorted(id_map.values())
    for s in SPLITS:
        ref = reference[s][reference[s]["uid"].isin(id_map.values())].sort_index()  # index = time order
        mine = ours[s]
        assert mine["uid"].map(id_map).tolist() == ref["uid"].tolist(), s
        for col in ("timestamp", "label", "title", "his_title"):
            assert [list(v) if col == "his_title" else v for v in mine[col]] == \
                [list(v) if col == "his_title" else v for v in ref[col]], (s, col)


@pytest.mark.slow
def test_partial_raw_internal_consistency(built):
    meta, ours = built
    rows = pd.concat([ours[s] for s in SPLITS], ignore_index=True)
    titles = dict(zip(rows["iid"], rows["title"]))
    assert len(set(titles.values())) == len(titles), "one id per title"
    assert sorted(titles) == list(range(1, len(titles) + 1))
    # his ids are re-indexed consistently with the target ids.
    for his, his_title in zip(rows["his"], rows["his_title"]):
        assert his[0] == 0 and his_title[0] == "" and [titles[i] for i in his[1:]] == list(his_title[1:])
    assert ours["train"]["not_cold"].eq(1).all()
    assert len(ours["valid_small"]) == round(len(ours["valid"]) / 2)
    assert meta["source"]["ratings_read"] == 487_650


def _full_raw(shared_data: Path) -> Path | None:
    """The complete GroupLens ml-1m.zip, if someone has put it beside the shared data."""
    env = os.environ.get("CORA_ML1M_RAW")
    candidates = [Path(env)] if env else [shared_data / "ml-1m.zip", shared_data / "raw-ml-1m"]
    return next((p for p in candidates if p.exists()), None)


@pytest.mark.slow
def test_full_raw_reproduces_collm_exactly(shared_data, reference, tmp_path):
    """With the complete ratings file every split must equal CoLLM's, ids and valid_small included."""
    raw = _full_raw(shared_data)
    if raw is None:
        pytest.skip("complete ML-1M not at hand (set CORA_ML1M_RAW or add shared/data/ml-1m.zip)")
    meta = prepare_movielens(raw, tmp_path / "full")
    assert [meta["splits"][s]["rows"] for s in SPLITS] == [33_891, 10_401, 7_331]
    ds = load_dataset(tmp_path / "full")
    for s in (*SPLITS, "valid_small"):
        mine, ref = ds.split(s), reference[s].reset_index(drop=True)
        for col in ("uid", "iid", "label", "timestamp", "title", "not_cold"):
            assert mine[col].tolist() == ref[col].tolist(), (s, col)
        for col in ("his", "his_title"):
            assert [list(v) for v in mine[col]] == [list(v) for v in ref[col]], (s, col)


def test_reference_valid_small_is_the_seeded_sample(reference):
    """The rule our valid_small follows reproduces CoLLM's file exactly (rows and index)."""
    expected = reference["valid_small"]
    got = sample_valid_small(reference["valid"])
    assert got.index.tolist() == expected.index.tolist()
    assert got["uid"].tolist() == expected["uid"].tolist() and got["iid"].tolist() == expected["iid"].tolist()


# ----------------------------------------------------------------------------- small hand-made files
MOVIES = [
    "1::Alpha (1990)::Drama",
    "2::Beta (1991)::Comedy",
    "3::Gamma (1992)::Drama",
    '4::"Great Performances" Delta (1998)::Musical',
    "5::Amélie (2001)::Comedy|Romance",
]

RATINGS = [
    f"1::3::5::{ts(2001, 7, 1)}",  # movie 3 is the first movie in the file
    f"1::1::2::{ts(2001, 8, 1)}",
    f"1::2::4::{ts(2002, 5, 1)}",
    f"1::4::5::{ts(2002, 5, 2)}",
    f"1::5::1::{ts(2002, 9, 15)}",
    f"2::1::4::{ts(2001, 7, 5)}",
    f"2::4::4::{ts(2002, 6, 1)}",  # tie: 4 is earlier in this user's lines ...
    f"2::3::5::{ts(2002, 6, 1)}",  # ... but 3 appeared first in the file, and CoLLM put it first
    f"2::5::5::{ts(2002, 10, 1)}",
    f"3::2::5::{ts(2000, 5, 1)}",  # before June 2001: dropped
    f"3::1::5::{ts(2003, 2, 1)}",  # February 2003: dropped
    f"3::9::5::{ts(2001, 7, 1)}",  # movie 9 is not in movies.dat: dropped by the join
]


def write_raw(folder: Path, ratings=RATINGS, movies=MOVIES, *, ratings_name="ratings.dat") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ratings_name).write_bytes(("\n".join(ratings) + "\n").encode("iso-8859-1"))
    (folder / "movies.dat").write_bytes(("\n".join(movies) + "\n").encode("iso-8859-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117\n")
    return folder


def rows_of(out: Path) -> pd.DataFrame:
    ds = load_dataset(out)
    return pd.concat([ds.split(s).assign(split=s) for s in SPLITS]).sort_values(["uid", "timestamp"], kind="stable")


def test_small_raw_follows_the_protocol(tmp_path):
    meta = prepare_movielens(write_raw(tmp_path / "raw"), tmp_path / "out")
    rows = rows_of(tmp_path / "out")
    got = list(zip(rows["uid"], rows["iid"], rows["label"], map(list, rows["his"]), rows["split"], rows["not_cold"]))
    # Items are numbered by first appearance in (user, time) order: raw 3,1,2,4,5 -> 1..5.
    assert got == [
        (1, 1, 1, [0], "train", 1),
        (1, 2, 0, [0, 1], "train", 1),
        (1, 3, 1, [0, 1], "valid", 0),
        (1, 4, 1, [0, 1, 3], "valid", 0),
        (1, 5, 0, [0, 1, 3, 4], "test", 0),
        (2, 2, 1, [0], "train", 1),
        (2, 1, 1, [0, 2], "valid", 1),
        (2, 4, 1, [0, 2, 1], "valid", 0),
        (2, 5, 1, [0, 2, 1, 4], "test", 0),
    ]
    assert list(rows["his_title"].iloc[-1]) == ["", "Alpha (1990)", "Gamma (1992)", '"Great Performances" Delta (1998)']
    assert rows["title"].iloc[4] == "Amélie (2001)"
    assert meta["splits"]["valid_small"]["rows"] == 2
    assert meta["source"]["ratings_without_movie"] == 1
    assert meta["n_users"] == 3 and meta["n_items"] == 6


def test_months_are_utc(tmp_path):
    extra = [
        f"4::1::5::{ts(2001, 6, 1, 0, 30)}",  # June in UTC (still May in America): train
        f"4::2::5::{ts(2002, 3, 31, 23, 30)}",  # March in UTC (April in Europe): train
        f"4::3::5::{ts(2001, 5, 31, 23, 30)}",  # May in UTC (June in Asia): dropped
        f"4::4::5::{ts(2003, 1, 31, 23, 59)}",  # last minute of the test window
    ]
    prepare_movielens(write_raw(tmp_path / "raw", RATINGS + extra), tmp_path / "out")
    rows = rows_of(tmp_path / "out")
    user4 = rows[rows["uid"] == rows["uid"].max()]
    assert user4["split"].tolist() == ["train", "train", "test"]
    assert user4["title"].tolist() == ["Alpha (1990)", "Beta (1991)", '"Great Performances" Delta (1998)']


def test_zip_nested_folder_and_gz(tmp_path):
    raw = write_raw(tmp_path / "raw")
    zpath = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ratings.dat", "movies.dat", "users.dat"):
            zf.write(raw / name, f"ml-1m/{name}")
        zf.writestr("__MACOSX/ml-1m/._ratings.dat", b"\x00\x05junk")
    meta = prepare_movielens(zpath, tmp_path / "from-zip")
    assert meta["source"]["ratings_file"].endswith("ml-1m.zip:ml-1m/ratings.dat")
    assert len(meta["source"]["sha256"]) == 64

    import gzip

    gz = write_raw(tmp_path / "gz")
    (gz / "ratings.dat.gz").write_bytes(gzip.compress((gz / "ratings.dat").read_bytes()))
    (gz / "ratings.dat").unlink()
    meta_gz = prepare_movielens(gz, tmp_path / "from-gz")
    assert meta_gz["splits"] == meta["splits"]
    assert meta_gz["source"]["ratings_sha256"] == meta["source"]["ratings_sha256"]


# ----------------------------------------------------------------------------- errors
def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize("bad_line, message", [
    (f"2::3::5::{ts(2002, 6, 1)}::extra", "ratings.dat line 8: expected 4 fields separated by '::', found 5"),
    ("2::3::5", "ratings.dat line 8: expected 4 fields separated by '::', found 3"),
    (f"2::3::five::{ts(2002, 6, 1)}", "ratings.dat line 8: field 'rating' must be a number, found 'five'"),
    (f"2::3.5::5::{ts(2002, 6, 1)}", "ratings.dat line 8: field 'iid' must be an integer, found '3.5'"),
])
def test_bad_ratings_line(tmp_path, bad_line, message):
    ratings = list(RATINGS)
    ratings[7] = bad_line
    out = tmp_path / "out"
    with pytest.raises(CoraError, match=message.replace("(", r"\(")) as e:
        prepare_movielens(write_raw(tmp_path / "raw", ratings), out)
    assert "\n" not in str(e.value)
    assert_nothing_written(out)


def test_missing_files(tmp_path):
    raw = write_raw(tmp_path / "raw")
    (raw / "movies.dat").unlink()
    with pytest.raises(CoraError, match=r"missing movie list \(movies.dat\)"):
        prepare_movielens(raw, tmp_path / "out")
    (raw / "ratings.dat").unlink()
    with pytest.raises(CoraError, match="missing ratings file"):
        prepare_movielens(raw, tmp_path / "out")
    with pytest.raises(CoraError, match="no such file or folder"):
        prepare_movielens(tmp_path / "nowhere", tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_truncated_or_corrupt_archives(tmp_path):
    raw = write_raw(tmp_path / "raw", RATINGS * 200)
    zpath = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in ("ratings.dat", "movies.dat"):
            zf.write(raw / name, f"ml-1m/{name}")
    data = zpath.read_bytes()
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CoraError, match="cut.zip: not a folder or a readable zip file"):
        prepare_movielens(cut, tmp_path / "out")
    # Damage the compressed ratings member but keep the zip directory intact.
    bad = bytearray(data)
    start = data.index(b"ml-1m/ratings.dat") + 40
    bad[start:start + 50] = b"\xff" * 50
    (tmp_path / "bad.zip").write_bytes(bytes(bad))
    with pytest.raises(CoraError, match=r"bad.zip:ml-1m/ratings.dat: cannot read"):
        prepare_movielens(tmp_path / "bad.zip", tmp_path / "out")
    gz = tmp_path / "gz"
    gz.mkdir()
    (gz / "ratings.dat.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 20)
    (gz / "movies.dat").write_bytes((raw / "movies.dat").read_bytes())
    with pytest.raises(CoraError, match=r"ratings.dat.gz: cannot read"):
        prepare_movielens(gz, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_data_outside_every_window(tmp_path):
    ratings = [f"1::1::5::{ts(2000, 6, 1)}", f"1::2::5::{ts(2000, 7, 1)}"]
    with pytest.raises(CoraError, match=r"no ratings fall in the train window \(June 2001-March 2002, UTC\)"):
        prepare_movielens(write_raw(tmp_path / "raw", ratings), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# ----------------------------------------------------------------------------- CLI
def cora(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout=120)


def test_cli_prepare_movielens(tmp_path):
    raw = write_raw(tmp_path / "raw")
    out = tmp_path / "out"
    done = cora("data", "prepare", "movielens", "--raw", str(raw), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "valid_small" in done.stdout and (out / "meta.json").exists()

    again = cora("data", "prepare", "movielens", "--raw", str(raw), "--out", str(out))
    assert again.returncode == 1 and "output folder exists and is not empty" in again.stderr
    forced = cora("data", "prepare", "movielens", "--raw", str(raw), "--out", str(out), "--overwrite")
    assert forced.returncode == 0, forced.stderr


def test_cli_bad_line_is_one_line_error(tmp_path):
    ratings = list(RATINGS)
    ratings[2] = "1::2::4"
    raw = write_raw(tmp_path / "raw", ratings)
    out = tmp_path / "out"
    done = cora("data", "prepare", "movielens", "--raw", str(raw), "--out", str(out))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ratings.dat line 3: expected 4 fields" in lines[0] and "found 3" in lines[0]
    assert_nothing_written(out)

    (raw / "movies.dat").unlink()
    missing = cora("data", "prepare", "movielens", "--raw", str(raw), "--out", str(out))
    assert missing.returncode == 1 and "movies.dat" in missing.stderr and "Traceback" not in missing.stderr
