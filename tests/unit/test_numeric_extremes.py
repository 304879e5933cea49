"""Numeric extremes: every vector component the doors accept keeps float32 arithmetic finite.

The rule (``kdbuckets.collection``): every component within ±MAX_COMPONENT (1e15), so that
for d ≤ 4096 squared norms, dot products and squared distances stay far below float32's
3.4e38; for cosine, a nonzero vector whose largest component is at least MIN_COSINE_COMPONENT
(1e-15), so its float32 norm neither underflows nor loses digits; for a float16 collection,
every stored (prepared) component within ±65,504. Values just inside the rule build and
query exactly (probes = every bucket equals brute force); values just outside are refused at
the door with the field, the row and the allowed range — and nothing is written.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import pytest

from kdbuckets import events, service, writer
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import (
    FLOAT16_MAX,
    MAX_COMPONENT,
    MAX_DIM,
    MIN_COSINE_COMPONENT,
    check_prepared,
    check_vectors,
    make_collection,
)
from kdbuckets.distances import prepare
from kdbuckets.errors import InvalidRequest
from kdbuckets.searcher import Searcher
from kdbuckets.sources import read_source, vector_matrix
from kdbuckets.storage import ObjectStore, S3Uri

SRC = "s3://kdbuckets-src/data"


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def fetcher(objects: dict[str, bytes]) -> Callable[[S3Uri], bytes]:
    return lambda uri: objects[f"s3://{uri.bucket}/{uri.key}"]


def normal(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def refused(field: str, call: Callable[[], object], *words: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        call()
    assert info.value.field == field, str(info.value)
    for word in words:
        assert word in info.value.problem, str(info.value)
    return info.value


# (metric, dtype, dim, hostile component, words the error must contain)
HOSTILE = [
    pytest.param("cosine", "float32", 8, 1e-30, ("1e-15",), id="cosine-norm-underflows"),
    pytest.param("cosine", "float32", 384, 1e-20, ("1e-15",), id="cosine-tiny-d384"),
    pytest.param("l2", "float32", 8, 1e19, ("1e+15",), id="l2-1e19-d8"),
    pytest.param("ip", "float32", 8, -1e19, ("1e+15",), id="ip-1e19-d8"),
    pytest.param("l2", "float32", 384, 1e18, ("1e+15",), id="l2-1e18-d384"),
    pytest.param("cosine", "float32", 8, 1e20, ("1e+15",), id="cosine-1e20"),
    pytest.param("l2", "float16", 8, 70_000.0, ("65504", "float16"), id="float16-l2"),
    pytest.param("ip", "float16", 8, -65_600.0, ("65504", "float16"), id="float16-ip"),
]


def hostile_rows(n: int, d: int, row: int, value: float) -> np.ndarray:
    v = normal(n, d)
    if abs(value) < 1:  # a whole vector of tiny components (cosine)
        v[row] = np.float32(value) * np.sign(v[row])
    else:
        v[row, d // 2] = value
    return v


# -- stored vectors: .npy sources, inline items, make_collection ------------------------
@pytest.mark.filterwarnings("error")  # no overflow or divide-by-zero warning on the way
@pytest.mark.parametrize(("metric", "dtype", "d", "value", "words"), HOSTILE)
def test_hostile_npy_vectors_are_refused_naming_the_row(
    metric: str, dtype: str, d: int, value: float, words: tuple[str, ...]
) -> None:
    objects = {f"{SRC}/v.npy": npy(hostile_rows(30, d, 17, value))}
    source = {"vectors": f"{SRC}/v.npy"}
    refused(
        "source.vectors[17]",
        lambda: read_source(source, metric=metric, dtype=dtype, fetch=fetcher(objects)),
        *words,
    )


@pytest.mark.parametrize(("metric", "dtype", "d", "value", "words"), HOSTILE)
def test_hostile_inline_items_are_refused_naming_the_item(
    metric: str, dtype: str, d: int, value: float, words: tuple[str, ...]
) -> None:
    rows = hostile_rows(6, d, 3, value)
    items = [{"id": f"doc{i}", "vector": row.tolist()} for i, row in enumerate(rows)]
    refused(
        "source.items[3].vector",
        lambda: read_source({"items": items}, metric=metric, dtype=dtype, fetch=fetcher({})),
        *words,
    )


def test_float16_limit_applies_only_to_float16_collections() -> None:
    v = hostile_rows(6, 8, 2, 70_000.0)
    assert make_collection(v, None, None, metric="l2").count == 6
    refused("source.vectors[2]", lambda: make_collection(v, None, None, metric="l2", dtype="float16"))
    # cosine stores unit vectors: large raw components are fine in float16
    assert make_collection(v, None, None, metric="cosine", dtype="float16").count == 6


def test_check_vectors_names_rows_in_the_callers_vocabulary() -> None:
    v = hostile_rows(6, 8, 4, 1e19)
    refused("items[4].vector", lambda: check_vectors(v, "items[].vector", metric="l2"), "position 4")
    refused("vectors[4]", lambda: check_vectors(v, "vectors", metric=None))
    tiny = hostile_rows(6, 8, 1, 1e-30)
    check_vectors(tiny, "vectors", metric="l2")  # tiny is only a problem for cosine
    refused("vectors[1]", lambda: check_vectors(tiny, "vectors", metric="cosine"), "1e-15")
    big16 = hostile_rows(6, 8, 5, 65_505.0)
    refused("items[5].vector", lambda: check_vectors(big16, "items[].vector", metric="ip", dtype="float16"))


def test_check_prepared_refuses_what_would_be_stored_as_inf_or_nan() -> None:
    good = prepare(normal(5, 8), "cosine")
    check_prepared(good, "float16", "vectors")
    bad = normal(5, 8)
    bad[3, 0] = 70_000.0
    check_prepared(bad, "float32", "vectors")
    refused("vectors[3]", lambda: check_prepared(bad, "float16", "vectors"), "float16")
    bad[1, 2] = np.inf
    refused("items[1].vector", lambda: check_prepared(bad, "float32", "items[].vector"))


# -- query vectors ----------------------------------------------------------------------
@pytest.mark.parametrize(("d", "value"), [(8, 1e20), (8, 1e19), (384, 1e18), (8, -1e16)])
def test_hostile_query_vectors_are_refused_at_the_door(d: int, value: float) -> None:
    rows = hostile_rows(4, d, 2, value).tolist()
    refused("vectors[2]", lambda: vector_matrix(rows, field="vectors"), "1e+15")
    event = {"collection": "docs", "vectors": rows}
    refused("vectors[2]", lambda: events.parse_query(event), "1e+15")


def test_upserted_items_are_refused_at_the_door() -> None:
    rows = hostile_rows(5, 8, 3, 1e19)
    event = {
        "collection": "docs",
        "operation": "upsert",
        "items": [{"id": i, "vector": r.tolist()} for i, r in enumerate(rows)],
    }
    request = events.parse_write(event)
    assert isinstance(request, events.UpsertRequest)
    refused("items[3].vector", request.to_collection, "1e+15")


# -- end to end: refused means nothing written; just inside means exact answers ------------
def objects_under(store: ObjectStore) -> list[str]:
    return sorted(info.key for info in store.list_objects(""))


@pytest.mark.parametrize(("metric", "dtype", "d", "value", "words"), HOSTILE)
def test_a_refused_build_writes_nothing(
    s3_store: ObjectStore, metric: str, dtype: str, d: int, value: float, words: tuple[str, ...]
) -> None:
    rows = hostile_rows(6, d, 3, value)
    event = {
        "collection": "docs",
        "metric": metric,
        "dtype": dtype,
        "source": {"items": [{"id": i, "vector": r.tolist()} for i, r in enumerate(rows)]},
    }
    refused("source.items[3].vector", lambda: service.build(event, s3_store), *words)
    assert objects_under(s3_store) == []


def built(store: ObjectStore, name: str, vectors: np.ndarray, metric: str, dtype: str = "float32") -> int:
    params = BuildParams(metric=metric, dtype=dtype, bucket_size=16, refine=0, replicate=0.0)
    result = build_index(
        store, name, make_collection(vectors, None, None, metric=metric, dtype=dtype), params
    )
    return result.buckets


@pytest.mark.parametrize(
    ("metric", "dtype", "value"), [("cosine", "float32", 1e-30), ("l2", "float16", 70_000.0)]
)
def test_a_refused_upsert_writes_nothing(
    s3_store: ObjectStore, metric: str, dtype: str, value: float
) -> None:
    built(s3_store, "docs", normal(40, 8), metric, dtype)
    before = objects_under(s3_store)
    rows = hostile_rows(5, 8, 3, value)
    upserts = make_collection(rows, np.arange(100, 105), None, metric="l2")  # the door's call
    refused("items[3].vector", lambda: writer.write(s3_store, "docs", upserts=upserts))
    assert objects_under(s3_store) == before


def test_a_tiny_cosine_query_is_refused(s3_store: ObjectStore) -> None:
    built(s3_store, "docs", normal(40, 8), "cosine")
    rows = hostile_rows(3, 8, 1, 1e-30).tolist()
    refused("vectors[1]", lambda: service.query({"collection": "docs", "vectors": rows}, Searcher(s3_store)))


def brute_force(data: np.ndarray, queries: np.ndarray, metric: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    x, q = data.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = 1.0 - q @ x.T
    elif metric == "ip":
        d = -(q @ x.T)
    else:
        d = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


JUST_INSIDE = [
    pytest.param("l2", "float32", 8, MAX_COMPONENT, id="l2-1e15-d8"),
    pytest.param("ip", "float32", 8, MAX_COMPONENT, id="ip-1e15-d8"),
    pytest.param("l2", "float32", 384, MAX_COMPONENT, id="l2-1e15-d384"),
    pytest.param("ip", "float32", 384, MAX_COMPONENT, id="ip-1e15-d384"),
    pytest.param("cosine", "float32", 8, MAX_COMPONENT, id="cosine-1e15"),
    pytest.param("cosine", "float32", 8, MIN_COSINE_COMPONENT, id="cosine-1e-15"),
    pytest.param("cosine", "float32", 384, MIN_COSINE_COMPONENT, id="cosine-1e-15-d384"),
    pytest.param("l2", "float16", 8, FLOAT16_MAX, id="float16-l2-65504"),
    pytest.param("ip", "float16", 8, FLOAT16_MAX, id="float16-ip-65504"),
]


@pytest.mark.filterwarnings("error::RuntimeWarning")
@pytest.mark.parametrize(("metric", "dtype", "d", "scale"), JUST_INSIDE)
def test_values_just_inside_the_limit_build_and_query_exactly(
    s3_store: ObjectStore, metric: str, dtype: str, d: int, scale: float
) -> None:
    """Every row's largest component is exactly at the limit; probing all buckets is exact."""
    raw = normal(160, d, seed=d)
    data = (raw / np.abs(raw).max(axis=1, keepdims=True) * np.float32(scale)).astype(np.float32)
    if dtype == "float16":  # store exactly what was given, so brute force sees the same data
        data = data.astype(np.float16).astype(np.float32)
    assert np.abs(data).max() <= scale
    queries, data = data[:10], data[10:]  # held-out rows, each exactly at the limit
    n_buckets = built(s3_store, "docs", data, metric, dtype)
    assert n_buckets > 4
    result = Searcher(s3_store).search(
        "docs", vector_matrix(queries.tolist(), field="vectors"), k=5, probes=4096
    )
    rows, expected = brute_force(data, queries, metric, 5)
    assert np.isfinite(result.distances).all()
    assert [list(r) for r in result.ids] == rows.tolist()
    np.testing.assert_allclose(
        result.distances, expected, rtol=1e-4, atol=1e-6 * float(np.abs(expected).max())
    )


