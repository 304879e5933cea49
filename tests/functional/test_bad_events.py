"""Invalid events are refused with a typed error naming the field, and nothing is written.

Every case runs through the Lambda handler with a snapshot of the index bucket (keys and
ETags) taken before and after: a refused request must leave S3 exactly as it was. Cases
cover the committed ``events/bad_*.json`` and inline variants of the valid events.

The last tests pin how failures the library does not anticipate are reported: as
:class:`InternalError` naming the request id, never with the text of the underlying error.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from botocore.awsrequest import AWSResponse

from devtools import local
from kdbuckets import (
    CollectionNotFound,
    InvalidRequest,
    ObjectStore,
    SourceError,
    StorageError,
    service,
    storage,
)
from kdbuckets.errors import InternalError

pytestmark = [
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

EVENTS = Path(__file__).resolve().parents[2] / "events"
SRC = f"s3://{local.SOURCE_BUCKET}/bad/"
TINY_QUERY = {"collection": "tiny", "vectors": [[0.85, 0.15, 0.05, 0.0]], "k": 3, "probes": 2}


@pytest.fixture(scope="module")
def world(module_s3: Any, sample: local.Sample) -> dict[str, Any]:
    """Collections to be wrong about, built once per module (refused requests change nothing).

    "tiny" (4-d, labelled), "demo" (384-d, labelled), "plain" (4-d, unlabelled), and objects
    in the *source* bucket that a build must refuse to read.
    """
    store = ObjectStore(local.INDEX_BUCKET)
    service.build(json.loads((EVENTS / "build_inline.json").read_text()), store)
    demo_items = [
        {"id": str(i), "vector": v.tolist(), "label": str(lab)}
        for i, v, lab in zip(sample.ids[:60], sample.vectors[:60], sample.labels[:60], strict=True)
    ]
    service.build({"collection": local.COLLECTION, "source": {"items": demo_items}, "bucket_size": 20}, store)
    plain_items = [{"id": i, "vector": [1.0, float(i), 0.5, 0.25]} for i in range(10)]
    service.build({"collection": "plain", "source": {"items": plain_items}}, store)
    for name, body in bad_source_objects().items():
        module_s3.put_object(Bucket=local.SOURCE_BUCKET, Key=f"bad/{name}", Body=body)
    return {"s3": module_s3}


def assert_refused(
    handler: ModuleType,
    event: Any,
    context: Any,
    s3: Any,
    snapshot: Any,
    error: type[Exception],
    field: str,
) -> Exception:
    """The handler raises ``error`` naming ``field``; the index bucket is unchanged."""
    before = snapshot(s3)
    with pytest.raises(error) as excinfo:
        handler.lambda_handler(event, context)
    assert snapshot(s3) == before, "a refused request wrote to the index bucket"
    exc = excinfo.value
    assert field in str(exc), f"{field!r} not named in {str(exc)!r}"
    if isinstance(exc, InvalidRequest):
        assert exc.field == field
        assert str(exc).startswith(f"{field} ")
    return exc


# --------------------------------------------------------------------------- committed events
@pytest.mark.parametrize(
    ("name", "error", "field"),
    [
        ("bad_query_k_zero.json", InvalidRequest, "k"),
        ("bad_query_non_numeric.json", InvalidRequest, "vectors[0][1]"),
        ("bad_query_unknown_collection.json", CollectionNotFound, "no-such-collection"),
        ("bad_query_unknown_mode.json", InvalidRequest, "mode"),
        ("bad_query_wrong_dimension.json", InvalidRequest, "vectors[0]"),
    ],
)
def test_committed_bad_query_event_is_refused_naming_the_field(
    world: dict[str, Any],
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    index_snapshot: Any,
    name: str,
    error: type[Exception],
    field: str,
) -> None:
    exc = assert_refused(
        query_handler, load_event(name), lambda_context, world["s3"], index_snapshot, error, field
    )
    if name == "bad_query_wrong_dimension.json":
        assert "3 dimensions" in str(exc)
        assert "384" in str(exc)


@pytest.mark.parametrize(
    ("name", "error", "field"),
    [
        ("bad_build_malformed_uri.json", InvalidRequest, "source.vectors"),
        ("bad_build_missing_collection.json", InvalidRequest, "collection"),
        ("bad_build_missing_source_object.json", SourceError, "source.vectors"),
    ],
)
def test_committed_bad_build_event_is_refused_naming_the_field(
    world: dict[str, Any],
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    index_snapshot: Any,
    name: str,
    error: type[Exception],
    field: str,
) -> None:
    exc = assert_refused(
        build_handler, load_event(name), lambda_context, world["s3"], index_snapshot, error, field
    )
    if name == "bad_build_missing_source_object.json":
        assert "missing.npy" in str(exc)


# --------------------------------------------------------------------------- query variants
NAN, INF = float("nan"), float("inf")

QUERY_CASES = [
    # the collection
    pytest.param({"collection": None}, InvalidRequest, "collection", id="collection-null"),
    pytest.param({"collection": 5}, InvalidRequest, "collection", id="collection-not-a-string"),
    pytest.param({"collection": "../tiny"}, InvalidRequest, "collection", id="collection-path-traversal"),
    pytest.param({"collection": "a/b"}, InvalidRequest, "collection", id="collection-with-slash"),
    pytest.param({"collection": "nope"}, CollectionNotFound, "nope", id="unknown-collection"),
    # the vectors
    pytest.param({"vectors": [[0.1, NAN, 0.3, 0.4]]}, InvalidRequest, "vectors[0]", id="nan"),
    pytest.param({"vectors": [[0.1, 0.2, 0.3, 0.4], [INF, 0, 0, 0]]}, InvalidRequest, "vectors[1]", id="inf"),
    pytest.param({"vectors": [[0.1, -INF, 0.3, 0.4]]}, InvalidRequest, "vectors[0]", id="minus-inf"),
    pytest.param(
        {"vectors": [[0.1, 1e39, 0.3, 0.4]]}, InvalidRequest, "vectors[0][1]", id="overflows-float32"
    ),
    pytest.param({"vectors": [[0.1, 10**40, 0.3, 0.4]]}, InvalidRequest, "vectors[0][1]", id="huge-integer"),
    pytest.param({"vectors": []}, InvalidRequest, "vectors", id="empty-vector-list"),
    pytest.param({"vectors": [[]]}, InvalidRequest, "vectors[0]", id="empty-vector"),
    pytest.param({"vectors": "0.1,0.2"}, InvalidRequest, "vectors", id="vectors-a-string"),
    pytest.param({"vectors": [0.1, 0.2, 0.3, 0.4]}, InvalidRequest, "vectors[0]", id="flat-list"),
    pytest.param(
        {"vectors": [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3]]}, InvalidRequest, "vectors[1]", id="ragged"
    ),
    pytest.param(
        {"vectors": [[0.1, 0.2, 0.3, 0.4, 0.5]]}, InvalidRequest, "vectors[0]", id="wrong-dimension"
    ),
    pytest.param({"vectors": [[0.1, None, 0.3, 0.4]]}, InvalidRequest, "vectors[0][1]", id="null-value"),
    pytest.param(
        {"vectors": [[0.1, True, 0.3, 0.4]]}, InvalidRequest, "vectors[0][1]", id="bool-among-numbers"
    ),
    pytest.param({"vectors": [[0.1, "0.2", 0.3, 0.4]]}, InvalidRequest, "vectors[0][1]", id="numeric-string"),
    pytest.param({"vectors": [[0.1, [0.2], 0.3, 0.4]]}, InvalidRequest, "vectors[0][1]", id="nested-list"),
    pytest.param(
        {"vectors": [[0.1, {"x": 1}, 0.3, 0.4]]}, InvalidRequest, "vectors[0][1]", id="object-value"
    ),
    pytest.param({"vectors": [[0.0, 0.0, 0.0, 0.0]]}, InvalidRequest, "vectors[0]", id="zero-vector-cosine"),
    pytest.param(
        {"vectors": [[0.1, 0.2, 0.3, 0.4]] * 1001}, InvalidRequest, "vectors", id="too-many-vectors"
    ),
    # k and probes
    pytest.param({"k": 0}, InvalidRequest, "k", id="k-zero"),
    pytest.param({"k": -1}, InvalidRequest, "k", id="k-negative"),
    pytest.param({"k": 1001}, InvalidRequest, "k", id="k-above-limit"),
    pytest.param({"k": 10**12}, InvalidRequest, "k", id="k-absurd"),
    pytest.param({"k": 2.5}, InvalidRequest, "k", id="k-float"),
    pytest.param({"k": "5"}, InvalidRequest, "k", id="k-string"),
    pytest.param({"k": True}, InvalidRequest, "k", id="k-bool"),
    pytest.param({"k": None}, InvalidRequest, "k", id="k-null"),
    pytest.param({"probes": 0}, InvalidRequest, "probes", id="probes-zero"),
    pytest.param({"probes": -3}, InvalidRequest, "probes", id="probes-negative"),
    pytest.param({"probes": 4097}, InvalidRequest, "probes", id="probes-above-limit"),
    pytest.param({"probes": 10**12}, InvalidRequest, "probes", id="probes-absurd"),
    pytest.param({"probes": 1.5}, InvalidRequest, "probes", id="probes-float"),
    pytest.param({"probes": "8"}, InvalidRequest, "probes", id="probes-string"),
    # mode, version, ranking, unknown fields
    pytest.param({"mode": "cluster"}, InvalidRequest, "mode", id="mode-unknown"),
    pytest.param({"mode": ""}, InvalidRequest, "mode", id="mode-empty"),
    pytest.param({"mode": 1}, InvalidRequest, "mode", id="mode-number"),
    pytest.param({"version": "../HEAD"}, InvalidRequest, "version", id="version-path"),
    pytest.param(
        {"version": "20990101T000000000000Z-00000000"}, CollectionNotFound, "20990101", id="no-version"
    ),
    pytest.param({"ranking": "magic"}, InvalidRequest, "ranking", id="ranking-unknown"),
    pytest.param({"kk": 3}, InvalidRequest, "kk", id="unknown-field"),
    pytest.param(
        {"collection": "plain", "mode": "classify"}, InvalidRequest, "mode", id="classify-unlabelled"
    ),
]


@pytest.mark.parametrize(("change", "error", "field"), QUERY_CASES)
def test_invalid_query_is_refused_naming_the_field(
    world: dict[str, Any],
    query_handler: ModuleType,
    lambda_context: Any,
    index_snapshot: Any,
    change: dict[str, Any],
    error: type[Exception],
    field: str,
) -> None:
    event = {**TINY_QUERY, **change}
    event = {k: v for k, v in event.items() if not (k == "collection" and v is None)}
    expected_field = "collection" if change.get("collection", "") is None else field

    assert_refused(query_handler, event, lambda_context, world["s3"], index_snapshot, error, expected_field)


@pytest.mark.parametrize("event", [[], "tiny", None, 42], ids=["list", "string", "null", "number"])
def test_query_event_that_is_not_an_object_is_refused(
    world: dict[str, Any], query_handler: ModuleType, lambda_context: Any, index_snapshot: Any, event: Any
) -> None:
    assert_refused(query_handler, event, lambda_context, world["s3"], index_snapshot, InvalidRequest, "event")


def test_nan_query_reaches_the_handler_as_python_json_parses_it(
    world: dict[str, Any], query_handler: ModuleType, lambda_context: Any, index_snapshot: Any
) -> None:
    """Python's json module (the Lambda runtime's) accepts the non-standard NaN literal."""
    event = json.loads('{"collection": "tiny", "vectors": [[0.1, 0.2, NaN, 0.4]]}')
    assert math.isnan(event["vectors"][0][2])

    exc = assert_refused(
        query_handler, event, lambda_context, world["s3"], index_snapshot, InvalidRequest, "vectors[0]"
    )
    assert "NaN" in str(exc)


# --------------------------------------------------------------------------- build variants
def items(n: int = 8, dim: int = 4) -> list[dict[str, Any]]:
    rng = np.random.default_rng(3)
    return [
        {"id": f"item-{i}", "vector": rng.normal(size=dim).tolist(), "label": "ab"[i % 2]} for i in range(n)
    ]


def with_item(index: int, **fields: Any) -> dict[str, Any]:
    rows = items()
    rows[index] = {**rows[index], **fields}
    return {"items": rows}


BUILD_CASES = [
    # envelope and options
    pytest.param({"collection": "a/b"}, InvalidRequest, "collection", id="collection-with-slash"),
    pytest.param({"collection": ""}, InvalidRequest, "collection", id="collection-empty"),
    pytest.param({"collection": "../tiny"}, InvalidRequest, "collection", id="collection-path-traversal"),
    pytest.param({"collection": ["tiny"]}, InvalidRequest, "collection", id="collection-a-list"),
    pytest.param({"metric": "hamming"}, InvalidRequest, "metric", id="metric-unknown"),
    pytest.param({"metric": 2}, InvalidRequest, "metric", id="metric-number"),
    pytest.param({"bucket_size": 0}, InvalidRequest, "bucket_size", id="bucket-size-zero"),
    pytest.param({"bucket_size": -5}, InvalidRequest, "bucket_size", id="bucket-size-negative"),
    pytest.param({"bucket_size": 10**12}, InvalidRequest, "bucket_size", id="bucket-size-absurd"),
    pytest.param({"bucket_size": 2.5}, InvalidRequest, "bucket_size", id="bucket-size-float"),
    pytest.param({"bucket_size": "10"}, InvalidRequest, "bucket_size", id="bucket-size-string"),
    pytest.param({"max_depth": -1}, InvalidRequest, "max_depth", id="max-depth-negative"),
    pytest.param({"max_depth": 65}, InvalidRequest, "max_depth", id="max-depth-above-limit"),
    pytest.param({"seed": -1}, InvalidRequest, "seed", id="seed-negative"),
    pytest.param({"seed": 2**32}, InvalidRequest, "seed", id="seed-too-large"),
    pytest.param({"split": "median"}, InvalidRequest, "split", id="split-unknown"),
    pytest.param({"projection": "umap"}, InvalidRequest, "projection", id="projection-unknown"),
    pytest.param({"dtype": "int8"}, InvalidRequest, "dtype", id="dtype-unknown"),
    pytest.param({"bucketsize": 10}, InvalidRequest, "bucketsize", id="unknown-field"),
    # source shape
    pytest.param({"source": None}, InvalidRequest, "source", id="source-null"),
    pytest.param(
        {"source": "s3://kdbuckets-demo-source/demo/vectors.npy"}, InvalidRequest, "source", id="source-str"
    ),
    pytest.param({"source": {}}, InvalidRequest, "source", id="source-empty"),
    pytest.param(
        {"source": {"items": items(), "jsonl": SRC + "x.jsonl"}}, InvalidRequest, "source", id="two-sources"
    ),
    # inline items
    pytest.param({"source": {"items": "abc"}}, InvalidRequest, "source.items", id="items-a-string"),
    pytest.param({"source": {"items": []}}, InvalidRequest, "source.items", id="items-empty"),
    pytest.param({"source": {"items": [[0.1, 0.2]]}}, InvalidRequest, "source.items[0]", id="item-a-list"),
    pytest.param(
        {"source": with_item(2, vector=None)}, InvalidRequest, "source.items[2].vector", id="vector-null"
    ),
    pytest.param(
        {"source": {"items": [{"id": "x", "label": "a"}]}},
        InvalidRequest,
        "source.items[0].vector",
        id="no-vector",
    ),
    pytest.param(
        {"source": with_item(1, colour="red")}, InvalidRequest, "source.items[1]", id="item-extra-field"
    ),
    pytest.param(
        {"source": with_item(3, vector=[0.1, NAN, 0.3, 0.4])}, InvalidRequest, "source.items[3]", id="nan"
    ),
    pytest.param(
        {"source": with_item(4, vector=[INF, 0.1, 0.3, 0.4])}, InvalidRequest, "source.items[4]", id="inf"
    ),
    pytest.param(
        {"source": with_item(5, vector=[1e39, 0.1, 0.3, 0.4])},
        InvalidRequest,
        "source.items[5].vector[0]",
        id="1e39",
    ),
    pytest.param(
        {"source": with_item(1, vector=["a", 0.1, 0.3, 0.4])},
        InvalidRequest,
        "source.items[1].vector[0]",
        id="non-numeric",
    ),
    pytest.param(
        {"source": with_item(2, vector=[0.1, False, 0.3, 0.4])},
        InvalidRequest,
        "source.items[2].vector[1]",
        id="bool-among-numbers",
    ),
    pytest.param(
        {"source": with_item(6, vector=[0.1, 0.2, 0.3])},
        InvalidRequest,
        "source.items[6].vector",
        id="ragged",
    ),
    pytest.param(
        {"source": with_item(0, vector=[0.0, 0.0, 0.0, 0.0])},
        InvalidRequest,
        "source.items[0]",
        id="zero-vector",
    ),
    pytest.param(
        {"source": {"items": [{"id": 1, "vector": [0.5] * 4097}]}},
        InvalidRequest,
        "source.items",
        id="too-wide",
    ),
    pytest.param(
        {"source": with_item(2, id="item-0")}, InvalidRequest, "source.items[].id", id="duplicate-ids"
    ),
    pytest.param({"source": with_item(2, id=7)}, InvalidRequest, "source.items[].id", id="mixed-id-types"),
    pytest.param({"source": with_item(2, id=1.5)}, InvalidRequest, "source.items[2].id", id="float-id"),
    pytest.param({"source": with_item(2, id=True)}, InvalidRequest, "source.items[2].id", id="bool-id"),
    pytest.param(
        {"source": with_item(3, label=None)}, InvalidRequest, "source.items[3].label", id="label-missing"
    ),
    pytest.param(
        {"source": with_item(3, label=["a"])}, InvalidRequest, "source.items[3].label", id="label-a-list"
    ),
    # S3 sources named by URI
    pytest.param({"source": {"vectors": "s3://"}}, InvalidRequest, "source.vectors", id="uri-no-bucket"),
    pytest.param(
        {"source": {"vectors": "s3://bucket-only"}}, InvalidRequest, "source.vectors", id="uri-no-key"
    ),
    pytest.param(
        {"source": {"vectors": "s3://Bad_Bucket/v.npy"}},
        InvalidRequest,
        "source.vectors",
        id="uri-bad-bucket",
    ),
    pytest.param({"source": {"vectors": 17}}, InvalidRequest, "source.vectors", id="uri-a-number"),
    pytest.param(
        {"source": {"vectors": SRC + "vectors.npy", "ids": "ftp://x/ids.npy"}},
        InvalidRequest,
        "source.ids",
        id="bad-ids-uri",
    ),
    pytest.param(
        {"source": {"jsonl": "items.jsonl"}}, InvalidRequest, "source.jsonl", id="jsonl-uri-relative"
    ),
    pytest.param(
        {"source": {"vectors": SRC + "absent.npy"}}, SourceError, "source.vectors", id="vectors-missing"
    ),
    pytest.param(
        {"source": {"vectors": SRC + "vectors.npy", "ids": SRC + "absent.npy"}},
        SourceError,
        "source.ids",
        id="ids-missing",
    ),
    pytest.param(
        {"source": {"jsonl": SRC + "absent.jsonl"}}, SourceError, "source.jsonl", id="jsonl-missing"
    ),
    pytest.param({"source": {"vectors": SRC + "text.npy"}}, SourceError, "source.vectors", id="not-a-npy"),
    pytest.param(
        {"source": {"vectors": SRC + "empty.npy"}}, SourceError, "source.vectors", id="empty-object"
    ),
    pytest.param(
        {"source": {"vectors": SRC + "pickled.npy"}}, SourceError, "source.vectors", id="pickled-npy"
    ),
    pytest.param(
        {"source": {"vectors": SRC + "truncated.npy"}}, SourceError, "source.vectors", id="truncated-npy"
    ),
    pytest.param(
        {"source": {"vectors": SRC + "flat.npy"}}, InvalidRequest, "source.vectors", id="one-dimensional"
    ),
    pytest.param(
        {"source": {"vectors": SRC + "nan.npy"}}, InvalidRequest, "source.vectors[7]", id="nan-in-npy"
    ),
    pytest.param(
        {"source": {"vectors": SRC + "vectors.npy", "ids": SRC + "short_ids.npy"}},
        InvalidRequest,
        "source.ids",
        id="ids-wrong-length",
    ),
    pytest.param(
        {"source": {"vectors": SRC + "vectors.npy", "labels": SRC + "short_ids.npy"}},
        InvalidRequest,
        "source.labels",
        id="labels-wrong-length",
    ),
    pytest.param(
        {"source": {"vectors": SRC + "vectors.npy", "label_names": SRC + "names.json"}},
        InvalidRequest,
        "source.label_names",
        id="label-names-without-labels",
    ),
    pytest.param(
        {"source": {"jsonl": SRC + "broken.jsonl"}}, SourceError, "source.jsonl", id="jsonl-bad-line"
    ),
    pytest.param(
        {"source": {"jsonl": SRC + "broken.jsonl.gz"}}, SourceError, "source.jsonl", id="jsonl-bad-gzip"
    ),
    pytest.param(
        {"source": {"jsonl": SRC + "lists.jsonl"}}, InvalidRequest, "source.jsonl[1]", id="jsonl-not-objects"
    ),
]


def npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def bad_source_objects() -> dict[str, bytes]:
    """Source objects a build must refuse to read, by name under s3://<source>/bad/."""
    vectors = np.random.default_rng(5).normal(size=(20, 4)).astype(np.float32)
    with_nan = vectors.copy()
    with_nan[7, 2] = np.nan
    return {
        "vectors.npy": npy(vectors),
        "text.npy": b"id,vector\n1,0.5\n",
        "empty.npy": b"",
        "pickled.npy": npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
        "truncated.npy": npy(vectors)[:-40],
        "flat.npy": npy(vectors[0]),
        "nan.npy": npy(with_nan),
        "short_ids.npy": npy(np.arange(19)),
        "names.json": json.dumps({"0": "a"}).encode(),
        "broken.jsonl": b'{"id": 1, "vector": [0.1, 0.2]}\n{"id": 2, "vector": [0.1,\n',
        "broken.jsonl.gz": b"\x1f\x8b" + b"not really gzip",
        "lists.jsonl": gzip.compress(b'{"id": 1, "vector": [0.1, 0.2]}\n[2, [0.1, 0.2]]\n'),
    }


