"""The index manifest (immutable, one per version) and the HEAD pointer (mutable, tiny).

A manifest carries everything a query needs before it touches a bucket: dimension, metric,
build parameters, the tree, and the bucket table (fingerprint, size, rows, centroid
per bucket) — so a query knows exactly which objects to GET and how large they are. HEAD is a
small JSON document naming the live version and the SHA-256 of its manifest, so a swapped or
damaged manifest is detected before it is used.

Stored, a manifest is a hierarchy (``format_version`` 2; see :mod:`kdbuckets.hierarchy` for
why and how buckets are grouped)::

    {collection}/manifests/{version}   the root: everything but the bucket table and the tree,
                                       plus one entry per part (fingerprint, size, buckets,
                                       rows, routing centroid) and the tree object's fingerprint
    {collection}/parts/{sha256}        a part: the bucket numbers it holds and their
                                       fingerprints (32 raw bytes each), sizes, rows, centroids
    {collection}/parts/{sha256}        the tree (planes, node arrays): read by writers only

Centroids are stored in float16 when the collection's vectors are (they are then exactly
representable, and half the bytes a cold query pays); ``Manifest`` always holds the decoded
float32 values, so builds calibrate with exactly what queries will rank by
(:func:`stored_centroids`). In memory, :class:`Manifest` is the whole version (root, every
part, the tree): what builders and writers work on. Queries read a :class:`Root` and only the
parts they route to. ``format_version`` 1 manifests (one flat object) still decode.
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
from .hierarchy import ROUTE_PARTS, group_buckets, nearest_rows, refine_groups, routing_centroids
from .layout import is_version
from .params import BuildParams
from .tail import SegmentRef
from .tree import Tree

FORMAT = "kdbuckets/manifest"
#: The flat, single-object manifest (read for collections written before the hierarchy).
FORMAT_VERSION = 1
#: The root of a hierarchical manifest (what every publish writes now).
ROOT_FORMAT_VERSION = 2
PART_FORMAT = "kdbuckets/part"
TREE_FORMAT = "kdbuckets/tree"
HEAD_FORMAT = "kdbuckets/head"

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Most tail segments a manifest may list when decoded (writers keep far fewer: tail.MAX_SEGMENTS).
MAX_TAIL_ENTRIES = 1024
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
    #: leaves per manifest part (0: one part); see hierarchy.group_buckets
    part_buckets: int = 0
    #: parts a query reads in its first tier; see hierarchy.ROUTE_PARTS
    route_parts: int = ROUTE_PARTS
    #: part and tree objects known to exist already (read with this manifest): not re-PUT
    stored: frozenset[str] = frozenset()
    #: (n_buckets,) part of each bucket as stored (None: not yet grouped — a new build);
    #: buckets beyond its length (created by a write) join the part nearest their centroid
    bucket_part: np.ndarray | None = None
    #: unmerged tail segments, oldest first (kdbuckets.tail); ``count`` includes their effect
    tail: tuple[SegmentRef, ...] = ()

    @property
    def n_buckets(self) -> int:
        return len(self.buckets)


@dataclass(frozen=True)
class PartTable:
    """Per-part facts a query routes by, indexed by part number.

    fingerprints : SHA-256 hex of each part object.
    sizes : (P,) bytes of each part object; buckets, nonempty : (P,) its buckets, and those
        holding rows; rows : (P,) vectors stored in it (replicas included).
    centroids : (P, d) float32 routing centroid (row-weighted mean of its bucket centroids).
    """

    fingerprints: list[str]
    sizes: np.ndarray
    buckets: np.ndarray
    nonempty: np.ndarray
    rows: np.ndarray
    centroids: np.ndarray

    def __len__(self) -> int:
        return len(self.fingerprints)


@dataclass(frozen=True)
class Root:
    """A manifest as a query first sees it: everything but the bucket table and the tree."""

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
    n_buckets: int
    parts: PartTable
    tree_ref: str
    part_buckets: int
    route_parts: int
    parent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    id_shards: list[str] = field(default_factory=list)
    tail: tuple[SegmentRef, ...] = ()


@dataclass(frozen=True)
class Part:
    """One part object: the global numbers of its buckets and their table rows."""

    ids: np.ndarray
    buckets: BucketTable


@dataclass(frozen=True)
class Encoded:
    """A manifest ready to publish: the root's bytes and every object it names."""

    root: bytes
    objects: dict[str, bytes]  # fingerprint → body (parts and the tree)


