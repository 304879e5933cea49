"""Versions of a collection: listing, describing, rollback and garbage collection (moto in-process).

Small collections are built with :func:`build_index` (no refinement, no replication, so
the same data always gives the same content-addressed buckets). Time passing is simulated
with ``now=``; where a test needs an object to be *younger* than the rest (an upload or a
rollback "just now" in simulated time), it sets that object's LastModified in moto.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import numpy as np
import pytest
from moto.core import DEFAULT_ACCOUNT_ID
from moto.s3.models import s3_backends

from kdbuckets import layout
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.codec import fingerprint
from kdbuckets.collection import make_collection
from kdbuckets.errors import CollectionNotFound, Conflict, CorruptObject, InvalidRequest
from kdbuckets.gc import GcReport, collect_garbage
from kdbuckets.manifest import Manifest, decode_head, encode_head, encode_hierarchy
from kdbuckets.searcher import Searcher
from kdbuckets.storage import ObjectStore
from kdbuckets.versions import describe_version, list_versions, rollback
from tests.conftest import read_manifest

N, DIM = 240, 8
PARAMS = BuildParams(metric="l2", bucket_size=30, refine=0, replicate=0.0, dtype="float32")
GRACE = 900.0
LATER = GRACE + 3600.0  # seconds after the builds: everything built so far is past its grace
ALL_PROBES = 4096
UNKNOWN = "20000101T000000000000Z-00000000"


# -- helpers -----------------------------------------------------------------------------------
def dataset(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Vectors (N, DIM) and ids that say which data set they came from (seed * 10_000 + row)."""
    vectors = np.random.default_rng(seed).normal(size=(N, DIM)).astype(np.float32)
    return vectors, np.arange(N, dtype=np.int64) + seed * 10_000


def build(store: ObjectStore, seed: int, collection: str = "docs") -> str:
    vectors, ids = dataset(seed)
    labels = np.array(["red", "green", "blue"])[ids % 3]
    return build_index(
        store, collection, make_collection(vectors, ids, labels, metric="l2"), PARAMS, replace=True
    ).version


def build_many(store: ObjectStore, seeds: list[int], collection: str = "docs") -> list[str]:
    return [build(store, seed, collection) for seed in seeds]


def manifest(store: ObjectStore, version: str, collection: str = "docs") -> Manifest:
    return read_manifest(store, layout.manifest_key(collection, version))


def bucket_keys(store: ObjectStore, version: str, collection: str = "docs") -> set[str]:
    return {
        layout.bucket_key(collection, fp) for fp in manifest(store, version, collection).buckets.fingerprints
    }


def version_keys(store: ObjectStore, version: str, collection: str = "docs") -> set[str]:
    """Every object ``version`` needs: its manifest (root, parts, tree), buckets and id-directory shards."""
    m = manifest(store, version, collection)
    shards = {layout.id_shard_key(collection, fp) for fp in m.id_shards}
    parts = {layout.part_key(collection, fp) for fp in m.stored}
    return (
        bucket_keys(store, version, collection) | shards | parts | {layout.manifest_key(collection, version)}
    )


def keys(store: ObjectStore, prefix: str = "") -> set[str]:
    return {o.key for o in store.list_objects(prefix)}


def head_version(store: ObjectStore, collection: str = "docs") -> str:
    key = layout.head_key(collection)
    return decode_head(store.get(key)[0], key=key).version


def after(seconds: float) -> datetime:
    """A simulated 'now', ``seconds`` after the real present."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


def set_last_modified(store: ObjectStore, key: str, when: datetime) -> None:
    """Pretend ``key`` was written at ``when`` (moto keeps LastModified as naive UTC)."""
    obj = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[store.bucket].keys[store.prefix + key]
    obj.last_modified = when.astimezone(UTC).replace(tzinfo=None)


def raw_s3() -> Any:
    """A client of its own, so that fault injection on the store's client does not recurse."""
    return boto3.client("s3", region_name="us-east-1")


def nearest_ids(
    store: ObjectStore, queries: np.ndarray, version: str | None = None
) -> list[int | str | None]:
    result = Searcher(store, head_ttl=0).search("docs", queries, k=1, probes=ALL_PROBES, version=version)
    return [row[0] for row in result.ids]


