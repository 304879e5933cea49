"""Source readers: .npy (never unpickled), JSON Lines (plain or gzip) and inline items."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdbuckets import sources
from kdbuckets.errors import InvalidRequest, SourceError, StorageError
from kdbuckets.sources import StoreReader, items_to_collection, load_npy, read_source, vector_matrix
from kdbuckets.storage import AccessDenied, BucketNotFound, NotFound, ObjectStore, PreconditionFailed, S3Uri

SRC = "s3://kdbuckets-src/data"


def npy(array: np.ndarray, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, **kwargs)
    return buf.getvalue()


def fetcher(objects: dict[str, bytes]) -> Callable[[S3Uri], bytes]:
    """A ``fetch`` over an in-memory dict of URI -> bytes (absent keys are NotFound)."""

    def fetch(uri: S3Uri) -> bytes:
        name = f"s3://{uri.bucket}/{uri.key}"
        if name not in objects:
            raise NotFound(f"{name} does not exist")
        return objects[name]

    return fetch


def expect_invalid(field: str, call: Callable[[], object], *, source_error: bool = False) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call()
    assert isinstance(info.value, InvalidRequest)
    assert info.value.field == field, str(info.value)
    assert field in str(info.value)
    if source_error:
        assert isinstance(info.value, SourceError)
    return info.value


VECTORS = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)


# -- .npy sources -------------------------------------------------------------------------
def test_npy_source_reads_vectors_ids_labels_and_label_names() -> None:
    objects = {
        f"{SRC}/v.npy": npy(VECTORS),
        f"{SRC}/ids.npy": npy(np.array(["a", "b", "c", "d", "e"])),
        f"{SRC}/labels.npy": npy(np.array([0, 1, 1, 0, 2], dtype=np.int16)),
        f"{SRC}/names.json": json.dumps({"0": "cat", "1": "dog", "2": "eel"}).encode(),
    }
    source = {
        "vectors": f"{SRC}/v.npy",
        "ids": f"{SRC}/ids.npy",
        "labels": f"{SRC}/labels.npy",
        "label_names": f"{SRC}/names.json",
    }
    c = read_source(source, metric="l2", fetch=fetcher(objects))
    assert np.array_equal(c.vectors, VECTORS)
    assert c.ids.tolist() == ["a", "b", "c", "d", "e"]
    assert c.label_names == ["cat", "dog", "eel"]
    assert c.label_codes.tolist() == [0, 1, 1, 0, 2]


def test_npy_source_with_only_vectors_numbers_the_rows() -> None:
    c = read_source(
        {"vectors": f"{SRC}/v.npy"}, metric="cosine", fetch=fetcher({f"{SRC}/v.npy": npy(VECTORS)})
    )
    assert c.ids.tolist() == [0, 1, 2, 3, 4]
    assert c.label_codes is None


@pytest.mark.parametrize(
    "array",
    [
        VECTORS.astype(">f4"),
        np.asfortranarray(VECTORS),
        VECTORS.astype(np.float64),
        VECTORS.astype(np.float16),
    ],
    ids=["big-endian", "fortran-order", "float64", "float16"],
)
def test_load_npy_reads_any_layout_of_numeric_data(array: np.ndarray) -> None:
    loaded = load_npy(npy(array), "source.vectors")
    assert loaded.shape == array.shape
    assert np.array_equal(loaded, array)


def test_load_npy_reads_version_2_headers() -> None:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, VECTORS, version=(2, 0))
    assert np.array_equal(load_npy(buf.getvalue(), "source.vectors"), VECTORS)


class _Tripwire:
    """Unpickling this calls :func:`_tripped`; load_npy must never get that far."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return (_tripped, ())


TRIPPED: list[bool] = []


def _tripped() -> None:
    TRIPPED.append(True)


def test_npy_of_python_objects_is_refused_and_never_unpickled() -> None:
    array = np.empty(3, dtype=object)
    array[:] = [_Tripwire(), _Tripwire(), _Tripwire()]
    body = npy(array, allow_pickle=True)
    TRIPPED.clear()
    np.load(io.BytesIO(body), allow_pickle=True)  # the file really does unpickle into calls
    assert TRIPPED
    TRIPPED.clear()
    err = expect_invalid("source.vectors", lambda: load_npy(body, "source.vectors"), source_error=True)
    assert "Python objects" in err.problem
    assert not TRIPPED


