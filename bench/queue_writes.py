"""Write throughput: 16 concurrent producers of small upserts, direct path vs queue path.

    python -m bench.queue_writes [--seconds 15] [--producers 16] [--vectors 4] [--n 10000]

Why: every direct write reads HEAD, the manifest, the id shards and the buckets it touches,
rewrites them and swaps HEAD by compare-and-swap, and concurrent writers of one collection
lose that race and redo the whole write. The queue path (SQS FIFO, message group = collection,
``kdbuckets.queue``) applies up to ten messages per commit with no race of its own. This
measures both on the same data, through the real write handler, against a moto server over
HTTP whose requests are applied one at a time (moto's conditional PUT is not atomic across
threads; S3's is — see ``devtools.local.serial_moto_server``):

- direct: ``producers`` threads each invoke the handler with an upsert of ``vectors`` new
  vectors, again and again, for ``seconds``; a write is acknowledged when the handler returns
  (HEAD names it);
- queue: ``producers`` threads each send such upserts to the FIFO queue for ``seconds`` (at
  most ``--max-messages`` in all, so the drain stays short); a write is acknowledged when SQS
  accepts it. One loop plays the event source mapping meanwhile (batches of ten into the
  handler) and drains the queue afterwards; ``applied/s`` is the rate at which commits made
  the writes visible.

Counted on the library's S3 client (botocore ``before-send``, retries included): requests and
bytes PUT per upserted vector; conflicts = HEAD compare-and-swaps that lost (HEAD PUTs minus
versions published). At the end every acknowledged id must be found by an exhaustive search at
distance ~0 ("lost" counts those that are not). Prints a Markdown table; ``measure_section()``
returns it for bench/run.py.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import boto3
import numpy as np

from devtools import demo, local
from devtools.demo_writes import (
    EventSourceMapping,
    S3Requests,
    create_queues,
    findable_ids,
    send_write,
    upsert_event,
    write_handler,
)
from devtools.local import serial_moto_server
from kdbuckets import BuildParams, Conflict, ObjectStore, build_index, list_versions, make_collection, storage

REGION = "us-east-1"


@dataclass
class PathResult:
    """What one path did in one run."""

    path: str
    seconds: float  # the producers' time
    acked_ids: list[str] = field(default_factory=list)
    acked_vectors: list[np.ndarray] = field(default_factory=list)
    writes: int = 0  # acknowledged write requests (each of ``vectors`` upserts)
    gave_up: int = 0  # direct writes refused after the writer's CAS retries (not acknowledged)
    applied_seconds: float = 0.0  # until the last acknowledged write was visible
    commits: int = 0
    requests: int = 0
    put_bytes: int = 0
    head_puts: int = 0
    batch_failures: int = 0
    dead_letters: int = 0
    found: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acknowledge(self, ids: list[str], vectors: np.ndarray) -> None:
        with self.lock:
            self.writes += 1
            self.acked_ids += ids
            self.acked_vectors.append(vectors)

    @property
    def upserts(self) -> int:
        return len(self.acked_ids)

    @property
    def conflicts(self) -> int:
        return self.head_puts - self.commits


class Pool:
    """New vectors near the collection's (a little noise around random rows), drawn by id."""

    def __init__(self, base: np.ndarray, seed: int) -> None:
        self.base = base
        self.rng = np.random.default_rng(seed)
        self.lock = threading.Lock()
        self.next = 0

    def draw(self, prefix: str, k: int) -> tuple[list[str], np.ndarray]:
        with self.lock:
            first, self.next = self.next, self.next + k
            rows = self.rng.integers(0, len(self.base), size=k)
            noise = self.rng.normal(scale=0.3 / np.sqrt(self.base.shape[1]), size=(k, self.base.shape[1]))
        vectors = self.base[rows] + noise
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        return [f"{prefix}-{i:07d}" for i in range(first, first + k)], vectors


def labels_for(k: int, names: list[str], rng: np.random.Generator) -> list[str]:
    return [names[int(i)] for i in rng.integers(0, len(names), size=k)]


