"""The catalog: how ``HEAD`` and manifests are read, verified and published — in one place.

Every reader and writer of a collection (queries, builds, upserts and deletes, compaction,
versions, rollback, garbage collection) goes through these functions, so the rules below hold
everywhere or nowhere:

- ``HEAD`` names a version of *this* collection: its manifest key is exactly
  ``{collection}/manifests/{version}`` (a copied prefix whose HEAD still points into the
  original collection is refused, never followed);
- a manifest is used only if it decodes, names its own collection and version, and — when
  reached through ``HEAD`` — its SHA-256 equals the one ``HEAD`` records;
- a hierarchical manifest is a root naming its parts and tree by SHA-256; each is verified
  against that name when read, so the root's hash covers the whole version;
- publishing writes the parts and tree the manifest needs (content-addressed, so unchanged
  ones are skipped), then the root (``If-None-Match: *``), and then swaps ``HEAD`` by
  compare-and-swap on the ETag read before the work started. A PUT whose response was lost
  and whose botocore retry then got 412 is recognised as our own success (the manifest's
  bytes, or ``HEAD`` naming our version), never reported as a conflict.

The formats themselves (bytes of a manifest, of ``HEAD``) live in :mod:`kdbuckets.manifest`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from . import layout
from .codec import fingerprint
from .errors import CollectionNotFound, Conflict, CorruptObject
from .manifest import (
    Head,
    Manifest,
    Part,
    Root,
    assemble,
    decode_head,
    decode_part,
    decode_stored,
    decode_tree,
    encode_head,
    encode_hierarchy,
)
from .storage import NotFound, ObjectStore, PreconditionFailed


@dataclass(frozen=True)
class HeadState:
    """A verified ``HEAD`` and the ETag it was read with (the compare-and-swap token)."""

    head: Head
    etag: str


@dataclass(frozen=True)
class Snapshot:
    """The live version of a collection as one consistent read: HEAD, its ETag, its manifest."""

    head: Head
    etag: str
    manifest: Manifest
    manifest_bytes: int


def new_version() -> str:
    """Sortable, unique version id: UTC time to the microsecond plus 32 random bits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(4)


def now_iso() -> str:
    """The ``created_at`` stamp of a manifest (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


# -- reading -----------------------------------------------------------------------------------
def verify_head(collection: str, head: Head) -> Head:
    """Refuse a HEAD that points outside its own collection (e.g. a copied prefix)."""
    expected = layout.manifest_key(collection, head.version)
    if head.manifest_key != expected:
        raise CorruptObject(
            layout.head_key(collection),
            f"HEAD names manifest {head.manifest_key[:200]!r}, not {expected!r} of collection {collection!r}",
        )
    return head


def read_head(store: ObjectStore, collection: str) -> HeadState | None:
    """The collection's HEAD, decoded and verified; None when the collection has none."""
    key = layout.head_key(collection)
    try:
        body, etag = store.get(key)
    except NotFound:
        return None
    return HeadState(verify_head(collection, decode_head(body, key=key)), etag)


def revalidate_head(store: ObjectStore, collection: str, known: HeadState) -> HeadState | None:
    """Conditional GET of HEAD: ``known`` if unchanged (304), the new HEAD, or None if gone."""
    key = layout.head_key(collection)
    try:
        fresh = store.get_if_changed(key, known.etag)
    except NotFound:
        return None
    if fresh is None:
        return known
    body, etag = fresh
    return HeadState(verify_head(collection, decode_head(body, key=key)), etag)


def require_head(store: ObjectStore, collection: str) -> HeadState:
    """Like :func:`read_head`, but a missing HEAD is :class:`CollectionNotFound`."""
    state = read_head(store, collection)
    if state is None:
        raise CollectionNotFound(collection)
    return state


def load_manifest(
    store: ObjectStore, collection: str, version: str, *, expected_sha256: str | None = None
) -> tuple[Manifest, int]:
    """Read, verify and decode ``version``'s whole manifest; returns it with its size in bytes.

    With ``expected_sha256`` (the manifest was reached through HEAD) it must exist and match;
    without it (a pinned version) a missing manifest is :class:`CollectionNotFound`. A
    hierarchical manifest is read in two rounds: the root, then every part and the tree in
    parallel. The size counts them all.
    """
    stored, size = load_root(store, collection, version, expected_sha256=expected_sha256)
    manifest, more = expand(store, stored)
    return manifest, size + more


