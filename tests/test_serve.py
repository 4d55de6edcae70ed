"""Serving: the Recommender library, `cora score` / `cora recommend`, and the HTTP service
(in process, on a tiny trained CoRA run): every endpoint, every error class, micro-batching."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from cora.errors import CoraError
from cora.serve import Recommender
from cora.serve.app import MAX_CANDIDATES, MAX_K, MAX_PAIRS, create_app
from cora.serve.batcher import MicroBatcher, QueueFull
from cora.serve.pairs import read_pairs
from cora.train.run import train_run

from llm_fixtures import tiny_cf_run, tiny_config
from helpers import main_in_process, run_cli


@pytest.fixture()
def client(rec):
    with TestClient(create_app(rec, max_batch=8, max_wait_ms=1, queue_size=16)) as c:
        yield c


def _user_rows(tables, uid):
    return pd.concat([t.assign(split_=k) for k, t in enumerate(tables.values())])[lambda d: d["uid"] == uid]


def _some_pairs(rec, n=6):
    users, items = rec.users, sorted(rec.catalog.titles)
    return [(users[j % len(users)], items[(3 * j) % len(items)]) for j in range(n)]


# ----------------------------------------------------------------------------- library
def test_history_now_is_the_latest_rows_history_plus_its_positive_item(rec, tables):
    for uid in rec.users:
        rows = _user_rows(tables, uid)
        last = max(rows.itertuples(), key=lambda r: (r.timestamp, r.split_))  # ties: later split
        his, his_title = list(last.his), list(last.his_title)
        if last.label == 1:
            his, his_title = his + [last.iid], his_title + [last.title]
        assert rec.catalog.histories[uid] == (his, his_title)
        assert set(rec.catalog.interacted[uid]) >= set(rows["iid"])


def test_candidates_are_the_cf_top_n_of_unseen_items(rec, tables):
    cf = rec.cf
    n_items = len(rec.catalog.titles)
    for uid in rec.users:
        seen = set(_user_rows(tables, uid)["iid"]) | set(rec.catalog.histories[uid][0])
        found = rec.candidates(uid, 100)
        items = [i for i, _ in found]
        assert items and 0 not in items and not set(items) & seen
        assert len(items) == len(set(items)) == n_items - len(seen - {0})  # every unseen item, once
        # CF scores are the model's own scores of the pair, best first.
        with torch.no_grad():
            direct = cf({"uid": torch.tensor([uid] * len(items)), "iid": torch.tensor(items)}).numpy()
        np.testing.assert_allclose([s for _, s in found], direct, rtol=1e-5, atol=1e-6)
        scores = [s for _, s in found]
        assert all(a >= b for a, b in zip(scores, scores[1:]))
        assert rec.candidates(uid, 2) == found[:2]


def test_recommend_reranks_candidates_by_probability(rec):
    uid = rec.users[0]
    found = rec.candidates(uid, 5)
    recs = rec.recommend(uid, k=3, candidates=5)
    assert [r.rank for r in recs] == [1, 2, 3]
    probs = [r.probability for r in recs]
    assert probs == sorted(probs, reverse=True)
    expected = dict(zip([i for i, _ in found], rec.score_pairs([(uid, i) for i, _ in found])))
    assert [r.item for r in recs] == sorted(expected, key=lambda i: -expected[i])[:3]
    for r in recs:
        assert r.probability == pytest.approx(expected[r.item], abs=1e-6)
        assert r.title == rec.catalog.titles[r.item] and r.cf_score == dict(found)[r.item]


def test_a_cold_user_gets_popular_candidates_not_cf_noise(rec, tables):
    import copy
    import dataclasses

    uid = rec.users[0]
    assert rec.retrieve(uid, 5) == (rec.candidates(uid, 5), "cf")
    # The same user as if it had no training rows: its CF vector would be untrained.
    cold = copy.copy(rec)
    cold.catalog = dataclasses.replace(rec.catalog, train_users=rec.catalog.train_users - {uid})
    assert cold.is_cold(uid) and not rec.is_cold(uid)
    found, source = cold.retrieve(uid, 100)
    assert source == "popularity"
    seen = set(_user_rows(tables, uid)["iid"]) | set(rec.catalog.histories[uid][0])
    positives = tables["train"].query("label == 1")["iid"].value_counts()
    expected = sorted((i for i in rec.catalog.titles if i != 0 and i not in seen),
                      key=lambda i: (-positives.get(i, 0), i))
    assert [i for i, _ in found] == expected
    assert [c for _, c in found] == [float(positives.get(i, 0)) for i in expected]
    recs = cold.recommend(uid, k=2, candidates=4)
    assert {r.retrieved_by for r in recs} == {"popularity"} and {r.item for r in recs} <= set(expected[:4])
    assert recs[0].to_dict()["retrieved_by"] == "popularity"
    # Each field means one thing: a popularity count is not a CF score.
    assert all(r.cf_score is None and r.train_positives == positives.get(r.item, 0) for r in recs)
    assert all(r.train_positives is None and r.cf_score is not None for r in rec.recommend(uid, k=2, candidates=4))
    with TestClient(create_app(cold, max_batch=8, max_wait_ms=1)) as c:
        served = c.post("/recommend", json={"user": uid, "k": 2, "candidates": 4}).json()["items"]
    assert [(x["item"], x["cf_score"], x["train_positives"], x["retrieved_by"]) for x in served] == [
        (r.item, None, r.train_positives, "popularity") for r in recs]


def test_score_pairs_are_sigmoids_of_the_runs_logits(rec):
    pairs = _some_pairs(rec)
    logits = rec.logits(pairs)
    probs = rec.score_pairs(pairs, batch_size=2)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-logits)), atol=1e-6)
    assert ((probs > 0) & (probs < 1)).all()
    assert rec.score_pairs([]).shape == (0,)


@pytest.mark.parametrize("pair, needle", [((999, 1), "unknown user 999"), ((1, 0), "unknown item 0"),
                                          ((1, 31), "unknown item 31")])
def test_unknown_ids_are_one_line_errors_naming_the_id(rec, pair, needle):
    with pytest.raises(CoraError, match=needle):
        rec.score_pairs([pair])
    if pair[0] == 999:
        with pytest.raises(CoraError, match=needle):
            rec.recommend(999)


def test_bad_k_and_candidates(rec):
    with pytest.raises(CoraError, match="k must be"):
        rec.recommend(rec.users[0], k=0)
    with pytest.raises(CoraError, match="candidates"):
        rec.recommend(rec.users[0], k=5, candidates=3)


@pytest.fixture(scope="module")
def icl_run(root):
    out = root / "run-icl"
    train_run(tiny_config(root, method="icl", cf=None), out, show_progress=False)
    return out


def test_a_run_without_cf_scores_but_needs_a_cf_run_to_recommend(icl_run, root):
    icl = Recommender.from_run(icl_run)
    assert icl.score_pairs([(1, 2)]).shape == (1,)
    with pytest.raises(CoraError, match="no CF model.*--cf"):
        icl.recommend(1)
    with TestClient(create_app(icl)) as c:
        r = c.post("/recommend", json={"user": 1, "k": 2, "candidates": 4})
        assert r.status_code == 501 and "--cf" in r.json()["detail"]
    with_cf = Recommender.from_run(icl_run, cf=tiny_cf_run(root))
    assert len(with_cf.recommend(1, k=2, candidates=4)) == 2


# ----------------------------------------------------------------------------- HTTP
def test_health_info_and_openapi(client, rec):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert info["method"] == "cora" and info["modules"] == rec.cfg.modules and info["dataset"] == "toy"
    assert info["n_users"] == 12 and info["n_items"] == 30 and info["id_maps"] is False  # the toy has no maps
    spec = client.get("/openapi.json").json()
    assert {"/health", "/info", "/score", "/recommend"} <= set(spec["paths"])


def test_score_endpoint_equals_the_library(client, rec):
    pairs = _some_pairs(rec, 10)
    r = client.post("/score", json={"pairs": [{"user": u, "item": i} for u, i in pairs]})
    assert r.status_code == 200
    results = r.json()["results"]
    assert [(x["user"], x["item"]) for x in results] == pairs  # no id maps: the dataset's ids are cora's
    assert [x["title"] for x in results] == [rec.catalog.titles[i] for _, i in pairs]
    assert not {"uid", "iid"} & set(results[0])  # internal ids only when asked for
    np.testing.assert_allclose([x["probability"] for x in results], rec.score_pairs(pairs), atol=1e-6)
    np.testing.assert_allclose([x["score"] for x in results], rec.logits(pairs), atol=1e-5)


def test_recommend_endpoint(client, rec, tables):
    uid = rec.users[1]
    r = client.post("/recommend", json={"user": uid, "k": 3, "candidates": 6})
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == 3 and [x["rank"] for x in items] == [1, 2, 3]
    probs = [x["probability"] for x in items]
    assert probs == sorted(probs, reverse=True)
    assert not {x["item"] for x in items} & set(_user_rows(tables, uid)["iid"])
    lib = rec.recommend(uid, k=3, candidates=6)
    assert [x["item"] for x in items] == [x.item for x in lib]
    assert client.post("/recommend", json={"user": uid}).status_code == 200  # defaults: k 10 of 100


@pytest.fixture()
def gappy_client(rec):
    """A service over the run as if user 5 had no interactions and item 7 no title: ids inside the
    schema's range (1..n-1 of the dataset) that the service cannot serve."""
    import copy
    import dataclasses

    gappy = copy.copy(rec)
    histories = {u: h for u, h in rec.catalog.histories.items() if u != 5}
    titles = {i: t for i, t in rec.catalog.titles.items() if i != 7}
    gappy.catalog = dataclasses.replace(rec.catalog, histories=histories, titles=titles)
    with TestClient(create_app(gappy, max_batch=8, max_wait_ms=1, queue_size=16)) as c:
        yield c


