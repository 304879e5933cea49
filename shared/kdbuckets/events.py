"""Request models: the one place where build, query and write events are validated.

Pydantic models (strict types, unknown fields rejected; see :mod:`kdbuckets.params`) check the
envelope; vectors go through numpy in one step. Write events are a discriminated union on
``operation``: each operation has a model holding only its own fields, so ``ids`` on a
``compact`` is refused by the model itself. Every failure becomes :class:`InvalidRequest`
naming the field in the caller's terms (``vectors[2][5]``, ``items[3].id``, ``keep_last``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from . import layout, scoring
from .collection import Collection, control_problem, id_problem
from .errors import InvalidRequest
from .filters import Filter, parse_filter
from .params import BuildParams, Ranking, RequestModel, field_error, to_invalid_request
from .searcher import CONSISTENCIES, DEFAULT_CONSISTENCY, MAX_K
from .sources import items_to_collection, vector_matrix

MAX_QUERY_VECTORS = 1000
MAX_PROBES = 4096
MAX_WRITE_ITEMS = 5000
MAX_DELETE_IDS = 10_000
MAX_KEEP_LAST = 1000
MAX_GRACE_SECONDS = 7 * 86400


def _collection_name(value: str) -> str:
    try:
        return layout.check_collection(value)
    except InvalidRequest as exc:
        raise field_error(exc.problem) from None


def _version_id(value: str) -> str:
    try:
        return layout.check_version(value)
    except InvalidRequest as exc:
        raise field_error(exc.problem) from None


#: A collection name (``layout.check_collection``: no ``..``, no ``/``).
CollectionName = Annotated[str, AfterValidator(_collection_name)]
#: A version id, the one rule of ``layout.check_version`` (ASCII letters, digits, ``._-``).
VersionId = Annotated[str, AfterValidator(_version_id)]


# --------------------------------------------------------------------------- build and query
class BuildRequest(BuildParams):
    """A build event: where the collection comes from, plus the build parameters (flat).

    Building over an existing collection needs ``replace`` (whatever version is live) or
    ``expected_version`` (only if that version is still live).
    """

    collection: CollectionName
    source: dict[str, Any]
    replace: bool = False
    expected_version: VersionId | None = None

    @field_validator("source")
    @classmethod
    def _inline_ids_without_control_characters(cls, source: dict[str, Any]) -> dict[str, Any]:
        """Check inline ids before numpy sees them: a text array drops trailing NULs."""
        items = source.get("items")
        for i, item in enumerate(items if isinstance(items, list) else ()):
            ident = item.get("id") if isinstance(item, dict) else None
            problem = control_problem(ident) if isinstance(ident, str) else None
            if problem is not None:
                raise InvalidRequest(f"source.items[{i}].id", problem)
        return source

    def params(self) -> BuildParams:
        return BuildParams(**self.as_dict())


class QueryRequest(RequestModel):
    """A query event: vectors to search for, how many neighbours, how many buckets to read."""

    collection: CollectionName
    vectors: Annotated[list[Any], Field(min_length=1, max_length=MAX_QUERY_VECTORS)]
    k: Annotated[int, Field(ge=1, le=MAX_K)] = 10
    probes: Annotated[int, Field(ge=1, le=MAX_PROBES)] | None = None
    recall_target: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    filter: dict[str, Any] | None = None
    max_probes: Annotated[int, Field(ge=1, le=MAX_PROBES)] | None = None
    include_metadata: bool = False
    mode: Literal["search", "classify"] = "search"
    version: VersionId | None = None
    ranking: Ranking | None = None
    consistency: Literal[CONSISTENCIES] = DEFAULT_CONSISTENCY  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _one_probe_knob_and_a_response_that_fits(self) -> QueryRequest:
        if self.probes is not None and self.recall_target is not None:
            raise InvalidRequest("probes", "cannot be combined with recall_target; give one of them")
        scoring.check_result_count(len(self.vectors), self.k, include_metadata=self.include_metadata)
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
    _require_object(event)
    try:
        return model.model_validate(event)
    except ValidationError as exc:
        raise to_invalid_request(exc) from None


def _require_object(event: object) -> None:
    if not isinstance(event, dict):
        raise InvalidRequest("event", f"must be a JSON object, got {type(event).__name__}")


# --------------------------------------------------------------------------- write
def _item_id(value: Any) -> Any:
    problem = id_problem(value)
    if problem is not None:
        raise field_error(problem)
    return value


class Item(RequestModel):
    """One upserted vector. Its id is required: an upsert replaces whatever has that id."""

    id: Annotated[Any, AfterValidator(_item_id)]
    vector: list[Any]  # elements are checked by numpy in one step (sources.vector_matrix)
    label: Any = None  # a string or an integer; checked with the batch (items_to_collection)
    metadata: Any = None  # checked by metadata.validate_metadata


class UpsertRequest(RequestModel):
    """Insert or replace vectors by id."""

    collection: CollectionName
    operation: Literal["upsert"]
    items: Annotated[list[Item], Field(min_length=1, max_length=MAX_WRITE_ITEMS)]

    @field_validator("items")
    @classmethod
    def _one_consistent_batch(cls, items: list[Item]) -> list[Item]:
        """Ids all of one type and distinct; labels on every item or on none.

        A repeated id would make the batch's result depend on its order; a batch that mixes
        labelled and unlabelled items is refused as a build with such items is.
        """
        first = items[0]
        seen: dict[Any, int] = {}
        for j, item in enumerate(items):
            if type(item.id) is not type(first.id):
                raise InvalidRequest(
                    f"items[{j}].id",
                    f"is {_kind(item.id)} but items[0].id is {_kind(first.id)}; "
                    "the ids of one request are all strings or all integers",
                )
            if item.id in seen:
                raise InvalidRequest(
                    f"items[{j}].id",
                    f"repeats items[{seen[item.id]}].id ({item.id!r}); an upsert names each id once",
                )
            seen[item.id] = j
            if (item.label is None) != (first.label is None):
                problem = (
                    "is missing but items[0] has one"
                    if item.label is None
                    else "is given but items[0] has none"
                )
                raise InvalidRequest(f"items[{j}].label", f"{problem}; label every item of an upsert or none")
        return items

    def to_collection(self) -> Collection:
        """The items as a validated collection (vectors, ids, labels, metadata)."""
        rows = [
            {"id": i.id, "vector": i.vector, "label": i.label, "metadata": i.metadata} for i in self.items
        ]
        return items_to_collection(rows, metric="l2", field="items")


class DeleteRequest(RequestModel):
    """Remove vectors by id; each id counts once however often it is named."""

    collection: CollectionName
    operation: Literal["delete"]
    ids: Annotated[list[Any], Field(min_length=1, max_length=MAX_DELETE_IDS)]

    @field_validator("ids")
    @classmethod
    def _distinct_ids_of_one_type(cls, ids: list[Any]) -> list[Any]:
        """Check every id before numpy sees it, then drop repeats (keeping first occurrences)."""
        for n, ident in enumerate(ids):
            problem = id_problem(ident)
            if problem is not None:
                raise InvalidRequest(f"ids[{n}]", problem)
            if type(ident) is not type(ids[0]):
                raise InvalidRequest(
                    f"ids[{n}]",
                    f"is {_kind(ident)} but ids[0] is {_kind(ids[0])}; "
                    "the ids of one request are all strings or all integers",
                )
        return list(dict.fromkeys(ids))

    def id_array(self) -> np.ndarray:
        """The distinct ids as int64 or unicode."""
        return np.array(self.ids, dtype=np.int64 if isinstance(self.ids[0], int) else str)


class CompactRequest(RequestModel):
    """Rebuild the live contents with the collection's own parameters."""

    collection: CollectionName
    operation: Literal["compact"]