@pytest.mark.parametrize(("change", "error", "field"), BUILD_CASES)
def test_invalid_build_is_refused_naming_the_field(
    world: dict[str, Any],
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    index_snapshot: Any,
    change: dict[str, Any],
    error: type[Exception],
    field: str,
) -> None:
    event = {**load_event("build_inline.json"), **change}  # collection "tiny" exists: HEAD must stay
    event = {k: v for k, v in event.items() if v is not None}

    assert_refused(build_handler, event, lambda_context, world["s3"], index_snapshot, error, field)


def test_build_without_a_source_is_refused(
    world: dict[str, Any], build_handler: ModuleType, lambda_context: Any, index_snapshot: Any
) -> None:
    assert_refused(
        build_handler,
        {"collection": "tiny"},
        lambda_context,
        world["s3"],
        index_snapshot,
        InvalidRequest,
        "source",
    )


def test_misspelt_source_field_is_refused_naming_it(
    world: dict[str, Any],
    build_handler: ModuleType,
    lambda_context: Any,
    index_snapshot: Any,
) -> None:
    event = {
        "collection": "typo",
        "source": {"vectors": SRC + "vectors.npy", "lables": SRC + "short_ids.npy"},
    }

    assert_refused(
        build_handler, event, lambda_context, world["s3"], index_snapshot, InvalidRequest, "source.lables"
    )


