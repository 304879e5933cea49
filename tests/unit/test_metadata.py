"""Per-vector metadata: validation rules, exact round trips, columns, and refusal of corrupt encodings."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdbuckets import codec
from kdbuckets.errors import CorruptObject, InvalidRequest
from kdbuckets.filters import parse_filter
from kdbuckets.metadata import (
    MAX_KEYS,
    MAX_LIST_LEN,
    MAX_METADATA_BYTES,
    MAX_STRING_LEN,
    MetadataColumns,
    validate_metadata,
)

KEY = "docs/buckets/abc"
PROPERTY = settings(
    max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

RECORDS: list[dict[str, Any] | None] = [
    {"year": 2020, "lang": "en", "tags": ["a", "b"], "score": 0.5},
    None,
    {"year": 2.0, "lang": None, "draft": True},
    {"tags": [], "lang": "fr"},
    {},
    {"year": -3, "draft": False, "tags": ["c", 1, None, True, "a"], "note": "ñandú 東京 🦀"},
    {"lang": "en", "score": -0.0},
]


def compact(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def round_trip(columns: MetadataColumns) -> MetadataColumns:
    body = codec.dumps({"metadata": columns.encode()})
    return MetadataColumns.decode(codec.loads(body, key=KEY)["metadata"], columns.count, key=KEY)


# --- validation ----------------------------------------------------------------------------------


def test_validate_metadata_keeps_none_as_none() -> None:
    assert validate_metadata(None, "items[0].metadata") is None


def test_validate_metadata_accepts_every_value_type_and_returns_an_equal_copy() -> None:
    obj = {
        "s": "text",
        "i": -(2**53) + 1,
        "f": 2.5,
        "b": False,
        "n": None,
        "tags": ["x", 1, 2.0, True, None],
        "empty": [],
        "é": "ü",
    }
    clean = validate_metadata(obj, "metadata")
    assert clean == obj
    assert clean is not obj
    assert list(clean) == list(obj)  # key order kept


def test_validate_metadata_accepts_exactly_the_limits() -> None:
    assert validate_metadata({f"k{i}": i for i in range(MAX_KEYS)}, "m") is not None
    assert validate_metadata({"k" * 64: "v" * MAX_STRING_LEN}, "m") is not None
    assert validate_metadata({"tags": list(range(MAX_LIST_LEN))}, "m") is not None
    assert validate_metadata({"big": 2**53 - 1, "small": -(2**53) + 1}, "m") is not None


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"year": "x" * 257}, "items[3].metadata.year must be at most 256 characters, got 257"),
        (
            {"year": 2**53},
            "items[3].metadata.year must be an integer of magnitude below 2**53, got 9007199254740992",
        ),
        ({"year": -(2**53)}, "items[3].metadata.year must be an integer of magnitude below 2**53"),
        ({"year": float("nan")}, "items[3].metadata.year must be a finite number, got nan"),
        ({"year": float("inf")}, "items[3].metadata.year must be a finite number, got inf"),
        (
            {"year": {"a": 1}},
            "items[3].metadata.year must be a string, number, boolean, null or a list of those, got object",
        ),
        (
            {"year": (1, 2)},
            "items[3].metadata.year must be a string, number, boolean, null or a list of those, got tuple",
        ),
        (
            {"tags": ["a", ["b"]]},
            "items[3].metadata.tags[1] must be a string, number, boolean or null, got list",
        ),
        (
            {"tags": ["a", {"b": 1}]},
            "items[3].metadata.tags[1] must be a string, number, boolean or null, got object",
        ),
        ({"tags": ["a", float("nan")]}, "items[3].metadata.tags[1] must be a finite number"),
        ({"tags": list(range(17))}, "items[3].metadata.tags has 17 elements; at most 16 are allowed"),
        ({"year": "\ud800"}, "items[3].metadata.year must be valid Unicode"),
        ([1, 2], "items[3].metadata must be a JSON object or null, got list"),
        ("year=2020", "items[3].metadata must be a JSON object or null, got str"),
        ({"$year": 1}, "items[3].metadata key '$year' must not start with '$'"),
        ({"": 1}, "items[3].metadata key '' must be 1 to 64 characters long"),
        ({"k" * 65: 1}, "items[3].metadata key '" + "k" * 64 + "'… must be 1 to 64 characters long"),
        ({"a\nb": 1}, "items[3].metadata key 'a\\nb' must not contain control characters"),
        ({"a\x7fb": 1}, "items[3].metadata key 'a\\x7fb' must not contain control characters"),
        ({3: 1}, "items[3].metadata keys must be strings, got int"),
        ({f"k{i}": i for i in range(33)}, "items[3].metadata has 33 keys; at most 32 are allowed"),
    ],
)
def test_invalid_metadata_error_names_the_exact_field(value: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_metadata(value, "items[3].metadata")
    assert str(err.value).startswith(message)


def test_invalid_metadata_error_carries_the_field_attribute() -> None:
    with pytest.raises(InvalidRequest) as err:
        validate_metadata({"year": [1, []]}, "items[3].metadata")
    assert err.value.field == "items[3].metadata.year[1]"


def test_booleans_and_integers_keep_their_types() -> None:
    clean = validate_metadata({"b": True, "i": 1, "f": 1.0}, "m")
    assert clean is not None
    assert [type(v) for v in clean.values()] == [bool, int, float]


def test_serialised_size_limit_counts_utf8_bytes_of_compact_json() -> None:
    obj = {f"k{i}": "v" * 200 for i in range(4)}
    size = len(compact(obj))
    obj["pad"] = "p" * (MAX_METADATA_BYTES - size - len(',"pad":""'))
    assert len(compact(obj)) == MAX_METADATA_BYTES
    assert validate_metadata(obj, "m") == obj
    obj["pad"] += "p"
    with pytest.raises(InvalidRequest, match=r"^m is 1025 bytes as compact JSON; at most 1024 are allowed$"):
        validate_metadata(obj, "m")


def test_size_limit_is_in_bytes_so_multibyte_strings_reach_it_sooner() -> None:
    obj = {f"k{i}": "é" * 200 for i in range(3)}  # 600 characters, 1200+ bytes
    with pytest.raises(InvalidRequest, match="bytes as compact JSON"):
        validate_metadata(obj, "m")


# --- columns and exact originals ----------------------------------------------------------------


def test_take_returns_exactly_what_was_stored() -> None:
    columns = MetadataColumns.from_records(RECORDS)
    back = columns.take(np.arange(len(RECORDS)))
    assert back == RECORDS
    assert compact(back) == compact(RECORDS)  # 2 vs 2.0, -0.0, key order, unicode all preserved
    assert type(back[2]["year"]) is float
    assert type(back[0]["year"]) is int


def test_take_follows_the_requested_order_and_repeats() -> None:
    columns = MetadataColumns.from_records(RECORDS)
    assert columns.take(np.array([5, 1, 5])) == [RECORDS[5], None, RECORDS[5]]
    assert columns.take(np.array([], dtype=np.int64)) == []


def test_from_records_validates_and_names_the_row() -> None:
    with pytest.raises(InvalidRequest, match=r"^metadata\[1\]\.year must be a finite number"):
        MetadataColumns.from_records([{"year": 1}, {"year": float("inf")}])


def test_columns_split_each_key_by_type() -> None:
    columns = MetadataColumns.from_records(RECORDS)
    year = columns.column("year")
    assert year is not None
    assert year.present.tolist() == [True, False, True, False, False, True, False]
    assert year.scalars.numbers is not None
    assert np.array_equal(year.scalars.numbers, [2020, np.nan, 2, np.nan, np.nan, -3, np.nan], equal_nan=True)
    assert year.scalars.strings is None
    assert year.scalars.bools is None
    assert year.elements is None
    lang = columns.column("lang")
    assert lang is not None
    assert lang.vocab == ("en", "fr")
    assert lang.scalars.strings is not None
    assert lang.scalars.nulls is not None
    assert lang.scalars.strings.tolist() == [0, -1, -1, 1, -1, -1, 0]
    assert lang.scalars.nulls.tolist() == [False, False, True, False, False, False, False]
    draft = columns.column("draft")
    assert draft is not None
    assert draft.scalars.bools is not None
    assert draft.scalars.bools.tolist() == [-1, -1, 1, -1, -1, 0, -1]
    assert columns.column("missing") is None


def test_list_values_are_flattened_to_row_and_element_arrays() -> None:
    tags = MetadataColumns.from_records(RECORDS).column("tags")
    assert tags is not None
    assert tags.elements is not None
    assert tags.element_rows is not None
    assert tags.present.tolist() == [True, False, False, True, False, True, False]  # [] is present
    assert tags.element_rows.tolist() == [0, 0, 5, 5, 5, 5, 5]
    assert tags.vocab == ("a", "b", "c")
    assert tags.elements.strings is not None
    assert tags.elements.numbers is not None
    assert tags.elements.strings.tolist() == [0, 1, 2, -1, -1, -1, 0]
    assert np.isnan(tags.elements.numbers).tolist() == [True, True, True, False, True, True, True]


def test_columns_are_read_only() -> None:
    year = MetadataColumns.from_records(RECORDS).column("year")
    assert year is not None
    assert year.scalars.numbers is not None
    with pytest.raises(ValueError, match="read-only"):
        year.scalars.numbers[0] = 1.0
    with pytest.raises(TypeError):
        MetadataColumns.from_records(RECORDS).keys["x"] = year  # type: ignore[index]


def test_rows_without_metadata_and_empty_input_are_fine() -> None:
    empty = MetadataColumns.from_records([])
    assert empty.count == 0
    assert empty.take(np.zeros(0, dtype=np.int64)) == []
    nothing = MetadataColumns.from_records([None, None])
    assert dict(nothing.keys) == {}
    assert nothing.take([0, 1]) == [None, None]
    for columns in (empty, nothing):
        assert round_trip(columns).take(np.arange(columns.count)) == columns.take(np.arange(columns.count))


def test_encode_round_trip_through_codec_reproduces_take_and_filtering() -> None:
    columns = MetadataColumns.from_records(RECORDS)
    decoded = round_trip(columns)
    assert decoded.take(np.arange(len(RECORDS))) == RECORDS
    for flt in ({"tags": "a"}, {"year": {"$gte": 2}}, {"lang": None}, {"draft": {"$exists": True}}):
        f = parse_filter(flt)
        assert np.array_equal(f.mask(decoded, len(RECORDS)), f.mask(columns, len(RECORDS)))
    assert codec.dumps(decoded.encode()) == codec.dumps(columns.encode())


def test_encoding_is_deterministic_and_independent_of_record_key_order() -> None:
    one = MetadataColumns.from_records([{"a": 1, "b": "x"}, {"b": "y"}])
    two = MetadataColumns.from_records([{"a": 1, "b": "x"}, {"b": "y"}])
    assert codec.dumps(one.encode()) == codec.dumps(two.encode())
    assert [k["name"] for k in one.encode()["keys"]] == ["a", "b"]


def test_select_keeps_rows_in_the_requested_order() -> None:
    columns = MetadataColumns.from_records(RECORDS)
    chosen = columns.select(np.array([5, 0, 0, 1]))
    assert chosen.count == 4
    assert chosen.take(np.arange(4)) == [RECORDS[5], RECORDS[0], RECORDS[0], None]
    assert parse_filter({"tags": "c"}).mask(chosen, 4).tolist() == [True, False, False, False]


def test_select_rejects_rows_out_of_range() -> None:
    columns = MetadataColumns.from_records(RECORDS)
    with pytest.raises(IndexError):
        columns.select(np.array([0, len(RECORDS)]))
    with pytest.raises(IndexError):
        columns.select(np.array([-1]))


def test_select_drops_keys_and_strings_no_longer_used() -> None:
    chosen = MetadataColumns.from_records(RECORDS).select(np.array([3, 4]))
    assert sorted(chosen.keys) == ["lang", "tags"]
    lang = chosen.column("lang")
    assert lang is not None
    assert lang.vocab == ("fr",)


def test_concat_of_nothing_is_empty() -> None:
    assert MetadataColumns.concat([]).count == 0


def test_nbytes_counts_the_blob_and_the_columns() -> None:
    small = MetadataColumns.from_records([{"a": 1}])
    large = MetadataColumns.from_records([{"a": i, "s": f"v{i}", "t": ["x", i]} for i in range(1000)])
    assert small.nbytes >= len(small.blob) > 0
    assert large.nbytes > len(large.blob) + 1000 * (8 + 4 + 1)
    assert MetadataColumns.from_records([]).nbytes >= 0


def test_ten_thousand_rows_build_encode_decode_and_filter() -> None:
    rng = np.random.default_rng(0)
    years = rng.integers(1990, 2025, size=10_000).tolist()
    records = [
        {"year": y, "lang": ["en", "fr", "de"][y % 3], "tags": [f"t{y % 7}", f"t{y % 11}"]}
        if y % 13
        else None
        for y in years
    ]
    columns = round_trip(MetadataColumns.from_records(records))
    mask = parse_filter({"year": {"$gte": 2000, "$lt": 2010}, "tags": {"$in": ["t1", "t2"]}}).mask(
        columns, 10_000
    )
    expected = [
        r is not None and 2000 <= r["year"] < 2010 and bool({"t1", "t2"} & set(r["tags"])) for r in records
    ]
    assert mask.tolist() == expected
    assert columns.take(np.flatnonzero(mask)[:5]) == [records[i] for i in np.flatnonzero(expected)[:5]]


# --- select / concat agree with a fresh build (property) -----------------------------------------

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 0.5, 2.0]),
    st.text(alphabet="abé🦀", max_size=2),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4))
RECORD = st.one_of(st.none(), st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), VALUES, max_size=4))


@PROPERTY
@given(records=st.lists(RECORD, max_size=12), picks=st.lists(st.integers(0, 11), max_size=15))
def test_select_encodes_like_a_fresh_build_of_the_selected_rows(
    records: list[dict[str, Any] | None], picks: list[int]
) -> None:
    rows = np.array([p for p in picks if p < len(records)], dtype=np.int64)
    columns = MetadataColumns.from_records(records)
    chosen = columns.select(rows)
    fresh = MetadataColumns.from_records([records[i] for i in rows.tolist()])
    assert chosen.take(np.arange(len(rows))) == [records[i] for i in rows.tolist()]
    assert codec.dumps(chosen.encode()) == codec.dumps(fresh.encode())
    assert codec.dumps(round_trip(columns).select(rows).encode()) == codec.dumps(fresh.encode())


@PROPERTY
@given(parts=st.lists(st.lists(RECORD, max_size=6), max_size=4))
def test_concat_encodes_like_a_fresh_build_of_all_rows(parts: list[list[dict[str, Any] | None]]) -> None:
    joined = MetadataColumns.concat([round_trip(MetadataColumns.from_records(p)) for p in parts])
    everything = [r for p in parts for r in p]
    assert joined.take(np.arange(len(everything))) == everything
    assert codec.dumps(joined.encode()) == codec.dumps(MetadataColumns.from_records(everything).encode())


# --- corrupt encodings ----------------------------------------------------------------------------


def _array(node: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(node["data"], dtype=node["dtype"]).reshape(node["shape"]).copy()


def _key(node: dict[str, Any], name: str) -> dict[str, Any]:
    return next(k for k in node["keys"] if k["name"] == name)


def _edit(path: Callable[[dict[str, Any]], dict[str, Any]], field: str, change: Callable[[np.ndarray], Any]):
    """Mutation that replaces the array ``path(node)[field]`` by ``change(copy of it)``."""

    def mutate(node: dict[str, Any]) -> None:
        holder = path(node)
        holder[field] = codec.pack_array(change(_array(holder[field])))

    return mutate


def _set(arr: np.ndarray, index: int, value: Any) -> np.ndarray:
    arr[index] = value
    return arr


def _json_byte(node: dict[str, Any], at: int, value: int) -> None:
    blob = bytearray(node["json"])
    blob[at] = value
    node["json"] = bytes(blob)


CORRUPTIONS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "wrong format": lambda n: n.update(format="kdbuckets/bucket"),
    "future version": lambda n: n.update(format_version=2),
    "count disagrees": lambda n: n.update(count=n["count"] + 1),
    "count is a bool": lambda n: n.update(count=True),
    "extra field": lambda n: n.update(extra=1),
    "missing field": lambda n: n.pop("keys"),
    "json not binary": lambda n: n.update(json=n["json"].decode()),
    "offsets too short": _edit(lambda n: n, "offsets", lambda a: a[:-1]),
    "offsets do not start at 0": _edit(lambda n: n, "offsets", lambda a: _set(a, 0, 1)),
    "offsets end past the blob": _edit(lambda n: n, "offsets", lambda a: _set(a, -1, a[-1] + 1)),
    "offsets decrease": _edit(lambda n: n, "offsets", lambda a: _set(a, 2, a[1] - 1)),
    "offsets of wrong dtype": _edit(lambda n: n, "offsets", lambda a: a.astype("<i4")),
    "blob is not utf-8": lambda n: _json_byte(n, n["json"].index("ñ".encode()), 0xFF),
    "row is not an object": lambda n: _json_byte(n, 0, ord("[")),
    "keys not a list": lambda n: n.update(keys={}),
    "key node not a map": lambda n: n["keys"].__setitem__(0, [1]),
    "key name reserved": lambda n: _key(n, "year").update(name="$year"),
    "key name duplicated": lambda n: _key(n, "score").update(name="year"),
    "present too short": _edit(lambda n: _key(n, "year"), "present", lambda a: a[:-1]),
    "present is not a flag": _edit(lambda n: _key(n, "year"), "present", lambda a: _set(a, 0, 2)),
    "value without presence": _edit(lambda n: _key(n, "year"), "present", lambda a: _set(a, 0, 0)),
    "presence without json": _edit(lambda n: _key(n, "year"), "present", lambda a: _set(a, 1, 1)),
    "vocab unsorted": lambda n: _key(n, "lang").update(vocab=["fr", "en"]),
    "vocab duplicated": lambda n: _key(n, "lang").update(vocab=["en", "en"]),
    "vocab not strings": lambda n: _key(n, "lang").update(vocab=["en", 1]),
    "string code past the vocab": _edit(
        lambda n: _key(n, "lang")["scalars"], "strings", lambda a: _set(a, 0, 2)
    ),
    "string code below -1": _edit(lambda n: _key(n, "lang")["scalars"], "strings", lambda a: _set(a, 1, -2)),
    "string codes of wrong dtype": _edit(
        lambda n: _key(n, "lang")["scalars"], "strings", lambda a: a.astype("<i8")
    ),
    "bool that is 2": _edit(lambda n: _key(n, "draft")["scalars"], "bools", lambda a: _set(a, 2, 2)),
    "null flag that is 2": _edit(lambda n: _key(n, "lang")["scalars"], "nulls", lambda a: _set(a, 2, 2)),
    "infinite number": _edit(lambda n: _key(n, "year")["scalars"], "numbers", lambda a: _set(a, 0, np.inf)),
    "two types in one row": _edit(lambda n: _key(n, "lang")["scalars"], "nulls", lambda a: _set(a, 0, 1)),
    "numbers of wrong length": _edit(lambda n: _key(n, "year")["scalars"], "numbers", lambda a: a[:-1]),
    "typed map missing a type": lambda n: _key(n, "year")["scalars"].pop("bools"),
    "element row out of range": _edit(
        lambda n: _key(n, "tags")["elements"], "rows", lambda a: _set(a, -1, 7)
    ),
    "element rows descend": _edit(lambda n: _key(n, "tags")["elements"], "rows", lambda a: a[::-1].copy()),
    "element on a row without the key": _edit(
        lambda n: _key(n, "tags")["elements"], "rows", lambda a: np.full_like(a, 4)
    ),
    "element without a value": _edit(
        lambda n: _key(n, "tags")["elements"]["values"], "strings", lambda a: _set(a, 0, -1)
    ),
    "element rows of wrong length": _edit(lambda n: _key(n, "tags")["elements"], "rows", lambda a: a[:-1]),
    "element on a row with a scalar": lambda n: _key(n, "year").update(
        elements={
            "rows": codec.pack_array(np.array([0], "<i8")),
            "values": {
                "numbers": codec.pack_array(np.array([1.0])),
                "strings": None,
                "bools": None,
                "nulls": None,
            },
        }
    ),
    "array node is garbage": lambda n: _key(n, "year").update(present=b"\x01" * 7),
}


@pytest.mark.parametrize("corrupt", list(CORRUPTIONS.values()), ids=list(CORRUPTIONS))
def test_corrupt_encoding_raises_corrupt_object(corrupt: Callable[[dict[str, Any]], Any]) -> None:
    node = codec.loads(codec.dumps(MetadataColumns.from_records(RECORDS).encode()), key=KEY)
    corrupt(node)
    body = codec.dumps(node)
    with pytest.raises(CorruptObject) as err:
        MetadataColumns.decode(codec.loads(body, key=KEY), len(RECORDS), key=KEY)
    assert err.value.key == KEY


@pytest.mark.parametrize("node", [None, [], "metadata", {"format": "kdbuckets/metadata"}])
def test_decode_of_something_that_is_not_a_metadata_map_raises_corrupt_object(node: object) -> None:
    with pytest.raises(CorruptObject):
        MetadataColumns.decode(node, 0, key=KEY)


def _with_json_rows(rows: list[bytes]) -> bytes:
    """Columns of ``[{}, {"a": 1}]`` with the stored JSON rows replaced by ``rows``."""
    node = MetadataColumns.from_records([{}, {"a": 1}]).encode()
    node["json"] = b"".join(rows)
    node["offsets"] = codec.pack_array(np.cumsum([0] + [len(r) for r in rows]).astype("<i8"))
    return codec.dumps(node)


def test_replacing_json_rows_consistently_still_decodes() -> None:
    body = _with_json_rows([b"", b'{"a":1}'])  # row 0 had no keys either way
    assert MetadataColumns.decode(codec.loads(body, key=KEY), 2, key=KEY).take([0, 1]) == [None, {"a": 1}]


@pytest.mark.parametrize(
    "rows",
    [[b"{}", b'{"a":1' + b" " * MAX_METADATA_BYTES + b"}"], [b'{"x":1}', b'{"a":1}']],
    ids=["row beyond the size limit", "row whose keys have no columns"],
)
def test_json_rows_that_disagree_with_the_columns_are_corrupt(rows: list[bytes]) -> None:
    with pytest.raises(CorruptObject):
        MetadataColumns.decode(codec.loads(_with_json_rows(rows), key=KEY), 2, key=KEY)


def test_too_many_list_elements_on_one_row_is_corrupt() -> None:
    node = MetadataColumns.from_records([{"t": list(range(16))}, {"t": [0]}]).encode()
    tags = _key(node, "t")["elements"]
    tags["rows"] = codec.pack_array(np.zeros(17, dtype="<i8"))
    tags["values"]["numbers"] = codec.pack_array(np.zeros(17))
    with pytest.raises(CorruptObject, match="elements"):
        MetadataColumns.decode(codec.loads(codec.dumps(node), key=KEY), 2, key=KEY)


def test_take_of_a_garbled_json_row_raises_corrupt_object() -> None:
    node = MetadataColumns.from_records([{"a": 1}, {"a": 2}]).encode()
    node["json"] = node["json"].replace(b'{"a":2}', b'{"a":x}')  # braces intact, JSON broken
    columns = MetadataColumns.decode(codec.loads(codec.dumps(node), key=KEY), 2, key=KEY)
    assert columns.take([0]) == [{"a": 1}]
    with pytest.raises(CorruptObject, match="row 1") as err:
        columns.take([1])
    assert err.value.key == KEY


def test_take_of_a_stored_row_that_breaks_the_value_rules_raises_corrupt_object() -> None:
    node = MetadataColumns.from_records([{"a": 1.5}]).encode()
    node["json"] = b'{"a":NaN}'
    node["offsets"] = codec.pack_array(np.array([0, len(node["json"])], dtype="<i8"))
    columns = MetadataColumns.decode(codec.loads(codec.dumps(node), key=KEY), 1, key=KEY)
    with pytest.raises(CorruptObject):
        columns.take([0])
