"""How a collection is split into buckets: the average-split tree, refined and spilled.

Kept apart from the builder (which encodes, uploads and publishes) so that calibration, the
builder and later a distributed build can all partition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .maintenance import split_plane
from .manifest import stored_centroids
from .projection import fit_pca, project
from .refine import lloyd, spill
from .tree import MutableTree, Tree, build_tree, with_basis

if TYPE_CHECKING:
    from .builder import BuildParams


@dataclass(frozen=True)
class Partition:
    """How the collection is split into buckets (bucket ``b`` is tree leaf ``b``).

    leaf_rows : rows stored in each bucket (primary members first, then spilled copies).
    centroids : (nb, d) routing centroid of each bucket (mean of its primary members).
    primary : (n,) bucket of every row; secondary : (n,) second bucket or -1.
    """

    tree: Tree
    leaf_rows: list[np.ndarray]
    centroids: np.ndarray
    primary: np.ndarray
    secondary: np.ndarray


def partition(vectors: np.ndarray, params: BuildParams, *, bounded: bool = False) -> Partition:
    """Split prepared vectors (n, d) into leaves of the average-split tree.

    ``bounded`` (compaction): a leaf that refinement or replication left with more than
    ``bucket_size`` rows is then split (:func:`bound_leaves`), so every bucket is bounded.

    Memory: besides ``vectors`` only the rotated coordinates (one float32 copy, freed once the
    tree is built) and a training sample for Lloyd's iterations are ever whole.
    """
    basis = fit_pca(vectors, seed=params.seed) if params.projection == "pca" else None
    coords = vectors if basis is None else project(vectors, basis)
    tree, leaf_of_row = build_tree(
        coords,
        bucket_size=params.bucket_size,
        max_depth=params.max_depth,
        seed=params.seed,
        split=params.split,
    )
    del coords  # the rotated copy is the build's largest allocation after the vectors: drop it now
    n_leaves = tree.n_leaves
    primary, centroids = lloyd(vectors, leaf_of_row, n_leaves, iterations=params.refine, seed=params.seed)
    secondary = spill(vectors, primary, centroids, params.replicate)
    spilled = np.flatnonzero(secondary >= 0)
    owner = np.concatenate([primary, secondary[spilled]])
    rows = np.concatenate([np.arange(len(vectors)), spilled])
    order = np.argsort(owner, kind="stable")  # primaries (lower positions) stay first
    bounds = np.searchsorted(owner[order], np.arange(n_leaves + 1))
    leaf_rows = [rows[order[bounds[i] : bounds[i + 1]]] for i in range(n_leaves)]
    tree = with_basis(tree, basis)
    if bounded:
        tree, leaf_rows, centroids = bound_leaves(
            vectors, tree, leaf_rows, centroids, primary, secondary, params.bucket_size
        )
    # queries rank by the centroids as the manifest stores them: calibrate with exactly those
    centroids = stored_centroids(centroids, params.dtype)
    return Partition(tree, leaf_rows, centroids, primary, secondary)


def bound_leaves(
    vectors: np.ndarray,
    tree: Tree,
    leaf_rows: list[np.ndarray],
    centroids: np.ndarray,
    primary: np.ndarray,
    secondary: np.ndarray,
    bucket_size: int,
) -> tuple[Tree, list[np.ndarray], np.ndarray]:
    """Split every leaf holding more than ``bucket_size`` rows, as a write splits a bucket.

    The same cut as the write path (:func:`kdbuckets.maintenance.split_plane`); the leaf becomes
    a tree node with two leaves, the new one numbered after all others. ``primary`` and
    ``secondary`` (n,) follow the rows that move (updated in place). Returns the tree, the rows
    of every leaf and the centroids (mean of each leaf's primary members, else of all its rows).
    """
    mutable = MutableTree(tree)
    rows = list(leaf_rows)
    cents = list(centroids)
    pending = [b for b, r in enumerate(rows) if len(r) > bucket_size]
    while pending:
        b = pending.pop()
        cut = split_plane(vectors[rows[b]], seed=b)
        if cut is None:  # identical vectors: nothing separates them
            continue
        direction, threshold, right = cut
        new = len(rows)
        mutable.split_leaf(b, new, direction, threshold)
        moved = rows[b][right]
        is_primary = primary[moved] == b
        primary[moved[is_primary]] = new
        secondary[moved[~is_primary]] = new
        rows[b] = rows[b][~right]
        rows.append(moved)
        cents.append(cents[b])
        for leaf in (b, new):
            members = rows[leaf][primary[rows[leaf]] == leaf]
            source = members if len(members) else rows[leaf]
            if len(source):
                cents[leaf] = vectors[source].mean(axis=0)
            if len(rows[leaf]) > bucket_size:
                pending.append(leaf)
    return mutable.freeze(), rows, np.asarray(cents, dtype=np.float32)
