"""Versions of a collection: list them, describe one, roll back, collect garbage.

Every publish leaves an immutable manifest under ``{collection}/manifests/{version}``; HEAD
names the live one. Old versions cost storage until :func:`collect_garbage` removes the
objects that no kept version references.

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

Only the object kinds GC understands (manifests, buckets, id shards, rollback markers) are
ever deleted; HEAD and anything else under the collection are left alone. A manifest that
does not decode stops GC before anything is deleted: the buckets it names are unknown.
Deletion removes dropped manifests before their buckets, so a sweep that dies midway
leaves orphan buckets (collected next time), never a manifest naming missing buckets.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from . import layout
from .calibration import probes_for
from .codec import fingerprint
from .errors import CollectionNotFound, Conflict, CorruptObject, InvalidRequest
from .manifest import Head, Manifest, decode_head, decode_manifest, encode_head
from .storage import NotFound, ObjectInfo, ObjectStore, PreconditionFailed

DEFAULT_KEEP_LAST = 5
DEFAULT_GRACE_SECONDS = 900.0
RECALL_TARGETS = (0.9, 0.95, 0.99)
ROLLBACK_FORMAT = "kdbuckets/rollback"

#: Kinds of object a sweep may delete (relative to "{collection}/"); nothing else is touched.
_SWEPT = ("manifests/", "buckets/", "ids/", "rollbacks/")


@dataclass(frozen=True)
class VersionInfo:
    """One version of a collection as :func:`list_versions` reports it."""

    version: str
    created_at: str
    parent: str | None
    count: int
    buckets: int
    bytes: int
    is_head: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


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


@dataclass(frozen=True)
class _Version:
    """What listing and GC need from one manifest (the decoded manifest is not kept)."""

    version: str
    key: str
    uploaded_at: datetime
    created_at: str
    parent: str | None
    count: int
    n_buckets: int
    bytes: int
    sha256: str
    refs: frozenset[str]  # bucket and id-shard keys

    @property
    def published_at(self) -> datetime:
        """When it (at the latest) became live: after both its created_at and its upload."""
        return max(self.uploaded_at, _parse_time(self.created_at) or self.uploaded_at)


# -- listing and describing ------------------------------------------------------------------
def list_versions(store: ObjectStore, collection: str) -> list[VersionInfo]:
    """Every version of ``collection``, newest first (version ids start with a UTC time).

    Raises :class:`CollectionNotFound` when the collection has neither HEAD nor manifests,
    :class:`CorruptObject` (naming the key) for a manifest or HEAD that does not decode.
    """
    layout.check_collection(collection)
    head = _read_head(store, collection)
    versions = _load_versions(store, collection, store.list_objects(_prefix(collection, "manifests/")))
    if head is None and not versions:
        raise CollectionNotFound(collection)
    live = head[0].version if head else None
    return [
        VersionInfo(v.version, v.created_at, v.parent, v.count, v.n_buckets, v.bytes, v.version == live)
        for v in _newest_first(versions)
    ]


def describe_version(store: ObjectStore, collection: str, version: str) -> dict[str, Any]:
    """JSON-ready summary of one version: shape, parameters, buckets, calibration, liveness."""
    layout.check_collection(collection)
    _check_version(version, "version")
    head = _read_head(store, collection)
    key = layout.manifest_key(collection, version)
    try:
        body, _ = store.get(key)
    except NotFound:
        raise CollectionNotFound(collection, version) from None
    m = _decode(collection, version, key, body)
    rows = m.buckets.rows
    nb = m.n_buckets
    calibration = m.extra.get("calibration") if isinstance(m.extra.get("calibration"), dict) else None
    return {
        "collection": collection,
        "version": m.version,
        "parent": m.parent,
        "created_at": m.created_at,
        "is_head": head is not None and head[0].version == version,
        "manifest": key,
        "manifest_bytes": len(body),
        "count": m.count,
        "dim": m.dim,
        "metric": m.metric,
        "dtype": m.dtype,
        "id_kind": m.id_kind,
        "params": m.params,
        "buckets": nb,
        "bucket_rows": (
            {"min": int(rows.min()), "median": float(np.median(rows)), "max": int(rows.max())} if nb else None
        ),
        "stored_rows": int(rows.sum()),  # > count when vectors are replicated into 2 buckets
        "bytes": int(m.buckets.sizes.sum()),
        "label_names": len(m.label_names or []),
        "id_shards": len(m.id_shards),
        "calibration": None
        if calibration is None
        else {
            "k": calibration.get("k"),
            "sample": calibration.get("sample"),
            "probes_for_recall": {str(t): probes_for(calibration, t, nb) for t in RECALL_TARGETS},
        },
    }


# -- rollback ----------------------------------------------------------------------------------
def rollback(
    store: ObjectStore, collection: str, version: str, *, expected_head_version: str | None = None
) -> str:
    """Make HEAD name an existing ``version`` again, by compare-and-swap on HEAD's ETag.

    ``expected_head_version`` (optional) must be what HEAD names now, else :class:`Conflict`
    and nothing is written. Any existing version may be the target (an older one, or a newer
    one to undo an earlier rollback); without ``expected_head_version`` this also repairs a
    HEAD that is missing or does not decode. The target must be complete: a version whose
    buckets were garbage-collected raises :class:`CorruptObject` and HEAD is left alone.
    A rollback marker is written before the swap so that GC keeps every version that may
    still be serving queries. Returns the version now live.
    """
    layout.check_collection(collection)
    _check_version(version, "version")
    if expected_head_version is not None:
        _check_version(expected_head_version, "expected_head_version")
    hkey = layout.head_key(collection)
    try:
        head_body, etag = store.get(hkey)
    except NotFound:
        head_body, etag = None, None
    current = _decode_head_leniently(head_body, hkey, strict=expected_head_version is not None)
    if expected_head_version is not None and (current is None or current.version != expected_head_version):
        raise Conflict(
            f"HEAD of {collection!r} names {current.version if current else None!r}, "
            f"not {expected_head_version!r}; nothing was rolled back"
        )
    mkey = layout.manifest_key(collection, version)
    try:
        body, _ = store.get(mkey)
    except NotFound:
        raise CollectionNotFound(collection, version) from None
    target = _decode(collection, version, mkey, body)
    sha = fingerprint(body)
    if current is not None and current.version == version and current.sha256 == sha:
        return version
    _require_complete(store, target, "not rolled back")

    marker = {
        "format": ROLLBACK_FORMAT,
        "from": current.version if current else None,
        "to": version,
        "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
    }
    store.put(_rollback_key(collection), json.dumps(marker, sort_keys=True).encode(), if_absent=True)
    try:
        if etag is None:
            new_etag = store.put(hkey, encode_head(version, mkey, sha), if_absent=True)
        else:
            new_etag = store.put(hkey, encode_head(version, mkey, sha), if_match=etag)
    except PreconditionFailed:
        raise Conflict(
            f"HEAD of {collection!r} changed while rolling back to {version}; nothing was rolled back"
        ) from None
    try:  # a sweep that raced the swap may have removed the target's objects: undo, loudly
        _require_complete(store, target, "rolled back, then restored the previous HEAD")
    except CorruptObject:
        if head_body is not None:
            with contextlib.suppress(PreconditionFailed):  # someone published since: theirs stands
                store.put(hkey, head_body, if_match=new_etag)
        raise
    return version


# -- garbage collection ------------------------------------------------------------------------
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
    head_state = _read_head(store, collection)
    if head_state is None:
        raise CollectionNotFound(collection)
    head, head_etag = head_state
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
    now_head = _read_head(store, collection)
    if now_head is None or (now_head[1] != head_etag and now_head[0].version not in kept | late.keys()):
        moved_to = now_head[0].version if now_head else "nothing"
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


# -- helpers -----------------------------------------------------------------------------------
def _prefix(collection: str, kind: str) -> str:
    return f"{layout.check_collection(collection)}/{kind}"


def _rollback_key(collection: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return _prefix(collection, "rollbacks/") + f"{stamp}-{secrets.token_hex(4)}"


def _check_version(value: object, field: str) -> str:
    """The manifest's rule for version ids: 1-64 ASCII letters, digits, '.', '_' or '-'."""
    if (
        not isinstance(value, str)
        or not value
        or len(value) > 64
        or not all(c.isascii() and (c.isalnum() or c in "._-") for c in value)
    ):
        raise InvalidRequest(field, f"is not a valid version id: {str(value)[:80]!r}")
    return value


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


