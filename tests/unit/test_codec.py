"""Byte-level codec: fingerprints, raw-array packing, and bounded msgpack decoding."""

from __future__ import annotations

import hashlib

import msgpack
import numpy as np
import pytest

from kdbuckets import codec
from kdbuckets.errors import CorruptObject

KEY = "c/buckets/x"


def test_fingerprint_is_the_hex_sha256_of_the_bytes() -> None:
    assert codec.fingerprint(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert codec.fingerprint(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", "<i4", "<i8", "<u4", "<u8", "|u1", "|i1"])
def test_pack_and_unpack_round_trip_every_allowed_dtype(dtype: str) -> None:
    array = (np.arange(12) % 7).astype(dtype).reshape(3, 4)
    node = codec.pack_array(array)
    assert node == {"dtype": dtype, "shape": [3, 4], "data": array.tobytes()}
    back = codec.unpack_array(node, key=KEY, name="a", dtype=dtype, ndim=2)
    assert back.dtype == np.dtype(dtype)
    assert np.array_equal(back, array)


def test_pack_array_stores_big_endian_input_as_little_endian() -> None:
    array = np.arange(5, dtype=">f4")
    node = codec.pack_array(array)
    assert node["dtype"] == "<f4"
    assert node["data"] == np.arange(5, dtype="<f4").tobytes()


def test_pack_array_of_a_non_contiguous_view_packs_its_values() -> None:
    array = np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2]
    back = codec.unpack_array(codec.pack_array(array), key=KEY, name="a")
    assert np.array_equal(back, array)


@pytest.mark.parametrize("array", [np.array(["a"]), np.array([object()]), np.array([1 + 2j])])
def test_pack_array_refuses_dtypes_outside_the_format(array: np.ndarray) -> None:
    with pytest.raises(TypeError, match="cannot encode"):
        codec.pack_array(array)


def test_unpacked_arrays_are_read_only_views() -> None:
    back = codec.unpack_array(codec.pack_array(np.zeros(3, np.float32)), key=KEY, name="a")
    assert not back.flags.writeable


GOOD = {"dtype": "<f4", "shape": [2, 2], "data": bytes(16)}


@pytest.mark.parametrize(
    ("node", "problem"),
    [
        (None, "not an encoded array"),
        ([1, 2], "not an encoded array"),
        ({"dtype": "<f4", "shape": [2, 2]}, "not an encoded array"),
        ({**GOOD, "extra": 1}, "not an encoded array"),
        ({**GOOD, "dtype": "|O"}, "unexpected dtype"),
        ({**GOOD, "dtype": "<i4"}, "unexpected dtype"),  # expected <f4
        ({**GOOD, "dtype": 4}, "unexpected dtype"),
        ({**GOOD, "shape": [4]}, "invalid shape"),  # ndim 2 expected
        ({**GOOD, "shape": [-2, -2]}, "invalid shape"),
        ({**GOOD, "shape": "2x2"}, "invalid shape"),
        ({**GOOD, "shape": [2.0, 2.0]}, "invalid shape"),
        ({**GOOD, "shape": [1 << 31, 1]}, "invalid shape"),
        ({**GOOD, "data": "text"}, "carries no bytes"),
        ({**GOOD, "data": bytes(15)}, "holds 15 bytes"),
        ({**GOOD, "data": bytes(20)}, "holds 20 bytes"),
        ({**GOOD, "shape": [3, 2]}, "needs 24"),
    ],
)
def test_unpack_array_refuses_inconsistent_nodes(node: object, problem: str) -> None:
    with pytest.raises(CorruptObject, match=problem) as info:
        codec.unpack_array(node, key=KEY, name="vectors", dtype="<f4", ndim=2)
    assert info.value.key == KEY


def test_dumps_is_deterministic_and_loads_inverts_it() -> None:
    obj = {"b": 1, "a": [1, 2], "data": b"\x00\x01", "s": "é"}
    assert codec.dumps(obj) == codec.dumps(dict(obj))
    assert codec.loads(codec.dumps(obj), key=KEY) == obj


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xc1",  # reserved msgpack byte
        b"\x92\x01\x02",  # an array, not a map
        b"\xa3abc",  # a string
        b"\x81\xa1a",  # map cut short
        msgpack.packb({1: 2}),  # non-string key
        msgpack.packb({"a": msgpack.ExtType(1, b"x")}),  # extension types are refused
        msgpack.packb({"a": 1}) + b"\x00",  # trailing bytes
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        b"\xdd\x7f\xff\xff\xff",  # array32 claiming 2**31 items
    ],
)
def test_loads_turns_any_garbage_into_corrupt_object(body: bytes) -> None:
    with pytest.raises(CorruptObject):
        codec.loads(body, key=KEY)


@pytest.mark.parametrize(
    ("value", "kind"),
    [("1", int), (True, int), (1.5, int), (1, str), ([], dict)],
)
def test_require_names_the_field_with_the_wrong_type(value: object, kind: type) -> None:
    with pytest.raises(CorruptObject, match="'count' has type"):
        codec.require({"count": value}, "count", kind, key=KEY)


def test_require_names_a_missing_field() -> None:
    with pytest.raises(CorruptObject, match="'count' is missing"):
        codec.require({}, "count", int, key=KEY)
    assert codec.require({"count": 3}, "count", int, key=KEY) == 3