# --------------------------------------------------------------------------- write variants
def upsert(collection: str, *rows: dict[str, Any]) -> dict[str, Any]:
    return {"collection": collection, "operation": "upsert", "items": list(rows)}


V4 = [0.5, 0.25, 0.125, 1.0]
WRITE_CASES = [
    # the envelope: one model per operation
    pytest.param({"collection": "tiny", "operation": "purge"}, "operation", id="unknown-operation"),
    pytest.param({"collection": "tiny"}, "operation", id="no-operation"),
    pytest.param({"collection": "tiny", "operation": "compact", "ids": ["a"]}, "ids", id="ids-on-compact"),
    pytest.param({"collection": "tiny", "operation": "describe"}, "version", id="describe-without-version"),
    pytest.param(
        {"collection": "tiny", "operation": "rollback", "version": "../HEAD"}, "version", id="rollback-path"
    ),
    pytest.param({"collection": "tiny", "operation": "gc", "keep_last": 0}, "keep_last", id="keep-last-zero"),
    pytest.param({"collection": "../tiny", "operation": "versions"}, "collection", id="collection-path"),
    # ids: what used to overwrite or delete the wrong vector
    pytest.param(upsert("plain", {"vector": V4}), "items[0].id", id="upsert-without-id"),
    pytest.param(
        upsert("plain", {"id": 3, "vector": V4}, {"id": 3, "vector": V4}), "items[1].id", id="upsert-id-twice"
    ),
    pytest.param(
        upsert("tiny", {"id": "sport-1\x00", "vector": V4, "label": "sports"}),
        "items[0].id",
        id="upsert-id-with-trailing-nul",
    ),
    pytest.param(
        {"collection": "tiny", "operation": "delete", "ids": ["sport-1\x00"]},
        "ids[0]",
        id="delete-trailing-nul",
    ),
    pytest.param(
        {"collection": "tiny", "operation": "delete", "ids": ["sport-1", 7]}, "ids[1]", id="delete-mixed-ids"
    ),
    pytest.param(upsert("plain", {"id": 1.5, "vector": V4}), "items[0].id", id="upsert-float-id"),
    # labels and vectors
    pytest.param(
        upsert("tiny", {"id": "n1", "vector": V4, "label": "sports"}, {"id": "n2", "vector": V4}),
        "items[1].label",
        id="upsert-mixed-labels",
    ),
    pytest.param(
        upsert("plain", {"id": 1, "vector": [0.5, "x", 0, 0]}), "items[0].vector[1]", id="vector-text"
    ),
    pytest.param(upsert("plain", {"id": 1, "vector": [0.5, 1.0]}), "items[0].vector", id="vector-wrong-dim"),
    pytest.param(
        upsert("plain", {"id": 1, "vector": V4, "colour": "red"}), "items[0].colour", id="item-extra"
    ),
]


