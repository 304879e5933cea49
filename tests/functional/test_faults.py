"""S3 misbehaving under the handlers: retried when transient, loud when not, never half-published.

Faults are injected at the botocore level on the library's shared client, against a moto
server over HTTP (with moto's in-process mock every ``before-send`` handler runs, so moto
would still apply a request whose response we fake; over HTTP a faked response replaces the
request):

- a ``before-send.s3`` hook returning an ``AWSResponse`` — HTTP 500 InternalError, HTTP 503
  SlowDown, a 200 whose body is cut short (shorter than its Content-Length, or reset while
  streaming), or a 200 whose body is short but looks complete;
- a ``before-send.s3`` hook raising botocore's connection errors (reset, unreachable, read
  timeout), or an exception botocore does not retry (a crash of the writer between two steps);
- objects deleted behind the library's back (a missing bucket, a missing id shard).

Pinned: transient faults (the first attempts of each request fail) are retried and change
nothing; persistent faults raise a StorageError naming the object, and HEAD — so every
query — stays on the previous version; a body that is cut off is fetched again or refused,
never decoded into a wrong answer; a crash between any two requests of a write or a build
leaves the previous version serving, and the next attempt succeeds.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError, ReadTimeoutError
from urllib3.exceptions import ProtocolError

from devtools import local
from kdbuckets import (
    CollectionNotFound,
    Conflict,
    CorruptObject,
    InvalidRequest,
    ObjectStore,
    Searcher,
    SourceError,
    StorageError,
    layout,
    service,
    storage,
)
from kdbuckets.bucket import decode_bucket
from kdbuckets.errors import ConfigurationError, InternalError
from kdbuckets.manifest import decode_head
from tests.conftest import read_manifest

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

INDEX = local.INDEX_BUCKET
COLLECTION = "faulty"
HEAD_KEY = layout.head_key(COLLECTION)
N, DIM = 200, 8
VECTORS = np.random.default_rng(42).normal(size=(N, DIM)).astype(np.float32)
QUERIES = np.random.default_rng(43).normal(size=(4, DIM)).astype(np.float32)
NEW_ID, NEW_VECTOR = 10_000, np.random.default_rng(44).normal(size=DIM).astype(np.float32)
DELETED_ID = 7
_PATH = re.compile(r"^/(?P<bucket>[^/]+)/(?P<key>.+)$")
_KIND = re.compile(r"/(?P<kind>HEAD|manifests|parts|buckets|ids|tail)(?:/[^/]+)?$")


def build_event(**overrides: Any) -> dict[str, Any]:
    """Inline build of the test collection; no refinement or replication, so that every
    vector lives in exactly one bucket, found by the tree (request counts are exact). No
    tail either: these writes are copy-on-write commits of buckets (the tail's own commits
    are pinned in the section on the tail below)."""
    items = [{"id": i, "vector": VECTORS[i].tolist(), "label": f"c{i % 3}"} for i in range(N)]
    return {
        "collection": COLLECTION,
        "source": {"items": items},
        "bucket_size": 60,
        "refine": 0,
        "replicate": 0.0,
        "dtype": "float32",  # the expected answers below are brute force over float32
        "tail_rows": 0,
        **overrides,
    }


QUERY = {"collection": COLLECTION, "vectors": QUERIES.tolist(), "k": 5, "probes": 4096}


def _exact_answers() -> tuple[list[list[int]], np.ndarray]:
    """What QUERY must answer (it reads every bucket): brute-force cosine k-NN."""
    x = VECTORS.astype(np.float64) / np.linalg.norm(VECTORS.astype(np.float64), axis=1, keepdims=True)
    q = QUERIES.astype(np.float64) / np.linalg.norm(QUERIES.astype(np.float64), axis=1, keepdims=True)
    d = 1.0 - q @ x.T
    rows = np.argsort(d, axis=1, kind="stable")[:, : QUERY["k"]]
    return rows.tolist(), np.take_along_axis(d, rows, axis=1)


EXPECTED_IDS, EXPECTED_DISTANCES = _exact_answers()
UPSERT = {
    "collection": COLLECTION,
    "operation": "upsert",
    "items": [{"id": NEW_ID, "vector": NEW_VECTOR.tolist(), "label": "c0"}],
}
DELETE = {"collection": COLLECTION, "operation": "delete", "ids": [DELETED_ID]}


# --------------------------------------------------------------------------- fault injection
def request_target(request: Any) -> tuple[str, str, str]:
    """(bucket, key, kind) of an S3 request; kind is HEAD, manifests, buckets, ids or other."""
    path = unquote(urlsplit(request.url).path)
    match = _PATH.match(path)
    bucket, key = (match["bucket"], match["key"]) if match else ("", path)
    kind = _KIND.search(key)
    return bucket, key, kind["kind"] if kind else "other"


class RawBody(io.BytesIO):
    """Stands in for urllib3's response body: ``read`` and ``stream``; may break mid-body."""

    def __init__(self, data: bytes, *, reset_after: int | None = None) -> None:
        super().__init__(data)
        self.reset_after = reset_after

    def read(self, amt: int | None = None) -> bytes:  # type: ignore[override]
        if self.reset_after is not None and self.tell() >= self.reset_after:
            raise ProtocolError("Connection broken: ConnectionResetError(104, 'Connection reset by peer')")
        if self.reset_after is not None:
            amt = self.reset_after - self.tell() if amt is None else min(amt, self.reset_after - self.tell())
        return super().read(amt)

    def stream(self, amt: int = 65536, **kwargs: Any) -> Iterator[bytes]:
        while chunk := self.read(amt):
            yield chunk


