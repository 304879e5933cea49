"""The committed golden files pin every stored format, byte for byte.

One file per format: a bucket, a bucket's metadata columns, an id-directory shard, a manifest
and the HEAD pointer that names it (``tests/golden/README.md``). For each, the test checks the
committed file's SHA-256, decodes it and compares the content with literal values, and encodes
those literal values with today's encoder expecting the committed bytes. So a change to any
encoder or decoder fails here, and a format change has to be deliberate (a new
``format_version`` and a new golden file).

The literals are written out here, not imported from ``tests/golden/make_golden.py``: if the
encoder or the script drifts, this test fails rather than silently following it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from kdbuckets import bucket as bucket_format
from kdbuckets import codec, directory, layout, manifest, metadata_codec
from kdbuckets.bucket import IdColumn, decode_bucket, encode_bucket
from kdbuckets.directory import Shard, decode_shard, encode_shard
from kdbuckets.manifest import (
    BucketTable,
    Manifest,
    decode_head,
    decode_manifest,
    encode_head,
    encode_manifest,
)
from kdbuckets.metadata import MetadataColumns
from kdbuckets.tree import Tree

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
#: file -> (size in bytes, SHA-256): the committed reference.
COMMITTED = {
    "bucket_v1.msgpack": (290, "85d65e98d273aca886dc7e8da28077867e4ae83d6de6638f36ab4d96fb309c74"),
    "metadata_v1.msgpack": (1671, "5b03497be0837b0284440003962c07a7d7a4ec6e3433dbc5c63fbf6ffa80c3cb"),
    "ids_v1.msgpack": (219, "fd964cffb2b34fedd3de019ac7d77bb88c65a1ef26d05a799953e2590cb3e172"),
    "manifest_v1.msgpack": (1143, "6c82db68dfeea2a3b2b8d1d9b248bd2b6bb68e45f8d023f345c077ec9aea021f"),
    "head_v1.json": (237, "8ab759a12b026c75d942af7d33ef0e0592dced8d16cfcb2ebf4ca3ebce2170ca"),
}


def golden(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


@pytest.mark.parametrize("name", list(COMMITTED))
def test_golden_file_has_the_committed_size_and_sha256(name: str) -> None:
    size, sha256 = COMMITTED[name]
    body = golden(name)
    assert len(body) == size
    assert hashlib.sha256(body).hexdigest() == sha256


def test_every_golden_file_is_pinned_here() -> None:
    on_disk = {p.name for p in GOLDEN.iterdir() if p.suffix in (".msgpack", ".json")}
    assert on_disk == set(COMMITTED)


def test_the_formats_are_the_versions_the_golden_files_pin() -> None:
    # Bumping one of these needs a new golden file (..._v2) next to the old one, not an edit.
    assert bucket_format.FORMAT_VERSION == 1
    assert metadata_codec.FORMAT_VERSION == 1
    assert directory.FORMAT_VERSION == 1
    assert manifest.FORMAT_VERSION == 1


# --------------------------------------------------------------------------- bucket
VECTORS = [
    [0.5, -1.25, 3.0, 0.0],
    [-2.0, 0.125, 1.5, -0.75],
    [1024.0, -0.0625, 2.25, 7.5],
]
IDS = ["doc-1", "ñandú-2", "東京-3"]
LABELS = [0, 2, -1]
UTF8 = "doc-1ñandú-2東京-3".encode()
OFFSETS = [0, 5, 14, 22]


def test_golden_bucket_decodes_to_the_literal_values() -> None:
    _, sha256 = COMMITTED["bucket_v1.msgpack"]
    bucket = decode_bucket(golden("bucket_v1.msgpack"), key="golden", expected_fingerprint=sha256)
    assert bucket.count == 3
    assert bucket.stored_dtype == "float32"
    assert bucket.vectors.dtype == np.float32
    assert bucket.vectors.tolist() == VECTORS
    assert bucket.ids.kind == "str"
    assert bucket.ids.utf8 == UTF8
    assert bucket.ids.offsets.tolist() == OFFSETS
    assert bucket.ids.take(np.arange(3)) == IDS
    assert bucket.labels is not None
    assert bucket.labels.dtype == np.int32
    assert bucket.labels.tolist() == LABELS
    assert bucket.keys is None
    assert bucket.metadata is None


def test_encoding_the_literal_bucket_reproduces_the_golden_bytes() -> None:
    body = encode_bucket(
        np.array(VECTORS, dtype=np.float32),
        IdColumn.from_values(np.array(IDS)),
        np.array(LABELS, dtype=np.int32),
        dtype="float32",
    )
    assert body == golden("bucket_v1.msgpack")


def test_golden_bucket_starts_with_the_documented_header() -> None:
    # fixmap of 7 entries, then "format": "kdbuckets/bucket", "format_version": 1
    header = b"\x87\xa6format\xb0kdbuckets/bucket\xaeformat_version\x01"
    assert golden("bucket_v1.msgpack").startswith(header)


# --------------------------------------------------------------------------- metadata columns
RECORDS: list[dict[str, Any] | None] = [
    {"year": 2020, "lang": "en", "tags": ["a", "b"], "score": 0.5},
    None,
    {"year": 2.0, "lang": None, "draft": True},
    {"tags": [], "lang": "fr"},
    {},
    {"year": -3, "draft": False, "tags": ["c", 1, None, True, "a"], "note": "ñandú 東京 🦀"},
]


def decoded_metadata() -> MetadataColumns:
    return MetadataColumns.decode(codec.loads(golden("metadata_v1.msgpack"), key="golden"), 6, key="golden")


def test_golden_metadata_decodes_to_the_literal_records() -> None:
    columns = decoded_metadata()
    assert columns.count == 6
    rows = columns.take(np.arange(6))
    assert rows == RECORDS
    assert isinstance(rows[2]["year"], float)  # 2.0 comes back as written, not as 2
    assert isinstance(rows[0]["year"], int)
    assert sorted(columns.keys) == ["draft", "lang", "note", "score", "tags", "year"]


def test_golden_metadata_columns_hold_the_literal_values() -> None:
    columns = decoded_metadata()
    lang = columns.keys["lang"]
    assert lang.present.tolist() == [True, False, True, True, False, False]
    assert lang.vocab == ("en", "fr")
    assert lang.scalars.strings is not None
    assert lang.scalars.strings.tolist() == [0, -1, -1, 1, -1, -1]
    assert lang.scalars.nulls is not None
    assert lang.scalars.nulls.tolist() == [False, False, True, False, False, False]
    assert lang.scalars.numbers is None  # canonical: unused types are not stored
    assert lang.scalars.bools is None
    year = columns.keys["year"]
    assert year.scalars.numbers is not None
    np.testing.assert_array_equal(year.scalars.numbers, [2020.0, np.nan, 2.0, np.nan, np.nan, -3.0])
    draft = columns.keys["draft"]
    assert draft.scalars.bools is not None
    assert draft.scalars.bools.tolist() == [-1, -1, 1, -1, -1, 0]
    tags = columns.keys["tags"]
    assert tags.present.tolist() == [True, False, False, True, False, True]  # [] is present
    assert tags.vocab == ("a", "b", "c")
    assert tags.element_rows is not None
    assert tags.element_rows.tolist() == [0, 0, 5, 5, 5, 5, 5]
    assert tags.elements is not None
    assert tags.elements.strings is not None
    assert tags.elements.strings.tolist() == [0, 1, 2, -1, -1, -1, 0]
    assert tags.elements.numbers is not None
    np.testing.assert_array_equal(tags.elements.numbers, [np.nan] * 3 + [1.0] + [np.nan] * 3)
    assert tags.elements.nulls is not None
    assert tags.elements.nulls.tolist() == [False] * 4 + [True, False, False]
    assert tags.elements.bools is not None
    assert tags.elements.bools.tolist() == [-1] * 5 + [1, -1]
    assert columns.keys["note"].vocab == ("ñandú 東京 🦀",)


def test_encoding_the_literal_records_reproduces_the_golden_metadata() -> None:
    assert codec.dumps(MetadataColumns.from_records(RECORDS).encode()) == golden("metadata_v1.msgpack")


def test_golden_metadata_reencodes_to_the_same_bytes() -> None:
    assert codec.dumps(decoded_metadata().encode()) == golden("metadata_v1.msgpack")


def test_golden_metadata_carries_its_format_header() -> None:
    node = msgpack.unpackb(golden("metadata_v1.msgpack"), raw=False)
    assert list(node) == ["format", "format_version", "count", "json", "offsets", "keys"]
    assert (node["format"], node["format_version"], node["count"]) == ("kdbuckets/metadata", 1, 6)


# --------------------------------------------------------------------------- id-directory shard
SHARD_KEYS = [9_007_199_254_740_993, -42, 0, -(2**63), 2**63 - 1]
SHARD_PRIMARY = [1, 0, 1, 0, 1]
SHARD_SECONDARY = [-1, 1, -1, -1, 0]
SORTED_KEYS = [-(2**63), -42, 0, 9_007_199_254_740_993, 2**63 - 1]
SORTED_PRIMARY = [0, 0, 1, 1, 1]
SORTED_SECONDARY = [-1, 1, -1, -1, 0]


def test_golden_shard_decodes_to_the_literal_entries_sorted_by_key() -> None:
    _, sha256 = COMMITTED["ids_v1.msgpack"]
    shard = decode_shard(golden("ids_v1.msgpack"), key="golden", expected_fingerprint=sha256, n_buckets=2)
    assert shard.keys.dtype == np.int64
    assert shard.keys.tolist() == SORTED_KEYS
    assert shard.primary.tolist() == SORTED_PRIMARY
    assert shard.secondary.tolist() == SORTED_SECONDARY
    found, primary, secondary = shard.lookup(np.array([-42, 5, 2**63 - 1], dtype=np.int64))
    assert (found.tolist(), primary.tolist(), secondary.tolist()) == (
        [True, False, True],
        [0, -1, 1],
        [1, -1, 0],
    )


def test_encoding_the_literal_entries_reproduces_the_golden_shard() -> None:
    shard = Shard.from_arrays(
        np.array(SHARD_KEYS, dtype=np.int64),
        np.array(SHARD_PRIMARY, dtype=np.int32),
        np.array(SHARD_SECONDARY, dtype=np.int32),
    )
    assert encode_shard(shard) == golden("ids_v1.msgpack")


# --------------------------------------------------------------------------- manifest
COLLECTION = "golden"
VERSION = "20250102T030405123456Z-0a1b2c3d"
PARENT = "20250101T000000000000Z-00000000"
CREATED_AT = "2025-01-02T03:04:05.123+00:00"
PARAMS = {
    "metric": "cosine",
    "bucket_size": 2,
    "max_depth": 32,
    "seed": 7,
    "split": "spread",
    "projection": "pca",
    "dtype": "float32",
    "refine": 0,
    "replicate": 0.0,
    "ranking": "centroid",
}
EXTRA = {"calibration": {"k": 10, "sample": 3, "recall": [0.5, 1.0]}}
LABEL_NAMES = ["cat", "dog", "ñandú"]
PLANES = [[0.5, -0.5, 0.25, 0.0]]
NODE_PLANE = [0, -1, -1]
THRESHOLD = [0.125, 0.0, 0.0]
LEFT = [1, -1, -1]
RIGHT = [2, -1, -1]
NODE_LEAF = [-1, 0, 1]
BUCKET_FINGERPRINTS = [
    "85d65e98d273aca886dc7e8da28077867e4ae83d6de6638f36ab4d96fb309c74",
    "0000000000000000000000000000000000000000000000000000000000000001",
]
BUCKET_SIZES = [290, 4096]
BUCKET_ROWS = [2, 1]
CENTROIDS = [[0.25, -0.5, 2.25, -0.375], [1024.0, -0.0625, 2.25, 7.5]]
ID_SHARDS = ["00000000000000000000000000000000000000000000000000000000000000ff"]


def literal_manifest() -> Manifest:
    return Manifest(
        collection=COLLECTION,
        version=VERSION,
        created_at=CREATED_AT,
        dim=4,
        metric="cosine",
        dtype="float32",
        count=3,
        id_kind="str",
        label_names=list(LABEL_NAMES),
        params=dict(PARAMS),
        tree=Tree(
            planes=np.array(PLANES, dtype=np.float32),
            node_plane=np.array(NODE_PLANE, dtype=np.int32),
            threshold=np.array(THRESHOLD, dtype=np.float32),
            left=np.array(LEFT, dtype=np.int32),
            right=np.array(RIGHT, dtype=np.int32),
            node_leaf=np.array(NODE_LEAF, dtype=np.int32),
        ),
        buckets=BucketTable(
            fingerprints=list(BUCKET_FINGERPRINTS),
            sizes=np.array(BUCKET_SIZES, dtype=np.int64),
            rows=np.array(BUCKET_ROWS, dtype=np.int64),
            centroids=np.array(CENTROIDS, dtype=np.float32),
        ),
        parent=PARENT,
        extra={"calibration": dict(EXTRA["calibration"])},
        id_shards=list(ID_SHARDS),
    )


def test_golden_manifest_decodes_to_the_literal_values() -> None:
    m = decode_manifest(golden("manifest_v1.msgpack"), key="golden")
    assert (m.collection, m.version, m.parent, m.created_at) == (COLLECTION, VERSION, PARENT, CREATED_AT)
    assert (m.dim, m.metric, m.dtype, m.count, m.id_kind) == (4, "cosine", "float32", 3, "str")
    assert m.label_names == LABEL_NAMES
    assert m.params == PARAMS
    assert m.extra == EXTRA
    assert m.id_shards == ID_SHARDS
    assert m.tree.planes.dtype == np.float32
    assert m.tree.planes.tolist() == PLANES
    assert m.tree.node_plane.tolist() == NODE_PLANE
    assert m.tree.threshold.tolist() == THRESHOLD
    assert m.tree.left.tolist() == LEFT
    assert m.tree.right.tolist() == RIGHT
    assert m.tree.node_leaf.tolist() == NODE_LEAF
    assert m.n_buckets == 2
    assert m.buckets.fingerprints == BUCKET_FINGERPRINTS
    assert m.buckets.sizes.tolist() == BUCKET_SIZES
    assert m.buckets.rows.tolist() == BUCKET_ROWS
    assert m.buckets.centroids.dtype == np.float32
    assert m.buckets.centroids.tolist() == CENTROIDS


def test_golden_manifest_has_exactly_the_documented_fields() -> None:
    node = msgpack.unpackb(golden("manifest_v1.msgpack"), raw=False)
    assert list(node) == [
        "format", "format_version", "collection", "version", "parent", "created_at", "dim", "metric",
        "dtype", "count", "id_kind", "label_names", "params", "tree", "buckets", "extra", "id_shards",
    ]  # fmt: skip
    assert (node["format"], node["format_version"]) == ("kdbuckets/manifest", 1)
    assert list(node["tree"]) == ["planes", "node_plane", "threshold", "left", "right", "node_leaf"]
    assert list(node["buckets"]) == ["fingerprints", "sizes", "rows", "centroids"]  # no radii


def test_encoding_the_literal_manifest_reproduces_the_golden_bytes() -> None:
    assert encode_manifest(literal_manifest()) == golden("manifest_v1.msgpack")


# --------------------------------------------------------------------------- HEAD
def test_golden_head_names_the_golden_manifest_by_key_and_sha256() -> None:
    head = decode_head(golden("head_v1.json"), key="golden/HEAD")
    assert head.version == VERSION
    assert head.manifest_key == f"{COLLECTION}/manifests/{VERSION}"
    assert head.manifest_key == layout.manifest_key(COLLECTION, VERSION)
    assert head.sha256 == COMMITTED["manifest_v1.msgpack"][1]
    assert head.sha256 == codec.fingerprint(golden("manifest_v1.msgpack"))


def test_golden_head_is_sorted_json_a_human_can_read() -> None:
    doc = json.loads(golden("head_v1.json"))
    assert list(doc) == sorted(doc)
    assert doc == {
        "format": "kdbuckets/head",
        "format_version": 1,
        "manifest": f"{COLLECTION}/manifests/{VERSION}",
        "sha256": COMMITTED["manifest_v1.msgpack"][1],
        "version": VERSION,
    }


def test_encoding_the_literal_head_reproduces_the_golden_bytes() -> None:
    body = encode_head(VERSION, f"{COLLECTION}/manifests/{VERSION}", COMMITTED["manifest_v1.msgpack"][1])
    assert body == golden("head_v1.json")
