"""The hierarchical manifest: what a cold query pays for it, measured and extrapolated.

Measured (moto in-process, the real WordNet set when present, else a synthetic one): the same
collection built as one part (what a single-function build writes) and in parts (what a
distributed build writes), queried at the default recall target with held-out queries —
recall@10, probes, bucket bytes, and the manifest bytes and GET rounds of a *cold* query (a
new searcher per query: HEAD, root, the parts it routes to, its buckets).

Extrapolated: bytes per entry of a root and of a part are measured by encoding synthetic
manifests of the real formats (float16 centroids, 384 and 768 dimensions), and the cold-query
manifest bytes at 1M, 100M and 1B vectors follow from the part size rule
(:func:`kdbuckets.hierarchy.part_buckets_for`): root + ``route_parts`` parts.

``python -m bench.run --only hierarchy`` replaces this section of bench/REPORT.md.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np

from bench.datasets import synthetic_clustered, wordnet
from kdbuckets import BuildParams, build_index, distances, make_collection
from kdbuckets.calibration import exact_neighbours
from kdbuckets.hierarchy import ROUTE_PARTS, part_buckets_for
from kdbuckets.manifest import BucketTable, Manifest, encode_hierarchy
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore
from kdbuckets.tree import Tree

QUERIES = 300
#: Stored rows per bucket the extrapolation assumes: the default bucket_size 1,000 with 25%
#: border replication; overwritten by the measured build's own mean below.
ROWS_PER_BUCKET = 700.0


def measure_section(argv: list[str] | None = None) -> str:  # argv: the common signature, unused
    from bench.run import moto_s3

    rows_md: list[str] = []
    mean_rows = ROWS_PER_BUCKET
    cases = [
        (wordnet(), {}, (None, 16)),
        (synthetic_clustered(n=300_000, dim=128, clusters=2_000), {"bucket_size": 100}, (None, 32)),
    ]
    with moto_s3():
        store = ObjectStore("bench")
        for ds, params, layouts in cases:
            if ds is None:
                continue
            queries = ds.queries[:QUERIES]
            prepared = distances.prepare(ds.vectors, ds.metric)
            truth = exact_neighbours(
                distances.prepare(queries, ds.metric), prepared, np.full(len(queries), -1), ds.metric, 10
            )
            del prepared
            data = make_collection(ds.vectors, None, ds.labels, metric=ds.metric)
            for part_buckets in layouts:
                row, rows_per_bucket = _measure(store, ds, data, params, part_buckets, queries, truth)
                rows_md.append(row)
                if ds.metric == "cosine" and part_buckets is None:
                    mean_rows = rows_per_bucket
    costs = {d: entry_costs(d) for d in (384, 768)}
    lines = [
        "## Hierarchical manifest",
        "",
        f"Default build parameters (but `bucket_size` 100 on the synthetic set), {QUERIES} held-out "
        "queries at the default "
        "recall target (0.95), each as a *cold* query (a new searcher: HEAD → root → the parts it "
        "routes to → its buckets). Warm: the same queries on one searcher (second half), rounds "
        "of GETs besides the HEAD revalidation that overlaps them.",
        "",
        "| data | manifest | buckets | parts read per cold query | recall@10 | probes | bucket bytes / query "
        "| root | manifest bytes / cold query | GET rounds, cold (max) | rounds, warm (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows_md,
        "",
        "### Manifest bytes a cold query reads, by collection size",
        "",
        "Entry sizes measured by encoding the real formats (float16 centroids): a part costs "
        + ", ".join(f"{c['bucket']:.0f} B per bucket at {d}-d" for d, c in costs.items())
        + "; the root "
        + ", ".join(f"{c['part']:.0f} B per part at {d}-d" for d, c in costs.items())
        + f" plus ≈ {costs[384]['fixed'] / 1e3:.0f} kB of fixed fields and calibration curves. "
        f"Buckets = 1.25 n / {mean_rows:.0f} (stored rows per bucket of the build above, 25% "
        f"replicated); parts of G = part_buckets_for(buckets) buckets; a cold query reads the root "
        f"and {ROUTE_PARTS} parts.",
        "",
        f"| vectors | dim | buckets | G | parts | root | {ROUTE_PARTS} parts | manifest bytes / cold query "
        "| ≤ 2 MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in (1_000_000, 100_000_000, 1_000_000_000):
        for d in (384, 768):
            c = costs[d]
            nb = int(np.ceil(1.25 * n / mean_rows))
            g = part_buckets_for(nb)
            parts = int(np.ceil(nb / g))
            root = c["fixed"] + parts * c["part"]
            two = ROUTE_PARTS * (c["part_fixed"] + g * c["bucket"])
            total = root + two
            lines.append(
                f"| {n:,} | {d} | {nb:,} | {g} | {parts:,} | {_mb(root)} | {_mb(two)} | {_mb(total)} | "
                f"{'yes' if total <= 2e6 else 'no'} |"
            )
    lines += [
        "",
        "`python -m bench.run --only hierarchy` reruns this section alone.",
    ]
    return "\n".join(lines) + "\n"


def _measure(
    store: ObjectStore,
    ds: Any,
    data: Any,
    params: dict[str, Any],
    part_buckets: int | None,
    queries: np.ndarray,
    truth: np.ndarray,
) -> tuple[str, float]:
    """One table row: a build in this layout, every query cold, then warm."""
    name = "one part" if part_buckets is None else f"parts of ≤ {part_buckets} buckets"
    slug = f"hier-{abs(hash(ds.name)) % 1000}-{part_buckets or 0}"
    print(f"== hierarchy: {ds.name}, {name}", flush=True)
    built = build_index(
        store, slug, data, BuildParams(metric=ds.metric, part_buckets=part_buckets, **params), replace=True
    )
    found, probes, bucket_bytes, manifest_bytes, rounds_cold, parts_read = [], [], [], [], [], []
    warm = Searcher(store)
    warm_rounds = []
    for q in queries:
        cold = Searcher(store).search(slug, q[None, :], k=10)
        s = cold.stats
        found.append(cold.ids[0])
        probes.append(s.probes)
        bucket_bytes.append(s.bytes_fetched)
        manifest_bytes.append(s.manifest_bytes)
        parts_read.append(s.parts_fetched)
        rounds_cold.append(2 + (1 if s.parts_fetched else 0) + s.fetch_rounds)
        w = warm.search(slug, q[None, :], k=10).stats
        warm_rounds.append(w.fetch_rounds + (1 if w.parts_fetched else 0))
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth.tolist(), strict=True)])
    root = store.get(f"{slug}/manifests/{built.version}")[0]
    row = (
        f"| {ds.name} | {name} | {built.buckets} | {np.mean(parts_read):.1f} of "
        f"{_parts(store, slug)} | {recall:.3f} | {np.mean(probes):.1f} | "
        f"{np.mean(bucket_bytes) / 1e6:.2f} MB | {len(root) / 1e3:.0f} kB | "
        f"{np.mean(manifest_bytes) / 1e3:.0f} kB | {max(rounds_cold)} | "
        f"{np.mean(warm_rounds[len(warm_rounds) // 2 :]):.2f} |"
    )
    return row, built.stored_rows / built.buckets


def _parts(store: ObjectStore, slug: str) -> int:
    from kdbuckets import catalog

    snap = catalog.read_live(store, slug)
    return len(snap.manifest.stored) - 1  # every part, and the tree


def _mb(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e5 else f"{b / 1e3:.0f} kB"


@functools.cache
def entry_costs(dim: int) -> dict[str, float]:
    """Bytes per bucket in a part, per part in a root, and the fixed rest, from real encodings."""
    sizes = {}
    for nb, g in ((512, 64), (1024, 64), (1024, 128)):
        enc = encode_hierarchy(_synthetic_manifest(nb, dim, g))
        parts = [b for b in enc.objects.values() if b[:40].find(b"kdbuckets/part") >= 0]
        sizes[(nb, g)] = (len(enc.root), len(parts), np.mean([len(p) for p in parts]))
    (r1, p1, _), (r2, p2, _) = sizes[(512, 64)], sizes[(1024, 64)]
    per_part = (r2 - r1) / (p2 - p1)
    _, _, s64 = sizes[(1024, 64)]
    _, _, s128 = sizes[(1024, 128)]
    per_bucket = (s128 - s64) / 64
    calibration = 10 * 200 * 9  # ten curves of ~200 points (float64 in msgpack)
    return {
        "bucket": per_bucket,
        "part": per_part,
        "part_fixed": s64 - 64 * per_bucket,
        "fixed": r1 - p1 * per_part + calibration,
    }


def _synthetic_manifest(nb: int, dim: int, part_buckets: int) -> Manifest:
    """A manifest of ``nb`` buckets (balanced tree, random float16 centroids) in the real format."""
    rng = np.random.default_rng(0)
    n_nodes = 2 * nb - 1
    internal = nb - 1
    node_plane = np.full(n_nodes, -1, np.int32)
    node_plane[:internal] = 0
    left = np.full(n_nodes, -1, np.int32)
    right = np.full(n_nodes, -1, np.int32)
    left[:internal] = 2 * np.arange(internal) + 1
    right[:internal] = 2 * np.arange(internal) + 2
    node_leaf = np.full(n_nodes, -1, np.int32)
    node_leaf[internal:] = np.arange(nb)
    tree = Tree(
        planes=np.eye(1, dim, dtype=np.float32),
        node_plane=node_plane,
        threshold=np.zeros(n_nodes, np.float32),
        left=left,
        right=right,
        node_leaf=node_leaf,
    )
    fps = [f"{i:064x}" for i in rng.integers(0, 2**62, nb)]
    table = BucketTable(
        fps,
        rng.integers(100_000, 2_000_000, nb),
        rng.integers(200, 1000, nb),
        rng.normal(size=(nb, dim)).astype(np.float16).astype(np.float32),
    )
    return Manifest(
        collection="c",
        version="v",
        created_at="2026-01-01T00:00:00.000+00:00",
        dim=dim,
        metric="cosine",
        dtype="float16",
        count=nb * 700,
        id_kind="int",
        label_names=None,
        params=BuildParams().as_dict(),
        tree=tree,
        buckets=table,
        part_buckets=part_buckets,
    )


def main() -> None:
    t0 = time.perf_counter()
    print(measure_section())
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