def s3_error(request: Any, status: int, code: str, message: str) -> AWSResponse:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>FAULT</RequestId></Error>"
    ).encode()
    headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
    return AWSResponse(request.url, status, headers, RawBody(body))


#: Failures that need no real object: an error response, or a failure before any response.
ERRORS = {
    "http-500": lambda r: s3_error(r, 500, "InternalError", "We encountered an internal error."),
    "slowdown-503": lambda r: s3_error(r, 503, "SlowDown", "Please reduce your request rate."),
    "connection-reset": lambda r: _raise(ConnectionClosedError(endpoint_url=r.url)),
    "unreachable": lambda r: _raise(EndpointConnectionError(endpoint_url=r.url)),
    "read-timeout": lambda r: _raise(ReadTimeoutError(endpoint_url=r.url)),
}
#: Failures of a GET's body: the real object, cut off.
BODY_FAULTS = ("truncated-body", "reset-mid-body", "short-but-complete-looking")


def _raise(exc: Exception) -> None:
    raise exc


@dataclass
class Fault:
    """``before-send.s3`` hook: requests of ``method`` on ``kinds`` fail with ``failure``.

    Each object's first ``times`` attempts fail (``None``: every attempt), counted per
    (method, key), so retries of the same request are what eventually succeed.
    """

    s3: Any
    failure: str
    method: str = "GET"
    kinds: tuple[str, ...] = ("buckets",)
    times: int | None = 2
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    injected: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any, **kwargs: Any) -> AWSResponse | None:
        bucket, key, kind = request_target(request)
        if request.method != self.method or kind not in self.kinds:
            return None
        with self.lock:
            n = self.seen[(request.method, key)] = self.seen.get((request.method, key), 0) + 1
            if self.times is not None and n > self.times:
                return None
            self.injected += 1
        if self.failure in ERRORS:
            return ERRORS[self.failure](request)
        return self.cut_body(request, bucket, key)

    def cut_body(self, request: Any, bucket: str, key: str) -> AWSResponse:
        real = self.s3.get_object(Bucket=bucket, Key=key)  # the test's own client: not hooked
        body = real["Body"].read()
        half = len(body) // 2
        headers = {"ETag": real["ETag"], "Content-Type": "binary/octet-stream"}
        if self.failure == "truncated-body":  # fewer bytes than Content-Length announces
            return AWSResponse(
                request.url, 200, {**headers, "Content-Length": str(len(body))}, RawBody(body[:half])
            )
        if self.failure == "reset-mid-body":  # the connection drops while the body streams
            return AWSResponse(
                request.url,
                200,
                {**headers, "Content-Length": str(len(body))},
                RawBody(body, reset_after=half),
            )
        assert self.failure == "short-but-complete-looking"  # a consistent, shorter object
        return AWSResponse(request.url, 200, {**headers, "Content-Length": str(half)}, RawBody(body[:half]))


class Crash(Exception):
    """A writer dying between two requests: botocore does not retry it."""


