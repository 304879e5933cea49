"""`make demo-writes`: a stream of small upserts coalesced through an SQS FIFO queue, on local moto.

    python -m devtools.demo_writes [--writes 200] [--producers 4]

Why: the queue path's point is cost — many small writes, one commit per batch — so the demo
shows it next to the direct path on the same data: producers send upserts to a FIFO queue
(message group = collection), a loop plays Lambda's SQS event source mapping (receive up to ten
messages, wrap them into the event Lambda delivers, invoke ``functions/write/app.py`` unmodified,
delete what it did not report as a batch item failure), and every S3 request the library sends
is counted at the botocore level. Then the same upserts go one invocation each to the direct
path. One message with a wrong dimension rides along to show the dead-letter path.

The helpers here (the Lambda SQS record shape, the event source mapping, the request counter, a
serialised moto server) are shared with ``tests/functional/test_queue_writes.py`` and
``bench/queue_writes.py``.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import json
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import boto3
import numpy as np

from devtools import demo, local

REGION = "us-east-1"
QUEUE = "kdbuckets-writes.fifo"
DEAD_LETTER_QUEUE = "kdbuckets-writes-dlq.fifo"
#: Attributes Lambda copies from a received message into an SQS record (FIFO ones included).
RECORD_ATTRIBUTES = (
    "ApproximateReceiveCount",
    "SentTimestamp",
    "SenderId",
    "ApproximateFirstReceiveTimestamp",
    "SequenceNumber",
    "MessageGroupId",
    "MessageDeduplicationId",
    "AWSTraceHeader",
    "DeadLetterQueueSourceArn",
)
_KIND = ("HEAD", "manifests", "buckets", "ids", "parts", "tail")


# --------------------------------------------------------------------------- the SQS event
def sqs_record(message: dict[str, Any], queue_arn: str, region: str = REGION) -> dict[str, Any]:
    """One message as ``receive_message`` returns it, in the record shape Lambda delivers.

    Lambda's records spell keys in lower camel case (``messageId``, ``md5OfBody``), give message
    attributes as ``{"stringValue", "binaryValue" (base64), "stringListValues",
    "binaryListValues", "dataType"}`` and add ``eventSource``, ``eventSourceARN``, ``awsRegion``.
    """
    attributes = message.get("Attributes", {})
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message["Body"],
        "attributes": {k: attributes[k] for k in RECORD_ATTRIBUTES if k in attributes},
        "messageAttributes": {
            name: _record_attribute(value) for name, value in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message["MD5OfBody"],
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def _record_attribute(value: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"stringListValues": [], "binaryListValues": [], "dataType": value["DataType"]}
    if "StringValue" in value:
        out["stringValue"] = value["StringValue"]
    if "BinaryValue" in value:
        out["binaryValue"] = base64.b64encode(value["BinaryValue"]).decode()
    return out


def sqs_event(messages: list[dict[str, Any]], queue_arn: str, region: str = REGION) -> dict[str, Any]:
    """The event an SQS event source mapping invokes its function with."""
    return {"Records": [sqs_record(m, queue_arn, region) for m in messages]}


@dataclass(frozen=True)
class Queues:
    """A FIFO write queue and its dead-letter queue."""

    url: str
    arn: str
    dead_letter_url: str
    dead_letter_arn: str


def create_queues(
    sqs: Any, name: str = QUEUE, dead_letter: str = DEAD_LETTER_QUEUE, *, visibility_timeout: int = 30
) -> Queues:
    """The queues as template.yaml declares them (FIFO, redrive after 5 receives)."""
    dlq_url = sqs.create_queue(QueueName=dead_letter, Attributes={"FifoQueue": "true"})["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5})
    url = sqs.create_queue(
        QueueName=name,
        Attributes={
            "FifoQueue": "true",
            "VisibilityTimeout": str(visibility_timeout),
            "RedrivePolicy": redrive,
        },
    )["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return Queues(url, arn, dlq_url, dlq_arn)


def send_write(sqs: Any, queue_url: str, body: dict[str, Any]) -> str:
    """What a producer does: one write event as a message of its collection's group.

    The deduplication id is the producer's own idempotency key (a retried send within five
    minutes is accepted once); it also makes SQS assign the FIFO sequence number.
    """
    response = sqs.send_message(
        QueueUrl=queue_url,
        MessageBody=json.dumps(body),
        MessageGroupId=body["collection"],
        MessageDeduplicationId=uuid.uuid4().hex,
    )
    return str(response["MessageId"])


@dataclass(frozen=True)
class Delivery:
    """One batch delivered to the function and what came back."""

    event: dict[str, Any]
    response: dict[str, Any]

    @property
    def message_ids(self) -> list[str]:
        return [r["messageId"] for r in self.event["Records"]]

    @property
    def failed(self) -> list[str]:
        return [f["itemIdentifier"] for f in self.response.get("batchItemFailures", [])]


@dataclass
class EventSourceMapping:
    """What Lambda's SQS event source mapping does, in this process.

    Receive up to ``batch_size`` messages with every system and message attribute, invoke the
    handler with the SQS event, then delete the messages it did not report as batch item
    failures (``FunctionResponseTypes: [ReportBatchItemFailures]``); those stay in flight until
    their visibility timeout ends, as on AWS. A handler that raises fails the whole batch.
    """

    sqs: Any
    queues: Queues
    handler: Callable[[dict[str, Any]], dict[str, Any]]
    batch_size: int = 10

    def poll(self) -> Delivery | None:
        """One receive → invoke → delete cycle; None when the queue had nothing to deliver."""
        received = self.sqs.receive_message(
            QueueUrl=self.queues.url,
            MaxNumberOfMessages=self.batch_size,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        )
        messages = received.get("Messages", [])
        if not messages:
            return None
        event = sqs_event(messages, self.queues.arn)
        response = self.handler(event)
        failed = {f["itemIdentifier"] for f in response.get("batchItemFailures", [])}
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            entries = [
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done[start:][:10])
            ]
            self.sqs.delete_message_batch(QueueUrl=self.queues.url, Entries=entries)
        return Delivery(event, response)

    def drain(self) -> Iterator[Delivery]:
        """Deliver batches until the queue has nothing visible."""
        while (delivery := self.poll()) is not None:
            yield delivery


def receive_all(sqs: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every visible message of a queue with its attributes (for checks; nothing is deleted)."""
    out: list[dict[str, Any]] = []
    while True:
        got = sqs.receive_message(
            QueueUrl=queue_url,
            MaxNumberOfMessages=10,
            MessageSystemAttributeNames=["All"],
            MessageAttributeNames=["All"],
            WaitTimeSeconds=0,
        ).get("Messages", [])
        if not got:
            return out
        out += got


