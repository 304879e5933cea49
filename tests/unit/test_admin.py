"""Collections as a whole (kdbuckets.admin), on moto in-process: listing and dropping.

Pins what the handler tests cannot reach cheaply: listing pages through more than 1,000
folders, folders that are not collections, a store prefix, a drop that dies at each step
(the collection is not found afterwards, and the same drop finishes it), a writer that read
HEAD before the drop (it cannot bring the collection back), and a rebuild under the same
name while an old drop finishes (its objects are kept).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from kdbuckets import (
    CollectionNotFound,
    Conflict,
    ObjectStore,
    Searcher,
    admin,
    catalog,
    drop_collection,
    list_collections,
    service,
    writer,
)
from kdbuckets.events import MAX_PROBES
from kdbuckets.sources import items_to_collection
from kdbuckets.storage import StorageError
from kdbuckets.versions import rollback

INDEX = "kdbuckets-demo-index"
Q = np.array([[1.0, 2.0, 0.5, 0.25]], dtype=np.float32)


def build(store: ObjectStore, name: str, n: int = 12, **extra: Any) -> str:
    items = [{"id": f"{name}-{i}", "vector": [1.0, float(i), 0.5, 0.25]} for i in range(n)]
    event = {"collection": name, "source": {"items": items}, "bucket_size": 4, **extra}
    return service.build(event, store)["version"]


def keys(s3: Any, prefix: str = "") -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=INDEX, Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def query(store: ObjectStore, name: str, **extra: Any) -> Any:
    return Searcher(store).search(name, Q, k=3, probes=MAX_PROBES, **extra)


def test_list_pages_through_folders_and_keeps_only_collections(s3: Any) -> None:
    store = ObjectStore(INDEX)
    for i in range(25):  # folders without HEAD (each with two objects): pages must be followed
        for kind in ("buckets", "ids"):
            s3.put_object(Bucket=INDEX, Key=f"f{i:02d}/{kind}/x", Body=b"")
    s3.put_object(Bucket=INDEX, Key="loose-object", Body=b"")  # not a folder
    s3.put_object(Bucket=INDEX, Key="not..valid/HEAD", Body=b"")  # not a collection name
    assert admin.collection_names(store, page_size=7) == [f"f{i:02d}" for i in range(25)]
    v_b, v_a = build(store, "zeta", n=5), build(store, "alpha", n=9)
    listed = [c.as_dict() for c in list_collections(store)]
    assert listed == [
        {"collection": "alpha", "version": v_a, "count": 9},
        {"collection": "zeta", "version": v_b, "count": 5},
    ]


def test_list_sees_only_the_store_prefix_and_reports_a_corrupt_head_without_hiding_others(s3: Any) -> None:
    tenants, root = ObjectStore(INDEX, "tenants/"), ObjectStore(INDEX)
    build(tenants, "a")
    build(root, "b")
    s3.put_object(Bucket=INDEX, Key="tenants/broken/HEAD", Body=b"not json")
    listed = list_collections(tenants)
    assert [c.collection for c in listed] == ["a", "broken"]
    assert listed[1].version is None
    assert "HEAD is not JSON" in (listed[1].error or "")
    assert [c.collection for c in list_collections(root)] == ["b"]  # "tenants/" has no HEAD


def test_drop_removes_only_its_own_prefix(s3: Any) -> None:
    store = ObjectStore(INDEX)
    version = build(store, "docs")
    build(store, "docs2")
    build(store, "doc")
    others = {k: s3.head_object(Bucket=INDEX, Key=k)["ETag"] for k in keys(s3) if not k.startswith("docs/")}
    report = drop_collection(store, "docs", version)
    assert report.version == version
    assert report.deleted_objects > 3
    assert not report.resumed
    assert keys(s3, "docs/") == set()
    assert {k: s3.head_object(Bucket=INDEX, Key=k)["ETag"] for k in keys(s3)} == others
    with pytest.raises(CollectionNotFound):
        query(store, "docs")
    assert len(query(store, "docs2").ids[0]) == 3


def test_a_drop_that_dies_after_removing_head_leaves_the_collection_not_found_and_is_finished_by_a_retry(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(INDEX)
    version = build(store, "docs")
    warm = Searcher(store)
    warm.search("docs", Q, k=3)  # a container that knows the version
    real_delete = store.delete_many
    calls = []

    def dies_after_manifests(keys_: Any) -> int:
        calls.append(list(keys_))
        if len(calls) == 2:  # manifests went; the buckets' batch fails
            raise StorageError("injected")
        return real_delete(keys_)

    monkeypatch.setattr(store, "delete_many", dies_after_manifests)
    with pytest.raises(StorageError, match="injected"):
        drop_collection(store, "docs", version)
    monkeypatch.setattr(store, "delete_many", real_delete)
    assert all(k.startswith("docs/manifests/") for k in calls[0])
    assert keys(s3, "docs/buckets/")  # half deleted ...
    for searcher in (warm, Searcher(store)):  # ... and not found, warm or cold, live or pinned
        with pytest.raises(CollectionNotFound):
            searcher.search("docs", Q, k=3)
    with pytest.raises(CollectionNotFound):
        query(store, "docs", version=version)
    assert list_collections(store) == []
    with pytest.raises(Conflict, match=f"unfinished drop of version {version}"):
        drop_collection(store, "docs", "20200101T000000000000Z-00000000")
    report = drop_collection(store, "docs", version)
    assert report.resumed
    assert keys(s3, "docs/") == set()
    with pytest.raises(CollectionNotFound):
        drop_collection(store, "docs", version)


def test_a_drop_that_dies_before_removing_head_changes_nothing_visible(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(INDEX)
    version = build(store, "docs")

    def unreachable(*args: Any) -> bool:
        raise StorageError("injected")

    monkeypatch.setattr(catalog, "delete_head", unreachable)
    with pytest.raises(StorageError):
        drop_collection(store, "docs", version)
    monkeypatch.undo()
    assert query(store, "docs").version == version  # still answers, complete
    assert drop_collection(store, "docs", version).deleted_objects > 0
    assert keys(s3, "docs/") == set()


def test_head_moved_between_the_check_and_the_swap_is_a_conflict_and_deletes_nothing(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(INDEX)
    version = build(store, "docs")
    real_delete_head = catalog.delete_head

    def writer_sneaks_in(store_: ObjectStore, collection: str, etag: str) -> bool:
        build(store, "docs", n=13, replace=True)
        return real_delete_head(store_, collection, etag)

    monkeypatch.setattr(catalog, "delete_head", writer_sneaks_in)
    before = keys(s3, "docs/")
    with pytest.raises(Conflict, match=f"moved from version {version} to "):
        drop_collection(store, "docs", version)
    after = keys(s3, "docs/")
    assert before <= after
    assert admin.marker_key("docs") not in after
    assert query(store, "docs").version != version


def test_a_writer_that_read_head_before_the_drop_cannot_bring_the_collection_back(s3: Any) -> None:
    store = ObjectStore(INDEX)
    version = build(store, "docs")
    snapshot = catalog.read_live(store, "docs")  # a writer mid-flight on the old version
    drop_collection(store, "docs", version)
    with pytest.raises(CollectionNotFound):
        catalog.publish(store, snapshot.manifest, snapshot.etag)
    assert catalog.read_head(store, "docs") is None
    with pytest.raises(CollectionNotFound):
        writer.write(
            store,
            "docs",
            upserts=items_to_collection([{"id": "x", "vector": [1, 2, 3, 4]}], metric="l2", field="items"),
        )


def test_a_rebuild_while_an_old_drop_finishes_keeps_its_objects(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(INDEX)
    version = build(store, "docs")
    monkeypatch.setattr(admin, "_purge", lambda *a, **k: (_ for _ in ()).throw(StorageError("injected")))
    with pytest.raises(StorageError):
        drop_collection(store, "docs", version)  # HEAD gone, marker written, nothing purged
    monkeypatch.undo()
    marker_time = s3.head_object(Bucket=INDEX, Key=admin.marker_key("docs"))["LastModified"]
    while True:  # LastModified has 1 s resolution: let the rebuild land in a later second
        s3.put_object(Bucket=INDEX, Key="clock", Body=b"")
        if s3.head_object(Bucket=INDEX, Key="clock")["LastModified"] > marker_time:
            break
        time.sleep(0.05)
    fresh = build(store, "docs", n=12)  # same content: re-uses (and so refreshes) old buckets
    before = query(store, "docs")
    # The retried drop looked before the rebuild published and purges after it:
    report = admin._purge(store, "docs", version, resumed=True)
    assert report.deleted_objects >= 1  # the old manifest at least
    after = query(store, "docs")
    assert after.version == fresh
    assert list(after.ids[0]) == list(before.ids[0])
    with pytest.raises(Conflict, match=f"at version {fresh}, not expected_version {version}"):
        drop_collection(store, "docs", version)
    assert [c.version for c in list_collections(store)] == [fresh]
    drop_collection(store, "docs", fresh)
    assert keys(s3, "docs/") == set()


def test_a_rollback_cannot_bring_back_a_collection_whose_drop_died_midway(
    s3: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(INDEX)
    first = build(store, "docs")
    second = build(store, "docs", n=8, replace=True)
    monkeypatch.setattr(store, "delete_many", lambda keys_: (_ for _ in ()).throw(StorageError("injected")))
    with pytest.raises(StorageError, match="injected"):
        drop_collection(store, "docs", second)  # HEAD is gone, every manifest still there
    monkeypatch.undo()

    with pytest.raises(Conflict, match="being dropped"):
        rollback(store, "docs", first)  # "repairs a missing HEAD" must not undo a drop

    assert catalog.read_head(store, "docs") is None
    with pytest.raises(CollectionNotFound):
        query(store, "docs")
