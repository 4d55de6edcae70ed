"""HTTP service over a :class:`~cora.serve.recommend.Recommender` (FastAPI; run with uvicorn).

Endpoints: ``GET /health``, ``GET /info``, ``POST /score``, ``POST /recommend``; the OpenAPI
schema is at ``/openapi.json`` and interactive docs at ``/docs``. Ids are the dataset's own
(``"internal_ids": true`` for cora's; :mod:`cora.serve.schemas`).

Every LLM forward pass goes through one :class:`~cora.serve.batcher.MicroBatcher`, so concurrent
``/score`` and ``/recommend`` requests share forward passes. The schema documents every status
the service answers, and its bounds are the ones enforced (list lengths, ``k``, ``candidates``:
:mod:`cora.serve.schemas`). Client input never causes a 500:

* 401 — with an API key set (:mod:`cora.serve.gates`): a request without it or with another one
  (``/health`` and the API description stay open);
* 404 — an id the dataset does not know (the message names it);
* 413 — a request body over the byte limit (``--max-body-bytes``);
* 415 — a POST whose Content-Type is not ``application/json``;
* 422 — malformed JSON, wrong types, extra fields, more pairs than ``--max-pairs``, ``k`` or
  ``candidates`` out of range (``--max-candidates``), ``k`` > ``candidates``;
* 501 — ``/recommend`` on a run without a CF model to retrieve with (start with ``--cf``);
* 503 + ``Retry-After`` — the request queue is full, or the server is shutting down;
* 504 — the request was not scored within ``--request-timeout`` seconds (it is dropped: it holds
  the model at most one more forward pass of ``--max-batch`` pairs).

Errors are JSON: ``{"detail": "message"}``, or for 422 the list of what failed validation.
"""

# No ``from __future__ import annotations``: the handlers' body types are classes built per app
# (create_app's locals), which FastAPI could not resolve from the strings that import makes.
import math
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from cora import __version__
from cora.errors import CoraError
from cora.serve.batcher import MicroBatcher, QueueFull, ShuttingDown, TimedOut
from cora.serve.body_limit import BodyLimit
from cora.serve.gates import ApiKeyGate, JsonOnly
from cora.serve.ids import internal_id
from cora.serve.recommend import Recommender, UnknownIdError, recommendation_answer, sigmoid
from cora.serve.schemas import (
    MAX_BODY_BYTES,
    MAX_CANDIDATES,
    MAX_K,
    MAX_PAIRS,
    REQUEST_TIMEOUT_S,
    ErrorMessage,
    Health,
    Info,
    Limits,
    RecommendResponse,
    ScoredPair,
    ScoreResponse,
    request_models,
)

__all__ = ["MAX_BODY_BYTES", "MAX_CANDIDATES", "MAX_K", "MAX_PAIRS", "REQUEST_TIMEOUT_S", "create_app"]

RETRY_AFTER_S = 1


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
             415: "Content-Type is not application/json",
             503: "Queue full, or the server is shutting down (see Retry-After)",
             504: f"Not scored within {limits.request_timeout_s:g} s (the request is dropped)", **extra}
    return {code: {"model": ErrorMessage, "description": text} for code, text in sorted(codes.items())}