# --------------------------------------------------------------------------- counting S3 requests
@dataclass
class S3Requests:
    """Every request a botocore S3 client sends (retries included), by method and object kind.

    Hooked on ``before-send``, so it counts what goes on the wire; ``put_bytes`` sums the body
    sizes of PUTs (``X-Amz-Decoded-Content-Length`` when botocore streams a body with a
    trailing checksum, as it does over HTTPS, else ``Content-Length``). ``kind`` is the last
    path element that names a part of a collection (``HEAD``, ``manifests``, ``buckets``,
    ``ids``, …), else ``other``.
    """

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    put_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Any, **_: Any) -> None:
        parts = unquote(urlsplit(request.url).path).split("/")
        kind = next((p for p in reversed(parts[2:]) if p in _KIND), "other")
        headers = request.headers
        size = int(headers.get("X-Amz-Decoded-Content-Length") or headers.get("Content-Length") or 0)
        with self.lock:
            self.counts[(request.method, kind)] += 1
            if request.method == "PUT":
                self.put_bytes += size

    def install(self, client: Any) -> S3Requests:
        client.meta.events.register("before-send.s3", self)
        return self

    def uninstall(self, client: Any) -> None:
        client.meta.events.unregister("before-send.s3", self)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def count(self, method: str | None = None, kind: str | None = None) -> int:
        return sum(n for (m, k), n in self.counts.items() if method in (None, m) and kind in (None, k))

    def snapshot(self) -> tuple[Counter[tuple[str, str]], int]:
        with self.lock:
            return Counter(self.counts), self.put_bytes

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.put_bytes = 0


