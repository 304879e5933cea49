"""`make demo`: build an index and query it through the real Lambda handlers, on a local S3.

    python -m devtools.demo [--synthetic]      (or KDBUCKETS_SYNTHETIC=1 make demo)

Why: it is the README's first command, so it shows what the service answers — neighbours,
k-NN classification, recall against brute force and what each query reads from S3 — without an
AWS account or Docker. An embedded moto S3 server stands in for S3; the handlers in
``functions/*/app.py`` run unmodified in this process with a stand-in Lambda context, fed the
committed events from ``events/``. Their JSON logs and EMF metrics are turned off so the output
reads like an answer.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import boto3
import numpy as np

from devtools import local
from kdbuckets import distances

EVENTS = local.REPO / "events"
FUNCTIONS = local.REPO / "functions"
PROBE_SWEEP = (1, 2, 4, 8, 16, 32)
DEFAULT_PROBES = 8  # QueryRequest's default; the recall run leaves `probes` out of its events
RECALL_K = 10
TEXT_WIDTH = 58
TIE = 1e-6  # cosine similarities this close count as equal (float32 dot products)

Handler = Callable[[dict[str, Any]], dict[str, Any]]


# --------------------------------------------------------------------------- environment
def quiet_environment(endpoint: str) -> None:
    """Point the handlers at the local S3 and keep their logs and metrics off the terminal.

    Must run before the handler modules are imported: Powertools reads its settings when
    ``Logger()`` / ``Metrics()`` are created. Level ERROR (not WARNING) because the handlers log
    every rejected request as a warning, and the demo sends one on purpose.
    """
    local.use_fake_credentials()
    os.environ.pop("AWS_PROFILE", None)
    os.environ.update(
        AWS_ENDPOINT_URL_S3=endpoint,
        INDEX_BUCKET=local.INDEX_BUCKET,
        POWERTOOLS_SERVICE_NAME="kdbuckets",
        POWERTOOLS_METRICS_NAMESPACE="kdbuckets-demo",
        POWERTOOLS_METRICS_DISABLED="true",
        POWERTOOLS_LOG_LEVEL="ERROR",
    )
    os.environ.pop("INDEX_PREFIX", None)
    # Powertools warns (stderr) when a failed invocation flushes no metrics, and — with metrics
    # disabled, its flush does not clear them — when a warm handler sets its dimension again.
    warnings.filterwarnings("ignore", message="No application metrics to publish")
    warnings.filterwarnings("ignore", message="Dimension 'operation' has already been added")


@contextmanager
def local_s3() -> Iterator[str]:
    """An embedded moto S3 server on a free port of 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# --------------------------------------------------------------------------- handlers
