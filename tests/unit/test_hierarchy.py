"""The hierarchical manifest: a root routes queries to parts, parts hold the bucket tables.

- buckets are grouped into subtrees of at most ``part_buckets`` leaves, each bucket in one part;
- a query ranks exactly as the calibration measured (tiers of parts), and reading every bucket
  gives the exact answer;
- a write re-PUTs only the parts it changed; gc and rollback keep every part a kept version needs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kdbuckets import catalog, layout
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.calibration import read_positions
from kdbuckets.collection import make_collection
from kdbuckets.gc import collect_garbage
from kdbuckets.hierarchy import group_buckets, part_buckets_for, refine_groups, routing_centroids
from kdbuckets.manifest import Root, encode_hierarchy
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore
from kdbuckets.versions import rollback
from kdbuckets.views import in_memory
from kdbuckets.writer import write

N, D = 3000, 16
PART_BUCKETS = 8


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, D)) * 4.0
    return (centres[rng.integers(0, 40, n)] + rng.normal(size=(n, D))).astype(np.float32)


def build(store: ObjectStore, name: str, vectors: np.ndarray, **params: Any) -> str:
    data = make_collection(vectors, np.arange(len(vectors)), None, metric="l2")
    params = {"part_buckets": PART_BUCKETS, **params}
    p = BuildParams(metric="l2", bucket_size=20, dtype="float32", **params)
    return build_index(store, name, data, p).version


HELD_OUT = clustered(N + 300, seed=5)[N:]  # same clusters as the collection, not in it


@pytest.fixture(scope="module")
def hier(module_s3_store: ObjectStore) -> tuple[ObjectStore, np.ndarray]:
    vectors = clustered(N, seed=5)
    build(module_s3_store, "hier", vectors)
    return module_s3_store, vectors


def brute(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    d = ((queries[:, None, :].astype(np.float64) - vectors[None]) ** 2).sum(axis=2)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def test_parts_start_as_subtrees_and_cover_every_bucket_once(hier: Any) -> None:
    store, _ = hier
    m = catalog.read_live(store, "hier").manifest
    subtrees = group_buckets(m.tree, PART_BUCKETS)
    assert max(len(g) for g in subtrees) <= PART_BUCKETS
    assert sorted(np.concatenate(subtrees).tolist()) == list(range(m.n_buckets))
    root, _ = catalog.load_root(store, "hier", m.version)
    assert isinstance(root, Root)
    assert len(root.parts) > 10
    assert int(root.parts.buckets.sum()) == m.n_buckets
    assert m.bucket_part is not None
    assert np.bincount(m.bucket_part).tolist() == root.parts.buckets.tolist()
    assert len(m.stored) == len(root.parts) + 1  # every part and the tree


def test_lloyd_over_bucket_centroids_makes_parts_compact(hier: Any) -> None:
    store, _ = hier
    m = catalog.read_live(store, "hier").manifest
    c, rows = m.buckets.centroids, m.buckets.rows

    def spread(groups: list[np.ndarray]) -> float:
        routing = routing_centroids(c, rows, groups)
        return float(sum(((c[g] - routing[i]) ** 2).sum() for i, g in enumerate(groups)))

    subtrees = group_buckets(m.tree, PART_BUCKETS)
    assert spread(refine_groups(subtrees, c, rows)) < spread(subtrees)


def test_part_size_follows_the_square_root_rule() -> None:
    assert part_buckets_for(100) == 32  # never below the floor
    assert part_buckets_for(100_000) == 128  # √(100,000 / 8) = 112 → 128
    assert part_buckets_for(1_000_000) == 256  # √(1,000,000 / 8) = 354 → 256 (nearest in log scale)


def test_a_query_reads_its_first_tier_of_parts_and_ranks_as_calibrated(hier: Any) -> None:
    store, vectors = hier
    searcher = Searcher(store)
    m = searcher.manifest("hier")
    queries = vectors[:40] + 0.05
    positions = read_positions(queries, m, "centroid")
    view = in_memory(m)
    for probes in (1, 5, 30):
        lists = view.rank(queries, probes)  # reads the parts it needs: global_ids grows
        ranked = view.global_ids[lists]
        expected = np.argsort(positions, axis=1, kind="stable")[:, :probes]
        np.testing.assert_array_equal(ranked, expected)
    result = Searcher(store).search("hier", queries[:1], k=5, probes=5)
    assert result.stats.parts_fetched == m.route_parts  # the first tier only
    assert result.stats.manifest_bytes < catalog.read_live(store, "hier").manifest_bytes / 2


def test_reading_every_bucket_is_exact(hier: Any) -> None:
    store, vectors = hier
    queries = clustered(20, seed=99)
    m = Searcher(store).manifest("hier")
    result = Searcher(store).search("hier", queries, k=10, probes=m.n_buckets)
    assert result.ids == brute(vectors, queries, 10).tolist()


def test_the_calibration_target_holds_on_held_out_queries(hier: Any) -> None:
    store, vectors = hier
    queries = HELD_OUT
    result = Searcher(store).search("hier", queries, k=10, recall_target=0.9)
    truth = brute(vectors, queries, 10)
    recall = np.mean([len(set(r) & set(t)) / 10 for r, t in zip(result.ids, truth.tolist(), strict=True)])
    assert recall >= 0.9


def test_a_write_puts_only_the_parts_it_changed_and_every_id_stays_findable(s3_store: ObjectStore) -> None:
    vectors = clustered(N, seed=5)
    build(s3_store, "w", vectors, tail_rows=0)  # a commit to the buckets (a tail one PUTs no part)
    before = catalog.read_live(s3_store, "w").manifest
    puts: list[str] = []
    s3_store.client.meta.events.register(
        "before-parameter-build.s3.PutObject", lambda params, **_: puts.append(params["Key"])
    )
    new = vectors[:3] + 0.01
    write(s3_store, "w", upserts=make_collection(new, np.array([N, N + 1, N + 2]), None, metric="l2"))
    write(s3_store, "w", deletes=np.array([5, 6]))
    after = catalog.read_live(s3_store, "w").manifest
    part_puts = [k for k in puts if "/parts/" in k]
    assert 1 <= len(part_puts) <= 4  # the parts holding the touched buckets, nothing else
    assert len(after.stored - before.stored) == len(set(part_puts))
    assert after.count == N + 1
    found = Searcher(s3_store).search("w", np.concatenate([new, vectors[7:8]]), k=1, probes=after.n_buckets)
    assert [r[0] for r in found.ids] == [N, N + 1, N + 2, 7]
    gone = Searcher(s3_store).search("w", vectors[5:7], k=1, probes=after.n_buckets)
    assert [r[0] for r in gone.ids] != [5, 6]


def test_gc_and_rollback_keep_every_part_a_kept_version_needs(s3_store: ObjectStore) -> None:
    from datetime import UTC, datetime, timedelta

    vectors = clustered(N, seed=5)
    v1 = build(s3_store, "g", vectors)
    write(s3_store, "g", deletes=np.arange(0, 300))
    later = datetime.now(UTC) + timedelta(days=2)
    collect_garbage(s3_store, "g", keep_last=2, grace_seconds=60, now=later)
    assert rollback(s3_store, "g", v1) == v1
    m = catalog.read_live(s3_store, "g").manifest  # every part and bucket of v1 is still there
    assert m.version == v1
    result = Searcher(s3_store).search("g", vectors[:2], k=1, probes=m.n_buckets)
    assert [r[0] for r in result.ids] == [0, 1]
    collect_garbage(s3_store, "g", keep_last=1, grace_seconds=60, now=later + timedelta(days=1))
    left = {o.key for o in s3_store.list_objects("g/parts/")}
    assert {layout.part_key("g", fp) for fp in m.stored} <= left
    assert catalog.read_live(s3_store, "g").manifest.version == v1


@pytest.mark.parametrize("part_buckets", [0, PART_BUCKETS])
def test_a_version_read_back_encodes_to_the_very_same_parts(s3_store: ObjectStore, part_buckets: int) -> None:
    """What lets a write re-PUT only the parts it changed: unchanged content, unchanged objects."""
    name = f"same-{part_buckets}"
    build(s3_store, name, clustered(600, seed=3), part_buckets=part_buckets)
    m = catalog.read_live(s3_store, name).manifest
    assert set(encode_hierarchy(m).objects) == set(m.stored)
