"""kdbuckets: a serverless vector index of average-split k-d tree buckets in object storage.

Build with :func:`build_index` (or :func:`kdbuckets.service.build` from an event), query with
:class:`Searcher`. Nothing in this package knows about Lambda or reads the environment.
"""

from .builder import BuildParams, BuildResult, build_index
from .collection import Collection, make_collection
from .errors import (
    CollectionNotFound,
    Conflict,
    CorruptObject,
    InvalidRequest,
    KdBucketsError,
    SourceError,
    StorageError,
)
from .searcher import Classification, QueryStats, Searcher, SearchResult
from .storage import ObjectStore
from .gc import GcReport, collect_garbage
from .versions import VersionInfo, describe_version, list_versions, rollback

__all__ = [
    "BuildParams",
    "BuildResult",
    "Classification",
    "Collection",
    "CollectionNotFound",
    "Conflict",
    "CorruptObject",
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
    "list_versions",
    "make_collection",
    "rollback",
]

__version__ = "0.1.0"
