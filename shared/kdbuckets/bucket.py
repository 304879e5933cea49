"""The bucket object: one k-d tree leaf's vectors, ids and label codes, as stored in S3.

Layout (msgpack map, ``format_version`` 1)::

    {"format": "kdbuckets/bucket", "format_version": 1, "count": n, "dim": d,
     "vectors": <array (n, d) <f4 or <f2>,
     "ids": {"kind": "int", "values": <array (n,) <i8>}
          | {"kind": "str", "utf8": <bin>, "offsets": <array (n+1,) <i8>>},
     "labels": <array (n,) <i4> | nil}      # codes into the manifest's label vocabulary

String ids are one UTF-8 blob plus offsets: decoding stays zero-copy and only the ids of
the final top-k are ever turned into Python strings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from . import codec
from .errors import CorruptObject
from .metadata import MetadataColumns

FORMAT = "kdbuckets/bucket"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class IdColumn:
    """Ids of a run of vectors: integers, or strings kept as a UTF-8 blob with offsets."""

    ints: np.ndarray | None = None  # (n,) int64
    utf8: bytes | None = None
    offsets: np.ndarray | None = None  # (n + 1,) int64

    @classmethod
    def from_values(cls, values: np.ndarray) -> IdColumn:
        """Pack an int or unicode numpy array of ids."""
        if values.dtype.kind in "iu":
            return cls(ints=values.astype(np.int64, copy=False))
        encoded = [str(v).encode("utf-8") for v in values.tolist()]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(utf8=b"".join(encoded), offsets=offsets)

    @property
    def kind(self) -> str:
        return "int" if self.ints is not None else "str"

    def __len__(self) -> int:
        return len(self.ints) if self.ints is not None else len(self.offsets) - 1

    def take(self, rows: np.ndarray) -> list[int | str]:
        """Python ids of ``rows`` (only called for results, so the loop is over k, not n)."""
        if self.ints is not None:
            return self.ints[rows].tolist()
        starts, ends = self.offsets[rows].tolist(), self.offsets[np.asarray(rows) + 1].tolist()
        return [self.utf8[s:e].decode("utf-8") for s, e in zip(starts, ends, strict=True)]

    def to_numpy(self) -> np.ndarray:
        """All ids as a numpy array (int64 or unicode); used by tests and rebuilds."""
        if self.ints is not None:
            return self.ints
        return np.array(self.take(np.arange(len(self))))


@dataclass(frozen=True)
class Bucket:
    """Decoded bucket; ``vectors`` are always float32 for exact arithmetic."""

    vectors: np.ndarray  # (n, d) float32
    ids: IdColumn
    labels: np.ndarray | None  # (n,) int32 codes, -1 = unlabelled
    stored_dtype: str = "float32"
    keys: np.ndarray | None = None  # (n,) int64 dedup keys, present when vectors are replicated
    metadata: MetadataColumns | None = None  # per-row JSON metadata, columnar for filters
    _sq_norms: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)
    _row_keys: list[np.ndarray] = field(default_factory=list, repr=False, compare=False)

    @property
    def count(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def nbytes(self) -> int:
        """Memory held by the decoded bucket (what the cache budgets)."""
        ids = (
            self.ids.ints.nbytes
            if self.ids.ints is not None
            else len(self.ids.utf8) + self.ids.offsets.nbytes
        )
        labels = 0 if self.labels is None else self.labels.nbytes
        extra = (0 if self.keys is None else self.keys.nbytes) + (
            0 if self.metadata is None else self.metadata.nbytes
        )
        return int(self.vectors.nbytes + ids + labels + extra)

    def sq_norms(self) -> np.ndarray:
        """Squared norms of the vectors, computed once per decoded bucket (for l2)."""
        if not self._sq_norms:
            self._sq_norms.append(np.einsum("ij,ij->i", self.vectors, self.vectors))
        return self._sq_norms[0]

    def row_keys(self) -> np.ndarray:
        """The dedup key of every row: stored (replicated buckets), else derived from the ids once."""
        if self.keys is not None:
            return self.keys
        if not self._row_keys:
            self._row_keys.append(dedup_keys(self.ids.to_numpy()))
        return self._row_keys[0]


def dedup_keys(ids: np.ndarray) -> np.ndarray:
    """64-bit key per id, equal across buckets for the same vector (int ids are their own key).

    Only stored when vectors are replicated into two buckets, so that a query reading both
    returns each vector once.
    """
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64)
    digests = b"".join(hashlib.blake2b(str(i).encode(), digest_size=8).digest() for i in ids.tolist())
    return np.frombuffer(digests, dtype="<i8").copy()


def encode_bucket(
    vectors: np.ndarray,
    ids: IdColumn,
    labels: np.ndarray | None,
    *,
    dtype: str = "float32",
    keys: np.ndarray | None = None,
    metadata: MetadataColumns | None = None,
) -> bytes:
    """Encode one bucket; ``dtype`` is the storage precision ("float32" or "float16")."""
    if dtype not in ("float32", "float16"):
        raise ValueError(f"unsupported bucket dtype {dtype!r}")
    ids_node: dict[str, object]
    if ids.ints is not None:
        ids_node = {"kind": "int", "values": codec.pack_array(ids.ints.astype("<i8"))}
    else:
        ids_node = {"kind": "str", "utf8": ids.utf8, "offsets": codec.pack_array(ids.offsets)}
    obj = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "count": int(vectors.shape[0]),
        "dim": int(vectors.shape[1]),
        "vectors": codec.pack_array(vectors.astype(np.dtype(dtype).newbyteorder("<"))),
        "ids": ids_node,
        "labels": None if labels is None else codec.pack_array(labels.astype("<i4")),
    }
    if keys is not None:  # optional field: buckets without replication stay byte-identical
        obj["keys"] = codec.pack_array(keys.astype("<i8"))
    if metadata is not None:  # optional too: buckets without metadata carry no extra bytes
        obj["metadata"] = metadata.encode()
    return codec.dumps(obj)


def decode_bucket(body: bytes, *, key: str, expected_fingerprint: str | None = None) -> Bucket:
    """Verify and decode a bucket; any inconsistency raises :class:`CorruptObject`."""
    if expected_fingerprint is not None:
        actual = codec.fingerprint(body)
        if actual != expected_fingerprint:
            raise CorruptObject(key, f"SHA-256 is {actual[:12]}…, expected {expected_fingerprint[:12]}…")
    obj = codec.loads(body, key=key)
    if obj.get("format") != FORMAT:
        raise CorruptObject(key, "not a kdbuckets bucket")
    version = codec.require(obj, "format_version", int, key=key)
    if version != FORMAT_VERSION:
        raise CorruptObject(key, f"unsupported bucket format_version {version}")
    count = codec.require(obj, "count", int, key=key)
    dim = codec.require(obj, "dim", int, key=key)
    vectors = codec.unpack_array(obj.get("vectors"), key=key, name="vectors", ndim=2)
    if vectors.shape != (count, dim) or vectors.dtype.str not in ("<f4", "<f2"):
        raise CorruptObject(key, f"vectors have shape {vectors.shape}, header says ({count}, {dim})")
    stored = "float16" if vectors.dtype.itemsize == 2 else "float32"
    vectors32 = vectors if vectors.dtype == np.float32 else vectors.astype(np.float32)
    ids = _decode_ids(codec.require(obj, "ids", dict, key=key), count, key=key)
    labels = None
    if obj.get("labels") is not None:
        labels = codec.unpack_array(obj["labels"], key=key, name="labels", dtype="<i4", ndim=1)
        if labels.shape != (count,):
            raise CorruptObject(key, f"labels have {labels.shape[0]} rows, expected {count}")
    keys = None
    if obj.get("keys") is not None:
        keys = codec.unpack_array(obj["keys"], key=key, name="keys", dtype="<i8", ndim=1)
        if keys.shape != (count,):
            raise CorruptObject(key, f"keys have {keys.shape[0]} rows, expected {count}")
    metadata = None
    if obj.get("metadata") is not None:
        metadata = MetadataColumns.decode(obj["metadata"], count, key=key)
    return Bucket(
        vectors=vectors32, ids=ids, labels=labels, stored_dtype=stored, keys=keys, metadata=metadata
    )


def _decode_ids(node: dict, count: int, *, key: str) -> IdColumn:
    kind = node.get("kind")
    if kind == "int":
        values = codec.unpack_array(node.get("values"), key=key, name="ids", dtype="<i8", ndim=1)
        if values.shape != (count,):
            raise CorruptObject(key, f"ids have {values.shape[0]} rows, expected {count}")
        return IdColumn(ints=values)
    if kind == "str":
        utf8 = node.get("utf8")
        offsets = codec.unpack_array(node.get("offsets"), key=key, name="ids", dtype="<i8", ndim=1)
        if (
            not isinstance(utf8, bytes)
            or offsets.shape != (count + 1,)
            or offsets[0] != 0
            or offsets[-1] != len(utf8)
            or np.any(np.diff(offsets) < 0)
        ):
            raise CorruptObject(key, "string ids are inconsistent with their offsets")
        try:
            utf8.decode("utf-8")
        except UnicodeDecodeError:
            raise CorruptObject(key, "string ids are not valid UTF-8") from None
        raw = np.frombuffer(utf8, dtype=np.uint8)
        starts = offsets[:-1][offsets[:-1] < len(utf8)]
        if np.any((raw[starts] & 0xC0) == 0x80):  # an id starting mid-character
            raise CorruptObject(key, "string id offsets split a UTF-8 character")
        return IdColumn(utf8=utf8, offsets=offsets)
    raise CorruptObject(key, f"unknown ids kind {kind!r}")
