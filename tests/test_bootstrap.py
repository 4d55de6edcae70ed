"""User-level paired bootstrap (cora.eval.bootstrap) and the tables built on it (cora.eval.report):
weighted AUC = sklearn's, resampled metrics = brute force on expanded rows, a run against itself
differs by exactly 0, different test rows are refused, seeds average per resample, bad files are
one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from cora.errors import CoraError
from cora.eval.bootstrap import (metric_draws, paired_bootstrap, read_predictions, resample_counts, user_aucs,
                                 weighted_auc)
from cora.eval.metrics import auc, evaluate_predictions, uauc
from cora.eval.report import build_report, markdown_table, predictions_rows

from helpers import run_cli


def predictions(n: int = 300, n_users: int = 25, seed: int = 0, signal: float = 1.0) -> pd.DataFrame:
    """Scores that follow the label a little, rounded so that ties occur."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n)
    return pd.DataFrame({"uid": rng.integers(1, n_users + 1, n), "iid": rng.integers(1, 200, n), "label": label,
                         "score": np.round(signal * label + rng.normal(size=n), 1),
                         "not_cold": rng.integers(0, 2, n)})


def rescored(df: pd.DataFrame, seed: int, signal: float = 1.0) -> pd.DataFrame:
    """The same test rows scored by another model."""
    rng = np.random.default_rng(seed)
    return df.assign(score=np.round(signal * df["label"] + rng.normal(size=len(df)), 1))


