"""The stored form of :class:`~kdbuckets.metadata.MetadataColumns`: encode, and decode trusting nothing.

:mod:`kdbuckets.metadata` owns the rules and the in-memory columns; this module owns the bytes,
so a format change is made (and reviewed, against ``tests/golden/``) in one place.

Encoded node (a msgpack-ready map, meant to be embedded in a bucket object)::

    {"format": "kdbuckets/metadata", "format_version": 1, "count": n,
     "json": <bin>, "offsets": <array (n+1,) <i8>,           # an empty slice = no metadata
     "keys": [{"name": str, "present": <(n,) |u1>, "vocab": [str, ...],  # sorted, unique
               "scalars": <typed n>, "elements": nil | {"rows": <(m,) <i8>, "values": <typed m>}}]}
    <typed s> := {"numbers": <(s,) <f8> | nil, "strings": <(s,) <i4> | nil,
                  "bools": <(s,) |i1> | nil, "nulls": <(s,) |u1> | nil}

Columns are canonical (unused types and vocabulary dropped), so
:meth:`~kdbuckets.metadata.MetadataColumns.select` and
:meth:`~kdbuckets.metadata.MetadataColumns.concat` encode to the same bytes as a fresh build
of the same rows: a copy-on-write rewrite does not change the fingerprint of an unchanged bucket.

Decoding checks every type, shape, offset and code and raises :class:`CorruptObject` naming the
object's key: a stored object is never trusted.
"""

from __future__ import annotations

import itertools
from types import MappingProxyType
from typing import Any

import numpy as np

from .codec import pack_array, unpack_array
from .errors import CorruptObject, InvalidRequest
from .metadata import (
    _KINDS,
    MAX_KEYS,
    MAX_LIST_LEN,
    MAX_METADATA_BYTES,
    MAX_STRING_LEN,
    KeyColumn,
    MetadataColumns,
    TypedValues,
    check_key,
)

FORMAT = "kdbuckets/metadata"
FORMAT_VERSION = 1
#: Stored dtype of each kind of typed array.
STORED = {"numbers": "<f8", "strings": "<i4", "bools": "|i1", "nulls": "|u1"}


def encode_columns(columns: MetadataColumns) -> dict[str, Any]:
    """A msgpack-ready map (see the module docstring); keys in sorted order, so bytes are canonical."""
    keys = []
    for name in sorted(columns.keys):
        col = columns.keys[name]
        elements = None
        if col.elements is not None and col.element_rows is not None:
            elements = {
                "rows": pack_array(col.element_rows.astype("<i8")),
                "values": encode_values(col.elements),
            }
        keys.append(
            {
                "name": name,
                "present": pack_array(col.present.astype("|u1")),
                "vocab": list(col.vocab),
                "scalars": encode_values(col.scalars),
                "elements": elements,
            }
        )
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "count": columns.count,
        "json": columns.blob,
        "offsets": pack_array(columns.offsets.astype("<i8")),
        "keys": keys,
    }


def decode_columns(node: object, n: int, *, key: str) -> MetadataColumns:
    """Rebuild from :func:`encode_columns`' map, checking every type, shape, offset and code.

    Raises :class:`CorruptObject` naming ``key`` on any inconsistency; nothing stored is trusted.
    """
    _require_map(
        node, {"format", "format_version", "count", "json", "offsets", "keys"}, key=key, name="metadata"
    )
    assert isinstance(node, dict)
    if node["format"] != FORMAT or node["format_version"] != FORMAT_VERSION:
        raise CorruptObject(key, "metadata has an unknown format or format_version")
    count, blob = node["count"], node["json"]
    if type(count) is not int or count != n:
        raise CorruptObject(key, f"metadata count is {count!r}, expected {n}")
    if not isinstance(blob, bytes):
        raise CorruptObject(key, "metadata JSON is not binary")
    offsets = unpack_array(node["offsets"], key=key, name="metadata.offsets", dtype="<i8", ndim=1)
    lengths = np.diff(offsets)
    if (
        offsets.shape != (n + 1,)
        or offsets[0] != 0
        or offsets[-1] != len(blob)
        or (lengths < 0).any()
        or (n and int(lengths.max()) > MAX_METADATA_BYTES)
    ):
        raise CorruptObject(key, "metadata offsets are inconsistent with the JSON blob")
    try:
        blob.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptObject(key, "metadata JSON is not valid UTF-8") from None
    raw = np.frombuffer(blob, dtype=np.uint8)
    filled = lengths > 0
    if (raw[offsets[:-1][filled]] != ord("{")).any() or (raw[offsets[1:][filled] - 1] != ord("}")).any():
        raise CorruptObject(key, "metadata rows do not hold JSON objects")
    if not isinstance(node["keys"], list):
        raise CorruptObject(key, "metadata keys are not a list")
    keys: dict[str, KeyColumn] = {}
    per_row = np.zeros(n, dtype=np.int64)
    for i, key_node in enumerate(node["keys"]):
        name, col = _decode_key(key_node, n, key=key, where=f"metadata.keys[{i}]")
        if name in keys:
            raise CorruptObject(key, f"metadata key {name!r} appears twice")
        keys[name] = col
        per_row += col.present
    if (per_row > MAX_KEYS).any() or (per_row.astype(bool) & ~filled).any():
        raise CorruptObject(key, "metadata columns disagree with the stored JSON rows")
    if (filled & (per_row == 0) & (lengths != 2)).any():  # a row without keys must be "{}"
        raise CorruptObject(key, "metadata columns disagree with the stored JSON rows")
    return MetadataColumns(n, blob, offsets, MappingProxyType(keys), key)