def test_npy_source_with_object_vectors_is_refused_naming_the_field() -> None:
    array = np.array([[1.0, "x"], [2.0, None]], dtype=object)
    objects = {f"{SRC}/v.npy": npy(array, allow_pickle=True)}
    expect_invalid(
        "source.vectors",
        lambda: read_source({"vectors": f"{SRC}/v.npy"}, metric="l2", fetch=fetcher(objects)),
        source_error=True,
    )


@pytest.mark.parametrize("cut", [0, 3, 8, 12, 60, -1, -12])
def test_truncated_npy_is_refused_naming_the_field(cut: int) -> None:
    body = npy(VECTORS)[:cut]
    expect_invalid("source.ids", lambda: load_npy(body, "source.ids"), source_error=True)


def test_truncated_npy_data_says_it_is_truncated() -> None:
    err = expect_invalid("source.vectors", lambda: load_npy(npy(VECTORS)[:-4], "source.vectors"))
    assert "truncated" in err.problem


@pytest.mark.parametrize(
    "body", [b"", b"not an npy file at all", b"\x93NUMPY\x01\x00\x04\x00abc\n", b"PK\x03\x04"]
)
def test_garbage_npy_is_refused(body: bytes) -> None:
    expect_invalid("source.vectors", lambda: load_npy(body, "source.vectors"), source_error=True)


