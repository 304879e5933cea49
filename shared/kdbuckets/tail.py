"""The unmerged tail: recent writes as small segments, scanned exhaustively until merged.

Copy-on-write of whole buckets makes a 10-vector upsert PUT megabytes. With a tail, a write
PUTs one small content-addressed **segment** (its new rows and the keys it deletes) and a new
root listing the live segments — parts, buckets and the id directory stay as they were. Every
query fetches the segments in the same parallel GET round as its buckets and scans them in
full; a row of a bucket (or of an older segment) whose key a newer segment mentions — upserted
again or deleted — is hidden. When the tail outgrows :func:`tail_limit`, one commit merges it
into the buckets (with the write path's split/merge/reassign maintenance) and empties it.

Objects and format::

    {collection}/tail/{sha256}   {"format": "kdbuckets/segment", "format_version": 1,
                                  "rows": <a bucket object, with keys>, "deletes": <(m,) <i8>}

The root lists segments oldest first (:class:`SegmentRef`: fingerprint, size, rows, delete
markers and ``delta``, what the segment changed the live count by). Segments are kept few by
size-tiered absorption (LSM-style): a new segment absorbs the newest ones while they are no
larger than it, or while there would be more than :data:`MAX_SEGMENTS` — each row is rewritten
O(log tail) times before its merge.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from . import codec
from .bucket import Bucket, IdColumn, decode_bucket, encode_bucket
from .errors import CorruptObject
from .metadata import MetadataColumns
from .params import MAX_TAIL_ROWS

FORMAT = "kdbuckets/segment"
FORMAT_VERSION = 1
#: Most segments a version lists (each is one more GET in a cold query's bucket round).
MAX_SEGMENTS = 8
#: Target of the automatic merge threshold: bytes a merge rewrites per tail row, in units of
#: the row's float32 size (a merge rewrites about every bucket once the tail is a few rows per
#: bucket, so the tail must hold ≈ collection bytes / this before merging pays for itself).
MERGE_AMORTISATION = 16
#: ... but a query scans the whole tail: it never holds more than this many buckets' rows.
MAX_TAIL_BUCKETS = 4
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Bucket number the tail's rows carry in a query's candidates (beyond any real bucket).
TAIL_BUCKET = 1 << 30


@dataclass(frozen=True)
class SegmentRef:
    """A segment as the root lists it."""

    fingerprint: str
    size: int
    rows: int
    deletes: int
    #: change of the live count this segment made (inserted new ids − deleted live ones)
    delta: int

    @property
    def weight(self) -> int:
        """Rows plus delete markers: what the tail limit and absorption count."""
        return self.rows + self.deletes

    def encode(self) -> list[object]:
        return [self.fingerprint, self.size, self.rows, self.deletes, self.delta]

    @classmethod
    def decode(cls, node: object, *, key: str) -> SegmentRef:
        if (
            not isinstance(node, list)
            or len(node) != 5
            or not isinstance(node[0], str)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in node[1:])
            or min(node[1:4]) < 0
        ):
            raise CorruptObject(key, "tail entry is not [fingerprint, size, rows, deletes, delta]")
        if not _SHA256.fullmatch(node[0]):
            raise CorruptObject(key, "tail entry fingerprint is not a SHA-256 hex digest")
        return cls(*node)


@dataclass(frozen=True)
class Segment:
    """A decoded segment: upserted rows (keys always present) and deleted keys."""

    rows: Bucket
    deletes: np.ndarray  # (m,) int64 keys


def encode_segment(rows: Bucket, deletes: np.ndarray, dtype: str) -> bytes:
    """Segment bytes; rows are stored in the collection's dtype, as its buckets are."""
    body = encode_bucket(
        rows.vectors,
        rows.ids,
        rows.labels,
        dtype=dtype,
        keys=_keys(rows),
        metadata=rows.metadata,
    )
    return codec.dumps(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "rows": body,
            "deletes": codec.pack_array(np.asarray(deletes, np.int64).astype("<i8")),
        }
    )


