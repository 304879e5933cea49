"""Reading stored vectors back without a search: fetch by id, list page by page, count.

Why a module of its own: these operations read a published version exactly as it is stored
(buckets, the id directory) and never rank anything, so they share none of the query path's
machinery — only the catalog (HEAD and manifests), the directory and the bucket format.

A vector may be stored twice (a replicated collection keeps ~25% of its vectors in a second
bucket). Every operation here returns each id once: the id directory names each vector's
*primary* bucket, and only the copy there counts.

Cost of each call, in GETs (``stats`` reports them). Opening the live version reads ``HEAD`` and
the manifest (1 + its parts and tree objects, one round for those); a pinned ``version`` or a
list ``cursor`` reads the manifest only.

- ``fetch`` of m ids: one parallel round of id-directory shards (the distinct shards the ids
  hash to: at most min(m, shards)), then one parallel round of buckets (the distinct primary
  buckets of the ids found: at most m). An unknown id costs its shard GET only.
- ``list``, one page of ``limit`` rows: the buckets it covers, in bucket-number order (about
  ``limit / bucket_size + 1``, usually one round), and — in a replicated collection only — the
  id-directory shards those rows hash to, to skip replicas. Shards are immutable, so they are
  cached in the process by fingerprint: a warm container paging through a collection reads each
  one once (a collection of n ids has about n / 4,096 of them).
- ``count``: no bucket GET without a filter (the manifest's count). With a filter, every
  non-empty bucket once, in rounds of at most :data:`ROUND_BYTES`: the cost of an exact
  full scan (replicas are counted once, by their dedup key).

The unmerged tail (:mod:`kdbuckets.tail`): a version whose manifest lists tail segments holds
recent writes there, not in its buckets and id directory; the newest mention of an id wins.
Every operation here reads those segments first (one parallel round, ``segments_fetched``; a
version without a tail reads none) and answers as a query would: a bucket row whose id the tail
mentions is hidden (overwritten or deleted), and the tail's live rows are part of the version.
``fetch`` answers the ids the tail mentions from it (no directory or bucket GET for them);
``list`` pages over the buckets, then over the tail's live rows as if they were one more bucket
after the last (a cursor pins the version, so its tail and those positions stay the same);
``count`` with a filter counts the unhidden bucket rows and the tail's live rows.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import catalog, layout, tail
from .bucket import Bucket, decode_bucket, dedup_keys
from .directory import Shard, decode_shard, shard_of
from .errors import CorruptObject, InvalidRequest
from .filters import Filter
from .manifest import Manifest
from .storage import NotFound, ObjectStore

#: Most ids one fetch names, and most rows one list page returns.
MAX_FETCH_IDS = 1000
MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
#: Most vector components one response carries (ids or limit × dim, with ``include_vectors``):
#: a float32 component is ~21 bytes of JSON, so 150,000 of them (3.2 MB) plus the largest
#: metadata (1 KB × 1,000 rows) stay under Lambda's 6 MB response limit.
MAX_VECTOR_VALUES = 150_000
#: Bucket bytes fetched in one parallel round by a scan (count with a filter, export).
ROUND_BYTES = 64 << 20
#: Decoded id-directory shards kept by the process (immutable, keyed by fingerprint).
SHARD_CACHE_BYTES = 64 << 20
CURSOR_FORMAT = 1
MAX_CURSOR_CHARS = 1024

_INT_TEXT = re.compile(r"-?[0-9]{1,19}")


# -- stats -----------------------------------------------------------------------------------
@dataclass
class ReadStats:
    """What one call read: GETs of every kind, and the bytes of buckets and id shards."""

    s3_gets: int = 0
    manifest_bytes: int = 0
    id_shards_fetched: int = 0
    buckets_fetched: int = 0
    segments_fetched: int = 0  # unmerged tail segments (kdbuckets.tail)
    bytes_fetched: int = 0
    cache_hits: int = 0  # id shards served from the process cache
    started: float = field(default_factory=time.perf_counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "s3_gets": self.s3_gets,
            "manifest_bytes": self.manifest_bytes,
            "id_shards_fetched": self.id_shards_fetched,
            "buckets_fetched": self.buckets_fetched,
            "segments_fetched": self.segments_fetched,
            "bytes_fetched": self.bytes_fetched,
            "cache_hits": self.cache_hits,
            "elapsed_ms": round((time.perf_counter() - self.started) * 1000.0, 1),
        }


def open_version(store: ObjectStore, collection: str, version: str | None, stats: ReadStats) -> Manifest:
    """The live version (HEAD, then its manifest) or a pinned one (its manifest only)."""
    layout.check_collection(collection)
    if version is None:
        snap = catalog.read_live(store, collection)
        manifest, size, gets = snap.manifest, snap.manifest_bytes, 2
    else:
        manifest, size = catalog.load_manifest(store, collection, version)
        gets = 1
    stats.s3_gets += gets + len(getattr(manifest, "stored", ()))  # a hierarchy's parts and tree
    stats.manifest_bytes += size
    return manifest


# -- the id directory ------------------------------------------------------------------------
class _ShardCache:
    """Decoded id-directory shards by (fingerprint, bucket count, place): LRU within a byte budget.

    Shards are content-addressed and immutable, so a cached one is never stale; the bucket
    count and place are part of the key because :func:`decode_shard` checks them.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.used = 0
        self.items: OrderedDict[tuple[str, int, int, int], Shard] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, int, int, int]) -> Shard | None:
        with self.lock:
            shard = self.items.get(key)
            if shard is not None:
                self.items.move_to_end(key)
            return shard

    def put(self, key: tuple[str, int, int, int], shard: Shard) -> None:
        size = _shard_bytes(shard)
        if size > self.budget:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = shard
            self.used += size
            while self.used > self.budget:
                _, old = self.items.popitem(last=False)
                self.used -= _shard_bytes(old)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.used = 0


