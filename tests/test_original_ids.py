"""The dataset's own ids end to end: a log imported with `cora data import-interactions` (text user
ids, movieIds that are also the numbers of OTHER items' internal ids), a tiny CF + CoRA run on it,
and `cora recommend` / `cora score` / the HTTP service / `cora evaluate --ranking` taking and
returning those ids, with titles; cora's ids only behind --internal-ids / "internal_ids": true; an
unknown id is one line naming it, before the model loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from cora.errors import CoraError
from cora.serve.app import create_app
from cora.serve.catalog import Catalog, UnknownIdError
from cora.serve.ids import identity_ids, read_id_maps
from cora.serve.preflight import RunData

from helpers import main_in_process, synthetic_splits
from llm_fixtures import tiny_config

N_USERS, N_ITEMS, PER_USER = 16, 40, 14


def _title(movie: int) -> str:
    return f"Film number {movie} ({1900 + movie})"


def write_log(folder):
    """Ratings of users 'u-00'.. 'u-15' on movieIds 1..40 listed in a shuffled order, so the
    importer's internal ids (order of first appearance) differ from the movieIds they share numbers with."""
    rng = np.random.default_rng(7)
    movies = rng.permutation(np.arange(1, N_ITEMS + 1))
    rows, t = [], 978_300_000
    for k in range(PER_USER):
        for u in range(N_USERS):
            t += 60
            rows.append((f"u-{u:02d}", None, int(rng.integers(1, 6)), t))
    seen = {}
    for j, (user, _, rating, ts) in enumerate(rows):  # each user's items distinct (no duplicate events)
        pool = [m for m in movies if m not in seen.setdefault(user, set())]
        movie = int(pool[(j * 7) % len(pool)])
        seen[user].add(movie)
        rows[j] = (user, movie, rating, ts)
    ratings, items = folder / "ratings.csv", folder / "movies.csv"
    pd.DataFrame(rows, columns=["userId", "movieId", "rating", "timestamp"]).to_csv(ratings, index=False)
    pd.DataFrame({"movieId": movies, "title": [_title(int(m)) for m in movies]}).to_csv(items, index=False)
    return ratings, items


@pytest.fixture(scope="module")
def imported(root):
    from cora.data.interactions import import_interactions

    ratings, items = write_log(root)
    out = root / "my-movies"
    import_interactions(ratings, out, items=items, domain="movies")
    return out


@pytest.fixture(scope="module")
def run(root, imported):
    """A tiny MF + CoRA run on the imported log (this module's own `run`)."""
    from cora.cf.train import train_cf
    from cora.config import CFConfig
    from cora.train.run import train_run

    cf = root / "mf-mine"
    train_cf(CFConfig.for_model("mf", data=str(imported), dim=8, epochs=3, patience=3, batch_size=64), cf,
             show_progress=False)
    out = root / "cora-mine"
    train_run(tiny_config(root, data=str(imported), cf=str(cf)), out, show_progress=False)
    return out


@pytest.fixture(scope="module")
def rec(run):
    return RunData.open(run).recommender()


@pytest.fixture(scope="module")
def maps(imported):
    return {"users": pd.read_parquet(imported / "users.parquet"), "items": pd.read_parquet(imported / "items.parquet")}


def _moved_item(rec) -> tuple[str, int]:
    """A movieId M whose internal id is not M while internal id M is another movie: the pair that
    was silently scored as the wrong movie when files were read as internal ids."""
    for iid, movie in sorted(rec.ids.items.by_internal.items()):
        if int(movie) != iid and int(movie) in rec.catalog.titles:
            return movie, iid
    raise AssertionError("the fixture has no moved item")


def _warm_user(rec) -> tuple[str, int]:
    uid = sorted(rec.catalog.train_users)[0]
    return rec.ids.users.original(uid), uid