@pytest.mark.parametrize("path, body, needle", [
    ("/score", {"pairs": [{"user": 1, "item": 2}, {"user": 5, "item": 2}]}, "unknown user 5"),
    ("/score", {"pairs": [{"user": 1, "item": 7}]}, "unknown item 7"),
    ("/recommend", {"user": 5, "k": 2}, "unknown user 5"),
    ("/recommend", {"user": 5, "k": 2, "internal_ids": True}, "unknown user 5"),
])
def test_unknown_ids_in_range_are_404_naming_the_id(gappy_client, path, body, needle):
    r = gappy_client.post(path, json=body)
    assert r.status_code == 404 and needle in r.json()["detail"]


@pytest.mark.parametrize("path, body, detail", [
    ("/score", {"pairs": [{"user": 1, "item": 2}, {"user": 999, "item": 2}]},
     "unknown user 999: no interactions in the dataset"),
    ("/score", {"pairs": [{"user": 1, "item": 31}]}, "unknown item 31: not an item of the dataset (no title)"),
    ("/score", {"pairs": [{"user": 1, "item": 0}]}, "unknown item 0: not an item of the dataset (no title)"),
    ("/score", {"pairs": [{"user": "u1", "item": 2}]}, "unknown user 'u1': no interactions in the dataset"),
    ("/score", {"pairs": [{"user": 1, "item": 2 ** 70}]}, f"unknown item {2 ** 70}: not an item of the dataset (no title)"),
    ("/recommend", {"user": 12345, "k": 2}, "unknown user 12345: no interactions in the dataset"),
    ("/recommend", {"user": -1}, "unknown user -1: no interactions in the dataset"),
    ("/recommend", {"user": 13, "internal_ids": True}, "unknown user 13: no interactions in the dataset"),
    ("/recommend", {"user": "x", "internal_ids": True},
     "unknown user 'x': cora's internal ids are whole numbers (without internal ids, ids are the dataset's own)"),
])
def test_ids_the_dataset_does_not_know_are_404_naming_them(client, path, body, detail):
    r = client.post(path, json=body)
    assert r.status_code == 404 and r.json() == {"detail": detail}


