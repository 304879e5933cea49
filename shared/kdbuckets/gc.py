"""Garbage collection: delete the objects of a collection that no kept version references.

Why garbage collection is safe for readers and writers in flight
----------------------------------------------------------------
A query pinned to (or started on) version ``v`` read ``v``'s manifest while ``v`` was live
or kept, then fetches ``v``'s buckets. A version is kept while it is HEAD, among the
``keep_last`` newest, or *retired less than* ``grace_seconds`` *ago*; objects it references
are never deleted while it is kept. So a query that lasts less than ``grace_seconds`` always
finds its buckets. A version's retirement time is bounded from above by the latest of:

- the publish time of the next newer version (its manifest's ``created_at`` or upload
  time, whichever is later) — the moment something else became live after it;
- the publish time of every version built *on top of it* (``parent == v``): the builder's
  compare-and-swap guarantees that ``v`` stayed live until that child swapped in, which is
  what makes a version that was live again after a rollback retire at the right time;
- HEAD's last write, for versions newer than HEAD (rolled back from, or never published);
- the latest rollback marker (``{collection}/rollbacks/…``, written by :func:`rollback`
  before it swaps HEAD): any version may have been live until then.

A write in flight (a build or upsert that has uploaded objects but not yet swapped HEAD)
is protected by age: no object younger than ``grace_seconds`` is deleted, and a version
whose manifest is younger than ``grace_seconds`` counts as kept, so the buckets its
publish is about to make live — including old ones it reuses by content address — stay.
Just before deleting, the sweep lists the collection again: manifests that appeared since
the versions were read are read and kept, and a rollback (new marker, or HEAD now naming a
dropped version) aborts the sweep with :class:`Conflict` (run it again).

What the caller must guarantee: ``grace_seconds`` exceeds the longest query (plus a warm
searcher's ``head_ttl``) and the longest build or write — Lambda's 15-minute limit makes
900 s the natural default — plus a margin for clock skew between machines. One gap GC
cannot see: a writer that finds a bucket already present (content-addressed,
``If-None-Match``) and relies on it without re-uploading it, before its manifest exists;
if that bucket belonged only to dropped versions, a sweep in that window deletes it.
Closing it needs the writer's help (refresh such an object's LastModified, or check after
publishing); until then, avoid sweeping while a build may resurrect long-dropped content.

Only the object kinds GC understands (manifests and their parts, buckets, id shards, tail
segments, rollback markers) are ever deleted; HEAD and anything else under the collection are
left alone. A manifest that does not decode stops GC before anything is deleted: the buckets
it names are unknown.
Deletion removes dropped manifests before their buckets, so a sweep that dies midway
leaves orphan buckets (collected next time), never a manifest naming missing buckets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from . import catalog, layout
from .errors import Conflict, CorruptObject, InvalidRequest
from .manifest import Head
from .storage import ObjectStore
from .versions import _load_versions, _newest_first, _prefix, _Version

DEFAULT_KEEP_LAST = 5
DEFAULT_GRACE_SECONDS = 900.0

#: Kinds of object a sweep may delete (relative to "{collection}/"); nothing else is touched.
_SWEPT = ("manifests/", "parts/", "buckets/", "ids/", "tail/", "rollbacks/")


@dataclass(frozen=True)
class GcReport:
    """What a sweep kept and removed (or, with ``dry_run``, would remove)."""

    kept_versions: list[str]
    deleted_versions: list[str]
    deleted_objects: int
    deleted_bytes: int
    kept_objects: int
    dry_run: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_garbage(
    store: ObjectStore,
    collection: str,
    *,
    keep_last: int = DEFAULT_KEEP_LAST,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    now: datetime | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Delete the objects of ``collection`` that no kept version references.

    Kept: HEAD's version, the ``keep_last`` newest, every version retired less than
    ``grace_seconds`` before ``now`` or whose manifest is younger than that (see the module
    docstring for retirement and why this is safe). Deleted: unreferenced manifests,
    buckets, id shards and rollback markers older than ``grace_seconds``. HEAD is never
    deleted; a missing HEAD (:class:`CollectionNotFound`), a corrupt HEAD or manifest
    (:class:`CorruptObject`) or a rollback during the sweep (:class:`Conflict`) stops it
    before anything is deleted. ``dry_run`` reports the same figures and deletes nothing.
    """
    layout.check_collection(collection)
    now = _check_gc_args(keep_last, grace_seconds, now)
    cutoff = now - timedelta(seconds=grace_seconds)
    hkey = layout.head_key(collection)

    # Phase 1: HEAD, rollback markers and every manifest; decide which versions stay.
    head_state = catalog.require_head(store, collection)
    head, head_etag = head_state.head, head_state.etag
    head_info = [o for o in store.list_objects(hkey) if o.key == hkey]
    head_written = head_info[0].last_modified if head_info else now  # listed after the GET: not earlier
    markers = store.list_objects(_prefix(collection, "rollbacks/"))
    versions = _load_versions(store, collection, store.list_objects(_prefix(collection, "manifests/")))
    _check_head(collection, head, versions)
    last_rollback = max((o.last_modified for o in markers), default=None)
    kept = _kept_versions(versions, head, head_written, last_rollback, keep_last, cutoff, now)

    # Phase 2: list everything, account for what happened meanwhile, delete.
    objects = store.list_objects(_prefix(collection, ""))
    known = {v.key for v in versions.values()} | {o.key for o in markers}
    late = _load_versions(store, collection, [o for o in objects if o.key not in known])
    if any(o.key not in known and o.key.startswith(_prefix(collection, "rollbacks/")) for o in objects):
        raise Conflict(
            f"collection {collection!r} was rolled back during garbage collection; nothing deleted"
        )
    live = [versions[v] for v in kept] + list(late.values())
    referenced = {hkey}.union(*(v.refs | {v.key} for v in live))
    swept = tuple(_prefix(collection, kind) for kind in _SWEPT)
    doomed = [
        o for o in objects if o.key.startswith(swept) and o.key not in referenced and o.last_modified < cutoff
    ]
    # Last look at HEAD, right before deleting: a rollback to a version we drop aborts the sweep.
    now_head = catalog.read_head(store, collection)
    if now_head is None or (now_head.etag != head_etag and now_head.head.version not in kept | late.keys()):
        moved_to = now_head.head.version if now_head else "nothing"
        raise Conflict(
            f"HEAD of {collection!r} moved to {moved_to} during garbage collection; nothing deleted"
        )
    manifest_prefix = _prefix(collection, "manifests/")
    if not dry_run:  # manifests first: a sweep that dies midway never leaves one naming missing buckets
        store.delete_many([o.key for o in doomed if o.key.startswith(manifest_prefix)])
        store.delete_many([o.key for o in doomed if not o.key.startswith(manifest_prefix)])
    doomed_keys = {o.key for o in doomed}
    return GcReport(
        kept_versions=[v.version for v in _newest_first({v.version: v for v in live})],
        deleted_versions=[v.version for v in _newest_first(versions) if v.key in doomed_keys],
        deleted_objects=len(doomed),
        deleted_bytes=sum(o.size for o in doomed),
        kept_objects=len(objects) - len(doomed),
        dry_run=dry_run,
    )


