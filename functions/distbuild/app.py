"""Distributed-build Lambda: one step (plan, route, collect, partition, commit, report) per task.

Thin by design, like the build function: the state machine (``statemachine/build.asl.json``)
passes an event with a ``step`` field; ``kdbuckets.distributed.run_step`` validates and runs
it. A :class:`KdBucketsError` propagates with its class name as the error type, which is what
the state machine's ``Retry`` (``StorageError``) and ``Catch`` match on.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext

from kdbuckets import distributed
from kdbuckets.errors import InternalError, KdBucketsError
from kdbuckets.storage import ObjectStore

logger = Logger()


def store() -> ObjectStore:
    """The index store named by INDEX_BUCKET / INDEX_PREFIX (staging lives under it too)."""
    return ObjectStore(os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", ""))


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    step = event.get("step") if isinstance(event, dict) else None
    try:
        response = distributed.run_step(event, store())
    except KdBucketsError as exc:
        logger.warning("step failed", extra={"step": step, "error": type(exc).__name__, "reason": str(exc)})
        raise
    except Exception:
        logger.exception("step failed unexpectedly", extra={"step": step})
        raise InternalError(
            f"internal error; see the function logs for request {context.aws_request_id}"
        ) from None
    logger.info("step done", extra={"step": step, **{k: v for k, v in response.items() if k != "ref"}})
    return response