def decode_segment(body: bytes, *, key: str, ref: SegmentRef, dim: int) -> Segment:
    """Verify (fingerprint, and the counts the root lists) and decode a segment."""
    if codec.fingerprint(body) != ref.fingerprint:
        raise CorruptObject(key, "SHA-256 differs from the one the manifest names")
    obj = codec.loads(body, key=key)
    if obj.get("format") != FORMAT:
        raise CorruptObject(key, "not a kdbuckets tail segment")
    if codec.require(obj, "format_version", int, key=key) != FORMAT_VERSION:
        raise CorruptObject(key, "unsupported segment format_version")
    inner = obj.get("rows")
    if not isinstance(inner, bytes):
        raise CorruptObject(key, "segment rows are missing")
    rows = decode_bucket(inner, key=key)
    deletes = codec.unpack_array(obj.get("deletes"), key=key, name="deletes", dtype="<i8", ndim=1)
    if rows.keys is None or rows.count != ref.rows or len(deletes) != ref.deletes:
        raise CorruptObject(key, "segment disagrees with the manifest's tail entry")
    if rows.count and rows.vectors.shape[1] != dim:
        raise CorruptObject(key, f"segment vectors have {rows.vectors.shape[1]} dimensions, not {dim}")
    return Segment(rows, deletes.astype(np.int64))