def _shard_bytes(shard: Shard) -> int:
    return int(shard.keys.nbytes + shard.primary.nbytes + shard.secondary.nbytes)


SHARDS = _ShardCache(SHARD_CACHE_BYTES)


def require_directory(m: Manifest) -> None:
    if not m.id_shards:
        raise InvalidRequest("collection", f"{m.collection!r} was built without an id directory; rebuild it")


def load_shards(store: ObjectStore, m: Manifest, which: Sequence[int], stats: ReadStats) -> dict[int, Shard]:
    """Id-directory shards ``which`` of ``m``: from the process cache, the rest in one round."""
    n = len(m.id_shards)
    out: dict[int, Shard] = {}
    missing: list[int] = []
    for s in sorted({int(s) for s in which}):
        hit = SHARDS.get((m.id_shards[s], m.n_buckets, s, n))
        if hit is None:
            missing.append(s)
        else:
            out[s] = hit
            stats.cache_hits += 1
    keys = [layout.id_shard_key(m.collection, m.id_shards[s]) for s in missing]
    bodies = _get_many(store, keys, "id-directory shard", stats)
    stats.id_shards_fetched += len(keys)
    for s, key, body in zip(missing, keys, bodies, strict=True):
        shard = decode_shard(
            body, key=key, expected_fingerprint=m.id_shards[s], n_buckets=m.n_buckets, place=(s, n)
        )
        SHARDS.put((m.id_shards[s], m.n_buckets, s, n), shard)
        out[s] = shard
    return out


def primary_buckets(store: ObjectStore, m: Manifest, keys: np.ndarray, stats: ReadStats) -> np.ndarray:
    """(len(keys),) int64: each key's primary bucket, -1 where the directory does not know it."""
    require_directory(m)
    n = len(m.id_shards)
    which = shard_of(keys, n)
    shards = load_shards(store, m, np.unique(which).tolist(), stats)
    primary = np.full(len(keys), -1, dtype=np.int64)
    for s, shard in shards.items():
        sel = which == s
        found, p, _ = shard.lookup(keys[sel])
        primary[sel] = np.where(found, p, -1)
    return primary


def replicated(m: Manifest) -> bool:
    """Whether a vector may be stored in two buckets (its copies share a dedup key)."""
    return float(m.params.get("replicate", 0.0)) > 0.0


def row_keys(bucket: Bucket) -> np.ndarray:
    """The dedup key of every row (stored in replicated buckets, else derived from the ids)."""
    return bucket.row_keys()


# -- buckets ---------------------------------------------------------------------------------
def _get_many(store: ObjectStore, keys: list[str], what: str, stats: ReadStats) -> list[bytes]:
    try:
        bodies = store.get_many(keys)
    except NotFound as exc:
        raise CorruptObject(exc.uri or "", f"{what} named by the manifest is missing") from None
    stats.s3_gets += len(keys)
    stats.bytes_fetched += sum(len(b) for b in bodies)
    return bodies