def _npy_with_header(header: str) -> bytes:
    raw = header.encode("latin1")
    raw += b" " * (64 - (10 + len(raw) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + bytes(64)


@pytest.mark.parametrize(
    "shape", ["(-1, 4)", "(-2, 2)", "(4294967296, 4294967296)"], ids=["minus-one", "minus-two", "overflow"]
)
def test_npy_with_an_impossible_shape_is_a_source_error(shape: str) -> None:
    body = _npy_with_header(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}")
    with pytest.raises(SourceError):
        load_npy(body, "source.vectors")


CRAFTED_HEADERS = [
    pytest.param(
        "'descr': '<f4', 'fortran_order': False, 'shape': (0, 100000000000000000000)", id="zero-by-1e20"
    ),
    pytest.param(
        "'descr': '<f4', 'fortran_order': False, 'shape': (100000000000000000000, 0)", id="1e20-by-zero"
    ),
    pytest.param("'descr': '<f4', 'fortran_order': False, 'shape': " + repr((0,) * 40), id="40-dimensions"),
    pytest.param("'descr': '<U0', 'fortran_order': False, 'shape': (4,)", id="U0"),
    pytest.param("'descr': '|S0', 'fortran_order': False, 'shape': (4,)", id="S0"),
    pytest.param("'descr': '|V0', 'fortran_order': False, 'shape': (4,)", id="V0"),
    pytest.param("'descr': '|V8', 'fortran_order': False, 'shape': (4,)", id="V8"),
    pytest.param("'descr': ('<f4', (2,)), 'fortran_order': False, 'shape': (4,)", id="subarray"),
    pytest.param("'descr': [('a', '<f4'), ('b', '<i4')], 'fortran_order': False, 'shape': (4,)", id="struct"),
    pytest.param("'descr': [('a', '<f4', (2,))], 'fortran_order': False, 'shape': (2,)", id="struct-sub"),
    pytest.param("'descr': '|b1', 'fortran_order': False, 'shape': (4,)", id="bool"),
    pytest.param("'descr': '<c8', 'fortran_order': False, 'shape': (4,)", id="complex"),
    pytest.param("'descr': '<M8[s]', 'fortran_order': False, 'shape': (4,)", id="datetime"),
    pytest.param(
        "'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4)", id="2**62-rows"
    ),
]


@pytest.mark.parametrize("header", CRAFTED_HEADERS)
def test_crafted_npy_headers_are_source_errors_naming_the_field(header: str) -> None:
    """Each of these made numpy raise a plain ValueError (or read nonsense) before."""
    body = _npy_with_header("{" + header + ", }")
    expect_invalid("source.labels", lambda: load_npy(body, "source.labels"), source_error=True)


DESCRS = st.one_of(
    st.sampled_from(
        [
            "'<f4'",
            "'>f8'",
            "'<f2'",
            "'<i8'",
            "'|u1'",
            "'<U3'",
            "'|S2'",
            "'<U0'",
            "'|S0'",
            "'|V0'",
            "'|V4'",
            "'|b1'",
            "'<c16'",
            "'<M8[s]'",
            "'<m8'",
            "'|O'",
            "'O'",
            "'<f4 '",
            "'f'",
            "'<f3'",
            "('<f4', (2,))",
            "('<f4', (0,))",
            "('<f4', ())",
            "('<i2', (10**9, 10**9))",
            "[('a', '<f4')]",
            "[('a', '<f4', (3,))]",
            "[('', '|V0')]",
            "[('a', [('b', '<f4')])]",
            "[]",
            "{}",
            "{'names': ['a'], 'formats': ['<f4']}",
            "None",
            "3",
            "b'<f4'",
            "'\x00'",
        ]
    ),
    st.text(max_size=8).map(repr),
)
DIMS = st.one_of(
    st.integers(0, 8),
    st.sampled_from([2**31, 2**32, 2**62, 2**63, 2**64, 10**20, -1, -(2**63)]),
    st.integers(),
)
SHAPES = st.one_of(
    st.lists(DIMS, max_size=4).map(lambda dims: repr(tuple(dims))),
    st.integers(0, 70).map(lambda n: repr((1,) * n)),
    st.sampled_from(["[2, 2]", "None", "'4'", "(2.0, 2)", "(True,)", "()"]),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    descr=DESCRS,
    shape=SHAPES,
    fortran=st.sampled_from(["False", "True", "0", "'no'"]),
    version=st.sampled_from([b"\x01\x00", b"\x02\x00", b"\x03\x00"]),
    data=st.binary(max_size=96),
)
def test_load_npy_returns_an_array_or_raises_source_error(
    descr: str, shape: str, fortran: str, version: bytes, data: bytes
) -> None:
    header = f"{{'descr': {descr}, 'fortran_order': {fortran}, 'shape': {shape}, }}".encode()
    size = 2 if version == b"\x01\x00" else 4
    total = len(b"\x93NUMPY") + 2 + size + len(header) + 1
    header += b" " * (-total % 64) + b"\n"
    body = b"\x93NUMPY" + version + len(header).to_bytes(size, "little") + header + data
    try:
        array = load_npy(body, "source.vectors")
    except SourceError as exc:
        field = exc.field
    else:
        field = None
        assert isinstance(array, np.ndarray)
        assert array.dtype.kind in "fiuUS"
        assert array.dtype.itemsize > 0
        assert array.dtype.fields is None
        assert array.dtype.shape == ()
        assert array.nbytes <= len(data)
    assert field in (None, "source.vectors")


def test_missing_source_object_is_a_source_error_naming_the_uri() -> None:
    err = expect_invalid(
        "source.ids",
        lambda: read_source(
            {"vectors": f"{SRC}/v.npy", "ids": f"{SRC}/missing.npy"},
            metric="l2",
            fetch=fetcher({f"{SRC}/v.npy": npy(VECTORS)}),
        ),
        source_error=True,
    )
    assert f"{SRC}/missing.npy" in err.problem


def failing(exc: Exception) -> Callable[[S3Uri], bytes]:
    """A ``fetch`` whose every read fails with ``exc``."""

    def fetch(uri: S3Uri) -> bytes:
        raise exc

    return fetch


@pytest.mark.parametrize(
    ("exc", "problem"),
    [
        (NotFound("gone", bucket="kdbuckets-src", key="data/v.npy"), "which does not exist"),
        (BucketNotFound("no bucket", bucket="kdbuckets-src", key="data/v.npy"), "bucket 'kdbuckets-src'"),
        (AccessDenied("denied", bucket="kdbuckets-src", key="data/v.npy"), "access denied"),
    ],
    ids=["missing object", "missing bucket", "403"],
)
@pytest.mark.parametrize("field", ["vectors", "jsonl", "label_names"])
def test_a_source_the_caller_got_wrong_is_a_source_error_naming_field_and_uri(
    exc: StorageError, problem: str, field: str
) -> None:
    source: dict[str, Any] = {field: f"{SRC}/v.npy"}
    if field == "label_names":
        labels = npy(np.array([0, 1, 0, 1, 0]))
        source = {"vectors": f"{SRC}/vec.npy", "labels": f"{SRC}/lab.npy", "label_names": f"{SRC}/v.npy"}
        objects = {f"{SRC}/vec.npy": npy(VECTORS), f"{SRC}/lab.npy": labels}

        def fetch(uri: S3Uri) -> bytes:
            name = f"s3://{uri.bucket}/{uri.key}"
            if name in objects:
                return objects[name]
            raise exc

    else:
        fetch = failing(exc)
    err = expect_invalid(
        f"source.{field}", lambda: read_source(source, metric="l2", fetch=fetch), source_error=True
    )
    assert f"{SRC}/v.npy" in err.problem
    assert problem in err.problem


@pytest.mark.parametrize(
    "exc",
    [
        StorageError("S3 request for s3://kdbuckets-src/data/v.npy failed: SlowDown"),
        StorageError("s3://kdbuckets-src/data/v.npy was cut off 4 times while streaming"),
        PreconditionFailed("conditional read lost"),
    ],
    ids=["throttled", "cut off", "other StorageError subclass"],
)
def test_a_transient_storage_failure_is_not_blamed_on_the_caller(exc: StorageError) -> None:
    # A SourceError is an InvalidRequest: callers would not retry what S3 may well serve next time.
    with pytest.raises(StorageError) as info:
        read_source({"vectors": f"{SRC}/v.npy"}, metric="l2", fetch=failing(exc))
    assert info.value is exc
    assert not isinstance(info.value, InvalidRequest)


@pytest.mark.parametrize("uri", ["http://x/y.npy", "s3://UPPER/x.npy", "s3://bucket", 5, "s3://bucket/x\x00"])
def test_bad_source_uris_name_the_field(uri: object) -> None:
    expect_invalid("source.vectors", lambda: read_source({"vectors": uri}, metric="l2", fetch=fetcher({})))


@pytest.mark.parametrize("source", [{}, {"vectors": "a", "jsonl": "b"}, {"ids": f"{SRC}/ids.npy"}])
def test_source_must_have_exactly_one_kind(source: dict[str, Any]) -> None:
    expect_invalid("source", lambda: read_source(source, metric="l2", fetch=fetcher({})))


@pytest.mark.parametrize(
    ("names", "labels", "problem"),
    [
        (b"not json", np.array([0, 1, 0, 1, 0]), "JSON object"),
        (b"[1, 2]", np.array([0, 1, 0, 1, 0]), "JSON object"),
        (b'{"zero": "a"}', np.array([0, 1, 0, 1, 0]), "JSON object"),
        (b'{"0": "a"}', np.array([0, 1, 0, 1, 0]), "no name for label code(s) [1]"),
        (b'{"0": "a"}', np.array(["x", "y", "x", "y", "x"]), "needs integer labels"),
    ],
)
def test_bad_label_names_are_refused_naming_the_field(names: bytes, labels: np.ndarray, problem: str) -> None:
    objects = {f"{SRC}/v.npy": npy(VECTORS), f"{SRC}/l.npy": npy(labels), f"{SRC}/n.json": names}
    source = {"vectors": f"{SRC}/v.npy", "labels": f"{SRC}/l.npy", "label_names": f"{SRC}/n.json"}
    err = expect_invalid(
        "source.label_names", lambda: read_source(source, metric="l2", fetch=fetcher(objects))
    )
    assert problem in err.problem


def test_label_names_without_labels_is_refused() -> None:
    source = {"vectors": f"{SRC}/v.npy", "label_names": f"{SRC}/n.json"}
    expect_invalid(
        "source.label_names",
        lambda: read_source(source, metric="l2", fetch=fetcher({f"{SRC}/v.npy": npy(VECTORS)})),
    )


def test_npy_vectors_with_a_nan_row_name_that_row() -> None:
    v = VECTORS.copy()
    v[3, 0] = np.nan
    expect_invalid(
        "source.vectors[3]",
        lambda: read_source(
            {"vectors": f"{SRC}/v.npy"}, metric="l2", fetch=fetcher({f"{SRC}/v.npy": npy(v)})
        ),
    )


# -- JSON Lines ---------------------------------------------------------------------------
ITEMS = [
    {"id": "a", "vector": [1.0, 0.0], "label": "x"},
    {"id": "b", "vector": [0.0, 1.0], "label": "y", "metadata": {"any": "thing"}},
    {"id": "c", "vector": [1, 1], "label": "x"},
]


def jsonl(items: list[Any], blank_lines: bool = False) -> bytes:
    sep = "\n\n" if blank_lines else "\n"
    return sep.join(json.dumps(item) for item in items).encode() + b"\n"


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("items.jsonl", jsonl(ITEMS)),
        ("items.jsonl.gz", gzip.compress(jsonl(ITEMS))),
        ("blank-lines.jsonl", jsonl(ITEMS, blank_lines=True)),
        ("crlf.jsonl", jsonl(ITEMS).replace(b"\n", b"\r\n")),
    ],
)
def test_jsonl_sources_parse_plain_and_gzipped(name: str, body: bytes) -> None:
    uri = f"{SRC}/{name}"
    c = read_source({"jsonl": uri}, metric="cosine", fetch=fetcher({uri: body}))
    assert c.ids.tolist() == ["a", "b", "c"]
    assert c.label_names == ["x", "y"]
    assert c.label_codes.tolist() == [0, 1, 0]
    assert np.array_equal(c.vectors, np.array([[1, 0], [0, 1], [1, 1]], np.float32))


