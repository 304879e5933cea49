"""Query path: HEAD → manifest → rank buckets → fetch the top ``probes`` → exact k-NN.

A :class:`Searcher` lives as long as the process (a warm Lambda container): it keeps the
manifests it has read, revalidates ``HEAD`` at most every ``head_ttl`` seconds with a
conditional GET, and keeps decoded buckets in a byte-bounded LRU. Work is batched: every
bucket is fetched once per request and scored once against all the queries that probe it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import distances, layout
from .bucket import Bucket, decode_bucket
from .cache import ByteBudgetLRU, DiskTier
from .calibration import probes_for
from .codec import fingerprint
from .errors import CollectionNotFound, CorruptObject, InvalidRequest, KdBucketsError
from .filters import Filter
from .manifest import Head, Manifest, decode_head, decode_manifest
from .ranking import RANKINGS, bucket_scores, top_buckets
from .storage import NotFound, ObjectStore

DEFAULT_RANKING = "centroid"
DEFAULT_RECALL_TARGET = 0.95
DEFAULT_PROBES = 8
MAX_K = 1000
#: Upper bound on buckets a filtered query reads while looking for k matches.
MAX_FILTER_PROBES = 1024
_MANIFESTS_KEPT = 8


@dataclass
class QueryStats:
    """What one request cost; the figures users pay for."""

    buckets_fetched: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    manifest_fetched: bool = False
    s3_gets: int = 0
    probes: int = 0
    recall_target: float | None = None
    elapsed_ms: float = 0.0

    def as_dict(self) -> dict[str, float | int | bool]:
        return dict(self.__dict__)


@dataclass
class SearchResult:
    """Neighbours of each query, nearest first.

    distances : (nq, k) float64; ``inf`` where fewer than k neighbours were found.
    ids : nq lists of k ids (None where missing).
    label_codes : (nq, k) int32 codes into ``label_names``; -1 where missing or unlabelled.
    """

    version: str
    distances: np.ndarray
    ids: list[list[int | str | None]]
    label_codes: np.ndarray
    label_names: list[str] | None
    stats: QueryStats = field(default_factory=QueryStats)
    metadata: list[list[dict[str, Any] | None]] = field(default_factory=list)

    def labels(self) -> list[list[str | None]]:
        names = self.label_names
        return [[names[c] if names and c >= 0 else None for c in row] for row in self.label_codes.tolist()]


@dataclass
class Classification:
    """k-NN vote per query: the winning label and every label's share of the vote."""

    predicted: list[str]
    shares: np.ndarray  # (nq, n_labels) float64, rows sum to 1
    label_names: list[str]
    neighbours: SearchResult

    def votes(self, i: int) -> dict[str, float]:
        row = self.shares[i]
        nz = np.flatnonzero(row >= 5e-7)  # shares that would print as 0.0 are left out
        nz = nz[np.argsort(-row[nz], kind="stable")]
        return {self.label_names[j]: round(float(row[j]), 6) for j in nz}


@dataclass
class _HeadState:
    head: Head
    etag: str
    checked_at: float


