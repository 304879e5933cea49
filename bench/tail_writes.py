"""The unmerged tail of writes: write amplification, and recall and query cost after drift.

    PYTHONPATH=shared:. python -m bench.tail_writes [--quick]

On the real WordNet set (``../shared/data``; else the synthetic sample of ``devtools.local``),
against an in-process moto S3, every write going through the write Lambda's handler
(``functions/write/app.py``, the JSON upsert event, as ``devtools.demo_writes`` invokes it):

1. **Write amplification.** Two collections built from the same random ~3/4 of the set with
   the default parameters, one with the default (automatic) tail limit, one with
   ``tail_rows=0`` (no tail: copy-on-write of the touched buckets on every write, the
   behaviour before the tail). New vectors (the remaining quarter, random order) are upserted
   in batches of 1, 10, 100 and 2,000, one batch size after the other on the same two
   collections. Bytes PUT at the S3 client (every object: tail segments, manifest roots, HEAD,
   manifest parts, buckets, id shards; counted on the library's botocore client per request,
   retries included) per upserted vector ÷ its float32 size (4 × dim bytes). With the tail,
   each batch size runs until at least ``min_writes`` and until a write that merged: the run
   starts with an empty tail (the build, or the previous batch size's last merge) and ends
   with a merge, so it covers whole merge cycles. Without the tail every write is a merge, so
   a fixed number of writes gives the amortised figure.
2. **Drift guard.** A collection built (default parameters) on the vectors of half of the
   labels (every other label by size); the other half is upserted in batches of 2,000
   (shuffled) through the handler. Then the held-out queries (all labels; never inserted) at
   the default recall target: recall@10 against brute force over the final contents, bytes
   and GETs per query, cold (a fresh Searcher per query) and warm (one Searcher, HEAD
   revalidated on every query, manifest and tail segments cached, bucket cache cleared before
   each query: a collection larger than the container's cache), compared with a fresh build
   of the same final contents with the same parameters. Then the same after ``recalibrate``
   (probes for the recall target measured again on the data as it now is), and with a full
   tail on top (vectors it already holds upserted again until the next write would merge).

``measure_section()`` returns the Markdown for bench/REPORT.md (``python -m bench.run --only
tail``).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from bench.run import moto_s3
from devtools import local
from kdbuckets import (
    BuildParams,
    ObjectStore,
    Searcher,
    build_index,
    catalog,
    distances,
    make_collection,
    storage,
)
from kdbuckets import tail as tail_mod
from kdbuckets.recalibrate import recalibrate

K = 10
BUCKET = "bench"  # created by bench.run.moto_s3
KINDS = ("HEAD", "manifests", "parts", "buckets", "ids", "tail")
KIND_NAMES = {
    "tail": "segments",
    "manifests": "roots",
    "HEAD": "HEAD",
    "parts": "parts",
    "buckets": "buckets",
    "ids": "id shards",
}


# ---------------------------------------------------------------------------- counting S3
@dataclass
class Requests:
    """Requests a botocore S3 client sends (retries included) and the bytes they move.

    PUT bytes are the body size: ``X-Amz-Decoded-Content-Length`` when botocore streams the body
    aws-chunked with a trailing checksum (HTTPS endpoints: AWS, the in-process moto), else
    ``Content-Length``. GET bytes are each GetObject response's ``ContentLength``.
    """

    counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    put_bytes: Counter[str] = field(default_factory=Counter)
    get_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def install(self, client: Any) -> Requests:
        client.meta.events.register("before-send.s3", self._before_send)
        client.meta.events.register("after-call.s3.GetObject", self._after_get)
        return self

    def uninstall(self, client: Any) -> None:
        client.meta.events.unregister("before-send.s3", self._before_send)
        client.meta.events.unregister("after-call.s3.GetObject", self._after_get)

    def _before_send(self, request: Any, **_: Any) -> None:
        parts = unquote(urlsplit(request.url).path).split("/")
        kind = next((p for p in reversed(parts[2:]) if p in KINDS), "other")
        headers = request.headers
        size = headers.get("X-Amz-Decoded-Content-Length") or headers.get("Content-Length") or 0
        with self.lock:
            self.counts[(request.method, kind)] += 1
            if request.method == "PUT":
                self.put_bytes[kind] += int(size)

    def _after_get(self, parsed: Any, **_: Any) -> None:
        with self.lock:
            self.get_bytes += int(parsed.get("ContentLength") or 0)

    def reset(self) -> None:
        with self.lock:
            self.counts.clear()
            self.put_bytes.clear()
            self.get_bytes = 0

    def snapshot(self) -> tuple[Counter[tuple[str, str]], Counter[str], int]:
        with self.lock:
            return Counter(self.counts), Counter(self.put_bytes), self.get_bytes


# ---------------------------------------------------------------------------- data and writes
@dataclass
class Pool:
    """New vectors to upsert, drawn in order (each id once: every upsert inserts)."""

    ids: np.ndarray
    vectors: np.ndarray
    labels: np.ndarray
    next: int = 0

    def take(self, k: int) -> tuple[list[str], np.ndarray, list[str]]:
        if self.next + k > len(self.ids):
            raise RuntimeError(f"pool of {len(self.ids):,} new vectors exhausted; give a larger --pool")
        s = slice(self.next, self.next + k)
        self.next += k
        return [str(i) for i in self.ids[s]], self.vectors[s], [str(v) for v in self.labels[s]]


def upsert_event(collection: str, ids: list[str], vectors: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """The write Lambda's upsert event (vectors as JSON numbers, as a client sends them)."""
    from devtools.demo_writes import upsert_event as event

    return event(collection, ids, vectors, labels)


