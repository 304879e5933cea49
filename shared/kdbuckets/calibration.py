"""Build-time recall calibration: how many probes does this index need for a given recall@k?

A sample of the collection is used as queries (each excluded from its own ground truth, so it
behaves like an unseen query); their exact nearest neighbours are computed by brute force, and
for every probe count we measure which share of them the bucket ranking would reach. One curve
per k in :data:`KS`, because a query's 1,000th neighbour lies much further out than its 10th:
a probe count that reaches recall 0.95 at k = 10 can reach 0.7 at k = 1,000. The curves are
stored in the manifest, so a query can ask for ``recall_target: 0.95`` at any k instead of
guessing ``probes``.

Stored shape (``manifest.extra["calibration"]``)::

    {"k": 10, "sample": 512, "recall": [...],       # recall@10 at 1, 2, ... probes
     "curves": [{"k": 1, "recall": [...]}, {"k": 2, ...}, ..., {"k": 1000, ...}]}

The top-level ``k``/``recall`` is the one curve manifests had before ``curves`` existed (and
what a reader that knows only that shape keeps using); ``curves`` holds the other k. An old
manifest has no ``curves``: its k = 10 curve then serves every k, as it always did.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from .ranking import (
    bucket_positions,
    bucket_scores,
    bucket_tiers,
    centroid_scores,
    part_order,
    tiered_positions,
)

if TYPE_CHECKING:
    from .manifest import Manifest
    from .partition import Partition

SAMPLE = 512
#: The k of the top-level curve, the only one manifests written before ``curves`` carry.
K = 10
#: Calibrated k values (capped at n − 1 for a smaller collection), 1-2-5 steps up to the
#: searcher's MAX_K. The exact neighbours are computed once, for the largest; every smaller k is
#: a prefix of them, so each k costs only its curve's manifest bytes. Dense enough that taking
#: the larger neighbour's probes for a k in between (see :func:`probes_for`) costs little.
KS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
#: Calibration queries come from the collection itself, whose vectors shaped the centroids;
#: unseen queries reach about one point of recall less at the same probes (measured on the
#: WordNet set), so a target is met with this much to spare.
MARGIN = 0.01
#: Collection rows scored per brute-force block: (SAMPLE × BLOCK) float32 distances at once.
BLOCK = 8192


def calibrate(
    vectors: np.ndarray,
    part: Partition,
    metric: str,
    ranking: str,
    *,
    seed: int,
    manifest: Manifest | None = None,
) -> dict[str, Any]:
    """Recall@k reached with 1, 2, … probes for each k in :data:`KS`, on a sample of the collection.

    With ``manifest`` (the version about to be published) buckets are ranked exactly as its
    queries will rank them (:func:`read_positions`: in tiers of parts); without, flat.
    """
    n = len(vectors)
    nb = len(part.leaf_rows)
    if n < 2:
        return {"k": K, "sample": 0, "recall": [1.0] * nb}
    ks = sorted({min(k, n - 1) for k in KS})
    rng = np.random.default_rng(seed + 1)
    sample = np.sort(rng.choice(n, min(SAMPLE, n), replace=False))
    queries = vectors[sample]
    truth = exact_neighbours(queries, vectors, sample, metric, ks[-1])  # (s, k_max), nearest first
    if manifest is not None:
        positions = read_positions(queries, manifest, ranking)
    else:
        positions = bucket_positions(bucket_scores(queries, part.centroids, part.tree, metric, ranking))
    return curves_from_ranks(positions, part.primary[truth], part.secondary[truth], ks)


def read_positions(queries: np.ndarray, manifest: Manifest, ranking: str) -> np.ndarray:
    """Position at which each query of ``manifest`` reads every bucket (0 = first) — (nq, nb).

    Exactly the searcher's order: ``bbf`` over the whole tree; ``centroid`` in tiers of the
    manifest's parts (:mod:`kdbuckets.ranking`), which for one part is the flat order.
    """
    from .manifest import part_layout

    m = manifest
    if ranking == "bbf":
        return bucket_positions(bucket_scores(queries, m.buckets.centroids, m.tree, m.metric, ranking))
    groups, routing = part_layout(m)
    bucket_part = np.empty(m.n_buckets, np.int64)
    for i, g in enumerate(groups):
        bucket_part[g] = i
    nonempty = np.array([np.count_nonzero(m.buckets.rows[g] > 0) for g in groups], np.int64)
    order = part_order(queries, routing, nonempty, m.metric)
    tiers = bucket_tiers(order, bucket_part, m.buckets.rows, m.route_parts)
    return tiered_positions(centroid_scores(queries, m.buckets.centroids, m.metric), tiers)


def curves_from_ranks(
    positions: np.ndarray, truth_primary: np.ndarray, truth_secondary: np.ndarray, ks: list[int]
) -> dict[str, Any]:
    """The stored calibration: recall@k by probes for each k in ``ks`` (ascending).

    positions : (s, nb) rank of every bucket for each sample query (0 = read first).
    truth_primary, truth_secondary : (s, max(ks)) bucket(s) of each query's true neighbours,
        nearest first (secondary -1 where a neighbour is stored once).
    The single-function and the distributed builds both store exactly this shape.
    """
    nb = positions.shape[1]
    rows = np.arange(len(positions))[:, None]
    first = positions[rows, truth_primary]
    has_second = truth_secondary >= 0
    first = np.where(has_second, np.minimum(first, positions[rows, np.maximum(truth_secondary, 0)]), first)
    # recall@k(p) = share of the k true neighbours whose (nearer) bucket ranks < p
    curves = {k: _curve(first[:, :k], nb) for k in ks}
    top = min(ks, key=lambda k: (abs(k - K), k))  # K itself unless the collection is tiny
    out: dict[str, Any] = {"k": top, "sample": len(positions), "recall": curves[top]}
    others = [{"k": k, "recall": curves[k]} for k in ks if k != top]
    if others:
        out["curves"] = others
    return out


#: Longest stored curve: the root of every manifest carries ~10 curves, and a query never
#: asks for more probes than a filter may widen to (searcher.MAX_FILTER_PROBES).
MAX_CURVE = 1024


def _curve(first: np.ndarray, nb: int) -> list[float]:
    """Cumulative share of ``first`` (bucket positions) below 1, 2, …; cut after it reaches 1.0.

    At most :data:`MAX_CURVE` points: a target the curve has not reached by then is read as
    "every bucket" (:func:`probes_for`), so cutting can only make a query read more, never less.
    """
    reached = np.round(np.bincount(first.ravel(), minlength=nb).cumsum() / first.size, 4)
    last = int(np.searchsorted(reached, 1.0)) + 1  # the curve is flat at 1.0 after this
    return reached[: min(last, MAX_CURVE)].tolist()


def curves_by_k(calibration: dict[str, Any] | None) -> dict[int, list[float]]:
    """Every stored curve by its k: the top-level one, plus ``curves`` when present."""
    if not calibration or not calibration.get("recall"):
        return {}
    out = {int(calibration.get("k", K)): list(calibration["recall"])}
    for c in calibration.get("curves") or []:
        if c.get("recall"):
            out[int(c["k"])] = list(c["recall"])
    return dict(sorted(out.items()))


def probes_for(calibration: dict[str, Any] | None, target: float, n_buckets: int, k: int = K) -> int | None:
    """Fewest probes whose calibrated recall@k reaches ``target`` + :data:`MARGIN` (None if uncalibrated).

    A curve point counts one binomial standard error below its measured value r,
    √(r(1 − r)/(sample·k)): the sampling noise of ``sample`` queries' k neighbours, each reached
    or not. It is exact at k = 1, where 512 queries measure recall to about ±0.009 (on WordNet,
    one calibration sample in four chose a probe count that held-out queries then fell short
    with); at larger k it is smaller and :data:`MARGIN` covers the rest, as measured.

    Between two calibrated k the larger of their two counts serves: conservative whatever the
    shape of probes against k (on the clustered sets measured it is not smooth: 3 probes at
    k = 200, 26 at k = 500 on 100k synthetic vectors, so an interpolation can undershoot), and
    cheap on the 1-2-5 grid of :data:`KS`. Below the smallest calibrated k that curve serves
    (recall at fewer neighbours is not lower in practice), above the largest that one does (a
    k above it is at least the collection's size, where the searcher reads on until it has
    every vector anyway). So an old manifest with its single k = 10 curve answers every k from
    it, as before (at most a probe more, where that curve sits within a standard error of the
    target).
    """
    curves = curves_by_k(calibration)
    if not curves:
        return None
    sample = calibration.get("sample", 0) if calibration else 0
    sample = sample if isinstance(sample, int) else 0
    need = {c: _needed(curve, target, n_buckets, sample * c) for c, curve in curves.items()}
    ks = list(need)
    if k <= ks[0]:
        return need[ks[0]]
    if k >= ks[-1]:
        return need[ks[-1]]
    hi = next(c for c in ks if c >= k)
    if hi == k:
        return need[k]
    lo = ks[ks.index(hi) - 1]
    return max(need[lo], need[hi])


def _needed(curve: list[float], target: float, n_buckets: int, outcomes: int) -> int:
    """Fewest probes at which ``curve``, less its standard error over ``outcomes``, reaches the target."""
    r = np.asarray(curve, dtype=np.float64)
    if outcomes > 0:
        r = r - np.sqrt(r * (1.0 - r) / outcomes)
    reached = np.flatnonzero(r >= min(target + MARGIN, 1.0))
    return int(reached[0]) + 1 if reached.size else n_buckets


def exact_neighbours(
    queries: np.ndarray, vectors: np.ndarray, exclude: np.ndarray, metric: str, k: int
) -> np.ndarray:
    """Row ids (nq, k) of each query's k nearest rows, nearest first, ``exclude[i]`` left out of row i.

    Blocked brute force (:func:`nearest_in_blocks`): memory is O(nq × (BLOCK + k)) whatever the
    collection size. For l2 both sides are first shifted by the collection's mean.
    """
    centre = vectors.mean(axis=0, dtype=np.float64).astype(np.float32) if metric == "l2" else None
    n = len(vectors)
    blocks = ((vectors[s : s + BLOCK], np.arange(s, min(s + BLOCK, n))) for s in range(0, n, BLOCK))
    return nearest_in_blocks(queries, blocks, exclude, metric, k, centre)


def nearest_in_blocks(
    queries: np.ndarray,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    exclude: np.ndarray,
    metric: str,
    k: int,
    centre: np.ndarray | None = None,
) -> np.ndarray:
    """Ids (nq, k) of each query's k nearest rows among ``blocks`` of (vectors, ids), nearest first.

    ``exclude[i]`` (an id, or -1) is left out of query i; memory O(nq × (block + k)), however
    many blocks stream by (a recalibration streams a collection's buckets). With ``centre``
    (l2) both sides are shifted by it, so that the float32 expansion ‖v‖² − 2q·v does not
    cancel away the differences of a collection far from the origin.
    """
    nq = len(queries)
    if metric == "l2" and centre is not None:
        queries = queries - centre
    best_d = np.full((nq, k), np.inf, dtype=np.float32)
    best_i = np.zeros((nq, k), dtype=np.int64)
    for block, ids in blocks:
        if metric == "l2":
            if centre is not None:
                block = block - centre
            d = queries @ block.T
            d *= -2.0
            d += np.einsum("ij,ij->i", block, block)[None, :]  # ‖q‖² is the same along a row
        else:
            d = queries @ block.T
            np.negative(d, out=d)
        d[ids[None, :] == exclude[:, None]] = np.inf  # a query is not its own neighbour
        d_all = np.concatenate([best_d, d], axis=1)
        del d
        pick = np.argpartition(d_all, k - 1, axis=1)[:, :k]
        best_d = np.take_along_axis(d_all, pick, axis=1)
        old = np.take_along_axis(best_i, np.minimum(pick, k - 1), axis=1)
        best_i = np.where(pick < k, old, ids[np.maximum(pick - k, 0)])
    order = np.argsort(best_d, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1)