def _read_head(store: ObjectStore, collection: str) -> tuple[Head, str] | None:
    """Decoded HEAD and its ETag; None when the collection has no HEAD."""
    key = layout.head_key(collection)
    try:
        body, etag = store.get(key)
    except NotFound:
        return None
    return decode_head(body, key=key), etag


def _decode_head_leniently(body: bytes | None, key: str, *, strict: bool) -> Head | None:
    if body is None:
        return None
    try:
        return decode_head(body, key=key)
    except CorruptObject:
        if strict:
            raise
        return None  # an explicit rollback may overwrite a HEAD nobody can read


def _check_head(collection: str, head: Head, versions: dict[str, _Version]) -> None:
    """GC refuses to run on a HEAD that does not name an intact manifest of its own."""
    mkey = layout.manifest_key(collection, head.version)
    if head.manifest_key != mkey:
        raise CorruptObject(
            layout.head_key(collection), f"HEAD names manifest {head.manifest_key!r}, not {mkey!r}"
        )
    live = versions.get(head.version)
    if live is None:
        raise CorruptObject(mkey, "HEAD names a manifest that does not exist")
    if live.sha256 != head.sha256:
        raise CorruptObject(mkey, "SHA-256 differs from the one HEAD names")


def _decode(collection: str, version: str, key: str, body: bytes) -> Manifest:
    m = decode_manifest(body, key=key)
    if m.version != version or m.collection != collection:
        raise CorruptObject(key, "manifest names a different collection or version")
    return m


