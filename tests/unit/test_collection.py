"""make_collection: the one validation step every source goes through; errors name the field."""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets.collection import MAX_DIM, MAX_ID_BYTES, id_problem, make_collection
from kdbuckets.errors import InvalidRequest


def vecs(n: int = 6, d: int = 4) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, d))


def invalid(field: str, *args: object, **kwargs: object) -> InvalidRequest:
    """Call make_collection, expecting InvalidRequest that names ``field``."""
    kwargs.setdefault("metric", "cosine")
    with pytest.raises(InvalidRequest) as info:
        make_collection(*args, **kwargs)
    assert isinstance(info.value, InvalidRequest)
    assert info.value.field == field
    assert field in str(info.value)
    return info.value


def test_valid_collection_is_float32_with_default_ids() -> None:
    c = make_collection(vecs(), None, None, metric="cosine")
    assert c.vectors.dtype == np.float32
    assert c.vectors.flags.c_contiguous
    assert c.count == 6
    assert c.dim == 4
    assert c.ids.dtype == np.int64
    assert c.ids.tolist() == list(range(6))
    assert c.label_codes is None
    assert c.label_names is None


def test_labels_become_sorted_names_and_int32_codes() -> None:
    c = make_collection(vecs(4), None, np.array(["dog", "cat", "dog", "eel"]), metric="l2")
    assert c.label_names == ["cat", "dog", "eel"]
    assert c.label_codes.dtype == np.int32
    assert c.label_codes.tolist() == [1, 0, 1, 2]


def test_integer_labels_are_named_by_their_decimal_text() -> None:
    c = make_collection(vecs(3), None, np.array([10, 2, 10]), metric="l2")
    assert c.label_names == ["10", "2"]
    assert c.label_codes.tolist() == [0, 1, 0]


@pytest.mark.parametrize("ids", [np.array([5, 3, 9], np.uint16), np.array(["a", "é", "東"])])
def test_int_and_string_ids_are_kept(ids: np.ndarray) -> None:
    c = make_collection(vecs(3), ids, None, metric="l2")
    assert c.ids.tolist() == ids.tolist()
    assert c.ids.dtype.kind == ("i" if ids.dtype.kind == "u" else "U")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_row_is_named(bad: float) -> None:
    v = vecs()
    v[3, 1] = bad
    err = invalid("source.vectors[3]", v, None, None)
    assert "NaN or Inf" in err.problem


def test_zero_vector_is_refused_for_cosine_and_named() -> None:
    v = vecs()
    v[2] = 0.0
    err = invalid("source.vectors[2]", v, None, None, metric="cosine")
    assert "all zeros" in str(err)


@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_zero_vector_is_fine_for_other_metrics(metric: str) -> None:
    v = vecs()
    v[2] = 0.0
    assert make_collection(v, None, None, metric=metric).count == 6


@pytest.mark.parametrize(
    ("vectors", "problem"),
    [
        (np.zeros((0, 4)), "is empty"),
        (np.zeros(4), "2-D"),
        (np.zeros((2, 2, 2)), "2-D"),
        (np.ones((3, 0)), "0 dimensions"),
        (np.ones((2, MAX_DIM + 1)), f"{MAX_DIM + 1} dimensions"),
        (np.ones((2, 2), dtype=bool), "numeric"),
        (np.array([["1", "2"]]), "numeric"),
        (np.ones((2, 2), dtype=complex), "numeric"),
    ],
)
def test_unusable_vector_arrays_are_refused(vectors: np.ndarray, problem: str) -> None:
    err = invalid("source.vectors", vectors, None, None, metric="l2")
    assert problem in err.problem


def test_max_dim_is_accepted() -> None:
    assert make_collection(np.ones((2, MAX_DIM)), None, None, metric="l2").dim == MAX_DIM


@pytest.mark.parametrize(
    ("ids", "problem"),
    [
        (np.array([1, 2, 3, 2, 5, 6]), "must be unique; 2 appears 2 times"),
        (np.array(["a", "b", "a", "c", "d", "a"]), "must be unique; 'a' appears 3 times"),
        (np.array([1, 2, 3]), "expected (6,)"),
        (np.arange(12).reshape(6, 2), "expected (6,)"),
        (np.arange(6, dtype=float), "integers or strings"),
        (np.array([1, "a", 2, 3, 4, 5], dtype=object), "integers or strings"),
        (np.array([2**64 - 1, 1, 2, 3, 4, 5], dtype=np.uint64), "larger than int64"),
    ],
)
def test_bad_ids_are_refused_naming_the_ids(ids: np.ndarray, problem: str) -> None:
    err = invalid("source.ids", vecs(), ids, None)
    assert problem in err.problem