def expand(
    store: ObjectStore, stored: Manifest | Root, *, seen: dict[str, bytes] | None = None
) -> tuple[Manifest, int]:
    """The whole manifest of a root (its parts and tree in one parallel round), and their bytes.

    A flat manifest is whole already. The result's ``stored`` names the part and tree objects
    read, i.e. every manifest object the version references besides its root. ``seen`` (part
    and tree bodies by fingerprint, filled in here) lets a caller expanding many versions —
    which share most of their parts — GET each object once.
    """
    if isinstance(stored, Manifest):
        return stored, 0
    root = stored
    refs = [*root.parts.fingerprints, root.tree_ref]
    seen = {} if seen is None else seen
    missing = [fp for fp in dict.fromkeys(refs) if fp not in seen]
    seen.update(zip(missing, _get_objects(store, root.collection, missing), strict=True))
    bodies = [seen[fp] for fp in refs]
    parts = [
        decode_part(body, key=layout.part_key(root.collection, fp), root=root)
        for fp, body in zip(root.parts.fingerprints, bodies, strict=False)
    ]
    tree = decode_tree(bodies[-1], key=layout.part_key(root.collection, root.tree_ref), dim=root.dim)
    key = layout.manifest_key(root.collection, root.version)
    manifest = assemble(root, parts, tree, key=key, stored=frozenset(refs))
    return manifest, sum(len(b) for b in bodies)


def object_keys(manifest: Manifest) -> list[str]:
    """Every object a loaded version needs besides its root: parts and tree, buckets, id shards, tail."""
    c = manifest.collection
    keys = [layout.part_key(c, fp) for fp in sorted(manifest.stored)]
    keys += [layout.bucket_key(c, fp) for fp in manifest.buckets.fingerprints]
    keys += [layout.id_shard_key(c, fp) for fp in manifest.id_shards]
    keys += [layout.segment_key(c, s.fingerprint) for s in manifest.tail]
    return keys


def load_root(
    store: ObjectStore, collection: str, version: str, *, expected_sha256: str | None = None
) -> tuple[Manifest | Root, int]:
    """What a query reads first: a hierarchical manifest's root (or a flat manifest whole)."""
    key = layout.manifest_key(collection, layout.check_version(version))
    try:
        body, _ = store.get(key)
    except NotFound:
        if expected_sha256 is not None:
            raise CorruptObject(key, "HEAD names a manifest that does not exist") from None
        raise CollectionNotFound(collection, version) from None
    return verify_manifest(collection, version, key, body, expected_sha256=expected_sha256), len(body)


def load_parts(store: ObjectStore, root: Root, which: list[int]) -> list[tuple[Part, int]]:
    """Parts ``which`` of ``root`` (one parallel round), each verified against its fingerprint."""
    refs = [root.parts.fingerprints[i] for i in which]
    bodies = _get_objects(store, root.collection, refs)
    return [
        (decode_part(body, key=layout.part_key(root.collection, fp), root=root), len(body))
        for fp, body in zip(refs, bodies, strict=True)
    ]


def _get_objects(store: ObjectStore, collection: str, refs: list[str]) -> list[bytes]:
    """Content-addressed manifest objects, fetched in parallel and checked against their names."""
    keys = [layout.part_key(collection, fp) for fp in refs]
    try:
        bodies = store.get_many(keys)
    except NotFound as exc:
        raise CorruptObject(exc.uri or "", "manifest part named by the root is missing") from None
    for key, fp, body in zip(keys, refs, bodies, strict=True):
        if fingerprint(body) != fp:
            raise CorruptObject(key, "SHA-256 differs from the one the manifest names")
    return bodies


def verify_manifest(
    collection: str, version: str, key: str, body: bytes, *, expected_sha256: str | None = None
) -> Manifest | Root:
    """Decode manifest bytes and check they are ``collection``'s ``version`` (and HEAD's hash)."""
    if expected_sha256 is not None and fingerprint(body) != expected_sha256:
        raise CorruptObject(key, "SHA-256 differs from the one HEAD names")
    manifest = decode_stored(body, key=key)
    if manifest.collection != collection or manifest.version != version:
        raise CorruptObject(
            key,
            f"manifest names collection {manifest.collection!r} version {manifest.version!r}, "
            f"not {collection!r} {version!r}",
        )
    return manifest


