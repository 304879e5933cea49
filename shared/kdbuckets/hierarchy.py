"""How a collection's buckets are grouped into manifest parts, and how queries route to parts.

A query must not download every bucket's centroid: at 100M vectors that is tens of thousands
of centroids, hundreds of megabytes. So the manifest is two levels (``manifest.py`` has the
bytes): a *root* with one routing centroid per *part*, and one content-addressed *part* object
per group of buckets, holding those buckets' fingerprints, sizes, rows and centroids. A query
reads the root, routes to its :data:`ROUTE_PARTS` nearest parts, reads those parts (one
parallel round) and ranks only their buckets.

Parts start as subtrees of the k-d tree with at most ``part_buckets`` leaves, cut top-down,
and are then refined by a few Lloyd iterations over the bucket centroids (weighted by rows):
Lloyd refinement moves a bucket's centroid away from its tree cell, and a part is only worth
routing to if its buckets are near each other. The grouping is stored (each part lists its
buckets) and kept by writes: a bucket a write creates joins the part whose routing centroid
is nearest, and every other part keeps its bytes, its fingerprint and its object.

``part_buckets`` 0 means one part: what a single-function build writes (its whole manifest is
small), so its queries rank exactly as a flat manifest would.
"""

from __future__ import annotations

import math

import numpy as np

from .tree import Tree

#: Parts a query reads in its first tier: its nearest ROUTE_PARTS by routing centroid. Measured
#: on 300k × 128 clustered vectors in 4,392 buckets (bench/hierarchy.py has the rerunnable
#: part): probes for recall 0.95 — flat 13; parts of 64, 4 routed: 17; 64 / 8: 14; 32 / 8: 14;
#: 32 / 16: 13 — and cold manifest bytes 1,387 kB flat, 235–371 kB in parts.
ROUTE_PARTS = 8
#: Smallest part a sized build cuts: below this the root's per-part entries outweigh the saving.
MIN_PART_BUCKETS = 32
#: Lloyd iterations over bucket centroids that make parts compact (stops early when stable).
PART_ITERATIONS = 10


def part_buckets_for(n_buckets: int, route_parts: int = ROUTE_PARTS) -> int:
    """Leaves per part that minimise the manifest bytes of a cold query: ~√(nb / route_parts).

    A cold query reads the root (nb / G entries) and ``route_parts`` parts (G entries each);
    their sum is least at G = √(nb / route_parts). Rounded to the nearest power of two (in
    log scale) so that the choice, stored in the manifest, stays put while a collection grows.
    """
    ideal = math.sqrt(max(1, n_buckets) / max(1, route_parts))
    return max(MIN_PART_BUCKETS, 1 << max(0, round(math.log2(ideal))))


def group_buckets(tree: Tree, part_buckets: int) -> list[np.ndarray]:
    """Bucket numbers of each part, parts in depth-first order of the tree.

    Every subtree with at most ``part_buckets`` leaves whose parent has more is one part (a
    leaf directly under an oversized node is a part of one). ``part_buckets`` 0: one part.
    """
    leaves_under = _leaf_counts(tree)
    if part_buckets <= 0 or leaves_under[0] <= part_buckets:
        return [_leaves_below(tree, 0)]
    parts: list[np.ndarray] = []
    stack = [0]
    while stack:
        node = stack.pop()
        if leaves_under[node] <= part_buckets:
            parts.append(_leaves_below(tree, node))
        else:
            stack += [int(tree.right[node]), int(tree.left[node])]  # left popped first
    return parts


def refine_groups(
    groups: list[np.ndarray], centroids: np.ndarray, rows: np.ndarray, iterations: int = PART_ITERATIONS
) -> list[np.ndarray]:
    """Lloyd iterations moving each bucket to the part whose routing centroid is nearest.

    Parts that empty out disappear; the result is ordered by each part's smallest bucket.
    """
    if len(groups) <= 1:
        return groups
    assign = np.empty(len(centroids), np.int64)
    for i, g in enumerate(groups):
        assign[g] = i
    for _ in range(iterations):
        labels = np.unique(assign)
        current = [np.flatnonzero(assign == i) for i in labels]
        routing = routing_centroids(centroids, rows, current)
        nearest = labels[nearest_rows(centroids, routing)]
        if np.array_equal(nearest, assign):
            break
        assign = nearest
    out = [np.flatnonzero(assign == i) for i in np.unique(assign)]
    return sorted(out, key=lambda g: int(g[0]))


def nearest_rows(points: np.ndarray, centres: np.ndarray, block: int = 4096) -> np.ndarray:
    """Index of the nearest row of ``centres`` (squared l2) for each row of ``points``, in blocks."""
    sq = np.einsum("ij,ij->i", centres, centres)
    out = np.empty(len(points), np.int64)
    for start in range(0, len(points), block):
        p = points[start : start + block]
        out[start : start + block] = np.argmin(sq[None, :] - 2.0 * (p @ centres.T), axis=1)
    return out


def routing_centroids(centroids: np.ndarray, rows: np.ndarray, groups: list[np.ndarray]) -> np.ndarray:
    """(parts, d) float32: each part's centroid, its buckets' centroids weighted by their rows.

    An emptied part keeps the plain mean of its (stale) centroids; queries skip it anyway
    (no readable bucket).
    """
    out = np.zeros((len(groups), centroids.shape[1]), dtype=np.float32)
    for i, ids in enumerate(groups):
        w = rows[ids].astype(np.float64)
        c = centroids[ids].astype(np.float64)
        out[i] = (w @ c / w.sum()) if w.sum() > 0 else c.mean(axis=0) if len(ids) else 0.0
    return out


def _leaf_counts(tree: Tree) -> np.ndarray:
    """Leaves in the subtree of every node; children always follow their parent."""
    counts = (tree.node_leaf >= 0).astype(np.int64)
    internal = np.flatnonzero(tree.node_plane >= 0)
    for node in internal[::-1].tolist():  # children have larger numbers: done before their parent
        counts[node] = counts[tree.left[node]] + counts[tree.right[node]]
    return counts


def _leaves_below(tree: Tree, node: int) -> np.ndarray:
    """Bucket numbers under ``node``, ascending (a part lists its buckets in one canonical order)."""
    out: list[int] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if tree.node_plane[n] < 0:
            out.append(int(tree.node_leaf[n]))
        else:
            stack += [int(tree.right[n]), int(tree.left[n])]
    return np.sort(np.asarray(out, dtype=np.int64))