def test_ids_as_text_or_numbers_are_the_same_id(client, rec):
    """A dataset without maps: its ids are cora's; "2" and 2 (and 2.0) name the same item."""
    as_numbers = client.post("/score", json={"pairs": [{"user": 1, "item": 2}]}).json()["results"]
    as_text = client.post("/score", json={"pairs": [{"user": " 1", "item": "2"}]}).json()["results"]
    assert as_text == as_numbers and as_numbers[0]["user"] == 1 and as_numbers[0]["item"] == 2
    internal = client.post("/score", json={"pairs": [{"user": 1, "item": 2}], "internal_ids": True}).json()["results"]
    assert internal == [{**as_numbers[0], "uid": 1, "iid": 2}]


def test_integers_written_as_floats_are_integers(client, rec):
    """JSON Schema's integer includes 2.0: the schema and the handlers agree on it."""
    r = client.post("/score", json={"pairs": [{"user": 1.0, "item": 2.0}]})
    assert r.status_code == 200 and r.json()["results"][0]["user"] == 1
    assert r.json()["results"][0]["probability"] == pytest.approx(float(rec.score_pairs([(1, 2)])[0]), abs=1e-6)
    assert client.post("/recommend", json={"user": 1, "k": 2.0, "candidates": 4.0}).status_code == 200


