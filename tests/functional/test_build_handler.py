"""The build Lambda driven by the committed events in ``events/``, against moto S3 in-process.

Each test checks the response contract of DESIGN.md §4 and what the build left in S3: a
HEAD naming the new manifest, and every bucket that manifest names, verifiable by its
fingerprint.
"""

from __future__ import annotations

import copy
import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import layout
from kdbuckets.bucket import decode_bucket
from kdbuckets.errors import Conflict, InvalidRequest
from kdbuckets.manifest import decode_head
from tests.conftest import read_manifest

INDEX = local.INDEX_BUCKET


def read(s3: Any, key: str) -> bytes:
    return s3.get_object(Bucket=INDEX, Key=key)["Body"].read()


def assert_published(s3: Any, response: dict[str, Any], prefix: str = "") -> None:
    """HEAD names the response's version and manifest, and every bucket of it verifies."""
    collection, version = response["collection"], response["version"]
    head_key = prefix + layout.head_key(collection)
    head = decode_head(read(s3, head_key), key=head_key)
    assert head.version == version
    assert response["manifest"] == prefix + layout.manifest_key(collection, version)
    manifest = read_manifest(s3, response["manifest"])
    assert (manifest.collection, manifest.version, manifest.count) == (collection, version, response["count"])
    assert manifest.n_buckets == response["buckets"]
    replicated = round(manifest.params["replicate"] * response["count"])
    assert int(manifest.buckets.rows.sum()) == response["count"] + replicated
    copies: dict[Any, int] = {}
    for fp, rows in zip(manifest.buckets.fingerprints, manifest.buckets.rows.tolist(), strict=True):
        key = prefix + layout.bucket_key(collection, fp)
        bucket = decode_bucket(read(s3, key), key=key, expected_fingerprint=fp)
        assert bucket.count == rows
        for ident in bucket.ids.to_numpy().tolist():
            copies[ident] = copies.get(ident, 0) + 1
    assert len(copies) == response["count"]  # every vector is stored...
    assert set(copies.values()) <= {1, 2}  # ...once, or twice when it sits on a cell border
    assert sum(c == 2 for c in copies.values()) == replicated


def assert_build_response_shape(response: dict[str, Any]) -> None:
    assert {"collection", "version", "count", "buckets", "manifest"} <= set(response)
    assert isinstance(response["version"], str)
    assert response["version"]
    assert isinstance(response["count"], int)
    assert response["count"] > 0
    assert isinstance(response["buckets"], int)
    assert 1 <= response["buckets"] <= response["count"]
    assert 0 <= response["buckets_written"] <= response["buckets"]
    json.dumps(response)  # a Lambda response must be plain JSON


