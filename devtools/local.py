"""Local sample data and an embedded S3: what `make demo` and `make invoke` run against.

The sample collection is the real WordNet gloss embeddings from ``../shared/data`` when that
folder exists (a developer checkout), otherwise a deterministic synthetic clustered set of the
same dimension (a user's clone), so the committed events in ``events/`` work with either.
A fixed set of rows is held out of the index to serve as queries with a known brute-force
answer.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
SOURCE_BUCKET = "kdbuckets-demo-source"
INDEX_BUCKET = "kdbuckets-demo-index"
COLLECTION = "demo"
SOURCE_PREFIX = "demo/"
HELD_OUT = 1000
DIM = 384
JSONL_ROWS = 2000


@dataclass(frozen=True)
class Sample:
    """A labelled collection plus held-out queries (rows not in the index)."""

    name: str
    vectors: np.ndarray  # (n, d) float32 — indexed rows
    ids: np.ndarray  # (n,) str
    labels: np.ndarray  # (n,) str
    queries: np.ndarray  # (q, d) float32 — held-out rows
    query_ids: np.ndarray
    query_labels: np.ndarray
    texts: dict[str, str]  # id -> text, empty for synthetic data


def load_sample(data_dir: Path = DATA_DIR) -> Sample:
    """The real WordNet set when present, else the synthetic one."""
    real = data_dir / "wordnet_glosses"
    if (real / "vectors.npy").exists():
        return _wordnet(real)
    return synthetic()


def _wordnet(folder: Path) -> Sample:
    vectors = np.load(folder / "vectors.npy").astype(np.float32)
    names = json.loads((folder / "labels.json").read_text())
    labels = np.array([names[str(c)] for c in np.load(folder / "labels.npy").tolist()])
    ids, texts = [], {}
    with gzip.open(folder / "texts.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            ids.append(row["id"])
            texts[row["id"]] = f"{', '.join(row['words'][:3])}: {row['text']}"
    return _split("wordnet_glosses (real, 115,659 × 384)", vectors, np.array(ids), labels, texts)


def synthetic(n: int = 20_000, dim: int = DIM, clusters: int = 40, seed: int = 7) -> Sample:
    """Deterministic clustered unit vectors with one label per cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, clusters, size=n)
    vectors = centres[which] + rng.normal(scale=1.2 / np.sqrt(dim), size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.array([f"syn-{i:06d}" for i in range(n)])
    labels = np.array([f"topic-{c:02d}" for c in which])
    return _split(f"synthetic clustered ({n:,} × {dim})", vectors, ids, labels, {})


def _split(
    name: str, vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray, texts: dict[str, str]
) -> Sample:
    rng = np.random.default_rng(20261123)
    held = np.zeros(len(vectors), dtype=bool)
    held[rng.choice(len(vectors), HELD_OUT, replace=False)] = True
    return Sample(
        name, vectors[~held], ids[~held], labels[~held], vectors[held], ids[held], labels[held], texts
    )


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def upload_sample(s3: Any, sample: Sample) -> None:
    """Put the sample where the committed build events expect it."""
    _ensure_bucket(s3, SOURCE_BUCKET)
    objects = {
        "vectors.npy": npy_bytes(sample.vectors.astype(np.float16)),  # half the bytes; read as float32
        "ids.npy": npy_bytes(sample.ids),
        "labels.npy": npy_bytes(sample.labels),
        "items.jsonl.gz": gzip.compress(
            "".join(
                json.dumps(
                    {"id": str(i), "vector": np.round(v.astype(np.float64), 5).tolist(), "label": str(lab)}
                )
                + "\n"
                for i, v, lab in zip(
                    sample.ids[:JSONL_ROWS],
                    sample.vectors[:JSONL_ROWS],
                    sample.labels[:JSONL_ROWS],
                    strict=True,
                )
            ).encode(),
            mtime=0,
        ),
    }
    for name, body in objects.items():
        s3.put_object(Bucket=SOURCE_BUCKET, Key=SOURCE_PREFIX + name, Body=body)


def _ensure_bucket(s3: Any, name: str) -> None:
    with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
        s3.create_bucket(Bucket=name)


def use_fake_credentials() -> None:
    """moto accepts any credentials; make sure no real ones are ever used by accident."""
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_SESSION_TOKEN="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
    )


def prepare(endpoint_url: str, build_index: bool) -> None:
    """Seed a local S3 at ``endpoint_url`` with the sample (and its index, if asked).

    Used by `make invoke`: after this, every committed event has something to act on.
    """
    import boto3

    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint_url
    os.environ.setdefault("INDEX_BUCKET", INDEX_BUCKET)
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    upload_sample(s3, load_sample())
    _ensure_bucket(s3, os.environ["INDEX_BUCKET"])
    if build_index:
        from kdbuckets import ObjectStore, service

        store = ObjectStore(os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", ""))
        for name in ("build_npy.json", "build_inline.json"):
            service.build(json.loads((REPO / "events" / name).read_text()), store)