def on_put(store: ObjectStore, key_suffix: str, action: Callable[[], None]) -> None:
    """Run ``action`` once, just before the store's client PUTs a key ending in ``key_suffix``."""
    fired: list[bool] = []

    def handler(params: dict[str, Any], **kwargs: Any) -> None:
        if params.get("Key", "").endswith(key_suffix) and not fired:
            fired.append(True)
            action()

    store.client.meta.events.register("before-parameter-build.s3.PutObject", handler)


def on_list(store: ObjectStore, prefix: str, action: Callable[[], None]) -> None:
    """Run ``action`` once, just before the store's client lists exactly ``prefix``."""
    fired: list[bool] = []

    def handler(params: dict[str, Any], **kwargs: Any) -> None:
        if params.get("Prefix") == prefix and not fired:
            fired.append(True)
            action()

    store.client.meta.events.register("before-parameter-build.s3.ListObjectsV2", handler)


def in_flight_copy(store: ObjectStore, of_version: str, version: str) -> str:
    """Upload a manifest that reuses ``of_version``'s buckets, as a publish in flight would."""
    m = replace(manifest(store, of_version), version=version, created_at=datetime.now(UTC).isoformat())
    key = layout.manifest_key("docs", version)
    store.put(key, encode_hierarchy(m).root, if_absent=True)  # its parts are the very same objects
    return key


def craft_version(store: ObjectStore, like: str, version: str, *, parent: str | None, at: datetime) -> None:
    """A version with ``like``'s buckets, built on ``parent`` and published at ``at`` (simulated)."""
    m = replace(manifest(store, like), version=version, parent=parent, created_at=at.isoformat())
    key = layout.manifest_key("docs", version)
    store.put(key, encode_hierarchy(m).root)
    set_last_modified(store, key, at)


def point_head(store: ObjectStore, version: str, at: datetime) -> None:
    """Write HEAD as if at ``at``, leaving no rollback marker (an outside tool, an old client)."""
    key = layout.manifest_key("docs", version)
    store.put("docs/HEAD", encode_head(version, key, fingerprint(store.get(key)[0])))
    set_last_modified(store, "docs/HEAD", at)


# -- list_versions -----------------------------------------------------------------------------
def test_list_versions_is_newest_first_and_marks_the_head(s3_store: ObjectStore) -> None:
    v1, v2, v3 = build_many(s3_store, [1, 2, 3])
    listed = list_versions(s3_store, "docs")
    assert [v.version for v in listed] == [v3, v2, v1]
    assert [v.is_head for v in listed] == [True, False, False]
    assert [v.parent for v in listed] == [v2, v1, None]
    newest = listed[0]
    m = manifest(s3_store, v3)
    assert (newest.count, newest.buckets, newest.bytes) == (N, m.n_buckets, int(m.buckets.sizes.sum()))
    assert newest.created_at == m.created_at
    own = bucket_keys(s3_store, v3)
    assert newest.bytes == sum(o.size for o in s3_store.list_objects("docs/") if o.key in own)


def test_list_versions_after_a_rollback_marks_the_older_version_as_head(s3_store: ObjectStore) -> None:
    v1, v2 = build_many(s3_store, [1, 2])
    rollback(s3_store, "docs", v1)
    assert [(v.version, v.is_head) for v in list_versions(s3_store, "docs")] == [(v2, False), (v1, True)]


def test_list_versions_of_a_collection_that_never_existed_raises_collection_not_found(
    s3_store: ObjectStore,
) -> None:
    with pytest.raises(CollectionNotFound, match="'ghost'"):
        list_versions(s3_store, "ghost")


def test_list_versions_names_the_key_of_a_manifest_that_does_not_decode(s3_store: ObjectStore) -> None:
    build(s3_store, 1)
    bad = layout.manifest_key("docs", "20990101T000000000000Z-deadbeef")
    s3_store.put(bad, b"\x93not a manifest")
    with pytest.raises(CorruptObject) as info:
        list_versions(s3_store, "docs")
    assert info.value.key == bad