def run_direct(
    args: argparse.Namespace, counter: S3Requests, own: ObjectStore, pool: Pool, names: list[str]
) -> PathResult:
    """``producers`` threads invoking the write handler directly, closed loop, for ``seconds``."""
    result = PathResult("direct", args.seconds)
    before = head_version(own, "direct")
    counter.reset()
    deadline = time.perf_counter() + args.seconds
    started = time.perf_counter()

    def producer(p: int) -> None:
        write = write_handler()  # one module per producer, as one Lambda sandbox each
        rng = np.random.default_rng(100 + p)
        while time.perf_counter() < deadline:
            ids, vectors = pool.draw(f"d{p:02d}", args.vectors)
            event = upsert_event("direct", ids, vectors, labels_for(len(ids), names, rng))
            try:
                write(event)
            except Conflict:
                with result.lock:
                    result.gave_up += 1
                continue
            result.acknowledge(ids, vectors)

    with ThreadPoolExecutor(args.producers) as threads:
        list(threads.map(producer, range(args.producers)))
    result.seconds = result.applied_seconds = time.perf_counter() - started  # acknowledged = applied
    _settle(result, counter, own, "direct", before)
    return result


def run_queue(
    args: argparse.Namespace, counter: S3Requests, own: ObjectStore, pool: Pool, names: list[str]
) -> PathResult:
    """``producers`` threads sending to the FIFO queue; one event source mapping applying it."""
    result = PathResult("queue", args.seconds)
    sqs = boto3.client("sqs", region_name=REGION)
    queues = create_queues(sqs, "bench-writes.fifo", "bench-writes-dlq.fifo", visibility_timeout=5)
    os.environ["DEAD_LETTER_QUEUE_URL"] = queues.dead_letter_url
    esm = EventSourceMapping(sqs, queues, write_handler())
    before = head_version(own, "queued")
    counter.reset()
    producing = threading.Event()
    producing.set()
    deadline = time.perf_counter() + args.seconds
    started = time.perf_counter()
    budget = threading.Semaphore(args.max_messages)

    def producer(p: int) -> None:
        rng = np.random.default_rng(200 + p)
        client = boto3.client("sqs", region_name=REGION)
        while time.perf_counter() < deadline and budget.acquire(blocking=False):
            ids, vectors = pool.draw(f"q{p:02d}", args.vectors)
            send_write(
                client, queues.url, upsert_event("queued", ids, vectors, labels_for(len(ids), names, rng))
            )
            result.acknowledge(ids, vectors)

    def consumer() -> None:
        while True:
            delivery = esm.poll()
            if delivery is not None:
                result.batch_failures += len(delivery.failed)
                continue
            if not producing.is_set() and _queue_empty(sqs, queues.url):
                return
            time.sleep(0.05)

    loop = threading.Thread(target=consumer, name="event-source-mapping")
    loop.start()
    with ThreadPoolExecutor(args.producers) as threads:
        list(threads.map(producer, range(args.producers)))
    result.seconds = time.perf_counter() - started
    producing.clear()
    print(f"  queue: {result.writes} messages acknowledged in {result.seconds:.1f} s; draining …", flush=True)
    loop.join()
    result.applied_seconds = time.perf_counter() - started
    result.dead_letters = int(
        sqs.get_queue_attributes(
            QueueUrl=queues.dead_letter_url, AttributeNames=["ApproximateNumberOfMessages"]
        )["Attributes"]["ApproximateNumberOfMessages"]
    )
    _settle(result, counter, own, "queued", before)
    return result


def _queue_empty(sqs: Any, url: str) -> bool:
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return all(int(attributes[n]) == 0 for n in names)


def head_version(own: ObjectStore, collection: str) -> str:
    return next(v.version for v in list_versions(own, collection) if v.is_head)


def published_since(own: ObjectStore, collection: str, since: str) -> int:
    """Versions HEAD has named since ``since``: the parent chain from HEAD back to it.

    Not the number of manifests: a writer that lost the compare-and-swap leaves its manifest
    behind (garbage collection removes it), so manifests outnumber commits under contention.
    """
    parents = {v.version: v.parent for v in list_versions(own, collection)}
    count, version = 0, head_version(own, collection)
    while version != since:
        count += 1
        version = parents[version]
    return count


def _settle(result: PathResult, counter: S3Requests, own: ObjectStore, collection: str, before: str) -> None:
    counts, result.put_bytes = counter.snapshot()
    result.requests = sum(counts.values())
    result.head_puts = counts[("PUT", "HEAD")]
    result.commits = published_since(own, collection, before)
    vectors = np.concatenate(result.acked_vectors) if result.acked_vectors else np.zeros((0, 1), np.float32)
    result.found = findable_ids(own, collection, result.acked_ids, vectors)


