"""How often does the user bootstrap's 95 % interval hold the true value, by number of test users?
A measurement, not a test: what the reports' small-sample warning (cora.eval.report.MIN_USERS)
rests on.

The committed predictions of one row serve as the population (ml1m-cpu's 2,000 test rows of 304
users by default): its AUC / UAUC over all users is the "true" value. Each trial draws U of the
users without replacement, takes their rows as a test sample, computes the 95 % percentile
interval of the project's bootstrap (cora.eval.bootstrap, 1,000 resamples) and checks whether it
holds the population value. A trustworthy interval holds it in about 95 % of the trials.

    python scripts/bootstrap_coverage.py results/ml1m-cpu/predictions/MF.parquet --users 5 10 20 30 50 100
"""

from __future__ import annotations

import argparse

import numpy as np

from cora.eval.bootstrap import interval, metric_draws, read_predictions, resample_counts


def coverage(path: str, sizes: list[int], trials: int, resamples: int, seed: int) -> list[dict]:
    df = read_predictions(path).sort_values(["uid", "iid"], kind="stable").reset_index(drop=True)
    users = df["uid"].unique()
    full = metric_draws(df, df["score"].to_numpy(dtype=np.float64), np.ones((1, len(users)), dtype=np.int64))
    truth = {m: float(full[m][0]) for m in ("auc", "uauc")}
    rng = np.random.default_rng(seed)
    out = []
    for size in sizes:
        held = {m: [] for m in truth}
        for trial in range(trials):
            drawn = rng.choice(users, size=size, replace=False)
            sample = df[df["uid"].isin(drawn)].reset_index(drop=True)
            draws = metric_draws(sample, sample["score"].to_numpy(dtype=np.float64),
                                 resample_counts(size, resamples, seed + trial))
            for m in truth:
                ci = interval(draws[m])
                if ci is not None:  # a sample with one class only has no interval to judge
                    held[m].append(ci[0] <= truth[m] <= ci[1])
        out.append({"users": size, **{f"{m}_coverage": float(np.mean(v)) for m, v in held.items()},
                    **{f"{m}_trials": len(v) for m, v in held.items()}})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("predictions", help="A predictions parquet (uid, iid, label, score, not_cold).")
    ap.add_argument("--users", type=int, nargs="+", default=[5, 10, 20, 30, 50, 100], help="Sample sizes in users.")
    ap.add_argument("--trials", type=int, default=400, help="Samples drawn per size.")
    ap.add_argument("--resamples", type=int, default=1000, help="Bootstrap resamples per sample.")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print("| test users | AUC interval holds the true AUC | UAUC interval holds the true UAUC |")
    print("|---:|---:|---:|")
    for r in coverage(args.predictions, args.users, args.trials, args.resamples, args.seed):
        print(f"| {r['users']} | {r['auc_coverage']:.1%} ({r['auc_trials']} samples) | "
              f"{r['uauc_coverage']:.1%} ({r['uauc_trials']} samples) |")


if __name__ == "__main__":
    main()
