"""HTTP service over a :class:`~cora.serve.recommend.Recommender` (FastAPI; run with uvicorn).

Endpoints: ``GET /health``, ``GET /info``, ``POST /score``, ``POST /recommend``; the OpenAPI
schema is at ``/openapi.json`` and interactive docs at ``/docs``.

Every LLM forward pass goes through one :class:`~cora.serve.batcher.MicroBatcher`, so concurrent
``/score`` and ``/recommend`` requests share forward passes. The schema documents every status
the service answers, and its bounds are the ones enforced (ids, list lengths, ``k``,
``candidates``: :mod:`cora.serve.schemas`). Client input never causes a 500:

* 404 — an id within the schema's range that the dataset does not serve (the message names it);
* 413 — a request body over the byte limit (``--max-body-bytes``);
* 422 — malformed JSON, wrong types (ids must be JSON integers), extra fields, ids outside
  1..n-1 of the run's dataset, more pairs than ``--max-pairs``, ``k`` or ``candidates`` out of
  range, ``k`` > ``candidates``;
* 501 — ``/recommend`` on a run without a CF model to retrieve with (start with ``--cf``);
* 503 + ``Retry-After`` — the request queue is full, or the server is shutting down.

Errors are JSON: ``{"detail": "message"}``, or for 422 the list of what failed validation.
"""

# No ``from __future__ import annotations``: the handlers' body types are classes built per app
# (create_app's locals), which FastAPI could not resolve from the strings that import makes.
import math
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cora import __version__
from cora.errors import CoraError
from cora.serve.batcher import MicroBatcher, QueueFull, ShuttingDown
from cora.serve.body_limit import BodyLimit
from cora.serve.recommend import Recommender, UnknownIdError, sigmoid
from cora.serve.schemas import (MAX_BODY_BYTES, MAX_CANDIDATES, MAX_K, MAX_PAIRS, ErrorMessage, Health, Info,
                                Limits, RecommendedItem, RecommendResponse, ScoredPair, ScoreResponse,
                                request_models)

__all__ = ["MAX_BODY_BYTES", "MAX_CANDIDATES", "MAX_K", "MAX_PAIRS", "create_app", "limits_for"]

RETRY_AFTER_S = 1


def limits_for(rec: Recommender, max_pairs: int = MAX_PAIRS, max_body_bytes: int = MAX_BODY_BYTES) -> Limits:
    """The request limits of a service over ``rec``: ids up to the largest of its dataset."""
    return Limits(max_user=rec.ds.n_users - 1, max_item=rec.ds.n_items - 1, max_pairs=max_pairs,
                  max_body_bytes=max_body_bytes)


def _finite(value):
    """``value`` with every NaN / Infinity replaced by its name: Python's JSON parser accepts those
    tokens, a 422 echoes the offending input, and a response cannot encode them (a 500 otherwise)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _errors(limits: Limits, extra: dict[int, str]) -> dict:
    """OpenAPI ``responses`` for the errors every POST endpoint can answer, plus ``extra``."""
    codes = {413: f"Request body over {limits.max_body_bytes:,} bytes",
             503: "Queue full, or the server is shutting down (see Retry-After)", **extra}
    return {code: {"model": ErrorMessage, "description": text} for code, text in sorted(codes.items())}


def create_app(recommender: Recommender, max_batch: int = 32, max_wait_ms: float = 10.0,
               queue_size: int = 256, max_pairs: int = MAX_PAIRS, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The service for ``recommender``: forward passes of up to ``max_batch`` pairs, each waiting
    at most ``max_wait_ms`` for company, behind a queue of ``queue_size`` requests; requests of
    at most ``max_pairs`` pairs and ``max_body_bytes`` bytes."""
    rec = recommender
    limits = limits_for(rec, max_pairs, max_body_bytes)
    ScoreRequest, RecommendRequest = request_models(limits)
    batcher = MicroBatcher(lambda pairs: rec.logits(pairs, batch_size=max_batch), max_batch, max_wait_ms, queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="cora", version=__version__, lifespan=lifespan, description=__doc__)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.state.recommender, app.state.batcher, app.state.limits = rec, batcher, limits

    @app.exception_handler(StarletteHTTPException)
    async def unparsable_body_is_422(request: Request, exc: StarletteHTTPException):
        # FastAPI answers 400 "There was an error parsing the body" when json.loads fails with
        # something other than a JSONDecodeError (invalid UTF-8, nesting past the recursion
        # limit). To a client that is malformed JSON like any other: a 422 in the validation shape.
        if exc.status_code == 400:
            return JSONResponse({"detail": [{"type": "json_invalid", "loc": ["body"], "input": None,
                                             "msg": "the body is not valid JSON (bad encoding or nesting)"}]},
                                status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error_is_422(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    async def logits(pairs: list[tuple[int, int]]):
        try:
            return await batcher.submit(pairs)
        except QueueFull as e:
            raise HTTPException(503, detail=f"server busy: {e}; retry later",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except ShuttingDown as e:
            raise HTTPException(503, detail=f"{e}; retry on another instance",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    @app.get("/health", response_model=Health,
             responses={503: {"model": Health, "description": "Shutting down: send no more requests"}})
    async def health():
        body = Health(status="shutting down" if batcher.closing else "ok", queued=batcher.waiting,
                      queue_size=batcher.queue_size)
        return JSONResponse(body.model_dump(), status_code=503) if batcher.closing else body

    @app.get("/info", response_model=Info)
    async def info() -> Info:
        return Info(**rec.info(), max_batch=max_batch, max_wait_ms=max_wait_ms, queue_size=queue_size,
                    limits=limits, stats=dict(batcher.stats))

    @app.post("/score", response_model=ScoreResponse,
              responses=_errors(limits, {404: "Unknown user or item id (in range, not in the dataset)"}))
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
              responses=_errors(limits, {404: "Unknown user id (in range, not in the dataset)",
                                         501: "No CF model to retrieve with (start with --cf), or "
                                              "one without this user in its table"}))
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
