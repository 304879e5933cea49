"""Metadata filters end to end: query events with "filter" and "include_metadata".

One collection of 600 inline items in four well-separated clusters, with metadata drawn
from a seeded generator — ``year`` (int), ``lang`` (string, sometimes absent), ``tags``
(lists), ``score`` (float), a few ``rare`` items all in the farthest cluster, and ~15%
items with no metadata at all — built once per module with the default (refined,
replicated) parameters. Every answer is checked against a brute-force filtered k-NN over
a reference evaluator written from the documented semantics (shared/kdbuckets/filters.py),
independent of the library's vectorised one.

Pinned: each operator matches the reference when every bucket is read; a filtered query
returns exactly k matches whenever at least k vectors match, widening its probes when the
matches are few and far; fewer than k only when fewer than k match; validation errors name
the path inside the filter; metadata survives upserts, deletes and compaction.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import InvalidRequest, ObjectStore, service

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

COLLECTION = "filtered"
N, DIM, K = 600, 8, 10
ALL = 4096
LANGS = ("en", "fr", "de", "es")
TAGS = ("a", "b", "c", "d", "e")


def _dataset() -> tuple[np.ndarray, list[str], list[dict[str, Any] | None]]:
    rng = np.random.default_rng(2024)
    centres = 6.0 * np.eye(DIM, dtype=np.float32)[:4]
    cluster = np.repeat(np.arange(4), N // 4)
    vectors = (centres[cluster] + rng.normal(size=(N, DIM))).astype(np.float32)
    ids = [f"item-{i}" for i in range(N)]
    metadata: list[dict[str, Any] | None] = []
    rare = set(rng.choice(np.flatnonzero(cluster == 3), 12, replace=False).tolist())
    trio = set(rng.choice(np.flatnonzero(cluster == 1), 3, replace=False).tolist())
    for i in range(N):
        if rng.random() < 0.15 and i not in rare | trio:
            metadata.append(None)
            continue
        record: dict[str, Any] = {"year": int(rng.integers(2015, 2025))}
        if rng.random() < 0.85:
            record["lang"] = str(rng.choice(LANGS))
        record["tags"] = sorted(rng.choice(TAGS, int(rng.integers(0, 4)), replace=False).tolist())
        record["score"] = round(float(rng.random()), 3)
        if i in rare:
            record["rare"] = True
        if i in trio:
            record["group"] = "trio"
        metadata.append(record)
    return vectors, ids, metadata


VECTORS, IDS, METADATA = _dataset()
CLUSTER = np.repeat(np.arange(4), N // 4)


# --------------------------------------------------------------------------- reference semantics
def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(a: object, b: object) -> bool:
    """JSON equality as the filters define it: numbers numerically, booleans never numbers."""
    if _is_number(a) and _is_number(b):
        return float(a) == float(b)  # type: ignore[arg-type]
    return type(a) is type(b) and a == b


def _values(record: dict[str, Any] | None, key: str) -> list[Any] | None:
    """The scalars a key holds in a record (a list's elements), or None when the key is absent."""
    if record is None or key not in record:
        return None
    value = record[key]
    return value if isinstance(value, list) else [value]


def _eq(record: dict[str, Any] | None, key: str, target: Any) -> bool:
    values = _values(record, key)
    if target is None:
        return values is None or record[key] is None  # type: ignore[index]
    return values is not None and any(_same(v, target) for v in values)


def _range(record: dict[str, Any] | None, key: str, op: str, target: Any) -> bool:
    values = _values(record, key) or []
    compare = {
        "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b,
    }[op]
    if isinstance(target, str):
        return any(isinstance(v, str) and compare(v, target) for v in values)
    return any(_is_number(v) and compare(float(v), float(target)) for v in values)


def matches(record: dict[str, Any] | None, filt: dict[str, Any]) -> bool:
    """Reference evaluator of the documented filter language (one record at a time)."""
    for key, cond in filt.items():
        if key == "$and":
            ok = all(matches(record, f) for f in cond)
        elif key == "$or":
            ok = any(matches(record, f) for f in cond)
        elif not isinstance(cond, dict):
            ok = _eq(record, key, cond)
        else:
            ok = all(_operator(record, key, op, arg) for op, arg in cond.items())
        if not ok:
            return False
    return True


def _operator(record: dict[str, Any] | None, key: str, op: str, arg: Any) -> bool:
    if op == "$eq":
        return _eq(record, key, arg)
    if op == "$ne":
        return not _eq(record, key, arg)
    if op == "$in":
        return any(_eq(record, key, a) for a in arg)
    if op == "$nin":
        return not any(_eq(record, key, a) for a in arg)
    if op == "$exists":
        return (record is not None and key in record) == arg
    return _range(record, key, op, arg)


def brute_force(
    queries: np.ndarray,
    filt: dict[str, Any],
    k: int,
    vectors: np.ndarray = VECTORS,
    ids: list[Any] = IDS,
    metadata: list[dict[str, Any] | None] = METADATA,
) -> tuple[list[list[Any]], list[list[float]]]:
    """Exact filtered cosine k-NN: (ids, distances) per query, nearest first."""
    keep = np.array([matches(m, filt) for m in metadata])
    rows = np.flatnonzero(keep)
    x = vectors[rows].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = queries.astype(np.float64) / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    d = 1.0 - q @ x.T
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return (
        [[ids[rows[j]] for j in row] for row in order.tolist()],
        np.take_along_axis(d, order, axis=1).tolist(),
    )


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def built(module_s3: Any) -> dict[str, Any]:
    """The collection, built once per module with the default (refined, replicated) params."""
    items = [
        {"id": i, "vector": v.tolist(), **({"metadata": m} if m is not None else {})}
        for i, v, m in zip(IDS, VECTORS, METADATA, strict=True)
    ]
    # float32: the reference below is brute force over the float32 vectors
    event = {"collection": COLLECTION, "source": {"items": items}, "bucket_size": 50, "dtype": "float32"}
    return service.build(event, ObjectStore(local.INDEX_BUCKET))


@pytest.fixture
def search(
    built: dict[str, Any], query_handler: ModuleType, lambda_context: Any
) -> Callable[..., dict[str, Any]]:
    """``search(queries, filter, **event)``: the query handler from a cold container."""

    def run(queries: np.ndarray, filt: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
        event = {
            "collection": extra.pop("collection", COLLECTION),
            "vectors": queries.tolist(),
            "k": K,
            **extra,
        }
        if filt is not None:
            event["filter"] = filt
        query_handler._searcher = None
        return query_handler.lambda_handler(event, lambda_context)

    return run


def _ids(response: dict[str, Any]) -> list[list[Any]]:
    return [[h["id"] for h in hits] for hits in response["results"]]


def _distances(response: dict[str, Any]) -> list[list[float]]:
    return [[h["distance"] for h in hits] for hits in response["results"]]


QUERIES = np.vstack(
    [VECTORS[[5, 170, 320, 470]] + 0.3, np.random.default_rng(7).normal(size=(2, DIM)).astype(np.float32)]
).astype(np.float32)

OPERATORS = {
    "implicit-eq-string": {"lang": "fr"},
    "eq-int": {"year": {"$eq": 2020}},
    "eq-int-as-float": {"year": 2020.0},
    "ne": {"lang": {"$ne": "en"}},
    "in": {"lang": {"$in": ["de", "es"]}},
    "nin": {"year": {"$nin": [2015, 2016, 2017, 2018, 2019, 2020]}},
    "gt": {"year": {"$gt": 2022}},
    "gte-and-lt": {"year": {"$gte": 2017, "$lt": 2019}},
    "lte-float": {"score": {"$lte": 0.25}},
    "string-range": {"lang": {"$gte": "es", "$lt": "fr"}},
    "exists-true": {"lang": {"$exists": True}},
    "exists-false": {"lang": {"$exists": False}},
    "list-any-element": {"tags": "c"},
    "list-in": {"tags": {"$in": ["a", "e"]}},
    "list-nin": {"tags": {"$nin": ["a", "b"]}},
    "null-matches-missing": {"lang": None},
    "and": {"$and": [{"year": {"$gte": 2020}}, {"tags": "b"}]},
    "or": {"$or": [{"lang": "de"}, {"score": {"$gt": 0.9}}]},
    "nested": {"$or": [{"$and": [{"lang": "en"}, {"year": 2024}]}, {"rare": True}]},
    "no-metadata-only": {"year": {"$exists": False}},
    "bool-is-not-a-number": {"rare": 1},
    # a range bound compares only values of its own type: years are numbers, langs strings
    "string-bound-never-matches-numbers": {"year": {"$gte": "2020"}},
    "number-bound-never-matches-strings": {"lang": {"$gt": 0}},
    "empty-filter": {},
}


# --------------------------------------------------------------------------- exactness, exactly k
@pytest.mark.parametrize("filt", OPERATORS.values(), ids=OPERATORS.keys())
def test_each_operator_matches_brute_force_and_returns_k_whenever_k_match(
    search: Callable[..., dict[str, Any]], filt: dict[str, Any]
) -> None:
    exact = search(QUERIES, filt, probes=ALL, include_metadata=True)
    default = search(QUERIES, filt, include_metadata=True)  # calibrated probes, widened as needed

    # Reading every bucket, the answer is the brute-force filtered k-NN, metadata included.
    want_ids, want_distances = brute_force(QUERIES, filt, K)
    assert _ids(exact) == want_ids
    for row, want in zip(_distances(exact), want_distances, strict=True):
        np.testing.assert_allclose(row, want, rtol=0, atol=1e-6)
    by_id = dict(zip(IDS, METADATA, strict=True))
    assert all(h["metadata"] == by_id[h["id"]] for hits in exact["results"] for h in hits)
    # With the default probes: exactly min(k, matching) results, every one a match, in order.
    matching = sum(matches(m, filt) for m in METADATA)
    assert [len(hits) for hits in default["results"]] == [min(K, matching)] * len(QUERIES)
    assert all(matches(h["metadata"], filt) for hits in default["results"] for h in hits)
    assert all(row == sorted(row) for row in _distances(default))


def test_filter_that_matches_nothing_reads_every_bucket_and_returns_empty_results(
    search: Callable[..., dict[str, Any]], built: dict[str, Any]
) -> None:
    response = search(QUERIES, {"year": {"$gt": 3000}}, probes=2)

    assert response["results"] == [[] for _ in QUERIES]
    assert response["stats"]["probes"] == built["buckets"]


def test_few_far_matches_make_the_query_widen_its_probes_until_it_has_k(
    search: Callable[..., dict[str, Any]],
) -> None:
    rare = {"rare": True}
    near_cluster_0 = VECTORS[CLUSTER == 0][:3] + 0.1  # the rare items all live in cluster 3
    unfiltered = search(near_cluster_0, None, probes=1)
    assert unfiltered["stats"]["probes"] == 1

    response = search(near_cluster_0, rare, probes=1, include_metadata=True)

    assert sum(matches(m, rare) for m in METADATA) == 12
    assert [len(hits) for hits in response["results"]] == [K] * len(near_cluster_0)
    assert all(h["metadata"]["rare"] is True for hits in response["results"] for h in hits)
    assert response["stats"]["probes"] > 1  # it had to read more than the one bucket asked for
    assert response["stats"]["buckets_fetched"] > len(near_cluster_0)
    want, _ = brute_force(near_cluster_0, rare, K)
    for got_row, want_row in zip(_ids(response), want, strict=True):
        assert len(set(got_row) & set(want_row)) >= K - 2  # only 12 candidates in all


def test_fewer_than_k_results_only_when_fewer_than_k_vectors_match(
    search: Callable[..., dict[str, Any]], built: dict[str, Any]
) -> None:
    trio = {"group": "trio"}

    response = search(QUERIES, trio, probes=1)

    want, _ = brute_force(QUERIES, trio, K)
    assert [len(w) for w in want] == [3] * len(QUERIES)
    assert [sorted(r) for r in _ids(response)] == [sorted(w) for w in want]
    assert response["stats"]["probes"] == response["stats"]["buckets_fetched"] == built["buckets"]


def test_max_probes_bounds_how_far_a_filtered_query_widens(search: Callable[..., dict[str, Any]]) -> None:
    near_cluster_0 = VECTORS[CLUSTER == 0][:1] + 0.1

    response = search(near_cluster_0, {"rare": True}, probes=1, max_probes=2, include_metadata=True)

    assert response["stats"]["probes"] <= 2
    assert response["stats"]["buckets_fetched"] <= 2
    assert len(response["results"][0]) < K  # the bound, not the matches, stopped it
    assert all(h["metadata"]["rare"] is True for h in response["results"][0])


def test_include_metadata_false_leaves_metadata_out(search: Callable[..., dict[str, Any]]) -> None:
    response = search(QUERIES[:1], {"lang": "en"})

    assert response["results"][0]
    assert all("metadata" not in h for h in response["results"][0])


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("filt", "path"),
    [
        ({"year": {"$gte": [2020]}}, "filter.year.$gte"),
        ({"year": {"$where": "1"}}, "filter.year.$where"),
        ({"$gte": 1}, "filter.$gte"),
        ({"$and": {"year": 2020}}, "filter.$and"),
        ({"$or": []}, "filter.$or"),
        ({"$or": [{"lang": {"$in": "en"}}]}, "filter.$or[0].lang.$in"),
        ({"$and": [{"year": 1}, {"tags": {"$nin": [["a"]]}}]}, "filter.$and[1].tags.$nin[0]"),
        ({"lang": {"$exists": "yes"}}, "filter.lang.$exists"),
        ({"lang": {}}, "filter.lang"),
        ({"lang": {"nested": 1}}, "filter.lang.nested"),
        ({"year": {"$eq": {"$gt": 1}}}, "filter.year.$eq"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_filter_is_refused_naming_its_path(
    search: Callable[..., dict[str, Any]], filt: dict[str, Any], path: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        search(QUERIES[:1], filt)

    assert caught.value.field == path
    assert str(caught.value).startswith(f"{path} ")


def test_committed_bad_filter_event_is_refused_naming_the_operator(
    search: Callable[..., dict[str, Any]], query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        query_handler.lambda_handler(load_event("bad_query_filter_operator.json"), lambda_context)

    assert caught.value.field.startswith("filter.")


# --------------------------------------------------------------------------- writes keep metadata
def test_metadata_survives_upserts_deletes_and_compaction(
    search: Callable[..., dict[str, Any]], write_handler: ModuleType, lambda_context: Any
) -> None:
    name = "meta-writes"
    n = 150
    vectors, ids, metadata = VECTORS[:n].copy(), list(IDS[:n]), [dict(m) if m else None for m in METADATA[:n]]
    service.build(
        {
            "collection": name,
            "source": {
                "items": [
                    {"id": i, "vector": v.tolist(), **({"metadata": m} if m else {})}
                    for i, v, m in zip(ids, vectors, metadata, strict=True)
                ]
            },
            "bucket_size": 20,
            "dtype": "float32",
        },
        ObjectStore(local.INDEX_BUCKET),
    )

    def write(event: dict[str, Any]) -> dict[str, Any]:
        return write_handler.lambda_handler({"collection": name, **event}, lambda_context)

    # Upsert: a new item, a changed record, a record dropped; delete every "fr" item.
    fresh = np.random.default_rng(99).normal(size=DIM).astype(np.float32)
    with_meta = next(i for i, m in enumerate(metadata) if m and "lang" in m and m["lang"] != "fr")
    dropped = next(i for i, m in enumerate(metadata) if m and i != with_meta)
    changes = [
        ("new-1", fresh, {"year": 2031, "lang": "xx", "tags": ["new"]}),
        (ids[with_meta], vectors[with_meta], {**metadata[with_meta], "year": 2030}),
        (ids[dropped], vectors[dropped], None),
    ]
    write(
        {
            "operation": "upsert",
            "items": [
                {"id": i, "vector": v.tolist(), **({"metadata": m} if m else {})} for i, v, m in changes
            ],
        }
    )
    french = [ids[i] for i, m in enumerate(metadata) if m and m.get("lang") == "fr"]
    assert french
    write({"operation": "delete", "ids": french})
    # The expected live contents.
    live = {i: (v, m) for i, v, m in zip(ids, vectors, metadata, strict=True)}
    for i, v, m in changes:
        live[i] = (v, m)
    for i in french:
        del live[i]
    live_ids = list(live)
    live_vectors = np.array([live[i][0] for i in live_ids], dtype=np.float32)
    live_meta = [live[i][1] for i in live_ids]
    filters = [
        {"year": {"$gte": 2030}},
        {"lang": "fr"},
        {"lang": {"$exists": True}},
        {"year": {"$exists": False}},
        {"tags": {"$in": ["new", "a"]}},
    ]

    def check(version_label: str) -> list[Any]:
        seen = []
        for filt in filters:
            response = search(QUERIES, filt, collection=name, probes=ALL, include_metadata=True)
            want, _ = brute_force(QUERIES, filt, K, live_vectors, live_ids, live_meta)
            assert _ids(response) == want, (version_label, filt)
            for hits in response["results"]:
                for h in hits:
                    assert h["metadata"] == live[h["id"]][1], (version_label, h["id"])
            seen.append(response["results"])
        return seen

    before = check("after writes")
    compacted = write({"operation": "compact"})
    assert compacted["count"] == len(live_ids)
    after = check("after compact")
    assert [[[(h["id"], h["metadata"]) for h in r] for r in s] for s in after] == [
        [[(h["id"], h["metadata"]) for h in r] for r in s] for s in before
    ]
