"""Top-K evaluation: HR@K / NDCG@K by hand, the CF-vs-rerank protocol on a tiny trained CoRA run
(candidates, histories, relevant items, metrics.json), `cora evaluate --ranking`, and a smoke run
of benchmarks/serve_load.py."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from cora.errors import CoraError
from cora.eval.ranking import ranking_metrics, user_hit, user_ndcg
from cora.io import read_json
from cora.serve.ranking import catalog_at_start, evaluate_ranking, rank_users, ranking_key
from cora.train.loop import predict

from helpers import load_benchmark, main_in_process


L2, L3, L5 = math.log2(2), math.log2(3), math.log2(5)


# ----------------------------------------------------------------------------- metrics by hand
def test_hit_and_ndcg_by_hand():
    ranked, rel = [5, 3, 9, 1], {3, 1}
    assert user_hit(ranked, rel, 1) == 0.0 and user_hit(ranked, rel, 2) == 1.0
    # Relevant items at positions 2 and 4; the ideal list has them at 1 and 2.
    assert user_ndcg(ranked, rel, 2) == pytest.approx((1 / L3) / (1 / L2 + 1 / L3))
    assert user_ndcg(ranked, rel, 4) == pytest.approx((1 / L3 + 1 / L5) / (1 / L2 + 1 / L3))
    assert user_ndcg(ranked, rel, 1) == 0.0
    assert user_ndcg([3, 1, 5], rel, 2) == pytest.approx(1.0)
    # More relevant items than k: the ideal DCG counts only k of them.
    assert user_ndcg([1, 2, 7], {1, 2, 3}, 2) == pytest.approx(1.0)
    # A relevant item missing from the (short) list earns nothing but still counts in the ideal.
    assert user_ndcg([4], {4, 8}, 10) == pytest.approx(1 / (1 + 1 / L3))


def test_ranking_metrics_are_unweighted_means_over_users():
    m = ranking_metrics([[1, 2, 3], [4, 5, 6], [7, 8, 9]], [{1}, {6}, {10}], k=3)
    assert m["hr"] == pytest.approx(2 / 3)
    assert m["ndcg"] == pytest.approx((1.0 + (1 / math.log2(4)) + 0.0) / 3)
    assert ranking_metrics([[2, 1]], [[1]], k=1) == {"hr": 0.0, "ndcg": 0.0}


@pytest.mark.parametrize("args, needle", [
    (([[1]], [set()], 1), "at least one relevant"),
    (([[1]], [{1}], 0), "k must be >= 1"),
    (([[1], [2]], [{1}], 1), "2 ranked lists but 1"),
    (([], [], 1), "no users"),
])
def test_ranking_metric_errors(args, needle):
    with pytest.raises(CoraError, match=needle):
        ranking_metrics(*args)


# ----------------------------------------------------------------------------- protocol on a tiny run
@pytest.fixture(scope="module")
def ranked(rec):
    return rank_users(rec, "test", k=3, candidates=8)


def _first_test_rows(test: pd.DataFrame) -> pd.DataFrame:
    t = test.assign(_row=np.arange(len(test))).sort_values(["uid", "timestamp", "_row"], kind="stable")
    return t.groupby("uid").head(1).set_index("uid")


def _seen_before_test(tables, uid) -> set[int]:
    first = _first_test_rows(tables["test"]).loc[uid]
    earlier = pd.concat([tables["train"], tables["valid"]])
    return set(earlier.loc[earlier["uid"] == uid, "iid"].astype(int)) | {int(x) for x in first["his"]}


def test_history_at_test_start_is_the_first_test_rows_history(rec, tables):
    start = catalog_at_start(rec.ds, "test", rec.catalog.titles)
    first = _first_test_rows(tables["test"])
    assert set(start.histories) == set(first.index)
    for uid, row in first.iterrows():
        assert start.histories[uid] == ([int(x) for x in row["his"]], [str(t) for t in row["his_title"]])
        assert set(start.interacted[uid].tolist()) == _seen_before_test(tables, uid)


def test_valid_split_starts_after_train_only(rec, tables):
    start = catalog_at_start(rec.ds, "valid", rec.catalog.titles)
    valid, train = tables["valid"], tables["train"]
    assert set(start.histories) == set(valid["uid"])
    uid = int(valid["uid"].iloc[0])
    first = _first_test_rows(valid).loc[uid]
    assert set(start.interacted[uid].tolist()) == (set(train.loc[train["uid"] == uid, "iid"].astype(int))
                                                  | {int(x) for x in first["his"]})
    metrics, _ = rank_users(rec, "valid", k=2, candidates=5)
    assert metrics["split"] == "valid" and metrics["users"] > 0


def test_candidates_are_cf_top_n_of_items_unseen_before_the_test_period(ranked, rec, tables):
    metrics, table = ranked
    test = tables["test"]
    all_items = sorted(rec.catalog.titles)
    eligible = set()
    for uid in sorted(set(test["uid"])):
        seen = _seen_before_test(tables, uid)
        relevant = set(test.loc[(test["uid"] == uid) & (test["label"] == 1), "iid"].astype(int)) - seen
        if relevant:
            eligible.add(uid)
        else:
            assert uid not in set(table["uid"])
            continue
        pool = [i for i in all_items if i != 0 and i not in seen]
        with torch.no_grad():
            s = rec.cf({"uid": torch.tensor([uid] * len(pool)), "iid": torch.tensor(pool)}).numpy()
        expected = [pool[j] for j in np.lexsort((pool, -s))][:8]
        g = table[table["uid"] == uid].sort_values("cf_rank")
        assert g["iid"].tolist() == expected  # nothing forced in, nothing seen, CF order
        assert g["cf_rank"].tolist() == list(range(1, len(expected) + 1))
        assert set(g.loc[g["relevant"] == 1, "iid"]) == relevant & set(expected)
        # Rerank: the same candidates by logit, ties in CF order.
        by_score = g.sort_values(["score", "cf_rank"], ascending=[False, True])
        assert by_score["rerank_rank"].tolist() == list(range(1, len(g) + 1))
    assert set(table["uid"]) == eligible
    assert metrics["users"] == metrics["eligible_users"] == len(eligible)


def test_prompt_of_a_candidate_is_the_first_test_rows_prompt(rec, tables):
    """The reranker sees the user's history as of the test period's start: scoring (user, item)
    with it equals scoring the user's first test row itself (same history, same target)."""
    import copy

    start = copy.copy(rec)
    start.catalog = catalog_at_start(rec.ds, "test", rec.catalog.titles)
    first = _first_test_rows(tables["test"]).reset_index()
    rows = first.iloc[:5][tables["test"].columns]
    direct = predict(rec.method, rec.method.encode(rows, rec.ds.domain), 8)
    via = start.logits(list(zip(rows["uid"].astype(int), rows["iid"].astype(int))))
    np.testing.assert_allclose(via, direct, atol=1e-5)


