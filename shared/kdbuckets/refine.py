"""Lloyd refinement of the tree's leaves: move each vector to its nearest leaf centroid.

The average-split tree gives a good, balanced first partition, but its cells are boxes cut
by a few planes, so many vectors sit closer to a neighbouring leaf's centre than to their
own. A few Lloyd (k-means) iterations started from the leaves turn them into compact
Voronoi-like cells: ranking buckets by centroid distance then finds a query's neighbours in
far fewer buckets (measured in bench/REPORT.md).

Each iteration is one chunked matrix product of the vectors against all centroids: restricting
the candidates to a cell's neighbours was measured and lost recall in 384 dimensions, while
BLAS keeps a full assignment of 115k × 154 cells near 0.1 s.
"""

from __future__ import annotations

import numpy as np

#: Training rows per cell when the collection is large (FAISS uses up to 256 too).
SAMPLE_PER_CELL = 256


def centroids_of(
    vectors: np.ndarray, assign: np.ndarray, n_cells: int, previous: np.ndarray | None = None
) -> np.ndarray:
    """Mean of each cell's vectors (n_cells, d); an empty cell keeps its previous centroid."""
    d = vectors.shape[1]
    sums = np.zeros((n_cells, d), dtype=np.float64)
    _scatter_add(sums, vectors, assign)
    counts = np.bincount(assign, minlength=n_cells)
    out = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], 0.0)
    if previous is not None:
        out[counts == 0] = previous[counts == 0]
    return out.astype(np.float32)


def _scatter_add(sums: np.ndarray, vectors: np.ndarray, assign: np.ndarray, chunk: int = 8192) -> None:
    """Per-cell sums via a sort and ``np.add.reduceat`` per chunk of rows (much faster than add.at).

    Chunked so that the sorted float64 copy is a few tens of MB, never the whole matrix.
    """
    for start in range(0, len(vectors), chunk):
        block_assign = assign[start : start + chunk]
        order = np.argsort(block_assign, kind="stable")
        sorted_assign = block_assign[order]
        starts = np.flatnonzero(np.r_[True, sorted_assign[1:] != sorted_assign[:-1]])
        block = vectors[start : start + chunk][order].astype(np.float64)
        sums[sorted_assign[starts]] += np.add.reduceat(block, starts, axis=0)


def lloyd(
    vectors: np.ndarray,
    assign: np.ndarray,
    n_cells: int,
    *,
    iterations: int,
    sample_per_cell: int = SAMPLE_PER_CELL,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine ``assign`` (n,) cell ids by ``iterations`` Lloyd steps started from it.

    Large collections iterate on a random sample of ``sample_per_cell`` rows per cell (as
    FAISS trains its k-means), then assign every vector once to its nearest centroid.

    Returns
    -------
    assign : (n,) int64 final cell of every vector.
    centroids : (n_cells, d) float32 centroids of the final cells.
    """
    n = len(vectors)
    if iterations <= 0:
        return assign, centroids_of(vectors, assign, n_cells)
    budget = sample_per_cell * n_cells
    rows = np.sort(np.random.default_rng(seed).choice(n, budget, replace=False)) if n > budget else None
    train = vectors if rows is None else vectors[rows]
    train_assign = assign if rows is None else assign[rows]
    centroids = centroids_of(train, train_assign, n_cells)
    for _ in range(iterations):
        new_assign = nearest_centroid(train, centroids)
        moved = int(np.count_nonzero(new_assign != train_assign))
        train_assign = new_assign
        centroids = centroids_of(train, train_assign, n_cells, previous=centroids)
        if moved == 0:
            break
    final = nearest_centroid(vectors, centroids) if rows is not None else train_assign
    return final, centroids_of(vectors, final, n_cells, previous=centroids)


#: Size of one (rows × cells) float32 score block in :func:`nearest_centroid`.
SCORE_BLOCK_BYTES = 32 << 20


def nearest_centroid(vectors: np.ndarray, centroids: np.ndarray, chunk: int | None = None) -> np.ndarray:
    """Index of the nearest centroid (squared l2) of every row — shape (n,); chunked matmul.

    Rows go in chunks (by default, as many as keep a score block near
    :data:`SCORE_BLOCK_BYTES`), scored in place (``-2·x·c + ‖c‖²``), so memory does not grow
    with the collection or the number of cells.
    """
    sq = np.einsum("ij,ij->i", centroids, centroids)
    out = np.empty(len(vectors), dtype=np.int64)
    if chunk is None:
        chunk = max(256, min(32_768, SCORE_BLOCK_BYTES // (4 * max(len(centroids), 1))))
    for start in range(0, len(vectors), chunk):
        scores = vectors[start : start + chunk] @ centroids.T
        scores *= -2.0
        scores += sq
        out[start : start + chunk] = np.argmin(scores, axis=1)
    return out


def spill(
    vectors: np.ndarray,
    assign: np.ndarray,
    centroids: np.ndarray,
    fraction: float,
    *,
    candidates: int = 128,
    weight: float = 1.0,
) -> np.ndarray:
    """Second bucket for the ``fraction`` of vectors that most need one; -1 for the rest.

    A vector near a cell border has true neighbours on both sides; storing it twice lets a
    query find it from either cell. The second cell is chosen as SOAR does (Sun et al.,
    2023): minimise ``||x - c'||² + weight · <r, x - c'>² / ||r||²`` with ``r = x - c`` the
    residual to the primary centroid, which prefers a cell whose error is *orthogonal* to the
    first one, so the two copies fail on different queries. Vectors whose best second cell
    costs least relative to their first are the ones spilled.

    Returns
    -------
    (n,) int64 secondary cell per vector, -1 where the vector is stored once.
    """
    n, n_cells = len(vectors), len(centroids)
    secondary = np.full(n, -1, dtype=np.int64)
    if fraction <= 0 or n_cells < 2:
        return secondary
    m = min(candidates, n_cells - 1)
    sq = np.einsum("ij,ij->i", centroids, centroids)
    between = sq[:, None] + sq[None, :] - 2.0 * (centroids @ centroids.T)
    np.fill_diagonal(between, np.inf)
    near = np.argpartition(between, m - 1, axis=1)[:, :m]  # (n_cells, m), excludes the cell itself
    best = np.empty(n, dtype=np.int64)
    cost = np.empty(n, dtype=np.float64)
    order = np.argsort(assign, kind="stable")
    bounds = np.searchsorted(assign[order], np.arange(n_cells + 1))
    for cell in range(n_cells):  # a loop over cells, each a small dense product
        rows = order[bounds[cell] : bounds[cell + 1]]
        if rows.size == 0:
            continue
        x = vectors[rows]
        r = x - centroids[cell]
        r_sq = np.maximum(np.einsum("ij,ij->i", r, r), 1e-12)
        cand = centroids[near[cell]]  # (m, d)
        dist = np.einsum("ij,ij->i", x, x)[:, None] + sq[near[cell]][None, :] - 2.0 * (x @ cand.T)
        proj = np.einsum("ij,ij->i", r, x)[:, None] - r @ cand.T  # <r, x - c'>
        score = dist + weight * np.square(proj) / r_sq[:, None]
        pick = np.argmin(score, axis=1)
        best[rows] = near[cell][pick]
        cost[rows] = score[np.arange(len(rows)), pick] - r_sq
    chosen = np.argsort(cost, kind="stable")[: round(fraction * n)]
    secondary[chosen] = best[chosen]
    return secondary
