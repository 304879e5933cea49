"""Export a published version to S3 as build sources: users can leave with their data.

Layout under the destination prefix (shards named ``part-00000``, ``part-00001``, … in row
order, each holding at most ``rows_per_shard`` rows)::

    {dest}vectors/part-00000.npy      (rows, dim) in the stored dtype (float16 or float32)
    {dest}ids/part-00000.npy          (rows,) int64 or unicode
    {dest}labels/part-00000.npy       (rows,) unicode label names (labelled collections only)
    {dest}items/part-00000.jsonl.gz   {"id", "vector", "label"?, "metadata"?} per line: written
                                      only when the version holds metadata
    {dest}EXPORT.json                 what was exported and the build event to use: written last

Why both: ``.npy`` shards are the compact form a sharded build source reads
(``{"vectors": "{dest}vectors/", "ids": "{dest}ids/", "labels": "{dest}labels/"}``), but a build
takes metadata only from JSON Lines, so a version with metadata is also written as JSON Lines
items (``{"jsonl": "{dest}items/"}``) — EXPORT.json's ``build.source`` names the one that round
trips. Vectors are written exactly as stored (JSON floats carry every float32 bit), ids and
labels exactly, so a build from the export holds the same vectors — up to one re-normalisation
for ``cosine`` (the build normalises again; a stored vector's norm is 1 within rounding).

Every vector once: in a replicated collection only the copy in the vector's primary bucket
(the id directory's) is exported, the same rule as :func:`kdbuckets.reading.list_page`. The
live collection: an unmerged tail (:mod:`kdbuckets.tail`) is read first; bucket rows whose id
it mentions (overwritten or deleted there) are skipped, and its live rows are exported after
the buckets' — as :func:`kdbuckets.reading.list_page` lists them.
Memory: one round of buckets (:data:`kdbuckets.reading.ROUND_BYTES`), one shard of rows, and
for a replicated collection the id directory's keys and primary buckets (12 bytes per id).
Cost: every tail segment, non-empty bucket and id shard read once; per shard three or four PUTs.
"""

from __future__ import annotations

import gzip
import io
import json
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layout, reading
from .bucket import Bucket
from .errors import ConfigurationError, CorruptObject, InvalidRequest
from .events import MAX_EXPORT_SHARD_ROWS as MAX_SHARD_ROWS
from .manifest import Manifest
from .sources import load_npy
from .storage import AccessDenied, BucketNotFound, ObjectStore, S3Uri

FORMAT = "kdbuckets/export"
FORMAT_VERSION = 1
#: Default shard size: about this many bytes of vectors, and at most DEFAULT_MAX_ROWS rows
#: (string ids are fixed-width in a .npy: up to 1 KB each).
SHARD_BYTES = 32 << 20
DEFAULT_MAX_ROWS = 65_536


@dataclass(frozen=True)
class ExportResult:
    collection: str
    version: str
    destination: str
    count: int
    shards: int
    objects: int
    bytes_written: int
    build: dict[str, Any] | None  # the build event's source and parameters (add "collection")
    stats: reading.ReadStats

    def as_dict(self) -> dict[str, Any]:
        return {
            "collection": self.collection,
            "version": self.version,
            "destination": self.destination,
            "count": self.count,
            "shards": self.shards,
            "objects": self.objects,
            "bytes_written": self.bytes_written,
            "build": self.build,
            "stats": self.stats.as_dict(),
        }


def destination_uri(store: ObjectStore, destination: str) -> S3Uri:
    """Parse ``s3://bucket/prefix/``; refuse a prefix inside the index's own collections.

    Garbage collection and ``drop`` own everything under ``{prefix}{collection}/``; an export
    there could be deleted or mistaken for a collection. A name starting with ``_`` is never a
    collection (``layout.check_collection``), so ``{prefix}_exports/…`` is safe.
    """
    uri = S3Uri.parse(destination, field="destination")
    if not destination.endswith("/"):
        raise InvalidRequest("destination", f"must be a prefix ending in '/', got {destination[:200]!r}")
    if uri.bucket == store.bucket and uri.key.startswith(store.prefix):
        first = uri.key[len(store.prefix) :].split("/", 1)[0]
        try:
            layout.check_collection(first)
        except InvalidRequest:
            return uri
        raise InvalidRequest(
            "destination",
            f"lies inside the index's folder of collection {first!r}, which garbage collection and "
            f"drop own; export under a folder starting with '_', e.g. "
            f"s3://{store.bucket}/{store.prefix}_exports/",
        )
    return uri