@dataclass(frozen=True)
class FakeContext:
    """The fields of Lambda's context object that the handlers and Powertools read."""

    function_name: str
    memory_limit_in_mb: int = 1024
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:us-east-1:123456789012:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def load_handler(name: str) -> Handler:
    """``functions/<name>/app.py``'s ``lambda_handler``, called as Lambda would call it.

    Imported by path under a distinct module name: both handler modules are called ``app``.
    """
    spec = importlib.util.spec_from_file_location(f"kdbuckets_demo_{name}_app", FUNCTIONS / name / "app.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"no handler module at functions/{name}/app.py")
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return lambda event: module.lambda_handler(event, FakeContext(f"kdbuckets-{name}"))


def event(name: str) -> dict[str, Any]:
    """A committed event from ``events/``."""
    return json.loads((EVENTS / name).read_text())


# --------------------------------------------------------------------------- formatting
def size(n: float) -> str:
    """Bytes in B / kB / MB / GB (decimal, as S3 bills them)."""
    for unit in ("B", "kB", "MB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.2f} GB"


def clip(text: str, width: int = TEXT_WIDTH) -> str:
    """One line of at most ``width`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def stats_line(stats: dict[str, Any]) -> str:
    """What one query response says it cost: the figures a user pays for."""
    return (
        f"{stats['buckets_fetched']} buckets fetched ({size(stats['bytes_fetched'])}), "
        f"{stats['cache_hits']} cache hits, {stats['elapsed_ms']:.0f} ms"
    )


def section(title: str) -> None:
    """A ruled heading, so each step of the demo stands apart when skimming."""
    print(f"\n── {title} " + "─" * max(3, 78 - len(title)))


# --------------------------------------------------------------------------- steps
def upload(s3: Any, sample: local.Sample) -> None:
    """Put the sample where ``events/build_npy.json`` reads it; create the (empty) index bucket."""
    section("Sample")
    print(
        f"{sample.name}: {len(sample.ids):,} vectors indexed, {len(sample.query_ids):,} held out as queries"
    )
    started = time.perf_counter()
    local.upload_sample(s3, sample)
    s3.create_bucket(Bucket=local.INDEX_BUCKET)
    where = f"s3://{local.SOURCE_BUCKET}/{local.SOURCE_PREFIX}"
    print(f"uploaded to {where} in {time.perf_counter() - started:.1f} s")


def index_bytes(s3: Any, collection: str) -> int:
    """Total size of the collection's bucket objects in the index bucket."""
    pages = s3.get_paginator("list_objects_v2").paginate(
        Bucket=local.INDEX_BUCKET, Prefix=f"{collection}/buckets/"
    )
    return sum(obj["Size"] for page in pages for obj in page.get("Contents", []))


def run_build(build: Handler, s3: Any) -> dict[str, Any]:
    """Invoke the build handler with ``events/build_npy.json``; print what it published."""
    section("Build   events/build_npy.json")
    started = time.perf_counter()
    response = build(event("build_npy.json"))
    wall = time.perf_counter() - started
    t = response["timings_ms"]
    params = response["params"]
    print(f"collection {response['collection']!r} version {response['version']}")
    copies = response["stored_rows"] / response["count"]
    print(
        f"{response['count']:,} × {response['dim']} {params['metric']} vectors → {response['buckets']} "
        f"buckets (bucket_size {params['bucket_size']:,}; {copies:.2f} copies per vector), "
        f"{size(index_bytes(s3, response['collection']))} in S3"
    )
    phases = ", ".join(f"{k.removesuffix('_ms')} {v / 1000:.1f} s" for k, v in t.items() if k != "total_ms")
    print(f"build {t['total_ms'] / 1000:.1f} s ({phases}); wall time {wall:.1f} s incl. reading the source")
    return response


def held_out_rows(sample: local.Sample, vectors: list[list[float]]) -> list[int | None]:
    """Which held-out query each event vector is (events round to 5 decimals); None if none."""
    q = np.asarray(vectors, dtype=np.float32)
    if q.shape[1] != sample.queries.shape[1]:
        return [None] * len(q)
    diff = np.abs(q[:, None, :] - sample.queries[None, :, :]).max(axis=2)
    best = diff.argmin(axis=1)
    return [int(b) if diff[i, b] < 1e-4 else None for i, b in enumerate(best)]


def sample_event(sample: local.Sample, name: str) -> tuple[dict[str, Any], list[int], str]:
    """A committed query event, its held-out rows, and a title naming what was sent.

    The committed events carry the real set's first held-out vectors. Against the synthetic
    set (a clone without ``../shared/data``) those are unrelated points with no true label, so
    the event keeps its settings but takes the synthetic set's first held-out vectors instead.
    """
    request = event(name)
    rows = held_out_rows(sample, request["vectors"])
    title = f"events/{name}"
    if None in rows:
        rows = list(range(len(rows)))
        request["vectors"] = sample.queries[rows].tolist()
        title += " with this sample's held-out vectors"
    settings = ", ".join(f"{key}={request[key]}" for key in ("k", "probes") if key in request)
    return request, rows, f"{title} ({settings})"


def describe(sample: local.Sample, row: int) -> str:
    """A held-out query as its text (or id) and true label."""
    qid = str(sample.query_ids[row])
    name = repr(clip(sample.texts[qid], 70)) if qid in sample.texts else qid
    return f"{name} [{sample.query_labels[row]}]"


def run_query(query: Handler, sample: local.Sample) -> None:
    """``events/query_basic.json`` cold, its neighbours, then the same request warm."""
    request, rows, title = sample_event(sample, "query_basic.json")
    section(f"Query   {title}")
    print("query", describe(sample, rows[0]))
    response = query(request)
    print(f"  {'#':>2} {'distance':>8}  {'label':<18} {'id':<16} {'text' if sample.texts else ''}".rstrip())
    for rank, hit in enumerate(response["results"][0], 1):
        text = clip(sample.texts.get(str(hit["id"]), ""), 46)
        line = f"  {rank:>2} {hit['distance']:>8.4f}  {hit['label'] or '-':<18} {hit['id']!s:<16} {text}"
        print(line.rstrip())
    print(f"cold: {stats_line(response['stats'])}")
    print(f"warm: {stats_line(query(request)['stats'])}   (same container: buckets come from its cache)")


def run_classify(query: Handler, sample: local.Sample) -> None:
    """``events/classify_basic.json``: predicted vs true label and the leading vote shares."""
    request, rows, title = sample_event(sample, "classify_basic.json")
    section(f"Classify   {title}")
    response = query(request)
    for n, (row, prediction) in enumerate(zip(rows, response["predictions"], strict=True), 1):
        print(f"  {n}. {describe(sample, row)}")
        mark = "✓" if prediction["label"] == sample.query_labels[row] else "✗"
        votes = ", ".join(f"{label} {share:.0%}" for label, share in list(prediction["votes"].items())[:3])
        print(f"     predicted {prediction['label']} {mark} · votes {votes}")
    print(stats_line(response["stats"]))


#: "man is to king as woman is to ?" on WordNet: the synsets of man (adult male), king (male
#: sovereign) and woman (adult female); queen (female sovereign) is the hoped-for answer.
WORDNET_ANALOGY = ("wn30-10287213-n", "wn30-10231515-n", "wn30-10787470-n")
WORDNET_HOPED = "wn30-10499355-n"


def analogy_term(sample: local.Sample, ident: str) -> str | list[float]:
    """An analogy term as its id when indexed, else as its vector (a held-out synset)."""
    if ident in set(sample.ids.tolist()):
        return ident
    return sample.queries[sample.query_ids.tolist().index(ident)].tolist()


def run_analogy(query: Handler, sample: local.Sample) -> None:
    """``analogy``: b − a + c by stored ids; real synsets on WordNet, a constructed one otherwise.

    Printed as it comes out: sentence embeddings of definitions are not word vectors, so the
    classic answer is not guaranteed; the line after the hits says whether it was found.
    """
    real = all(i in sample.texts for i in WORDNET_ANALOGY)
    if real:
        a, b, c = WORDNET_ANALOGY
        terms = {"a": analogy_term(sample, a), "b": analogy_term(sample, b), "c": analogy_term(sample, c)}
        names = " : ".join(repr(clip(sample.texts[i], 40)) for i in (a, b, c))
        section(f"Analogy   a : b :: c : ?   ({names})")
    else:
        a, b, c = (str(sample.ids[r]) for r in (0, 1, 2))
        terms = {"a": a, "b": b, "c": c}
        section(f"Analogy   {a} : {b} :: {c} : ?   (synthetic: three stored rows, answer checked exactly)")
    request = {"collection": local.COLLECTION, "analogy": terms, "k": 5}
    response = query(request)
    hits = response["results"][0]
    for rank, hit in enumerate(hits, 1):
        text = clip(sample.texts.get(str(hit["id"]), ""), 50)
        label = hit["label"] or "-"
        print(f"  {rank:>2} {hit['distance']:>8.4f}  {label:<18} {hit['id']!s:<16} {text}".rstrip())
    got = [str(h["id"]) for h in hits]
    if real:
        where = f"at rank {got.index(WORDNET_HOPED) + 1}" if WORDNET_HOPED in got else "not in the top 5"
        print(f"queen (female sovereign, {WORDNET_HOPED}) is {where}")
    else:
        v = distances.prepare(sample.vectors, "cosine").astype(np.float64)
        row = {str(i): n for n, i in enumerate(sample.ids.tolist())}
        target = v[row[b]] - v[row[a]] + v[row[c]]
        sims = v @ (target / np.linalg.norm(target))
        sims[[row[a], row[b], row[c]]] = -np.inf
        best = str(sample.ids[int(np.argmax(sims))])
        print(f"exact answer by brute force: {best} — the index returned {got[0]} first")
    print(stats_line(response["stats"]))


def exact_neighbours(sample: local.Sample, k: int) -> list[set[str]]:
    """Per held-out query, the ids of its k nearest indexed vectors by cosine, by brute force.

    Ties at the k-th distance are all included (the WordNet set has ~900 duplicate vectors, and
    which of two equal rows an index returns is arbitrary). Computed against the vectors as
    uploaded (``local.upload_sample`` stores float16), so recall measures the index, not the
    rounding of its input.
    """
    indexed = sample.vectors.astype(np.float16).astype(np.float32)
    indexed /= np.linalg.norm(indexed, axis=1, keepdims=True)
    queries = sample.queries / np.linalg.norm(sample.queries, axis=1, keepdims=True)
    found: list[set[str]] = []
    for chunk in np.array_split(queries, max(1, len(queries) // 100)):  # ~50 MB of scores at a time
        sims = chunk @ indexed.T
        kth = -np.partition(-sims, k - 1, axis=1)[:, k - 1]
        found.extend(
            set(sample.ids[row >= bound - TIE].tolist()) for row, bound in zip(sims, kth, strict=True)
        )
    return found


@dataclass(frozen=True)
class Run:
    """One pass of every held-out query through the query handler."""

    probes: int
    recall: float
    accuracy: float
    distinct_buckets: int  # per batch, summed over batches
    buckets_fetched: int  # of those, how many were not cached yet
    elapsed_ms: float


def run_held_out(query: Handler, sample: local.Sample, exact: list[set[str]], probes: int | None) -> Run:
    """Classify all held-out queries in events of ≤ MAX_QUERY_VECTORS; score against ``exact``.

    ``probes=None`` leaves the field out so the handler's default applies. Classify mode
    returns the k neighbours as well as the vote, so one pass gives recall and accuracy.
    """
    from kdbuckets.events import MAX_QUERY_VECTORS

    hits = correct = distinct = fetched = 0
    elapsed = 0.0
    used = DEFAULT_PROBES
    for start in range(0, len(sample.queries), MAX_QUERY_VECTORS):
        batch = slice(start, start + MAX_QUERY_VECTORS)
        request: dict[str, Any] = {
            "collection": local.COLLECTION,
            "vectors": sample.queries[batch].tolist(),
            "k": RECALL_K,
            "mode": "classify",
        }
        if probes is not None:
            request["probes"] = probes
        response = query(request)
        for found, truth in zip(response["results"], exact[batch], strict=True):
            hits += sum(str(hit["id"]) in truth for hit in found)
        predicted = [p["label"] for p in response["predictions"]]
        correct += int(np.sum(np.array(predicted) == sample.query_labels[batch]))
        stats = response["stats"]
        used = stats["probes"]
        distinct += stats["buckets_fetched"] + stats["cache_hits"]
        fetched += stats["buckets_fetched"]
        elapsed += stats["elapsed_ms"]
    n = len(sample.queries)
    return Run(used, hits / (n * RECALL_K), correct / n, distinct, fetched, elapsed)


def run_recall(query: Handler, sample: local.Sample, build: dict[str, Any], bucket_bytes: float) -> None:
    """Recall@10 and accuracy of every held-out query at the defaults, then a probes sweep."""
    from kdbuckets.events import MAX_QUERY_VECTORS

    n = len(sample.queries)
    batches = -(-n // MAX_QUERY_VECTORS)
    section(f"Recall   {n:,} held-out queries, k={RECALL_K}, vs exact brute force (numpy, cosine)")
    exact = exact_neighbours(sample, RECALL_K)
    copies = build["stored_rows"] / build["count"]

    def fraction(probes: int) -> float:
        """Share of the index's buckets (≈ of its stored rows) one query reads: at most 100%.

        Not a share of the collection's vectors: with replication the index stores ``copies``
        rows per vector, so reading every bucket reads more rows than there are vectors.
        """
        return min(probes, build["buckets"]) / build["buckets"]

    default = run_held_out(query, sample, exact, None)
    print(
        f"default probes={default.probes}: recall@{RECALL_K} {default.recall:.3f}, "
        f"k-NN label accuracy {default.accuracy:.3f}"
    )
    print(
        f"each query reads {default.probes} of {build['buckets']} buckets = {fraction(default.probes):.1%} "
        f"of the index ({size(default.probes * bucket_bytes)} from a cold cache; the index stores "
        f"{copies:.2f} rows per vector)"
    )
    events = "one event" if batches == 1 else f"{batches} events of ≤ {MAX_QUERY_VECTORS:,} vectors"
    per_query = size(default.distinct_buckets * bucket_bytes / n)
    cached = default.distinct_buckets - default.buckets_fetched
    print(
        f"batched ({events}): {default.distinct_buckets} distinct buckets = {per_query} per query "
        f"({default.buckets_fetched} fetched, {cached} cached; {default.elapsed_ms / 1000:.1f} s)"
    )
    print(f"  {'probes':>6} {'recall@10':>10} {'buckets read':>13} {'accuracy':>9} {'ms':>7}")
    for probes in PROBE_SWEEP:
        r = default if probes == default.probes else run_held_out(query, sample, exact, probes)
        row = f"{probes:>6} {r.recall:>10.3f} {fraction(r.probes):>13.1%} {r.accuracy:>9.3f}"
        print(f"  {row} {r.elapsed_ms:>7.0f}")
    print(f"  (probes={default.probes} ran first; later passes find most buckets in the container's cache)")


def run_writes(write: Handler, query: Handler, sample: local.Sample) -> None:
    """Upsert three held-out glosses, find one at distance ~0, delete it: the unmerged tail at work."""
    rows = list(range(3))
    items = [
        {
            "id": str(sample.query_ids[r]),
            "vector": sample.queries[r].tolist(),
            "label": str(sample.query_labels[r]),
        }
        for r in rows
    ]
    section("Write   upsert 3 held-out vectors, query, delete (write function)")
    up = write({"collection": local.COLLECTION, "operation": "upsert", "items": items})
    print(
        f"upserted {up['upserted']}: count {up['count']:,}, into the tail ({up['tail_segments']} segment, "
        f"merged into buckets: {up['merged']}, buckets written: {up['buckets_written']})"
    )
    probe = {"collection": local.COLLECTION, "vectors": [items[0]["vector"]], "k": 3}
    found = query(probe)
    hit = found["results"][0][0]
    stats = found["stats"]
    print(f"query {describe(sample, rows[0])}")
    print(
        f"  rank 1: {hit['id']} at distance {hit['distance']:.4f} — read from the tail "
        f"({stats['segments_fetched']} segment, {stats['tail_rows']} rows scanned) in the round of its "
        f"{stats['probes']} buckets ({stats['cache_hits']} from this container's cache)"
    )
    gone = write({"collection": local.COLLECTION, "operation": "delete", "ids": [items[0]["id"]]})
    again = query(probe)["results"][0]
    print(
        f"deleted {gone['deleted']}: count {gone['count']:,}; the same query now returns "
        f"{[h['id'] for h in again]} (no {items[0]['id']})"
    )


def run_error(query: Handler) -> None:
    """A rejected request: the handler raises, and Lambda reports the error type and message."""
    from kdbuckets import KdBucketsError

    section("Error   events/bad_query_wrong_dimension.json")
    try:
        query(event("bad_query_wrong_dimension.json"))
    except KdBucketsError as exc:
        print(f"{type(exc).__name__}: {exc}")
    else:
        raise SystemExit("the wrong-dimension query was accepted: validation is broken")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Run every step against one throw-away S3 server, stopped on the way out even on error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help=f"use the synthetic sample even if real data exists (also: {local.FORCE_SYNTHETIC}=1)",
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sample = local.realistic() if args.synthetic else local.load_sample()
    with local_s3() as endpoint:
        quiet_environment(endpoint)
        print(f"kdbuckets demo: build + query Lambda handlers on an embedded moto S3 at {endpoint}")
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        upload(s3, sample)
        build_response = run_build(load_handler("build"), s3)
        query = load_handler("query")
        run_query(query, sample)
        run_classify(query, sample)
        run_analogy(query, sample)
        bucket_bytes = index_bytes(s3, local.COLLECTION) / build_response["buckets"]
        run_recall(query, sample, build_response, bucket_bytes)
        run_writes(load_handler("write"), query, sample)
        run_error(query)
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
