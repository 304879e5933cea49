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

Cost: every non-empty bucket read in rounds of at most :data:`MEASURE_ROUND_BYTES` decoded
(once when the collection fits one round, else three times: keys, the sample, the neighbours),
16 bytes held per stored row, and O(sample × n) exact distances; nothing but the root is
written. A merge that has merged 10% of the collection since the last measurement runs the same
measurement on the version it publishes (:mod:`kdbuckets.writer`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import catalog, scoring, tail
from .bucket import Bucket
from .calibration import BLOCK, KS, SAMPLE, curves_from_ranks, nearest_in_blocks, probes_for, read_positions
from .errors import InvalidRequest
from .manifest import Manifest
from .storage import ObjectStore

#: The target whose probes the drift report compares (the searcher's default).
DRIFT_TARGET = 0.95
#: Decoded bucket bytes a measurement holds at once (beyond them it reads the buckets in rounds).
MEASURE_ROUND_BYTES = 256 << 20
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
    if not (m.buckets.rows > 0).any():
        raise InvalidRequest("collection", f"{collection!r} is empty; nothing to calibrate")
    pending = tail.overlay(load_segments(store, m), m.dim)
    version = catalog.new_version()
    curve, before, after, recall_then = measure(
        m, lambda which: load_buckets(store, m, which), pending, m.version, seed=seed
    )
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
    m: Manifest,
    load: Callable[[list[int]], dict[int, Bucket]],
    pending: tail.Overlay,
    version: str,
    *,
    seed: int = 0,
    round_bytes: int = MEASURE_ROUND_BYTES,
) -> tuple[dict[str, Any], int | None, int | None, float | None]:
    """The recall curves of ``m``, measured on its buckets as ``load(bucket numbers)`` returns them.

    Returns the calibration to store (``measured_at`` = ``version``: the version whose buckets
    were measured), and the probes the old and the new curves ask for at
    :data:`DRIFT_TARGET` with the recall@10 the old count reaches now. A merge measures the
    version it is about to publish this way (:mod:`kdbuckets.writer`); :func:`recalibrate` the
    live one.

    Memory is bounded by ``round_bytes`` of decoded buckets plus 16 bytes per stored row: the
    buckets are read in rounds — once when they fit one round; else three times (their keys,
    the sample's vectors, then the exact neighbours streamed round by round).
    """
    nonempty = np.flatnonzero(m.buckets.rows > 0)
    rounds = scoring.plan_rounds(nonempty, m.buckets.sizes, m.dtype, round_bytes)
    held: dict[int, Bucket] = load(nonempty.tolist()) if len(rounds) == 1 else {}

    def each_round() -> Iterator[dict[int, Bucket]]:
        for group in rounds:
            yield held if held else load(group.tolist())

    # Pass 1: which stored rows are live (not overridden by the tail), and their keys.
    keys, owners, rows_at = [], [], []
    span: dict[int, tuple[int, int]] = {}  # bucket → its entries in the arrays below
    centre = np.zeros(m.dim, np.float64)
    total = 0
    for got in each_round():
        for b in sorted(got):
            bucket = got[b]
            keep = np.flatnonzero(~pending.hides(bucket.row_keys()))
            span[b] = (total, total + len(keep))
            total += len(keep)
            keys.append(bucket.row_keys()[keep])
            owners.append(np.full(len(keep), b, np.int64))
            rows_at.append(keep)
            centre += bucket.vectors[keep].sum(axis=0, dtype=np.float64)
    all_keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
    all_owner = np.concatenate(owners) if owners else np.zeros(0, np.int64)
    all_row = np.concatenate(rows_at) if rows_at else np.zeros(0, np.int64)
    order = np.argsort(all_keys, kind="stable")
    first = np.ones(len(order), bool)
    first[1:] = all_keys[order][1:] != all_keys[order][:-1]
    unique = order[first]  # one stored copy per vector: the row the truth is computed on
    primary = all_owner[unique]
    # the second copy of a replicated vector (at most two by the id directory's rule)
    secondary = np.full(len(unique), -1, np.int64)
    second = np.flatnonzero(~first)
    secondary[np.searchsorted(np.flatnonzero(first), second, side="right") - 1] = all_owner[order[second]]
    n = len(unique)
    old = m.extra.get("calibration")
    if n < 2:
        curve: dict[str, Any] = {"k": 10, "sample": 0, "recall": [1.0] * m.n_buckets}
    else:
        ks = sorted({min(k, n - 1) for k in KS})
        rng = np.random.default_rng(seed + 1)
        sample = np.sort(rng.choice(n, min(SAMPLE, n), replace=False))
        centre = (centre / max(len(all_keys), 1)).astype(np.float32) if m.metric == "l2" else None
        queries = _vectors_of(each_round(), all_owner[unique[sample]], all_row[unique[sample]], m.dim)
        number = np.full(len(all_keys), -1, np.int64)  # each stored row's unique-row number, or -1
        number[unique] = np.arange(n)
        numbering = _Numbering(span, all_row, number)
        truth = _streamed_neighbours(each_round(), numbering, queries, sample, m.metric, ks[-1], centre)
        positions = read_positions(queries, m, m.params.get("ranking", "centroid"))
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


@dataclass(frozen=True)
class _Numbering:
    """Which rows of each bucket are a vector's one counted copy, and its number among them."""

    span: dict[int, tuple[int, int]]
    row: np.ndarray
    number: np.ndarray

    def of(self, b: int, count: int) -> np.ndarray:
        """(count,) the number of each row of bucket ``b``; -1 for replicas and hidden rows."""
        out = np.full(count, -1, np.int64)
        start, end = self.span.get(b, (0, 0))
        out[self.row[start:end]] = self.number[start:end]
        return out


def _vectors_of(
    rounds: Iterator[dict[int, Bucket]], owner: np.ndarray, row: np.ndarray, dim: int
) -> np.ndarray:
    """The vectors at (``owner``, ``row``), in that order, picked from the buckets as they stream by."""
    out = np.zeros((len(owner), dim), np.float32)
    for got in rounds:
        for b, bucket in got.items():
            mine = np.flatnonzero(owner == b)
            out[mine] = bucket.vectors[row[mine]]
    return out


def _streamed_neighbours(
    rounds: Iterator[dict[int, Bucket]],
    numbering: _Numbering,
    queries: np.ndarray,
    own: np.ndarray,
    metric: str,
    k: int,
    centre: np.ndarray | None,
) -> np.ndarray:
    """(nq, k) numbers of each query's k nearest counted rows, nearest first, its own (``own``) left out."""

    def blocks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for got in rounds:
            for b in sorted(got):
                ids = numbering.of(b, got[b].count)
                rows = np.flatnonzero(ids >= 0)
                for start in range(0, len(rows), BLOCK):
                    sel = rows[start : start + BLOCK]
                    yield got[b].vectors[sel], ids[sel]

    return nearest_in_blocks(queries, blocks(), own, metric, k, centre)
