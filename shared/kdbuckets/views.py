"""What one query request sees of a version: the buckets it may rank, and how it ranks them.

A request works on bucket numbers *local to its view*: for a whole manifest they are the
manifest's own; for a hierarchical one they index the buckets of the parts the request has
read so far, in the order it read them (a widening step appends parts, so numbers already
handed out stay valid). ``view.buckets`` is the table over those numbers.

- :class:`FullView`: a flat (format 1) manifest, or any manifest read whole (``bbf`` ranking
  needs the tree): ranks every bucket at once.
- :class:`RoutedView`: a hierarchical root and the parts read on demand, ranked in tiers
  (:mod:`kdbuckets.ranking`), exactly as the build calibrated them.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import scoring
from .errors import InvalidRequest
from .manifest import BucketTable, Manifest, Part, Root, decode_part, decode_stored, encode_hierarchy
from .ranking import (
    RANKINGS,
    bucket_scores,
    bucket_tiers,
    centroid_scores,
    part_order,
    parts_needed,
    tiered_top,
    top_buckets,
)

DEFAULT_RANKING = "centroid"


class View:
    """The version-wide facts a request needs, whichever way its buckets are reached."""

    def __init__(self, source: Manifest | Root, readable: int) -> None:
        self.collection = source.collection
        self.version = source.version
        self.dim = source.dim
        self.metric = source.metric
        self.dtype = source.dtype
        self.count = source.count
        self.label_names = source.label_names
        self.params = source.params
        self.extra = source.extra
        #: unmerged tail segments (kdbuckets.tail): every query scans them in full
        self.tail = source.tail
        #: buckets in the whole version, and those holding rows (the most a query can read)
        self.n_buckets = source.n_buckets
        self.readable = readable
        self.buckets: BucketTable
        #: the version's number of each bucket of the view
        self.global_ids: np.ndarray

    def rank(self, queries: np.ndarray, probes: int) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def check_ranking(ranking: str) -> str:
    if ranking not in RANKINGS:
        raise InvalidRequest("ranking", f"must be one of {list(RANKINGS)}, got {ranking!r}")
    return ranking


class FullView(View):
    """Every bucket of a whole manifest, ranked flat by ``ranking``."""

    def __init__(self, manifest: Manifest, ranking: str) -> None:
        super().__init__(manifest, int(np.count_nonzero(manifest.buckets.rows > 0)))
        self.manifest = manifest
        self.ranking = check_ranking(ranking)
        self.buckets = manifest.buckets
        self.global_ids = np.arange(manifest.n_buckets, dtype=np.int64)

    def rank(self, queries: np.ndarray, probes: int) -> np.ndarray:
        """The ``probes`` best buckets for each prepared query, best first — (nq, probes)."""
        m = self.manifest
        empty = m.buckets.rows == 0
        probes = max(1, min(probes, self.readable))  # an emptied bucket is never worth a GET
        out = np.empty((len(queries), probes), dtype=np.int64)
        step = max(1, scoring.BLOCK_SCORES // max(1, m.n_buckets))
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            scores = bucket_scores(block, m.buckets.centroids, m.tree, m.metric, self.ranking)
            scores[:, empty] = np.inf
            out[start : start + step] = top_buckets(scores, probes)
        return out


class RoutedView(View):
    """A hierarchical root and the parts this request has read; ``centroid`` ranking in tiers.

    ``load(parts)`` returns those parts of the root (from a cache or one parallel round of
    GETs); the view calls it only for parts it does not hold yet.
    """

    def __init__(self, root: Root, load: Callable[[list[int]], list[Part]]) -> None:
        super().__init__(root, int(root.parts.nonempty.sum()))
        self.root = root
        self._load = load
        self._slots: dict[int, int] = {}  # part → index of its first bucket in the view
        self._ids: list[np.ndarray] = []
        self._part_of: list[np.ndarray] = []
        self.buckets = BucketTable(
            [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, root.dim), np.float32)
        )
        self.bucket_part = np.zeros(0, np.int64)
        self.global_ids = np.zeros(0, np.int64)

    @property
    def parts_read(self) -> int:
        return len(self._slots)

    def rank(self, queries: np.ndarray, probes: int) -> np.ndarray:
        """The ``probes`` first buckets (view numbers) for each prepared query — (nq, probes)."""
        root = self.root
        parts = root.parts
        probes = max(1, min(probes, self.readable))
        out = np.empty((len(queries), probes), dtype=np.int64)
        widest = int(parts.buckets.max()) * root.route_parts
        step = max(1, scoring.BLOCK_SCORES // max(1, len(parts) + widest))
        for start in range(0, len(queries), step):
            block = queries[start : start + step]
            order = part_order(block, parts.centroids, parts.nonempty, root.metric)
            need = parts_needed(order, parts.nonempty, probes, root.route_parts)
            wanted = np.unique(np.concatenate([order[i, :n] for i, n in enumerate(need.tolist())]))
            self._ensure(wanted.tolist())
            tiers = bucket_tiers(order, self.bucket_part, self.buckets.rows, root.route_parts)
            scores = centroid_scores(block, self.buckets.centroids, root.metric)
            out[start : start + step] = tiered_top(scores, tiers, probes)
        return out

    def _ensure(self, wanted: list[int]) -> None:
        missing = [p for p in wanted if p not in self._slots]
        if not missing:
            return
        for p, part in zip(missing, self._load(missing), strict=True):
            self._slots[p] = len(self.buckets)
            self._ids.append(part.ids)
            self._part_of.append(np.full(len(part.ids), p, np.int64))
            t = part.buckets
            b = self.buckets
            self.buckets = BucketTable(
                b.fingerprints + t.fingerprints,
                np.concatenate([b.sizes, t.sizes]),
                np.concatenate([b.rows, t.rows]),
                np.concatenate([b.centroids, t.centroids]),
            )
        self.bucket_part = np.concatenate(self._part_of)
        self.global_ids = np.concatenate(self._ids)


def view_of(
    stored: Manifest | Root,
    ranking: str | None,
    load: Callable[[list[int]], list[Part]],
    whole: Callable[[], Manifest],
) -> View:
    """The view a request ranks with: routed for a hierarchical root, else over the whole manifest.

    ``bbf`` walks the tree, which only the whole manifest carries (``whole()`` reads it).
    """
    ranking = check_ranking(ranking or stored.params.get("ranking", DEFAULT_RANKING))
    if isinstance(stored, Manifest):
        return FullView(stored, ranking)
    if ranking == "bbf":
        return FullView(whole(), ranking)
    return RoutedView(stored, load)


def in_memory(manifest: Manifest, ranking: str | None = None) -> View:
    """The view a query of ``manifest`` would rank with, built from the manifest in hand.

    Encodes the hierarchy and decodes it back, so the routing centroids and bucket tables are
    exactly the stored ones (the calibration and the bench rank through this).
    """
    ranking = check_ranking(ranking or manifest.params.get("ranking", DEFAULT_RANKING))
    if ranking == "bbf":
        return FullView(manifest, ranking)
    encoded = encode_hierarchy(manifest)
    root = decode_stored(encoded.root, key="in-memory")
    assert isinstance(root, Root)
    parts = [decode_part(encoded.objects[fp], key=fp, root=root) for fp in root.parts.fingerprints]
    return RoutedView(root, lambda which: [parts[p] for p in which])
