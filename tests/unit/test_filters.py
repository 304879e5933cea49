"""Metadata filters: MongoDB semantics on flat documents, precise errors, and agreement with a reference."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from kdbuckets import codec
from kdbuckets.errors import InvalidRequest
from kdbuckets.filters import MAX_CLAUSES, MAX_DEPTH, MAX_IN_VALUES, AllOf, Filter, parse_filter
from kdbuckets.metadata import MetadataColumns

KEY = "docs/buckets/abc"
PROPERTY = settings(
    max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

RECORDS: list[dict[str, Any] | None] = [
    {"year": 2020, "lang": "en", "tags": ["a", "b"]},  # 0
    {"year": 2.0, "lang": "fr", "tags": []},  # 1
    {"year": True, "lang": None, "tags": ["c", 1, None]},  # 2
    {"year": "2020", "lang": "Zulu", "tags": "a"},  # 3
    None,  # 4
    {},  # 5
    {"year": 1999.5, "lang": "é", "tags": [2020, True]},  # 6
    {"year": 0, "lang": "😀", "draft": False},  # 7
]
N = len(RECORDS)
COLUMNS = MetadataColumns.from_records(RECORDS)


def rows(flt: object, columns: MetadataColumns | None = COLUMNS, n: int = N) -> list[int]:
    """Indices of the rows that ``flt`` keeps."""
    return np.flatnonzero(parse_filter(flt).mask(columns, n)).tolist()


# --- reference evaluator: one record at a time, written straight from the MongoDB rules ----------


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _equal(stored: object, wanted: object) -> bool:
    if wanted is None or stored is None:
        return stored is None and wanted is None
    if isinstance(wanted, bool) or isinstance(stored, bool):
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if isinstance(wanted, str) or isinstance(stored, str):
        return isinstance(stored, str) and isinstance(wanted, str) and stored == wanted
    return stored == wanted


def _ordered(stored: object, op: str, wanted: Any) -> bool:
    if not (
        (_is_number(stored) and _is_number(wanted)) or (isinstance(stored, str) and isinstance(wanted, str))
    ):
        return False
    s: Any = stored
    return {"$gt": s > wanted, "$gte": s >= wanted, "$lt": s < wanted, "$lte": s <= wanted}[op]


def _reference_op(record: dict[str, Any], key: str, op: str, arg: Any) -> bool:
    if op == "$exists":
        return (key in record) == arg
    if op == "$ne":
        return not _reference_op(record, key, "$eq", arg)
    if op == "$nin":
        return not _reference_op(record, key, "$in", arg)
    if op == "$in":
        return any(_reference_op(record, key, "$eq", v) for v in arg)
    if key not in record:
        return op == "$eq" and arg is None
    value = record[key]
    elements = value if isinstance(value, list) else [value]
    if op == "$eq":
        return any(_equal(e, arg) for e in elements)
    return any(_ordered(e, op, arg) for e in elements)


def reference(record: dict[str, Any] | None, flt: dict[str, Any]) -> bool:
    doc = record or {}
    for key, cond in flt.items():
        if key == "$and":
            ok = all(reference(record, f) for f in cond)
        elif key == "$or":
            ok = any(reference(record, f) for f in cond)
        elif isinstance(cond, dict):
            ok = all(_reference_op(doc, key, op, arg) for op, arg in cond.items())
        else:
            ok = _reference_op(doc, key, "$eq", cond)
        if not ok:
            return False
    return True


# --- equality and membership ------------------------------------------------------------------------


def test_implicit_equality_matches_equal_values_of_the_same_type() -> None:
    assert rows({"lang": "en"}) == [0]
    assert rows({"lang": {"$eq": "en"}}) == [0]
    assert rows({"year": "2020"}) == [3]  # the string, not the number


def test_numbers_compare_numerically_across_int_and_float() -> None:
    assert rows({"year": 2}) == [1]
    assert rows({"year": 2.0}) == [1]
    assert rows({"year": 2020.0}) == [0]


def test_booleans_are_not_numbers() -> None:
    assert rows({"year": True}) == [2]
    assert rows({"year": 1}) == []
    assert rows({"draft": 0}) == []
    assert rows({"draft": False}) == [7]
    assert rows({"year": {"$gte": 0}}) == [0, 1, 6, 7]  # True is not >= 0


def test_equality_on_a_list_field_matches_any_element() -> None:
    assert rows({"tags": "a"}) == [0, 3]  # list element, and a plain scalar
    assert rows({"tags": 1}) == [2]
    assert rows({"tags": True}) == [6]
    assert rows({"tags": 2020}) == [6]


def test_ne_is_the_negation_of_eq_so_missing_keys_match() -> None:
    assert rows({"tags": {"$ne": "a"}}) == [1, 2, 4, 5, 6, 7]  # [a, b] has an "a": no match
    assert rows({"draft": {"$ne": False}}) == [0, 1, 2, 3, 4, 5, 6]


def test_in_matches_any_listed_value_and_nin_is_its_negation() -> None:
    assert rows({"lang": {"$in": ["en", "fr", "de"]}}) == [0, 1]
    assert rows({"lang": {"$nin": ["en", "fr", "de"]}}) == [2, 3, 4, 5, 6, 7]
    assert rows({"year": {"$in": [2, True, "2020"]}}) == [1, 2, 3]
    assert rows({"tags": {"$in": ["b", 1]}}) == [0, 2]
    assert rows({"lang": {"$in": []}}) == []
    assert rows({"lang": {"$nin": []}}) == list(range(N))


def test_null_matches_null_values_null_elements_and_missing_keys() -> None:
    assert rows({"lang": None}) == [2, 4, 5]
    assert rows({"tags": None}) == [2, 4, 5, 7]  # [c, 1, null] and the rows without tags; not []
    assert rows({"lang": {"$ne": None}}) == [0, 1, 3, 6, 7]
    assert rows({"lang": {"$in": [None, "en"]}}) == [0, 2, 4, 5]


def test_exists_counts_null_and_empty_lists_as_present() -> None:
    assert rows({"lang": {"$exists": True}}) == [0, 1, 2, 3, 6, 7]
    assert rows({"tags": {"$exists": True}}) == [0, 1, 2, 3, 6]
    assert rows({"tags": {"$exists": False}}) == [4, 5, 7]


def test_a_string_absent_from_every_row_matches_nothing() -> None:
    assert rows({"lang": "de"}) == []
    assert rows({"lang": {"$ne": "de"}}) == list(range(N))


# --- ranges -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "expected"),
    [("$gt", [0, 6]), ("$gte", [0, 1, 6]), ("$lt", [7]), ("$lte", [1, 7])],
)
@pytest.mark.parametrize("bound", [2, 2.0])
def test_range_operators_compare_numbers(op: str, expected: list[int], bound: float) -> None:
    # years: 2020, 2.0, true, "2020", -, -, 1999.5, 0: the boolean and the string never compare
    assert rows({"year": {op: bound}}) == expected


@pytest.mark.parametrize(
    ("op", "expected"),
    [("$gt", [6, 7]), ("$gte", [1, 6, 7]), ("$lt", [0, 3]), ("$lte", [0, 1, 3])],
)
def test_range_operators_compare_strings_in_code_point_order(op: str, expected: list[int]) -> None:
    # code points: "Zulu" < "en" < "fr" < "é" (U+00E9) < "😀" (U+1F600)
    assert rows({"lang": {op: "fr"}}) == expected


def test_range_between_mismatched_types_never_matches() -> None:
    assert rows({"year": {"$gt": "1"}}) == [3]  # only the string year
    assert rows({"lang": {"$gt": 0}}) == []
    assert rows({"year": {"$lt": 10**6, "$gt": -(10**6)}}) == [0, 1, 6, 7]


def test_range_on_a_list_matches_any_element_and_operators_may_use_different_elements() -> None:
    assert rows({"tags": {"$gte": 2000}}) == [6]
    assert rows({"tags": {"$gt": "b"}}) == [2]
    lists = MetadataColumns.from_records([{"v": [1, 10]}, {"v": [5]}, {"v": [20]}])
    assert rows({"v": {"$gt": 3, "$lt": 7}}, lists, 3) == [0, 1]  # [1, 10]: 10 > 3 and 1 < 7, as in MongoDB


def test_range_on_a_missing_key_matches_nothing() -> None:
    assert rows({"nope": {"$lt": 1}}) == []


# --- logic --------------------------------------------------------------------------------------


def test_several_keys_in_one_object_are_anded() -> None:
    assert rows({"lang": "en", "year": 2020}) == [0]
    assert rows({"lang": "en", "year": 2}) == []


def test_and_or_compose() -> None:
    assert rows({"$or": [{"lang": "fr"}, {"year": True}]}) == [1, 2]
    assert rows({"$and": [{"tags": {"$exists": True}}, {"year": {"$lt": 2020}}]}) == [1, 6]
    assert rows({"$or": [{"$and": [{"lang": "en"}, {"tags": "b"}]}, {"draft": False}]}) == [0, 7]


def test_empty_filter_matches_every_row() -> None:
    assert rows({}) == list(range(N))
    assert parse_filter({}) == AllOf(())


def test_bucket_without_metadata_treats_every_key_as_missing() -> None:
    assert rows({"lang": "en"}, None, 3) == []
    assert rows({"lang": None}, None, 3) == [0, 1, 2]
    assert rows({"lang": {"$ne": "en"}}, None, 3) == [0, 1, 2]
    assert rows({"lang": {"$exists": False}}, None, 3) == [0, 1, 2]
    assert rows({"year": {"$gt": 0}}, None, 3) == []
    assert parse_filter({}).mask(None, 0).shape == (0,)


def test_mask_rejects_columns_of_another_length() -> None:
    with pytest.raises(ValueError, match="rows"):
        parse_filter({"lang": "en"}).mask(COLUMNS, N + 1)


def test_mask_is_a_fresh_bool_array_the_caller_may_modify() -> None:
    mask = parse_filter({"lang": {"$exists": True}}).mask(COLUMNS, N)
    assert mask.dtype == bool
    assert mask.shape == (N,)
    mask[:] = False
    assert rows({"lang": {"$exists": True}}) == [0, 1, 2, 3, 6, 7]


def test_decoded_columns_filter_like_the_originals() -> None:
    body = codec.dumps(COLUMNS.encode())
    decoded = MetadataColumns.decode(codec.loads(body, key=KEY), N, key=KEY)
    for flt in ({"tags": None}, {"lang": {"$lt": "fr"}}, {"year": {"$in": [2, True]}}):
        assert rows(flt, decoded) == rows(flt)


# --- filters as values --------------------------------------------------------------------------


def test_filters_are_immutable_hashable_and_equal_by_meaning() -> None:
    one = parse_filter({"year": {"$in": [2, 1, 2.0]}, "lang": "en"})
    two = parse_filter({"year": {"$in": [1.0, 2]}, "lang": {"$eq": "en"}})
    assert one == two
    assert hash(one) == hash(two)
    assert len({one, two}) == 1
    with pytest.raises(AttributeError):
        one.clauses = ()  # type: ignore[misc]


def test_true_and_one_give_different_filters() -> None:
    assert parse_filter({"k": True}) != parse_filter({"k": 1})
    assert parse_filter({"k": 0}) != parse_filter({"k": False})
    assert parse_filter({"k": {"$gt": 1}}) == parse_filter({"k": {"$gt": 1.0}})


# --- validation ---------------------------------------------------------------------------------


def _nested(depth: int) -> dict[str, Any]:
    flt: dict[str, Any] = {"a": 1}
    for _ in range(depth - 1):
        flt = {"$and": [flt]}
    return flt


@pytest.mark.parametrize(
    ("flt", "message"),
    [
        ([{"a": 1}], "filter must be an object, got list"),
        ({"year": {"$gte": [2020]}}, "filter.year.$gte must be a number or a string, got list"),
        ({"year": {"$gte": True}}, "filter.year.$gte must be a number or a string, got bool"),
        ({"year": {"$lt": None}}, "filter.year.$lt must be a number or a string, got null"),
        ({"year": {"$lt": float("nan")}}, "filter.year.$lt must be a finite number, got nan"),
        ({"year": {"$eq": 2**53}}, "filter.year.$eq must be an integer of magnitude below 2**53"),
        ({"$or": []}, "filter.$or must be a non-empty list of filters"),
        ({"$or": {"a": 1}}, "filter.$or must be a non-empty list of filters"),
        ({"$and": [{"a": 1}, 3]}, "filter.$and[1] must be an object, got int"),
        ({"$foo": 1}, "filter.$foo is not a known operator"),
        ({"year": {"$foo": 1}}, "filter.year.$foo is not a known operator"),
        ({"year": {"$regex": "^2"}}, "filter.year.$regex is not a known operator"),
        ({"$eq": 1}, "filter.$eq must be applied to a key"),
        ({"year": {"$or": [{"a": 1}]}}, "filter.year.$or is a logical operator"),
        ({"year": {"gte": 1}}, "filter.year.gte is not an operator; metadata is flat"),
        ({"year": {}}, "filter.year must not be an empty object"),
        ({"tags": ["a", "b"]}, "filter.tags must be a string, number, boolean or null, got list"),
        ({"tags": {"$eq": ["a"]}}, "filter.tags.$eq must be a string, number, boolean or null, got list"),
        ({"tags": {"$in": "a"}}, "filter.tags.$in must be a list of values, got str"),
        (
            {"tags": {"$nin": ["a", {"b": 1}]}},
            "filter.tags.$nin[1] must be a string, number, boolean or null, got object",
        ),
        ({"tags": {"$in": list(range(257))}}, "filter.tags.$in has 257 values; at most 256 are allowed"),
        ({"tags": {"$exists": 1}}, "filter.tags.$exists must be true or false, got int"),
        ({"tags": "x" * 257}, "filter.tags must be at most 256 characters, got 257"),
        ({"k" * 65: 1}, "filter key '" + "k" * 64 + "'… must be 1 to 64 characters long"),
        ({"a\tb": 1}, "filter key 'a\\tb' must not contain control characters"),
        (
            {"$or": [{"a": 1}, {"a": {"$gt": [1]}}]},
            "filter.$or[1].a.$gt must be a number or a string, got list",
        ),
        (_nested(MAX_DEPTH + 1), "filter" + ".$and[0]" * MAX_DEPTH + " nests deeper than 8 levels"),
        ({f"k{i}": i for i in range(MAX_CLAUSES + 1)}, "filter has more than 64 clauses"),
        ({"$or": [{}] * (MAX_CLAUSES + 1)}, "filter.$or has 65 filters; at most 64 are allowed"),
    ],
)
def test_invalid_filter_error_names_the_path(flt: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_filter(flt)
    assert str(err.value).startswith(message)


def test_errors_use_the_given_root_field() -> None:
    with pytest.raises(InvalidRequest) as err:
        parse_filter({"year": {"$gte": []}}, "queries[2].filter")
    assert err.value.field == "queries[2].filter.year.$gte"


def test_filters_at_the_limits_are_accepted() -> None:
    assert isinstance(parse_filter(_nested(MAX_DEPTH)), Filter)
    assert isinstance(parse_filter({f"k{i}": i for i in range(MAX_CLAUSES)}), Filter)
    assert isinstance(parse_filter({"k": {"$in": list(range(MAX_IN_VALUES))}}), Filter)
    assert isinstance(parse_filter({"k": "x" * 256, "k" * 64: 1}), Filter)


def test_logical_operators_count_as_clauses() -> None:
    flt = {"$and": [{f"k{i}": i for i in range(MAX_CLAUSES - 1)}]}
    parse_filter(flt)
    flt["$and"].append({"x": 1})
    with pytest.raises(InvalidRequest, match="more than 64 clauses"):
        parse_filter(flt)


def test_deep_hostile_input_is_refused_without_recursing_through_it() -> None:
    flt: dict[str, Any] = {"a": 1}
    for _ in range(10_000):
        flt = {"$or": [flt]}
    with pytest.raises(InvalidRequest, match="nests deeper"):
        parse_filter(flt)


# --- agreement with the reference evaluator (property) ----------------------------------------------

KEYS = st.sampled_from(["a", "b", "c"])
# Small value pools, so that filters often hit stored values exactly (range boundaries, 2 vs 2.0, ...).
NUMBERS = st.sampled_from([-1, 0, 1, 2, -0.0, 0.5, 2.0])
STRINGS = st.sampled_from(["Z", "a", "ab", "é", "😀"])  # code-point order
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, NUMBERS, STRINGS, STRINGS)
ORDERABLE = st.one_of(NUMBERS, STRINGS, st.sampled_from(["", "b", 1.5]))  # the last: between stored values
DOCUMENT = st.dictionaries(
    KEYS, st.one_of(SCALARS, SCALARS, st.lists(SCALARS, max_size=4)), min_size=1, max_size=3
)
RECORD = st.one_of(st.none(), DOCUMENT, DOCUMENT, DOCUMENT)
OPERATOR = st.one_of(
    st.tuples(st.sampled_from(["$eq", "$ne"]), SCALARS),
    st.tuples(st.sampled_from(["$in", "$nin"]), st.lists(SCALARS, max_size=4)),
    st.tuples(st.sampled_from(["$gt", "$gte", "$lt", "$lte"]), ORDERABLE),
    st.tuples(st.just("$exists"), st.booleans()),
)
LEAF = st.one_of(
    st.builds(lambda k, v: {k: v}, KEYS, SCALARS),
    st.builds(lambda k, ops: {k: dict(ops)}, KEYS, st.lists(OPERATOR, min_size=1, max_size=3)),
)
FILTERS = st.recursive(
    LEAF,
    lambda inner: st.one_of(
        st.builds(lambda fs: {"$and": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda fs: {"$or": fs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(
            lambda fs: {k: v for f in fs for k, v in f.items()}, st.lists(inner, min_size=1, max_size=3)
        ),
    ),
    max_leaves=8,
)


def _depth(flt: dict[str, Any]) -> int:
    subs = [f for op in ("$and", "$or") for f in flt.get(op, [])]
    return 1 + max((_depth(f) for f in subs), default=0)


@PROPERTY
@given(records=st.lists(RECORD, min_size=4, max_size=12), flt=FILTERS)
def test_mask_agrees_with_the_reference_evaluator(
    records: list[dict[str, Any] | None], flt: dict[str, Any]
) -> None:
    assume(_depth(flt) <= MAX_DEPTH)
    parsed = parse_filter(flt)
    expected = [reference(r, flt) for r in records]
    columns = MetadataColumns.from_records(records)
    assert parsed.mask(columns, len(records)).tolist() == expected
    decoded = MetadataColumns.decode(
        codec.loads(codec.dumps(columns.encode()), key=KEY), len(records), key=KEY
    )
    assert parsed.mask(decoded, len(records)).tolist() == expected
    if all(r is None for r in records):
        assert parsed.mask(None, len(records)).tolist() == expected


@PROPERTY
@given(records=st.lists(RECORD, min_size=4, max_size=12), key=KEYS, op=OPERATOR)
def test_single_conditions_agree_with_the_reference_evaluator(
    records: list[dict[str, Any] | None], key: str, op: tuple[str, Any]
) -> None:
    """One operator alone, so that no surrounding $and/$or can hide a wrong boundary."""
    flt = {key: dict([op])}
    columns = MetadataColumns.from_records(records)
    assert parse_filter(flt).mask(columns, len(records)).tolist() == [reference(r, flt) for r in records]


POOL: list[Any] = [None, True, False, -1, 0, 1, 2, -0.0, 0.5, 1.5, 2.0, "", "Z", "a", "ab", "b", "é", "😀"]


def _pool_records(n: int, seed: int) -> list[dict[str, Any] | None]:
    """Seeded records over POOL: scalars, lists (some empty), nulls, and rows without metadata."""
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any] | None] = []
    for _ in range(n):
        if rng.random() < 0.1:
            records.append(None)
            continue
        record: dict[str, Any] = {}
        for key in ("a", "b", "c"):
            roll = rng.random()
            if roll < 0.45:
                record[key] = POOL[rng.integers(len(POOL))]
            elif roll < 0.7:
                record[key] = [POOL[i] for i in rng.integers(len(POOL), size=int(rng.integers(0, 4)))]
        records.append(record)
    return records


def test_every_operator_and_pool_value_agrees_with_the_reference_evaluator() -> None:
    """Exhaustive over operators × values: every range boundary and type pairing is exercised."""
    records = _pool_records(60, seed=3)
    columns = MetadataColumns.from_records(records)
    ordered = [v for v in POOL if v is not None and not isinstance(v, bool)]
    conditions: list[tuple[str, Any]] = [(op, v) for op in ("$eq", "$ne") for v in POOL]
    conditions += [(op, v) for op in ("$gt", "$gte", "$lt", "$lte") for v in ordered]
    conditions += [("$in", POOL[i : i + 3]) for i in range(len(POOL))] + [
        ("$nin", POOL[i::4]) for i in range(4)
    ]
    conditions += [("$exists", True), ("$exists", False)]
    for key in ("a", "b", "c", "d"):
        for op, arg in conditions:
            flt = {key: {op: arg}}
            expected = [reference(r, flt) for r in records]
            assert parse_filter(flt).mask(columns, len(records)).tolist() == expected, flt


def test_ten_thousand_rows_agree_with_the_reference() -> None:
    rng = np.random.default_rng(7)
    langs = ["en", "fr", "de", "es", "Zz", "é"]
    records: list[dict[str, Any] | None] = []
    for i in range(10_000):
        if i % 17 == 0:
            records.append(None)
            continue
        rec: dict[str, Any] = {"year": int(rng.integers(1990, 2025)), "lang": langs[i % len(langs)]}
        if i % 3:
            rec["tags"] = [f"t{int(t)}" for t in rng.integers(0, 20, size=int(rng.integers(0, 5)))]
        if i % 5 == 0:
            rec["score"] = float(rng.normal())
        if i % 7 == 0:
            rec["flag"] = bool(i % 2) if i % 14 else None
        records.append(rec)
    columns = MetadataColumns.from_records(records)
    filters = [
        {"year": {"$gte": 2000, "$lt": 2010}, "lang": {"$in": ["en", "fr"]}},
        {"$or": [{"tags": {"$in": ["t1", "t3"]}}, {"score": {"$gt": 1}}]},
        {"tags": {"$nin": ["t0"]}, "flag": {"$ne": True}, "lang": {"$gte": "e"}},
        {"flag": None, "tags": {"$exists": True}},
    ]
    for flt in filters:
        assert parse_filter(flt).mask(columns, len(records)).tolist() == [reference(r, flt) for r in records]


def test_a_range_bound_compares_only_values_of_its_own_type() -> None:
    """Issue 10 item 5: ``{"$gte": "2020"}`` on numeric years is defined, not an accident.

    A string bound compares strings lexicographically, a number bound numbers numerically; a
    value of the other type (or a boolean, or null) never satisfies either, in scalars and in
    lists alike. Non-orderable bounds are refused (see the validation cases below).
    """
    years = MetadataColumns.from_records(
        [{"y": 2021}, {"y": "2021"}, {"y": "999"}, {"y": [2019, "2030"]}, {"y": True}, {"y": None}, {}]
    )
    # strings compare as text: "999" >= "2020" (zero-pad, or store numbers, to range numerically)
    assert rows({"y": {"$gte": "2020"}}, years, 7) == [1, 2, 3]
    assert rows({"y": {"$gte": 2020}}, years, 7) == [0]
    assert rows({"y": {"$lt": 2020}}, years, 7) == [3]  # the list's number 2019
    assert rows({"y": {"$gt": ""}}, years, 7) == [1, 2, 3]  # every string, no number