# ----------------------------------------------------------------------------- the maps
def test_the_maps_translate_both_ways(imported, maps):
    from cora.data.store import load_dataset

    ids = read_id_maps(load_dataset(imported))
    assert ids.mapped and ids.users.integer is False and ids.items.integer is False  # the importer keeps text
    for uid, user in zip(maps["users"]["uid"], maps["users"]["user"]):
        assert ids.users.internal(user) == uid and ids.users.original(uid) == user
    for iid, item in zip(maps["items"]["iid"], maps["items"]["item"]):
        assert ids.items.internal(item) == iid and ids.items.original(iid) == item == str(item)
        # A JSON number, its text and padded text name the same item; other text does not.
        assert ids.items.internal(int(item)) == ids.items.internal(f" {item} ") == ids.items.internal(float(item)) == iid
    with pytest.raises(UnknownIdError, match=r"^unknown item '07': not in the dataset's items.parquet$"):
        ids.items.internal("07")  # text ids: "07" is not "7"
    with pytest.raises(UnknownIdError, match=r"^unknown user 'U-01': not in the dataset's users.parquet$"):
        ids.users.internal("U-01")


def test_integer_maps_compare_numbers_and_datasets_without_maps_are_their_own(tmp_path):
    from cora.data.store import load_dataset, write_dataset, write_with_id_maps

    splits = synthetic_splits(n_users=12, n_items=30)
    users = pd.DataFrame({"uid": np.arange(1, 13), "user": np.arange(1, 13) * 100})  # prepare movielens: int64
    items = pd.DataFrame({"iid": np.arange(1, 31), "item": np.arange(1, 31) + 1000, "title": "t"})
    write_with_id_maps(tmp_path / "ints", splits, users, items, name="ints", domain="movies", source={},
                       overwrite=False)
    ids = read_id_maps(load_dataset(tmp_path / "ints"))
    assert ids.users.integer and ids.users.internal("0300") == ids.users.internal(300) == 3
    assert ids.items.original(2) == 1002 and isinstance(ids.items.original(2), int)

    write_dataset(tmp_path / "plain", splits, name="plain", domain="movies")  # the CoLLM import's layout
    plain = load_dataset(tmp_path / "plain")
    assert read_id_maps(plain) is None
    same = identity_ids(Catalog.from_dataset(plain))
    assert not same.mapped and same.users.internal("4") == same.users.internal(4) == 4 and same.items.original(9) == 9
    with pytest.raises(UnknownIdError, match=r"^unknown user 99: no interactions in the dataset$"):
        same.users.internal(99)


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "items.parquet").unlink(), "has users.parquet but no items.parquet"),
    (lambda d: pd.DataFrame({"uid": [1, 2], "user": ["a", " a"]}).to_parquet(d / "users.parquet"),
     "user ' a' is listed twice (internal ids 1 and 2; ids compare as stripped text)"),
])
def test_damaged_maps_are_one_line_errors(imported, tmp_path, damage, needle):
    import shutil

    from cora.data.store import load_dataset

    copy = tmp_path / "copy"
    shutil.copytree(imported, copy)
    damage(copy)
    with pytest.raises(CoraError) as e:
        read_id_maps(load_dataset(copy))
    assert str(e.value).startswith(str(copy)) and needle in str(e.value)


# ----------------------------------------------------------------------------- before the model
@pytest.fixture()
def no_model(monkeypatch):
    """Loading the run fails the test: what is checked here must be checked before it."""
    import cora.serve.recommend

    def refuse(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cora.serve.recommend.Recommender, "from_run", refuse)


@pytest.mark.parametrize("argv, needle", [
    (["recommend", "{run}", "--user", "nobody"], "unknown user 'nobody': not in the dataset's users.parquet"),
    (["recommend", "{run}", "--user", "7", "--internal-ids"], None),  # known: reaches the model
    (["recommend", "{run}", "--user", "77", "--internal-ids"], "unknown user 77: no interactions in the dataset"),
    (["score", "{run}", "--pairs", "{pairs}", "--out", "{out}"],
     "{pairs}: column 'movieId', line 3: unknown item '4040': not in the dataset's items.parquet"),
])
def test_an_unknown_id_is_one_line_before_the_model_loads(run, tmp_path, monkeypatch, capsys, no_model, argv, needle):
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("userId,movieId\nu-01,5\nu-02,4040\n")
    argv = [a.format(run=run, pairs=pairs, out=tmp_path / "s.parquet") for a in argv]
    code, out, err = main_in_process(monkeypatch, capsys, *argv)
    if needle is None:
        assert code == 1 and "the model was loaded" in err, err
        return
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and needle.format(pairs=pairs) in lines[0], err
    assert not (tmp_path / "s.parquet").exists()


