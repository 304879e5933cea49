"""Publishing is all-or-nothing, and two writers cannot both win.

- A build that fails midway (a failure injected at the botocore level after N bucket writes,
  at the manifest write, or at the HEAD write) leaves HEAD, and therefore every query, on the
  previous version; the next attempt succeeds.
- Two builds racing on one collection, over real HTTP against a moto server: a botocore hook
  holds both right before their HEAD write until both have arrived (so both computed their
  compare-and-swap from the same old HEAD), then lets them through one at a time. Exactly one
  wins; the other gets :class:`Conflict`; HEAD names the winner's complete manifest.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import Conflict, KdBucketsError, layout, storage
from kdbuckets.bucket import decode_bucket
from kdbuckets.manifest import decode_head
from tests.conftest import read_manifest

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

INDEX = local.INDEX_BUCKET
HEAD_KEY = layout.head_key(local.COLLECTION)


def shared_client() -> Any:
    """The client every ObjectStore of default concurrency (both handlers') uses."""
    return storage.s3_client(storage.DEFAULT_CONCURRENCY)


class FailPuts:
    """Raise on PutObject of keys of one kind (HEAD, manifests, buckets) after ``after`` of them."""

    def __init__(self, kind: str, after: int) -> None:
        self.kind, self.after, self.seen = kind, after, 0
        self.lock = threading.Lock()

    def __call__(self, params: dict[str, Any], **kwargs: Any) -> None:
        key = params["Key"]
        if not (key.endswith("/HEAD") if self.kind == "HEAD" else f"/{self.kind}/" in key):
            return
        with self.lock:
            self.seen += 1
            if self.seen > self.after:
                raise RuntimeError(f"injected failure on PutObject {key}")


def index_objects(s3: Any, prefix: str) -> dict[str, str]:
    contents = s3.list_objects_v2(Bucket=INDEX, Prefix=prefix).get("Contents", [])
    return {o["Key"]: o["ETag"] for o in contents}


# --------------------------------------------------------------------------- failing midway
@pytest.mark.parametrize(
    ("kind", "after"),
    [("buckets", 3), ("manifests", 0), ("HEAD", 0)],
    ids=["after-3-bucket-puts", "at-the-manifest", "at-the-head-swap"],
)
def test_build_failing_midway_leaves_the_previous_version_live(
    s3: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    upload_sample: Any,
    kind: str,
    after: int,
) -> None:
    upload_sample(s3)
    v1 = build_handler.lambda_handler({**load_event("build_npy.json"), "bucket_size": 100}, lambda_context)
    query = {**load_event("query_batch.json"), "probes": 6}
    before = query_handler.lambda_handler(query, lambda_context)
    head_before = s3.get_object(Bucket=INDEX, Key=HEAD_KEY)
    head_body = head_before["Body"].read()
    v2_event = {
        **load_event("build_npy.json"),
        "bucket_size": 150,
        "replace": True,
    }  # other buckets than v1's
    failure = FailPuts(kind, after)
    shared_client().meta.events.register("before-parameter-build.s3.PutObject", failure)

    with pytest.raises(KdBucketsError):
        build_handler.lambda_handler(v2_event, lambda_context)

    assert failure.seen > after  # the failure really was reached
    head_after = s3.get_object(Bucket=INDEX, Key=HEAD_KEY)
    assert head_after["ETag"] == head_before["ETag"]
    assert head_after["Body"].read() == head_body
    manifests = index_objects(s3, f"{local.COLLECTION}/manifests/")
    if kind != "HEAD":
        assert list(manifests) == [v1["manifest"]]
    query_handler._searcher = None  # a new container reads HEAD afresh
    during = query_handler.lambda_handler(query, lambda_context)
    assert during["version"] == v1["version"]
    assert during["results"] == before["results"]

    shared_client().meta.events.unregister("before-parameter-build.s3.PutObject", failure)
    v2 = build_handler.lambda_handler(v2_event, lambda_context)

    assert v2["version"] != v1["version"]
    head = decode_head(s3.get_object(Bucket=INDEX, Key=HEAD_KEY)["Body"].read(), key=HEAD_KEY)
    assert head.version == v2["version"]
    manifest = read_manifest(s3, v2["manifest"])
    assert manifest.parent == v1["version"]
    query_handler._searcher = None
    after_retry = query_handler.lambda_handler(query, lambda_context)
    assert after_retry["version"] == v2["version"]


# --------------------------------------------------------------------------- racing writers
class HoldHeadWrites:
    """Hold every HEAD PutObject until ``parties`` builds are there, then send them one by one.

    The barrier makes the race certain (each build read HEAD before either wrote it); sending
    the writes one at a time keeps the outcome independent of whether the server checks a
    precondition and stores the object atomically (moto's server does not).
    """

    def __init__(self, parties: int = 2) -> None:
        self.barrier = threading.Barrier(parties, timeout=60)
        self.turn = threading.Lock()
        self.arrived = 0

    def install(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.s3.PutObject", self.before)
        client.meta.events.register("after-call.s3.PutObject", self.after)
        client.meta.events.register("after-call-error.s3.PutObject", self.after)

    def uninstall(self, client: Any) -> None:
        client.meta.events.unregister("before-parameter-build.s3.PutObject", self.before)
        client.meta.events.unregister("after-call.s3.PutObject", self.after)
        client.meta.events.unregister("after-call-error.s3.PutObject", self.after)

    def before(self, params: dict[str, Any], context: dict[str, Any], **kwargs: Any) -> None:
        if params["Key"].endswith("/HEAD"):
            self.arrived += 1
            self.barrier.wait()
            if self.turn.acquire(timeout=60):
                context["holds_head_turn"] = True

    def after(self, context: dict[str, Any], **kwargs: Any) -> None:
        if context.pop("holds_head_turn", False):
            self.turn.release()


def items_event(sample: local.Sample, rows: slice, collection: str = "race") -> dict[str, Any]:
    """An inline build of some sample rows (first 16 dimensions keep the events small)."""
    vectors = sample.vectors[rows, :16]
    ids = sample.ids[rows]
    items = [{"id": str(i), "vector": v.tolist()} for i, v in zip(ids, vectors, strict=True)]
    return {"collection": collection, "source": {"items": items}, "bucket_size": 25, "replace": True}


def race(build_handler: ModuleType, lambda_context: Any, events: list[dict[str, Any]]) -> list[Any]:
    """Run the builds in parallel threads; each outcome is a response or the exception."""

    def build(event: dict[str, Any]) -> Any:
        try:
            return build_handler.lambda_handler(event, lambda_context)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(events)) as pool:
        return list(pool.map(build, events))


def assert_complete_and_queryable(
    s3: Any,
    query_handler: ModuleType,
    lambda_context: Any,
    winner: dict[str, Any],
    event: dict[str, Any],
    exact_knn: Any,
) -> None:
    """HEAD names the winner's manifest; each bucket verifies; queries answer from its data."""
    collection = winner["collection"]
    head_key = layout.head_key(collection)
    head = decode_head(s3.get_object(Bucket=INDEX, Key=head_key)["Body"].read(), key=head_key)
    assert head.version == winner["version"]
    manifest = read_manifest(s3, winner["manifest"])
    for fp in manifest.buckets.fingerprints:
        key = layout.bucket_key(collection, fp)
        decode_bucket(s3.get_object(Bucket=INDEX, Key=key)["Body"].read(), key=key, expected_fingerprint=fp)
    items = event["source"]["items"]
    data = np.array([it["vector"] for it in items])
    queries = data[:5] + 0.01
    query_handler._searcher = None
    response = query_handler.lambda_handler(
        {"collection": collection, "vectors": queries.tolist(), "k": 5, "probes": winner["buckets"]},
        lambda_context,
    )
    assert response["version"] == winner["version"]
    _, rows = exact_knn(data, queries, 5)
    assert [[h["id"] for h in hits] for hits in response["results"]] == [
        [items[r]["id"] for r in row] for row in rows.tolist()
    ]


@pytest.mark.parametrize("existing", [True, False], ids=["replacing-a-version", "first-version"])
def test_racing_builds_one_wins_and_the_other_gets_conflict(
    moto_server: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    sample: local.Sample,
    exact_knn: Any,
    existing: bool,
) -> None:
    s3 = moto_server.s3
    base = None
    if existing:
        base = build_handler.lambda_handler(items_event(sample, slice(400, 500)), lambda_context)
    events = [items_event(sample, slice(0, 200)), items_event(sample, slice(200, 400))]
    hold = HoldHeadWrites(parties=2)
    hold.install(shared_client())

    outcomes = race(build_handler, lambda_context, events)

    assert hold.arrived == 2  # both builds reached the HEAD swap before either made it
    winners = [i for i, out in enumerate(outcomes) if isinstance(out, dict)]
    losers = [i for i, out in enumerate(outcomes) if isinstance(out, Exception)]
    assert len(winners) == 1, outcomes
    assert len(losers) == 1, outcomes
    winner, loser = winners[0], losers[0]
    assert isinstance(outcomes[loser], Conflict), repr(outcomes[loser])
    assert "race" in str(outcomes[loser])
    assert_complete_and_queryable(
        s3, query_handler, lambda_context, outcomes[winner], events[winner], exact_knn
    )
    manifest = read_manifest(s3, outcomes[winner]["manifest"])
    assert manifest.parent == (base["version"] if base else None)

    hold.uninstall(shared_client())
    retried = build_handler.lambda_handler(events[loser], lambda_context)

    assert_complete_and_queryable(s3, query_handler, lambda_context, retried, events[loser], exact_knn)
    manifest = read_manifest(s3, retried["manifest"])
    assert manifest.parent == outcomes[winner]["version"]
