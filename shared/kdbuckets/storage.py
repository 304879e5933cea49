"""Object-store access: the only module that talks to boto3.

One lazily created S3 client is shared by every store in the process (clients are
thread-safe, sessions are not); its connection pool is as large as the fetch concurrency so
parallel bucket GETs never queue for a socket, and it uses botocore's standard retry mode with
explicit timeouts. Conditional writes (``If-None-Match: *`` for immutable objects, ``If-Match``
on HEAD) give the publish protocol its compare-and-swap.

Errors are typed so that nobody parses a message: :class:`NotFound` (a missing key),
:class:`BucketNotFound` (a missing bucket), :class:`AccessDenied` (403),
:class:`PreconditionFailed` (a lost conditional write), and plain :class:`StorageError` for
everything retries did not cure; each names its object (``bucket``, ``key``, ``uri``). The
index bucket itself missing is a :class:`ConfigurationError`: every request would fail.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)
from urllib3.exceptions import ProtocolError

from .errors import ConfigurationError, InvalidRequest, StorageError

#: Only botocore's own failures are translated; anything else is a bug and must reach the
#: handler's InternalError path rather than be reworded into a StorageError.
_BOTO_ERRORS = (ClientError, BotoCoreError)
#: Failures while a response body streams in; the GET is repeated.
_STREAM_ERRORS = (IncompleteReadError, ResponseStreamingError, ReadTimeoutError, ProtocolError)
BODY_ATTEMPTS = 4

DEFAULT_CONCURRENCY = 32

_client_lock = threading.Lock()
_clients: dict[int, Any] = {}

_S3_URI = re.compile(r"^s3://(?P<bucket>[a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(?P<key>[^\x00-\x1f]{1,1024})$")


@dataclass(frozen=True)
class ObjectInfo:
    """One listed object: key relative to the store's prefix, size, modification time, ETag."""

    key: str
    size: int
    last_modified: datetime
    etag: str


class NotFound(StorageError):
    """The object does not exist."""


class BucketNotFound(NotFound):
    """The bucket itself does not exist (S3's NoSuchBucket)."""


class AccessDenied(StorageError):
    """S3 refused the request (HTTP 403): no permission, or a missing key we may not list."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object exists / changed since we read it."""


def s3_client(concurrency: int = DEFAULT_CONCURRENCY) -> Any:
    """The process-wide S3 client for a given pool size, created on first use.

    Endpoint, region and credentials come from boto3's usual chain (including
    ``AWS_ENDPOINT_URL_S3``), so the same code runs against AWS and a local moto server.
    """
    with _client_lock:
        client = _clients.get(concurrency)
        if client is None:
            import boto3
            from botocore.config import Config

            config = Config(
                max_pool_connections=concurrency,
                retries={"mode": "standard", "max_attempts": 5},
                connect_timeout=5,
                read_timeout=60,
                tcp_keepalive=True,
            )
            client = boto3.session.Session().client("s3", config=config)
            _clients[concurrency] = client
        return client


def reset_clients() -> None:
    """Forget cached clients (tests switch endpoints between moto instances)."""
    with _client_lock:
        _clients.clear()


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: object, *, field: str) -> S3Uri:
        """Parse ``s3://bucket/key``; the error names ``field``."""
        if not isinstance(uri, str):
            raise InvalidRequest(field, f"must be an s3://bucket/key string, got {type(uri).__name__}")
        match = _S3_URI.match(uri)
        if not match:
            raise InvalidRequest(field, f"is not a valid s3://bucket/key URI: {uri[:200]!r}")
        return cls(match["bucket"], match["key"])