@pytest.mark.parametrize("path, body", [
    ("/score", b"{not json"),
    ("/score", b""),
    ("/score", b"[1, 2]"),
    ("/score", {"pairs": []}),
    ("/score", {"pairs": [{"user": 1.5, "item": 2}]}),
    ("/score", {"pairs": [{"user": "", "item": 2}]}),
    ("/score", {"pairs": [{"user": "u" * 257, "item": 2}]}),
    ("/score", {"pairs": [{"user": [1], "item": 2}]}),
    ("/score", {"pairs": [{"user": 1, "item": 2}], "internal_ids": "yes"}),  # the flag is a JSON boolean
    ("/recommend", {"user": 1, "internal_ids": 1}),
    ("/score", {"pairs": [{"user": None, "item": 2}]}),
    ("/score", {"pairs": [{"user": True, "item": 2}]}),
    ("/score", {"pairs": [{"user": 1}]}),
    ("/score", {"pairs": [{"user": 1, "item": 2, "extra": 3}]}),
    ("/score", {"pairs": {"user": 1, "item": 2}}),
    ("/score", {"pairs": [{"user": 1, "item": 2}] * (MAX_PAIRS + 1)}),
    ("/recommend", {"user": 1, "k": 0}),
    ("/recommend", {"user": 1, "k": MAX_K + 1}),
    ("/recommend", {"user": 1, "k": "3"}),
    ("/recommend", {"user": 1, "candidates": MAX_CANDIDATES + 1}),
    ("/recommend", {"user": 1, "k": 5, "candidates": 3}),
    ("/recommend", {"k": 5}),
    # tokens Python's JSON parser accepts: the 422 that echoes them must still be JSON
    ("/recommend", b'{"user": NaN}'),
    ("/score", b'{"pairs": [{"user": 1, "item": Infinity}]}'),
    ("/recommend", b'{"user": 1e400}'),
])
def test_bad_requests_are_422_never_500(client, path, body):
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["detail"]


