"""`cora data import-collm`: the real ML-1M splits, and one-line errors for every kind of bad input."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from cora.data.collm_import import import_collm
from cora.data.store import load_dataset
from cora.errors import CoraError

from helpers import run_cli, synthetic_splits


def test_real_ml1m_counts(ml1m):
    ds = load_dataset(ml1m)
    m = ds.meta
    assert {s: m["splits"][s]["rows"] for s in ("train", "valid", "valid_small", "test")} == \
        {"train": 33_891, "valid": 10_401, "valid_small": 5_200, "test": 7_331}
    assert (m["users_seen"], m["items_seen"], m["n_users"], m["n_items"]) == (838, 3_255, 839, 3_256)
    assert m["domain"] == "movies" and m["name"] == "ml-1m"
    assert len(m["source"]["sha256"]) == 64
    train = ds.split("train")
    assert list(train.columns) == ["uid", "iid", "label", "timestamp", "his", "his_title", "title", "not_cold"]
    assert train["not_cold"].eq(1).all()
    assert all(h[0] == 0 for h in train["his"])


def test_valid_small_is_sampled_when_absent(shared_data, tmp_path):
    # Re-pack the zip without valid_small_ood2.pkl: the 50 % seed-2023 sample reproduces the file.
    src = tmp_path / "no-small.zip"
    with zipfile.ZipFile(shared_data / "collm-ml-1m.zip") as zin, zipfile.ZipFile(src, "w") as zout:
        for n in zin.namelist():
            if "valid_small" not in n:
                zout.writestr(n, zin.read(n))
    import_collm(src, tmp_path / "out", trust_pickle=True)
    ours = load_dataset(tmp_path / "out").split("valid_small")
    ref = load_dataset_split_from_zip(shared_data / "collm-ml-1m.zip", "valid_small_ood2.pkl")
    assert len(ours) == 5_200
    assert ours["timestamp"].tolist() == ref["timestamp"].tolist()
    assert ours["uid"].tolist() == ref["uid"].tolist()


def load_dataset_split_from_zip(path, name) -> pd.DataFrame:
    with zipfile.ZipFile(path) as z:
        member = next(n for n in z.namelist() if n.endswith(name))
        return pd.read_pickle(io.BytesIO(z.read(member)))


def _zip(tmp_path, frames: dict[str, pd.DataFrame], name="bad.zip") -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w") as z:
        for fname, df in frames.items():
            buf = io.BytesIO()
            df.to_pickle(buf)
            z.writestr(f"toy/{fname}", buf.getvalue())
    return path


def _good_frames():
    s = synthetic_splits()
    return {"train_ood2.pkl": s["train"], "valid_ood2.pkl": s["valid"], "test_ood2.pkl": s["test"]}


def test_synthetic_round_trip(tmp_path):
    frames = _good_frames()
    meta = import_collm(_zip(tmp_path, frames), tmp_path / "ok", trust_pickle=True)
    assert meta["splits"]["valid_small"]["rows"] == 60  # 50 % of 120
    back = load_dataset(tmp_path / "ok").split("train")
    pd.testing.assert_series_equal(back["uid"], frames["train_ood2.pkl"]["uid"].astype("int64"), check_names=False)
    assert [list(h) for h in back["his"]] == [list(h) for h in frames["train_ood2.pkl"]["his"]]


def _break(col, fn):
    frames = _good_frames()
    df = frames["valid_ood2.pkl"].copy()
    frames["valid_ood2.pkl"] = fn(df)
    return frames


BAD_CASES = {
    "missing_split": (lambda: {k: v for k, v in _good_frames().items() if k != "test_ood2.pkl"},
                      "missing split file test_ood2.pkl"),
    "missing_column": (lambda: _break("title", lambda d: d.drop(columns=["title"])), "missing column(s) title"),
    "bad_label": (lambda: _break("label", lambda d: d.assign(label=d["label"].where(d.index != 3, 2))),
                  "field 'label' must be 0 or 1; found 2 at row 3"),
    "zero_id": (lambda: _break("uid", lambda d: d.assign(uid=d["uid"].where(d.index != 5, 0))),
                "field 'uid' must be >= 1"),
    "negative_iid": (lambda: _break("iid", lambda d: d.assign(iid=d["iid"].where(d.index != 7, -4))),
                     "field 'iid' must be >= 1"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_one_line_error_and_nothing_left(tmp_path, case):
    make, expected = BAD_CASES[case]
    src = _zip(tmp_path, make())
    out = tmp_path / "out"
    r = run_cli("data", "import-collm", src, "--out", out, "--trust-pickle")
    assert r.returncode == 1
    lines = [l for l in r.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    assert expected in r.stderr.replace("\n", " ")
    assert str(src.name) in r.stderr or "valid" in r.stderr  # names the file or split
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp folder left


def test_truncated_zip(tmp_path):
    good = _zip(tmp_path, _good_frames(), "good.zip")
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    r = run_cli("data", "import-collm", cut, "--out", tmp_path / "out", "--trust-pickle")
    assert r.returncode == 1 and "cut.zip" in r.stderr and "truncated" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "out").exists()


def test_refuses_pickles_without_trust(tmp_path):
    src = _zip(tmp_path, _good_frames())
    r = run_cli("data", "import-collm", src, "--out", tmp_path / "out")
    assert r.returncode == 1
    assert "--trust-pickle" in r.stderr and "runs code" in r.stderr
    assert not (tmp_path / "out").exists()
    with pytest.raises(CoraError, match="trust-pickle"):
        import_collm(src, tmp_path / "out")


def test_existing_output_is_kept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_cli("data", "import-collm", _zip(tmp_path, _good_frames()), "--out", out, "--trust-pickle")
    assert r.returncode == 1 and "not empty" in r.stderr
    assert (out / "keep.txt").read_text() == "mine"
