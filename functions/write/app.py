"""Write Lambda: upserts and deletes by id, compaction, versions, rollback and garbage collection.

Thin by design: validate and run the event through ``kdbuckets.service.write``, record the
write as CloudWatch metrics (EMF), return the new version. A write is acknowledged only after
HEAD names a manifest that contains it; a conflicting concurrent write is retried inside.
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


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        response = service.write(event, store())
    except KdBucketsError as exc:
        logger.warning("write rejected", extra={"error": type(exc).__name__, "reason": str(exc)})
        raise
    except Exception:
        logger.exception("write failed unexpectedly")
        raise InternalError(
            f"internal error; see the function logs for request {context.aws_request_id}"
        ) from None
    operation = response["operation"]
    metrics.add_dimension(name="operation", value=operation)
    metrics.add_metric(name="Writes", unit=MetricUnit.Count, value=1)
    for field, name in (
        ("upserted", "VectorsUpserted"),
        ("deleted", "VectorsDeleted"),
        ("buckets_written", "BucketsWritten"),
    ):
        if field in response:
            metrics.add_metric(name=name, unit=MetricUnit.Count, value=response[field])
    logger.info("write applied", extra={k: response[k] for k in ("collection", "operation") if k in response})
    return response
