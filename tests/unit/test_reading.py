"""Reading a version back without a search (kdbuckets.reading), called as a library.

Fetch, list and count return each id exactly once although a replicated collection stores a
quarter of its vectors twice, return what was stored bit for bit, and cost the GETs the
module documents.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from kdbuckets import catalog, reading, writer
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.directory import Shard
from kdbuckets.errors import InvalidRequest
from kdbuckets.filters import parse_filter
from kdbuckets.storage import ObjectStore

N, DIM = 900, 8
RNG = np.random.default_rng(11)
VECTORS = RNG.normal(size=(N, DIM)).astype(np.float32)
IDS = np.array([f"doc-{i:04d}" for i in range(N)])
LABELS = np.array([f"topic-{i % 5}" for i in range(N)])
METADATA = [{"i": i, "even": i % 2 == 0} if i % 3 else None for i in range(N)]


@dataclass(frozen=True)
class Built:
    store: ObjectStore
    replicated: str  # string ids, labels, metadata, 25% of vectors stored twice (the default)
    plain: str  # integer ids, no replication


@pytest.fixture(scope="module")
def built(module_s3_store: ObjectStore) -> Built:
    store = module_s3_store
    data = make_collection(VECTORS, IDS, LABELS, metric="l2", metadata=METADATA)
    build_index(store, "rep", data, BuildParams(metric="l2", dtype="float32", bucket_size=60))
    plain = make_collection(VECTORS, np.arange(N, dtype=np.int64) * 7, None, metric="l2")
    build_index(
        store, "plain", plain, BuildParams(metric="l2", dtype="float32", bucket_size=60, replicate=0.0)
    )
    return Built(store, "rep", "plain")


@pytest.fixture(autouse=True)
def _cold_shard_cache() -> Iterator[None]:
    reading.SHARDS.clear()
    yield
    reading.SHARDS.clear()


def stored_rows(store: ObjectStore, name: str) -> int:
    return int(catalog.read_live(store, name).manifest.buckets.rows.sum())


# -- fetch -----------------------------------------------------------------------------------
def test_fetch_returns_the_stored_vector_label_and_metadata_of_each_id(built: Built) -> None:
    rows = [3, 0, 899, 451]
    result = reading.fetch(built.store, built.replicated, [IDS[r] for r in rows], include_vectors=True)
    assert [v["id"] for v in result.vectors] == [IDS[r] for r in rows]  # request order
    for rec, r in zip(result.vectors, rows, strict=True):
        assert rec["vector"] == VECTORS[r].tolist()  # float32, l2: stored exactly as given
        assert rec["label"] == LABELS[r]
        assert rec["metadata"] == METADATA[r]
    assert result.missing == []


def test_fetch_lists_unknown_ids_as_missing_in_request_order(built: Built) -> None:
    result = reading.fetch(built.store, built.replicated, ["nope-2", "doc-0007", "nope-1"])
    assert [v["id"] for v in result.vectors] == ["doc-0007"]
    assert result.missing == ["nope-2", "nope-1"]
    assert "vector" not in result.vectors[0]  # include_vectors defaults to False


def test_fetch_costs_one_round_of_id_shards_then_one_of_buckets(built: Built) -> None:
    opening = reading.count(built.store, built.replicated).stats.s3_gets  # HEAD + manifest objects
    ids = [IDS[r] for r in range(0, N, 90)]
    stats = reading.fetch(built.store, built.replicated, ids).stats
    m = catalog.read_live(built.store, built.replicated).manifest
    assert stats.id_shards_fetched <= len(m.id_shards)
    assert 1 <= stats.buckets_fetched <= len(ids)
    assert stats.s3_gets == opening + stats.id_shards_fetched + stats.buckets_fetched


def test_fetch_of_integer_ids_given_as_text_reads_them_as_integers(built: Built) -> None:
    result = reading.fetch(built.store, built.plain, ["14", "x", "15"], ids_from_text=True)
    assert [v["id"] for v in result.vectors] == [14]  # 15 is no multiple of 7: not stored
    assert result.missing == ["x", "15"]


def test_fetch_refuses_ids_of_the_other_kind_naming_ids(built: Built) -> None:
    with pytest.raises(InvalidRequest, match=r"^ids must be integers like the ids of 'plain'"):
        reading.fetch(built.store, built.plain, ["14"])


def test_fetch_bounds_the_ids_and_the_vectors_of_one_response(built: Built) -> None:
    with pytest.raises(InvalidRequest, match=r"^ids must hold at most 1000 ids, got 1001"):
        reading.fetch(built.store, built.replicated, [f"x{i}" for i in range(1001)])
    with pytest.raises(InvalidRequest, match=r"^ids asks for 1000 vectors of 384 dimensions.* 390 vectors"):
        reading.check_vector_budget(1000, 384, True, "ids")  # ~8 MB of JSON: over Lambda's 6 MB
    reading.check_vector_budget(1000, 384, False, "ids")  # ids, labels and metadata only: fine


# -- list ------------------------------------------------------------------------------------
@pytest.mark.parametrize("limit", [7, 60, 1000])
def test_list_pages_return_every_id_exactly_once(built: Built, limit: int) -> None:
    seen: list[str] = []
    cursor = None
    while True:
        page = reading.list_page(built.store, built.replicated, limit=limit, cursor=cursor)
        assert len(page.vectors) <= limit
        seen += [v["id"] for v in page.vectors]
        cursor = page.cursor
        if cursor is None:
            break
    assert stored_rows(built.store, built.replicated) > N  # some vectors really are stored twice
    assert sorted(seen) == sorted(IDS.tolist())


def test_a_page_carries_labels_metadata_and_optionally_vectors(built: Built) -> None:
    page = reading.list_page(built.store, built.replicated, limit=20, include_vectors=True)
    for rec in page.vectors:
        r = int(rec["id"].removeprefix("doc-"))
        assert (rec["label"], rec["metadata"], rec["vector"]) == (LABELS[r], METADATA[r], VECTORS[r].tolist())


def test_listing_an_unreplicated_collection_reads_no_id_directory(built: Built) -> None:
    page = reading.list_page(built.store, built.plain, limit=200)
    assert page.stats.id_shards_fetched == 0
    assert len(page.vectors) == 200


def test_a_warm_process_reads_each_id_shard_once_while_paging(built: Built) -> None:
    first = reading.list_page(built.store, built.replicated, limit=300)
    second = reading.list_page(built.store, built.replicated, limit=300, cursor=first.cursor)
    assert first.stats.id_shards_fetched >= 1
    assert second.stats.id_shards_fetched == 0
    assert second.stats.cache_hits >= 1


def test_a_cursor_is_refused_for_another_collection_or_when_forged(built: Built) -> None:
    cursor = reading.list_page(built.store, built.replicated, limit=5).cursor
    assert cursor is not None
    with pytest.raises(InvalidRequest, match=r"^cursor was returned by list for another collection"):
        reading.list_page(built.store, built.plain, cursor=cursor)
    for forged in ("nonsense", cursor[:-3], "e30", "x" * 2000):
        with pytest.raises(InvalidRequest, match=r"^cursor is not a cursor returned by list"):
            reading.list_page(built.store, built.replicated, cursor=forged)


def test_a_cursor_points_inside_the_version_it_names(built: Built) -> None:
    version = catalog.read_live(built.store, built.replicated).head.version
    beyond = reading.Cursor(built.replicated, version, 10_000, 0).encode()
    with pytest.raises(InvalidRequest, match=r"^cursor points past the end of version"):
        reading.list_page(built.store, built.replicated, cursor=beyond)
    with pytest.raises(InvalidRequest, match=r"^version differs from the version the cursor lists"):
        reading.list_page(built.store, built.replicated, cursor=beyond, version="other")


def test_list_limit_is_bounded_naming_limit(built: Built) -> None:
    for limit in (0, 1001):
        with pytest.raises(InvalidRequest, match=r"^limit must be between 1 and 1000"):
            reading.list_page(built.store, built.replicated, limit=limit)


# -- count -----------------------------------------------------------------------------------
def test_count_without_a_filter_reads_no_bucket(built: Built) -> None:
    result = reading.count(built.store, built.replicated)
    assert (result.count, result.filtered, result.stats.buckets_fetched) == (N, False, 0)


def test_count_with_a_filter_reads_every_bucket_once_and_counts_replicas_once(built: Built) -> None:
    result = reading.count(built.store, built.replicated, filter=parse_filter({"even": True}))
    expected = sum(1 for m in METADATA if m is not None and m["even"])
    m = catalog.read_live(built.store, built.replicated).manifest
    assert result.count == expected
    assert result.stats.buckets_fetched == int((m.buckets.rows > 0).sum())


def test_reads_of_a_pinned_version_see_it_after_later_writes(s3_store: ObjectStore) -> None:
    data = make_collection(VECTORS[:100], IDS[:100], None, metric="l2")
    old = build_index(s3_store, "docs", data, BuildParams(metric="l2", bucket_size=30)).version
    writer.write(s3_store, "docs", deletes=np.array(["doc-0001"]))
    assert reading.fetch(s3_store, "docs", ["doc-0001"]).missing == ["doc-0001"]
    pinned = reading.fetch(s3_store, "docs", ["doc-0001"], version=old)
    assert [v["id"] for v in pinned.vectors] == ["doc-0001"]
    assert reading.count(s3_store, "docs", version=old).count == 100


# -- the shard cache -------------------------------------------------------------------------
def test_the_shard_cache_evicts_least_recently_used_shards_beyond_its_budget() -> None:
    def shard(n: int) -> Shard:
        return Shard(np.arange(n, dtype=np.int64), np.zeros(n, np.int32), np.zeros(n, np.int32))

    cache = reading._ShardCache(budget=3 * 16 * 100)  # three shards of 100 entries
    for i in range(3):
        cache.put((f"fp{i}", 1, 0, 1), shard(100))
    assert cache.get(("fp0", 1, 0, 1)) is not None  # now the most recently used
    cache.put(("fp3", 1, 0, 1), shard(100))
    assert cache.get(("fp1", 1, 0, 1)) is None
    assert all(cache.get((f"fp{i}", 1, 0, 1)) is not None for i in (0, 2, 3))
    cache.put(("huge", 1, 0, 1), shard(1000))  # larger than the whole budget: not kept
    assert cache.get(("huge", 1, 0, 1)) is None
    assert cache.used <= cache.budget
