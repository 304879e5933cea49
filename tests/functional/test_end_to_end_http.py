"""The whole path over real HTTP: a moto server, boto3 pointed at it by AWS_ENDPOINT_URL_S3.

Upload the sample, build with the build handler, then search, batch-search and classify with
the query handler — every event a committed one — exactly as `make demo` does, and check
the answers against brute force and that every request really crossed the socket.
"""

from __future__ import annotations

import threading
from types import ModuleType
from typing import Any

import numpy as np

from devtools import local
from kdbuckets import storage


class Urls:
    """Every URL the library's shared client sends a request to."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: Any, **kwargs: Any) -> None:
        with self.lock:
            self.seen.append(request.url)


def test_build_query_and_classify_over_http(
    moto_server: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
    sample: local.Sample,
    exact_knn: Any,
) -> None:
    urls = Urls()
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register("before-send.s3", urls)
    upload_sample(moto_server.s3)

    built = build_handler.lambda_handler(load_event("build_npy.json"), lambda_context)
    basic = query_handler.lambda_handler(load_event("query_probes.json"), lambda_context)
    batch = query_handler.lambda_handler(load_event("query_batch.json"), lambda_context)
    classified = query_handler.lambda_handler(load_event("classify_basic.json"), lambda_context)

    assert built["count"] == len(sample.vectors)
    assert basic["version"] == batch["version"] == classified["version"] == built["version"]
    stored = sample.vectors.astype(np.float16).astype(np.float32)
    for event, response in (
        (load_event("query_probes.json"), basic),
        (load_event("query_batch.json"), batch),
    ):
        assert event["probes"] >= built["buckets"]  # exact on this small sample
        _, rows = exact_knn(stored, np.array(event["vectors"]), event["k"])
        assert [[h["id"] for h in hits] for hits in response["results"]] == sample.ids[rows].tolist()
    assert basic["stats"]["buckets_fetched"] == built["buckets"]
    assert batch["stats"]["buckets_fetched"] == 0  # warm container: every bucket is cached
    assert batch["stats"]["cache_hits"] == built["buckets"]
    predictions = classified["predictions"]
    assert len(predictions) == len(load_event("classify_basic.json")["vectors"])
    for prediction in predictions:
        assert prediction["label"] in set(sample.labels.tolist())
        assert prediction["label"] == max(prediction["votes"], key=prediction["votes"].get)
    assert urls.seen
    assert all(url.startswith(moto_server.url + "/") for url in urls.seen)


def test_inline_and_jsonl_builds_over_http(
    moto_server: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
    sample: local.Sample,
) -> None:
    upload_sample(moto_server.s3)

    tiny = build_handler.lambda_handler(load_event("build_inline.json"), lambda_context)
    jsonl = build_handler.lambda_handler(load_event("build_jsonl.json"), lambda_context)
    found = query_handler.lambda_handler(load_event("query_tiny.json"), lambda_context)
    voted = query_handler.lambda_handler(load_event("classify_tiny.json"), lambda_context)
    near = query_handler.lambda_handler(
        {"collection": "demo-jsonl", "vectors": sample.vectors[:2].tolist(), "k": 1, "probes": 4},
        lambda_context,
    )

    assert found["version"] == voted["version"] == tiny["version"]
    assert {h["label"] for h in found["results"][0]} == {"sports"}
    assert voted["predictions"][0]["label"] == "food"
    assert jsonl["count"] == min(local.JSONL_ROWS, len(sample.vectors))
    # each indexed row finds itself (its JSONL copy is rounded to 5 decimals)
    assert [hits[0]["id"] for hits in near["results"]] == sample.ids[:2].tolist()
    keys = {o["Key"] for o in moto_server.s3.list_objects_v2(Bucket=local.INDEX_BUCKET)["Contents"]}
    assert {"tiny/HEAD", "demo-jsonl/HEAD", tiny["manifest"], jsonl["manifest"]} <= keys