class Searcher:
    """Searches collections stored under one :class:`ObjectStore`.

    Parameters
    ----------
    store : where the indexes live.
    cache_bytes : budget of the decoded-bucket LRU (kept across requests).
    head_ttl : seconds a HEAD read stays trusted before it is revalidated.
    disk_dir, disk_bytes : optional second cache tier on local disk (e.g. ``/tmp/kdbuckets``),
        memory-mapped read-only so that worker processes share it.
    """

    def __init__(
        self,
        store: ObjectStore,
        *,
        cache_bytes: int = 512 << 20,
        head_ttl: float = 5.0,
        disk_dir: str | None = None,
        disk_bytes: int = 1 << 30,
    ) -> None:
        self.store = store
        self.head_ttl = head_ttl
        self.buckets: ByteBudgetLRU[Bucket] = ByteBudgetLRU(cache_bytes)
        self.disk = DiskTier(disk_dir, disk_bytes) if disk_dir else None
        self._manifests: dict[tuple[str, str], Manifest] = {}
        self._heads: dict[str, _HeadState] = {}
        self._lock = threading.Lock()

    # -- public API ------------------------------------------------------------------------
    def manifest(
        self, collection: str, version: str | None = None, stats: QueryStats | None = None
    ) -> Manifest:
        """The manifest of the live (or pinned) version, from cache when possible."""
        layout.check_collection(collection)
        stats = stats or QueryStats()
        expected_sha = None
        if version is None:
            head = self._head(collection, stats)
            version, expected_sha = head.version, head.sha256
        cached = self._manifests.get((collection, version))
        if cached is not None:
            return cached
        key = layout.manifest_key(collection, _check_version(version))
        try:
            body, _ = self.store.get(key)
        except NotFound:
            if expected_sha is not None:  # HEAD names it, so it must exist
                raise CorruptObject(key, "HEAD names a manifest that does not exist") from None
            raise CollectionNotFound(collection, version) from None
        stats.s3_gets += 1
        stats.manifest_fetched = True
        if expected_sha is not None and fingerprint(body) != expected_sha:
            raise CorruptObject(key, "SHA-256 differs from the one HEAD names")
        manifest = decode_manifest(body, key=key)
        if manifest.version != version or manifest.collection != collection:
            raise CorruptObject(key, "manifest names a different collection or version")
        with self._lock:
            if len(self._manifests) >= _MANIFESTS_KEPT:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[(collection, version)] = manifest
        return manifest

    def search(
        self,
        collection: str,
        queries: np.ndarray,
        *,
        k: int = 10,
        probes: int | None = None,
        recall_target: float | None = None,
        version: str | None = None,
        ranking: str | None = None,
        filter: Filter | None = None,
        max_probes: int | None = None,
    ) -> SearchResult:
        """k nearest neighbours of each row of ``queries`` (nq, d).

        ``probes`` buckets are read per query; or, with ``recall_target``, as many as the
        build-time calibration says reach that recall@10. With neither, the target is
        :data:`DEFAULT_RECALL_TARGET` (or :data:`DEFAULT_PROBES` for an uncalibrated index).
        With ``filter``, only vectors whose metadata match count, and more buckets are read
        (up to ``max_probes``) until every query has k matches.
        """
        started = time.perf_counter()
        stats = QueryStats()
        return self._run(
            collection,
            version,
            stats,
            started,
            lambda m: self._search(
                m, queries, k, probes, recall_target, ranking, stats, started, filter, max_probes
            ),
        )

    def classify(
        self,
        collection: str,
        queries: np.ndarray,
        *,
        k: int = 10,
        probes: int | None = None,
        recall_target: float | None = None,
        version: str | None = None,
        ranking: str | None = None,
        filter: Filter | None = None,
        max_probes: int | None = None,
    ) -> Classification:
        """Distance-weighted k-NN vote over the neighbours :meth:`search` finds."""
        started = time.perf_counter()
        stats = QueryStats()

        def run(manifest: Manifest) -> Classification:
            if not manifest.label_names:
                raise InvalidRequest(
                    "mode", f"'classify' needs a labelled collection; {collection!r} has no labels"
                )
            result = self._search(
                manifest, queries, k, probes, recall_target, ranking, stats, started, filter, max_probes
            )
            return vote(result, manifest.metric)

        return self._run(collection, version, stats, started, run)

    def rank(
        self, manifest: Manifest, queries: np.ndarray, probes: int, ranking: str | None = None
    ) -> np.ndarray:
        """The ``probes`` best buckets for each prepared query, best first — shape (nq, probes)."""
        ranking = ranking or manifest.params.get("ranking", DEFAULT_RANKING)
        if ranking not in RANKINGS:
            raise InvalidRequest("ranking", f"must be one of {list(RANKINGS)}, got {ranking!r}")
        scores = bucket_scores(queries, manifest.buckets.centroids, manifest.tree, manifest.metric, ranking)
        empty = manifest.buckets.rows == 0
        scores[:, empty] = np.inf  # an emptied bucket is never worth a GET...
        return top_buckets(
            scores, max(1, min(probes, int((~empty).sum())))
        )  # ...even when probes exceed the rest

    # -- internals -------------------------------------------------------------------------
    def _run(self, collection: str, version: str | None, stats: QueryStats, started: float, work: Any) -> Any:
        """Run ``work(manifest)`` on the live (or pinned) manifest in as few GET rounds as possible.

        A warm container whose HEAD is due for revalidation does not wait for it: the
        conditional GET of HEAD runs alongside the bucket GETs of the cached version, and
        only if HEAD moved is the work redone on the new version.
        """
        if version is None:
            state = self._heads.get(collection)
            stale = state is not None and time.monotonic() - state.checked_at >= self.head_ttl
            cached = self._manifests.get((collection, state.head.version)) if state else None
            if stale and cached is not None:
                head_stats = QueryStats()
                pending = self.store.submit(self._head, collection, head_stats)
                failure: KdBucketsError | None = None
                try:
                    result = work(cached)
                except CorruptObject as exc:  # e.g. an old version's buckets already collected
                    failure = exc
                finally:
                    head = pending.result()
                    stats.s3_gets += head_stats.s3_gets
                if head.version == cached.version:
                    if failure is not None:
                        raise failure
                    return result
                _reset_counts(stats)  # HEAD moved on: redo on the new version
        return work(self.manifest(collection, version, stats))

    def _search(
        self,
        manifest: Manifest,
        queries: np.ndarray,
        k: int,
        probes: int | None,
        recall_target: float | None,
        ranking: str | None,
        stats: QueryStats,
        started: float,
        filter: Filter | None = None,
        max_probes: int | None = None,
    ) -> SearchResult:
        q = self._prepare_queries(queries, manifest)
        if not 1 <= k <= MAX_K:
            raise InvalidRequest("k", f"must be between 1 and {MAX_K}, got {k}")
        probes = min(self._resolve_probes(manifest, probes, recall_target, stats), manifest.n_buckets)
        if filter is None:
            probe_lists = self.rank(manifest, q, probes, ranking)
            stats.probes = probe_lists.shape[1]
            buckets = self._fetch(manifest, np.unique(probe_lists), stats)
            result = _exact_top_k(q, probe_lists, buckets, k, manifest)
        else:
            result = self._filtered(manifest, q, k, probes, ranking, stats, filter, max_probes)
        result.stats = stats
        stats.elapsed_ms = round((time.perf_counter() - started) * 1000.0, 3)
        return result

    def _filtered(
        self,
        manifest: Manifest,
        q: np.ndarray,
        k: int,
        probes: int,
        ranking: str | None,
        stats: QueryStats,
        filt: Filter,
        max_probes: int | None,
    ) -> SearchResult:
        """Filtered search: widen the probe set (doubling) for queries with fewer than k matches.

        Stops when every query has k matches or ``max_probes`` buckets (default: all of them,
        capped at :data:`MAX_FILTER_PROBES`) were read — so k results come back whenever at
        least k vectors match within that bound, never silently fewer.
        """
        limit = min(manifest.n_buckets, max_probes or MAX_FILTER_PROBES)
        order = self.rank(manifest, q, manifest.n_buckets, ranking)
        masks: dict[int, np.ndarray] = {}
        result: SearchResult | None = None
        pending = np.arange(len(q))
        p = min(probes, limit)
        while True:
            lists = order[pending, :p]
            buckets = self._fetch(manifest, np.unique(lists), stats, accumulate=True)
            for b, bucket in buckets.items():
                if b not in masks:
                    masks[b] = filt.mask(bucket.metadata, bucket.count)
            part = _exact_top_k(q[pending], lists, buckets, k, manifest, masks)
            result = part if result is None else _merge_rows(result, part, pending)
            stats.probes = p
            short = np.isfinite(part.distances).sum(axis=1) < k
            if not short.any() or p >= limit:
                return result
            pending, p = pending[short], min(limit, 2 * p)

    def _resolve_probes(
        self, manifest: Manifest, probes: int | None, recall_target: float | None, stats: QueryStats
    ) -> int:
        if probes is not None and recall_target is not None:
            raise InvalidRequest("probes", "cannot be combined with recall_target; give one of them")
        if probes is not None:
            if probes < 1:
                raise InvalidRequest("probes", f"must be at least 1, got {probes}")
            return probes
        if recall_target is not None and not 0.0 < recall_target <= 1.0:
            raise InvalidRequest("recall_target", f"must be in (0, 1], got {recall_target}")
        target = DEFAULT_RECALL_TARGET if recall_target is None else recall_target
        chosen = probes_for(manifest.extra.get("calibration"), target, manifest.n_buckets)
        if chosen is None:
            if recall_target is not None:
                raise InvalidRequest(
                    "recall_target",
                    f"needs a calibrated index; rebuild {manifest.collection!r} or give probes",
                )
            return DEFAULT_PROBES
        stats.recall_target = target
        return chosen

    def _head(self, collection: str, stats: QueryStats) -> Head:
        key = layout.head_key(collection)
        now = time.monotonic()
        state = self._heads.get(collection)
        if state is not None and now - state.checked_at < self.head_ttl:
            return state.head
        try:
            stats.s3_gets += 1
            if state is not None:
                fresh = self.store.get_if_changed(key, state.etag)
                if fresh is None:
                    state.checked_at = now
                    return state.head
                body, etag = fresh
            else:
                body, etag = self.store.get(key)
        except NotFound:
            self._heads.pop(collection, None)
            raise CollectionNotFound(collection) from None
        head = decode_head(body, key=key)
        self._heads[collection] = _HeadState(head, etag, now)
        return head

    def _prepare_queries(self, queries: np.ndarray, manifest: Manifest) -> np.ndarray:
        if queries.ndim != 2 or queries.shape[0] == 0:
            raise InvalidRequest("vectors", "must be a non-empty list of vectors")
        if queries.shape[1] != manifest.dim:
            raise InvalidRequest(
                "vectors[0]",
                f"has {queries.shape[1]} dimensions; collection {manifest.collection!r} has {manifest.dim}",
            )
        finite = np.isfinite(queries).all(axis=1)
        if not finite.all():
            raise InvalidRequest(f"vectors[{int(np.argmin(finite))}]", "contains NaN or Inf")
        if manifest.metric == "cosine":
            zero = ~np.any(queries != 0, axis=1)
            if zero.any():
                raise InvalidRequest(
                    f"vectors[{int(np.argmax(zero))}]", "is all zeros; cosine needs a nonzero vector"
                )
        return distances.prepare(queries, manifest.metric)

    def _fetch(
        self, manifest: Manifest, needed: np.ndarray, stats: QueryStats, accumulate: bool = False
    ) -> dict[int, Bucket]:
        """Decoded buckets for ``needed`` ids: cache first, then one parallel round of GETs."""
        out: dict[int, Bucket] = {}
        missing: list[int] = []
        for b in needed.tolist():
            fp = manifest.buckets.fingerprints[b]
            hit = self.buckets.get(fp)
            if hit is None and self.disk is not None:
                hit = self.disk.get(fp, manifest.dim)
                if hit is not None:
                    self.buckets.put(fp, hit, hit.nbytes)
            if hit is not None:
                out[b] = hit
            else:
                missing.append(b)
        stats.cache_hits = len(out) + (stats.cache_hits if accumulate else 0)
        keys = [layout.bucket_key(manifest.collection, manifest.buckets.fingerprints[b]) for b in missing]
        try:
            bodies = self.store.get_many(keys)
        except NotFound as exc:
            raise CorruptObject(
                str(exc).split(" does not exist")[0], "bucket named by the manifest is missing"
            ) from None
        for b, key, body in zip(missing, keys, bodies, strict=True):
            fp = manifest.buckets.fingerprints[b]
            bucket = decode_bucket(body, key=key, expected_fingerprint=fp)
            if bucket.count != int(manifest.buckets.rows[b]) or bucket.vectors.shape[1] != manifest.dim:
                raise CorruptObject(key, "bucket shape disagrees with the manifest")
            self.buckets.put(fp, bucket, bucket.nbytes)
            if self.disk is not None:
                self.disk.put(fp, bucket)
            out[b] = bucket
            stats.bytes_fetched += len(body)
        stats.buckets_fetched = len(missing) + (stats.buckets_fetched if accumulate else 0)
        stats.s3_gets += len(missing)
        return out


