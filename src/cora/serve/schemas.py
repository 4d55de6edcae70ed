"""The service's request and response bodies, with the limits the handlers enforce in the schema.

Request models are built per app (:func:`request_models`) because their bounds are the service's
settings: at most ``max_pairs`` pairs per ``/score`` request, ``k`` and ``candidates`` (at most
``max_candidates``: the prompts one ``/recommend`` makes the model score) in range. pydantic
rejects a value outside them with a 422, and the same numbers are the ``minimum`` / ``maximum`` /
``maxItems`` of the OpenAPI schema, so a client (or a schema-driven fuzzer) knows what is accepted.

Ids are the dataset's own (``users.parquet`` / ``items.parquet``, :mod:`cora.serve.ids`): a JSON
number or a string (the importer keeps ids as text, so 260 and "260" are the same id). An id the
dataset does not know is a 404 naming it. With ``"internal_ids": true`` the request's ids are
cora's internal ones (whole numbers, or their text; other text names no internal id: 404) and the
response adds them as ``uid`` / ``iid`` beside the dataset's ``user`` / ``item``. A response field means one thing:
``user`` / ``item`` are always the dataset's ids, ``uid`` / ``iid`` always cora's.

Integers (``k``, ``candidates``, numeric ids) are JSON Schema integers: any JSON number with a
zero fraction (``3`` or ``3.0``), never a boolean (``true``: 422), so what the schema calls valid
is what the handlers accept. The one rule a JSON Schema cannot state, ``k`` <= ``candidates``, is
in the field descriptions (and a 422).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Annotated, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    model_validator,
)
from pydantic_core import PydanticCustomError

MAX_PAIRS = 1024  # pairs per /score request
MAX_K = 100
MAX_CANDIDATES = 1000
MAX_BODY_BYTES = 1 << 20  # 1 MiB: ~40,000 pairs of JSON, far above MAX_PAIRS
REQUEST_TIMEOUT_S = 120.0  # a request not scored by then is a 504 and leaves the model
MAX_ID_CHARS = 256


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, and how long it may take."""

    max_pairs: int = MAX_PAIRS
    max_k: int = MAX_K
    max_candidates: int = MAX_CANDIDATES
    max_body_bytes: int = MAX_BODY_BYTES
    request_timeout_s: float = REQUEST_TIMEOUT_S

    def __post_init__(self):
        if min(self.max_pairs, self.max_k, self.max_candidates, self.max_body_bytes) < 1 or not self.request_timeout_s > 0:
            raise ValueError(f"every limit must be >= 1 and the timeout > 0: {self}")

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


# The dataset's own id: a JSON integer, or text (stripped before the lookup).
AnyId = Union[Annotated[int, BeforeValidator(_no_string_or_bool)],
              Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]]
_INTERNAL = Field(False, description="The ids of this request are cora's internal ones (whole numbers); the "
                                     "response adds them as uid / iid. Default: the dataset's own ids.")


def request_models(limits: Limits, example_user: int | str = 1,
                   example_item: int | str = 1) -> tuple[type[BaseModel], type[BaseModel]]:
    """(ScoreRequest, RecommendRequest) accepting exactly what the handlers serve. The examples (ids
    of the run's dataset) make /docs' "Try it out" and schema-driven clients start from ids it knows."""
    user_id = Annotated[AnyId, Field(description="The dataset's user id (a number or text; with internal_ids, "
                                                 "cora's integer id).", examples=[example_user])]
    item_id = Annotated[AnyId, Field(description="The dataset's item id (a number or text; with internal_ids, "
                                                 "cora's integer id).", examples=[example_item])]

    class Pair(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: user_id
        item: item_id

    class ScoreRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        pairs: list[Pair] = Field(min_length=1, max_length=limits.max_pairs,
                                  description=f"1 to {limits.max_pairs} (user, item) pairs to score "
                                              f"(more: 422).")
        internal_ids: StrictBool = _INTERNAL

    class RecommendRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")
        user: user_id
        k: _integer(1, limits.max_k, f"Items to return (1..{limits.max_k}; at most `candidates`).") = 10
        candidates: _integer(1, limits.max_candidates, "Items the CF model retrieves for the LLM to rerank: the "
                             f"prompts this request costs (k..{limits.max_candidates}; k > candidates is a 422).") = 100
        internal_ids: StrictBool = _INTERNAL

        @model_validator(mode="after")
        def _k_within_candidates(self):  # JSON Schema cannot relate two fields: stated in the descriptions
            if self.k > self.candidates:
                raise ValueError(f"k ({self.k}) must not exceed candidates ({self.candidates})")
            return self

    return ScoreRequest, RecommendRequest


class ErrorMessage(BaseModel):
    """Every error but 422 (whose ``detail`` is the list of what failed validation)."""

    detail: str


OriginalId = Annotated[int | str, Field(description="The dataset's own id, as its id map stores it "
                                                             "(text for an imported log, a number otherwise).")]
InternalId = Annotated[int, Field(description="cora's internal id; only in answers to internal_ids requests.")]


class ScoredPair(BaseModel):
    user: OriginalId
    item: OriginalId
    uid: InternalId | None = None
    iid: InternalId | None = None
    title: str
    score: float = Field(description="The method's Yes logit.")
    probability: float = Field(description="sigmoid(score): how likely the user enjoys the item.")


class ScoreResponse(BaseModel):
    results: list[ScoredPair]


class RecommendedItem(BaseModel):
    rank: int
    item: OriginalId
    iid: InternalId | None = None
    title: str
    probability: float
    cf_score: float | None = Field(description="The CF model's score of the item (null when retrieved by popularity).")
    train_positives: int | None = Field(description="The item's positive training rows, by which a cold user's "
                                                    "candidates are retrieved (null when retrieved by CF).")
    retrieved_by: Literal["cf", "popularity"] = Field(
        "cf", description="'popularity' for a cold user (no training rows): CF scores would be noise.")


class RecommendResponse(BaseModel):
    user: OriginalId
    uid: InternalId | None = None
    items: list[RecommendedItem]


class Health(BaseModel):
    status: Literal["ok", "shutting down"]
    queued: int = Field(description="Requests waiting for a forward pass.")
    queue_size: int


class Info(BaseModel):
    run: str = Field(description="The run folder's name (its path with --show-paths).")
    backbone: str = Field(description="The backbone's hub name, or its folder's name (its path with --show-paths).")
    method: str
    modules: str | None = Field(description="CoRA's adapted modules (null for other methods).")
    dataset: str
    domain: str
    n_users: int = Field(description="Users with interactions (servable).")
    n_items: int = Field(description="Items with a title (servable).")
    cf_model: str | None
    id_maps: bool = Field(description="The dataset has id maps (users.parquet / items.parquet): its own ids "
                                      "differ from cora's. Without them the two are the same.")
    device: str = Field(description="Where the model scores (cpu, cuda:N): --device, else where the run trained.")
    dtype: str = Field(description="The precision it scores in: --dtype, else the run's (fp32 on a CPU "
                                   "without units for it).")
    threads: int | None = Field(description="torch's CPU threads (--threads, else the CPUs this process may use); "
                                            "null on a GPU.")
    auth: bool = Field(description="Requests need an API key (Authorization: Bearer).")
    max_batch: int
    max_wait_ms: float
    queue_size: int
    limits: Limits
    stats: dict[str, int] = Field(description="Batcher counters: requests, pairs, batches (model calls), "
                                              "rejected (queue full), timed_out.")