def load_buckets(
    store: ObjectStore, m: Manifest, which: Sequence[int], stats: ReadStats
) -> dict[int, Bucket]:
    """Buckets ``which`` of ``m`` in one parallel round, each verified against its fingerprint."""
    which = list(which)
    keys = [layout.bucket_key(m.collection, m.buckets.fingerprints[b]) for b in which]
    bodies = _get_many(store, keys, "bucket", stats)
    stats.buckets_fetched += len(keys)
    return {
        b: decode_bucket(body, key=key, expected_fingerprint=m.buckets.fingerprints[b])
        for b, key, body in zip(which, keys, bodies, strict=True)
    }


def bucket_rounds(
    store: ObjectStore, m: Manifest, which: Sequence[int], stats: ReadStats, round_bytes: int = ROUND_BYTES
) -> Iterator[tuple[int, Bucket]]:
    """Buckets ``which`` in order, fetched in parallel rounds of at most ``round_bytes``.

    Memory stays bounded by one round (plus the bucket being decoded), whatever the
    collection's size; a bucket larger than a round is a round of its own.
    """
    batch: list[int] = []
    size = 0
    for b in [*which, -1]:
        if b < 0 or (batch and size + int(m.buckets.sizes[b]) > round_bytes):
            loaded = load_buckets(store, m, batch, stats) if batch else {}
            for got in batch:
                yield got, loaded.pop(got)
            batch, size = [], 0
        if b >= 0:
            batch.append(b)
            size += int(m.buckets.sizes[b])


# -- the unmerged tail -----------------------------------------------------------------------
def load_tail(store: ObjectStore, m: Manifest, stats: ReadStats) -> tail.Overlay:
    """The net effect of ``m``'s unmerged tail: its segments in one parallel round, each verified.

    A version without a tail costs nothing and gives an empty overlay (it hides no row).
    """
    if not m.tail:
        return tail.overlay([], m.dim)
    from .writer import load_segments  # the one segment reader (the write path: imported late)

    segments = load_segments(store, m)
    stats.s3_gets += len(m.tail)
    stats.segments_fetched += len(m.tail)
    stats.bytes_fetched += sum(ref.size for ref in m.tail)  # verified bodies: the sizes listed
    return tail.overlay(segments, m.dim)


def label_of(m: Manifest, codes: np.ndarray | None, rows: np.ndarray) -> list[str | None]:
    """Label names of ``rows`` (None for an unlabelled collection or row)."""
    if codes is None or not m.label_names:
        return [None] * len(rows)
    names = m.label_names
    return [names[c] if 0 <= c < len(names) else None for c in codes[rows].tolist()]


def records(
    m: Manifest, bucket: Bucket, rows: np.ndarray, *, include_vectors: bool, include_metadata: bool
) -> list[dict[str, Any]]:
    """JSON-ready ``{"id", "label", "metadata"?, "vector"?}`` of ``rows`` of one bucket."""
    ids = bucket.ids.take(rows)
    labels = label_of(m, bucket.labels, rows)
    out: list[dict[str, Any]] = [{"id": i, "label": lab} for i, lab in zip(ids, labels, strict=True)]
    if include_metadata:
        metas = bucket.metadata.take(rows) if bucket.metadata is not None else [None] * len(rows)
        for rec, meta in zip(out, metas, strict=True):
            rec["metadata"] = meta
    if include_vectors:
        for rec, vec in zip(out, bucket.vectors[rows].tolist(), strict=True):
            rec["vector"] = vec  # float32 values as exact Python floats
    return out


def check_vector_budget(rows: int, dim: int, include_vectors: bool, field_name: str) -> None:
    """Refuse a response whose vectors would not fit Lambda's 6 MB (naming the field to shrink)."""
    if include_vectors and rows * dim > MAX_VECTOR_VALUES:
        raise InvalidRequest(
            field_name,
            f"asks for {rows} vectors of {dim} dimensions with include_vectors; at most "
            f"{MAX_VECTOR_VALUES:,} components fit one response, i.e. {max(1, MAX_VECTOR_VALUES // dim)} "
            "vectors of this collection",
        )


