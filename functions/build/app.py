"""Build Lambda: read a collection from S3 (or inline), build its k-d buckets, publish.

Thin by design: validate and run the event through ``kdbuckets.service.build``, record the
build as CloudWatch metrics (EMF), return the new version. Publishing is atomic (HEAD is
swapped by compare-and-swap), so a failed or timed-out invocation is never visible.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kdbuckets import service
from kdbuckets.errors import InternalError, KdBucketsError
from kdbuckets.storage import ObjectStore

logger = Logger()
metrics = Metrics()


def store() -> ObjectStore:
    """The index store named by INDEX_BUCKET / INDEX_PREFIX."""
    return ObjectStore(os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", ""))


def memory_mb(context: LambdaContext) -> int | None:
    """The function's memory (the build refuses collections it cannot hold), if Lambda tells it."""
    try:
        return int(context.memory_limit_in_mb)
    except (AttributeError, TypeError, ValueError):
        return None


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        response = service.build(event, store(), memory_mb=memory_mb(context))
    except KdBucketsError as exc:
        logger.warning("build rejected", extra={"error": type(exc).__name__, "reason": str(exc)})
        raise
    except Exception:
        logger.exception("build failed unexpectedly")
        raise InternalError(
            f"internal error; see the function logs for request {context.aws_request_id}"
        ) from None
    metrics.add_metric(name="VectorsIndexed", unit=MetricUnit.Count, value=response["count"])
    metrics.add_metric(name="BucketsWritten", unit=MetricUnit.Count, value=response["buckets_written"])
    metrics.add_metric(
        name="BuildDuration", unit=MetricUnit.Milliseconds, value=response["timings_ms"]["total_ms"]
    )
    logger.info(
        "build published", extra={k: response[k] for k in ("collection", "version", "count", "buckets")}
    )
    return response