def test_queue_full_is_503_with_retry_after(rec):
    app = create_app(rec, max_batch=1, max_wait_ms=0, queue_size=1)
    batcher = app.state.batcher
    entered, gate = threading.Event(), threading.Event()
    score = batcher.score_fn

    def blocked(pairs, keep_going):
        entered.set()
        assert gate.wait(30)
        return score(pairs, keep_going)

    batcher.score_fn = blocked
    body = {"pairs": [{"user": 1, "item": 2}]}
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        try:
            first = pool.submit(c.post, "/score", json=body)
            assert entered.wait(30)  # the worker holds request 1 in the (blocked) model call
            second = pool.submit(c.post, "/score", json=body)
            deadline = time.time() + 30
            while batcher.waiting < 1 and time.time() < deadline:  # request 2 fills the queue
                time.sleep(0.01)
            assert batcher.waiting == 1
            r = c.post("/score", json=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "1" and "busy" in r.json()["detail"]
            r = c.post("/recommend", json={"user": 1, "k": 1, "candidates": 1})
            assert r.status_code == 503
        finally:
            gate.set()
        assert first.result().status_code == 200 and second.result().status_code == 200
        assert batcher.stats["rejected"] == 2


def test_concurrent_requests_share_one_forward_pass(rec):
    calls = []
    forward = rec.method.forward

    def counting(batch):
        calls.append(len(batch["uid"]))
        return forward(batch)

    pairs = _some_pairs(rec, 8)
    expected = rec.score_pairs(pairs)
    # The batch closes as soon as it holds max_batch pairs, so the long wait costs nothing.
    app = create_app(rec, max_batch=8, max_wait_ms=20_000, queue_size=16)
    rec.method.forward = counting
    try:
        with TestClient(app) as c, ThreadPoolExecutor(4) as pool:
            bodies = [{"pairs": [{"user": u, "item": i} for u, i in pairs[j:j + 2]]} for j in range(0, 8, 2)]
            responses = list(pool.map(lambda b: c.post("/score", json=b), bodies))
    finally:
        del rec.method.forward
    assert calls == [8]
    assert app.state.batcher.stats == {"requests": 4, "pairs": 8, "batches": 1, "rejected": 0, "timed_out": 0}
    got = [x["probability"] for r in responses for x in r.json()["results"]]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_batcher_merges_up_to_max_batch_and_carries_the_overflow():
    seen = []

    def score(pairs, keep_going):
        seen.append(len(pairs))
        return np.array([10 * u + i for u, i in pairs], dtype=float)

    async def main():
        b = MicroBatcher(score, max_batch=4, max_wait_ms=200, queue_size=4)
        await b.start()
        requests = [[(1, 1), (1, 2)], [(2, 1)], [(3, 1), (3, 2)], [(4, 1)]]
        tasks = [asyncio.create_task(b.submit(r)) for r in requests]
        await asyncio.sleep(0)  # all four are queued before the worker takes any: the queue is full
        with pytest.raises(QueueFull):
            await b.submit([(5, 1)])
        out = await asyncio.gather(*tasks)
        big = await b.submit([(6, j) for j in range(9)])  # larger than max_batch: scored alone
        await b.stop()
        return out, big

    out, big = asyncio.run(main())
    assert [list(o) for o in out] == [[11, 12], [21], [31, 32], [41]]
    assert seen == [3, 3, 9]  # 2 + 1, then 2 + 1 carried over (2 + 1 + 2 would exceed 4)
    assert list(big) == [60 + j for j in range(9)]


# ----------------------------------------------------------------------------- CLI
def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    return main_in_process(monkeypatch, capsys, *args)


def test_cli_score_writes_the_same_scores_as_the_service(run, rec, client, tmp_path, monkeypatch, capsys):
    pairs = _some_pairs(rec, 10)
    csv = tmp_path / "pairs.csv"
    pd.DataFrame(pairs, columns=["user", "item"]).to_csv(csv, index=False)
    code, out, err = _cli(monkeypatch, capsys, "score", run, "--pairs", csv, "--out", tmp_path / "s.parquet",
                          "--batch-size", 3)
    assert code == 0, err
    df = pd.read_parquet(tmp_path / "s.parquet")
    assert list(df.columns) == ["user", "item", "title", "score", "probability"]
    assert list(zip(df["user"], df["item"])) == pairs
    assert df["title"].tolist() == [rec.catalog.titles[i] for _, i in pairs]
    served = client.post("/score", json={"pairs": [{"user": u, "item": i} for u, i in pairs]}).json()["results"]
    np.testing.assert_allclose(df["probability"], [x["probability"] for x in served], atol=1e-6)
    np.testing.assert_allclose(df["probability"], rec.score_pairs(pairs), atol=1e-6)


def test_cli_recommend_json_and_table(run, rec, monkeypatch, capsys):
    uid = rec.users[2]
    code, out, err = _cli(monkeypatch, capsys, "recommend", run, "--user", uid, "--k", 3, "--candidates", 6, "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["user"] == uid and [x["item"] for x in got["items"]] == [r.item for r in rec.recommend(uid, 3, 6)]
    assert set(got["items"][0]) == {"rank", "item", "title", "probability", "cf_score", "train_positives",
                                    "retrieved_by"}
    code, out, err = _cli(monkeypatch, capsys, "recommend", run, "--user", uid, "--k", 2, "--candidates", 6)
    assert code == 0 and "probability" in out and rec.catalog.titles[got["items"][0]["item"]] in out
    code, out, err = _cli(monkeypatch, capsys, "recommend", run, "--user", 4242)
    assert code == 1 and "unknown user '4242': no interactions in the dataset" in err


@pytest.mark.parametrize("text, needles", [
    ("user,itm\n1,2\n", ["no item column (looked for item, item_id, movieId", "columns are 'user', 'itm'",
                         "pass --item COL"]),
    ("user,item\n1,2\n,2\n", ["column 'user' is empty at line 3"]),
    ("user,user_id,item\n1,2,3\n", ["columns 'user' and 'user_id' could each be the user column",
                                    "pass --user COL"]),
    ("user,item\n", ["no data rows"]),
    ("", ["file is empty"]),
])
def test_bad_pairs_file_is_a_one_line_error(tmp_path, text, needles):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CoraError) as e:
        read_pairs(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)) and all(n in msg for n in needles), msg


