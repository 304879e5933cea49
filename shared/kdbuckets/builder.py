"""Build a collection's index and publish it atomically.

A build validates nothing itself (its input is a validated :class:`Collection`), partitions
the vectors (:mod:`kdbuckets.partition`), encodes every bucket, calibrates recall, uploads the
buckets and id-directory shards content-addressed, and publishes through the catalog: the
manifest, then a compare-and-swap of ``HEAD``. Until that swap nothing new is reachable, so a
build that dies midway leaves readers on the previous version and two racing builds cannot
both win. Building over an existing collection is a deliberate act (``replace`` or
``expected_version``), never an accident.
"""

from __future__ import annotations

import time
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
from .partition import Partition, partition
from .storage import ObjectStore


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
) -> BuildResult:
    """Partition ``data``, upload its buckets and publish a new version of the collection.

    A collection that exists is rebuilt only with ``replace=True`` (whatever version is live)
    or ``expected_version`` (HEAD must name exactly that version); otherwise :class:`Conflict`
    and nothing is written. ``expected_head`` (internal: compaction) is the HEAD the publish
    must replace. The HEAD checked here is also the compare-and-swap token of the publish, so
    a writer that lands meanwhile makes this build fail rather than be silently undone.
    """
    layout.check_collection(collection_name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if expected_head is None:
        expected_head = _head_to_replace(store, collection_name, replace, expected_version)
    vectors = distances.prepare(data.vectors, params.metric)
    check_prepared(vectors, params.dtype, "vectors")
    part = partition(vectors, params)
    timings["partition_ms"] = _ms(t0)

    t1 = time.perf_counter()
    bodies, table = _encode_buckets(vectors, data, part, params)
    timings["encode_ms"] = _ms(t1)
    t_cal = time.perf_counter()
    curve = calibrate(vectors, part, params.metric, params.ranking, seed=params.seed)
    timings["calibrate_ms"] = _ms(t_cal)

    keys = dedup_keys(data.ids)
    shard_bodies = [
        encode_shard(s) for s in build_shards(keys, part.primary, part.secondary, shard_count(len(keys)))
    ]
    shard_fps = [fingerprint(b) for b in shard_bodies]

    t2 = time.perf_counter()
    created = store.put_many(
        [
            (layout.bucket_key(collection_name, fp), body)
            for fp, body in zip(table.fingerprints, bodies, strict=True)
        ]
        + [
            (layout.id_shard_key(collection_name, fp), body)
            for fp, body in zip(shard_fps, shard_bodies, strict=True)
        ]
    )
    written = sum(created[: len(bodies)])
    timings["upload_ms"] = _ms(t2)

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
        extra={"calibration": curve},
        id_shards=shard_fps,
    )
    mkey = catalog.publish(store, manifest, None if expected_head is None else expected_head.etag)
    timings["total_ms"] = _ms(t0)
    return BuildResult(
        collection_name, version, data.count, len(table), written, mkey, timings, int(table.rows.sum())
    )


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


def _encode_buckets(
    vectors: np.ndarray, data: Collection, part: Partition, params: BuildParams
) -> tuple[list[bytes], BucketTable]:
    bodies: list[bytes] = []
    keys = dedup_keys(data.ids) if params.replicate > 0 else None
    for rows in part.leaf_rows:
        members = vectors[rows]
        labels = None if data.label_codes is None else data.label_codes[rows]
        ids = IdColumn.from_values(data.ids[rows])
        meta = (
            None
            if data.metadata is None
            else MetadataColumns.from_records([data.metadata[r] for r in rows.tolist()])
        )
        bodies.append(
            encode_bucket(
                members,
                ids,
                labels,
                dtype=params.dtype,
                keys=None if keys is None else keys[rows],
                metadata=meta,
            )
        )
    table = BucketTable(
        fingerprints=[fingerprint(body) for body in bodies],
        sizes=np.array([len(body) for body in bodies], dtype=np.int64),
        rows=np.array([len(rows) for rows in part.leaf_rows], dtype=np.int64),
        centroids=part.centroids,
    )
    return bodies, table


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 1)
