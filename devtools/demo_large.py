"""`make demo-large`: a multi-million-vector collection built through the Step Functions state machine.

    python -m devtools.demo_large [--n 2000000] [--dim 128] [--shards 16] [--partitions 16]

Why: issue 9 item 5 — the distributed build is only credible at a size one build function
cannot hold. This generates a clustered float32 set shard by shard (never the whole set in one
array), uploads each shard with its ids shard to a moto S3 server, holds out queries whose exact
top-10 is computed by a blocked brute force over the shards as they are generated, builds the
collection with ``statemachine/build.asl.json`` on moto's Step Functions exactly as
``python -m devtools.sfn_local`` does (:class:`devtools.sfn_local.LocalStepFunctions`), and
then reports what a user would ask of it: recall@10 at the default recall target, GET rounds
of a cold and a warm query under :class:`bench.s3sim.LatencyModel`, bytes per query, the
build's wall time per state, and the largest peak memory of any task.

What runs where. S3 is a moto server in a child process (``python -m moto.server``; its
objects above 5 MB spill to temporary files), reached over HTTP through
``AWS_ENDPOINT_URL_S3`` — sfn_local's "own S3 endpoint" mode. Step Functions, Lambda and IAM
are moto's in-process mock. Each Lambda task runs in a **fresh interpreter** (this module with
``--task``): a Lambda function's footprint is one process, so a task's peak memory is the
child's own ``VmHWM`` (peak resident set size, from ``/proc/self/status``), the figure Lambda
reports as "Max Memory Used" — not a difference of RSS in a process shared with moto and the
other concurrent tasks.

The data follows :func:`bench.datasets.synthetic_clustered`'s recipe (Zipf-sized anisotropic
Gaussian clusters) with every shard drawn from its own seeded stream, so a shard never needs
the rows before it and the set is the same for the same ``--seed`` and ``--shards``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devtools import local, sfn_local
from devtools.demo import section, size
from devtools.peak_memory import peak_kb

REPO = local.REPO
SOURCE_BUCKET = "kdbuckets-large-source"
INDEX_BUCKET = "kdbuckets-large-index"
COLLECTION = "large"
VECTORS_PREFIX = "large/vectors/"
IDS_PREFIX = "large/ids/"
K = 10
#: Candidates per query kept by the float32 brute force; re-ranked in float64 at the end.
CANDIDATES = 32
#: Collection rows scored per brute-force block: (queries × BLOCK) float32 scores at once.
BLOCK = 32_768
#: Single-vector queries timed cold and warm under the latency model (bench/run.py's protocol).
LATENCY_QUERIES = 30
#: Queries per search request in the recall pass.
RECALL_BATCH = 100


# --------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Mixture:
    """The clusters every shard draws from (``bench.datasets.synthetic_clustered``'s recipe)."""

    centres: np.ndarray  # (clusters, dim) float32
    scales: np.ndarray  # (clusters, dim) float32, per-dimension spread
    weights: np.ndarray  # (clusters,) Zipf-like cluster sizes, sum 1

    @classmethod
    def make(cls, clusters: int, dim: int, rng: np.random.Generator) -> Mixture:
        centres = rng.normal(scale=1.0, size=(clusters, dim)).astype(np.float32)
        weights = 1.0 / np.arange(1, clusters + 1) ** 0.7
        scales = rng.uniform(0.25, 0.6, size=(clusters, dim)).astype(np.float32)
        return cls(centres, scales, weights / weights.sum())

    def draw(self, rows: int, rng: np.random.Generator, chunk: int = 100_000) -> np.ndarray:
        """``rows`` float32 vectors, generated ``chunk`` rows at a time."""
        out = np.empty((rows, self.centres.shape[1]), dtype=np.float32)
        which = rng.choice(len(self.centres), size=rows, p=self.weights)
        for start in range(0, rows, chunk):
            w = which[start : start + chunk]
            noise = rng.normal(size=(len(w), out.shape[1])).astype(np.float32)
            out[start : start + chunk] = self.centres[w] + noise * self.scales[w]
        return out


def shard_rows(n: int, shards: int) -> list[int]:
    """Rows of each shard: ``n`` split as evenly as possible."""
    return [n // shards + (1 if i < n % shards else 0) for i in range(shards)]


class RunningTopK:
    """Exact l2 nearest neighbours of fixed queries over row blocks seen one at a time.

    Scores in float32 (‖v‖² − 2 q·v) keep :data:`CANDIDATES` per query with their vectors;
    :meth:`finish` re-ranks those in float64, so rounding cannot swap a true top-k row out.
    """

    def __init__(self, queries: np.ndarray, keep: int = CANDIDATES) -> None:
        self.queries = queries
        self.keep = keep
        nq, dim = queries.shape
        self.dist = np.full((nq, 0), np.inf, dtype=np.float32)
        self.ids = np.zeros((nq, 0), dtype=np.int64)
        self.vecs = np.zeros((nq, 0, dim), dtype=np.float32)

    def add(self, block: np.ndarray, first_id: int) -> None:
        """Score the rows ``block`` (global ids from ``first_id``) in slices of :data:`BLOCK` rows."""
        for start in range(0, len(block), BLOCK):
            part = block[start : start + BLOCK]
            d = np.einsum("ij,ij->i", part, part)[None, :] - 2.0 * (self.queries @ part.T)
            take = min(self.keep, part.shape[0])
            local_best = np.argpartition(d, take - 1, axis=1)[:, :take]
            dist = np.concatenate([self.dist, np.take_along_axis(d, local_best, axis=1)], axis=1)
            ids = np.concatenate([self.ids, local_best + first_id + start], axis=1)
            vecs = np.concatenate([self.vecs, part[local_best]], axis=1)
            keep = min(self.keep, dist.shape[1])
            pick = np.argpartition(dist, keep - 1, axis=1)[:, :keep]
            self.dist = np.take_along_axis(dist, pick, axis=1)
            self.ids = np.take_along_axis(ids, pick, axis=1)
            self.vecs = np.take_along_axis(vecs, pick[:, :, None], axis=1)

    def finish(self, k: int, *, stored_dtype: str = "float32") -> np.ndarray:
        """(nq, k) global ids nearest first, by float64 distances to the vectors as ``stored_dtype``."""
        vecs = self.vecs.astype(stored_dtype).astype(np.float64)
        d = ((vecs - self.queries.astype(np.float64)[:, None, :]) ** 2).sum(axis=2)
        order = np.argsort(d, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(self.ids, order, axis=1)


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def generate(
    s3: Any, n: int, dim: int, shards: int, queries: int, clusters: int, seed: int
) -> tuple[np.ndarray, RunningTopK]:
    """Generate, upload and brute-force the set shard by shard; the held-out queries and their truth."""
    section(f"Data   {n:,} × {dim} float32 in {shards} shards, {clusters:,} clusters, {queries:,} held out")
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(shards + 2)]
    mixture = Mixture.make(clusters, dim, streams[0])
    held_out = mixture.draw(queries, streams[1])
    truth = RunningTopK(held_out)
    first = 0
    started = time.perf_counter()
    for i, rows in enumerate(shard_rows(n, shards)):
        t0 = time.perf_counter()
        block = mixture.draw(rows, streams[2 + i])
        t1 = time.perf_counter()
        body = npy_bytes(block)
        name = f"part-{i:05d}.npy"
        s3.put_object(Bucket=SOURCE_BUCKET, Key=VECTORS_PREFIX + name, Body=body)
        ids = np.arange(first, first + rows, dtype=np.int64)
        s3.put_object(Bucket=SOURCE_BUCKET, Key=IDS_PREFIX + name, Body=npy_bytes(ids))
        t2 = time.perf_counter()
        truth.add(block, first)
        t3 = time.perf_counter()
        first += rows
        print(
            f"  shard {i + 1:>3}/{shards}  {name}  {rows:>9,} rows  {size(len(body)):>9}  "
            f"generated {t1 - t0:5.2f} s · uploaded {t2 - t1:5.2f} s · brute force {t3 - t2:5.2f} s",
            flush=True,
        )
        del block, body, ids
    total = time.perf_counter() - started
    print(
        f"  {n:,} vectors ({size(n * dim * 4)} float32) in s3://{SOURCE_BUCKET}/{VECTORS_PREFIX} "
        f"(+ int64 ids in /{IDS_PREFIX}) in {total:.1f} s ({n / total:,.0f} rows/s)"
    )
    return held_out, truth


# --------------------------------------------------------------------------- S3 server
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A moto server (S3 over HTTP) in a child process on a free port; yields (endpoint, process)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"moto server did not start on port {port}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def rss_kb(pid: int) -> int:
    """Current resident set size of a process (kB), 0 if unknown."""
    try:
        with open(f"/proc/{pid}/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


# --------------------------------------------------------------------------- tasks


def task_main(event_path: Path, result_path: Path) -> int:
    """Child mode: one Lambda task through the real handler; result, error and peak memory to a file."""
    handler = sfn_local.load_handler()
    event = json.loads(event_path.read_text())
    baseline = peak_kb()  # interpreter + numpy, boto3, pydantic, Powertools, kdbuckets imported
    started = time.perf_counter()
    doc: dict[str, Any]
    try:
        doc = {"ok": True, "result": handler(event, sfn_local.FakeContext())}
    except Exception as exc:  # reported as the Lambda runtime would: its class name and message
        doc = {"ok": False, "errorType": type(exc).__name__, "errorMessage": str(exc)}
    doc |= {"seconds": time.perf_counter() - started, "baseline_kb": baseline, "peak_kb": peak_kb()}
    result_path.write_text(json.dumps(doc, default=str))
    return 0


@dataclass
class TaskRecord:
    step: str
    item: str
    started: float  # perf_counter in the parent
    ended: float
    seconds: float  # inside the child, handler only
    baseline_kb: int
    peak_kb: int
    ok: bool


@dataclass
class SubprocessTasks:
    """A handler for :class:`~devtools.sfn_local.LocalStepFunctions`: each task in a fresh interpreter.

    The child (this module with ``--task``) imports ``functions/distbuild/app.py`` with
    :func:`devtools.sfn_local.load_handler` and calls it with a
    :class:`~devtools.sfn_local.FakeContext`; an error comes back as an exception of the same
    class name, so sfn_local's dispatcher writes the same error document as in-process.
    """

    workdir: Path
    records: list[TaskRecord] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        with self._lock:
            self._count += 1
            n = self._count
        event_path = self.workdir / f"task-{n:05d}.json"
        result_path = self.workdir / f"task-{n:05d}.out.json"
        event_path.write_text(json.dumps(event))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "shared"), str(REPO)])}
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", "devtools.demo_large", "--task", str(event_path), str(result_path)],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        ended = time.perf_counter()
        if done.returncode != 0 or not result_path.exists():
            tail = (done.stderr or "").strip().splitlines()[-5:]
            raise RuntimeError(f"task process exited with {done.returncode}: {' / '.join(tail)}")
        doc = json.loads(result_path.read_text())
        step = str(event.get("step", "?"))
        with self._lock:
            self.records.append(
                TaskRecord(
                    step,
                    sfn_local._item(event),
                    started,
                    ended,
                    float(doc["seconds"]),
                    int(doc["baseline_kb"]),
                    int(doc["peak_kb"]),
                    bool(doc["ok"]),
                )
            )
        event_path.unlink(missing_ok=True)
        result_path.unlink(missing_ok=True)
        if not doc["ok"]:
            raise type(str(doc["errorType"]), (Exception,), {})(doc["errorMessage"])
        return doc["result"]


