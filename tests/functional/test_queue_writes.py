"""Queued writes: the write handler fed real SQS events from moto's FIFO queue.

Producers send write events to a FIFO queue (message group = collection); moto's
``receive_message`` answers are wrapped into the event Lambda's SQS event source mapping
delivers (``devtools.demo_writes.sqs_event``) and passed to the real
``functions/write/app.lambda_handler``; what it does not report as a batch item failure is
deleted from the queue, as the mapping does. Faults are injected at the botocore level on the
library's S3 client (a ``before-send`` hook that raises), never in the project's code.

Pinned: a batch commits once per collection; a bad message goes to the dead-letter queue with
its reason, body unchanged and nothing of it written, while the others commit; later operations
on an id override earlier ones; a message that fails for a transient reason is reported with
every later message of its group and is applied, in order, when delivered again; upserts by
reference read their items from S3 JSON Lines; the committed sample event applies as stated.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import numpy as np
import pytest
from botocore.exceptions import ClientError

from devtools import local
from devtools.demo_writes import Delivery, EventSourceMapping, Queues, create_queues, receive_all, send_write
from kdbuckets import ObjectStore, Searcher, describe_version, list_versions, service, storage
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

INDEX = local.INDEX_BUCKET
SOURCE = local.SOURCE_BUCKET
REGION = "us-east-1"
N, DIM = 120, 8
BASE = np.random.default_rng(11).normal(size=(N, DIM)).astype(np.float32)
NEW = np.random.default_rng(12).normal(size=(64, DIM)).astype(np.float32)


def item(ident: str, vector: np.ndarray, label: str = "x") -> dict[str, Any]:
    return {"id": ident, "vector": [float(x) for x in vector], "label": label}


def upsert(collection: str, *items: dict[str, Any]) -> dict[str, Any]:
    return {"collection": collection, "operation": "upsert", "items": list(items)}


def delete(collection: str, *ids: str) -> dict[str, Any]:
    return {"collection": collection, "operation": "delete", "ids": list(ids)}


@dataclass
class Harness:
    """The index, the queues, the event source mapping in front of the real handler."""

    store: ObjectStore
    sqs: Any
    queues: Queues
    esm: EventSourceMapping
    handler: ModuleType

    def send(self, *bodies: dict[str, Any]) -> list[str]:
        return [send_write(self.sqs, self.queues.url, body) for body in bodies]

    def deliver(self) -> Delivery:
        delivery = self.esm.poll()
        assert delivery is not None, "the queue delivered nothing"
        return delivery

    def dead_letters(self) -> list[dict[str, Any]]:
        return receive_all(self.sqs, self.queues.dead_letter_url)

    def versions(self, collection: str) -> int:
        return len(list_versions(self.store, collection))

    def count(self, collection: str) -> int:
        live = next(v.version for v in list_versions(self.store, collection) if v.is_head)
        return int(describe_version(self.store, collection, live)["count"])

    def nearest(self, collection: str, vector: np.ndarray, k: int = 1) -> list[tuple[Any, float]]:
        """Exhaustive search from a cold searcher: (id, distance) nearest first."""
        hits = Searcher(self.store).search(collection, vector[None, :], k=k, probes=4096)
        return list(zip(hits.ids[0], hits.distances[0].tolist(), strict=True))

    def holds(self, collection: str, ident: str, vector: np.ndarray) -> bool:
        """True when ``ident`` is stored with exactly this vector (found at distance ~0)."""
        return any(i == ident and d < 1e-5 for i, d in self.nearest(collection, vector, k=3))

    def absent(self, collection: str, ident: str, vector: np.ndarray) -> bool:
        return all(i != ident for i, _ in self.nearest(collection, vector, k=10))


def seed(store: ObjectStore, name: str) -> None:
    ids = np.array([f"{name}-{i}" for i in range(N)])
    labels = np.array(["x" if i % 2 else "y" for i in range(N)])
    data = make_collection(BASE, ids, labels, metric="cosine")
    build_index(store, name, data, BuildParams(bucket_size=40, dtype="float32", refine=2))


@pytest.fixture
def harness(
    s3: Any, write_handler: ModuleType, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> Harness:
    store = ObjectStore(INDEX, client=boto3.client("s3", region_name=REGION))  # never faulted
    for name in ("alpha", "beta"):
        seed(store, name)
    sqs = boto3.client("sqs", region_name=REGION)
    queues = create_queues(sqs)
    monkeypatch.setenv("DEAD_LETTER_QUEUE_URL", queues.dead_letter_url)
    esm = EventSourceMapping(sqs, queues, lambda event: write_handler.lambda_handler(event, lambda_context))
    return Harness(store, sqs, queues, esm, write_handler)


@pytest.fixture
def unreachable() -> Iterator[Callable[[str], None]]:
    """``unreachable("/beta/")``: every S3 request of the handlers whose path holds it fails (503).

    Hooked on the library's shared client (the handlers' ObjectStore uses it); raised before the
    request is sent, so botocore does not retry it.
    """
    client = storage.s3_client(storage.DEFAULT_CONCURRENCY)
    hooks: list[Callable[..., None]] = []

    def install(fragment: str) -> None:
        def fail(request: Any, **_: Any) -> None:
            if fragment in unquote(urlsplit(request.url).path):
                error = {"Code": "SlowDown", "Message": "injected: unreachable"}
                raise ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": 503}}, "S3")

        client.meta.events.register("before-send.s3", fail)
        hooks.append(fail)

    yield install
    for hook in hooks:
        client.meta.events.unregister("before-send.s3", hook)


def redeliver(harness: Harness, delivery: Delivery) -> None:
    """End the visibility timeout of a delivery's failed messages now (AWS waits it out)."""
    handles = {r["messageId"]: r["receiptHandle"] for r in delivery.event["Records"]}
    for message_id in delivery.failed:
        harness.sqs.change_message_visibility(
            QueueUrl=harness.queues.url, ReceiptHandle=handles[message_id], VisibilityTimeout=0
        )


