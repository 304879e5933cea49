"""The builder, called as a library: building over an existing collection is deliberate."""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import catalog
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.errors import Conflict
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
