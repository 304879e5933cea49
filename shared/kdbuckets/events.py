"""Request models: the one place where build and query events are validated.

Pydantic models (strict types, unknown fields rejected) check the envelope; vectors go
through numpy in one step. Every failure becomes :class:`InvalidRequest` naming the field
in the caller's terms (``vectors[2][5]``, ``source.vectors``, ``k``).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
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
from .filters import Filter, parse_filter
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
    filter: dict[StrictStr, Any] | None = None
    max_probes: Annotated[StrictInt, Field(ge=1, le=MAX_PROBES)] | None = None
    include_metadata: StrictBool = False
    mode: Literal["search", "classify"] = "search"
    version: Annotated[StrictStr, Field(pattern=r"^[0-9A-Za-z._-]{1,64}$")] | None = None
    ranking: Ranking | None = None

    @model_validator(mode="after")
    def _one_probe_knob(self) -> QueryRequest:
        if self.probes is not None and self.recall_target is not None:
            raise InvalidRequest("probes", "cannot be combined with recall_target; give one of them")
        return self

    def parsed_filter(self) -> Filter | None:
        """The metadata filter, validated (errors name e.g. ``filter.year.$gte``)."""
        return None if self.filter is None else parse_filter(self.filter, "filter")

    def matrix(self) -> np.ndarray:
        """Query vectors as float32 (nq, d); non-numeric or ragged input names the element."""
        return vector_matrix(self.vectors, field="vectors")


def parse_build(event: object) -> BuildRequest:
    """Validate a build event (a JSON object)."""
    return _parse(BuildRequest, event)


def parse_query(event: object) -> tuple[QueryRequest, np.ndarray, Filter | None]:
    """Validate a query event; returns the request, its vectors (nq, d) float32 and its filter."""
    request = _parse(QueryRequest, event)
    return request, request.matrix(), request.parsed_filter()


def _parse(model: type[BaseModel], event: object) -> Any:
    if not isinstance(event, dict):
        raise InvalidRequest("event", f"must be a JSON object, got {type(event).__name__}")
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        raise _to_invalid_request(exc) from None


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})
_VALIDATOR_TAG = re.compile(
    r"^(function-(after|before|wrap|plain)|literal|lax-or-strict|json-or-python|nullable|union|tagged-union|chain)\["
)


def _to_invalid_request(exc: ValidationError) -> InvalidRequest:
    """Turn pydantic's first error into ``InvalidRequest("vectors[3]", "…")``."""
    err = exc.errors(include_url=False)[0]
    cause = err.get("ctx", {}).get("error")
    if isinstance(cause, InvalidRequest):
        return cause
    field = ""
    for part in err["loc"]:
        if isinstance(part, str) and (part in _UNION_TAGS or _VALIDATOR_TAG.match(part)):
            continue  # pydantic's names for union members / validators, not the caller's fields
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


MAX_WRITE_ITEMS = 5000
MAX_DELETE_IDS = 10_000
Operation = Literal["upsert", "delete", "compact", "versions", "describe", "rollback", "gc"]


class WriteRequest(_Strict):
    """A write event: upsert/delete by id, or a maintenance operation on versions."""

    collection: StrictStr
    operation: Operation
    items: Annotated[list[Any], Field(min_length=1, max_length=MAX_WRITE_ITEMS)] | None = None
    ids: Annotated[list[Any], Field(min_length=1, max_length=MAX_DELETE_IDS)] | None = (
        None  # checked in service
    )
    version: Annotated[StrictStr, Field(pattern=r"^[0-9A-Za-z._-]{1,64}$")] | None = None
    expected_version: Annotated[StrictStr, Field(pattern=r"^[0-9A-Za-z._-]{1,64}$")] | None = None
    keep_last: Annotated[StrictInt, Field(ge=1, le=1000)] = 5
    grace_seconds: Annotated[StrictInt, Field(ge=0, le=7 * 86400)] = 900
    dry_run: StrictBool = False

    @model_validator(mode="after")
    def _fields_of_the_operation(self) -> WriteRequest:
        needs = {"upsert": "items", "delete": "ids", "describe": "version", "rollback": "version"}
        allowed = {
            "upsert": {"items"},
            "delete": {"ids"},
            "compact": set(),
            "versions": set(),
            "describe": {"version"},
            "rollback": {"version", "expected_version"},
            "gc": {"keep_last", "grace_seconds", "dry_run"},
        }[self.operation]
        required = needs.get(self.operation)
        if required and getattr(self, required) is None:
            raise InvalidRequest(required, f"is required for operation {self.operation!r}")
        for name in ("items", "ids", "version", "expected_version", "keep_last", "grace_seconds", "dry_run"):
            if name in self.model_fields_set and name not in allowed:
                raise InvalidRequest(name, f"does not apply to operation {self.operation!r}")
        return self


def parse_write(event: object) -> WriteRequest:
    """Validate a write event."""
    return _parse(WriteRequest, event)