# --------------------------------------------------------------------------- tests
def test_a_bad_message_goes_to_the_dead_letter_queue_with_its_reason_and_the_others_commit_once(
    harness: Harness,
) -> None:
    bad = upsert("alpha", {"id": "alpha-bad", "vector": [1.0, 2.0, 3.0], "label": "x"})
    ids = harness.send(
        upsert("alpha", item("new-1", NEW[1])),
        bad,
        upsert("alpha", item("new-2", NEW[2])),
        delete("alpha", "alpha-0"),
    )
    before = harness.versions("alpha")

    delivery = harness.deliver()

    assert delivery.failed == []  # the bad message is handled (dead-lettered), not retried
    assert delivery.message_ids == ids
    assert harness.versions("alpha") == before + 1
    assert harness.count("alpha") == N + 2 - 1
    assert harness.holds("alpha", "new-1", NEW[1])
    assert harness.holds("alpha", "new-2", NEW[2])
    assert harness.absent("alpha", "alpha-0", BASE[0])
    (dead,) = harness.dead_letters()
    assert json.loads(dead["Body"]) == bad, "the body is kept as sent, so a redrive can replay it"
    attributes = {k: v["StringValue"] for k, v in dead["MessageAttributes"].items()}
    assert attributes["error"] == "InvalidRequest"
    assert attributes["reason"] == "items[0].vector has 3 dimensions; collection 'alpha' has 8"
    assert attributes["source_message_id"] == ids[1]
    assert dead["Attributes"]["MessageGroupId"] == "alpha"
    assert receive_all(harness.sqs, harness.queues.url) == [], "every message was deleted from the queue"


def test_later_operations_on_an_id_override_earlier_ones_within_a_batch(harness: Harness) -> None:
    before = harness.versions("alpha")
    harness.send(
        upsert("alpha", item("gone", NEW[3])),
        delete("alpha", "gone"),  # upsert then delete: deleted
        delete("alpha", "alpha-1"),
        upsert("alpha", item("alpha-1", NEW[4])),  # delete then upsert: upserted, new value
        upsert("alpha", item("twice", NEW[5])),
        upsert("alpha", item("twice", NEW[6], "y")),  # the last upsert wins
    )

    assert harness.deliver().failed == []

    assert harness.versions("alpha") == before + 1
    assert harness.count("alpha") == N + 1
    assert harness.absent("alpha", "gone", NEW[3])
    assert harness.holds("alpha", "alpha-1", NEW[4])
    assert not harness.holds("alpha", "alpha-1", BASE[1])
    assert harness.holds("alpha", "twice", NEW[6])
    assert not harness.holds("alpha", "twice", NEW[5])


def test_a_batch_spanning_two_collections_makes_one_commit_per_collection(harness: Harness) -> None:
    before = {c: harness.versions(c) for c in ("alpha", "beta")}
    bodies = [upsert(c, item(f"{c}-new-{i}", NEW[10 + i])) for i in range(5) for c in ("alpha", "beta")]
    harness.send(*bodies)

    delivery = harness.deliver()

    assert len(delivery.message_ids) == 10
    assert delivery.failed == []
    assert {c: harness.versions(c) - before[c] for c in before} == {"alpha": 1, "beta": 1}
    for i in range(5):
        for c in ("alpha", "beta"):
            assert harness.holds(c, f"{c}-new-{i}", NEW[10 + i])


