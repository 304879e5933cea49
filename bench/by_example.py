"""What query by example costs: GETs and bytes per query-by-id and per recommend, and recall.

Builds the demo collection (WordNet glosses when ``../shared/data`` exists, else the synthetic
set) with the default build parameters on an in-process moto S3, then sends, at the default
recall target (0.95), queries by stored id (``exclude_self``) and recommendations (3 positive
ids, 1 negative) — each from a fresh Searcher (cold: what a new Lambda container pays) and
from one kept Searcher (warm). Recall@10 of query-by-id is measured against brute force over
the indexed vectors with each query's own id excluded. Prints a markdown table.

    PYTHONPATH=shared:. python -m bench.by_example [--queries 200]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench.run import moto_s3
from devtools import local
from kdbuckets import BuildParams, ObjectStore, Searcher, build_index, distances, examples, make_collection

K = 10
NAME = "bench-examples"


def _cost(results: list[Any]) -> dict[str, float]:
    stats = [r.stats if hasattr(r, "stats") else r.neighbours.stats for r in results]
    return {
        "s3_gets": float(np.mean([s.s3_gets for s in stats])),
        "example_gets": float(np.mean([s.example_gets for s in stats])),
        "buckets": float(np.mean([s.buckets_fetched for s in stats])),
        "bytes": float(np.mean([s.bytes_fetched for s in stats])),
        "probes": float(np.mean([s.probes for s in stats])),
        "ms": float(np.median([s.elapsed_ms for s in stats])),
    }


def measure_section(argv: list[str] | None = None) -> str:
    """Build the WordNet set (or the synthetic sample) and measure requests by example."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    sample = local.load_sample()
    rng = np.random.default_rng(20261130)
    with moto_s3():
        import boto3

        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="kdbuckets-bench-examples")
        store = ObjectStore("kdbuckets-bench-examples")
        started = time.perf_counter()
        data = make_collection(sample.vectors, sample.ids, sample.labels, metric="cosine")
        built = build_index(store, NAME, data, BuildParams(metric="cosine", bucket_size=1000, seed=0))
        build_s = time.perf_counter() - started
        n = len(sample.ids)
        rows = rng.choice(n, size=args.queries, replace=False)
        ids = [str(sample.ids[r]) for r in rows]

        def by_id(searcher: Searcher, ident: str) -> Any:
            return examples.run(searcher, NAME, examples.ByIds([ident]), k=K)

        def recommend(searcher: Searcher, picks: np.ndarray, strategy: str) -> Any:
            spec = examples.Recommend(
                [str(sample.ids[p]) for p in picks[:3]], [str(sample.ids[picks[3]])], strategy
            )
            return examples.run(searcher, NAME, spec, k=K)

        cold = [by_id(Searcher(store), i) for i in ids]
        warm_searcher = Searcher(store)
        warm = [by_id(warm_searcher, i) for i in ids]
        rec_rows = [rng.choice(n, size=4, replace=False) for _ in range(max(1, args.queries // 4))]
        rec = {s: [recommend(Searcher(store), p, s) for p in rec_rows] for s in examples.STRATEGIES}
        warm_rec = {}
        for s in examples.STRATEGIES:
            w = Searcher(store)
            warm_rec[s] = [recommend(w, p, s) for p in rec_rows]
        # recall@10 of query-by-id vs brute force, the query's own id excluded
        v = distances.prepare(sample.vectors, "cosine")
        sims = v[rows] @ v.T
        sims[np.arange(len(rows)), rows] = -np.inf
        truth = np.argsort(-sims, axis=1, kind="stable")[:, :K]
        recall = np.mean(
            [
                len({str(sample.ids[j]) for j in t} & set(r.ids[0])) / K
                for t, r in zip(truth, cold, strict=True)
            ]
        )
        self_returned = sum(i in r.ids[0] for i, r in zip(ids, cold, strict=True))

    out: list[str] = []
    out.append(f"## Query by example — {sample.name}\n")
    out.append(
        f"{n:,} vectors, {built.buckets} buckets (bucket_size 1000, default build), build {build_s:.0f} s; "
        f"default recall target 0.95; k = {K}; {len(ids)} queries by id, {len(rec_rows)} recommendations "
        "(3 positive ids + 1 negative id, random rows). Means per request; cold = fresh Searcher "
        "(new container), warm = one kept Searcher.\n"
    )
    out.append(
        "| request | cache | S3 GETs | of which resolving examples | buckets fetched "
        "| bytes fetched | probes | median ms |"
    )
    out.append("|---|---|---:|---:|---:|---:|---:|---:|")
    lines = [("query by id", "cold", cold), ("query by id", "warm", warm)]
    for s in examples.STRATEGIES:
        lines += [(f"recommend {s}", "cold", rec[s]), (f"recommend {s}", "warm", warm_rec[s])]
    for what, cache, results in lines:
        c = _cost(results)
        out.append(
            f"| {what} | {cache} | {c['s3_gets']:.1f} | {c['example_gets']:.1f} | {c['buckets']:.1f} | "
            f"{c['bytes'] / 1e6:.2f} MB | {c['probes']:.1f} | {c['ms']:.0f} |"
        )
    out.append(
        f"\nrecall@10 of query by id (own id excluded) vs brute force: **{recall:.3f}** "
        f"over {len(ids)} ids; own id returned: {self_returned} times"
    )
    out.append("\n`python -m bench.run --only by_example` reruns this section alone.")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    print(measure_section(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