@dataclass
class CrashAt:
    """``before-send.s3`` hook: the process dies at the ``n``-th request (1-based) from now.

    That request and every later one (requests already running in parallel included) fail;
    ``sent`` records the ``n - 1`` that reached S3.
    """

    n: int
    count: int = 0
    sent: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any, **kwargs: Any) -> None:
        with self.lock:
            self.count += 1
            if self.count >= self.n:  # the process is gone: nothing after the n-th reaches S3
                raise Crash(f"writer died at request {self.count}: {request.method} {request.url}")
            self.sent.append((request.method, request_target(request)[2]))


@dataclass
class Recorder:
    """``before-send.s3`` hook recording (method, kind) of every request."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any, **kwargs: Any) -> None:
        with self.lock:
            self.sent.append((request.method, request_target(request)[2]))


# --------------------------------------------------------------------------- the live collection
@dataclass
class Live:
    """The test collection, freshly built, and the handlers that serve it."""

    s3: Any
    build: ModuleType
    query: ModuleType
    write: ModuleType
    context: Any
    built: dict[str, Any]
    hooks: list[tuple[str, Any]] = field(default_factory=list)

    @property
    def client(self) -> Any:
        """The S3 client every handler's ObjectStore shares (default pool size)."""
        return storage.s3_client(storage.DEFAULT_CONCURRENCY)

    def inject(self, hook: Any, event: str = "before-send.s3") -> Any:
        self.client.meta.events.register(event, hook)
        self.hooks.append((event, hook))
        return hook

    def heal(self) -> None:
        for event, hook in self.hooks:
            self.client.meta.events.unregister(event, hook)
        self.hooks.clear()

    def head(self) -> tuple[bytes, str]:
        obj = self.s3.get_object(Bucket=INDEX, Key=HEAD_KEY)
        return obj["Body"].read(), obj["ETag"]

    def run_query(self, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """A query from a cold container (it reads HEAD afresh)."""
        self.query._searcher = None
        return self.query.lambda_handler(event or QUERY, self.context)

    def run_write(self, event: dict[str, Any]) -> dict[str, Any]:
        return self.write.lambda_handler(event, self.context)

    def manifest(self) -> Any:
        head = decode_head(self.head()[0], key=HEAD_KEY)
        return read_manifest(self.s3, head.manifest_key)

    def assert_serving_previous_version(self, head: tuple[bytes, str]) -> None:
        """HEAD did not move, and a cold query answers exactly as before."""
        assert self.head() == head
        response = self.run_query()
        assert response["version"] == self.built["version"]
        assert_exact(response)


def assert_exact(response: dict[str, Any]) -> None:
    """The answer to QUERY is the exact one: the same ids, at the same distances."""
    assert [[h["id"] for h in hits] for hits in response["results"]] == EXPECTED_IDS
    distances = [[h["distance"] for h in hits] for hits in response["results"]]
    np.testing.assert_allclose(distances, EXPECTED_DISTANCES, rtol=0, atol=1e-6)


@pytest.fixture
def live(
    moto_server: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    write_handler: ModuleType,
    lambda_context: Any,
) -> Iterator[Live]:
    built = build_handler.lambda_handler(build_event(), lambda_context)
    assert built["buckets"] >= 3
    state = Live(moto_server.s3, build_handler, query_handler, write_handler, lambda_context, built)
    yield state
    state.heal()


def find(live: Live, vector: np.ndarray) -> tuple[Any, float]:
    """Nearest id to ``vector`` and its distance, searching every bucket."""
    hit = live.run_query({**QUERY, "vectors": [vector.tolist()], "k": 1})["results"][0][0]
    return hit["id"], hit["distance"]


def assert_write_landed(live: Live, event: dict[str, Any], response: dict[str, Any]) -> None:
    assert response["version"] != live.built["version"]
    assert decode_head(live.head()[0], key=HEAD_KEY).version == response["version"]
    if event["operation"] == "upsert":
        assert response["count"] == N + 1
        assert find(live, NEW_VECTOR) == (NEW_ID, pytest.approx(0.0, abs=1e-6))
    else:
        assert (response["count"], response["deleted"]) == (N - 1, 1)
        assert find(live, VECTORS[DELETED_ID])[0] != DELETED_ID


# --------------------------------------------------------------------------- transient faults
@pytest.mark.parametrize("failure", [*ERRORS, "truncated-body", "reset-mid-body"])
def test_transient_faults_on_bucket_reads_are_retried_and_answers_are_unchanged(
    live: Live, failure: str
) -> None:
    # Throttling backs off for up to 1 s, 2 s, ... (botocore's schedule): one failure is enough.
    fault = live.inject(Fault(live.s3, failure, times=1 if failure == "slowdown-503" else 2))

    response = live.run_query()

    assert_exact(response)
    assert response["version"] == live.built["version"]
    assert fault.injected == fault.times * response["stats"]["buckets_fetched"] > 0


@pytest.mark.parametrize(
    ("event", "failure"),
    [
        (UPSERT, "http-500"),
        (UPSERT, "connection-reset"),
        (UPSERT, "truncated-body"),
        (DELETE, "unreachable"),
        (DELETE, "reset-mid-body"),
    ],
    ids=lambda v: v if isinstance(v, str) else v["operation"],
)
def test_transient_faults_on_every_request_of_a_write_are_retried_and_the_write_lands(
    live: Live, failure: str, event: dict[str, Any]
) -> None:
    kinds = ("HEAD", "manifests", "ids", "buckets")
    faults = [live.inject(Fault(live.s3, failure, method="GET", kinds=kinds, times=1))]
    if failure in ERRORS:  # a PUT has no body to cut off
        faults.append(live.inject(Fault(live.s3, failure, method="PUT", kinds=kinds, times=1)))

    response = live.run_write(event)

    assert response["attempts"] == 1  # retried below the writer: no conflict, no redo
    # Each of the 4 GETs (HEAD, manifest, shard, bucket) and 4 PUTs (bucket, shard, manifest,
    # HEAD) failed once.
    assert sum(f.injected for f in faults) == (8 if failure in ERRORS else 4)
    live.heal()
    assert_write_landed(live, event, response)


# --------------------------------------------------------------------------- persistent faults
@pytest.mark.parametrize("failure", ["http-500", "connection-reset", "reset-mid-body"])
def test_persistent_fault_on_bucket_reads_fails_the_query_naming_the_object(live: Live, failure: str) -> None:
    live.inject(Fault(live.s3, failure, times=None))

    with pytest.raises(StorageError, match=rf"s3://{INDEX}/{COLLECTION}/buckets/[0-9a-f]{{64}}"):
        live.run_query()

    live.heal()
    assert_exact(live.run_query())


@pytest.mark.parametrize(
    ("failure", "method", "kind"),
    [
        ("http-500", "GET", "HEAD"),
        ("connection-reset", "GET", "ids"),
        ("truncated-body", "GET", "buckets"),
        ("unreachable", "PUT", "ids"),
        ("connection-reset", "PUT", "manifests"),
        ("http-500", "PUT", "HEAD"),
    ],
    ids=str,
)
def test_persistent_fault_on_one_step_of_a_write_fails_it_and_publishes_nothing(
    live: Live, failure: str, method: str, kind: str
) -> None:
    head = live.head()
    live.inject(Fault(live.s3, failure, method=method, kinds=(kind,), times=None))

    with pytest.raises(StorageError, match=rf"s3://{INDEX}/{COLLECTION}/{kind}"):
        live.run_write(UPSERT)

    live.heal()
    live.assert_serving_previous_version(head)
    assert_write_landed(live, UPSERT, live.run_write(UPSERT))


@pytest.mark.parametrize("path", ["query", "write"])
def test_body_short_but_complete_looking_is_corrupt_object_naming_the_key_never_an_answer(
    live: Live, path: str
) -> None:
    head = live.head()
    live.inject(Fault(live.s3, "short-but-complete-looking", times=None))

    with pytest.raises(CorruptObject, match=rf"{COLLECTION}/buckets/[0-9a-f]{{64}}"):
        live.run_query() if path == "query" else live.run_write(UPSERT)

    live.heal()
    live.assert_serving_previous_version(head)


# --------------------------------------------------------------------------- crashes between steps
WRITE_STEPS = [
    ("GET", "HEAD"),
    ("GET", "manifests"),
    ("GET", "parts"),  # the part and the tree, one parallel round
    ("GET", "parts"),
    ("GET", "ids"),
    ("GET", "buckets"),
    ("PUT", "buckets or ids"),
    ("PUT", "buckets or ids"),
    ("PUT", "parts"),  # the part the write changed (the tree did not change: not PUT again)
    ("PUT", "manifests"),
    ("PUT", "HEAD"),
]


@pytest.mark.parametrize("event", [UPSERT, DELETE], ids=["upsert", "delete"])
def test_a_clean_write_makes_the_requests_the_crash_tests_cover(live: Live, event: dict[str, Any]) -> None:
    recorder = live.inject(Recorder())

    live.run_write(event)

    sent = recorder.sent
    assert sent[:6] == WRITE_STEPS[:6]
    assert sorted(sent[6:8]) == [("PUT", "buckets"), ("PUT", "ids")]  # one round, in parallel
    assert sent[8:] == WRITE_STEPS[8:]


@pytest.mark.parametrize(
    "step", range(1, len(WRITE_STEPS) + 1), ids=lambda s: f"{s}-{' '.join(WRITE_STEPS[s - 1])}"
)
def test_upsert_crashing_at_any_request_leaves_the_previous_version_serving(live: Live, step: int) -> None:
    head = live.head()
    crash = live.inject(CrashAt(step))

    with pytest.raises(InternalError):  # the handler hides the crash's text
        live.run_write(UPSERT)

    assert len(crash.sent) == step - 1
    live.heal()
    live.assert_serving_previous_version(head)
    retried = live.run_write(UPSERT)
    assert retried["attempts"] == 1
    assert_write_landed(live, UPSERT, retried)


def test_delete_crashing_at_each_request_in_turn_never_publishes_and_then_succeeds(live: Live) -> None:
    # One collection for all eight crashes (a crash changes nothing a reader can see, which
    # is the point): each leaves at most orphans, and the ninth, clean attempt lands.
    head = live.head()
    for step, (method, kind) in enumerate(WRITE_STEPS, start=1):
        crash = live.inject(CrashAt(step))
        with pytest.raises(InternalError):
            live.run_write(DELETE)
        assert len(crash.sent) == step - 1, (step, method, kind)
        live.heal()
        live.assert_serving_previous_version(head)

    retried = live.run_write(DELETE)

    assert retried["attempts"] == 1
    assert_write_landed(live, DELETE, retried)


# --------------------------------------------------------------------------- the tail
#: A write that fits the unmerged tail: HEAD, the root, its part and tree, the id shard (is
#: the id new?), then one segment, the root and HEAD — no bucket, part or shard is written.
TAIL_WRITE_STEPS = [
    ("GET", "HEAD"),
    ("GET", "manifests"),
    ("GET", "parts"),
    ("GET", "parts"),
    ("GET", "ids"),
    ("PUT", "tail"),
    ("PUT", "manifests"),
    ("PUT", "HEAD"),
]


@pytest.fixture
def tail_live(live: Live) -> Live:
    """The test collection rebuilt with a tail of 50 rows: small writes stay in the tail."""
    live.built = live.build.lambda_handler(build_event(tail_rows=50, replace=True), live.context)
    return live


def _clustered(first_id: int, n: int, seed: int) -> dict[str, Any]:
    """An upsert of ``n`` vectors close together (they route to one bucket)."""
    rng = np.random.default_rng(seed)
    vectors = VECTORS[0] + 0.01 * rng.normal(size=(n, DIM))
    items = [{"id": first_id + i, "vector": v.tolist(), "label": "c1"} for i, v in enumerate(vectors)]
    return {"collection": COLLECTION, "operation": "upsert", "items": items}


def test_a_write_to_the_tail_puts_one_segment_root_and_head(tail_live: Live) -> None:
    recorder = tail_live.inject(Recorder())

    response = tail_live.run_write(UPSERT)

    assert recorder.sent == TAIL_WRITE_STEPS
    assert (response["tail_segments"], response["merged"], response["buckets_written"]) == (1, False, 0)
    assert_write_landed(tail_live, UPSERT, response)


def test_a_tail_write_crashing_at_each_request_in_turn_never_publishes_and_then_succeeds(
    tail_live: Live,
) -> None:
    head = tail_live.head()
    for step in range(1, len(TAIL_WRITE_STEPS) + 1):
        crash = tail_live.inject(CrashAt(step))
        with pytest.raises(InternalError):
            tail_live.run_write(UPSERT)
        assert len(crash.sent) == step - 1
        tail_live.heal()
        tail_live.assert_serving_previous_version(head)

    retried = tail_live.run_write(UPSERT)

    assert retried["attempts"] == 1
    assert_write_landed(tail_live, UPSERT, retried)


def test_a_maintenance_commit_crashing_at_each_request_in_turn_leaves_the_previous_version_serving(
    tail_live: Live,
) -> None:
    # 40 rows wait in the tail; 40 more pass its limit of 50, so the next write merges all 80
    # into one bucket of ~50 rows, which passes 2 × bucket_size and is split: every request of
    # that commit (tail, directory and bucket reads; bucket, shard, part, root and HEAD writes)
    # is in turn the one the writer dies at.
    first = _clustered(20_000, 40, seed=1)
    tail_live.run_write(first)
    merging = _clustered(30_000, 40, seed=2)
    probe = {**QUERY, "vectors": [VECTORS[0].tolist(), NEW_VECTOR.tolist()], "k": 10}
    before, head = tail_live.run_query(probe), tail_live.head()

    steps = 0
    while True:
        steps += 1
        crash = tail_live.inject(CrashAt(steps))
        try:
            landed = tail_live.run_write(merging)
        except InternalError:
            assert len(crash.sent) == steps - 1
            tail_live.heal()
            assert tail_live.head() == head
            assert tail_live.run_query(probe)["results"] == before["results"]
            continue
        tail_live.heal()
        break

    assert steps > 12  # the merge made every request the test counts on (crashed at each)
    assert landed["attempts"] == 1
    assert landed["merged"]
    assert landed["buckets_split"] >= 1
    assert (landed["tail_segments"], landed["count"]) == (0, N + 80)
    for event in (first, merging):  # every row of both writes, found at distance ~0
        vectors = [item["vector"] for item in event["items"]]
        got = tail_live.run_query({**QUERY, "vectors": vectors, "k": 1})
        assert [hits[0]["id"] for hits in got["results"]] == [item["id"] for item in event["items"]]
        assert max(hits[0]["distance"] for hits in got["results"]) < 1e-6


#: A rebuild split into at most 2**2 = 4 buckets and one id shard: HEAD, 5 uploads, manifest, HEAD.
REBUILD = build_event(max_depth=2, bucket_size=30, projection="none", replace=True)  # over the live version
BUILD_STEPS = 10


def test_a_clean_rebuild_makes_the_requests_the_crash_tests_cover(live: Live) -> None:
    recorder = live.inject(Recorder())

    built = live.build.lambda_handler(REBUILD, live.context)

    assert built["buckets"] == 4
    sent = recorder.sent
    assert len(sent) == BUILD_STEPS
    assert sent[0] == ("GET", "HEAD")
    assert sorted(sent[1:6]) == [("PUT", "buckets")] * 4 + [("PUT", "ids")]
    assert sent[6:] == [("PUT", "parts"), ("PUT", "parts"), ("PUT", "manifests"), ("PUT", "HEAD")]


@pytest.mark.parametrize("step", range(1, BUILD_STEPS + 1))
def test_rebuild_crashing_before_any_request_leaves_the_previous_version_serving(
    live: Live, step: int
) -> None:
    head = live.head()
    crash = live.inject(CrashAt(step))

    with pytest.raises(InternalError):
        live.build.lambda_handler(REBUILD, live.context)

    assert len(crash.sent) == step - 1
    live.heal()
    live.assert_serving_previous_version(head)
    rebuilt = live.build.lambda_handler(REBUILD, live.context)
    assert (
        live.run_query()["version"] == rebuilt["version"] == decode_head(live.head()[0], key=HEAD_KEY).version
    )


# --------------------------------------------------------------------------- missing objects
def _bucket_holding(live: Live, ident: int) -> str:
    """Key of the bucket that stores ``ident`` (read straight from S3)."""
    m = live.manifest()
    for fp in m.buckets.fingerprints:
        key = layout.bucket_key(COLLECTION, fp)
        bucket = decode_bucket(live.s3.get_object(Bucket=INDEX, Key=key)["Body"].read(), key=key)
        if ident in bucket.ids.to_numpy().tolist():
            return key
    raise AssertionError(f"id {ident} is in no bucket")


@pytest.mark.parametrize("path", ["query", "write"])
def test_missing_bucket_fails_with_corrupt_object_naming_it(live: Live, path: str) -> None:
    key = _bucket_holding(live, DELETED_ID)
    live.s3.delete_object(Bucket=INDEX, Key=key)
    head = live.head()

    with pytest.raises(CorruptObject, match=re.escape(key)):
        live.run_query() if path == "query" else live.run_write(DELETE)

    assert live.head() == head


def test_missing_id_shard_fails_a_write_with_corrupt_object_naming_it(live: Live) -> None:
    (shard,) = live.manifest().id_shards
    key = layout.id_shard_key(COLLECTION, shard)
    live.s3.delete_object(Bucket=INDEX, Key=key)
    head = live.head()

    with pytest.raises(CorruptObject, match=re.escape(key)):
        live.run_write(UPSERT)

    live.assert_serving_previous_version(head)


# --------------------------------------------------------------------------- lost responses
class HeadSwapResponseLost:
    """The first PUT of HEAD reaches S3 and is applied, but its response never arrives.

    The hook applies the request itself (same body, same If-Match) through the test's own
    client, then drops the connection; botocore retries the PUT, which now fails its
    If-Match — against the write's own new HEAD.
    """

    def __init__(self, s3: Any) -> None:
        self.s3, self.fired = s3, False

    def __call__(self, request: Any, **kwargs: Any) -> None:
        bucket, key, kind = request_target(request)
        if self.fired or request.method != "PUT" or kind != "HEAD":
            return
        self.fired = True
        if_match = request.headers["If-Match"]
        if isinstance(if_match, bytes):
            if_match = if_match.decode()
        self.s3.put_object(Bucket=bucket, Key=key, Body=request.body, IfMatch=if_match)
        raise ConnectionClosedError(endpoint_url=request.url)


def test_upsert_whose_head_swap_response_is_lost_is_still_acknowledged_correctly(live: Live) -> None:
    lost = live.inject(HeadSwapResponseLost(live.s3))

    response = live.run_write(UPSERT)

    assert lost.fired
    live.heal()
    assert_write_landed(live, UPSERT, response)


def test_delete_whose_head_swap_response_is_lost_reports_the_id_as_deleted(live: Live) -> None:
    live.inject(HeadSwapResponseLost(live.s3))

    response = live.run_write(DELETE)

    live.heal()
    assert_write_landed(live, DELETE, response)


def test_rebuild_whose_head_swap_response_is_lost_is_reported_as_published(live: Live) -> None:
    live.inject(HeadSwapResponseLost(live.s3))

    try:
        rebuilt = live.build.lambda_handler(REBUILD, live.context)
    except Conflict:
        rebuilt = None
    live.heal()
    head = decode_head(live.head()[0], key=HEAD_KEY).version
    assert head != live.built["version"]  # the swap did happen
    assert rebuilt is not None
    assert rebuilt["version"] == head


# --------------------------------------------------------------------------- whose fault: caller or S3
SOURCE = local.SOURCE_BUCKET
NPY_BUILD = {
    "collection": "from-source",
    "source": {"vectors": f"s3://{SOURCE}/faulty/vectors.npy", "ids": f"s3://{SOURCE}/faulty/ids.npy"},
    "bucket_size": 60,
}


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def source_reads_fail(monkeypatch: pytest.MonkeyPatch, status: int, code: str, key: str) -> list[str]:
    """The shared client's GETs of ``key`` in the source bucket fail with ``status``/``code``.

    The error is raised where botocore would raise it after its retries ran out, so it
    travels through the library's real translation. Returns the keys whose GET failed.
    """
    client = storage.s3_client(storage.DEFAULT_CONCURRENCY)
    real = client.get_object
    failed: list[str] = []

    def get_object(**kwargs: Any) -> Any:
        if kwargs["Bucket"] == SOURCE and kwargs["Key"] == key:
            failed.append(kwargs["Key"])
            error = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
            raise ClientError(error, "GetObject")  # type: ignore[arg-type]
        return real(**kwargs)

    monkeypatch.setattr(client, "get_object", get_object)
    return failed


@pytest.fixture
def sources(s3: Any) -> Any:
    s3.put_object(Bucket=SOURCE, Key="faulty/vectors.npy", Body=_npy(VECTORS))
    s3.put_object(Bucket=SOURCE, Key="faulty/ids.npy", Body=_npy(np.arange(N)))
    return s3


@pytest.mark.parametrize(("status", "code"), [(503, "SlowDown"), (500, "InternalError")])
def test_a_source_read_failing_in_s3_is_a_storage_error_not_the_callers_fault(
    sources: Any, monkeypatch: pytest.MonkeyPatch, status: int, code: str
) -> None:
    failed = source_reads_fail(monkeypatch, status, code, "faulty/ids.npy")

    with pytest.raises(StorageError) as info:
        service.build(NPY_BUILD, ObjectStore(INDEX))

    assert failed == ["faulty/ids.npy"]
    assert not isinstance(info.value, InvalidRequest)  # so a caller retries it
    assert info.value.uri == f"s3://{SOURCE}/faulty/ids.npy"
    assert code in str(info.value)
    assert "Contents" not in sources.list_objects_v2(Bucket=INDEX)  # nothing written


def test_the_build_handler_reports_a_throttled_source_as_a_storage_error(
    sources: Any, build_handler: ModuleType, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_reads_fail(monkeypatch, 503, "SlowDown", "faulty/vectors.npy")
    with pytest.raises(StorageError, match=rf"s3://{SOURCE}/faulty/vectors\.npy.*SlowDown"):
        build_handler.lambda_handler(NPY_BUILD, lambda_context)


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ({"ids": f"s3://{SOURCE}/faulty/missing.npy"}, "which does not exist"),
        (
            {"ids": "s3://kdbuckets-no-such-source-bucket/ids.npy"},
            "bucket 'kdbuckets-no-such-source-bucket' does not exist",
        ),
        ({"ids": f"s3://{SOURCE}/faulty/secret.npy"}, "access denied"),
    ],
    ids=["missing object", "missing bucket", "403"],
)
def test_a_source_the_caller_named_wrong_is_a_source_error_naming_field_and_uri(
    sources: Any, monkeypatch: pytest.MonkeyPatch, source: dict[str, str], problem: str
) -> None:
    source_reads_fail(monkeypatch, 403, "AccessDenied", "faulty/secret.npy")
    event = {**NPY_BUILD, "source": {**NPY_BUILD["source"], **source}}

    with pytest.raises(SourceError) as info:
        service.build(event, ObjectStore(INDEX))

    assert info.value.field == "source.ids"
    assert source["ids"] in info.value.problem
    assert problem in info.value.problem