# -- fetch -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FetchResult:
    collection: str
    version: str
    vectors: list[dict[str, Any]]  # found ids, in request order
    missing: list[int | str]  # ids the version does not hold, in request order
    stats: ReadStats

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "vectors": self.vectors,
            "missing": self.missing,
            "stats": self.stats.as_dict(),
        }


def fetch(
    store: ObjectStore,
    collection: str,
    ids: Sequence[int | str],
    *,
    include_vectors: bool = False,
    include_metadata: bool = True,
    version: str | None = None,
    ids_from_text: bool = False,
) -> FetchResult:
    """Stored vectors by id; unknown ids are listed in ``missing``, not an error.

    ``ids_from_text``: the ids come from text (a URL path), so an integer-id collection reads
    them as decimal integers — one that is not an integer is simply missing.
    """
    stats = ReadStats()
    wanted = list(dict.fromkeys(ids))
    if len(wanted) > MAX_FETCH_IDS:
        raise InvalidRequest("ids", f"must hold at most {MAX_FETCH_IDS} ids, got {len(wanted)}")
    m = open_version(store, collection, version, stats)
    check_vector_budget(len(wanted), m.dim, include_vectors, "ids")
    typed = _typed_ids(m, wanted, ids_from_text)
    known = [i for i, t in enumerate(typed) if t is not None]
    found: dict[int, dict[str, Any]] = {}  # position in ``wanted`` → record
    if known:
        values = [typed[i] for i in known]
        keys = dedup_keys(np.array(values, dtype=np.int64 if m.id_kind == "int" else str))
        pending = load_tail(store, m, stats)
        mentioned, _ = pending.state(keys)
        sources: list[tuple[Bucket, np.ndarray, np.ndarray]] = []  # (rows from, rows, positions)
        in_tail = np.flatnonzero(mentioned)  # the tail decides these: live there, or deleted
        tail_rows = pending.rows_of(keys[in_tail])
        live = tail_rows >= 0
        sources.append((pending.live, tail_rows[live], in_tail[live]))
        rest = np.flatnonzero(~mentioned)
        if rest.size:
            primary = np.full(len(keys), -1, dtype=np.int64)
            primary[rest] = primary_buckets(store, m, keys[rest], stats)
            hit = np.flatnonzero(primary >= 0)
            buckets = load_buckets(store, m, np.unique(primary[hit]).tolist(), stats)
            for b, bucket in buckets.items():
                mine = hit[primary[hit] == b]
                sources.append((bucket, _rows_of(bucket, keys[mine], b, m), mine))
        for bucket, rows, mine in sources:
            recs = records(
                m, bucket, rows, include_vectors=include_vectors, include_metadata=include_metadata
            )
            for j, rec in zip(mine.tolist(), recs, strict=True):
                if rec["id"] == values[j]:  # a 64-bit key collision is a different id: missing
                    found[known[j]] = rec
    return FetchResult(
        m.collection,
        m.version,
        [found[i] for i in range(len(wanted)) if i in found],
        [wanted[i] for i in range(len(wanted)) if i not in found],
        stats,
    )


def _typed_ids(m: Manifest, ids: list[Any], from_text: bool) -> list[int | str | None]:
    """The ids as the collection stores them; None where one cannot be an id of it."""
    if m.id_kind == "int":
        if from_text:
            return [
                int(i) if isinstance(i, str) and _INT_TEXT.fullmatch(i) and abs(int(i)) < 2**63 else None
                for i in ids
            ]
        if any(not isinstance(i, int) or isinstance(i, bool) for i in ids):
            raise InvalidRequest("ids", f"must be integers like the ids of {m.collection!r}")
        return list(ids)
    if any(not isinstance(i, str) for i in ids):
        if from_text:
            return [i if isinstance(i, str) else None for i in ids]
        raise InvalidRequest("ids", f"must be strings like the ids of {m.collection!r}")
    return list(ids)


def _rows_of(bucket: Bucket, keys: np.ndarray, b: int, m: Manifest) -> np.ndarray:
    """Row of each key in ``bucket``; the directory placed them here, so each must be found."""
    have = row_keys(bucket)
    order = np.argsort(have, kind="stable")
    pos = np.minimum(np.searchsorted(have[order], keys), max(len(have) - 1, 0))
    if len(have) == 0 or np.any(have[order][pos] != keys):
        raise CorruptObject(
            layout.bucket_key(m.collection, m.buckets.fingerprints[b]),
            "the id directory places a vector in this bucket, which does not hold it",
        )
    return order[pos]


