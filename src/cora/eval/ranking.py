"""Top-K ranking metrics: HR@K and NDCG@K with binary relevance.

Model-free: each user comes as a ranked list of item ids (best first) and the set of items that
are relevant to them (their held-out positives). How the lists are built — which candidates,
ranked by what — is the caller's protocol (see :mod:`cora.serve.ranking`).

* HR@K (hit ratio): share of users with at least one relevant item in their top K.
* NDCG@K: per user, DCG@K / IDCG@K with gain 1 for a relevant item at (1-based) position p
  discounted by log2(p + 1); IDCG@K is the DCG of an ideal list, min(|relevant|, K) relevant
  items first. A relevant item missing from the list simply earns nothing, so a list that is
  too short (or a candidate set that missed the positives) is penalised, never skipped.

Both are unweighted means over users. A user without relevant items has no defined NDCG: the
caller must leave such users out, and passing one is an error rather than a silent zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from cora.errors import CoraError


def _discount(position: int) -> float:
    return 1.0 / math.log2(position + 1)


def user_hit(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """1.0 when any relevant item is in the top ``k`` of ``ranked``, else 0.0."""
    rel = set(relevant)
    return float(any(item in rel for item in list(ranked)[:k]))


def user_ndcg(ranked: Sequence[int], relevant: Iterable[int], k: int) -> float:
    """NDCG@k of one ranked list against a non-empty relevant set (binary gains)."""
    rel = set(relevant)
    if not rel:
        raise CoraError("NDCG is undefined for a user without relevant items")
    dcg = sum(_discount(p) for p, item in enumerate(list(ranked)[:k], 1) if item in rel)
    idcg = sum(_discount(p) for p in range(1, min(len(rel), k) + 1))
    return dcg / idcg


def ranking_metrics(ranked: Sequence[Sequence[int]], relevant: Sequence[Iterable[int]], k: int) -> dict:
    """{"hr", "ndcg"} at ``k``: means over users; ``ranked[j]`` and ``relevant[j]`` are user j's."""
    if k < 1:
        raise CoraError(f"k must be >= 1, got {k}")
    if len(ranked) != len(relevant):
        raise CoraError(f"{len(ranked)} ranked lists but {len(relevant)} relevant sets")
    if not ranked:
        raise CoraError("no users to rank")
    relevant = [set(r) for r in relevant]
    if any(not r for r in relevant):
        raise CoraError("every user needs at least one relevant item (leave the others out)")
    hr = sum(user_hit(lst, rel, k) for lst, rel in zip(ranked, relevant)) / len(ranked)
    ndcg = sum(user_ndcg(lst, rel, k) for lst, rel in zip(ranked, relevant)) / len(ranked)
    return {"hr": hr, "ndcg": ndcg}