@pytest.mark.parametrize("gzipped", [False, True])
def test_bad_jsonl_line_is_named_by_its_number(gzipped: bool) -> None:
    body = b'{"vector": [1, 2]}\n\n{"vector": [1, 2}\n{"vector": [3, 4]}\n'
    body = gzip.compress(body) if gzipped else body
    uri = f"{SRC}/bad.jsonl"
    err = expect_invalid(
        "source.jsonl",
        lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body})),
        source_error=True,
    )
    assert "line 3" in err.problem


def test_jsonl_with_invalid_utf8_names_the_line() -> None:
    uri = f"{SRC}/bad.jsonl"
    body = b'{"vector": [1, 2]}\n{"vector": [1, 2], "id": "\xff"}\n'
    err = expect_invalid(
        "source.jsonl", lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    )
    assert "line 2" in err.problem


def test_corrupt_gzip_is_a_source_error() -> None:
    uri = f"{SRC}/bad.jsonl.gz"
    body = gzip.compress(jsonl(ITEMS))[:-10]
    err = expect_invalid(
        "source.jsonl", lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    )
    assert "gzip" in err.problem


@pytest.mark.parametrize(
    ("ident", "problem"),
    [
        ("doc7\x00", "U+0000 at position 4"),
        ("doc\x00\x00", "U+0000 at position 3"),
        ("doc\t7", "U+0009 at position 3"),
        ("doc\x7f", "U+007F at position 3"),
        ("", "1 to 256 bytes"),
        ("é" * 129, "1 to 256 bytes"),
        ("\ud800", "UTF-8"),
    ],
    ids=["trailing-nul", "two-trailing-nuls", "tab", "del", "empty", "too-long", "lone-surrogate"],
)
@pytest.mark.parametrize("kind", ["jsonl", "items"])
def test_a_bad_string_id_is_refused_before_numpy_sees_it(kind: str, ident: str, problem: str) -> None:
    """ "doc7" + NUL used to become "doc7" in the numpy text array, silently replacing doc7."""
    rows = [
        {"id": "doc7", "vector": [1, 2]},
        {"id": "doc8", "vector": [2, 1]},
        {"id": ident, "vector": [1, 1]},
    ]
    uri = f"{SRC}/ids.jsonl"
    source = {"jsonl": uri} if kind == "jsonl" else {"items": rows}
    body = "\n".join(json.dumps(r) for r in rows).encode("utf-8", "surrogatepass")
    err = expect_invalid(
        f"source.{kind}[2].id", lambda: read_source(source, metric="l2", fetch=fetcher({uri: body}))
    )
    assert problem in err.problem


