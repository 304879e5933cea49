"""Manifests and HEAD documents: round trips, and refusal of damaged or inconsistent ones."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdbuckets import codec
from kdbuckets.bucket import IdColumn, encode_bucket
from kdbuckets.builder import BuildParams
from kdbuckets.errors import CorruptObject
from kdbuckets.manifest import (
    BucketTable,
    Head,
    Manifest,
    decode_head,
    decode_manifest,
    encode_head,
    encode_manifest,
)
from kdbuckets.partition import partition

KEY = "docs/manifests/v1"
SHA = "ab" * 32


def make_manifest(**overrides: Any) -> Manifest:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(400, 5)).astype(np.float32)
    params = BuildParams(metric="l2", bucket_size=40, seed=3)
    part = partition(vectors, params)
    bodies = [encode_bucket(vectors[r], IdColumn.from_values(r), None) for r in part.leaf_rows]
    centroids = np.stack([vectors[r].mean(axis=0) for r in part.leaf_rows]).astype(np.float32)
    table = BucketTable(
        fingerprints=[codec.fingerprint(b) for b in bodies],
        sizes=np.array([len(b) for b in bodies], dtype=np.int64),
        rows=np.array([len(r) for r in part.leaf_rows], dtype=np.int64),
        centroids=centroids,
    )
    fields: dict[str, Any] = {
        "collection": "docs",
        "version": "v1",
        "parent": "v0",
        "created_at": "2024-05-01T12:00:00.000+00:00",
        "dim": 5,
        "metric": "l2",
        "dtype": "float32",
        "count": 400,
        "id_kind": "int",
        "label_names": ["cat", "dog"],
        "params": params.as_dict(),
        "tree": part.tree,
        "buckets": table,
        "extra": {"note": "ünïcode"},
    }
    fields.update(overrides)
    return Manifest(**fields)


def rewrite(body: bytes, change: Any) -> bytes:
    obj = msgpack.unpackb(body, raw=False)
    change(obj)
    return codec.dumps(obj)


def test_manifest_round_trips_every_field() -> None:
    m = make_manifest()
    back = decode_manifest(encode_manifest(m), key=KEY)
    for name in ("collection", "version", "parent", "created_at", "dim", "metric", "dtype", "count"):
        assert getattr(back, name) == getattr(m, name)
    assert back.id_kind == "int"
    assert back.label_names == ["cat", "dog"]
    assert back.params == m.params
    assert back.extra == m.extra
    for name in ("planes", "node_plane", "threshold", "left", "right", "node_leaf"):
        assert np.array_equal(getattr(back.tree, name), getattr(m.tree, name)), name
    assert back.buckets.fingerprints == m.buckets.fingerprints
    for name in ("sizes", "rows", "centroids"):
        assert np.array_equal(getattr(back.buckets, name), getattr(m.buckets, name)), name
    assert back.n_buckets == m.n_buckets > 4
    assert encode_manifest(back) == encode_manifest(m)


def test_manifest_without_labels_or_parent_round_trips() -> None:
    m = make_manifest(label_names=None, parent=None, extra={})
    back = decode_manifest(encode_manifest(m), key=KEY)
    assert back.label_names is None
    assert back.parent is None
    assert back.extra == {}


def test_decoded_tree_routes_points_like_the_original() -> None:
    m = make_manifest()
    back = decode_manifest(encode_manifest(m), key=KEY)
    points = np.random.default_rng(1).normal(size=(100, 5)).astype(np.float32)
    assert np.array_equal(back.tree.leaf_of(points), m.tree.leaf_of(points))


def _set(path: tuple[str, ...], value: Any) -> Any:
    def change(obj: dict) -> None:
        for part in path[:-1]:
            obj = obj[part]
        obj[path[-1]] = value

    return change


def _tree_array(name: str, edit: Any) -> Any:
    """Replace tree array ``name`` by ``edit(copy of it)``, keeping a valid encoding."""

    def change(obj: dict) -> None:
        node = obj["tree"][name]
        array = np.frombuffer(node["data"], dtype=node["dtype"]).reshape(node["shape"]).copy()
        obj["tree"][name] = codec.pack_array(edit(array))

    return change


def _bucket_array(name: str, edit: Any) -> Any:
    def change(obj: dict) -> None:
        node = obj["buckets"][name]
        array = np.frombuffer(node["data"], dtype=node["dtype"]).reshape(node["shape"]).copy()
        obj["buckets"][name] = codec.pack_array(edit(array))

    return change


def _assign(array: np.ndarray, index: int, value: int) -> np.ndarray:
    array[index] = value
    return array


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_set(("format",), "kdbuckets/bucket"), "not a kdbuckets manifest"),
        (_set(("format_version",), 2), "format_version 2"),
        (_set(("format_version",), "1"), "'format_version' has type str"),
        (_set(("dim",), 6), "dimension"),
        (_set(("dim",), "5"), "'dim' has type str"),
        (_set(("tree",), None), "'tree' has type NoneType"),
        (_set(("buckets",), []), "'buckets' has type list"),
        (_set(("collection",), 5), "'collection' has type int"),
        (_set(("version",), None), "'version' has type NoneType"),
        (_set(("count",), 1.5), "'count' has type float"),
        (_set(("params",), "x"), "'params' has type str"),
        (_set(("label_names",), ["a", 1]), "label_names"),
        (_set(("label_names",), "cat,dog"), "label_names"),
        (_set(("buckets", "fingerprints"), "abc"), "fingerprints"),
        (lambda obj: obj["buckets"]["fingerprints"].__setitem__(0, "XYZ"), "fingerprints"),
        (lambda obj: obj["buckets"]["fingerprints"].pop(), "tree structure"),
        (lambda obj: obj["tree"].pop("threshold"), "'threshold' is not an encoded array"),
        (_tree_array("threshold", lambda a: a[:-1]), "disagree in length"),
        (_tree_array("node_plane", lambda a: a.astype(np.int64)), "unexpected dtype"),
        (_tree_array("node_plane", lambda a: _assign(a, 0, 99)), "tree structure"),
        (_tree_array("left", lambda a: _assign(a, 0, 0)), "tree structure"),
        (_tree_array("right", lambda a: _assign(a, 0, -1)), "tree structure"),
        (_tree_array("left", lambda a: _assign(a, 0, 10_000)), "tree structure"),
        (_tree_array("node_leaf", lambda a: np.where(a == 0, 1, a)), "tree structure"),
        (_tree_array("node_leaf", lambda a: _assign(a, 0, 2**31 - 1)), "tree structure"),  # split and leaf
        (_tree_array("planes", lambda a: a[:, :4]), "dimension"),
        (_tree_array("planes", lambda a: a.ravel()), "invalid shape"),
        (_bucket_array("rows", lambda a: a[:-1]), "bucket rows"),
        (_bucket_array("sizes", lambda a: np.append(a, 1)), "bucket sizes"),
        (_bucket_array("centroids", lambda a: a[:, :3]), "centroids"),
        # Fields the query, write, gc and compact paths read: wrong types are corrupt, not a crash.
        (_set(("params", "bucket_size"), "1000"), "params are not valid build parameters"),
        (_set(("params", "replicate"), [0.25]), "params are not valid build parameters"),
        (_set(("params", "ranking"), 7), "params are not valid build parameters"),
        (_set(("params", "surprise"), 1), "params are not valid build parameters"),
        (_set(("extra",), ["calibration"]), "extra is not a map"),
        (_set(("extra", "calibration"), {"k": 10, "sample": 5, "recall": ["high"]}), "recall curve"),
        (_set(("extra", "calibration"), {"k": "10", "sample": 5, "recall": [0.5]}), "recall curve"),
        (_set(("extra", "calibration"), {"k": 10, "sample": 5, "recall": [1.5]}), "recall curve"),
        (_set(("extra", "calibration"), [0.5, 1.0]), "recall curve"),
        (_set(("parent",), 5), "parent is not a version id"),
        (_set(("parent",), "../x"), "parent is not a version id"),
        (_set(("count",), -1), "count is negative"),
        (_bucket_array("centroids", lambda a: a.astype(np.float16)), "unexpected dtype"),
    ],
)
def test_decode_refuses_corrupt_or_inconsistent_manifests(change: Any, problem: str) -> None:
    body = rewrite(encode_manifest(make_manifest()), change)
    with pytest.raises(CorruptObject, match=problem) as info:
        decode_manifest(body, key=KEY)
    assert info.value.key == KEY


def test_decode_refuses_a_tree_with_no_nodes() -> None:
    empty = np.zeros(0, np.int32)

    def change(obj: dict) -> None:
        for name in ("node_plane", "left", "right", "node_leaf"):
            obj["tree"][name] = codec.pack_array(empty)
        obj["tree"]["threshold"] = codec.pack_array(np.zeros(0, np.float32))

    with pytest.raises(CorruptObject, match="disagree"):
        decode_manifest(rewrite(encode_manifest(make_manifest()), change), key=KEY)


@pytest.mark.parametrize("cut", [0, 1, 50, -1, -100])
def test_decode_refuses_a_truncated_manifest(cut: int) -> None:
    with pytest.raises(CorruptObject):
        decode_manifest(encode_manifest(make_manifest())[:cut], key=KEY)


def test_decode_refuses_a_tree_with_a_cycle() -> None:
    m = make_manifest()
    node = int(np.flatnonzero(m.tree.node_plane >= 0)[1])  # an internal node other than the root
    body = rewrite(encode_manifest(m), _tree_array("left", lambda a: _assign(a, node, node)))
    with pytest.raises(CorruptObject):
        decode_manifest(body, key=KEY)  # never traverse it: that would hang


def test_decode_refuses_an_unknown_metric() -> None:
    body = rewrite(encode_manifest(make_manifest()), _set(("metric",), "hamming"))
    with pytest.raises(CorruptObject):
        decode_manifest(body, key=KEY)


@settings(max_examples=200, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_manifest_raises_corrupt_object_or_decodes(data: st.DataObject) -> None:
    body = encode_manifest(make_manifest())
    if data.draw(st.booleans(), label="truncate"):
        mutated = body[: data.draw(st.integers(0, len(body) - 1), label="cut")]
    else:
        out = bytearray(body)
        for pos in data.draw(st.lists(st.integers(0, len(body) - 1), min_size=1, max_size=3, unique=True)):
            out[pos] ^= data.draw(st.integers(1, 255), label="xor")
        mutated = bytes(out)
    try:
        m = decode_manifest(mutated, key=KEY)
    except CorruptObject:
        return
    assert m.buckets.centroids.shape == (m.n_buckets, m.dim)
    assert m.tree.n_leaves == m.n_buckets


def test_head_round_trips_and_is_readable_json() -> None:
    body = encode_head("20240501T120000000000Z-abcd", "docs/manifests/20240501T120000000000Z-abcd", SHA)
    doc = json.loads(body)
    assert doc["format"] == "kdbuckets/head"
    assert doc["format_version"] == 1
    head = decode_head(body, key="docs/HEAD")
    assert head == Head("20240501T120000000000Z-abcd", "docs/manifests/20240501T120000000000Z-abcd", SHA)


def _head(**changes: Any) -> bytes:
    doc = {"format": "kdbuckets/head", "format_version": 1, "version": "v1", "manifest": KEY, "sha256": SHA}
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'"kdbuckets/head"',
        b"null",
        _head(format="kdbuckets/manifest"),
        _head(version=None),
        _head(version=""),
        _head(version="../v1"),
        _head(version="v" * 65),
        _head(manifest=None),
        _head(manifest=5),
        _head(sha256="AB" * 32),
        _head(sha256="ab" * 31),
        _head(sha256=None),
    ],
)
def test_decode_head_refuses_garbage(body: bytes) -> None:
    with pytest.raises(CorruptObject) as info:
        decode_head(body, key="docs/HEAD")
    assert info.value.key == "docs/HEAD"
