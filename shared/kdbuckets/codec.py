"""Byte-level encoding shared by buckets and manifests: msgpack maps with raw numpy arrays.

Arrays travel as ``{"dtype": "<f4", "shape": [n, d], "data": <bin>}`` so decoding is a
zero-copy ``numpy.frombuffer``; every size and type is checked before it is trusted, and
nothing is ever unpickled. Objects are named by the SHA-256 of their bytes.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgpack
import numpy as np

from .errors import CorruptObject

#: dtypes an encoded array may carry; anything else in a stored object is corruption.
ALLOWED_DTYPES = frozenset({"<f2", "<f4", "<f8", "<i4", "<i8", "<u4", "<u8", "|u1", "|i1"})

#: Hard ceiling on one decoded object; bounds what a hostile object can make us allocate.
MAX_OBJECT_BYTES = 1 << 31


def fingerprint(body: bytes) -> str:
    """Hex SHA-256 of ``body``: the name of every content-addressed object."""
    return hashlib.sha256(body).hexdigest()


def pack_array(array: np.ndarray) -> dict[str, Any]:
    """Describe ``array`` as a msgpack-ready map of dtype, shape and little-endian bytes."""
    arr = np.ascontiguousarray(array)
    dtype = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
    arr = arr.astype(dtype, copy=False)
    if dtype.str not in ALLOWED_DTYPES:
        raise TypeError(f"cannot encode arrays of dtype {dtype.str}")
    return {"dtype": dtype.str, "shape": list(arr.shape), "data": arr.tobytes()}


def unpack_array(
    node: Any, *, key: str, name: str, dtype: str | None = None, ndim: int | None = None
) -> np.ndarray:
    """Rebuild an array packed by :func:`pack_array`, refusing anything inconsistent.

    The result is a read-only view on the object's bytes (no copy).
    """
    if not isinstance(node, dict) or set(node) != {"dtype", "shape", "data"}:
        raise CorruptObject(key, f"field {name!r} is not an encoded array")
    got_dtype, shape, data = node["dtype"], node["shape"], node["data"]
    if (
        not isinstance(got_dtype, str)
        or got_dtype not in ALLOWED_DTYPES
        or (dtype is not None and got_dtype != dtype)
    ):
        raise CorruptObject(key, f"field {name!r} has unexpected dtype {got_dtype!r}")
    if (
        not isinstance(shape, list)
        or not all(isinstance(s, int) and 0 <= s < MAX_OBJECT_BYTES for s in shape)
        or (ndim is not None and len(shape) != ndim)
    ):
        raise CorruptObject(key, f"field {name!r} has an invalid shape {shape!r}")
    if not isinstance(data, bytes):
        raise CorruptObject(key, f"field {name!r} carries no bytes")
    np_dtype = np.dtype(got_dtype)
    expected = math.prod(shape) * np_dtype.itemsize  # Python ints: no overflow
    if expected != len(data):
        raise CorruptObject(key, f"field {name!r} holds {len(data)} bytes; shape {shape} needs {expected}")
    return np.frombuffer(data, dtype=np_dtype).reshape(shape)


def dumps(obj: dict[str, Any]) -> bytes:
    """Encode a map deterministically (same content → same bytes → same fingerprint)."""
    return msgpack.packb(obj, use_bin_type=True)


def loads(body: bytes, *, key: str) -> dict[str, Any]:
    """Decode one msgpack map with limits tied to the body size, so nothing grows unbounded."""
    if len(body) > MAX_OBJECT_BYTES:
        raise CorruptObject(key, f"object of {len(body)} bytes exceeds the decoder limit")
    limit = max(len(body), 16)
    try:
        obj = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            max_bin_len=limit,
            max_str_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CorruptObject(key, f"not valid msgpack ({type(exc).__name__})") from None
    if not isinstance(obj, dict):
        raise CorruptObject(key, "top level is not a map")
    return obj


def require(obj: dict[str, Any], field: str, kind: type | tuple[type, ...], *, key: str) -> Any:
    """Fetch ``obj[field]`` and check its type, naming the field when it is wrong."""
    if field not in obj:
        raise CorruptObject(key, f"field {field!r} is missing")
    value = obj[field]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise CorruptObject(key, f"field {field!r} has type {type(value).__name__}")
    return value
