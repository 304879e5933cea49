"""Recalibration: after writes, the recall curves are measured anew on the collection as it is.

- the new curve is published as a new version with the same buckets and parts (only the root is
  written), and the response and ``describe`` report the drift;
- after writes piled onto one spot the build's curve is optimistic: recalibrated, queries read
  more buckets and recall rises (``python -m bench.write_maintenance`` measures it).
"""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import catalog, tail, writer
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.calibration import exact_neighbours
from kdbuckets.collection import make_collection
from kdbuckets.recalibrate import measure, recalibrate
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore
from kdbuckets.versions import describe_version
from kdbuckets.writer import write

D = 32


def recall(store: ObjectStore, live: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> tuple[float, int]:
    found = Searcher(store).search("cal", queries, k=10)
    truth = ids[exact_neighbours(queries, live, np.full(len(queries), -1), "l2", 10)]
    hits = [len(set(f) & set(t)) for f, t in zip(found.ids, truth.tolist(), strict=True)]
    return float(np.mean(hits) / 10), found.stats.probes


def skewed_writes(store: ObjectStore) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """3,000 clustered vectors, then 10 writes of 150 piled onto one spot (to the buckets at
    once: no tail); returns the live vectors, their ids and 200 queries near them."""
    rng = np.random.default_rng(5)
    centres = rng.normal(size=(40, D))
    base = (centres[rng.integers(0, 40, 3000)] + rng.normal(scale=0.35, size=(3000, D))).astype(np.float32)
    hot = centres[0] + rng.normal(scale=0.25, size=(4, D))
    added = (hot[rng.integers(0, 4, 1500)] + rng.normal(scale=0.15, size=(1500, D))).astype(np.float32)
    params = BuildParams(metric="l2", bucket_size=50, tail_rows=0)
    build_index(store, "cal", make_collection(base, np.arange(3000), None, metric="l2"), params)
    for start in range(0, 1500, 150):
        ids = np.arange(3000 + start, 3150 + start)
        write(store, "cal", upserts=make_collection(added[start : start + 150], ids, None, metric="l2"))
    live, ids = np.concatenate([base, added]), np.arange(4500)
    pool = np.concatenate([base[:750], added])
    queries = (
        pool[rng.choice(len(pool), 200, replace=False)] + rng.normal(scale=0.05, size=(200, D))
    ).astype(np.float32)
    return live, ids, queries


def test_recalibration_after_skewed_writes_reads_more_and_finds_more(
    s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "RECALIBRATE_SHARE", 1e9)  # merges leave the build's curves
    live, ids, queries = skewed_writes(s3_store)
    before = catalog.read_live(s3_store, "cal").manifest
    stale, stale_probes = recall(s3_store, live, ids, queries)

    report = recalibrate(s3_store, "cal")

    fresh, fresh_probes = recall(s3_store, live, ids, queries)
    assert (report.probes_before, report.probes_after) == (stale_probes, fresh_probes)
    assert fresh_probes > stale_probes
    assert fresh > stale + 0.05
    after = catalog.read_live(s3_store, "cal").manifest
    assert after.version == report.version
    assert after.parent == before.version
    assert after.buckets.fingerprints == before.buckets.fingerprints
    assert after.stored == before.stored  # the same parts and tree: only the root is new
    described = describe_version(s3_store, "cal", after.version)["calibration"]
    assert described["measured_at"] == before.version
    assert described["drift"]["probes_before"] == stale_probes
    assert described["merged_since"] == 0


def test_merges_remeasure_the_curves_once_a_tenth_of_the_collection_was_merged(
    s3_store: ObjectStore,
) -> None:
    live, ids, queries = skewed_writes(s3_store)
    m = catalog.read_live(s3_store, "cal").manifest

    # Each write merges 150 rows: the 2nd, 4th, … pass 10% of the count and re-measure in
    # their own commit, so the live curves are at most one write old.
    calibration = m.extra["calibration"]
    assert m.extra["merged_since_calibration"] <= 150
    measured = describe_version(s3_store, "cal", calibration["measured_at"])
    assert measured["calibration"]["merged_since"] == 0
    auto, probes = recall(s3_store, live, ids, queries)
    report = recalibrate(s3_store, "cal")  # measuring again now changes (almost) nothing
    assert report.probes_after is not None
    assert abs(report.probes_after - probes) <= 1
    assert auto >= 0.9


def test_a_measurement_in_rounds_of_bounded_memory_equals_the_one_held_at_once(
    s3_store: ObjectStore,
) -> None:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(1200, D)).astype(np.float32)
    build_index(
        s3_store,
        "cal",
        make_collection(vectors, np.arange(1200), None, metric="l2"),
        BuildParams(metric="l2", bucket_size=50, replicate=0.25),
    )
    write(
        s3_store,
        "cal",
        upserts=make_collection(
            rng.normal(size=(30, D)).astype(np.float32), np.arange(5, 35), None, metric="l2"
        ),
    )  # overrides 30 rows
    m = catalog.read_live(s3_store, "cal").manifest
    assert m.tail  # the tail hides 30 bucket rows from the measurement
    pending = tail.overlay(writer.load_segments(s3_store, m), D)
    loads: list[int] = []

    def load(which: list[int]) -> dict:
        loads.append(len(which))
        return writer.load_buckets(s3_store, m, which)

    whole, *_ = measure(m, load, pending, m.version)
    assert loads == [int((m.buckets.rows > 0).sum())]  # one round: every bucket read once
    loads.clear()
    rounds, *_ = measure(m, load, pending, m.version, round_bytes=int(m.buckets.sizes.max()) * 3)

    assert len(loads) > 3 * 10  # three passes of many rounds
    assert max(loads) <= 3
    assert rounds["sample"] == whole["sample"] == 512
    for a, b in zip([rounds, *rounds["curves"]], [whole, *whole["curves"]], strict=True):
        assert a["k"] == b["k"]
        np.testing.assert_allclose(a["recall"], b["recall"], atol=0.002)
