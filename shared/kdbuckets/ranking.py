"""Which buckets a query should read first.

Both the searcher and the build-time recall calibration rank buckets through this module, so
the calibration curve stored in a manifest describes exactly what queries will do.

- ``centroid``: distance from the query to each bucket's centroid (squared l2; for ``ip``
  the negated inner product) — the ranking IVF indexes use, and the default;
- ``bbf``: best-bin-first penalties on the tree's splitting planes (the original design).

A manifest stored in parts (:mod:`kdbuckets.hierarchy`) ranks ``centroid`` in *tiers*: a
query's parts are ordered by their routing centroids, tier t holding its parts number
``t·route_parts … (t+1)·route_parts − 1`` in that order; buckets are read tier by tier, and
by centroid score within a tier. So a query needs only the parts of the tiers its probes
reach — usually the first — and the order is one total order per query, which is what the
calibration measures (:func:`tiered_positions`). With one part it is the flat ranking.
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
    return centroid_scores(queries, centroids, metric)


#: Tier of a bucket never worth reading (it holds no rows): after every real tier.
NEVER = np.iinfo(np.int64).max


def centroid_scores(queries: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """Smaller-is-better distance of every centroid to every query — (nq, n_centroids)."""
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


def part_order(
    queries: np.ndarray, part_centroids: np.ndarray, part_nonempty: np.ndarray, metric: str
) -> np.ndarray:
    """Each query's parts, nearest routing centroid first, parts without rows last — (nq, P)."""
    scores = centroid_scores(queries, part_centroids, metric)
    scores[:, part_nonempty == 0] = np.inf
    return np.argsort(scores, axis=1, kind="stable")


def parts_needed(order: np.ndarray, part_nonempty: np.ndarray, probes: int, route_parts: int) -> np.ndarray:
    """How many of each query's ordered parts its ``probes`` reach, in whole tiers — (nq,)."""
    cum = np.cumsum(part_nonempty[order], axis=1)
    reach = (cum < probes).sum(axis=1) + 1  # parts up to the one where the probes are used up
    tiers = -(-reach // route_parts)
    return np.minimum(order.shape[1], tiers * route_parts)


def bucket_tiers(
    order: np.ndarray, bucket_part: np.ndarray, bucket_rows: np.ndarray, route_parts: int
) -> np.ndarray:
    """Tier of every bucket for every query (:data:`NEVER` for an empty bucket) — (nq, nb)."""
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    tiers = rank[:, bucket_part] // route_parts
    tiers[:, bucket_rows == 0] = NEVER
    return tiers


def tiered_top(scores: np.ndarray, tiers: np.ndarray, probes: int) -> np.ndarray:
    """The ``probes`` first buckets per query in (tier, score) order — (nq, probes)."""
    probes = min(probes, scores.shape[1])
    never = tiers == NEVER
    masked = np.where(never, np.inf, scores)
    real = tiers[~never]
    if real.size == 0 or real.max() == real.min():  # one tier: the flat ranking
        return top_buckets(masked, probes)
    return np.lexsort((masked, tiers), axis=1)[:, :probes]


def tiered_positions(scores: np.ndarray, tiers: np.ndarray) -> np.ndarray:
    """Read position of every bucket for every query in (tier, score) order — (nq, nb)."""
    order = np.lexsort((scores, tiers), axis=1)
    positions = np.empty_like(order)
    np.put_along_axis(positions, order, np.broadcast_to(np.arange(order.shape[1]), order.shape), axis=1)
    return positions
