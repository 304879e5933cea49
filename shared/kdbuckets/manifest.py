"""The index manifest (immutable, one per version) and the HEAD pointer (mutable, tiny).

A manifest carries everything a query needs before it touches a bucket: dimension, metric,
build parameters, the tree, and the bucket table (fingerprint, size, rows, centroid
per bucket) — so a query knows exactly which objects to GET and how large they are. HEAD is a
small JSON document naming the live version and the SHA-256 of its manifest, so a swapped or
damaged manifest is detected before it is used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import codec
from .distances import METRICS
from .errors import CorruptObject, InvalidRequest
from .layout import is_version
from .params import BuildParams
from .tree import Tree

FORMAT = "kdbuckets/manifest"
FORMAT_VERSION = 1
HEAD_FORMAT = "kdbuckets/head"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_VERSION = re.compile(r"^[0-9A-Za-z._-]{1,64}$")


@dataclass(frozen=True)
class BucketTable:
    """Per-bucket facts, indexed by bucket (= tree leaf) number.

    fingerprints : SHA-256 hex of each bucket object (its key).
    sizes, rows : (nb,) int64 bytes and vectors per bucket.
    centroids : (nb, d) float32 routing centroid of each bucket (what queries rank by).
    """

    fingerprints: list[str]
    sizes: np.ndarray
    rows: np.ndarray
    centroids: np.ndarray

    def __len__(self) -> int:
        return len(self.fingerprints)


@dataclass(frozen=True)
class Manifest:
    """Everything about one published version of a collection except the vectors."""

    collection: str
    version: str
    created_at: str
    dim: int
    metric: str
    dtype: str
    count: int
    id_kind: str
    label_names: list[str] | None
    params: dict[str, Any]
    tree: Tree
    buckets: BucketTable
    parent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: fingerprints of the id-directory shards ({collection}/ids/{sha256}); see directory.py
    id_shards: list[str] = field(default_factory=list)

    @property
    def n_buckets(self) -> int:
        return len(self.buckets)


def encode_manifest(m: Manifest) -> bytes:
    """Serialise a manifest to msgpack (arrays as raw bytes)."""
    t, b = m.tree, m.buckets
    return codec.dumps(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "collection": m.collection,
            "version": m.version,
            "parent": m.parent,
            "created_at": m.created_at,
            "dim": m.dim,
            "metric": m.metric,
            "dtype": m.dtype,
            "count": m.count,
            "id_kind": m.id_kind,
            "label_names": m.label_names,
            "params": m.params,
            "tree": {
                "planes": codec.pack_array(t.planes.astype("<f4")),
                "node_plane": codec.pack_array(t.node_plane.astype("<i4")),
                "threshold": codec.pack_array(t.threshold.astype("<f4")),
                "left": codec.pack_array(t.left.astype("<i4")),
                "right": codec.pack_array(t.right.astype("<i4")),
                "node_leaf": codec.pack_array(t.node_leaf.astype("<i4")),
            },
            "buckets": {
                "fingerprints": list(b.fingerprints),
                "sizes": codec.pack_array(b.sizes.astype("<i8")),
                "rows": codec.pack_array(b.rows.astype("<i8")),
                "centroids": codec.pack_array(b.centroids.astype("<f4")),
            },
            "extra": m.extra,
            "id_shards": list(m.id_shards),
        }
    )


def decode_manifest(body: bytes, *, key: str) -> Manifest:
    """Decode and cross-check a manifest; inconsistencies raise :class:`CorruptObject`."""
    obj = codec.loads(body, key=key)
    if obj.get("format") != FORMAT:
        raise CorruptObject(key, "not a kdbuckets manifest")
    if codec.require(obj, "format_version", int, key=key) != FORMAT_VERSION:
        raise CorruptObject(key, f"unsupported manifest format_version {obj['format_version']}")
    dim = codec.require(obj, "dim", int, key=key)
    tree_node = codec.require(obj, "tree", dict, key=key)

    def arr(node: dict, name: str, dtype: str, ndim: int) -> np.ndarray:
        return codec.unpack_array(node.get(name), key=key, name=name, dtype=dtype, ndim=ndim)

    tree = Tree(
        planes=arr(tree_node, "planes", "<f4", 2),
        node_plane=arr(tree_node, "node_plane", "<i4", 1),
        threshold=arr(tree_node, "threshold", "<f4", 1),
        left=arr(tree_node, "left", "<i4", 1),
        right=arr(tree_node, "right", "<i4", 1),
        node_leaf=arr(tree_node, "node_leaf", "<i4", 1),
    )
    bnode = codec.require(obj, "buckets", dict, key=key)
    fingerprints = bnode.get("fingerprints")
    if not isinstance(fingerprints, list) or not all(
        isinstance(f, str) and _SHA256.fullmatch(f) for f in fingerprints
    ):
        raise CorruptObject(key, "bucket fingerprints are not SHA-256 hex strings")
    table = BucketTable(
        fingerprints=fingerprints,
        sizes=arr(bnode, "sizes", "<i8", 1),
        rows=arr(bnode, "rows", "<i8", 1),
        centroids=arr(bnode, "centroids", "<f4", 2),
    )
    _check_consistency(key, dim, tree, table)
    parent = obj.get("parent")
    if parent is not None and not is_version(parent):
        raise CorruptObject(key, "parent is not a version id")
    extra = obj.get("extra") or {}
    if not isinstance(extra, dict):
        raise CorruptObject(key, "extra is not a map")
    _check_calibration(key, extra.get("calibration"))
    params = codec.require(obj, "params", dict, key=key)
    try:
        BuildParams(**params)
    except (InvalidRequest, TypeError):
        raise CorruptObject(key, "params are not valid build parameters") from None
    count = codec.require(obj, "count", int, key=key)
    if count < 0:
        raise CorruptObject(key, f"count is negative ({count})")
    for name, allowed in (
        ("metric", METRICS),
        ("dtype", ("float32", "float16")),
        ("id_kind", ("int", "str")),
    ):
        if obj.get(name) not in allowed:
            raise CorruptObject(key, f"unknown {name} {obj.get(name)!r}")
    label_names = obj.get("label_names")
    if label_names is not None and not (
        isinstance(label_names, list) and all(isinstance(x, str) for x in label_names)
    ):
        raise CorruptObject(key, "label_names is not a list of strings")
    id_shards = obj.get("id_shards") or []
    if not isinstance(id_shards, list) or not all(
        isinstance(f, str) and _SHA256.fullmatch(f) for f in id_shards
    ):
        raise CorruptObject(key, "id_shards are not SHA-256 hex strings")
    return Manifest(
        id_shards=id_shards,
        collection=codec.require(obj, "collection", str, key=key),
        version=codec.require(obj, "version", str, key=key),
        parent=parent,
        created_at=codec.require(obj, "created_at", str, key=key),
        dim=dim,
        metric=codec.require(obj, "metric", str, key=key),
        dtype=codec.require(obj, "dtype", str, key=key),
        count=count,
        id_kind=codec.require(obj, "id_kind", str, key=key),
        label_names=label_names,
        params=params,
        tree=tree,
        buckets=table,
        extra=extra,
    )


def _check_calibration(key: str, curve: object) -> None:
    """The recall curves queries read (``kdbuckets.calibration``).

    ``{"k": int, "sample": int, "recall": [0..1, ...]}``, the one recall@k curve every
    calibrated manifest has, optionally with ``"curves": [{"k": int, "recall": [...]}, ...]``
    for other k (distinct, each ≥ 1). A manifest without ``curves`` (written before they
    existed) stays valid.
    """
    if curve is None:
        return
    if not isinstance(curve, dict) or type(curve.get("sample")) is not int or not _is_curve(curve):
        raise CorruptObject(key, "calibration is not a recall curve")
    more = curve.get("curves")
    if more is None:
        return
    if not isinstance(more, list) or not all(isinstance(c, dict) and _is_curve(c) for c in more):
        raise CorruptObject(key, "calibration curves are not recall curves")
    ks = [curve["k"]] + [c["k"] for c in more]
    if len(set(ks)) != len(ks):
        raise CorruptObject(key, "calibration has two curves for the same k")


def _is_curve(curve: dict) -> bool:
    """``{"k": int ≥ 1, "recall": [numbers in 0..1]}`` (other keys are the caller's)."""
    recall = curve.get("recall")
    return (
        type(curve.get("k")) is int
        and curve["k"] >= 1
        and isinstance(recall, list)
        and all(type(r) in (int, float) and 0.0 <= r <= 1.0 for r in recall)
    )


def _check_consistency(key: str, dim: int, tree: Tree, table: BucketTable) -> None:
    n_nodes = tree.node_plane.shape[0]
    nb = len(table.fingerprints)
    same_len = {a.shape[0] for a in (tree.threshold, tree.left, tree.right, tree.node_leaf)}
    if same_len != {n_nodes} or n_nodes == 0:
        raise CorruptObject(key, "tree arrays disagree in length")
    if tree.planes.shape[1:] != (dim,) and tree.planes.shape[0] > 0:
        raise CorruptObject(key, f"tree planes have dimension {tree.planes.shape[1]}, not {dim}")
    internal = tree.node_plane >= 0
    ids = np.arange(n_nodes)
    children = np.concatenate([tree.left[internal], tree.right[internal]])
    if (
        np.any(internal & ((tree.left <= ids) | (tree.right <= ids)))  # breadth-first: no cycles
        or len(np.unique(children)) != len(children)  # every node has one parent
        or len(children) != n_nodes - 1
    ):
        raise CorruptObject(key, "tree structure is not a tree (a node is reached twice or loops back)")
    if (
        np.any(tree.node_plane >= tree.planes.shape[0])
        or np.any(internal & ((tree.left <= 0) | (tree.right <= 0)))
        or np.any(tree.left >= n_nodes)
        or np.any(tree.right >= n_nodes)
        or sorted(tree.node_leaf[~internal].tolist()) != list(range(nb))
        or np.any(tree.node_leaf[internal] != -1)  # a node is a split or a bucket, never both
    ):
        raise CorruptObject(key, "tree structure is inconsistent with its bucket table")
    for name, a in (("sizes", table.sizes), ("rows", table.rows)):
        if a.shape != (nb,):
            raise CorruptObject(key, f"bucket {name} have {a.shape[0]} entries, expected {nb}")
    if table.centroids.shape != (nb, dim):
        raise CorruptObject(key, "bucket centroids have the wrong shape")


def encode_head(version: str, manifest_key: str, manifest_sha256: str) -> bytes:
    """The HEAD document (JSON, so `aws s3 cp …/HEAD -` is readable by a human)."""
    doc = {
        "format": HEAD_FORMAT,
        "format_version": 1,
        "version": version,
        "manifest": manifest_key,
        "sha256": manifest_sha256,
    }
    return json.dumps(doc, sort_keys=True).encode()


@dataclass(frozen=True)
class Head:
    version: str
    manifest_key: str
    sha256: str


def decode_head(body: bytes, *, key: str) -> Head:
    """Parse HEAD, refusing anything that does not look exactly like one."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CorruptObject(key, "HEAD is not JSON") from None
    if not isinstance(doc, dict) or doc.get("format") != HEAD_FORMAT:
        raise CorruptObject(key, "not a kdbuckets HEAD")
    version, mkey, sha = doc.get("version"), doc.get("manifest"), doc.get("sha256")
    if not (isinstance(version, str) and _VERSION.fullmatch(version)):
        raise CorruptObject(key, "HEAD names no valid version")
    if not (isinstance(mkey, str) and isinstance(sha, str) and _SHA256.fullmatch(sha)):
        raise CorruptObject(key, "HEAD names no valid manifest")
    return Head(version=version, manifest_key=mkey, sha256=sha)