# --------------------------------------------------------------------------- a serialised moto
# --------------------------------------------------------------------------- the demo
def upsert_event(collection: str, ids: list[str], vectors: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """A direct upsert event (and a queued write's body): the same JSON on both paths."""
    return {
        "collection": collection,
        "operation": "upsert",
        "items": [
            {"id": i, "vector": np.round(v.astype(np.float64), 6).tolist(), "label": lab}
            for i, v, lab in zip(ids, vectors, labels, strict=True)
        ],
    }


def build_collection(build: demo.Handler, s3: Any, sample: local.Sample, collection: str) -> dict[str, Any]:
    """Upload the sample as .npy under its own prefix and build it through the build handler."""
    prefix = f"{collection}/"
    for name, array in (("vectors", sample.vectors), ("ids", sample.ids), ("labels", sample.labels)):
        s3.put_object(Bucket=local.SOURCE_BUCKET, Key=f"{prefix}{name}.npy", Body=local.npy_bytes(array))
    source = {k: f"s3://{local.SOURCE_BUCKET}/{prefix}{k}.npy" for k in ("vectors", "ids", "labels")}
    return build({"collection": collection, "source": source, "bucket_size": 250})


def write_handler() -> demo.Handler:
    """``functions/write/app.py`` as Lambda calls it, one invocation after another.

    Powertools keeps a disabled Metrics' values between invocations (only an enabled flush
    clears them) and prints them once 100 accumulate; a Lambda sandbox flushes after each
    invocation, so this does what that flush does.
    """
    spec = importlib.util.spec_from_file_location(
        "kdbuckets_demo_writes_app", demo.FUNCTIONS / "write" / "app.py"
    )
    if spec is None or spec.loader is None:
        raise ImportError("no handler module at functions/write/app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def invoke(event: dict[str, Any]) -> dict[str, Any]:
        try:
            return module.lambda_handler(event, demo.FakeContext("kdbuckets-write"))
        finally:
            module.metrics.clear_metrics()

    return invoke


def findable_ids(store: Any, collection: str, ids: list[str], vectors: np.ndarray) -> int:
    """How many of ``ids`` an exhaustive search finds at distance ~0 for their own vector."""
    from kdbuckets import Searcher

    searcher = Searcher(store)
    found = 0
    for start in range(0, len(ids), 500):
        hits = searcher.search(collection, vectors[start : start + 500], k=3, probes=4096)
        for ident, row, dist in zip(ids[start : start + 500], hits.ids, hits.distances, strict=True):
            found += any(h == ident and d < 1e-3 for h, d in zip(row, dist.tolist(), strict=True))
    return found


def versions(store: Any, collection: str) -> int:
    from kdbuckets import list_versions

    return len(list_versions(store, collection))


def live_version(store: Any, collection: str) -> str:
    from kdbuckets import list_versions

    return next(v.version for v in list_versions(store, collection) if v.is_head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--writes", type=int, default=200, help="upserts of one vector each (default 200)")
    parser.add_argument("--producers", type=int, default=4, help="threads sending them (default 4)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sample = local.synthetic(n=5000 + args.writes)
    new_vectors = np.concatenate([sample.queries, sample.vectors])[: args.writes]
    new_ids = [f"new-{i:05d}" for i in range(args.writes)]
    new_labels = [str(lab) for lab in np.resize(sample.query_labels, args.writes)]

    with demo.local_s3() as endpoint:
        demo.quiet_environment(endpoint)
        os.environ["AWS_ENDPOINT_URL_SQS"] = endpoint
        from kdbuckets import ObjectStore, storage

        print(
            f"kdbuckets demo-writes: queued vs direct upserts through the write handler, moto at {endpoint}"
        )
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name=REGION)
        sqs = boto3.client("sqs", endpoint_url=endpoint, region_name=REGION)
        s3.create_bucket(Bucket=local.SOURCE_BUCKET)
        s3.create_bucket(Bucket=local.INDEX_BUCKET)
        store = ObjectStore(local.INDEX_BUCKET, client=s3)  # the demo's own reads, not counted

        demo.section("Collections")
        build = demo.load_handler("build")
        t0 = time.perf_counter()
        for name in ("queued", "direct"):
            built = build_collection(build, s3, sample, name)
        print(
            f"'queued' and 'direct': the same {built['count']:,} × {built['dim']} cosine vectors in "
            f"{built['buckets']} buckets each ({time.perf_counter() - t0:.1f} s)"
        )
        queues = create_queues(sqs)
        os.environ["DEAD_LETTER_QUEUE_URL"] = queues.dead_letter_url
        print(f"queue {QUEUE} (FIFO, message group = collection); dead letters to {DEAD_LETTER_QUEUE}")

        write = write_handler()
        s3_requests = S3Requests().install(storage.s3_client(storage.DEFAULT_CONCURRENCY))
        sqs_requests = S3Requests()
        sqs.meta.events.register("before-send.sqs", sqs_requests)

        demo.section(f"Producers   {args.producers} threads send {args.writes} upserts of one vector")
        bodies = [
            upsert_event("queued", [new_ids[n]], new_vectors[n : n + 1], [new_labels[n]])
            for n in range(args.writes)
        ]
        bad = {"collection": "queued", "operation": "upsert", "items": [{"id": "bad", "vector": [1, 2, 3]}]}
        sent = time.perf_counter()
        slices = [bodies[p :: args.producers] for p in range(args.producers)]
        slices[0].insert(len(slices[0]) // 3, bad)
        with ThreadPoolExecutor(args.producers) as pool:
            acked = sum(pool.map(lambda part: sum(1 for b in part if send_write(sqs, queues.url, b)), slices))
        print(
            f"{acked} messages acknowledged by SQS in {time.perf_counter() - sent:.2f} s: durable now, "
            "visible once their batch commits (one of them is bad on purpose)"
        )

        demo.section("Event source mapping   batches of up to 10 → functions/write/app.py")
        esm = EventSourceMapping(sqs, queues, write)
        print(
            f"  {'batch':>5} {'messages':>8} {'failures':>8} {'commits':>7} {'S3 req':>6}  "
            "version of 'queued'"
        )
        known = versions(store, "queued")
        s3_requests.reset()
        batches = commits = counted = 0
        for delivery in esm.drain():
            batches += 1
            now = versions(store, "queued")
            made, known = now - known, now
            commits += made
            spent, counted = s3_requests.total - counted, s3_requests.total
            if batches <= 3 or batches % 5 == 0:
                print(
                    f"  {batches:>5} {len(delivery.message_ids):>8} {len(delivery.failed):>8} {made:>7} "
                    f"{spent:>6}  {live_version(store, 'queued')}"
                )
        queued_counts, queued_put_bytes = s3_requests.snapshot()
        print(f"  {batches} batches, {commits} commits, {s3_requests.total} S3 requests in all")
        dead = False
        for message in receive_all(sqs, queues.dead_letter_url):
            attributes = {k: v["StringValue"] for k, v in message.get("MessageAttributes", {}).items()}
            print(f"dead-lettered (body unchanged): {attributes.get('error')}: {attributes.get('reason')}")
            dead = dead or message["Body"] == json.dumps(bad)
        sqs_total = sqs_requests.total

        demo.section(f"Direct path   the same {args.writes} upserts, one invocation each")
        s3_requests.reset()
        t0 = time.perf_counter()
        known = versions(store, "direct")
        for n, body in enumerate(bodies):
            write({**body, "collection": "direct"})
            if (n + 1) % 50 == 0 or n + 1 == len(bodies):
                print(
                    f"  {n + 1:>4} acknowledged, each once HEAD names it ({time.perf_counter() - t0:.1f} s)"
                )
        direct_counts, direct_put_bytes = s3_requests.snapshot()
        direct_commits = versions(store, "direct") - known
        s3_requests.uninstall(storage.s3_client(storage.DEFAULT_CONCURRENCY))

        demo.section("Totals")
        q_found = findable_ids(store, "queued", new_ids, new_vectors)
        d_found = findable_ids(store, "direct", new_ids, new_vectors)
        n, vector_bytes = args.writes, new_vectors.shape[1] * 4
        q_total, d_total = sum(queued_counts.values()), sum(direct_counts.values())
        rows = [
            ("upserts acknowledged", f"{n}", f"{n}"),
            ("commits (new versions)", f"{commits}", f"{direct_commits}"),
            ("S3 requests", f"{q_total}", f"{d_total}"),
            ("S3 requests per upserted vector", f"{q_total / n:.2f}", f"{d_total / n:.2f}"),
            ("  GETs / PUTs per vector", _get_put(queued_counts, n), _get_put(direct_counts, n)),
            (
                "bytes PUT per vector ÷ its float32 size",
                f"{queued_put_bytes / n / vector_bytes:,.0f}×",
                f"{direct_put_bytes / n / vector_bytes:,.0f}×",
            ),
            ("SQS requests (send, receive, delete)", f"{sqs_total}", "0"),
            ("ids findable at distance ~0", f"{q_found}/{n}", f"{d_found}/{n}"),
        ]
        print(f"  {'':<40} {'queue path':>11} {'direct path':>11}")
        for label, queued_value, direct_value in rows:
            print(f"  {label:<40} {queued_value:>11} {direct_value:>11}")
        print(
            f"\nthe queue path sent {d_total / max(1, q_total):.1f}× fewer S3 requests for the same upserts"
        )
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return 0 if q_found == d_found == n and dead else 1


def _get_put(counts: Counter[tuple[str, str]], n: int) -> str:
    gets = sum(v for (m, _), v in counts.items() if m == "GET")
    puts = sum(v for (m, _), v in counts.items() if m == "PUT")
    return f"{gets / n:.2f} / {puts / n:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
