"""What a query costs in S3 requests, counted on the wire at the botocore level.

A ``before-send`` hook on the library's shared client sees every HTTP request (retries
included) just before it is sent; requests are classified by key: ``…/HEAD``,
``…/manifests/…``, ``…/buckets/…``. A cold query must cost exactly one HEAD GET, one
manifest GET and at most ``probes`` bucket GETs per query vector, each bucket at most once per
request; a warm repeat must cost no bucket and no manifest GET.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

from devtools import local
from kdbuckets import ObjectStore, Searcher, storage

_KEY = re.compile(
    r"/(?P<collection>[A-Za-z0-9_.-]+)/(?P<kind>HEAD|manifests|parts|buckets|ids)(?:/(?P<name>[^/]+))?$"
)
PROBES = 3


@dataclass
class Wire:
    """Every S3 request the library's shared client sends, as (method, kind, name, headers)."""

    requests: list[tuple[str, str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any, **kwargs: Any) -> None:
        path = unquote(urlsplit(request.url).path)
        match = _KEY.search(path)
        kind = match["kind"] if match else "other"
        name = (match["name"] or "") if match else path
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        with self.lock:
            self.requests.append((request.method, kind, name, headers))

    def count(self, method: str, kind: str) -> int:
        return len(self.names(method, kind))

    def names(self, method: str, kind: str) -> list[str]:
        return [n for m, k, n, _ in self.requests if (m, k) == (method, kind)]

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()


@pytest.fixture
def wire(s3: Any) -> Wire:
    """Hooked on the client every ObjectStore of default concurrency uses."""
    recorder = Wire()
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register("before-send.s3", recorder)
    return recorder


@pytest.fixture
def demo(s3: Any, demo_index: Any) -> dict[str, Any]:
    """The sample built into ~20 buckets of ~100 rows, so that probes < buckets."""
    built = demo_index(s3, bucket_size=100)
    assert built["buckets"] > 4 * PROBES
    return built


def query_event(load_event: Any, name: str = "query_basic.json", **overrides: Any) -> dict[str, Any]:
    return {**load_event(name), "probes": PROBES, **overrides}


def test_cold_query_gets_head_manifest_and_at_most_probes_buckets(
    demo: dict[str, Any], wire: Wire, query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    response = query_handler.lambda_handler(query_event(load_event), lambda_context)

    assert wire.count("GET", "HEAD") == 1
    assert wire.names("GET", "manifests") == [demo["version"]]
    buckets = wire.names("GET", "buckets")
    assert 1 <= len(buckets) <= PROBES
    assert len(buckets) == len(set(buckets)) == response["stats"]["buckets_fetched"]
    assert wire.count("GET", "parts") == response["stats"]["parts_fetched"] == 1  # one part: the whole table
    assert len(wire.requests) == 3 + len(buckets)  # nothing else: no LIST, no PUT
    assert response["stats"]["cache_hits"] == 0


def test_cold_batch_fetches_each_bucket_at_most_once(
    demo: dict[str, Any], wire: Wire, query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    event = query_event(load_event, "query_batch.json", probes=5)
    nq = len(event["vectors"])

    response = query_handler.lambda_handler(event, lambda_context)

    buckets = wire.names("GET", "buckets")
    assert len(buckets) <= nq * 5
    assert len(buckets) == len(set(buckets)) == response["stats"]["buckets_fetched"]
    assert wire.count("GET", "HEAD") == 1
    assert wire.count("GET", "manifests") == 1
    assert wire.count("GET", "parts") == 1
    assert len(wire.requests) == 3 + len(buckets)


def test_cold_classify_costs_the_same_as_search(
    demo: dict[str, Any], wire: Wire, query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    event = query_event(load_event, "classify_basic.json")
    nq = len(event["vectors"])

    response = query_handler.lambda_handler(event, lambda_context)

    buckets = wire.names("GET", "buckets")
    assert len(buckets) == len(set(buckets)) <= nq * PROBES
    assert (wire.count("GET", "HEAD"), wire.count("GET", "manifests")) == (1, 1)
    assert len(response["predictions"]) == nq


def test_warm_identical_query_fetches_no_bucket_and_no_manifest(
    demo: dict[str, Any], wire: Wire, query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    first = query_handler.lambda_handler(query_event(load_event, "query_batch.json"), lambda_context)
    wire.clear()

    second = query_handler.lambda_handler(query_event(load_event, "query_batch.json"), lambda_context)

    assert wire.count("GET", "buckets") == 0
    assert wire.count("GET", "manifests") == 0
    assert wire.count("GET", "HEAD") == 1  # strong consistency: HEAD revalidated on every query
    assert len(wire.requests) == wire.count("GET", "HEAD")
    assert second["results"] == first["results"]
    assert second["stats"]["buckets_fetched"] == second["stats"]["bytes_fetched"] == 0
    assert second["stats"]["cache_hits"] == first["stats"]["buckets_fetched"]


def test_warm_searcher_revalidates_head_with_a_conditional_get(
    demo: dict[str, Any],
    wire: Wire,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
) -> None:
    # head_ttl=0: every request revalidates HEAD, so the revalidation itself is observable
    query_handler._searcher = Searcher(ObjectStore(local.INDEX_BUCKET), head_ttl=0.0)
    query_handler.lambda_handler(query_event(load_event), lambda_context)
    wire.clear()
    statuses: list[int] = []
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register(
        "after-call.s3.GetObject", lambda http_response, **kw: statuses.append(http_response.status_code)
    )

    unchanged = query_handler.lambda_handler(query_event(load_event), lambda_context)

    assert [(m, k) for m, k, _, _ in wire.requests] == [("GET", "HEAD")]
    assert wire.requests[0][3].get("If-None-Match")
    assert statuses == [304]  # HEAD not modified: nothing is re-read
    assert unchanged["version"] == demo["version"]

    rebuilt = build_handler.lambda_handler(
        {**load_event("build_npy.json"), "bucket_size": 100, "replace": True}, lambda_context
    )  # same data, same buckets, new version
    wire.clear()
    after = query_handler.lambda_handler(query_event(load_event), lambda_context)

    assert after["version"] == rebuilt["version"] != demo["version"]
    head_gets = [h for m, k, _, h in wire.requests if (m, k) == ("GET", "HEAD")]
    assert 1 <= len(head_gets) <= 2  # with head_ttl=0 the new version may be revalidated once more
    assert all(h.get("If-None-Match") for h in head_gets)
    assert wire.names("GET", "manifests") == [rebuilt["version"]]
    assert wire.count("GET", "buckets") == 0  # content-addressed buckets are still cached
    assert after["results"] == unchanged["results"]


def test_build_writes_buckets_then_manifest_then_head_conditionally(
    s3: Any,
    wire: Wire,
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
) -> None:
    upload_sample(s3)
    event = {**load_event("build_npy.json"), "bucket_size": 400}

    first = build_handler.lambda_handler(event, lambda_context)

    puts = [(k, n, h) for m, k, n, h in wire.requests if m == "PUT"]
    kinds = [k for k, _, _ in puts]
    immutable = kinds[:-4]  # buckets and id-directory shards, uploaded in parallel
    assert kinds[-4:] == ["parts", "parts", "manifests", "HEAD"]  # the manifest's part and tree first
    assert immutable.count("buckets") == first["buckets"]
    assert set(immutable) == {"buckets", "ids"}
    immutable_kinds = ("buckets", "ids", "parts", "manifests")
    assert all(h.get("If-None-Match") == "*" for k, _, h in puts if k in immutable_kinds)
    assert puts[-1][2].get("If-None-Match") == "*"  # a new collection: HEAD must not exist yet
    assert "If-Match" not in puts[-1][2]
    assert wire.count("GET", "HEAD") == 1
    # vectors.npy, ids.npy, labels.npy: ranged GETs (the .npy header first, then the rows in
    # chunks of at most 16 MB), each object read once from start to end
    sources = [path for method, kind, path, _ in wire.requests if method == "GET" and kind == "other"]
    assert {p.rsplit("/", 1)[1] for p in sources} == {"vectors.npy", "ids.npy", "labels.npy"}
    assert len(sources) <= 3 + 3  # one header read each at most, plus the sample's one data chunk each
    wire.clear()

    second = build_handler.lambda_handler({**event, "replace": True}, lambda_context)

    puts = [(k, h) for m, k, _, h in wire.requests if m == "PUT"]
    assert [k for k, _ in puts][-2:] == ["manifests", "HEAD"]
    conditional = [k for k, h in puts[:-2] if "x-amz-copy-source" not in {n.lower() for n in h}]
    touches = [k for k, h in puts[:-2] if "x-amz-copy-source" in {n.lower() for n in h}]
    assert conditional.count("buckets") == second["buckets"]
    # identical content already exists: no bytes re-uploaded, each reused object is only touched
    # (copied onto itself) so that garbage collection's grace period covers it again
    assert touches.count("buckets") == second["buckets"]
    assert second["buckets_written"] == 0
    head_etag = s3.head_object(Bucket=local.INDEX_BUCKET, Key=f"{local.COLLECTION}/HEAD")["ETag"]
    assert puts[-1][1].get("If-Match") not in (None, head_etag)  # swapped against the old ETag
