"""Bucket sizes and recall after skewed writes: split only (before) vs LIRE-style maintenance.

    PYTHONPATH=shared:. python -m bench.write_maintenance [--n 4000] [--writes 12] [--batch 200]

Why: a refined collection routes a new vector to its nearest centroid, so writes that pile
onto one region grow one bucket; before maintenance a write only split it (average split
along the principal direction) and never moved a neighbour's vectors. This builds a clustered
synthetic set with the default parameters (refine 10, replicate 0.25) on moto, upserts
``writes`` batches drawn from a few clusters close to one spot, then deletes a share of old
vectors there, and reports per variant: buckets, max / p90 rows, recall@10 at the default
recall target on held-out queries (brute force over the live set), and the same after a
``compact``. Variants set the module knobs of :mod:`kdbuckets.maintenance` (no code is
replaced): ``before`` = no neighbours (split only, average), ``average`` and ``kmeans`` =
full maintenance with that split. Prints a Markdown table.
"""

from __future__ import annotations

import argparse

import numpy as np

from bench.run import moto_s3
from kdbuckets import BuildParams, build_index, catalog, maintenance, make_collection, writer
from kdbuckets.calibration import exact_neighbours
from kdbuckets.recalibrate import recalibrate
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore

DIM = 32
BUCKET_SIZE = 50


def _data(n: int, writes: int, batch: int, seed: int = 5) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Base vectors (40 clusters), skewed write batches (4 tight clusters near one centre), queries."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, DIM)).astype(np.float32)
    base = centres[rng.integers(0, 40, n)] + rng.normal(scale=0.35, size=(n, DIM))
    hot = centres[0] + rng.normal(scale=0.25, size=(4, DIM))
    batches = [
        (hot[rng.integers(0, 4, batch)] + rng.normal(scale=0.15, size=(batch, DIM))).astype(np.float32)
        for _ in range(writes)
    ]
    pool = np.vstack([base[: n // 4], *batches])
    queries = pool[rng.choice(len(pool), 200, replace=False)] + rng.normal(scale=0.05, size=(200, DIM))
    return base.astype(np.float32), batches, queries.astype(np.float32)


def _measure(
    store: ObjectStore, name: str, live: np.ndarray, live_ids: np.ndarray, queries: np.ndarray
) -> dict:
    m = catalog.read_live(store, name).manifest
    rows = m.buckets.rows[m.buckets.rows > 0]
    found = Searcher(store).search(name, queries, k=10)
    truth = exact_neighbours(queries, live, np.full(len(queries), -1), "l2", 10)
    hits = [len(set(f) & set(live_ids[t].tolist())) for f, t in zip(found.ids, truth, strict=True)]
    return {
        "buckets": len(rows),
        "max": int(rows.max()),
        "p90": float(np.percentile(rows, 90)),
        "recall": float(np.mean(hits) / 10),
        "probes": found.stats.probes,
    }


def run(variant: str, n: int, writes: int, batch: int) -> tuple[dict, dict, dict]:
    """One variant end to end: measured after the writes, after a recalibration, after compaction."""
    maintenance.SPLIT_METHOD = "average" if variant == "before" else variant
    maintenance.NEIGHBOURS = 0 if variant == "before" else 4
    maintenance.MAX_NEIGHBOUR_BUCKETS = 0 if variant == "before" else 16
    base, batches, queries = _data(n, writes, batch)
    store = ObjectStore("bench")
    name = f"maint-{variant}"
    ids = np.arange(n, dtype=np.int64)
    build_index(
        store,
        name,
        make_collection(base, ids, None, metric="l2"),
        BuildParams(metric="l2", bucket_size=BUCKET_SIZE),
        replace=True,
    )
    live, live_ids = [base], [ids]
    for w, vectors in enumerate(batches):
        new_ids = np.arange(len(vectors), dtype=np.int64) + 10 * n + w * len(vectors)
        writer.write(store, name, upserts=make_collection(vectors, new_ids, None, metric="l2"))
        live.append(vectors)
        live_ids.append(new_ids)
    vectors, all_ids = np.vstack(live), np.concatenate(live_ids)
    near_hot = np.argsort(np.sum(np.square(base - batches[0].mean(axis=0)), axis=1))[:300]
    gone = ids[near_hot[::2]]  # delete half of the old vectors near the hot spot, in 5 writes
    for chunk in np.array_split(gone, 5):
        writer.write(store, name, deletes=chunk)
    keep = ~np.isin(all_ids, gone)
    after_writes = _measure(store, name, vectors[keep], all_ids[keep], queries)
    recalibrate(store, name)  # the same buckets, curves measured on the data as it is now
    recalibrated = _measure(store, name, vectors[keep], all_ids[keep], queries)
    writer.compact(store, name)
    return after_writes, recalibrated, _measure(store, name, vectors[keep], all_ids[keep], queries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--writes", type=int, default=12)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--variants", default="before,average,kmeans")
    args = parser.parse_args()
    lines = [
        f"synthetic {args.n} × {DIM} (40 clusters) + {args.writes} skewed upserts of {args.batch}, "
        f"then 150 deletes near the hot spot; bucket_size {BUCKET_SIZE}, refine 10, replicate 0.25",
        "",
        "| variant | when | buckets (non-empty) | max rows | p90 rows | recall@10 (default target) "
        "| probes |",
        "|---|---|---|---|---|---|---|",
    ]
    with moto_s3():
        for variant in args.variants.split(","):
            written, recalibrated, compacted = run(variant, args.n, args.writes, args.batch)
            for when, r in (
                ("after writes", written),
                ("after writes + recalibrate", recalibrated),
                ("after compact", compacted),
            ):
                cells = [variant, when, r["buckets"], r["max"], f"{r['p90']:.0f}", f"{r['recall']:.3f}"]
                cells.append(f"{r['probes']}")
                lines.append("| " + " | ".join(map(str, cells)) + " |")
            print(*lines[-3:], sep="\n", flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
