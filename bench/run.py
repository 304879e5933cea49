"""`make bench`: recall, bytes, GETs, CPU and modelled latency of kdbuckets vs FAISS IVF-Flat.

Everything in bench/REPORT.md is measured by this one run, on the same queries, in the same
process: brute force (numpy) for the ground truth, FAISS ``IndexIVFFlat`` with ``nlist`` equal
to our bucket count, the original design (random axis, mean split, best-bin-first), the
intermediate step (PCA + largest spread, centroid ranking) and our default (that tree refined
by Lloyd iterations, SOAR-style replication of border vectors, centroid ranking), in float32
and float16. The indexes are built and queried through the real library against an
in-process moto S3; the serverless latency figures add an S3 latency model at the botocore
level (bench/s3sim.py).

    python -m bench.run [--quick] [--out bench]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench import recall_k
from bench.datasets import Dataset, synthetic_clustered, wordnet
from bench.s3sim import LatencyModel
from bench.startup import disk_tier_effect, import_times, startup_markdown
from kdbuckets import BuildParams, ObjectStore, Searcher, build_index, distances, make_collection
from kdbuckets.ranking import bucket_scores, top_buckets

K = 10
TARGET = 0.95
PROBE_GRID = (1, 2, 3, 4, 6, 8, 10, 12, 16, 20, 24, 32, 48, 64, 96, 128)


@dataclass(frozen=True)
class Variant:
    name: str
    params: dict[str, Any]


def variants() -> list[Variant]:
    return [
        Variant(
            "original: random axis, mean split, best-bin-first",
            {"split": "random", "projection": "none", "ranking": "bbf", "refine": 0, "replicate": 0.0},
        ),
        Variant(
            "PCA + largest spread, centroid ranking",
            {"split": "spread", "projection": "pca", "ranking": "centroid", "refine": 0, "replicate": 0.0},
        ),
        Variant(
            "+ Lloyd refinement (10 it.)",
            {"split": "spread", "projection": "pca", "ranking": "centroid", "refine": 10, "replicate": 0.0},
        ),
        Variant("ours (default): + 25% SOAR replication, float16 buckets", {}),
        Variant("ours, float32 buckets", {"dtype": "float32"}),
        Variant("ours with 50% replication", {"replicate": 0.5}),
    ]


@dataclass
class Curve:
    """Recall@10 and cost per query at each probe count."""

    probes: list[int] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    fraction: list[float] = field(default_factory=list)  # vectors read / collection size
    bytes: list[float] = field(default_factory=list)  # bytes read per query
    accuracy: list[float] = field(default_factory=list)
    ms_per_query: list[float] = field(default_factory=list)

    def at_recall(self, target: float) -> tuple[float, float, float] | None:
        """(probes, fraction, bytes) interpolated where recall first reaches ``target``."""
        r = np.array(self.recall)
        hit = np.flatnonzero(r >= target)
        if hit.size == 0:
            return None
        i = int(hit[0])
        if i == 0:
            return self.probes[0], self.fraction[0], self.bytes[0]
        t = (target - r[i - 1]) / max(r[i] - r[i - 1], 1e-12)
        lerp = lambda a: a[i - 1] + t * (a[i] - a[i - 1])  # noqa: E731
        return lerp(self.probes), lerp(self.fraction), lerp(self.bytes)


# ---------------------------------------------------------------------------- ground truth
def brute_force(ds: Dataset) -> tuple[np.ndarray, float]:
    """Exact top-K row ids per query (nq, K) and the ms per query it took (numpy)."""
    x = distances.prepare(ds.vectors, ds.metric)
    q = distances.prepare(ds.queries, ds.metric)
    started = time.perf_counter()
    best_d = np.full((len(q), K), np.inf, dtype=np.float32)
    best_i = np.zeros((len(q), K), dtype=np.int64)
    for start in range(0, len(x), 100_000):
        block = x[start : start + 100_000]
        d = distances.pairwise(q, block, ds.metric)
        cand_d = np.concatenate([best_d, d], axis=1)
        cand_i = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, start + len(block)), d.shape)], axis=1
        )
        pick = np.argpartition(cand_d, K - 1, axis=1)[:, :K]
        best_d, best_i = np.take_along_axis(cand_d, pick, 1), np.take_along_axis(cand_i, pick, 1)
    return best_i, (time.perf_counter() - started) * 1000 / len(q)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    hits = (found[:, :, None] == truth[:, None, :]).any(axis=2)
    return float(hits.sum() / truth.size)


# ---------------------------------------------------------------------------- kdbuckets
@contextlib.contextmanager
def moto_s3() -> Iterator[None]:
    from moto import mock_aws

    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ.pop("AWS_ENDPOINT_URL_S3", None)
    with mock_aws():
        import boto3

        from kdbuckets import storage

        storage.reset_clients()
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="bench")
        yield
        storage.reset_clients()


def measure_kdbuckets(
    ds: Dataset, variant: Variant, truth: np.ndarray, store: ObjectStore, slug: str
) -> dict[str, Any]:
    params = BuildParams(metric=ds.metric, **variant.params)
    data = make_collection(ds.vectors, None, ds.labels, metric=ds.metric)
    build = build_index(store, slug, data, params, replace=True)
    searcher = Searcher(store, cache_bytes=8 << 30)
    manifest = searcher.manifest(slug)
    rows, sizes = manifest.buckets.rows, manifest.buckets.sizes
    q = distances.prepare(ds.queries, ds.metric)
    scores = bucket_scores(
        q, manifest.buckets.centroids, manifest.tree, ds.metric, manifest.params["ranking"]
    )
    scores[:, rows == 0] = np.inf
    searcher.search(slug, ds.queries[:1], k=K, probes=manifest.n_buckets)  # warm every bucket
    curve = Curve()
    for p in [p for p in PROBE_GRID if p <= manifest.n_buckets]:
        probed = top_buckets(scores, p)
        t0 = time.perf_counter()
        if ds.labels is not None:
            out = searcher.classify(slug, ds.queries, k=K, probes=p)
            res = out.neighbours
            curve.accuracy.append(float(np.mean(np.array(out.predicted) == ds.query_labels)))
        else:
            res = searcher.search(slug, ds.queries, k=K, probes=p)
        curve.ms_per_query.append((time.perf_counter() - t0) * 1000 / len(q))
        found = np.array([[-1 if i is None else i for i in row] for row in res.ids])
        curve.probes.append(p)
        curve.recall.append(recall_at_k(found, truth))
        curve.fraction.append(float(rows[probed].sum(axis=1).mean() / len(ds.vectors)))
        curve.bytes.append(float(sizes[probed].sum(axis=1).mean()))
    cpu = {b: cpu_ms_per_query(searcher, slug, ds.queries, b) for b in (1, 100)}
    calibrated = searcher.search(slug, ds.queries, k=K)  # default settings: recall_target 0.95
    found = np.array([[-1 if i is None else i for i in row] for row in calibrated.ids])
    return {
        "variant": variant.name,
        "buckets": manifest.n_buckets,
        "build_s": (
            build.timings_ms["partition_ms"]
            + build.timings_ms["encode_ms"]
            + build.timings_ms.get("calibrate_ms", 0)
        )
        / 1000,
        "upload_s": build.timings_ms["upload_ms"] / 1000,
        "sizes": rows,
        "stored_rows": int(rows.sum()),
        "bytes_total": int(sizes.sum()),
        "curve": curve,
        "cpu_ms": cpu,
        "default": {"probes": calibrated.stats.probes, "recall": recall_at_k(found, truth)},
        "slug": slug,
    }


def cpu_ms_per_query(
    searcher: Searcher, slug: str, queries: np.ndarray, batch: int, probes: int = 8
) -> float:
    """Process CPU per query with every bucket cached (warm container), probes fixed."""
    n = min(len(queries), 200 if batch == 1 else 1000)
    started = time.process_time()
    for i in range(0, n, batch):
        searcher.search(slug, queries[i : i + batch], k=K, probes=probes)
    return (time.process_time() - started) * 1000 / n


# ---------------------------------------------------------------------------- FAISS
def measure_faiss(ds: Dataset, nlist: int, truth: np.ndarray) -> dict[str, Any]:
    import faiss

    faiss.omp_set_num_threads(os.cpu_count() or 1)
    x = distances.prepare(ds.vectors, ds.metric)
    q = distances.prepare(ds.queries, ds.metric)
    d = x.shape[1]
    quantizer = faiss.IndexFlatL2(d) if ds.metric != "ip" else faiss.IndexFlatIP(d)
    index = faiss.IndexIVFFlat(
        quantizer, d, nlist, faiss.METRIC_L2 if ds.metric != "ip" else faiss.METRIC_INNER_PRODUCT
    )
    t0 = time.perf_counter()
    index.train(x)
    index.add(x)
    build_s = time.perf_counter() - t0
    list_sizes = np.array([index.invlists.list_size(i) for i in range(nlist)])
    curve = Curve()
    for p in [p for p in PROBE_GRID if p <= nlist]:
        index.nprobe = p
        t1 = time.perf_counter()
        _, found = index.search(q, K)
        curve.ms_per_query.append((time.perf_counter() - t1) * 1000 / len(q))
        _, lists = quantizer.search(q, p)
        read = list_sizes[lists].sum(axis=1).mean()
        curve.probes.append(p)
        curve.recall.append(recall_at_k(found, truth))
        curve.fraction.append(float(read / len(x)))
        curve.bytes.append(float(read * (d * 4 + 8)))  # float32 vectors + int64 ids
    return {
        "variant": f"FAISS IndexIVFFlat (nlist={nlist})",
        "buckets": nlist,
        "build_s": build_s,
        "sizes": list_sizes,
        "curve": curve,
    }


# ---------------------------------------------------------------------------- latency model
def latency(
    store: ObjectStore, slug: str, queries: np.ndarray, model: LatencyModel, n: int = 40
) -> dict[str, Any]:
    """p50/p99 latency and GET rounds of single-vector queries, cold and warm, under ``model``."""
    model.install(store.client)
    try:
        out: dict[str, Any] = {}
        for label in ("cold", "warm"):
            times, rounds = [], []
            warm = Searcher(store, head_ttl=0.0)  # warm: manifest cached, HEAD revalidated every time
            warm.search(slug, queries[-1:], k=K)
            warm.buckets.clear()
            for i in range(n):
                searcher = Searcher(store) if label == "cold" else warm
                if label == "warm":
                    warm.buckets.clear()  # a large collection: this query's buckets are not cached
                model.reset()
                t0 = time.perf_counter()
                searcher.search(slug, queries[i : i + 1], k=K)
                times.append((time.perf_counter() - t0) * 1000)
                rounds.append(model.rounds())
            out[label] = {
                "p50": float(np.percentile(times, 50)),
                "p99": float(np.percentile(times, 99)),
                "rounds": max(rounds),
                "rounds_min": min(rounds),
            }
        return out
    finally:
        model.uninstall(store.client)


# ---------------------------------------------------------------------------- report
def plot(results: dict[str, list[dict[str, Any]]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for ds_name, rows in results.items():
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for r in rows:
            c = r["curve"]
            axes[0].plot(c.probes, c.recall, marker=".", label=r["variant"])
            axes[1].plot(np.array(c.fraction) * 100, c.recall, marker=".", label=r["variant"])
        axes[0].set(xscale="log", xlabel="probes (buckets read per query)", ylabel="recall@10", title=ds_name)
        axes[1].set(
            xscale="log", xlabel="% of the collection read per query", ylabel="recall@10", title=ds_name
        )
        for ax in axes:
            ax.axhline(TARGET, color="grey", lw=0.8, ls="--")
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        name = "recall_" + ("wordnet" if "wordnet" in ds_name else "synthetic") + ".png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.0f} kB"


def report(
    results: dict[str, list[dict[str, Any]]],
    extras: dict[str, dict[str, Any]],
    plots: list[str],
    out: Path,
    command: str,
    startup: str = "",
) -> None:
    lines = [
        "# kdbuckets benchmark report",
        "",
        f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"Held-out queries: recall@{K} against exact brute force (numpy). Not a test: figures "
        "vary from machine to machine; rerun the command to reproduce.",
        "",
    ]
    for ds_name, rows in results.items():
        ex = extras[ds_name]
        lines += [
            f"## {ds_name}",
            "",
            f"{ex['queries']} held-out queries; brute force {ex['brute_ms']:.1f} ms/query "
            f"(numpy, batch {ex['queries']}). Bucket count = FAISS nlist = {rows[-1]['buckets']}.",
            "",
            f"### What must be read for recall@10 = {TARGET}",
            "",
            "| variant | buckets | probes | % of collection read | bytes per query | vs IVF-Flat (vectors) | vs IVF-Flat (bytes) | storage × |",
            "|---|---|---|---|---|---|---|---|",
        ]
        ivf = rows[-1]["curve"].at_recall(TARGET)
        for r in rows:
            at = r["curve"].at_recall(TARGET)
            storage = r.get("stored_rows", len(r["sizes"]) and int(np.sum(r["sizes"]))) / ex["n"]
            if at is None:
                lines.append(
                    f"| {r['variant']} | {r['buckets']} | > {r['curve'].probes[-1]} | not reached | | | | {storage:.2f} |"
                )
                continue
            ratio_v = at[1] / ivf[1] if ivf else float("nan")
            ratio_b = at[2] / ivf[2] if ivf else float("nan")
            lines.append(
                f"| {r['variant']} | {r['buckets']} | {at[0]:.1f} | {at[1] * 100:.1f}% | {fmt_bytes(at[2])} | "
                f"{ratio_v:.2f} | {ratio_b:.2f} | {storage:.2f} |"
            )
        lines += [
            "",
            "Interpolated between measured probe counts. `storage ×` = vectors stored / collection size "
            "(replication stores border vectors twice).",
            "",
            "### Recall@10 by probes",
            "",
            "| variant | " + " | ".join(f"p={p}" for p in PROBE_GRID[:12]) + " |",
            "|---|" + "---|" * 12,
        ]
        for r in rows:
            c = r["curve"]
            cells = [f"{c.recall[c.probes.index(p)]:.3f}" if p in c.probes else "" for p in PROBE_GRID[:12]]
            lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
        lines += [
            "",
            "### Build, buckets, query CPU",
            "",
            "| variant | build s (tree+encode+calibrate; upload excluded) | bucket rows min / median / p90 / max | GETs per query (cold, at 0.95) | query CPU ms/query batch 1 / 100 (warm, 8 probes) | default query: probes → recall@10 |",
            "|---|---|---|---|---|---|",
        ]
        for r in rows:
            s = np.asarray(r["sizes"])
            at = r["curve"].at_recall(TARGET)
            gets = (
                f"{int(np.ceil(at[0]))} + HEAD + manifest"
                if at and "cpu_ms" in r
                else (f"{int(np.ceil(at[0]))} lists" if at else "")
            )
            cpu = (
                f"{r['cpu_ms'][1]:.2f} / {r['cpu_ms'][100]:.2f}"
                if "cpu_ms" in r
                else "n/a (in-memory library)"
            )
            dflt = f"{r['default']['probes']} → {r['default']['recall']:.3f}" if "default" in r else ""
            lines.append(
                f"| {r['variant']} | {r['build_s']:.1f} | {s.min()} / {int(np.median(s))} / {int(np.percentile(s, 90))} / {s.max()} | {gets} | {cpu} | {dflt} |"
            )
        if rows[0]["curve"].accuracy:
            lines += [
                "",
                "### k-NN classification (k = 10, distance-weighted vote) by probes",
                "",
                "| probes | " + " | ".join(r["variant"] for r in rows if r["curve"].accuracy) + " |",
                "|---|" + "---|" * sum(1 for r in rows if r["curve"].accuracy),
            ]
            for p in PROBE_GRID[:10]:
                cells = []
                for r in rows:
                    c = r["curve"]
                    if c.accuracy:
                        cells.append(
                            f"{c.accuracy[c.probes.index(p)]:.3f} ({c.ms_per_query[c.probes.index(p)]:.2f} ms/doc)"
                            if p in c.probes
                            else ""
                        )
                lines.append(f"| {p} | " + " | ".join(cells) + " |")
            lines += [
                "",
                "Accuracy of the predicted label of held-out documents; ms per document = wall time of one "
                "classify call over all held-out documents (batched, buckets cached) / documents.",
            ]
        if "latency" in ex:
            lat = ex["latency"]
            m = ex["latency_model"]
            lines += [
                "",
                f"### Serverless latency model ({m})",
                "",
                "Single-vector queries at default settings (recall target 0.95) through the real Searcher, with "
                "S3 latency injected at the botocore level. Cold = new container (HEAD, manifest, buckets); "
                "warm = manifest cached, HEAD revalidated on every query (conditional GET, overlapped), "
                "buckets not cached.",
                "",
                "| | p50 ms | p99 ms | GET rounds |",
                "|---|---|---|---|",
            ]
            for label in ("cold", "warm"):
                v = lat[label]
                rounds = (
                    str(v["rounds"]) if v["rounds"] == v["rounds_min"] else f"{v['rounds_min']}–{v['rounds']}"
                )
                lines.append(f"| {label} | {v['p50']:.0f} | {v['p99']:.0f} | {rounds} |")
        lines.append("")
    if startup:
        lines += [_section("startup", startup)]
    lines += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    (out / "REPORT.md").write_text("\n".join(lines))


def _section(name: str, body: str) -> str:
    return f"<!-- section:{name} -->\n{body.rstrip()}\n<!-- /section:{name} -->\n"


def replace_section(report_path: Path, name: str, body: str) -> None:
    """Rewrite one marked section of REPORT.md in place (inserted before the plots if absent)."""
    text = report_path.read_text() if report_path.exists() else "# kdbuckets benchmark report\n\n"
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + _section(name, body) + tail
    elif "## Plots" in text:
        head, tail = text.split("## Plots", 1)
        text = head + _section(name, body) + "\n## Plots" + tail
    else:
        text = text + "\n" + _section(name, body)
    report_path.write_text(text)


def measure_startup(args: argparse.Namespace) -> str:
    """The cold-start section alone: import times, and the /tmp tier on the first data set."""
    ds = next(d for d in (wordnet(), synthetic_clustered(n=100_000)) if d is not None)
    with moto_s3():
        store = ObjectStore("bench")
        data = make_collection(ds.vectors, None, ds.labels, metric=ds.metric)
        print(f"== building {ds.name} for the /tmp tier measurement", flush=True)
        build_index(store, "startup", data, BuildParams(metric=ds.metric), replace=True)
        model = LatencyModel(args.first_byte_ms, args.bandwidth_mb_s)
        tier = disk_tier_effect(store, "startup", ds.queries, model)
    print("== import times", flush=True)
    return startup_markdown(import_times(), tier) + (
        f"\nMeasured on {ds.name} ({len(ds.vectors):,} vectors) with the S3 latency model "
        f"(first byte {args.first_byte_ms:g} ms, {args.bandwidth_mb_s:g} MB/s per connection); "
        f"`python -m bench.run --only startup` reruns this section alone.\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="100k synthetic vectors instead of 1M (smoke run)"
    )
    parser.add_argument("--out", default=str(Path(__file__).parent))
    parser.add_argument("--first-byte-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mb-s", type=float, default=90.0)
    parser.add_argument(
        "--only",
        choices=["startup", "recall_k", "distributed", "hierarchy", "by_example", "queue_writes", "tail"],
        help="measure one section and replace just that section of an existing REPORT.md",
    )
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.only is not None:
        if args.only in ("distributed", "hierarchy", "by_example", "queue_writes", "tail"):
            import importlib

            module = {"tail": "tail_writes"}.get(args.only, args.only)
            section = importlib.import_module(f"bench.{module}").measure_section([])
        else:
            section = measure_startup(args) if args.only == "startup" else recall_k.measure_section()
        replace_section(out / "REPORT.md", args.only, section)
        print(section)
        return
    datasets = [
        d for d in (wordnet(), synthetic_clustered(n=100_000 if args.quick else 1_000_000)) if d is not None
    ]
    results: dict[str, list[dict[str, Any]]] = {}
    extras: dict[str, dict[str, Any]] = {}
    with moto_s3():
        store = ObjectStore("bench")
        for di, ds in enumerate(datasets):
            print(f"== {ds.name}", flush=True)
            truth, brute_ms = brute_force(ds)
            rows = []
            for vi, v in enumerate(variants()):
                r = measure_kdbuckets(ds, v, truth, store, f"ds{di}-v{vi}")
                print(
                    f"  {v.name}: {r['buckets']} buckets, build {r['build_s']:.1f}s, "
                    f"at 0.95: {r['curve'].at_recall(TARGET)}",
                    flush=True,
                )
                rows.append(r)
            default = rows[3]  # "ours (default)"
            ivf = measure_faiss(ds, default["buckets"], truth)
            print(f"  {ivf['variant']}: at 0.95: {ivf['curve'].at_recall(TARGET)}", flush=True)
            rows.append(ivf)
            model = LatencyModel(args.first_byte_ms, args.bandwidth_mb_s)
            extras[ds.name] = {
                "n": len(ds.vectors),
                "queries": len(ds.queries),
                "brute_ms": brute_ms,
                "latency": latency(store, default["slug"], ds.queries, model),
                "latency_model": f"first byte {args.first_byte_ms:g} ms per GET, "
                f"{args.bandwidth_mb_s:g} MB/s per connection",
            }
            print(f"  latency: {extras[ds.name]['latency']}", flush=True)
            results[ds.name] = rows
        startup = startup_markdown(
            import_times(),
            disk_tier_effect(
                store, "ds0-v3", datasets[0].queries, LatencyModel(args.first_byte_ms, args.bandwidth_mb_s)
            ),
        )
    plots = plot(results, out)
    command = "make bench" + (" (--quick)" if args.quick else "")
    report(results, extras, plots, out, command, startup)
    replace_section(out / "REPORT.md", "recall_k", recall_k.measure_section())
    from bench import hierarchy

    replace_section(out / "REPORT.md", "hierarchy", hierarchy.measure_section())
    from bench import by_example, queue_writes

    replace_section(out / "REPORT.md", "by_example", by_example.measure_section([]))
    replace_section(out / "REPORT.md", "queue_writes", queue_writes.measure_section([]))
    print(f"wrote {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
