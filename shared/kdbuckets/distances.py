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


def exact(queries: np.ndarray, neighbours: np.ndarray, metric: str) -> np.ndarray:
    """Reported distances in float64 for each query against its own rows.

    Parameters
    ----------
    queries : (nq, d) prepared queries.
    neighbours : (nq, k, d) the vectors selected for each query.

    Returns
    -------
    (nq, k) float64 distances.
    """
    q = queries.astype(np.float64)[:, None, :]
    v = neighbours.astype(np.float64)
    if metric == "l2":
        return np.sqrt(np.square(q - v).sum(axis=2))
    dots = (q * v).sum(axis=2)
    # Rounding can push 1 - cos a hair below zero for identical vectors; distances are >= 0.
    return np.maximum(1.0 - dots, 0.0) if metric == "cosine" else -dots