def test_jsonl_integer_and_string_ids_are_still_read() -> None:
    uri = f"{SRC}/ids.jsonl"
    rows = [{"id": 2**63 - 1, "vector": [1, 2]}, {"id": -(2**63) + 1, "vector": [2, 1]}]
    body = "\n".join(json.dumps(r) for r in rows).encode()
    c = read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    assert c.ids.tolist() == [2**63 - 1, -(2**63) + 1]


def test_jsonl_item_with_unknown_field_is_named() -> None:
    uri = f"{SRC}/x.jsonl"
    body = jsonl([{"vector": [1, 2]}, {"vector": [1, 2], "vec": [3]}])
    err = expect_invalid(
        "source.jsonl[1]", lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    )
    assert "vec" in err.problem


def test_empty_jsonl_is_refused() -> None:
    uri = f"{SRC}/empty.jsonl"
    expect_invalid(
        "source.jsonl", lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: b"\n\n"}))
    )


# -- inline items -------------------------------------------------------------------------
def items(data: list[Any], metric: str = "cosine") -> Any:
    return read_source({"items": data}, metric=metric, fetch=fetcher({}))


def test_inline_items_default_ids_to_their_position() -> None:
    c = items([{"vector": [1, 2]}, {"vector": [3, 4]}])
    assert c.ids.tolist() == [0, 1]
    assert c.label_codes is None


