"""How a collection's buckets are grouped into manifest parts, and how queries route to parts.

A query must not download every bucket's centroid: at 100M vectors that is tens of thousands
of centroids, hundreds of megabytes. So the manifest is two levels (``manifest.py`` has the
bytes): a *root* with one routing centroid per *part*, and one content-addressed *part* object
per group of buckets, holding those buckets' fingerprints, sizes, rows and centroids. A query
reads the root, routes to its :data:`ROUTE_PARTS` nearest parts, reads those parts (one
parallel round) and ranks only their buckets.

Parts are subtrees of the k-d tree with at most ``part_buckets`` leaves, cut top-down: a cell
of the tree is spatially compact, so the buckets a query needs cluster in few parts, and a
write that splits a bucket (the leaf becomes a node with two leaves) changes only the part
that holds it — every other part keeps its bytes, its fingerprint and its object. The
grouping is a pure function of the tree, so it is never stored twice and never disagrees.

``part_buckets`` 0 means one part: what a single-function build writes (its whole manifest is
small), so its queries rank exactly as a flat manifest would.
"""

from __future__ import annotations

import math

import numpy as np

from .tree import Tree

#: Parts a query reads in its first tier: its nearest ROUTE_PARTS by routing centroid. Two is
#: what the WordNet set needs to keep recall at equal probes (bench: --only hierarchy).
ROUTE_PARTS = 2
#: Smallest part a sized build cuts: below this the root's per-part entries outweigh the saving.
MIN_PART_BUCKETS = 64


def part_buckets_for(n_buckets: int, route_parts: int = ROUTE_PARTS) -> int:
    """Leaves per part that minimise the manifest bytes of a cold query: ~√(nb / route_parts).

    A cold query reads the root (nb / G entries) and ``route_parts`` parts (G entries each);
    their sum is least at G = √(nb / route_parts). Rounded up to a power of two so that the
    choice, stored in the manifest, stays put while a collection grows by writes.
    """
    ideal = math.sqrt(max(1, n_buckets) / max(1, route_parts))
    return max(MIN_PART_BUCKETS, 1 << max(0, math.ceil(math.log2(ideal))))


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
    """Bucket numbers under ``node``, left to right."""
    out: list[int] = []
    stack = [node]
    while stack:
        n = stack.pop()
        if tree.node_plane[n] < 0:
            out.append(int(tree.node_leaf[n]))
        else:
            stack += [int(tree.right[n]), int(tree.left[n])]
    return np.asarray(out, dtype=np.int64)
