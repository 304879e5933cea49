"""The writer, called as a library: what a write may change, and what it must refuse."""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import catalog, layout, writer
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import Collection, make_collection
from kdbuckets.errors import CorruptObject, InvalidRequest
from kdbuckets.storage import ObjectStore

#: No tail: these tests pin the copy-on-write commit of buckets (tests/unit/test_tail.py and
#: tests/functional/test_tail_writes.py pin the tail's).
PARAMS = BuildParams(metric="l2", bucket_size=20, refine=0, replicate=0.0, tail_rows=0)
RNG = np.random.default_rng(7)
VECTORS = RNG.normal(size=(200, 8)).astype(np.float32)


def build(store: ObjectStore, name: str = "docs", labels: np.ndarray | None = None) -> None:
    build_index(store, name, make_collection(VECTORS, None, labels, metric="l2"), PARAMS)


def upserts(ids: list[int], labels: list[str] | None = None) -> object:
    vectors = RNG.normal(size=(len(ids), 8)).astype(np.float32)
    lab = None if labels is None else np.array(labels)
    return make_collection(vectors, np.array(ids, dtype=np.int64), lab, metric="l2")


def all_ids(store: ObjectStore, name: str) -> set[int]:
    from kdbuckets.bucket import decode_bucket

    m = catalog.read_live(store, name).manifest
    out: set[int] = set()
    for fp in m.buckets.fingerprints:
        key = layout.bucket_key(name, fp)
        out.update(decode_bucket(store.get(key)[0], key=key).ids.to_numpy().tolist())
    return out


def test_a_write_on_a_copied_prefix_never_changes_the_original(s3_store: ObjectStore) -> None:
    build(s3_store, "docs")
    for info in s3_store.list_objects("docs/"):  # aws s3 sync docs/ copy/
        s3_store.put("copy" + info.key[len("docs") :], s3_store.get(info.key)[0])
    before = catalog.read_live(s3_store, "docs").head.version
    with pytest.raises(CorruptObject, match="copy/HEAD"):
        writer.write(s3_store, "copy", deletes=np.array([0, 1, 2]))
    assert catalog.read_live(s3_store, "docs").head.version == before
    assert {0, 1, 2} <= all_ids(s3_store, "docs")


def test_a_repeated_id_in_a_delete_is_deleted_and_counted_once(s3_store: ObjectStore) -> None:
    build(s3_store)
    result = writer.write(s3_store, "docs", deletes=np.array([5] * 300))
    assert (result.deleted, result.not_found, result.count) == (1, 0, 199)
    assert catalog.read_live(s3_store, "docs").manifest.count == 199
    assert 5 not in all_ids(s3_store, "docs")


def test_an_upsert_repeating_an_id_is_refused_naming_the_item(s3_store: ObjectStore) -> None:
    build(s3_store)
    vectors = RNG.normal(size=(3, 8)).astype(np.float32)
    repeated = Collection(vectors, np.array([1000, 7, 7]), None, None)  # not via make_collection
    with pytest.raises(InvalidRequest, match=r"^items\[1\]\.id 7 appears more than once"):
        writer.write(s3_store, "docs", upserts=repeated)


def test_an_unlabelled_upsert_into_a_labelled_collection_is_refused(s3_store: ObjectStore) -> None:
    build(s3_store, labels=np.array(["a", "b"] * 100))
    with pytest.raises(InvalidRequest, match=r"^items\[0\]\.label is required"):
        writer.write(s3_store, "docs", upserts=upserts([1000]))


def test_a_labelled_upsert_into_an_unlabelled_collection_is_refused(s3_store: ObjectStore) -> None:
    build(s3_store)
    with pytest.raises(InvalidRequest, match=r"^items\[0\]\.label is not allowed"):
        writer.write(s3_store, "docs", upserts=upserts([1000], ["x"]))


def test_upserts_cannot_grow_the_label_vocabulary_past_the_build_cap(
    s3_store: ObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    build(s3_store, labels=np.array(["a", "b"] * 100))
    monkeypatch.setattr(writer, "MAX_LABELS", 3)
    writer.write(s3_store, "docs", upserts=upserts([1000], ["c"]))  # 3 labels: at the cap
    with pytest.raises(InvalidRequest, match="at most 3"):
        writer.write(s3_store, "docs", upserts=upserts([1001], ["d"]))
    assert catalog.read_live(s3_store, "docs").manifest.label_names == ["a", "b", "c"]


def test_upsert_replaces_by_id_and_inserts_new_ids(s3_store: ObjectStore) -> None:
    build(s3_store)
    result = writer.write(s3_store, "docs", upserts=upserts([3, 1000]))
    assert (result.upserted, result.count) == (2, 201)
    assert {3, 1000} <= all_ids(s3_store, "docs")
    assert len(all_ids(s3_store, "docs")) == 201


def test_compact_publishes_on_top_of_the_version_it_read(s3_store: ObjectStore) -> None:
    build(s3_store)
    written = writer.write(s3_store, "docs", deletes=np.arange(50))
    compacted = writer.compact(s3_store, "docs")
    m = catalog.read_live(s3_store, "docs").manifest
    assert (m.version, m.parent, m.count) == (compacted.version, written.version, 150)