def encode_manifest(m: Manifest) -> bytes:
    """Serialise a manifest as one flat object, ``format_version`` 1 (arrays as raw bytes).

    Publishing writes the hierarchy (:func:`encode_hierarchy`); the flat format stays
    readable and writable so collections published before the hierarchy keep working (and
    its golden file keeps pinning it).
    """
    if m.tail:
        raise ValueError("a manifest with an unmerged tail is stored as a hierarchy (format 2) only")
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
    """Decode and cross-check a flat (``format_version`` 1) manifest; raise :class:`CorruptObject`."""
    obj = codec.loads(body, key=key)
    if obj.get("format") != FORMAT:
        raise CorruptObject(key, "not a kdbuckets manifest")
    if codec.require(obj, "format_version", int, key=key) != FORMAT_VERSION:
        raise CorruptObject(key, f"unsupported manifest format_version {obj['format_version']}")
    common = _decode_common(obj, key)
    tree = _decode_tree_node(codec.require(obj, "tree", dict, key=key), key)
    bnode = codec.require(obj, "buckets", dict, key=key)
    fingerprints = bnode.get("fingerprints")
    if not isinstance(fingerprints, list) or not all(
        isinstance(f, str) and _SHA256.fullmatch(f) for f in fingerprints
    ):
        raise CorruptObject(key, "bucket fingerprints are not SHA-256 hex strings")
    table = BucketTable(
        fingerprints=fingerprints,
        sizes=_arr(bnode, "sizes", "<i8", 1, key),
        rows=_arr(bnode, "rows", "<i8", 1, key),
        centroids=_arr(bnode, "centroids", "<f4", 2, key),
    )
    _check_consistency(key, common["dim"], tree, table)
    return Manifest(tree=tree, buckets=table, **common)


def decode_stored(body: bytes, *, key: str) -> Manifest | Root:
    """A stored manifest of either format: a flat one whole, a hierarchical one's :class:`Root`."""
    obj = codec.loads(body, key=key)
    if obj.get("format") == FORMAT and obj.get("format_version") == ROOT_FORMAT_VERSION:
        return _decode_root(obj, key)
    return decode_manifest(body, key=key)


def centroid_dtype(dtype: str) -> str:
    """How centroids are stored: float16 for a float16 collection (its vectors are), else float32."""
    return "<f2" if dtype == "float16" else "<f4"


def stored_centroids(centroids: np.ndarray, dtype: str) -> np.ndarray:
    """``centroids`` as a manifest stores them, read back in float32 (rounded for float16)."""
    return np.asarray(centroids, dtype=np.float32).astype(centroid_dtype(dtype)).astype(np.float32)


def part_layout(m: Manifest) -> tuple[list[np.ndarray], np.ndarray]:
    """The parts ``m`` is stored as (bucket numbers of each) and their routing centroids, as stored.

    A new build groups its buckets (:mod:`kdbuckets.hierarchy`); a version read from storage
    keeps its grouping, and buckets a write added join the part nearest their centroid.
    """
    b = m.buckets
    if m.bucket_part is None:
        groups = group_buckets(m.tree, m.part_buckets)
        groups = refine_groups(groups, b.centroids, b.rows)
    else:
        assign = np.full(m.n_buckets, -1, np.int64)
        known = min(len(m.bucket_part), m.n_buckets)
        assign[:known] = m.bucket_part[:known]
        labels = np.unique(assign[assign >= 0])
        if len(labels) == 0:
            assign[:] = 0
        elif known < m.n_buckets:
            old = [np.flatnonzero(assign == i) for i in labels]
            routing = routing_centroids(b.centroids, b.rows, old)
            assign[known:] = labels[nearest_rows(b.centroids[known:], routing)]
        groups = [np.flatnonzero(assign == i) for i in np.unique(assign)]
    routing = routing_centroids(b.centroids, b.rows, groups)
    return groups, stored_centroids(routing, m.dtype)


def encode_hierarchy(m: Manifest) -> Encoded:
    """Serialise ``m`` as a root, its parts and its tree (same content → same bytes)."""
    t, b = m.tree, m.buckets
    cdt = centroid_dtype(m.dtype)
    objects: dict[str, bytes] = {}
    tree_body = codec.dumps({"format": TREE_FORMAT, "format_version": 1, "dim": m.dim, **_tree_node(t)})
    tree_ref = codec.fingerprint(tree_body)
    objects[tree_ref] = tree_body
    groups, routing = part_layout(m)
    fps: list[str] = []
    sizes, nonempty = [], []
    for ids in groups:
        body = codec.dumps(
            {
                "format": PART_FORMAT,
                "format_version": 1,
                "dim": m.dim,
                "ids": codec.pack_array(ids.astype("<i4")),
                "fingerprints": b"".join(bytes.fromhex(b.fingerprints[i]) for i in ids.tolist()),
                "sizes": codec.pack_array(b.sizes[ids].astype("<i8")),
                "rows": codec.pack_array(b.rows[ids].astype("<i8")),
                "centroids": codec.pack_array(b.centroids[ids].astype(cdt)),
            }
        )
        fp = codec.fingerprint(body)
        objects[fp] = body
        fps.append(fp)
        sizes.append(len(body))
        nonempty.append(int(np.count_nonzero(b.rows[ids] > 0)))
    root = codec.dumps(
        {
            **_encode_common(m, ROOT_FORMAT_VERSION),
            "n_buckets": m.n_buckets,
            "part_buckets": m.part_buckets,
            "route_parts": m.route_parts,
            "tree": {"fingerprint": tree_ref, "size": len(tree_body)},
            "parts": {
                "fingerprints": fps,
                "sizes": codec.pack_array(np.asarray(sizes, "<i8")),
                "buckets": codec.pack_array(np.asarray([len(g) for g in groups], "<i8")),
                "nonempty": codec.pack_array(np.asarray(nonempty, "<i8")),
                "rows": codec.pack_array(np.asarray([int(b.rows[g].sum()) for g in groups], "<i8")),
                "centroids": codec.pack_array(routing.astype(cdt)),
            },
        }
    )
    return Encoded(root=root, objects=objects)


