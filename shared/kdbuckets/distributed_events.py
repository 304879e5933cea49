"""Request models of the distributed build: the execution's input and each step's event.

The state machine (``statemachine/build.asl.json``) hands every Lambda task an event with a
``step`` field; the models here are a discriminated union on it, so a task that gets another
step's fields (a ``partition`` on a ``route``) is refused by the model itself, with the same
:class:`~kdbuckets.errors.InvalidRequest` wording as every other event
(:func:`kdbuckets.params.to_invalid_request`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator

from .errors import InvalidRequest
from .events import CollectionName, VersionId
from .params import BuildParams, RequestModel, to_invalid_request

#: Most partitions a build may ask for (each is one map child and one sub-tree).
MAX_PARTITIONS = 10_000
#: Most source rows the plan reads to fit the projection and the partition centroids.
MAX_PLAN_SAMPLE = 1_000_000
#: A plan id: hex SHA-256 of what the plan depends on (see ``distributed.plan_id``).
PlanId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DistributedBuildRequest(BuildParams):
    """The execution's input: a build event whose source is a prefix of ``.npy`` shards.

    ``partitions`` is how many partitions the plan aims for (None: one per
    :data:`kdbuckets.distributed.ROWS_PER_PARTITION` rows); ``sample`` how many rows it reads
    to fit the projection and the partition centroids; ``halo`` the share of rows, those
    nearest a partition border, also stored in the neighbouring partition (0: none).
    """

    collection: CollectionName
    source: dict[str, Any]
    replace: bool = False
    expected_version: VersionId | None = None
    partitions: Annotated[int, Field(ge=1, le=MAX_PARTITIONS)] | None = None
    sample: Annotated[int, Field(ge=1, le=MAX_PLAN_SAMPLE)] = 50_000
    halo: Annotated[float, Field(ge=0.0, le=0.5)] = 0.1

    @field_validator("source")
    @classmethod
    def _npy_prefixes(cls, source: dict[str, Any]) -> dict[str, Any]:
        """Only sharded ``.npy`` sources are distributed (a shard's rows are known from its header)."""
        if "vectors" not in source:
            raise InvalidRequest(
                "source",
                "must name a prefix of .npy shards in 'vectors' for a distributed build "
                "(JSON Lines and inline items are built by the build function)",
            )
        allowed = {"vectors", "ids", "labels", "label_names"}
        for name in source:
            if name not in allowed:
                raise InvalidRequest(f"source.{name}", f"is not a known field (expected {sorted(allowed)})")
        for name in ("vectors", "ids", "labels"):
            value = source.get(name)
            if value is not None and not (isinstance(value, str) and value.endswith("/")):
                raise InvalidRequest(
                    f"source.{name}", "must be an s3:// prefix ending in '/' (one .npy per shard)"
                )
        return source

    def params(self) -> BuildParams:
        return BuildParams(**self.as_dict())


class PlanRef(RequestModel):
    """What every step after the plan needs to find the plan: collection and plan id."""

    collection: CollectionName
    plan_id: PlanId


class PlanStep(RequestModel):
    step: Literal["plan"]
    request: dict[str, Any]


class RouteStep(RequestModel):
    step: Literal["route"]
    plan: PlanRef
    key: Annotated[str, Field(min_length=1, max_length=1024)]


class CollectStep(RequestModel):
    step: Literal["collect"]
    plan: PlanRef


class PartitionStep(RequestModel):
    step: Literal["partition"]
    plan: PlanRef
    partition: Annotated[int, Field(ge=0, lt=MAX_PARTITIONS)]


class CommitStep(RequestModel):
    step: Literal["commit"]
    plan: PlanRef


class ReportStep(RequestModel):
    """The Catch path: the failed state's ``error`` ({Error, Cause}) and the plan, if any."""

    step: Literal["report"]
    state: dict[str, Any]


StepEvent = PlanStep | RouteStep | CollectStep | PartitionStep | CommitStep | ReportStep
_STEPS: dict[str, type[RequestModel]] = {
    "plan": PlanStep,
    "route": RouteStep,
    "collect": CollectStep,
    "partition": PartitionStep,
    "commit": CommitStep,
    "report": ReportStep,
}
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Annotated[StepEvent, Field(discriminator="step")])


def parse_step(event: object) -> StepEvent:
    """Validate one task's event (a JSON object with ``step``)."""
    if not isinstance(event, dict):
        raise InvalidRequest("event", f"must be a JSON object, got {type(event).__name__}")
    try:
        return _ADAPTER.validate_python(event)
    except ValidationError as exc:
        raise to_invalid_request(exc, discriminator="step", union=_STEPS) from None


def parse_request(request: object) -> DistributedBuildRequest:
    """Validate the execution's input (the build request)."""
    if not isinstance(request, dict):
        raise InvalidRequest("event", f"must be a JSON object, got {type(request).__name__}")
    try:
        return DistributedBuildRequest.model_validate(request)
    except ValidationError as exc:
        raise to_invalid_request(exc) from None