# --------------------------------------------------------------------------- the index bucket is missing
NEVER_CREATED = "kdbuckets-index-never-created"
ITEMS = [{"id": i, "vector": VECTORS[i].tolist()} for i in range(5)]
OPERATIONS: dict[str, Any] = {
    "build": lambda store: service.build({"collection": "c", "source": {"items": ITEMS}}, store),
    "query": lambda store: service.query(
        {"collection": "c", "vectors": [ITEMS[0]["vector"]]}, Searcher(store)
    ),
    "upsert": lambda store: service.write({"collection": "c", "operation": "upsert", "items": ITEMS}, store),
    "delete": lambda store: service.write({"collection": "c", "operation": "delete", "ids": [1]}, store),
    "versions": lambda store: service.write({"collection": "c", "operation": "versions"}, store),
    "gc": lambda store: service.write({"collection": "c", "operation": "gc"}, store),
}


@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_a_missing_index_bucket_is_a_configuration_error_not_a_missing_collection(
    s3: Any, operation: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        OPERATIONS[operation](ObjectStore(NEVER_CREATED, "idx/"))

    assert not isinstance(info.value, CollectionNotFound)
    assert str(info.value) == f"index bucket '{NEVER_CREATED}' does not exist; check INDEX_BUCKET"


@pytest.mark.parametrize("function", ["query", "write", "build"])
def test_the_handlers_report_a_missing_index_bucket_as_a_configuration_error(
    s3: Any,
    query_handler: ModuleType,
    write_handler: ModuleType,
    build_handler: ModuleType,
    lambda_context: Any,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
) -> None:
    monkeypatch.setenv("INDEX_BUCKET", NEVER_CREATED)
    query_handler._searcher = None
    handler, event = {
        "query": (query_handler, {"collection": "c", "vectors": [ITEMS[0]["vector"]]}),
        "write": (write_handler, {"collection": "c", "operation": "delete", "ids": [1]}),
        "build": (build_handler, {"collection": "c", "source": {"items": ITEMS}}),
    }[function]

    with pytest.raises(
        ConfigurationError, match=rf"^index bucket '{NEVER_CREATED}' does not exist; check INDEX_BUCKET$"
    ):
        handler.lambda_handler(event, lambda_context)
