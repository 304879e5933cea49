"""The id directory grows with the collection: writes reshard it, lookups stay exact.

A directory's shard count used to be fixed at build (``directory.shard_count(n)``), so a
collection built with 10 vectors and grown by upserts kept every id in one shard, read and
rewritten whole by every write. Writes now reshard when the live count outgrows the shard
count (with hysteresis: once per doubling, amortised O(1) per id) and shrink it when most
ids are gone. ``SHARD_ENTRIES`` is lowered here so that 2,000 upserts cross several
doublings; the rule is the same at the real 4,096.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import catalog, directory, layout, writer
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.directory import decode_shard, shard_count, shard_of
from kdbuckets.manifest import Manifest
from kdbuckets.storage import ObjectStore

ENTRIES = 64  # SHARD_ENTRIES for this test: a fresh build of 2,010 ids has 32 shards
PARAMS = BuildParams(
    metric="l2", bucket_size=50, refine=0, replicate=0.0, tail_rows=0
)  # writes reach the directory
DIM = 8


@pytest.fixture
def store(s3: Any, monkeypatch: pytest.MonkeyPatch) -> ObjectStore:
    monkeypatch.setattr(directory, "SHARD_ENTRIES", ENTRIES)
    return ObjectStore(local.INDEX_BUCKET)


class Recorder:
    """Counts the id-shard bytes each write uploads (wraps ``ObjectStore.put_many``)."""

    def __init__(self, store: ObjectStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.shard_bytes: list[int] = []
        put_many = store.put_many

        def recording(items: Iterable[tuple[str, bytes]]) -> list[bool]:
            items = list(items)
            self.shard_bytes.append(sum(len(body) for key, body in items if "/ids/" in f"/{key}"))
            return put_many(items)

        monkeypatch.setattr(store, "put_many", recording)


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)


def live(store: ObjectStore) -> Manifest:
    return catalog.read_live(store, "grow").manifest


def shard_sizes(store: ObjectStore, m: Manifest) -> list[int]:
    """Entries per shard, checking every key sits in the shard its hash names."""
    sizes = []
    for s, fp in enumerate(m.id_shards):
        key = layout.id_shard_key(m.collection, fp)
        shard = decode_shard(store.get(key)[0], key=key, expected_fingerprint=fp, n_buckets=m.n_buckets)
        assert (shard_of(shard.keys, len(m.id_shards)) == s).all(), f"shard {s} holds keys of another"
        sizes.append(len(shard.keys))
    return sizes


def test_upserts_grow_the_directory_like_a_fresh_build(
    store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    build_index(store, "grow", make_collection(vectors(10, 0), None, None, metric="l2"), PARAMS)
    assert len(live(store).id_shards) == 1
    recorder = Recorder(store, monkeypatch)
    counts = []
    for batch in range(4):  # 2,000 upserts in batches of 500
        ids = np.arange(10 + 500 * batch, 10 + 500 * (batch + 1), dtype=np.int64)
        writer.write(store, "grow", upserts=make_collection(vectors(500, batch + 1), ids, None, metric="l2"))
        counts.append(len(live(store).id_shards))
    m = live(store)
    assert m.count == 2010
    fresh = shard_count(2010)
    assert fresh == 32
    assert fresh / 2 <= len(m.id_shards) <= fresh * 2, counts
    assert counts == sorted(counts), counts  # grew as the collection grew
    assert counts[0] > 1, counts
    sizes = shard_sizes(store, m)
    assert sum(sizes) == 2010
    assert max(sizes) <= 4 * ENTRIES, sizes  # no shard holds everything

    # A small write after the growth reads and rewrites one small shard, not the directory.
    recorder.shard_bytes.clear()
    writer.write(store, "grow", upserts=make_collection(vectors(1, 9), np.array([5]), None, metric="l2"))
    written, parts = recorder.shard_bytes  # buckets and id shards, then the manifest's parts
    assert parts == 0
    assert 0 < written <= 4 * ENTRIES * 16 + 512
    assert len(live(store).id_shards) == len(m.id_shards)


def test_every_id_is_still_found_after_resharding(store: ObjectStore) -> None:
    build_index(store, "grow", make_collection(vectors(10, 0), None, None, metric="l2"), PARAMS)
    for batch in range(4):
        ids = np.arange(10 + 500 * batch, 10 + 500 * (batch + 1), dtype=np.int64)
        writer.write(store, "grow", upserts=make_collection(vectors(500, batch + 1), ids, None, metric="l2"))
    assert len(live(store).id_shards) > 1
    # Re-upserting existing ids replaces them (found in the directory), never duplicates them.
    again = np.arange(0, 2010, 7, dtype=np.int64)
    result = writer.write(
        store, "grow", upserts=make_collection(vectors(len(again), 11), again, None, metric="l2")
    )
    assert result.count == 2010
    result = writer.write(store, "grow", deletes=np.arange(2010, dtype=np.int64))
    assert (result.deleted, result.not_found, result.count) == (2010, 0, 0)
    m = live(store)
    assert m.count == 0
    assert len(m.id_shards) <= 2  # shrunk back: the manifest does not keep listing empty shards
    assert sum(shard_sizes(store, m)) == 0


def test_reshard_rule_has_hysteresis_at_the_real_shard_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(directory, "SHARD_ENTRIES", 4096)
    assert directory.resharded_count(1, 10) == 1
    assert directory.resharded_count(1, 8192) == 1  # ideal 2: within 2x, no reshard yet
    assert directory.resharded_count(1, 10_010) == 3  # the collection of the bug report
    assert directory.resharded_count(3, 10_010) == 3
    assert directory.resharded_count(3, 24_576) == 3
    assert directory.resharded_count(3, 24_577) == 7
    assert directory.resharded_count(64, 4096 * 16) == 64  # a quarter: still kept
    assert directory.resharded_count(64, 4096 * 15) == 15  # below a quarter: shrunk
    assert directory.resharded_count(7, 0) == 1
    assert directory.resharded_count(65_536, 2**40) == 65_536
