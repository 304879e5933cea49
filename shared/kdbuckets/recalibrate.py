"""Re-measure a living collection's recall curves, so ``recall_target`` keeps its promise after writes.

The build measures recall-versus-probes on a sample of what it indexed. Writes then move the
data (upserted vectors are stored once, buckets split and merge), and the curve goes stale: on
a skewed toy set recall@10 at the default target fell from 0.95 to 0.76
(``python -m bench.write_maintenance``). ``recalibrate`` reads every bucket of the live version,
samples the collection as it is now (so recent writes are in the sample in proportion), computes
the exact neighbours and the position at which a query of *this* manifest reads each bucket
(:func:`kdbuckets.calibration.read_positions`), and publishes the same version's buckets with the
new curves — only the root changes, by compare-and-swap like any write. The response and
``describe`` report the drift: the probes the old and the new curve ask for at the default
target, and the recall the old probe count reaches now.

Cost: every non-empty bucket read once (as ``compact``) and O(sample × n) exact distances;
nothing but the root is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import catalog, tail
from .bucket import Bucket
from .calibration import KS, SAMPLE, curves_from_ranks, exact_neighbours, probes_for, read_positions
from .errors import InvalidRequest
from .manifest import Manifest
from .storage import ObjectStore

#: The target whose probes the drift report compares (the searcher's default).
DRIFT_TARGET = 0.95
#: Where a manifest counts the rows merged into its buckets since its curves were measured
#: (a merge re-measures them in its own commit when they pass a share: kdbuckets.writer).
MERGED_SINCE_CALIBRATION = "merged_since_calibration"


@dataclass(frozen=True)
class Recalibration:
    collection: str
    version: str
    parent: str
    sample: int
    probes_before: int | None
    probes_after: int | None
    recall_before_probes: float | None  # recall@10 the old probe count reaches now

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def recalibrate(store: ObjectStore, collection: str, *, seed: int = 0) -> Recalibration:
    """Measure the live version's recall curves anew and publish them (CAS on HEAD)."""
    from .writer import load_buckets, load_segments  # the write path's readers

    snap = catalog.read_live(store, collection)
    m = snap.manifest
    nonempty = [b for b in range(m.n_buckets) if m.buckets.rows[b] > 0]
    if not nonempty:
        raise InvalidRequest("collection", f"{collection!r} is empty; nothing to calibrate")
    buckets = load_buckets(store, m, nonempty)
    pending = tail.overlay(load_segments(store, m), m.dim)
    version = catalog.new_version()
    curve, before, after, recall_then = measure(m, buckets, pending, m.version, seed=seed)
    new = dataclasses.replace(
        m,
        version=version,
        parent=m.version,
        created_at=catalog.now_iso(),
        extra={**m.extra, "calibration": curve, MERGED_SINCE_CALIBRATION: 0},
    )
    catalog.publish(store, new, snap.etag)
    return Recalibration(
        collection, new.version, m.version, int(curve.get("sample", 0)), before, after, recall_then
    )


def measure(
    m: Manifest, buckets: dict[int, Bucket], pending: tail.Overlay, version: str, *, seed: int = 0
) -> tuple[dict[str, Any], int | None, int | None, float | None]:
    """The recall curves of ``m`` measured on its ``buckets`` (every non-empty one), drift included.

    Returns the calibration to store (``measured_at`` = ``version``: the version whose buckets
    were measured), and the probes the old and the new curves ask for at :data:`DRIFT_TARGET`
    with the recall@10 the old count reaches now. A merge measures the version it is about to
    publish this way (:mod:`kdbuckets.writer`); :func:`recalibrate` the live one.
    """
    nonempty = sorted(buckets)
    # Rows the unmerged tail overrides are not part of the collection; the tail's own rows are
    # left out of the sample too: every query scans them, so they are found at any probe count.
    vectors, keys, owners = [], [], []
    for b in nonempty:
        bucket = buckets[b]
        keep = ~pending.hides(bucket.row_keys())
        vectors.append(bucket.vectors[keep].astype(np.float32))
        keys.append(bucket.row_keys()[keep])
        owners.append(np.full(int(keep.sum()), b, np.int64))
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    all_owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    order = np.argsort(all_keys, kind="stable")
    first = np.ones(len(order), bool)
    first[1:] = all_keys[order][1:] != all_keys[order][:-1]
    rows = order[first]  # one stored copy per vector: the row the truth is computed on
    primary = all_owner[rows]
    # the second copy of a replicated vector (at most two by the id directory's rule)
    secondary = np.full(len(rows), -1, np.int64)
    second = np.flatnonzero(~first)
    secondary[np.searchsorted(np.flatnonzero(first), second, side="right") - 1] = all_owner[order[second]]
    matrix = np.concatenate(vectors)[rows] if vectors else np.zeros((0, m.dim), np.float32)
    n = len(rows)
    old = m.extra.get("calibration")
    ranking = m.params.get("ranking", "centroid")
    if n < 2:
        curve: dict[str, Any] = {"k": 10, "sample": 0, "recall": [1.0] * m.n_buckets}
    else:
        ks = sorted({min(k, n - 1) for k in KS})
        rng = np.random.default_rng(seed + 1)
        sample = np.sort(rng.choice(n, min(SAMPLE, n), replace=False))
        queries = matrix[sample]
        truth = exact_neighbours(queries, matrix, sample, m.metric, ks[-1])
        positions = read_positions(queries, m, ranking)
        curve = curves_from_ranks(positions, primary[truth], secondary[truth], ks)
    before = probes_for(old, DRIFT_TARGET, m.n_buckets, 10)
    after = probes_for(curve, DRIFT_TARGET, m.n_buckets, 10)
    recall_then = None
    if before is not None and curve.get("recall"):
        ten = next((c["recall"] for c in [curve, *curve.get("curves", [])] if c["k"] == 10), curve["recall"])
        recall_then = float(ten[min(before, len(ten)) - 1])
    curve = {
        **curve,
        "measured_at": version,
        "drift": {"probes_before": before, "recall_before_probes": recall_then},
    }
    return curve, before, after, recall_then