def test_inline_integer_labels_are_accepted() -> None:
    c = items([{"vector": [1, 2], "label": 3}, {"vector": [3, 4], "label": "3"}])
    assert c.label_names == ["3"]


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        ([], "source.items", "is empty"),
        ([{"vector": [1, 2]}, {"vector": [1, 2], "colour": "red"}], "source.items[1]", "unknown field"),
        ([{"id": 1}], "source.items[0].vector", "is missing"),
        ([[1, 2]], "source.items[0]", "must be an object"),
        ([{"vector": [1, 2], "id": 1}, {"vector": [1, 3], "id": "b"}], "source.items[].id", "not a mix"),
        ([{"vector": [1, 2], "id": 1}, {"vector": [1, 3], "id": 1.5}], "source.items[1].id", "got float"),
        ([{"vector": [1, 2], "id": 1}, {"vector": [1, 3], "id": True}], "source.items[1].id", "got bool"),
        ([{"vector": [1, 2], "id": 2**63}], "source.items[0].id", "int64"),
        ([{"vector": [1, 2], "id": 7}, {"vector": [1, 3], "id": 7}], "source.items[].id", "unique"),
        ([{"vector": [1, 2], "id": "x"}, {"vector": [1, 3], "id": "x"}], "source.items[].id", "unique"),
        ([{"vector": [1, 2], "label": "a"}, {"vector": [1, 3]}], "source.items[1].label", "is missing"),
        (
            [{"vector": [1, 2], "label": "a"}, {"vector": [1, 3], "label": True}],
            "source.items[1].label",
            "string",
        ),
        (
            [{"vector": [1, 2], "label": "a"}, {"vector": [1, 3], "label": 1.5}],
            "source.items[1].label",
            "string",
        ),
        ([{"vector": [1, 2]}, {"vector": [1, "2"]}], "source.items[1].vector[1]", "got str"),
        ([{"vector": [1, 2]}, {"vector": [1, 2, 3]}], "source.items[1].vector", "3 dimensions"),
        ([{"vector": [1, 2]}, {"vector": []}], "source.items[1].vector", "non-empty"),
        ([{"vector": [1, 2]}, {"vector": [0, 0]}], "source.items[1]", "all zeros"),
        ([{"vector": [1, 2]}, {"vector": [float("nan"), 0]}], "source.items[1]", "NaN"),
    ],
)
def test_bad_inline_items_name_the_item_and_field(data: list[Any], field: str, problem: str) -> None:
    err = expect_invalid(field, lambda: items(data))
    assert problem in err.problem


def test_items_that_are_not_a_list_are_refused() -> None:
    expect_invalid("source.items", lambda: items({"vector": [1, 2]}))  # type: ignore[arg-type]


def test_items_to_collection_uses_the_given_field_name() -> None:
    expect_invalid("batch[0].vector", lambda: items_to_collection([{}], metric="l2", field="batch"))


# -- vector_matrix ------------------------------------------------------------------------
def test_vector_matrix_converts_json_numbers_to_float32() -> None:
    m = vector_matrix([[1, 2.5], [3, -4]], field="vectors")
    assert m.dtype == np.float32
    assert m.tolist() == [[1.0, 2.5], [3.0, -4.0]]


@pytest.mark.parametrize(
    ("rows", "field", "message"),
    [
        ([[1.0, "2"]], "vectors[0][1]", "vectors[0][1] must be a number, got str"),
        ([[1.0, 2.0], [1.0, None]], "vectors[1][1]", "vectors[1][1] must be a number, got NoneType"),
        ([[1.0, 2.0], [1.0, [2.0]]], "vectors[1][1]", "vectors[1][1] must be a number, got list"),
        ([[True, False]], "vectors[0][0]", "vectors[0][0] must be a number, got bool"),
        ([[1.0, 2.0], [3.0]], "vectors[1]", "vectors[1] has 1 dimensions; vectors[0] has 2"),
        ([[1.0], [2.0, 3.0]], "vectors[1]", "vectors[1] has 2 dimensions; vectors[0] has 1"),
        ([[]], "vectors[0]", "vectors[0] must be a non-empty list of numbers"),
        ([[1.0], {"x": 1}], "vectors[1]", "vectors[1] must be a non-empty list of numbers"),
        ([1.0, 2.0], "vectors[0]", "vectors[0] must be a non-empty list of numbers"),
        ([[10**40, 1]], "vectors[0][0]", "vectors[0][0] is too large for float32"),
    ],
)
def test_vector_matrix_names_the_first_bad_element(rows: list[Any], field: str, message: str) -> None:
    err = expect_invalid(field, lambda: vector_matrix(rows, field="vectors"))
    assert str(err) == message


@pytest.mark.parametrize("rows", [[[1.0, True]], [[1, False]], [[0.5, 1.5], [True, 2.0]]])
def test_vector_matrix_refuses_booleans_mixed_with_numbers(rows: list[Any]) -> None:
    with pytest.raises(InvalidRequest, match="got bool"):
        vector_matrix(rows, field="vectors")


