"""Writers racing on one collection over real HTTP: no acknowledged write is ever lost.

A write is acknowledged only after HEAD names a manifest that contains it; a writer that
loses the compare-and-swap on HEAD redoes its whole write on the new state. These tests race
16 writer threads (each upserting its own ids in several writes) and a few reader threads
against one collection through the library, on a moto server that applies one request at a
time (``serial_moto_server`` in tests/conftest.py explains why: moto's conditional PUT is not
atomic across threads, real S3's is). Afterwards:

- every acknowledged upsert is findable at distance ~0 and the count adds up;
- the acknowledged versions form one unbroken parent chain from the build to HEAD — no
  acknowledged version was overwritten by another writer;
- HEAD names a complete manifest: every bucket, id shard and tail segment it lists exists
  and verifies, the id directory agrees with the buckets, and buckets plus tail hold exactly
  the acknowledged ids (the default tail limit of this collection makes the race both append
  to the tail and merge it into the buckets, several times);
- every reader response came from one published version: replaying it pinned to that
  version gives the same answer.

Two racing writes where one deletes the other's id end in one of the two serial orders.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import Conflict, ObjectStore, Searcher, layout, service, storage, tail, versions, writer
from kdbuckets.bucket import decode_bucket, dedup_keys
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.directory import decode_shard
from kdbuckets.manifest import Manifest, decode_head
from kdbuckets.writer import WriteResult
from tests.conftest import read_manifest

COLLECTION = "race"
DIM = 8
INITIAL = 300
BUCKET_SIZE = 100
WRITERS = 16
WRITES_EACH = 5
ITEMS_PER_WRITE = 4
READERS = 3
READS_EACH = 6
#: Far more than the default: 16 writers contend for every swap, and this test is about
#: acknowledged writes never being lost, not about how patient a writer is.
MAX_ATTEMPTS = 64
BARRIER_TIMEOUT = 60


def _vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def _upsert_ids(w: int, j: int) -> np.ndarray:
    """Ids of writer ``w``'s write ``j``: distinct across all writers and writes."""
    return 10_000 + w * 100 + j * 10 + np.arange(ITEMS_PER_WRITE, dtype=np.int64)


def _upsert_vectors(w: int, j: int) -> np.ndarray:
    """Writer ``w``'s write ``j``: a few distinct vectors close together, so that one write
    usually rewrites one bucket (the race, not the bucket count, is under test)."""
    rng = np.random.default_rng(1_000 + w * 100 + j)
    centre = rng.normal(size=DIM)
    return (centre + 0.05 * rng.normal(size=(ITEMS_PER_WRITE, DIM))).astype(np.float32)


def _build(store: ObjectStore, vectors: np.ndarray, ids: np.ndarray) -> str:
    data = make_collection(vectors, ids, None, metric="cosine")
    return build_index(
        store, COLLECTION, data, BuildParams(bucket_size=BUCKET_SIZE, dtype="float32"), replace=True
    ).version


def _head_manifest(store: ObjectStore) -> Manifest:
    body, _ = store.get(layout.head_key(COLLECTION))
    head = decode_head(body, key=layout.head_key(COLLECTION))
    return read_manifest(store, head.manifest_key)