# --------------------------------------------------------------------------- build
@dataclass(frozen=True)
class StateTime:
    name: str
    seconds: float


def state_times(machine: sfn_local.LocalStepFunctions) -> list[StateTime]:
    """Wall time of each top-level state of the last execution, from its history's timestamps."""
    executions = machine.sfn.list_executions(stateMachineArn=machine.state_machine_arn)["executions"]
    if not executions:
        return []
    arn = max(executions, key=lambda e: e["startDate"])["executionArn"]
    events = machine.sfn.get_execution_history(executionArn=arn)["events"]
    entered: dict[str, Any] = {}
    out: list[StateTime] = []
    for ev in events:
        if "stateEnteredEventDetails" in ev:
            entered[ev["stateEnteredEventDetails"]["name"]] = ev["timestamp"]
        elif "stateExitedEventDetails" in ev:
            name = ev["stateExitedEventDetails"]["name"]
            if name in entered:
                out.append(StateTime(name, (ev["timestamp"] - entered.pop(name)).total_seconds()))
    return out


def run_build(
    event: dict[str, Any], concurrency: int
) -> tuple[sfn_local.ExecutionResult, list[StateTime], SubprocessTasks]:
    """One execution of the build state machine on moto, tasks in child processes."""
    section(f"Build   statemachine/build.asl.json on moto Step Functions, {event['partitions']} partitions")
    print(f"  event: {json.dumps(event)}")
    print(f"  tasks run {concurrency} at a time, each in a fresh interpreter (peak memory = its VmHWM)")

    def say(line: str) -> None:
        print("  " + line, flush=True)

    with tempfile.TemporaryDirectory(prefix="kdbuckets-large-") as workdir, sfn_local.local_aws():
        tasks = SubprocessTasks(Path(workdir))
        machine = sfn_local.LocalStepFunctions(tasks, concurrency=concurrency, progress=say)
        result = machine.run(event, timeout_s=4 * 3600)
        times = state_times(machine)
    return result, times, tasks