def test_list_versions_ignores_a_collection_whose_name_extends_this_one(s3_store: ObjectStore) -> None:
    (v1,) = build_many(s3_store, [1], "docs")
    build_many(s3_store, [2, 3], "docs2")
    assert [v.version for v in list_versions(s3_store, "docs")] == [v1]


def test_list_versions_rejects_an_unsafe_collection_name(s3_store: ObjectStore) -> None:
    with pytest.raises(InvalidRequest) as info:
        list_versions(s3_store, "../docs")
    assert info.value.field == "collection"


# -- describe_version --------------------------------------------------------------------------
def test_describe_version_summarises_shape_buckets_and_calibration(s3_store: ObjectStore) -> None:
    v1, v2 = build_many(s3_store, [1, 2])
    m = manifest(s3_store, v1)
    summary = describe_version(s3_store, "docs", v1)
    json.dumps(summary)  # JSON-ready as it is
    assert (summary["version"], summary["parent"], summary["is_head"]) == (v1, None, False)
    assert (summary["count"], summary["dim"], summary["metric"], summary["dtype"]) == (
        N,
        DIM,
        "l2",
        "float32",
    )
    assert summary["params"]["bucket_size"] == 30
    assert summary["created_at"] == m.created_at
    assert summary["buckets"] == m.n_buckets
    rows = summary["bucket_rows"]
    assert rows["min"] <= rows["median"] <= rows["max"] <= 30
    assert summary["stored_rows"] == N  # no replication in these builds
    assert summary["bytes"] == int(m.buckets.sizes.sum())
    assert summary["label_names"] == 3
    probes = summary["calibration"]["probes_for_recall"]
    assert list(probes) == ["0.9", "0.95", "0.99"]
    assert 1 <= probes["0.9"] <= probes["0.95"] <= probes["0.99"] <= m.n_buckets
    assert describe_version(s3_store, "docs", v2)["is_head"] is True
    assert describe_version(s3_store, "docs", v2)["parent"] == v1


def test_describe_unknown_version_raises_collection_not_found_naming_it(s3_store: ObjectStore) -> None:
    build(s3_store, 1)
    with pytest.raises(CollectionNotFound) as info:
        describe_version(s3_store, "docs", UNKNOWN)
    assert (info.value.collection, info.value.version) == ("docs", UNKNOWN)


@pytest.mark.parametrize("version", ["", "../HEAD", "a/b", "x" * 65, 17])
def test_describe_rejects_a_malformed_version_naming_the_field(s3_store: ObjectStore, version: Any) -> None:
    with pytest.raises(InvalidRequest) as info:
        describe_version(s3_store, "docs", version)
    assert info.value.field == "version"


# -- rollback ----------------------------------------------------------------------------------
def test_rollback_moves_head_and_queries_serve_the_old_version(s3_store: ObjectStore) -> None:
    v1, _v2 = build_many(s3_store, [1, 2])
    vectors, ids = dataset(1)
    warm = Searcher(s3_store, head_ttl=0)
    assert warm.search("docs", vectors[:1], k=1).version != v1

    assert rollback(s3_store, "docs", v1) == v1

    assert head_version(s3_store) == v1
    result = warm.search("docs", vectors[:5], k=1, probes=ALL_PROBES)
    assert result.version == v1
    assert [row[0] for row in result.ids] == ids[:5].tolist()
    assert result.distances[:, 0].tolist() == [0.0] * 5


def test_rollback_with_the_current_expected_head_succeeds(s3_store: ObjectStore) -> None:
    v1, v2 = build_many(s3_store, [1, 2])
    assert rollback(s3_store, "docs", v1, expected_head_version=v2) == v1
    assert head_version(s3_store) == v1


def test_rollback_to_the_live_version_changes_nothing(s3_store: ObjectStore) -> None:
    (v1,) = build_many(s3_store, [1])
    before = s3_store.get("docs/HEAD")
    assert rollback(s3_store, "docs", v1) == v1
    assert s3_store.get("docs/HEAD") == before


