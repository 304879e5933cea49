"""Shared fixtures: fake AWS, moto S3 (in-process and over HTTP), handlers, events.

Two kinds of S3 are offered:

- ``s3`` — moto's ``mock_aws`` in this process: fast, for everything that does not depend on
  real HTTP semantics;
- ``moto_server`` — a ``ThreadedMotoServer`` on 127.0.0.1 (one per pytest-xdist worker,
  on a free port, state reset before each test), for tests where conditional writes and
  concurrent requests must travel over a real socket. boto3 finds it through
  ``AWS_ENDPOINT_URL_S3``, exactly as the Lambda code does when pointed at a local server.

Both create the index bucket and the demo source bucket the committed events name. Handler
modules are imported by path (both are called ``app``) under distinct names, fresh for each
test, and the library's shared S3 clients are forgotten around each test so that no client
bound to one moto instance leaks into the next.
"""

from __future__ import annotations

import os

# One BLAS thread per test process: under `pytest -n 2` on two cores, multi-threaded BLAS
# (PCA in every build) oversubscribes the CPU and a 30 ms build can take seconds. Set before
# numpy is first imported, which nothing does before this conftest.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import copy
import importlib.util
import json
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import numpy as np
import pytest
from moto import mock_aws
from moto.server import ThreadedMotoServer

from devtools import local
from kdbuckets import ObjectStore, service, storage

REPO = Path(__file__).resolve().parents[1]
EVENTS = REPO / "events"
REGION = "us-east-1"
INDEX_BUCKET = local.INDEX_BUCKET
SOURCE_BUCKET = local.SOURCE_BUCKET
REQUEST_ID = "52fdfc07-2182-154f-163f-5f0f9a621d72"


# --------------------------------------------------------------------------- environment
@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and region; no profile, config file or endpoint from the machine."""
    _fake_aws(monkeypatch, tmp_path)


def _fake_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",
        "INDEX_PREFIX",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("INDEX_BUCKET", INDEX_BUCKET)
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "kdbuckets-test")
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "kdbuckets-test")


@pytest.fixture(autouse=True)
def _fresh_s3_clients() -> Iterator[None]:
    """The library caches one S3 client per pool size; no test may inherit another's."""
    storage.reset_clients()
    yield
    storage.reset_clients()


def _create_buckets(client: Any) -> None:
    for name in (INDEX_BUCKET, SOURCE_BUCKET):
        client.create_bucket(Bucket=name)


# --------------------------------------------------------------------------- moto in-process
@pytest.fixture
def s3(aws_env: None) -> Iterator[Any]:
    """An S3 client on moto's in-process mock, with the index and source buckets created."""
    with mock_aws():
        storage.reset_clients()
        client = boto3.client("s3", region_name=REGION)
        _create_buckets(client)
        yield client
        storage.reset_clients()


@pytest.fixture(scope="module")
def module_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Like ``s3``, but one mock per test module: for many read-only tests sharing one setup.

    Tests using it must not also use ``s3`` (starting a second mock empties this one).
    """
    with pytest.MonkeyPatch.context() as monkeypatch, mock_aws():
        _fake_aws(monkeypatch, tmp_path_factory.mktemp("aws"))
        storage.reset_clients()
        client = boto3.client("s3", region_name=REGION)
        _create_buckets(client)
        yield client
        storage.reset_clients()


# --------------------------------------------------------------------------- moto over HTTP
@dataclass(frozen=True)
class MotoServer:
    """A running moto server: its endpoint and a client bound to it."""

    url: str
    s3: Any


@pytest.fixture(scope="session")
def _moto_server_url() -> Iterator[str]:
    """One ThreadedMotoServer per test process (so per xdist worker), on a free port."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_server(
    aws_env: None, _moto_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MotoServer]:
    """The worker's moto server, emptied, with AWS_ENDPOINT_URL_S3 pointing at it."""
    request = urllib.request.Request(f"{_moto_server_url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", _moto_server_url)
    storage.reset_clients()
    client = boto3.client("s3", region_name=REGION, endpoint_url=_moto_server_url)
    _create_buckets(client)
    yield MotoServer(_moto_server_url, client)
    storage.reset_clients()


# --------------------------------------------------------------------------- Lambda plumbing
@dataclass
class FakeLambdaContext:
    """The attributes Powertools' ``inject_lambda_context`` reads (as in its examples)."""

    function_name: str = "kdbuckets-test"
    memory_limit_in_mb: int = 3008
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:kdbuckets-test"
    aws_request_id: str = REQUEST_ID

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@pytest.fixture
def lambda_context() -> FakeLambdaContext:
    return FakeLambdaContext()


