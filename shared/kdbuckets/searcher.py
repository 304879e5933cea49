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

from . import catalog, distances, layout, scoring, tail
from .bucket import Bucket, decode_bucket
from .cache import ByteBudgetLRU, DiskTier
from .calibration import probes_for
from .collection import check_vectors
from .errors import CollectionNotFound, CorruptObject, InvalidRequest, KdBucketsError
from .filters import AllOf, Filter, parse_filter
from .manifest import Head, Manifest, Part, Root
from .storage import NotFound, ObjectStore
from .views import RoutedView, View, in_memory, view_of

#: "strong": every query revalidates HEAD (read-your-writes); "eventual": HEAD is trusted for
#: ``head_ttl`` seconds (the staleness bound).
CONSISTENCIES = ("strong", "eventual")
DEFAULT_CONSISTENCY = "strong"
DEFAULT_RECALL_TARGET = 0.95
DEFAULT_PROBES = 8
MAX_K = 1000
#: Upper bound on buckets a filtered query reads while looking for k matches.
MAX_FILTER_PROBES = 1024
_MANIFESTS_KEPT = 8
#: Decoded manifest parts kept across requests (content-addressed: shared by versions).
PART_CACHE_BYTES = 64 << 20
#: Decoded tail segments kept across requests (content-addressed: versions share most).
SEGMENT_CACHE_BYTES = 64 << 20
_OVERLAYS_KEPT = 4