def test_rollback_with_a_stale_expected_head_conflicts_and_writes_nothing(s3_store: ObjectStore) -> None:
    v1, _v2 = build_many(s3_store, [1, 2])
    head_before, objects_before = s3_store.get("docs/HEAD"), keys(s3_store)
    with pytest.raises(Conflict, match=v1):
        rollback(s3_store, "docs", v1, expected_head_version=v1)
    assert s3_store.get("docs/HEAD") == head_before
    assert keys(s3_store) == objects_before


def test_rollback_to_an_unknown_version_raises_collection_not_found_and_writes_nothing(
    s3_store: ObjectStore,
) -> None:
    build_many(s3_store, [1, 2])
    head_before, objects_before = s3_store.get("docs/HEAD"), keys(s3_store)
    with pytest.raises(CollectionNotFound) as info:
        rollback(s3_store, "docs", UNKNOWN)
    assert info.value.version == UNKNOWN
    assert s3_store.get("docs/HEAD") == head_before
    assert keys(s3_store) == objects_before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"version": "../HEAD"}, "version"),
        ({"version": "ok", "expected_head_version": "no/pe"}, "expected_head_version"),
    ],
)
def test_rollback_rejects_malformed_versions_naming_the_field(
    s3_store: ObjectStore, kwargs: dict[str, str], field: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        rollback(s3_store, "docs", **kwargs)
    assert info.value.field == field


def test_rollback_that_loses_the_race_for_head_raises_conflict(s3_store: ObjectStore) -> None:
    v1, v2, v3 = build_many(s3_store, [1, 2, 3])
    rival = encode_head(
        v2, layout.manifest_key("docs", v2), fingerprint(s3_store.get(f"docs/manifests/{v2}")[0])
    )
    on_put(
        s3_store,
        "docs/HEAD",
        lambda: raw_s3().put_object(Bucket=s3_store.bucket, Key="docs/HEAD", Body=rival),
    )
    with pytest.raises(Conflict, match="changed while rolling back"):
        rollback(s3_store, "docs", v1, expected_head_version=v3)
    assert head_version(s3_store) == v2  # the rival's write stands


def test_rollback_refuses_a_version_whose_buckets_were_collected(s3_store: ObjectStore) -> None:
    v1, _v2 = build_many(s3_store, [1, 2])
    gone = sorted(bucket_keys(s3_store, v1))[0]
    s3_store.delete_many([gone])
    head_before, objects_before = s3_store.get("docs/HEAD"), keys(s3_store)
    with pytest.raises(CorruptObject, match="not rolled back") as info:
        rollback(s3_store, "docs", v1)
    assert info.value.key == gone
    assert s3_store.get("docs/HEAD") == head_before
    assert keys(s3_store) == objects_before


def test_rollback_restores_head_when_a_sweep_removes_the_target_during_the_swap(
    s3_store: ObjectStore,
) -> None:
    v1, v2 = build_many(s3_store, [1, 2])
    gone = sorted(bucket_keys(s3_store, v1))[0]
    on_put(s3_store, "docs/HEAD", lambda: raw_s3().delete_object(Bucket=s3_store.bucket, Key=gone))
    with pytest.raises(CorruptObject, match="restored the previous HEAD"):
        rollback(s3_store, "docs", v1)
    assert head_version(s3_store) == v2
    vectors, ids = dataset(2)
    assert nearest_ids(s3_store, vectors[:3]) == ids[:3].tolist()


def test_rollback_repairs_a_head_that_does_not_decode(s3_store: ObjectStore) -> None:
    v1, _v2 = build_many(s3_store, [1, 2])
    s3_store.put("docs/HEAD", b"garbage")
    with pytest.raises(CorruptObject):
        rollback(s3_store, "docs", v1, expected_head_version=v1)
    assert rollback(s3_store, "docs", v1) == v1
    assert head_version(s3_store) == v1


def test_rollback_republishes_a_collection_whose_head_is_missing(s3_store: ObjectStore) -> None:
    v1, _v2 = build_many(s3_store, [1, 2])
    s3_store.delete_many(["docs/HEAD"])
    with pytest.raises(Conflict):
        rollback(s3_store, "docs", v1, expected_head_version=v1)
    assert rollback(s3_store, "docs", v1) == v1
    vectors, ids = dataset(1)
    assert nearest_ids(s3_store, vectors[:2]) == ids[:2].tolist()


# -- collect_garbage: what is kept -------------------------------------------------------------
def test_gc_inside_the_grace_window_keeps_every_version(s3_store: ObjectStore) -> None:
    v1, v2, v3 = build_many(s3_store, [1, 2, 3])
    before = keys(s3_store)
    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(60))
    assert report.kept_versions == [v3, v2, v1]
    assert (report.deleted_versions, report.deleted_objects, report.deleted_bytes) == ([], 0, 0)
    assert report.kept_objects == len(before)
    assert keys(s3_store) == before