def encode_values(values: TypedValues) -> dict[str, Any]:
    """Map of kind → packed array or nil (bool flags travel as |u1: codec has no bool dtype)."""
    return {
        kind: None
        if getattr(values, kind) is None
        else pack_array(getattr(values, kind).astype(STORED[kind]))
        for kind in _KINDS
    }


def decode_values(node: object, size: int, vocab_len: int, *, key: str, name: str) -> TypedValues:
    """Rebuild from :func:`encode_values`, checking dtype, length and the range of every value."""
    _require_map(node, set(_KINDS), key=key, name=name)
    assert isinstance(node, dict)
    arrays = {}
    for kind in _KINDS:
        if node[kind] is None:
            continue
        where = f"{name}.{kind}"
        arr = unpack_array(node[kind], key=key, name=where, dtype=STORED[kind], ndim=1)
        if arr.shape != (size,):
            raise CorruptObject(key, f"field {where!r} has {arr.shape[0]} slots, expected {size}")
        if kind == "numbers":
            bad = bool(np.isinf(arr).any())
        elif kind == "strings":
            bad = size > 0 and (int(arr.min()) < -1 or int(arr.max()) >= vocab_len)
        elif kind == "bools":
            bad = size > 0 and (int(arr.min()) < -1 or int(arr.max()) > 1)
        else:
            bad = size > 0 and int(arr.max()) > 1
            arr = arr.view(bool)
        if bad:
            raise CorruptObject(key, f"field {where!r} holds out-of-range values")
        arrays[kind] = arr
    return TypedValues(size, **arrays)


def _require_map(node: object, fields: set[str], *, key: str, name: str) -> None:
    if not isinstance(node, dict) or set(node) != fields:
        raise CorruptObject(key, f"field {name!r} is not a map of {sorted(fields)}")


def _decode_key(node: object, n: int, *, key: str, where: str) -> tuple[str, KeyColumn]:
    """One key's column, checked for consistency between presence, scalars and list elements."""
    _require_map(node, {"name", "present", "vocab", "scalars", "elements"}, key=key, name=where)
    assert isinstance(node, dict)
    try:
        name = check_key(node["name"], where)
    except InvalidRequest:
        raise CorruptObject(key, f"field {where!r} has an invalid name") from None
    where = f"metadata.{name}"
    present = unpack_array(node["present"], key=key, name=f"{where}.present", dtype="|u1", ndim=1)
    if present.shape != (n,) or (n and int(present.max()) > 1):
        raise CorruptObject(key, f"field {where + '.present'!r} is not {n} flags")
    present = present.view(bool)
    vocab = node["vocab"]
    if (
        not isinstance(vocab, list)
        or not all(isinstance(s, str) and len(s) <= MAX_STRING_LEN for s in vocab)
        or not all(a < b for a, b in itertools.pairwise(vocab))
    ):
        raise CorruptObject(key, f"field {where + '.vocab'!r} is not a sorted list of distinct strings")
    scalars = decode_values(node["scalars"], n, len(vocab), key=key, name=f"{where}.scalars")
    held = scalars.held()
    if (held > 1).any() or (held.astype(bool) & ~present).any():
        raise CorruptObject(key, f"field {where!r} holds values that contradict its presence flags")
    rows, elements = None, None
    if node["elements"] is not None:
        _require_map(node["elements"], {"rows", "values"}, key=key, name=f"{where}.elements")
        rows = unpack_array(
            node["elements"]["rows"], key=key, name=f"{where}.elements.rows", dtype="<i8", ndim=1
        )
        m = len(rows)
        if m and (int(rows.min()) < 0 or int(rows.max()) >= n or (np.diff(rows) < 0).any()):
            raise CorruptObject(key, f"field {where + '.elements.rows'!r} is not ascending rows in [0, {n})")
        elements = decode_values(node["elements"]["values"], m, len(vocab), key=key, name=f"{where}.elements")
        if m and (
            (elements.held() != 1).any()
            or (~present[rows]).any()
            or held[rows].any()
            or int(np.bincount(rows).max()) > MAX_LIST_LEN
        ):
            raise CorruptObject(
                key, f"field {where + '.elements'!r} contradicts the rows' presence flags or scalar values"
            )
    return name, KeyColumn(present, scalars, tuple(vocab), rows, elements)