def _kept_versions(
    versions: dict[str, _Version],
    head: Head,
    head_written: datetime,
    last_rollback: datetime | None,
    keep_last: int,
    cutoff: datetime,
    now: datetime,
) -> set[str]:
    """Versions that stay: HEAD, the newest ``keep_last``, and those retired after ``cutoff``."""
    order = sorted(versions, reverse=True)
    kept = {head.version, *order[:keep_last]}
    child_published: dict[str, datetime] = {}
    for v in versions.values():
        if v.parent is not None:
            child_published[v.parent] = max(child_published.get(v.parent, v.published_at), v.published_at)
    for i, name in enumerate(order):
        v = versions[name]
        if name in kept or v.uploaded_at >= cutoff:  # a young manifest may be a publish in flight
            kept.add(name)
            continue
        bounds = [t for t in (child_published.get(name), last_rollback) if t is not None]
        if i > 0:
            bounds.append(versions[order[i - 1]].published_at)
        if name > head.version:
            bounds.append(head_written)
        if max(bounds, default=now) >= cutoff:
            kept.add(name)
    return kept


def _check_gc_args(keep_last: object, grace_seconds: object, now: object) -> datetime:
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise InvalidRequest("keep_last", f"must be an integer >= 0, got {keep_last!r}")
    if (
        isinstance(grace_seconds, bool)
        or not isinstance(grace_seconds, int | float)
        or not math.isfinite(grace_seconds)
        or grace_seconds < 0
    ):
        raise InvalidRequest(
            "grace_seconds", f"must be a finite number of seconds >= 0, got {grace_seconds!r}"
        )
    if now is None:
        return datetime.now(UTC)
    if not isinstance(now, datetime) or now.utcoffset() is None:
        raise InvalidRequest("now", f"must be a timezone-aware datetime, got {now!r}")
    return now


def _check_head(collection: str, head: Head, versions: dict[str, _Version]) -> None:
    """GC refuses to run on a HEAD that does not name an intact manifest of its own.

    (:func:`catalog.read_head` already refused a HEAD pointing outside the collection.)
    """
    mkey = layout.manifest_key(collection, head.version)
    live = versions.get(head.version)
    if live is None:
        raise CorruptObject(mkey, "HEAD names a manifest that does not exist")
    if live.sha256 != head.sha256:
        raise CorruptObject(mkey, "SHA-256 differs from the one HEAD names")
