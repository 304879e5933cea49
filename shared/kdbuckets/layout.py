"""Where a collection's objects live, and which collection names are allowed.

{prefix}{collection}/HEAD                  pointer to the live manifest (mutable)
{prefix}{collection}/manifests/{version}   one manifest per version (immutable)
{prefix}{collection}/buckets/{sha256}      content-addressed buckets (immutable)
"""

from __future__ import annotations

import re

from .errors import InvalidRequest

_COLLECTION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


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


def head_key(collection: str) -> str:
    return f"{check_collection(collection)}/HEAD"


def manifest_key(collection: str, version: str) -> str:
    return f"{check_collection(collection)}/manifests/{version}"


def bucket_key(collection: str, fingerprint: str) -> str:
    return f"{check_collection(collection)}/buckets/{fingerprint}"


def id_shard_key(collection: str, fingerprint: str) -> str:
    return f"{check_collection(collection)}/ids/{fingerprint}"


def rollback_key(collection: str, stamp: str) -> str:
    return f"{check_collection(collection)}/rollbacks/{stamp}"
