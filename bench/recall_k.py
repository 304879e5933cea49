"""Recall for any k: does the default ``recall_target`` hold at k = 1, 10, 100 and 1,000?

The build calibrates one recall curve per k (``kdbuckets.calibration``); a query picks the
probes its k needs. This measures the promise on held-out queries: for each k, the target
asked (0.95), the probes the searcher chose (mean per query, after any widening), the recall@k
reached against exact brute force, and the bytes a query reads. For comparison, the same
queries at the probes the k = 10 curve alone would choose (what every k got before).

    PYTHONPATH=shared:. python -m bench.recall_k      # synthetic 100k, and WordNet if present

``bench/run.py`` calls :func:`recall_for_k` on an index it has built and :func:`markdown` for
its report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bench.datasets import Dataset, synthetic_clustered, wordnet
from kdbuckets import distances
from kdbuckets.calibration import K as CALIBRATED_K
from kdbuckets.calibration import exact_neighbours, probes_for
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore

KS = (1, 10, 100, 1000)
TARGET = 0.95

#: k → (nq, k) row ids of the exact neighbours of ``dataset.queries``, nearest first.
TruthFn = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class KRow:
    """One k: what was asked, what was read, what was reached."""

    k: int
    target: float
    probes: float  # mean per query, widening included
    recall: float  # a result tied with the k-th true neighbour's distance counts (duplicates)
    recall_by_id: float  # only the ids brute force listed count
    bytes_per_query: float
    share_read: float  # vectors read per query / collection size (replicas count twice)
    before_probes: float  # the same at the probes the k = 10 curve chooses (the rule before per-k curves)
    before_recall: float


def exact_truth(ds: Dataset, k_max: int = max(KS)) -> TruthFn:
    """Exact neighbours of the held-out queries, computed once for ``k_max`` (blocked, float32).

    Against the float32 vectors the user gave, so that float16 buckets' rounding counts
    against the index, as everywhere else in the bench.
    """
    x = distances.prepare(ds.vectors, ds.metric)
    q = distances.prepare(ds.queries, ds.metric)
    truth = exact_neighbours(q, x, np.full(len(q), -1), ds.metric, min(k_max, len(x)))
    return lambda k: truth[:, :k]


def recall_for_k(
    store: ObjectStore,
    slug: str,
    dataset: Dataset,
    truth_fn: TruthFn,
    *,
    ks: tuple[int, ...] = KS,
    target: float = TARGET,
    max_queries: int = 1000,
) -> list[KRow]:
    """Per k: probes chosen for ``target`` and recall@k reached, on ``slug`` (already built).

    Queries are sent one per request, so that ``stats.probes`` is each query's own count
    (a query widens alone when it finds fewer than k vectors) and its bytes are the sizes of
    the buckets it read; the bucket cache is warm, so this measures choices, not latency.
    """
    searcher = Searcher(store, cache_bytes=8 << 30)
    manifest = searcher.manifest(slug)
    sizes, rows = manifest.buckets.sizes, manifest.buckets.rows
    queries = dataset.queries[:max_queries]
    prepared = distances.prepare(queries, manifest.metric)
    vectors = distances.prepare(dataset.vectors, manifest.metric)
    score = lambda found, truth: _recall(found, truth, vectors, prepared, manifest.metric)  # noqa: E731
    calibration = manifest.extra.get("calibration")
    out = []
    for k in ks:
        truth = truth_fn(k)[: len(queries)]
        old = probes_for(calibration, target, manifest.n_buckets, CALIBRATED_K) if calibration else None
        now = _run(searcher, slug, queries, prepared, k, None, target)
        before = now if old is None else _run(searcher, slug, queries, prepared, k, old, None)
        probes = now["probes"]
        read = [searcher.rank(manifest, prepared[i : i + 1], int(p))[0] for i, p in enumerate(probes)]
        out.append(
            KRow(
                k=k,
                target=target,
                probes=float(np.mean(probes)),
                recall=score(now["ids"], truth),
                recall_by_id=_recall_by_id(now["ids"], truth),
                bytes_per_query=float(np.mean([sizes[b].sum() for b in read])),
                share_read=float(np.mean([rows[b].sum() for b in read]) / manifest.count),
                before_probes=float(np.mean(before["probes"])),
                before_recall=score(before["ids"], truth),
            )
        )
    return out


def _run(
    searcher: Searcher,
    slug: str,
    queries: np.ndarray,
    prepared: np.ndarray,
    k: int,
    probes: int | None,
    target: float | None,
) -> dict[str, list]:
    """One request per query: its ids and the probes it ended on."""
    ids, used = [], []
    for i in range(len(queries)):
        res = searcher.search(slug, queries[i : i + 1], k=k, probes=probes, recall_target=target)
        ids.append(res.ids[0])
        used.append(res.stats.probes)
    return {"ids": ids, "probes": used}


def _recall(
    found: list[list[int | str | None]],
    truth: np.ndarray,
    vectors: np.ndarray,
    queries: np.ndarray,
    metric: str,
) -> float:
    """Recall@k where a result as near as the k-th true neighbour counts, whatever its id.

    Exact duplicates are common in real embeddings (1.5% of WordNet's held-out queries have
    two equally near first neighbours); which of them brute force lists first is arbitrary,
    and by id alone recall@1 would count a correct answer as a miss.
    """
    k = truth.shape[1]
    hits = []
    for f, t, q in zip(found, truth, queries, strict=True):
        rows = np.array([i for i in f if i is not None], dtype=np.int64)
        d = _dist(vectors[rows], q, metric)
        hits.append(min(k, int((d <= _dist(vectors[t[-1:]], q, metric)[0] + 1e-9).sum())) / k)
    return float(np.mean(hits))


def _dist(rows: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of ``rows`` to one prepared query (smaller is closer)."""
    r, q = rows.astype(np.float64), q.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((r - q) ** 2).sum(axis=1))
    dots = r @ q
    return 1.0 - dots if metric == "cosine" else -dots


