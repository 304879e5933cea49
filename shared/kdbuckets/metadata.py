"""Per-vector JSON metadata: validated at the door, stored in columns for filtering.

Every vector may carry one flat JSON object (``{"year": 2021, "lang": "en", "tags": ["a", "b"]}``).
A bucket keeps its rows' metadata twice, because the two uses pull in opposite directions:

* typed columns per key, so that :mod:`kdbuckets.filters` evaluates a filter over all rows of a
  bucket with a few numpy operations and no per-row Python;
* the original objects as compact JSON (one UTF-8 blob plus ``n + 1`` offsets), so that the few
  rows of the final top-k come back exactly as stored (``2`` stays ``2``, ``2.0`` stays ``2.0``,
  key order is kept) without keeping ``n`` Python dicts alive in the cache.

Value rules (decided here, relied upon by the filters):

* a missing key and a key holding JSON ``null`` differ: ``null`` is *present* (``$exists: true``
  matches it); like MongoDB, ``{"k": null}`` matches both ``null`` and a missing ``k``;
* numbers are float64; integers must satisfy ``|x| < 2**53`` so that the conversion is exact;
  booleans are not numbers;
* a list holds at most 16 scalars (tags); a filter matches a list when ANY element matches.

The stored form (msgpack map, format constants, decoding that trusts nothing) lives in
:mod:`kdbuckets.metadata_codec`; :meth:`MetadataColumns.encode` / :meth:`MetadataColumns.decode`
delegate to it. Columns are canonical (unused types and vocabulary dropped), so ``select`` and
``concat`` encode to the same bytes as a fresh build of the same rows.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from types import MappingProxyType
from typing import Any

import numpy as np

from .errors import CorruptObject, InvalidRequest

MAX_METADATA_BYTES = 1024  # compact JSON of one object
MAX_KEYS = 32
MAX_KEY_LEN = 64
MAX_STRING_LEN = 256
MAX_LIST_LEN = 16
MAX_SAFE_INT = 2**53  # integers are stored as float64; beyond this they would not be exact

Scalar = str | bool | int | float | None

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_VALUE = "a string, number, boolean, null or a list of those"
_ELEMENT = "a string, number, boolean or null"

# In-memory dtype and "nothing of this type here" marker of each typed array.
_ABSENT: dict[str, tuple[np.dtype, Any]] = {
    "numbers": (np.dtype(np.float64), np.nan),
    "strings": (np.dtype(np.int32), -1),
    "bools": (np.dtype(np.int8), -1),
    "nulls": (np.dtype(bool), False),
}
_KINDS = tuple(_ABSENT)


def type_name(value: object) -> str:
    """JSON-flavoured name of ``value``'s type for error messages ("list", "object", "null")."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "object"
    return "bool" if isinstance(value, bool) else type(value).__name__


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates, which JSON "\ud800" can produce
        return False
    return True


def check_key(key: object, field: str) -> str:
    """Validate a metadata (or filter) key; ``field`` names the object holding it."""
    if not isinstance(key, str):
        raise InvalidRequest(field, f"keys must be strings, got {type_name(key)}")
    shown = repr(key) if len(key) <= MAX_KEY_LEN else repr(key[:MAX_KEY_LEN]) + "…"
    if not 1 <= len(key) <= MAX_KEY_LEN:
        raise InvalidRequest(field, f"key {shown} must be 1 to {MAX_KEY_LEN} characters long")
    if key.startswith("$"):
        raise InvalidRequest(field, f"key {shown} must not start with '$' (reserved for operators)")
    if _CONTROL.search(key) or not _encodable(key):
        raise InvalidRequest(field, f"key {shown} must not contain control characters or lone surrogates")
    return key