class VersionsRequest(RequestModel):
    """List the collection's versions, newest first."""

    collection: CollectionName
    operation: Literal["versions"]


class DescribeRequest(RequestModel):
    """Summarise one version."""

    collection: CollectionName
    operation: Literal["describe"]
    version: VersionId


class RollbackRequest(RequestModel):
    """Point HEAD back at ``version``, only if HEAD is still ``expected_version`` (when given)."""

    collection: CollectionName
    operation: Literal["rollback"]
    version: VersionId
    expected_version: VersionId | None = None


class GcRequest(RequestModel):
    """Delete objects no kept version references and that are older than the grace period."""

    collection: CollectionName
    operation: Literal["gc"]
    keep_last: Annotated[int, Field(ge=1, le=MAX_KEEP_LAST)] = 5
    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_SECONDS)] = 900
    dry_run: bool = False


class ListCollectionsRequest(RequestModel):
    """List every collection under the store's prefix (so it names no collection)."""

    operation: Literal["list_collections"]


class DropRequest(RequestModel):
    """Delete a whole collection, only if HEAD is still ``expected_version`` (required: no undo)."""

    collection: CollectionName
    operation: Literal["drop"]
    expected_version: VersionId


#: Each write operation and the model of its event.
WRITE_MODELS: dict[str, type[RequestModel]] = {
    "upsert": UpsertRequest,
    "delete": DeleteRequest,
    "compact": CompactRequest,
    "versions": VersionsRequest,
    "describe": DescribeRequest,
    "rollback": RollbackRequest,
    "gc": GcRequest,
    "list_collections": ListCollectionsRequest,
    "drop": DropRequest,
}
WriteRequest = Annotated[
    UpsertRequest
    | DeleteRequest
    | CompactRequest
    | VersionsRequest
    | DescribeRequest
    | RollbackRequest
    | GcRequest
    | ListCollectionsRequest
    | DropRequest,
    Field(discriminator="operation"),
]
_WRITE: TypeAdapter[Any] = TypeAdapter(WriteRequest)


def parse_write(event: object) -> WriteRequest:
    """Validate a write event into the model of its operation."""
    _require_object(event)
    try:
        return _WRITE.validate_python(event)
    except ValidationError as exc:
        raise to_invalid_request(exc, discriminator="operation", union=WRITE_MODELS) from None


def _kind(value: object) -> str:
    return "an integer" if isinstance(value, int) else "a string"