# -- list ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: a version, a bucket and a row in it (stored rows)."""

    collection: str
    version: str
    bucket: int
    row: int

    def encode(self) -> str:
        body = {"f": CURSOR_FORMAT, "c": self.collection, "v": self.version, "b": self.bucket, "r": self.row}
        raw = json.dumps(body, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, collection: str) -> Cursor:
        """Parse an opaque cursor; anything not made by :meth:`encode` for ``collection`` is refused."""
        bad = InvalidRequest("cursor", "is not a cursor returned by list for this collection")
        if not isinstance(text, str) or len(text) > MAX_CURSOR_CHARS:
            raise bad
        try:
            obj = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        except (ValueError, binascii.Error):
            raise bad from None
        if not (
            isinstance(obj, dict)
            and set(obj) == {"f", "c", "v", "b", "r"}
            and obj["f"] == CURSOR_FORMAT
            and layout.is_version(obj["v"])
            and all(type(obj[k]) is int and obj[k] >= 0 for k in ("b", "r"))
        ):
            raise bad
        if obj["c"] != collection:
            raise InvalidRequest("cursor", f"was returned by list for another collection, not {collection!r}")
        return cls(collection, obj["v"], obj["b"], obj["r"])


@dataclass(frozen=True)
class ListResult:
    collection: str
    version: str
    vectors: list[dict[str, Any]]
    cursor: str | None  # None: this was the last page
    stats: ReadStats

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "vectors": self.vectors,
            "cursor": self.cursor,
            "stats": self.stats.as_dict(),
        }


