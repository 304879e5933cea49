"""Which version a query answers from: strong by default (read-your-writes), eventual on request."""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import writer
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.errors import InvalidRequest
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore

PARAMS = BuildParams(metric="l2", bucket_size=20, refine=0, replicate=0.0)
RNG = np.random.default_rng(3)


def build(store: ObjectStore, dim: int = 8, **kwargs: object) -> str:
    vectors = RNG.normal(size=(100, dim)).astype(np.float32)
    return build_index(
        store, "docs", make_collection(vectors, None, None, metric="l2"), PARAMS, **kwargs
    ).version


def test_an_acknowledged_write_is_visible_to_the_next_query_of_a_warm_searcher(s3_store: ObjectStore) -> None:
    build(s3_store)
    searcher = Searcher(s3_store, head_ttl=3600)  # however long HEAD may be trusted...
    searcher.search("docs", RNG.normal(size=(1, 8)).astype(np.float32), k=1)
    new = np.full((1, 8), 50.0, dtype=np.float32)
    written = writer.write(s3_store, "docs", upserts=make_collection(new, np.array([999]), None, metric="l2"))

    result = searcher.search("docs", new, k=1)  # ...the default is strong: the write is seen

    assert result.version == written.version
    assert result.ids == [[999]]
    assert result.stats.consistency == "strong"


def test_eventual_consistency_may_answer_from_the_version_within_head_ttl(s3_store: ObjectStore) -> None:
    first = build(s3_store)
    searcher = Searcher(s3_store, head_ttl=3600)
    query = RNG.normal(size=(1, 8)).astype(np.float32)
    searcher.search("docs", query, k=1)
    writer.write(s3_store, "docs", deletes=np.arange(50))

    stale = searcher.search("docs", query, k=1, consistency="eventual")

    assert stale.version == first  # within the documented staleness bound
    assert stale.stats.s3_gets == 0
    assert stale.stats.consistency == "eventual"


def test_the_first_query_after_a_rebuild_with_another_dimension_succeeds(s3_store: ObjectStore) -> None:
    build(s3_store, dim=8)
    searcher = Searcher(s3_store)
    searcher.search("docs", RNG.normal(size=(1, 8)).astype(np.float32), k=1)  # warm on the 8-d version
    rebuilt = build(s3_store, dim=16, replace=True)

    result = searcher.search("docs", RNG.normal(size=(1, 16)).astype(np.float32), k=3)

    assert result.version == rebuilt
    assert len(result.ids[0]) == 3
    with pytest.raises(InvalidRequest, match=r"^vectors\[0\] has 8 dimensions; collection 'docs' has 16"):
        searcher.search("docs", RNG.normal(size=(1, 8)).astype(np.float32), k=1)


def test_a_pinned_version_reports_pinned_consistency(s3_store: ObjectStore) -> None:
    version = build(s3_store)
    result = Searcher(s3_store).search("docs", RNG.normal(size=(1, 8)).astype(np.float32), version=version)
    assert result.stats.consistency == "pinned"


def test_an_unknown_consistency_names_the_field(s3_store: ObjectStore) -> None:
    build(s3_store)
    with pytest.raises(InvalidRequest, match=r"^consistency must be one of"):
        Searcher(s3_store).search("docs", RNG.normal(size=(1, 8)).astype(np.float32), consistency="sometimes")
