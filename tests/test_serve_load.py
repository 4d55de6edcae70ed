"""A short mixed load on the real `cora serve` (benchmarks/serve_load.py --mix, in a subprocess
on loopback, tiny trained CoRA run): 20 clients x 3 s of /score and /recommend, 0 errors.
Timings are the benchmark's to report, not this test's to assert."""

from __future__ import annotations

import math

from helpers import load_benchmark


def _serve_load(monkeypatch):
    return load_benchmark(monkeypatch, "serve_load")


def test_mixed_score_and_recommend_load_has_no_errors(run, capsys, monkeypatch):
    results = _serve_load(monkeypatch).main([str(run), "--seconds", "3", "--clients", "20", "--mix", "0.5",
                                             "--k", "5", "--candidates", "20", "--drain", "60", "--modes", "on"])
    out = capsys.readouterr().out
    r = results["on"]
    assert r["errors"] == 0 and r["unfinished"] == 0, r["error_samples"]
    score, recommend = r["endpoints"]["/score"], r["endpoints"]["/recommend"]
    assert score["requests"] > 0 and recommend["requests"] > 0  # both endpoints were under load
    assert score["requests"] + recommend["requests"] == r["requests"]
    assert all(math.isfinite(x[k]) for x in (score, recommend) for k in ("p50_ms", "p99_ms"))
    assert "/recommend: p50 / p99 (ms)" in out and "mixed: 50% /score" in out
