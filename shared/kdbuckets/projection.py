"""PCA rotation that decorrelates the data before the tree picks its split axes.

In embedding spaces a few directions carry most of the spread; splitting along raw coordinates
wastes levels on near-noise axes. Rotating into the principal basis first lets the
largest-spread rule cut where the data actually varies. The rotation is stored in the manifest
only as the handful of splitting planes the tree uses.
"""

from __future__ import annotations

import numpy as np

#: Rows used to estimate the covariance; more changes the basis very little.
PCA_SAMPLE = 50_000


#: Rows per chunk when streaming over the matrix: a few MB of float64 at a time.
CHUNK_ROWS = 8192


def fit_pca(vectors: np.ndarray, *, seed: int) -> np.ndarray:
    """Principal directions of ``vectors`` (n, d), as rows sorted by decreasing variance.

    The covariance of a sample of :data:`PCA_SAMPLE` rows is accumulated in float64 chunk by
    chunk (mean first, then centred products), so no copy of the sample is ever whole.

    Returns
    -------
    (d, d) float32 orthonormal basis.
    """
    rng = np.random.default_rng(seed)
    n, d = vectors.shape
    rows = np.arange(n) if n <= PCA_SAMPLE else np.sort(rng.choice(n, PCA_SAMPLE, replace=False))
    total = np.zeros(d, dtype=np.float64)
    for start in range(0, len(rows), CHUNK_ROWS):
        total += vectors[rows[start : start + CHUNK_ROWS]].sum(axis=0, dtype=np.float64)
    mean = total / max(len(rows), 1)
    cov = np.zeros((d, d), dtype=np.float64)
    for start in range(0, len(rows), CHUNK_ROWS):
        centred = vectors[rows[start : start + CHUNK_ROWS]].astype(np.float64)
        centred -= mean
        cov += centred.T @ centred
    cov /= max(len(rows) - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    basis = eigvecs[:, order].T
    # Fix each direction's sign so the same data always yields the same planes.
    signs = np.sign(basis[np.arange(len(basis)), np.argmax(np.abs(basis), axis=1)])
    signs[signs == 0] = 1.0
    return (basis * signs[:, None]).astype(np.float32)


def project(vectors: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``vectors @ basis.T`` (n, m) float32, computed chunk by chunk into one array.

    One product of the whole matrix would allocate its float32 result plus BLAS's packed
    copies; chunks bound those to :data:`CHUNK_ROWS` rows.
    """
    out = np.empty((len(vectors), len(basis)), dtype=np.float32)
    for start in range(0, len(vectors), CHUNK_ROWS):
        np.matmul(vectors[start : start + CHUNK_ROWS], basis.T, out=out[start : start + CHUNK_ROWS])
    return out
