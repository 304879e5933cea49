"""The distributed build against the single-function build: recall vs bytes, task memory, cost.

One command measures, on the SAME sharded ``.npy`` source and with the same (default) build
parameters and seed:

1. the recall@10-vs-bytes curve of the single-function build (``kdbuckets.service.build``
   over the shard prefix) and of the distributed build (``statemachine/build.asl.json`` on
   moto's Step Functions through :mod:`devtools.sfn_local`), on held-out queries against
   exact brute force; the bytes per query at recall 0.95 of each and their ratio;
2. the peak memory of every task of the distributed build: each Lambda task (and the
   single-function build) runs ``functions/distbuild/app.py``'s handler in a **fresh
   subprocess** (VmHWM of that process, as one Lambda container would see it), dispatched
   by moto's Step Functions; S3 is a moto server in this process, reached over HTTP;
3. a cost model from the measured requests, bytes, GET rounds and Lambda seconds,
   extrapolated by stated formulas to 1M, 100M and 1B vectors of 384 and 768 dimensions,
   side by side with Amazon S3 Vectors' published prices.

    PYTHONPATH=shared:. python -m bench.distributed      # prints the Markdown section

``python -m bench.run --only distributed`` writes it into bench/REPORT.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.datasets import Dataset, synthetic_clustered, wordnet
from bench.run import PROBE_GRID, Curve, brute_force, recall_at_k
from bench.s3sim import LatencyModel

REPO = Path(__file__).resolve().parents[1]
INDEX_BUCKET = "kdbuckets-bench-dist-index"
SOURCE_BUCKET = "kdbuckets-bench-dist-source"
K = 10
TARGET = 0.95
SEED = 0  # BuildParams' default seed, passed explicitly to both builds
SHARDS = 8
PARTITIONS = 8  # the distributed build's partition count here (its default is one per 1M rows)
SYNTH_N, SYNTH_DIM = 200_000, 128
SCALE_N = 50_000  # a second, smaller self-similar synthetic set: how probes grow with n
QUERY_SAMPLE = 40  # single-vector queries per build for GETs / bytes / latency, cold and warm
FIRST_BYTE_MS, BANDWIDTH_MB_S = 20.0, 90.0  # bench/s3sim.py's default S3 latency model
TASK_CONCURRENCY = 2  # tasks at once (2 cores); each task's BLAS gets one thread

# ---------------------------------------------------------------------------- prices (USD)
S3_GET_PER_1K = 0.0004
S3_PUT_PER_1K = 0.005  # PUT, COPY, POST, LIST
S3_GB_MONTH = 0.023
LAMBDA_GB_S = 0.0000166667  # x86
LAMBDA_PER_1M_REQ = 0.20
SFN_PER_1K_TRANSITIONS = 0.025  # Step Functions Standard; map children's states count too
S3V_PER_1M_QUERIES = 2.50
S3V_GB_MONTH = 0.06
S3V_WRITE_PER_GB = 0.20
#: ASSUMPTION (not from the issue): S3 Vectors' query "data processed" rate, USD per TB, applied
#: to (index logical bytes) per query; check the current S3 pricing page (AWS lowered it for
#: indexes above 10M vectors in 2026). The TB processed are printed so any rate can be applied.
S3V_PROCESSED_PER_TB = 0.002
S3V_KEY_BYTES = 16  # ASSUMPTION: a 16-byte key per vector, no filterable metadata
GIB = float(1 << 30)

SIZES = (1_000_000, 100_000_000, 1_000_000_000)
DIMS = (384, 768)
HIT_RATES = (0.0, 0.9)
ROWS_PER_SHARD_AT_SCALE = 1_000_000  # ASSUMPTION for the extrapolated builds' source shards
HIER_MANIFEST_BOUND = 2_000_000  # the target for manifest bytes per cold query


def say(line: str) -> None:
    """A progress line (stderr, so stdout stays the Markdown)."""
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- task subprocess
#: One Lambda task (``task``: the distributed-build handler) or one single-function build
#: (``single``: kdbuckets.service.build, as the build function calls it) in a fresh
#: interpreter; reports its peak memory, durations and every S3 request it made.
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    started = time.perf_counter()

    from devtools.peak_memory import peak_kb

    import boto3.session
    requests, received = {}, {}

    def category(bucket, key):
        if bucket == os.environ["BENCH_SOURCE_BUCKET"]:
            return "source"
        if "_staging/" in key:
            return "runs" if "/runs/" in key else "staging"
        return "index"

    def count(params, model, **_):
        body = params.get("Body")
        size = 0
        if isinstance(body, (bytes, bytearray, memoryview)):
            size = len(body)
        elif hasattr(body, "getbuffer"):  # botocore has already wrapped bytes in a BytesIO
            size = body.getbuffer().nbytes
        where = params.get("Key") or params.get("Prefix") or ""
        name = model.name + ":" + category(params.get("Bucket", ""), where)
        entry = requests.setdefault(name, [0, 0])
        entry[0] += 1
        entry[1] += size

    def after_call(parsed, model, **_):
        if model.name == "GetObject":
            received[model.name] = received.get(model.name, 0) + int(parsed.get("ContentLength") or 0)

    original = boto3.session.Session.client

    def client(self, *args, **kwargs):
        made = original(self, *args, **kwargs)
        made.meta.events.register("before-parameter-build.s3", count)
        made.meta.events.register("after-call.s3", after_call)
        return made

    boto3.session.Session.client = client
    mode, event_path, out_path = sys.argv[1:4]
    event = json.loads(open(event_path).read())
    if mode == "task":
        from devtools.sfn_local import FakeContext, load_handler
        handler = load_handler()
        imported_s, baseline = time.perf_counter() - started, peak_kb()
        t0 = time.perf_counter()
        response = handler(event, FakeContext())
    else:
        from kdbuckets import service
        from kdbuckets.storage import ObjectStore
        imported_s, baseline = time.perf_counter() - started, peak_kb()
        t0 = time.perf_counter()
        response = service.build(event, ObjectStore(os.environ["INDEX_BUCKET"]))
    doc = {
        "response": response,
        "imported_s": imported_s,
        "handler_s": time.perf_counter() - t0,
        "baseline_kb": baseline,
        "peak_kb": peak_kb(),
        "requests": requests,
        "received": received,
    }
    with open(out_path, "w") as out:
        json.dump(doc, out)
    """
)


