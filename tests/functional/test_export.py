"""Export (a write-function operation) → build from the exported prefix → the same collection.

The export writes `.npy` shards (vectors, ids, labels) and, when the version holds metadata,
JSON Lines items too (the build reads metadata only from JSON Lines); its response names the
build event to use. A build from it answers exact searches and fetches exactly as the original.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from kdbuckets import ObjectStore, Searcher, service
from kdbuckets.errors import InvalidRequest
from tests.conftest import INDEX_BUCKET, SOURCE_BUCKET, FakeLambdaContext

RNG = np.random.default_rng(3)
N, DIM = 700, 16
VECTORS = RNG.normal(size=(N, DIM)).astype(np.float32)
QUERIES = RNG.normal(size=(20, DIM)).astype(np.float32)


def items(metadata: bool, ints: bool = False) -> list[dict[str, Any]]:
    out = []
    for i in range(N):
        item: dict[str, Any] = {"id": i * 3 if ints else f"doc-{i}", "vector": VECTORS[i].tolist()}
        item["label"] = ["red", "green", "blue"][i % 3]
        if metadata and i % 5:
            item["metadata"] = {"rank": i, "tags": ["a", "b"][: i % 3], "ok": i % 2 == 0}
        out.append(item)
    return out


def build(name: str, source: dict[str, Any], **params: Any) -> dict[str, Any]:
    """A build event through the service (an export's ``build`` object is such params)."""
    event = {"collection": name, "source": source, "bucket_size": 60, **params}
    return service.build(event, ObjectStore(INDEX_BUCKET))


def exact_search(name: str) -> dict[str, Any]:
    """k = 10 over every bucket (probes beyond the bucket count = exact search)."""
    event = {"collection": name, "vectors": QUERIES.tolist(), "k": 10, "probes": 4096}
    return service.query(event, Searcher(ObjectStore(INDEX_BUCKET)))


def fetch_all(name: str, ids: list[Any]) -> list[dict[str, Any]]:
    store = ObjectStore(INDEX_BUCKET)
    out: list[dict[str, Any]] = []
    for start in range(0, len(ids), 500):
        event = {
            "collection": name,
            "operation": "fetch",
            "ids": ids[start : start + 500],
            "include_vectors": True,
        }
        out += service.query(event, Searcher(store))["vectors"]
    return out


@pytest.fixture
def export(module_s3: Any, write_handler: ModuleType) -> Callable[..., dict[str, Any]]:
    """``export(collection, destination, **fields)`` through the write handler."""

    def run(collection: str, destination: str, **fields: Any) -> dict[str, Any]:
        event = {"collection": collection, "operation": "export", "destination": destination, **fields}
        return write_handler.lambda_handler(event, FakeLambdaContext())

    return run


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(o["Key"][len(prefix) :] for o in listed)


def test_export_then_build_gives_identical_exact_search_and_fetch(
    module_s3: Any, export: Callable[..., dict[str, Any]]
) -> None:
    original = build("orig", {"items": items(metadata=True)}, metric="l2", dtype="float32")
    assert original["stored_rows"] > N  # replicated: every vector must be exported once
    dest = f"s3://{SOURCE_BUCKET}/exports/orig/"
    exported = export("orig", dest, rows_per_shard=200)
    assert (exported["count"], exported["shards"], exported["version"]) == (N, 4, original["version"])
    assert exported["build"]["source"] == {"jsonl": dest + "items/"}  # metadata: JSON Lines
    assert exported["build"]["metric"] == "l2"
    names = keys_under(module_s3, SOURCE_BUCKET, "exports/orig/")
    for kind, suffix in (("vectors", ".npy"), ("ids", ".npy"), ("labels", ".npy"), ("items", ".jsonl.gz")):
        assert [n for n in names if n.startswith(kind + "/")] == [
            f"{kind}/part-{s:05d}{suffix}" for s in range(4)
        ]
    summary = json.loads(
        module_s3.get_object(Bucket=SOURCE_BUCKET, Key="exports/orig/EXPORT.json")["Body"].read()
    )
    assert (summary["count"], summary["build"]) == (N, exported["build"])

    rebuilt = build("copy", **exported["build"])
    assert rebuilt["count"] == N
    before, after = exact_search("orig"), exact_search("copy")
    assert after["results"] == before["results"]  # ids, distances and labels
    ids = [it["id"] for it in items(metadata=True)]
    assert fetch_all("copy", ids) == fetch_all("orig", ids)  # vectors bit for bit, labels, metadata


def test_a_version_without_metadata_exports_npy_shards_that_build_as_a_prefix_source(
    module_s3: Any, export: Callable[..., dict[str, Any]]
) -> None:
    build("plain", {"items": items(metadata=False, ints=True)}, metric="cosine")  # float16 default
    dest = f"s3://{SOURCE_BUCKET}/exports/plain/"
    exported = export("plain", dest)
    assert exported["build"]["source"] == {
        "vectors": dest + "vectors/",
        "ids": dest + "ids/",
        "labels": dest + "labels/",
    }
    assert not [n for n in keys_under(module_s3, SOURCE_BUCKET, "exports/plain/") if n.startswith("items/")]
    build("plain-copy", **exported["build"])
    before, after = exact_search("plain"), exact_search("plain-copy")
    assert [[h["id"] for h in hits] for hits in after["results"]] == [
        [h["id"] for h in hits] for hits in before["results"]
    ]
    ids = [it["id"] for it in items(metadata=False, ints=True)]
    old, new = fetch_all("plain", ids), fetch_all("plain-copy", ids)
    assert [(r["id"], r["label"], r["metadata"]) for r in new] == [
        (r["id"], r["label"], r["metadata"]) for r in old
    ]
    # cosine: the build normalises again what was stored unit-normalised, so a component may
    # move by one float16 step (README: exact for l2 and ip; cosine to the last bit of rounding)
    np.testing.assert_allclose(
        [r["vector"] for r in new], [r["vector"] for r in old], rtol=2**-10, atol=2**-24
    )


def test_metadata_first_met_in_a_later_shard_still_reaches_every_shard_as_json_lines(
    module_s3: Any, export: Callable[..., dict[str, Any]]
) -> None:
    build("late", {"items": items(metadata=False)[:120]}, metric="l2", dtype="float32", bucket_size=30)
    listed = service.query(
        {"collection": "late", "operation": "list", "limit": 1000}, Searcher(ObjectStore(INDEX_BUCKET))
    )
    last = listed["vectors"][-1]["id"]
    item = next(it for it in items(metadata=False) if it["id"] == last)
    service.write(
        {"collection": "late", "operation": "upsert", "items": [{**item, "metadata": {"late": True}}]},
        ObjectStore(INDEX_BUCKET),
    )
    relisted = service.query(
        {"collection": "late", "operation": "list", "limit": 1000}, Searcher(ObjectStore(INDEX_BUCKET))
    )
    assert relisted["vectors"][0]["id"] != last  # the metadata is not in the first shard
    exported = export("late", f"s3://{SOURCE_BUCKET}/exports/late/", rows_per_shard=10)
    assert exported["shards"] == 12
    items_keys = [n for n in keys_under(module_s3, SOURCE_BUCKET, "exports/late/") if n.startswith("items/")]
    assert len(items_keys) == 12
    lines = [
        json.loads(line)
        for key in items_keys
        for line in gzip.decompress(
            module_s3.get_object(Bucket=SOURCE_BUCKET, Key="exports/late/" + key)["Body"].read()
        ).splitlines()
    ]
    assert sorted(x["id"] for x in lines) == sorted(v["id"] for v in relisted["vectors"])
    assert [x["metadata"] for x in lines if "metadata" in x] == [{"late": True}]
    rebuilt = build("late-copy", **exported["build"])
    fetched = service.query(
        {"collection": "late-copy", "operation": "fetch", "ids": [last]}, Searcher(ObjectStore(INDEX_BUCKET))
    )
    assert rebuilt["count"] == 120
    assert fetched["vectors"][0]["metadata"] == {"late": True}


def test_an_older_version_can_be_exported(module_s3: Any, export: Callable[..., dict[str, Any]]) -> None:
    old = build("versions", {"items": items(metadata=False)[:50]}, metric="l2")["version"]
    service.write(
        {"collection": "versions", "operation": "delete", "ids": ["doc-0"]}, ObjectStore(INDEX_BUCKET)
    )
    exported = export("versions", f"s3://{SOURCE_BUCKET}/exports/versions/", version=old)
    assert (exported["version"], exported["count"]) == (old, 50)


@pytest.mark.parametrize(
    ("destination", "problem"),
    [
        (f"s3://{SOURCE_BUCKET}/exports/no-slash", "must be a prefix ending in '/'"),
        ("https://example.com/x/", "is not a valid s3://bucket/key URI"),
        (f"s3://{INDEX_BUCKET}/tiny-export/", "lies inside the index's folder of collection 'tiny-export'"),
        ("s3://no-such-bucket-here/x/", "names bucket 'no-such-bucket-here', which does not exist"),
        (f"s3://{SOURCE_BUCKET}/taken/", "already holds 1 object(s)"),
    ],
)
def test_export_refuses_a_destination_it_must_not_write_naming_it(
    module_s3: Any, export: Callable[..., dict[str, Any]], destination: str, problem: str
) -> None:
    build("small", {"items": items(metadata=False)[:20]}, metric="l2", replace=True)
    module_s3.put_object(Bucket=SOURCE_BUCKET, Key="taken/old.npy", Body=b"x")
    with pytest.raises(InvalidRequest) as err:
        export("small", destination)
    assert err.value.field == "destination"
    assert problem in err.value.problem
    assert not keys_under(module_s3, INDEX_BUCKET, "tiny-export/")


def test_an_export_into_the_index_bucket_goes_under_an_underscore_folder(
    module_s3: Any, export: Callable[..., dict[str, Any]]
) -> None:
    build("inside", {"items": items(metadata=False)[:20]}, metric="l2")
    exported = export("inside", f"s3://{INDEX_BUCKET}/_exports/inside/")
    assert exported["count"] == 20
    listed = service.write({"operation": "list_collections"}, ObjectStore(INDEX_BUCKET))
    assert "_exports" not in {c["collection"] for c in listed["collections"]}