@pytest.mark.parametrize("header", ["user,item", "userId,movieId", "user_id,item_id", "UID , IID"])
def test_pairs_file_columns_are_named_as_for_the_importer(tmp_path, header):
    path = tmp_path / "pairs.csv"
    path.write_text(f"{header},rating\n7,260,5\n8, 1196 ,4\n")
    got = read_pairs(path)
    assert got.ids == {"user": ["7", "8"], "item": ["260", "1196"]} and len(got) == 2
    path.write_text("who,what\n7,260\n")
    assert read_pairs(path, user="who", item="what").ids == {"user": ["7"], "item": ["260"]}


@pytest.mark.parametrize("text, flags, needle", [
    ("user,item\n1,2\n2,3\n1,777\n", [], "column 'item', line 4: unknown item '777': not an item of the dataset"),
    ("user,item\n1,2\nu9,3\n", [], "column 'user', line 3: unknown user 'u9': no interactions in the dataset"),
    ("user,item\n1,2\n3,x\n", ["--internal-ids"], "column 'item', line 3: unknown item 'x': cora's internal ids"),
])
def test_unknown_id_in_pairs_file_names_column_line_and_id(run, tmp_path, monkeypatch, capsys, text, flags, needle):
    path = tmp_path / "pairs.csv"
    path.write_text(text)
    code, out, err = _cli(monkeypatch, capsys, "score", run, "--pairs", path, "--out", tmp_path / "s.parquet", *flags)
    assert code == 1 and f"{path}: {needle}" in err, err
    assert not (tmp_path / "s.parquet").exists()


def test_cli_bad_csv_from_a_shell(run, tmp_path):
    """The installed entry point prints one red line and exits 1, without loading a model."""
    path = tmp_path / "pairs.csv"
    path.write_text("user;item\n1;2\n")
    res = run_cli("score", run, "--pairs", path, "--out", tmp_path / "s.parquet",
                  env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "300"})
    assert res.returncode == 1
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "no user column" in lines[0] and "is the separator right?" in lines[0]
    assert str(path) in lines[0]
