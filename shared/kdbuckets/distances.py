"""Distance metrics. Every distance is smaller-is-closer, whatever the metric.

- ``cosine``: vectors are stored unit-normalised, distance = 1 - cos(q, v);
- ``l2``: Euclidean distance ||q - v||;
- ``ip``: distance = -(q · v), so the largest inner product ranks first.
"""

from __future__ import annotations

import numpy as np

METRICS = ("cosine", "l2", "ip")


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Bring vectors (n, d) into the stored space: float32, unit norm for cosine.

    Callers validate first that no row has zero norm when ``metric == "cosine"``.
    """
    out = np.asarray(vectors, dtype=np.float32)
    if metric == "cosine":
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / norms
    return np.ascontiguousarray(out, dtype=np.float32)


def pairwise(
    queries: np.ndarray, vectors: np.ndarray, metric: str, sq_norms: np.ndarray | None = None
) -> np.ndarray:
    """Fast float32 distances (nq, n) used to *select* candidates.

    For ``l2`` this returns squared distances (monotone in the true distance); ``sq_norms``
    are the vectors' squared norms, precomputed once per bucket.
    """
    dots = queries @ vectors.T
    if metric == "cosine":
        return 1.0 - dots
    if metric == "ip":
        return -dots
    if sq_norms is None:
        sq_norms = np.einsum("ij,ij->i", vectors, vectors)
    q_sq = np.einsum("ij,ij->i", queries, queries)
    return np.maximum(q_sq[:, None] - 2.0 * dots + sq_norms[None, :], 0.0)


def selection(
    queries: np.ndarray,
    vectors: np.ndarray,
    metric: str,
    centre: np.ndarray | None = None,
    sq_norms: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Selection scores split as ``base[:, None] + delta``: (nq,) float64 and (nq, n) float32.

    ``vectors`` are a bucket's rows minus ``centre`` (raw rows when ``centre`` is None) and
    ``sq_norms`` their squared norms (l2 only). Why split: far from the origin the float32
    expansion ‖q‖² − 2q·v + ‖v‖² (or q·v near ‖q‖‖v‖) cancels away every digit that tells
    neighbours apart. Relative to a centre near the rows, the float32 products stay as small
    as the bucket's spread, and the large per-query term ``base`` is kept in float64. Within
    one query, ``delta`` alone orders the rows; ``base + delta`` in float64 compares buckets.
    For ``l2`` the scores are squared distances.
    """
    if metric == "l2":
        shifted = queries if centre is None else queries - centre
        base = np.einsum("ij,ij->i", shifted.astype(np.float64), shifted.astype(np.float64))
        delta = shifted @ vectors.T
        delta *= -2.0
        delta += np.einsum("ij,ij->i", vectors, vectors) if sq_norms is None else sq_norms
        return base, delta
    delta = queries @ vectors.T
    np.negative(delta, out=delta)
    if centre is None:
        base = np.zeros(len(queries), np.float64)
    else:
        base = -(queries.astype(np.float64) @ centre.astype(np.float64))
    if metric == "cosine":
        base += 1.0
    return base, delta


def selection64(
    queries: np.ndarray, vectors: np.ndarray, metric: str, centre: np.ndarray | None = None
) -> np.ndarray:
    """The ``delta`` of :func:`selection` in float64, for the few queries float32 cannot order.

    ``vectors`` are the bucket's rows minus ``centre`` as :func:`selection` received them.
    """
    v = vectors.astype(np.float64)
    q = queries.astype(np.float64)
    if metric == "l2":
        shifted = q if centre is None else q - centre.astype(np.float64)
        return np.einsum("ij,ij->i", v, v)[None, :] - 2.0 * (shifted @ v.T)
    return -(q @ v.T)


def exact_pairs(queries: np.ndarray, vectors: np.ndarray, metric: str, clamp: bool = True) -> np.ndarray:
    """Reported float64 distance of each query row to the vector row beside it.

    ``queries`` and ``vectors`` have the same shape (..., d) (or broadcast to it); the result
    has shape (...). Callers bound the float64 temporaries by passing blocks of pairs.
    ``clamp=False`` keeps cosine's unclamped 1 - cos, which still orders near-identical
    vectors that the clamp at 0 would tie (rank by it, report the clamped value).
    """
    q = np.asarray(queries, dtype=np.float64)
    v = np.asarray(vectors, dtype=np.float64)
    if metric == "l2":
        diff = q - v
        return np.sqrt(np.einsum("...i,...i->...", diff, diff))
    dots = np.einsum("...i,...i->...", q, v)
    # Rounding can push 1 - cos a hair below zero for identical vectors; distances are >= 0.
    if metric == "cosine":
        return np.maximum(1.0 - dots, 0.0) if clamp else 1.0 - dots
    return -dots


def exact(queries: np.ndarray, neighbours: np.ndarray, metric: str) -> np.ndarray:
    """Reported distances in float64 for each query against its own rows.

    Parameters
    ----------
    queries : (nq, d) prepared queries.
    neighbours : (nq, k, d) the vectors selected for each query.

    Returns
    -------
    (nq, k) float64 distances. (The query path uses :func:`exact_pairs` on bounded blocks.)
    """
    return exact_pairs(queries[:, None, :], neighbours, metric)