def _import_handler(function: str, module_name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name, REPO / "functions" / function / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def build_handler(aws_env: None) -> Iterator[ModuleType]:
    """functions/build/app.py as a fresh module; call ``.lambda_handler(event, context)``."""
    module = _import_handler("build", "kdbuckets_build_app")
    yield module
    storage.reset_clients()
    sys.modules.pop("kdbuckets_build_app", None)


@pytest.fixture
def query_handler(aws_env: None) -> Iterator[ModuleType]:
    """functions/query/app.py as a fresh module with no warm Searcher."""
    module = _import_handler("query", "kdbuckets_query_app")
    module._searcher = None
    yield module
    module._searcher = None
    storage.reset_clients()
    sys.modules.pop("kdbuckets_query_app", None)


@pytest.fixture
def load_event() -> Callable[[str], dict[str, Any]]:
    """``load_event("query_tiny.json")``: a fresh copy of a committed event."""
    cache: dict[str, dict[str, Any]] = {}

    def load(name: str) -> dict[str, Any]:
        if name not in cache:
            cache[name] = json.loads((EVENTS / name).read_text(encoding="utf-8"))
        return copy.deepcopy(cache[name])

    return load


# --------------------------------------------------------------------------- data and checks
@pytest.fixture(scope="session")
def sample() -> local.Sample:
    """A small deterministic synthetic sample (2,000 indexed rows × 384, 1,000 held out)."""
    return local.synthetic(n=3000)


class _RecordingS3:
    """Stands in for an S3 client while ``upload_sample`` runs once: it keeps the puts."""

    class exceptions:  # noqa: N801 - mirrors boto3's ``client.exceptions`` attribute
        BucketAlreadyOwnedByYou = type("BucketAlreadyOwnedByYou", (Exception,), {})

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def create_bucket(self, **kwargs: Any) -> None:
        pass

    def put_object(self, **kwargs: Any) -> None:
        self.objects[(kwargs["Bucket"], kwargs["Key"])] = kwargs["Body"]


@pytest.fixture(scope="session")
def _sample_objects(sample: local.Sample) -> dict[tuple[str, str], bytes]:
    """What ``devtools.local.upload_sample`` writes for the sample (encoding it takes ~2 s)."""
    recorder = _RecordingS3()
    local.upload_sample(recorder, sample)
    return recorder.objects


@pytest.fixture
def upload_sample(_sample_objects: dict[tuple[str, str], bytes]) -> Callable[[Any], None]:
    """``upload_sample(client)``: put the sample where the committed build events expect it.

    Replays the objects ``devtools.local.upload_sample(client, sample)`` produces, encoded
    once per test session.
    """

    def upload(client: Any) -> None:
        for (bucket, key), body in _sample_objects.items():
            client.put_object(Bucket=bucket, Key=key, Body=body)

    return upload


@pytest.fixture(scope="session")
def _demo_indexes() -> dict[int, tuple[dict[str, Any], dict[str, bytes]]]:
    return {}


@pytest.fixture
def demo_index(
    upload_sample: Callable[[Any], None],
    load_event: Callable[[str], dict[str, Any]],
    _demo_indexes: dict[int, tuple[dict[str, Any], dict[str, bytes]]],
) -> Callable[..., dict[str, Any]]:
    """``demo_index(client, bucket_size=1000)``: the sample uploaded and indexed, as set-up.

    The first call per session (and bucket size) builds with events/build_npy.json through
    ``kdbuckets.service.build`` and keeps the objects it wrote; later calls put those same
    objects back (one build is ~1 s; many tests only need *an* index to query or damage).
    Returns the build response. Tests of the build itself call the build handler instead.
    """

    def publish(client: Any, bucket_size: int = 1000) -> dict[str, Any]:
        upload_sample(client)
        prefix = f"{local.COLLECTION}/"
        if bucket_size not in _demo_indexes:
            event = {**load_event("build_npy.json"), "bucket_size": bucket_size}
            response = service.build(event, ObjectStore(INDEX_BUCKET))
            listing = client.list_objects_v2(Bucket=INDEX_BUCKET, Prefix=prefix).get("Contents", [])
            objects = {
                o["Key"]: client.get_object(Bucket=INDEX_BUCKET, Key=o["Key"])["Body"].read() for o in listing
            }
            _demo_indexes[bucket_size] = (response, objects)
        else:
            response, objects = _demo_indexes[bucket_size]
            for key, body in objects.items():
                client.put_object(Bucket=INDEX_BUCKET, Key=key, Body=body)
        return copy.deepcopy(response)

    return publish


@pytest.fixture
def index_snapshot() -> Callable[[Any], dict[str, str]]:
    """``index_snapshot(client)``: every key of the index bucket with its ETag."""

    def snapshot(client: Any) -> dict[str, str]:
        out: dict[str, str] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=INDEX_BUCKET):
            out.update({obj["Key"]: obj["ETag"] for obj in page.get("Contents", [])})
        return out

    return snapshot


