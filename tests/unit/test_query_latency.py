"""Query-path features for quality and latency: recall targets, replicated buckets, caches, rounds.

- ``recall_target`` picks probes from the manifest's calibration curve and reports them;
- vectors stored in two buckets come back once;
- a warm query issues exactly one round of GETs, even when HEAD is due for revalidation, and a
  cold one four (HEAD, manifest root, its parts, buckets), however many parts the manifest has —
  rounds are proven by holding each GET until its whole round is in flight, so nothing here
  depends on wall-clock time;
- the /tmp tier serves buckets through read-only memory maps and survives a new Searcher.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest

from kdbuckets import catalog, distances
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.calibration import probes_for
from kdbuckets.collection import make_collection
from kdbuckets.errors import InvalidRequest
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore
from kdbuckets.writer import write

HELD_OUT = 200


def clustered(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, d)) * 3.0
    return (centres[rng.integers(0, 30, n)] + rng.normal(size=(n, d))).astype(np.float32)


@pytest.fixture(scope="module")
def index(module_s3_store: ObjectStore) -> tuple[ObjectStore, np.ndarray]:
    vectors = clustered(4000 + HELD_OUT, 12, seed=3)[:4000]
    data = make_collection(vectors, None, None, metric="l2")
    build_index(
        module_s3_store,
        "lat",
        data,
        BuildParams(metric="l2", bucket_size=100, replicate=0.5, dtype="float32"),
    )
    return module_s3_store, vectors


def brute(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    d = ((queries[:, None, :] - vectors[None]) ** 2).sum(axis=2)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_recall_target_uses_the_calibrated_probes_and_reports_them(index: Any) -> None:
    store, vectors = index
    searcher = Searcher(store)
    manifest = searcher.manifest("lat")
    expected = probes_for(manifest.extra["calibration"], 0.9, manifest.n_buckets)
    result = searcher.search("lat", vectors[:5] + 0.01, k=10, recall_target=0.9)
    assert result.stats.probes == expected
    assert result.stats.recall_target == 0.9


def test_default_query_aims_at_recall_095_and_reaches_it_on_held_out_points(index: Any) -> None:
    store, vectors = index
    queries = clustered(4000 + HELD_OUT, 12, seed=3)[4000:]  # same distribution, not indexed
    result = Searcher(store).search("lat", queries, k=10)
    truth = brute(distances.prepare(vectors, "l2"), queries, 10)
    found = np.array(result.ids)
    recall = float(
        np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist(), strict=True)])
    )
    assert result.stats.recall_target == 0.95
    assert recall >= 0.9  # calibrated on the collection itself; held-out queries land close to it


def test_probes_and_recall_target_together_are_refused(index: Any) -> None:
    store, vectors = index
    with pytest.raises(InvalidRequest, match="probes"):
        Searcher(store).search("lat", vectors[:1], probes=3, recall_target=0.9)


def test_replicated_vectors_are_returned_once_and_exact_search_equals_brute_force(index: Any) -> None:
    store, vectors = index
    searcher = Searcher(store)
    assert searcher.manifest("lat").buckets.rows.sum() == 6000  # half the vectors are stored twice
    queries = clustered(4000 + HELD_OUT, 12, seed=3)[4000:4020]
    result = searcher.search("lat", queries, k=25, probes=10_000)
    for row in result.ids:
        assert len(row) == len(set(row))
    assert np.array_equal(np.array(result.ids), brute(vectors, queries, 25))


class Rounds:
    """``before-send`` hook proving which GETs are in flight together, by counting, never timing.

    ``sizes`` is the expected number of GETs in each round. Every GET waits, before it is sent,
    until all GETs of its round have arrived (a barrier): so a round of three can only pass if
    the library really issues those three at once. A library that serialised them would leave
    the first waiting alone, and the barrier breaks after ``timeout`` — a generous failure
    guard, not a measurement: a loaded machine makes correct code slower, never wrong.
    """

    def __init__(self, sizes: list[int], timeout: float = 60.0) -> None:
        self.sizes = sizes
        self.barriers = [threading.Barrier(n, timeout=timeout) for n in sizes]
        self.kinds: list[list[str]] = [[] for _ in sizes]
        self.extra: list[str] = []  # GETs beyond the expected rounds
        self.broken: list[int] = []  # rounds whose GETs never all arrived
        self.arrived = 0
        self.lock = threading.Lock()

    def __call__(self, request: Any, **_: Any) -> None:
        kind = _KIND.search(unquote(urlsplit(request.url).path))
        with self.lock:
            position, self.arrived = self.arrived, self.arrived + 1
            bounds = np.cumsum(self.sizes)
            which = int(np.searchsorted(bounds, position, side="right"))
            if which >= len(self.sizes):
                self.extra.append(kind[1] if kind else "other")
                return
            self.kinds[which].append(kind[1] if kind else "other")
        try:
            self.barriers[which].wait()
        except threading.BrokenBarrierError:
            with self.lock:
                self.broken.append(which)
            raise

    @contextmanager
    def watching(self, store: ObjectStore) -> Iterator[Rounds]:
        """Hold the store's GETs to this schedule inside the ``with`` block."""
        events = store.client.meta.events
        events.register("before-send.s3.GetObject", self)
        try:
            yield self
        finally:
            events.unregister("before-send.s3.GetObject", self)
            for barrier in self.barriers:
                barrier.abort()  # nobody may stay waiting on a round that will not fill


_KIND = re.compile(r"/(HEAD|manifests|parts|buckets|tail)(?:/|$)")