def decode_part(body: bytes, *, key: str, root: Root) -> Part:
    """A part object of ``root``'s collection, its fields checked against the root."""
    obj = codec.loads(body, key=key)
    if obj.get("format") != PART_FORMAT or obj.get("format_version") != 1:
        raise CorruptObject(key, "not a kdbuckets manifest part")
    if obj.get("dim") != root.dim:
        raise CorruptObject(key, f"part has dimension {obj.get('dim')!r}, not {root.dim}")
    ids = _arr(obj, "ids", "<i4", 1, key).astype(np.int64)
    m = len(ids)
    raw = obj.get("fingerprints")
    if not isinstance(raw, bytes) or len(raw) != 32 * m:
        raise CorruptObject(key, "part fingerprints are not 32 bytes per bucket")
    table = BucketTable(
        fingerprints=[raw[i : i + 32].hex() for i in range(0, len(raw), 32)],
        sizes=_arr(obj, "sizes", "<i8", 1, key),
        rows=_arr(obj, "rows", "<i8", 1, key),
        centroids=_arr(obj, "centroids", centroid_dtype(root.dtype), 2, key).astype(np.float32),
    )
    if (
        table.sizes.shape != (m,)
        or table.rows.shape != (m,)
        or table.centroids.shape != (m, root.dim)
        or np.any((ids < 0) | (ids >= root.n_buckets))
    ):
        raise CorruptObject(key, "part arrays disagree with each other or with the root")
    return Part(ids=ids, buckets=table)


def decode_tree(body: bytes, *, key: str, dim: int) -> Tree:
    """The tree object of a hierarchical manifest."""
    obj = codec.loads(body, key=key)
    if obj.get("format") != TREE_FORMAT or obj.get("format_version") != 1 or obj.get("dim") != dim:
        raise CorruptObject(key, "not the kdbuckets tree of this collection")
    return _decode_tree_node(obj, key)


def assemble(root: Root, parts: list[Part], tree: Tree, *, key: str, stored: frozenset[str]) -> Manifest:
    """The whole version from its root, every part (in the root's order) and its tree."""
    nb = root.n_buckets
    if len(parts) != len(root.parts) or sum(len(p.ids) for p in parts) != nb:
        raise CorruptObject(key, f"parts hold {sum(len(p.ids) for p in parts)} buckets, not {nb}")
    ids = np.concatenate([p.ids for p in parts]) if parts else np.zeros(0, np.int64)
    if len(np.unique(ids)) != nb:
        raise CorruptObject(key, "a bucket is listed by two parts")
    fingerprints = [""] * nb
    sizes, rows = np.zeros(nb, np.int64), np.zeros(nb, np.int64)
    centroids = np.zeros((nb, root.dim), np.float32)
    for p in parts:
        for i, fp in zip(p.ids.tolist(), p.buckets.fingerprints, strict=True):
            fingerprints[i] = fp
        sizes[p.ids], rows[p.ids], centroids[p.ids] = p.buckets.sizes, p.buckets.rows, p.buckets.centroids
    table = BucketTable(fingerprints, sizes, rows, centroids)
    _check_consistency(key, root.dim, tree, table)
    bucket_part = np.empty(nb, np.int64)
    for i, p in enumerate(parts):
        bucket_part[p.ids] = i
    manifest = Manifest(
        collection=root.collection,
        version=root.version,
        created_at=root.created_at,
        dim=root.dim,
        metric=root.metric,
        dtype=root.dtype,
        count=root.count,
        id_kind=root.id_kind,
        label_names=root.label_names,
        params=root.params,
        tree=tree,
        buckets=table,
        parent=root.parent,
        extra=root.extra,
        id_shards=root.id_shards,
        part_buckets=root.part_buckets,
        route_parts=root.route_parts,
        stored=stored,
        bucket_part=bucket_part,
        tail=root.tail,
    )
    return manifest