def brute_force(
    data: np.ndarray, queries: np.ndarray, k: int, metric: str = "cosine", dtype: str = "float16"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN in float64 over the vectors *as stored*: (distances (nq, k), rows (nq, k)).

    A collection stores its vectors prepared (unit norm for cosine) in ``dtype`` (float16 by
    default), and exact search is exact over those stored values; ties break by row.
    """
    x = np.asarray(data, dtype=np.float32)
    q = np.asarray(queries, dtype=np.float32).astype(np.float64)
    if metric == "cosine":
        x = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True).astype(np.float32)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    x = x.astype(dtype).astype(np.float64)
    if metric == "cosine":
        d = 1.0 - q @ x.T
    elif metric == "ip":
        d = -(q @ x.T)
    else:
        d = np.sqrt(np.maximum((q * q).sum(1)[:, None] - 2.0 * q @ x.T + (x * x).sum(1)[None, :], 0.0))
    rows = np.broadcast_to(np.arange(d.shape[1]), d.shape)
    order = np.lexsort((rows, d), axis=-1)[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.fixture
def exact_knn() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``exact_knn(data, queries, k, metric)``: brute-force reference for search results."""
    return brute_force


# --------------------------------------------------------------------------- write handler
@pytest.fixture
def write_handler(aws_env: None) -> Iterator[ModuleType]:
    """functions/write/app.py as a fresh module; call ``.lambda_handler(event, context)``."""
    module = _import_handler("write", "kdbuckets_write_app")
    yield module
    storage.reset_clients()
    sys.modules.pop("kdbuckets_write_app", None)


# --------------------------------------------------------------------------- serialised moto
@pytest.fixture(scope="session")
def _serial_moto_server_url() -> Iterator[str]:
    """A moto S3 server whose requests are serialised (one per test process, on a free port)."""
    with local.serial_moto_server() as url:
        yield url


@pytest.fixture
def serial_moto_server(
    aws_env: None, _serial_moto_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[MotoServer]:
    """Like ``moto_server``, but S3 requests are applied one at a time, atomically.

    Why: moto 5.2.5's PutObject checks ``If-Match`` / ``If-None-Match`` and then stores the
    object in two steps with no lock (``moto/s3/responses.py`` ``put_object``: ``get_object``
    → compare → ``backend.put_object``), and ``ThreadedMotoServer`` runs every request on its
    own thread. Two truly simultaneous compare-and-swaps on HEAD can therefore both succeed
    (observed: 6 of 100 rounds of 8 racing If-Match PUTs had several winners with a small
    ``sys.setswitchinterval``; moto even failed some with "I/O operation on closed file" as
    one PUT closed the buffer of the object another was reading). Real S3 applies conditional
    writes atomically, which is what the publish protocol relies on — so tests that race
    writers against each other use this server, where each request is applied whole before
    the next starts, as S3 (linearizable per key) would.
    """
    request = urllib.request.Request(f"{_serial_moto_server_url}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", _serial_moto_server_url)
    storage.reset_clients()
    client = boto3.client("s3", region_name=REGION, endpoint_url=_serial_moto_server_url)
    _create_buckets(client)
    yield MotoServer(_serial_moto_server_url, client)
    storage.reset_clients()


def read_manifest(source: Any, key: str, bucket: str = INDEX_BUCKET) -> Any:
    """The whole manifest stored at ``key`` (root, parts and tree), read and verified by the catalog.

    ``source`` is an :class:`ObjectStore` or a boto3 S3 client; ``key`` the full object key
    (``{prefix}{collection}/manifests/{version}``, as build responses name it).
    """
    from kdbuckets import catalog

    head, kind, version = key.rsplit("/", 2)
    assert kind == "manifests", key
    collection = head.rsplit("/", 1)[-1]
    if isinstance(source, ObjectStore):
        prefix = head[: len(head) - len(collection)][len(source.prefix) :]
        store = ObjectStore(source.bucket, source.prefix + prefix, client=source.client)
    else:
        store = ObjectStore(bucket, head[: len(head) - len(collection)], client=source)
    return catalog.load_manifest(store, collection, version)[0]
