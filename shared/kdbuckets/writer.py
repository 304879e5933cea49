"""Upserts and deletes by id without a rebuild: to the unmerged tail, or copy-on-write of buckets.

One write = read HEAD and its manifest (and the tail's segments) → is each id live now (the
tail's newest mention, else the id directory: only the shards the ids hash to) → then either

- **tail** (while it holds at most :func:`kdbuckets.tail.tail_limit` rows plus deletes): PUT
  one small segment with the write's rows and deletes (absorbing the newest segments that are
  no larger) and a new root listing it — no bucket, part or directory shard is touched; or
- **merge**: the tail and this write, net of each other, go into the buckets in one commit —
  route new vectors to their buckets (and a ``replicate`` share of them to a second one, as a
  build does), rewrite just those buckets and directory shards under new fingerprints, run the
  local maintenance below, and publish a manifest with an empty tail.

Either way the new manifest is published by compare-and-swap on HEAD.

Concurrency: the CAS makes a write atomic. When another writer published first, the whole
write is redone on the new state (with jittered backoff), so no acknowledged write is lost:
a write returns only after HEAD names a manifest that contains it.

Routing: an index whose buckets are exactly the tree's leaves (``refine`` 0, no replication)
routes a new vector down the tree; a refined index routes it to the nearest bucket centroid,
the rule its buckets were refined by. A bucket that grows past ``SPLIT_FACTOR × bucket_size``
is split locally (the leaf becomes a tree node with two leaves); in a refined collection the
merge also merges touched buckets under a floor and reassigns the split buckets' neighbours,
a bounded number of buckets per commit (:mod:`kdbuckets.maintenance`). ``compact`` rebuilds
the collection (tail included) with every bucket at most ``bucket_size`` rows.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from . import catalog, distances, layout, maintenance, tail
from .bucket import Bucket, IdColumn, decode_bucket, dedup_keys, encode_bucket
from .builder import BuildParams, BuildResult, build_index
from .catalog import Snapshot
from .codec import fingerprint
from .collection import MAX_LABELS, Collection, check_prepared, check_vectors
from .directory import Shard, build_shards, decode_shard, encode_shard, resharded_count, shard_of
from .errors import Conflict, CorruptObject, InvalidRequest
from .maintenance import Rows
from .manifest import BucketTable, Manifest
from .metadata import MetadataColumns
from .ranking import bucket_scores
from .recalibrate import MERGED_SINCE_CALIBRATION
from .refine import spill
from .storage import NotFound, ObjectStore
from .tree import MutableTree

MAX_ATTEMPTS = 8
#: A bucket past this × ``bucket_size`` rows is split by a merge. 1.5 rather than 2: after
#: half of WordNet was written in batches of 2,000, buckets split at 2× made queries read 1.22×
#: a fresh build's bytes, at 1.5× 1.04×, at equal recall (``python -m bench.tail_writes``).
SPLIT_FACTOR = 1.5
#: A merge that brings the rows merged since the curves were measured to this share of the
#: collection re-measures them in its own commit (:func:`kdbuckets.recalibrate.measure`: every
#: bucket read in bounded rounds), so ``recall_target`` follows the data without anyone asking.
RECALIBRATE_SHARE = 0.1


@dataclass(frozen=True)
class WriteResult:
    collection: str
    version: str
    upserted: int
    deleted: int
    not_found: int
    buckets_written: int
    buckets_split: int
    attempts: int
    count: int
    #: segments the version's unmerged tail holds (0 after a merge)
    tail_segments: int = 0
    #: did this commit merge the tail into the buckets (or write to them directly)
    merged: bool = False
    #: the merge re-measured the recall curves on the version it published (same commit)
    recalibrated: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class _Edit:
    """Pending changes to one bucket."""

    remove: list[np.ndarray] = field(default_factory=list)  # keys to drop
    add: list[np.ndarray] = field(default_factory=list)  # row numbers of the upserted rows


@dataclass(frozen=True)
class _Batch:
    """A write validated and prepared: rows as they will be stored, keys to delete."""

    rows: Bucket  # prepared vectors, ids, label codes, keys, metadata
    deletes: np.ndarray  # keys
    label_names: list[str] | None


def write(
    store: ObjectStore,
    collection: str,
    *,
    upserts: Collection | None = None,
    deletes: np.ndarray | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> WriteResult:
    """Apply upserts (replace-or-insert by id) and deletes (by id) as one new version."""
    layout.check_collection(collection)
    if upserts is None and deletes is None:
        raise InvalidRequest("operation", "needs items to upsert or ids to delete")
    if deletes is not None:
        deletes = _unique_ids(deletes)
    for attempt in range(1, max_attempts + 1):
        snapshot = catalog.read_live(store, collection)
        try:
            return _attempt(store, snapshot, upserts, deletes, attempt)
        except Conflict:
            if attempt == max_attempts:
                raise Conflict(
                    f"collection {collection!r} kept changing under this write; gave up after "
                    f"{max_attempts} attempts and published nothing — retry the write"
                ) from None
            time.sleep(random.uniform(0, min(2.0, 0.05 * 2**attempt)))
    raise AssertionError("unreachable")


def _attempt(
    store: ObjectStore, snap: Snapshot, upserts: Collection | None, deletes: np.ndarray | None, attempt: int
) -> WriteResult:
    """One try of a write: to the tail while it has room, else merged with the tail into buckets."""
    m = snap.manifest
    if not m.id_shards:
        raise InvalidRequest("collection", f"{m.collection!r} was built without an id directory; rebuild it")
    batch = _prepare(m, upserts, deletes)
    segments = load_segments(store, m)
    pending = tail.overlay(segments, m.dim)
    shards: dict[int, Shard] = {}  # id-directory shards read by this attempt
    both = _exists(store, m, pending, np.concatenate([batch.rows.keys, batch.deletes]), shards)
    existed, live_deletes = both[: batch.rows.count], both[batch.rows.count :]
    delta = int((~existed).sum()) - int(live_deletes.sum())
    figures = dict(
        upserted=batch.rows.count,
        deleted=int(live_deletes.sum()),
        not_found=int((~live_deletes).sum()),
        attempts=attempt,
    )
    if not batch.rows.count and not live_deletes.any():  # deleting ids that do not exist
        return WriteResult(
            m.collection, m.version, 0, 0, len(batch.deletes), 0, 0, attempt, m.count, len(m.tail)
        )
    own = tail.Segment(batch.rows, batch.deletes[live_deletes])
    limit = tail.tail_limit(m.params, int(m.buckets.sizes.sum()), m.dim)
    held = sum(s.weight for s in m.tail) + batch.rows.count + len(own.deletes)
    if limit > 0 and held <= limit:
        published = _append(store, snap, segments, own, delta, batch.label_names)
        return WriteResult(
            m.collection,
            published.version,
            buckets_written=0,
            buckets_split=0,
            count=published.count,
            tail_segments=len(published.tail),
            **figures,
        )
    merged = tail.overlay([*segments, own], m.dim)
    base = m.count - sum(s.delta for s in m.tail)  # the live count the buckets alone hold
    return _merge(store, snap, merged, base, batch.label_names, figures, shards)


def load_segments(store: ObjectStore, m: Manifest | Any) -> list[tail.Segment]:
    """The tail segments ``m`` lists, oldest first: one parallel round, each verified."""
    keys = [layout.segment_key(m.collection, s.fingerprint) for s in m.tail]
    try:
        bodies = store.get_many(keys)
    except NotFound as exc:
        raise CorruptObject(exc.uri or "", "tail segment named by the manifest is missing") from None
    return [
        tail.decode_segment(body, key=key, ref=ref, dim=m.dim)
        for ref, key, body in zip(m.tail, keys, bodies, strict=True)
    ]


def _exists(
    store: ObjectStore, m: Manifest, pending: tail.Overlay, keys: np.ndarray, shards: dict[int, Shard]
) -> np.ndarray:
    """Is each key live now: as the tail last left it, else as the id directory says.

    The directory shards read are added to ``shards`` (a merge reuses them).
    """
    mentioned, live = pending.state(keys)
    out = live.copy()
    rest = ~mentioned
    if rest.any():
        n_shards = len(m.id_shards)
        _ensure_shards(store, m, shards, keys[rest])
        out[rest] = _locate(shards, keys[rest], n_shards)[0]
    return out


def _ensure_shards(store: ObjectStore, m: Manifest, shards: dict[int, Shard], keys: np.ndarray) -> None:
    """Read (one parallel round) the directory shards ``keys`` hash to that ``shards`` lacks."""
    which = np.setdiff1d(np.unique(shard_of(keys, len(m.id_shards))), list(shards))
    if which.size:
        shards.update(_load_shards(store, m, which))


def _append(
    store: ObjectStore,
    snap: Snapshot,
    segments: list[tail.Segment],
    own: tail.Segment,
    delta: int,
    label_names: list[str] | None,
) -> Manifest:
    """Publish the write as one new segment (absorbing the newest ones: :func:`tail.absorbed`)."""
    m = snap.manifest
    n = tail.absorbed(list(m.tail), own.rows.count + len(own.deletes))
    kept, folded = m.tail[: len(m.tail) - n], m.tail[len(m.tail) - n :]
    combined = tail.overlay([*segments[len(segments) - n :], own], m.dim) if n else None
    rows, dels = (own.rows, own.deletes) if combined is None else (combined.live, combined.deleted)
    body = tail.encode_segment(rows, dels, m.dtype)
    fp = fingerprint(body)
    ref = tail.SegmentRef(fp, len(body), rows.count, len(dels), delta + sum(s.delta for s in folded))
    store.put_many([(layout.segment_key(m.collection, fp), body)])
    manifest = replace(
        m,
        version=catalog.new_version(),
        parent=m.version,
        created_at=catalog.now_iso(),
        count=m.count + delta,
        label_names=label_names,
        tail=(*kept, ref),
    )
    catalog.publish(store, manifest, snap.etag)
    return manifest


def _merge(
    store: ObjectStore,
    snap: Snapshot,
    merged: tail.Overlay,
    base: int,
    label_names: list[str] | None,
    figures: dict[str, int],
    shards: dict[int, Shard],
) -> WriteResult:
    """Apply the tail and this write (``merged``) to the buckets: copy-on-write, with maintenance.

    ``base`` is the live count of the buckets without the tail; the new version's tail is empty.
    """
    m = snap.manifest
    rows, up_keys, del_keys = merged.live, merged.live.keys, merged.deleted
    n_shards = len(m.id_shards)
    _ensure_shards(store, m, shards, np.concatenate([up_keys, del_keys]))

    edits: dict[int, _Edit] = {}
    existing_up = _locate(shards, up_keys, n_shards)
    existing_del = _locate(shards, del_keys, n_shards)
    for keys, (found, primary, secondary) in ((up_keys, existing_up), (del_keys, existing_del)):
        for slot in (primary, secondary):
            for b in np.unique(slot[found & (slot >= 0)]).tolist():
                edits.setdefault(b, _Edit()).remove.append(keys[found & (slot == b)])
    targets = _route(m, rows.vectors) if rows.count else np.zeros(0, np.int64)
    seconds = _second_copies(m, rows.vectors, targets)
    for slot in (targets, seconds):
        for b in np.unique(slot[slot >= 0]).tolist():
            edits.setdefault(b, _Edit()).add.append(np.flatnonzero(slot == b))

    buckets = load_buckets(store, m, sorted(edits))
    tree = MutableTree(m.tree)
    refined = _refined(m)
    bucket_size = int(m.params.get("bucket_size", 1000))
    edited = {b: _apply_edit(m, buckets[b], edit, rows, b) for b, edit in edits.items()}
    done = maintenance.maintain(
        edited,
        m.buckets.centroids,
        m.buckets.rows,
        tree,
        m.n_buckets,
        limit=int(SPLIT_FACTOR * bucket_size),
        floor=bucket_size // maintenance.FLOOR_DIVISOR,
        refined=refined,
        load=lambda which: _rows_of(m, load_buckets(store, m, which)),
        method=maintenance.SPLIT_METHOD,
    )
    centroids, next_bucket, moved = done.centroids, done.next_bucket, done.moves
    new_buckets = {b: (_encode(m, part), part.keys, part.count) for b, part in sorted(done.buckets.items())}

    # Directory: deleted keys go, upserted keys point at their new bucket, split-off rows move.
    _ensure_shards(store, m, shards, np.concatenate([k for k, _, _ in moved] + [np.zeros(0, np.int64)]))
    changed = _update_directory(shards, n_shards, del_keys, up_keys, targets, seconds, moved)
    live_count = base - int(existing_del[0].sum()) + int((~existing_up[0]).sum())
    since = int(m.extra.get(MERGED_SINCE_CALIBRATION, 0)) + rows.count + len(del_keys)
    id_shards, shard_uploads = _directory_objects(store, m, shards, changed, live_count)

    fingerprints = list(m.buckets.fingerprints) + [""] * (next_bucket - m.n_buckets)
    sizes = np.concatenate([m.buckets.sizes, np.zeros(next_bucket - m.n_buckets, np.int64)])
    counts = np.concatenate([m.buckets.rows, np.zeros(next_bucket - m.n_buckets, np.int64)])
    uploads: list[tuple[str, bytes]] = []
    for index, (body, _, count) in new_buckets.items():
        fp = fingerprint(body)
        fingerprints[index], sizes[index], counts[index] = fp, len(body), count
        uploads.append((layout.bucket_key(m.collection, fp), body))
    created = store.put_many(uploads + shard_uploads)

    manifest = replace(
        m,
        version=catalog.new_version(),
        parent=m.version,
        created_at=catalog.now_iso(),
        count=live_count,
        label_names=label_names,
        tree=tree.freeze(),
        buckets=BucketTable(fingerprints, sizes, counts, centroids),
        id_shards=id_shards,
        tail=(),  # parts this write leaves as they were are not PUT again (m.stored)
        extra={**m.extra, MERGED_SINCE_CALIBRATION: since},
    )
    if since >= RECALIBRATE_SHARE * max(live_count, 1):
        manifest = _recalibrated(store, manifest, new_buckets)
    catalog.publish(store, manifest, snap.etag)
    return WriteResult(
        collection=m.collection,
        version=manifest.version,
        buckets_written=sum(created[: len(new_buckets)]),
        buckets_split=done.splits,
        count=manifest.count,
        merged=True,
        recalibrated=manifest.extra.get(MERGED_SINCE_CALIBRATION) == 0,
        **figures,
    )


def _recalibrated(
    store: ObjectStore, manifest: Manifest, written: dict[int, tuple[bytes, Any, int]]
) -> Manifest:
    """``manifest`` (about to be published, tail empty) with its recall curves measured anew.

    The buckets this commit wrote are decoded from their bodies; the others are read, in
    rounds of bounded memory (:func:`kdbuckets.recalibrate.measure`). Measured on exactly the
    version that will carry the curves.
    """
    from .recalibrate import measure

    def load(which: list[int]) -> dict[int, Bucket]:
        out = {
            b: decode_bucket(
                written[b][0], key=layout.bucket_key(manifest.collection, manifest.buckets.fingerprints[b])
            )
            for b in which
            if b in written
        }
        out.update(load_buckets(store, manifest, [b for b in which if b not in written]))
        return out

    curve, *_ = measure(manifest, load, tail.overlay([], manifest.dim), manifest.version)
    return replace(manifest, extra={**manifest.extra, "calibration": curve, MERGED_SINCE_CALIBRATION: 0})


# -- preparing the request ----------------------------------------------------------------
def _prepare(m: Manifest, upserts: Collection | None, deletes: np.ndarray | None) -> _Batch:
    """Validate a write against ``m`` and prepare its rows as the collection stores them."""
    vectors, keys, names, codes = _prepare_upserts(m, upserts)
    ids = upserts.ids if upserts is not None else np.zeros(0, np.int64)
    metadata = None
    if upserts is not None and upserts.metadata is not None:
        metadata = MetadataColumns.from_records(upserts.metadata)
    rows = Bucket(
        vectors=vectors,
        ids=IdColumn.from_values(ids if len(ids) else np.zeros(0, np.int64)),
        labels=codes,
        stored_dtype=m.dtype,
        keys=keys,
        metadata=metadata,
    )
    del_keys = np.zeros(0, np.int64) if deletes is None else _keys_for(m, deletes, "ids")
    return _Batch(rows, del_keys, names)


def _prepare_upserts(
    m: Manifest, upserts: Collection | None
) -> tuple[np.ndarray, np.ndarray, list[str] | None, np.ndarray | None]:
    """Prepared vectors, keys, the (extended) label vocabulary and label codes in it."""
    names = None if m.label_names is None else list(m.label_names)
    if upserts is None:
        return np.zeros((0, m.dim), np.float32), np.zeros(0, np.int64), names, None
    if upserts.dim != m.dim:
        raise InvalidRequest(
            "items[0].vector", f"has {upserts.dim} dimensions; collection {m.collection!r} has {m.dim}"
        )
    keys = _keys_for(m, upserts.ids, "items[].id")
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    if len(uniq) != len(keys):
        dup = int(first[np.argmax(counts > 1)])
        raise InvalidRequest(f"items[{dup}].id", f"{upserts.ids[dup].item()!r} appears more than once")
    if (m.label_names is None) != (upserts.label_codes is None):
        # One rule for builds and writes: a collection is labelled throughout or not at all.
        raise InvalidRequest(
            "items[0].label",
            f"is required: collection {m.collection!r} is labelled"
            if upserts.label_codes is None
            else f"is not allowed: collection {m.collection!r} has no labels",
        )
    check_vectors(upserts.vectors, "items[].vector", metric=m.metric, dtype=m.dtype)
    codes = None
    if upserts.label_codes is not None:
        names = names or []
        lookup = {name: i for i, name in enumerate(names)}
        for name in upserts.label_names or []:
            if name not in lookup:
                lookup[name] = len(names)
                names.append(name)
        if len(names) > MAX_LABELS:
            raise InvalidRequest(
                "items[].label", f"would give {m.collection!r} {len(names)} labels; at most {MAX_LABELS}"
            )
        table = np.array([lookup[n] for n in upserts.label_names or []], dtype=np.int32)
        codes = table[upserts.label_codes]
    prepared = distances.prepare(upserts.vectors, m.metric)
    check_prepared(prepared, m.dtype, "items[].vector")
    return prepared, keys, names, codes


def _unique_ids(ids: np.ndarray) -> np.ndarray:
    """Deletes by id, each id once (a repeated id must not be counted twice)."""
    _, first = np.unique(ids, return_index=True)
    return ids[np.sort(first)]


def _keys_for(m: Manifest, ids: np.ndarray, field_name: str) -> np.ndarray:
    kind = "int" if ids.dtype.kind in "iu" else "str"
    if len(ids) and kind != m.id_kind:
        raise InvalidRequest(
            field_name,
            f"must be {'integers' if m.id_kind == 'int' else 'strings'} like the ids of {m.collection!r}",
        )
    return dedup_keys(ids)


# -- id directory ---------------------------------------------------------------------------
def _load_shards(store: ObjectStore, m: Manifest, which: np.ndarray) -> dict[int, Shard]:
    which = [int(s) for s in which]
    keys = [layout.id_shard_key(m.collection, m.id_shards[s]) for s in which]
    try:
        bodies = store.get_many(keys)
    except NotFound as exc:
        raise CorruptObject(exc.uri or "", "id-directory shard named by the manifest is missing") from None
    n_shards = len(m.id_shards)
    return {
        s: decode_shard(
            body, key=key, expected_fingerprint=m.id_shards[s], n_buckets=m.n_buckets, place=(s, n_shards)
        )
        for s, key, body in zip(which, keys, bodies, strict=True)
    }


def _directory_objects(
    store: ObjectStore, m: Manifest, shards: dict[int, Shard], changed: list[int], count: int
) -> tuple[list[str], list[tuple[str, bytes]]]:
    """The new version's shard fingerprints and the shard objects to upload.

    Usually just the ``changed`` shards. When the live ``count`` has outgrown (or shrunk far
    below) the shard count (:func:`kdbuckets.directory.resharded_count`), the whole directory
    is read — ``shards`` already holds the touched ones, updated — and rebuilt for ``count``
    like a fresh build would, so no shard ends up holding the whole collection.
    """
    n_shards = len(m.id_shards)
    target = resharded_count(n_shards, count)
    if target == n_shards:
        id_shards = list(m.id_shards)
        new = {s: shards[s] for s in changed}
    else:
        shards.update(_load_shards(store, m, np.setdiff1d(np.arange(n_shards), list(shards))))
        parts = [shards[s] for s in range(n_shards)]
        rebuilt = build_shards(
            np.concatenate([p.keys for p in parts]),
            np.concatenate([p.primary for p in parts]),
            np.concatenate([p.secondary for p in parts]),
            target,
        )
        id_shards = [""] * target
        new = dict(enumerate(rebuilt))
    uploads: dict[str, bytes] = {}  # by key: equal shards (empty ones) are one object
    for s, shard in new.items():
        body = encode_shard(shard)
        id_shards[s] = fingerprint(body)
        uploads[layout.id_shard_key(m.collection, id_shards[s])] = body
    return id_shards, list(uploads.items())


def _locate(
    shards: dict[int, Shard], keys: np.ndarray, n_shards: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    found = np.zeros(len(keys), bool)
    primary = np.full(len(keys), -1, np.int64)
    secondary = np.full(len(keys), -1, np.int64)
    which = shard_of(keys, n_shards)
    for s in np.unique(which).tolist():
        sel = which == s
        f, p, q = shards[s].lookup(keys[sel])
        found[sel], primary[sel], secondary[sel] = f, p, q
    return found, primary, secondary


def _update_directory(
    shards: dict[int, Shard],
    n_shards: int,
    del_keys: np.ndarray,
    up_keys: np.ndarray,
    targets: np.ndarray,
    seconds: np.ndarray,
    moved: list[tuple[np.ndarray, int, int]],
) -> list[int]:
    """Apply the write to the loaded shards in place; returns the shard numbers that changed."""
    changed: set[int] = set()
    del_shard, up_shard = shard_of(del_keys, n_shards), shard_of(up_keys, n_shards)
    for s in set(del_shard.tolist()) | set(up_shard.tolist()):
        up = up_shard == s
        shards[s] = shards[s].updated(del_keys[del_shard == s], up_keys[up], targets[up], seconds[up])
        changed.add(s)
    if not moved:
        return sorted(changed)
    # All moves at once: a copy is named by (key, bucket it left), and when both copies of a key
    # move — one into the bucket the other leaves — applying the moves one after the other would
    # rename both (found by the model check: a key naming one bucket as primary and secondary).
    dest = {(int(k), src): dst for keys, src, dst in moved for k in keys.tolist()}
    keys = np.unique(np.concatenate([k for k, _, _ in moved]))
    which = shard_of(keys, n_shards)
    for s in np.unique(which).tolist():
        k = keys[which == s]
        found, primary, secondary = shards[s].lookup(k)
        k, primary, secondary = k[found], primary[found], secondary[found]
        primary = np.array(
            [dest.get((int(a), int(b)), int(b)) for a, b in zip(k, primary, strict=True)], np.int64
        )
        secondary = np.array(
            [dest.get((int(a), int(b)), int(b)) if b >= 0 else -1 for a, b in zip(k, secondary, strict=True)],
            np.int64,
        )
        # a dropped copy (dst -1) leaves the key with its other one, as its primary
        primary, secondary = (
            np.where(primary < 0, secondary, primary),
            np.where(primary < 0, -1, secondary),
        )
        shards[s] = shards[s].updated(np.zeros(0, np.int64), k, primary, secondary)
        changed.add(s)
    return sorted(changed)


# -- buckets --------------------------------------------------------------------------------
def load_buckets(store: ObjectStore, m: Manifest, which: list[int]) -> dict[int, Bucket]:
    """Buckets ``which`` of ``m``, one parallel round, each verified against its fingerprint."""
    keys = [layout.bucket_key(m.collection, m.buckets.fingerprints[b]) for b in which]
    try:
        bodies = store.get_many(keys)
    except NotFound as exc:
        raise CorruptObject(exc.uri or "", "bucket named by the manifest is missing") from None
    return {
        b: decode_bucket(body, key=key, expected_fingerprint=m.buckets.fingerprints[b])
        for b, key, body in zip(which, keys, bodies, strict=True)
    }


def _apply_edit(m: Manifest, bucket: Bucket, edit: _Edit, new: Bucket, origin: int = -1) -> Rows:
    """``bucket`` without the keys ``edit`` removes, plus the rows of ``new`` it adds."""
    ids = bucket.ids.to_numpy()
    keys = bucket.keys if bucket.keys is not None else dedup_keys(ids)
    remove = np.concatenate(edit.remove) if edit.remove else np.zeros(0, np.int64)
    keep = ~np.isin(keys, remove)
    add = np.concatenate(edit.add) if edit.add else np.zeros(0, np.int64)
    labels = None
    if m.label_names is not None or new.labels is not None:
        old = bucket.labels if bucket.labels is not None else np.full(bucket.count, -1, np.int32)
        added = new.labels[add] if new.labels is not None else np.full(len(add), -1, np.int32)
        labels = np.concatenate([old[keep], added]).astype(np.int32)
    metadata = None
    if bucket.metadata is not None or (new.metadata is not None and len(add)):
        old_meta = bucket.metadata.select(np.flatnonzero(keep)) if bucket.metadata is not None else None
        parts = [old_meta or MetadataColumns.from_records([None] * int(keep.sum()))]
        parts.append(
            new.metadata.select(add)
            if new.metadata is not None
            else MetadataColumns.from_records([None] * len(add))
        )
        metadata = MetadataColumns.concat(parts)
    return Rows(
        vectors=np.concatenate([bucket.vectors[keep], new.vectors[add]]).astype(np.float32),
        ids=np.concatenate([ids[keep], new.ids.to_numpy()[add]]) if len(add) else ids[keep],
        labels=labels,
        keys=np.concatenate([keys[keep], new.keys[add]]),
        metadata=metadata,
        origin=np.full(int(keep.sum()) + len(add), origin, np.int64),
    )


def _rows_of(m: Manifest, buckets: dict[int, Bucket]) -> dict[int, Rows]:
    """Buckets loaded for maintenance, unchanged, each row's origin its own bucket."""
    return {b: _apply_edit(m, bucket, _Edit(), tail.empty_rows(m.dim), b) for b, bucket in buckets.items()}


