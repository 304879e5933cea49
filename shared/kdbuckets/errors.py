"""One exception hierarchy for everything kdbuckets raises on purpose.

Each class also subclasses the closest builtin (``ValueError``, ``LookupError``, ...) so callers
that do not know kdbuckets can still catch it sensibly, as msgpack's exceptions do.
"""

from __future__ import annotations


class KdBucketsError(Exception):
    """Base class of every error kdbuckets raises deliberately."""


class InvalidRequest(KdBucketsError, ValueError):
    """The caller sent something unusable; the message names the field and the problem.

    Built from ``field`` and ``problem`` so that no call site can forget to say which field
    was wrong: ``InvalidRequest("k", "must be between 1 and 1000, got 0")`` reads
    ``"k must be between 1 and 1000, got 0"``.
    """

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        self.problem = problem
        super().__init__(f"{field} {problem}")


class CollectionNotFound(KdBucketsError, LookupError):
    """The collection (or the pinned version of it) has never been published."""

    def __init__(self, collection: str, version: str | None = None) -> None:
        self.collection = collection
        self.version = version
        if version is None:
            message = f"collection {collection!r} does not exist (no published version)"
        else:
            message = f"collection {collection!r} has no version {version!r}"
        super().__init__(message)


class CorruptObject(KdBucketsError, ValueError):
    """A stored object failed verification; we refuse to answer from it."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        self.problem = problem
        super().__init__(f"object {key!r} is corrupt: {problem}")


class Conflict(KdBucketsError):
    """Another writer published first; nothing of ours became visible."""


class StorageError(KdBucketsError, OSError):
    """The object store failed in a way retries did not cure.

    ``bucket`` and ``key`` name the object (full S3 key, prefix included) when there is one,
    so callers report it without parsing the message.
    """

    def __init__(self, message: str, *, bucket: str | None = None, key: str | None = None) -> None:
        self.bucket = bucket
        self.key = key
        super().__init__(message)

    @property
    def uri(self) -> str | None:
        """``s3://bucket/key`` of the object concerned, if any."""
        return None if self.bucket is None or self.key is None else f"s3://{self.bucket}/{self.key}"


class ConfigurationError(KdBucketsError):
    """The deployment is misconfigured (the index bucket does not exist): no request can succeed.

    Kept apart from :class:`CollectionNotFound` so that a wrong ``INDEX_BUCKET`` does not read
    as "this collection was never built", and from :class:`StorageError` so nobody retries it.
    """

    def __init__(self, message: str, *, bucket: str | None = None) -> None:
        self.bucket = bucket
        super().__init__(message)


class SourceError(InvalidRequest):
    """A source object named by a build request is missing, unreadable or malformed."""


class InternalError(KdBucketsError):
    """Something unexpected failed; the details are in the logs, not in the response."""
