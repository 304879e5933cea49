"""Which buckets a query should read first.

Both the searcher and the build-time recall calibration rank buckets through this module, so
the calibration curve stored in a manifest describes exactly what queries will do.

- ``centroid``: distance from the query to each bucket's centroid (squared l2; for ``ip``
  the negated inner product) — the ranking IVF indexes use, and the default;
- ``bbf``: best-bin-first penalties on the tree's splitting planes (the original design).
"""

from __future__ import annotations

import numpy as np

from .tree import Tree

RANKINGS = ("centroid", "bbf")


def bucket_scores(
    queries: np.ndarray, centroids: np.ndarray, tree: Tree, metric: str, ranking: str
) -> np.ndarray:
    """Smaller-is-better score of every bucket for every query — shape (nq, n_buckets)."""
    if ranking == "bbf":
        return tree.bbf_penalties(queries)
    dots = queries @ centroids.T
    if metric == "ip":
        return -dots
    return np.einsum("ij,ij->i", centroids, centroids)[None, :] - 2.0 * dots


def top_buckets(scores: np.ndarray, probes: int) -> np.ndarray:
    """The ``probes`` best buckets per row of ``scores``, best first — shape (nq, probes)."""
    nb = scores.shape[1]
    probes = min(probes, nb)
    if probes < nb:
        top = np.argpartition(scores, probes - 1, axis=1)[:, :probes]
    else:
        top = np.broadcast_to(np.arange(nb), scores.shape).copy()
    order = np.argsort(np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def bucket_positions(scores: np.ndarray) -> np.ndarray:
    """Rank position of every bucket for every query (0 = read first) — shape (nq, nb)."""
    order = np.argsort(scores, axis=1, kind="stable")
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, np.arange(scores.shape[1])[None, :].repeat(len(scores), 0), axis=1)
    return positions
