"""Request models: the one place where build, query and write events are validated.

Pydantic models (strict types, unknown fields rejected; see :mod:`kdbuckets.params`) check the
envelope; vectors go through numpy in one step. Write events are a discriminated union on
``operation``: each operation has a model holding only its own fields, so ``ids`` on a
``compact`` is refused by the model itself. Every failure becomes :class:`InvalidRequest`
naming the field in the caller's terms (``vectors[2][5]``, ``items[3].id``, ``keep_last``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, cast

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
from .reading import DEFAULT_LIST_LIMIT, MAX_CURSOR_CHARS, MAX_FETCH_IDS, MAX_LIST_LIMIT
from .searcher import CONSISTENCIES, DEFAULT_CONSISTENCY, MAX_K
from .sources import items_to_collection, vector_matrix
from .storage import S3Uri

MAX_QUERY_VECTORS = 1000
MAX_PROBES = 4096
MAX_WRITE_ITEMS = 5000
MAX_DELETE_IDS = 10_000
MAX_KEEP_LAST = 1000
MAX_GRACE_SECONDS = 7 * 86400
MAX_EXPORT_SHARD_ROWS = 1_000_000


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


#: Most positive (or negative) examples of one recommend request.
MAX_EXAMPLES = 100
#: The ways to give query vectors: exactly one per query event.
QUERY_INPUTS = ("vectors", "ids", "recommend", "analogy")


class RecommendSpec(RequestModel):
    """Examples (ids or vectors, mixed) to recommend from; see :mod:`kdbuckets.examples`."""

    positive: Annotated[list[Any], Field(min_length=1, max_length=MAX_EXAMPLES)]
    negative: Annotated[list[Any], Field(default_factory=list, max_length=MAX_EXAMPLES)]
    strategy: Literal["average_vector", "best_score"] = "average_vector"


class AnalogySpec(RequestModel):
    """ "a is to b as c is to ?" — each an id or a vector."""

    a: Any
    b: Any
    c: Any


class QueryRequest(RequestModel):
    """A query event: what to search for (vectors, stored ids, a recommendation or an
    analogy — exactly one), how many neighbours, how many buckets to read."""

    collection: CollectionName
    operation: Literal["query"] = "query"  # the default read operation (see READ_MODELS)
    vectors: Annotated[list[Any], Field(min_length=1, max_length=MAX_QUERY_VECTORS)] | None = None
    ids: Annotated[list[Any], Field(min_length=1, max_length=MAX_QUERY_VECTORS)] | None = None
    exclude_self: bool = True
    recommend: RecommendSpec | None = None
    analogy: AnalogySpec | None = None
    group_by: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    group_size: Annotated[int, Field(ge=1, le=MAX_K)] = 1
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
        given = [name for name in QUERY_INPUTS if getattr(self, name) is not None]
        if len(given) != 1:
            problem = "is required" if not given else f"cannot be combined with {', '.join(given[1:])}"
            raise InvalidRequest(
                given[0] if given else "vectors",
                f"{problem}; give exactly one of {', '.join(QUERY_INPUTS)}",
            )
        if self.ids is None and "exclude_self" in self.model_fields_set:
            raise InvalidRequest("exclude_self", "applies only to a query by ids")
        if self.probes is not None and self.recall_target is not None:
            raise InvalidRequest("probes", "cannot be combined with recall_target; give one of them")
        if self.group_by is None and self.group_size != 1:
            raise InvalidRequest("group_size", "needs group_by")
        if self.group_size > self.k:
            raise InvalidRequest("group_size", f"must be at most k ({self.k}), got {self.group_size}")
        if self.group_by is not None and self.mode == "classify":
            raise InvalidRequest("group_by", "does not apply to mode 'classify'")
        if self.recommend is not None and self.recommend.strategy == "best_score" and self.group_by:
            raise InvalidRequest("group_by", "does not apply to recommend strategy 'best_score'")
        nq = len(self.vectors or self.ids or [None])
        scoring.check_result_count(nq, self.k * self.group_size, include_metadata=self.include_metadata)
        return self

    @field_validator("ids")
    @classmethod
    def _distinct_query_ids(cls, ids: list[Any] | None) -> list[Any] | None:
        return None if ids is None else distinct_ids(ids, "ids")

    def spec(self) -> Any:
        """What to search for by example (``examples.ByIds`` / ``Recommend`` / ``Analogy``), or None."""
        from . import examples

        if self.ids is not None:
            return examples.ByIds(self.ids, self.exclude_self)
        if self.recommend is not None:
            r = self.recommend
            return examples.Recommend(r.positive, r.negative, r.strategy)
        if self.analogy is not None:
            return examples.Analogy(self.analogy.a, self.analogy.b, self.analogy.c)
        return None

    def parsed_filter(self) -> Filter | None:
        """The metadata filter, validated (errors name e.g. ``filter.year.$gte``)."""
        return None if self.filter is None else parse_filter(self.filter, "filter")

    def matrix(self) -> np.ndarray | None:
        """Query vectors as float32 (nq, d) (None when the query is by example)."""
        return None if self.vectors is None else vector_matrix(self.vectors, field="vectors")


def parse_build(event: object) -> BuildRequest:
    """Validate a build event (a JSON object)."""
    return _parse(BuildRequest, event)


def parse_query(event: object) -> tuple[QueryRequest, np.ndarray | None, Filter | None]:
    """Validate a query event; returns the request, its vectors (nq, d) float32 (None for a
    query by example: ``request.spec()``) and its filter."""
    request = _parse(QueryRequest, event)
    return request, request.matrix(), request.parsed_filter()


# --------------------------------------------------------------------------- other reads
class FetchRequest(RequestModel):
    """Stored vectors by id (unknown ids are listed as missing, not an error)."""

    collection: CollectionName
    operation: Literal["fetch"]
    ids: Annotated[list[Any], Field(min_length=1, max_length=MAX_FETCH_IDS)]
    include_vectors: bool = False
    include_metadata: bool = True
    version: VersionId | None = None

    @field_validator("ids")
    @classmethod
    def _distinct_ids_of_one_type(cls, ids: list[Any]) -> list[Any]:
        return distinct_ids(ids, "ids")


class ListRequest(RequestModel):
    """One page of a version's vectors; ``cursor`` (from the previous page) continues it."""

    collection: CollectionName
    operation: Literal["list"]
    limit: Annotated[int, Field(ge=1, le=MAX_LIST_LIMIT)] = DEFAULT_LIST_LIMIT
    cursor: Annotated[str, Field(min_length=1, max_length=MAX_CURSOR_CHARS)] | None = None
    include_vectors: bool = False
    include_metadata: bool = True
    version: VersionId | None = None


