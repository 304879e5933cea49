"""Write ``bucket_v1.msgpack``, the committed reference bytes of bucket format version 1.

Run once, from the repository root, when the golden file is first created::

    PYTHONPATH=shared .venv/bin/python tests/golden/make_golden.py

The committed file is the reference: ``tests/unit/test_golden.py`` never regenerates it, it
decodes it and compares against literal values. If this script's output ever differs from the
committed bytes, the *encoder* changed; bump ``FORMAT_VERSION`` and add a new golden file
(``bucket_v2.msgpack``) instead of overwriting this one. ``--force`` exists only for that
deliberate case.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np

from kdbuckets.bucket import IdColumn, encode_bucket

OUT = Path(__file__).with_name("bucket_v1.msgpack")

# Keep these literals identical to those in tests/unit/test_golden.py. Every value is
# exactly representable in float32 so the bytes do not depend on rounding.
VECTORS = [
    [0.5, -1.25, 3.0, 0.0],
    [-2.0, 0.125, 1.5, -0.75],
    [1024.0, -0.0625, 2.25, 7.5],
]
IDS = ["doc-1", "ñandú-2", "東京-3"]
LABELS = [0, 2, -1]


def golden_bytes() -> bytes:
    return encode_bucket(
        np.array(VECTORS, dtype=np.float32),
        IdColumn.from_values(np.array(IDS)),
        np.array(LABELS, dtype=np.int32),
        dtype="float32",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing golden file")
    args = parser.parse_args()
    if OUT.exists() and not args.force:
        raise SystemExit(f"{OUT} exists; the committed bytes are the reference (use --force deliberately)")
    body = golden_bytes()
    OUT.write_bytes(body)
    print(f"wrote {OUT} ({len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()})")


if __name__ == "__main__":
    main()