def _load_versions(store: ObjectStore, collection: str, listed: Sequence[ObjectInfo]) -> dict[str, _Version]:
    """Read and summarise the listed manifests, ``store.concurrency`` at a time.

    Keys that are not ``manifests/{version}`` are skipped; a manifest deleted since it was
    listed (by a concurrent sweep) is skipped too.
    """
    prefix = _prefix(collection, "manifests/")
    named = [(o, o.key[len(prefix) :]) for o in listed if o.key.startswith(prefix)]
    named = [(o, v) for o, v in named if _is_version(v)]
    out: dict[str, _Version] = {}
    step = max(1, store.concurrency)
    for start in range(0, len(named), step):
        chunk = named[start : start + step]
        for (info, version), body in zip(chunk, _get_present(store, [o.key for o, _ in chunk]), strict=True):
            if body is None:
                continue
            m = _decode(collection, version, info.key, body)
            refs = {layout.bucket_key(collection, fp) for fp in m.buckets.fingerprints}
            refs.update(layout.id_shard_key(collection, fp) for fp in m.id_shards)
            out[version] = _Version(
                version=version,
                key=info.key,
                uploaded_at=info.last_modified,
                created_at=m.created_at,
                parent=m.parent,
                count=m.count,
                n_buckets=m.n_buckets,
                bytes=int(m.buckets.sizes.sum()),
                sha256=fingerprint(body),
                refs=frozenset(refs),
            )
    return out


def _get_present(store: ObjectStore, keys: list[str]) -> list[bytes | None]:
    """Bodies of ``keys`` in parallel; None for objects that no longer exist."""
    try:
        return list(store.get_many(keys))
    except NotFound:
        out: list[bytes | None] = []
        for key in keys:
            try:
                out.append(store.get(key)[0])
            except NotFound:
                out.append(None)
        return out


def _require_complete(store: ObjectStore, m: Manifest, outcome: str) -> None:
    """Raise :class:`CorruptObject` naming the first missing object (manifest, bucket, id shard) of ``m``."""
    mkey = layout.manifest_key(m.collection, m.version)
    prefixes = [mkey, _prefix(m.collection, "buckets/")] + (
        [_prefix(m.collection, "ids/")] if m.id_shards else []
    )
    present = {o.key for p in prefixes for o in store.list_objects(p)}
    needed = [mkey] + [layout.bucket_key(m.collection, fp) for fp in m.buckets.fingerprints]
    needed += [layout.id_shard_key(m.collection, fp) for fp in m.id_shards]
    missing = [k for k in needed if k not in present]
    if missing:
        raise CorruptObject(
            missing[0],
            f"version {m.version} is incomplete ({len(missing)} objects missing, garbage-collected?); "
            f"{outcome}",
        )


def _is_version(name: str) -> bool:
    try:
        _check_version(name, "version")
    except InvalidRequest:
        return False
    return True


def _newest_first(versions: dict[str, _Version]) -> list[_Version]:
    return [versions[name] for name in sorted(versions, reverse=True)]


def _parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