def _assert_complete(store: ObjectStore, manifest: Manifest, expected_ids: np.ndarray) -> None:
    """Every bucket, shard and tail segment HEAD's manifest lists exists and verifies; the
    directory agrees with the buckets, and buckets plus tail hold exactly ``expected_ids``."""
    bucket_keys = [layout.bucket_key(COLLECTION, fp) for fp in manifest.buckets.fingerprints]
    buckets = [
        decode_bucket(body, key=key, expected_fingerprint=fp)
        for key, body, fp in zip(
            bucket_keys, store.get_many(bucket_keys), manifest.buckets.fingerprints, strict=True
        )
    ]
    shard_keys = [layout.id_shard_key(COLLECTION, fp) for fp in manifest.id_shards]
    shards = [
        decode_shard(body, key=key, expected_fingerprint=fp, n_buckets=manifest.n_buckets)
        for key, body, fp in zip(shard_keys, store.get_many(shard_keys), manifest.id_shards, strict=True)
    ]
    pending = tail.overlay(writer.load_segments(store, manifest), DIM)
    assert [b.count for b in buckets] == manifest.buckets.rows.tolist()
    in_buckets = {int(k) for b in buckets for k in dedup_keys(b.ids.to_numpy()).tolist()}
    live = (in_buckets - set(pending.shadow.tolist())) | set(pending.live.keys.tolist())
    assert live == set(dedup_keys(expected_ids).tolist())
    directory = np.concatenate([s.keys for s in shards])
    assert len(directory) == len(set(directory.tolist())) == len(in_buckets)
    assert set(directory.tolist()) == in_buckets  # the tail's rows join the directory when merged
    members = [set(dedup_keys(b.ids.to_numpy()).tolist()) for b in buckets]
    for shard in shards:
        for key, primary, secondary in zip(
            shard.keys.tolist(), shard.primary.tolist(), shard.secondary.tolist(), strict=True
        ):
            assert key in members[primary]
            assert secondary == -1 or key in members[secondary]


def _parent_chain(store: ObjectStore) -> list[str]:
    """Versions from HEAD back to the first build, following each manifest's parent."""
    listed = {v.version: v for v in versions.list_versions(store, COLLECTION)}
    head = next(v for v in listed.values() if v.is_head)
    chain = [head.version]
    while listed[chain[-1]].parent is not None:
        chain.append(listed[chain[-1]].parent)
    return chain


def _assert_found(store: ObjectStore, vectors: np.ndarray, ids: np.ndarray) -> list[int]:
    """Ids whose own vector does not find them first at distance ~0 (exact search)."""
    result = Searcher(store).search(COLLECTION, vectors, k=1, probes=4096)
    found = [row[0] for row in result.ids]
    return [
        int(i)
        for i, got, d in zip(ids.tolist(), found, result.distances[:, 0].tolist(), strict=True)
        if got != i or d > 1e-6
    ]


@dataclass
class Reading:
    """One reader response: the version it names and what it answered."""

    version: str
    ids: list[list[Any]]
    distances: np.ndarray


