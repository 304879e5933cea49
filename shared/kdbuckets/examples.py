"""Query by example: search by stored id, recommend from examples, analogies.

Why a module of its own: these queries differ from a plain search only in where the query
vector comes from (stored vectors found by id, or a combination of examples) and in which
ids must not come back (the examples themselves). Ids are resolved by
:func:`kdbuckets.reading.fetch` pinned to the version the search reads, so the example and
the results always come from the same version; the search itself is the searcher's.

An example is an id (a string or an integer, as the collection's ids) or a vector (a list of
numbers). Only examples given by id can be excluded from results: a vector has no identity.

Cost, beyond the search: resolving ids reads the pinned manifest (1 GET + its parts and
tree), one parallel round of id-directory shards and one of the examples' primary buckets
(``stats.example_gets``; usually 3–4 GETs for a few ids). ``best_score`` reads the union of
the buckets every example would probe.

The unmerged tail (:mod:`kdbuckets.tail`): ``fetch`` resolves an id from the version's tail
when the tail mentions it (so an id written there is found, one deleted there is unknown) —
one more round, of the tail's segments, when the version has a tail. ``best_score`` scans the
tail's live rows as a search does and skips bucket rows the tail overrides.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from . import distances, reading, scoring, tail
from .bucket import Bucket, dedup_keys
from .collection import check_vectors
from .errors import InvalidRequest
from .filters import Filter
from .manifest import Manifest, Root
from .searcher import Classification, QueryStats, SearchResult, _grouping, vote

if TYPE_CHECKING:
    from .searcher import Searcher

STRATEGIES = ("average_vector", "best_score")


@dataclass(frozen=True)
class ByIds:
    """One query per stored id; each excludes its own id unless ``exclude_self`` is False."""

    ids: list[int | str]
    exclude_self: bool = True


@dataclass(frozen=True)
class Recommend:
    """One query from positive (and negative) examples, ids or vectors; examples excluded."""

    positive: list[Any]
    negative: list[Any] = field(default_factory=list)
    strategy: str = "average_vector"


@dataclass(frozen=True)
class Analogy:
    """ "a is to b as c is to ?": one query for b − a + c, excluding a, b and c."""

    a: Any
    b: Any
    c: Any


Spec = ByIds | Recommend | Analogy


@dataclass
class Resolved:
    """Examples as prepared vectors (m, d) float32, and the dedup key of those given by id."""

    vectors: np.ndarray
    keys: list[int | None]


def is_id(example: Any) -> bool:
    """An example is an id (str or int, not bool); anything else is a vector."""
    return isinstance(example, str | int) and not isinstance(example, bool)


def resolve(
    store: Any, stored: Manifest | Root, examples: Sequence[Any], fld: str, stats: QueryStats
) -> Resolved:
    """Vectors of ``examples`` (ids fetched from ``stored``'s version, vectors checked).

    Unknown ids raise :class:`InvalidRequest` naming every one of them.
    """
    dim, metric = stored.dim, stored.metric
    out = np.empty((len(examples), dim), np.float32)
    keys: list[int | None] = [None] * len(examples)
    at_ids = [i for i, e in enumerate(examples) if is_id(e)]
    if at_ids:
        ids = [examples[i] for i in at_ids]
        if len({type(i) for i in ids}) > 1:
            raise InvalidRequest(fld, "ids of one request are all strings or all integers")
        found: dict[Any, list[float]] = {}
        missing: list[Any] = []
        chunk = max(1, reading.MAX_VECTOR_VALUES // dim)  # what one fetch may return
        distinct = list(dict.fromkeys(ids))
        for start in range(0, len(distinct), chunk):
            got = reading.fetch(
                store,
                stored.collection,
                distinct[start : start + chunk],
                include_vectors=True,
                include_metadata=False,
                version=stored.version,
            )
            found.update({rec["id"]: rec["vector"] for rec in got.vectors})
            missing += got.missing
            _count(stats, got.stats)
        if missing:
            raise InvalidRequest(
                fld, f"unknown ids in collection {stored.collection!r} version {stored.version}: {missing!r}"
            )
        out[at_ids] = np.array([found[i] for i in ids], np.float32)
        kind = np.int64 if isinstance(ids[0], int) else str
        for i, key in zip(at_ids, dedup_keys(np.array(ids, dtype=kind)).tolist(), strict=True):
            keys[i] = key
    at_vectors = [i for i in range(len(examples)) if keys[i] is None]
    for i in at_vectors:
        given = examples[i]
        name = f"{fld}[{i}]" if len(examples) > 1 or fld in ("ids",) else fld
        if not isinstance(given, list) or not given:
            raise InvalidRequest(name, "must be an id (string or integer) or a vector (list of numbers)")
        try:
            row = np.asarray(given, dtype=np.float32)
        except (TypeError, ValueError):
            raise InvalidRequest(name, "must be a vector of numbers") from None
        if row.ndim != 1 or row.shape[0] != dim:
            raise InvalidRequest(
                name, f"has {row.size} dimensions; collection {stored.collection!r} has {dim}"
            )
        check_vectors(row[None, :], name, metric=metric)
        out[i] = distances.prepare(row[None, :], metric)[0]
    return Resolved(out, keys)


def _count(stats: QueryStats, read: reading.ReadStats) -> None:
    stats.example_gets += read.s3_gets
    stats.example_bytes += read.bytes_fetched + read.manifest_bytes
    stats.s3_gets += read.s3_gets
    stats.buckets_fetched += read.buckets_fetched
    stats.segments_fetched += read.segments_fetched
    stats.bytes_fetched += read.bytes_fetched
    stats.manifest_bytes += read.manifest_bytes


def _nonzero(vector: np.ndarray, fld: str, what: str) -> np.ndarray:
    if not np.all(np.isfinite(vector)) or float(np.abs(vector).max(initial=0.0)) == 0.0:
        raise InvalidRequest(fld, f"{what} is the zero vector; there is nothing to search for")
    return vector


def average_vector(positive: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Qdrant's average_vector: mean(pos) + (mean(pos) − mean(neg)); mean(pos) without negatives."""
    mean_pos = positive.astype(np.float64).mean(axis=0)
    if len(negative) == 0:
        return mean_pos.astype(np.float32)
    return (2.0 * mean_pos - negative.astype(np.float64).mean(axis=0)).astype(np.float32)


def analogy_vector(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """b − a + c (the search normalises it for cosine)."""
    return (b.astype(np.float64) - a + c).astype(np.float32)


def run(
    searcher: Searcher,
    collection: str,
    spec: Spec,
    *,
    mode: str = "search",
    k: int = 10,
    probes: int | None = None,
    recall_target: float | None = None,
    version: str | None = None,
    ranking: str | None = None,
    filter: Filter | None = None,
    max_probes: int | None = None,
    consistency: str = "strong",
    group_by: str | None = None,
    group_size: int = 1,
) -> SearchResult | Classification:
    """Search (or classify) by example on the live (or pinned) version of ``collection``."""
    started = time.perf_counter()
    stats = QueryStats()
    grouping = _grouping(group_by, group_size, k)
    if mode == "classify" and grouping is not None:
        raise InvalidRequest("group_by", "does not apply to mode 'classify'")
    if isinstance(spec, Recommend) and spec.strategy not in STRATEGIES:
        raise InvalidRequest(
            "recommend.strategy", f"must be one of {list(STRATEGIES)}, got {spec.strategy!r}"
        )
    best = isinstance(spec, Recommend) and spec.strategy == "best_score"
    if best and grouping is not None:
        raise InvalidRequest("group_by", "does not apply to recommend strategy 'best_score'")

    def work(stored: Manifest | Root) -> SearchResult | Classification:
        if mode == "classify" and not stored.label_names:
            raise InvalidRequest(
                "mode", f"'classify' needs a labelled collection; {collection!r} has no labels"
            )
        if isinstance(spec, ByIds):
            got = resolve(searcher.store, stored, spec.ids, "ids", stats)
            queries = got.vectors
            exclude = scoring.Exclusion.of([[key] for key in got.keys]) if spec.exclude_self else None
        elif isinstance(spec, Recommend):
            if not spec.positive:
                raise InvalidRequest("recommend.positive", "must hold at least one example")
            got = resolve(searcher.store, stored, [*spec.positive, *spec.negative], "recommend", stats)
            pos, neg = got.vectors[: len(spec.positive)], got.vectors[len(spec.positive) :]
            keys = [key for key in got.keys if key is not None]
            if best:
                result = best_score(
                    searcher, stored, pos, neg, keys, k, probes, recall_target, ranking, filter, stats
                )
                stats.elapsed_ms = round((time.perf_counter() - started) * 1000.0, 3)
                return vote(result, stored.metric) if mode == "classify" else result
            queries = _nonzero(average_vector(pos, neg), "recommend", "the average vector")[None, :]
            exclude = scoring.Exclusion.of([keys])
        else:
            got = resolve(searcher.store, stored, [spec.a, spec.b, spec.c], "analogy", stats)
            a, b, c = got.vectors
            queries = _nonzero(analogy_vector(a, b, c), "analogy", "b − a + c")[None, :]
            exclude = scoring.Exclusion.of([[key for key in got.keys if key is not None]])
        result = searcher._search(
            stored,
            queries,
            k,
            probes,
            recall_target,
            ranking,
            stats,
            started,
            filter,
            max_probes,
            exclude=exclude,
            grouping=grouping,
        )
        return vote(result, stored.metric) if mode == "classify" else result

    return searcher._run(collection, version, stats, consistency, work)


def best_score(
    searcher: Searcher,
    stored: Manifest | Root,
    positive: np.ndarray,
    negative: np.ndarray,
    exclude: list[int],
    k: int,
    probes: int | None,
    recall_target: float | None,
    ranking: str | None,
    filter: Filter | None,
    stats: QueryStats,
) -> SearchResult:
    """Rank the rows of the buckets every example probes by best sim to a positive − best to a negative.

    Similarity is 1 − cosine distance, the inner product, or −(l2 distance); ``distances``
    of the result hold −score, so results still come smallest first. Each bucket is read once
    and scored against every example in one matrix product.
    """
    view = searcher._view(stored, ranking, stats)
    examples = np.vstack([positive, negative]).astype(np.float32)
    p = min(searcher._resolve_probes(view, probes, recall_target, stats, k), view.n_buckets)
    needed = np.unique(view.rank(examples, p))
    table = view.buckets
    metric = view.metric
    pos, neg = positive.astype(np.float32), negative.astype(np.float32)
    excluded = np.asarray(exclude, np.int64)
    parts: dict[str, list[Any]] = {"score": [], "key": [], "ref": [], "ids": [], "labels": [], "meta": []}
    pending: tail.Overlay | None = None  # the unmerged tail, read in the first round
    for group in scoring.plan_rounds(needed, table.sizes, view.dtype) or [needed]:
        sources: list[tuple[int, Bucket, np.ndarray]] = []  # (bucket number for refs, rows, shown)
        if pending is None:
            buckets, (pending, _) = searcher._fetch_with_tail(view, group, stats)
            stats.tail_rows = pending.live.count
            sources.append((tail.TAIL_BUCKET, pending.live, np.ones(pending.live.count, bool)))
        else:
            buckets = searcher._fetch(view, group, stats)
        for b, bucket in buckets.items():
            shown = np.ones(bucket.count, bool) if pending.empty else ~pending.hides(bucket.row_keys())
            sources.append((int(view.global_ids[b]), bucket, shown))
        for gid, bucket, shown in sources:
            if filter is not None:
                shown = shown & filter.mask(bucket.metadata, bucket.count)
            rows = np.flatnonzero(shown)
            if rows.size == 0:
                continue
            keys = scoring.candidate_keys(bucket, rows)
            keep = ~np.isin(keys, excluded)
            rows, keys = rows[keep], keys[keep]
            if rows.size == 0:
                continue
            vectors = bucket.vectors[rows]
            score = _similarity(vectors, pos, metric).max(axis=1)
            if len(neg):
                score = score - _similarity(vectors, neg, metric).max(axis=1)
            kk = min(k, rows.size)
            top = np.argpartition(-score, kk - 1)[:kk]
            chosen = rows[top]
            parts["score"].append(score[top])
            parts["key"].append(keys[top])
            parts["ref"].append((np.int64(gid) << 32) | chosen)
            parts["ids"] += bucket.ids.take(chosen)
            parts["labels"].append(
                bucket.labels[chosen] if bucket.labels is not None else np.full(kk, -1, np.int32)
            )
            parts["meta"] += bucket.metadata.take(chosen) if bucket.metadata is not None else [None] * kk
        del buckets, sources
    stats.probes = p
    stats.complete = [True]
    score = np.concatenate(parts["score"]) if parts["score"] else np.empty(0)
    keys = np.concatenate(parts["key"]) if parts["key"] else np.empty(0, np.int64)
    refs = np.concatenate(parts["ref"]) if parts["ref"] else np.empty(0, np.int64)
    order = np.lexsort((refs, -score))
    _, first = np.unique(keys[order], return_index=True)  # a replicated vector counts once
    order = order[np.sort(first)][:k]
    dist = np.full((1, k), np.inf)
    dist[0, : order.size] = -score[order]
    labels = np.full((1, k), -1, np.int32)
    if order.size:
        labels[0, : order.size] = np.concatenate(parts["labels"])[order]
    pad = [None] * (k - order.size)
    ids = [[parts["ids"][j] for j in order.tolist()] + pad]
    meta = [[parts["meta"][j] for j in order.tolist()] + pad]
    return SearchResult(view.version, dist, ids, labels, view.label_names, stats, meta)


def _similarity(vectors: np.ndarray, examples: np.ndarray, metric: str) -> np.ndarray:
    """(n, m) similarity, larger is closer: cos / inner product / −l2 distance."""
    dots = vectors @ examples.T
    if metric != "l2":
        return dots
    sq = (
        np.einsum("ij,ij->i", vectors, vectors)[:, None]
        - 2.0 * dots
        + np.einsum("ij,ij->i", examples, examples)
    )
    return -np.sqrt(np.maximum(sq, 0.0))