def test_a_warm_query_needs_one_round_of_gets_even_when_head_is_revalidated(index: Any) -> None:
    store, vectors = index
    searcher = Searcher(store, head_ttl=0.0)  # revalidate HEAD on every query
    searcher.search("lat", vectors[:1], k=5, probes=3)  # cold: HEAD, manifest, buckets
    searcher.buckets.clear()  # a big collection: this query's buckets are not cached

    with Rounds([4]).watching(store) as rounds:  # 3 buckets + the conditional GET of HEAD, at once
        result = searcher.search("lat", vectors[100:101], k=5, probes=3)

    assert result.stats.buckets_fetched == 3
    assert rounds.broken == []
    assert sorted(rounds.kinds[0]) == ["HEAD", "buckets", "buckets", "buckets"]
    assert rounds.extra == []


def test_a_cold_query_needs_at_most_four_rounds(index: Any) -> None:
    store, vectors = index

    with Rounds([1, 1, 1, 3]).watching(store) as rounds:  # HEAD → root → its part → the buckets
        result = Searcher(store).search("lat", vectors[:1], k=5, probes=3)

    assert result.stats.buckets_fetched == 3
    assert rounds.broken == []
    assert rounds.kinds == [["HEAD"], ["manifests"], ["parts"], ["buckets", "buckets", "buckets"]]
    assert rounds.extra == []


def test_a_cold_query_of_a_collection_in_many_parts_needs_four_rounds(module_s3_store: ObjectStore) -> None:
    """HEAD → root → the parts it routes to, together → its buckets, together; warm: one round."""
    vectors = clustered(3000, 12, seed=8)
    data = make_collection(vectors, None, None, metric="l2")
    params = BuildParams(metric="l2", bucket_size=20, part_buckets=8, dtype="float32")
    build_index(module_s3_store, "many", data, params)
    root_parts = 8  # hierarchy.ROUTE_PARTS: the first tier

    with Rounds([1, 1, root_parts, 3]).watching(module_s3_store) as rounds:
        cold = Searcher(module_s3_store, head_ttl=0.0)
        result = cold.search("many", vectors[:1], k=5, probes=3)

    assert result.stats.parts_fetched == root_parts
    assert rounds.broken == []
    assert rounds.kinds[:3] == [["HEAD"], ["manifests"], ["parts"] * root_parts]
    assert rounds.kinds[3] == ["buckets"] * 3
    assert rounds.extra == []
    cold.buckets.clear()
    with Rounds([4]).watching(module_s3_store) as warm:  # HEAD revalidation + 3 buckets, at once
        again = cold.search("many", vectors[:1], k=5, probes=3)
    assert again.stats.parts_fetched == 0
    assert sorted(warm.kinds[0]) == ["HEAD", "buckets", "buckets", "buckets"]
    assert warm.extra == []


def test_the_tail_is_read_in_the_same_round_as_the_buckets_and_a_warm_query_is_one_round(
    module_s3_store: ObjectStore,
) -> None:
    """HEAD → root → its part → buckets and tail segments together; warm: one round again."""
    vectors = clustered(600, 12, seed=9)
    data = make_collection(vectors, None, None, metric="l2")
    build_index(module_s3_store, "tailq", data, BuildParams(metric="l2", bucket_size=20, tail_rows=100))
    new = clustered(30, 12, seed=10)
    for start in (0, 20, 25):  # segments of 20, 5 and 5 rows: the last absorbs the one before
        ids = np.arange(10_000 + start, 10_000 + start + (20 if start == 0 else 5))
        write(
            module_s3_store,
            "tailq",
            upserts=make_collection(new[start : start + len(ids)], ids, None, metric="l2"),
        )
    segments = len(catalog.read_live(module_s3_store, "tailq").manifest.tail)
    assert segments == 2

    with Rounds([1, 1, 1, 3 + segments]).watching(module_s3_store) as rounds:
        cold = Searcher(module_s3_store, head_ttl=0.0)
        result = cold.search("tailq", new[:1], k=5, probes=3)

    assert rounds.broken == []
    assert rounds.extra == []
    assert sorted(rounds.kinds[3]) == ["buckets"] * 3 + ["tail"] * segments
    assert (result.stats.segments_fetched, result.stats.tail_rows, result.stats.fetch_rounds) == (2, 30, 1)
    assert result.ids[0][0] == 10_000  # found in the tail
    cold.buckets.clear()
    with Rounds([4]).watching(module_s3_store) as warm:  # HEAD revalidation + 3 buckets; segments cached
        again = cold.search("tailq", new[:1], k=5, probes=3)
    assert sorted(warm.kinds[0]) == ["HEAD", "buckets", "buckets", "buckets"]
    assert warm.extra == []
    assert again.stats.segments_fetched == 0
    assert again.ids == result.ids


def test_the_disk_tier_serves_buckets_through_read_only_maps(index: Any, tmp_path: Any) -> None:
    store, vectors = index
    first = Searcher(store, disk_dir=str(tmp_path))
    expected = first.search("lat", vectors[:3], k=5, probes=4)
    second = Searcher(store, disk_dir=str(tmp_path))  # a new process would see the same files
    result = second.search("lat", vectors[:3], k=5, probes=4)
    assert result.stats.buckets_fetched == 0
    assert result.ids == expected.ids
    np.testing.assert_array_equal(result.distances, expected.distances)
    bucket = next(iter(second.buckets._items.values()))[0]
    assert not bucket.vectors.flags.writeable  # a shared, read-only mapping


def test_the_disk_tier_stays_within_its_byte_budget(index: Any, tmp_path: Any) -> None:
    store, vectors = index
    searcher = Searcher(store, disk_dir=str(tmp_path), disk_bytes=200_000)
    searcher.search("lat", vectors[:50], k=5, probes=8)
    used = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert 0 < used <= 200_000