class CountRequest(RequestModel):
    """How many vectors a version holds, or how many match a metadata filter."""

    collection: CollectionName
    operation: Literal["count"]
    filter: dict[str, Any] | None = None
    version: VersionId | None = None

    def parsed_filter(self) -> Filter | None:
        return None if self.filter is None else parse_filter(self.filter, "filter")


#: Each read operation of the query function and the model of its event ("query" is the default).
READ_MODELS: dict[str, type[RequestModel]] = {
    "query": QueryRequest,
    "fetch": FetchRequest,
    "list": ListRequest,
    "count": CountRequest,
}
ReadRequest = Annotated[
    QueryRequest | FetchRequest | ListRequest | CountRequest, Field(discriminator="operation")
]
_READ: TypeAdapter[Any] = TypeAdapter(ReadRequest)


def parse_read(event: object) -> FetchRequest | ListRequest | CountRequest | QueryRequest:
    """Validate a read event into the model of its ``operation`` (absent: ``"query"``).

    Query events are parsed by :func:`parse_query` (vectors and filter too); this names the
    operation's own fields in errors, e.g. ``cursor does not apply to operation 'fetch'``.
    """
    _require_object(event)
    given = cast(dict[str, Any], event)
    tagged = given if "operation" in given else {**given, "operation": "query"}
    try:
        return _READ.validate_python(tagged)
    except ValidationError as exc:
        raise to_invalid_request(exc, discriminator="operation", union=READ_MODELS) from None


def read_operation(event: object) -> object:
    """The ``operation`` a query-function event asks for (``"query"`` when it names none)."""
    return event.get("operation", "query") if isinstance(event, dict) else "query"


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
def _export_prefix(value: str) -> str:
    """An ``s3://bucket/prefix/`` URI (the prefix the export's shards go under)."""
    try:
        S3Uri.parse(value, field="destination")
    except InvalidRequest as exc:
        raise field_error(exc.problem) from None
    if not value.endswith("/"):
        raise field_error("must be a prefix ending in '/'")
    return value


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
        return distinct_ids(ids, "ids")

    def id_array(self) -> np.ndarray:
        """The distinct ids as int64 or unicode."""
        return np.array(self.ids, dtype=np.int64 if isinstance(self.ids[0], int) else str)


class CompactRequest(RequestModel):
    """Rebuild the live contents with the collection's own parameters."""

    collection: CollectionName
    operation: Literal["compact"]


class RecalibrateRequest(RequestModel):
    """Measure the live version's recall curves anew (after writes) and publish them."""

    collection: CollectionName
    operation: Literal["recalibrate"]


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


class ExportRequest(RequestModel):
    """Write a version (default: the live one) to S3 as shards a build reads back (export.py)."""

    collection: CollectionName
    operation: Literal["export"]
    destination: Annotated[str, AfterValidator(_export_prefix)]
    version: VersionId | None = None
    rows_per_shard: Annotated[int, Field(ge=1, le=MAX_EXPORT_SHARD_ROWS)] | None = None


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
    "export": ExportRequest,
    "recalibrate": RecalibrateRequest,
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
    | DropRequest
    | ExportRequest
    | RecalibrateRequest,
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


def distinct_ids(ids: list[Any], field: str) -> list[Any]:
    """Check every id before numpy sees it, then drop repeats (keeping first occurrences)."""
    for n, ident in enumerate(ids):
        problem = id_problem(ident)
        if problem is not None:
            raise InvalidRequest(f"{field}[{n}]", problem)
        if type(ident) is not type(ids[0]):
            raise InvalidRequest(
                f"{field}[{n}]",
                f"is {_kind(ident)} but {field}[0] is {_kind(ids[0])}; "
                "the ids of one request are all strings or all integers",
            )
    return list(dict.fromkeys(ids))


def _kind(value: object) -> str:
    return "an integer" if isinstance(value, int) else "a string"
