"""Build a collection's index and publish it atomically.

Publishing is the heart of the storage contract: write every bucket (content-addressed,
``If-None-Match: *``), then the manifest (``If-None-Match: *``), then swap ``HEAD`` with a
conditional write on the ETag read before the build started. Until that last request
succeeds nothing new is reachable from ``HEAD``, so a build that dies midway leaves readers on
the previous version, and two racing builds cannot both win.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from . import distances, layout
from .bucket import IdColumn, dedup_keys, encode_bucket
from .calibration import calibrate
from .codec import fingerprint
from .collection import Collection
from .directory import build_shards, encode_shard, shard_count
from .errors import Conflict, InvalidRequest
from .manifest import BucketTable, Manifest, decode_head, encode_head, encode_manifest
from .metadata import MetadataColumns
from .projection import fit_pca
from .ranking import RANKINGS
from .refine import lloyd, spill
from .storage import NotFound, ObjectStore, PreconditionFailed
from .tree import SPLIT_RULES, Tree, build_tree, with_basis

PROJECTIONS = ("none", "pca")
DTYPES = ("float32", "float16")
MAX_REFINE = 50


@dataclass(frozen=True)
class BuildParams:
    """Knobs of one build, with the defaults a build event gets when it names none."""

    metric: str = "cosine"
    bucket_size: int = 1000
    max_depth: int = 32
    seed: int = 0
    split: str = "spread"
    projection: str = "pca"
    dtype: str = "float32"
    refine: int = 10
    replicate: float = 0.25
    ranking: str = "centroid"

    def __post_init__(self) -> None:
        if not 0 <= self.refine <= MAX_REFINE:
            raise InvalidRequest(
                "refine", f"must be between 0 and {MAX_REFINE} iterations, got {self.refine}"
            )
        if not 0.0 <= self.replicate <= 1.0:
            raise InvalidRequest("replicate", f"must be a fraction between 0 and 1, got {self.replicate}")
        if self.ranking not in RANKINGS:
            raise InvalidRequest("ranking", f"must be one of {list(RANKINGS)}, got {self.ranking!r}")
        if self.metric not in distances.METRICS:
            raise InvalidRequest("metric", f"must be one of {list(distances.METRICS)}, got {self.metric!r}")
        if self.split not in SPLIT_RULES:
            raise InvalidRequest("split", f"must be one of {list(SPLIT_RULES)}, got {self.split!r}")
        if self.projection not in PROJECTIONS:
            raise InvalidRequest("projection", f"must be one of {list(PROJECTIONS)}, got {self.projection!r}")
        if self.dtype not in DTYPES:
            raise InvalidRequest("dtype", f"must be one of {list(DTYPES)}, got {self.dtype!r}")

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


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


@dataclass(frozen=True)
class Partition:
    """How the collection is split into buckets (bucket ``b`` is tree leaf ``b``).

    leaf_rows : rows stored in each bucket (primary members first, then spilled copies).
    centroids : (nb, d) routing centroid of each bucket (mean of its primary members).
    primary : (n,) bucket of every row; secondary : (n,) second bucket or -1.
    """

    tree: Tree
    leaf_rows: list[np.ndarray]
    centroids: np.ndarray
    primary: np.ndarray
    secondary: np.ndarray


def partition(vectors: np.ndarray, params: BuildParams) -> Partition:
    """Split prepared vectors (n, d) into leaves of the average-split tree."""
    basis = fit_pca(vectors, seed=params.seed) if params.projection == "pca" else None
    coords = vectors if basis is None else vectors @ basis.T
    tree, leaf_of_row = build_tree(
        coords,
        bucket_size=params.bucket_size,
        max_depth=params.max_depth,
        seed=params.seed,
        split=params.split,
    )
    n_leaves = tree.n_leaves
    primary, centroids = lloyd(vectors, leaf_of_row, n_leaves, iterations=params.refine, seed=params.seed)
    secondary = spill(vectors, primary, centroids, params.replicate)
    spilled = np.flatnonzero(secondary >= 0)
    owner = np.concatenate([primary, secondary[spilled]])
    rows = np.concatenate([np.arange(len(vectors)), spilled])
    order = np.argsort(owner, kind="stable")  # primaries (lower positions) stay first
    bounds = np.searchsorted(owner[order], np.arange(n_leaves + 1))
    leaf_rows = [rows[order[bounds[i] : bounds[i + 1]]] for i in range(n_leaves)]
    return Partition(with_basis(tree, basis), leaf_rows, centroids, primary, secondary)


def build_index(
    store: ObjectStore,
    collection_name: str,
    data: Collection,
    params: BuildParams,
    *,
    expected_head: tuple[str | None, str | None] | None = None,
) -> BuildResult:
    """Partition ``data``, upload its buckets and publish a new version of the collection.

    ``expected_head`` is the (ETag, version) of HEAD that the publish must replace; by default
    HEAD is read when the build starts.
    """
    layout.check_collection(collection_name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    expected_head, parent = expected_head or _current_head(store, collection_name)
    vectors = distances.prepare(data.vectors, params.metric)
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

    version = new_version()
    manifest = Manifest(
        collection=collection_name,
        version=version,
        parent=parent,
        created_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
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
    mkey = publish(store, manifest, expected_head)
    timings["total_ms"] = _ms(t0)
    return BuildResult(
        collection_name, version, data.count, len(table), written, mkey, timings, int(table.rows.sum())
    )


def publish(store: ObjectStore, manifest: Manifest, expected_head: str | None) -> str:
    """Write ``manifest`` and swap HEAD to it iff HEAD still has ``expected_head`` ETag.

    ``expected_head`` None means "the collection must not exist yet". Raises
    :class:`Conflict` when another writer published in between; our objects then stay
    unreferenced (garbage for a later collection sweep), never visible.
    """
    body = encode_manifest(manifest)
    mkey = layout.manifest_key(manifest.collection, manifest.version)
    store.put(mkey, body, if_absent=True)
    head = encode_head(manifest.version, mkey, fingerprint(body))
    try:
        if expected_head is None:
            store.put(layout.head_key(manifest.collection), head, if_absent=True)
        else:
            store.put(layout.head_key(manifest.collection), head, if_match=expected_head)
    except PreconditionFailed:
        if _head_names(store, manifest):  # our swap landed; only its response was lost
            return mkey
        raise Conflict(
            f"collection {manifest.collection!r} was published by another writer while this "
            f"build ran; version {manifest.version} was not published — retry the build"
        ) from None
    return mkey


def _head_names(store: ObjectStore, manifest: Manifest) -> bool:
    """Does HEAD already name ``manifest``? (A retried PUT whose first attempt succeeded.)"""
    key = layout.head_key(manifest.collection)
    try:
        return decode_head(store.get(key)[0], key=key).version == manifest.version
    except NotFound:
        return False


def new_version() -> str:
    """Sortable, unique version id: UTC time to the microsecond plus 32 random bits."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(4)


def _current_head(store: ObjectStore, collection: str) -> tuple[str | None, str | None]:
    """ETag and version of the live HEAD (both None for a new collection)."""
    key = layout.head_key(collection)
    try:
        body, etag = store.get(key)
    except NotFound:
        return None, None
    return etag, decode_head(body, key=key).version


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