def handler() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """functions/write/app.py, its store on the in-process moto bucket, Powertools quiet."""
    local.use_fake_credentials()
    os.environ.update(
        INDEX_BUCKET=BUCKET,
        POWERTOOLS_SERVICE_NAME="kdbuckets",
        POWERTOOLS_METRICS_NAMESPACE="kdbuckets-bench",
        POWERTOOLS_METRICS_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="ERROR",
    )
    os.environ.pop("INDEX_PREFIX", None)
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    from devtools.demo_writes import write_handler

    return write_handler()


def limit_now(store: ObjectStore, name: str) -> tuple[int, int, int]:
    """(tail limit, rows in the tail, live count) of the live version."""
    m = catalog.read_live(store, name).manifest
    limit = tail_mod.tail_limit(m.params, int(m.buckets.sizes.sum()), m.dim)
    return limit, sum(s.weight for s in m.tail), m.count


@dataclass
class Run:
    """One batch size on one collection."""

    collection: str
    batch: int
    limit: int  # tail limit when the run started
    writes: int = 0
    merges: int = 0
    vectors: int = 0
    seconds: float = 0.0
    put: Counter[str] = field(default_factory=Counter)  # bytes by object kind
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    get_bytes: int = 0
    tail_write_bytes: list[int] = field(default_factory=list)  # PUT bytes of writes that did not merge
    merge_write_bytes: list[int] = field(default_factory=list)
    ended_on_merge: bool = False

    @property
    def put_total(self) -> int:
        return sum(self.put.values())


