"""How a collection is split into buckets: the average-split tree, refined and spilled.

Kept apart from the builder (which encodes, uploads and publishes) so that calibration, the
builder and later a distributed build can all partition without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .manifest import stored_centroids
from .projection import fit_pca, project
from .refine import lloyd, spill
from .tree import Tree, build_tree, with_basis

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


def partition(vectors: np.ndarray, params: BuildParams) -> Partition:
    """Split prepared vectors (n, d) into leaves of the average-split tree.

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
    # queries rank by the centroids as the manifest stores them: calibrate with exactly those
    centroids = stored_centroids(centroids, params.dtype)
    return Partition(with_basis(tree, basis), leaf_rows, centroids, primary, secondary)