def _exact_top_k(
    queries: np.ndarray,
    probe_lists: np.ndarray,
    buckets: dict[int, Bucket],
    k: int,
    manifest: Manifest,
    masks: dict[int, np.ndarray] | None = None,
) -> SearchResult:
    """Score every fetched bucket once against the queries that probe it; merge to top k.

    ``masks`` (bucket → bool per row) excludes the rows a metadata filter rejects.
    """
    nq, p = probe_lists.shape
    cand_d = np.full((nq, p, k), np.inf, dtype=np.float32)
    cand_ref = np.full((nq, p, k), -1, dtype=np.int64)
    for b, bucket in buckets.items():
        hit = probe_lists == b
        qi = np.flatnonzero(hit.any(axis=1))
        if bucket.count == 0 or qi.size == 0:
            continue
        slot = np.argmax(hit[qi], axis=1)
        d = distances.pairwise(
            queries[qi],
            bucket.vectors,
            manifest.metric,
            bucket.sq_norms() if manifest.metric == "l2" else None,
        )
        if masks is not None:
            d[:, ~masks[b]] = np.inf
        kk = min(k, bucket.count)
        top = (
            np.argpartition(d, kk - 1, axis=1)[:, :kk]
            if kk < bucket.count
            else np.broadcast_to(np.arange(bucket.count), d.shape)
        )
        chosen = np.take_along_axis(d, top, axis=1)
        cand_d[qi, slot, :kk] = chosen
        cand_ref[qi, slot, :kk] = np.where(np.isfinite(chosen), (b << 32) | top, -1)
    flat_d, flat_ref = cand_d.reshape(nq, -1), cand_ref.reshape(nq, -1)
    if any(bucket.keys is not None for bucket in buckets.values()):
        _drop_duplicates(flat_d, flat_ref, buckets)
    order = np.lexsort((flat_ref, flat_d), axis=-1)[:, :k]
    refs = np.take_along_axis(flat_ref, order, axis=1)
    # Recompute the winners' distances exactly (float64) and re-sort: the reported figures
    # match brute force to float64 precision, and near-ties are ordered correctly.
    neighbours = np.zeros((nq, refs.shape[1], manifest.dim), dtype=np.float32)
    label_codes = np.full(refs.shape, -1, dtype=np.int32)
    ids: list[list[int | str | None]] = [[None] * refs.shape[1] for _ in range(nq)]
    meta: list[list[dict[str, Any] | None]] = [[None] * refs.shape[1] for _ in range(nq)]
    valid = refs >= 0
    bucket_of, row_of = refs >> 32, refs & 0xFFFFFFFF
    for b in np.unique(bucket_of[valid]).tolist():
        sel = valid & (bucket_of == b)
        rows = row_of[sel]
        bucket = buckets[b]
        neighbours[sel] = bucket.vectors[rows]
        if bucket.labels is not None:
            label_codes[sel] = bucket.labels[rows]
        where = np.argwhere(sel).tolist()
        for (qi, j), ident in zip(where, bucket.ids.take(rows), strict=True):
            ids[qi][j] = ident
        if bucket.metadata is not None:
            for (qi, j), record in zip(where, bucket.metadata.take(rows), strict=True):
                meta[qi][j] = record
    dist = np.where(valid, distances.exact(queries, neighbours, manifest.metric), np.inf)
    resort = np.lexsort((np.where(valid, refs, np.iinfo(np.int64).max), dist), axis=-1)
    dist = np.take_along_axis(dist, resort, axis=1)
    label_codes = np.take_along_axis(label_codes, resort, axis=1)
    ids = [[row[j] for j in perm] for row, perm in zip(ids, resort.tolist(), strict=True)]
    meta = [[row[j] for j in perm] for row, perm in zip(meta, resort.tolist(), strict=True)]
    if refs.shape[1] < k:  # fewer candidates than k in the whole probe set
        pad = k - refs.shape[1]
        dist = np.pad(dist, ((0, 0), (0, pad)), constant_values=np.inf)
        label_codes = np.pad(label_codes, ((0, 0), (0, pad)), constant_values=-1)
        ids = [row + [None] * pad for row in ids]
        meta = [row + [None] * pad for row in meta]
    return SearchResult(manifest.version, dist, ids, label_codes, manifest.label_names, metadata=meta)