# -- chunked .npy reads and streamed JSON Lines ----------------------------------------------
WIDE = np.random.default_rng(5).normal(size=(37, 6)) * 10


@pytest.mark.parametrize("chunk", [1, 24, 100, 1 << 20])
@pytest.mark.parametrize(
    "array",
    [
        WIDE.astype("<f2"),
        WIDE.astype("<f4"),
        WIDE.astype(">f8"),
        WIDE.astype("<i2"),
        np.asfortranarray(WIDE.astype(np.float32)),
    ],
    ids=["float16", "float32", "big-endian-float64", "int16", "fortran"],
)
def test_chunked_npy_reads_equal_a_whole_read(
    monkeypatch: pytest.MonkeyPatch, chunk: int, array: np.ndarray
) -> None:
    """Chunks of any size (a row split over two chunks included) convert exactly as one read."""
    monkeypatch.setattr(sources, "CHUNK_BYTES", chunk)
    c = read_source({"vectors": f"{SRC}/v.npy"}, metric="l2", fetch=fetcher({f"{SRC}/v.npy": npy(array)}))
    assert c.vectors.dtype == np.float32
    assert c.vectors.flags.c_contiguous
    assert np.array_equal(c.vectors, array.astype(np.float32))


@pytest.mark.parametrize(
    ("row", "value", "dtype", "words"),
    [
        (30, np.nan, "float32", "NaN"),
        (21, 1e16, "float32", "±1e+15"),
        (36, 70_000.0, "float16", "float16"),
    ],
)
def test_a_bad_row_in_a_later_chunk_is_named_by_its_row(
    monkeypatch: pytest.MonkeyPatch, row: int, value: float, dtype: str, words: str
) -> None:
    monkeypatch.setattr(sources, "CHUNK_BYTES", 5 * 6 * 8)  # five float64 rows per chunk
    v = WIDE.copy()
    v[row, 2] = value
    err = expect_invalid(
        f"source.vectors[{row}]",
        lambda: read_source(
            {"vectors": f"{SRC}/v.npy"}, metric="l2", dtype=dtype, fetch=fetcher({f"{SRC}/v.npy": npy(v)})
        ),
    )
    assert words in err.problem


def test_a_vectors_header_is_checked_before_any_data_is_read() -> None:
    header_only = npy(np.zeros((3, 5000), np.float32))[:128]
    err = expect_invalid(
        "source.vectors",
        lambda: read_source(
            {"vectors": f"{SRC}/v.npy"}, metric="l2", fetch=fetcher({f"{SRC}/v.npy": header_only})
        ),
        source_error=True,
    )
    assert "truncated" in err.problem


@pytest.mark.parametrize("piece", [3, 64, 1 << 20])
@pytest.mark.parametrize("gzipped", ["plain", "gzip", "two-gzip-members"])
def test_jsonl_streamed_in_pieces_reads_every_item(
    monkeypatch: pytest.MonkeyPatch, piece: int, gzipped: str
) -> None:
    monkeypatch.setattr(sources, "CHUNK_BYTES", piece)
    monkeypatch.setattr(sources, "JSONL_BLOCK_ROWS", 2)
    rows = [
        {"id": f"r{i}", "vector": [float(i), 1.0, -2.5], "label": "even" if i % 2 == 0 else "odd"}
        for i in range(9)
    ]
    body = jsonl(rows).replace(b"\n", b"\r\n", 3)
    if gzipped == "gzip":
        body = gzip.compress(body)
    elif gzipped == "two-gzip-members":
        body = gzip.compress(body[:50]) + gzip.compress(body[50:])
    uri = f"{SRC}/items.jsonl"
    c = read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    assert c.ids.tolist() == [f"r{i}" for i in range(9)]
    assert np.array_equal(c.vectors, np.array([r["vector"] for r in rows], np.float32))
    assert [c.label_names[k] for k in c.label_codes] == [r["label"] for r in rows]


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ({"vector": [1e16, 1.0]}, "source.jsonl[5].vector", "±1e+15"),
        ({"vector": [1.0, "x"]}, "source.jsonl[5].vector[1]", "must be a number"),
        ({"vector": [1.0, 2.0, 3.0]}, "source.jsonl[5].vector", "3 dimensions"),
        ({"vector": [float("nan"), 1.0]}, "source.jsonl[5]", "NaN"),
    ],
    ids=["too-large", "not-a-number", "other-dimension", "nan"],
)
def test_a_bad_jsonl_vector_in_a_later_block_is_named_by_its_item(
    monkeypatch: pytest.MonkeyPatch, bad: dict[str, Any], field: str, words: str
) -> None:
    monkeypatch.setattr(sources, "JSONL_BLOCK_ROWS", 2)
    rows = [{"vector": [1.0, float(i)]} for i in range(8)]
    rows[5] = bad
    uri = f"{SRC}/items.jsonl"
    body = "\n".join(json.dumps(r) for r in rows).encode()  # json.dumps writes NaN as NaN
    err = expect_invalid(field, lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body})))
    assert words in err.problem