def _recall_by_id(found: list[list[int | str | None]], truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth.tolist(), strict=True)]))


def markdown(name: str, rows: list[KRow], n_buckets: int | None = None) -> str:
    """A small table for one data set (bench/REPORT.md)."""
    lines = [
        f"### Recall for any k: {name}" + (f" ({n_buckets} buckets)" if n_buckets else ""),
        "",
        "| k | target | probes (mean) | recall@k | (by id) | bytes per query | % of collection read "
        "| k = 10 curve for every k (the old rule): probes → recall@k |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.k} | {r.target:.2f} | {r.probes:.1f} | {r.recall:.3f} | {r.recall_by_id:.3f} "
            f"| {_fmt_bytes(r.bytes_per_query)} "
            f"| {r.share_read * 100:.1f}% | {r.before_probes:.1f} → {r.before_recall:.3f} |"
        )
    lines += [
        "",
        "Held-out queries, one per request, default build (float16 buckets); recall@k against exact "
        "brute force over the float32 vectors, a result as near as the k-th true neighbour counting "
        "(exact duplicates); by id: only the ids brute force listed count. Probes include widening "
        "(a query that finds fewer than k vectors reads on).",
    ]
    return "\n".join(lines) + "\n"


def _fmt_bytes(b: float) -> str:
    return f"{b / 1e6:.2f} MB" if b >= 1e6 else f"{b / 1e3:.0f} kB"


def measure_section() -> str:
    """Build each data set with default parameters on moto and return the report section."""
    from bench.run import moto_s3
    from kdbuckets import BuildParams, build_index, make_collection

    datasets = [d for d in (synthetic_clustered(n=100_000), wordnet()) if d is not None]
    parts = [
        "## Recall for any k",
        "",
        "`recall_target` holds for the `k` asked: the build stores recall curves for k = 1 … 1,000 and a "
        "query reads the probes its k needs (larger of the two neighbouring stored k). Default builds, "
        "one query per request, recall@k against exact brute force over the float32 input (ties "
        "counted as hits; `by id` without).",
        "",
    ]
    with moto_s3():
        store = ObjectStore("bench")
        for i, ds in enumerate(datasets):
            slug = f"recall-k-{i}"
            print(f"== recall for any k: {ds.name}", flush=True)
            data = make_collection(ds.vectors, None, ds.labels, metric=ds.metric)
            build = build_index(store, slug, data, BuildParams(metric=ds.metric), replace=True)
            t0 = time.perf_counter()
            truth = exact_truth(ds)
            truth_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            rows = recall_for_k(store, slug, ds, truth)
            parts += [
                markdown(ds.name, rows, build.buckets),
                f"build: calibrate {build.timings_ms['calibrate_ms'] / 1000:.2f} s of "
                f"{build.timings_ms['total_ms'] / 1000:.1f} s; ground truth {truth_s:.1f} s; "
                f"queries {time.perf_counter() - t0:.1f} s",
                "",
            ]
    parts.append("`python -m bench.run --only recall_k` reruns this section alone.")
    return "\n".join(parts) + "\n"


def main() -> None:
    """Standalone: print the section."""
    print(measure_section())


if __name__ == "__main__":
    main()
