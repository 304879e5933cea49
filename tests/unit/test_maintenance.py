"""Local split / merge / reassign of a write (kdbuckets.maintenance) and compaction's bound."""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import catalog, maintenance, writer
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore

DIM = 8
REFINED = BuildParams(metric="l2", bucket_size=20, dtype="float32")  # refine 10, replicate 0.25


def _build(store: ObjectStore, name: str, n: int = 200, seed: int = 3) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    build_index(store, name, make_collection(vectors, np.arange(n), None, metric="l2"), REFINED)
    return vectors


def _all_found(store: ObjectStore, name: str, vectors: np.ndarray, ids: np.ndarray) -> None:
    """Every live id is its own nearest neighbour at distance ~0, reading every bucket."""
    m = catalog.read_live(store, name).manifest
    got = Searcher(store).search(name, vectors, k=1, probes=m.n_buckets)
    assert [r[0] for r in got.ids] == ids.tolist()
    assert np.allclose(got.distances[:, 0], 0.0, atol=1e-5)


@pytest.mark.parametrize("method", ["average", "kmeans"])
def test_split_plane_cuts_two_clusters_apart_and_matches_float32_routing(method: str) -> None:
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(size=(30, DIM)), rng.normal(size=(10, DIM)) + 6]).astype(np.float32)

    direction, threshold, right = maintenance.split_plane(x, method)

    assert direction.dtype == np.float32
    assert 0 < right.sum() < len(x)
    assert np.array_equal(right, x @ direction >= np.float32(threshold))
    assert right[:30].all() != right[30:].all()  # the two clusters end on different sides


def test_split_plane_of_identical_rows_is_none() -> None:
    assert maintenance.split_plane(np.ones((5, DIM), np.float32)) is None


def test_skewed_upserts_keep_refined_buckets_bounded_and_every_id_findable(s3_store: ObjectStore) -> None:
    base = _build(s3_store, "skew")
    centre = catalog.read_live(s3_store, "skew").manifest.buckets.centroids[0]
    crowd = (centre + np.random.default_rng(1).normal(scale=0.05, size=(90, DIM))).astype(np.float32)

    result = writer.write(
        s3_store, "skew", upserts=make_collection(crowd, np.arange(1000, 1090), None, metric="l2")
    )

    m = catalog.read_live(s3_store, "skew").manifest
    assert result.buckets_split >= 2
    assert m.count == result.count == 290
    assert m.buckets.rows.max() <= writer.SPLIT_FACTOR * 20
    _all_found(s3_store, "skew", np.vstack([base, crowd]), np.r_[np.arange(200), np.arange(1000, 1090)])
    # the directory followed every moved row: deleting all of them leaves the build's count
    gone = writer.write(s3_store, "skew", deletes=np.arange(1000, 1090))
    assert (gone.deleted, gone.count) == (90, 200)


def test_a_bucket_emptied_below_the_floor_merges_into_its_neighbours(s3_store: ObjectStore) -> None:
    base = _build(s3_store, "merge")
    m = catalog.read_live(s3_store, "merge").manifest
    target = int(np.argmax(m.buckets.rows))
    members = np.flatnonzero(
        np.argmin(((base[:, None] - m.buckets.centroids[None]) ** 2).sum(-1), 1) == target
    )
    # delete all but a few of the vectors nearest to that bucket's centroid
    result = writer.write(s3_store, "merge", deletes=members[2:])

    after = catalog.read_live(s3_store, "merge").manifest
    small = (after.buckets.rows > 0) & (after.buckets.rows < 20 // maintenance.FLOOR_DIVISOR)
    assert result.count == after.count == 200 - len(members[2:])
    assert after.n_buckets == m.n_buckets  # an emptied bucket stays in the table with 0 rows
    assert not small[target]
    live = np.setdiff1d(np.arange(200), members[2:])
    _all_found(s3_store, "merge", base[live], live)


def test_compact_of_a_refined_collection_bounds_every_bucket(s3_store: ObjectStore) -> None:
    base = _build(s3_store, "compact")
    centre = catalog.read_live(s3_store, "compact").manifest.buckets.centroids[0]
    crowd = (centre + np.random.default_rng(2).normal(scale=0.05, size=(60, DIM))).astype(np.float32)
    writer.write(
        s3_store, "compact", upserts=make_collection(crowd, np.arange(1000, 1060), None, metric="l2")
    )

    writer.compact(s3_store, "compact")

    m = catalog.read_live(s3_store, "compact").manifest
    assert m.buckets.rows.max() <= 20
    assert m.count == 260
    _all_found(s3_store, "compact", np.vstack([base, crowd]), np.r_[np.arange(200), np.arange(1000, 1060)])
