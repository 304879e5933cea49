"""The write handler: upserts and deletes by id, versions, describe, rollback, gc and compact.

Every test starts from the committed events (``events/build_inline.json`` builds the
collection "tiny"; ``events/write_*.json`` act on it) or from a seeded collection, runs the
write handler in-process against a moto server, and checks what a query — from a cold
container — answers afterwards. A write of a few vectors into a large collection must touch a few
buckets and shards, never the whole collection (counted on the wire at the botocore level);
a bucket that outgrows twice the bucket size is split and keeps every vector findable;
compaction restores balance without changing a single answer.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from devtools import local
from kdbuckets import Conflict, InvalidRequest, ObjectStore, Searcher, layout, storage
from kdbuckets.bucket import decode_bucket
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.errors import CollectionNotFound

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

INDEX = local.INDEX_BUCKET
ALL = 4096  # probes: at least every bucket, so answers are exact
_KEY = re.compile(r"/(?P<collection>[A-Za-z0-9_.-]+)/(?P<kind>HEAD|manifests|buckets|ids)(?:/[^/]+)?$")


# --------------------------------------------------------------------------- helpers
@dataclass
class Handlers:
    """The three handlers, the test's own S3 client, and helpers to run events."""

    s3: Any
    build: ModuleType
    query: ModuleType
    write: ModuleType
    context: Any

    def run_build(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.build.lambda_handler(event, self.context)

    def run_write(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.write.lambda_handler(event, self.context)

    def run_query(self, event: dict[str, Any]) -> dict[str, Any]:
        """A query from a cold container, so that it reads HEAD afresh."""
        self.query._searcher = None
        return self.query.lambda_handler(event, self.context)

    def search(self, collection: str, vectors: Any, k: int, **extra: Any) -> list[list[dict[str, Any]]]:
        event = {"collection": collection, "vectors": np.asarray(vectors).tolist(), "k": k, "probes": ALL}
        return self.run_query({**event, "include_metadata": True, **extra})["results"]


@pytest.fixture
def handlers(
    moto_server: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    write_handler: ModuleType,
    lambda_context: Any,
) -> Handlers:
    """The handlers against a moto server (over HTTP: cheaper to set up than the in-process mock)."""
    return Handlers(moto_server.s3, build_handler, query_handler, write_handler, lambda_context)


@pytest.fixture
def tiny(handlers: Handlers, load_event: Callable[[str], dict[str, Any]]) -> dict[str, Any]:
    """events/build_inline.json built; returns the build event's items by id and the response."""
    event = load_event("build_inline.json")
    built = handlers.run_build(event)
    return {"items": {item["id"]: item for item in event["source"]["items"]}, "built": built}


#: Dimension of each test collection.
DIM_OF = {"tiny": 4, "ints": 6, "big": 16, "split": 8, "skew": 8, "compact": 8}


def everything(handlers: Handlers, collection: str, count: int) -> list[dict[str, Any]]:
    """Every live vector of a small collection (k above its count), as one exact query lists them."""
    return handlers.search(collection, [[1.0] + [0.0] * (DIM_OF[collection] - 1)], k=count + 5)[0]


def cosine(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@dataclass
class Wire:
    """(method, kind, name) of every S3 request the library's shared client sends."""

    requests: list[tuple[str, str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any, **kwargs: Any) -> None:
        match = _KEY.search(unquote(urlsplit(request.url).path))
        kind, name = (match["kind"], match[0]) if match else ("other", request.url)
        with self.lock:
            self.requests.append((request.method, kind, name))

    def names(self, method: str, kind: str) -> list[str]:
        return [n for m, k, n in self.requests if (m, k) == (method, kind)]


def listen() -> Wire:
    wire = Wire()
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register("before-send.s3", wire)
    return wire


def build_library(name: str, vectors: np.ndarray, ids: np.ndarray, **params: Any) -> str:
    """Build straight through the library (faster than an inline event for thousands of rows)."""
    data = make_collection(vectors, ids, None, metric="cosine")
    return build_index(
        ObjectStore(INDEX), name, data, BuildParams(**{"dtype": "float32", **params}), replace=True
    ).version


def items(ids: Any, vectors: np.ndarray, **extra: Any) -> list[dict[str, Any]]:
    return [{"id": i, "vector": v.tolist(), **extra} for i, v in zip(ids, vectors, strict=True)]


# --------------------------------------------------------------------------- upsert and delete
def test_upsert_event_inserts_new_ids_and_replaces_existing_ones(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    event = load_event("write_upsert.json")
    before = tiny["items"]
    new = [i for i in event["items"] if i["id"] not in before]
    replaced = [i for i in event["items"] if i["id"] in before]
    assert new
    assert replaced  # the committed event exercises both paths

    response = handlers.run_write(event)

    assert response["operation"] == "upsert"
    assert response["version"] != tiny["built"]["version"]
    assert (response["upserted"], response["deleted"], response["attempts"]) == (len(event["items"]), 0, 1)
    assert response["count"] == len(before) + len(new)
    results = handlers.search("tiny", [i["vector"] for i in event["items"]], k=response["count"])
    for item, hits in zip(event["items"], results, strict=True):
        assert hits[0]["id"] == item["id"]
        assert hits[0]["distance"] == pytest.approx(0.0, abs=1e-3)  # float16 storage (the default)
        assert hits[0]["label"] == item.get("label")
        assert hits[0]["metadata"] == item.get("metadata")
        assert [h["id"] for h in hits].count(item["id"]) == 1  # the old copy is gone
    for item in replaced:  # its old vector no longer finds it at distance 0
        (hits,) = handlers.search("tiny", [before[item["id"]]["vector"]], k=response["count"])
        mine = next(h for h in hits if h["id"] == item["id"])
        assert mine["distance"] == pytest.approx(
            cosine(item["vector"], before[item["id"]]["vector"]),
            abs=1e-3,  # float16 storage
        )
        assert mine["distance"] > 1e-4


def test_upsert_of_an_existing_id_updates_its_label_and_metadata(
    handlers: Handlers, tiny: dict[str, Any]
) -> None:
    old = tiny["items"]["sport-1"]
    event = {
        "collection": "tiny",
        "operation": "upsert",
        "items": [
            {"id": "sport-1", "vector": old["vector"], "label": "podcasts", "metadata": {"year": 1999}}
        ],
    }

    response = handlers.run_write(event)

    assert response["count"] == len(tiny["items"])
    (hits,) = handlers.search("tiny", [old["vector"]], k=1)
    assert (hits[0]["id"], hits[0]["label"], hits[0]["metadata"]) == ("sport-1", "podcasts", {"year": 1999})
    filtered = handlers.search("tiny", [old["vector"]], k=10, filter={"year": 1999})[0]
    assert [h["id"] for h in filtered] == ["sport-1"]


def test_upsert_without_metadata_clears_the_old_metadata(handlers: Handlers, tiny: dict[str, Any]) -> None:
    old = tiny["items"]["sport-1"]
    assert old.get("metadata")
    handlers.run_write({"collection": "tiny", "operation": "upsert", "items": [{**old, "metadata": None}]})

    (hits,) = handlers.search("tiny", [old["vector"]], k=1)

    assert (hits[0]["id"], hits[0]["metadata"]) == ("sport-1", None)


def test_delete_event_removes_ids_for_good_and_counts_the_missing(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    event = load_event("write_delete.json")
    present = [i for i in event["ids"] if i in tiny["items"]]
    missing = [i for i in event["ids"] if i not in tiny["items"]]

    response = handlers.run_write(event)

    assert (response["deleted"], response["not_found"]) == (len(present), len(missing))
    assert response["count"] == len(tiny["items"]) - len(present)
    vectors = [tiny["items"][i]["vector"] for i in present]
    for hits in handlers.search("tiny", vectors, k=len(tiny["items"])):
        assert not {h["id"] for h in hits} & set(event["ids"])
        assert len(hits) == response["count"]
    # A later write does not bring them back; deleting again finds nothing.
    handlers.run_write({"collection": "tiny", "operation": "upsert", "items": [{**tiny["items"]["sport-1"]}]})
    again = handlers.run_write(event)
    assert (again["deleted"], again["not_found"]) == (0, len(event["ids"]))
    for hits in handlers.search("tiny", vectors, k=len(tiny["items"])):
        assert not {h["id"] for h in hits} & set(event["ids"])


def test_string_id_collection_refuses_integer_ids_naming_the_field(
    handlers: Handlers, tiny: dict[str, Any]
) -> None:
    with pytest.raises(InvalidRequest, match=r"^items\[\]\.id must be strings"):
        handlers.run_write(
            {"collection": "tiny", "operation": "upsert", "items": [{"id": 3, "vector": [1, 0, 0, 0]}]}
        )
    with pytest.raises(InvalidRequest, match=r"^ids must be strings"):
        handlers.run_write({"collection": "tiny", "operation": "delete", "ids": [3]})


def test_mixed_id_types_event_is_refused_and_nothing_is_written(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any, index_snapshot: Any
) -> None:
    before = index_snapshot(handlers.s3)

    with pytest.raises(InvalidRequest) as caught:
        handlers.run_write(load_event("bad_write_mixed_id_types.json"))

    assert caught.value.field.startswith("ids")
    assert index_snapshot(handlers.s3) == before


def test_integer_ids_are_upserted_deleted_and_returned_as_integers(handlers: Handlers) -> None:
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(40, DIM_OF["ints"])).astype(np.float32)
    handlers.run_build(
        {
            "collection": "ints",
            "source": {"items": items(range(40), vectors)},
            "bucket_size": 8,
            "dtype": "float32",
        }
    )
    fresh = rng.normal(size=(2, DIM_OF["ints"])).astype(np.float32)

    up = handlers.run_write({"collection": "ints", "operation": "upsert", "items": items([7, 1_000], fresh)})
    gone = handlers.run_write({"collection": "ints", "operation": "delete", "ids": [3, 2**40]})

    assert (up["count"], gone["count"], gone["deleted"], gone["not_found"]) == (41, 40, 1, 1)
    hits = handlers.search("ints", fresh, k=1)
    assert [h[0]["id"] for h in hits] == [7, 1_000]
    assert all(type(h[0]["id"]) is int for h in hits)
    assert 3 not in {h["id"] for h in handlers.search("ints", vectors[3:4], k=41)[0]}
    with pytest.raises(InvalidRequest, match=r"^items\[\]\.id must be integers"):
        handlers.run_write({"collection": "ints", "operation": "upsert", "items": items(["x"], fresh[:1])})


def test_write_to_an_unknown_collection_is_collection_not_found(handlers: Handlers) -> None:
    with pytest.raises(CollectionNotFound, match="'nowhere'"):
        handlers.run_write({"collection": "nowhere", "operation": "delete", "ids": ["a"]})


def test_upsert_with_the_wrong_dimension_names_the_field_and_writes_nothing(
    handlers: Handlers, tiny: dict[str, Any], index_snapshot: Any
) -> None:
    before = index_snapshot(handlers.s3)

    with pytest.raises(InvalidRequest, match=r"^items\[0\]\.vector has 3 dimensions"):
        handlers.run_write(
            {"collection": "tiny", "operation": "upsert", "items": [{"id": "x", "vector": [1, 2, 3]}]}
        )

    assert index_snapshot(handlers.s3) == before


def test_a_bucket_emptied_by_deletes_is_never_fetched(handlers: Handlers) -> None:
    vectors = np.random.default_rng(6).normal(size=(40, DIM_OF["ints"])).astype(np.float32)
    source = {"items": items(range(40), vectors)}
    handlers.run_build(
        {
            "collection": "ints",
            "source": source,
            "bucket_size": 8,
            "dtype": "float32",
            "refine": 0,
            "replicate": 0.0,
            "tail_rows": 0,  # the deletes go to the buckets at once (a tail would hold them)
        }
    )
    manifest = Searcher(ObjectStore(INDEX)).manifest("ints")
    key = layout.bucket_key("ints", manifest.buckets.fingerprints[0])
    first = decode_bucket(handlers.s3.get_object(Bucket=INDEX, Key=key)["Body"].read(), key=key)
    gone = handlers.run_write(
        {"collection": "ints", "operation": "delete", "ids": first.ids.to_numpy().tolist()}
    )
    assert gone["deleted"] == first.count

    response = handlers.run_query(
        {"collection": "ints", "vectors": vectors[:2].tolist(), "k": 5, "probes": ALL}
    )

    assert response["stats"]["buckets_fetched"] == manifest.n_buckets - 1


# --------------------------------------------------------------------------- versions
def _three_versions(handlers: Handlers, load_event: Any, tiny: dict[str, Any]) -> list[str]:
    up = handlers.run_write(load_event("write_upsert.json"))
    gone = handlers.run_write(load_event("write_delete.json"))
    return [tiny["built"]["version"], up["version"], gone["version"]]


def test_versions_event_lists_every_version_newest_first(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    made = _three_versions(handlers, load_event, tiny)

    listed = handlers.run_write(load_event("write_versions.json"))["versions"]

    assert [v["version"] for v in listed] == made[::-1]
    assert [v["is_head"] for v in listed] == [True, False, False]
    assert [v["parent"] for v in listed] == [made[1], made[0], None]
    assert listed[-1]["count"] == len(tiny["items"])
    assert listed[-1]["buckets"] == tiny["built"]["buckets"]


def test_describe_event_summarises_an_old_version(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    made = _three_versions(handlers, load_event, tiny)

    described = handlers.run_write({"collection": "tiny", "operation": "describe", "version": made[0]})

    assert described["version"] == made[0]
    assert described["is_head"] is False
    assert described["count"] == len(tiny["items"])
    assert described["buckets"] == tiny["built"]["buckets"]
    assert described["dim"] == DIM_OF["tiny"]
    assert described["manifest"] == layout.manifest_key("tiny", made[0])
    with pytest.raises(CollectionNotFound):
        handlers.run_write(
            {"collection": "tiny", "operation": "describe", "version": "20000101T000000000000Z-0"}
        )


def test_rollback_event_makes_queries_serve_the_old_version(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    upsert = load_event("write_upsert.json")
    written = handlers.run_write(upsert)
    built = tiny["built"]["version"]

    rolled = handlers.run_write(
        {
            "collection": "tiny",
            "operation": "rollback",
            "version": built,
            "expected_version": written["version"],
        }
    )

    assert rolled["version"] == built
    response = handlers.run_query(
        {"collection": "tiny", "vectors": [i["vector"] for i in upsert["items"]], "k": 1, "probes": ALL}
    )
    assert response["version"] == built
    for item, hits in zip(upsert["items"], response["results"], strict=True):
        if item["id"] in tiny["items"]:  # replaced then rolled back: the old vector is back
            assert hits[0]["distance"] > 1e-4 or hits[0]["id"] != item["id"]
        else:  # inserted then rolled back: gone
            assert hits[0]["id"] != item["id"]
    # The next write builds on the rolled-back version.
    after = handlers.run_write(load_event("write_delete.json"))
    listed = {v["version"]: v for v in handlers.run_write(load_event("write_versions.json"))["versions"]}
    assert listed[after["version"]]["parent"] == built
    assert after["count"] == len(tiny["items"]) - after["deleted"]


def test_rollback_with_a_stale_expected_version_is_refused_and_moves_nothing(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    written = handlers.run_write(load_event("write_upsert.json"))
    head = handlers.s3.get_object(Bucket=INDEX, Key=layout.head_key("tiny"))["ETag"]

    with pytest.raises(Conflict):
        handlers.run_write(
            {
                "collection": "tiny",
                "operation": "rollback",
                "version": tiny["built"]["version"],
                "expected_version": tiny["built"]["version"],
            }
        )

    assert handlers.s3.get_object(Bucket=INDEX, Key=layout.head_key("tiny"))["ETag"] == head
    assert (
        handlers.run_query({"collection": "tiny", "vectors": [[1, 0, 0, 0]], "k": 1})["version"]
        == written["version"]
    )


def test_gc_dry_run_reports_exactly_what_the_real_run_deletes(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any, index_snapshot: Any
) -> None:
    made = _three_versions(handlers, load_event, tiny)
    committed = handlers.run_write(load_event("write_gc.json"))  # dry run, 900 s grace: all young
    assert (committed["dry_run"], committed["deleted_objects"], committed["deleted_versions"]) == (
        True,
        0,
        [],
    )
    sweep = {"collection": "tiny", "operation": "gc", "keep_last": 1, "grace_seconds": 0}
    before = index_snapshot(handlers.s3)

    dry = handlers.run_write({**sweep, "dry_run": True})

    assert index_snapshot(handlers.s3) == before
    assert dry["deleted_versions"] == made[:2][::-1]
    assert dry["kept_versions"] == [made[2]]
    assert dry["deleted_objects"] >= len(dry["deleted_versions"])  # their manifests, at least

    real = handlers.run_write(sweep)

    assert real["dry_run"] is False
    assert (real["deleted_versions"], real["deleted_objects"], real["deleted_bytes"]) == (
        dry["deleted_versions"],
        dry["deleted_objects"],
        dry["deleted_bytes"],
    )
    after = index_snapshot(handlers.s3)
    assert len(before) - len(after) == real["deleted_objects"]
    assert [v["version"] for v in handlers.run_write(load_event("write_versions.json"))["versions"]] == [
        made[2]
    ]
    remaining = handlers.search("tiny", [i["vector"] for i in tiny["items"].values()], k=1)
    assert {h[0]["id"] for h in remaining} <= set(tiny["items"]) | {"sport-4"}


# --------------------------------------------------------------------------- compact
def test_compact_event_keeps_the_count_and_every_answer(handlers: Handlers, load_event: Any) -> None:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(300, DIM_OF["compact"])).astype(np.float32)
    labels = [f"l{i % 4}" for i in range(300)]
    source = items([f"v{i}" for i in range(300)], vectors)
    for item, lab in zip(source, labels, strict=True):
        item["label"] = lab
    handlers.run_build(
        {"collection": "compact", "source": {"items": source}, "bucket_size": 30, "dtype": "float32"}
    )
    fresh = rng.normal(size=(20, DIM_OF["compact"])).astype(np.float32)
    handlers.run_write(
        {
            "collection": "compact",
            "operation": "upsert",
            "items": items([f"n{i}" for i in range(20)], fresh, label="new"),
        }
    )
    last = handlers.run_write(
        {"collection": "compact", "operation": "delete", "ids": [f"v{i}" for i in range(0, 300, 7)]}
    )
    queries = rng.normal(size=(12, DIM_OF["compact"])).astype(np.float32)
    before = handlers.run_query(
        {"collection": "compact", "vectors": queries.tolist(), "k": 10, "probes": ALL}
    )

    compacted = handlers.run_write({**load_event("write_compact.json"), "collection": "compact"})

    assert compacted["count"] == last["count"] == 300 + 20 - len(range(0, 300, 7))
    assert compacted["version"] != last["version"]
    after = handlers.run_query({"collection": "compact", "vectors": queries.tolist(), "k": 10, "probes": ALL})
    assert after["version"] == compacted["version"]
    assert [[(h["id"], h["label"]) for h in r] for r in after["results"]] == [
        [(h["id"], h["label"]) for h in r] for r in before["results"]
    ]
    np.testing.assert_allclose(
        [[h["distance"] for h in r] for r in after["results"]],
        [[h["distance"] for h in r] for r in before["results"]],
        rtol=0,
        atol=1e-6,
    )
    described = handlers.run_write(
        {"collection": "compact", "operation": "describe", "version": compacted["version"]}
    )
    assert described["parent"] == last["version"]


def test_compact_event_on_the_committed_collection(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    handlers.run_write(load_event("write_upsert.json"))
    written = handlers.run_write(load_event("write_delete.json"))
    before = everything(handlers, "tiny", written["count"])

    compacted = handlers.run_write(load_event("write_compact.json"))

    assert compacted["count"] == written["count"]
    after = everything(handlers, "tiny", written["count"])
    assert [(h["id"], h["label"], h["metadata"]) for h in after] == [
        (h["id"], h["label"], h["metadata"]) for h in before
    ]


def test_recalibrate_event_on_the_committed_collection_keeps_every_answer(
    handlers: Handlers, tiny: dict[str, Any], load_event: Any
) -> None:
    written = handlers.run_write(load_event("write_upsert.json"))
    before = everything(handlers, "tiny", written["count"])

    report = handlers.run_write(load_event("write_recalibrate.json"))

    assert report["operation"] == "recalibrate"
    assert report["parent"] == written["version"]
    # a tiny collection: every vector in the buckets is in the sample (the upserted ones wait in
    # the unmerged tail, which every query scans in full)
    assert written["tail_segments"] == 1
    assert report["sample"] == written["count"] - written["upserted"]
    after = everything(handlers, "tiny", written["count"])
    assert [(h["id"], h["distance"]) for h in after] == [(h["id"], h["distance"]) for h in before]


# --------------------------------------------------------------------------- cost and balance
def test_small_writes_into_a_large_collection_touch_only_a_few_buckets_and_shards(handlers: Handlers) -> None:
    vectors = np.random.default_rng(3).normal(size=(5000, DIM_OF["big"])).astype(np.float32)
    # no tail: this pins what a commit to the buckets touches (a tail commit touches none)
    version = build_library("big", vectors, np.arange(5000, dtype=np.int64), bucket_size=100, tail_rows=0)
    described = handlers.run_write({"collection": "big", "operation": "describe", "version": version})
    buckets, shards = described["buckets"], described["id_shards"]
    assert buckets >= 40
    fresh = np.random.default_rng(4).normal(size=(3, DIM_OF["big"])).astype(np.float32)
    # Per id: a new vector lands in 1 bucket; a replaced or deleted one also leaves its
    # primary bucket and, if replicated, its secondary one.
    cases = [
        ("insert", 1, 5003, {"operation": "upsert", "items": items([5000, 5001, 5002], fresh)}),
        ("replace", 3, 5003, {"operation": "upsert", "items": items([10, 2000, 4321], fresh)}),
        ("delete", 2, 5000, {"operation": "delete", "ids": [11, 2001, 4322]}),
    ]
    for what, per_id, count, event in cases:
        wire = listen()

        response = handlers.run_write({"collection": "big", **event})

        storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.unregister("before-send.s3", wire)
        bucket_puts, bucket_gets = wire.names("PUT", "buckets"), wire.names("GET", "buckets")
        assert len(bucket_puts) <= per_id * 3 + response["buckets_split"], what
        assert len(bucket_gets) <= per_id * 3, what
        assert len(bucket_puts) < buckets / 4, what
        assert 1 <= len(wire.names("PUT", "ids")) <= min(3, shards), what
        assert len(wire.names("GET", "ids")) <= min(3, shards), what
        assert (len(wire.names("PUT", "manifests")), len(wire.names("PUT", "HEAD"))) == (1, 1), what
        assert (len(wire.names("GET", "manifests")), len(wire.names("GET", "HEAD"))) == (1, 1), what
        assert response["buckets_written"] == len(set(bucket_puts)), what
        assert response["count"] == count, what


def _centroid_cluster(handlers: Handlers, collection: str, n: int, seed: int) -> np.ndarray:
    """``n`` vectors tightly around the centroid of the collection's first bucket."""
    manifest = Searcher(ObjectStore(INDEX)).manifest(collection)
    centre = manifest.buckets.centroids[0]
    noise = np.random.default_rng(seed).normal(scale=1e-2, size=(n, len(centre)))
    return (centre + noise).astype(np.float32)


def test_bucket_grown_past_twice_the_bucket_size_is_split_and_every_vector_stays_findable(
    handlers: Handlers, exact_knn: Any
) -> None:
    rng = np.random.default_rng(8)
    base = rng.normal(size=(200, DIM_OF["split"])).astype(np.float32)
    handlers.run_build(
        {
            "collection": "split",
            "source": {"items": items(range(200), base)},
            "bucket_size": 20,
            "dtype": "float32",
        }
    )
    before = handlers.run_write({"collection": "split", "operation": "versions"})["versions"][0]
    crowd = _centroid_cluster(handlers, "split", 50, seed=9)

    response = handlers.run_write(
        {"collection": "split", "operation": "upsert", "items": items(range(1000, 1050), crowd)}
    )

    assert response["buckets_split"] >= 1
    after = handlers.run_write(
        {"collection": "split", "operation": "describe", "version": response["version"]}
    )
    assert after["buckets"] == before["buckets"] + response["buckets_split"]
    # Every vector, old and new, is found exactly where brute force says.
    data = np.vstack([base, crowd])
    ids = list(range(200)) + list(range(1000, 1050))
    queries = np.vstack([crowd[::5], rng.normal(size=(10, DIM_OF["split"])).astype(np.float32)])
    results = handlers.search("split", queries, k=8)
    _, rows = exact_knn(data, queries, 8, "cosine", "float32")
    assert [[h["id"] for h in r] for r in results] == [[ids[j] for j in row] for row in rows.tolist()]
    assert [r[0]["id"] for r in handlers.search("split", crowd, k=1)] == list(range(1000, 1050))
    # The id directory followed the rows that moved to the new bucket: they can be deleted.
    gone = handlers.run_write({"collection": "split", "operation": "delete", "ids": list(range(1000, 1050))})
    assert (gone["deleted"], gone["not_found"], gone["count"]) == (50, 0, 200)


SKEW_BUCKET_SIZE = 20


def _skewed(handlers: Handlers, params: dict[str, Any], writes: int = 4) -> list[dict[str, Any]]:
    """200 vectors in buckets of ~20, then ``writes`` writes piling 30 vectors each onto one spot.

    Returns ``describe`` of the built version and of the version after each write.
    """
    base = np.random.default_rng(12).normal(size=(200, DIM_OF["skew"])).astype(np.float32)
    source = {"items": items(range(200), base)}
    built = handlers.run_build(
        {
            "collection": "skew",
            "source": source,
            "bucket_size": SKEW_BUCKET_SIZE,
            "dtype": "float32",
            **params,
        }
    )
    described = [
        handlers.run_write({"collection": "skew", "operation": "describe", "version": built["version"]})
    ]
    for w in range(writes):
        crowd = _centroid_cluster(handlers, "skew", 30, seed=100 + w)
        ids = range(1000 + 30 * w, 1030 + 30 * w)
        written = handlers.run_write(
            {"collection": "skew", "operation": "upsert", "items": items(ids, crowd)}
        )
        described.append(
            handlers.run_write({"collection": "skew", "operation": "describe", "version": written["version"]})
        )
    return described


def test_compact_after_many_skewed_writes_restores_balance(handlers: Handlers) -> None:
    # Buckets that are the tree's leaves (no refinement, no replication): a build bounds
    # every bucket by bucket_size, so compaction must bring the skew back under it.
    described = _skewed(handlers, {"refine": 0, "replicate": 0.0})
    assert described[0]["bucket_rows"]["max"] <= SKEW_BUCKET_SIZE
    assert described[-1]["bucket_rows"]["max"] > SKEW_BUCKET_SIZE  # the writes did skew it

    compacted = handlers.run_write({"collection": "skew", "operation": "compact"})

    balanced = handlers.run_write(
        {"collection": "skew", "operation": "describe", "version": compacted["version"]}
    )
    assert compacted["count"] == balanced["count"] == 320
    assert balanced["bucket_rows"]["max"] <= SKEW_BUCKET_SIZE
    assert balanced["buckets"] >= 320 // SKEW_BUCKET_SIZE


def test_compact_of_a_refined_collection_after_skewed_writes_restores_balance(handlers: Handlers) -> None:
    described = _skewed(handlers, {})
    assert described[-1]["bucket_rows"]["max"] > SKEW_BUCKET_SIZE  # the writes did skew it

    compacted = handlers.run_write({"collection": "skew", "operation": "compact"})

    balanced = handlers.run_write(
        {"collection": "skew", "operation": "describe", "version": compacted["version"]}
    )
    assert balanced["bucket_rows"]["max"] <= 2 * SKEW_BUCKET_SIZE
    # compaction bounds refined (and replicated) buckets by bucket_size itself, as a build of
    # the tree's leaves does; nothing is lost on the way
    assert balanced["bucket_rows"]["max"] <= SKEW_BUCKET_SIZE
    assert compacted["count"] == balanced["count"] == 320


def test_no_write_leaves_a_bucket_above_twice_the_bucket_size(handlers: Handlers) -> None:
    described = _skewed(handlers, {"refine": 0, "replicate": 0.0}, writes=2)

    assert [d["bucket_rows"]["max"] for d in described] == [
        min(d["bucket_rows"]["max"], 2 * SKEW_BUCKET_SIZE) for d in described
    ]
