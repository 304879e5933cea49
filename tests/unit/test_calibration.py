"""Recall calibration per k: the default recall target holds at k = 1, 10, 100 and 1,000.

``recall_target`` used to mean recall@10 whatever k was: on a 3,000-vector collection a
``k: 1000`` query at the default target read one bucket and reached recall 0.69 against exact
search. The build now stores a recall curve per k (``kdbuckets.calibration.KS``) and a query
uses the one for its k. These tests pin: the default target measured on held-out queries at
each k, the stored shape (old manifests with one k = 10 curve still decode and answer as
before), the rule between calibrated k, and the exact neighbours the curves are built from.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from kdbuckets import distances, manifest
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.calibration import KS, MARGIN, calibrate, curves_by_k, exact_neighbours, probes_for
from kdbuckets.collection import make_collection
from kdbuckets.errors import CorruptObject
from kdbuckets.partition import partition
from kdbuckets.ranking import bucket_positions, bucket_scores
from kdbuckets.searcher import DEFAULT_RECALL_TARGET, QueryStats, Searcher
from kdbuckets.storage import ObjectStore

N, HELD_OUT, DIM = 3000, 200, 24
#: Recall a held-out query set may fall short of the target by: the calibration sample is
#: 512 of the collection's own vectors, and 200 held-out queries measure recall to ~±0.01.
TOLERANCE = 0.02


def overlapping_clusters(n: int, d: int, seed: int) -> np.ndarray:
    """Anisotropic Gaussian clusters of Zipf sizes, overlapping (as bench/datasets.py's)."""
    rng = np.random.default_rng(seed)
    clusters = 12
    centres = rng.normal(size=(clusters, d))
    scales = rng.uniform(0.25, 0.6, size=(clusters, d))
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    which = rng.choice(clusters, size=n, p=weights / weights.sum())
    return (centres[which] + rng.normal(size=(n, d)) * scales[which]).astype(np.float32)


def brute_force(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids (nq, k) of the exact l2 neighbours, in float64 over the stored float32 values."""
    v = distances.prepare(vectors, "l2").astype(np.float64)
    q = distances.prepare(queries, "l2").astype(np.float64)
    d = (q**2).sum(1)[:, None] - 2.0 * q @ v.T + (v**2).sum(1)[None, :]
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def recall(found: list[list[int | str | None]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth.tolist(), strict=True)]))


@pytest.fixture(scope="module")
def collection(module_s3_store: ObjectStore) -> tuple[ObjectStore, np.ndarray, np.ndarray]:
    """One 3,000-vector collection per bucket size (1000 is the default), float32 buckets."""
    points = overlapping_clusters(N + HELD_OUT, DIM, seed=11)
    vectors, queries = points[:N], points[N:]
    data = make_collection(vectors, None, None, metric="l2")
    for bucket_size in (1000, 100):
        params = BuildParams(metric="l2", bucket_size=bucket_size, dtype="float32")
        build_index(module_s3_store, f"cal-{bucket_size}", data, params)
    return module_s3_store, vectors, queries


# -- the promise ---------------------------------------------------------------------------
@pytest.mark.parametrize("bucket_size", [1000, 100])
@pytest.mark.parametrize("k", [1, 10, 100, 1000])
def test_default_target_holds_on_held_out_queries_at_every_k(
    collection: tuple[ObjectStore, np.ndarray, np.ndarray], k: int, bucket_size: int
) -> None:
    store, vectors, queries = collection
    searcher, ids, probes = Searcher(store), [], []
    step = 50_000 // k  # a response carries at most 50,000 results
    for start in range(0, len(queries), step):
        result = searcher.search(f"cal-{bucket_size}", queries[start : start + step], k=k)
        assert result.stats.recall_target == DEFAULT_RECALL_TARGET
        ids += result.ids
        probes.append(result.stats.probes)
    achieved = recall(ids, brute_force(vectors, queries, k))
    assert achieved >= DEFAULT_RECALL_TARGET - TOLERANCE, (k, probes, achieved)


def test_a_larger_k_reads_more_buckets_than_k_10(
    collection: tuple[ObjectStore, np.ndarray, np.ndarray],
) -> None:
    store, _, queries = collection
    searcher = Searcher(store)
    ten = searcher.search("cal-100", queries[:5], k=10).stats.probes
    thousand = searcher.search("cal-100", queries[:5], k=1000).stats.probes
    assert thousand > ten


def test_the_build_stores_a_curve_for_every_calibrated_k(
    collection: tuple[ObjectStore, np.ndarray, np.ndarray],
) -> None:
    store, _, _ = collection
    m = Searcher(store).manifest("cal-100")
    cal = m.extra["calibration"]
    assert (cal["k"], cal["sample"]) == (10, 512)
    curves = curves_by_k(cal)
    assert list(curves) == list(KS)
    for curve in curves.values():
        assert curve == sorted(curve)
        assert curve[-1] == 1.0
        assert len(curve) <= m.n_buckets
    # a farther neighbour is harder to reach: at 1 probe recall@1000 is below recall@10
    assert curves[1000][0] < curves[10][0]


# -- the curves ----------------------------------------------------------------------------
def test_each_curve_matches_a_direct_measurement_on_the_same_sample() -> None:
    vectors = distances.prepare(overlapping_clusters(1500, 8, seed=3), "l2")
    part = partition(vectors, BuildParams(metric="l2", bucket_size=60))
    cal = calibrate(vectors, part, "l2", "centroid", seed=4)
    sample = np.sort(np.random.default_rng(5).choice(len(vectors), 512, replace=False))
    q = vectors[sample].astype(np.float64)
    d = ((q[:, None, :] - vectors[None].astype(np.float64)) ** 2).sum(axis=2)
    d[np.arange(len(sample)), sample] = np.inf
    truth = np.argsort(d, axis=1)[:, :1000]
    pos = bucket_positions(bucket_scores(vectors[sample], part.centroids, part.tree, "l2", "centroid"))
    rows = np.arange(len(sample))[:, None]
    sec = part.secondary[truth]
    first = np.where(
        sec >= 0,
        np.minimum(pos[rows, part.primary[truth]], pos[rows, np.maximum(sec, 0)]),
        pos[rows, part.primary[truth]],
    )
    curves = curves_by_k(cal)
    for k in (1, 20, 200, 1000):
        for p in (1, 3, 10):
            want = float((first[:, :k] < p).mean())
            got = curves[k][p - 1] if p <= len(curves[k]) else 1.0
            assert got == pytest.approx(want, abs=1e-4), (k, p)


def test_a_small_collection_is_calibrated_up_to_n_minus_1() -> None:
    vectors = distances.prepare(overlapping_clusters(40, 4, seed=6), "l2")
    part = partition(vectors, BuildParams(metric="l2", bucket_size=5))
    cal = calibrate(vectors, part, "l2", "centroid", seed=0)
    assert cal["sample"] == 40
    assert list(curves_by_k(cal)) == [1, 2, 5, 10, 20, 39]
    assert curves_by_k(cal)[39][-1] == 1.0
    tiny = distances.prepare(overlapping_clusters(5, 4, seed=6), "l2")
    cal = calibrate(tiny, partition(tiny, BuildParams(metric="l2", bucket_size=2)), "l2", "centroid", seed=0)
    assert cal["k"] == 4  # the top-level curve: the k nearest to 10
    assert list(curves_by_k(cal)) == [1, 2, 4]


def test_exact_neighbours_equal_float64_brute_force_far_from_the_origin() -> None:
    rng = np.random.default_rng(8)
    points = (1e4 + 0.01 * rng.normal(size=(700, 6))).astype(np.float32)
    exclude = np.array([3, 150, 699])
    got = exact_neighbours(points[exclude], points, exclude, "l2", 50)
    v = points.astype(np.float64)
    d = ((v[exclude][:, None, :] - v[None]) ** 2).sum(axis=2)
    d[np.arange(3), exclude] = np.inf
    # the float32 grid at 1e4 makes exact ties: compare the distances reached, not the order
    want = np.sort(d, axis=1)[:, :50]
    np.testing.assert_array_equal(np.take_along_axis(d, got, axis=1), want)


def test_exact_neighbours_cross_block_boundaries(monkeypatch: pytest.MonkeyPatch) -> None:
    from kdbuckets import calibration

    monkeypatch.setattr(calibration, "BLOCK", 64)
    vectors = distances.prepare(overlapping_clusters(500, 5, seed=9), "cosine")
    sample = np.arange(0, 500, 37)
    got = exact_neighbours(vectors[sample], vectors, sample, "cosine", 120)
    d = -(vectors[sample].astype(np.float64) @ vectors.T.astype(np.float64))
    d[np.arange(len(sample)), sample] = np.inf
    np.testing.assert_array_equal(got, np.argsort(d, axis=1, kind="stable")[:, :120])


# -- choosing probes -----------------------------------------------------------------------
PER_K = {  # sample 0: no standard error, the k rule alone (see the test of the noise rule)
    "k": 10,
    "sample": 0,
    "recall": [0.8, 0.97, 1.0],  # k = 10: 2 probes for 0.95
    "curves": [
        {"k": 1, "recall": [0.97, 1.0]},  # 1 probe
        {"k": 100, "recall": [0.5, 0.8, 0.9, 0.96, 1.0]},  # 4 probes
        {"k": 1000, "recall": [0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99]},  # 7 probes
    ],
}


def test_probes_for_uses_the_curve_of_the_k_asked() -> None:
    assert [probes_for(PER_K, 0.95, 20, k) for k in (1, 10, 100, 1000)] == [1, 2, 4, 7]


def test_probes_for_between_two_calibrated_k_takes_the_larger_count() -> None:
    assert probes_for(PER_K, 0.95, 20, 2) == 2
    assert probes_for(PER_K, 0.95, 20, 11) == 4
    assert probes_for(PER_K, 0.95, 20, 999) == 7
    # a curve that needs fewer probes at the larger k (sampling noise) does not lower the answer
    odd = {"k": 10, "sample": 0, "recall": [0.5, 1.0], "curves": [{"k": 100, "recall": [1.0]}]}
    assert probes_for(odd, 0.95, 5, 50) == 2


def test_probes_for_outside_the_calibrated_ks_uses_the_nearest_curve() -> None:
    small = {"k": 10, "sample": 0, "recall": [0.96], "curves": [{"k": 49, "recall": [0.5, 0.99]}]}
    assert probes_for(small, 0.95, 6, 1) == 1
    assert probes_for(small, 0.95, 6, 1000) == 2


def test_a_curve_point_counts_one_standard_error_below_its_value() -> None:
    # 512 queries at k = 1: 0.9648 ± 0.0081 is not surely 0.96; 0.9746 ± 0.0069 is
    cal = {"k": 1, "sample": 512, "recall": [0.9, 0.9648, 0.9746, 1.0]}
    assert probes_for(cal, 0.95, 9, 1) == 3
    # the same curve over 512 × 100 neighbours: ± 0.0008
    assert probes_for({**cal, "k": 100}, 0.95, 9, 100) == 2
    assert probes_for({**cal, "sample": 0}, 0.95, 9, 1) == 2


def test_an_old_manifest_with_only_a_k10_curve_answers_every_k_as_before() -> None:
    old = {"k": 10, "sample": 512, "recall": [0.8, 0.9, 0.955, 0.965, 1.0]}
    for k in (1, 10, 11, 100, 1000):
        assert probes_for(old, 0.95, 9, k) == 4  # 0.95 + MARGIN first reached at 4 probes
    assert MARGIN == 0.01
    assert probes_for({"recall": [0.5]}, 0.95, 7, 1000) == 7  # never reached: read everything


def test_the_searcher_picks_probes_by_k_and_an_old_manifest_by_its_one_curve(
    collection: tuple[ObjectStore, np.ndarray, np.ndarray],
) -> None:
    store, _, _ = collection
    searcher = Searcher(store)
    m = searcher.manifest("cal-100")
    cal = m.extra["calibration"]
    for k in (1, 10, 100, 1000):
        want = probes_for(cal, 0.9, m.n_buckets, k)
        assert searcher._resolve_probes(m, None, 0.9, QueryStats(), k) == want
    old = dataclasses.replace(m, extra={"calibration": {key: cal[key] for key in ("k", "sample", "recall")}})
    want = probes_for(old.extra["calibration"], 0.95, m.n_buckets)
    assert searcher._resolve_probes(old, None, None, QueryStats(), 1000) == want


# -- the stored shape ----------------------------------------------------------------------
def test_the_decoder_accepts_the_old_and_the_new_shape() -> None:
    manifest._check_calibration("m", None)
    manifest._check_calibration("m", {"k": 10, "sample": 3, "recall": [0.5, 1.0]})
    manifest._check_calibration("m", PER_K)


@pytest.mark.parametrize(
    "curves",
    [
        "not a list",
        [[0.5, 1.0]],
        [{"k": 0, "recall": [1.0]}],
        [{"k": "100", "recall": [1.0]}],
        [{"k": True, "recall": [1.0]}],
        [{"k": 100, "recall": [1.5]}],
        [{"k": 100, "recall": [float("nan")]}],
        [{"k": 100}],
        [{"k": 10, "recall": [1.0]}],  # the top-level k again
        [{"k": 100, "recall": [1.0]}, {"k": 100, "recall": [0.9, 1.0]}],
    ],
)
def test_the_decoder_rejects_malformed_curves(curves: object) -> None:
    with pytest.raises(CorruptObject, match="calibration"):
        manifest._check_calibration("m", {"k": 10, "sample": 3, "recall": [1.0], "curves": curves})


def test_the_decoder_rejects_a_top_level_k_below_1() -> None:
    with pytest.raises(CorruptObject, match="recall curve"):
        manifest._check_calibration("m", {"k": 0, "sample": 3, "recall": [1.0]})