def _refined(m: Manifest) -> bool:
    """Buckets are Lloyd cells or hold replicas: routed by centroid, not down the tree."""
    return int(m.params.get("refine", 0)) != 0 or float(m.params.get("replicate", 0.0)) != 0.0


def _encode(m: Manifest, rows: Rows) -> bytes:
    replicated = float(m.params.get("replicate", 0.0)) > 0
    return encode_bucket(
        rows.vectors,
        IdColumn.from_values(rows.ids),
        rows.labels,
        dtype=m.dtype,
        keys=rows.keys if replicated else None,
        metadata=rows.metadata,
    )


def _route(m: Manifest, vectors: np.ndarray) -> np.ndarray:
    """Bucket of each new vector: down the tree, or to the nearest centroid if refined."""
    if not _refined(m):
        return m.tree.leaf_of(vectors)
    scores = bucket_scores(vectors, m.buckets.centroids, m.tree, m.metric, "centroid")
    if m.buckets.rows.any():  # a bucket emptied by a merge keeps a stale centroid: never route to it
        scores[:, m.buckets.rows == 0] = np.inf
    return np.argmin(scores, axis=1).astype(np.int64)


def _second_copies(m: Manifest, vectors: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Second bucket of each new row, as a build replicates border vectors; -1: stored once.

    The collection's ``replicate`` fraction of the rows (those whose best second cell costs
    least, :func:`kdbuckets.refine.spill`) get a copy, so storage stays ``1 + replicate`` and
    a vector written later is as findable from across a border as one that was built.
    """
    fraction = float(m.params.get("replicate", 0.0))
    alive = np.flatnonzero(m.buckets.rows > 0)
    if fraction <= 0 or len(vectors) == 0 or len(alive) < 2 or not np.isin(targets, alive).all():
        return np.full(len(vectors), -1, np.int64)
    local = spill(vectors, np.searchsorted(alive, targets), m.buckets.centroids[alive], fraction)
    return np.where(local >= 0, alive[np.maximum(local, 0)], -1).astype(np.int64)


def compact(store: ObjectStore, collection: str) -> BuildResult:
    """Rebuild the live contents with the collection's own build parameters (restores balance).

    Reads every bucket once, keeps one copy of each vector, and publishes the rebuilt index by
    compare-and-swap against the HEAD it read — a write that lands meanwhile makes this fail
    with :class:`Conflict` rather than be silently undone.
    """
    snap = catalog.read_live(store, collection)
    m = snap.manifest
    buckets = load_buckets(store, m, [b for b in range(m.n_buckets) if m.buckets.rows[b] > 0])
    pending = tail.overlay(load_segments(store, m), m.dim)  # the tail is merged by the rebuild
    parts = [buckets[b] for b in sorted(buckets)]
    if not pending.empty:
        parts = [tail.take(p, np.flatnonzero(~pending.hides(p.row_keys()))) for p in parts]
        parts.append(pending.live)
    parts = [p for p in parts if p.count]
    if not parts:
        raise InvalidRequest("collection", f"{collection!r} is empty; nothing to compact")
    vectors = np.concatenate([p.vectors for p in parts])
    ids = np.concatenate([p.ids.to_numpy() for p in parts])
    keys = np.concatenate([p.row_keys() for p in parts])
    _, first = np.unique(keys, return_index=True)
    first.sort()
    labels = None
    if m.label_names is not None:
        labels = np.concatenate(
            [p.labels if p.labels is not None else np.full(p.count, -1, np.int32) for p in parts]
        )[first]
    metadata = None
    if any(p.metadata is not None for p in parts):
        records = [
            r
            for p in parts
            for r in (p.metadata.take(np.arange(p.count)) if p.metadata else [None] * p.count)
        ]
        metadata = [records[i] for i in first.tolist()]
    data = Collection(
        vectors=vectors[first],
        ids=ids[first],
        label_codes=labels,
        label_names=m.label_names,
        metadata=metadata,
    )
    params = BuildParams(**m.params)
    return build_index(
        store,
        collection,
        data,
        params,
        expected_head=catalog.HeadState(snap.head, snap.etag),
        prepared=True,  # the buckets' vectors, already normalised and rounded as stored
        bounded=True,  # every bucket <= bucket_size, refined or not
    )