def check_scalar(value: object, field: str, expected: str = _ELEMENT) -> Scalar:
    """Validate one scalar (string, boolean, safe integer, finite float, null) and normalise its type."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) >= MAX_SAFE_INT:
            raise InvalidRequest(field, f"must be an integer of magnitude below 2**53, got {value}")
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(field, f"must be a finite number, got {value}")
        return float(value)
    if isinstance(value, str):
        if len(value) > MAX_STRING_LEN:
            raise InvalidRequest(field, f"must be at most {MAX_STRING_LEN} characters, got {len(value)}")
        if not _encodable(value):
            raise InvalidRequest(field, "must be valid Unicode (no lone surrogates)")
        return value
    raise InvalidRequest(field, f"must be {expected}, got {type_name(value)}")


def _validated(obj: object, field: str) -> tuple[dict[str, Any] | None, bytes]:
    """The cleaned object and its compact JSON (b"" for None)."""
    if obj is None:
        return None, b""
    if not isinstance(obj, dict):
        raise InvalidRequest(field, f"must be a JSON object or null, got {type_name(obj)}")
    if len(obj) > MAX_KEYS:
        raise InvalidRequest(field, f"has {len(obj)} keys; at most {MAX_KEYS} are allowed")
    clean: dict[str, Any] = {}
    for key, value in obj.items():
        check_key(key, field)
        where = f"{field}.{key}"
        if isinstance(value, list):
            if len(value) > MAX_LIST_LEN:
                raise InvalidRequest(where, f"has {len(value)} elements; at most {MAX_LIST_LEN} are allowed")
            clean[key] = [check_scalar(v, f"{where}[{i}]", _ELEMENT) for i, v in enumerate(value)]
        else:
            clean[key] = check_scalar(value, where, _VALUE)
    body = json.dumps(clean, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    if len(body) > MAX_METADATA_BYTES:
        raise InvalidRequest(
            field, f"is {len(body)} bytes as compact JSON; at most {MAX_METADATA_BYTES} are allowed"
        )
    return clean, body


def validate_metadata(obj: object, field: str) -> dict[str, Any] | None:
    """Check one vector's metadata against the rules above; returns a clean copy (None stays None).

    Errors name the exact field, e.g. ``items[3].metadata.year must be a finite number, got nan``.
    """
    return _validated(obj, field)[0]


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _spans(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``arange(starts[i], starts[i] + counts[i])`` for every ``i``, concatenated, without a loop."""
    counts = np.asarray(counts, dtype=np.int64)
    ends = np.cumsum(counts)
    shift = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - counts), counts)
    return np.arange(int(ends[-1]) if len(ends) else 0, dtype=np.int64) + shift


