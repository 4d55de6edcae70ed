"""HTTP service over a :class:`~cora.serve.recommend.Recommender` (FastAPI; run with uvicorn).

Endpoints: ``GET /health``, ``GET /info``, ``POST /score``, ``POST /recommend``; the OpenAPI
schema is at ``/openapi.json`` and interactive docs at ``/docs``.

Every LLM forward pass goes through one :class:`~cora.serve.batcher.MicroBatcher`, so concurrent
``/score`` and ``/recommend`` requests share forward passes. Client input never causes a 500:

* 404 — an unknown user or item id (the message names it);
* 422 — malformed JSON, wrong types (ids must be JSON integers), extra fields, more than
  ``MAX_PAIRS`` pairs, ``k`` or ``candidates`` out of range, ``k`` > ``candidates``;
* 501 — ``/recommend`` on a run without a CF model to retrieve with (start with ``--cf``);
* 503 + ``Retry-After`` — the request queue is full.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from cora import __version__
from cora.errors import CoraError
from cora.serve.batcher import MicroBatcher, QueueFull
from cora.serve.recommend import Recommender, UnknownIdError, sigmoid

MAX_PAIRS = 1024  # pairs per /score request
MAX_K = 100
MAX_CANDIDATES = 1000
RETRY_AFTER_S = 1


class Pair(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: StrictInt = Field(description="User id (as in the dataset; ids start at 1).")
    item: StrictInt = Field(description="Item id (as in the dataset; ids start at 1).")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    pairs: list[Pair] = Field(min_length=1, max_length=MAX_PAIRS,
                              description=f"1 to {MAX_PAIRS} (user, item) pairs to score.")


class ScoredPair(BaseModel):
    user: int
    item: int
    score: float = Field(description="The method's Yes logit.")
    probability: float = Field(description="sigmoid(score): how likely the user enjoys the item.")


class ScoreResponse(BaseModel):
    results: list[ScoredPair]


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: StrictInt = Field(description="User id.")
    k: StrictInt = Field(10, ge=1, le=MAX_K, description=f"Items to return (1..{MAX_K}).")
    candidates: StrictInt = Field(100, ge=1, le=MAX_CANDIDATES,
                                  description=f"Items the CF model retrieves for the LLM to rerank (k..{MAX_CANDIDATES}).")

    @model_validator(mode="after")
    def _k_within_candidates(self):
        if self.k > self.candidates:
            raise ValueError(f"k ({self.k}) must not exceed candidates ({self.candidates})")
        return self


class RecommendedItem(BaseModel):
    rank: int
    item: int
    title: str
    probability: float
    cf_score: float
    retrieved_by: str = "cf"  # "popularity" for a cold user (no training rows): CF scores would be noise


class RecommendResponse(BaseModel):
    user: int
    items: list[RecommendedItem]


def create_app(recommender: Recommender, max_batch: int = 32, max_wait_ms: float = 10.0,
               queue_size: int = 256) -> FastAPI:
    """The service for ``recommender``: forward passes of up to ``max_batch`` pairs, each waiting
    at most ``max_wait_ms`` for company, behind a queue of ``queue_size`` requests."""
    rec = recommender
    batcher = MicroBatcher(lambda pairs: rec.logits(pairs, batch_size=max_batch), max_batch, max_wait_ms, queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="cora", version=__version__, lifespan=lifespan,
                  description=__doc__)
    app.state.recommender, app.state.batcher = rec, batcher

    async def logits(pairs: list[tuple[int, int]]):
        try:
            return await batcher.submit(pairs)
        except QueueFull as e:
            raise HTTPException(503, detail=f"server busy: {e}; retry later",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "queued": batcher.waiting, "queue_size": batcher.queue_size}

    @app.get("/info")
    async def info() -> dict:
        return {**rec.info(), "max_batch": max_batch, "max_wait_ms": max_wait_ms, "queue_size": queue_size,
                "max_pairs": MAX_PAIRS, "max_k": MAX_K, "max_candidates": MAX_CANDIDATES, "stats": dict(batcher.stats)}

    @app.post("/score", response_model=ScoreResponse,
              responses={404: {"description": "Unknown user or item id"}, 503: {"description": "Queue full"}})
    async def score(req: ScoreRequest) -> ScoreResponse:
        pairs = [(p.user, p.item) for p in req.pairs]
        try:
            rec.check_pairs(pairs)
        except UnknownIdError as e:
            raise HTTPException(404, detail=str(e)) from None
        values = await logits(pairs)
        probs = sigmoid(values)
        return ScoreResponse(results=[ScoredPair(user=u, item=i, score=float(s), probability=float(p))
                                      for (u, i), s, p in zip(pairs, values, probs)])

    @app.post("/recommend", response_model=RecommendResponse,
              responses={404: {"description": "Unknown user id"}, 501: {"description": "No CF model to retrieve with"},
                         503: {"description": "Queue full"}})
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        try:
            # CF retrieval is one user vector against the item table: cheap enough for the event loop.
            found, source = rec.retrieve(req.user, req.candidates)
        except UnknownIdError as e:
            raise HTTPException(404, detail=str(e)) from None
        except CoraError as e:
            raise HTTPException(501, detail=str(e)) from None
        values = await logits([(req.user, iid) for iid, _ in found]) if found else []
        items = rec.rerank(req.user, found, sigmoid(values), req.k, retrieved_by=source)
        return RecommendResponse(user=req.user, items=[RecommendedItem(**r.to_dict()) for r in items])

    return app
