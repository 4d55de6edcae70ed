"""Offline top-K evaluation of the two-stage recommender: CF alone vs CF + LLM rerank.

AUC (``cora evaluate``) says how well a method orders the split's *labelled* rows; this module
asks the serving question instead — does reranking the CF model's retrieved items with the LLM
put more of a user's held-out positives into the top K? The protocol replays
:meth:`Recommender.recommend` as it would have run at the start of the evaluated period, so
nothing from that period leaks into the candidates, the prompt or the CF user vector:

1. State at the start of the split (valid or test). A user's *history* is the ``his`` /
   ``his_title`` of their first row of the split (by timestamp, then row order): every positive
   they had before that period, exactly what that row's own prompt shows. Their *seen* items are
   every item of their rows in the earlier splits (train; plus valid when evaluating test), of
   either label, and every item of that history.
2. Users: those with at least one *relevant* item, i.e. a positive (label 1) row of the split
   whose item is not seen. ``limit_users`` keeps a seeded random sample of them (seed 0).
3. Candidates: the CF model's top ``candidates`` items (by CF score, ties to the lower id) among
   all items with a title that the user has not seen, the padding id 0 excluded. Nothing is
   forced in: a positive that CF does not retrieve is a miss for both rankings, as it would be
   in the live service. The split's negatives (items the user rated low) stay in the pool.
4. Rankings of the same candidates: "cf" keeps the CF order; "rerank" orders them by the run's
   score (the Yes logit; ties keep the CF order).
5. HR@K and NDCG@K (binary relevance over all of the user's relevant items; see
   :mod:`cora.eval.ranking`), averaged over users. ``in_candidates`` is the share of users with
   a relevant item among the candidates: the ceiling of HR@K for both rankings.

The result goes into RUN/metrics.json under ``ranking-<split>-k<K>-c<N>[-limit<U>]`` and the
scored candidates into RUN/ranking-<...>.parquet (user, item: the dataset's own ids; title,
cf_score, cf_rank, score, rerank_rank, relevant; cora's uid, iid after user, item with
``internal_ids``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cora import layout
from cora.data.store import Dataset
from cora.errors import CoraError
from cora.eval.ranking import ranking_metrics
from cora.io import update_json, write_parquet
from cora.serve.catalog import Catalog, train_ids
from cora.serve.recommend import Recommender, check_k

EARLIER_SPLITS = {"valid": ("train",), "valid_small": ("train",), "test": ("train", "valid")}
SAMPLE_SEED = 0


def ranking_key(split: str, k: int, candidates: int, limit_users: int | None) -> str:
    key = f"ranking-{split}-k{k}-c{candidates}"
    return key if limit_users is None else f"{key}-limit{limit_users}"


def catalog_at_start(ds: Dataset, split: str, titles: dict[int, str]) -> Catalog:
    """The catalog as it stood when ``split`` began, for the users with rows in ``split``
    (step 1 of the module's protocol)."""
    if split not in EARLIER_SPLITS:
        raise CoraError(f"unknown split '{split}' for ranking (choose valid, valid_small or test)")
    rows = ds.split(split)
    rows = rows.assign(_row=np.arange(len(rows))).sort_values(["uid", "timestamp", "_row"], kind="stable")
    first = rows.groupby("uid", sort=False).head(1)
    histories = {int(u): ([int(x) for x in h], [str(t) for t in ht])
                 for u, h, ht in zip(first["uid"], first["his"], first["his_title"])}
    earlier = pd.concat([ds.split(s)[["uid", "iid"]] for s in EARLIER_SPLITS[split]], ignore_index=True)
    earlier_items = earlier.groupby("uid")["iid"].apply(lambda s: s.to_numpy(dtype=np.int64)).to_dict()
    interacted = {u: np.unique(np.concatenate([earlier_items.get(u, np.zeros(0, dtype=np.int64)),
                                               np.asarray(h, dtype=np.int64)]))
                  for u, (h, _) in histories.items()}
    return Catalog(histories=histories, interacted=interacted, titles=dict(titles), **train_ids(ds))


def relevant_items(ds: Dataset, split: str, catalog: Catalog) -> dict[int, set[int]]:
    """Per user, the positives of ``split`` not seen before it (step 2); users without any are left out."""
    pos = ds.split(split)
    pos = pos[pos["label"] == 1]
    out = {}
    for uid, items in pos.groupby("uid")["iid"]:
        rel = set(items.astype(int).tolist()) - set(catalog.interacted[int(uid)].tolist())
        if rel:
            out[int(uid)] = rel
    return out


def sample_ranking_users(users: list[int], limit_users: int | None, seed: int = SAMPLE_SEED) -> list[int]:
    """All ``users`` (sorted), or a seeded random ``limit_users`` of them (sorted)."""
    users = sorted(users)
    if limit_users is None or limit_users >= len(users):
        return users
    rng = np.random.default_rng(seed)
    return sorted(int(u) for u in rng.choice(users, size=limit_users, replace=False))


def _round(block: dict) -> dict:
    return {k: round(float(v), 6) for k, v in block.items()}


def check_ranking_args(split: str, k: int, candidates: int, limit_users: int | None) -> None:
    """Reject bad arguments before any model is loaded."""
    if split not in EARLIER_SPLITS:
        raise CoraError(f"unknown split '{split}' for ranking (choose valid, valid_small or test)")
    check_k(k, candidates)
    if limit_users is not None and limit_users < 1:
        raise CoraError(f"--limit-users must be >= 1, got {limit_users}")


def rank_users(rec: Recommender, split: str, k: int, candidates: int, limit_users: int | None = None,
               show_progress: bool = False) -> tuple[dict, pd.DataFrame]:
    """Run the module's protocol with ``rec``; returns (metrics, scored candidates)."""
    check_ranking_args(split, k, candidates, limit_users)
    start = copy.copy(rec)  # same model, the catalog of the split's start
    start.catalog = catalog_at_start(rec.ds, split, rec.catalog.titles)
    relevant = relevant_items(rec.ds, split, start.catalog)
    if not relevant:
        raise CoraError(f"no user has a positive '{split}' row on an unseen item: nothing to rank")
    users = sample_ranking_users(list(relevant), limit_users)

    found = {u: start.candidates(u, candidates) for u in users}
    pairs = [(u, i) for u in users for i, _ in found[u]]
    t0 = time.time()
    logits = start.logits(pairs, show_progress=show_progress)
    elapsed = time.time() - t0

    frames, cf_lists, rerank_lists = [], [], []
    offset = 0
    for u in users:
        items = np.array([i for i, _ in found[u]], dtype=np.int64)
        scores = logits[offset:offset + len(items)]
        offset += len(items)
        cf_rank = np.arange(len(items))
        order = np.lexsort((cf_rank, -scores))  # by logit, ties keep the CF order
        rerank_rank = np.empty(len(items), dtype=np.int64)
        rerank_rank[order] = np.arange(len(items))
        cf_lists.append(items.tolist())
        rerank_lists.append(items[order].tolist())
        frames.append(pd.DataFrame({"uid": u, "iid": items, "cf_score": [s for _, s in found[u]],
                                    "cf_rank": cf_rank + 1, "score": scores, "rerank_rank": rerank_rank + 1,
                                    "relevant": np.isin(items, list(relevant[u])).astype(np.int64)}))
    rel = [relevant[u] for u in users]
    metrics = {
        "split": split, "users": len(users), "eligible_users": len(relevant), "limit_users": limit_users,
        "k": k, "candidates": candidates, "positives": int(sum(len(r) for r in rel)),
        "in_candidates": round(float(np.mean([bool(set(c) & r) for c, r in zip(cf_lists, rel)])), 6),
        "cf": _round(ranking_metrics(cf_lists, rel, k)),
        "rerank": _round(ranking_metrics(rerank_lists, rel, k)),
        "method": rec.cfg.method, "cf_model": getattr(start.cf, "name", None),
        "eval": {"pairs": len(pairs), "wall_time_s": round(elapsed, 1),
                 "pairs_per_s": round(len(pairs) / max(elapsed, 1e-9), 2)},
    }
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return metrics, table


def with_original_ids(table: pd.DataFrame, rec: Recommender, internal_ids: bool = False) -> pd.DataFrame:
    """The scored candidates as written: the dataset's own ids and the title first, cora's
    uid / iid only with ``internal_ids``."""
    from cora.serve.pairs import scored_frame

    named = scored_frame(list(zip(table["uid"].tolist(), table["iid"].tolist())), table["score"].to_numpy(),
                         rec.ids, rec.catalog.titles, internal=internal_ids)
    front = ["user", "item", *(["uid", "iid"] if internal_ids else []), "title"]
    return pd.concat([named[front], table.drop(columns=["uid", "iid"])], axis=1)


def evaluate_ranking(run: str | Path, split: str = "test", k: int = 10, candidates: int = 100,
                     limit_users: int | None = None, cf: str | Path | None = None, show_progress: bool = True,
                     backbone=None, internal_ids: bool = False) -> dict:
    """``cora evaluate RUN --ranking``: the protocol above on a run; updates RUN/metrics.json."""
    run = Path(run)
    check_ranking_args(split, k, candidates, limit_users)
    rec = Recommender.from_run(run, cf=cf, backbone=backbone)
    metrics, table = rank_users(rec, split, k, candidates, limit_users, show_progress=show_progress)
    key = ranking_key(split, k, candidates, limit_users)
    write_parquet(run / f"{key}.parquet", with_original_ids(table, rec, internal_ids))
    update_json(run / layout.METRICS, {key: metrics})
    return metrics
