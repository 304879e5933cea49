"""Collections as a whole: list the collections under a store's prefix, and drop one.

A collection exists exactly when ``{collection}/HEAD`` does (see :mod:`kdbuckets.catalog`), so
listing asks S3 for the "folders" directly under the prefix (``ListObjectsV2`` with
``Delimiter="/"``, one request per 1,000 names) and keeps those with a HEAD.

Dropping is the tenant-removal operation, ordered so that a drop that dies at any point leaves
a collection that is *not found*, never a half-deleted one that still answers:

1. ``HEAD`` must name ``expected_version`` (else :class:`Conflict`, nothing written);
2. a drop marker ``{collection}/DROPPING`` records the version being dropped;
3. ``HEAD`` is deleted by compare-and-swap (``DeleteObject`` with ``If-Match`` on the ETag read
   in step 1; S3 general purpose buckets honour it since September 2025, and moto 5.2.5 does,
   so no tombstone HEAD is needed and no reader ever has to understand one; a HEAD already
   gone answers 404, which is how a retried delete whose first attempt landed is recognised).
   From here on queries and writers get :class:`CollectionNotFound`; a writer that read the
   old HEAD fails its own compare-and-swap;
4. everything under ``{collection}/`` last modified no later than the marker is deleted in
   batches of 1,000 — manifests first, so a query pinned to a version also stops finding it —
   and the marker last.

Running the same drop again (same ``expected_version``) after it died between 3 and 4 finds no
HEAD but its marker, and finishes the deletion: drops are idempotent, as Lambda's retries need.
The marker's ``LastModified`` (S3's clock, not ours) bounds what is deleted, so a collection
rebuilt under the same name while an old drop finishes keeps its new objects, including old
buckets it re-used (re-using refreshes ``LastModified``). Objects uploaded by a writer that was
still running on the old version when HEAD went (it can no longer publish) are left behind;
a later drop or ``gc`` of a collection of that name removes them.
"""

from __future__ import annotations

import json
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import Any

from . import catalog, layout
from .errors import CollectionNotFound, Conflict, CorruptObject, InvalidRequest
from .storage import NotFound, ObjectInfo, ObjectStore, PreconditionFailed

MARKER_FORMAT = "kdbuckets-drop/1"


@dataclass(frozen=True)
class CollectionInfo:
    """One listed collection: its live version and vector count (None if HEAD is corrupt)."""

    collection: str
    version: str | None
    count: int | None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.error is None:
            del out["error"]
        return out


@dataclass(frozen=True)
class DropReport:
    """What a drop removed; ``resumed`` when it finished an earlier drop that had died."""

    collection: str
    version: str
    deleted_objects: int
    deleted_bytes: int
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def marker_key(collection: str) -> str:
    """Where a drop in progress records the version it drops."""
    return layout.drop_marker_key(collection)


# -- listing -----------------------------------------------------------------------------------
def collection_names(store: ObjectStore, *, page_size: int = 1000) -> list[str]:
    """Names of the "folders" directly under the store's prefix that are valid collection names.

    Only prefixes are listed (``Delimiter="/"``), never the objects inside them, so the cost is
    one request per ``page_size`` (S3's maximum: 1,000) collections however large they are.
    """
    return sorted(name for name in store.list_prefixes(page_size=page_size) if _valid(name))


def _valid(name: str) -> bool:
    try:
        layout.check_collection(name)
    except InvalidRequest:
        return False
    return True


def list_collections(store: ObjectStore) -> list[CollectionInfo]:
    """Every collection under the store's prefix that has a HEAD, sorted by name.

    HEAD and its manifest are read for each (in parallel on the store's I/O threads) to report
    the live version and count. A folder without HEAD (a first build not yet published, a drop
    that died after removing HEAD) is not a collection and is left out; a corrupt HEAD or
    manifest is listed with its ``error`` rather than hiding every other collection.
    """
    names = collection_names(store)
    futures: list[Future[catalog.Snapshot]] = [store.submit(catalog.read_live, store, n) for n in names]
    out: list[CollectionInfo] = []
    for name, future in zip(names, futures, strict=True):
        try:
            snap = future.result()
        except CollectionNotFound:
            continue
        except CorruptObject as exc:
            out.append(CollectionInfo(name, None, None, error=str(exc)))
            continue
        out.append(CollectionInfo(name, snap.head.version, snap.manifest.count))
    return out