def report_build(result: sfn_local.ExecutionResult, times: list[StateTime], tasks: SubprocessTasks) -> None:
    """Wall time per state and per-step task figures, with the largest peak memory of any task."""
    out = result.output or {}
    copies = out.get("stored_rows", 0) / max(1, out.get("count", 1))
    print(
        f"\n  {result.status}: {out.get('count', 0):,} × {out.get('dim', '?')} → {out.get('buckets', 0):,} "
        f"buckets in {out.get('partitions', '?')} partitions, {copies:.2f} stored rows per vector; "
        f"version {out.get('version')}"
    )
    by_step: dict[str, list[TaskRecord]] = {}
    for r in tasks.records:
        by_step.setdefault(r.step, []).append(r)
    state_of = {
        "Plan": "plan",
        "RouteShards": "route",
        "Collect": "collect",
        "BuildPartitions": "partition",
        "Commit": "commit",
        "Report": "report",
    }
    print(
        f"\n  {'state':<16} {'wall s':>7} {'tasks':>6} {'task s (sum)':>13} {'task s (max)':>13} "
        f"{'peak MB (max)':>14} {'peak MB (median)':>17}"
    )
    for st in times:
        recs = by_step.get(state_of.get(st.name, ""), [])
        peaks = [r.peak_kb / 1024 for r in recs]
        secs = [r.seconds for r in recs]
        print(
            f"  {st.name:<16} {st.seconds:>7.1f} {len(recs):>6} {sum(secs):>13.1f} "
            f"{max(secs, default=0):>13.1f} {max(peaks, default=0):>14.0f} "
            f"{float(np.median(peaks)) if peaks else 0:>17.0f}"
        )
    task_total = sum(r.seconds for r in tasks.records)
    print(f"  {'total':<16} {result.seconds:>7.1f} {len(tasks.records):>6} {task_total:>13.1f}")
    if tasks.records:
        top = max(tasks.records, key=lambda r: r.peak_kb)
        base = float(np.median([r.baseline_kb for r in tasks.records])) / 1024
        print(
            f"\n  largest peak memory of any task: {top.peak_kb / 1024:,.0f} MB — {top.step} {top.item!r} "
            f"(VmHWM of the task's own process; {base:.0f} MB of it is the interpreter and imports "
            f"before the handler runs)"
        )
        gaps = result.seconds - sum(st.seconds for st in times)
        print(
            f"  wall time: per state from the execution history's timestamps; {gaps:.1f} s between states "
            "(moto's transitions and the 50 ms poll); task s = handler time inside the child, "
            "without its ~1 s interpreter start"
        )


