"""The committed golden bucket pins bucket format version 1, byte for byte.

The expected values below are literals, not read from ``tests/golden/make_golden.py``: if the
encoder or the decoder drifts, this test fails rather than silently following it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from kdbuckets.bucket import FORMAT_VERSION, IdColumn, decode_bucket, encode_bucket

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "bucket_v1.msgpack"
GOLDEN_SHA256 = "85d65e98d273aca886dc7e8da28077867e4ae83d6de6638f36ab4d96fb309c74"
GOLDEN_SIZE = 290

VECTORS = [
    [0.5, -1.25, 3.0, 0.0],
    [-2.0, 0.125, 1.5, -0.75],
    [1024.0, -0.0625, 2.25, 7.5],
]
IDS = ["doc-1", "ñandú-2", "東京-3"]
LABELS = [0, 2, -1]
UTF8 = "doc-1ñandú-2東京-3".encode()
OFFSETS = [0, 5, 14, 22]


def golden() -> bytes:
    return GOLDEN.read_bytes()


def test_golden_file_has_the_committed_sha256() -> None:
    body = golden()
    assert len(body) == GOLDEN_SIZE
    assert hashlib.sha256(body).hexdigest() == GOLDEN_SHA256


def test_golden_file_decodes_to_the_literal_values() -> None:
    assert FORMAT_VERSION == 1
    bucket = decode_bucket(golden(), key="golden", expected_fingerprint=GOLDEN_SHA256)
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


def test_encoding_the_literal_values_reproduces_the_golden_bytes() -> None:
    body = encode_bucket(
        np.array(VECTORS, dtype=np.float32),
        IdColumn.from_values(np.array(IDS)),
        np.array(LABELS, dtype=np.int32),
        dtype="float32",
    )
    assert hashlib.sha256(body).hexdigest() == GOLDEN_SHA256
    assert body == golden()


def test_golden_file_starts_with_the_documented_header() -> None:
    # fixmap of 7 entries, then "format": "kdbuckets/bucket", "format_version": 1
    header = b"\x87\xa6format\xb0kdbuckets/bucket\xaeformat_version\x01"
    assert golden().startswith(header)