@dataclass(frozen=True, eq=False)
class TypedValues:
    """One key's values in ``size`` slots (rows, or list elements), one array per JSON type.

    An array is None when no slot holds that type, so a key holding only strings costs one
    int32 per row and filters on other types skip it outright.
    """

    size: int
    numbers: np.ndarray | None = None  # float64; NaN = no number in this slot (stored ones are finite)
    strings: np.ndarray | None = None  # int32 codes into the key's sorted vocabulary; -1 = no string
    bools: np.ndarray | None = None  # int8; -1 = no boolean, else 0 / 1
    nulls: np.ndarray | None = None  # bool; True = JSON null

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays that exist, by kind (absent kinds are simply not there)."""
        return {kind: getattr(self, kind) for kind in _KINDS if getattr(self, kind) is not None}

    def held(self) -> np.ndarray:
        """(size,) int: how many types each slot holds (0 or 1 when consistent)."""
        count = np.zeros(self.size, dtype=np.int64)
        for kind, arr in self.arrays().items():
            count += ~np.isnan(arr) if kind == "numbers" else (arr if kind == "nulls" else arr >= 0)
        return count

    def take(self, index: np.ndarray) -> TypedValues:
        """Slots ``index`` in that order (codes stay valid: the vocabulary is unchanged)."""
        return TypedValues(len(index), **{k: _frozen(a[index]) for k, a in self.arrays().items()})

    def recoded(self, mapping: np.ndarray) -> TypedValues:
        """Same values with string codes translated by ``mapping`` (old code → new code)."""
        if self.strings is None or len(mapping) == 0:
            return dataclasses.replace(self, strings=None)
        codes = np.where(self.strings >= 0, mapping[np.maximum(self.strings, 0)], -1).astype(np.int32)
        return dataclasses.replace(self, strings=_frozen(codes))

    def pruned(self) -> TypedValues:
        """Drop arrays in which no slot holds a value (keeps the encoding canonical)."""
        keep = {k: a for k, a in self.arrays().items() if TypedValues(self.size, **{k: a}).held().any()}
        return TypedValues(self.size, **keep)

    @staticmethod
    def concat(parts: Sequence[TypedValues]) -> TypedValues:
        """Slots of ``parts`` one after another; codes must already share one vocabulary."""
        out = {}
        for kind in _KINDS:
            if any(getattr(p, kind) is not None for p in parts):
                dtype, absent = _ABSENT[kind]
                pieces = [
                    getattr(p, kind) if getattr(p, kind) is not None else np.full(p.size, absent, dtype)
                    for p in parts
                ]
                out[kind] = _frozen(np.concatenate(pieces))
        return TypedValues(sum(p.size for p in parts), **out)

    @staticmethod
    def build(
        slots: Sequence[int], values: Sequence[Scalar], size: int, index: Mapping[str, int]
    ) -> TypedValues:
        """Arrays for Python ``values`` placed at ``slots`` (write time: a loop over values is fine)."""
        groups: dict[str, tuple[list[int], list[Any]]] = {kind: ([], []) for kind in _KINDS}
        for slot, value in zip(slots, values, strict=True):
            if value is None:
                kind, stored = "nulls", True
            elif isinstance(value, bool):
                kind, stored = "bools", int(value)
            elif isinstance(value, str):
                kind, stored = "strings", index[value]
            else:
                kind, stored = "numbers", float(value)
            groups[kind][0].append(slot)
            groups[kind][1].append(stored)
        arrays = {}
        for kind, (where, what) in groups.items():
            if where:
                dtype, absent = _ABSENT[kind]
                arr = np.full(size, absent, dtype=dtype)
                arr[where] = what
                arrays[kind] = _frozen(arr)
        return TypedValues(size, **arrays)


@dataclass(frozen=True, eq=False)
class KeyColumn:
    """Everything one key holds across a bucket's ``n`` rows, ready for vectorised filtering."""

    present: np.ndarray  # (n,) bool: the row has the key (whatever the value: null and [] included)
    scalars: TypedValues  # n slots: the row's value when it is not a list
    vocab: tuple[str, ...]  # sorted unique strings of this key (scalars and list elements)
    element_rows: np.ndarray | None = None  # (m,) int64, ascending: the row of each list element
    elements: TypedValues | None = None  # m slots: list elements, in list order within a row

    def code_of(self, value: str) -> int:
        """Vocabulary code of ``value``, or -1 when no row holds it."""
        at = bisect.bisect_left(self.vocab, value)
        return at if at < len(self.vocab) and self.vocab[at] == value else -1

    @property
    def nbytes(self) -> int:
        """Approximate memory held by this column."""
        arrays = [self.present, self.element_rows]
        for values in (self.scalars, self.elements):
            arrays += list(values.arrays().values()) if values is not None else []
        strings = sum(len(s) + 56 for s in self.vocab)  # ~CPython str overhead
        return strings + sum(a.nbytes for a in arrays if a is not None)