def test_gc_after_the_grace_window_keeps_head_and_the_keep_last_newest(s3_store: ObjectStore) -> None:
    v1, v2, v3, v4 = build_many(s3_store, [1, 2, 3, 4])
    dropped = version_keys(s3_store, v1) | version_keys(s3_store, v2)
    kept = version_keys(s3_store, v3) | version_keys(s3_store, v4)
    assert not dropped & kept  # different data: nothing shared
    sizes = {o.key: o.size for o in s3_store.list_objects("docs/")}

    report = collect_garbage(s3_store, "docs", keep_last=2, grace_seconds=GRACE, now=after(LATER))

    assert (report.kept_versions, report.deleted_versions) == ([v4, v3], [v2, v1])
    assert report.deleted_objects == len(dropped)
    assert report.deleted_bytes == sum(sizes[k] for k in dropped)
    assert keys(s3_store) == kept | {"docs/HEAD"}
    assert report.kept_objects == len(kept) + 1


def test_gc_keeps_head_after_a_rollback_even_when_it_is_not_among_the_newest(s3_store: ObjectStore) -> None:
    v1, v2, v3 = build_many(s3_store, [1, 2, 3])
    rollback(s3_store, "docs", v1)
    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    assert (report.kept_versions, report.deleted_versions) == ([v3, v1], [v2])
    vectors, ids = dataset(1)
    assert nearest_ids(s3_store, vectors[:3]) == ids[:3].tolist()


def test_gc_keeps_a_version_retired_less_than_grace_ago_beyond_keep_last(s3_store: ObjectStore) -> None:
    v1, v2, v3 = build_many(s3_store, [1, 2, 3])
    created = {v.version: datetime.fromisoformat(v.created_at) for v in list_versions(s3_store, "docs")}
    # v1 retired when v2 was published, v2 when v3 was: put the grace boundary in between.
    boundary = created[v2] + (created[v3] - created[v2]) / 2
    report = collect_garbage(
        s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=boundary + timedelta(seconds=GRACE)
    )
    assert (report.kept_versions, report.deleted_versions) == ([v3, v2], [v1])


def test_gc_after_a_rollback_keeps_every_version_for_the_grace_period(s3_store: ObjectStore) -> None:
    """Any version may have been live until the rollback, however long ago it was built."""
    v1, v2, v3, v4 = build_many(s3_store, [1, 2, 3, 4])
    rollback(s3_store, "docs", v2)
    now = after(LATER)
    for key in keys(s3_store, "docs/rollbacks/") | {"docs/HEAD"}:  # the rollback happened a minute ago
        set_last_modified(s3_store, key, now - timedelta(seconds=60))

    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now)
    assert (report.kept_versions, report.deleted_versions) == ([v4, v3, v2, v1], [])

    report = collect_garbage(
        s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now + timedelta(seconds=GRACE)
    )
    assert (report.kept_versions, report.deleted_versions) == ([v4, v2], [v3, v1])
    assert not keys(s3_store, "docs/rollbacks/")  # markers expire with their grace period