def _encode_common(m: Manifest, format_version: int) -> dict[str, Any]:
    tail = {"tail": [s.encode() for s in m.tail]} if m.tail else {}  # absent: bytes as before
    return {
        **tail,
        "format": FORMAT,
        "format_version": format_version,
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
        "extra": m.extra,
        "id_shards": list(m.id_shards),
    }


def _tree_node(t: Tree) -> dict[str, Any]:
    return {
        "planes": codec.pack_array(t.planes.astype("<f4")),
        "node_plane": codec.pack_array(t.node_plane.astype("<i4")),
        "threshold": codec.pack_array(t.threshold.astype("<f4")),
        "left": codec.pack_array(t.left.astype("<i4")),
        "right": codec.pack_array(t.right.astype("<i4")),
        "node_leaf": codec.pack_array(t.node_leaf.astype("<i4")),
    }


def _arr(node: dict, name: str, dtype: str, ndim: int, key: str) -> np.ndarray:
    return codec.unpack_array(node.get(name), key=key, name=name, dtype=dtype, ndim=ndim)


def _decode_tree_node(node: dict, key: str) -> Tree:
    return Tree(
        planes=_arr(node, "planes", "<f4", 2, key),
        node_plane=_arr(node, "node_plane", "<i4", 1, key),
        threshold=_arr(node, "threshold", "<f4", 1, key),
        left=_arr(node, "left", "<i4", 1, key),
        right=_arr(node, "right", "<i4", 1, key),
        node_leaf=_arr(node, "node_leaf", "<i4", 1, key),
    )


def _decode_root(obj: dict, key: str) -> Root:
    common = _decode_common(obj, key)
    dim = common["dim"]
    tnode = codec.require(obj, "tree", dict, key=key)
    tree_ref = tnode.get("fingerprint")
    if not (isinstance(tree_ref, str) and _SHA256.fullmatch(tree_ref)):
        raise CorruptObject(key, "tree is not named by a SHA-256")
    pnode = codec.require(obj, "parts", dict, key=key)
    fps = pnode.get("fingerprints")
    if not (isinstance(fps, list) and fps and all(isinstance(f, str) and _SHA256.fullmatch(f) for f in fps)):
        raise CorruptObject(key, "part fingerprints are not SHA-256 hex strings")
    n = len(fps)
    dtype = centroid_dtype(common["dtype"])
    table = PartTable(
        fingerprints=fps,
        sizes=_arr(pnode, "sizes", "<i8", 1, key),
        buckets=_arr(pnode, "buckets", "<i8", 1, key),
        nonempty=_arr(pnode, "nonempty", "<i8", 1, key),
        rows=_arr(pnode, "rows", "<i8", 1, key),
        centroids=_arr(pnode, "centroids", dtype, 2, key).astype(np.float32),
    )
    n_buckets = codec.require(obj, "n_buckets", int, key=key)
    part_buckets = codec.require(obj, "part_buckets", int, key=key)
    route_parts = codec.require(obj, "route_parts", int, key=key)
    if (
        any(a.shape != (n,) for a in (table.sizes, table.buckets, table.nonempty, table.rows))
        or table.centroids.shape != (n, dim)
        or int(table.buckets.sum()) != n_buckets
        or np.any(table.buckets < 1)
        or np.any((table.nonempty < 0) | (table.nonempty > table.buckets))
        or part_buckets < 0
        or route_parts < 1
    ):
        raise CorruptObject(key, "part table is inconsistent")
    return Root(
        n_buckets=n_buckets,
        parts=table,
        tree_ref=tree_ref,
        part_buckets=part_buckets,
        route_parts=route_parts,
        **common,
    )


def _decode_common(obj: dict, key: str) -> dict[str, Any]:
    """The fields a flat manifest and a root share, checked."""
    dim = codec.require(obj, "dim", int, key=key)
    if dim < 1:
        raise CorruptObject(key, f"dim is {dim}")
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
    tail = obj.get("tail") or []
    if not isinstance(tail, list) or len(tail) > MAX_TAIL_ENTRIES:
        raise CorruptObject(key, "tail is not a list of segments")
    return {
        "tail": tuple(SegmentRef.decode(node, key=key) for node in tail),
        "id_shards": id_shards,
        "collection": codec.require(obj, "collection", str, key=key),
        "version": codec.require(obj, "version", str, key=key),
        "parent": parent,
        "created_at": codec.require(obj, "created_at", str, key=key),
        "dim": dim,
        "metric": codec.require(obj, "metric", str, key=key),
        "dtype": codec.require(obj, "dtype", str, key=key),
        "count": count,
        "id_kind": codec.require(obj, "id_kind", str, key=key),
        "label_names": label_names,
        "params": params,
        "extra": extra,
    }


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