def test_the_maps_are_looked_up_before_any_table_is_read(run, monkeypatch, capsys, no_model):
    import cora.serve.preflight

    def refuse(*a, **k):
        raise AssertionError("a table was read")

    monkeypatch.setattr(cora.serve.preflight.Catalog, "from_dataset", refuse)
    code, out, err = main_in_process(monkeypatch, capsys, "recommend", run, "--user", "nobody")
    assert code == 1 and "unknown user 'nobody': not in the dataset's users.parquet" in err, err


def test_an_unknown_user_fails_without_importing_torch(run):
    """From a shell: the error comes before torch (and so any model) is even imported."""
    code = ("import sys\nfrom cora.cli import main\nsys.argv = ['cora', 'recommend', sys.argv[1], '--user', 'nobody']\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code, str(run)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "COLUMNS": "300"})
    assert res.stdout.strip() == "exit 1 False", res.stdout + res.stderr
    assert "unknown user 'nobody'" in res.stderr


# ----------------------------------------------------------------------------- round trips
def test_score_reads_the_importers_columns_and_writes_the_datasets_ids(run, rec, maps, tmp_path, monkeypatch, capsys):
    user, uid = _warm_user(rec)
    movie, iid = _moved_item(rec)
    other = sorted(rec.catalog.titles)[0]
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"userId,movieId,rating\n{user},{movie},5\n{user},{rec.ids.items.original(other)},3\n")
    code, _, err = main_in_process(monkeypatch, capsys, "score", run, "--pairs", pairs, "--out", tmp_path / "s.parquet")
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert list(df.columns) == ["user", "item", "title", "score", "probability"]
    assert df["user"].tolist() == [user, user] and df["item"].tolist() == [movie, rec.ids.items.original(other)]
    assert df["title"].iloc[0] == _title(int(movie))  # movieId M, not the movie whose internal id is M
    assert _title(int(movie)) != rec.catalog.titles[int(movie)]
    np.testing.assert_allclose(df["probability"], rec.score_pairs([(uid, iid), (uid, other)]), atol=1e-6)

    # The same pairs in cora's ids: the same scores, and the internal ids beside the dataset's.
    pairs.write_text(f"user,item\n{uid},{iid}\n{uid},{other}\n")
    code, _, err = main_in_process(monkeypatch, capsys, "score", run, "--pairs", pairs, "--out", tmp_path / "i.parquet",
                                   "--internal-ids")
    assert code == 0, err
    internal = pd.read_parquet(tmp_path / "i.parquet")
    assert list(internal.columns) == ["user", "item", "uid", "iid", "title", "score", "probability"]
    assert internal["uid"].tolist() == [uid, uid] and internal["iid"].tolist() == [iid, other]
    pd.testing.assert_frame_equal(internal.drop(columns=["uid", "iid"]), df)


def test_recommend_takes_and_returns_the_datasets_ids(run, rec, maps, monkeypatch, capsys):
    user, uid = _warm_user(rec)
    code, out, err = main_in_process(monkeypatch, capsys, "recommend", run, "--user", user, "--k", 3,
                                     "--candidates", 6, "--json")
    assert code == 0, err
    got = json.loads(out)
    lib = rec.recommend(uid, k=3, candidates=6)
    titles = dict(zip(maps["items"]["item"], maps["items"]["title"]))
    assert got["user"] == user and "uid" not in got
    assert [x["item"] for x in got["items"]] == [rec.ids.items.original(r.item) for r in lib]
    assert all(x["title"] == titles[x["item"]] and "iid" not in x for x in got["items"])

    code, out, err = main_in_process(monkeypatch, capsys, "recommend", run, "--user", uid, "--k", 3,
                                     "--candidates", 6, "--json", "--internal-ids")
    internal = json.loads(out)
    assert code == 0 and internal["user"] == user and internal["uid"] == uid
    assert [(x["item"], x["iid"]) for x in internal["items"]] == [(rec.ids.items.original(r.item), r.item) for r in lib]
    assert [{k: v for k, v in x.items() if k != "iid"} for x in internal["items"]] == got["items"]

    code, out, err = main_in_process(monkeypatch, capsys, "recommend", run, "--user", user, "--k", 2,
                                     "--candidates", 6, columns=250)
    assert code == 0 and f"user '{user}': top 2 of 6" in out
    assert all(f"{titles[x['item']]}" in out for x in got["items"][:2])