def test_gc_keeps_a_rollback_target_until_grace_after_a_build_replaced_it(s3_store: ObjectStore) -> None:
    """a was live again from the rollback until d, built on it, was published five minutes ago."""
    v0 = build(s3_store, 1)
    now = after(LATER)
    a, b, c, d = (f"30000101T00000000000{i}Z-00000000" for i in range(4))
    craft_version(s3_store, v0, a, parent=None, at=now - timedelta(hours=3))
    craft_version(s3_store, v0, b, parent=a, at=now - timedelta(hours=2))
    craft_version(s3_store, v0, c, parent=b, at=now - timedelta(hours=1))
    s3_store.put("docs/rollbacks/20000101T000000000000Z-00000000", b"{}")  # c -> a, 50 minutes ago
    set_last_modified(s3_store, "docs/rollbacks/20000101T000000000000Z-00000000", now - timedelta(minutes=50))
    craft_version(s3_store, v0, d, parent=a, at=now - timedelta(minutes=5))
    point_head(s3_store, d, now - timedelta(minutes=5))

    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now)

    assert (report.kept_versions, report.deleted_versions) == ([d, c, a], [b, v0])


def test_gc_keeps_versions_newer_than_a_head_moved_back_recently(s3_store: ObjectStore) -> None:
    """Even without a rollback marker, what HEAD named before its last write was live until then."""
    v0 = build(s3_store, 1)
    now = after(LATER)
    a, b, c = (f"30000101T00000000000{i}Z-00000000" for i in range(3))
    craft_version(s3_store, v0, a, parent=None, at=now - timedelta(hours=3))
    craft_version(s3_store, v0, b, parent=a, at=now - timedelta(hours=2))
    craft_version(s3_store, v0, c, parent=b, at=now - timedelta(hours=1))
    point_head(s3_store, a, now - timedelta(minutes=1))

    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now)

    assert (report.kept_versions, report.deleted_versions) == ([c, b, a], [v0])


def test_gc_never_deletes_a_bucket_shared_with_a_kept_version(s3_store: ObjectStore) -> None:
    v1, v2, v3 = build_many(s3_store, [1, 2, 1])  # v3 holds v1's data again
    shared = version_keys(s3_store, v1) - {layout.manifest_key("docs", v1)}
    assert version_keys(s3_store, v3) - {layout.manifest_key("docs", v3)} == shared  # the very same objects
    only_v2 = version_keys(s3_store, v2) - shared
    assert bucket_keys(s3_store, v2) & only_v2

    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))

    assert (report.kept_versions, report.deleted_versions) == ([v3], [v2, v1])
    remaining = keys(s3_store)
    assert shared <= remaining
    assert not only_v2 & remaining
    assert report.deleted_objects == len(only_v2) + 1  # + the manifest of v1


def test_gc_spares_a_fresh_unreferenced_object_until_it_is_older_than_grace(s3_store: ObjectStore) -> None:
    v1, _v2 = build_many(s3_store, [1, 2])
    now = after(LATER)
    upload = layout.bucket_key("docs", "ab" * 32)  # a build in flight has uploaded it, not published
    s3_store.put(upload, b"fresh bucket")
    set_last_modified(s3_store, upload, now - timedelta(seconds=30))

    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now)
    assert report.deleted_versions == [v1]
    assert upload in keys(s3_store)

    collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now + timedelta(seconds=GRACE))
    assert upload not in keys(s3_store)


def test_gc_keeps_the_buckets_of_a_manifest_uploaded_but_not_yet_live(s3_store: ObjectStore) -> None:
    """Between a publish's manifest PUT and its HEAD swap, the buckets it reuses must stay."""
    v1, v2 = build_many(s3_store, [1, 2])
    now = after(LATER)
    pending = "29990101T000000000000Z-0000beef"
    set_last_modified(s3_store, in_flight_copy(s3_store, v1, pending), now - timedelta(seconds=5))
    reused = version_keys(s3_store, v1) - {layout.manifest_key("docs", v1)}

    report = collect_garbage(s3_store, "docs", keep_last=0, grace_seconds=GRACE, now=now)

    assert (report.kept_versions, report.deleted_versions) == ([pending, v2], [v1])
    assert reused <= keys(s3_store)
    assert rollback(s3_store, "docs", pending, expected_head_version=v2) == pending  # the swap lands
    vectors, ids = dataset(1)
    assert nearest_ids(s3_store, vectors[:3]) == ids[:3].tolist()


