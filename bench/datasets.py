"""Benchmark datasets: the real WordNet embeddings (when present) and a synthetic clustered set.

The synthetic set is generated, never committed: a mixture of anisotropic Gaussian clusters of
Zipf-distributed sizes in 100 dimensions, overlapping enough that nearest neighbours often
cross cluster borders (an easy, well-separated mixture would flatter every index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from devtools.local import load_sample


@dataclass(frozen=True)
class Dataset:
    name: str
    metric: str
    vectors: np.ndarray  # (n, d) float32, the indexed collection
    queries: np.ndarray  # (q, d) float32, held out
    labels: np.ndarray | None  # (n,) str
    query_labels: np.ndarray | None


def wordnet() -> Dataset | None:
    sample = load_sample()
    if not sample.name.startswith("wordnet"):
        return None
    return Dataset(
        "wordnet_glosses 114,659 × 384 (real)",
        "cosine",
        sample.vectors,
        sample.queries,
        sample.labels,
        sample.query_labels,
    )


def synthetic_clustered(
    n: int = 1_000_000, dim: int = 100, clusters: int = 2_000, queries: int = 1_000, seed: int = 42
) -> Dataset:
    """Deterministic clustered float32 data, generated in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.0, size=(clusters, dim)).astype(np.float32)
    weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
    weights /= weights.sum()
    scales = rng.uniform(0.25, 0.6, size=(clusters, dim)).astype(np.float32)  # anisotropic spread
    total = n + queries
    which = rng.choice(clusters, size=total, p=weights)
    out = np.empty((total, dim), dtype=np.float32)
    for start in range(0, total, 100_000):
        w = which[start : start + 100_000]
        out[start : start + 100_000] = (
            centres[w] + rng.normal(size=(len(w), dim)).astype(np.float32) * scales[w]
        )
    return Dataset(f"synthetic clustered {n:,} × {dim}", "l2", out[:n], out[n:], None, None)