def test_the_service_takes_and_returns_the_datasets_ids(rec, maps):
    user, uid = _warm_user(rec)
    movie, iid = _moved_item(rec)
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1)) as c:
        r = c.post("/score", json={"pairs": [{"user": user, "item": int(movie)}, {"user": user, "item": movie}]})
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [(x["user"], x["item"], x["title"]) for x in results] == [(user, movie, _title(int(movie)))] * 2
        np.testing.assert_allclose([x["probability"] for x in results], rec.score_pairs([(uid, iid)] * 2), atol=1e-6)
        assert not {"uid", "iid"} & set(results[0])

        r = c.post("/score", json={"pairs": [{"user": uid, "item": iid}], "internal_ids": True})
        # A batch of one, not two: the frozen matmuls' rounding may differ with the batch's shape.
        (alone,) = r.json()["results"]
        assert {k: v for k, v in alone.items() if k not in ("score", "probability")} == {
            **{k: v for k, v in results[0].items() if k not in ("score", "probability")}, "uid": uid, "iid": iid}
        assert alone["score"] == pytest.approx(results[0]["score"], abs=1e-6)

        rec_json = c.post("/recommend", json={"user": user, "k": 3, "candidates": 6}).json()
        lib = rec.recommend(uid, k=3, candidates=6)
        assert rec_json["user"] == user and [x["item"] for x in rec_json["items"]] == [
            rec.ids.items.original(r.item) for r in lib]
        internal = c.post("/recommend", json={"user": uid, "k": 3, "candidates": 6, "internal_ids": True}).json()
        assert internal["uid"] == uid and [x["iid"] for x in internal["items"]] == [r.item for r in lib]

        for body, detail in [({"pairs": [{"user": "nobody", "item": movie}]},
                              "unknown user 'nobody': not in the dataset's users.parquet"),
                             ({"pairs": [{"user": user, "item": 4040}]},
                              "unknown item 4040: not in the dataset's items.parquet")]:
            r = c.post("/score", json=body)
            assert r.status_code == 404 and r.json() == {"detail": detail}
        r = c.post("/recommend", json={"user": uid})  # an internal id without the flag names no user here
        assert r.status_code == 404 and r.json()["detail"] == f"unknown user {uid}: not in the dataset's users.parquet"
        info = c.get("/info").json()
        assert info["id_maps"] is True and info["dataset"] == "my-movies"
        spec = c.get("/openapi.json").json()["components"]["schemas"]["Pair"]["properties"]
        assert spec["user"]["examples"] == [rec.ids.users.original(min(rec.catalog.histories))]


def test_evaluate_ranking_writes_the_datasets_ids(run, rec, maps, monkeypatch, capsys):
    args = ["evaluate", run, "--ranking", "--k", 2, "--candidates", 4, "--limit-users", 3]
    code, _, err = main_in_process(monkeypatch, capsys, *args)
    assert code == 0, err
    table = pd.read_parquet(run / "ranking-test-k2-c4-limit3.parquet")
    assert list(table.columns[:3]) == ["user", "item", "title"] and not {"uid", "iid"} & set(table.columns)
    titles = dict(zip(maps["items"]["item"], maps["items"]["title"]))
    assert set(table["user"]) <= set(maps["users"]["user"])
    assert [titles[i] for i in table["item"]] == table["title"].tolist()

    code, _, err = main_in_process(monkeypatch, capsys, *args, "--internal-ids")
    assert code == 0, err
    internal = pd.read_parquet(run / "ranking-test-k2-c4-limit3.parquet")
    assert list(internal.columns[:5]) == ["user", "item", "uid", "iid", "title"]
    assert [rec.ids.users.internal(u) for u in internal["user"]] == internal["uid"].tolist()
    assert [rec.ids.items.internal(i) for i in internal["item"]] == internal["iid"].tolist()
    pd.testing.assert_frame_equal(internal.drop(columns=["uid", "iid"]), table)
    code, _, err = main_in_process(monkeypatch, capsys, "evaluate", run, "--internal-ids")
    assert code == 1 and "--internal-ids go with --ranking" in err