def run_child(mode: str, event: dict[str, Any], env: dict[str, str], workdir: Path) -> dict[str, Any]:
    """Run one task / build in a fresh interpreter; its measurements (raises on failure)."""
    d = Path(tempfile.mkdtemp(dir=workdir))
    (d / "event.json").write_text(json.dumps(event))
    done = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(d / "event.json"), str(d / "out.json")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{mode} {event.get('step', '')} failed: {tail[0]}")
    return json.loads((d / "out.json").read_text())


class SubprocessTasks:
    """The handler :class:`devtools.sfn_local.LocalStepFunctions` dispatches to: a subprocess per task."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.env, self.workdir = env, workdir
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def __call__(self, event: dict[str, Any], context: Any) -> Any:
        rec = run_child("task", event, self.env, self.workdir)
        rec["step"] = str(event.get("step"))
        with self._lock:
            self.records.append(rec)
        return rec["response"]


# ---------------------------------------------------------------------------- environment
@contextlib.contextmanager
def environment() -> Iterator[tuple[Any, dict[str, str], Path, Any]]:
    """moto Step Functions in process, a moto S3 server over HTTP; yields (machine, env, dir, s3)."""
    import boto3

    from devtools import sfn_local
    from devtools.demo import local_s3
    from kdbuckets import storage

    saved = dict(os.environ)
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        POWERTOOLS_LOG_LEVEL="WARNING",
        POWERTOOLS_SERVICE_NAME="kdbuckets-bench",
    )
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "INDEX_PREFIX"):
        os.environ.pop(name, None)
    try:
        with (
            sfn_local.local_aws(),
            local_s3() as url,
            tempfile.TemporaryDirectory(prefix="kdb-dist-bench-") as tmp,
        ):
            os.environ.update(AWS_ENDPOINT_URL_S3=url, INDEX_BUCKET=INDEX_BUCKET)
            storage.reset_clients()
            s3 = boto3.client("s3", region_name="us-east-1")
            for bucket in (INDEX_BUCKET, SOURCE_BUCKET):
                s3.create_bucket(Bucket=bucket)
            env = {
                **os.environ,
                "BENCH_SOURCE_BUCKET": SOURCE_BUCKET,
                "OPENBLAS_NUM_THREADS": "1",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO / "shared"), str(REPO), os.environ.get("PYTHONPATH")])
                ),
            }
            handler = SubprocessTasks(env, Path(tmp))
            machine = sfn_local.LocalStepFunctions(
                handler, concurrency=TASK_CONCURRENCY, progress=lambda line: say("   " + line[:150])
            )
            yield machine, env, Path(tmp), s3
            storage.reset_clients()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def upload_shards(s3: Any, slug: str, vectors: np.ndarray) -> dict[str, str]:
    """``vectors`` as SHARDS .npy objects under one prefix; the source both builds read."""
    bounds = np.linspace(0, len(vectors), SHARDS + 1).astype(int)
    for i in range(SHARDS):
        s3.put_object(
            Bucket=SOURCE_BUCKET,
            Key=f"{slug}/vectors/part-{i:03d}.npy",
            Body=npy(np.ascontiguousarray(vectors[bounds[i] : bounds[i + 1]])),
        )
    return {"vectors": f"s3://{SOURCE_BUCKET}/{slug}/vectors/"}


# ---------------------------------------------------------------------------- measurements
class RequestCounter:
    """GETs and bytes received by one botocore client (all operations counted)."""

    def __init__(self) -> None:
        self.calls = 0
        self.gets = 0
        self.bytes = 0

    def install(self, client: Any) -> None:
        client.meta.events.register("before-call.s3", self._before)
        client.meta.events.register("after-call.s3.GetObject", self._after)

    def uninstall(self, client: Any) -> None:
        client.meta.events.unregister("before-call.s3", self._before)
        client.meta.events.unregister("after-call.s3.GetObject", self._after)

    def reset(self) -> None:
        self.calls = self.gets = self.bytes = 0

    def _before(self, model: Any, **_: Any) -> None:
        self.calls += 1
        self.gets += model.name in ("GetObject", "HeadObject")

    def _after(self, parsed: Any, **_: Any) -> None:
        self.bytes += int(parsed.get("ContentLength") or 0)


@dataclass
class BuildResult:
    """One build of one data set: its curve and what a query and the build cost."""

    name: str
    slug: str
    curve: Curve
    buckets: int
    stored_rows: int
    bucket_bytes: int
    manifest_bytes: int
    plane_rows: int
    default_probes: float
    default_recall: float
    io: dict[str, dict[str, float]]
    records: list[dict[str, Any]]
    wall_s: float
    partitions_touched: float | None = None  # mean partitions a query's probes hit at TARGET
    partition_of_bucket: np.ndarray | None = None
    decode_s_per_byte: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def measure_curve(store: Any, slug: str, ds: Dataset, truth: np.ndarray) -> tuple[Curve, Any, np.ndarray]:
    """Recall@10 and bytes per query for probes in PROBE_GRID (buckets cached; stops at 0.995)."""
    from kdbuckets import distances
    from kdbuckets.ranking import bucket_scores, top_buckets
    from kdbuckets.searcher import Searcher

    searcher = Searcher(store, cache_bytes=8 << 30)
    m = searcher.manifest(slug)
    rows, sizes = m.buckets.rows, m.buckets.sizes
    q = distances.prepare(ds.queries, ds.metric)
    scores = bucket_scores(q, m.buckets.centroids, m.tree, ds.metric, m.params["ranking"])
    scores[:, rows == 0] = np.inf
    searcher.search(slug, ds.queries[:1], k=K, probes=m.n_buckets)  # warm every bucket
    curve = Curve()
    for p in [p for p in PROBE_GRID if p <= m.n_buckets]:
        probed = top_buckets(scores, p)
        res = searcher.search(slug, ds.queries, k=K, probes=p)
        found = np.array([[-1 if i is None else i for i in row] for row in res.ids])
        curve.probes.append(p)
        curve.recall.append(recall_at_k(found, truth))
        curve.fraction.append(float(rows[probed].sum(axis=1).mean() / m.count))
        curve.bytes.append(float(sizes[probed].sum(axis=1).mean()))
        if curve.recall[-1] >= 0.995:
            break
    return curve, m, scores


def query_io(store: Any, slug: str, queries: np.ndarray) -> dict[str, dict[str, float]]:
    """Mean GETs, bytes, GET rounds and modelled latency of single-vector default queries.

    Cold: a new Searcher per query (HEAD, manifest, buckets). Warm: manifest cached, HEAD
    revalidated every query, buckets not cached (a large collection's case).
    """
    from kdbuckets.searcher import Searcher

    counter = RequestCounter()
    model = LatencyModel(FIRST_BYTE_MS, BANDWIDTH_MB_S)
    counter.install(store.client)
    model.install(store.client)
    out: dict[str, dict[str, float]] = {}
    try:
        for label in ("cold", "warm"):
            warm = Searcher(store, head_ttl=0.0)
            warm.search(slug, queries[-1:], k=K)
            got: dict[str, list[float]] = {"gets": [], "bytes": [], "rounds": [], "ms": [], "probes": []}
            for i in range(min(QUERY_SAMPLE, len(queries) - 1)):
                searcher = Searcher(store) if label == "cold" else warm
                warm.buckets.clear()
                counter.reset()
                model.reset()
                t0 = time.perf_counter()
                res = searcher.search(slug, queries[i : i + 1], k=K)
                got["ms"].append((time.perf_counter() - t0) * 1000)
                got["gets"].append(counter.gets)
                got["bytes"].append(counter.bytes)
                got["rounds"].append(model.rounds())
                got["probes"].append(res.stats.probes)
            out[label] = {k: float(np.mean(v)) for k, v in got.items()}
            out[label]["ms_p50"] = float(np.median(got["ms"]))
    finally:
        model.uninstall(store.client)
        counter.uninstall(store.client)
    return out


def evaluate(
    store: Any,
    name: str,
    slug: str,
    ds: Dataset,
    truth: np.ndarray,
    records: list[dict[str, Any]],
    wall_s: float,
) -> BuildResult:
    """Curve, default query and per-query I/O of one built collection."""
    from kdbuckets.manifest import encode_manifest

    curve, m, scores = measure_curve(store, slug, ds, truth)
    from kdbuckets.searcher import Searcher

    res = Searcher(store, cache_bytes=8 << 30).search(slug, ds.queries, k=K)
    found = np.array([[-1 if i is None else i for i in row] for row in res.ids])
    shown = ", ".join(f"{p}: {r:.3f}" for p, r in zip(curve.probes, curve.recall, strict=True))
    say(f"   {name}: {m.n_buckets} buckets; recall@10 by probes {shown}")
    io_ = query_io(store, slug, ds.queries)
    for label, v in io_.items():
        say(f"   {name} {label}: {v['gets']:.1f} GETs, {v['bytes'] / 1e3:.0f} kB, {v['rounds']:.1f} rounds")
    body = encode_manifest(m)
    decode_s = _decode_rate(body)
    return BuildResult(
        name=name,
        slug=slug,
        curve=curve,
        buckets=m.n_buckets,
        stored_rows=int(m.buckets.rows.sum()),
        bucket_bytes=int(m.buckets.sizes.sum()),
        manifest_bytes=len(body),
        plane_rows=int(m.tree.planes.shape[0]),
        default_probes=float(res.stats.probes),
        default_recall=recall_at_k(found, truth),
        io=io_,
        records=records,
        wall_s=wall_s,
        decode_s_per_byte=decode_s,
        extra={"scores": scores},
    )


def _decode_rate(body: bytes) -> float:
    from kdbuckets.manifest import decode_manifest

    t0 = time.perf_counter()
    for _ in range(3):
        decode_manifest(body, key="bench")
    return (time.perf_counter() - t0) / 3 / len(body)


def partitions_touched(store: Any, result: BuildResult, plan_id: str, partitions: int) -> None:
    """Mean number of distinct partitions among a query's probed buckets at TARGET (staged results)."""
    from kdbuckets import distributed
    from kdbuckets.distributed_events import PlanRef
    from kdbuckets.ranking import top_buckets

    ref = PlanRef(collection=result.slug, plan_id=plan_id)
    counts = []
    for i in range(partitions):
        part = distributed._require(store, distributed._key(ref, "parts", f"{i:05d}"), "partition result")
        counts.append(len(part["fingerprints"]))
    owner = np.repeat(np.arange(partitions), counts)
    at = result.curve.at_recall(TARGET)
    p = math.ceil(at[0]) if at else result.curve.probes[-1]
    probed = top_buckets(result.extra["scores"], p)
    result.partition_of_bucket = owner
    result.partitions_touched = float(np.mean([len(np.unique(owner[row])) for row in probed]))


# ---------------------------------------------------------------------------- one data set
def measure_dataset(
    machine: Any,
    env: dict[str, str],
    workdir: Path,
    s3: Any,
    ds: Dataset,
    slug: str,
    *,
    distributed: bool = True,
) -> dict[str, Any]:
    """Both builds of ``ds`` from one sharded source; their curves, I/O and task records."""
    from kdbuckets.storage import ObjectStore

    store = ObjectStore(INDEX_BUCKET)
    n, d = ds.vectors.shape
    say(f"== {ds.name}: uploading {SHARDS} shards")
    source = upload_shards(s3, slug, ds.vectors)
    say("   exact neighbours (brute force)")
    truth, _ = brute_force(ds)
    event = {"source": source, "metric": ds.metric, "seed": SEED}
    say("   single-function build (one subprocess)")
    t0 = time.perf_counter()
    single_rec = run_child("single", {"collection": f"{slug}-flat", **event}, env, workdir)
    single_rec["step"] = "single"
    single_wall = time.perf_counter() - t0
    say(f"   single build: {single_wall:.1f} s, peak {single_rec['peak_kb'] / 1024:.0f} MB")
    out: dict[str, Any] = {"dataset": ds, "n": n, "d": d}
    out["flat"] = evaluate(store, "single-function", f"{slug}-flat", ds, truth, [single_rec], single_wall)
    if not distributed:
        return out
    say(f"   distributed build: Step Functions on moto, {PARTITIONS} partitions, a subprocess per task")
    handler: SubprocessTasks = machine.handler
    before = len(handler.records)
    t0 = time.perf_counter()
    result = machine.run({"collection": f"{slug}-dist", "partitions": PARTITIONS, **event})
    dist_wall = time.perf_counter() - t0
    if result.status != "SUCCEEDED":
        raise RuntimeError(f"distributed build failed: {result.error}: {result.cause}")
    say(f"   distributed build: {dist_wall:.1f} s, {result.output.get('buckets')} buckets")
    records = handler.records[before:]
    dist = evaluate(store, "distributed", f"{slug}-dist", ds, truth, records, dist_wall)
    partitions_touched(store, dist, result.output["plan_id"], int(result.output["partitions"]))
    out["dist"] = dist
    out["partitions"] = int(result.output["partitions"])
    return out


# ---------------------------------------------------------------------------- markdown helpers
def fmt_bytes(b: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if b >= size:
            return f"{b / size:.2f} {unit}" if b < 10 * size else f"{b / size:.1f} {unit}"
    return f"{b:.0f} B"


def fmt_usd(x: float) -> str:
    if x >= 100:
        return f"${x:,.0f}"
    if x >= 1:
        return f"${x:.2f}"
    if x >= 0.01:
        return f"${x:.3f}"
    return f"${x:.4f}"


def fmt_n(n: int) -> str:
    return f"{n // 1_000_000_000}B" if n >= 1_000_000_000 else f"{n // 1_000_000}M"


def curve_table(res: dict[str, Any]) -> list[str]:
    flat: BuildResult = res["flat"]
    dist: BuildResult = res["dist"]
    probes = sorted(set(flat.curve.probes) | set(dist.curve.probes))
    lines = [
        "| probes | single-function: recall@10 | bytes / query | distributed: recall@10 | bytes / query |",
        "|---|---|---|---|---|",
    ]
    for p in probes:
        cells = []
        for b in (flat, dist):
            if p in b.curve.probes:
                i = b.curve.probes.index(p)
                cells += [f"{b.curve.recall[i]:.3f}", fmt_bytes(b.curve.bytes[i])]
            else:
                cells += ["", ""]
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    return lines


def at_target(b: BuildResult) -> tuple[float, float] | None:
    at = b.curve.at_recall(TARGET)
    return None if at is None else (at[0], at[2])


# ---------------------------------------------------------------------------- cost model
def template_memory_mb(function: str) -> int:
    """``MemorySize`` of one function in template.yaml (what Lambda bills GB-seconds on)."""
    text = (REPO / "template.yaml").read_text()
    block = text.split(f"\n  {function}:\n", 1)[1]
    block = re.split(r"\n  [A-Za-z]+:\n", block, maxsplit=1)[0]
    return int(re.search(r"MemorySize:\s*(\d+)", block).group(1))  # type: ignore[union-attr]


@dataclass(frozen=True)
class Inputs:
    """Measured quantities the cost model scales (all from this run)."""

    n0: int
    d0: int
    replication: float  # stored rows / vectors
    rows_per_bucket: float  # stored rows per bucket
    row_overhead: float  # bucket bytes per stored row beyond 2 × d (float16)
    manifest_per_bucket: float  # manifest bytes per bucket beyond 4 × d (float32 centroid)
    plane_rows_per_bucket: float  # tree planes (rows of d floats) per bucket, capped at d
    probes0: float  # probes at TARGET on the distributed build
    alpha: float  # probes ∝ n^alpha
    probed_bucket_bytes: float  # bytes per probed bucket at TARGET
    partitions_touched: float  # mean partitions a query's probes hit at TARGET
    cold_gets_fixed: float  # cold GETs besides buckets (HEAD, manifest, ...)
    warm_gets_fixed: float
    cold_rounds: float
    warm_rounds: float
    cold_ms: float
    warm_ms: float
    cold_bytes: float
    warm_bytes: float
    bucket_bytes0: float  # bucket bytes per default query (measured, warm)
    manifest0: int
    decode_s_per_byte: float
    index_bytes_per_vector: float  # stored index bytes (non-staging PUT bytes) per vector
    import_s: float  # mean task cold-start (imports) seconds
    plan_s: float  # plan handler seconds
    work_s: float  # route + collect + partition + commit handler seconds
    tasks0: int
    put_class: dict[str, float]  # category -> PUT/LIST requests measured
    get_class: dict[str, float]  # category -> GET/HEAD requests measured
    shards0: int
    partitions0: int
    query_mb: int
    build_mb: int


def cost_inputs(res: dict[str, Any], alpha: float) -> Inputs:
    """Collect the measured inputs from the distributed build of ``res``."""
    dist: BuildResult = res["dist"]
    n0, d0 = res["n"], res["d"]
    at = dist.curve.at_recall(TARGET)
    assert at is not None, "the distributed build never reached the recall target"
    put_class: dict[str, float] = {}
    get_class: dict[str, float] = {}
    index_put_bytes = 0
    for rec in dist.records:
        for key, (count, size) in rec["requests"].items():
            op, cat = key.split(":")
            if op in ("GetObject", "HeadObject"):
                get_class[cat] = get_class.get(cat, 0) + count
            elif op in ("PutObject", "ListObjectsV2", "CopyObject", "ListObjects"):
                put_class[cat] = put_class.get(cat, 0) + count
            if op == "PutObject" and cat == "index":
                index_put_bytes += size
    by_step = lambda s: [r for r in dist.records if r["step"] == s]  # noqa: E731
    cold, warm = dist.io["cold"], dist.io["warm"]
    return Inputs(
        n0=n0,
        d0=d0,
        replication=dist.stored_rows / n0,
        rows_per_bucket=dist.stored_rows / dist.buckets,
        row_overhead=dist.bucket_bytes / dist.stored_rows - 2 * d0,
        manifest_per_bucket=(dist.manifest_bytes - 4 * d0 * (dist.buckets + dist.plane_rows)) / dist.buckets,
        plane_rows_per_bucket=dist.plane_rows / dist.buckets,
        probes0=at[0],
        alpha=alpha,
        probed_bucket_bytes=at[2] / at[0],
        partitions_touched=dist.partitions_touched or 1.0,
        cold_gets_fixed=cold["gets"] - cold["probes"],
        warm_gets_fixed=warm["gets"] - warm["probes"],
        cold_rounds=cold["rounds"],
        warm_rounds=warm["rounds"],
        cold_ms=cold["ms"],
        warm_ms=warm["ms"],
        cold_bytes=cold["bytes"],
        warm_bytes=warm["bytes"],
        bucket_bytes0=warm["bytes"],
        manifest0=dist.manifest_bytes,
        decode_s_per_byte=dist.decode_s_per_byte,
        index_bytes_per_vector=index_put_bytes / n0,
        import_s=float(np.mean([r["imported_s"] for r in dist.records])),
        plan_s=sum(r["handler_s"] for r in by_step("plan")),
        work_s=sum(r["handler_s"] for r in dist.records if r["step"] != "plan"),
        tasks0=len(dist.records),
        put_class=put_class,
        get_class=get_class,
        shards0=SHARDS,
        partitions0=res["partitions"],
        query_mb=template_memory_mb("QueryFunction"),
        build_mb=template_memory_mb("DistributedBuildFunction"),
    )


@dataclass(frozen=True)
class Scaled:
    """One (N, D) point of the model."""

    buckets: float
    probes: float
    bucket_bytes_per_query: float
    flat_manifest: float
    hier_manifest: float  # at 1M rows per partition
    hier_best: float  # at the partition count that minimises it
    partitions: int


def scale(x: Inputs, n: int, d: int) -> Scaled:
    """The stated formulas (see the section text)."""
    buckets = n * x.replication / x.rows_per_bucket
    probes = x.probes0 * (n / x.n0) ** x.alpha
    per_bucket = x.probed_bucket_bytes * (2 * d + x.row_overhead) / (2 * x.d0 + x.row_overhead)
    planes = min(d, x.plane_rows_per_bucket * buckets)
    flat = buckets * (4 * d + x.manifest_per_bucket) + planes * 4 * d
    from kdbuckets.distributed import ROWS_PER_PARTITION

    del ROWS_PER_PARTITION  # partitions are how a build splits work; parts are how a manifest is read
    hier, parts = hierarchical_manifest(math.ceil(buckets), d)
    return Scaled(buckets, probes, probes * per_bucket, flat, hier, hier, parts)


def hierarchical_manifest(buckets: int, d: int) -> tuple[float, int]:
    """Manifest bytes of a cold query as stored (root + ROUTE_PARTS parts), and the part count.

    Entry sizes come from encoding the real formats (:func:`bench.hierarchy.entry_costs`);
    parts hold :func:`kdbuckets.hierarchy.part_buckets_for` buckets, as a distributed build cuts.
    """
    from bench.hierarchy import entry_costs
    from kdbuckets.hierarchy import ROUTE_PARTS, part_buckets_for

    c = entry_costs(d)
    g = part_buckets_for(buckets)
    parts = max(1, math.ceil(buckets / g))
    root = c["fixed"] + parts * c["part"]
    return root + min(ROUTE_PARTS, parts) * (c["part_fixed"] + g * c["bucket"]), parts


def query_costs(
    x: Inputs, s: Scaled, d: int, hit: float, manifest: float, extra_gets: float
) -> dict[str, float]:
    """USD for 1M queries at cache hit rate ``hit`` (share of queries on a warm container)."""
    bw = BANDWIDTH_MB_S * 1e6
    per_get = s.bucket_bytes_per_query / max(s.probes, 1)
    per_get0 = x.bucket_bytes0 / max(x.probes0, 1)
    warm_s = x.warm_ms / 1000 + (per_get - per_get0) / bw
    cold_s = (
        x.cold_ms / 1000
        + (per_get - per_get0) / bw
        + (manifest - x.manifest0) * (1 / bw + x.decode_s_per_byte)
        + (FIRST_BYTE_MS / 1000 if extra_gets else 0.0)  # the sub-manifests' round
    )
    gets_cold = x.cold_gets_fixed + extra_gets + s.probes
    gets_warm = x.warm_gets_fixed + s.probes
    q = 1_000_000
    gets = q * (hit * gets_warm + (1 - hit) * gets_cold)
    gb_s = q * (hit * warm_s + (1 - hit) * cold_s) * x.query_mb / 1024
    return {
        "s3": gets / 1000 * S3_GET_PER_1K,
        "lambda": gb_s * LAMBDA_GB_S + LAMBDA_PER_1M_REQ,
        "total": gets / 1000 * S3_GET_PER_1K + gb_s * LAMBDA_GB_S + LAMBDA_PER_1M_REQ,
        "cold_s": cold_s,
        "gets_cold": gets_cold,
    }


def build_cost(x: Inputs, n: int, d: int) -> dict[str, float]:
    """One distributed build of (n, d): Lambda, S3 requests, Step Functions, index bytes."""
    from kdbuckets.distributed import ROWS_PER_PARTITION

    shards = max(1, math.ceil(n / ROWS_PER_SHARD_AT_SCALE))
    parts = max(1, math.ceil(n / ROWS_PER_PARTITION))
    tasks = 3 + shards + parts  # plan, collect, commit + one per shard + one per partition
    work = x.work_s * (n * d) / (x.n0 * x.d0)
    plan = x.plan_s * d / x.d0
    gb_s = (x.import_s * tasks + plan + work) * x.build_mb / 1024

    def requests(measured: dict[str, float]) -> float:
        # staged runs: one per (shard, partition) pair that got rows, as measured
        total = measured.get("runs", 0) / (x.shards0 * x.partitions0) * shards * parts
        total += measured.get("staging", 0) / (x.shards0 + x.partitions0) * (shards + parts)
        total += (measured.get("index", 0) + measured.get("source", 0)) * n / x.n0
        return total

    puts, gets = requests(x.put_class), requests(x.get_class)
    transitions = 2 * tasks + 8  # ASSUMPTION: ~2 per task (entered/exited) + the top-level states
    out = {
        "gb_s": gb_s,
        "lambda": gb_s * LAMBDA_GB_S + tasks * LAMBDA_PER_1M_REQ / 1e6,
        "puts": puts,
        "s3": puts / 1000 * S3_PUT_PER_1K + gets / 1000 * S3_GET_PER_1K,
        "sfn": transitions / 1000 * SFN_PER_1K_TRANSITIONS,
        "tasks": tasks,
        "index_bytes": n * (x.replication * 2 * d + (x.index_bytes_per_vector - x.replication * 2 * x.d0)),
    }
    out["total"] = out["lambda"] + out["s3"] + out["sfn"]
    return out


def cost_markdown(x: Inputs, source: str) -> list[str]:
    """The cost-model subsection: inputs, manifest arithmetic, queries, build and storage."""
    from kdbuckets.hierarchy import ROUTE_PARTS

    lines = [
        "### Cost model",
        "",
        f"Measured inputs (distributed build of **{source}**, {x.n0:,} × {x.d0}, default parameters): "
        f"{x.replication:.2f} stored rows per vector (replication), {x.rows_per_bucket:.0f} "
        "stored rows per bucket, "
        f"{x.row_overhead:.1f} bytes per stored row beyond the float16 vector, "
        f"{x.manifest_per_bucket:.0f} manifest bytes per bucket beyond its float32 centroid; at "
        f"recall@10 = {TARGET}: "
        f"{x.probes0:.1f} probes of {x.probed_bucket_bytes / 1e3:.0f} kB, "
        f"{x.partitions_touched:.2f} partitions "
        f"touched per query (of {x.partitions0}); default single-vector query: cold "
        f"{x.cold_gets_fixed:.1f} + probes "
        f"GETs in {x.cold_rounds:.1f} rounds, {fmt_bytes(x.cold_bytes)}, {x.cold_ms:.0f} ms; warm "
        f"{x.warm_gets_fixed:.1f} + probes GETs in {x.warm_rounds:.1f} rounds, {fmt_bytes(x.warm_bytes)}, "
        f"{x.warm_ms:.0f} ms (S3 latency model {FIRST_BYTE_MS:g} ms first byte, {BANDWIDTH_MB_S:g} MB/s per "
        f"connection); manifest decode {x.decode_s_per_byte * 1e9:.2f} s/GB; probes grow as n^{x.alpha:.2f} "
        "(fitted on the synthetic single-function builds at two sizes, clusters ∝ n). Build: "
        f"{x.tasks0} tasks, {x.import_s:.2f} s cold start each, plan {x.plan_s:.1f} s, other "
        f"tasks {x.work_s:.1f} s "
        f"(one core each); S3 requests by PUT/LIST class {_fmt_counts(x.put_class)}, GET class "
        f"{_fmt_counts(x.get_class)}.",
        "",
        f"Prices (us-east-1, public): S3 GET ${S3_GET_PER_1K} / 1,000, PUT/LIST ${S3_PUT_PER_1K} / 1,000, "
        f"storage ${S3_GB_MONTH} / GB-month; Lambda ${LAMBDA_GB_S} / GB-s (x86), "
        f"${LAMBDA_PER_1M_REQ:.2f} / 1M "
        f"requests; Step Functions Standard ${SFN_PER_1K_TRANSITIONS} / 1,000 state transitions; "
        "function memory "
        f"from template.yaml (QueryFunction {x.query_mb} MB, DistributedBuildFunction {x.build_mb} MB); S3 → "
        "Lambda transfer in one region is free. Amazon S3 Vectors (as in the issue): "
        f"${S3V_PER_1M_QUERIES:.2f} / 1M queries, ${S3V_GB_MONTH} / GB-month, ${S3V_WRITE_PER_GB} "
        "/ GB written, "
        f"logical size 4 × d + {S3V_KEY_BYTES} bytes per vector (float32 + a {S3V_KEY_BYTES}-byte key, no "
        "metadata — assumption); **data processed** per query = the index's logical size (AWS: "
        "average vector "
        "size × vectors in the index), priced here at an **assumed** "
        f"${S3V_PROCESSED_PER_TB} / TB (check the current pricing page; the TB column lets you apply another "
        "rate). GB = 2^30 bytes.",
        "",
        "Formulas (N vectors, D dimensions; subscript 0 = measured): buckets = N × replication / "
        "rows per bucket; "
        "probes = probes₀ × (N / N₀)^α; bucket bytes per query = probes × bytes per probed bucket₀ × "
        "(2D + row overhead) / (2D₀ + row overhead); **flat manifest** (format 1, before the hierarchy) = "
        "buckets × (4D + per-bucket overhead) + tree planes (≤ D rows) × 4D; **hierarchical manifest** "
        f"(format 2, what is stored now) per cold query = root + {ROUTE_PARTS} parts of G = "
        "part_buckets_for(buckets) buckets, entry sizes from encoding the real formats "
        "(see 'Hierarchical manifest'). "
        "Query duration = measured "
        "(modelled) latency₀ + extra bucket bytes / bandwidth + (cold) extra manifest bytes × (1 "
        "/ bandwidth + "
        "decode s/byte); GB-s = duration × QueryFunction memory. GETs: cold = measured fixed GETs (HEAD, "
        "manifest) + probes (+ touched sub-manifests, hierarchical); warm = HEAD + probes (manifest cached, "
        "buckets not).",
        "",
        "#### Manifest bytes a cold query downloads",
        "",
        "| vectors | dims | buckets | probes at 0.95 | bucket bytes / query | flat manifest (format 1) "
        f"| hierarchical: root + {ROUTE_PARTS} parts (parts) | ≤ {fmt_bytes(HIER_MANIFEST_BOUND)}? |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n in SIZES:
        for d in DIMS:
            s = scale(x, n, d)
            ok = "yes" if s.hier_manifest <= HIER_MANIFEST_BOUND else "**no**"
            fits = "" if s.flat_manifest < x.query_mb * 2**20 else f" (> the {x.query_mb} MB query function)"
            lines.append(
                f"| {fmt_n(n)} | {d} | {s.buckets:,.0f} | {s.probes:.1f} | "
                f"{fmt_bytes(s.bucket_bytes_per_query)} "
                f"| {fmt_bytes(s.flat_manifest)}{fits} | {fmt_bytes(s.hier_manifest)} ({s.partitions:,}) "
                f"| {ok} |"
            )
    lines += [
        "",
        "#### 1M queries per month (USD; storage not included)",
        "",
        "| vectors | dims | hit rate | kdbuckets, flat manifest (format 1): S3 GETs + Lambda = total "
        "(cold query s) "
        "| kdbuckets hierarchical manifest: total (cold query s) | S3 Vectors: requests + data "
        "processed = total "
        "(TB processed) |",
        "|---|---|---|---|---|---|",
    ]
    for n in SIZES:
        for d in DIMS:
            s = scale(x, n, d)
            logical = n * (4 * d + S3V_KEY_BYTES)
            tb = 1_000_000 * logical / 1e12
            s3v_total = S3V_PER_1M_QUERIES + tb * S3V_PROCESSED_PER_TB
            for hit in HIT_RATES:
                flat = query_costs(x, s, d, hit, s.flat_manifest, 0.0)
                hier = query_costs(x, s, d, hit, s.hier_manifest, min(ROUTE_PARTS, s.partitions))
                lines.append(
                    f"| {fmt_n(n)} | {d} | {hit:.0%} | {fmt_usd(flat['s3'])} + {fmt_usd(flat['lambda'])} = "
                    f"**{fmt_usd(flat['total'])}** ({flat['cold_s']:.2f} s) | **{fmt_usd(hier['total'])}** "
                    f"({hier['cold_s']:.2f} s) | {fmt_usd(S3V_PER_1M_QUERIES)} + "
                    f"{fmt_usd(tb * S3V_PROCESSED_PER_TB)} = **{fmt_usd(s3v_total)}** ({tb:,.0f} TB) |"
                )
    lines += [
        "",
        "#### One-off build and monthly storage (USD)",
        "",
        "| vectors | dims | distributed build: tasks, Lambda GB-s | Lambda + S3 requests + Step Functions "
        "= build | S3 Vectors: written | kdbuckets storage / month | S3 Vectors storage / month |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in SIZES:
        for d in DIMS:
            b = build_cost(x, n, d)
            logical = n * (4 * d + S3V_KEY_BYTES)
            lines.append(
                f"| {fmt_n(n)} | {d} | {b['tasks']:,}, {b['gb_s']:,.0f} | {fmt_usd(b['lambda'])} + "
                f"{fmt_usd(b['s3'])} + {fmt_usd(b['sfn'])} = **{fmt_usd(b['total'])}** "
                f"| {fmt_usd(logical / GIB * S3V_WRITE_PER_GB)} "
                f"| {fmt_usd(b['index_bytes'] / GIB * S3_GB_MONTH)} ({fmt_bytes(b['index_bytes'])}) "
                f"| {fmt_usd(logical / GIB * S3V_GB_MONTH)} ({fmt_bytes(logical)}) |"
            )
    lines += [
        "",
        "Build formulas: tasks = 3 + shards + partitions (shards of "
        f"{ROWS_PER_SHARD_AT_SCALE:,} rows and partitions of 1M rows — assumptions); Lambda "
        "seconds = cold start₀ × "
        "tasks + plan₀ × D / D₀ (the plan reads a fixed sample) + other tasks₀ × N·D / (N₀·D₀) "
        "(linear in the "
        "bytes, an optimistic assumption for the commit, which is one task over the whole flat manifest); S3 "
        "requests: staged runs ∝ shards × partitions × the measured share of (shard, partition) pairs that "
        "got a run, other staged objects ∝ shards + partitions, index objects and source reads ∝ N; Step "
        "Functions: ≈ 2 transitions per task + 8 (assumption). Storage: measured index bytes per vector "
        "with the float16 vector part scaled to D (staging expires and is not counted).",
    ]
    return lines


def _fmt_counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {int(v):,}" for k, v in sorted(counts.items())) or "none"


# ---------------------------------------------------------------------------- the section
GROWTH_LEVELS = (0.95, 0.97, 0.98, 0.99)


def growth_exponent(small: Curve, big: Curve) -> tuple[float, list[tuple[float, float, float]]]:
    """α in probes ∝ n^α from two sizes, at the recall levels both curves interpolate.

    A level the smaller set already reaches at its first probe count is skipped (its probes
    would be a floor, not a measurement).
    """
    matched = []
    for level in GROWTH_LEVELS:
        a, b = small.at_recall(level), big.at_recall(level)
        if a and b and small.recall[0] < level and big.recall[0] < level:
            matched.append((level, a[0], b[0]))
    if not matched:
        return 0.0, []
    ratios = [math.log(pb / ps) / math.log(SYNTH_N / SCALE_N) for _, ps, pb in matched]
    return float(np.clip(np.median(ratios), 0.0, 1.0)), matched


def memory_table(res: dict[str, Any]) -> list[str]:
    """Peak RSS per task type of the distributed build (and the single-function build)."""
    rows: dict[str, list[dict[str, Any]]] = {}
    for rec in res["dist"].records:
        rows.setdefault(rec["step"], []).append(rec)
    rows["single-function build (for comparison)"] = res["flat"].records
    f32 = res["n"] * res["d"] * 4 / 2**20
    lines = [
        f"**{res['dataset'].name}** ({f32:,.0f} MB of float32 vectors, {SHARDS} shards, "
        f"{res['partitions']} partitions):",
        "",
        "| task | count | peak RSS MB max (mean) | after imports MB | handler s max (total) | "
        "cold start s (mean) |",
        "|---|---|---|---|---|---|",
    ]
    for step in ("plan", "route", "collect", "partition", "commit", "single-function build (for comparison)"):
        recs = rows.get(step)
        if not recs:
            continue
        peaks = [r["peak_kb"] / 1024 for r in recs]
        lines.append(
            f"| {step} | {len(recs)} | {max(peaks):,.0f} ({np.mean(peaks):,.0f}) | "
            f"{np.mean([r['baseline_kb'] for r in recs]) / 1024:,.0f} | "
            f"{max(r['handler_s'] for r in recs):.1f} ({sum(r['handler_s'] for r in recs):.1f}) | "
            f"{np.mean([r['imported_s'] for r in recs]):.2f} |"
        )
    return lines


def dataset_markdown(res: dict[str, Any]) -> list[str]:
    flat, dist = res["flat"], res["dist"]
    a, b = at_target(flat), at_target(dist)
    ratio = b[1] / a[1] if a and b else float("nan")
    verdict = "meets" if ratio <= 1.2 else "**misses**"
    lines = [
        f"#### {res['dataset'].name}",
        "",
        f"Single-function build: {flat.buckets} buckets, wall {flat.wall_s:.1f} s; distributed: "
        f"{dist.buckets} buckets in {res['partitions']} partitions, wall {dist.wall_s:.1f} s "
        "(moto Step Functions, "
        f"{TASK_CONCURRENCY} tasks at once, a fresh process per task). "
        f"{len(res['dataset'].queries):,} held-out "
        "queries; recall@10 against exact brute force; bytes per query = sizes of the probed buckets.",
        "",
        *curve_table(res),
        "",
        "| at recall@10 = 0.95 | single-function | distributed | ratio (target ≤ 1.2) |",
        "|---|---|---|---|",
        f"| probes (interpolated) | {a[0]:.1f} | {b[0]:.1f} | {b[0] / a[0]:.2f} |"
        if a and b
        else "| probes | | | |",
        f"| bytes per query | {fmt_bytes(a[1])} | {fmt_bytes(b[1])} | **{ratio:.2f}** ({verdict}) |"
        if a and b
        else "| bytes per query | not reached | | |",
        f"| default query (recall_target 0.95): probes → recall@10 | {flat.default_probes:.0f} → "
        f"{flat.default_recall:.3f} | {dist.default_probes:.0f} → {dist.default_recall:.3f} | |",
        f"| cold query: GETs, bytes, GET rounds, modelled ms | {flat.io['cold']['gets']:.1f}, "
        f"{fmt_bytes(flat.io['cold']['bytes'])}, {flat.io['cold']['rounds']:.1f}, "
        f"{flat.io['cold']['ms']:.0f} | "
        f"{dist.io['cold']['gets']:.1f}, {fmt_bytes(dist.io['cold']['bytes'])}, "
        f"{dist.io['cold']['rounds']:.1f}, "
        f"{dist.io['cold']['ms']:.0f} | |",
        f"| warm query (manifest cached, buckets not) | {flat.io['warm']['gets']:.1f}, "
        f"{fmt_bytes(flat.io['warm']['bytes'])}, {flat.io['warm']['rounds']:.1f}, "
        f"{flat.io['warm']['ms']:.0f} | "
        f"{dist.io['warm']['gets']:.1f}, {fmt_bytes(dist.io['warm']['bytes'])}, "
        f"{dist.io['warm']['rounds']:.1f}, "
        f"{dist.io['warm']['ms']:.0f} | |",
        f"| manifest bytes | {fmt_bytes(flat.manifest_bytes)} | {fmt_bytes(dist.manifest_bytes)} | |",
        f"| partitions a query touches at 0.95 (mean) | | {dist.partitions_touched:.2f} of "
        f"{res['partitions']} | |",
        "",
    ]
    return lines


def measure_section(argv: list[str] | None = None) -> str:  # argv: the common signature, unused
    """Build, measure, model; the Markdown section (progress on stderr)."""
    started = time.perf_counter()
    synth = synthetic_clustered(n=SYNTH_N, dim=SYNTH_DIM, clusters=SYNTH_N // 100, queries=1000, seed=42)
    small = synthetic_clustered(n=SCALE_N, dim=SYNTH_DIM, clusters=SCALE_N // 100, queries=1000, seed=42)
    results: list[dict[str, Any]] = []
    with environment() as (machine, env, workdir, s3):
        results.append(measure_dataset(machine, env, workdir, s3, synth, "synth"))
        real = wordnet()
        if real is not None:
            results.append(measure_dataset(machine, env, workdir, s3, real, "wordnet"))
        else:
            say("WordNet (../shared/data) absent: synthetic only")
        say(f"== {small.name}: single-function build only, for the growth of probes with n")
        scale_res = measure_dataset(machine, env, workdir, s3, small, "small", distributed=False)
    alpha, matched = growth_exponent(scale_res["flat"].curve, results[0]["flat"].curve)
    base = results[-1]
    inputs = cost_inputs(base, alpha)
    elapsed = time.perf_counter() - started
    parts = [
        "## Distributed build vs single-function build",
        "",
        f"Generated by `python -m bench.distributed` in {elapsed / 60:.1f} min. Both builds read the same "
        f"{SHARDS}-shard `.npy` prefix with default build parameters and seed {SEED}; the "
        "distributed one runs "
        "`statemachine/build.asl.json` on moto's Step Functions (`devtools/sfn_local.py`) with "
        f"`partitions: {PARTITIONS}`, each Lambda task in a fresh subprocess against a moto S3 "
        "server over HTTP.",
        "",
        "### Recall vs bytes",
        "",
    ]
    for res in results:
        parts += dataset_markdown(res)
    parts += [
        f"Probes growth with n (single-function builds of {small.name} and {synth.name}, clusters ∝ n): "
        "probes needed at recall "
        + ", ".join(f"{t}: {ps:.2f} → {pb:.2f}" for t, ps, pb in matched)
        + f" → α = {alpha:.2f} (median of log(probes ratio) / log(n ratio) over the recall levels both "
        "curves interpolate, clipped to [0, 1]); the cost model's probes = probes₀ × (N / N₀)^α.",
        "",
        "### Peak memory per task",
        "",
        "Measured: VmHWM (peak resident set) of each task's own process — each Lambda task is run by "
        "`functions/distbuild/app.py`'s handler in a new interpreter, as one Lambda container runs it, "
        "so the figure includes the interpreter and imports (column 'after imports'); "
        "collect is the small task between the two maps. The single-function build of the same data, in "
        "its own process the same way, is the last row; 'handler s' is one core per task.",
        "",
    ]
    for res in results:
        parts += [*memory_table(res), ""]
    parts += cost_markdown(inputs, base["dataset"].name)
    parts += [
        "",
        "`python -m bench.run --only distributed` reruns this section alone.",
    ]
    return "\n".join(parts) + "\n"


def main() -> None:
    """Standalone: print the section."""
    started = time.perf_counter()
    section = measure_section()
    print(section)
    say(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