def list_page(
    store: ObjectStore,
    collection: str,
    *,
    limit: int = DEFAULT_LIST_LIMIT,
    cursor: str | None = None,
    include_vectors: bool = False,
    include_metadata: bool = True,
    version: str | None = None,
) -> ListResult:
    """One page of the version's vectors, in (bucket, row) order, each id exactly once.

    The first page pins a version (``version``, else the live one); its ``cursor`` carries that
    version and the position after the page, so the pages of one listing cover that version's
    ids exactly once however many writes land meanwhile — as long as the version is kept
    (garbage collection keeps the newest ``keep_last`` versions). A page may hold fewer than
    ``limit`` rows; only ``cursor: null`` means the listing is complete.

    An unmerged tail is listed as one more bucket after the last (bucket number ``n_buckets``,
    rows in the order of its overlay's live rows, fixed for the version); bucket rows whose id
    the tail mentions are skipped — the tail holds their newest state.
    """
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidRequest("limit", f"must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    stats = ReadStats()
    start = None if cursor is None else Cursor.decode(cursor, collection)
    if start is not None and version is not None and version != start.version:
        raise InvalidRequest("version", f"differs from the version the cursor lists ({start.version})")
    m = open_version(store, collection, start.version if start else version, stats)
    check_vector_budget(limit, m.dim, include_vectors, "limit")
    rows = m.buckets.rows
    pending = load_tail(store, m, stats)
    in_tail = pending.live.count  # rows of the virtual bucket ``m.n_buckets``
    b, r = (start.bucket, start.row) if start else (0, 0)
    if b > m.n_buckets or r > (in_tail if b == m.n_buckets else int(rows[b])):
        raise InvalidRequest("cursor", f"points past the end of version {m.version}")
    out: list[dict[str, Any]] = []
    b, r = _next_nonempty(rows, b, r)
    while len(out) < limit and b < m.n_buckets:
        batch = _page_buckets(m, b, r, limit - len(out))
        buckets = load_buckets(store, m, batch, stats)
        starts = {bb: (r if bb == b else 0) for bb in batch}
        primary = _primary_rows(store, m, buckets, starts, stats)
        for bb in batch:
            if len(out) >= limit:  # filled at the end of the previous bucket: (b, r) is here
                break
            bucket, first = buckets[bb], starts[bb]
            shown = primary[bb] if pending.empty else primary[bb] & ~pending.hides(row_keys(bucket)[first:])
            keep = first + np.flatnonzero(shown)
            take = keep[: limit - len(out)]
            out += records(
                m, bucket, take, include_vectors=include_vectors, include_metadata=include_metadata
            )
            if len(take) < len(keep):  # the page is full inside this bucket
                b, r = bb, int(take[-1]) + 1
                break
            b, r = _next_nonempty(rows, bb + 1, 0)
    if len(out) < limit and b == m.n_buckets:  # past the buckets: the tail's live rows
        take = np.arange(r, min(in_tail, r + limit - len(out)))
        out += records(
            m, pending.live, take, include_vectors=include_vectors, include_metadata=include_metadata
        )
        r += len(take)
    done = b >= m.n_buckets and r >= in_tail
    return ListResult(
        m.collection,
        m.version,
        out,
        None if done else Cursor(m.collection, m.version, b, r).encode(),
        stats,
    )


def _next_nonempty(rows: np.ndarray, b: int, r: int) -> tuple[int, int]:
    """The first position at or after (b, r) that holds a stored row (no GET: the manifest knows)."""
    while b < len(rows) and r >= int(rows[b]):
        b, r = b + 1, 0
    return b, r


def _page_buckets(m: Manifest, b: int, r: int, wanted: int) -> list[int]:
    """Buckets from ``b`` whose stored rows (from row ``r``) should give ``wanted`` rows.

    Replicas are skipped, so a replicated collection reads ``1 + replicate`` times as many
    stored rows; a page still short afterwards reads on (another round).
    """
    rows = m.buckets.rows
    need = wanted * (1.0 + float(m.params.get("replicate", 0.0)))
    batch: list[int] = []
    have, size = 0, 0
    for bb in range(b, m.n_buckets):
        if int(rows[bb]) == 0:
            continue
        if batch and (have >= need or size + int(m.buckets.sizes[bb]) > ROUND_BYTES):
            break
        batch.append(bb)
        have += int(rows[bb]) - (r if bb == b else 0)
        size += int(m.buckets.sizes[bb])
    return batch


def _primary_rows(
    store: ObjectStore, m: Manifest, buckets: dict[int, Bucket], starts: dict[int, int], stats: ReadStats
) -> dict[int, np.ndarray]:
    """Per bucket, a mask of its rows from ``starts[b]`` on whose primary bucket is this one."""
    if not replicated(m):
        return {b: np.ones(bucket.count - starts[b], dtype=bool) for b, bucket in buckets.items()}
    keys = {b: row_keys(bucket)[starts[b] :] for b, bucket in buckets.items()}
    every = np.concatenate(list(keys.values())) if keys else np.zeros(0, np.int64)
    primary = primary_buckets(store, m, every, stats)
    out: dict[int, np.ndarray] = {}
    at = 0
    for b, k in keys.items():
        out[b] = primary[at : at + len(k)] == b
        at += len(k)
    return out


# -- count -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CountResult:
    collection: str
    version: str
    count: int
    filtered: bool
    stats: ReadStats

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "count": self.count,
            "filtered": self.filtered,
            "stats": self.stats.as_dict(),
        }


def count(
    store: ObjectStore, collection: str, *, filter: Filter | None = None, version: str | None = None
) -> CountResult:
    """Vectors in the version, or those whose metadata match ``filter`` (each id once).

    Without a filter this is the manifest's count (no bucket is read; it includes the tail's
    effect); with one, the tail is read, then every non-empty bucket once: bucket rows the tail
    mentions are not counted, the tail's live rows are, and replicas count once, by their
    dedup key.
    """
    stats = ReadStats()
    m = open_version(store, collection, version, stats)
    if filter is None:
        return CountResult(m.collection, m.version, m.count, False, stats)
    pending = load_tail(store, m, stats)
    live = pending.live
    total = int(filter.mask(live.metadata, live.count).sum())  # tail keys are unique and unhidden
    which = [b for b in range(m.n_buckets) if int(m.buckets.rows[b]) > 0]
    dedup = replicated(m)
    matched: list[np.ndarray] = []
    for _, bucket in bucket_rounds(store, m, which, stats):
        mask = filter.mask(bucket.metadata, bucket.count)
        if not pending.empty:
            mask = mask & ~pending.hides(row_keys(bucket))
        if dedup:
            matched.append(row_keys(bucket)[mask])
        else:
            total += int(mask.sum())
    if dedup:
        total += len(np.unique(np.concatenate(matched))) if matched else 0
    return CountResult(m.collection, m.version, total, True, stats)
