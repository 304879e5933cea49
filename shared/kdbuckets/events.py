"""Request models: the one place where build and query events are validated.

Pydantic models (strict types, unknown fields rejected) check the envelope; vectors go
through numpy in one step. Every failure becomes :class:`InvalidRequest` naming the field
in the caller's terms (``vectors[2][5]``, ``source.vectors``, ``k``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from . import layout
from .builder import MAX_REFINE, BuildParams
from .errors import InvalidRequest
from .searcher import MAX_K, RANKINGS
from .sources import vector_matrix

MAX_QUERY_VECTORS = 1000
MAX_PROBES = 4096
MAX_BUCKET_SIZE = 1_000_000
MAX_DEPTH = 64

Metric = Literal["cosine", "l2", "ip"]
Ranking = Literal[RANKINGS]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("collection", check_fields=False)
    @classmethod
    def _collection(cls, v: str) -> str:
        return layout.check_collection(v)


class BuildRequest(_Strict):
    """A build event: where the collection comes from and how to split it."""

    collection: StrictStr
    source: dict[StrictStr, Any]
    metric: Metric = "cosine"
    bucket_size: Annotated[StrictInt, Field(ge=1, le=MAX_BUCKET_SIZE)] = 1000
    max_depth: Annotated[StrictInt, Field(ge=0, le=MAX_DEPTH)] = 32
    seed: Annotated[StrictInt, Field(ge=0, le=2**32 - 1)] = 0
    split: Literal["spread", "random"] = "spread"
    projection: Literal["pca", "none"] = "pca"
    dtype: Literal["float32", "float16"] = "float32"
    refine: Annotated[StrictInt, Field(ge=0, le=MAX_REFINE)] = BuildParams.refine
    replicate: Annotated[StrictFloat, Field(ge=0.0, le=1.0)] = BuildParams.replicate
    ranking: Ranking = BuildParams.ranking

    def params(self) -> BuildParams:
        return BuildParams(**self.model_dump(exclude={"collection", "source"}))


class QueryRequest(_Strict):
    """A query event: vectors to search for, how many neighbours, how many buckets to read."""

    collection: StrictStr
    vectors: Annotated[list[Any], Field(min_length=1, max_length=MAX_QUERY_VECTORS)]
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    probes: Annotated[StrictInt, Field(ge=1, le=MAX_PROBES)] | None = None
    recall_target: Annotated[StrictFloat, Field(gt=0.0, le=1.0)] | None = None
    mode: Literal["search", "classify"] = "search"
    version: Annotated[StrictStr, Field(pattern=r"^[0-9A-Za-z._-]{1,64}$")] | None = None
    ranking: Ranking | None = None

    @model_validator(mode="after")
    def _one_probe_knob(self) -> QueryRequest:
        if self.probes is not None and self.recall_target is not None:
            raise InvalidRequest("probes", "cannot be combined with recall_target; give one of them")
        return self

    def matrix(self) -> np.ndarray:
        """Query vectors as float32 (nq, d); non-numeric or ragged input names the element."""
        return vector_matrix(self.vectors, field="vectors")


def parse_build(event: object) -> BuildRequest:
    """Validate a build event (a JSON object)."""
    return _parse(BuildRequest, event)


def parse_query(event: object) -> tuple[QueryRequest, np.ndarray]:
    """Validate a query event; returns the request and its vectors (nq, d) float32."""
    request = _parse(QueryRequest, event)
    return request, request.matrix()


def _parse(model: type[BaseModel], event: object) -> Any:
    if not isinstance(event, dict):
        raise InvalidRequest("event", f"must be a JSON object, got {type(event).__name__}")
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None


def _to_invalid_request(exc: ValidationError) -> InvalidRequest:
    """Turn pydantic's first error into ``InvalidRequest("vectors[3]", "…")``."""
    err = exc.errors(include_url=False)[0]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, InvalidRequest):
        return cause
    field = ""
    for part in err["loc"]:
        field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
    field = field or "event"
    if err["type"] == "missing":
        return InvalidRequest(field, "is required")
    if err["type"] == "extra_forbidden":
        return InvalidRequest(field, "is not a known field")
    got = repr(err.get("input"))
    got = got if len(got) <= 60 else got[:57] + "..."
    message = err["msg"][0].lower() + err["msg"][1:]
    return InvalidRequest(field, f"is invalid: {message} (got {got})")