def test_reported_metrics_match_the_scored_candidates(ranked, tables):
    metrics, table = ranked
    test = tables["test"]
    rel, cf_lists, rr_lists = [], [], []
    for uid, g in table.groupby("uid"):
        positives = set(test.loc[(test["uid"] == uid) & (test["label"] == 1), "iid"].astype(int))
        rel.append(positives - _seen_before_test(tables, uid))  # in the candidates or not
        cf_lists.append(g.sort_values("cf_rank")["iid"].tolist())
        rr_lists.append(g.sort_values("rerank_rank")["iid"].tolist())
    for block, lists in (("cf", cf_lists), ("rerank", rr_lists)):
        expected = ranking_metrics(lists, rel, 3)
        assert metrics[block]["hr"] == pytest.approx(expected["hr"], abs=1e-6)
        assert metrics[block]["ndcg"] == pytest.approx(expected["ndcg"], abs=1e-6)
        assert 0.0 <= metrics[block]["hr"] <= 1.0 and 0.0 <= metrics[block]["ndcg"] <= metrics[block]["hr"] + 1e-9
    assert metrics["in_candidates"] == pytest.approx(np.mean([bool(r & set(c)) for r, c in zip(rel, cf_lists)]))
    assert metrics["positives"] == sum(len(r) for r in rel)
    assert metrics["eval"]["pairs"] == len(table)


def test_every_unseen_item_as_candidate_puts_every_positive_in_reach(rec):
    metrics, table = rank_users(rec, "test", k=100, candidates=100)
    assert metrics["in_candidates"] == 1.0
    assert metrics["cf"]["hr"] == metrics["rerank"]["hr"] == 1.0
    assert metrics["positives"] == int(table["relevant"].sum())


def test_evaluate_ranking_writes_metrics_and_predictions(run):
    m = evaluate_ranking(run, "test", k=3, candidates=8, show_progress=False)
    key = "ranking-test-k3-c8"
    assert ranking_key("test", 3, 8, None) == key
    saved = read_json(run / "metrics.json")[key]
    assert saved == json.loads(json.dumps(m))
    assert {"users", "k", "candidates", "cf", "rerank"} <= set(saved) and saved["k"] == 3 and saved["candidates"] == 8
    assert set(saved["cf"]) == set(saved["rerank"]) == {"hr", "ndcg"}
    table = pd.read_parquet(run / f"{key}.parquet")
    # The dataset's own ids (the toy has no maps: cora's) and titles; internal ids only when asked for.
    assert list(table.columns) == ["user", "item", "title", "cf_score", "cf_rank", "score", "rerank_rank", "relevant"]
    assert table["user"].nunique() == m["users"]


