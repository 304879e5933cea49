"""The catalog: the one place HEAD and manifests are read, verified and published."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kdbuckets import catalog, layout
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.codec import fingerprint
from kdbuckets.collection import make_collection
from kdbuckets.errors import CollectionNotFound, Conflict, CorruptObject, InvalidRequest
from kdbuckets.manifest import encode_head
from kdbuckets.storage import ObjectStore, PreconditionFailed

PARAMS = BuildParams(metric="l2", bucket_size=20, refine=0, replicate=0.0)


def build(store: ObjectStore, name: str = "docs", seed: int = 0, **kwargs: Any) -> str:
    vectors = np.random.default_rng(seed).normal(size=(100, 4)).astype(np.float32)
    data = make_collection(vectors, None, None, metric="l2")
    return build_index(store, name, data, PARAMS, **kwargs).version


def copy_prefix(store: ObjectStore, source: str, target: str) -> None:
    """What ``aws s3 sync docs/ copy/`` does: every object, byte for byte, under a new prefix."""
    for info in store.list_objects(f"{source}/"):
        store.put(target + info.key[len(source) :], store.get(info.key)[0])


# -- reading -----------------------------------------------------------------------------------
def test_read_live_returns_head_etag_and_the_verified_manifest(s3_store: ObjectStore) -> None:
    version = build(s3_store)
    snap = catalog.read_live(s3_store, "docs")
    assert snap.head.version == snap.manifest.version == version
    assert snap.manifest.collection == "docs"
    assert snap.etag == s3_store.get(layout.head_key("docs"))[1]
    root = len(s3_store.get(layout.manifest_key("docs", version))[0])
    parts = sum(len(s3_store.get(layout.part_key("docs", fp))[0]) for fp in snap.manifest.stored)
    assert snap.manifest.stored  # a root, its part and its tree
    assert snap.manifest_bytes == root + parts


def test_a_collection_without_head_is_not_found(s3_store: ObjectStore) -> None:
    assert catalog.read_head(s3_store, "ghost") is None
    with pytest.raises(CollectionNotFound, match="ghost"):
        catalog.read_live(s3_store, "ghost")


def test_a_copied_prefix_whose_head_points_into_the_original_is_refused(s3_store: ObjectStore) -> None:
    build(s3_store, "docs")
    copy_prefix(s3_store, "docs", "copy")
    with pytest.raises(CorruptObject, match="not 'copy/manifests/") as err:
        catalog.read_live(s3_store, "copy")
    assert err.value.key == "copy/HEAD"


def test_a_manifest_that_names_another_collection_is_refused_even_with_a_matching_hash(
    s3_store: ObjectStore,
) -> None:
    version = build(s3_store, "docs")
    copy_prefix(s3_store, "docs", "copy")
    body = s3_store.get(layout.manifest_key("copy", version))[0]
    s3_store.put("copy/HEAD", encode_head(version, layout.manifest_key("copy", version), fingerprint(body)))
    with pytest.raises(CorruptObject, match="names collection 'docs'"):
        catalog.read_live(s3_store, "copy")


def test_a_manifest_whose_hash_differs_from_head_is_refused(s3_store: ObjectStore) -> None:
    version = build(s3_store)
    key = layout.manifest_key("docs", version)
    s3_store.put("docs/HEAD", encode_head(version, key, "0" * 64))
    with pytest.raises(CorruptObject, match="SHA-256 differs"):
        catalog.read_live(s3_store, "docs")


def test_head_naming_a_missing_manifest_is_corrupt_but_a_missing_pinned_version_is_not_found(
    s3_store: ObjectStore,
) -> None:
    build(s3_store)
    with pytest.raises(CollectionNotFound, match="no version"):
        catalog.load_manifest(s3_store, "docs", "20200101T000000000000Z-00000000")
    ghost = "20200101T000000000000Z-00000000"
    s3_store.put("docs/HEAD", encode_head(ghost, layout.manifest_key("docs", ghost), "0" * 64))
    with pytest.raises(CorruptObject, match="does not exist"):
        catalog.read_live(s3_store, "docs")


@pytest.mark.parametrize("version", ["", "a/b", "é", "x" * 65, "v1\n"])
def test_a_malformed_version_id_names_the_field(s3_store: ObjectStore, version: str) -> None:
    with pytest.raises(InvalidRequest, match=r"^version is not a valid version id"):
        catalog.load_manifest(s3_store, "docs", version)


def test_revalidate_head_returns_the_same_state_until_head_moves(s3_store: ObjectStore) -> None:
    build(s3_store)
    first = catalog.require_head(s3_store, "docs")
    assert catalog.revalidate_head(s3_store, "docs", first) is first
    second_version = build(s3_store, seed=1, replace=True)
    moved = catalog.revalidate_head(s3_store, "docs", first)
    assert moved is not None
    assert moved.head.version == second_version


def test_new_versions_sort_by_time_and_are_valid_ids() -> None:
    versions = [catalog.new_version() for _ in range(50)]
    assert sorted(versions) == versions or len(set(v[:22] for v in versions)) < 50  # same microsecond
    assert len(set(versions)) == 50
    assert all(layout.is_version(v) for v in versions)


# -- publishing --------------------------------------------------------------------------------
def test_publish_swaps_head_only_from_the_expected_etag(s3_store: ObjectStore) -> None:
    build(s3_store)
    snap = catalog.read_live(s3_store, "docs")
    rival = build(s3_store, seed=2, replace=True)  # HEAD moves on under us
    mine = _next(snap.manifest)
    with pytest.raises(Conflict, match="another writer"):
        catalog.publish(s3_store, mine, snap.etag)
    assert catalog.require_head(s3_store, "docs").head.version == rival


def test_publish_of_a_new_collection_requires_that_none_exists(s3_store: ObjectStore) -> None:
    build(s3_store)
    snap = catalog.read_live(s3_store, "docs")
    with pytest.raises(Conflict):
        catalog.publish(s3_store, _next(snap.manifest), None)


def test_publish_recognises_its_own_head_swap_whose_response_was_lost(s3_store: ObjectStore) -> None:
    build(s3_store)
    snap = catalog.read_live(s3_store, "docs")
    mine = _next(snap.manifest)
    catalog.publish(s3_store, mine, snap.etag)
    # botocore retried the HEAD PUT after a lost response: the retry sees 412, HEAD is already ours.
    assert catalog.publish(s3_store, mine, snap.etag) == layout.manifest_key("docs", mine.version)
    assert catalog.require_head(s3_store, "docs").head.version == mine.version


def test_publish_recognises_its_own_manifest_put_whose_response_was_lost(s3_store: ObjectStore) -> None:
    build(s3_store)
    snap = catalog.read_live(s3_store, "docs")
    mine = _next(snap.manifest)
    from kdbuckets.manifest import encode_hierarchy

    s3_store.put(layout.manifest_key("docs", mine.version), encode_hierarchy(mine).root, if_absent=True)
    catalog.publish(s3_store, mine, snap.etag)  # its own manifest already there: not a conflict
    assert catalog.read_live(s3_store, "docs").manifest.version == mine.version


def test_publish_never_overwrites_a_different_manifest_under_the_same_version(s3_store: ObjectStore) -> None:
    build(s3_store)
    snap = catalog.read_live(s3_store, "docs")
    mine = _next(snap.manifest)
    s3_store.put(layout.manifest_key("docs", mine.version), b"someone else's bytes")
    with pytest.raises(Conflict, match="already exists"):
        catalog.publish(s3_store, mine, snap.etag)
    assert catalog.require_head(s3_store, "docs").head.version == snap.manifest.version


def test_swap_head_is_a_compare_and_swap(s3_store: ObjectStore) -> None:
    build(s3_store)
    state = catalog.require_head(s3_store, "docs")
    body = s3_store.get("docs/HEAD")[0] + b"\n"  # same pointer, new bytes: a new ETag
    etag = catalog.swap_head(s3_store, "docs", body, state.etag)
    assert etag != state.etag
    with pytest.raises(PreconditionFailed):
        catalog.swap_head(s3_store, "docs", body, state.etag)
    assert catalog.swap_head(s3_store, "docs", body + b"\n", etag)


def _next(manifest: Any) -> Any:
    """A successor version of ``manifest`` with the same buckets (what a no-op write publishes)."""
    from dataclasses import replace

    return replace(manifest, version=catalog.new_version(), parent=manifest.version)
