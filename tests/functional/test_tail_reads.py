"""fetch, list, count, export and query by example honour the unmerged tail of writes.

A write that fits the tail (``tail_rows``) PUTs a small segment and leaves the buckets and the
id directory as they were; the newest mention of an id wins. Every read must then answer from
the tail for the ids it mentions — new, overwritten, deleted, deleted and written again — and
from the buckets for the rest, exactly as if the tail had been merged. Each collection here
gets the same writes: ``tailed`` (string ids, replicated) and ``plain`` (integer ids, not
replicated) keep them all in the tail; ``merged`` has a tail small enough that the last write
merges it into the buckets, and must give the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from kdbuckets import ObjectStore, Searcher, catalog, reading, service
from kdbuckets.errors import InvalidRequest
from tests.conftest import INDEX_BUCKET, SOURCE_BUCKET

N, DIM = 240, 8
RNG = np.random.default_rng(17)
VECTORS = RNG.normal(size=(N, DIM)).astype(np.float32)
FRESH = RNG.normal(size=(20, DIM)).astype(np.float32)  # vectors the writes bring
# A cluster around doc 5's vector, so that searches near it meet every case: doc 5 (deleted in
# the tail), doc 3's stored vector (overwritten in the tail by a far one), new 0 and new 1
# (only in the tail). A read that ignored the tail would answer differently here.
CLUSTER = VECTORS[5].copy()
VECTORS[3] = CLUSTER + 0.01 * RNG.normal(size=DIM).astype(np.float32)
FRESH[0] = CLUSTER + 0.01 * RNG.normal(size=DIM).astype(np.float32)
FRESH[1] = CLUSTER + 0.02 * RNG.normal(size=DIM).astype(np.float32)
TAILED, PLAIN, MERGED = "tailed", "plain", "merged"
ALL = (TAILED, PLAIN, MERGED)
EVERY_BUCKET = 4096


@dataclass
class Scenario:
    """One collection, the writes it got, and the live items they leave (id → item)."""

    name: str
    ints: bool
    results: list[dict[str, Any]] = field(default_factory=list)
    live: dict[Any, dict[str, Any]] = field(default_factory=dict)

    def doc(self, i: int) -> Any:
        """An id the build stored."""
        return i * 7 if self.ints else f"doc-{i:04d}"

    def new(self, i: int) -> Any:
        """An id only a write brings."""
        return 100_000 + i if self.ints else f"new-{i}"

    def item(self, ident: Any, vector: np.ndarray, i: int) -> dict[str, Any]:
        label = ["red", "green", "blue"][i % 3]
        out: dict[str, Any] = {"id": ident, "vector": vector.tolist(), "label": label}
        if i % 4:
            out["metadata"] = {"year": 2000 + i % 30, "lang": ["en", "fr"][i % 2]}
        return out


def build(name: str, items: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
    event = {"collection": name, "source": {"items": items}, "metric": "l2", "dtype": "float32"}
    return service.build({**event, "bucket_size": 40, **params}, ObjectStore(INDEX_BUCKET))


def write(name: str, **event: Any) -> dict[str, Any]:
    return service.write({"collection": name, **event}, ObjectStore(INDEX_BUCKET))


def read(event: dict[str, Any]) -> dict[str, Any]:
    """A query-function answer from a fresh container (no warm caches)."""
    reading.SHARDS.clear()
    return service.query(event, Searcher(ObjectStore(INDEX_BUCKET)))


def apply_writes(s: Scenario) -> None:
    """New ids, overwrites, deletes (of a built id and of a tail id), a delete written back."""
    new = [s.item(s.new(i), FRESH[i], i) for i in range(6)]
    overwrite = [
        {**s.item(s.doc(3), FRESH[10], 3), "label": "blue", "metadata": {"year": 2029, "lang": "fr"}},
        {**s.item(s.doc(10), FRESH[11], 10), "label": "red"},
    ]
    deleted = [s.doc(5), s.doc(20), s.new(2)]
    back = [s.item(s.doc(20), FRESH[12], 20)] + [s.item(s.new(i), FRESH[i], i) for i in range(6, 10)]
    for items in (new, overwrite):
        s.results.append(write(s.name, operation="upsert", items=items))
        s.live.update({it["id"]: it for it in items})
    s.results.append(write(s.name, operation="delete", ids=deleted))
    for ident in deleted:
        del s.live[ident]
    s.results.append(write(s.name, operation="upsert", items=back))
    s.live.update({it["id"]: it for it in back})


@pytest.fixture(scope="module")
def scenarios(module_s3: Any) -> dict[str, Scenario]:
    """The three collections built and written once; weights of the writes: 6, 2, 3, 5."""
    out: dict[str, Scenario] = {}
    for name, ints, params in (
        (TAILED, False, {"tail_rows": 500}),
        (PLAIN, True, {"tail_rows": 500, "replicate": 0.0}),
        (MERGED, False, {"tail_rows": 12}),  # the last write (11 + 5 > 12) merges the tail
    ):
        s = Scenario(name, ints)
        items = [s.item(s.doc(i), VECTORS[i], i) for i in range(N)]
        build(name, items, **params)
        s.live = {it["id"]: it for it in items}
        apply_writes(s)
        out[name] = s
    return out


@pytest.fixture(params=ALL)
def s(request: pytest.FixtureRequest, scenarios: dict[str, Scenario]) -> Scenario:
    return scenarios[request.param]


def expected_record(item: dict[str, Any]) -> dict[str, Any]:
    """What fetch and list return for an item written as ``item`` (with include_vectors)."""
    meta = item.get("metadata")
    return {"id": item["id"], "label": item["label"], "metadata": meta, "vector": item["vector"]}


def fetch(s: Scenario, ids: list[Any]) -> dict[str, Any]:
    return read({"collection": s.name, "operation": "fetch", "ids": ids, "include_vectors": True})


def list_all(name: str, limit: int, **fields: Any) -> tuple[list[dict[str, Any]], list[str]]:
    """Every page of one listing: the records, and the cursors it returned."""
    records: list[dict[str, Any]] = []
    cursors: list[str] = []
    event = {"collection": name, "operation": "list", "limit": limit, "include_vectors": True, **fields}
    while True:
        page = read(event if not cursors else {**event, "cursor": cursors[-1]})
        records += page["vectors"]
        if page["cursor"] is None:
            return records, cursors
        cursors.append(page["cursor"])


# -- the writes ----------------------------------------------------------------------------
def test_the_writes_stay_in_the_tail_unless_it_is_full(s: Scenario) -> None:
    if s.name == MERGED:
        assert [r["merged"] for r in s.results] == [False, False, False, True]
        assert s.results[-1]["tail_segments"] == 0
    else:
        assert all(r["tail_segments"] > 0 and r["merged"] is False for r in s.results)
        assert catalog.read_live(ObjectStore(INDEX_BUCKET), s.name).manifest.tail
    assert s.results[-1]["count"] == len(s.live) == N + 10 - 2


# -- fetch ---------------------------------------------------------------------------------
def test_fetch_returns_a_vector_upserted_into_the_tail(s: Scenario) -> None:
    wanted = [s.new(0), s.new(9)]
    got = fetch(s, wanted)
    assert got["missing"] == []
    assert got["vectors"] == [expected_record(s.live[i]) for i in wanted]
    if s.name != MERGED:
        assert got["stats"]["segments_fetched"] > 0


def test_fetch_does_not_return_an_id_deleted_in_the_tail(s: Scenario) -> None:
    got = fetch(s, [s.doc(5), s.doc(6), s.new(2)])  # deleted from the buckets, kept, deleted from the tail
    assert got["missing"] == [s.doc(5), s.new(2)]
    assert [v["id"] for v in got["vectors"]] == [s.doc(6)]


def test_an_id_overwritten_in_the_tail_is_fetched_with_its_new_vector_and_metadata(s: Scenario) -> None:
    got = fetch(s, [s.doc(3), s.doc(10)])
    assert got["vectors"] == [expected_record(s.live[s.doc(3)]), expected_record(s.live[s.doc(10)])]
    assert got["vectors"][0]["vector"] == FRESH[10].tolist()
    assert got["vectors"][0]["metadata"] == {"year": 2029, "lang": "fr"}
    assert got["vectors"][1]["label"] == "red"


def test_an_id_deleted_then_written_again_is_fetched_with_its_last_vector(s: Scenario) -> None:
    got = fetch(s, [s.doc(20)])
    assert got["vectors"] == [expected_record(s.live[s.doc(20)])]
    assert got["vectors"][0]["vector"] == FRESH[12].tolist()


def test_fetch_answers_the_ids_the_tail_decides_without_the_directory_or_a_bucket(s: Scenario) -> None:
    if s.name == MERGED:
        pytest.skip("a merged collection has no tail")
    got = fetch(s, [s.new(1), s.doc(3), s.new(2)])
    assert [v["id"] for v in got["vectors"]] == [s.new(1), s.doc(3)]
    assert got["stats"]["id_shards_fetched"] == got["stats"]["buckets_fetched"] == 0
    m = catalog.read_live(ObjectStore(INDEX_BUCKET), s.name).manifest
    assert got["stats"]["segments_fetched"] == len(m.tail)


def test_fetch_of_every_live_id_returns_each_as_last_written(s: Scenario) -> None:
    ids = list(s.live)
    got = fetch(s, [*ids, s.doc(5), s.new(2)])
    assert got["vectors"] == [expected_record(s.live[i]) for i in ids]
    assert got["missing"] == [s.doc(5), s.new(2)]


# -- list and count ------------------------------------------------------------------------
def test_list_pages_every_live_id_exactly_once_with_the_tail_holding_new_overwritten_and_deleted_ids(
    s: Scenario,
) -> None:
    records, cursors = list_all(s.name, limit=40)  # pages are full: one ends 4 rows into the tail
    assert len(records) == len({r["id"] for r in records}) == len(s.live)
    assert sorted(records, key=lambda r: str(r["id"])) == sorted(
        (expected_record(it) for it in s.live.values()), key=lambda r: str(r["id"])
    )
    m = catalog.read_live(ObjectStore(INDEX_BUCKET), s.name).manifest
    inside_tail = [c for c in cursors if reading.Cursor.decode(c, s.name).bucket == m.n_buckets]
    assert bool(inside_tail) == (s.name != MERGED)  # some page ended inside the tail's rows


def test_count_equals_the_number_of_listed_ids(s: Scenario) -> None:
    records, _ = list_all(s.name, limit=1000)
    counted = read({"collection": s.name, "operation": "count"})
    assert counted["count"] == len(records) == len(s.live)


def test_count_with_a_filter_counts_the_tail_rows_and_not_the_rows_it_hides(s: Scenario) -> None:
    where = {"lang": "fr", "year": {"$gte": 2015}}
    counted = read({"collection": s.name, "operation": "count", "filter": where})
    meta = [it.get("metadata") for it in s.live.values()]
    expected = sum(1 for md in meta if md and md["lang"] == "fr" and md["year"] >= 2015)
    assert counted["count"] == expected
    assert s.live[s.doc(3)]["metadata"] == {"year": 2029, "lang": "fr"}  # counted once, as overwritten


def test_a_listing_keeps_its_version_while_more_writes_land_in_the_tail(module_s3: Any) -> None:
    name = "pinned-tail"
    items = [{"id": f"p-{i}", "vector": VECTORS[i].tolist()} for i in range(60)]
    build(name, items, tail_rows=500)
    first = write(name, operation="upsert", items=[{"id": "p-new", "vector": FRESH[0].tolist()}])
    assert first["tail_segments"] == 1
    ids: list[str] = []
    event = {"collection": name, "operation": "list", "limit": 9}
    page = read(event)
    pages = 0
    while True:
        ids += [v["id"] for v in page["vectors"]]
        assert page["version"] == first["version"]
        if page["cursor"] is None:
            break
        if pages == 0:  # a later write deletes a listed id, one still to come, and adds one
            later = write(name, operation="delete", ids=["p-0", "p-59", "p-new"])
            assert later["merged"] is False
            write(name, operation="upsert", items=[{"id": "p-later", "vector": FRESH[1].tolist()}])
        pages += 1
        page = read({**event, "cursor": page["cursor"]})
    assert sorted(ids) == sorted([f"p-{i}" for i in range(60)] + ["p-new"])
    now, _ = list_all(name, limit=1000)
    assert sorted(r["id"] for r in now) == sorted([f"p-{i}" for i in range(1, 59)] + ["p-later"])


# -- export --------------------------------------------------------------------------------
def test_export_after_tail_writes_builds_the_same_collection(s: Scenario) -> None:
    dest = f"s3://{SOURCE_BUCKET}/exports/{s.name}/"
    exported = service.write(
        {"collection": s.name, "operation": "export", "destination": dest}, ObjectStore(INDEX_BUCKET)
    )
    assert exported["count"] == len(s.live)
    if s.name != MERGED:
        assert exported["stats"]["segments_fetched"] > 0
    copy = f"{s.name}-copy"
    rebuilt = service.build({"collection": copy, **exported["build"]}, ObjectStore(INDEX_BUCKET))
    assert rebuilt["count"] == len(s.live)
    ids = list(s.live)
    again = read({"collection": copy, "operation": "fetch", "ids": ids, "include_vectors": True})
    assert again["vectors"] == [expected_record(s.live[i]) for i in ids]
    queries = RNG.normal(size=(5, DIM)).astype(np.float32).tolist()
    search = {"vectors": queries, "k": 8, "probes": EVERY_BUCKET}
    before = read({"collection": s.name, **search})["results"]
    after = read({"collection": copy, **search})["results"]
    assert [[h["id"] for h in hits] for hits in after] == [[h["id"] for h in hits] for hits in before]
    for old, new in zip(before, after, strict=True):
        assert [h["distance"] for h in new] == pytest.approx([h["distance"] for h in old], rel=1e-5)


# -- query by example ----------------------------------------------------------------------
def nearest(s: Scenario, vector: list[float], skip: tuple[Any, ...], k: int) -> list[Any]:
    ids = [i for i in s.live if i not in skip]
    x = np.array([s.live[i]["vector"] for i in ids], np.float64)
    d = np.linalg.norm(x - np.asarray(vector, np.float64), axis=1)
    return [ids[j] for j in np.argsort(d, kind="stable")[:k]]


def query(s: Scenario, **event: Any) -> dict[str, Any]:
    return read({"collection": s.name, "k": 5, "probes": EVERY_BUCKET, **event})


def test_query_by_an_id_that_lives_only_in_the_tail(s: Scenario) -> None:
    ident = s.new(0)
    vector = s.live[ident]["vector"]
    assert nearest(s, vector, (ident,), 1) == [s.new(1)]  # in the tail too (doc 5 was deleted)
    kept = query(s, ids=[ident], exclude_self=False)["results"][0]
    assert [h["id"] for h in kept] == nearest(s, vector, (), 5)
    assert kept[0]["id"] == ident
    assert kept[0]["distance"] == pytest.approx(0.0, abs=1e-5)
    excluded = query(s, ids=[ident])["results"][0]
    assert [h["id"] for h in excluded] == nearest(s, vector, (ident,), 5)


def test_query_by_an_overwritten_id_searches_its_new_vector(s: Scenario) -> None:
    got = query(s, ids=[s.doc(3)])["results"][0]
    assert [h["id"] for h in got] == nearest(s, FRESH[10].tolist(), (s.doc(3),), 5)


@pytest.mark.parametrize("deleted", ["built", "tail"])
def test_query_by_an_id_deleted_in_the_tail_is_refused_naming_it(s: Scenario, deleted: str) -> None:
    ident = s.doc(5) if deleted == "built" else s.new(2)
    with pytest.raises(InvalidRequest) as err:
        query(s, ids=[s.new(1), ident])
    assert repr(ident) in err.value.problem
    with pytest.raises(InvalidRequest):
        query(s, analogy={"a": s.new(0), "b": ident, "c": s.doc(1)})


def test_recommend_best_score_ranks_the_tail_rows_and_never_a_hidden_one(s: Scenario) -> None:
    positive, negative = [s.new(0), s.doc(7)], [s.doc(10)]
    got = query(s, recommend={"positive": positive, "negative": negative, "strategy": "best_score"}, k=8)
    ids = [i for i in s.live if i not in (*positive, *negative)]
    x = np.array([s.live[i]["vector"] for i in ids], np.float64)

    def best(examples: list[Any]) -> np.ndarray:
        e = np.array([s.live[i]["vector"] for i in examples], np.float64)
        return (-np.linalg.norm(x[:, None, :] - e[None, :, :], axis=2)).max(axis=1)

    score = best(positive) - best(negative)
    expected = [ids[j] for j in np.argsort(-score, kind="stable")[:8]]
    assert s.new(1) in expected  # a tail row near new 0, where doc 5 and doc 3's old row are hidden
    assert [h["id"] for h in got["results"][0]] == expected


def test_recommend_average_vector_resolves_ids_from_the_tail(s: Scenario) -> None:
    positive, negative = [s.new(7), s.doc(20)], [s.doc(3)]
    got = query(s, recommend={"positive": positive, "negative": negative})["results"][0]
    pos = np.array([s.live[i]["vector"] for i in positive], np.float64).mean(axis=0)
    neg = np.array(s.live[s.doc(3)]["vector"], np.float64)
    assert [h["id"] for h in got] == nearest(s, (2 * pos - neg).tolist(), (*positive, *negative), 5)