def _merge_rows(base: SearchResult, part: SearchResult, rows: np.ndarray) -> SearchResult:
    """Replace the rows ``rows`` of ``base`` by the rows of ``part`` (a widened re-search)."""
    base.distances[rows] = part.distances
    base.label_codes[rows] = part.label_codes
    for i, row in enumerate(rows.tolist()):
        base.ids[row] = part.ids[i]
        base.metadata[row] = part.metadata[i]
    return base


def _drop_duplicates(flat_d: np.ndarray, flat_ref: np.ndarray, buckets: dict[int, Bucket]) -> None:
    """A vector replicated into two probed buckets keeps only its first copy (in place)."""
    keys = np.full(flat_ref.shape, -1, dtype=np.int64)
    valid = flat_ref >= 0
    bucket_of, row_of = flat_ref >> 32, flat_ref & 0xFFFFFFFF
    for b in np.unique(bucket_of[valid]).tolist():
        sel = valid & (bucket_of == b)
        bucket_keys = buckets[b].keys
        keys[sel] = bucket_keys[row_of[sel]] if bucket_keys is not None else -2 - flat_ref[sel]
    order = np.lexsort((flat_ref, flat_d, keys), axis=-1)
    sorted_keys = np.take_along_axis(keys, order, axis=1)
    dup = np.zeros(keys.shape, dtype=bool)
    dup[:, 1:] = (sorted_keys[:, 1:] == sorted_keys[:, :-1]) & (sorted_keys[:, 1:] != -1)
    rows = np.broadcast_to(np.arange(len(keys))[:, None], keys.shape)
    flat_d[rows[dup], order[dup]] = np.inf
    flat_ref[rows[dup], order[dup]] = -1


