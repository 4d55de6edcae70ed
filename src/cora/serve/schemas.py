"""The service's request and response bodies, with the limits the handlers enforce in the schema.

Request models are built per app (:func:`request_models`) because their bounds come from the
run: user and item ids 1..n-1 of its dataset (0 is the padding id), at most ``max_pairs`` pairs
per ``/score`` request, ``k`` and ``candidates`` in range. pydantic rejects a value outside them
with a 422, and the same numbers are the ``minimum`` / ``maximum`` / ``maxItems`` of the OpenAPI
schema, so a client (or a schema-driven fuzzer) knows exactly what is accepted. An id in range
that the dataset never uses (no interactions, no title) is a 404.

Ids, ``k`` and ``candidates`` are JSON Schema integers: any JSON number with a zero fraction
(``3`` or ``3.0``), never a string or a boolean (``"3"``, ``true``: 422), so what the schema
calls valid is what the handlers accept. The one rule a JSON Schema cannot state, ``k`` <=
``candidates``, is in the field descriptions (and a 422).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

MAX_PAIRS = 1024  # pairs per /score request
MAX_K = 100
MAX_CANDIDATES = 1000
MAX_BODY_BYTES = 1 << 20  # 1 MiB: ~40,000 pairs of JSON, far above MAX_PAIRS


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. ``max_user`` / ``max_item``: the largest ids of the dataset."""

    max_user: int
    max_item: int
    max_pairs: int = MAX_PAIRS
    max_k: int = MAX_K
    max_candidates: int = MAX_CANDIDATES
    max_body_bytes: int = MAX_BODY_BYTES

    def __post_init__(self):
        if min(self.max_user, self.max_item, self.max_pairs, self.max_k, self.max_candidates,
               self.max_body_bytes) < 1:
            raise ValueError(f"every limit must be >= 1: {self}")

    def to_dict(self) -> dict:
        return asdict(self)


def _no_string_or_bool(value):
    # pydantic's lax int would take "3" and true; its strict int would refuse 3.0, which JSON
    # Schema's "integer" allows. Refusing strings and booleans first, then validating laxly
    # (3.0 -> 3, 3.5 -> error), accepts exactly the schema's integers.
    if isinstance(value, (str, bytes, bool)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


def _integer(lo: int, hi: int, description: str, **kw):
    return Annotated[int, Field(ge=lo, le=hi, description=description, **kw), BeforeValidator(_no_string_or_bool)]


def request_models(limits: Limits) -> tuple[type[BaseModel], type[BaseModel]]:
    """(ScoreRequest, RecommendRequest) accepting exactly what the handlers serve."""
    user_id = _integer(1, limits.max_user, f"User id of the run's dataset (1..{limits.max_user}).")
    item_id = _integer(1, limits.max_item, f"Item id of the run's dataset (1..{limits.max_item}).")

    class Pair(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: user_id
        item: item_id

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pairs: list[Pair] = Field(min_length=1, max_length=limits.max_pairs,
                                  description=f"1 to {limits.max_pairs} (user, item) pairs to score "
                                              f"(more: 422).")

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: user_id
        k: _integer(1, limits.max_k, f"Items to return (1..{limits.max_k}; at most `candidates`).") = 10
        candidates: _integer(1, limits.max_candidates, "Items the CF model retrieves for the LLM to rerank "
                             f"(k..{limits.max_candidates}; k > candidates is a 422).") = 100

        @model_validator(mode="after")
        def _k_within_candidates(self):  # JSON Schema cannot relate two fields: stated in the descriptions
            if self.k > self.candidates:
                raise ValueError(f"k ({self.k}) must not exceed candidates ({self.candidates})")
            return self

    return ScoreRequest, RecommendRequest


class ErrorMessage(BaseModel):
    """Every error but 422 (whose ``detail`` is the list of what failed validation)."""

    detail: str


class ScoredPair(BaseModel):
    user: int
    item: int
    score: float = Field(description="The method's Yes logit.")
    probability: float = Field(description="sigmoid(score): how likely the user enjoys the item.")


class ScoreResponse(BaseModel):
    results: list[ScoredPair]


class RecommendedItem(BaseModel):
    rank: int
    item: int
    title: str
    probability: float
    cf_score: float
    retrieved_by: Literal["cf", "popularity"] = Field(
        "cf", description="'popularity' for a cold user (no training rows): CF scores would be noise.")


class RecommendResponse(BaseModel):
    user: int
    items: list[RecommendedItem]


class Health(BaseModel):
    status: Literal["ok", "shutting down"]
    queued: int = Field(description="Requests waiting for a forward pass.")
    queue_size: int


class Info(BaseModel):
    run: str
    backbone: str
    method: str
    modules: str | None = Field(description="CoRA's adapted modules (null for other methods).")
    dataset: str
    domain: str
    n_users: int = Field(description="Users with interactions (servable).")
    n_items: int = Field(description="Items with a title (servable).")
    cf_model: str | None
    max_batch: int
    max_wait_ms: float
    queue_size: int
    limits: Limits
    stats: dict[str, int] = Field(description="Batcher counters: requests, pairs, batches, rejected.")
