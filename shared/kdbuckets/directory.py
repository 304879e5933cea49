"""The id directory: which bucket(s) hold each vector, sharded so a write reads only a little.

Deleting or replacing a vector by id must find its bucket without scanning the collection.
The directory maps every id's 64-bit key (:func:`kdbuckets.bucket.dedup_keys`) to its primary
bucket and, for a replicated vector, its secondary one. It is split into shards by a hash of
the key, each shard an immutable content-addressed object listed in the manifest, so a write
of m ids reads and rewrites at most m shards (copy-on-write, like buckets).

Shard layout (msgpack, ``format_version`` 1)::

    {"format": "kdbuckets/ids", "format_version": 1,
     "keys": <array (m,) <i8, sorted>, "primary": <array (m,) <i4>, "secondary": <array (m,) <i4, -1 = none>}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import codec
from .errors import CorruptObject

FORMAT = "kdbuckets/ids"
FORMAT_VERSION = 1
#: Target entries per shard: ~64 kB objects, so a small write moves little data.
SHARD_ENTRIES = 4096


#: Most shards a directory has (the manifest lists each one's fingerprint).
MAX_SHARDS = 65_536


def shard_count(n: int) -> int:
    """Shards a directory of ``n`` ids should have: ``SHARD_ENTRIES`` per shard."""
    return max(1, min(MAX_SHARDS, -(-n // SHARD_ENTRIES)))


def resharded_count(current: int, n: int) -> int:
    """Shards a directory with ``current`` shards should have once it holds ``n`` ids.

    Writes call this so the directory follows the collection: a collection built small and
    grown by upserts must not keep every id in one shard rewritten by each write. Hysteresis:
    change only when the ideal count is more than twice or under a quarter of ``current``, so
    a reshard (O(n): every shard read and rewritten) happens once per doubling or quartering —
    amortised O(1) per id written — and never twice in a row around one boundary. A shard
    then holds on average at most ``2 × SHARD_ENTRIES`` ids (below ``MAX_SHARDS``), and a
    directory of several shards at least about ``SHARD_ENTRIES / 4`` per shard, so the
    manifest does not keep listing empty shards after mass deletes.
    """
    target = shard_count(n)
    return target if target > 2 * current or 4 * target < current else current


def shard_of(keys: np.ndarray, n_shards: int) -> np.ndarray:
    """Shard number of each key — a splitmix64 finaliser, so sequential ids spread evenly."""
    z = keys.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_shards)).astype(np.int64)


@dataclass(frozen=True)
class Shard:
    """One shard: sorted keys with their primary and secondary buckets."""

    keys: np.ndarray
    primary: np.ndarray
    secondary: np.ndarray

    @classmethod
    def empty(cls) -> Shard:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.int32))

    @classmethod
    def from_arrays(cls, keys: np.ndarray, primary: np.ndarray, secondary: np.ndarray) -> Shard:
        order = np.argsort(keys, kind="stable")
        return cls(
            keys[order].astype(np.int64), primary[order].astype(np.int32), secondary[order].astype(np.int32)
        )

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, primary, secondary) for each of ``keys``; -1 where not found."""
        if len(self.keys) == 0:
            missing = np.full(len(keys), -1, dtype=np.int64)
            return np.zeros(len(keys), dtype=bool), missing, missing.copy()
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        found = self.keys[pos] == keys
        return found, np.where(found, self.primary[pos], -1), np.where(found, self.secondary[pos], -1)

    def updated(
        self, remove: np.ndarray, keys: np.ndarray, primary: np.ndarray, secondary: np.ndarray
    ) -> Shard:
        """A new shard without ``remove`` keys and with ``keys`` set to the given buckets."""
        keep = ~np.isin(self.keys, np.concatenate([remove, keys]))
        return Shard.from_arrays(
            np.concatenate([self.keys[keep], keys]),
            np.concatenate([self.primary[keep], primary]),
            np.concatenate([self.secondary[keep], secondary]),
        )


def build_shards(keys: np.ndarray, primary: np.ndarray, secondary: np.ndarray, n_shards: int) -> list[Shard]:
    """Split a whole collection's directory into ``n_shards`` shards."""
    which = shard_of(keys, n_shards)
    order = np.argsort(which, kind="stable")
    bounds = np.searchsorted(which[order], np.arange(n_shards + 1))
    return [
        Shard.from_arrays(keys[rows], primary[rows], secondary[rows])
        for rows in (order[bounds[s] : bounds[s + 1]] for s in range(n_shards))
    ]


def encode_shard(shard: Shard) -> bytes:
    return codec.dumps(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "keys": codec.pack_array(shard.keys.astype("<i8")),
            "primary": codec.pack_array(shard.primary.astype("<i4")),
            "secondary": codec.pack_array(shard.secondary.astype("<i4")),
        }
    )


def decode_shard(
    body: bytes, *, key: str, expected_fingerprint: str, n_buckets: int, place: tuple[int, int] | None = None
) -> Shard:
    """Verify and decode a shard; bucket numbers must exist in the manifest that lists it.

    ``place`` = (shard number, shard count) also checks that every key hashes to this shard:
    a key anywhere else would be invisible to lookups (a delete would miss it, an upsert
    would store a second copy).
    """
    if codec.fingerprint(body) != expected_fingerprint:
        raise CorruptObject(key, "SHA-256 differs from the manifest's")
    obj = codec.loads(body, key=key)
    if obj.get("format") != FORMAT or obj.get("format_version") != FORMAT_VERSION:
        raise CorruptObject(key, "not a kdbuckets id-directory shard of a known version")
    keys = codec.unpack_array(obj.get("keys"), key=key, name="keys", dtype="<i8", ndim=1)
    primary = codec.unpack_array(obj.get("primary"), key=key, name="primary", dtype="<i4", ndim=1)
    secondary = codec.unpack_array(obj.get("secondary"), key=key, name="secondary", dtype="<i4", ndim=1)
    m = len(keys)
    if (
        primary.shape != (m,)
        or secondary.shape != (m,)
        or np.any(keys[1:] <= keys[:-1])  # strictly increasing (np.diff would wrap on int64)
        or np.any((primary < 0) | (primary >= n_buckets))
        or np.any((secondary < -1) | (secondary >= n_buckets))
    ):
        raise CorruptObject(key, "id-directory shard is inconsistent")
    if place is not None and m and np.any(shard_of(keys, place[1]) != place[0]):
        raise CorruptObject(key, f"id-directory shard {place[0]} of {place[1]} holds keys of other shards")
    return Shard(keys, primary, secondary)
