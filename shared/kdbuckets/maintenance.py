"""Local maintenance of a write (LIRE-style): split, merge and reassign a few buckets, no rebuild.

A refined collection routes a new vector to its nearest bucket centroid, so skewed writes pile
into one bucket. After a write's edits, on the buckets it touched (SPFresh's LIRE, Xu et al.,
2023, scaled down to a bounded number of buckets per commit):

1. **Merge**: a touched bucket left with fewer than ``floor`` rows gives each of its rows to the
   nearest of its :data:`NEIGHBOURS` nearest non-empty buckets (by centroid) and stays in the
   table empty — bucket numbers are tree leaves and the manifest requires them to stay
   ``0..nb-1``, so an emptied leaf is kept (0 rows) rather than removed and renumbered.
2. **Split**: a bucket past ``limit`` rows is cut in two (the leaf becomes a tree node), again
   until no part exceeds it (:func:`split_plane`).
3. **Reassign** (refined collections): the rows of each split family and of its
   :data:`NEIGHBOURS` nearest buckets move to their nearest centroid among those buckets — the
   vectors whose nearest centroid changed because of the split — then step 2 runs once more
   for a neighbour that grew past ``limit``.

Bound: besides the buckets the write itself edits and the parts split off them, a write loads
and rewrites at most :data:`MAX_NEIGHBOUR_BUCKETS` neighbouring buckets (one parallel GET
round). Replicated collections: a key stored twice among the buckets in play does not move
(moving could put both copies in one bucket); a merged copy whose key the destination already
holds is dropped (the key stays findable through that copy). Every row carries ``origin``, the
bucket the id directory names for it before maintenance, so the directory update is one list of
``(keys, from, to)`` moves (``to`` -1: that copy was dropped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .metadata import MetadataColumns
from .refine import nearest_centroid
from .tree import MutableTree

#: Nearest buckets (by centroid) a split reassigns with, or a merged bucket gives its rows to.
NEIGHBOURS = 4
#: Neighbouring buckets one write may load and rewrite for merges and reassignment, in all.
MAX_NEIGHBOUR_BUCKETS = 16
#: A touched bucket with fewer rows than ``bucket_size // FLOOR_DIVISOR`` is merged away.
FLOOR_DIVISOR = 4
#: How an oversized bucket is cut; "average" or "kmeans" (2-means seeded by the average split).
#: 2-means measured better on skewed writes (bench/write_maintenance.py).
SPLIT_METHOD = "kmeans"
KMEANS_ITERATIONS = 10


@dataclass
class Rows:
    """The full content of one bucket being rewritten; ``origin``: directory bucket of each row."""

    vectors: np.ndarray
    ids: np.ndarray
    labels: np.ndarray | None
    keys: np.ndarray
    metadata: MetadataColumns | None = None
    origin: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def count(self) -> int:
        return len(self.keys)

    def take(self, rows: np.ndarray) -> Rows:
        return Rows(
            self.vectors[rows],
            self.ids[rows],
            None if self.labels is None else self.labels[rows],
            self.keys[rows],
            None if self.metadata is None else self.metadata.select(rows),
            self.origin[rows],
        )

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        """Rows of ``parts`` one after another (missing labels are -1, missing metadata None)."""
        labelled = any(p.labels is not None for p in parts)
        described = any(p.metadata is not None for p in parts)
        return Rows(
            np.concatenate([p.vectors for p in parts]).astype(np.float32),
            np.concatenate([p.ids for p in parts]),
            np.concatenate(
                [p.labels if p.labels is not None else np.full(p.count, -1, np.int32) for p in parts]
            )
            if labelled
            else None,
            np.concatenate([p.keys for p in parts]),
            MetadataColumns.concat(
                [p.metadata or MetadataColumns.from_records([None] * p.count) for p in parts]
            )
            if described
            else None,
            np.concatenate([p.origin for p in parts]),
        )


@dataclass
class Outcome:
    """What maintenance did: final bucket contents, centroids, and the directory moves."""

    buckets: dict[int, Rows]
    centroids: np.ndarray
    next_bucket: int
    moves: list[tuple[np.ndarray, int, int]]  # (keys, from bucket, to bucket or -1)
    splits: int = 0
    merged: list[int] = field(default_factory=list)
    neighbours: list[int] = field(default_factory=list)


def split_plane(
    x: np.ndarray, method: str = SPLIT_METHOD, seed: int = 0
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """A plane cutting the rows ``x`` (n, d) in two; None if inseparable.

    Returns the unit direction (d,) float32, the threshold, and the (n,) bool mask of the rows
    on its right side, computed in float32 exactly as the tree routes (so both sides are
    non-empty for the tree too).

    "average": the mean along the top principal direction (power iteration), the build's
    rule. "kmeans": 2-means started from those two halves; its cut is the bisector of the two
    centroids, so it is still one tree plane and tree routing stays exact.
    """
    x = x.astype(np.float64)
    centred = x - x.mean(axis=0)
    direction = np.random.default_rng(seed).normal(size=x.shape[1])
    for _ in range(20):  # power iteration: the top principal direction
        direction = centred.T @ (centred @ direction)
        norm = np.linalg.norm(direction)
        if norm == 0:
            return None
        direction /= norm
    proj = x @ direction
    threshold = float(proj.mean())
    right = proj >= threshold
    if method == "kmeans":
        for _ in range(KMEANS_ITERATIONS):
            if right.all() or not right.any():
                break
            c0, c1 = x[~right].mean(axis=0), x[right].mean(axis=0)
            gap = c1 - c0
            norm = float(np.linalg.norm(gap))
            if norm == 0:
                break
            direction, threshold = gap / norm, float((c0 + c1) @ gap / (2 * norm))
            new_right = x @ direction >= threshold
            if np.array_equal(new_right, right):
                break
            right = new_right
    elif method != "average":
        raise ValueError(f"split method must be 'average' or 'kmeans', got {method!r}")
    plane = direction.astype(np.float32)
    right = x.astype(np.float32) @ plane >= np.float32(threshold)  # as the float32 tree routes
    if right.all() or not right.any():
        return None
    return plane, threshold, right


def split_oversized(
    buckets: dict[int, Rows],
    tree: MutableTree,
    next_bucket: int,
    limit: int,
    method: str = SPLIT_METHOD,
) -> tuple[int, dict[int, list[int]]]:
    """Split every bucket past ``limit`` rows in place; returns next free number and families."""
    families: dict[int, list[int]] = {}
    for b in sorted(buckets):
        pending = [b] if buckets[b].count > limit else []
        while pending:  # a tight crowd may need several cuts
            index = pending.pop()
            rows = buckets[index]
            cut = split_plane(rows.vectors, method, seed=index)
            if cut is None:
                continue
            direction, threshold, right = cut
            tree.split_leaf(index, next_bucket, direction, threshold)
            buckets[index] = rows.take(np.flatnonzero(~right))
            buckets[next_bucket] = rows.take(np.flatnonzero(right))
            families.setdefault(b, [b]).append(next_bucket)
            pending += [i for i in (index, next_bucket) if buckets[i].count > limit]
            next_bucket += 1
    return next_bucket, families


def maintain(
    buckets: dict[int, Rows],
    centroids: np.ndarray,
    rows: np.ndarray,
    tree: MutableTree,
    next_bucket: int,
    *,
    limit: int,
    floor: int,
    refined: bool,
    load: Callable[[list[int]], dict[int, Rows]],
    method: str = SPLIT_METHOD,
) -> Outcome:
    """Merge, split and reassign around the written ``buckets`` (bucket → rows after the edits).

    ``centroids`` (nb, d) and ``rows`` (nb,) are the manifest's; ``load`` reads more buckets
    (as :class:`Rows` with ``origin`` their own number). Unrefined collections (the buckets
    are the tree's leaves, routed down the tree) are only split: moving a row by centroid would
    contradict its tree routing.
    """
    buckets = dict(buckets)
    centroids = centroids.astype(np.float32).copy()
    live = rows.astype(np.int64).copy()
    for b, r in buckets.items():
        live[b] = r.count
    budget = MAX_NEIGHBOUR_BUCKETS
    merged: list[int] = []
    loaded: list[int] = []
    dropped: list[Rows] = []
    first_new = next_bucket

    def neighbours_of(centre: np.ndarray, exclude: set[int], n: int) -> list[int]:
        d = np.sum(np.square(centroids - centre), axis=1)
        d[live == 0] = np.inf
        d[list(exclude)] = np.inf
        order = np.argsort(d, kind="stable")[:n]
        return [int(i) for i in order if np.isfinite(d[i])]

    def fetch(which: list[int]) -> None:
        nonlocal budget
        new = [b for b in which if b not in buckets][:budget]
        if new:
            buckets.update(load(new))
            loaded.extend(new)
            budget -= len(new)

    if refined:  # 1. merges of under-floor buckets the write touched
        small = [b for b in sorted(buckets) if 0 < buckets[b].count < floor]
        for b in small:
            near = neighbours_of(centroids[b], {b}, NEIGHBOURS)
            fetch(near)
            near = [n for n in near if n in buckets]
            if not near or buckets[b].count >= floor:
                continue
            dropped.append(_merge(buckets, b, near, centroids))
            merged.append(b)
            live[b] = 0
            for n in near:
                live[n] = buckets[n].count

    next_bucket, families = split_oversized(buckets, tree, next_bucket, limit, method)  # 2.
    centroids = _grown(centroids, next_bucket)
    live = np.concatenate([live, np.zeros(next_bucket - len(live), np.int64)])
    for b, r in buckets.items():
        _recentre(centroids, b, r)
        live[b] = r.count

    if refined:  # 3. reassign each split family with its nearest neighbours
        for family in families.values():
            centre = np.mean([centroids[f] for f in family], axis=0)
            near = neighbours_of(centre, set(family), NEIGHBOURS)
            fetch(near)
            group = family + [n for n in near if n in buckets]
            _reassign(buckets, group, centroids)
            for g in group:
                live[g] = buckets[g].count
        next_bucket, _ = split_oversized(buckets, tree, next_bucket, limit, method)
        centroids = _grown(centroids, next_bucket)
        for b, r in buckets.items():
            _recentre(centroids, b, r)

    moves = _moves(buckets, dropped)
    return Outcome(buckets, centroids, next_bucket, moves, next_bucket - first_new, merged, loaded)


def _grown(centroids: np.ndarray, n: int) -> np.ndarray:
    """``centroids`` with zero rows appended up to ``n`` (new buckets, filled by :func:`_recentre`)."""
    pad = n - len(centroids)
    return centroids if pad <= 0 else np.vstack([centroids, np.zeros((pad, centroids.shape[1]), np.float32)])


def _recentre(centroids: np.ndarray, b: int, rows: Rows) -> None:
    """An emptied bucket keeps its centroid (the table keeps it; routing skips empty buckets)."""
    if rows.count:
        centroids[b] = rows.vectors.mean(axis=0)


def _merge(buckets: dict[int, Rows], b: int, near: list[int], centroids: np.ndarray) -> Rows:
    """Give every row of ``b`` to its nearest bucket among ``near``; returns the copies dropped.

    A copy is dropped (replicated collections) when its destination holds that key already:
    the key stays findable there, and one bucket never holds a key twice.
    """
    rows = buckets[b]
    dest = np.asarray(near)[nearest_centroid(rows.vectors, centroids[near])]
    keep = np.ones(rows.count, bool)
    for n in near:
        mine = dest == n
        if mine.any():
            keep &= ~(mine & np.isin(rows.keys, buckets[n].keys))
            buckets[n] = Rows.concat([buckets[n], rows.take(np.flatnonzero(mine & keep))])
    buckets[b] = rows.take(np.zeros(0, np.int64))
    return rows.take(np.flatnonzero(~keep))


def _reassign(buckets: dict[int, Rows], group: list[int], centroids: np.ndarray) -> None:
    """Rows of ``group`` to their nearest centroid among it; keys present twice stay put."""
    pool = Rows.concat([buckets[g] for g in group])
    where = np.repeat(np.asarray(group), [buckets[g].count for g in group])
    dest = np.asarray(group)[nearest_centroid(pool.vectors, centroids[group])]
    _, inverse, counts = np.unique(pool.keys, return_inverse=True, return_counts=True)
    dest = np.where(counts[inverse] > 1, where, dest)
    for g in group:
        buckets[g] = pool.take(np.flatnonzero(dest == g))


def _moves(buckets: dict[int, Rows], dropped: list[Rows]) -> list[tuple[np.ndarray, int, int]]:
    """Directory moves: rows whose bucket differs from their ``origin``; dropped copies go to -1."""
    out: list[tuple[np.ndarray, int, int]] = []
    for b, rows in [*sorted(buckets.items()), *((-1, d) for d in dropped)]:
        for src in np.unique(rows.origin[rows.origin != b]).tolist():
            out.append((rows.keys[rows.origin == src], int(src), b))
    return out