def _make_key(
    present: np.ndarray,
    scalars: TypedValues,
    vocab: Sequence[str],
    element_rows: np.ndarray | None,
    elements: TypedValues | None,
) -> KeyColumn | None:
    """Canonical column: unused types, unused strings and empty element lists dropped (None if unused)."""
    if not present.any():
        return None
    if element_rows is None or elements is None or elements.size == 0:
        element_rows, elements = None, None
    scalars = scalars.pruned()
    elements = elements.pruned() if elements is not None else None
    codes = [v.strings for v in (scalars, elements) if v is not None and v.strings is not None]
    used = np.unique(np.concatenate(codes)) if codes else np.zeros(0, dtype=np.int32)
    used = used[used >= 0]
    if len(used) < len(vocab):
        mapping = np.full(len(vocab), -1, dtype=np.int32)
        mapping[used] = np.arange(len(used), dtype=np.int32)
        vocab = [vocab[i] for i in used.tolist()]
        scalars = scalars.recoded(mapping)
        elements = elements.recoded(mapping) if elements is not None else None
    rows = _frozen(element_rows.astype(np.int64)) if element_rows is not None else None
    return KeyColumn(_frozen(present.astype(bool)), scalars, tuple(vocab), rows, elements)


@dataclass(frozen=True, eq=False)
class MetadataColumns:
    """Immutable metadata of ``count`` rows: typed columns per key, plus the exact originals as JSON."""

    count: int
    blob: bytes  # compact JSON objects, concatenated
    offsets: np.ndarray  # (count + 1,) int64; row i is blob[offsets[i]:offsets[i+1]], empty = None
    keys: Mapping[str, KeyColumn]
    source: str = "<memory>"  # object key it was decoded from, for CorruptObject errors in take()

    def __len__(self) -> int:
        return self.count

    def column(self, key: str) -> KeyColumn | None:
        """The column of ``key``, or None when no row has it."""
        return self.keys.get(key)

    @classmethod
    def from_records(cls, records: Sequence[object]) -> MetadataColumns:
        """Validate and columnise ``records`` (one dict or None per row; write time, loops allowed)."""
        n = len(records)
        bodies: list[bytes] = []
        rows_of: dict[str, list[int]] = {}
        values_of: dict[str, list[Any]] = {}
        for row, record in enumerate(records):
            clean, body = _validated(record, f"metadata[{row}]")
            bodies.append(body)
            for name, value in (clean or {}).items():
                rows_of.setdefault(name, []).append(row)
                values_of.setdefault(name, []).append(value)
        keys = {}
        for name in sorted(rows_of):
            rows, values = rows_of[name], values_of[name]
            scalar_at = [(r, v) for r, v in zip(rows, values, strict=True) if not isinstance(v, list)]
            element_at = [(r, e) for r, v in zip(rows, values, strict=True) if isinstance(v, list) for e in v]
            vocab = sorted({v for _, v in scalar_at + element_at if isinstance(v, str)})
            index = {s: i for i, s in enumerate(vocab)}
            present = np.zeros(n, dtype=bool)
            present[rows] = True
            scalars = TypedValues.build([r for r, _ in scalar_at], [v for _, v in scalar_at], n, index)
            m = len(element_at)
            elements = TypedValues.build(range(m), [e for _, e in element_at], m, index)
            element_rows = np.array([r for r, _ in element_at], dtype=np.int64)
            made = _make_key(present, scalars, vocab, element_rows, elements)
            if made is not None:  # always: the key is present in at least one row
                keys[name] = made
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum([len(b) for b in bodies], out=offsets[1:])
        return cls(n, b"".join(bodies), _frozen(offsets), MappingProxyType(keys))

    def take(self, rows: np.ndarray | Sequence[int]) -> list[dict[str, Any] | None]:
        """The stored objects of ``rows``, exactly as written (only called for the final top-k)."""
        index = np.asarray(rows, dtype=np.int64)
        out: list[dict[str, Any] | None] = []
        bounds = zip(self.offsets[index].tolist(), self.offsets[index + 1].tolist(), strict=True)
        for row, (start, end) in zip(index.tolist(), bounds, strict=True):
            if start == end:
                out.append(None)
                continue
            try:
                obj = json.loads(self.blob[start:end].decode("utf-8"), parse_constant=_no_constants)
                out.append(validate_metadata(obj, "metadata"))
            except ValueError:  # JSONDecodeError, UnicodeDecodeError and InvalidRequest alike
                raise CorruptObject(self.source, f"metadata of row {row} is not a valid object") from None
        return out

    def select(self, rows: np.ndarray | Sequence[int]) -> MetadataColumns:
        """The metadata of ``rows`` in that order (repeats allowed), sliced without re-parsing JSON."""
        index = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.count):
            raise IndexError(f"rows must lie in [0, {self.count})")
        starts = self.offsets[index]
        lengths = self.offsets[index + 1] - starts
        blob = np.frombuffer(self.blob, dtype=np.uint8)[_spans(starts, lengths)].tobytes()
        offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        keys = {}
        for name, col in self.keys.items():
            element_rows = elements = None
            if col.elements is not None and col.element_rows is not None:
                first = np.searchsorted(col.element_rows, index, side="left")
                counts = np.searchsorted(col.element_rows, index, side="right") - first
                elements = col.elements.take(_spans(first, counts))
                element_rows = np.repeat(np.arange(len(index), dtype=np.int64), counts)
            made = _make_key(col.present[index], col.scalars.take(index), col.vocab, element_rows, elements)
            if made is not None:
                keys[name] = made
        return MetadataColumns(len(index), blob, _frozen(offsets), MappingProxyType(keys), self.source)

    @staticmethod
    def concat(parts: Sequence[MetadataColumns]) -> MetadataColumns:
        """Rows of ``parts`` one after another; vocabularies are merged and codes translated."""
        counts = [p.count for p in parts]
        bases = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
        offsets = np.zeros(int(bases[-1]) + 1, dtype=np.int64)
        blob_base = 0
        for part, base in zip(parts, bases[:-1].tolist(), strict=True):
            offsets[base + 1 : base + part.count + 1] = part.offsets[1:] + blob_base
            blob_base += len(part.blob)
        keys = {}
        for name in sorted({name for p in parts for name in p.keys}):
            vocab = sorted({s for p in parts if name in p.keys for s in p.keys[name].vocab})
            index = {s: i for i, s in enumerate(vocab)}
            present, scalars, element_rows, elements = [], [], [], []
            for part, base in zip(parts, bases[:-1].tolist(), strict=True):
                col = part.keys.get(name)
                if col is None:
                    present.append(np.zeros(part.count, dtype=bool))
                    scalars.append(TypedValues(part.count))
                    continue
                mapping = np.array([index[s] for s in col.vocab], dtype=np.int32)
                present.append(col.present)
                scalars.append(col.scalars.recoded(mapping))
                if col.elements is not None and col.element_rows is not None:
                    element_rows.append(col.element_rows + base)
                    elements.append(col.elements.recoded(mapping))
            made = _make_key(
                np.concatenate(present),
                TypedValues.concat(scalars),
                vocab,
                np.concatenate(element_rows) if element_rows else None,
                TypedValues.concat(elements) if elements else None,
            )
            if made is not None:
                keys[name] = made
        blob = b"".join(p.blob for p in parts)
        return MetadataColumns(int(bases[-1]), blob, _frozen(offsets), MappingProxyType(keys))

    @cached_property
    def nbytes(self) -> int:
        """Approximate memory held (what a cache should budget)."""
        return len(self.blob) + self.offsets.nbytes + sum(col.nbytes for col in self.keys.values())

    def encode(self) -> dict[str, Any]:
        """The stored form (see :mod:`kdbuckets.metadata_codec`), kept here for bucket and cache."""
        from .metadata_codec import encode_columns  # the codec imports this module

        return encode_columns(self)

    @classmethod
    def decode(cls, node: object, n: int, *, key: str) -> MetadataColumns:
        """Rebuild from :meth:`encode`'s map; :class:`CorruptObject` naming ``key`` on anything amiss."""
        from .metadata_codec import decode_columns

        return decode_columns(node, n, key=key)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
