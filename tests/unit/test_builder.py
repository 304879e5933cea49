"""The builder, called as a library: building over an existing collection is deliberate; memory-lean
building (vectors prepared in place, buckets uploaded in batches) builds the same index."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kdbuckets import builder, catalog, distances, layout
from kdbuckets.builder import BuildParams, build_index, prepare_vectors, upload_buckets
from kdbuckets.collection import make_collection
from kdbuckets.errors import Conflict, StorageError
from kdbuckets.partition import partition
from kdbuckets.storage import ObjectStore

PARAMS = BuildParams(metric="l2", bucket_size=20, refine=0, replicate=0.0)


def data(dim: int = 8, seed: int = 0) -> object:
    vectors = np.random.default_rng(seed).normal(size=(100, dim)).astype(np.float32)
    return make_collection(vectors, None, None, metric="l2")


def objects(store: ObjectStore) -> set[str]:
    return {o.key for o in store.list_objects("")}


def test_building_over_an_existing_collection_without_replace_is_a_conflict_that_writes_nothing(
    s3_store: ObjectStore,
) -> None:
    first = build_index(s3_store, "docs", data(), PARAMS).version
    before = objects(s3_store)
    with pytest.raises(Conflict, match=r'"replace": true or "expected_version"') as err:
        build_index(s3_store, "docs", data(dim=16, seed=1), BuildParams(metric="cosine"))
    assert first in str(err.value)
    assert objects(s3_store) == before
    assert catalog.read_live(s3_store, "docs").manifest.dim == 8


def test_replace_rebuilds_whatever_version_is_live(s3_store: ObjectStore) -> None:
    first = build_index(s3_store, "docs", data(), PARAMS).version
    second = build_index(s3_store, "docs", data(dim=16), PARAMS, replace=True)
    m = catalog.read_live(s3_store, "docs").manifest
    assert (m.version, m.parent, m.dim) == (second.version, first, 16)


def test_expected_version_rebuilds_only_that_version(s3_store: ObjectStore) -> None:
    first = build_index(s3_store, "docs", data(), PARAMS).version
    with pytest.raises(Conflict, match="not '20200101T000000000000Z-00000000'"):
        build_index(s3_store, "docs", data(), PARAMS, expected_version="20200101T000000000000Z-00000000")
    second = build_index(s3_store, "docs", data(seed=2), PARAMS, expected_version=first).version
    assert catalog.read_live(s3_store, "docs").head.version == second


def test_expected_version_on_a_collection_that_does_not_exist_is_a_conflict(s3_store: ObjectStore) -> None:
    with pytest.raises(Conflict, match="does not exist"):
        build_index(s3_store, "docs", data(), PARAMS, expected_version="20200101T000000000000Z-00000000")
    assert objects(s3_store) == set()


def test_a_first_build_needs_no_flag_and_has_no_parent(s3_store: ObjectStore) -> None:
    built = build_index(s3_store, "docs", data(), PARAMS)
    m = catalog.read_live(s3_store, "docs").manifest
    assert (m.version, m.parent, m.count) == (built.version, None, 100)
    assert built.buckets == m.n_buckets
    assert built.stored_rows == int(m.buckets.rows.sum()) == 100


# -- memory-lean building: in-place preparation, streamed uploads ------------------------------
def clustered(n: int = 400, dim: int = 6, seed: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(5, dim))[rng.integers(0, 5, n)] + 0.2 * rng.normal(size=(n, dim))).astype(
        np.float32
    )


LEAN = BuildParams(metric="cosine", bucket_size=25, seed=1)


def live_manifest(store: ObjectStore, name: str) -> Any:
    return catalog.read_live(store, name).manifest


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
@pytest.mark.parametrize(
    "layout", ["float32", "float64", "strided"], ids=["float32", "float64", "non-contiguous"]
)
def test_prepare_vectors_matches_distances_prepare_bit_for_bit(metric: str, layout: str) -> None:
    v = clustered(n=40_000, dim=5)  # more rows than one preparation chunk
    if layout == "float64":
        v = v.astype(np.float64)
    elif layout == "strided":
        v = np.concatenate([v, v], axis=1)[:, ::2]
    expected = distances.prepare(v, metric)
    assert np.array_equal(prepare_vectors(v, metric), expected)
    copy = v.copy()
    assert np.array_equal(prepare_vectors(copy, metric, in_place=True), expected)


def test_in_place_prepares_the_callers_matrix_and_builds_the_same_index(s3_store: ObjectStore) -> None:
    v = clustered()
    kept = make_collection(v.copy(), None, None, metric="cosine")
    handed_over = make_collection(v.copy(), None, None, metric="cosine")
    build_index(s3_store, "kept", kept, LEAN)
    build_index(s3_store, "over", handed_over, LEAN, in_place=True)
    assert np.array_equal(kept.vectors, v)  # a library caller's collection is never touched
    assert np.allclose(np.linalg.norm(handed_over.vectors, axis=1), 1.0, atol=1e-6)  # prepared in place
    a, b = live_manifest(s3_store, "kept"), live_manifest(s3_store, "over")
    assert a.buckets.fingerprints == b.buckets.fingerprints
    assert a.id_shards == b.id_shards


@pytest.mark.parametrize("batch_bytes", [1, 5_000, 1 << 30])
def test_bucket_uploads_in_batches_give_the_same_table(s3_store: ObjectStore, batch_bytes: int) -> None:
    data = make_collection(clustered(), None, None, metric="cosine")
    vectors = distances.prepare(data.vectors, "cosine")
    part = partition(vectors, LEAN)
    table, written, _ = upload_buckets(
        s3_store, "docs", vectors, data, part.leaf_rows, part.centroids, LEAN, batch_bytes=batch_bytes
    )
    assert len(table) == len(part.leaf_rows) > 5
    assert written == len(set(table.fingerprints))
    stored = {o.key for o in s3_store.list_objects("")}
    assert {layout.bucket_key("docs", fp) for fp in table.fingerprints} == stored
    for fp, size in zip(table.fingerprints, table.sizes.tolist(), strict=True):
        assert len(s3_store.get(layout.bucket_key("docs", fp))[0]) == size
    again, rewritten, _ = upload_buckets(
        s3_store, "docs", vectors, data, part.leaf_rows, part.centroids, LEAN, batch_bytes=1 << 30
    )
    assert again.fingerprints == table.fingerprints
    assert rewritten == 0  # content-addressed: the same buckets are not new


def test_a_failed_batch_upload_publishes_nothing(
    s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = ObjectStore.put_many

    def flaky(self: ObjectStore, items: Any) -> list[bool]:
        calls.append(1)
        if len(calls) == 2:
            raise StorageError("S3 request failed: SlowDown")
        return real(self, items)

    monkeypatch.setattr(builder, "UPLOAD_BATCH_BYTES", 2_000)
    monkeypatch.setattr(ObjectStore, "put_many", flaky)
    with pytest.raises(StorageError):
        build_index(s3_store, "docs", make_collection(clustered(), None, None, metric="cosine"), LEAN)
    assert catalog.read_head(s3_store, "docs") is None