def table(results: list[PathResult], dim: int) -> list[str]:
    lines = [
        "| path | acknowledged upserts | ack upserts/s | applied upserts/s | commits | S3 requests "
        "| S3 req / upserted vector | bytes PUT / vector ÷ float32 | CAS conflicts | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        n = max(1, r.upserts)
        lines.append(
            f"| {r.path} | {r.upserts:,} ({r.writes:,} writes) | {r.upserts / r.seconds:,.1f} "
            f"| {r.upserts / r.applied_seconds:,.1f} | {r.commits:,} | {r.requests:,} "
            f"| {r.requests / n:.2f} | {r.put_bytes / n / (4 * dim):,.0f}× | {r.conflicts:,} "
            f"| {r.upserts - r.found} |"
        )
    return lines


def measure_section(argv: list[str] | None = None, say: Callable[[str], None] = print) -> str:
    """Run both paths; the Markdown section (table and notes)."""
    args = parse(argv)
    sample = local.realistic(n=args.n + local.HELD_OUT)
    names = sorted(set(sample.labels.tolist()))
    with serial_moto_server() as endpoint:
        demo.quiet_environment(endpoint)
        os.environ["AWS_ENDPOINT_URL_SQS"] = endpoint
        storage.reset_clients()
        s3 = boto3.client("s3", region_name=REGION)
        s3.create_bucket(Bucket=local.INDEX_BUCKET)
        own = ObjectStore(local.INDEX_BUCKET, client=s3)  # setup and checks: not counted
        data = make_collection(sample.vectors, sample.ids, sample.labels, metric="cosine")
        t0 = time.perf_counter()
        for name in ("direct", "queued"):
            built = build_index(own, name, data, BuildParams(bucket_size=args.bucket_size))
        say(
            f"built 'direct' and 'queued': {built.count:,} × {data.dim} in {built.buckets} buckets each "
            f"({time.perf_counter() - t0:.1f} s)"
        )
        counter = S3Requests().install(storage.s3_client(storage.DEFAULT_CONCURRENCY))
        say(
            f"direct path: {args.producers} producers × {args.seconds:.0f} s "
            f"of {args.vectors}-vector upserts …"
        )
        direct = run_direct(args, counter, own, Pool(sample.vectors, 1), names)
        say(f"  direct: {direct.writes} writes acknowledged, {direct.conflicts} conflicts")
        say(
            f"queue path: {args.producers} producers × {args.seconds:.0f} s "
            f"(≤ {args.max_messages} messages) …"
        )
        queued = run_queue(args, counter, own, Pool(sample.vectors, 2), names)
        say(f"  queue: {queued.commits} commits applied them in {queued.applied_seconds:.1f} s")
    per_vector = [r.requests / max(1, r.upserts) for r in (direct, queued)]
    lines = [
        f"{args.producers} producers, {args.vectors} new vectors per write, {args.seconds:.0f} s per path, "
        f"on {built.count:,} × {data.dim} cosine vectors in {built.buckets} buckets (bucket_size "
        f"{args.bucket_size}), one moto server over HTTP applying one request at a time.",
        "",
        *table([direct, queued], data.dim),
        "",
        f"- S3 requests per upserted vector: {per_vector[0] / per_vector[1]:.1f}× fewer on the queue path.",
        f"- queue path: acknowledged = accepted by SQS (durable, not yet visible); the last write was "
        f"visible {queued.applied_seconds - queued.seconds:.1f} s after the producers stopped; "
        f"{queued.batch_failures} batch item failures, {queued.dead_letters} dead letters.",
        f"- direct path: acknowledged = HEAD names the write (the producers' {args.seconds:.0f} s plus the "
        f"writes then in flight: {direct.seconds:.1f} s); writes that gave up after the writer's "
        f"compare-and-swap retries (not acknowledged; the caller would retry them): {direct.gave_up}.",
    ]
    return "\n".join(lines) + "\n"


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="producers' time per path (default 15)")
    parser.add_argument("--producers", type=int, default=16, help="concurrent producers (default 16)")
    parser.add_argument("--vectors", type=int, default=4, help="new vectors per write (default 4)")
    parser.add_argument("--n", type=int, default=10_000, help="vectors in the collection (default 10,000)")
    parser.add_argument("--bucket-size", type=int, default=500, help="bucket_size of its build (default 500)")
    parser.add_argument(
        "--max-messages", type=int, default=1000, help="queue path: messages sent at most (default 1,000)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    started = time.perf_counter()
    print(measure_section(argv, say=lambda line: print(line, flush=True)))
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
