"""Warm-container caches: decoded buckets in an LRU bounded by bytes.

Buckets are immutable and named by their content hash, so a cached bucket can never be stale:
the cache needs no invalidation, only a memory bound. A Lambda container keeps it between
invocations, which is what makes a second query on the same data cheap.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
import threading
from collections import OrderedDict
from typing import Generic, TypeVar

import numpy as np

from . import codec
from .bucket import Bucket, IdColumn
from .metadata import MetadataColumns

V = TypeVar("V")


class ByteBudgetLRU(Generic[V]):
    """Thread-safe LRU mapping whose total size (as reported by the caller) stays ≤ budget."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, tuple[V, int]] = OrderedDict()
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return self._used

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: str, value: V, size: int) -> None:
        """Insert ``value``; items larger than the whole budget are simply not kept."""
        if size > self.budget_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._used -= old[1]
            self._items[key] = (value, size)
            self._used += size
            while self._used > self.budget_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self._used -= evicted

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._used = 0


class DiskTier:
    """Second bucket cache in a local directory (Lambda's ``/tmp``), read through memory maps.

    A bucket is kept as two files named by its fingerprint: the decoded float32 vectors as raw
    bytes (``.f32``), mapped read-only on a hit — so the OS page cache, not each process, holds
    them and several worker processes share one copy — and a small msgpack file with ids,
    labels and keys. Only buckets that already passed SHA-256 verification are written; files
    appear by atomic rename, so a reader never sees half a bucket. Bounded in bytes, least
    recently used first out.
    """

    def __init__(self, directory: str, budget_bytes: int) -> None:
        self.directory = directory
        self.budget_bytes = budget_bytes
        os.makedirs(directory, exist_ok=True)
        self._lock = threading.Lock()

    def get(self, fingerprint: str, dim: int) -> Bucket | None:
        """The bucket with read-only memory-mapped vectors, or None on a miss."""
        base = os.path.join(self.directory, fingerprint)
        try:
            with open(base + ".meta", "rb") as f:
                meta = codec.loads(f.read(), key=base + ".meta")
            with open(base + ".f32", "rb") as f:
                size = os.fstat(f.fileno()).st_size
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            os.utime(base + ".f32")  # LRU by modification time
        except (FileNotFoundError, ValueError):
            return None
        vectors = np.frombuffer(mapped, dtype="<f4").reshape(-1, dim)
        ids_node = meta["ids"]
        if ids_node["kind"] == "int":
            ids = IdColumn(ints=codec.unpack_array(ids_node["values"], key=base, name="ids"))
        else:
            ids = IdColumn(
                utf8=ids_node["utf8"], offsets=codec.unpack_array(ids_node["offsets"], key=base, name="ids")
            )
        labels = (
            None if meta["labels"] is None else codec.unpack_array(meta["labels"], key=base, name="labels")
        )
        keys = None if meta["keys"] is None else codec.unpack_array(meta["keys"], key=base, name="keys")
        columns = (
            None
            if meta.get("metadata") is None
            else MetadataColumns.decode(meta["metadata"], len(vectors), key=base)
        )
        return Bucket(
            vectors=vectors,
            ids=ids,
            labels=labels,
            stored_dtype=meta["stored_dtype"],
            keys=keys,
            metadata=columns,
        )

    def put(self, fingerprint: str, bucket: Bucket) -> None:
        """Store a verified bucket atomically, then evict the oldest beyond the budget."""
        ids = bucket.ids
        meta = {
            "ids": {"kind": "int", "values": codec.pack_array(ids.ints)}
            if ids.ints is not None
            else {"kind": "str", "utf8": ids.utf8, "offsets": codec.pack_array(ids.offsets)},
            "labels": None if bucket.labels is None else codec.pack_array(bucket.labels),
            "keys": None if bucket.keys is None else codec.pack_array(bucket.keys),
            "stored_dtype": bucket.stored_dtype,
            "metadata": None if bucket.metadata is None else bucket.metadata.encode(),
        }
        base = os.path.join(self.directory, fingerprint)
        self._write(base + ".meta", codec.dumps(meta))
        self._write(base + ".f32", np.ascontiguousarray(bucket.vectors, dtype="<f4").tobytes())
        self._evict()

    def _write(self, path: str, body: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".incoming-")
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, path)

    def _evict(self) -> None:
        with self._lock:
            entries = []
            for entry in os.scandir(self.directory):
                if entry.name.endswith(".f32"):
                    st = entry.stat()
                    meta = entry.path[: -len(".f32")] + ".meta"
                    extra = os.path.getsize(meta) if os.path.exists(meta) else 0
                    entries.append((st.st_mtime, st.st_size + extra, entry.path))
            used = sum(size for _, size, _ in entries)
            for _, size, path in sorted(entries):
                if used <= self.budget_bytes:
                    break
                for victim in (path, path[: -len(".f32")] + ".meta"):
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(victim)
                used -= size
