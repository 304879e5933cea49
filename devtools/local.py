"""Local sample data and an embedded S3: what `make demo` and `make invoke` run against.

The sample collection is the real WordNet gloss embeddings from ``../shared/data`` when that
folder exists (a developer checkout), otherwise a deterministic synthetic set of the same
dimension that behaves like embeddings (:func:`realistic`; a user's clone), so the committed
events in ``events/`` work with either. ``KDBUCKETS_SYNTHETIC=1`` in the environment forces the
synthetic set even where the real one exists (``make demo`` / ``make invoke`` as a user sees them).
A fixed set of rows is held out of the index to serve as queries with a known brute-force
answer.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


#: Set to 1 to use the synthetic sample even where ../shared/data exists.
FORCE_SYNTHETIC = "KDBUCKETS_SYNTHETIC"


def load_sample(data_dir: Path = DATA_DIR) -> Sample:
    """The real WordNet set when present (unless ``KDBUCKETS_SYNTHETIC=1``), else :func:`realistic`."""
    real = data_dir / "wordnet_glosses"
    if os.environ.get(FORCE_SYNTHETIC, "") not in ("", "0") or not (real / "vectors.npy").exists():
        return realistic()
    return _wordnet(real)


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
    """Deterministic, well separated clustered unit vectors with one label per cluster.

    The tests' easy set (every neighbour in the query's bucket, every vote right): fast to
    check against. Not what the demo shows a user — that is :func:`realistic`.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    which = rng.integers(0, clusters, size=n)
    vectors = centres[which] + rng.normal(scale=1.2 / np.sqrt(dim), size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    ids = np.array([f"syn-{i:06d}" for i in range(n)])
    labels = np.array([f"topic-{c:02d}" for c in which])
    return _split(f"synthetic clustered ({n:,} × {dim})", vectors, ids, labels, {})


def realistic(
    n: int = 20_000,
    dim: int = DIM,
    clusters: int = 120,
    topics: int = 24,
    rank: int = 48,
    label_noise: float = 0.15,
    seed: int = 7,
) -> Sample:
    """Deterministic unit vectors that behave like sentence embeddings, for a clone without data.

    Real embeddings are not well separated isotropic blobs (with those, one bucket holds all ten
    neighbours and a k-NN vote is always right, which demonstrates nothing). This is a low-rank
    + noise model: points live mostly in a ``rank``-dimensional subspace, in overlapping
    clusters of very different sizes and spreads (scales log-normal, anisotropic per direction),
    with a little full-dimensional noise; several clusters share a topic, and ``label_noise`` of
    the labels are another topic's, as human labels of real text are. The result, like the real
    WordNet set: recall@10 near 0.6 at one probe rising to 1.0 as probes grow, label accuracy
    well below 1.
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(dim, rank)))[0].T  # (rank, dim), orthonormal rows
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(rank))  # a decaying spectrum, as in real embeddings
    centres = rng.normal(size=(clusters, rank)) * spectrum
    weights = rng.dirichlet(np.full(clusters, 0.7))  # cluster sizes from a wide distribution
    which = rng.choice(clusters, size=n, p=weights)
    scale = np.exp(rng.normal(0.4, 0.45, size=clusters))  # spreads from a wide distribution
    axes = np.exp(rng.normal(0.0, 0.5, size=(clusters, rank)))  # anisotropic within a cluster
    latent = centres[which] + rng.normal(size=(n, rank)) * spectrum * axes[which] * scale[which, None]
    vectors = latent @ basis + rng.normal(scale=0.25 / np.sqrt(dim), size=(n, dim))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    topic_of = rng.integers(0, topics, size=clusters)
    topic = topic_of[which]
    noisy = rng.random(n) < label_noise
    topic[noisy] = rng.integers(0, topics, size=int(noisy.sum()))
    ids = np.array([f"syn-{i:06d}" for i in range(n)])
    labels = np.array([f"topic-{t:02d}" for t in topic])
    name = f"synthetic embedding-like ({n:,} × {dim}: {clusters} overlapping clusters, {topics} noisy topics)"
    return _split(name, vectors, ids, labels, {})


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


#: The committed build events whose collections `make invoke` seeds (and caches).
BUILD_EVENTS = ("build_npy.json", "build_inline.json")


def cache_root() -> Path:
    """Where built sample indexes are kept: ``$KDBUCKETS_CACHE_DIR``, else ``~/.cache/kdbuckets``."""
    explicit = os.environ.get("KDBUCKETS_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kdbuckets"


def index_fingerprint(data_dir: Path = DATA_DIR) -> str:
    """What the seeded index depends on, without loading the sample (that alone takes seconds).

    The library's and this module's source (a change may change the stored format or the
    synthetic set), the build events, the synthetic switch, and the real data files' sizes and
    modification times.
    """
    digest = hashlib.sha256()
    sources = [*sorted((REPO / "shared" / "kdbuckets").glob("*.py")), Path(__file__)]
    for path in sources + [REPO / "events" / name for name in BUILD_EVENTS]:
        digest.update(f"{path.name}\0".encode() + path.read_bytes())
    real = data_dir / "wordnet_glosses"
    forced = os.environ.get(FORCE_SYNTHETIC, "") not in ("", "0")
    digest.update(f"synthetic={forced}".encode())
    if not forced and (real / "vectors.npy").exists():
        for f in sorted(real.iterdir()):
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _save_index(s3: Any, bucket: str, prefix: str, folder: Path) -> int:
    """Copy every object under ``prefix`` to ``folder`` (atomically: written aside, then renamed)."""
    scratch = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = scratch / obj["Key"][len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read())
            count += 1
    for stale in folder.parent.glob("*"):  # one cached index at a time: each is ~100 MB
        if stale != scratch:
            shutil.rmtree(stale, ignore_errors=True)
    scratch.rename(folder)
    return count


def _restore_index(s3: Any, bucket: str, prefix: str, folder: Path) -> int:
    """Upload a saved index into the (empty) index bucket; returns how many objects."""
    files = [f for f in folder.rglob("*") if f.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda f: s3.put_object(
                    Bucket=bucket, Key=prefix + f.relative_to(folder).as_posix(), Body=f.read_bytes()
                ),
                files,
            )
        )
    return len(files)


def prepare(endpoint_url: str, build_index: bool, *, rebuild: bool = False) -> None:
    """Seed a local S3 at ``endpoint_url`` with the sample (and its index, if asked).

    Used by `make invoke`: after this, every committed event has something to act on. The
    index of the sample (115,659 vectors with the real data: a minute to build) is built once
    and kept under :func:`cache_root`, keyed by :func:`index_fingerprint`; later calls upload
    the saved objects instead (seconds), and skip uploading the source too unless the function
    is ``build``. ``rebuild`` builds afresh and replaces the cached copy.
    """
    import boto3

    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint_url
    os.environ.setdefault("INDEX_BUCKET", INDEX_BUCKET)
    bucket, prefix = os.environ["INDEX_BUCKET"], os.environ.get("INDEX_PREFIX", "")
    s3 = boto3.client("s3", endpoint_url=endpoint_url, region_name="us-east-1")
    _ensure_bucket(s3, bucket)
    cached = cache_root() / "invoke" / index_fingerprint()
    hit = build_index and not rebuild and cached.is_dir()
    if not hit:  # the build events read the source from S3
        upload_sample(s3, load_sample())
    if not build_index:
        return
    if hit:
        count = _restore_index(s3, bucket, prefix, cached)
        print(f"sample index restored from {cached} ({count} objects; --rebuild to build it again)")
        return
    from kdbuckets import ObjectStore, service

    store = ObjectStore(bucket, prefix)
    started = time.perf_counter()
    for name in BUILD_EVENTS:
        service.build(json.loads((REPO / "events" / name).read_text()), store)
    cached.parent.mkdir(parents=True, exist_ok=True)
    count = _save_index(s3, bucket, prefix, cached)
    took = time.perf_counter() - started
    print(f"sample index built in {took:.0f} s and cached in {cached} ({count} objects)")


# --------------------------------------------------------------------------- serialised moto
class OneRequestAtATime:
    """WSGI wrapper: the wrapped app handles one request at a time, start to finish.

    moto's conditional PutObject compares and stores in two unlocked steps, so racing
    compare-and-swaps on HEAD could both win on a threaded server; S3 applies them atomically.
    Connections stay threaded (keep-alive, one handler thread per socket); only the
    application call runs under one lock.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with self.lock:
            result = self.app(environ, start_response)
            try:
                return [b"".join(result)]
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()


@contextlib.contextmanager
def serial_moto_server() -> Iterator[str]:
    """A quiet moto server (S3, SQS, …) on a free port of 127.0.0.1 whose requests are serialised."""
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # racing clients make thousands of requests
    app = OneRequestAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="serial-moto", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
