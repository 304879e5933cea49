"""Write the committed reference bytes of every stored format (see README.md in this folder).

Run from the repository root, once per new golden file::

    PYTHONPATH=shared .venv/bin/python tests/golden/make_golden.py          # writes missing files
    PYTHONPATH=shared .venv/bin/python tests/golden/make_golden.py --check  # compares, writes nothing

Everything is deterministic: fixed literal inputs (every float exactly representable in
float32), a fixed version id and ``created_at``, objects built directly with the encoders of
``bucket.py``, ``manifest.py``, ``directory.py`` and ``metadata_codec`` — never through a timed,
randomised build. The committed files are the reference: ``tests/unit/test_golden.py`` never
regenerates them, it decodes them and compares against its own literal values, and re-encodes
those values expecting the committed bytes. If this script's output ever differs from a
committed file, an *encoder* changed: bump that format's ``FORMAT_VERSION`` and add a new file
(``manifest_v2.msgpack``) instead of overwriting the old one. ``--force`` exists only for a
deliberate rewrite that the README's rules allow.
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdbuckets import codec, layout
from kdbuckets.bucket import IdColumn, encode_bucket
from kdbuckets.directory import Shard, encode_shard
from kdbuckets.manifest import BucketTable, Manifest, encode_head, encode_manifest
from kdbuckets.metadata import MetadataColumns
from kdbuckets.tree import Tree

HERE = Path(__file__).parent

# Keep every literal below identical to those in tests/unit/test_golden.py.

# -- bucket_v1.msgpack ------------------------------------------------------------------
VECTORS = [
    [0.5, -1.25, 3.0, 0.0],
    [-2.0, 0.125, 1.5, -0.75],
    [1024.0, -0.0625, 2.25, 7.5],
]
IDS = ["doc-1", "ñandú-2", "東京-3"]
LABELS = [0, 2, -1]

# -- metadata_v1.msgpack: every value type, lists, null vs missing, no metadata, {} ----------
RECORDS: list[dict[str, Any] | None] = [
    {"year": 2020, "lang": "en", "tags": ["a", "b"], "score": 0.5},
    None,
    {"year": 2.0, "lang": None, "draft": True},
    {"tags": [], "lang": "fr"},
    {},
    {"year": -3, "draft": False, "tags": ["c", 1, None, True, "a"], "note": "ñandú 東京 🦀"},
]

# -- ids_v1.msgpack: an id-directory shard (unsorted on purpose: from_arrays sorts) --------
SHARD_KEYS = [9_007_199_254_740_993, -42, 0, -(2**63), 2**63 - 1]
SHARD_PRIMARY = [1, 0, 1, 0, 1]
SHARD_SECONDARY = [-1, 1, -1, -1, 0]

# -- manifest_v1.msgpack and head_v1.json --------------------------------------------------
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
TREE = {  # one split: node 0 sends its points to leaves 1 (bucket 0) and 2 (bucket 1)
    "planes": [[0.5, -0.5, 0.25, 0.0]],
    "node_plane": [0, -1, -1],
    "threshold": [0.125, 0.0, 0.0],
    "left": [1, -1, -1],
    "right": [2, -1, -1],
    "node_leaf": [-1, 0, 1],
}
BUCKET_FINGERPRINTS = [
    "85d65e98d273aca886dc7e8da28077867e4ae83d6de6638f36ab4d96fb309c74",  # bucket_v1.msgpack
    "0000000000000000000000000000000000000000000000000000000000000001",
]
BUCKET_SIZES = [290, 4096]
BUCKET_ROWS = [2, 1]
CENTROIDS = [[0.25, -0.5, 2.25, -0.375], [1024.0, -0.0625, 2.25, 7.5]]
ID_SHARDS = ["00000000000000000000000000000000000000000000000000000000000000ff"]


def bucket_bytes() -> bytes:
    return encode_bucket(
        np.array(VECTORS, dtype=np.float32),
        IdColumn.from_values(np.array(IDS)),
        np.array(LABELS, dtype=np.int32),
        dtype="float32",
    )


def metadata_bytes() -> bytes:
    """The metadata node as it is embedded in a bucket, packed on its own."""
    return codec.dumps(MetadataColumns.from_records(RECORDS).encode())


def shard_bytes() -> bytes:
    return encode_shard(
        Shard.from_arrays(
            np.array(SHARD_KEYS, dtype=np.int64),
            np.array(SHARD_PRIMARY, dtype=np.int32),
            np.array(SHARD_SECONDARY, dtype=np.int32),
        )
    )


def manifest() -> Manifest:
    tree = Tree(
        planes=np.array(TREE["planes"], dtype=np.float32),
        node_plane=np.array(TREE["node_plane"], dtype=np.int32),
        threshold=np.array(TREE["threshold"], dtype=np.float32),
        left=np.array(TREE["left"], dtype=np.int32),
        right=np.array(TREE["right"], dtype=np.int32),
        node_leaf=np.array(TREE["node_leaf"], dtype=np.int32),
    )
    table = BucketTable(
        fingerprints=list(BUCKET_FINGERPRINTS),
        sizes=np.array(BUCKET_SIZES, dtype=np.int64),
        rows=np.array(BUCKET_ROWS, dtype=np.int64),
        centroids=np.array(CENTROIDS, dtype=np.float32),
    )
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
        tree=tree,
        buckets=table,
        parent=PARENT,
        extra={"calibration": dict(EXTRA["calibration"])},
        id_shards=list(ID_SHARDS),
    )


def manifest_bytes() -> bytes:
    return encode_manifest(manifest())


def head_bytes() -> bytes:
    """HEAD naming the golden manifest by its key and SHA-256."""
    body = manifest_bytes()
    return encode_head(VERSION, layout.manifest_key(COLLECTION, VERSION), codec.fingerprint(body))


GOLDEN: dict[str, Callable[[], bytes]] = {
    "bucket_v1.msgpack": bucket_bytes,
    "metadata_v1.msgpack": metadata_bytes,
    "ids_v1.msgpack": shard_bytes,
    "manifest_v1.msgpack": manifest_bytes,
    "head_v1.json": head_bytes,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"files to write (default: all of {sorted(GOLDEN)})")
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed files; write nothing"
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing golden files (deliberately)")
    args = parser.parse_args()
    unknown = set(args.names) - set(GOLDEN)
    if unknown:
        raise SystemExit(f"unknown golden file(s) {sorted(unknown)}; known: {sorted(GOLDEN)}")
    differ = []
    for name in args.names or list(GOLDEN):
        path, body = HERE / name, GOLDEN[name]()
        summary = f"{name}: {len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()}"
        if args.check:
            same = path.exists() and path.read_bytes() == body
            differ += [] if same else [name]
            print(f"{'same' if same else 'DIFFERS'}  {summary}")
        elif path.exists() and not args.force:
            print(f"kept     {summary if path.read_bytes() == body else name + ': exists and DIFFERS'}")
        else:
            path.write_bytes(body)
            print(f"wrote    {summary}")
    if differ:
        raise SystemExit(f"encoder output differs from the committed {differ}")


if __name__ == "__main__":
    main()