@dataclass
class QueryStats:
    """What one request cost; the figures users pay for."""

    buckets_fetched: int = 0
    bytes_fetched: int = 0
    cache_hits: int = 0
    manifest_fetched: bool = False
    #: manifest parts read from S3 by this request (cached parts not counted), and the bytes
    #: of manifest objects (root and parts) it read
    parts_fetched: int = 0
    manifest_bytes: int = 0
    s3_gets: int = 0
    probes: int = 0
    recall_target: float | None = None
    elapsed_ms: float = 0.0
    #: rounds of bucket reads (each one parallel round of GETs); 1 unless the request needed
    #: more than scoring.ROUND_BYTES of buckets at once or widened
    fetch_rounds: int = 0
    #: per query: False when it returned fewer than its k results (min(k, count) without a
    #: filter) because a bound (max_probes, MAX_FILTER_PROBES) stopped it, not the data
    complete: list[bool] = field(default_factory=list)
    #: "strong" or "eventual" for queries of the live version, "pinned" for a given version
    consistency: str = "strong"
    #: GETs and bytes spent resolving examples given by id (id directory, their buckets,
    #: the pinned manifest); included in s3_gets, and in buckets_fetched / bytes_fetched
    #: for the examples' buckets and id-directory shards
    example_gets: int = 0
    example_bytes: int = 0
    #: unmerged tail: segments read from S3 by this request (in its first bucket round; cached
    #: ones not counted, their bytes are in bytes_fetched) and the live rows scanned in full
    segments_fetched: int = 0
    tail_rows: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "complete": list(self.complete)}


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
    #: with ``group_by``: per query, (group value, positions in that query's results) of up to
    #: k groups, best group first; the results hold exactly the grouped hits, nearest first
    groups: list[list[tuple[Any, list[int]]]] | None = None

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
    """A verified HEAD and when it was last confirmed current."""

    verified: catalog.HeadState
    checked_at: float

    @property
    def head(self) -> Head:
        return self.verified.head


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
        self._manifests: dict[tuple[str, str], Manifest | Root] = {}
        self._whole: dict[tuple[str, str], Manifest] = {}
        self.parts: ByteBudgetLRU[Part] = ByteBudgetLRU(PART_CACHE_BYTES)
        self.segments: ByteBudgetLRU[tail.Segment] = ByteBudgetLRU(SEGMENT_CACHE_BYTES)
        self._overlays: dict[tuple[str, ...], tuple[tail.Overlay, np.ndarray]] = {}
        self._heads: dict[str, _HeadState] = {}
        self._lock = threading.Lock()

    # -- public API ------------------------------------------------------------------------
    def manifest(
        self,
        collection: str,
        version: str | None = None,
        stats: QueryStats | None = None,
        *,
        ttl: float | None = None,
    ) -> Manifest:
        """The whole manifest of the live (or pinned) version (every part), from cache when possible."""
        stored = self._stored(collection, version, stats or QueryStats(), ttl=ttl)
        return self._expand(stored)

    def _stored(
        self, collection: str, version: str | None, stats: QueryStats, *, ttl: float | None = None
    ) -> Manifest | Root:
        """What a query reads first of the live (or pinned) version: its root (or flat manifest).

        Reading and verifying is the catalog's job; this adds the container-wide caches.
        """
        layout.check_collection(collection)
        expected_sha = None
        if version is None:
            head = self._head(collection, stats, self.head_ttl if ttl is None else ttl)
            version, expected_sha = head.version, head.sha256
        else:
            layout.check_version(version)
        cached = self._manifests.get((collection, version))
        if cached is not None:
            return cached
        stats.s3_gets += 1
        stored, size = catalog.load_root(self.store, collection, version, expected_sha256=expected_sha)
        stats.manifest_fetched = True
        stats.manifest_bytes += size
        with self._lock:
            if len(self._manifests) >= _MANIFESTS_KEPT:
                self._manifests.pop(next(iter(self._manifests)))
            self._manifests[(collection, version)] = stored
        return stored

    def _expand(self, stored: Manifest | Root) -> Manifest:
        """The whole manifest of a root (parts and tree; kept while its root is)."""
        if isinstance(stored, Manifest):
            return stored
        key = (stored.collection, stored.version)
        whole = self._whole.get(key)
        if whole is None:
            whole, _ = catalog.expand(self.store, stored)
            with self._lock:
                self._whole = {k: v for k, v in self._whole.items() if k in self._manifests}
                self._whole[key] = whole
        return whole

    def _view(self, stored: Manifest | Root, ranking: str | None, stats: QueryStats) -> View:
        def load(which: list[int]) -> list[Part]:
            return self._load_parts(stored, which, stats)

        return view_of(stored, ranking, load, lambda: self._expand(stored))

    def _load_parts(self, root: Root, which: list[int], stats: QueryStats) -> list[Part]:
        """Parts ``which`` of ``root``: from the cache, the rest in one parallel round of GETs."""
        out: dict[int, Part] = {}
        missing: list[int] = []
        for p in which:
            hit = self.parts.get(root.parts.fingerprints[p])
            if hit is None:
                missing.append(p)
            else:
                out[p] = hit
        if missing:
            for p, (part, size) in zip(missing, catalog.load_parts(self.store, root, missing), strict=True):
                nbytes = part.ids.nbytes + part.buckets.centroids.nbytes + 96 * len(part.ids)
                self.parts.put(root.parts.fingerprints[p], part, nbytes)
                out[p] = part
                stats.manifest_bytes += size
            stats.parts_fetched += len(missing)
            stats.s3_gets += len(missing)
        return [out[p] for p in which]

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
        consistency: str = DEFAULT_CONSISTENCY,
        group_by: str | None = None,
        group_size: int = 1,
    ) -> SearchResult:
        """k nearest neighbours of each row of ``queries`` (nq, d).

        With ``group_by`` (a metadata key), up to k groups of at most ``group_size`` hits
        each, by the key's value, best group first; reading widens as with a filter until k
        groups are found (rows without the key belong to no group).

        ``probes`` buckets are read per query; or, with ``recall_target``, as many as the
        build-time calibration says reach that recall@k for this ``k``. With neither, the target is
        :data:`DEFAULT_RECALL_TARGET` (or :data:`DEFAULT_PROBES` for an uncalibrated index).
        With ``filter``, only vectors whose metadata match count, and more buckets are read
        (up to ``max_probes``) until every query has k matches. Any query short of
        ``min(k, count)`` results widens the same way, so fewer results always have a reason
        (a filter, or ``max_probes``: see ``stats.complete``).

        ``consistency`` "strong" (default) answers from the version HEAD names when the query
        starts — an acknowledged write is always visible; "eventual" may answer from a version
        up to ``head_ttl`` seconds old, saving nothing but the conditional GET of HEAD.
        """
        started = time.perf_counter()
        stats = QueryStats()
        return self._run(
            collection,
            version,
            stats,
            consistency,
            lambda m: self._search(
                m,
                queries,
                k,
                probes,
                recall_target,
                ranking,
                stats,
                started,
                filter,
                max_probes,
                grouping=_grouping(group_by, group_size, k),
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
        consistency: str = DEFAULT_CONSISTENCY,
    ) -> Classification:
        """Distance-weighted k-NN vote over the neighbours :meth:`search` finds."""
        started = time.perf_counter()
        stats = QueryStats()

        def run(manifest: Manifest | Root) -> Classification:
            if not manifest.label_names:
                raise InvalidRequest(
                    "mode", f"'classify' needs a labelled collection; {collection!r} has no labels"
                )
            result = self._search(
                manifest, queries, k, probes, recall_target, ranking, stats, started, filter, max_probes
            )
            return vote(result, manifest.metric)

        return self._run(collection, version, stats, consistency, run)

    def rank(
        self, manifest: Manifest, queries: np.ndarray, probes: int, ranking: str | None = None
    ) -> np.ndarray:
        """The ``probes`` buckets each prepared query reads first, best first — shape (nq, probes).

        Exactly the order a query of ``manifest`` follows (in tiers of parts for a
        hierarchical one), in the manifest's own bucket numbers.
        """
        view = in_memory(manifest, ranking)
        lists = view.rank(queries, probes)
        return view.global_ids[lists] if isinstance(view, RoutedView) else lists

    # -- internals -------------------------------------------------------------------------
    def _refine_groups(
        self,
        stored: Manifest | Root,
        q: np.ndarray,
        first: SearchResult,
        k: int,
        probes: int,
        ranking: str | None,
        stats: QueryStats,
        started: float,
        filter: Filter | None,
        exclude: scoring.Exclusion | None,
        grouping: scoring.Grouping,
    ) -> SearchResult:
        """Fill each chosen group with its best ``group_size`` hits: a second pass per query.

        The first pass picks the k groups (a group's best hit always survives its pool of
        k × group_size) but may have dropped later members of a group behind better hits of
        other groups. Restricted to the chosen values (``$in``), only k groups compete for
        the pool, so it holds each one's best ``group_size`` among the buckets read. The
        buckets are the first pass's, from the cache (no new GETs while they fit it).
        """
        groups = first.groups or []
        out = first
        kept = (stats.probes, list(stats.complete))
        for i, chosen in enumerate(groups):
            values = [value for value, _ in chosen]
            if not values or any(isinstance(v, list | dict) for v in values):
                continue  # a list value has no $in form; keep the first pass's members
            clause = parse_filter({grouping.key: {"$in": values}}, "group_by")
            both = clause if filter is None else AllOf((filter, clause))
            one = (
                None
                if exclude is None
                else scoring.Exclusion(exclude.keys[i : i + 1], exclude.mask[i : i + 1])
            )
            sub = scoring.Grouping(grouping.key, grouping.size)
            again = self._search(
                stored, q[i : i + 1], k, probes, None, ranking, stats, started, both, probes, one, sub, True
            )
            if again.groups and len(again.groups[0]) >= len(chosen):
                out = _replace_row(out, i, again)
        stats.probes, stats.complete = kept
        return out

    def _run(
        self, collection: str, version: str | None, stats: QueryStats, consistency: str, work: Any
    ) -> Any:
        """Run ``work(manifest)`` on the live (or pinned) manifest in as few GET rounds as possible.

        A warm container whose HEAD is due for revalidation (always, under strong consistency)
        does not wait for it: the conditional GET of HEAD runs alongside the bucket GETs of the
        cached version, and only if HEAD moved is the work redone on the new version — so the
        answer always comes from the version HEAD named after the query arrived. Whatever the
        cached version made the work fail with (a rebuild changed the dimension, an old
        version's buckets were collected) counts only if HEAD did not move.
        """
        if consistency not in CONSISTENCIES:
            raise InvalidRequest("consistency", f"must be one of {list(CONSISTENCIES)}, got {consistency!r}")
        ttl = 0.0 if consistency == "strong" else self.head_ttl
        stats.consistency = consistency if version is None else "pinned"
        if version is None:
            state = self._heads.get(collection)
            stale = state is not None and time.monotonic() - state.checked_at >= ttl
            cached = self._manifests.get((collection, state.head.version)) if state else None
            if stale and cached is not None:
                head_stats = QueryStats()
                pending = self.store.submit(self._head, collection, head_stats, ttl)
                failure: KdBucketsError | None = None
                try:
                    result = work(cached)
                except KdBucketsError as exc:
                    failure = exc
                finally:
                    head = pending.result()
                    stats.s3_gets += head_stats.s3_gets
                if head.version == cached.version:
                    if failure is not None:
                        raise failure
                    return result
                _reset_counts(stats)  # HEAD moved on: redo on the new version
        return work(self._stored(collection, version, stats, ttl=ttl))

    def _search(
        self,
        stored: Manifest | Root,
        queries: np.ndarray,
        k: int,
        probes: int | None,
        recall_target: float | None,
        ranking: str | None,
        stats: QueryStats,
        started: float,
        filter: Filter | None = None,
        max_probes: int | None = None,
        exclude: scoring.Exclusion | None = None,
        grouping: scoring.Grouping | None = None,
        refining: bool = False,
    ) -> SearchResult:
        """Streaming exact k-NN over each query's best buckets, widened where a query is short.

        ``exclude``: keys each query never returns (query by example). ``grouping``: keep
        the best ``group_size`` per group value in a pool of k × group_size, and widen until
        k groups are found, as a filter does.

        Each query reads its ``probes`` best buckets. A query left with fewer results than its
        target — k matches with a filter, else min(k, vectors in the collection) — reads the
        next ones (doubling its probes) until it has them or a bound stops it: ``max_probes``,
        and with a filter at most :data:`MAX_FILTER_PROBES`. A widening step reads only the
        query's new positions, and buckets this request still holds are not read again.
        Buckets are read in rounds of at most ``scoring.ROUND_BYTES`` decoded bytes, each
        scored and resolved before the next round is read, so memory is bounded by the round
        budget plus O(nq × k) whatever the request.
        """
        manifest = self._view(stored, ranking, stats)
        q = self._prepare_queries(queries, manifest)
        if not 1 <= k <= MAX_K:
            raise InvalidRequest("k", f"must be between 1 and {MAX_K}, got {k}")
        width = k * (grouping.size if grouping is not None else 1)
        scoring.check_result_count(len(q), width)
        probes = min(self._resolve_probes(manifest, probes, recall_target, stats, k), manifest.n_buckets)
        readable = max(1, manifest.readable)
        if filter is not None or grouping is not None:
            target, limit = k, min(readable, max_probes or MAX_FILTER_PROBES)
        else:
            target = min(k, manifest.count - (exclude.width if exclude is not None else 0))
            limit = readable if max_probes is None else min(readable, max(probes, max_probes))
        top = scoring.TopK(len(q), width, grouping)
        found = top.found if grouping is None else top.groups_found
        held: dict[int, Bucket] = {}  # buckets read by this request and still in hand
        pending_tail: tuple[tail.Overlay, np.ndarray] | None = None  # (overlay, its centroid)
        pending, done, p = np.arange(len(q)), 0, min(probes, limit)
        while True:
            lists = manifest.rank(q[pending], p)[:, done:]
            table = manifest.buckets  # a routed view grows as it reads parts
            decoded = table.sizes * (2 if manifest.dtype == "float16" else 1)
            by_bucket = scoring.group_by_bucket(np.repeat(pending, lists.shape[1]), lists.ravel())
            needed = np.fromiter(by_bucket, dtype=np.int64, count=len(by_bucket))
            fresh = needed[[b not in held for b in needed.tolist()]]
            if held and int(decoded[fresh].sum() + decoded[list(held)].sum()) > scoring.ROUND_BYTES:
                held, fresh = {}, needed  # cannot keep both: release, re-read what is needed again
            reuse = {b: held[b] for b in needed.tolist() if b in held}
            rounds = scoring.plan_rounds(fresh, table.sizes, manifest.dtype) or [fresh]
            for i, group in enumerate(rounds):
                if pending_tail is None:  # the tail comes in the first round, beside its buckets
                    buckets, pending_tail = self._fetch_with_tail(manifest, group, stats)
                    _score_tail(top, q, pending_tail, manifest.metric, filter, exclude, stats)
                else:
                    buckets = self._fetch(manifest, group, stats) if group.size else {}
                if i == 0:
                    buckets.update(reuse)
                gid = manifest.global_ids  # ties break by the version's bucket numbers, not the view's
                for b, bucket in buckets.items():
                    mask = None if filter is None else filter.mask(bucket.metadata, bucket.count)
                    mask = _unhidden(pending_tail[0], bucket, mask)
                    scoring.score_bucket(
                        top,
                        q,
                        by_bucket[b],
                        int(gid[b]),
                        bucket,
                        manifest.metric,
                        table.centroids[b],
                        mask,
                        exclude,
                    )
                held_now = {int(gid[b]): bucket for b, bucket in buckets.items()}
                held_now[tail.TAIL_BUCKET] = pending_tail[0].live
                top.resolve(q, held_now, manifest.metric)
                if len(rounds) == 1:  # it fits beside what is held: keep it for later widening
                    held.update(buckets)
                del buckets  # else release this round before the next one is read
            reuse = {}
            stats.probes = p
            short = found(pending) < target
            if not short.any() or p >= limit:
                break
            pending, done, p = pending[short], p, min(limit, 2 * p)
        complete = np.ones(len(q), dtype=bool)
        complete[pending[short]] = p >= readable
        stats.complete = complete.tolist()
        dist, ids, labels, meta = top.finish(manifest.metric)
        result = SearchResult(manifest.version, dist, ids, labels, manifest.label_names, metadata=meta)
        if grouping is not None:
            result = _grouped(result, top.finished_groups, grouping, k)
            if not refining:
                result = self._refine_groups(
                    stored, q, result, k, p, ranking, stats, started, filter, exclude, grouping
                )
        result.stats = stats
        stats.elapsed_ms = round((time.perf_counter() - started) * 1000.0, 3)
        return result

    def _resolve_probes(
        self,
        manifest: View,
        probes: int | None,
        recall_target: float | None,
        stats: QueryStats,
        k: int = 10,
    ) -> int:
        """Probes per query: as given, or the fewest the calibration says reach the target at ``k``.

        Recall@k needs more buckets as k grows (the 1,000th neighbour lies further out than the
        10th), so the curve for this k decides (``calibration.probes_for``); a manifest
        calibrated only at k = 10 (built before per-k curves) answers every k from that curve.
        """
        if probes is not None and recall_target is not None:
            raise InvalidRequest("probes", "cannot be combined with recall_target; give one of them")
        if probes is not None:
            if probes < 1:
                raise InvalidRequest("probes", f"must be at least 1, got {probes}")
            return probes
        if recall_target is not None and not 0.0 < recall_target <= 1.0:
            raise InvalidRequest("recall_target", f"must be in (0, 1], got {recall_target}")
        target = DEFAULT_RECALL_TARGET if recall_target is None else recall_target
        chosen = probes_for(manifest.extra.get("calibration"), target, manifest.n_buckets, k)
        if chosen is None:
            if recall_target is not None:
                raise InvalidRequest(
                    "recall_target",
                    f"needs a calibrated index; rebuild {manifest.collection!r} or give probes",
                )
            return DEFAULT_PROBES
        stats.recall_target = target
        return chosen

    def _head(self, collection: str, stats: QueryStats, ttl: float) -> Head:
        """HEAD, trusted for ``ttl`` seconds, then revalidated by a conditional GET."""
        now = time.monotonic()
        state = self._heads.get(collection)
        if state is not None and now - state.checked_at < ttl:
            return state.head
        stats.s3_gets += 1
        if state is None:
            fresh = catalog.read_head(self.store, collection)
        else:
            fresh = catalog.revalidate_head(self.store, collection, state.verified)
        if fresh is None:
            self._heads.pop(collection, None)
            raise CollectionNotFound(collection)
        self._heads[collection] = _HeadState(fresh, now)
        return fresh.head

    def _prepare_queries(self, queries: np.ndarray, manifest: View) -> np.ndarray:
        if queries.ndim != 2 or queries.shape[0] == 0:
            raise InvalidRequest("vectors", "must be a non-empty list of vectors")
        if queries.shape[1] != manifest.dim:
            raise InvalidRequest(
                "vectors[0]",
                f"has {queries.shape[1]} dimensions; collection {manifest.collection!r} has {manifest.dim}",
            )
        check_vectors(queries, "vectors", metric=manifest.metric)
        return distances.prepare(queries, manifest.metric)

    def _fetch_with_tail(
        self, manifest: View, needed: np.ndarray, stats: QueryStats
    ) -> tuple[dict[int, Bucket], tuple[tail.Overlay, np.ndarray]]:
        """Buckets ``needed`` and the version's tail segments, in the same parallel round.

        Returns the buckets and the tail's overlay with its centroid (cached by the segments'
        fingerprints, as segments are by theirs).
        """
        refs = manifest.tail
        key = tuple(s.fingerprint for s in refs)
        cached = self._overlays.get(key)
        missing = [] if cached is not None else [s for s in refs if self.segments.get(s.fingerprint) is None]
        if not missing:
            buckets = self._fetch(manifest, needed, stats) if needed.size else {}
        else:
            keys = [layout.segment_key(manifest.collection, s.fingerprint) for s in missing]
            pending = [self.store.submit(self.store.get, k) for k in keys]  # leaf tasks: no nesting
            try:
                buckets = self._fetch(manifest, needed, stats) if needed.size else {}
            finally:
                try:
                    bodies = [p.result()[0] for p in pending]
                except NotFound as exc:
                    missing_what = "tail segment named by the manifest is missing"
                    raise CorruptObject(exc.uri or "", missing_what) from None
            for ref, k, body in zip(missing, keys, bodies, strict=True):
                segment = tail.decode_segment(body, key=k, ref=ref, dim=manifest.dim)
                self.segments.put(ref.fingerprint, segment, segment.rows.nbytes + segment.deletes.nbytes)
                stats.bytes_fetched += len(body)
            stats.segments_fetched += len(missing)
            stats.s3_gets += len(missing)
        if cached is None:
            segments = [self.segments.get(s.fingerprint) for s in refs]
            if any(s is None for s in segments):  # evicted meanwhile (a tiny cache): read again
                segments = load_segments_uncached(self.store, manifest)
            over = tail.overlay(segments, manifest.dim)  # type: ignore[arg-type]
            centre = over.live.vectors.mean(axis=0) if over.live.count else np.zeros(manifest.dim, np.float32)
            cached = (over, centre)
            with self._lock:
                if len(self._overlays) >= _OVERLAYS_KEPT:
                    self._overlays.pop(next(iter(self._overlays)))
                self._overlays[key] = cached
        return buckets, cached

    def _fetch(self, manifest: View, needed: np.ndarray, stats: QueryStats) -> dict[int, Bucket]:
        """Decoded buckets for ``needed`` ids: cache first, then one parallel round of GETs.

        One call is one fetch round; the figures in ``stats`` add up over a request's rounds.
        """
        stats.fetch_rounds += 1
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
        stats.cache_hits += len(out)
        keys = [layout.bucket_key(manifest.collection, manifest.buckets.fingerprints[b]) for b in missing]
        try:
            bodies = self.store.get_many(keys)
        except NotFound as exc:
            raise CorruptObject(exc.uri or "", "bucket named by the manifest is missing") from None
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
        stats.buckets_fetched += len(missing)
        stats.s3_gets += len(missing)
        return out


def load_segments_uncached(store: ObjectStore, source: Any) -> list[tail.Segment]:
    """The tail segments of ``source`` (a manifest, root or view), read and verified."""
    from .writer import load_segments  # the one segment reader

    return load_segments(store, source)


def _score_tail(
    top: scoring.TopK,
    q: np.ndarray,
    pending: tuple[tail.Overlay, np.ndarray],
    metric: str,
    filter: Filter | None,
    exclude: scoring.Exclusion | None,
    stats: QueryStats,
) -> None:
    """Scan the tail's live rows for every query (exhaustively: the tail is not indexed)."""
    over, centre = pending
    live = over.live
    stats.tail_rows = live.count
    if not live.count:
        return
    mask = None if filter is None else filter.mask(live.metadata, live.count)
    scoring.score_bucket(top, q, np.arange(len(q)), tail.TAIL_BUCKET, live, metric, centre, mask, exclude)


def _unhidden(over: tail.Overlay, bucket: Bucket, mask: np.ndarray | None) -> np.ndarray | None:
    """``mask`` without the rows of ``bucket`` that the tail overrides (upserted again, deleted)."""
    if over.empty:
        return mask
    hidden = over.hides(bucket.row_keys())
    if not hidden.any():
        return mask
    return ~hidden if mask is None else mask & ~hidden


def _grouping(group_by: str | None, group_size: int, k: int) -> scoring.Grouping | None:
    """The grouping of a request, checked: ``group_size`` is 1..k and needs ``group_by``."""
    if group_by is None:
        if group_size != 1:
            raise InvalidRequest("group_size", "needs group_by")
        return None
    if not isinstance(group_by, str) or not group_by:
        raise InvalidRequest("group_by", "must be a metadata key")
    if not 1 <= group_size <= k:
        raise InvalidRequest("group_size", f"must be between 1 and k ({k}), got {group_size}")
    return scoring.Grouping(group_by, group_size)


def _grouped(result: SearchResult, codes: np.ndarray, grouping: scoring.Grouping, k: int) -> SearchResult:
    """Keep per query the first k groups (by best hit) of the pool; results become their hits.

    The pool already holds at most ``group_size`` per group (TopK caps them), so this only
    drops the groups after the k-th. Loops are over the k × group_size results, not vectors.
    """
    nq, width = codes.shape
    dist = np.full((nq, width), np.inf)
    labels = np.full((nq, width), -1, np.int32)
    ids: list[list[Any]] = []
    metas: list[list[Any]] = []
    groups: list[list[tuple[Any, list[int]]]] = []
    for i in range(nq):
        members: dict[int, list[int]] = {}
        for j, code in enumerate(codes[i].tolist()):
            if code >= 0 and (code in members or len(members) < k):
                members.setdefault(code, []).append(j)
        keep = sorted(j for js in members.values() for j in js)
        where = {j: n for n, j in enumerate(keep)}
        dist[i, : len(keep)] = result.distances[i, keep]
        labels[i, : len(keep)] = result.label_codes[i, keep]
        ids.append([result.ids[i][j] for j in keep] + [None] * (width - len(keep)))
        metas.append([result.metadata[i][j] for j in keep] + [None] * (width - len(keep)))
        groups.append([(grouping.values[c], [where[j] for j in js]) for c, js in members.items()])
    return SearchResult(
        result.version, dist, ids, labels, result.label_names, result.stats, metas, groups=groups
    )


def _replace_row(result: SearchResult, i: int, row: SearchResult) -> SearchResult:
    """``result`` with query ``i``'s results and groups taken from the one-query ``row``."""
    result.distances[i] = row.distances[0]
    result.label_codes[i] = row.label_codes[0]
    result.ids[i] = row.ids[0]
    result.metadata[i] = row.metadata[0]
    if result.groups is not None and row.groups is not None:
        result.groups[i] = row.groups[0]
    return result


def _reset_counts(stats: QueryStats) -> None:
    """Forget the per-request bucket figures of a pass that is about to be redone."""
    stats.buckets_fetched = stats.bytes_fetched = stats.cache_hits = stats.fetch_rounds = 0
    stats.complete = []


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