def test_limit_users_is_a_seeded_sample(run, ranked):
    full = ranked[0]
    a = evaluate_ranking(run, "test", k=3, candidates=8, limit_users=4, show_progress=False)
    users_a = set(pd.read_parquet(run / "ranking-test-k3-c8-limit4.parquet")["user"])
    b = evaluate_ranking(run, "test", k=3, candidates=8, limit_users=4, show_progress=False, internal_ids=True)
    users_b = set(pd.read_parquet(run / "ranking-test-k3-c8-limit4.parquet")["uid"])
    assert a["users"] == 4 and a["limit_users"] == 4 and users_a == users_b
    assert a["eligible_users"] == full["users"] and users_a <= set(ranked[1]["uid"])
    assert a["cf"] == b["cf"] and a["rerank"] == b["rerank"]
    assert "ranking-test-k3-c8-limit4" in read_json(run / "metrics.json")


@pytest.mark.parametrize("kwargs, needle", [
    (dict(k=0), "k must be >= 1"),
    (dict(k=5, candidates=3), r"candidates \(3\) must be >= k \(5\)"),
    (dict(limit_users=0), "--limit-users must be >= 1"),
    (dict(split="train"), "unknown split 'train'"),
])
def test_bad_ranking_arguments(rec, kwargs, needle):
    with pytest.raises(CoraError, match=needle):
        rank_users(rec, **{"split": "test", "k": 3, "candidates": 8, **kwargs})


# ----------------------------------------------------------------------------- CLI
def _cli(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    return main_in_process(monkeypatch, capsys, *args, columns=200)


def test_cli_evaluate_ranking(run, monkeypatch, capsys):
    code, out, err = _cli(monkeypatch, capsys, "evaluate", run, "--split", "test", "--ranking", "--k", 2,
                          "--candidates", 6, "--limit-users", 5)
    assert code == 0, err
    assert "HR@2" in out and "NDCG@2" in out and "CF + rerank (cora)" in out and "5 users" in out
    saved = read_json(run / "metrics.json")["ranking-test-k2-c6-limit5"]
    assert saved["users"] == 5 and saved["k"] == 2 and saved["candidates"] == 6


@pytest.mark.parametrize("args, needle", [
    (["--ranking", "--limit", 10], "with --ranking use --limit-users"),
    (["--ranking", "--k", 5, "--candidates", 3], "candidates (3) must be >= k (5)"),
    (["--limit-users", 3], "go with --ranking"),
])
def test_cli_ranking_errors_are_one_line(run, monkeypatch, capsys, args, needle):
    code, out, err = _cli(monkeypatch, capsys, "evaluate", run, *args)
    lines = [x for x in err.splitlines() if x.strip()]
    assert code == 1 and len(lines) == 1 and needle in lines[0], err


# ----------------------------------------------------------------------------- load benchmark
def _serve_load(monkeypatch):
    return load_benchmark(monkeypatch, "serve_load")


def test_serve_load_counts_forward_passes(monkeypatch):
    fp = _serve_load(monkeypatch).forward_passes
    # Requests no larger than max_batch: one forward pass per model call.
    assert fp({"batches": 7, "requests": 30, "pairs": 120}, max_batch=32, per_request=4) == 7
    # Larger requests are scored alone in passes of max_batch pairs (max_batch 1: one per pair).
    assert fp({"batches": 30, "requests": 30, "pairs": 120}, max_batch=1, per_request=4) == 120
    assert fp({"batches": 5, "requests": 5, "pairs": 200}, max_batch=32, per_request=40) == 10


def test_serve_load_smoke(run, capsys, monkeypatch):
    """The real `cora serve` in a subprocess (most of the ~15 s is its imports), 2 clients for 1 s,
    micro-batching on: no errors, sane numbers, the table printed."""
    results = _serve_load(monkeypatch).main([str(run), "--seconds", "1", "--clients", "2", "--drain", "60",
                                             "--modes", "on"])
    out = capsys.readouterr().out
    assert set(results) == {"on"} and "requests/s" in out and "p99 latency" in out and "batching on" in out
    r = results["on"]
    assert r["requests"] > 0 and r["errors"] == 0 and r["unfinished"] == 0
    assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"] and r["rps"] > 0
    assert r["forward_passes"] == r["model_calls"] >= 1 and 4.0 <= r["mean_batch"] <= 8.0  # 1-2 requests of 4