@pytest.mark.slow  # a 4,096-d build (PCA of a 4,096 × 4,096 covariance): ~25 s on 2 cores
@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_the_largest_vectors_at_the_largest_dimension_stay_finite(s3_store: ObjectStore) -> None:
    """d = 4096, every component ±1e15: squared distances reach 1.6e34, far below float32 max."""
    signs = np.where(np.random.default_rng(1).random((40, MAX_DIM)) < 0.5, -1.0, 1.0)
    data = (signs * MAX_COMPONENT).astype(np.float32)
    data[1] = -data[0]  # the farthest possible pair
    built(s3_store, "docs", data, "l2")
    result = Searcher(s3_store).search("docs", data[:1], k=40, probes=4096)
    assert result.ids[0][0] == 0
    assert result.ids[0][-1] == 1
    assert np.isfinite(result.distances).all()
    np.testing.assert_allclose(result.distances[0, -1], 2 * MAX_COMPONENT * np.sqrt(MAX_DIM), rtol=1e-5)


def test_the_rule_keeps_float32_finite_at_the_largest_dimension() -> None:
    """The constants themselves: the worst squared distance has a wide float32 margin."""
    worst = (2 * MAX_COMPONENT) ** 2 * MAX_DIM
    assert worst * 1e3 < np.finfo(np.float32).max
    smallest_square = MIN_COSINE_COMPONENT**2
    assert smallest_square > np.finfo(np.float32).tiny * 1e6  # normal, not subnormal
    assert float(np.finfo(np.float16).max) == FLOAT16_MAX
