"""Damaged objects in S3 make a query fail loudly, naming the object — never answer wrongly.

Every case alters the stored index behind the library's back (overwrite, truncate, delete,
swap, forge) and then runs a cold query that probes every bucket, so the damaged object is
certainly read.
"""

from __future__ import annotations

import dataclasses
import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import CorruptObject, layout
from kdbuckets.bucket import IdColumn, decode_bucket, encode_bucket
from kdbuckets.codec import fingerprint
from kdbuckets.manifest import decode_head, encode_head, encode_manifest
from tests.conftest import read_manifest

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

INDEX = local.INDEX_BUCKET
HEAD_KEY = layout.head_key(local.COLLECTION)


@pytest.fixture
def demo(s3: Any, demo_index: Any) -> dict[str, Any]:
    """The sample built into a handful of buckets."""
    return demo_index(s3, bucket_size=400)


@pytest.fixture
def run_query(demo: dict[str, Any], query_handler: ModuleType, lambda_context: Any, load_event: Any) -> Any:
    """A cold query (fresh container) that probes every bucket of the demo collection."""
    event = {**load_event("query_batch.json"), "probes": demo["buckets"]}

    def run() -> dict[str, Any]:
        query_handler._searcher = None
        return query_handler.lambda_handler(event, lambda_context)

    return run


def get(s3: Any, key: str) -> bytes:
    return s3.get_object(Bucket=INDEX, Key=key)["Body"].read()


def put(s3: Any, key: str, body: bytes) -> None:
    s3.put_object(Bucket=INDEX, Key=key, Body=body)


def bucket_keys(s3: Any, demo: dict[str, Any]) -> list[str]:
    manifest = read_manifest(s3, demo["manifest"])
    return [layout.bucket_key(local.COLLECTION, fp) for fp in manifest.buckets.fingerprints]


def flip_byte(body: bytes, at: int) -> bytes:
    return body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


def reencoded_with_other_vectors(body: bytes, key: str) -> bytes:
    """A perfectly valid bucket with the same ids and shape but different vectors."""
    bucket = decode_bucket(body, key=key)
    vectors = np.roll(bucket.vectors, 1, axis=0)
    return encode_bucket(vectors, IdColumn.from_values(bucket.ids.to_numpy()), bucket.labels)


