"""fetch, list and count through the real query handler, on moto.

A query-function event chooses its operation with ``"operation"`` ("query" when absent). These
read what a version stores — each id once, although a replicated collection keeps a quarter of
its vectors in two buckets — and a listing stays on the version its first page read while
writes land between its pages.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from kdbuckets import ObjectStore, catalog, reading, service
from kdbuckets.errors import InvalidRequest
from tests.conftest import EVENTS, INDEX_BUCKET, FakeLambdaContext

N, DIM = 600, 12
RNG = np.random.default_rng(5)
VECTORS = RNG.normal(size=(N, DIM)).astype(np.float32)
ITEMS = [
    {
        "id": f"doc-{i:04d}",
        "vector": VECTORS[i].tolist(),
        "label": ["news", "sport", "food"][i % 3],
        **({"metadata": {"year": 2000 + i % 30, "lang": ["en", "fr"][i % 2]}} if i % 4 else {}),
    }
    for i in range(N)
]


def build(name: str, items: list[dict[str, Any]] = ITEMS, **params: Any) -> dict[str, Any]:
    event = {"collection": name, "source": {"items": items}, "metric": "l2", "dtype": "float32"}
    return service.build({**event, "bucket_size": 50, **params}, ObjectStore(INDEX_BUCKET))


@pytest.fixture(scope="module")
def collections(module_s3: Any) -> None:
    """``tiny`` (the committed inline build) and ``docs`` (600 × 12, replicated), built once."""
    service.build(json.loads((EVENTS / "build_inline.json").read_text()), ObjectStore(INDEX_BUCKET))
    build("docs")


@pytest.fixture
def read(collections: None, query_handler: ModuleType) -> Callable[..., dict[str, Any]]:
    """``read(event)``: the query handler's answer (a fresh container per test)."""
    reading.SHARDS.clear()
    return lambda event: query_handler.lambda_handler(event, FakeLambdaContext())


def committed(name: str) -> dict[str, Any]:
    return json.loads((EVENTS / name).read_text())


def page_through(
    read: Callable[..., dict[str, Any]], collection: str, limit: int, between: Any = None
) -> Any:
    """Every page of one listing: (ids in order, the versions the pages read)."""
    ids: list[str] = []
    versions: list[str] = []
    cursor = None
    pages = 0
    while True:
        event = {"collection": collection, "operation": "list", "limit": limit}
        page = read(event if cursor is None else {**event, "cursor": cursor})
        ids += [v["id"] for v in page["vectors"]]
        versions.append(page["version"])
        pages += 1
        cursor = page["cursor"]
        if cursor is None:
            return ids, versions
        if between is not None:
            between(pages)


def test_the_committed_read_events_answer(read: Callable[..., dict[str, Any]]) -> None:
    fetched = read(committed("fetch_tiny.json"))
    assert [v["id"] for v in fetched["vectors"]] == ["sport-1", "food-3"]
    assert fetched["missing"] == ["no-such-id"]
    assert all(len(v["vector"]) == 4 for v in fetched["vectors"])
    listed = read(committed("list_tiny.json"))
    assert len(listed["vectors"]) == 5
    assert listed["cursor"] is not None
    assert read(committed("count_tiny.json"))["count"] == 8
    tiny = committed("build_inline.json")["source"]["items"]
    expected = sum(
        1
        for it in tiny
        if it.get("metadata", {}).get("lang") == "en" and it["metadata"].get("year", 0) >= 2020
    )
    counted = read(committed("count_filter.json"))
    assert (counted["count"], counted["filtered"], counted["operation"]) == (expected, True, "count")


def test_fetch_returns_each_vector_exactly_as_stored(read: Callable[..., dict[str, Any]]) -> None:
    wanted = ["doc-0005", "doc-0004", "nope", "doc-0599"]
    response = read({"collection": "docs", "operation": "fetch", "ids": wanted, "include_vectors": True})
    assert response["missing"] == ["nope"]
    for rec in response["vectors"]:
        item = ITEMS[int(rec["id"][4:])]
        assert rec["vector"] == item["vector"]  # float32 l2: the bits given are the bits stored
        assert rec["label"] == item["label"]
        assert rec["metadata"] == item.get("metadata")


def test_fetch_costs_a_round_of_id_shards_and_a_round_of_buckets(read: Callable[..., dict[str, Any]]) -> None:
    opening = read({"collection": "docs", "operation": "count"})["stats"]
    assert opening["buckets_fetched"] == 0  # count without a filter: the manifest says it
    ids = [f"doc-{i:04d}" for i in range(0, N, 40)]
    stats = read({"collection": "docs", "operation": "fetch", "ids": ids})["stats"]
    assert 1 <= stats["buckets_fetched"] <= len(ids)
    assert stats["s3_gets"] == opening["s3_gets"] + stats["id_shards_fetched"] + stats["buckets_fetched"]