def default_rows_per_shard(m: Manifest) -> int:
    row_bytes = m.dim * (2 if m.dtype == "float16" else 4)
    return max(1, min(DEFAULT_MAX_ROWS, SHARD_BYTES // row_bytes))


def export(
    store: ObjectStore,
    collection: str,
    destination: str,
    *,
    version: str | None = None,
    rows_per_shard: int | None = None,
) -> ExportResult:
    """Write ``version`` (else the live one) of ``collection`` under ``destination`` (see module doc).

    The destination must be empty: shards of an earlier export left under it would be read by
    a build as part of this one.
    """
    if rows_per_shard is not None and not 1 <= rows_per_shard <= MAX_SHARD_ROWS:
        raise InvalidRequest(
            "rows_per_shard", f"must be between 1 and {MAX_SHARD_ROWS}, got {rows_per_shard}"
        )
    dest = destination_uri(store, destination)
    stats = reading.ReadStats()
    m = reading.open_version(store, collection, version, stats)
    per_shard = rows_per_shard or default_rows_per_shard(m)
    _require_empty(store, dest, destination)
    out = _Writer(
        ObjectStore(dest.bucket, dest.key, client=store.client, concurrency=store.concurrency),
        m,
        destination,
        per_shard,
    )
    pending = reading.load_tail(store, m, stats)
    primary_of = _primary_table(store, m, stats) if reading.replicated(m) else None
    nonempty = [b for b in range(m.n_buckets) if int(m.buckets.rows[b]) > 0]
    for b, bucket in reading.bucket_rounds(store, m, nonempty, stats):
        shown = np.ones(bucket.count, dtype=bool)
        if primary_of is not None:
            shown &= primary_of(reading.row_keys(bucket)) == b
        if not pending.empty:
            shown &= ~pending.hides(reading.row_keys(bucket))
        out.add(bucket, np.flatnonzero(shown))
    out.add(pending.live, np.arange(pending.live.count))
    out.flush()
    if out.rows != m.count:
        raise CorruptObject(
            layout.manifest_key(m.collection, m.version),
            f"its buckets and tail hold {out.rows} distinct vectors but it counts {m.count}; the "
            f"export under {destination} is incomplete",
        )
    build = out.build_event() if out.rows else None
    out.put("EXPORT.json", json.dumps(_summary(m, out, build), indent=1).encode())
    out.wait()
    return ExportResult(
        m.collection, m.version, destination, out.rows, out.shards, out.objects, out.bytes, build, stats
    )


def _require_empty(store: ObjectStore, dest: S3Uri, destination: str) -> None:
    try:
        present = store.list_keys(dest.bucket, dest.key)
    except BucketNotFound:
        raise InvalidRequest("destination", f"names bucket {dest.bucket!r}, which does not exist") from None
    except AccessDenied:
        raise InvalidRequest(
            "destination", f"names {destination}, which this function may not list"
        ) from None
    if present:
        raise InvalidRequest(
            "destination",
            f"already holds {len(present)} object(s) (e.g. s3://{dest.bucket}/{present[0]}); "
            "export into an empty prefix",
        )


def _primary_table(store: ObjectStore, m: Manifest, stats: reading.ReadStats) -> Any:
    """key → primary bucket over the whole id directory (every shard read once, one round)."""
    reading.require_directory(m)
    shards = reading.load_shards(store, m, range(len(m.id_shards)), stats)
    keys = np.concatenate([s.keys for s in shards.values()])
    primary = np.concatenate([s.primary for s in shards.values()]).astype(np.int64)
    order = np.argsort(keys, kind="stable")
    keys, primary = keys[order], primary[order]

    def primary_of(wanted: np.ndarray) -> np.ndarray:
        if not len(keys):
            return np.full(len(wanted), -1, dtype=np.int64)
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return np.where(keys[pos] == wanted, primary[pos], -1)

    return primary_of


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class _Writer:
    """Collects rows into shards and writes each shard's objects in parallel as it fills."""

    def __init__(self, out: ObjectStore, m: Manifest, destination: str, per_shard: int) -> None:
        self.out, self.m, self.destination, self.per_shard = out, m, destination, per_shard
        self.width = max(5, len(str(-(-max(m.count, 1) // per_shard))))
        self.blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, list[Any]]] = []
        self.pending = 0
        self.rows = self.shards = self.objects = self.bytes = 0
        self.jsonl = False  # items/ shards are written (the version holds metadata)
        self.futures: list[Future[str]] = []

    def add(self, bucket: Bucket, rows: np.ndarray) -> None:
        ids = bucket.ids.to_numpy()
        while len(rows):
            chunk, rows = rows[: self.per_shard - self.pending], rows[self.per_shard - self.pending :]
            meta = bucket.metadata.take(chunk) if bucket.metadata is not None else [None] * len(chunk)
            codes = None if bucket.labels is None else bucket.labels[chunk]
            self.blocks.append((bucket.vectors[chunk], ids[chunk], codes, meta))
            self.pending += len(chunk)
            if self.pending == self.per_shard:
                self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        vectors = np.concatenate([b[0] for b in self.blocks]).astype(self.m.dtype)
        ids = np.concatenate([b[1] for b in self.blocks])
        labels = self._labels([b[2] for b in self.blocks])
        meta = [x for b in self.blocks for x in b[3]]
        self.blocks, self.pending = [], 0
        name = f"part-{self.shards:0{self.width}d}"
        self.put(f"vectors/{name}.npy", _npy(vectors))
        self.put(f"ids/{name}.npy", _npy(ids))
        if labels is not None:
            self.put(f"labels/{name}.npy", _npy(labels))
        if not self.jsonl and any(x is not None for x in meta):
            self.jsonl = True
            self._backfill()
        if self.jsonl:
            self.put(f"items/{name}.jsonl.gz", _jsonl(vectors, ids, labels, meta))
        self.shards += 1
        self.rows += len(ids)

    def _labels(self, codes: list[np.ndarray | None]) -> np.ndarray | None:
        names = self.m.label_names
        if names is None or any(c is None for c in codes):
            return None
        joined = np.concatenate(codes)  # type: ignore[arg-type]
        if len(joined) and (joined.min() < 0 or joined.max() >= len(names)):
            raise CorruptObject(
                layout.manifest_key(self.m.collection, self.m.version),
                "a bucket holds a label code outside the label vocabulary",
            )
        return np.array(names, dtype=str)[joined] if len(joined) else np.array([], dtype=str)

    def _backfill(self) -> None:
        """Metadata first appeared after some shards: give those (metadata-free) shards items too."""
        self.wait()
        for shard in range(self.shards):
            name = f"part-{shard:0{self.width}d}"
            vectors = load_npy(self.out.get(f"vectors/{name}.npy")[0], "destination")
            ids = load_npy(self.out.get(f"ids/{name}.npy")[0], "destination")
            labels = (
                load_npy(self.out.get(f"labels/{name}.npy")[0], "destination")
                if self.m.label_names is not None
                else None
            )
            self.put(f"items/{name}.jsonl.gz", _jsonl(vectors, ids, labels, [None] * len(ids)))

    def put(self, key: str, body: bytes) -> None:
        self.futures.append(self.out.submit(self._put, key, body))
        self.objects += 1
        self.bytes += len(body)
        if len(self.futures) >= 16:
            self.wait()

    def _put(self, key: str, body: bytes) -> str:
        try:
            return self.out.put(key, body)
        except (AccessDenied, ConfigurationError):  # the destination bucket: the caller's choice
            raise InvalidRequest(
                "destination", f"names {self.destination}, which this function may not write"
            ) from None

    def wait(self) -> None:
        futures, self.futures = self.futures, []
        for future in futures:
            future.result()

    def build_event(self) -> dict[str, Any]:
        d = self.destination
        if self.jsonl:
            source: dict[str, Any] = {"jsonl": d + "items/"}
        else:
            source = {"vectors": d + "vectors/", "ids": d + "ids/"}
            if self.m.label_names is not None:
                source["labels"] = d + "labels/"
        return {"source": source, **self.m.params}


def _jsonl(vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray | None, meta: list[Any]) -> bytes:
    """One shard as gzipped JSON Lines items (floats written with every bit of their value)."""
    lines = []
    label_list = labels.tolist() if labels is not None else [None] * len(ids)
    for ident, vec, label, md in zip(
        ids.tolist(), vectors.astype(np.float32).tolist(), label_list, meta, strict=True
    ):
        item: dict[str, Any] = {"id": ident, "vector": vec}
        if label is not None:
            item["label"] = label
        if md is not None:
            item["metadata"] = md
        lines.append(json.dumps(item, separators=(",", ":")))
    return gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=6, mtime=0)


def _summary(m: Manifest, out: _Writer, build: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "collection": m.collection,
        "version": m.version,
        "count": out.rows,
        "dim": m.dim,
        "metric": m.metric,
        "dtype": m.dtype,
        "id_kind": m.id_kind,
        "label_names": m.label_names,
        "shards": out.shards,
        "rows_per_shard": out.per_shard,
        "build": build,
    }
