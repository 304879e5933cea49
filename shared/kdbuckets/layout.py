"""Where a collection's objects live, and which collection names are allowed.

{prefix}{collection}/HEAD                  pointer to the live manifest (mutable)
{prefix}{collection}/manifests/{version}   one manifest per version (immutable)
{prefix}{collection}/buckets/{sha256}      content-addressed buckets (immutable)
{prefix}{collection}/parts/{sha256}        manifest parts and trees (immutable; manifest.py)
{prefix}{collection}/ids/{sha256}          id-directory shards (immutable; directory.py)
{prefix}{collection}/tail/{sha256}         unmerged tail segments (immutable; tail.py)
"""

from __future__ import annotations

import re

from .errors import InvalidRequest

_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
#: Version ids: 1-64 ASCII letters, digits, '.', '_' or '-' (``new_version`` makes sortable ones).
VERSION_PATTERN = r"^[0-9A-Za-z._-]{1,64}$"
_VERSION = re.compile(VERSION_PATTERN, re.ASCII)


def check_collection(name: object, field: str = "collection") -> str:
    """Return ``name`` if it is a safe collection name; names like ``../x`` or ``a/b`` fail."""
    if not isinstance(name, str):
        raise InvalidRequest(field, f"must be a string, got {type(name).__name__}")
    if not _COLLECTION.fullmatch(name) or ".." in name:
        raise InvalidRequest(
            field,
            f"must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a "
            f"letter or digit (got {name[:80]!r})",
        )
    return name


def check_version(value: object, field: str = "version") -> str:
    """Return ``value`` if it is a well-formed version id (the one rule, used everywhere)."""
    if not isinstance(value, str) or not _VERSION.fullmatch(value):
        raise InvalidRequest(field, f"is not a valid version id: {str(value)[:80]!r}")
    return value


def is_version(value: object) -> bool:
    return isinstance(value, str) and _VERSION.fullmatch(value) is not None


def head_key(collection: str) -> str:
    return f"{check_collection(collection)}/HEAD"


def manifest_key(collection: str, version: str) -> str:
    return f"{check_collection(collection)}/manifests/{version}"


def bucket_key(collection: str, fingerprint: str) -> str:
    return f"{check_collection(collection)}/buckets/{fingerprint}"


def part_key(collection: str, fingerprint: str) -> str:
    return f"{check_collection(collection)}/parts/{fingerprint}"


def id_shard_key(collection: str, fingerprint: str) -> str:
    return f"{check_collection(collection)}/ids/{fingerprint}"


def segment_key(collection: str, fingerprint: str) -> str:
    return f"{check_collection(collection)}/tail/{fingerprint}"


def drop_marker_key(collection: str) -> str:
    """Where a drop in progress records the version it drops (see :mod:`kdbuckets.admin`)."""
    return f"{check_collection(collection)}/DROPPING"


def rollback_key(collection: str, stamp: str) -> str:
    return f"{check_collection(collection)}/rollbacks/{stamp}"