# --------------------------------------------------------------------------- buckets
BUCKET_DAMAGE = {
    "one-bit-flipped": lambda body, key, other: flip_byte(body, len(body) // 2),
    "truncated": lambda body, key, other: body[: len(body) // 2],
    "emptied": lambda body, key, other: b"",
    "swapped-with-another-bucket": lambda body, key, other: other,
    "valid-bucket-with-other-vectors": lambda body, key, other: reencoded_with_other_vectors(body, key),
}


@pytest.mark.parametrize("damage", list(BUCKET_DAMAGE))
def test_altered_bucket_raises_corrupt_object_naming_its_key(
    s3: Any, demo: dict[str, Any], run_query: Any, damage: str
) -> None:
    keys = bucket_keys(s3, demo)
    victim, other = keys[1], keys[0]
    put(s3, victim, BUCKET_DAMAGE[damage](get(s3, victim), victim, get(s3, other)))

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert victim in str(excinfo.value)
    assert excinfo.value.key.endswith(victim)


def test_deleted_bucket_raises_corrupt_object_naming_its_key(
    s3: Any, demo: dict[str, Any], run_query: Any
) -> None:
    victim = bucket_keys(s3, demo)[-1]
    s3.delete_object(Bucket=INDEX, Key=victim)

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert victim in str(excinfo.value)
    assert "missing" in str(excinfo.value)


def test_a_repaired_bucket_serves_the_original_answer_again(
    s3: Any, demo: dict[str, Any], run_query: Any
) -> None:
    expected = run_query()
    victim = bucket_keys(s3, demo)[0]
    original = get(s3, victim)
    put(s3, victim, flip_byte(original, len(original) - 1))
    with pytest.raises(CorruptObject):
        run_query()

    put(s3, victim, original)

    assert run_query()["results"] == expected["results"]


def test_bucket_disagreeing_with_a_consistently_forged_manifest_is_refused(
    s3: Any, demo: dict[str, Any], run_query: Any
) -> None:
    """Even when manifest and HEAD agree with each other, a bucket's shape is cross-checked."""
    key = demo["manifest"]
    manifest = read_manifest(s3, key)
    rows = manifest.buckets.rows.copy()
    rows[0] += 1
    forged = encode_manifest(
        dataclasses.replace(manifest, buckets=dataclasses.replace(manifest.buckets, rows=rows))
    )
    put(s3, key, forged)
    put(s3, HEAD_KEY, encode_head(manifest.version, key, fingerprint(forged)))

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert layout.bucket_key(local.COLLECTION, manifest.buckets.fingerprints[0]) in str(excinfo.value)


# --------------------------------------------------------------------------- manifest
@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda body: flip_byte(body, len(body) // 3), id="one-bit-flipped"),
        pytest.param(lambda body: body[:-10], id="truncated"),
        pytest.param(lambda body: b"", id="emptied"),
        pytest.param(lambda body: b'{"format": "kdbuckets/manifest"}', id="replaced-by-json"),
    ],
)
def test_altered_manifest_raises_corrupt_object_naming_its_key(
    s3: Any, demo: dict[str, Any], run_query: Any, damage: Any
) -> None:
    key = demo["manifest"]
    put(s3, key, damage(get(s3, key)))

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert key in str(excinfo.value)


def test_manifest_replaced_by_another_valid_version_is_refused(
    s3: Any,
    demo: dict[str, Any],
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    run_query: Any,
) -> None:
    other = build_handler.lambda_handler(
        {**load_event("build_npy.json"), "bucket_size": 300, "replace": True}, lambda_context
    )
    assert other["version"] != demo["version"]
    # HEAD is set back to the first version, whose manifest now holds the second's bytes
    head_of_first = encode_head(demo["version"], demo["manifest"], fingerprint(get(s3, demo["manifest"])))
    put(s3, HEAD_KEY, head_of_first)
    put(s3, demo["manifest"], get(s3, other["manifest"]))

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert demo["manifest"] in str(excinfo.value)


def test_manifest_copied_from_another_collection_is_refused(
    s3: Any,
    demo: dict[str, Any],
    build_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    run_query: Any,
) -> None:
    tiny = build_handler.lambda_handler(load_event("build_inline.json"), lambda_context)
    body = get(s3, tiny["manifest"])
    key = layout.manifest_key(local.COLLECTION, tiny["version"])
    put(s3, key, body)
    put(s3, HEAD_KEY, encode_head(tiny["version"], key, fingerprint(body)))

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert key in str(excinfo.value)


# --------------------------------------------------------------------------- HEAD
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\x00\xffgarbage", id="binary-garbage"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"hello": "world"}', id="json-but-not-a-head"),
        pytest.param(b'["kdbuckets/head"]', id="json-list"),
        pytest.param(
            json.dumps({"format": "kdbuckets/head", "format_version": 1, "version": "../../x"}).encode(),
            id="head-with-a-path-as-version",
        ),
    ],
)
def test_garbage_head_raises_corrupt_object_naming_head(
    s3: Any, demo: dict[str, Any], run_query: Any, body: bytes
) -> None:
    put(s3, HEAD_KEY, body)

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert HEAD_KEY in str(excinfo.value)


def test_head_with_a_wrong_manifest_checksum_is_refused(
    s3: Any, demo: dict[str, Any], run_query: Any
) -> None:
    put(s3, HEAD_KEY, encode_head(demo["version"], demo["manifest"], "0" * 64))

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert demo["manifest"] in str(excinfo.value)


def test_head_pointing_to_a_garbage_manifest_is_refused(
    s3: Any, demo: dict[str, Any], run_query: Any
) -> None:
    garbage = b"\x93\x01\x02\x03 not a manifest"
    key = layout.manifest_key(local.COLLECTION, "forged-version")
    put(s3, key, garbage)
    put(s3, HEAD_KEY, encode_head("forged-version", key, fingerprint(garbage)))

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert key in str(excinfo.value)


def test_head_pointing_to_a_missing_manifest_is_corrupt_not_missing(
    s3: Any, demo: dict[str, Any], run_query: Any
) -> None:
    s3.delete_object(Bucket=INDEX, Key=demo["manifest"])

    with pytest.raises(CorruptObject) as excinfo:
        run_query()

    assert demo["manifest"] in str(excinfo.value) or HEAD_KEY in str(excinfo.value)


def test_corrupt_head_is_reported_by_head_decoding_not_by_a_later_step(
    s3: Any, demo: dict[str, Any], run_query: Any
) -> None:
    """The HEAD document is parsed strictly: a readable, well-formed copy still works."""
    head = decode_head(get(s3, HEAD_KEY), key=HEAD_KEY)
    put(s3, HEAD_KEY, encode_head(head.version, head.manifest_key, head.sha256))

    assert run_query()["version"] == demo["version"]
