"""How long a recommendation takes, per phase, cold and warm, in each inference mode; and how far
each mode's answers are from fp32's.

    python benchmarks/recommend_latency.py RUN [--users 20] [--candidates 100] [--k 10]
        [--modes fp32,bf16,bf16-mixed,int8] [--threads 1,2] [--auc-rows 300] [--cold] [--out FILE.json]

RUN: a trained CoRA run. Users: half with the shortest histories, half with the longest (prompt
length follows the history). For each mode (dtype x threads), in one process:

  loading      the run loaded (backbone, weights; ``cora.serve.placement``)
  warm         POST /recommend to the service (in-process HTTP client, batcher included), per user:
               p50 / p95 of the whole request, and of its phases: CF retrieval, prompt building
               (rows + tokenising), scoring (forward passes)
  cold         (--cold) ``cora recommend`` as a fresh process, one user: interpreter start-up and
               imports (``cora --version``) + loading + the request
  agreement    against fp32 with the same threads: Spearman of the candidates' probabilities and
               top-k overlap (mean over users), and test AUC of ``--auc-rows`` seeded test rows
               (prompts as in the test split) minus fp32's (scored once per mode, with the most threads)

Each mode runs after the previous one in the same process, so compare modes within one run and
keep the machine otherwise idle (pause background training: ``kill -STOP`` / ``-CONT``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from rich.table import Table

from cora.data.sampling import sample_users
from cora.eval.bootstrap import paired_bootstrap
from cora.eval.metrics import auc
from cora.progress import make_console
from cora.serve import recommend as recommend_module
from cora.serve.placement import Placement
from cora.serve.preflight import RunData
from cora.train.loop import predict

console = make_console()


class PhaseTimer:
    """Wraps the functions a /recommend request goes through and adds up their wall time."""

    def __init__(self, rec):
        self.totals: dict[str, float] = defaultdict(float)
        self._patches = [(rec, "retrieve", "retrieval"), (rec.catalog, "prompt_rows", "prompts"),
                         (rec.method, "encode", "prompts"), (recommend_module, "predict", "scoring")]

    @contextlib.contextmanager
    def installed(self):
        originals = []
        for owner, name, phase in self._patches:
            original = getattr(owner, name)
            originals.append((owner, name, original))
            setattr(owner, name, self._timed(original, phase))
        try:
            yield self
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)

    def _timed(self, fn, phase):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.totals[phase] += time.perf_counter() - t0
        return wrapper

    def take(self) -> dict[str, float]:
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


def pick_users(rec, n: int) -> list[int]:
    """``n`` warm users: half with the shortest histories, half with the longest."""
    users = sorted(rec.catalog.train_users, key=lambda u: (sum(1 for i in rec.catalog.histories[u][0] if i), u))
    half = n // 2
    return users[:half] + users[len(users) - (n - half):]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def test_predictions(rec, rows: int) -> pd.DataFrame:
    """Scores of the seeded test sample (prompts as in the test split), as the service scores."""
    df = sample_users(rec.ds.split("test"), rows, seed=0, per_user=10)
    encoded = rec.method.encode(df, rec.ds.domain)
    with rec.scoring_precision():  # bf16-mixed's autocast
        scores = predict(rec.method, encoded, rec.batch_size, rec.accelerator)
    return encoded.frame.assign(score=scores)[["uid", "iid", "label", "score", "not_cold"]]


def cold_cli(run: str, user: str, dtype: str, threads: int, candidates: int, k: int) -> tuple[float, float]:
    """(start-up of a fresh `cora` process, a whole `cora recommend`), seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cora", "--version"], check=True, capture_output=True)
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cora", "recommend", run, "--user", user, "--k", str(min(k, candidates)),
                           "--candidates", str(candidates), "--dtype", dtype, "--threads", str(threads), "--json"],
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"cora recommend failed: {done.stderr.strip()}")
    return startup, time.perf_counter() - t0


def measure_mode(run: str, dtype: str, threads: int, users: list[int] | None, args) -> dict:
    from fastapi.testclient import TestClient

    from cora.serve.app import create_app

    t0 = time.perf_counter()
    rec = RunData.open(run).recommender(placement=Placement(device="cpu", dtype=dtype, threads=threads),
                                        say=lambda line: console.print(f"  note: {line}"))
    loading = time.perf_counter() - t0
    users = users if users is not None else pick_users(rec, args.users)
    timer = PhaseTimer(rec)
    latencies, phases, probabilities = [], defaultdict(list), {}
    with TestClient(create_app(rec, max_batch=rec.batch_size, max_wait_ms=1, max_candidates=args.candidates,
                               request_timeout_s=3600)) as client, timer.installed():
        client.post("/recommend", json={"user": rec.ids.users.original(users[0]), "k": args.k,
                                        "candidates": 8})  # warm-up: first-call allocations
        timer.take()
        for uid in users:
            t0 = time.perf_counter()
            r = client.post("/recommend", json={"user": rec.ids.users.original(uid), "k": args.candidates,
                                                "candidates": args.candidates})
            latencies.append(time.perf_counter() - t0)
            r.raise_for_status()
            for phase, seconds in timer.take().items():
                phases[phase].append(seconds)
            probabilities[uid] = {x["item"]: x["probability"] for x in r.json()["items"]}
    result = {"dtype": rec.precision, "threads": threads, "loading_s": round(loading, 2),
              "warm_p50_s": round(pct(latencies, 50), 2), "warm_p95_s": round(pct(latencies, 95), 2),
              **{f"{p}_p50_s": round(pct(v, 50), 3) for p, v in phases.items()},
              "users": users, "probabilities": probabilities}
    if args.auc_rows and threads == args.auc_threads:  # AUC does not depend on the thread count
        frame = test_predictions(rec, args.auc_rows)
        result["test_auc"] = auc(frame["label"].to_numpy(), frame["score"].to_numpy())
        result["_test_frame"] = frame
    if args.cold:
        startup, whole = cold_cli(run, str(rec.ids.users.original(users[0])), dtype, threads, args.candidates, args.k)
        result.update(cold_startup_s=round(startup, 2), cold_total_s=round(whole, 2))
    return result