def test_list_pages_cover_a_pinned_version_exactly_once_while_writes_land(
    read: Callable[..., dict[str, Any]],
) -> None:
    build("paged")
    store = ObjectStore(INDEX_BUCKET)
    first = catalog.read_live(store, "paged").head.version
    writes = iter(
        [
            {
                "operation": "upsert",
                "items": [{**ITEMS[0], "id": "new-1"}, {**ITEMS[7], "vector": [0.0] * DIM}],
            },
            {"operation": "delete", "ids": ["doc-0001", "doc-0300", "doc-0599"]},
            {"operation": "upsert", "items": [{**ITEMS[3], "id": f"new-{i}"} for i in range(2, 40)]},
        ]
    )

    def write(page: int) -> None:
        event = next(writes, None)
        if event is not None:
            service.write({"collection": "paged", **event}, store)

    ids, versions = page_through(read, "paged", limit=37, between=write)
    assert set(versions) == {first}
    assert catalog.read_live(store, "paged").head.version != first  # the writes did land
    assert len(ids) == len(set(ids)) == N
    assert set(ids) == {it["id"] for it in ITEMS}
    after, _ = page_through(read, "paged", limit=1000)  # a new listing reads the new version
    assert "new-1" in after
    assert "doc-0300" not in after
    assert len(after) == len(set(after)) == N - 3 + 39


def test_list_and_count_of_a_pinned_version(read: Callable[..., dict[str, Any]]) -> None:
    built = build("pinned", ITEMS[:100])
    service.write(
        {"collection": "pinned", "operation": "delete", "ids": ["doc-0010"]}, ObjectStore(INDEX_BUCKET)
    )
    old = {"collection": "pinned", "version": built["version"]}
    listed = read({**old, "operation": "list", "limit": 1000})
    assert "doc-0010" in {v["id"] for v in listed["vectors"]}
    assert read({**old, "operation": "count"})["count"] == 100
    assert read({"collection": "pinned", "operation": "count"})["count"] == 99


def test_count_with_a_filter_reads_every_bucket_once_and_counts_replicas_once(
    read: Callable[..., dict[str, Any]],
) -> None:
    response = read(
        {"collection": "docs", "operation": "count", "filter": {"lang": "fr", "year": {"$lt": 2015}}}
    )
    expected = sum(
        1
        for it in ITEMS
        if it.get("metadata") and it["metadata"]["lang"] == "fr" and it["metadata"]["year"] < 2015
    )
    m = catalog.read_live(ObjectStore(INDEX_BUCKET), "docs").manifest
    assert int(m.buckets.rows.sum()) > N  # replicated: some vectors are in two buckets
    assert response["count"] == expected
    assert response["stats"]["buckets_fetched"] == int((m.buckets.rows > 0).sum())


@pytest.mark.parametrize(
    ("event", "field", "problem"),
    [
        (
            {"operation": "fetch", "ids": [f"x{i}" for i in range(1001)]},
            "ids",
            "must hold at most 1000 items",
        ),
        ({"operation": "fetch", "ids": []}, "ids", "must hold at least 1 item"),
        ({"operation": "fetch", "ids": ["a", 1]}, "ids[1]", "is an integer but ids[0] is a string"),
        ({"operation": "fetch", "ids": [1]}, "ids", "must be strings like the ids of 'docs'"),
        (
            {"operation": "fetch", "ids": ["a"], "cursor": "x"},
            "cursor",
            "does not apply to operation 'fetch'",
        ),
        ({"operation": "list", "limit": 0}, "limit", "must be ≥ 1"),
        ({"operation": "list", "limit": 1001}, "limit", "must be ≤ 1000"),
        ({"operation": "list", "cursor": "forged"}, "cursor", "is not a cursor returned by list"),
        ({"operation": "list", "ids": ["a"]}, "ids", "does not apply to operation 'list'"),
        ({"operation": "count", "filter": {"year": {"$where": 1}}}, "filter.year.$where", ""),
        ({"operation": "count", "version": "a/b"}, "version", "is not a valid version id"),
        ({"operation": "scan"}, "operation", "must be one of 'query', 'fetch', 'list', 'count'"),
        ({"operation": "query"}, "vectors", "is required"),
    ],
)
def test_bad_read_events_name_the_field(
    read: Callable[..., dict[str, Any]], event: dict[str, Any], field: str, problem: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        read({"collection": "docs", **event})
    assert err.value.field == field
    assert problem in err.value.problem


def test_a_vector_stored_twice_is_fetched_once(read: Callable[..., dict[str, Any]]) -> None:
    store = ObjectStore(INDEX_BUCKET)
    m = catalog.read_live(store, "docs").manifest
    listed, _ = page_through(read, "docs", limit=1000)
    assert int(m.buckets.rows.sum()) > len(listed) == N
    everything = read({"collection": "docs", "operation": "fetch", "ids": listed})
    assert sorted(v["id"] for v in everything["vectors"]) == sorted(listed)
    assert everything["missing"] == []
