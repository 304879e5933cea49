"""kdbuckets: a serverless vector index of average-split k-d tree buckets in object storage.

Build with :func:`build_index` (or :func:`kdbuckets.service.build` from an event), query with
:class:`Searcher`. Nothing in this package knows about Lambda or reads the environment.

The public names are loaded on first use (PEP 562), so ``import kdbuckets.searcher`` in the
query function does not pay for the builder, the writer or garbage collection at cold start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    CollectionNotFound,
    ConfigurationError,
    Conflict,
    CorruptObject,
    InvalidRequest,
    KdBucketsError,
    SourceError,
    StorageError,
)

if TYPE_CHECKING:
    from .admin import CollectionInfo, DropReport, drop_collection, list_collections
    from .builder import BuildParams, BuildResult, build_index
    from .collection import Collection, make_collection
    from .gc import GcReport, collect_garbage
    from .searcher import Classification, QueryStats, Searcher, SearchResult
    from .storage import ObjectStore
    from .versions import VersionInfo, describe_version, list_versions, rollback

_LAZY = {
    "CollectionInfo": "admin",
    "DropReport": "admin",
    "drop_collection": "admin",
    "list_collections": "admin",
    "BuildParams": "params",
    "BuildResult": "builder",
    "build_index": "builder",
    "Collection": "collection",
    "make_collection": "collection",
    "GcReport": "gc",
    "collect_garbage": "gc",
    "Classification": "searcher",
    "QueryStats": "searcher",
    "Searcher": "searcher",
    "SearchResult": "searcher",
    "ObjectStore": "storage",
    "VersionInfo": "versions",
    "describe_version": "versions",
    "list_versions": "versions",
    "rollback": "versions",
}

__all__ = [
    "BuildParams",
    "BuildResult",
    "Classification",
    "Collection",
    "CollectionInfo",
    "CollectionNotFound",
    "ConfigurationError",
    "Conflict",
    "CorruptObject",
    "DropReport",
    "GcReport",
    "InvalidRequest",
    "KdBucketsError",
    "ObjectStore",
    "QueryStats",
    "SearchResult",
    "Searcher",
    "SourceError",
    "StorageError",
    "VersionInfo",
    "build_index",
    "collect_garbage",
    "describe_version",
    "drop_collection",
    "list_collections",
    "list_versions",
    "make_collection",
    "rollback",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kdbuckets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
