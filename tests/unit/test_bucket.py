"""Bucket objects: exact round trips, and refusal of anything that is not a valid bucket."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdbuckets import codec
from kdbuckets.bucket import Bucket, IdColumn, decode_bucket, encode_bucket
from kdbuckets.errors import CorruptObject

KEY = "docs/buckets/abc"
FUZZ = settings(
    max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def vectors(n: int = 5, d: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def small_bucket(ids: np.ndarray | None = None, labels: np.ndarray | None = None) -> bytes:
    v = vectors(3, 2)
    ids = np.array([7, -1, 2**40]) if ids is None else ids
    return encode_bucket(v, IdColumn.from_values(ids), labels)


def rewrite(body: bytes, change: Any) -> bytes:
    """Decode the msgpack map, let ``change`` alter it, and re-encode it."""
    obj = msgpack.unpackb(body, raw=False)
    change(obj)
    return codec.dumps(obj)


@pytest.mark.parametrize(
    "ids",
    [
        np.array([3, 1, -5, 2**62, 0], dtype=np.int64),
        np.array([3, 1, 5, 9, 0], dtype=np.uint32),
        np.array(["a", "bb", "ccc", "dd", "e"]),
        np.array(["ñandú", "東京", "emoji 🦀", "Ω", "ascii"]),
    ],
    ids=["int64", "uint32", "ascii-str", "non-ascii-str"],
)
@pytest.mark.parametrize(
    "labels", [None, np.array([0, 2, 1, -1, 2], dtype=np.int32)], ids=["no-labels", "labels"]
)
def test_bucket_round_trips_exactly(ids: np.ndarray, labels: np.ndarray | None) -> None:
    v = vectors()
    body = encode_bucket(v, IdColumn.from_values(ids), labels)
    bucket = decode_bucket(body, key=KEY, expected_fingerprint=codec.fingerprint(body))
    assert bucket.count == 5
    assert bucket.stored_dtype == "float32"
    assert bucket.vectors.dtype == np.float32
    assert np.array_equal(bucket.vectors, v)
    assert bucket.ids.take(np.arange(5)) == ids.tolist()
    assert bucket.ids.kind == ("int" if ids.dtype.kind in "iu" else "str")
    if labels is None:
        assert bucket.labels is None
    else:
        assert bucket.labels.dtype == np.int32
        assert np.array_equal(bucket.labels, labels)


def test_float16_storage_decodes_to_float32_within_half_precision() -> None:
    v = vectors(50, 8, seed=1) * 10
    bucket = decode_bucket(
        encode_bucket(v, IdColumn.from_values(np.arange(50)), None, dtype="float16"), key=KEY
    )
    assert bucket.stored_dtype == "float16"
    assert bucket.vectors.dtype == np.float32
    assert np.array_equal(bucket.vectors, v.astype(np.float16).astype(np.float32))
    assert np.all(np.abs(bucket.vectors - v) <= np.abs(v) * 2.0**-11 + 2.0**-24)


def test_float16_bucket_is_smaller_than_float32() -> None:
    v, ids = vectors(100, 16), IdColumn.from_values(np.arange(100))
    assert len(encode_bucket(v, ids, None, dtype="float16")) < len(encode_bucket(v, ids, None)) * 0.6


def test_encode_refuses_an_unknown_storage_dtype() -> None:
    with pytest.raises(ValueError, match="float64"):
        encode_bucket(vectors(), IdColumn.from_values(np.arange(5)), None, dtype="float64")


def test_encoding_is_deterministic() -> None:
    assert small_bucket() == small_bucket()


def test_take_returns_python_ids_in_row_order() -> None:
    column = IdColumn.from_values(np.array(["x", "yy", "zzz"]))
    assert column.take(np.array([2, 0])) == ["zzz", "x"]
    assert len(column) == 3
    assert column.kind == "str"
    assert column.to_numpy().tolist() == ["x", "yy", "zzz"]
    ints = IdColumn.from_values(np.array([5, 6], dtype=np.int32))
    assert ints.ints.dtype == np.int64
    assert ints.take(np.array([1])) == [6]


def test_nbytes_counts_vectors_ids_and_labels() -> None:
    bucket = Bucket(
        vectors=np.zeros((4, 3), np.float32),
        ids=IdColumn.from_values(np.array(["ab", "c", "d", "e"])),
        labels=np.zeros(4, np.int32),
    )
    assert bucket.nbytes == 48 + (5 + 5 * 8) + 16


def test_sq_norms_are_the_squared_row_norms() -> None:
    v = vectors(6, 4)
    bucket = decode_bucket(encode_bucket(v, IdColumn.from_values(np.arange(6)), None), key=KEY)
    assert np.allclose(bucket.sq_norms(), (v.astype(np.float64) ** 2).sum(axis=1), rtol=1e-6)
    assert bucket.sq_norms() is bucket.sq_norms()  # computed once


def test_decode_with_the_wrong_fingerprint_is_refused() -> None:
    body = small_bucket()
    with pytest.raises(CorruptObject, match="SHA-256") as info:
        decode_bucket(body, key=KEY, expected_fingerprint=codec.fingerprint(body + b"x"))
    assert info.value.key == KEY


@pytest.mark.parametrize("cut", [0, 1, 10, -1, -5, -20])
def test_decode_of_a_truncated_body_is_refused(cut: int) -> None:
    with pytest.raises(CorruptObject):
        decode_bucket(small_bucket()[:cut], key=KEY)


@pytest.mark.parametrize(
    "body", [b"", b"garbage", b"\x00" * 64, b"\xff" * 64, b"PK\x03\x04", b'{"format": "kdbuckets/bucket"}']
)
def test_decode_of_garbage_is_refused(body: bytes) -> None:
    with pytest.raises(CorruptObject):
        decode_bucket(body, key=KEY)


def _set(path: tuple[str, ...], value: Any) -> Any:
    def change(obj: dict) -> None:
        for part in path[:-1]:
            obj = obj[part]
        obj[path[-1]] = value

    return change


def _retype(path: tuple[str, ...], dtype: str) -> Any:
    def change(obj: dict) -> None:
        for part in path:
            obj = obj[part]
        old = np.frombuffer(obj["data"], dtype=obj["dtype"])
        obj["dtype"], obj["data"] = dtype, old.astype(dtype).tobytes()

    return change


def _drop(name: str) -> Any:
    return lambda obj: obj.pop(name)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_set(("format",), "kdbuckets/manifest"), "not a kdbuckets bucket"),
        (_drop("format"), "not a kdbuckets bucket"),
        (_set(("format_version",), 2), "format_version 2"),
        (_set(("format_version",), 0), "format_version 0"),
        (_set(("format_version",), "1"), "'format_version' has type str"),
        (_drop("format_version"), "'format_version' is missing"),
        (_set(("count",), 4), "header says"),
        (_set(("count",), -1), "header says"),
        (_set(("dim",), 3), "header says"),
        (_set(("count",), True), "'count' has type bool"),
        (_drop("vectors"), "'vectors' is not an encoded array"),
        (_retype(("vectors",), "<i4"), "vectors"),
        (_retype(("vectors",), "|u1"), "vectors"),
        (_set(("vectors", "shape"), [2, 3]), "header says"),
        (_set(("vectors", "shape"), [6]), "invalid shape"),
        (_set(("vectors", "data"), bytes(20)), "holds 20 bytes"),
        (_set(("ids",), [1, 2, 3]), "'ids' has type list"),
        (_set(("ids", "kind"), "uuid"), "unknown ids kind"),
        (_retype(("ids", "values"), "<i4"), "unexpected dtype"),
        (_set(("ids", "values"), codec.pack_array(np.arange(4))), "ids have 4 rows"),
        (_set(("labels",), codec.pack_array(np.zeros(3, np.float32))), "unexpected dtype"),
        (_set(("labels",), codec.pack_array(np.zeros(2, np.int32))), "labels have 2 rows"),
        (_set(("labels",), "a,b,c"), "'labels' is not an encoded array"),
    ],
)
def test_decode_refuses_inconsistent_int_id_buckets(change: Any, problem: str) -> None:
    body = rewrite(small_bucket(labels=np.array([0, 1, 0], np.int32)), change)
    with pytest.raises(CorruptObject, match=problem):
        decode_bucket(body, key=KEY)


@pytest.mark.parametrize(
    "change",
    [
        _set(("ids", "utf8"), "abc"),  # text, not bytes
        _set(("ids", "utf8"), b"abcd"),  # longer than the offsets say
        _set(("ids", "offsets"), codec.pack_array(np.array([0, 1, 2], np.int64))),  # too few
        _set(("ids", "offsets"), codec.pack_array(np.array([1, 1, 2, 3], np.int64))),  # not from 0
        _set(("ids", "offsets"), codec.pack_array(np.array([0, 2, 1, 3], np.int64))),  # decreasing
        _set(("ids", "offsets"), codec.pack_array(np.array([0, 1, 2, 3], np.int32))),  # wrong dtype
        lambda obj: obj["ids"].pop("offsets"),  # no offsets at all
    ],
)
def test_decode_refuses_string_ids_inconsistent_with_their_offsets(change: Any) -> None:
    body = rewrite(small_bucket(ids=np.array(["a", "b", "c"])), change)
    with pytest.raises(CorruptObject):
        decode_bucket(body, key=KEY)


def test_decode_refuses_float64_vectors() -> None:
    body = rewrite(small_bucket(), _retype(("vectors",), "<f8"))
    with pytest.raises(CorruptObject):
        decode_bucket(body, key=KEY)


def test_decode_refuses_string_ids_that_are_not_utf8() -> None:
    body = rewrite(small_bucket(ids=np.array(["a", "b", "c"])), _set(("ids", "utf8"), b"a\xffc"))
    try:
        bucket = decode_bucket(body, key=KEY)
        bucket.ids.take(np.arange(3))
    except CorruptObject:
        return
    pytest.fail("a bucket with non-UTF-8 string ids was accepted")


def _mutate(body: bytes, data: st.DataObject) -> bytes:
    """One random truncation or 1-3 random byte flips of ``body`` (always a real change)."""
    if data.draw(st.booleans(), label="truncate"):
        return body[: data.draw(st.integers(0, len(body) - 1), label="cut")]
    out = bytearray(body)
    positions = st.lists(st.integers(0, len(out) - 1), min_size=1, max_size=3, unique=True)
    for pos in data.draw(positions, label="positions"):
        out[pos] ^= data.draw(st.integers(1, 255), label="xor")
    return bytes(out)


@FUZZ
@given(data=st.data())
def test_fuzzed_bucket_raises_corrupt_object_or_decodes_consistently(data: st.DataObject) -> None:
    body = small_bucket(labels=np.array([1, 0, 1], np.int32))
    mutated = _mutate(body, data)
    try:
        bucket = decode_bucket(mutated, key=KEY)
    except CorruptObject:
        return
    assert bucket.vectors.ndim == 2
    assert bucket.vectors.dtype == np.float32
    assert len(bucket.ids) == bucket.count
    assert len(bucket.ids.take(np.arange(bucket.count))) == bucket.count
    assert bucket.labels is None or bucket.labels.shape == (bucket.count,)


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["int", "str"]))
def test_any_change_to_a_fingerprinted_bucket_raises_corrupt_object(data: st.DataObject, kind: str) -> None:
    ids = np.array([7, 8, 9]) if kind == "int" else np.array(["ä", "b", "ç"])
    body = small_bucket(ids=ids, labels=np.array([1, 0, 1], np.int32))
    mutated = _mutate(body, data)
    assert mutated != body
    with pytest.raises(CorruptObject):
        decode_bucket(mutated, key=KEY, expected_fingerprint=codec.fingerprint(body))