@pytest.mark.parametrize(("event", "field"), WRITE_CASES)
def test_invalid_write_is_refused_naming_the_field(
    world: dict[str, Any],
    write_handler: ModuleType,
    lambda_context: Any,
    index_snapshot: Any,
    event: dict[str, Any],
    field: str,
) -> None:
    assert_refused(write_handler, event, lambda_context, world["s3"], index_snapshot, InvalidRequest, field)


def test_committed_bad_write_event_is_refused_naming_the_mixed_id(
    world: dict[str, Any],
    write_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    index_snapshot: Any,
) -> None:
    exc = assert_refused(
        write_handler,
        load_event("bad_write_mixed_id_types.json"),
        lambda_context,
        world["s3"],
        index_snapshot,
        InvalidRequest,
        "ids[1]",
    )
    assert "all strings or all integers" in str(exc)


# --------------------------------------------------------------------------- unexpected failures
def rebuild_tiny(load_event: Any) -> dict[str, Any]:
    """The committed build of "tiny", which the world already built: a deliberate rebuild."""
    return {**load_event("build_inline.json"), "replace": True}


def raise_runtime_error(**kwargs: Any) -> None:
    raise RuntimeError("boom: connection pool internals at 0xdeadbeef")


@pytest.mark.parametrize(
    ("handler_name", "operation"),
    [("query_handler", "GetObject"), ("build_handler", "PutObject")],
    ids=["query", "build"],
)
def test_unexpected_s3_failure_is_reported_as_internal_error_naming_the_request(
    request: pytest.FixtureRequest,
    world: dict[str, Any],
    lambda_context: Any,
    load_event: Any,
    handler_name: str,
    operation: str,
) -> None:
    handler = request.getfixturevalue(handler_name)
    event = TINY_QUERY if handler_name == "query_handler" else rebuild_tiny(load_event)
    client = storage.s3_client(storage.DEFAULT_CONCURRENCY)
    client.meta.events.register(f"before-call.s3.{operation}", raise_runtime_error)

    with pytest.raises(InternalError) as excinfo:
        handler.lambda_handler(event, lambda_context)

    message = str(excinfo.value)
    assert "RuntimeError" not in message
    assert "0xdeadbeef" not in message
    assert lambda_context.aws_request_id in message
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def deny_access(**kwargs: Any) -> tuple[AWSResponse, dict[str, Any]]:
    """Short-circuit the call with S3's 403 answer (as a bucket policy would)."""
    error = {"Code": "AccessDenied", "Message": "Access Denied"}
    response = AWSResponse("https://example.invalid", 403, {}, None)
    return response, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}


@pytest.mark.parametrize(
    ("handler_name", "operation"),
    [("query_handler", "GetObject"), ("build_handler", "PutObject")],
    ids=["query", "build"],
)
def test_denied_s3_access_is_reported_as_storage_error_naming_the_object(
    request: pytest.FixtureRequest,
    world: dict[str, Any],
    lambda_context: Any,
    load_event: Any,
    index_snapshot: Any,
    handler_name: str,
    operation: str,
) -> None:
    handler = request.getfixturevalue(handler_name)
    event = TINY_QUERY if handler_name == "query_handler" else rebuild_tiny(load_event)
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register(
        f"before-call.s3.{operation}", deny_access
    )
    before = index_snapshot(world["s3"])

    with pytest.raises(StorageError) as excinfo:
        handler.lambda_handler(event, lambda_context)

    assert index_snapshot(world["s3"]) == before
    assert "access denied" in str(excinfo.value)
    assert f"s3://{local.INDEX_BUCKET}/tiny/" in str(excinfo.value)
