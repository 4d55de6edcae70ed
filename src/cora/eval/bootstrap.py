"""User-level paired bootstrap: a 95 % interval for every AUC / UAUC and for every difference
between rows (DESIGN sec. 5).

**Resampling unit: the test user.** A user's rows are not independent (one user, one history,
one CF vector), so resampling rows would make the intervals too narrow. One resample draws the
test users with replacement; it is a multinomial count vector ``c`` over the users
(``c_u`` = how often user u was drawn, summing to the number of users). Every row of user u then
enters the resample ``c_u`` times, so

* AUC on a resample is the *weighted* AUC of all rows with weight ``c_u`` per row of user u
  (ties count one half, as in sklearn); computed for a block of resamples at once from one sort
  of the scores (:func:`weighted_auc`);
* UAUC on a resample is ``sum_u c_u auc_u / sum_u c_u`` over users with both labels: a user's
  AUC does not change when all its rows are repeated, so per-user AUCs are computed once (by
  ranks) and only re-weighted;
* warm / cold metrics use the same counts on the warm / cold rows of the drawn users.

**Paired.** The same count vectors are applied to every row of a report, so the difference
between two rows is computed on each resample and gets its own interval, which is far narrower
than what the two rows' intervals suggest: both rows see the same lucky or unlucky users. This
needs every row scored on identical test rows; :func:`align` refuses anything else.

**Intervals** are percentile intervals (2.5th and 97.5th percentile over the resamples).

**One sign: reference - row.** Every difference to the reference (``vs_reference``) is the
reference's metric minus the row's, the question every report asks ("is the reference better
than this row?"): positive where the reference is ahead. ``p_delta_le_0`` is the share of
resamples where that difference is <= 0: the one-sided bootstrap p-value of "the reference is
better than the row", read the usual way (small: the reference is better; near 1: the row is).
A contrast (a weighted sum of rows) keeps the sign its weights give, and its ``p_delta_le_0`` is
the one-sided p-value of "the contrast is > 0". A resample where a metric is undefined (e.g. no
positive among the drawn users' cold rows) is left out of that metric's interval and p-value.

**Users behind each metric** (``metric_users``): how many test users a metric rests on (users
with rows in its subset; for a UAUC, users with both labels there). A percentile interval over
few users covers less than its 95 % (``scripts/bootstrap_coverage.py``): reports warn below
:data:`cora.eval.report.MIN_USERS`.

**Seeds.** A row trained with several seeds has one predictions frame per seed (each seed's own
scores; scores are never averaged across seeds). Its headline is the mean over seeds of each
seed's metric, and its interval is the bootstrap of that same statistic: on each resample the
metric of every seed is computed on the same drawn users and averaged over seeds. This interval
covers test-sample uncertainty of the seed-averaged number (the number reported), and the
differences to the reference are per-resample differences of seed means, so they stay paired.
Seed-to-seed variation is reported separately, as the standard deviation over seeds
(:mod:`cora.eval.report`); the bootstrap of only the first seed would throw away the other
seeds' information and describe a number that is not the one reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cora.errors import CoraError

COLUMNS = ("uid", "iid", "label", "score", "not_cold")
KEY = ("uid", "iid", "label", "not_cold")  # what must be identical for two runs to be compared
METRICS = ("auc", "uauc", "warm_auc", "warm_uauc", "cold_auc", "cold_uauc")
SUBSETS = ("", "warm_", "cold_")
# Rows x resamples of one block of weights in memory (float64): ~32 MB per array.
_BLOCK_CELLS = 4_000_000


# ----------------------------------------------------------------------------- input
def read_predictions(path: str | Path) -> pd.DataFrame:
    """A predictions parquet (uid, iid, label, score, not_cold); anything else is a one-line
    :class:`CoraError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CoraError(f"{path}: predictions file not found (score the split first: 'cora evaluate')")
    try:
        df = pd.read_parquet(path)
    except Exception as e:  # pyarrow raises several types for truncated or foreign files
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise CoraError(f"{path}: not a readable predictions parquet ({first})") from None
    check_predictions(df, str(path))
    return df


def check_predictions(df: pd.DataFrame, source: str) -> None:
    """Columns present, labels 0/1, finite scores: the bootstrap would silently mislead otherwise."""
    if missing := [c for c in COLUMNS if c not in df.columns]:
        raise CoraError(f"{source}: predictions lack column(s) {', '.join(missing)} (need {', '.join(COLUMNS)})")
    if len(df) == 0:
        raise CoraError(f"{source}: predictions hold no rows")
    if not df["label"].isin([0, 1]).all():
        raise CoraError(f"{source}: column 'label' must hold 0 / 1")
    if not np.isfinite(df["score"].to_numpy(dtype=np.float64)).all():
        raise CoraError(f"{source}: column 'score' holds NaN or infinite values")


def fingerprint(df: pd.DataFrame, order: np.ndarray | None = None) -> str:
    """sha256 of the (uid, iid, label, not_cold) rows in sorted order: equal iff two runs were
    scored on the same multiset of test rows (row order does not matter)."""
    order = _row_order(df) if order is None else order
    h = hashlib.sha256()
    for col in KEY:
        h.update(np.ascontiguousarray(df[col].to_numpy(dtype=np.int64)[order]).tobytes())
    return h.hexdigest()


def _row_order(df: pd.DataFrame) -> np.ndarray:
    # np.lexsort is stable and sorts by the LAST key first.
    return np.lexsort([df[c].to_numpy(dtype=np.int64) for c in reversed(KEY)])


def align(preds: Mapping[str, Sequence[pd.DataFrame]],
          sources: Mapping[str, Sequence[str]] | None = None) -> tuple[pd.DataFrame, dict[str, list[np.ndarray]]]:
    """Put every frame into one common row order; returns (the shared key rows, scores per row
    name and seed). Frames scored on different test rows are a :class:`CoraError` naming them."""
    sources = sources or {}
    named = []  # (row name, frame, how errors call it, its sorted row order)
    for name, frames in preds.items():
        srcs = list(sources.get(name, []))
        for k, frame in enumerate(frames):
            label = srcs[k] if k < len(srcs) else (name if len(frames) == 1 else f"{name} (seed #{k + 1})")
            named.append((name, frame, label, _row_order(frame)))
    if not named:
        raise CoraError("no predictions to compare")
    prints = [fingerprint(frame, order) for _, frame, _, order in named]
    if odd := [i for i, p in enumerate(prints) if p != prints[0]]:
        first, n0 = named[0][2], len(named[0][1])
        what = ", ".join(f"{named[i][2]} ({len(named[i][1]):,} rows)" for i in odd)
        raise CoraError(f"rows are compared only on identical test rows, but {what} "
                        f"{'was' if len(odd) == 1 else 'were'} scored on other rows than {first} ({n0:,} rows)")
    keys = named[0][1].iloc[named[0][3]][list(KEY)].reset_index(drop=True)
    scores: dict[str, list[np.ndarray]] = {name: [] for name in preds}
    for name, frame, _, order in named:
        scores[name].append(frame["score"].to_numpy(dtype=np.float64)[order])
    return keys, scores


# ----------------------------------------------------------------------------- AUCs
def weighted_auc(labels, scores, weights) -> np.ndarray | float:
    """ROC AUC with per-row weights; ``weights`` is (N,) or a block (B, N) of B weightings of the
    same rows (then B AUCs come back). Equal to sklearn's ``roc_auc_score(..., sample_weight=w)``
    (ties count one half); NaN where the weighted positives or negatives are zero."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    prep = _AucPrep(labels, scores)
    out = prep.auc(np.atleast_2d(w)[:, prep.order])
    return float(out[0]) if single else out


class _AucPrep:
    """One sort of the scores, reused for every block of weights: a positive row beats the
    weighted negatives below its tie group and half of those inside it."""

    def __init__(self, labels: np.ndarray, scores: np.ndarray):
        self.order = np.argsort(scores, kind="stable")
        s = scores[self.order]
        self.pos = labels[self.order]
        starts = np.r_[True, s[1:] != s[:-1]]
        self.group = np.cumsum(starts) - 1               # tie group of each sorted row
        self.ends = np.r_[np.flatnonzero(starts)[1:], len(s)] - 1  # last sorted row of each group

    def auc(self, w: np.ndarray) -> np.ndarray:
        """AUCs of a block of weights (B, N) given in sorted order."""
        wn = np.where(self.pos, 0.0, w)
        end = np.cumsum(wn, axis=1)[:, self.ends]        # negative weight up to the end of each group
        start = np.concatenate([np.zeros((len(w), 1)), end[:, :-1]], axis=1)
        mid = 0.5 * (start + end)                        # below the group + half of the group's own
        wp = w[:, self.pos]
        num = (wp * mid[:, self.group[self.pos]]).sum(axis=1)
        den = wp.sum(axis=1) * wn.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def user_aucs(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user AUC by ranks (Mann-Whitney: tied scores share their mean rank) for user indices
    0..n_users-1; returns (auc per user, mask of users with both labels). Users without rows or
    with one class get NaN and False, the rule of :func:`cora.eval.metrics.uauc`."""
    labels = np.asarray(labels).astype(np.float64)
    ranks = pd.Series(scores).groupby(users).rank(method="average").to_numpy()
    n = np.bincount(users, minlength=n_users).astype(np.float64)
    n_pos = np.bincount(users, weights=labels, minlength=n_users)
    rank_pos = np.bincount(users, weights=ranks * labels, minlength=n_users)
    n_neg = n - n_pos
    valid = (n_pos > 0) & (n_neg > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where(valid, (rank_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg), np.nan)
    return auc, valid


# ----------------------------------------------------------------------------- resampling
def resample_counts(n_users: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n_users) draw counts: each row is one bootstrap draw of n_users users."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_users, np.full(n_users, 1.0 / n_users), size=n_resamples)


def _metric_draws(users: np.ndarray, labels: np.ndarray, scores: np.ndarray, mask: np.ndarray,
                  counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(AUC, UAUC) on every resample for the rows in ``mask`` (all, warm or cold)."""
    n_res, n_users = counts.shape
    if not mask.any():
        return np.full(n_res, np.nan), np.full(n_res, np.nan)
    u, y, s = users[mask], labels[mask], scores[mask]
    prep = _AucPrep(y.astype(bool), s)
    u_sorted = u[prep.order]
    block = max(1, _BLOCK_CELLS // len(u))
    auc = np.concatenate([prep.auc(counts[i:i + block][:, u_sorted].astype(np.float64))
                          for i in range(0, n_res, block)])
    per_user, valid = user_aucs(u, y, s, n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        uauc = (counts @ np.where(valid, per_user, 0.0)) / (counts @ valid.astype(np.float64))
    return auc, uauc


def metric_draws(keys: pd.DataFrame, scores: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Every metric of :data:`METRICS` on every resample (``counts`` over the users of ``keys``,
    indexed in sorted uid order) for one frame of scores aligned with ``keys``."""
    users = np.unique(keys["uid"].to_numpy(), return_inverse=True)[1]
    labels = keys["label"].to_numpy()
    warm = keys["not_cold"].to_numpy() == 1
    masks = {"": np.ones(len(keys), bool), "warm_": warm, "cold_": ~warm}
    out = {}
    for prefix, mask in masks.items():
        out[f"{prefix}auc"], out[f"{prefix}uauc"] = _metric_draws(users, labels, scores, mask, counts)
    return out


def metric_users(keys: pd.DataFrame) -> dict[str, int]:
    """How many test users each metric of :data:`METRICS` rests on: users with rows in its subset
    (all, warm, cold) for an AUC, users with both labels there for a UAUC (the others are
    skipped, :func:`cora.eval.metrics.uauc`)."""
    warm = keys["not_cold"].to_numpy() == 1
    out = {}
    for prefix, mask in (("", np.ones(len(keys), bool)), ("warm_", warm), ("cold_", ~warm)):
        labels = keys.loc[mask, "label"].groupby(keys.loc[mask, "uid"]).nunique()
        out[f"{prefix}auc"], out[f"{prefix}uauc"] = len(labels), int((labels == 2).sum())
    return out


# ----------------------------------------------------------------------------- summaries
def _r(x) -> float | None:
    return None if x is None or not np.isfinite(x) else round(float(x), 6)


def interval(draws: np.ndarray) -> list[float | None] | None:
    """95 % percentile interval over the resamples where the metric is defined."""
    finite = draws[np.isfinite(draws)]
    if len(finite) == 0:
        return None
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return [_r(lo), _r(hi)]


def _share_le_0(diff: np.ndarray) -> float | None:
    finite = diff[np.isfinite(diff)]
    return None if len(finite) == 0 else round(float(np.mean(finite <= 0)), 6)


def paired_bootstrap(preds: Mapping[str, Sequence[pd.DataFrame]], reference: str | None = None, *,
                     n_resamples: int = 1000, seed: int = 0,
                     sources: Mapping[str, Sequence[str]] | None = None,
                     contrasts: Mapping[str, Mapping[str, float]] | None = None) -> dict:
    """Intervals for every row and its difference to ``reference``.

    ``preds`` maps a row name to its predictions frames, one per seed (one for an unseeded row);
    ``sources`` optionally names each frame (a file path) for error messages. Returns::

        {"resamples": B, "seed": S, "users": U, "rows": N, "reference": name | None,
         "delta": "reference - row", "metric_users": {"auc": U, "uauc": ..., "cold_uauc": ...},
         "by_row": {name: {"auc": point, "auc_ci95": [lo, hi], ... for METRICS,
                           "per_seed": [{"auc": ..., "auc_ci95": [...], ...}, ...],
                           "vs_reference": {"row": ref, "delta_auc": d, "delta_auc_ci95": [lo, hi],
                                            "p_delta_le_0": p, ... uauc / warm / cold ...} | None}}}

    Points are the metrics on the full sample (mean over seeds for a seeded row); every
    ``delta_<metric>`` of ``vs_reference`` is the reference minus the row.

    ``contrasts`` (name -> {row: weight}) adds ``"contrasts": {name: {"weights": ...,
    "delta_auc": d, "delta_auc_ci95": [lo, hi], "p_delta_le_0": p, ... every metric}}``: the
    weighted sum of rows on the same resamples, e.g. a difference of differences
    {A: 1, A_id: -1, B: -1, B_id: 1} ("does text help A more than B?").
    """
    if n_resamples < 1:
        raise CoraError(f"the bootstrap needs at least one resample, got {n_resamples}")
    if reference is not None and reference not in preds:
        raise CoraError(f"reference '{reference}' is not a row (rows: {', '.join(preds)})")
    keys, scores = align(preds, sources)
    n_users = keys["uid"].nunique()
    counts = resample_counts(n_users, n_resamples, seed)
    ones = np.ones((1, n_users), dtype=np.int64)  # the full sample: every user once
    draws, points, by_row = {}, {}, {}
    for name, per_seed in scores.items():
        seed_draws = [metric_draws(keys, s, counts) for s in per_seed]
        seed_points = [metric_draws(keys, s, ones) for s in per_seed]
        draws[name] = {m: np.mean([d[m] for d in seed_draws], axis=0) for m in METRICS}
        points[name] = {m: float(np.mean([p[m][0] for p in seed_points])) for m in METRICS}
        by_row[name] = {**_summary(points[name], draws[name]),
                        "per_seed": [_summary({m: p[m][0] for m in METRICS}, d) for p, d in zip(seed_points, seed_draws)]}
    for name in scores:
        by_row[name]["vs_reference"] = None if reference is None else _versus(
            reference, draws[name], draws[reference], points[name], points[reference])
    out = {"resamples": n_resamples, "seed": seed, "users": int(n_users), "rows": len(keys),
           "reference": reference, "delta": "reference - row", "metric_users": metric_users(keys),
           "by_row": by_row}
    if contrasts:
        out["contrasts"] = {name: _contrast(weights, draws, points) for name, weights in contrasts.items()}
    return out


def _contrast(weights: Mapping[str, float], draws: dict, points: dict) -> dict:
    """sum_row weight * metric, on the full sample and on every resample (paired)."""
    if unknown := [r for r in weights if r not in draws]:
        raise CoraError(f"contrast row '{unknown[0]}' is not a row (rows: {', '.join(draws)})")
    out: dict = {"weights": dict(weights)}
    for m in METRICS:
        diff = sum(w * draws[r][m] for r, w in weights.items())
        out[f"delta_{m}"] = _r(sum(w * points[r][m] for r, w in weights.items()))
        out[f"delta_{m}_ci95"] = interval(diff)
        out["p_delta_le_0" if m == "auc" else f"p_delta_{m}_le_0"] = _share_le_0(diff)
    return out


def _summary(point: dict, draws: dict) -> dict:
    """{metric: full-sample value, metric_ci95: [low, high]} for every metric."""
    out = {}
    for m in METRICS:
        out[m], out[f"{m}_ci95"] = _r(point[m]), interval(draws[m])
    return out


def _versus(reference: str, draws: dict, ref_draws: dict, point: dict, ref_point: dict) -> dict:
    """The reference minus this row, for every metric (module docstring: one sign)."""
    out: dict = {"row": reference}
    for m in METRICS:
        diff = ref_draws[m] - draws[m]
        out[f"delta_{m}"] = _r(ref_point[m] - point[m])
        out[f"delta_{m}_ci95"] = interval(diff)
        # p_delta_le_0 (AUC) is the headline one; the others carry their metric in the name.
        out["p_delta_le_0" if m == "auc" else f"p_delta_{m}_le_0"] = _share_le_0(diff)
    return out