def run_batches(
    write: Callable[[dict[str, Any]], dict[str, Any]],
    store: ObjectStore,
    counter: Requests,
    name: str,
    pool: Pool,
    batch: int,
    *,
    min_writes: int,
    max_writes: int,
    until_merge: bool,
    say: Callable[[str], None],
) -> Run:
    """Upsert batches of ``batch`` new vectors until ``min_writes`` (and a merge, if asked)."""
    limit, held, _ = limit_now(store, name)
    if held:
        say(f"  warning: {name} starts the batch-{batch} run with {held} rows in its tail")
    run = Run(name, batch, limit)
    counter.reset()
    started = time.perf_counter()
    before = 0
    every = max(1, max_writes // 10)
    while True:
        ids, vectors, labels = pool.take(batch)
        response = write(upsert_event(name, ids, vectors, labels))
        run.writes += 1
        run.vectors += batch
        put = sum(counter.snapshot()[1].values())
        merged = bool(response["merged"])
        run.merges += merged
        (run.merge_write_bytes if merged else run.tail_write_bytes).append(put - before)
        before = put
        if run.writes % every == 0:
            say(
                f"    {name} batch {batch}: {run.writes} writes, {run.merges} merges, "
                f"{put / run.vectors / (4 * vectors.shape[1]):.1f}× so far, "
                f"tail {response['tail_segments']} segments ({time.perf_counter() - started:.0f} s)"
            )
        if run.writes >= min_writes and (merged or not until_merge):
            run.ended_on_merge = merged
            break
        if run.writes >= max_writes:
            say(f"  {name} batch {batch}: stopped at {max_writes} writes before a merge")
            break
    run.seconds = time.perf_counter() - started
    run.requests, run.put, run.get_bytes = counter.snapshot()
    return run


# ---------------------------------------------------------------------------- queries
@dataclass
class QueryCost:
    recall: float
    probes: float
    gets: float
    bytes: float  # buckets and tail segments
    manifest_bytes: float
    segments: float
    tail_rows: float
    buckets: float
    ms: float
    per_query_bytes: np.ndarray  # buckets and segments, per query
    per_query_hits: np.ndarray  # true neighbours found, per query

    @property
    def n(self) -> int:
        return len(self.per_query_bytes)


def exact_ids(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> list[set[str]]:
    """The true top-K ids of each query (cosine), by brute force over ``vectors``."""
    x = distances.prepare(vectors, "cosine")
    q = distances.prepare(queries, "cosine")
    out: list[set[str]] = []
    for start in range(0, len(q), 250):
        sims = q[start : start + 250] @ x.T
        top = np.argpartition(-sims, K - 1, axis=1)[:, :K]
        out += [{str(ids[j]) for j in row} for row in top]
    return out


def query_cost(
    store: ObjectStore, name: str, queries: np.ndarray, truth: list[set[str]], *, cold: bool
) -> QueryCost:
    """Single-vector queries at the default recall target, cold or warm (see the docstring)."""
    warm = Searcher(store, head_ttl=0.0)
    if not cold:
        warm.search(name, queries[-1:], k=K)  # manifest (every part it routes to) and segments
    rows: list[tuple[float, ...]] = []
    hits: list[int] = []
    for i in range(len(queries)):
        if cold:
            searcher = Searcher(store)
        else:
            searcher = warm
            warm.buckets.clear()
        t0 = time.perf_counter()
        res = searcher.search(name, queries[i : i + 1], k=K)
        ms = (time.perf_counter() - t0) * 1000
        s = res.stats
        hits.append(len({h for h in res.ids[0] if h is not None} & truth[i]))
        rows.append(
            (
                s.probes,
                s.s3_gets,
                s.bytes_fetched,
                s.manifest_bytes,
                s.segments_fetched,
                s.tail_rows,
                s.buckets_fetched,
                ms,
            )
        )
    a = np.array(rows, dtype=np.float64)
    mean = a.mean(axis=0)
    found = np.array(hits)
    return QueryCost(
        found.sum() / (K * len(queries)), *mean[:7].tolist(), float(np.median(a[:, 7])), a[:, 2], found
    )


def bucket_shape(store: ObjectStore, name: str) -> dict[str, Any]:
    m = catalog.read_live(store, name).manifest
    rows = m.buckets.rows[m.buckets.rows > 0]
    return {
        "buckets": len(rows),
        "max": int(rows.max()),
        "p90": float(np.percentile(rows, 90)),
        "median": float(np.median(rows)),
        "stored_rows": int(rows.sum()),
        "count": m.count,
        "tail_segments": len(m.tail),
        "tail_rows": sum(s.weight for s in m.tail),
        "bytes": int(m.buckets.sizes.sum()),
    }


# ---------------------------------------------------------------------------- the measurement
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30,000 vectors, 200 queries, fewer writes")
    parser.add_argument("--n", type=int, default=None, help="vectors of the data set used (default all)")
    parser.add_argument(
        "--pool", type=int, default=None, help="new vectors for part 1 (default 30,000; quick 9,000)"
    )
    parser.add_argument("--queries", type=int, default=None, help="held-out queries (default 1,000)")
    parser.add_argument("--batches", default="1,10,100,2000", help="batch sizes of part 1")
    parser.add_argument(
        "--min-writes",
        default=None,
        help="writes per batch size at least, as 1:200,10:100,… (default 1:200,10:100,100:30,2000:6)",
    )
    parser.add_argument(
        "--max-writes", type=int, default=8000, help="writes per batch size at most (default 8,000)"
    )
    parser.add_argument(
        "--warm-queries", type=int, default=200, help="queries of the warm and full-tail runs (default 200)"
    )
    parser.add_argument("--drift-batch", type=int, default=2000, help="batch size of part 2 (default 2,000)")
    parser.add_argument("--skip", default="", help="'amplification' or 'drift' to skip one part")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = args.n or 30_000
        args.pool = args.pool or 9_000
        args.queries = args.queries or 200
        args.min_writes = args.min_writes or "1:50,10:20,100:5,2000:2"
    args.pool = args.pool or 30_000
    args.queries = args.queries or 1_000
    spec = args.min_writes or "1:200,10:100,100:30,2000:6"
    args.min_writes = {int(b): int(n) for b, n in (p.split(":") for p in spec.split(","))}
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


def amplification(
    args: argparse.Namespace,
    sample: local.Sample,
    store: ObjectStore,
    write: Callable[[dict[str, Any]], dict[str, Any]],
    counter: Requests,
    say: Callable[[str], None],
) -> tuple[list[str], dict[str, Any]]:
    rng = np.random.default_rng(20261130)
    n = len(sample.ids)
    order = rng.permutation(n)
    new, base = order[: args.pool], order[args.pool :]
    data = make_collection(sample.vectors[base], sample.ids[base], sample.labels[base], metric="cosine")
    built = {}
    for name, extra in (("amp-tail", {}), ("amp-none", {"tail_rows": 0})):
        t0 = time.perf_counter()
        built[name] = build_index(store, name, data, BuildParams(metric="cosine", **extra), replace=True)
        took = time.perf_counter() - t0
        say(f"built {name}: {len(base):,} × {data.dim} in {built[name].buckets} buckets ({took:.0f} s)")
    runs: dict[tuple[str, int], Run] = {}
    for name in ("amp-tail", "amp-none"):
        pool = Pool(sample.ids[new], sample.vectors[new], sample.labels[new])
        for batch in args.batches:
            minimum = args.min_writes.get(batch, 3)
            until = ", until a merge" if name == "amp-tail" else ""
            say(f"  {name}: batches of {batch} (≥ {minimum} writes{until}) …")
            r = run_batches(
                write,
                store,
                counter,
                name,
                pool,
                batch,
                min_writes=minimum,
                max_writes=max(minimum, args.max_writes),
                until_merge=name == "amp-tail",
                say=say,
            )
            runs[(name, batch)] = r
            say(
                f"  {name} batch {batch}: {r.writes} writes, {r.merges} merges, "
                f"{r.put_total / r.vectors / (4 * data.dim):.1f}× ({r.seconds:.0f} s)"
            )
    return amplification_tables(runs, args.batches, data.dim), {
        "base": len(base),
        "buckets": built["amp-tail"].buckets,
        "runs": runs,
    }


def amplification_tables(runs: dict[tuple[str, int], Run], batches: list[int], dim: int) -> list[str]:
    f32 = 4 * dim
    lines = [
        "| batch | tail | writes | merges | vectors | tail limit at start (rows) "
        "| **bytes PUT / vector ÷ float32** | PUT per write without merge | PUT per merging write "
        "| S3 GET / PUT per write | bytes GET per write | ms per write |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for batch in batches:
        for name, label in (("amp-tail", "automatic"), ("amp-none", "none (`tail_rows` 0)")):
            r = runs.get((name, batch))
            if r is None:
                continue
            gets = sum(v for (m, _), v in r.requests.items() if m == "GET")
            puts = sum(v for (m, _), v in r.requests.items() if m == "PUT")
            tail_put = fmt_bytes(np.mean(r.tail_write_bytes)) if r.tail_write_bytes else "—"
            merge_put = fmt_bytes(np.mean(r.merge_write_bytes)) if r.merge_write_bytes else "—"
            limit = str(r.limit) if name == "amp-tail" else "0"
            partial = "" if r.ended_on_merge or name == "amp-none" else " (no merge reached)"
            lines.append(
                f"| {batch:,} | {label} | {r.writes:,} | {r.merges:,} | {r.vectors:,} | {limit} "
                f"| **{r.put_total / r.vectors / f32:,.1f}×**{partial} | {tail_put} | {merge_put} "
                f"| {gets / r.writes:.1f} / {puts / r.writes:.1f} | {fmt_bytes(r.get_bytes / r.writes)} "
                f"| {r.seconds * 1000 / r.writes:,.0f} |"
            )
    lines += [
        "",
        "Bytes PUT per upserted vector ÷ float32 size, by object:",
        "",
        "| batch | tail | " + " | ".join(KIND_NAMES[k] for k in KIND_NAMES) + " | total |",
        "|---:|---|" + "---:|" * (len(KIND_NAMES) + 1),
    ]
    for batch in batches:
        for name, label in (("amp-tail", "automatic"), ("amp-none", "none")):
            r = runs.get((name, batch))
            if r is None:
                continue
            cells = [f"{r.put[k] / r.vectors / f32:,.2f}" for k in KIND_NAMES]
            lines.append(
                f"| {batch:,} | {label} | " + " | ".join(cells) + f" | {r.put_total / r.vectors / f32:,.1f} |"
            )
    return lines


def drift(
    args: argparse.Namespace,
    sample: local.Sample,
    store: ObjectStore,
    write: Callable[[dict[str, Any]], dict[str, Any]],
    counter: Requests,
    say: Callable[[str], None],
) -> list[str]:
    names, counts = np.unique(sample.labels, return_counts=True)
    by_size = names[np.argsort(-counts, kind="stable")]
    inserted = set(by_size[1::2].tolist())
    later = np.isin(sample.labels, list(inserted))
    base = np.flatnonzero(~later)
    rng = np.random.default_rng(20261201)
    new = rng.permutation(np.flatnonzero(later))
    params = BuildParams(metric="cosine")
    t0 = time.perf_counter()
    data = make_collection(sample.vectors[base], sample.ids[base], sample.labels[base], metric="cosine")
    built = build_index(store, "drift", data, params, replace=True)
    say(
        f"built drift: {len(base):,} vectors of {len(names) - len(inserted)} labels in {built.buckets} "
        f"buckets ({time.perf_counter() - t0:.0f} s); upserting {len(new):,} of the other "
        f"{len(inserted)} labels in batches of {args.drift_batch:,} …"
    )
    pool = Pool(sample.ids[new], sample.vectors[new], sample.labels[new])
    counter.reset()
    writes = merges = 0
    t0 = time.perf_counter()
    last: dict[str, Any] = {}
    while pool.next < len(pool.ids):
        k = min(args.drift_batch, len(pool.ids) - pool.next)
        last = write(upsert_event("drift", *pool.take(k)))
        writes += 1
        merges += bool(last["merged"])
        if writes % 5 == 0 or pool.next == len(pool.ids):
            say(
                f"    {writes} writes, {pool.next:,} vectors, {merges} merges, "
                f"tail {last['tail_segments']} segments ({time.perf_counter() - t0:.0f} s)"
            )
    write_s = time.perf_counter() - t0
    _, put, _ = counter.snapshot()
    put_ratio = sum(put.values()) / len(new) / (4 * sample.vectors.shape[1])
    final_rows = np.concatenate([base, new])
    t0 = time.perf_counter()
    fresh_data = make_collection(
        sample.vectors[final_rows], sample.ids[final_rows], sample.labels[final_rows], metric="cosine"
    )
    fresh = build_index(store, "drift-fresh", fresh_data, params, replace=True)
    took = time.perf_counter() - t0
    say(f"built drift-fresh (the final contents, same parameters): {fresh.buckets} buckets ({took:.0f} s)")
    after, rebuilt = bucket_shape(store, "drift"), bucket_shape(store, "drift-fresh")
    if after["count"] != len(final_rows):
        say(f"  warning: drift holds {after['count']:,} live vectors, expected {len(final_rows):,}")
    queries = sample.queries[: args.queries]
    truth = exact_ids(sample.vectors[final_rows], sample.ids[final_rows], queries)
    few = min(args.warm_queries, len(queries))
    costs: dict[tuple[str, str], QueryCost] = {}
    states = {
        "written": ("drift", "after the writes"),
        "recalibrated": ("drift", "after the writes + `recalibrate`"),
        "full tail": ("drift", "after the writes + `recalibrate` + full tail"),
        "fresh": ("drift-fresh", "fresh build"),
    }

    def measure(state: str, mode: str, n: int) -> None:
        t0 = time.perf_counter()
        costs[(state, mode)] = c = query_cost(
            store, states[state][0], queries[:n], truth[:n], cold=mode == "cold"
        )
        say(
            f"  {state} {mode} ({n} queries): recall {c.recall:.3f}, {c.probes:.1f} probes, "
            f"{c.gets:.1f} GETs, {fmt_bytes(c.bytes)} per query ({time.perf_counter() - t0:.0f} s)"
        )

    for state in ("written", "fresh"):
        measure(state, "cold", len(queries))
        measure(state, "warm", few)
    # The written collection's probes for the default target come from its build's calibration;
    # recalibrate measures them again on the data as it is now (what an operator would run).
    recal = recalibrate(store, "drift")
    say(f"  drift recalibrated: {recal.probes_before} → {recal.probes_after} probes for the default target")
    measure("recalibrated", "cold", len(queries))
    measure("recalibrated", "warm", few)
    # The same contents with a full tail: re-upsert written vectors (same ids, same vectors) until
    # the next write would merge. Results cannot get worse; what a query pays for the tail shows.
    limit, held, _ = limit_now(store, "drift")
    again = Pool(sample.ids[new], sample.vectors[new], sample.labels[new])
    refill = 0
    while held < limit:
        k = min(args.drift_batch, limit - held)
        response = write(upsert_event("drift", *again.take(k)))
        if response["merged"]:
            say("  warning: a refill write merged the tail")
            break
        held, refill = held + k, refill + 1
    full = bucket_shape(store, "drift")
    say(f"  drift: tail refilled to {full['tail_rows']:,} rows in {full['tail_segments']} segments")
    if refill:
        measure("full tail", "cold", few)
        measure("full tail", "warm", few)
    dim = sample.vectors.shape[1]
    lines = [
        f"Built on {len(base):,} vectors of {len(names) - len(inserted)} labels (every other label by size), "
        f"then {len(new):,} vectors of the other {len(inserted)} labels upserted in {writes} writes of "
        f"≤ {args.drift_batch:,} (shuffled) through the write handler: {merges} merged the tail, "
        f"{put_ratio:.1f}× bytes PUT per vector ÷ float32, {write_s:.0f} s. Fresh build: the same final "
        f"{len(final_rows):,} vectors, the same parameters (`BuildParams(metric='cosine')`: "
        "bucket_size 1000, refine 10, replicate 0.25, float16, automatic tail).",
        "",
        "| collection | buckets (non-empty) | rows max | rows p90 | rows median "
        "| stored rows (replicas incl.) | bucket bytes | tail at the end |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for label, shape in (("after the writes", after), ("fresh build", rebuilt)):
        lines.append(
            f"| {label} | {shape['buckets']} | {shape['max']:,} | {shape['p90']:,.0f} "
            f"| {shape['median']:,.0f} | {shape['stored_rows']:,} | {fmt_bytes(shape['bytes'])} "
            f"| {shape['tail_segments']} segments, "
            f"{shape['tail_rows']:,} rows |"
        )
    lines += [
        "",
        f"Held-out queries (all {len(names)} labels, never inserted), one vector per query, k = {K}, "
        f"default recall target (no probes given); recall@{K} against brute force over the final "
        f"{len(final_rows):,} vectors. Cold = a fresh Searcher per query (new container); warm = one "
        "Searcher, HEAD revalidated on every query, manifest and tail segments cached, bucket cache "
        f"cleared before each query (a collection larger than the cache), on the first {few} queries. "
        f"`recalibrate` (kdbuckets.recalibrate: the probes for each recall target measured again on the "
        f"data as it is now, buckets unchanged): {recal.probes_before} → {recal.probes_after} probes. "
        f"'+ full tail': then re-upserting {refill} batches of vectors the collection already holds "
        f"(same ids, same vectors) left {full['tail_rows']:,} rows in {full['tail_segments']} tail "
        "segment(s), the tail limit (the next write merges): the same contents, with what a query pays "
        "for a full tail. Means per query (ms: median, in-process moto).",
        "",
        "| collection | cache | queries | recall@10 | probes | S3 GETs | buckets fetched | segments fetched "
        "| tail rows scanned | bucket + segment bytes | manifest bytes | ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for state, (_, label) in states.items():
        for mode in ("cold", "warm"):
            c = costs.get((state, mode))
            if c is None:
                continue
            lines.append(
                f"| {label} | {mode} | {c.n:,} | {c.recall:.3f} | {c.probes:.1f} | {c.gets:.1f} "
                f"| {c.buckets:.1f} | {c.segments:.2f} | {c.tail_rows:,.0f} | {fmt_bytes(c.bytes)} "
                f"| {fmt_bytes(c.manifest_bytes)} | {c.ms:.0f} |"
            )
    fresh_cold = costs[("fresh", "cold")]
    lines += ["", "Per query, against the fresh build on the same queries:", ""]
    lines += ["| collection | cache | bucket + segment bytes | all bytes | S3 GETs | recall@10 (fresh) |"]
    lines += ["|---|---|---:|---:|---:|---|"]
    for state, (_, label) in states.items():
        for mode in ("cold", "warm"):
            a = costs.get((state, mode))
            if a is None or state == "fresh":
                continue
            b = costs[("fresh", mode)]
            same = fresh_cold.per_query_bytes[: a.n].mean()  # the fresh build on the same queries
            fresh_recall = fresh_cold.per_query_hits[: a.n].sum() / (K * a.n)
            lines.append(
                f"| {label} | {mode} | **{a.bytes / same:.2f}×** "
                f"| {(a.bytes + a.manifest_bytes) / (same + b.manifest_bytes):.2f}× | {a.gets / b.gets:.2f}× "
                f"| {a.recall:.3f} ({fresh_recall:.3f}) |"
            )
    written = costs[("written", "cold")]
    lines += [
        "",
        f"Targets after the writes (default settings, cold, {written.n:,} queries): bytes per query ≤ 1.25× "
        f"the fresh build's — {written.bytes / fresh_cold.bytes:.2f}× "
        f"({'met' if written.bytes <= 1.25 * fresh_cold.bytes else 'missed'}); recall ≥ 0.95 — "
        f"{written.recall:.3f} ({'met' if written.recall >= 0.95 else 'missed'}). The fresh build's "
        "vectors are the originals; the written ones went through JSON (6 decimals), then float16 "
        f"(dimension {dim}).",
    ]
    return lines


def fmt_bytes(b: float) -> str:
    if b >= 1e6:
        return f"{b / 1e6:.2f} MB"
    return f"{b / 1e3:.1f} kB" if b >= 1e3 else f"{b:.0f} B"


def measure_section(argv: list[str] | None = None, say: Callable[[str], None] | None = None) -> str:
    """Both parts; the Markdown section."""
    say = say or (lambda line: print(line, flush=True))
    args = parse(argv)
    started = time.perf_counter()
    sample = local.load_sample()
    if args.n is not None and args.n < len(sample.ids):
        keep = np.sort(np.random.default_rng(7).choice(len(sample.ids), args.n, replace=False))
        sample = local.Sample(
            f"{sample.name}, random {args.n:,} of it",
            sample.vectors[keep],
            sample.ids[keep],
            sample.labels[keep],
            sample.queries,
            sample.query_ids,
            sample.query_labels,
            sample.texts,
        )
    command = "python -m bench.run --only tail" if argv == [] else "python -m bench.tail_writes"
    command += "".join(f" {a}" for a in argv or [])
    say(f"== tail writes on {sample.name}: {len(sample.ids):,} × {sample.vectors.shape[1]}")
    skip = set(args.skip.split(",")) if args.skip else set()
    out = [
        f"## Unmerged tail of writes — {sample.name}",
        "",
        f"`{command}`; "
        "in-process moto S3; every write is the write Lambda's handler (`functions/write/app.py`) invoked "
        "with a JSON upsert event. Bytes are counted on the library's S3 client per request (retries "
        "included); float32 size = 4 × dim bytes per vector.",
        "",
    ]
    with moto_s3():
        store = ObjectStore(BUCKET)
        write = handler()
        client = storage.s3_client(storage.DEFAULT_CONCURRENCY)
        counter = Requests().install(client)
        try:
            if "amplification" not in skip:
                say("-- write amplification")
                table, info = amplification(args, sample, store, write, counter, say)
                out += [
                    "### Write amplification",
                    "",
                    f"Two collections built on the same random {info['base']:,} vectors ({info['buckets']} "
                    "buckets, default parameters); new vectors (a random, disjoint part of the set) upserted "
                    "in batches of each size, one batch size after the other on the same collection. With "
                    "the tail, each batch size runs from an empty tail until a write merges (whole merge "
                    "cycles; at least as many writes as without); without it every write rewrites the "
                    "buckets it touches.",
                    "",
                    *table,
                    "",
                ]
            if "drift" not in skip:
                say("-- drift guard")
                out += [
                    "### Drift guard: half the labels written after the build",
                    "",
                    *drift(args, sample, store, write, counter, say),
                    "",
                ]
        finally:
            counter.uninstall(client)
    out.append(f"Measured in {time.perf_counter() - started:.0f} s.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    print(measure_section(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
