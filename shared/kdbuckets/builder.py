"""Build a collection's index and publish it atomically.

A build validates nothing itself (its input is a validated :class:`Collection`), partitions
the vectors (:mod:`kdbuckets.partition`), encodes every bucket, calibrates recall, uploads the
buckets and id-directory shards content-addressed, and publishes through the catalog: the
manifest, then a compare-and-swap of ``HEAD``. Until that swap nothing new is reachable, so a
build that dies midway leaves readers on the previous version and two racing builds cannot
both win. Building over an existing collection is a deliberate act (``replace`` or
``expected_version``), never an accident.

Memory: a build holds the vectors once (prepared in place when the caller hands them over,
``in_place=True``), the rotated coordinates only while the tree is built, and bucket bodies
only a batch at a time (:func:`upload_buckets` encodes a batch, uploads it while encoding the
next, and keeps only fingerprints and sizes). Measured peak: about 160 MB + 2.1 × the float32
bytes, the rotated copy during the tree build being the top (bench/build_memory.py);
:func:`upload_buckets` is also the step a distributed build runs per partition.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from . import catalog, distances, layout
from .bucket import IdColumn, dedup_keys, encode_bucket
from .calibration import calibrate
from .codec import fingerprint
from .collection import Collection, check_prepared
from .directory import build_shards, encode_shard, shard_count
from .errors import Conflict
from .manifest import BucketTable, Manifest
from .metadata import MetadataColumns
from .params import BuildParams
from .partition import partition
from .storage import ObjectStore

#: Encoded bucket bytes handed to one parallel upload; at most two batches are alive at once
#: (one uploading, one being encoded).
UPLOAD_BATCH_BYTES = 32 << 20
#: Rows prepared (normalised) per step, so preparation never allocates a second matrix.
PREPARE_CHUNK_ROWS = 16_384


@dataclass(frozen=True)
class BuildResult:
    collection: str
    version: str
    count: int
    buckets: int
    buckets_written: int
    manifest_key: str
    timings_ms: dict[str, float] = field(default_factory=dict)
    stored_rows: int = 0  # vectors stored, replicas included


def build_index(
    store: ObjectStore,
    collection_name: str,
    data: Collection,
    params: BuildParams,
    *,
    replace: bool = False,
    expected_version: str | None = None,
    expected_head: catalog.HeadState | None = None,
    in_place: bool = False,
    prepared: bool = False,
    bounded: bool = False,
) -> BuildResult:
    """Partition ``data``, upload its buckets and publish a new version of the collection.

    A collection that exists is rebuilt only with ``replace=True`` (whatever version is live)
    or ``expected_version`` (HEAD must name exactly that version); otherwise :class:`Conflict`
    and nothing is written. ``expected_head`` (internal: compaction) is the HEAD the publish
    must replace. The HEAD checked here is also the compare-and-swap token of the publish, so
    a writer that lands meanwhile makes this build fail rather than be silently undone.

    ``in_place=True`` hands ``data.vectors`` over to the build: they are prepared (cosine:
    normalised) in place instead of copied, so the caller must not use them afterwards. The
    build handler does this; a library caller that keeps its collection leaves it False.
    ``prepared=True`` says the vectors are already in stored form (compaction re-reads
    buckets): preparing them again would re-normalise rounded float16 values and move them.
    ``bounded=True`` (compaction) splits any bucket that refinement or replication left above
    ``bucket_size`` rows (:func:`kdbuckets.partition.bound_leaves`).
    """
    layout.check_collection(collection_name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if expected_head is None:
        expected_head = _head_to_replace(store, collection_name, replace, expected_version)
    vectors = data.vectors if prepared else prepare_vectors(data.vectors, params.metric, in_place=in_place)
    check_prepared(vectors, params.dtype, "vectors")
    part = partition(vectors, params, bounded=bounded)
    timings["partition_ms"] = _ms(t0)

    keys = dedup_keys(data.ids)
    t1 = time.perf_counter()
    table, written, encode_s = upload_buckets(
        store,
        collection_name,
        vectors,
        data,
        part.leaf_rows,
        part.centroids,
        params,
        keys=keys if params.replicate > 0 else None,
    )
    t2 = time.perf_counter()
    shard_bodies = [
        encode_shard(s) for s in build_shards(keys, part.primary, part.secondary, shard_count(len(keys)))
    ]
    shard_fps = [fingerprint(b) for b in shard_bodies]
    store.put_many(
        [
            (layout.id_shard_key(collection_name, fp), body)
            for fp, body in zip(shard_fps, shard_bodies, strict=True)
        ]
    )
    del shard_bodies
    timings["encode_ms"] = round(encode_s * 1000.0, 1)
    timings["upload_ms"] = round((t2 - t1 - encode_s) * 1000.0, 1) + _ms(t2)

    version = catalog.new_version()
    manifest = Manifest(
        collection=collection_name,
        version=version,
        parent=None if expected_head is None else expected_head.head.version,
        created_at=catalog.now_iso(),
        dim=data.dim,
        metric=params.metric,
        dtype=params.dtype,
        count=data.count,
        id_kind="int" if data.ids.dtype.kind in "iu" else "str",
        label_names=data.label_names,
        params=params.as_dict(),
        tree=part.tree,
        buckets=table,
        id_shards=shard_fps,
        part_buckets=params.part_buckets or 0,  # unset: one part (the flat ranking)
    )
    t_cal = time.perf_counter()
    curve = calibrate(vectors, part, params.metric, params.ranking, seed=params.seed, manifest=manifest)
    manifest = dataclasses.replace(manifest, extra={"calibration": curve})
    timings["calibrate_ms"] = _ms(t_cal)
    mkey = catalog.publish(store, manifest, None if expected_head is None else expected_head.etag)
    timings["total_ms"] = _ms(t0)
    return BuildResult(
        collection_name, version, data.count, len(table), written, mkey, timings, int(table.rows.sum())
    )


def prepare_vectors(vectors: np.ndarray, metric: str, *, in_place: bool = False) -> np.ndarray:
    """:func:`distances.prepare` chunk by chunk: same values, no whole-matrix temporaries.

    With ``in_place`` (and float32 C-contiguous input) the result *is* ``vectors``; otherwise
    one new float32 matrix. Rows are independent, so chunking cannot change a value.
    """
    contiguous = vectors.dtype == np.float32 and vectors.flags.c_contiguous
    if metric != "cosine" and contiguous:
        return vectors  # already in the stored space: distances.prepare would not copy either
    out = vectors if in_place and contiguous and vectors.flags.writeable else None
    if out is None:
        out = np.empty(vectors.shape, dtype=np.float32)
    for start in range(0, len(vectors), PREPARE_CHUNK_ROWS):
        stop = start + PREPARE_CHUNK_ROWS
        out[start:stop] = distances.prepare(vectors[start:stop], metric)
    return out


def head_to_replace(
    store: ObjectStore, collection: str, replace: bool, expected_version: str | None
) -> catalog.HeadState | None:
    """The HEAD a build may replace (None: new collection); :class:`Conflict` otherwise.

    Public so that a distributed build (:mod:`kdbuckets.distributed`) applies the same rule
    when it plans as :func:`build_index` does.
    """
    return _head_to_replace(store, collection, replace, expected_version)


def _head_to_replace(
    store: ObjectStore, collection: str, replace: bool, expected_version: str | None
) -> catalog.HeadState | None:
    """The HEAD this build may replace (None: the collection must not exist yet)."""
    if expected_version is not None:
        layout.check_version(expected_version, "expected_version")
    state = catalog.read_head(store, collection)
    if state is None:
        if expected_version is not None:
            raise Conflict(
                f"collection {collection!r} does not exist, not at version {expected_version!r}; "
                "nothing was built"
            )
        return None
    live = state.head.version
    if expected_version is not None and expected_version != live:
        raise Conflict(
            f"collection {collection!r} is at version {live!r}, not {expected_version!r}; nothing was built"
        )
    if expected_version is None and not replace:
        raise Conflict(
            f"collection {collection!r} already exists (version {live!r}); to rebuild it, pass "
            f'"replace": true or "expected_version": "{live}"; nothing was built'
        )
    return state


def upload_buckets(
    store: ObjectStore,
    collection_name: str,
    vectors: np.ndarray,
    data: Collection,
    leaf_rows: list[np.ndarray],
    centroids: np.ndarray,
    params: BuildParams,
    *,
    keys: np.ndarray | None = None,
    batch_bytes: int | None = None,
) -> tuple[BucketTable, int, float]:
    """Encode every bucket and upload it content-addressed, streamed: only fingerprints stay.

    Buckets are encoded in order into batches of about ``batch_bytes`` (default
    :data:`UPLOAD_BATCH_BYTES`); each batch uploads in
    parallel (``store.put_many``) while the next is encoded, so at most two batches of bodies
    exist at once. ``vectors`` are prepared rows (bucket ``b`` holds ``vectors[leaf_rows[b]]``,
    ids and labels from ``data``); ``keys`` are the dedup keys stored when rows are replicated.
    A distributed build calls this once per partition.

    Returns the bucket table, how many bucket objects were new, and the seconds spent encoding.
    """
    fingerprints: list[str] = []
    sizes: list[int] = []
    written = 0
    encode_s = 0.0
    pending: Future[list[bool]] | None = None
    with ThreadPoolExecutor(1, thread_name_prefix="kdbuckets-upload") as uploader:
        encoded = _encoded(vectors, data, leaf_rows, params, keys)
        for batch in _batches(encoded, UPLOAD_BATCH_BYTES if batch_bytes is None else batch_bytes):
            encode_s += batch.seconds
            items = [(layout.bucket_key(collection_name, fp), body) for fp, body in batch.bodies]
            fingerprints += [fp for fp, _ in batch.bodies]
            sizes += [len(body) for _, body in batch.bodies]
            if pending is not None:
                written += sum(pending.result())  # bounds memory: at most one batch in flight
            pending = uploader.submit(store.put_many, items)
            del batch, items
        if pending is not None:
            written += sum(pending.result())
    table = BucketTable(
        fingerprints=fingerprints,
        sizes=np.array(sizes, dtype=np.int64),
        rows=np.array([len(rows) for rows in leaf_rows], dtype=np.int64),
        centroids=centroids,
    )
    return table, written, encode_s


@dataclass
class _Batch:
    bodies: list[tuple[str, bytes]]  # (fingerprint, body) in bucket order
    seconds: float  # spent encoding them


def _encoded(
    vectors: np.ndarray,
    data: Collection,
    leaf_rows: list[np.ndarray],
    params: BuildParams,
    keys: np.ndarray | None,
) -> Iterator[tuple[bytes, float]]:
    """Each bucket's body, in bucket order, with the seconds spent encoding it."""
    for rows in leaf_rows:
        started = time.perf_counter()
        meta = (
            None
            if data.metadata is None
            else MetadataColumns.from_records([data.metadata[r] for r in rows.tolist()])
        )
        body = encode_bucket(
            vectors[rows],
            IdColumn.from_values(data.ids[rows]),
            None if data.label_codes is None else data.label_codes[rows],
            dtype=params.dtype,
            keys=None if keys is None else keys[rows],
            metadata=meta,
        )
        yield body, time.perf_counter() - started


def _batches(bodies: Iterable[tuple[bytes, float]], batch_bytes: int) -> Iterator[_Batch]:
    batch = _Batch([], 0.0)
    size = 0
    for body, seconds in bodies:
        started = time.perf_counter()
        batch.bodies.append((fingerprint(body), body))
        batch.seconds += seconds + time.perf_counter() - started
        size += len(body)
        if size >= batch_bytes:
            yield batch
            batch, size = _Batch([], 0.0), 0
    if batch.bodies:
        yield batch


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 1)