def test_gc_keeps_a_manifest_that_appears_during_the_sweep(s3_store: ObjectStore) -> None:
    v1, v2 = build_many(s3_store, [1, 2])
    late = "29990101T000000000000Z-00000bad"
    on_list(s3_store, "docs/", lambda: in_flight_copy(s3_store, v1, late))
    report = collect_garbage(s3_store, "docs", keep_last=0, grace_seconds=GRACE, now=after(LATER))
    assert (report.kept_versions, report.deleted_versions) == ([late, v2], [v1])
    assert version_keys(s3_store, late) <= keys(s3_store)


# -- collect_garbage: what survives it ---------------------------------------------------------
def test_after_gc_every_kept_version_answers_pinned_queries_and_has_all_its_objects(
    s3_store: ObjectStore,
) -> None:
    seeds = [1, 2, 3, 4, 5]
    versions = build_many(s3_store, seeds)
    report = collect_garbage(s3_store, "docs", keep_last=3, grace_seconds=GRACE, now=after(LATER))
    assert report.kept_versions == versions[:1:-1]
    remaining = keys(s3_store)
    for seed, version in zip(seeds, versions, strict=True):
        vectors, ids = dataset(seed)
        if version in report.kept_versions:
            assert version_keys(s3_store, version) <= remaining
            assert nearest_ids(s3_store, vectors[:4], version=version) == ids[:4].tolist()
        else:
            with pytest.raises(CollectionNotFound):
                nearest_ids(s3_store, vectors[:1], version=version)


def test_gc_that_dies_midway_never_leaves_a_manifest_naming_missing_objects(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2, 3])
    calls: list[int] = []

    def die_on_second_delete(**kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the sweep's Lambda timed out")

    s3_store.client.meta.events.register("before-parameter-build.s3.DeleteObjects", die_on_second_delete)
    with pytest.raises(RuntimeError):
        collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    remaining = keys(s3_store)
    for info in list_versions(s3_store, "docs"):
        assert version_keys(s3_store, info.version) <= remaining
    assert len(list_versions(s3_store, "docs")) == 1
    assert collect_garbage(
        s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER)
    ).deleted_objects


def test_gc_dry_run_reports_the_same_and_deletes_nothing(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2, 3, 1])
    before = keys(s3_store)
    now = after(LATER)
    dry = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now, dry_run=True)
    assert keys(s3_store) == before
    assert dry.dry_run
    assert dry.deleted_objects > 0
    real = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now)
    assert replace(dry, dry_run=False) == real
    assert len(keys(s3_store)) == real.kept_objects


def test_gc_report_is_json_ready(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2])
    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    assert isinstance(report, GcReport)
    assert json.loads(json.dumps(report.as_dict())) == report.as_dict()
    assert set(report.as_dict()) == {
        "kept_versions",
        "deleted_versions",
        "deleted_objects",
        "deleted_bytes",
        "kept_objects",
        "dry_run",
    }


def test_gc_is_idempotent(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2, 3])
    now = after(LATER)
    collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now)
    again = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=now)
    assert (again.deleted_versions, again.deleted_objects) == ([], 0)


# -- collect_garbage: what it refuses ----------------------------------------------------------
def test_gc_on_a_collection_without_head_raises_and_deletes_nothing(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2, 3])
    s3_store.delete_many(["docs/HEAD"])
    before = keys(s3_store)
    with pytest.raises(CollectionNotFound):
        collect_garbage(s3_store, "docs", keep_last=0, grace_seconds=0, now=after(LATER))
    assert keys(s3_store) == before


def test_gc_on_a_collection_that_never_existed_raises_collection_not_found(s3_store: ObjectStore) -> None:
    with pytest.raises(CollectionNotFound):
        collect_garbage(s3_store, "ghost")


@pytest.mark.parametrize(
    "head",
    [
        b"not json",
        b'{"format": "kdbuckets/head"}',
        "wrong digest",
        "missing manifest",
    ],
)
def test_gc_refuses_a_head_it_cannot_trust_and_deletes_nothing(s3_store: ObjectStore, head: Any) -> None:
    v1, _v2 = build_many(s3_store, [1, 2])
    if head == "wrong digest":
        head = encode_head(v1, layout.manifest_key("docs", v1), "0" * 64)
    elif head == "missing manifest":
        head = encode_head(UNKNOWN, layout.manifest_key("docs", UNKNOWN), "0" * 64)
    s3_store.put("docs/HEAD", head)
    before = keys(s3_store)
    with pytest.raises(CorruptObject):
        collect_garbage(s3_store, "docs", keep_last=0, grace_seconds=0, now=after(LATER))
    assert keys(s3_store) == before