@dataclass(frozen=True)
class Overlay:
    """The net effect of a run of segments, newest mention of each key winning.

    live : the newest upserted row of every key not deleted after it (a bucket, with keys).
    shadow : sorted keys the run mentions at all — rows under them in buckets (or in older
        segments) are hidden.
    deleted : sorted keys whose newest mention is a delete.
    """

    live: Bucket
    shadow: np.ndarray
    deleted: np.ndarray

    @property
    def empty(self) -> bool:
        return self.shadow.size == 0

    def hides(self, keys: np.ndarray) -> np.ndarray:
        """Which of ``keys`` (rows of a bucket or an older segment) this run overrides."""
        return _member(keys, self.shadow)

    def state(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mentioned, live) per key: does the run decide the key, and is it then present."""
        return _member(keys, self.shadow), _member(keys, np.sort(_keys(self.live)))

    def rows_of(self, keys: np.ndarray) -> np.ndarray:
        """Row of ``live`` holding each key, -1 where the key is not live here."""
        live = _keys(self.live)
        if live.size == 0:
            return np.full(len(keys), -1, np.int64)
        order = np.argsort(live, kind="stable")
        pos = np.minimum(np.searchsorted(live[order], keys), live.size - 1)
        return np.where(live[order][pos] == keys, order[pos], -1).astype(np.int64)

    @property
    def weight(self) -> int:
        return self.live.count + int(self.deleted.size)


def overlay(segments: list[Segment], dim: int) -> Overlay:
    """The net effect of ``segments`` (oldest first), vectorised over rows (a loop per segment)."""
    keys, seq, row = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    mentions = rows = 0
    for s in segments:  # a segment's deletes count after its rows (a write never does both to a key)
        n, m = s.rows.count, len(s.deletes)
        keys += [_keys(s.rows), s.deletes]
        seq.append(np.arange(mentions, mentions + n + m))
        row += [np.arange(rows, rows + n), np.full(m, -1, np.int64)]
        mentions, rows = mentions + n + m, rows + n
    k, q, r = np.concatenate(keys), np.concatenate(seq), np.concatenate(row)
    order = np.lexsort((-q, k))  # by key, newest mention first
    first = np.ones(len(order), bool)
    first[1:] = k[order][1:] != k[order][:-1]
    newest = order[first]
    is_row = r[newest] >= 0
    return Overlay(
        take(concat([s.rows for s in segments], dim), np.sort(r[newest][is_row])),
        k[newest],
        np.sort(k[newest][~is_row]),
    )


def concat(buckets: list[Bucket], dim: int) -> Bucket:
    """Rows of several buckets as one (labels and metadata filled where some lack them)."""
    buckets = [b for b in buckets if b.count]
    if not buckets:
        return empty_rows(dim)
    if len(buckets) == 1:
        return buckets[0]
    labels = None
    if any(b.labels is not None for b in buckets):
        labels = np.concatenate(
            [b.labels if b.labels is not None else np.full(b.count, -1, np.int32) for b in buckets]
        )
    metadata = None
    if any(b.metadata is not None for b in buckets):
        metadata = MetadataColumns.concat(
            [b.metadata or MetadataColumns.from_records([None] * b.count) for b in buckets]
        )
    return Bucket(
        vectors=np.concatenate([b.vectors for b in buckets]),
        ids=IdColumn.from_values(np.concatenate([b.ids.to_numpy() for b in buckets])),
        labels=labels,
        stored_dtype=buckets[0].stored_dtype,
        keys=np.concatenate([b.row_keys() for b in buckets]),
        metadata=metadata,
    )


def take(bucket: Bucket, rows: np.ndarray) -> Bucket:
    """Rows ``rows`` of ``bucket``, as a bucket."""
    if len(rows) == bucket.count:
        return bucket
    return Bucket(
        vectors=bucket.vectors[rows],
        ids=IdColumn.from_values(bucket.ids.to_numpy()[rows]),
        labels=None if bucket.labels is None else bucket.labels[rows],
        stored_dtype=bucket.stored_dtype,
        keys=bucket.row_keys()[rows],
        metadata=None if bucket.metadata is None else bucket.metadata.select(rows),
    )


def empty_rows(dim: int) -> Bucket:
    return Bucket(
        vectors=np.zeros((0, dim), np.float32),
        ids=IdColumn(ints=np.zeros(0, np.int64)),
        labels=None,
        keys=np.zeros(0, np.int64),
    )


def absorbed(tail: list[SegmentRef], weight: int) -> int:
    """How many of the newest segments of ``tail`` a new segment of ``weight`` absorbs.

    Size-tiered: absorb the newest while it is no larger than what is being written (so sizes
    fall from oldest to newest, like a binary counter), and always enough to stay within
    :data:`MAX_SEGMENTS`.
    """
    n = 0
    while n < len(tail):
        last = tail[len(tail) - 1 - n]
        if last.weight > weight and len(tail) - n < MAX_SEGMENTS:
            break
        weight += last.weight
        n += 1
    return n


def tail_limit(params: dict, stored_bytes: int, dim: int) -> int:
    """Rows plus delete markers the tail may hold before a write merges it into the buckets.

    ``tail_rows`` in the build parameters decides (0: no tail, every write goes to the
    buckets); unset, the tail holds enough rows that a merge's rewrite costs about
    :data:`MERGE_AMORTISATION` × each row's float32 size, but never more than
    :data:`MAX_TAIL_BUCKETS` buckets' worth (queries scan all of it), nor past ``MAX_TAIL_ROWS``.
    """
    chosen = params.get("tail_rows")
    if chosen is not None:
        return int(chosen)
    bucket_size = int(params.get("bucket_size", 1000))
    amortised = stored_bytes // (MERGE_AMORTISATION * 4 * max(dim, 1))
    return int(min(max(bucket_size, min(amortised, MAX_TAIL_BUCKETS * bucket_size)), MAX_TAIL_ROWS))


def _keys(bucket: Bucket) -> np.ndarray:
    if bucket.keys is None:
        raise ValueError("tail rows always carry their dedup keys")
    return bucket.keys


def _member(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """``np.isin`` for a sorted set (searchsorted: no hashing, no sort of ``values``)."""
    if sorted_set.size == 0 or values.size == 0:
        return np.zeros(values.shape, bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), sorted_set.size - 1)
    return sorted_set[pos] == values
