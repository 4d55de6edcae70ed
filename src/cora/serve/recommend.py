"""A trained run as a recommender: CF retrieval, then LLM reranking.

Scoring every item with the LLM is far too slow for a live request (one forward pass per pair),
so :meth:`Recommender.recommend` is the usual two-stage pipeline: the run's CF model (cheap dot
products over all items) retrieves ``candidates`` unseen items, and the LLM method scores only
those. Any LLM method run works; methods without a CF model (ICL, TALLRec, Prompt4NR,
PersonPrompt) can score pairs, and retrieve only with a CF run given as ``cf``.

Scores are the method's Yes logits; a probability is their sigmoid. The user's prompt history is
their history "now" (see :mod:`cora.serve.catalog`). Ids here are cora's internal ones; the
commands and the HTTP service translate the dataset's own ids at their edge (:mod:`cora.serve.ids`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from cora.cf.data import pad_histories
from cora.cf.train import check_cf_dataset, load_cf_run
from cora.config import LLMConfig, llm_run_config
from cora.data.store import Dataset
from cora.errors import CoraError
from cora.methods.base import LLMMethod
from cora.serve.catalog import Catalog, UnknownIdError, check_k
from cora.serve.ids import DatasetIds, dataset_ids
from cora.serve.placement import Placement
from cora.serve.placement import resolve as resolve_placement
from cora.train.loop import make_accelerator, predict
from cora.train.run import load_run

__all__ = ["Recommendation", "Recommender", "UnknownIdError", "check_k", "recommendation_answer", "sigmoid"]


def _check_n(n: int) -> None:
    if n < 1:
        raise CoraError(f"number of candidates must be >= 1, got {n}")


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


@dataclass
class Recommendation:
    """One recommended item (internal id). Each retrieval score has its own field: ``cf_score`` (the
    CF dot product) for a CF-retrieved item, ``train_positives`` (its positive training rows) for
    one retrieved by popularity (a cold user); the other is None."""

    rank: int
    item: int
    title: str
    probability: float
    cf_score: float | None
    train_positives: int | None = None
    retrieved_by: str = "cf"  # or "popularity" (cold users: see Recommender.retrieve)

    def to_dict(self) -> dict:
        return {"rank": self.rank, "item": self.item, "title": self.title, "probability": self.probability,
                "cf_score": self.cf_score, "train_positives": self.train_positives,
                "retrieved_by": self.retrieved_by}


def recommendation_answer(rec: "Recommender", uid: int, items: list[Recommendation], internal_ids: bool = False) -> dict:
    """``/recommend``'s answer (and ``cora recommend --json``'s): the dataset's own ids; cora's
    (``uid``, each item's ``iid``) only with ``internal_ids``."""
    original = rec.ids.items.original
    return {"user": rec.ids.users.original(uid), **({"uid": uid} if internal_ids else {}),
            "items": [{"rank": r.rank, "item": original(r.item), **({"iid": r.item} if internal_ids else {}),
                       **{k: v for k, v in r.to_dict().items() if k not in ("rank", "item")}} for r in items]}


class Recommender:
    """A loaded run (method in eval mode), its dataset's catalog and, where there is one, a CF model."""

    def __init__(self, method: LLMMethod, cfg: LLMConfig, ds: Dataset, cf_model=None, run: str | Path = "",
                 batch_size: int | None = None, catalog: Catalog | None = None, ids: DatasetIds | None = None,
                 precision: str | None = None, threads: int | None = None):
        """``catalog`` / ``ids``: built from ``ds`` unless given (by :class:`~cora.serve.preflight.RunData`,
        which builds them before the model loads to check the ids asked for)."""
        self.method, self.cfg, self.ds, self.run = method, cfg, ds, str(run)
        self.cf = cf_model if cf_model is not None else method.cf
        self.catalog = catalog if catalog is not None else Catalog.from_dataset(ds)
        self.ids = ids if ids is not None else dataset_ids(ds, self.catalog)
        self.batch_size = batch_size or cfg.eval_batch_size
        self.accelerator = make_accelerator(cfg)  # puts batches on the run's device
        self._item_ids = np.array(sorted(self.catalog.titles), dtype=np.int64)
        positives = ds.split("train").query("label == 1")["iid"].to_numpy(dtype=np.int64)
        self._popularity = np.bincount(positives, minlength=int(self._item_ids.max(initial=0)) + 1)
        # What it scores in (cfg.dtype, or int8 / bf16-mixed: cora.serve.placement) and on how many threads.
        self.precision = precision or cfg.dtype
        self.threads = threads or torch.get_num_threads()

    @classmethod
    def from_run(cls, run: str | Path, cf: str | Path | None = None, backbone=None,
                 batch_size: int | None = None, catalog: Catalog | None = None,
                 ids: DatasetIds | None = None, placement: Placement | None = None,
                 say: Callable[[str], None] = lambda line: None) -> Recommender:
        """Load ``run``'s best weights. ``cf``: a CF run for retrieval, needed only when the run's
        method has no CF model of its own (it replaces the run's own CF model otherwise).
        ``placement``: device / dtype / threads (:mod:`cora.serve.placement`); ``say`` hears of any
        change this machine forces."""
        trained = llm_run_config(run)
        where = resolve_placement(placement or Placement(), trained.device, trained.dtype, say)
        method, cfg, ds = load_run(run, backbone, device=where.device, dtype=where.dtype)
        if where.int8:
            from cora.llm.quantize import quantize_int8

            quantize_int8(method.llm)
        cf_model = None
        if cf is not None:
            cf_model, _, cf_ds = load_cf_run(cf)
            check_cf_dataset(cf, cf_ds, ds)
        return cls(method, cfg, ds, cf_model, run=run, batch_size=batch_size, catalog=catalog, ids=ids,
                   precision=where.precision, threads=where.threads)

    # ---------------------------------------------------------------- facts
    @property
    def users(self) -> list[int]:
        return sorted(self.catalog.histories)

    def info(self, paths: bool = False) -> dict:
        """What is served. Without ``paths`` no filesystem path: the run folder's name, and the
        backbone's folder name when it is a local folder (a hub name is shown whole)."""
        run, backbone = self.run, self.cfg.backbone
        if not paths:
            run = Path(run).name
            backbone = Path(backbone).name if Path(backbone).expanduser().exists() else backbone
        return {"run": run, "backbone": backbone, "method": self.cfg.method,
                "modules": self.cfg.modules if self.cfg.method == "cora" else None,
                "dataset": self.ds.name, "domain": self.ds.domain,
                "n_users": len(self.catalog.histories), "n_items": len(self.catalog.titles),
                "cf_model": getattr(self.cf, "name", None), "id_maps": self.ids.mapped,
                "device": str(self.accelerator.device), "dtype": self.precision,
                "threads": self.threads if self.accelerator.device.type == "cpu" else None}

    def title(self, iid: int) -> str:
        self.catalog.check_item(iid)
        return self.catalog.titles[iid]

    def check_pairs(self, pairs: list[tuple[int, int]]) -> None:
        """Raise :class:`UnknownIdError` for the first unknown user or item."""
        self.catalog.check_pairs(pairs)

    # ---------------------------------------------------------------- LLM scores
    def logits(self, pairs: list[tuple[int, int]], batch_size: int | None = None,
               show_progress: bool = False, keep_going: Callable[[], bool] | None = None) -> np.ndarray | None:
        """The method's score (Yes logit) of each (user, item) pair, in order. ``keep_going``: asked
        before each forward pass; once it says False, no more are run and the answer is None (the
        service drops a request that timed out without finishing it)."""
        pairs = [(int(u), int(i)) for u, i in pairs]
        if not pairs:
            return np.zeros(0, dtype=np.float64)
        df = self.catalog.prompt_rows(pairs)
        encoded = self.method.encode(df, self.ds.domain)
        batch_size = batch_size or self.batch_size
        with self.scoring_precision():
            return self._scores(encoded, batch_size, show_progress, keep_going)

    def scoring_precision(self):
        """bf16-mixed: the matrix products in bf16, everything else as loaded (fp32)."""
        if self.precision != "bf16-mixed":
            return contextlib.nullcontext()
        return torch.autocast(self.accelerator.device.type, dtype=torch.bfloat16)

    def _scores(self, encoded, batch_size: int, show_progress: bool,
                keep_going: Callable[[], bool] | None) -> np.ndarray | None:
        if keep_going is None:
            return predict(self.method, encoded, batch_size, self.accelerator,
                           show_progress=show_progress, description=f"{self.cfg.method} scoring")
        # The forward passes predict() would run (rows sorted by prompt length, batch_size at a
        # time: the same batches, so the same scores), one call each, asking in between.
        order = np.argsort(encoded.lengths, kind="stable")
        out = np.empty(len(encoded), dtype=np.float64)
        for start in range(0, len(order), batch_size):
            if not keep_going():
                return None
            rows = order[start:start + batch_size]
            out[rows] = predict(self.method, encoded.subset(rows), batch_size, self.accelerator)
        return out

    def score_pairs(self, pairs: list[tuple[int, int]], batch_size: int | None = None,
                    show_progress: bool = False) -> np.ndarray:
        """Probability (sigmoid of the score) that each user would enjoy each item, in order."""
        return sigmoid(self.logits(pairs, batch_size, show_progress))

    # ---------------------------------------------------------------- CF retrieval
    def _need_cf(self):
        if self.cf is None:
            raise CoraError(f"method '{self.cfg.method}' has no CF model to retrieve candidates with: "
                            "pass a CF run (--cf RUN)")
        return self.cf

    @torch.no_grad()
    def cf_scores(self, uid: int) -> np.ndarray:
        """CF score of ``uid`` with every item id 0..n_items-1 of the CF model."""
        cf = self._need_cf()
        self.catalog.check_user(uid)
        if uid >= cf.n_users:
            raise CoraError(f"user {uid} is beyond the CF model's {cf.n_users}-row user table")
        device = next(cf.parameters()).device
        batch = {"uid": torch.tensor([uid], dtype=torch.long, device=device)}
        if getattr(cf, "uses_history", False):
            batch["his"] = pad_histories(pd.Series([self.catalog.histories[uid][0]]), cf.max_len).to(device)
        user = cf.user_embedding(batch)[0]
        items = cf.item_embedding(torch.arange(cf.n_items, device=device))
        return (items @ user).float().cpu().numpy().astype(np.float64)

    def candidates(self, user: int, n: int) -> list[tuple[int, float]]:
        """The CF model's top-``n`` (item, CF score) for ``user``, best first (ties: lower id),
        over items with a title that the user has not interacted with (and never the padding 0)."""
        _check_n(n)
        scores = self.cf_scores(user)
        items = self._item_ids[self._item_ids < len(scores)]
        items = items[(items != 0) & ~np.isin(items, self.catalog.interacted[user])]
        if len(items) == 0:
            return []
        s = scores[items]
        order = np.lexsort((items, -s))[:n]
        return [(int(items[j]), float(s[j])) for j in order]

    def is_cold(self, user: int) -> bool:
        """True when the CF model knows nothing of ``user``: no training rows (an ID model's user
        vector never got a gradient) and, for a sequential model, an empty history."""
        self.catalog.check_user(user)
        if user in self.catalog.train_users:
            return False
        return not (getattr(self._need_cf(), "uses_history", False) and any(self.catalog.histories[user][0]))

    def popular(self, user: int, n: int) -> list[tuple[int, float]]:
        """The ``n`` items with the most positive training rows that ``user`` has not interacted with."""
        _check_n(n)
        self.catalog.check_user(user)
        items = self._item_ids[(self._item_ids != 0) & ~np.isin(self._item_ids, self.catalog.interacted[user])]
        counts = self._popularity[items]  # bincount's length covers every catalog id (minlength)
        order = np.lexsort((items, -counts))[:n]
        return [(int(items[j]), float(counts[j])) for j in order]

    def retrieve(self, user: int, n: int) -> tuple[list[tuple[int, float]], str]:
        """Candidates for ``user`` and how they were found: by the CF model, or, for a cold user
        (whose CF scores are noise around zero), by popularity in the training split."""
        if self.is_cold(user):
            return self.popular(user, n), "popularity"
        return self.candidates(user, n), "cf"

    # ---------------------------------------------------------------- both
    def rerank(self, user: int, candidates: list[tuple[int, float]], probabilities: np.ndarray,
               k: int, retrieved_by: str = "cf") -> list[Recommendation]:
        """Sort retrieved candidates by LLM probability (ties: retrieval score) and keep the top ``k``."""
        order = sorted(range(len(candidates)), key=lambda j: (-probabilities[j], -candidates[j][1], candidates[j][0]))
        by_cf = retrieved_by == "cf"
        return [Recommendation(rank=r + 1, item=candidates[j][0], title=self.catalog.titles[candidates[j][0]],
                               probability=float(probabilities[j]), cf_score=candidates[j][1] if by_cf else None,
                               train_positives=None if by_cf else int(candidates[j][1]), retrieved_by=retrieved_by)
                for r, j in enumerate(order[:k])]

    def recommend(self, user: int, k: int = 10, candidates: int = 100,
                  show_progress: bool = False) -> list[Recommendation]:
        """Top ``k`` items for ``user``: CF (popularity for a cold user) retrieves ``candidates``
        unseen items, the LLM reranks them."""
        check_k(k, candidates)
        found, source = self.retrieve(user, candidates)
        probabilities = self.score_pairs([(user, iid) for iid, _ in found], show_progress=show_progress)
        return self.rerank(user, found, probabilities, k, retrieved_by=source)
