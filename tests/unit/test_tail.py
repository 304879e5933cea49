"""The unmerged tail: segments, their net effect, absorption and the merge threshold.

Semantics pinned here: the newest mention of a key wins (an upsert row, or a delete); rows
of buckets and of older segments under a key the tail mentions are hidden; segments stay few
(size-tiered absorption) and every row is rewritten only O(log tail) times before its merge.
"""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import CorruptObject, codec, tail
from kdbuckets.bucket import Bucket, IdColumn
from kdbuckets.metadata import MetadataColumns

DIM = 4


def rows(ids: list[int], seed: int = 0, meta: bool = False) -> Bucket:
    """A run of upserted rows with int ids (their own keys)."""
    vectors = np.random.default_rng(seed).normal(size=(len(ids), DIM)).astype(np.float32)
    keys = np.asarray(ids, np.int64)
    return Bucket(
        vectors=vectors,
        ids=IdColumn.from_values(keys),
        labels=np.arange(len(ids), dtype=np.int32),
        keys=keys,
        metadata=MetadataColumns.from_records([{"seed": seed}] * len(ids)) if meta else None,
    )


def segment(ids: list[int], deletes: list[int] = (), seed: int = 0) -> tail.Segment:  # type: ignore[assignment]
    return tail.Segment(rows(ids, seed), np.asarray(deletes, np.int64))


def test_the_newest_mention_of_a_key_wins() -> None:
    older = segment([1, 2, 3], seed=1)
    newer = segment([2, 4], deletes=[3], seed=2)

    over = tail.overlay([older, newer], DIM)

    assert sorted(over.live.keys.tolist()) == [1, 2, 4]
    assert over.deleted.tolist() == [3]
    assert over.shadow.tolist() == [1, 2, 3, 4]
    row = int(over.rows_of(np.array([2]))[0])
    np.testing.assert_array_equal(over.live.vectors[row], newer.rows.vectors[0])  # the newer copy


def test_a_key_deleted_and_then_upserted_again_is_live() -> None:
    over = tail.overlay([segment([], deletes=[9]), segment([9], seed=5)], DIM)

    assert over.live.keys.tolist() == [9]
    assert over.deleted.size == 0


def test_bucket_rows_under_mentioned_keys_are_hidden_and_state_tells_live_from_deleted() -> None:
    over = tail.overlay([segment([1, 2], deletes=[7])], DIM)

    assert over.hides(np.array([1, 5, 7, 8])).tolist() == [True, False, True, False]
    mentioned, live = over.state(np.array([1, 7, 8]))
    assert mentioned.tolist() == [True, True, False]
    assert live.tolist() == [True, False, False]
    assert over.rows_of(np.array([7, 2, 8])).tolist()[0::2] == [-1, -1]


def test_an_empty_tail_hides_nothing() -> None:
    over = tail.overlay([], DIM)

    assert over.empty
    assert over.live.count == 0
    assert not over.hides(np.arange(5)).any()


def test_a_segment_round_trips_with_its_metadata_labels_and_deletes() -> None:
    run = rows([10, 11, 12], seed=3, meta=True)
    body = tail.encode_segment(run, np.array([4, 5]), "float32")
    ref = tail.SegmentRef(codec.fingerprint(body), len(body), 3, 2, 1)

    back = tail.decode_segment(body, key="k", ref=ref, dim=DIM)

    np.testing.assert_array_equal(back.rows.vectors, run.vectors)
    assert back.rows.keys.tolist() == [10, 11, 12]
    assert back.deletes.tolist() == [4, 5]
    assert back.rows.metadata.take(np.arange(3)) == [{"seed": 3}] * 3
    assert back.rows.labels.tolist() == [0, 1, 2]


def test_a_float16_collection_stores_its_tail_rows_in_float16() -> None:
    run = rows([1, 2], seed=4)
    body = tail.encode_segment(run, np.zeros(0, np.int64), "float16")
    back = tail.decode_segment(
        body, key="k", ref=tail.SegmentRef(codec.fingerprint(body), len(body), 2, 0, 2), dim=DIM
    )

    np.testing.assert_array_equal(back.rows.vectors, run.vectors.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize(
    "lie",
    [
        {"fingerprint": "0" * 64},
        {"rows": 4},
        {"deletes": 0},
    ],
    ids=["fingerprint", "rows", "deletes"],
)
def test_a_segment_that_disagrees_with_its_tail_entry_is_corrupt(lie: dict) -> None:
    body = tail.encode_segment(rows([1, 2, 3]), np.array([9]), "float32")
    entry = {"fingerprint": codec.fingerprint(body), "size": len(body), "rows": 3, "deletes": 1, "delta": 2}

    with pytest.raises(CorruptObject):
        tail.decode_segment(body, key="k", ref=tail.SegmentRef(**{**entry, **lie}), dim=DIM)


@pytest.mark.parametrize(
    "node",
    [None, [], ["x" * 64, 1, 1, 1, 1], ["0" * 64, -1, 1, 1, 1], ["0" * 64, 1, True, 1, 1], ["0" * 64, 1, 1]],
)
def test_a_malformed_tail_entry_is_corrupt(node: object) -> None:
    with pytest.raises(CorruptObject):
        tail.SegmentRef.decode(node, key="k")


def _refs(weights: list[int]) -> list[tail.SegmentRef]:
    return [tail.SegmentRef("0" * 64, 1, w, 0, w) for w in weights]


def test_a_new_segment_absorbs_the_newest_ones_no_larger_than_it() -> None:
    assert tail.absorbed(_refs([64, 8, 2]), 1) == 0
    assert tail.absorbed(_refs([64, 8, 2]), 2) == 1  # 2 + 2 = 4 < 8: stops there
    assert tail.absorbed(_refs([64, 8, 2]), 8) == 2  # 8 + 2 = 10 ≥ 8: absorbs the 8 too
    assert tail.absorbed(_refs([]), 5) == 0


def test_segments_stay_within_the_cap_and_rows_are_rewritten_a_logarithmic_number_of_times() -> None:
    tail_refs: list[tail.SegmentRef] = []
    written = 0
    for _ in range(1000):  # single-row writes
        n = tail.absorbed(tail_refs, 1)
        folded = sum(r.weight for r in tail_refs[len(tail_refs) - n :])
        written += folded + 1
        tail_refs = [*tail_refs[: len(tail_refs) - n], *_refs([folded + 1])]
        assert len(tail_refs) <= tail.MAX_SEGMENTS
    assert sum(r.weight for r in tail_refs) == 1000
    assert written / 1000 <= 12  # ≈ log2(1000) + 1 rewrites per row, at most


def test_the_automatic_limit_amortises_merges_within_four_buckets() -> None:
    params = {"bucket_size": 1000}
    assert tail.tail_limit(params, stored_bytes=10_000, dim=384) == 1000  # small: one bucket
    big = tail.MERGE_AMORTISATION * 4 * 384 * 2500
    assert tail.tail_limit(params, stored_bytes=big, dim=384) == 2500
    assert tail.tail_limit(params, stored_bytes=100 * big, dim=384) == 4000  # never past 4 buckets
    assert tail.tail_limit({**params, "tail_rows": 0}, stored_bytes=big, dim=384) == 0
    assert tail.tail_limit({**params, "tail_rows": 7}, stored_bytes=big, dim=384) == 7
    huge = {"bucket_size": 1_000_000}  # a query holds the whole tail: never past MAX_TAIL_ROWS
    assert tail.tail_limit(huge, stored_bytes=100 * big, dim=384) == 65_536