# --------------------------------------------------------------------------- queries
@dataclass
class GetBytes:
    """Sums the ContentLength of every GetObject a client makes (HEAD, manifest, buckets)."""

    total: int = 0
    count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, client: Any) -> None:
        client.meta.events.register("after-call.s3.GetObject", self._after_get)

    def uninstall(self, client: Any) -> None:
        client.meta.events.unregister("after-call.s3.GetObject", self._after_get)

    def reset(self) -> None:
        with self._lock:
            self.total = self.count = 0

    def _after_get(self, parsed: Any, **_: Any) -> None:
        with self._lock:
            self.total += int(parsed.get("ContentLength") or 0)
            self.count += 1


def run_recall(store: Any, queries: np.ndarray, truth: np.ndarray, truth16: np.ndarray) -> None:
    """Recall@10 of every held-out query at the default recall target."""
    from kdbuckets.searcher import DEFAULT_RECALL_TARGET, Searcher

    section(
        f"Recall   {len(queries):,} held-out queries, k={K}, default recall target {DEFAULT_RECALL_TARGET}"
    )
    searcher = Searcher(store, cache_bytes=64 << 20)
    hits = hits16 = probes = buckets = 0
    started = time.perf_counter()
    for start in range(0, len(queries), RECALL_BATCH):
        batch = slice(start, start + RECALL_BATCH)
        result = searcher.search(COLLECTION, queries[batch], k=K)
        found = np.array([[-1 if i is None else int(i) for i in row] for row in result.ids], dtype=np.int64)
        hits += int((found[:, :, None] == truth[batch][:, None, :]).any(axis=2).sum())
        hits16 += int((found[:, :, None] == truth16[batch][:, None, :]).any(axis=2).sum())
        probes = result.stats.probes
        buckets += result.stats.buckets_fetched + result.stats.cache_hits
    seconds = time.perf_counter() - started
    total = len(queries) * K
    print(
        f"  recall@{K} {hits / total:.4f} against the exact float32 neighbours "
        f"({hits16 / total:.4f} against the neighbours among the stored float16 values)"
    )
    print(
        f"  probes {probes} buckets per query (from the build's calibration); "
        f"{len(queries):,} queries in batches of {RECALL_BATCH} in {seconds:.1f} s"
    )


