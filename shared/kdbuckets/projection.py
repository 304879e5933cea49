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


def fit_pca(vectors: np.ndarray, *, seed: int) -> np.ndarray:
    """Principal directions of ``vectors`` (n, d), as rows sorted by decreasing variance.

    Returns
    -------
    (d, d) float32 orthonormal basis.
    """
    rng = np.random.default_rng(seed)
    n = len(vectors)
    sample = vectors if n <= PCA_SAMPLE else vectors[np.sort(rng.choice(n, PCA_SAMPLE, replace=False))]
    centred = sample.astype(np.float64) - sample.mean(axis=0, dtype=np.float64)
    cov = centred.T @ centred / max(len(sample) - 1, 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    basis = eigvecs[:, order].T
    # Fix each direction's sign so the same data always yields the same planes.
    signs = np.sign(basis[np.arange(len(basis)), np.argmax(np.abs(basis), axis=1)])
    signs[signs == 0] = 1.0
    return (basis * signs[:, None]).astype(np.float32)