def test_a_transient_failure_fails_its_message_and_every_later_one_of_its_group(
    harness: Harness, unreachable: Callable[[str], None]
) -> None:
    ids = harness.send(
        upsert("beta", item("b-1", NEW[20])),
        upsert("alpha", item("a-1", NEW[21])),
        delete("beta", "beta-3"),
        upsert("alpha", item("a-2", NEW[22])),
        upsert("beta", item("b-1", NEW[23])),
    )
    before = {c: harness.versions(c) for c in ("alpha", "beta")}
    unreachable("/beta/")

    delivery = harness.deliver()

    assert delivery.failed == [ids[0], ids[2], ids[4]], "beta's messages, in order"
    assert harness.dead_letters() == []
    assert {c: harness.versions(c) - before[c] for c in before} == {"alpha": 1, "beta": 0}
    assert harness.holds("alpha", "a-1", NEW[21])
    assert harness.holds("alpha", "a-2", NEW[22])

    storage.reset_clients()  # S3 is reachable again (the hook lived on the forgotten client)
    redeliver(harness, delivery)
    again = harness.deliver()

    assert again.message_ids == [ids[0], ids[2], ids[4]], "delivered again in their order"
    assert again.failed == []
    assert harness.versions("beta") == before["beta"] + 1
    assert harness.holds("beta", "b-1", NEW[23])
    assert harness.absent("beta", "beta-3", BASE[3])


def test_a_group_whose_every_message_fails_is_reported_whole_not_raised(
    harness: Harness, unreachable: Callable[[str], None]
) -> None:
    ids = harness.send(upsert("beta", item("b-2", NEW[24])), delete("beta", "beta-4"))
    unreachable("/beta/")

    delivery = harness.deliver()

    assert delivery.failed == ids


def test_an_upsert_by_reference_reads_its_items_from_s3_json_lines(harness: Harness) -> None:
    lines = "".join(json.dumps(item(f"ref-{i}", NEW[30 + i])) + "\n" for i in range(20))
    harness.store.client.put_object(
        Bucket=SOURCE, Key="payloads/alpha-1.jsonl.gz", Body=gzip.compress(lines.encode())
    )
    missing = f"s3://{SOURCE}/payloads/missing.jsonl"
    harness.send(
        {
            "collection": "alpha",
            "operation": "upsert",
            "items_uri": f"s3://{SOURCE}/payloads/alpha-1.jsonl.gz",
        },
        {"collection": "alpha", "operation": "upsert", "items_uri": missing},
    )

    assert harness.deliver().failed == []

    assert harness.count("alpha") == N + 20
    assert all(harness.holds("alpha", f"ref-{i}", NEW[30 + i]) for i in (0, 7, 19))
    (dead,) = harness.dead_letters()
    reason = dead["MessageAttributes"]["reason"]["StringValue"]
    assert reason == f"items_uri names {missing}, which does not exist"


def test_an_items_uri_that_cannot_be_read_now_cuts_the_group_after_the_messages_before_it(
    harness: Harness, unreachable: Callable[[str], None]
) -> None:
    harness.store.client.put_object(
        Bucket=SOURCE, Key="payloads/slow.jsonl", Body=json.dumps(item("slow", NEW[40])).encode()
    )
    ids = harness.send(
        upsert("alpha", item("first", NEW[41])),
        {"collection": "alpha", "operation": "upsert", "items_uri": f"s3://{SOURCE}/payloads/slow.jsonl"},
        upsert("alpha", item("after", NEW[42])),
    )
    unreachable("/payloads/slow")

    delivery = harness.deliver()

    assert delivery.failed == ids[1:]
    assert harness.holds("alpha", "first", NEW[41])
    assert harness.absent("alpha", "after", NEW[42])


def test_the_committed_sqs_event_applies_to_the_tiny_collection(
    s3: Any, write_handler: ModuleType, lambda_context: Any, load_event: Callable[[str], dict[str, Any]]
) -> None:
    store = ObjectStore(INDEX)
    service.build(load_event("build_inline.json"), store)
    before = len(list_versions(store, "tiny"))

    response = write_handler.lambda_handler(load_event("sqs_write_batch.json"), lambda_context)

    assert response == {"batchItemFailures": []}
    assert len(list_versions(store, "tiny")) == before + 1
    hits = Searcher(store).search("tiny", np.array([[0.9, 0.0, 0.1, 0.0]], np.float32), k=1, probes=4096)
    assert hits.ids[0][0] == "sport-5"
    assert hits.metadata[0][0] == {"year": 2026, "lang": "en"}, "the last upsert of sport-5 won"
    ids = Searcher(store).search("tiny", np.ones((1, 4), np.float32), k=20, probes=4096).ids[0]
    assert {i for i in ids if i is not None} == {
        "sport-1",
        "sport-2",
        "sport-3",
        "sport-5",
        "food-1",
        "food-2",
        "music-1",
        "music-2",
        "music-3",
    }


def test_a_direct_write_event_still_takes_the_direct_path(harness: Harness, lambda_context: Any) -> None:
    response = harness.handler.lambda_handler(upsert("alpha", item("direct", NEW[50])), lambda_context)

    assert response["operation"] == "upsert"
    assert response["upserted"] == 1
    assert harness.holds("alpha", "direct", NEW[50])