def run_latency(store: Any, queries: np.ndarray, manifest_bytes: int) -> None:
    """GET rounds and bytes of single-vector queries, cold and warm, under the S3 latency model.

    bench/run.py's protocol: cold = a new searcher per query (a new container: HEAD, manifest,
    buckets); warm = one searcher with the manifest cached, HEAD revalidated on every query
    (``head_ttl=0``) and its bucket cache cleared (a large collection: this query's buckets
    are not cached).
    """
    from bench.s3sim import LatencyModel
    from kdbuckets.searcher import Searcher

    model = LatencyModel()
    counter = GetBytes()
    n = min(LATENCY_QUERIES, len(queries))
    section(
        f"Latency   {n} single-vector queries, S3 model: {model.first_byte_ms:.0f} ms first byte, "
        f"{model.bandwidth_mb_s:.0f} MB/s per connection"
    )
    model.install(store.client)
    counter.install(store.client)
    try:
        warm = Searcher(store, head_ttl=0.0)
        warm.search(COLLECTION, queries[-1:], k=K)
        print(
            f"  {'':<5} {'GET rounds':>10} {'GETs':>6} {'bucket bytes':>13} {'all GET bytes':>14} "
            f"{'p50 ms':>7} {'p99 ms':>7}"
        )
        for label in ("cold", "warm"):
            rounds, gets, bucket_bytes, all_bytes, times = [], [], [], [], []
            for i in range(n):
                searcher = Searcher(store) if label == "cold" else warm
                if label == "warm":
                    warm.buckets.clear()
                model.reset()
                counter.reset()
                t0 = time.perf_counter()
                result = searcher.search(COLLECTION, queries[i : i + 1], k=K)
                times.append((time.perf_counter() - t0) * 1000)
                rounds.append(model.rounds())
                gets.append(counter.count)
                bucket_bytes.append(result.stats.bytes_fetched)
                all_bytes.append(counter.total)
            spread = f"{min(rounds)}" if min(rounds) == max(rounds) else f"{min(rounds)}–{max(rounds)}"
            print(
                f"  {label:<5} {spread:>10} {np.mean(gets):>6.1f} {size(float(np.mean(bucket_bytes))):>13} "
                f"{size(float(np.mean(all_bytes))):>14} {np.percentile(times, 50):>7.0f} "
                f"{np.percentile(times, 99):>7.0f}"
            )
        print(
            f"  (means per query; the whole manifest is {size(manifest_bytes)} — a cold query reads its root "
            "and the parts it routes to, 'all GET bytes' counts them; warm: root and parts cached, HEAD "
            "revalidated, bucket cache emptied before each query)"
        )
    finally:
        counter.uninstall(store.client)
        model.uninstall(store.client)


