"""Write Lambda: upserts and deletes by id, compaction, versions, rollback and garbage collection.

Thin by design: validate and run the event through ``kdbuckets.service.write``, record the
write as CloudWatch metrics (EMF), return the new version. A write is acknowledged only after
HEAD names a manifest that contains it; a conflicting concurrent write is retried inside.

The same function is the consumer of the write queue (SQS FIFO, message group = collection,
``ReportBatchItemFailures``): an event of SQS records is a batch of queued upserts and deletes,
applied by ``kdbuckets.queue.apply_batch`` as one commit per collection. Powertools' batch
utility turns the per-message outcomes into a partial batch response: a message that could not
be applied now is a batch item failure (SQS delivers it again, in order); a message that can
never be applied goes to the dead-letter queue (``DEAD_LETTER_QUEUE_URL``) with its reason in
message attributes and its body unchanged, so it can be redriven once fixed.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord
from aws_lambda_powertools.utilities.typing import LambdaContext

from kdbuckets import queue, service
from kdbuckets.errors import InternalError, KdBucketsError
from kdbuckets.storage import ObjectStore

logger = Logger()
metrics = Metrics()
processor = BatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)

#: Where messages that can never be applied go (the queue's own dead-letter queue).
DEAD_LETTER_QUEUE_URL = "DEAD_LETTER_QUEUE_URL"
#: Longest reason put on a dead letter (the whole message must stay within SQS's size limit).
MAX_REASON_CHARS = 1024

_sqs_client: Any = None
_sqs_lock = threading.Lock()


def store() -> ObjectStore:
    """The index store named by INDEX_BUCKET / INDEX_PREFIX."""
    return ObjectStore(os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", ""))


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if is_queue_batch(event):
        return queue_batch(event, context)
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


# --------------------------------------------------------------------------- the write queue
class RetryLater(Exception):
    """A queued message that was not applied now: reported as a batch item failure."""


def is_queue_batch(event: object) -> bool:
    """True for what an SQS event source mapping delivers: ``Records`` from ``aws:sqs``."""
    records = event.get("Records") if isinstance(event, dict) else None
    return (
        isinstance(records, list)
        and bool(records)
        and all(isinstance(r, dict) and r.get("eventSource") == "aws:sqs" for r in records)
    )


def queue_batch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Apply a batch of queued writes; the response lists the messages SQS must deliver again."""
    records = event["Records"]
    messages = [
        queue.Message(r["messageId"], r.get("body", ""), (r.get("attributes") or {}).get("MessageGroupId"))
        for r in records
    ]
    report = queue.apply_batch(store(), messages)
    unsent = dead_letter(report.with_status("dead_letter"), records)
    outcomes = {o.message_id: o for o in report.outcomes}

    # A refused message that could not be dead-lettered goes back to the queue even though later
    # messages of its group committed: it is never applied, so its place in the order is moot.
    def record_handler(record: SQSRecord) -> str:
        outcome = outcomes[record.message_id]
        if outcome.status == "retry" or record.message_id in unsent:
            raise RetryLater(outcome.reason or "not applied")
        return outcome.status

    response = process_partial_response(
        event=event, record_handler=record_handler, processor=processor, context=context
    )
    _log_and_count(report, len(response.get("batchItemFailures", [])))
    return dict(response)


def dead_letter(refused: list[queue.Outcome], records: list[dict[str, Any]]) -> set[str]:
    """Send each refused message to the dead-letter queue; returns the ids that could not be sent.

    The body is the original one (a redrive puts it back as it came); the reason travels in
    message attributes, and the deduplication id is the original message id, so a batch that
    is delivered again after a crash does not dead-letter a message twice.
    """
    if not refused:
        return set()
    url = os.environ.get(DEAD_LETTER_QUEUE_URL)
    if not url:
        logger.error(f"{DEAD_LETTER_QUEUE_URL} is not set: refused messages go back to the queue")
        return {o.message_id for o in refused}
    by_id = {r["messageId"]: r for r in records}
    unsent: set[str] = set()
    for outcome in refused:
        record = by_id[outcome.message_id]
        group = (record.get("attributes") or {}).get("MessageGroupId") or outcome.collection or "kdbuckets"
        attributes = {
            "error": outcome.error or "InvalidRequest",
            "reason": (outcome.reason or "")[:MAX_REASON_CHARS],
            "source_message_id": outcome.message_id,
        }
        try:
            sqs().send_message(
                QueueUrl=url,
                MessageBody=record.get("body", ""),
                MessageGroupId=group,
                MessageDeduplicationId=outcome.message_id,
                MessageAttributes={
                    k: {"DataType": "String", "StringValue": v or "-"} for k, v in attributes.items()
                },
            )
        except Exception:
            logger.exception(
                "could not dead-letter a refused message", extra={"message_id": outcome.message_id}
            )
            unsent.add(outcome.message_id)
            continue
        logger.warning("queued write refused", extra={"message_id": outcome.message_id, **attributes})
    return unsent


def sqs() -> Any:
    """The SQS client for dead letters, created once (boto3 clients are thread-safe)."""
    global _sqs_client
    with _sqs_lock:
        if _sqs_client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20
            )
            _sqs_client = boto3.session.Session().client("sqs", config=config)
        return _sqs_client


def _log_and_count(report: queue.BatchReport, failures: int) -> None:
    for outcome in report.with_status("retry"):
        if outcome.exception is not None:  # the first message of its group that was not applied
            expected = isinstance(outcome.exception, KdBucketsError)
            logger.warning(
                "queued write not applied now; SQS delivers it and the rest of its group again",
                extra={
                    "message_id": outcome.message_id,
                    "collection": outcome.collection,
                    "error": outcome.error,
                },
                exc_info=None if expected else outcome.exception,
            )
    metrics.add_dimension(name="operation", value="queue")
    counts = {
        "QueuedMessages": len(report.outcomes),
        "Commits": sum(c.published for c in report.commits),
        "DeadLetters": len(report.with_status("dead_letter")),
        "BatchItemFailures": failures,
        "VectorsUpserted": sum(c.upserted for c in report.commits),
        "VectorsDeleted": sum(c.deleted for c in report.commits),
    }
    for name, value in counts.items():
        metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    logger.info(
        "queue batch applied",
        extra={
            "messages": len(report.outcomes),
            "batch_item_failures": failures,
            "commits": [
                {"collection": c.collection, "version": c.version, "messages": len(c.message_ids)}
                for c in report.commits
            ],
        },
    )
