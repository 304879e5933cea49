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

from . import layout, metrics
from .bucket import IdColumn, encode_bucket
from .codec import fingerprint
from .collection import Collection
from .errors import Conflict, InvalidRequest
from .manifest import BucketTable, Manifest, decode_head, encode_head, encode_manifest
from .projection import fit_pca
from .storage import NotFound, ObjectStore, PreconditionFailed
from .tree import SPLIT_RULES, Tree, build_tree, with_basis

PROJECTIONS = ("none", "pca")
DTYPES = ("float32", "float16")


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

    def __post_init__(self) -> None:
        if self.metric not in metrics.METRICS:
            raise InvalidRequest("metric", f"must be one of {list(metrics.METRICS)}, got {self.metric!r}")
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


@dataclass(frozen=True)
class Partition:
    """The tree plus, for each leaf, the rows of the collection that landed in it."""

    tree: Tree
    leaf_rows: list[np.ndarray]


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
    order = np.argsort(leaf_of_row, kind="stable")
    bounds = np.searchsorted(leaf_of_row[order], np.arange(tree.n_leaves + 1))
    leaf_rows = [order[bounds[i] : bounds[i + 1]] for i in range(tree.n_leaves)]
    return Partition(tree=with_basis(tree, basis), leaf_rows=leaf_rows)


def build_index(
    store: ObjectStore, collection_name: str, data: Collection, params: BuildParams
) -> BuildResult:
    """Partition ``data``, upload its buckets and publish a new version of the collection."""
    layout.check_collection(collection_name)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    expected_head, parent = _current_head(store, collection_name)
    vectors = metrics.prepare(data.vectors, params.metric)
    part = partition(vectors, params)
    timings["partition_ms"] = _ms(t0)

    t1 = time.perf_counter()
    bodies, table = _encode_buckets(vectors, data, part.leaf_rows, params.dtype)
    timings["encode_ms"] = _ms(t1)

    t2 = time.perf_counter()
    written = store.put_many(
        (layout.bucket_key(collection_name, fp), body)
        for fp, body in zip(table.fingerprints, bodies, strict=True)
    )
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
    )
    mkey = publish(store, manifest, expected_head)
    timings["total_ms"] = _ms(t0)
    return BuildResult(collection_name, version, data.count, len(table), written, mkey, timings)


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
        raise Conflict(
            f"collection {manifest.collection!r} was published by another writer while this "
            f"build ran; version {manifest.version} was not published — retry the build"
        ) from None
    return mkey


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
    vectors: np.ndarray, data: Collection, leaf_rows: list[np.ndarray], dtype: str
) -> tuple[list[bytes], BucketTable]:
    bodies: list[bytes] = []
    nb, d = len(leaf_rows), vectors.shape[1]
    centroids = np.zeros((nb, d), dtype=np.float32)
    radii = np.zeros(nb, dtype=np.float32)
    for b, rows in enumerate(leaf_rows):
        members = vectors[rows]
        labels = None if data.label_codes is None else data.label_codes[rows]
        bodies.append(encode_bucket(members, IdColumn.from_values(data.ids[rows]), labels, dtype=dtype))
        centroids[b] = members.mean(axis=0)
        radii[b] = np.sqrt(np.square(members - centroids[b]).sum(axis=1).max())
    table = BucketTable(
        fingerprints=[fingerprint(body) for body in bodies],
        sizes=np.array([len(body) for body in bodies], dtype=np.int64),
        rows=np.array([len(rows) for rows in leaf_rows], dtype=np.int64),
        centroids=centroids,
        radii=radii,
    )
    return bodies, table


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 1)