def test_gc_refuses_a_manifest_it_cannot_read_and_deletes_nothing(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2, 3])
    bad = layout.manifest_key("docs", "19990101T000000000000Z-deadbeef")
    s3_store.put(bad, b"truncated")
    before = keys(s3_store)
    with pytest.raises(CorruptObject) as info:
        collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    assert info.value.key == bad
    assert keys(s3_store) == before


def test_gc_aborts_when_a_rollback_happens_during_the_sweep(s3_store: ObjectStore) -> None:
    v1, _v2, _v3 = build_many(s3_store, [1, 2, 3])
    other = ObjectStore(s3_store.bucket, client=raw_s3())
    on_list(s3_store, "docs/", lambda: rollback(other, "docs", v1))
    before = keys(s3_store)
    with pytest.raises(Conflict, match="rolled back"):
        collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    assert keys(s3_store) - before == keys(s3_store, "docs/rollbacks/")  # only the rollback wrote
    assert before <= keys(s3_store)


def test_gc_aborts_when_head_moves_to_a_dropped_version_during_the_sweep(s3_store: ObjectStore) -> None:
    v1, _v2, _v3 = build_many(s3_store, [1, 2, 3])
    old_head = encode_head(
        v1, layout.manifest_key("docs", v1), fingerprint(s3_store.get(f"docs/manifests/{v1}")[0])
    )
    on_list(
        s3_store, "docs/", lambda: raw_s3().put_object(Bucket=s3_store.bucket, Key="docs/HEAD", Body=old_head)
    )
    before = keys(s3_store)
    with pytest.raises(Conflict, match=f"moved to {v1}"):
        collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    assert keys(s3_store) == before


def test_gc_never_touches_a_collection_whose_name_extends_this_one(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2, 3], "docs")
    build_many(s3_store, [4, 5, 6], "docs2")
    neighbour = keys(s3_store, "docs2")
    report = collect_garbage(s3_store, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    assert report.deleted_objects > 0
    assert keys(s3_store, "docs2") == neighbour


def test_gc_leaves_objects_of_unknown_kinds_alone(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2])
    s3_store.put("docs/notes/README", b"operator's notes")
    s3_store.put("docs/HEAD.bak", b"a copy someone made")
    collect_garbage(s3_store, "docs", keep_last=0, grace_seconds=0, now=after(LATER))
    assert {"docs/notes/README", "docs/HEAD.bak", "docs/HEAD"} <= keys(s3_store)


def test_gc_works_under_a_store_prefix_and_stays_inside_it(s3_store: ObjectStore) -> None:
    build_many(s3_store, [1, 2])  # unprefixed "docs/..."
    outside = keys(s3_store)
    prefixed = ObjectStore(s3_store.bucket, prefix="indexes/")
    _w1, w2 = build_many(prefixed, [3, 4])
    report = collect_garbage(prefixed, "docs", keep_last=1, grace_seconds=GRACE, now=after(LATER))
    assert report.kept_versions == [w2]
    assert keys(prefixed) == version_keys(prefixed, w2) | {"docs/HEAD"}
    assert outside <= keys(s3_store)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"keep_last": -1}, "keep_last"),
        ({"keep_last": True}, "keep_last"),
        ({"keep_last": 2.0}, "keep_last"),
        ({"grace_seconds": -1.0}, "grace_seconds"),
        ({"grace_seconds": float("nan")}, "grace_seconds"),
        ({"grace_seconds": "900"}, "grace_seconds"),
        ({"now": datetime(2030, 1, 1)}, "now"),  # naive
    ],
)
def test_gc_rejects_bad_arguments_naming_the_field(
    s3_store: ObjectStore, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        collect_garbage(s3_store, "docs", **kwargs)
    assert info.value.field == field