def _reset_counts(stats: QueryStats) -> None:
    """Forget the per-request bucket figures of a pass that is about to be redone."""
    stats.buckets_fetched = stats.bytes_fetched = stats.cache_hits = 0


def vote(result: SearchResult, metric: str) -> Classification:
    """Distance-weighted vote: weight 1/(ε + distance) (cosine, l2), softmax of -distance (ip)."""
    names = result.label_names or []
    d = result.distances
    valid = np.isfinite(d) & (result.label_codes >= 0)
    if metric == "ip":
        shifted = d - np.where(valid, d, np.inf).min(axis=1, keepdims=True)
        weights = np.where(valid, np.exp(-np.where(valid, shifted, 0.0)), 0.0)
    else:
        weights = np.where(valid, 1.0 / (1e-6 + np.where(valid, np.maximum(d, 0.0), 1.0)), 0.0)
    shares = np.zeros((d.shape[0], len(names)), dtype=np.float64)
    rows = np.broadcast_to(np.arange(d.shape[0])[:, None], d.shape)
    np.add.at(shares, (rows[valid], result.label_codes[valid]), weights[valid])
    totals = shares.sum(axis=1, keepdims=True)
    shares = np.divide(shares, totals, out=np.zeros_like(shares), where=totals > 0)
    winners = np.argmax(shares, axis=1)
    predicted = [names[w] if totals[i, 0] > 0 else None for i, w in enumerate(winners.tolist())]
    return Classification(predicted=predicted, shares=shares, label_names=names, neighbours=result)


def _check_version(version: object) -> str:
    if (
        not isinstance(version, str)
        or not version
        or len(version) > 64
        or not all(c.isalnum() or c in "._-" for c in version)
    ):
        raise InvalidRequest("version", f"is not a valid version id: {str(version)[:80]!r}")
    return version