def keys_of(df: pd.DataFrame) -> pd.DataFrame:
    """Frame in the bootstrap's row order (uid, iid, label, not_cold), as align() returns it."""
    return df.sort_values(["uid", "iid", "label", "not_cold"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------- AUCs
def test_weighted_auc_equals_sklearn_with_sample_weight_and_ties():
    df = predictions()
    rng = np.random.default_rng(1)
    weights = rng.integers(0, 4, (6, len(df)))
    got = weighted_auc(df["label"], df["score"], weights)
    want = [roc_auc_score(df["label"], df["score"], sample_weight=w) for w in weights]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert weighted_auc(df["label"], df["score"], np.ones(len(df))) == pytest.approx(auc(df["label"], df["score"]),
                                                                                  abs=1e-12)
    assert np.isnan(weighted_auc([1, 0, 1], [0.3, 0.2, 0.1], [1, 0, 1]))  # no negative weight left


def test_user_aucs_by_ranks_equal_sklearn_per_user():
    df = predictions()
    users = np.unique(df["uid"], return_inverse=True)[1]
    per_user, valid = user_aucs(users, df["label"].to_numpy(), df["score"].to_numpy(), users.max() + 1)
    for u in range(users.max() + 1):
        g = df[users == u]
        if g["label"].nunique() == 2:
            assert valid[u] and per_user[u] == pytest.approx(roc_auc_score(g["label"], g["score"]), abs=1e-12)
        else:
            assert not valid[u] and np.isnan(per_user[u])
    assert np.nanmean(per_user) == pytest.approx(uauc(df["uid"], df["label"], df["score"])[0], abs=1e-12)


# ----------------------------------------------------------------------------- resampling
def test_resampled_metrics_by_hand():
    # User 1 ranks its positive first (AUC 1), user 2 ranks it last (AUC 0).
    keys = pd.DataFrame({"uid": [1, 1, 2, 2], "iid": [1, 2, 3, 4], "label": [1, 0, 1, 0], "not_cold": [1, 1, 1, 1]})
    scores = np.array([0.9, 0.1, 0.2, 0.8])
    counts = np.array([[2, 0], [1, 1], [0, 2]])
    d = metric_draws(keys, scores, counts)
    # (1, 1): positives 0.9, 0.2 vs negatives 0.1, 0.8 win 3 of 4 pairs; UAUC = (1 + 0) / 2.
    np.testing.assert_allclose(d["auc"], [1.0, 0.75, 0.0])
    np.testing.assert_allclose(d["uauc"], [1.0, 0.5, 0.0])
    np.testing.assert_allclose(d["warm_auc"], d["auc"])
    assert np.isnan(d["cold_auc"]).all() and np.isnan(d["cold_uauc"]).all()  # no cold rows at all


def test_resampled_metrics_equal_brute_force_on_expanded_rows():
    df = keys_of(predictions(n=120, n_users=10))
    users = np.unique(df["uid"], return_inverse=True)[1]
    counts = resample_counts(10, 40, seed=7)
    d = metric_draws(df, df["score"].to_numpy(dtype=float), counts)
    for b, c in enumerate(counts):
        # Expand: user u's rows repeated c_u times, each copy a user of its own.
        parts = [df[users == u].assign(uid=1000 * (u + 1) + k) for u in range(10) for k in range(c[u])]
        big = pd.concat(parts, ignore_index=True)
        m = evaluate_predictions(big)
        for name, want in (("auc", m["auc"]), ("uauc", m["uauc"]), ("warm_auc", m["warm"]["auc"]),
                           ("warm_uauc", m["warm"]["uauc"]), ("cold_auc", m["cold"]["auc"]),
                           ("cold_uauc", m["cold"]["uauc"])):
            if want is None:
                assert np.isnan(d[name][b])
            else:
                assert d[name][b] == pytest.approx(want, abs=1e-6), (b, name)


def test_resample_counts_draw_every_user_count_and_are_seeded():
    c = resample_counts(50, 1000, seed=3)
    assert c.shape == (1000, 50) and (c.sum(axis=1) == 50).all() and (c >= 0).all()
    assert np.array_equal(c, resample_counts(50, 1000, seed=3)) and not np.array_equal(c, resample_counts(50, 1000, 4))
    assert c.mean() == pytest.approx(1.0) and 0.3 < (c == 0).mean() < 0.42  # P(not drawn) -> 1/e


# ----------------------------------------------------------------------------- paired bootstrap
def test_points_are_the_projects_metrics_and_intervals_the_percentiles():
    df = predictions()
    boot = paired_bootstrap({"A": [df]}, n_resamples=1000, seed=0)
    row, m = boot["by_row"]["A"], evaluate_predictions(df)
    assert boot["resamples"] == 1000 and boot["users"] == df["uid"].nunique() and boot["rows"] == len(df)
    assert (row["auc"], row["uauc"], row["warm_auc"], row["cold_uauc"]) == (
        m["auc"], m["uauc"], m["warm"]["auc"], m["cold"]["uauc"])
    keys = keys_of(df)
    draws = metric_draws(keys, keys["score"].to_numpy(dtype=float), resample_counts(keys["uid"].nunique(), 1000, 0))
    assert row["auc_ci95"] == [round(x, 6) for x in np.percentile(draws["auc"], [2.5, 97.5])]
    lo, hi = row["auc_ci95"]
    assert lo < row["auc"] < hi and 0.03 < hi - lo < 0.3
    assert row["vs_reference"] is None  # no reference given


def test_a_run_against_itself_differs_by_exactly_zero():
    df = predictions()
    shuffled = df.sample(frac=1.0, random_state=5)  # row order of a predictions file does not matter
    boot = paired_bootstrap({"A": [df], "A again": [shuffled]}, "A")
    for name in ("A", "A again"):
        v = boot["by_row"][name]["vs_reference"]
        assert v["row"] == "A" and v["delta_auc"] == 0.0 and v["delta_uauc"] == 0.0
        assert v["delta_auc_ci95"] == [0.0, 0.0] and v["delta_uauc_ci95"] == [0.0, 0.0]
        assert v["delta_warm_auc_ci95"] == [0.0, 0.0] and v["delta_cold_uauc_ci95"] == [0.0, 0.0]
        assert v["p_delta_le_0"] == 1.0 and v["p_delta_uauc_le_0"] == 1.0
    assert boot["by_row"]["A"]["auc_ci95"] == boot["by_row"]["A again"]["auc_ci95"]


def test_paired_difference_is_narrower_than_the_rows_intervals_and_signed():
    df = predictions(n=600, n_users=60)
    good, bad = rescored(df, 1, signal=2.0), rescored(df, 2, signal=0.3)
    boot = paired_bootstrap({"good": [good], "bad": [bad]}, "good")
    v = boot["by_row"]["bad"]["vs_reference"]  # reference - row: positive where the reference is ahead
    assert boot["delta"] == "reference - row"
    assert v["delta_auc"] == pytest.approx(boot["by_row"]["good"]["auc"] - boot["by_row"]["bad"]["auc"], abs=2e-6)
    lo, hi = v["delta_auc_ci95"]
    assert 0 < lo <= v["delta_auc"] <= hi  # the reference clearly better: the whole interval above 0
    assert v["p_delta_le_0"] == 0.0  # the one-sided p-value of "the reference is better": as small as can be
    # And the other way round: the good row against the bad reference.
    w = paired_bootstrap({"good": [good], "bad": [bad]}, "bad")["by_row"]["good"]["vs_reference"]
    assert w["delta_auc"] == -v["delta_auc"] and w["delta_auc_ci95"] == [-hi, -lo] and w["p_delta_le_0"] == 1.0
    # The same resamples for both rows: draws move together, so the difference varies less than either.
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(v["delta_uauc_ci95"]) < width(boot["by_row"]["bad"]["uauc_ci95"]) + width(
        boot["by_row"]["good"]["uauc_ci95"])


def test_seeded_row_is_the_mean_over_seeds_on_every_resample():
    df = predictions()
    s1, s2 = rescored(df, 11), rescored(df, 12)
    boot = paired_bootstrap({"ref": [df], "seeded": [s1, s2]}, "ref", n_resamples=1000, seed=0)
    row = boot["by_row"]["seeded"]
    m1, m2 = evaluate_predictions(s1), evaluate_predictions(s2)
    assert row["auc"] == pytest.approx((m1["auc"] + m2["auc"]) / 2, abs=1e-6)
    assert [p["auc"] for p in row["per_seed"]] == [m1["auc"], m2["auc"]]
    keys = keys_of(df)
    counts = resample_counts(keys["uid"].nunique(), 1000, 0)
    draws = [metric_draws(keys, keys_of(s)["score"].to_numpy(dtype=float), counts)["auc"] for s in (s1, s2)]
    ref = metric_draws(keys, keys["score"].to_numpy(dtype=float), counts)["auc"]
    mean = (draws[0] + draws[1]) / 2
    assert row["auc_ci95"] == [round(x, 6) for x in np.percentile(mean, [2.5, 97.5])]
    assert row["per_seed"][0]["auc_ci95"] == [round(x, 6) for x in np.percentile(draws[0], [2.5, 97.5])]
    assert row["vs_reference"]["delta_auc_ci95"] == [round(x, 6) for x in np.percentile(ref - mean, [2.5, 97.5])]
    assert row["vs_reference"]["p_delta_le_0"] == pytest.approx(np.mean(ref - mean <= 0))


def test_rows_scored_on_different_test_rows_are_refused_by_name():
    df = predictions()
    other = df.copy()
    other.loc[3, "iid"] += 1000  # one row differs
    with pytest.raises(CoraError) as e:
        paired_bootstrap({"A": [df], "B": [other]}, sources={"A": ["runs/a/p.parquet"], "B": ["runs/b/p.parquet"]})
    msg = str(e.value)
    assert "runs/b/p.parquet (300 rows)" in msg and "than runs/a/p.parquet (300 rows)" in msg and "\n" not in msg
    with pytest.raises(CoraError, match=r"B \(299 rows\) was scored on other rows than A \(300 rows\)"):
        paired_bootstrap({"A": [df], "B": [df.iloc[1:]]})
    with pytest.raises(CoraError, match="S \\(seed #2\\)"):  # seeds of one row must share the rows too
        paired_bootstrap({"S": [df, df.iloc[1:]]})
    with pytest.raises(CoraError, match="reference 'C' is not a row"):
        paired_bootstrap({"A": [df]}, "C")


# ----------------------------------------------------------------------------- files and tables
@pytest.mark.parametrize("content, message", [
    (None, "predictions file not found"),
    (b"PAR1 not really parquet", "not a readable predictions parquet"),
    ("no-score", "predictions lack column(s) score"),
    ("nan-score", "column 'score' holds NaN"),
])
def test_bad_predictions_files_are_one_line_errors_naming_the_file(tmp_path, content, message):
    path = tmp_path / "p.parquet"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "no-score":
        predictions().drop(columns="score").to_parquet(path)
    elif content == "nan-score":
        predictions().assign(score=np.nan).to_parquet(path)
    with pytest.raises(CoraError) as e:
        read_predictions(path)
    assert str(path) in str(e.value) and message in str(e.value) and "\n" not in str(e.value)


def write_rows(folder, frames: dict[str, pd.DataFrame]):
    folder.mkdir(parents=True, exist_ok=True)
    for name, df in frames.items():
        df.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def test_report_from_predictions_files_alone(tmp_path):
    df = predictions()
    folder = write_rows(tmp_path / "pred", {"MF": rescored(df, 1, 0.5), "CoRA-MF-seed1": rescored(df, 2),
                                            "CoRA-MF-seed2": rescored(df, 3)})
    rows, meta = build_report(None, [folder], "test")
    names = [r["method"] for r in rows]
    assert names == ["CoRA-MF", "MF"] and meta["reference"] == "CoRA-MF"  # name order; first CoRA row
    cora = rows[0]
    assert [s["seed"] for s in cora["seeds"]] == [1, 2] and cora["auc_std"] is not None
    assert cora["auc"] == pytest.approx(np.mean([s["auc"] for s in cora["seeds"]]), abs=1e-6)
    assert cora["vs_reference"]["delta_auc_ci95"] == [0.0, 0.0]
    md = markdown_table(rows, "test", meta)
    lo, hi = rows[1]["auc_ci95"]
    assert f"| MF | 300 | {rows[1]['auc']:.4f} ± {(hi - lo) / 2:.4f} |" in md
    d = rows[1]["vs_reference"]
    assert d["delta_auc"] == pytest.approx(rows[0]["auc"] - rows[1]["auc"], abs=2e-6)  # CoRA-MF - MF
    p = "p<0.001" if d["p_delta_le_0"] == 0 else f"p={d['p_delta_le_0']:.3f}"
    assert f"{d['delta_auc']:+.4f} [{d['delta_auc_ci95'][0]:+.4f}, {d['delta_auc_ci95'][1]:+.4f}] {p}" in md
    assert "| CoRA-MF - row, AUC [95 %], p |" in md
    assert "value ± half-width of the 95 % interval" in md and "| (reference) |" in md
    assert "2 (sd " in md  # the seeded row: seed count and sd over seeds
    # Files given one by one keep their order; --reference picks another row.
    rows, meta = build_report(None, [folder / "MF.parquet", folder / "CoRA-MF-seed1.parquet"], "test",
                              reference="MF")
    assert [r["method"] for r in rows] == ["MF", "CoRA-MF"] and meta["reference"] == "MF"
    assert predictions_rows([folder / "MF.parquet"])[0][0]["n"] == 300
    with pytest.raises(CoraError, match="reference 'TALLRec' is not a row"):
        build_report(None, [folder], "test", reference="TALLRec")
    with pytest.raises(CoraError, match="not both"):
        build_report([tmp_path], [folder], "test")


def test_report_cli_on_predictions_prints_intervals_and_refuses_other_rows(tmp_path):
    df = predictions()
    folder = write_rows(tmp_path / "pred", {"A": df, "B": rescored(df, 4)})
    res = run_cli("report", "--predictions", folder, "--out", tmp_path / "r.md", "--plot", "warm_cold")
    assert res.returncode == 0, res.stderr
    assert "±" in res.stdout and "| A - row, AUC [95 %], p |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "warm_cold.png").stat().st_size > 1000
    write_rows(folder, {"C": df.iloc[10:]})
    res = run_cli("report", "--predictions", folder)
    assert res.returncode == 1 and len(res.stderr.strip().splitlines()) == 1
    assert "C.parquet (290 rows) was scored on other rows than" in res.stderr and "A.parquet" in res.stderr
    (folder / "C.parquet").write_text("garbage")
    res = run_cli("report", "--predictions", folder)
    assert res.returncode == 1 and "C.parquet: not a readable predictions parquet" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert "predictions/" in run_cli("report", "--help").stdout  # documented in --help


def test_verdicts_read_the_interval_of_the_difference():
    from cora.eval.report import add_intervals, verdict, verdict_table

    assert (verdict([0.01, 0.05]), verdict([-0.05, -0.01]), verdict([-0.01, 0.02]), verdict(None)) == (
        "better", "worse", "n.s.", "-")
    df = predictions(n=2000, n_users=200, signal=0.0)
    frames = {"CoRA-MF": rescored(df, 1, signal=2.0), "weak": rescored(df, 2, signal=0.2),
              "same": rescored(df, 1, signal=2.0), "strong": rescored(df, 3, signal=6.0)}
    rows = [{"method": k, "n": len(v)} for k, v in frames.items()]
    meta = add_intervals(rows, [[v] for v in frames.values()], reference="CoRA-MF")
    table = verdict_table(rows, meta)
    lines = {line.split(" | ")[0].lstrip("| "): line for line in table.splitlines() if line.startswith("| ")}
    assert set(lines) == {"row", "weak", "same", "strong"}  # the reference has no line of its own
    weak, same, strong = (lines[k].split(" | ")[1:] for k in ("weak", "same", "strong"))
    assert weak[0].startswith("better (+") and weak[1].startswith("better (+")  # AUC, UAUC
    assert all(c.startswith("n.s. (+0.000 [+0.000, +0.000])") for c in same)  # scored identically
    assert strong[0].startswith("worse (-")
    d = rows[1]["vs_reference"]  # the cell shows reference - row, the stored difference, as the main table
    lo, hi = d["delta_auc_ci95"]
    assert f"({d['delta_auc']:+.3f} [{lo:+.3f}, {hi:+.3f}])" in weak[0]
    assert f"{d['delta_auc']:+.4f} [{lo:+.4f}, {hi:+.4f}]" in markdown_table(rows, "test", meta)
    assert verdict_table(rows, {**meta, "reference": None}) == ""


def test_a_contrast_is_the_weighted_sum_of_rows_on_the_same_resamples():
    """contrasts: {name: {row: weight}}; A - B equals the difference to reference B exactly, and a
    difference of differences is the difference of the two differences on every resample."""
    from cora.eval.report import contrast_table

    df = predictions(n=600, n_users=60)
    rows = {"A": [rescored(df, 1, 2.0)], "A id": [rescored(df, 2, 1.0)], "B": [rescored(df, 3, 1.0)],
            "B id": [rescored(df, 4, 0.8)]}
    dd = {"A": 1, "A id": -1, "B": -1, "B id": 1}
    boot = paired_bootstrap(rows, "B", contrasts={"B - A": {"B": 1, "A": -1}, "dd": dd})
    c, v = boot["contrasts"]["B - A"], boot["by_row"]["A"]["vs_reference"]  # reference B - row A
    for k in ("delta_auc", "delta_auc_ci95", "p_delta_le_0", "delta_uauc_ci95", "delta_cold_auc_ci95"):
        assert c[k] == v[k], k
    by = boot["by_row"]
    assert boot["contrasts"]["dd"]["delta_auc"] == pytest.approx(
        (by["A"]["auc"] - by["A id"]["auc"]) - (by["B"]["auc"] - by["B id"]["auc"]), abs=3e-6)
    lo, hi = boot["contrasts"]["dd"]["delta_auc_ci95"]
    assert lo <= boot["contrasts"]["dd"]["delta_auc"] <= hi
    table = contrast_table({"contrasts": boot["contrasts"]})
    assert "| dd: A - A id - B + B id |" in table and "| B - A: B - A |" in table
    with pytest.raises(CoraError, match="contrast row 'C' is not a row"):
        paired_bootstrap(rows, contrasts={"x": {"C": 1}})


# ----------------------------------------------------------------------------- reading the reports
def test_one_sign_in_every_table_and_a_p_value_that_reads_the_usual_way():
    """The main table's difference, the verdict table and results.json's vs_reference all hold
    reference - row; p is small where the reference is clearly better and near 1 where it is worse."""
    from cora.eval.report import add_intervals, interval_note, p_value, verdict_table

    df = predictions(n=2000, n_users=200, signal=0.0)
    frames = {"CoRA-MF": rescored(df, 1, signal=2.0), "weak": rescored(df, 2, signal=0.2),
              "strong": rescored(df, 3, signal=6.0)}
    rows = [{"method": k, "n": len(v), "auc": evaluate_predictions(v)["auc"]} for k, v in frames.items()]
    meta = add_intervals(rows, [[v] for v in frames.values()], reference="CoRA-MF")
    assert meta["delta"] == "reference - row"
    md, verdicts = markdown_table(rows, "test", meta), verdict_table(rows, meta)
    for r in rows[1:]:
        d = r["vs_reference"]
        assert d["delta_auc"] == pytest.approx(rows[0]["auc"] - r["auc"], abs=2e-6)
        lo, hi = d["delta_auc_ci95"]
        main_cell = f"| {d['delta_auc']:+.4f} [{lo:+.4f}, {hi:+.4f}] {p_value(d['p_delta_le_0'], 1000)} |"
        verdict_cell = f"({d['delta_auc']:+.3f} [{lo:+.3f}, {hi:+.3f}])"
        assert main_cell in md and verdict_cell in verdicts, r["method"]
    weak, strong = rows[1]["vs_reference"], rows[2]["vs_reference"]
    assert weak["delta_auc"] > 0 and weak["p_delta_le_0"] < 0.025 and "better (+" in verdicts  # CoRA-MF ahead
    assert strong["delta_auc"] < 0 and strong["p_delta_le_0"] > 0.975 and "worse (-" in verdicts  # the row ahead
    note = interval_note(meta, seeded=False)
    assert "CoRA-MF - row: the difference in AUC [95 % interval] and p, the one-sided bootstrap p-value of " \
           "'CoRA-MF is better than the row' (the share of resamples where CoRA-MF - row <= 0" in note
    assert "| CoRA-MF - row, AUC [95 %], p |" in md and "Is CoRA-MF better than each row? Cell: verdict " \
           "(CoRA-MF - row [95 % interval])" in verdicts
    assert (p_value(0.0, 1000), p_value(0.0, 2000), p_value(0.0034, 1000), p_value(1.0, 1000), p_value(None, 1000)) == (
        "p<0.001", "p<0.0005", "p=0.003", "p=1.000", "p=-")


def test_users_behind_each_metric_and_the_small_sample_warning():
    from cora.eval.bootstrap import metric_users
    from cora.eval.report import MIN_USERS, add_intervals, small_sample_warning

    # User 1: warm, both labels; user 2: warm, one label; user 3: cold, both labels; user 4: warm and cold rows.
    keys = pd.DataFrame({"uid": [1, 1, 2, 3, 3, 4, 4], "label": [1, 0, 1, 1, 0, 1, 0],
                         "not_cold": [1, 1, 1, 0, 0, 1, 0]})
    assert metric_users(keys) == {"auc": 4, "uauc": 3, "warm_auc": 3, "warm_uauc": 1, "cold_auc": 2, "cold_uauc": 1}
    df = predictions(n=300, n_users=25)  # 25 users: under the line for every metric
    rows = [{"method": "A", "n": len(df)}, {"method": "B", "n": len(df)}]
    meta = add_intervals(rows, [[df], [rescored(df, 4)]], reference="A")
    users = meta["metric_users"]
    assert users["auc"] == df["uid"].nunique() == meta["users"] and MIN_USERS == 30
    warning = small_sample_warning(meta)
    assert warning.startswith(f"Warning: fewer than 30 test users behind AUC {users['auc']}, UAUC {users['uauc']}, ")
    assert f"cold UAUC {users['cold_uauc']}:" in warning and "\n" not in warning
    assert warning in markdown_table(rows, "test", meta)
    assert small_sample_warning(meta, minimum=min(users.values())) == ""  # none below the line: no warning
    big = predictions(n=3000, n_users=300, signal=2.0)
    rows = [{"method": "A", "n": len(big)}]
    meta = add_intervals(rows, [[big]])
    assert min(meta["metric_users"].values()) >= 30 and small_sample_warning(meta) == ""
    assert "Warning" not in markdown_table(rows, "test", meta)


def test_report_cli_warns_on_a_small_sample(tmp_path):
    df = predictions(n=60, n_users=5)
    folder = write_rows(tmp_path / "pred", {"A": df, "B": rescored(df, 4)})
    res = run_cli("report", "--predictions", folder, "--out", tmp_path / "r.md")
    assert res.returncode == 0, res.stderr
    line = [x for x in res.stdout.splitlines() if x.startswith("Warning:")]
    assert len(line) == 1 and "fewer than 30 test users behind AUC 5, UAUC" in line[0], res.stdout
    assert line[0] in (tmp_path / "r.md").read_text()