def read_live(store: ObjectStore, collection: str) -> Snapshot:
    """The live version, read fresh and verified (what every writer starts from)."""
    state = require_head(store, collection)
    manifest, size = load_manifest(store, collection, state.head.version, expected_sha256=state.head.sha256)
    return Snapshot(state.head, state.etag, manifest, size)


# -- publishing --------------------------------------------------------------------------------
def publish(store: ObjectStore, manifest: Manifest, expected_etag: str | None) -> str:
    """Write ``manifest`` and swap HEAD to it iff HEAD still has ``expected_etag``.

    ``expected_etag`` None means "the collection must not exist yet". Raises
    :class:`Conflict` when another writer published in between; our objects then stay
    unreferenced (garbage for a later sweep), never visible. Returns the manifest's key.
    Parts and the tree go first (those ``manifest.stored`` says exist are skipped: a write
    re-PUTs only the parts it changed), then the root, then HEAD.
    """
    encoded = encode_hierarchy(manifest)
    store.put_many(
        [
            (layout.part_key(manifest.collection, fp), body)
            for fp, body in encoded.objects.items()
            if fp not in manifest.stored
        ]
    )
    body = encoded.root
    mkey = layout.manifest_key(manifest.collection, manifest.version)
    sha = fingerprint(body)
    try:
        store.put(mkey, body, if_absent=True)
    except PreconditionFailed:
        if not _holds(store, mkey, sha):  # not ours: a version id collision, never overwrite
            raise Conflict(
                f"version {manifest.version} of {manifest.collection!r} already exists; nothing published"
            ) from None
    hkey = layout.head_key(manifest.collection)
    head = encode_head(manifest.version, mkey, sha)
    try:
        if expected_etag is None:
            store.put(hkey, head, if_absent=True)
        else:
            store.put(hkey, head, if_match=expected_etag)
    except NotFound:  # If-Match on a HEAD that is gone: the collection was dropped meanwhile
        raise CollectionNotFound(manifest.collection) from None
    except PreconditionFailed:
        if _head_names(store, manifest.collection, manifest.version):  # our swap landed, its response did not
            return mkey
        raise Conflict(
            f"collection {manifest.collection!r} was published by another writer meanwhile; "
            f"version {manifest.version} was not published — retry"
        ) from None
    return mkey


def swap_head(store: ObjectStore, collection: str, head_body: bytes, expected_etag: str | None) -> str:
    """Compare-and-swap HEAD to ``head_body`` (rollback); returns the new ETag.

    Raises :class:`~kdbuckets.storage.PreconditionFailed` when HEAD changed; the caller words
    the conflict, since only it knows what was being attempted.
    """
    hkey = layout.head_key(collection)
    if expected_etag is None:
        return store.put(hkey, head_body, if_absent=True)
    return store.put(hkey, head_body, if_match=expected_etag)


def delete_head(store: ObjectStore, collection: str, expected_etag: str) -> bool:
    """Delete HEAD iff it still has ``expected_etag`` (a compare-and-swap to "no collection").

    The first step of dropping a collection: once HEAD is gone every query and writer sees
    :class:`CollectionNotFound`, whatever objects remain. S3 ``DeleteObject`` with ``If-Match``
    is the CAS (moto honours it too). Returns False when HEAD was already gone (a concurrent
    drop, or a retry of ours whose first attempt landed); raises
    :class:`~kdbuckets.storage.PreconditionFailed` when HEAD changed — the caller words the
    conflict. A writer that read the old HEAD then fails its own CAS: it cannot resurrect it.
    """
    return store.delete_if_match(layout.head_key(collection), expected_etag)


def _holds(store: ObjectStore, key: str, sha: str) -> bool:
    try:
        return fingerprint(store.get(key)[0]) == sha
    except NotFound:
        return False


def _head_names(store: ObjectStore, collection: str, version: str) -> bool:
    """Does HEAD already name ``version``? (A retried PUT whose first attempt succeeded.)"""
    try:
        state = read_head(store, collection)
    except CorruptObject:
        return False
    return state is not None and state.head.version == version
