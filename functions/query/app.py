"""Query Lambda: k-NN search and classification, and reading stored vectors back (fetch, list, count).

Thin by design: validate and run the event through ``kdbuckets.service.query``, record what
the request cost as CloudWatch metrics (EMF), return the response. The ``Searcher`` lives at
module level so a warm container reuses its manifest and bucket caches.

Configuration (environment): ``INDEX_BUCKET`` and ``INDEX_PREFIX`` say where indexes live;
``BUCKET_CACHE_MB`` bounds the in-memory cache of decoded buckets (default 512);
``DISK_CACHE_MB`` > 0 adds a second tier of that size in ``DISK_CACHE_DIR`` (default
``/tmp/kdbuckets``), read through read-only memory maps, so a warm container keeps more buckets
than its memory cache holds (the template sets it; 0 turns it off).

Only the query path is imported here: the builder, the writer and garbage collection are
never loaded by this function, which keeps its cold start short.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from kdbuckets import service
from kdbuckets.errors import InternalError, KdBucketsError
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore

logger = Logger()
metrics = Metrics()
_searcher: Searcher | None = None


def searcher() -> Searcher:
    """The container-wide searcher, configured from the environment on first use."""
    global _searcher
    if _searcher is None:
        disk_mb = int(os.environ.get("DISK_CACHE_MB", "0"))
        _searcher = Searcher(
            ObjectStore(os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", "")),
            cache_bytes=int(os.environ.get("BUCKET_CACHE_MB", "512")) << 20,
            disk_dir=os.environ.get("DISK_CACHE_DIR", "/tmp/kdbuckets") if disk_mb > 0 else None,
            disk_bytes=disk_mb << 20,
        )
    return _searcher


@logger.inject_lambda_context(log_event=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    try:
        response = service.query(event, searcher())
    except KdBucketsError as exc:
        logger.warning("query rejected", extra={"error": type(exc).__name__, "reason": str(exc)})
        raise
    except Exception:
        logger.exception("query failed unexpectedly")
        raise InternalError(
            f"internal error; see the function logs for request {context.aws_request_id}"
        ) from None
    stats = response["stats"]
    if "results" in response:  # a search; fetch, list and count read without query vectors
        metrics.add_metric(name="QueryVectors", unit=MetricUnit.Count, value=len(response["results"]))
    metrics.add_metric(name="BucketsFetched", unit=MetricUnit.Count, value=stats["buckets_fetched"])
    metrics.add_metric(name="BytesFetched", unit=MetricUnit.Bytes, value=stats["bytes_fetched"])
    metrics.add_metric(name="CacheHits", unit=MetricUnit.Count, value=stats["cache_hits"])
    metrics.add_metric(name="QueryLatency", unit=MetricUnit.Milliseconds, value=stats["elapsed_ms"])
    logger.info(
        "query served", extra={"collection": response["collection"], "version": response["version"], **stats}
    )
    return response
