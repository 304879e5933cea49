"""Versions of a collection: list them, describe one, roll back, collect garbage.

Every publish leaves an immutable manifest under ``{collection}/manifests/{version}``; HEAD
names the live one. Old versions cost storage until :func:`kdbuckets.gc.collect_garbage`
removes the objects that no kept version references. HEAD and manifests are read and verified
through :mod:`kdbuckets.catalog`, like everywhere else.

Garbage collection (which versions stay, and why that is safe) is in :mod:`kdbuckets.gc`.
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from . import catalog, layout, tail
from .calibration import probes_for
from .codec import fingerprint
from .errors import CollectionNotFound, Conflict, CorruptObject
from .manifest import Head, Manifest, decode_head, encode_head
from .recalibrate import MERGED_SINCE_CALIBRATION
from .storage import NotFound, ObjectInfo, ObjectStore, PreconditionFailed

RECALL_TARGETS = (0.9, 0.95, 0.99)
ROLLBACK_FORMAT = "kdbuckets/rollback"


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
    head = catalog.read_head(store, collection)
    versions = _load_versions(store, collection, store.list_objects(_prefix(collection, "manifests/")))
    if head is None and not versions:
        raise CollectionNotFound(collection)
    live = head.head.version if head else None
    return [
        VersionInfo(v.version, v.created_at, v.parent, v.count, v.n_buckets, v.bytes, v.version == live)
        for v in _newest_first(versions)
    ]


def describe_version(store: ObjectStore, collection: str, version: str) -> dict[str, Any]:
    """JSON-ready summary of one version: shape, parameters, buckets, calibration, liveness."""
    layout.check_collection(collection)
    layout.check_version(version, "version")
    head = catalog.read_head(store, collection)
    key = layout.manifest_key(collection, version)
    m, manifest_bytes = catalog.load_manifest(store, collection, version)
    rows = m.buckets.rows
    nb = m.n_buckets
    calibration = m.extra.get("calibration") if isinstance(m.extra.get("calibration"), dict) else None
    return {
        "collection": collection,
        "version": m.version,
        "parent": m.parent,
        "created_at": m.created_at,
        "is_head": head is not None and head.head.version == version,
        "manifest": key,
        "manifest_bytes": manifest_bytes,
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
        # the unmerged tail of writes: what every query scans, and when a write merges it
        "tail": {
            "segments": len(m.tail),
            "rows": sum(t.rows for t in m.tail),
            "deletes": sum(t.deletes for t in m.tail),
            "bytes": sum(t.size for t in m.tail),
            "limit": tail.tail_limit(m.params, int(m.buckets.sizes.sum()), m.dim),
        },
        "calibration": None
        if calibration is None
        else {
            "k": calibration.get("k"),
            "sample": calibration.get("sample"),
            "probes_for_recall": {str(t): probes_for(calibration, t, nb) for t in RECALL_TARGETS},
            # set by a recalibration: the version it measured, and what the older curve asked for
            "measured_at": calibration.get("measured_at"),
            "drift": calibration.get("drift"),
            # rows merged into the buckets since (a merge re-measures past 10% of the count)
            "merged_since": int(m.extra.get(MERGED_SINCE_CALIBRATION, 0)),
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
    layout.check_version(version, "version")
    if expected_head_version is not None:
        layout.check_version(expected_head_version, "expected_head_version")
    if _exists(store, layout.drop_marker_key(collection)):
        raise Conflict(
            f"collection {collection!r} is being dropped; send the drop again to finish it "
            "(a rollback cannot bring back a dropped collection); nothing was rolled back"
        )
    hkey = layout.head_key(collection)
    try:
        head_body, etag = store.get(hkey)
    except NotFound:
        head_body, etag = None, None
    current = _decode_head_leniently(collection, head_body, strict=expected_head_version is not None)
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
    target, _ = catalog.expand(store, catalog.verify_manifest(collection, version, mkey, body))
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
        new_etag = catalog.swap_head(store, collection, encode_head(version, mkey, sha), etag)
    except PreconditionFailed:
        raise Conflict(
            f"HEAD of {collection!r} changed while rolling back to {version}; nothing was rolled back"
        ) from None
    try:  # a sweep that raced the swap may have removed the target's objects: undo, loudly
        _require_complete(store, target, "rolled back, then restored the previous HEAD")
    except CorruptObject:
        if head_body is not None:
            with contextlib.suppress(PreconditionFailed):  # someone published since: theirs stands
                catalog.swap_head(store, collection, head_body, new_etag)
        raise
    return version


# -- helpers -----------------------------------------------------------------------------------
def _prefix(collection: str, kind: str) -> str:
    return f"{layout.check_collection(collection)}/{kind}"


def _rollback_key(collection: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return _prefix(collection, "rollbacks/") + f"{stamp}-{secrets.token_hex(4)}"


def _exists(store: ObjectStore, key: str) -> bool:
    try:
        store.get(key)
    except NotFound:
        return False
    return True


def _decode_head_leniently(collection: str, body: bytes | None, *, strict: bool) -> Head | None:
    if body is None:
        return None
    try:
        return catalog.verify_head(collection, decode_head(body, key=layout.head_key(collection)))
    except CorruptObject:
        if strict:
            raise
        return None  # an explicit rollback may overwrite a HEAD nobody can read


def _load_versions(store: ObjectStore, collection: str, listed: Sequence[ObjectInfo]) -> dict[str, _Version]:
    """Read and summarise the listed manifests, ``store.concurrency`` at a time.

    Keys that are not ``manifests/{version}`` are skipped; a manifest deleted since it was
    listed (by a concurrent sweep) is skipped too.
    """
    prefix = _prefix(collection, "manifests/")
    named = [(o, o.key[len(prefix) :]) for o in listed if o.key.startswith(prefix)]
    named = [(o, v) for o, v in named if layout.is_version(v)]
    out: dict[str, _Version] = {}
    seen: dict[str, bytes] = {}  # versions share most of their manifest parts: GET each once
    step = max(1, store.concurrency)
    for start in range(0, len(named), step):
        chunk = named[start : start + step]
        for (info, version), body in zip(chunk, _get_present(store, [o.key for o, _ in chunk]), strict=True):
            if body is None:
                continue
            m, _ = catalog.expand(
                store, catalog.verify_manifest(collection, version, info.key, body), seen=seen
            )
            refs = set(catalog.object_keys(m))
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
    prefixes = [mkey, _prefix(m.collection, "buckets/")]
    prefixes += [_prefix(m.collection, "ids/")] if m.id_shards else []
    prefixes += [_prefix(m.collection, "parts/")] if m.stored else []
    prefixes += [_prefix(m.collection, "tail/")] if m.tail else []
    present = {o.key for p in prefixes for o in store.list_objects(p)}
    needed = [mkey, *catalog.object_keys(m)]
    missing = [k for k in needed if k not in present]
    if missing:
        raise CorruptObject(
            missing[0],
            f"version {m.version} is incomplete ({len(missing)} objects missing, garbage-collected?); "
            f"{outcome}",
        )


def _newest_first(versions: dict[str, _Version]) -> list[_Version]:
    return [versions[name] for name in sorted(versions, reverse=True)]


def _parse_time(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)
