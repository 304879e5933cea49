"""Sharded sources on moto S3: a prefix of shards builds exactly what one object would.

A source URI ending in ``/`` names a prefix; every ``.npy`` (with same-named ``ids``/``labels``
shards) or ``.jsonl``/``.jsonl.gz`` object under it, in key order, is one shard. The build
reads them through :class:`kdbuckets.sources.StoreReader` (ranged GETs, listings), as the
build handler does. A bad shard fails the build with an error naming its ``s3://`` URI, and
nothing reaches the index bucket.
"""

from __future__ import annotations

import gzip
import io
import json
from itertools import pairwise
from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import catalog, sources
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.errors import InvalidRequest, SourceError
from kdbuckets.manifest import Manifest
from kdbuckets.sources import StoreReader, read_source
from kdbuckets.storage import ObjectStore

SRC = local.SOURCE_BUCKET
PARAMS = BuildParams(metric="cosine", bucket_size=40, seed=3)
N, D = 600, 12


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(6, D))
    which = rng.integers(0, 6, N)
    vectors = (centres[which] + 0.3 * rng.normal(size=(N, D))).astype(np.float32)
    ids = np.array([f"doc-{i:04d}" for i in range(N)])
    labels = np.array([f"topic-{c}" for c in which])
    return vectors, ids, labels


def put(s3: Any, key: str, body: bytes) -> str:
    s3.put_object(Bucket=SRC, Key=key, Body=body)
    return f"s3://{SRC}/{key}"


def build(s3: Any, name: str, source: dict[str, Any], params: BuildParams = PARAMS) -> Manifest:
    """Read and build exactly as the build handler does (reader over the store, in place)."""
    store = ObjectStore(local.INDEX_BUCKET)
    data = read_source(source, metric=params.metric, dtype=params.dtype, reader=StoreReader(store))
    build_index(store, name, data, params, in_place=True)
    return catalog.read_live(store, name).manifest


def index_keys(s3: Any) -> list[str]:
    return [o["Key"] for o in s3.list_objects_v2(Bucket=local.INDEX_BUCKET).get("Contents", [])]


def assert_same_index(a: Manifest, b: Manifest) -> None:
    assert a.buckets.fingerprints == b.buckets.fingerprints
    assert np.array_equal(a.buckets.rows, b.buckets.rows)
    assert np.array_equal(a.buckets.centroids, b.buckets.centroids)
    assert a.id_shards == b.id_shards
    assert np.array_equal(a.tree.planes, b.tree.planes)
    assert np.array_equal(a.tree.threshold, b.tree.threshold)
    assert (a.count, a.dim, a.label_names) == (b.count, b.dim, b.label_names)
    assert a.extra["calibration"] == b.extra["calibration"]


def upload_npy_shards(s3: Any, prefix: str, bounds: list[int]) -> dict[str, str]:
    vectors, ids, labels = dataset()
    for i, (a, b) in enumerate(pairwise(bounds)):
        put(s3, f"{prefix}vectors/part-{i}.npy", npy(vectors[a:b]))
        put(s3, f"{prefix}ids/part-{i}.npy", npy(ids[a:b]))
        put(s3, f"{prefix}labels/part-{i}.npy", npy(labels[a:b]))
    return {name: f"s3://{SRC}/{prefix}{name}/" for name in ("vectors", "ids", "labels")}


# -- the same index from shards as from one object -------------------------------------------
def test_three_npy_shards_build_exactly_the_index_of_one_npy(s3: Any) -> None:
    vectors, ids, labels = dataset()
    single = {
        "vectors": put(s3, "one/vectors.npy", npy(vectors)),
        "ids": put(s3, "one/ids.npy", npy(ids)),
        "labels": put(s3, "one/labels.npy", npy(labels)),
    }
    sharded = upload_npy_shards(s3, "three/", [0, 150, 151, N])  # uneven, one 1-row shard
    put(s3, "three/vectors/_SUCCESS", b"")  # not a shard: only .npy objects are
    whole = build(s3, "whole", single)
    parts = build(s3, "parts", sharded)
    assert whole.n_buckets > 4
    assert_same_index(whole, parts)