def agreement(mode: dict, ref: dict, k: int) -> dict:
    rhos, overlaps = [], []
    for uid, probs in mode["probabilities"].items():
        base = ref["probabilities"][uid]
        items = sorted(base)
        a = pd.Series([probs[i] for i in items])
        b = pd.Series([base[i] for i in items])
        rhos.append(a.rank().corr(b.rank()))  # Spearman: Pearson of the ranks
        top = lambda p: set(sorted(p, key=lambda i: (-p[i], str(i)))[:k])  # noqa: E731
        overlaps.append(len(top(probs) & top(base)) / min(k, len(base)))
    out = {"spearman": round(float(np.mean(rhos)), 4), "top_overlap": round(float(np.mean(overlaps)), 3)}
    if "test_auc" in mode and "test_auc" in ref:
        out["auc_minus_fp32"] = round(mode["test_auc"] - ref["test_auc"], 4)
    return out


def auc_intervals(results: list[dict]) -> dict[str, list[float]]:
    """Each mode's test AUC minus fp32's, 95 % paired user-bootstrap interval (same rows, same users)."""
    frames = {r["dtype"]: [r.pop("_test_frame")] for r in results if "_test_frame" in r}
    if "fp32" not in frames or len(frames) < 2:
        return {}
    boot = paired_bootstrap(frames, reference="fp32")
    out = {}
    for mode, row in boot["by_row"].items():
        if mode != "fp32" and row.get("vs_reference"):
            lo, hi = row["vs_reference"]["delta_auc_ci95"]  # fp32 - mode
            out[mode] = [round(-hi, 4), round(-lo, 4)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run")
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--modes", default="fp32,bf16,bf16-mixed,int8")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--auc-rows", type=int, default=300)
    parser.add_argument("--cold", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.auc_threads = max(map(int, args.threads.split(",")))
    modes = args.modes.split(",")
    if modes[0] != "fp32":
        modes = ["fp32"] + [m for m in modes if m != "fp32"]  # the reference comes first
    results, users = [], None
    for threads in map(int, args.threads.split(",")):
        for dtype in modes:
            console.print(f"[bold]{dtype}, {threads} thread(s)[/]")
            r = measure_mode(args.run, dtype, threads, users, args)
            users = r["users"]
            results.append(r)
    table = Table(title=f"{args.candidates} candidates, {len(users)} users ({args.run}; {platform.processor() or platform.machine()})")
    for c in ("mode", "threads", "loading s", "warm p50 s", "warm p95 s", "retrieval", "prompts", "scoring",
              "cold s", "Spearman", f"top-{args.k} overlap", "test AUC", "AUC - fp32 [95 %]"):
        table.add_column(c, justify="right")
    intervals = auc_intervals(results)
    for r in results:
        ref = next(x for x in results if x["dtype"] == "fp32" and x["threads"] == r["threads"])
        agree = agreement(r, ref, args.k)
        if "auc_minus_fp32" in agree and r["dtype"] in intervals:
            agree["auc_minus_fp32_ci95"] = intervals[r["dtype"]]
        r["agreement"] = agree
        table.add_row(r["dtype"], str(r["threads"]), f"{r['loading_s']:.1f}", f"{r['warm_p50_s']:.1f}",
                      f"{r['warm_p95_s']:.1f}", f"{r.get('retrieval_p50_s', 0):.3f}", f"{r.get('prompts_p50_s', 0):.2f}",
                      f"{r.get('scoring_p50_s', 0):.1f}", f"{r['cold_total_s']:.1f}" if "cold_total_s" in r else "-",
                      f"{agree['spearman']:.4f}", f"{agree['top_overlap']:.2f}",
                      f"{r['test_auc']:.4f}" if "test_auc" in r else "-",
                      f"{agree['auc_minus_fp32']:+.4f}" + (" [{:+.4f}, {:+.4f}]".format(*agree["auc_minus_fp32_ci95"])
                                                           if "auc_minus_fp32_ci95" in agree else "")
                      if "auc_minus_fp32" in agree else "-")
    console.print(table)
    if args.out:
        for r in results:
            r["probabilities"] = {str(u): p for u, p in r["probabilities"].items()}
        args.out.write_text(json.dumps({"run": args.run, "date": time.strftime("%Y-%m-%d"),
                                        "machine": platform.platform(), "args": vars(args) | {"out": str(args.out)},
                                        "results": results}, indent=1, default=str))


if __name__ == "__main__":
    main()
