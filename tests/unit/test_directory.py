"""The id directory: every id maps to its bucket(s); shards round-trip and refuse corruption."""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets.codec import fingerprint
from kdbuckets.directory import Shard, build_shards, decode_shard, encode_shard, shard_count, shard_of
from kdbuckets.errors import CorruptObject


def test_shards_partition_the_keys_and_find_every_one() -> None:
    rng = np.random.default_rng(0)
    keys = rng.permutation(np.arange(10_000, dtype=np.int64) * 7 + 3)
    primary = rng.integers(0, 50, len(keys))
    secondary = np.where(rng.random(len(keys)) < 0.25, rng.integers(0, 50, len(keys)), -1)
    shards = build_shards(keys, primary, secondary, shard_count(len(keys)))
    assert sum(len(s.keys) for s in shards) == len(keys)
    which = shard_of(keys, len(shards))
    for s, shard in enumerate(shards):
        found, p, q = shard.lookup(keys[which == s])
        assert found.all()
        assert np.array_equal(p, primary[which == s])
        assert np.array_equal(q, secondary[which == s])


def test_sequential_ids_spread_evenly_over_shards() -> None:
    counts = np.bincount(shard_of(np.arange(100_000, dtype=np.int64), 25), minlength=25)
    assert counts.min() > 0.9 * counts.mean()


def test_lookup_of_absent_keys_reports_not_found() -> None:
    shard = Shard.from_arrays(np.array([5, 1, 9]), np.array([0, 1, 2]), np.array([-1, -1, 0]))
    found, primary, _ = shard.lookup(np.array([1, 2, 9, 100]))
    assert found.tolist() == [True, False, True, False]
    assert primary.tolist() == [1, -1, 2, -1]
    assert Shard.empty().lookup(np.array([1]))[0].tolist() == [False]


def test_updated_removes_and_sets_entries_without_touching_the_rest() -> None:
    shard = Shard.from_arrays(np.array([1, 2, 3]), np.array([0, 0, 0]), np.array([-1, -1, -1]))
    new = shard.updated(np.array([2]), np.array([3, 4]), np.array([5, 6]), np.array([-1, 1]))
    assert new.keys.tolist() == [1, 3, 4]
    assert new.primary.tolist() == [0, 5, 6]
    assert new.secondary.tolist() == [-1, -1, 1]


def test_a_shard_round_trips_and_any_change_is_corruption() -> None:
    shard = Shard.from_arrays(np.array([3, 1, 2]), np.array([0, 1, 2]), np.array([-1, 0, -1]))
    body = encode_shard(shard)
    back = decode_shard(body, key="ids/x", expected_fingerprint=fingerprint(body), n_buckets=3)
    assert back.keys.tolist() == [1, 2, 3]
    with pytest.raises(CorruptObject, match="ids/x"):
        decode_shard(body[:-1] + b"\x00", key="ids/x", expected_fingerprint=fingerprint(body), n_buckets=3)
    with pytest.raises(CorruptObject, match="inconsistent"):  # names a bucket the manifest lacks
        decode_shard(body, key="ids/x", expected_fingerprint=fingerprint(body), n_buckets=2)


def test_a_shard_holding_keys_of_another_shard_is_corruption() -> None:
    """A misplaced key is invisible to lookups: a delete would miss it, an upsert duplicate it."""
    keys = np.arange(100, dtype=np.int64)
    shards = build_shards(keys, np.zeros(100, np.int64), np.full(100, -1), 4)
    body = encode_shard(shards[2])
    fp = fingerprint(body)
    assert len(decode_shard(body, key="ids/x", expected_fingerprint=fp, n_buckets=1, place=(2, 4)).keys)
    with pytest.raises(CorruptObject, match="other shards"):
        decode_shard(body, key="ids/x", expected_fingerprint=fp, n_buckets=1, place=(1, 4))
    with pytest.raises(CorruptObject, match="other shards"):  # read as if the directory had 3 shards
        decode_shard(body, key="ids/x", expected_fingerprint=fp, n_buckets=1, place=(2, 3))
    empty = encode_shard(Shard.empty())
    decode_shard(empty, key="ids/y", expected_fingerprint=fingerprint(empty), n_buckets=1, place=(0, 4))


def test_rebuilding_for_a_new_count_keeps_every_key_findable() -> None:
    """What a write does when the directory outgrows its shard count (resharded_count)."""
    rng = np.random.default_rng(5)
    keys = rng.integers(-(2**63), 2**63 - 1, size=5000, dtype=np.int64)
    primary = rng.integers(0, 30, len(keys))
    old = build_shards(keys, primary, np.full(len(keys), -1), 2)
    merged = [np.concatenate([getattr(s, name) for s in old]) for name in ("keys", "primary", "secondary")]
    new = build_shards(*merged, 9)
    which = shard_of(keys, 9)
    for s, shard in enumerate(new):
        found, p, _ = shard.lookup(keys[which == s])
        assert found.all()
        assert np.array_equal(p, primary[which == s])