# -- dropping ----------------------------------------------------------------------------------
def drop_collection(store: ObjectStore, collection: str, expected_version: str) -> DropReport:
    """Remove ``collection`` entirely, iff its live version is ``expected_version``.

    ``expected_version`` is required (not optional as for a rollback) because a drop cannot be
    undone: it proves the caller looked at what they delete. Raises :class:`Conflict` naming the
    live version when it differs (nothing is written or deleted), :class:`CollectionNotFound`
    when there is neither a collection nor an unfinished drop of that version. See the module
    docstring for the order of operations and why a drop that dies midway is safe.
    """
    layout.check_collection(collection)
    layout.check_version(expected_version, "expected_version")
    state = catalog.read_head(store, collection)
    if state is None:
        return _resume(store, collection, expected_version)
    live = state.head.version
    if live != expected_version:
        raise Conflict(
            f"collection {collection!r} is at version {live}, not expected_version "
            f"{expected_version}; nothing deleted"
        )
    mkey = marker_key(collection)
    store.put(mkey, json.dumps({"format": MARKER_FORMAT, "version": expected_version}).encode())
    try:
        catalog.delete_head(store, collection, state.etag)  # False: already gone, also dropped
    except PreconditionFailed:
        store.delete_many([mkey])
        now = _live_version(store, collection)
        raise Conflict(
            f"collection {collection!r} moved from version {expected_version} to {now} while "
            "dropping; nothing deleted"
        ) from None
    return _purge(store, collection, expected_version, resumed=False)


def _resume(store: ObjectStore, collection: str, expected_version: str) -> DropReport:
    """No HEAD: finish a drop of ``expected_version`` that died, or say there is nothing."""
    mkey = marker_key(collection)
    try:
        body, _ = store.get(mkey)
    except NotFound:
        raise CollectionNotFound(collection) from None
    try:
        doc = json.loads(body)
        dropping = doc["version"] if doc.get("format") == MARKER_FORMAT else None
    except (ValueError, TypeError, KeyError, AttributeError):
        dropping = None
    if not isinstance(dropping, str):
        raise CorruptObject(store.prefix + mkey, "not a kdbuckets drop marker")
    if dropping != expected_version:
        raise Conflict(
            f"collection {collection!r} does not exist; an unfinished drop of version {dropping} "
            f"remains (not {expected_version}): drop with expected_version {dropping} to finish it"
        )
    return _purge(store, collection, expected_version, resumed=True)


def _purge(store: ObjectStore, collection: str, version: str, *, resumed: bool) -> DropReport:
    """Delete what the collection held when its drop marker was written; the marker last."""
    mkey = marker_key(collection)
    objects = store.list_objects(f"{collection}/")  # the slash: "docs" never touches "docs2"
    marker = next((o for o in objects if o.key == mkey), None)
    if marker is None:  # a concurrent drop of the same version finished first
        return DropReport(collection, version, 0, 0, resumed)
    doomed = [o for o in objects if o.key != mkey and o.last_modified <= marker.last_modified]
    manifests = f"{collection}/manifests/"
    _delete(store, [o for o in doomed if o.key.startswith(manifests)])
    _delete(store, [o for o in doomed if not o.key.startswith(manifests)])
    _delete(store, [marker])
    return DropReport(collection, version, len(doomed), sum(o.size for o in doomed), resumed)


def _delete(store: ObjectStore, objects: list[ObjectInfo]) -> None:
    """DeleteObjects in batches of 1,000 (the store batches; a missing key is no error)."""
    if objects:
        store.delete_many([o.key for o in objects])


def _live_version(store: ObjectStore, collection: str) -> str:
    try:
        state = catalog.read_head(store, collection)
    except CorruptObject:
        return "a corrupt HEAD"
    return "nothing" if state is None else state.head.version