@dataclass
class Race:
    acknowledged: list[WriteResult] = field(default_factory=list)
    failures: list[BaseException] = field(default_factory=list)
    readings: list[Reading] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def test_racing_writers_lose_no_acknowledged_upsert_and_readers_see_whole_versions(
    serial_moto_server: Any,
) -> None:
    store = ObjectStore(local.INDEX_BUCKET)
    initial_vectors, initial_ids = _vectors(0, INITIAL), np.arange(INITIAL, dtype=np.int64)
    built = _build(store, initial_vectors, initial_ids)
    # Readers ask for initial vectors and for vectors that writers are about to upsert, so
    # whether a new id appears depends on the version a response was served from.
    probe_queries = np.vstack(
        [initial_vectors[:4]] + [_upsert_vectors(w, 0)[:1] for w in range(0, WRITERS, 4)]
    )

    race = Race()
    start = threading.Barrier(WRITERS + READERS, timeout=BARRIER_TIMEOUT)
    writers_done = threading.Event()

    def write_all(w: int) -> None:
        start.wait()
        for j in range(WRITES_EACH):
            upserts = make_collection(_upsert_vectors(w, j), _upsert_ids(w, j), None, metric="cosine")
            try:
                result = writer.write(store, COLLECTION, upserts=upserts, max_attempts=MAX_ATTEMPTS)
            except BaseException as exc:  # recorded: an unacknowledged write fails the test below
                with race.lock:
                    race.failures.append(exc)
                continue
            with race.lock:
                race.acknowledged.append(result)

    def read_all() -> None:
        searcher = Searcher(store, head_ttl=0)
        start.wait()
        for _ in range(READS_EACH):
            try:
                result = searcher.search(COLLECTION, probe_queries, k=5, probes=4096)
            except BaseException as exc:
                with race.lock:
                    race.failures.append(exc)
                return
            with race.lock:
                race.readings.append(Reading(result.version, result.ids, result.distances.copy()))
            if writers_done.wait(0.02):
                return

    threads = [threading.Thread(target=write_all, args=(w,)) for w in range(WRITERS)]
    readers = [threading.Thread(target=read_all) for _ in range(READERS)]
    for t in threads + readers:
        t.start()
    for t in threads:
        t.join()
    writers_done.set()
    for t in readers:
        t.join()

    assert race.failures == []
    assert len(race.acknowledged) == WRITERS * WRITES_EACH
    upserted_ids = np.concatenate([_upsert_ids(w, j) for w in range(WRITERS) for j in range(WRITES_EACH)])
    upserted_vectors = np.vstack([_upsert_vectors(w, j) for w in range(WRITERS) for j in range(WRITES_EACH)])

    # No acknowledged write lost: every upsert findable, counts add up, one unbroken history.
    assert _assert_found(store, upserted_vectors, upserted_ids) == []
    assert _assert_found(store, initial_vectors, initial_ids) == []
    manifest = _head_manifest(store)
    assert manifest.count == INITIAL + len(upserted_ids)
    chain = _parent_chain(store)
    assert chain[-1] == built
    assert sorted(chain[:-1]) == sorted(r.version for r in race.acknowledged)
    assert [
        r.count for r in sorted(race.acknowledged, key=lambda r: chain.index(r.version), reverse=True)
    ] == [INITIAL + ITEMS_PER_WRITE * (n + 1) for n in range(len(race.acknowledged))]
    _assert_complete(store, manifest, np.concatenate([initial_ids, upserted_ids]))

    # Readers: each response is exactly what its version answers when asked pinned to it.
    assert race.readings
    published = set(chain)
    replay = Searcher(store)
    pinned: dict[str, Reading] = {}
    for reading in race.readings:
        assert reading.version in published
        if reading.version not in pinned:
            result = replay.search(COLLECTION, probe_queries, k=5, probes=4096, version=reading.version)
            pinned[reading.version] = Reading(result.version, result.ids, result.distances)
        expected = pinned[reading.version]
        assert reading.ids == expected.ids
        np.testing.assert_allclose(reading.distances, expected.distances, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- delete vs upsert
class HoldFirst:
    """Holds each thread's first request whose path ends with ``suffix`` until ``parties``
    threads have arrived (a ``before-call.s3`` hook); later requests pass straight through.

    Holding the first PUT of HEAD makes two writers' compare-and-swaps truly race: both have
    read the same HEAD and built their manifests on it. Holding the first GET of an id shard
    makes both writers read the same version before either can publish.
    """

    def __init__(self, parties: int, suffix: str) -> None:
        self.barrier = threading.Barrier(parties, timeout=BARRIER_TIMEOUT)
        self.suffix = suffix
        self.held: set[int] = set()
        self.lock = threading.Lock()

    def __call__(self, params: dict[str, Any], **kwargs: Any) -> None:
        if not re.search(self.suffix, params["url_path"]):
            return
        me = threading.get_ident()
        with self.lock:
            first = me not in self.held
            self.held.add(me)
        if first:
            self.barrier.wait()


def _run_together(*calls: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
    results: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # surfaced below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


@pytest.mark.parametrize("exists", [True, False], ids=["id-exists", "id-new"])
def test_racing_upsert_and_delete_of_one_id_end_in_one_serial_order(
    serial_moto_server: Any, exists: bool
) -> None:
    store = ObjectStore(local.INDEX_BUCKET)
    vectors, ids = _vectors(7, 120), np.array([f"doc-{i}" for i in range(120)])
    built = build_index(
        store,
        COLLECTION,
        make_collection(vectors, ids, None, metric="cosine"),
        BuildParams(bucket_size=20, dtype="float32"),
        replace=True,
    ).version
    target = "doc-5" if exists else "doc-new"
    new_vector = _vectors(8, 1)[0]
    # Both writers read the same version (held at their first id-shard GET) before either
    # can publish.
    hold = HoldFirst(2, r"/ids/[0-9a-f]+$")
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register("before-call.s3.GetObject", hold)

    upsert_event = {
        "collection": COLLECTION,
        "operation": "upsert",
        "items": [{"id": target, "vector": new_vector.tolist(), "metadata": {"by": "upsert"}}],
    }
    delete_event = {"collection": COLLECTION, "operation": "delete", "ids": [target]}
    upserted, deleted = _run_together(
        lambda: service.write(upsert_event, store), lambda: service.write(delete_event, store)
    )
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.unregister("before-call.s3.GetObject", hold)

    if exists:  # both swaps raced from the same HEAD: one won at once, the other redid its write
        assert sorted([upserted["attempts"], deleted["attempts"]]) == [1, 2]
        upsert_first = upserted["attempts"] == 1
    else:  # the delete found nothing to delete in the version it read: it published nothing
        assert (deleted["deleted"], deleted["not_found"], deleted["version"]) == (0, 1, built)
        assert (deleted["attempts"], upserted["attempts"]) == (1, 1)
        upsert_first = False
    result = Searcher(store).search(COLLECTION, new_vector[None, :], k=1, probes=4096)
    if upsert_first:  # upsert, then delete: the id is gone
        assert deleted["deleted"] == 1
        assert result.ids[0][0] != target
        assert deleted["count"] == _head_manifest(store).count == len(ids) - exists
    else:  # delete, then upsert: the id holds the upserted vector
        assert result.ids[0][0] == target
        assert result.distances[0, 0] < 1e-6
        assert upserted["count"] == _head_manifest(store).count == len(ids) + (not exists)
    assert _parent_chain(store)[:2] == (
        [deleted["version"], upserted["version"]]
        if upsert_first
        else [upserted["version"], deleted["version"] if exists else built]
    )
    expected = [i for i in ids.tolist() if i != target] + ([] if upsert_first else [target])
    _assert_complete(store, _head_manifest(store), np.array(expected))


def test_compaction_racing_a_write_never_undoes_it(serial_moto_server: Any) -> None:
    store = ObjectStore(local.INDEX_BUCKET)
    vectors, ids = _vectors(9, 120), np.arange(120, dtype=np.int64)
    build_index(
        store,
        COLLECTION,
        make_collection(vectors, ids, None, metric="cosine"),
        BuildParams(bucket_size=20, dtype="float32"),
        replace=True,
    )
    new_vector = _vectors(10, 1)
    hold = HoldFirst(2, r"/HEAD$")
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register("before-call.s3.PutObject", hold)

    def compact() -> dict[str, Any]:
        try:
            return {"version": writer.compact(store, COLLECTION).version}
        except Conflict:  # a write landed first: compaction must give up, not overwrite it
            return {"version": None}

    def upsert() -> dict[str, Any]:
        upserts = make_collection(new_vector, np.array([500]), None, metric="cosine")
        return writer.write(store, COLLECTION, upserts=upserts).as_dict()

    compacted, upserted = _run_together(compact, upsert)
    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.unregister("before-call.s3.PutObject", hold)

    chain = _parent_chain(store)
    assert chain[0] == upserted["version"]  # the write is live, whoever swapped first
    if compacted["version"] is None:  # the write won: compaction published nothing
        assert upserted["attempts"] == 1
        assert len(chain) == 2
    else:  # compaction won: the write was redone on the compacted version
        assert upserted["attempts"] == 2
        assert chain[1] == compacted["version"]
    assert _head_manifest(store).count == upserted["count"] == 121
    assert _assert_found(store, new_vector, np.array([500])) == []
    _assert_complete(store, _head_manifest(store), np.append(ids, 500))