def test_shards_are_read_in_key_order_with_chunked_ranged_reads(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tiny chunks: every shard spans many ranged GETs; key order, not upload order, is row order."""
    monkeypatch.setattr(sources, "CHUNK_BYTES", 100)
    vectors, ids, _ = dataset()
    for i in (2, 0, 1):  # uploaded out of order
        a, b = i * 200, (i + 1) * 200
        put(s3, f"ord/vectors/p{i}.npy", npy(vectors[a:b].astype(np.float16 if i == 1 else np.float64)))
        put(s3, f"ord/ids/p{i}.npy", npy(ids[a:b]))
    store = ObjectStore(local.INDEX_BUCKET)
    got = read_source(
        {"vectors": f"s3://{SRC}/ord/vectors/", "ids": f"s3://{SRC}/ord/ids/"},
        metric="l2",
        reader=StoreReader(store),
    )
    expected = np.concatenate(
        [vectors[:200].astype(np.float64), vectors[200:400].astype(np.float16), vectors[400:]]
    ).astype(np.float32)
    assert np.array_equal(got.vectors, expected)
    assert got.ids.tolist() == ids.tolist()


def jsonl_lines(vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> list[bytes]:
    return [
        json.dumps({"id": str(i), "vector": v.astype(np.float64).tolist(), "label": str(lab)}).encode()
        + b"\n"
        for i, v, lab in zip(ids, vectors, labels, strict=True)
    ]


def test_jsonl_shards_build_exactly_the_index_of_one_jsonl(s3: Any) -> None:
    lines = jsonl_lines(*dataset())
    one = put(s3, "j1/items.jsonl.gz", gzip.compress(b"".join(lines)))
    put(s3, "j3/items/a.jsonl", b"".join(lines[:100]))
    put(s3, "j3/items/b.jsonl.gz", gzip.compress(b"".join(lines[100:350])))
    put(s3, "j3/items/c.jsonl", b"\n" + b"".join(lines[350:]))  # a blank line is no item
    put(s3, "j3/items/notes.txt", b"not a shard")
    whole = build(s3, "whole", {"jsonl": one})
    parts = build(s3, "parts", {"jsonl": f"s3://{SRC}/j3/items/"})
    assert_same_index(whole, parts)


def test_jsonl_shards_without_ids_number_items_across_shards(s3: Any) -> None:
    put(s3, "n/items/0.jsonl", b'{"vector": [1, 0]}\n{"vector": [0, 1]}\n')
    put(s3, "n/items/1.jsonl", b'{"vector": [1, 1]}\n')
    store = ObjectStore(local.INDEX_BUCKET)
    got = read_source({"jsonl": f"s3://{SRC}/n/items/"}, metric="l2", reader=StoreReader(store))
    assert got.ids.tolist() == [0, 1, 2]


# -- bad shards: refused by name, nothing written ------------------------------------------------
def refused(s3: Any, source: dict[str, Any], field: str, *names: str, kind: type = SourceError) -> str:
    with pytest.raises(InvalidRequest) as info:
        build(s3, "bad", source)
    assert isinstance(info.value, kind), repr(info.value)
    assert info.value.field.startswith(field), str(info.value)
    for name in names:
        assert name in str(info.value)
    assert index_keys(s3) == []  # nothing published, no bucket uploaded
    return str(info.value)


def test_a_shard_with_another_dimension_is_refused_by_name(s3: Any) -> None:
    source = upload_npy_shards(s3, "dim/", [0, 200, 400, N])
    put(s3, "dim/vectors/part-1.npy", npy(np.ones((200, D + 1), np.float32)))
    message = refused(s3, source, "source.vectors", f"s3://{SRC}/dim/vectors/part-1.npy", "13 dimensions")
    assert f"s3://{SRC}/dim/vectors/part-0.npy" in message  # the first shard, for comparison


@pytest.mark.parametrize(
    "body", [b"not a numpy file", npy(np.ones((10, D)))[:-8]], ids=["garbage", "truncated"]
)
def test_an_unreadable_vectors_shard_is_refused_by_name(s3: Any, body: bytes) -> None:
    source = upload_npy_shards(s3, "bad/", [0, 200, 400, N])
    put(s3, "bad/vectors/part-2.npy", body)
    refused(s3, source, "source.vectors", f"s3://{SRC}/bad/vectors/part-2.npy")


@pytest.mark.parametrize("name", ["ids", "labels"])
def test_an_ids_or_labels_shard_of_another_length_is_refused_by_name(s3: Any, name: str) -> None:
    source = upload_npy_shards(s3, "len/", [0, 200, 400, N])
    put(s3, f"len/{name}/part-1.npy", npy(np.array([f"x{i}" for i in range(199)])))
    refused(s3, source, f"source.{name}", f"s3://{SRC}/len/{name}/part-1.npy", "(200,)")


def test_a_missing_ids_shard_is_refused_by_name(s3: Any) -> None:
    source = upload_npy_shards(s3, "miss/", [0, 200, 400, N])
    s3.delete_object(Bucket=SRC, Key="miss/ids/part-1.npy")
    refused(
        s3, source, "source.ids", f"s3://{SRC}/miss/ids/part-1.npy", f"s3://{SRC}/miss/vectors/part-1.npy"
    )


def test_an_ids_shard_without_a_vectors_shard_is_refused_by_name(s3: Any) -> None:
    source = upload_npy_shards(s3, "extra/", [0, 200, 400, N])
    put(s3, "extra/ids/part-9.npy", npy(np.array(["z"])))
    refused(s3, source, "source.ids", f"s3://{SRC}/extra/ids/part-9.npy")


@pytest.mark.parametrize("kind", ["vectors", "jsonl"])
def test_an_empty_prefix_is_refused_by_name(s3: Any, kind: str) -> None:
    put(s3, "empty/other.txt", b"x")
    refused(s3, {kind: f"s3://{SRC}/empty/"}, f"source.{kind}", f"s3://{SRC}/empty/")


def test_a_prefix_in_a_missing_bucket_is_refused_by_name(s3: Any) -> None:
    refused(s3, {"vectors": "s3://no-such-bucket-kdb/v/"}, "source.vectors", "no-such-bucket-kdb")


def test_ids_across_shards_must_be_unique(s3: Any) -> None:
    source = upload_npy_shards(s3, "dup/", [0, 200, 400, N])
    _, ids, _ = dataset()
    put(s3, "dup/ids/part-2.npy", npy(np.concatenate([ids[:1], ids[401:N]])))  # doc-0000 again
    refused(s3, source, "source.ids", "doc-0000", "must be unique", kind=InvalidRequest)


def test_a_bad_row_in_a_later_shard_is_named_by_its_row_in_the_collection_and_its_shard(s3: Any) -> None:
    source = upload_npy_shards(s3, "nan/", [0, 200, 400, N])
    vectors, _, _ = dataset()
    bad = vectors[200:400].copy()
    bad[7, 3] = np.nan
    put(s3, "nan/vectors/part-1.npy", npy(bad))
    refused(
        s3, source, "source.vectors[207]", f"s3://{SRC}/nan/vectors/part-1.npy", "NaN", kind=InvalidRequest
    )


def test_a_prefix_for_vectors_needs_prefixes_for_ids_and_labels(s3: Any) -> None:
    source = upload_npy_shards(s3, "mix/", [0, 200, 400, N])
    _, ids, _ = dataset()
    source["ids"] = put(s3, "mix/all-ids.npy", npy(ids))
    refused(s3, source, "source.ids", "prefix", kind=InvalidRequest)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"vector": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]}\n{"vector": [1, 2}\n', "line 2"),
        (gzip.compress(b'{"vector": [1, 2]}\n')[:-6], "gzip"),
    ],
    ids=["bad-json", "corrupt-gzip"],
)
def test_a_bad_jsonl_shard_is_refused_by_name(s3: Any, body: bytes, problem: str) -> None:
    lines = jsonl_lines(*dataset())
    put(s3, "bj/items/0.jsonl", b"".join(lines[:300]))
    put(s3, "bj/items/1.jsonl.gz", body)
    put(s3, "bj/items/2.jsonl", b"".join(lines[300:]))
    refused(
        s3, {"jsonl": f"s3://{SRC}/bj/items/"}, "source.jsonl", f"s3://{SRC}/bj/items/1.jsonl.gz", problem
    )


def test_a_jsonl_shard_of_another_dimension_names_the_item(s3: Any) -> None:
    lines = jsonl_lines(*dataset())
    put(s3, "jd/items/0.jsonl", b"".join(lines[:300]))
    put(s3, "jd/items/1.jsonl", b'{"id": "odd", "vector": [1, 2, 3]}\n')
    refused(
        s3,
        {"jsonl": f"s3://{SRC}/jd/items/"},
        "source.jsonl[300].vector",
        "3 dimensions",
        kind=InvalidRequest,
    )


def test_a_prefix_without_a_store_reader_is_refused_clearly() -> None:
    with pytest.raises(InvalidRequest, match="prefix") as info:
        read_source({"vectors": "s3://bucket-x/v/"}, metric="l2", fetch=lambda uri: b"")
    assert info.value.field == "source.vectors"