def test_build_inline_event_publishes_the_tiny_collection(
    s3: Any, build_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    event = load_event("build_inline.json")

    response = build_handler.lambda_handler(event, lambda_context)

    assert_build_response_shape(response)
    assert response["collection"] == "tiny"
    assert response["count"] == len(event["source"]["items"]) == 8
    assert response["dim"] == 4
    assert response["buckets_written"] == response["buckets"]
    assert response["params"]["bucket_size"] == 3
    assert_published(s3, response)


def test_build_npy_event_indexes_the_uploaded_sample(
    s3: Any,
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
    sample: local.Sample,
) -> None:
    upload_sample(s3)

    response = build_handler.lambda_handler(load_event("build_npy.json"), lambda_context)

    assert_build_response_shape(response)
    assert response["collection"] == local.COLLECTION
    assert response["count"] == len(sample.vectors)
    assert response["dim"] == local.DIM
    assert response["params"]["metric"] == "cosine"
    assert_published(s3, response)


def test_build_jsonl_event_indexes_every_line(
    s3: Any,
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
    sample: local.Sample,
) -> None:
    upload_sample(s3)

    response = build_handler.lambda_handler(load_event("build_jsonl.json"), lambda_context)

    assert_build_response_shape(response)
    assert response["collection"] == "demo-jsonl"
    assert response["count"] == min(local.JSONL_ROWS, len(sample.vectors))
    assert response["dim"] == local.DIM
    assert response["params"]["bucket_size"] == 200
    assert response["buckets"] >= response["count"] // 200
    assert_published(s3, response)


def test_jsonl_build_keeps_ids_labels_and_vectors_of_each_line(
    s3: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
    sample: local.Sample,
    exact_knn: Any,
) -> None:
    upload_sample(s3)
    built = build_handler.lambda_handler(load_event("build_jsonl.json"), lambda_context)
    rows = built["count"]
    data = np.round(sample.vectors[:rows].astype(np.float64), 5)  # what the JSONL file holds
    queries = sample.queries[:4]

    response = query_handler.lambda_handler(
        {"collection": "demo-jsonl", "vectors": queries.tolist(), "k": 5, "probes": built["buckets"]},
        lambda_context,
    )

    distances, rows_of = exact_knn(data, queries, 5)
    for i, hits in enumerate(response["results"]):
        assert [h["id"] for h in hits] == sample.ids[rows_of[i]].tolist()
        assert [h["label"] for h in hits] == sample.labels[rows_of[i]].tolist()
        np.testing.assert_allclose([h["distance"] for h in hits], distances[i], atol=1e-5)


def test_rebuilding_identical_data_writes_no_new_buckets_and_links_the_parent(
    s3: Any, build_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    first = build_handler.lambda_handler(load_event("build_inline.json"), lambda_context)

    second = build_handler.lambda_handler(
        {**load_event("build_inline.json"), "replace": True}, lambda_context
    )

    assert second["version"] != first["version"]
    assert second["buckets"] == first["buckets"]
    assert second["buckets_written"] == 0  # content-addressed: same bytes, same keys
    assert_published(s3, second)
    manifest = read_manifest(s3, second["manifest"])
    assert manifest.parent == first["version"]
    # the previous version stays readable for pinned queries
    assert read(s3, first["manifest"])


def test_build_under_index_prefix_writes_only_below_the_prefix(
    s3: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INDEX_PREFIX", "indexes/v1/")

    response = build_handler.lambda_handler(load_event("build_inline.json"), lambda_context)

    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=INDEX).get("Contents", [])]
    assert keys
    assert all(k.startswith("indexes/v1/tiny/") for k in keys)
    assert_published(s3, response, prefix="indexes/v1/")
    found = query_handler.lambda_handler(load_event("query_tiny.json"), lambda_context)
    assert found["version"] == response["version"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"metric": "l2", "bucket_size": 2}, {"metric": "l2", "bucket_size": 2}),
        ({"metric": "ip", "split": "random", "projection": "none"}, {"metric": "ip", "split": "random"}),
        ({"dtype": "float16", "max_depth": 1, "seed": 7}, {"dtype": "float16", "max_depth": 1, "seed": 7}),
    ],
    ids=["l2", "ip-random-axes", "float16-shallow"],
)
def test_build_options_from_the_event_are_recorded_in_the_response(
    s3: Any,
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    options: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    event = {**load_event("build_inline.json"), **options}

    response = build_handler.lambda_handler(event, lambda_context)

    assert expected.items() <= response["params"].items()
    if "max_depth" in options:
        assert response["buckets"] <= 2 ** options["max_depth"]
    assert_published(s3, response)


def test_a_build_event_over_an_existing_collection_needs_replace_or_expected_version(
    s3: Any, build_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    first = build_handler.lambda_handler(load_event("build_inline.json"), lambda_context)
    before = {o["Key"] for o in s3.list_objects_v2(Bucket=INDEX).get("Contents", [])}

    with pytest.raises(Conflict, match=r'"replace": true or "expected_version"'):
        build_handler.lambda_handler({**load_event("build_inline.json"), "metric": "l2"}, lambda_context)

    assert {o["Key"] for o in s3.list_objects_v2(Bucket=INDEX).get("Contents", [])} == before
    pinned = {**load_event("build_inline.json"), "expected_version": first["version"]}
    assert build_handler.lambda_handler(pinned, lambda_context)["version"] != first["version"]


@pytest.mark.parametrize(
    ("event_file", "field"), [("build_npy.json", "source.vectors"), ("build_jsonl.json", "source.jsonl")]
)
def test_a_collection_the_function_cannot_hold_is_refused_naming_the_state_machine(
    s3: Any,
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
    event_file: str,
    field: str,
) -> None:
    upload_sample(s3)
    small = copy.copy(lambda_context)
    small.memory_limit_in_mb = 180  # (0.9 × 180 − 157) MB / 2.07 ≈ 2.5 MB of float32: a few thousand rows

    with pytest.raises(InvalidRequest) as refused:
        build_handler.lambda_handler(load_event(event_file), small)

    assert refused.value.field == field
    assert "state machine" in str(refused.value)
    assert not s3.list_objects_v2(Bucket=local.INDEX_BUCKET).get("Contents")  # nothing written