@pytest.mark.parametrize("bad", ["", "x" * (MAX_ID_BYTES + 1), "é" * (MAX_ID_BYTES // 2 + 1)])
def test_string_ids_outside_one_to_256_utf8_bytes_are_refused_by_row(bad: str) -> None:
    ids = np.array(["a", bad, "c", "d", "e", "f"])
    invalid("source.ids[1]", vecs(), ids, None)


def test_string_id_of_exactly_256_bytes_is_accepted() -> None:
    ids = np.array(["a", "é" * (MAX_ID_BYTES // 2)])
    assert make_collection(vecs(2), ids, None, metric="l2").ids[1] == "é" * 128


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (np.array(["a", "b"]), "expected (6,)"),
        (np.zeros((6, 1), dtype=int), "expected (6,)"),
        (np.linspace(0, 1, 6), "integers or strings"),
        (np.ones(6, dtype=bool), "integers or strings"),
    ],
)
def test_bad_labels_are_refused_naming_the_labels(labels: np.ndarray, problem: str) -> None:
    err = invalid("source.labels", vecs(), None, labels)
    assert problem in err.problem


def test_custom_field_names_reach_the_error() -> None:
    fields = ("source.items", "source.items[].id", "source.items[].label")
    v = vecs()
    v[4, 0] = np.nan
    invalid("source.items[4]", v, None, None, fields=fields)
    invalid("source.items[].id", vecs(), np.zeros(6, int), None, fields=fields)
    invalid("source.items[].label", vecs(), None, np.zeros(2, int), fields=fields)


@pytest.mark.parametrize(
    ("ids", "labels", "field"),
    [
        (np.array([b"\xff", b"a"]), None, "source.ids"),
        (None, np.array([b"\xff", b"a"]), "source.labels"),
        (np.frombuffer(np.array([0xD800, 0x41], "<u4").tobytes(), dtype="<U1"), None, "source.ids"),
    ],
    ids=["bytes-ids", "bytes-labels", "surrogate-ids"],
)
def test_undecodable_text_ids_or_labels_are_invalid_requests(
    ids: np.ndarray | None, labels: np.ndarray | None, field: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        make_collection(vecs(2), ids, labels, metric="l2")
    assert info.value.field.startswith(field)


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        ("doc\x007", "U+0000"),
        ("doc7\n", "U+000A"),
        ("a\tb", "U+0009"),
        ("\x1f", "U+001F"),
        ("del\x7f", "U+007F"),
    ],
    ids=["inner-nul", "newline", "tab", "unit-separator", "del"],
)
def test_string_ids_with_control_characters_are_refused_by_row(bad: str, code: str) -> None:
    ids = np.array(["a", "b", "c", bad, "e", "f"])
    err = invalid("source.ids[3]", vecs(), ids, None)
    assert code in err.problem


def test_a_trailing_nul_is_already_gone_in_a_numpy_text_array_so_it_cannot_hide_a_duplicate() -> None:
    """numpy pads text with NULs: "doc7" + NUL *is* "doc7" here, and uniqueness catches the pair.

    (Ids that arrive as JSON are checked before they become an array; see id_problem.)
    """
    ids = np.array(["doc7", "doc7\x00", "c", "d", "e", "f"])
    assert ids[1] == "doc7"
    err = invalid("source.ids", vecs(), ids, None)
    assert "'doc7' appears 2 times" in err.problem


def test_bytes_ids_with_control_characters_are_refused_by_row() -> None:
    err = invalid("source.ids[1]", vecs(2), np.array([b"a", b"b\x01c"]), None)
    assert "U+0001" in err.problem


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("doc7", None),
        (7, None),
        (-(2**63) + 1, None),
        ("doc7\x00", "contains control character U+0000 at position 4"),
        (2**63, "must fit in int64"),
        (True, "must be a string or an integer, got bool"),
        (1.5, "must be a string or an integer, got float"),
        ("", f"must be 1 to {MAX_ID_BYTES} bytes of UTF-8"),
        ("\ud800", "is not valid UTF-8 text"),
    ],
)
def test_one_rule_says_why_a_json_value_cannot_be_an_id(value: object, problem: str | None) -> None:
    found = id_problem(value)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem)
