"""An S3 latency model injected at the botocore level, for serverless latency estimates.

Each request waits a first-byte latency before it is sent, and each GetObject response then
waits ``bytes / bandwidth`` (bandwidth per connection, so parallel GETs overlap as they do on
real S3). The requests still go to a real (moto) S3, so the query code under test is exactly
the production code. Every request's [start, end) interval is recorded, which gives the
number of sequential *rounds* of GETs a query needed.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LatencyModel:
    """``first_byte_ms`` per request; ``bandwidth_mb_s`` per connection (MB = 1e6 bytes)."""

    first_byte_ms: float = 20.0
    bandwidth_mb_s: float = 90.0
    intervals: list[tuple[float, float, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)

    def install(self, client: Any) -> None:
        """Hook the model into a botocore client's event system."""
        client.meta.events.register("before-send.s3", self._before_send)
        client.meta.events.register("after-call.s3.GetObject", self._after_get)

    def uninstall(self, client: Any) -> None:
        client.meta.events.unregister("before-send.s3", self._before_send)
        client.meta.events.unregister("after-call.s3.GetObject", self._after_get)

    def reset(self) -> None:
        with self._lock:
            self.intervals.clear()

    def rounds(self) -> int:
        """Sequential rounds: groups of requests whose intervals overlap (a sweep line)."""
        spans = sorted(self.intervals)
        count, end = 0, float("-inf")
        for start, stop, _ in spans:
            if start >= end:
                count += 1
                end = stop
            else:
                end = max(end, stop)
        return count

    def _before_send(self, request: Any, **_: Any) -> None:
        self._local.start = time.perf_counter()
        self._local.url = request.url
        time.sleep(self.first_byte_ms / 1000.0)
        if request.method != "GET":
            self._record()
        return None  # let the request go to the real endpoint

    def _after_get(self, http_response: Any, parsed: Any, **_: Any) -> None:
        size = int(parsed.get("ContentLength") or 0)
        time.sleep(size / (self.bandwidth_mb_s * 1e6))
        self._record()

    def _record(self) -> None:
        start = getattr(self._local, "start", None)
        if start is not None:
            with self._lock:
                self.intervals.append((start, time.perf_counter(), self._local.url))
            self._local.start = None
