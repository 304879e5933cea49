"""Lloyd refinement of the tree's leaves, SOAR replication and recall calibration.

The tree gives the first partition; refinement may only make cells tighter, replication
stores a stated share of vectors twice (in two different buckets), and the calibration curve
describes exactly what the centroid ranking reaches.
"""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import distances
from kdbuckets.builder import BuildParams
from kdbuckets.calibration import calibrate, probes_for
from kdbuckets.partition import partition
from kdbuckets.ranking import bucket_positions, bucket_scores
from kdbuckets.refine import centroids_of, lloyd, nearest_centroid, spill


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, d)) * 3.0
    return (centres[rng.integers(0, 20, n)] + rng.normal(size=(n, d))).astype(np.float32)


def within_cell_error(vectors: np.ndarray, assign: np.ndarray, n_cells: int) -> float:
    c = centroids_of(vectors, assign, n_cells)
    return float(np.square(vectors - c[assign]).sum())


def tree_assignment(vectors: np.ndarray, bucket_size: int) -> tuple[np.ndarray, int]:
    part = partition(vectors, BuildParams(metric="l2", bucket_size=bucket_size, refine=0, replicate=0.0))
    assign = np.empty(len(vectors), dtype=np.int64)
    for leaf, rows in enumerate(part.leaf_rows):
        assign[rows] = leaf
    return assign, len(part.leaf_rows)


def test_centroids_are_the_means_of_their_cells_and_empty_cells_keep_the_previous_one() -> None:
    vectors = clustered(500, 6, seed=1)
    assign = np.random.default_rng(0).integers(0, 4, 500)
    previous = np.full((5, 6), 7.0, dtype=np.float32)
    c = centroids_of(vectors, assign, 5, previous=previous)
    for cell in range(4):
        np.testing.assert_allclose(c[cell], vectors[assign == cell].mean(axis=0), rtol=1e-5, atol=1e-5)
    assert np.all(c[4] == 7.0)


def test_nearest_centroid_matches_a_direct_computation_across_chunks() -> None:
    vectors, cents = clustered(1000, 5, seed=2), clustered(30, 5, seed=3)
    direct = np.argmin(((vectors[:, None, :] - cents[None]) ** 2).sum(axis=2), axis=1)
    assert np.array_equal(nearest_centroid(vectors, cents, chunk=128), direct)


@pytest.mark.parametrize("sample_per_cell", [10_000, 16])  # full data, and the sampled path
def test_lloyd_refinement_never_loosens_the_cells_of_the_tree(sample_per_cell: int) -> None:
    vectors = clustered(4000, 8, seed=4)
    assign, n_cells = tree_assignment(vectors, bucket_size=200)
    refined, centroids = lloyd(vectors, assign, n_cells, iterations=10, sample_per_cell=sample_per_cell)
    assert refined.shape == assign.shape
    assert refined.min() >= 0
    assert refined.max() < n_cells
    assert within_cell_error(vectors, refined, n_cells) <= within_cell_error(vectors, assign, n_cells)
    # the routing centroids stored in the manifest are the means of the final cells
    np.testing.assert_allclose(centroids, centroids_of(vectors, refined, n_cells), rtol=1e-5, atol=1e-5)


def test_zero_iterations_keep_the_trees_leaves() -> None:
    vectors = clustered(1000, 4, seed=5)
    assign, n_cells = tree_assignment(vectors, bucket_size=100)
    refined, _ = lloyd(vectors, assign, n_cells, iterations=0)
    assert np.array_equal(refined, assign)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 1.0])
def test_spill_replicates_the_stated_share_into_a_different_bucket(fraction: float) -> None:
    vectors = clustered(2000, 6, seed=6)
    assign, n_cells = tree_assignment(vectors, bucket_size=100)
    assign, centroids = lloyd(vectors, assign, n_cells, iterations=3)
    secondary = spill(vectors, assign, centroids, fraction)
    spilled = secondary >= 0
    assert int(spilled.sum()) == round(fraction * len(vectors))
    assert np.all(secondary[spilled] != assign[spilled])
    assert np.all(secondary[spilled] < n_cells)


def test_spill_prefers_vectors_on_a_cell_border() -> None:
    """Vectors SOAR picks first are, on average, closer to their second centroid."""
    vectors = clustered(3000, 6, seed=7)
    assign, n_cells = tree_assignment(vectors, bucket_size=150)
    assign, centroids = lloyd(vectors, assign, n_cells, iterations=5)
    d = ((vectors[:, None, :] - centroids[None]) ** 2).sum(axis=2)
    d_sorted = np.sort(d, axis=1)
    margin = d_sorted[:, 1] - d_sorted[:, 0]
    spilled = spill(vectors, assign, centroids, 0.2) >= 0
    assert margin[spilled].mean() < margin[~spilled].mean()


def test_partition_with_replication_stores_each_vector_once_or_twice() -> None:
    vectors = clustered(3000, 8, seed=8)
    part = partition(vectors, BuildParams(metric="l2", bucket_size=150, refine=5, replicate=0.25))
    stored = np.concatenate(part.leaf_rows)
    copies = np.bincount(stored, minlength=len(vectors))
    assert set(np.unique(copies).tolist()) == {1, 2}
    assert int((copies == 2).sum()) == round(0.25 * len(vectors))
    for b, rows in enumerate(part.leaf_rows):  # primaries first, then spilled copies
        assert np.all((part.primary[rows] == b) | (part.secondary[rows] == b))


def test_calibration_curve_rises_to_one_and_matches_a_direct_measurement() -> None:
    vectors = distances.prepare(clustered(3000, 8, seed=9), "l2")
    part = partition(vectors, BuildParams(metric="l2", bucket_size=150))
    curve = calibrate(vectors, part, "l2", "centroid", seed=0)["recall"]
    assert curve == sorted(curve)
    assert curve[-1] == 1.0
    assert 0 < curve[0] < 1.0
    # recompute the recall at 2 probes for the same sample by brute force
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(len(vectors), 512, replace=False))
    q = vectors[sample]
    d = ((q[:, None, :] - vectors[None]) ** 2).sum(axis=2)
    d[np.arange(len(sample)), sample] = np.inf
    truth = np.argsort(d, axis=1)[:, :10]
    pos = bucket_positions(bucket_scores(q, part.centroids, part.tree, "l2", "centroid"))
    first = pos[np.arange(len(sample))[:, None], part.primary[truth]]
    sec = part.secondary[truth]
    first = np.where(
        sec >= 0, np.minimum(first, pos[np.arange(len(sample))[:, None], np.maximum(sec, 0)]), first
    )
    assert curve[1] == pytest.approx(float((first < 2).mean()), abs=1e-4)


def test_probes_for_picks_the_fewest_probes_reaching_the_target() -> None:
    cal = {"recall": [0.5, 0.8, 0.93, 0.955, 0.965, 1.0]}
    assert probes_for(cal, 0.79, 10) == 2  # 0.79 + the margin of 0.01
    assert probes_for(cal, 0.95, 10) == 5  # 0.955 is not enough for 0.95 + 0.01
    assert probes_for(cal, 1.0, 10) == 6
    assert probes_for(None, 0.95, 10) is None
    assert probes_for({"recall": [0.5]}, 0.95, 7) == 7  # never reached: read everything