# --------------------------------------------------------------------------- main
def quiet_environment(endpoint: str) -> None:
    """Fake credentials, the local S3 endpoint, and the handlers' logs and metrics off."""
    local.use_fake_credentials()
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        INDEX_BUCKET=INDEX_BUCKET,
        POWERTOOLS_SERVICE_NAME="kdbuckets-large",
        POWERTOOLS_METRICS_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="ERROR",
    )
    os.environ.pop("INDEX_PREFIX", None)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2_000_000, help="indexed vectors (default 2,000,000)")
    parser.add_argument("--dim", type=int, default=128, help="dimensions (default 128)")
    parser.add_argument("--shards", type=int, default=16, help=".npy source shards (default 16)")
    parser.add_argument("--partitions", type=int, default=16, help="build partitions (default 16)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries (default 1,000)")
    parser.add_argument("--clusters", type=int, default=2000, help="mixture components (default 2,000)")
    parser.add_argument("--seed", type=int, default=7, help="data and build seed (default 7)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="tasks run at once (default: CPU count)"
    )
    parser.add_argument("--task", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.task:
        return task_main(*args.task)
    if args.n < args.shards or args.shards < 1 or args.queries < 1:
        parser.error("need --shards ≥ 1, --n ≥ --shards and --queries ≥ 1")

    import boto3

    from kdbuckets import storage
    from kdbuckets.storage import ObjectStore

    started = time.perf_counter()
    concurrency = args.concurrency or os.cpu_count() or 2
    with moto_server() as (endpoint, server):
        quiet_environment(endpoint)
        storage.reset_clients()
        print(
            f"kdbuckets demo-large: a distributed build on moto (S3 server at {endpoint}, pid {server.pid})"
        )
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        for bucket in (SOURCE_BUCKET, INDEX_BUCKET):
            s3.create_bucket(Bucket=bucket)
        queries, running = generate(s3, args.n, args.dim, args.shards, args.queries, args.clusters, args.seed)
        truth, truth16 = running.finish(K), running.finish(K, stored_dtype="float16")
        del running
        event = {
            "collection": COLLECTION,
            "source": {
                "vectors": f"s3://{SOURCE_BUCKET}/{VECTORS_PREFIX}",
                "ids": f"s3://{SOURCE_BUCKET}/{IDS_PREFIX}",
            },
            "metric": "l2",
            "seed": args.seed,
            "partitions": args.partitions,
            "replace": True,
        }
        result, times, tasks = run_build(event, concurrency)
        report_build(result, times, tasks)
        if result.status != "SUCCEEDED":
            print(f"\nbuild {result.status}: {result.error}: {result.cause}")
            return 1
        store = ObjectStore(INDEX_BUCKET)
        manifest_bytes = s3.head_object(Bucket=INDEX_BUCKET, Key=result.output["manifest"])["ContentLength"]
        run_recall(store, queries, truth, truth16)
        run_latency(store, queries, manifest_bytes)
        print(f"\nmoto S3 server resident memory at the end: {rss_kb(server.pid) / 1024:,.0f} MB")
    print(f"done in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