class ObjectStore:
    """Reads and writes objects under one bucket and key prefix.

    Parameters
    ----------
    bucket : the index bucket.
    prefix : optional key prefix ("indexes/"), prepended to every key.
    concurrency : parallel requests for ``get_many`` / ``put_many`` (and the pool size).
    client : an S3 client to use instead of the shared one.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        client: Any | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.concurrency = concurrency
        self._client = client
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client(self.concurrency)
        return self._client

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="kdbuckets-s3")
            return self._pool

    def submit(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the store's I/O threads (to overlap a GET with other work)."""
        return self._executor().submit(fn, *args)

    def _fail(self, exc: Exception, key: str) -> NoReturn:
        """Raise the error for a failed request on the index bucket (``key``: the full S3 key).

        The index bucket itself missing is a deployment mistake, not a missing object: were it
        a :class:`NotFound`, callers would report "collection does not exist" for every request.
        The S3 error stays in the chain (``__cause__``).
        """
        error = exc if isinstance(exc, StorageError) else _translate(exc, self.bucket, key)
        if error is not exc:
            error.__cause__ = exc
            error.__suppress_context__ = True
        if isinstance(error, BucketNotFound):
            raise ConfigurationError(
                f"index bucket {self.bucket!r} does not exist; check INDEX_BUCKET", bucket=self.bucket
            ) from error
        raise error

    # -- single objects -------------------------------------------------------------------
    def get(self, key: str) -> tuple[bytes, str]:
        """Body and ETag of ``prefix + key``; :class:`NotFound` if absent."""
        try:
            return self.get_from(self.bucket, self.prefix + key)
        except BucketNotFound as exc:
            self._fail(exc, self.prefix + key)

    def get_from(self, bucket: str, key: str) -> tuple[bytes, str]:
        """Body and ETag of any object (sources may live in another bucket).

        A missing bucket is a :class:`BucketNotFound` here: whose mistake it is depends on
        the caller (a build request naming a source, or the deployment naming the index).

        botocore retries a request that fails before its body arrives; a body cut off while
        streaming (connection reset, short read) is retried here, with backoff, as a new GET.
        """
        try:
            body, resp = self._get_object({"Bucket": bucket, "Key": key})
        except _BOTO_ERRORS as exc:
            raise _translate(exc, bucket, key) from exc
        return body, resp["ETag"]

    def _get_object(self, kwargs: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
        """GetObject and its body, re-requested with backoff when the body is cut off.

        botocore retries a request that fails before its body arrives; a body that breaks
        while streaming (connection reset, short read) is retried here as a new GET. botocore's
        own errors propagate for the caller to translate.
        """
        for attempt in range(1, BODY_ATTEMPTS + 1):
            try:
                resp = self.client.get_object(**kwargs)
                return resp["Body"].read(), resp
            except _STREAM_ERRORS as exc:
                if attempt == BODY_ATTEMPTS:
                    bucket, key = kwargs["Bucket"], kwargs["Key"]
                    raise StorageError(
                        f"s3://{bucket}/{key} was cut off {attempt} times while streaming "
                        f"({type(exc).__name__})",
                        bucket=bucket,
                        key=key,
                    ) from exc
                time.sleep(min(1.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0))
        raise AssertionError("unreachable")

    def get_range(
        self, bucket: str, key: str, start: int, end: int, *, if_match: str | None = None
    ) -> tuple[bytes, int, str]:
        """Bytes ``[start, end)`` of any object, its total size and its ETag (an S3 Range GET).

        For chunked readers of large sources: the errors are :meth:`get_from`'s, and a body cut
        off while streaming is re-requested the same way. ``if_match`` (the ETag of an earlier
        read) makes an object replaced meanwhile a :class:`PreconditionFailed`, so one file is
        never read half old, half new. A range starting at or past the end of the object (S3's
        416) returns no bytes: an empty object reads as ``(b"", 0, "")``.
        """
        if not 0 <= start < end:
            raise ValueError(f"bad byte range [{start}, {end})")
        kwargs: dict[str, Any] = {"Bucket": bucket, "Key": key, "Range": f"bytes={start}-{end - 1}"}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            body, resp = self._get_object(kwargs)
        except _BOTO_ERRORS as exc:
            if _status(exc) == 416:
                size = str(getattr(exc, "response", {}).get("Error", {}).get("ActualObjectSize", ""))
                if size.isdigit() and start >= int(size):
                    return b"", int(size), ""
            raise _translate(exc, bucket, key) from exc
        total = resp.get("ContentRange", "").rpartition("/")[2]
        return body, int(total) if total.isdigit() else start + len(body), resp["ETag"]

    def get_if_changed(self, key: str, etag: str) -> tuple[bytes, str] | None:
        """Conditional GET: None when the object still has ``etag`` (HTTP 304)."""
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key, IfNoneMatch=etag)
            return resp["Body"].read(), resp["ETag"]
        except _BOTO_ERRORS as exc:
            if _status(exc) == 304:
                return None
            self._fail(exc, self.prefix + key)

    def put(self, key: str, body: bytes, *, if_match: str | None = None, if_absent: bool = False) -> str:
        """Write ``body``; with ``if_absent`` or ``if_match`` the write is conditional.

        Raises :class:`PreconditionFailed` when the condition does not hold.
        """
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Key": self.prefix + key, "Body": body}
        if if_absent:
            kwargs["IfNoneMatch"] = "*"
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        try:
            return self.client.put_object(**kwargs)["ETag"]
        except _BOTO_ERRORS as exc:
            self._fail(exc, self.prefix + key)

    def put_immutable(self, key: str, body: bytes) -> bool:
        """Write a content-addressed object once; False if it already existed (same bytes).

        An existing object may belong only to versions that garbage collection is about to
        drop; copying it onto itself refreshes its LastModified, so the collector's grace
        period protects it until the manifest that reuses it is published.
        """
        try:
            self.put(key, body, if_absent=True)
            return True
        except PreconditionFailed:
            self.touch(key)
            return False

    def touch(self, key: str) -> None:
        """Refresh an object's LastModified by copying it onto itself (no bytes re-uploaded)."""
        full = self.prefix + key
        try:
            self.client.copy_object(
                Bucket=self.bucket,
                Key=full,
                CopySource={"Bucket": self.bucket, "Key": full},
                MetadataDirective="REPLACE",
            )
        except _BOTO_ERRORS as exc:
            self._fail(exc, full)

    # -- listing and deletion (versions and garbage collection) ---------------------------------
    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Every object under ``self.prefix + prefix``, keys relative to ``self.prefix``."""
        out: list[ObjectInfo] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    out.append(
                        ObjectInfo(
                            obj["Key"][len(self.prefix) :], int(obj["Size"]), obj["LastModified"], obj["ETag"]
                        )
                    )
        except _BOTO_ERRORS as exc:
            self._fail(exc, self.prefix + prefix)
        return out

    def list_keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key under ``prefix`` in any bucket (sources may live in another), in key order.

        Errors as :meth:`get_from`'s: a missing bucket is a :class:`BucketNotFound`, a refusal
        an :class:`AccessDenied`, each naming ``s3://bucket/prefix``.
        """
        keys: list[str] = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys.extend(obj["Key"] for obj in page.get("Contents", []))
        except _BOTO_ERRORS as exc:
            raise _translate(exc, bucket, prefix) from exc
        return sorted(keys)  # S3 lists in UTF-8 binary order already; other stores may not

    def list_prefixes(self, *, page_size: int = 1000) -> list[str]:
        """Names of the "folders" directly under the store's prefix (``Delimiter="/"``).

        Only prefixes are listed, never the objects inside them: one request per ``page_size``
        folders however large each one is.
        """
        names: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=self.prefix,
                Delimiter="/",
                PaginationConfig={"PageSize": page_size},
            )
            for page in pages:
                names.extend(c["Prefix"][len(self.prefix) : -1] for c in page.get("CommonPrefixes", []))
        except _BOTO_ERRORS as exc:
            self._fail(exc, self.prefix)
        return names

    def delete_if_match(self, key: str, etag: str) -> bool:
        """Delete ``key`` iff it still has ``etag`` (S3 conditional delete); False if it is gone.

        Raises :class:`PreconditionFailed` when the object changed since ``etag`` was read.
        """
        full = self.prefix + key
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full, IfMatch=etag)
        except _BOTO_ERRORS as exc:
            try:
                self._fail(exc, full)
            except NotFound:
                return False
        return True

    def delete_many(self, keys: Sequence[str]) -> int:
        """Delete objects (relative keys) in batches of 1,000; returns how many were deleted."""
        deleted = 0
        for start in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[start : start + 1000]]
            try:
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except _BOTO_ERRORS as exc:
                self._fail(exc, batch[0]["Key"])
            if resp.get("Errors"):
                first = resp["Errors"][0]
                code = str(first.get("Code", ""))
                kind = AccessDenied if code == "AccessDenied" else StorageError
                raise kind(
                    f"could not delete s3://{self.bucket}/{first['Key']}: {code}",
                    bucket=self.bucket,
                    key=first["Key"],
                )
            deleted += len(batch)
        return deleted

    # -- many objects in parallel ---------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> list[bytes]:
        """Fetch ``keys`` concurrently; results in the same order. Fails on the first error."""
        if len(keys) <= 1:
            return [self.get(k)[0] for k in keys]
        return [body for body, _ in self._executor().map(self.get, keys)]

    def put_many(self, items: Iterable[tuple[str, bytes]]) -> list[bool]:
        """Write immutable objects concurrently; per item, whether it was new.

        A key listed twice (several emptied buckets share one content address) is PUT once:
        concurrent conditional PUTs of one key race each other (S3 answers the loser 409 while
        the winner is in flight). Only the key's first item reports True if it was new.
        """
        items = list(items)
        first: dict[str, int] = {}
        for i, (key, _) in enumerate(items):
            first.setdefault(key, i)
        unique = [items[i] for i in first.values()]
        created = dict(
            zip(first, self._executor().map(lambda kv: self.put_immutable(*kv), unique), strict=True)
        )
        return [created[key] and first[key] == i for i, (key, _) in enumerate(items)]


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def _translate(exc: Exception, bucket: str, key: str) -> StorageError:
    """Map botocore errors onto the project's hierarchy, keeping the object's name."""
    status = _status(exc)
    code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", "")) if status else ""
    where = f"s3://{bucket}/{key}"
    named = {"bucket": bucket, "key": key}
    if code == "NoSuchBucket":
        return BucketNotFound(f"{where} does not exist: there is no bucket {bucket!r}", **named)
    if status == 404 or code in ("NoSuchKey", "NotFound"):
        return NotFound(f"{where} does not exist", **named)
    if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
        return PreconditionFailed(f"conditional write to {where} lost ({code or status})", **named)
    if status == 403 or code == "AccessDenied":
        return AccessDenied(f"access denied to {where} ({code or status})", **named)
    return StorageError(f"S3 request for {where} failed: {type(exc).__name__}: {code or exc}", **named)