def create_app(recommender: Recommender, max_batch: int = 32, max_wait_ms: float = 10.0,
               queue_size: int = 256, max_pairs: int = MAX_PAIRS, max_body_bytes: int = MAX_BODY_BYTES,
               max_candidates: int = MAX_CANDIDATES, request_timeout_s: float = REQUEST_TIMEOUT_S,
               api_key: str | None = None, show_paths: bool = False) -> FastAPI:
    """The service for ``recommender``: forward passes of up to ``max_batch`` pairs, each waiting
    at most ``max_wait_ms`` for company, behind a queue of ``queue_size`` requests; requests of
    at most ``max_pairs`` pairs / ``max_candidates`` candidates and ``max_body_bytes`` bytes,
    answered within ``request_timeout_s`` seconds (else 504). ``api_key``: every request but
    /health and the API description needs ``Authorization: Bearer <api_key>``. ``show_paths``:
    /info shows the run's and the backbone's paths (only their names otherwise)."""
    rec = recommender
    limits = Limits(max_pairs=max_pairs, max_candidates=max_candidates, max_body_bytes=max_body_bytes,
                    request_timeout_s=request_timeout_s)
    ids, titles = rec.ids, rec.catalog.titles
    ScoreRequest, RecommendRequest = request_models(limits, *(ids.of(kind).original(min(known)) for kind, known in
                                                              (("user", rec.catalog.histories), ("item", titles))))
    batcher = MicroBatcher(lambda pairs, keep_going: rec.logits(pairs, batch_size=max_batch, keep_going=keep_going),
                           max_batch, max_wait_ms, queue_size)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="cora", version=__version__, lifespan=lifespan, description=__doc__)
    # Added last = outermost: the byte cap first, then the key, then the content type, then the app.
    app.add_middleware(JsonOnly)
    if api_key is not None:
        app.add_middleware(ApiKeyGate, key=api_key)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    app.state.recommender, app.state.batcher, app.state.limits = rec, batcher, limits
    # The gate enforces the key; this (never failing) dependency only puts the bearer scheme and
    # the 401 into the OpenAPI schema, so clients and /docs know to send it.
    guarded = {"dependencies": [Security(HTTPBearer(auto_error=False, description="The service's API key"))]} \
        if api_key is not None else {}
    unauthorized = {401: "Missing or wrong API key (Authorization: Bearer <key>)"} if api_key is not None else {}

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
            return await batcher.submit(pairs, timeout_s=limits.request_timeout_s)
        except QueueFull as e:
            raise HTTPException(503, detail=f"server busy: {e}; retry later",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except ShuttingDown as e:
            raise HTTPException(503, detail=f"{e}; retry on another instance",
                                headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        except TimedOut as e:
            raise HTTPException(504, detail=f"{e} (the server's --request-timeout); the request was dropped: "
                                            "ask for fewer pairs or candidates") from None

    def internal(kind: str, value, given_internal: bool) -> int:
        """The internal id of a request's id (404 naming it when the dataset does not know it)."""
        try:
            found = internal_id(kind, value) if given_internal else ids.of(kind).internal(value)
            (rec.catalog.check_user if kind == "user" else rec.catalog.check_item)(found)
        except UnknownIdError as e:
            raise HTTPException(404, detail=str(e)) from None
        return found

    @app.get("/health", response_model=Health,
             responses={503: {"model": Health, "description": "Shutting down: send no more requests"}})
    async def health():
        body = Health(status="shutting down" if batcher.closing else "ok", queued=batcher.waiting,
                      queue_size=batcher.queue_size)
        return JSONResponse(body.model_dump(), status_code=503) if batcher.closing else body

    @app.get("/info", response_model=Info, **guarded,
             responses={code: {"model": ErrorMessage, "description": text} for code, text in unauthorized.items()})
    async def info() -> Info:
        return Info(**rec.info(paths=show_paths), auth=api_key is not None, max_batch=max_batch,
                    max_wait_ms=max_wait_ms, queue_size=queue_size, limits=limits, stats=dict(batcher.stats))

    @app.post("/score", response_model=ScoreResponse, response_model_exclude_unset=True,
              responses=_errors(limits, {404: "Unknown user or item id (the message names it)", **unauthorized}),
              **guarded)
    async def score(req: ScoreRequest) -> ScoreResponse:
        pairs = [(internal("user", p.user, req.internal_ids), internal("item", p.item, req.internal_ids))
                 for p in req.pairs]
        values = await logits(pairs)
        probs = sigmoid(values)
        return ScoreResponse(results=[
            ScoredPair(user=ids.users.original(u), item=ids.items.original(i),
                       **({"uid": u, "iid": i} if req.internal_ids else {}),
                       title=titles[i], score=float(s), probability=float(p))
            for (u, i), s, p in zip(pairs, values, probs)])

    @app.post("/recommend", response_model=RecommendResponse, response_model_exclude_unset=True,
              responses=_errors(limits, {404: "Unknown user id (the message names it)",
                                         501: "No CF model to retrieve with (start with --cf), or "
                                              "one without this user in its table", **unauthorized}),
              **guarded)
    async def recommend(req: RecommendRequest) -> RecommendResponse:
        uid = internal("user", req.user, req.internal_ids)
        try:
            # CF retrieval is one user vector against the item table: cheap enough for the event loop.
            found, source = rec.retrieve(uid, req.candidates)
        except UnknownIdError as e:
            raise HTTPException(404, detail=str(e)) from None
        except CoraError as e:
            raise HTTPException(501, detail=str(e)) from None
        values = await logits([(uid, iid) for iid, _ in found]) if found else []
        items = rec.rerank(uid, found, sigmoid(values), req.k, retrieved_by=source)
        return RecommendResponse(**recommendation_answer(rec, uid, items, req.internal_ids))

    return app
