"""The exact k-NN kernel (kdbuckets.scoring) through the Searcher, on moto S3.

Pinned: a vector stored in several buckets comes back once whatever its id (negative ints
included); memory stays bounded for every request the size cap accepts; buckets are read in
rounds bounded by bytes but ordinary requests take one; widening (filtered or short queries)
reads only buckets not read before in the request; probing every bucket is exact for every
metric far from the origin; a query returns min(k, count) results unless a filter or
``max_probes`` says why not, and ``stats.complete`` says which queries such a bound cut short.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import numpy as np
import pytest

from kdbuckets import distances, scoring
from kdbuckets.builder import BuildParams, BuildResult, build_index
from kdbuckets.collection import make_collection
from kdbuckets.errors import InvalidRequest
from kdbuckets.filters import parse_filter
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore

ALL_PROBES = 4096


@pytest.fixture(scope="module")
def store(module_s3_store: ObjectStore) -> ObjectStore:
    return module_s3_store


def build(
    store: ObjectStore,
    name: str,
    vectors: np.ndarray,
    metric: str,
    *,
    ids: np.ndarray | None = None,
    metadata: list[dict[str, Any] | None] | None = None,
    bucket_size: int = 50,
    replicate: float = 0.25,
) -> BuildResult:
    data = make_collection(vectors, ids, None, metric=metric, metadata=metadata)
    params = BuildParams(metric=metric, bucket_size=bucket_size, replicate=replicate, dtype="float32")
    return build_index(store, name, data, params, replace=True)


def brute_force(
    vectors: np.ndarray, queries: np.ndarray, metric: str, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (nq, k) and float64 distances of the true k nearest, on the prepared float32 vectors."""
    v = distances.prepare(vectors, metric).astype(np.float64)
    q = distances.prepare(queries, metric).astype(np.float64)
    if metric == "l2":
        d = np.sqrt(((q[:, None, :] - v[None, :, :]) ** 2).sum(axis=2))
    else:
        d = (1.0 - q @ v.T) if metric == "cosine" else -(q @ v.T)
    rows = np.argsort(d, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(d, rows, axis=1)


class GetRecorder:
    """Wraps ``store.get`` to list the bucket keys a request downloads."""

    def __init__(self, store: ObjectStore) -> None:
        self.inner = store.get
        self.keys: list[str] = []

    def __call__(self, key: str) -> Any:
        if "/buckets/" in key:
            self.keys.append(key)
        return self.inner(key)


# -- 1. duplicates -----------------------------------------------------------------------
def test_a_replicated_vector_with_id_minus_one_comes_back_once(store: ObjectStore) -> None:
    """-1 used to mean "no dedup key", so every copy of id -1 survived deduplication."""
    vectors = np.random.default_rng(1).normal(size=(200, 8)).astype(np.float32)
    ids = np.arange(-1, 199)
    build(store, "negative-ids", vectors, "l2", ids=ids, bucket_size=20, replicate=1.0)
    result = Searcher(store).search("negative-ids", vectors[:1], k=10, probes=100)
    rows, want = brute_force(vectors, vectors[:1], "l2", 10)
    assert result.ids == [ids[rows[0]].tolist()]
    assert len(set(result.ids[0])) == 10
    np.testing.assert_allclose(result.distances, want, atol=1e-6)


def test_entries_without_a_key_are_never_merged_with_keyed_ones() -> None:
    """A bucket without keys (unreplicated) must not collide with any real key value."""
    top = scoring.TopK(1, 3)
    rows = np.array([0])
    top.merge(
        rows,
        score=np.array([[0.1, 0.2]]),
        bucket=np.array([[0, 0]]),
        row=np.array([[0, 1]]),
        key=np.array([[-2, 7]]),
        has_key=np.array([[True, True]]),
        valid=np.array([[True, True]]),
    )
    top.merge(  # same key values, but no keys: different vectors
        rows,
        score=np.array([[0.15, 0.3]]),
        bucket=np.array([[1, 1]]),
        row=np.array([[0, 1]]),
        key=np.array([[-2, 7]]),
        has_key=np.array([[False, False]]),
        valid=np.array([[True, True]]),
    )
    assert top.valid.all()
    assert top.bucket[0].tolist() == [0, 1, 0]
    assert top.row[0].tolist() == [0, 0, 1]
    top.merge(  # key 7 again, with a key and a better score: replaces its copy
        rows,
        score=np.array([[0.01]]),
        bucket=np.array([[2]]),
        row=np.array([[5]]),
        key=np.array([[7]]),
        has_key=np.array([[True]]),
        valid=np.array([[True]]),
    )
    assert top.bucket[0].tolist() == [2, 0, 1]
    assert top.row[0].tolist() == [5, 0, 0]


# -- 2. bounded memory -------------------------------------------------------------------
@pytest.fixture(scope="module")
def wide(store: ObjectStore) -> tuple[np.ndarray, BuildResult]:
    """5,000 × 384 gaussian vectors in ~40 buckets."""
    vectors = np.random.default_rng(7).normal(size=(5000, 384)).astype(np.float32)
    return vectors, build(store, "wide", vectors, "l2", bucket_size=250)


@pytest.mark.parametrize(
    ("nq", "k", "probes"),
    [(1000, 50, 4), (50, 1000, 4), (1000, 50, ALL_PROBES)],
    ids=["many-queries", "large-k", "every-bucket"],
)
def test_a_request_at_the_size_cap_stays_within_200_mb(
    store: ObjectStore, wide: tuple[np.ndarray, BuildResult], nq: int, k: int, probes: int
) -> None:
    """Peak traced allocations of one search at nq × k = MAX_RESULTS, cold cache.

    The Searcher's cache budget is 1 byte, so no decoded bucket outlives the request: what is
    measured is the request's own working set (bucket bodies, decoded rounds, scores, top-k,
    results), not data kept for later requests. The manifest is read before tracing starts.
    """
    assert nq * k == scoring.MAX_RESULTS
    searcher = Searcher(store, cache_bytes=1)
    searcher.manifest("wide")
    queries = np.random.default_rng(8).normal(size=(nq, 384)).astype(np.float32)
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        result = searcher.search("wide", queries, k=k, probes=probes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base <= 200 << 20, f"peak {(peak - base) / 2**20:.0f} MB"
    assert result.distances.shape == (nq, k)
    assert np.isfinite(result.distances).all()
    assert result.stats.fetch_rounds == 1  # 7.7 MB of buckets: one round of GETs


def test_a_request_over_the_round_budget_reads_in_rounds_with_the_same_answer(
    store: ObjectStore, wide: tuple[np.ndarray, BuildResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    vectors, built = wide
    queries = vectors[:30] + 0.01
    one = Searcher(store).search("wide", queries, k=20, probes=ALL_PROBES)
    assert one.stats.fetch_rounds == 1
    monkeypatch.setattr(scoring, "ROUND_BYTES", 1 << 20)  # ~2 buckets per round
    searcher = Searcher(store, cache_bytes=1)
    rounds = searcher.search("wide", queries, k=20, probes=ALL_PROBES)
    assert rounds.stats.fetch_rounds > 10
    gets = rounds.stats.s3_gets - 2 - rounds.stats.parts_fetched  # HEAD, root, its part
    assert rounds.stats.buckets_fetched == gets == built.buckets  # each once
    assert rounds.ids == one.ids
    np.testing.assert_array_equal(rounds.distances, one.distances)
    rows, want = brute_force(vectors, queries, "l2", 20)
    assert rounds.ids == rows.tolist()
    np.testing.assert_allclose(rounds.distances, want, atol=1e-5)


def test_the_result_count_cap_applies_to_library_callers(store: ObjectStore, wide: tuple) -> None:
    queries = np.zeros((51, 384), np.float32)
    with pytest.raises(InvalidRequest) as info:
        Searcher(store).search("wide", queries, k=1000, probes=1)
    assert info.value.field == "vectors, k"


# -- 3. widening reads only new buckets --------------------------------------------------
@pytest.fixture(scope="module")
def tagged(store: ObjectStore) -> tuple[np.ndarray, list[dict[str, Any] | None], BuildResult]:
    """4 clusters of 150 points; 12 "rare" points, all in cluster 3."""
    rng = np.random.default_rng(2024)
    cluster = np.repeat(np.arange(4), 150)
    vectors = (6.0 * np.eye(8, dtype=np.float32)[cluster] + rng.normal(size=(600, 8))).astype(np.float32)
    rare = set(rng.choice(np.flatnonzero(cluster == 3), 12, replace=False).tolist())
    metadata: list[dict[str, Any] | None] = [{"rare": True} if i in rare else {"n": i} for i in range(600)]
    return vectors, metadata, build(store, "tagged", vectors, "l2", metadata=metadata, bucket_size=25)


@pytest.mark.parametrize("cache_bytes", [512 << 20, 1], ids=["cache", "no-cache"])
def test_a_widening_filtered_query_reads_each_bucket_once(
    store: ObjectStore, tagged: tuple, monkeypatch: pytest.MonkeyPatch, cache_bytes: int
) -> None:
    vectors, _, _ = tagged
    searcher = Searcher(store, cache_bytes=cache_bytes)
    searcher.manifest("tagged")
    recorder = GetRecorder(store)
    monkeypatch.setattr(store, "get", recorder)
    queries = vectors[:3] + 0.1  # cluster 0, far from every rare point
    result = searcher.search("tagged", queries, k=10, probes=1, filter=parse_filter({"rare": True}))
    assert result.stats.probes > 2  # it widened more than once
    assert len(recorder.keys) == len(set(recorder.keys)) == result.stats.buckets_fetched
    assert result.stats.cache_hits == 0
    # + the revalidation of HEAD, and the manifest part (searcher.manifest reads the whole version,
    # the query its own way)
    assert result.stats.s3_gets == result.stats.buckets_fetched + 1 + result.stats.parts_fetched
    assert all(m == {"rare": True} for row in result.metadata for m in row)
    assert result.stats.complete == [True] * 3


# -- 4. exact far from the origin --------------------------------------------------------
@pytest.mark.parametrize("offset", [0.0, 10.0, 100.0])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_probing_every_bucket_is_exact_far_from_the_origin(
    store: ObjectStore, metric: str, offset: float
) -> None:
    """500 distinct points at ``offset`` ± 0.01: float32 ‖q‖² − 2q·v + ‖v‖² loses them all."""
    rng = np.random.default_rng(5)
    points = (offset + 0.01 * rng.normal(size=(520, 8))).astype(np.float32)
    vectors, queries = points[:500], points[500:]
    name = f"offset-{metric}-{int(offset)}"
    built = build(store, name, vectors, metric, bucket_size=40)
    result = Searcher(store).search(name, queries, k=10, probes=ALL_PROBES)
    assert result.stats.probes == built.buckets
    rows, want = brute_force(vectors, queries, metric, 10)
    assert result.ids == rows.tolist()
    if metric == "cosine":  # reported distances are clamped at 0 (ranking is not)
        want = np.maximum(want, 0.0)
    np.testing.assert_allclose(result.distances, want, rtol=1e-12, atol=1e-14)


# -- 5. min(k, count) results ------------------------------------------------------------
def test_a_tiny_collection_returns_min_k_count_results(store: ObjectStore) -> None:
    vectors = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
    build(store, "eight", vectors, "l2", bucket_size=2)
    queries = np.random.default_rng(4).normal(size=(20, 4)).astype(np.float32)
    searcher = Searcher(store)
    five = searcher.search("eight", queries, k=5)  # calibrated: recall 1.0 at one bucket
    assert np.isfinite(five.distances).all()
    assert all(len(set(row)) == 5 for row in five.ids)
    assert five.stats.complete == [True] * 20
    ten = searcher.search("eight", queries, k=10)
    assert np.isfinite(ten.distances).sum(axis=1).tolist() == [8] * 20
    assert all(sorted(row[:8]) == list(range(8)) and row[8:] == [None] * 2 for row in ten.ids)
    assert ten.stats.complete == [True] * 20


def test_a_short_query_widens_to_k_results(store: ObjectStore, tagged: tuple) -> None:
    vectors, _, _ = tagged
    result = Searcher(store).search("tagged", vectors[:4], k=200, probes=1)
    assert np.isfinite(result.distances).all()
    assert result.stats.probes > 1
    assert result.stats.complete == [True] * 4
    assert all(len(set(row)) == 200 for row in result.ids)  # no duplicate among replicated copies
    np.testing.assert_allclose(result.distances[:, 0], 0.0, atol=1e-6)
    assert np.all(np.diff(result.distances, axis=1) >= 0)


def test_complete_is_false_where_max_probes_cut_a_filtered_query_short(
    store: ObjectStore, tagged: tuple
) -> None:
    vectors, _, _ = tagged
    queries = np.vstack([vectors[:1] + 0.1, vectors[-1:]])  # cluster 0 (no rare), cluster 3
    rare = parse_filter({"rare": True})
    result = Searcher(store).search("tagged", queries, k=3, probes=1, max_probes=2, filter=rare)
    found = np.isfinite(result.distances).sum(axis=1)
    assert found[0] < 3
    assert result.stats.complete == [False, bool(found[1] == 3)]
    assert result.stats.as_dict()["complete"] == result.stats.complete
    unbounded = Searcher(store).search("tagged", queries, k=3, probes=1, filter=rare)
    assert unbounded.stats.complete == [True, True]
    assert np.isfinite(unbounded.distances).all()


def test_rounds_split_by_decoded_bytes_and_keep_at_least_one_bucket() -> None:
    sizes = np.array([40, 40, 40, 200, 10], np.int64)
    needed = np.arange(5)
    assert [r.tolist() for r in scoring.plan_rounds(needed, sizes, "float32", budget=1000)] == [
        [0, 1, 2, 3, 4]
    ]
    assert [r.tolist() for r in scoring.plan_rounds(needed, sizes, "float32", budget=100)] == [
        [0, 1],
        [2],
        [3],
        [4],
    ]
    assert [r.tolist() for r in scoring.plan_rounds(needed, sizes, "float16", budget=100)] == [
        [0],
        [1],
        [2],
        [3],
        [4],
    ]
    assert scoring.plan_rounds(np.zeros(0, np.int64), sizes, "float32") == []