def test_jsonl_limits_hold_while_streaming(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"{SRC}/items.jsonl.gz"
    body = gzip.compress(jsonl([{"vector": [1.0, 2.0]}] * 50))
    monkeypatch.setattr(sources, "MAX_JSONL_BYTES", 200)
    err = expect_invalid(
        "source.jsonl", lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    )
    assert "expands beyond" in err.problem
    monkeypatch.setattr(sources, "MAX_JSONL_BYTES", 1 << 30)
    monkeypatch.setattr(sources, "MAX_JSONL_LINE_BYTES", 10)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4)
    err = expect_invalid(
        "source.jsonl", lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    )
    assert "longer than" in err.problem


def test_gzip_with_trailing_garbage_is_refused() -> None:
    uri = f"{SRC}/items.jsonl.gz"
    body = gzip.compress(jsonl(ITEMS)) + b"garbage"
    err = expect_invalid(
        "source.jsonl", lambda: read_source({"jsonl": uri}, metric="l2", fetch=fetcher({uri: body}))
    )
    assert "gzip" in err.problem


# -- StoreReader: ranged reads through an ObjectStore (in-process moto) ------------------------
def put_source(store: ObjectStore, key: str, body: bytes) -> str:
    store.client.put_object(Bucket=store.bucket, Key=key, Body=body)
    return f"s3://{store.bucket}/{key}"


def test_store_reader_reads_npy_in_ranges(s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources, "CHUNK_BYTES", 40)
    uri = put_source(s3_store, "src/v.npy", npy(WIDE.astype(np.float32)))
    c = read_source({"vectors": uri}, metric="l2", reader=StoreReader(s3_store, window=3))
    assert np.array_equal(c.vectors, WIDE.astype(np.float32))


def test_store_reader_lists_a_prefix_in_key_order(s3_store: ObjectStore) -> None:
    for name in ("b.npy", "a.npy", "a/z.npy", "c.txt"):
        put_source(s3_store, f"src/p/{name}", b"x")
    keys = StoreReader(s3_store).list_keys(S3Uri(s3_store.bucket, "src/p/"))
    assert keys == ["src/p/a.npy", "src/p/a/z.npy", "src/p/b.npy", "src/p/c.txt"]


def test_an_empty_source_object_is_refused_by_name(s3_store: ObjectStore) -> None:
    uri = put_source(s3_store, "src/e.npy", b"")
    assert s3_store.get_range(s3_store.bucket, "src/e.npy", 0, 10) == (b"", 0, "")  # S3 answers 416
    err = expect_invalid(
        "source.vectors",
        lambda: read_source({"vectors": uri}, metric="l2", reader=StoreReader(s3_store)),
        source_error=True,
    )
    assert "not a valid .npy" in err.problem


def test_a_missing_source_object_read_in_ranges_is_named(s3_store: ObjectStore) -> None:
    uri = f"s3://{s3_store.bucket}/src/absent.npy"
    err = expect_invalid(
        "source.vectors",
        lambda: read_source({"vectors": uri}, metric="l2", reader=StoreReader(s3_store)),
        source_error=True,
    )
    assert uri in err.problem


def test_an_object_replaced_while_it_is_read_is_a_retryable_storage_error(
    s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The data ranges must come from the object whose header was read (If-Match its ETag)."""
    monkeypatch.setattr(sources, "CHUNK_BYTES", 48)
    uri = put_source(s3_store, "src/v.npy", npy(WIDE.astype(np.float32)))

    class Replacing(StoreReader):
        def get_range(
            self, uri: S3Uri, start: int, end: int, if_match: str | None = None
        ) -> tuple[bytes, int, str]:
            got = super().get_range(uri, start, end, if_match)
            if start == 0:
                put_source(self.store, uri.key, npy(WIDE.astype(np.float32) + 1))
            return got

    with pytest.raises(PreconditionFailed):
        read_source({"vectors": uri}, metric="l2", reader=Replacing(s3_store))
