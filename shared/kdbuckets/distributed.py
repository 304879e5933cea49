"""The distributed build: the steps a Step Functions execution runs as Lambda tasks.

One build function holds a whole collection in memory; this build never does. The state
machine (``statemachine/build.asl.json``) runs:

1. :func:`plan` — list the ``.npy`` shards, read their headers, sample rows, fit the top of
   the average-split tree and the partition centroids, and write the plan;
2. :func:`route` — one map child per shard: read it (validated exactly as the build function
   reads a shard), prepare its rows and write one *run* per partition it feeds;
3. :func:`collect` — check that every planned shard was routed, merge the label names and
   the calibration queries, and list each partition's runs;
4. :func:`build_partition` — one map child per partition: the single-function build's own
   :func:`~kdbuckets.partition.partition` (tree, Lloyd refinement, replication) and
   :func:`~kdbuckets.builder.upload_buckets` (float16 option, content-addressed buckets) over
   the partition's rows, plus its share of the calibration ground truth;
5. :func:`commit` — graft the partitions' trees under the top tree, merge their bucket tables
   into one manifest — stored as a hierarchy of parts sized for the collection
   (:func:`kdbuckets.hierarchy.part_buckets_for`) —, build the id directory, finish the
   calibration (in the tiers queries will read) and publish by
   :func:`kdbuckets.catalog.publish` (compare-and-swap of ``HEAD``).

Staged objects live under ``{INDEX_PREFIX}_staging/{collection}/{plan_id}/`` (a lifecycle rule
expires them; ``_`` cannot start a collection name). Every step is idempotent: the plan id is a
hash of the request, the shard list and the HEAD it replaces, so re-running a failed build
finds its plan, skips shards already routed from the same object (same ETag) and partitions
already built from the same runs, and re-uploads no bucket (they are content-addressed).

Per-partition results are kept separate until :func:`commit`, which is the only step that
knows the manifest format: a hierarchical manifest writes one sub-manifest per partition
result there instead of concatenating them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import catalog, codec, distances, layout
from .bucket import dedup_keys
from .builder import head_to_replace, upload_buckets
from .calibration import KS, SAMPLE, curves_from_ranks, read_positions
from .calibration import K as CAL_K
from .collection import MAX_DIM, Collection
from .directory import build_shards, encode_shard, shard_count
from .distributed_events import (
    CollectStep,
    CommitStep,
    DistributedBuildRequest,
    PartitionStep,
    PlanRef,
    PlanStep,
    ReportStep,
    RouteStep,
    parse_request,
    parse_step,
)
from .errors import Conflict, CorruptObject, InvalidRequest, KdBucketsError, SourceError
from .hierarchy import part_buckets_for
from .manifest import BucketTable, Manifest, stored_centroids
from .params import BuildParams
from .partition import partition as partition_rows
from .projection import fit_pca
from .refine import lloyd, nearest_centroid
from .sources import StoreReader, read_npy_header, read_npy_rows, read_source, shard_uris
from .storage import NotFound, ObjectStore, PreconditionFailed, S3Uri
from .tree import Tree, build_tree, with_basis

#: Top-level staging folder under the store's prefix (not a valid collection name).
STAGING = "_staging"
#: Rows per partition when the request names no partition count.
ROWS_PER_PARTITION = 1_000_000
FORMAT = "kdbuckets/distributed"
FORMAT_VERSION = 1


# -- staging layout --------------------------------------------------------------------------
def staging_prefix(collection: str, plan_id: str) -> str:
    """Where one planned build stages its objects (relative to the store's prefix)."""
    return f"{STAGING}/{layout.check_collection(collection)}/{plan_id}/"


def _key(ref: PlanRef, *parts: str) -> str:
    return staging_prefix(ref.collection, ref.plan_id) + "/".join(parts)


def _put(store: ObjectStore, key: str, obj: dict[str, Any]) -> None:
    store.put(key, codec.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **obj}))


def _get(store: ObjectStore, key: str) -> dict[str, Any] | None:
    try:
        body, _ = store.get(key)
    except NotFound:
        return None
    obj = codec.loads(body, key=key)
    if obj.get("format") != FORMAT or obj.get("format_version") != FORMAT_VERSION:
        raise CorruptObject(key, "not a staged object of this distributed build format")
    return obj


def _require(store: ObjectStore, key: str, what: str) -> dict[str, Any]:
    obj = _get(store, key)
    if obj is None:
        raise CorruptObject(key, f"{what} is missing from the staging area (expired, or never written)")
    return obj


def _arr(obj: dict[str, Any], name: str, key: str) -> np.ndarray:
    return codec.unpack_array(obj.get(name), key=key, name=name)


def _pack_ids(ids: np.ndarray) -> Any:
    """Ids for a staged object: int64 array, or one newline-joined string (ids hold no controls)."""
    return codec.pack_array(ids.astype("<i8")) if ids.dtype.kind in "iu" else "\n".join(ids.tolist())


def _unpack_ids(node: Any, key: str) -> np.ndarray:
    if isinstance(node, str):
        return np.array(node.split("\n") if node else [], dtype=str)
    return codec.unpack_array(node, key=key, name="ids", dtype="<i8")


def _pack_tree(tree: Tree) -> dict[str, Any]:
    return {
        name: codec.pack_array(getattr(tree, name).astype(dt))
        for name, dt in (
            ("planes", "<f4"),
            ("node_plane", "<i4"),
            ("threshold", "<f4"),
            ("left", "<i4"),
            ("right", "<i4"),
            ("node_leaf", "<i4"),
        )
    }


def _unpack_tree(node: Any, key: str) -> Tree:
    return Tree(**{name: codec.unpack_array(node.get(name), key=key, name=name) for name in _TREE_FIELDS})


_TREE_FIELDS = ("planes", "node_plane", "threshold", "left", "right", "node_leaf")


def _leaf_tree(dim: int) -> Tree:
    """A tree of one leaf (bucket 0): an empty partition's."""
    one = np.array([-1], np.int32)
    return Tree(
        np.zeros((0, dim), np.float32), one, np.zeros(1, np.float32), one, one.copy(), np.zeros(1, np.int32)
    )


# -- step dispatch ---------------------------------------------------------------------------
def run_step(event: object, store: ObjectStore) -> dict[str, Any]:
    """Validate one task's event and run its step; the response is small JSON (state payload).

    A route or partition that fails records why under the staging prefix before the error
    propagates, so :func:`collect`, :func:`commit` and :func:`report` can name the cause.
    """
    step = parse_step(event)
    if isinstance(step, PlanStep):
        return plan(store, parse_request(step.request))
    if isinstance(step, RouteStep):
        return _recording(
            store, step.plan, f"route-{_safe(step.key)}", lambda: route(store, step.plan, step.key)
        )
    if isinstance(step, CollectStep):
        return collect(store, step.plan)
    if isinstance(step, PartitionStep):
        return _recording(
            store,
            step.plan,
            f"partition-{step.partition:05d}",
            lambda: build_partition(store, step.plan, step.partition),
        )
    if isinstance(step, CommitStep):
        return commit(store, step.plan)
    assert isinstance(step, ReportStep)
    return report(store, step.state)


def _safe(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _recording(store: ObjectStore, ref: PlanRef, name: str, work: Any) -> dict[str, Any]:
    try:
        return work()
    except KdBucketsError as exc:
        with contextlib.suppress(KdBucketsError):  # the original error matters more than its record
            store.put(
                _key(ref, "failed", name),
                json.dumps({"error": type(exc).__name__, "cause": str(exc)}).encode(),
            )
        raise


# -- 1. plan ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Shard:
    key: str
    bucket: str
    rows: int
    offset: int  # first global row
    ids: str | None  # s3:// URI of the paired ids shard
    labels: str | None


def plan(store: ObjectStore, request: DistributedBuildRequest) -> dict[str, Any]:
    """Plan a build (or find the plan a previous attempt wrote): the first state's task.

    Reads only shard headers and a sample of rows. Returns what the state machine needs: the
    plan reference, the prefix its first map lists, and the number of shards and partitions.
    """
    params = request.params()
    head = head_to_replace(store, request.collection, request.replace, request.expected_version)
    reader = StoreReader(store)
    shards, dim = _list_shards(reader, request.source)
    n = sum(s.rows for s in shards)
    expected_etag = None if head is None else head.etag
    pid = plan_id(request, shards, dim, expected_etag)
    ref = PlanRef(collection=request.collection, plan_id=pid)
    key = _key(ref, "plan")
    existing = _get(store, key)
    if existing is None:
        body = _make_plan(reader, request, params, shards, dim, n, expected_etag, head)
        # if_absent: a concurrent attempt of this very plan that wrote it first wins
        with contextlib.suppress(PreconditionFailed):
            store.put(
                key, codec.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **body}), if_absent=True
            )
        existing = _require(store, key, "the plan")
    vectors = S3Uri.parse(request.source["vectors"], field="source.vectors")
    return {
        "ref": ref.model_dump(),
        "source_bucket": vectors.bucket,
        "source_prefix": vectors.key,
        "shards": len(shards),
        "partitions": int(existing["partitions"]),
        "count": n,
        "version": existing["version"],
    }


def plan_id(
    request: DistributedBuildRequest, shards: list[_Shard], dim: int, expected_etag: str | None
) -> str:
    """Hash of everything the plan depends on except the shards' bytes.

    A shard rewritten with the same shape (a fixed bad shard) keeps the plan, so a rerun
    reuses every other shard's runs; a different shard list, shape, request or HEAD plans anew.
    """
    doc = {
        "request": request.model_dump(mode="json"),
        "dim": dim,
        "shards": [(s.bucket, s.key, s.rows, s.ids, s.labels) for s in shards],
        "head": expected_etag,
        "format": FORMAT_VERSION,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _list_shards(reader: StoreReader, source: dict[str, Any]) -> tuple[list[_Shard], int]:
    """The vectors shards in key order with their rows, and the paired ids/labels shards."""
    field = "source.vectors"
    uris = shard_uris(reader, source["vectors"], field, (".npy",))
    base = S3Uri.parse(source["vectors"], field=field)
    paired: dict[str, dict[str, S3Uri]] = {}
    for name in ("ids", "labels"):
        if source.get(name) is None:
            continue
        prefix = S3Uri.parse(source[name], field=f"source.{name}")
        listed = shard_uris(reader, source[name], f"source.{name}", (".npy",))
        paired[name] = {u.key[len(prefix.key) :]: u for u in listed}
        names = {u.key[len(base.key) :] for u in uris}
        for shard_name, uri in paired[name].items():
            if shard_name not in names:
                raise SourceError(
                    f"source.{name}",
                    f"has shard s3://{uri.bucket}/{uri.key} but there is no vectors shard {shard_name!r}",
                )
    shards: list[_Shard] = []
    offset = 0
    dim = 0
    for uri in uris:
        where = f"s3://{uri.bucket}/{uri.key}"
        header = read_npy_header(reader, uri, field)
        if len(header.shape) != 2 or header.dtype.kind not in "fiu":
            raise SourceError(field, f"shard {where} must be a 2-D numeric array, got shape {header.shape}")
        d = header.shape[1]
        if not 1 <= d <= MAX_DIM:
            raise SourceError(field, f"shard {where} has {d} dimensions; supported are 1 to {MAX_DIM}")
        if dim and d != dim:
            raise SourceError(field, f"shard {where} has {d} dimensions; the first shard has {dim}")
        dim = d
        name = uri.key[len(base.key) :]
        uris_of: dict[str, str | None] = {}
        for kind in ("ids", "labels"):
            if kind not in paired:
                uris_of[kind] = None
                continue
            other = paired[kind].get(name)
            if other is None:
                raise SourceError(f"source.{kind}", f"has no shard named {name!r} for {where}")
            uris_of[kind] = f"s3://{other.bucket}/{other.key}"
        shards.append(_Shard(uri.key, uri.bucket, header.rows, offset, uris_of["ids"], uris_of["labels"]))
        offset += header.rows
    if offset == 0:
        raise SourceError(field, "holds no rows; a collection needs at least one vector")
    return shards, dim


def _make_plan(
    reader: StoreReader,
    request: DistributedBuildRequest,
    params: BuildParams,
    shards: list[_Shard],
    dim: int,
    n: int,
    expected_etag: str | None,
    head: catalog.HeadState | None,
) -> dict[str, Any]:
    """Sample, fit the top tree and the partition centroids; the plan object's fields."""
    rng = np.random.default_rng(params.seed)
    rows = np.arange(n) if n <= request.sample else np.sort(rng.choice(n, request.sample, replace=False))
    sample = _read_rows(reader, shards, rows, dim)
    sample = distances.prepare(sample[_usable(sample, params.metric)], params.metric)
    if len(sample) == 0:
        raise SourceError("source.vectors", "has no finite (nonzero, for cosine) rows in the plan's sample")
    wanted = request.partitions or max(1, math.ceil(n / ROWS_PER_PARTITION))
    basis = fit_pca(sample, seed=params.seed) if params.projection == "pca" else None
    coords = sample if basis is None else sample @ basis.T
    top, leaf_of_row = build_tree(
        coords,
        bucket_size=max(1, math.ceil(len(sample) / wanted)),
        max_depth=min(params.max_depth, max(0, math.ceil(math.log2(wanted)))),
        seed=params.seed,
        split=params.split,
    )
    top = with_basis(top, basis)
    _, centroids = lloyd(sample, leaf_of_row, top.n_leaves, iterations=params.refine, seed=params.seed)
    return {
        # rows whose two nearest partition centroids are within this margin are stored in both
        "halo_margin": _halo_margin(sample, centroids, request.halo, params),
        "collection": request.collection,
        "version": catalog.new_version(),
        "created_at": catalog.now_iso(),
        "parent": None if head is None else head.head.version,
        "expected_etag": expected_etag,
        "params": params.as_dict(),
        "label_names_uri": request.source.get("label_names"),
        "count": n,
        "dim": dim,
        "shards": [
            {
                "key": s.key,
                "bucket": s.bucket,
                "rows": s.rows,
                "offset": s.offset,
                "ids": s.ids,
                "labels": s.labels,
            }
            for s in shards
        ],
        "partitions": top.n_leaves,
        "top_tree": _pack_tree(top),
        "centroids": codec.pack_array(centroids.astype("<f4")),
        # rows whose vectors calibrate recall: the rows calibration.calibrate would pick
        "calibration_rows": codec.pack_array(_calibration_rows(n, params.seed).astype("<i8")),
    }


def _halo_margin(
    sample: np.ndarray, centroids: np.ndarray, share: float, params: BuildParams
) -> float | None:
    """The margin (second-nearest minus nearest squared distance) below which ``share`` of rows lie.

    None when there is no halo: a share of 0, one partition, or partitions routed down the top
    tree (no refinement, no replication: the writer's rule), where a row has one home.
    """
    if share <= 0 or len(centroids) < 2 or (params.refine == 0 and params.replicate == 0.0):
        return None
    _, margin = _two_nearest(sample, centroids)
    return float(np.quantile(margin, share))


def _two_nearest(
    vectors: np.ndarray, centroids: np.ndarray, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """Second-nearest centroid of every row and its margin over the nearest (squared l2)."""
    sq = np.einsum("ij,ij->i", centroids, centroids)
    second = np.empty(len(vectors), np.int64)
    margin = np.empty(len(vectors), np.float64)
    for start in range(0, len(vectors), chunk):
        scores = vectors[start : start + chunk] @ centroids.T
        scores *= -2.0
        scores += sq
        two = np.argpartition(scores, 1, axis=1)[:, :2]
        s2 = np.take_along_axis(scores, two, axis=1)
        order = np.argsort(s2, axis=1)
        second[start : start + chunk] = np.take_along_axis(two, order, axis=1)[:, 1]
        margin[start : start + chunk] = np.abs(s2[:, 1] - s2[:, 0])
    return second, margin


def _calibration_rows(n: int, seed: int) -> np.ndarray:
    """The global rows :func:`kdbuckets.calibration.calibrate` samples as queries (same rng)."""
    if n < 2:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng(seed + 1)
    return np.sort(rng.choice(n, min(SAMPLE, n), replace=False)).astype(np.int64)


def _usable(block: np.ndarray, metric: str) -> np.ndarray:
    """Rows the plan may fit on: finite (and nonzero for cosine); routing validates properly."""
    with np.errstate(invalid="ignore", over="ignore"):
        ok = np.isfinite(block).all(axis=1)
        if metric == "cosine":
            ok &= np.abs(np.where(np.isfinite(block), block, 0)).max(axis=1) > 0
    return ok


def _read_rows(reader: StoreReader, shards: list[_Shard], rows: np.ndarray, dim: int) -> np.ndarray:
    """Global ``rows`` (sorted) of the collection as float32, shard by shard in chunks."""
    out = np.empty((len(rows), dim), dtype=np.float32)
    filled = 0
    for shard in shards:
        lo, hi = np.searchsorted(rows, [shard.offset, shard.offset + shard.rows])
        if lo == hi:
            continue
        local = rows[lo:hi] - shard.offset
        header = read_npy_header(reader, S3Uri(shard.bucket, shard.key), "source.vectors")
        for start, chunk in read_npy_rows(reader, header, "source.vectors"):
            a, b = np.searchsorted(local, [start, start + len(chunk)])
            with np.errstate(over="ignore", invalid="ignore"):
                out[filled : filled + b - a] = chunk[local[a:b] - start]
            filled += b - a
    return out[:filled]


def _load_plan(store: ObjectStore, ref: PlanRef) -> dict[str, Any]:
    return _require(store, _key(ref, "plan"), "the plan")


# -- 2. route --------------------------------------------------------------------------------
def route(store: ObjectStore, ref: PlanRef, key: str) -> dict[str, Any]:
    """Route one shard's rows to their partitions: one run object per partition fed.

    Reads the shard exactly as the build function reads one (every row checked, ids and
    labels paired), prepares its rows and assigns each to a partition: the partition
    centroid nearest to it, or the top tree's leaf when the build has no refinement (as
    :mod:`kdbuckets.writer` routes). Skipped when this shard was already routed from an
    object with the same ETag.
    """
    p = _load_plan(store, ref)
    if not key.endswith(".npy"):
        return {"key": key, "skipped": "not a .npy shard"}
    index = next((i for i, s in enumerate(p["shards"]) if s["key"] == key), None)
    if index is None:
        raise SourceError(
            "source.vectors", f"shard {key!r} was not there when the build was planned; start a new build"
        )
    shard = p["shards"][index]
    uri = S3Uri(shard["bucket"], shard["key"])
    where = f"s3://{uri.bucket}/{uri.key}"
    reader = StoreReader(store)
    header = read_npy_header(reader, uri, "source.vectors")
    done_key = _key(ref, "routed", f"{index:06d}")
    done = _get(store, done_key)
    if done is not None and done.get("etag") == header.etag and header.etag:
        return {"key": key, "shard": index, "rows": int(done["rows"]), "reused": True}
    if header.shape != (shard["rows"], p["dim"]):
        raise SourceError(
            "source.vectors",
            f"shard {where} has shape {header.shape} now; the plan read ({shard['rows']}, {p['dim']})",
        )
    params = BuildParams(**p["params"])
    source = {
        "vectors": where,
        "ids": shard["ids"],
        "labels": shard["labels"],
        "label_names": p["label_names_uri"],
    }
    try:
        data = read_source(
            {k: v for k, v in source.items() if v is not None},
            metric=params.metric,
            dtype=params.dtype,
            reader=reader,
        )
    except InvalidRequest as exc:
        if where in exc.problem:
            raise
        raise type(exc)(exc.field, f"(shard {where}) {exc.problem}") from None
    vectors = distances.prepare(data.vectors, params.metric)  # one shard: a copy is affordable
    ids = data.ids if shard["ids"] is not None else data.ids + shard["offset"]
    owner = _assign(p, vectors, params, ref)
    global_rows = np.arange(shard["offset"], shard["offset"] + shard["rows"], dtype=np.int64)
    tag = hashlib.sha256(header.etag.encode()).hexdigest()[:16]
    runs: dict[str, str] = {}
    # copy: 0 a row with one home, 1 its home when it also has a halo copy, 2 the halo copy
    copy = np.zeros(len(vectors), np.int8)
    halo = np.zeros(0, np.int64)
    halo_part = np.zeros(0, np.int64)
    if p.get("halo_margin") is not None:
        second, margin = _two_nearest(vectors, _arr(p, "centroids", _key(ref, "plan")))
        halo = np.flatnonzero((margin <= p["halo_margin"]) & (second != owner))
        halo_part = second[halo]
        copy[halo] = 1
    entries = np.concatenate([np.arange(len(vectors)), halo])  # rows, then their halo copies
    entry_part = np.concatenate([owner, halo_part])
    entry_copy = np.concatenate([copy, np.full(len(halo), 2, np.int8)])
    order = np.argsort(entry_part, kind="stable")
    bounds = np.searchsorted(entry_part[order], np.arange(int(p["partitions"]) + 1))
    for part in range(int(p["partitions"])):
        picked = order[bounds[part] : bounds[part + 1]]
        rows = entries[picked]
        if rows.size == 0:
            continue
        run_key = _key(ref, "runs", f"{part:05d}", f"{index:06d}-{tag}")
        _put(
            store,
            run_key,
            {
                "vectors": codec.pack_array(vectors[rows]),
                "ids": _pack_ids(ids[rows]),
                "labels": None
                if data.label_codes is None
                else codec.pack_array(data.label_codes[rows].astype("<i4")),
                "rows": codec.pack_array(global_rows[rows]),
                "copy": codec.pack_array(entry_copy[picked]),
            },
        )
        runs[str(part)] = run_key
    cal = _arr(p, "calibration_rows", _key(ref, "plan"))
    mine = cal[(cal >= shard["offset"]) & (cal < shard["offset"] + shard["rows"])]
    _put(
        store,
        done_key,
        {
            "key": key,
            "etag": header.etag,
            "rows": shard["rows"],
            "id_kind": "int" if ids.dtype.kind in "iu" else "str",
            "label_names": data.label_names,
            "runs": runs,
            "calibration_rows": codec.pack_array(mine.astype("<i8")),
            "calibration_vectors": codec.pack_array(vectors[mine - shard["offset"]]),
        },
    )
    return {"key": key, "shard": index, "rows": shard["rows"], "partitions": len(runs), "reused": False}


def _assign(p: dict[str, Any], vectors: np.ndarray, params: BuildParams, ref: PlanRef) -> np.ndarray:
    """Partition of each prepared row (the writer's rule: tree without refinement, else centroids)."""
    key = _key(ref, "plan")
    if params.refine == 0 and params.replicate == 0.0:
        return _unpack_tree(p["top_tree"], key).leaf_of(vectors)
    return nearest_centroid(vectors, _arr(p, "centroids", key))


# -- 3. collect ------------------------------------------------------------------------------
def collect(store: ObjectStore, ref: PlanRef) -> dict[str, Any]:
    """Check every shard was routed, merge label names and calibration queries, list runs.

    The map tolerates nothing on AWS; moto's map does not fail when a child does, so this
    step is also where a missing shard is noticed and named (with the recorded cause).
    """
    p = _load_plan(store, ref)
    summaries: list[dict[str, Any]] = []
    for i, shard in enumerate(p["shards"]):
        got = _get(store, _key(ref, "routed", f"{i:06d}"))
        if got is None:
            where = f"s3://{shard['bucket']}/{shard['key']}"
            raise SourceError(
                "source.vectors",
                f"shard {where} was not routed: {_failure(store, ref, 'route-' + _safe(shard['key']))}",
            )
        summaries.append(got)
    kinds = {s["id_kind"] for s in summaries}
    if len(kinds) > 1:
        raise SourceError("source.ids", "holds integers in some shards and strings in others")
    names = sorted({n for s in summaries for n in (s["label_names"] or [])})
    if any(s["label_names"] is None for s in summaries) and names:
        raise SourceError("source.labels", "labels some shards and not others")
    runs: dict[int, list[str]] = {}
    for s in summaries:
        for part, run_key in s["runs"].items():
            runs.setdefault(int(part), []).append(run_key)
    cal_rows = [_arr(s, "calibration_rows", "routed") for s in summaries]
    cal_vectors = [_arr(s, "calibration_vectors", "routed") for s in summaries]
    partitions = list(range(int(p["partitions"])))
    _put(
        store,
        _key(ref, "routing"),
        {
            "id_kind": kinds.pop(),
            "label_names": names or None,
            "runs": {str(k): v for k, v in sorted(runs.items())},
            "calibration_rows": codec.pack_array(np.concatenate(cal_rows).astype("<i8")),
            "calibration_vectors": codec.pack_array(
                np.concatenate(cal_vectors).astype("<f4") if cal_vectors else np.zeros((0, p["dim"]), "<f4")
            ),
        },
    )
    return {"partitions": partitions, "rows": int(p["count"]), "shards": len(summaries)}


def _failure(store: ObjectStore, ref: PlanRef, name: str) -> str:
    try:
        body, _ = store.get(_key(ref, "failed", name))
        doc = json.loads(body)
        return f"{doc['error']}: {doc['cause']}"
    except (NotFound, ValueError, KeyError, TypeError):
        return "its task left no result (it failed without a report: a timeout or out of memory?)"


# -- 4. one partition --------------------------------------------------------------------------
def build_partition(store: ObjectStore, ref: PlanRef, index: int) -> dict[str, Any]:
    """Build one partition's buckets exactly as the single-function build builds a collection.

    Reads the partition's runs (in shard order, so rows keep their global order), runs
    :func:`kdbuckets.partition.partition` and :func:`kdbuckets.builder.upload_buckets` on them,
    and stores the partition's tree, bucket table, directory entries and calibration
    candidates as one staged result. Skipped when that result exists for the same runs.
    """
    p = _load_plan(store, ref)
    if not 0 <= index < int(p["partitions"]):
        raise InvalidRequest(
            "partition", f"must be below the plan's {p['partitions']} partitions, got {index}"
        )
    routing = _require(store, _key(ref, "routing"), "the routing summary")
    run_keys = list(routing["runs"].get(str(index), []))
    inputs = hashlib.sha256("\n".join(run_keys).encode()).hexdigest()
    out_key = _key(ref, "parts", f"{index:05d}")
    done = _get(store, out_key)
    if done is not None and done.get("inputs") == inputs:
        return {
            "partition": index,
            "buckets": len(done["fingerprints"]),
            "rows": int(done["count"]),
            "reused": True,
        }
    params = BuildParams(**p["params"])
    dim = int(p["dim"])
    names = routing["label_names"]
    vec_parts, id_parts, label_parts, row_parts, copy_parts = [], [], [], [], []
    for run_key, body in zip(run_keys, store.get_many(run_keys), strict=True):
        run = codec.loads(body, key=run_key)
        vec_parts.append(_arr(run, "vectors", run_key))
        id_parts.append(_unpack_ids(run["ids"], run_key))
        row_parts.append(_arr(run, "rows", run_key))
        copy_parts.append(_arr(run, "copy", run_key))
        if names is not None:
            routed = _get(store, _routed_key_of(ref, run_key))
            local_names = np.array((routed or {}).get("label_names") or [], dtype=str)
            label_parts.append(
                np.searchsorted(np.array(names), local_names[_arr(run, "labels", run_key)]).astype(np.int32)
            )
    id_kind = routing["id_kind"]
    vectors = np.concatenate(vec_parts) if vec_parts else np.zeros((0, dim), np.float32)
    ids = np.concatenate(id_parts) if id_parts else np.zeros(0, np.int64 if id_kind == "int" else str)
    rows = np.concatenate(row_parts) if row_parts else np.zeros(0, np.int64)
    labels = np.concatenate(label_parts) if label_parts else None
    copy = np.concatenate(copy_parts) if copy_parts else np.zeros(0, np.int8)
    data = Collection(vectors=vectors, ids=ids, label_codes=labels, label_names=names, metadata=None)
    keys = dedup_keys(ids) if len(ids) else np.zeros(0, np.int64)
    if len(vectors) == 0:
        tree = _leaf_tree(dim)
        leaf_rows = [np.zeros(0, np.int64)]
        centroids = stored_centroids(_arr(p, "centroids", _key(ref, "plan"))[index : index + 1], params.dtype)
        primary = secondary = np.zeros(0, np.int64)
    else:
        part = partition_rows(vectors, _spill_budget(params, copy))
        tree, leaf_rows, centroids = part.tree, part.leaf_rows, part.centroids
        primary, secondary = part.primary, part.secondary
        if np.any((copy > 0) & (secondary >= 0)):  # a row with a halo copy is stored twice already
            secondary = np.where(copy > 0, -1, secondary)
            leaf_rows = _leaf_rows(primary, secondary, len(leaf_rows))
    table, written, _ = upload_buckets(
        store,
        ref.collection,
        vectors,
        data,
        leaf_rows,
        centroids,
        params,
        keys=keys if params.replicate > 0 or np.any(copy > 0) else None,  # copies dedup by key
    )
    cal = _candidates(store, ref, routing, p, vectors, rows, primary, secondary, params.metric)
    _put(
        store,
        out_key,
        {
            "inputs": inputs,
            "count": len(vectors),
            "tree": _pack_tree(tree),
            "fingerprints": list(table.fingerprints),
            "sizes": codec.pack_array(table.sizes.astype("<i8")),
            "bucket_rows": codec.pack_array(table.rows.astype("<i8")),
            "centroids": codec.pack_array(table.centroids.astype("<f4")),
            "keys": codec.pack_array(keys[copy < 2].astype("<i8")),
            "primary": codec.pack_array(primary[copy < 2].astype("<i4")),
            "secondary": codec.pack_array(secondary[copy < 2].astype("<i4")),
            # halo copies: their bucket here is the secondary of a row another partition owns
            "halo_keys": codec.pack_array(keys[copy == 2].astype("<i8")),
            "halo_bucket": codec.pack_array(primary[copy == 2].astype("<i4")),
            **cal,
        },
    )
    return {
        "partition": index,
        "buckets": len(table),
        "rows": len(vectors),
        "written": written,
        "reused": False,
    }


def _spill_budget(params: BuildParams, copy: np.ndarray) -> BuildParams:
    """``params`` with the share of rows to spill inside this partition lowered by its halo.

    The collection stores about (1 + replicate) × its rows whatever the halo: each halo copy
    this partition received replaces a spill, and rows that have a copy elsewhere (which are
    never spilled again) are left out of the budget.
    """
    n = len(copy)
    halo = int(np.count_nonzero(copy == 2))
    copied = int(np.count_nonzero(copy > 0))
    if n == 0 or copied == 0 or params.replicate == 0.0:
        return params
    wanted = params.replicate * (n - halo) - halo
    share = 0.0 if n == copied else min(1.0, max(0.0, wanted / (n - copied)))
    return params.model_copy(update={"replicate": share})


def _leaf_rows(primary: np.ndarray, secondary: np.ndarray, n_leaves: int) -> list[np.ndarray]:
    """Rows of each bucket, primaries first (as :func:`kdbuckets.partition.partition` orders them)."""
    spilled = np.flatnonzero(secondary >= 0)
    owner = np.concatenate([primary, secondary[spilled]])
    rows = np.concatenate([np.arange(len(primary)), spilled])
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(n_leaves + 1))
    return [rows[order[bounds[i] : bounds[i + 1]]] for i in range(n_leaves)]


def _exact_block(queries: np.ndarray, block: np.ndarray, metric: str) -> np.ndarray:
    """Float64 distances (nq, len(block)) that order rows as the metric does (l2: squared)."""
    q = queries.astype(np.float64)
    v = block.astype(np.float64)
    dots = q @ v.T
    if metric == "l2":
        return np.einsum("ij,ij->i", q, q)[:, None] - 2.0 * dots + np.einsum("ij,ij->i", v, v)[None, :]
    return (1.0 - dots) if metric == "cosine" else -dots


def _routed_key_of(ref: PlanRef, run_key: str) -> str:
    shard = run_key.rsplit("/", 1)[1].split("-", 1)[0]
    return _key(ref, "routed", shard)


#: Collection rows scored per block when a partition computes calibration candidates.
_CAL_BLOCK = 8192


def _candidates(
    store: ObjectStore,
    ref: PlanRef,
    routing: dict[str, Any],
    p: dict[str, Any],
    vectors: np.ndarray,
    rows: np.ndarray,
    primary: np.ndarray,
    secondary: np.ndarray,
    metric: str,
) -> dict[str, Any]:
    """This partition's share of the calibration ground truth: each query's nearest rows here.

    The same queries as :func:`kdbuckets.calibration.calibrate` (its rows, its rng), each
    excluded from its own neighbours; distances are exact float64 so that :func:`commit`
    merges the partitions' candidates into the collection's true neighbours.
    """
    queries = _arr(routing, "calibration_vectors", "routing")
    qrows = _arr(routing, "calibration_rows", "routing")
    n_total = int(p["count"])
    k = min(max(KS), n_total - 1, len(vectors)) if n_total >= 2 else 0
    empty = {
        "cal_rows": codec.pack_array(np.zeros((len(queries), 0), "<i8")),
        "cal_dist": codec.pack_array(np.zeros((len(queries), 0), "<f8")),
        "cal_primary": codec.pack_array(np.zeros((len(queries), 0), "<i4")),
        "cal_secondary": codec.pack_array(np.zeros((len(queries), 0), "<i4")),
    }
    if k <= 0 or len(queries) == 0:
        return empty
    best_d = np.full((len(queries), k), np.inf)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), _CAL_BLOCK):
        block = vectors[start : start + _CAL_BLOCK]
        d = _exact_block(queries, block, metric)
        d[rows[start : start + len(block)][None, :] == qrows[:, None]] = np.inf  # not its own neighbour
        d_all = np.concatenate([best_d, d], axis=1)
        i_all = np.concatenate(
            [best_i, np.broadcast_to(np.arange(start, start + len(block)), d.shape)], axis=1
        )
        pick = np.argsort(d_all, axis=1, kind="stable")[:, :k]
        best_d = np.take_along_axis(d_all, pick, axis=1)
        best_i = np.take_along_axis(i_all, pick, axis=1)
    found = np.isfinite(best_d)
    local = np.where(found, best_i, 0)
    return {
        "cal_rows": codec.pack_array(np.where(found, rows[local], -1).astype("<i8")),
        "cal_dist": codec.pack_array(best_d.astype("<f8")),
        "cal_primary": codec.pack_array(np.where(found, primary[local], -1).astype("<i4")),
        "cal_secondary": codec.pack_array(np.where(found, secondary[local], -1).astype("<i4")),
    }


# -- 5. commit -------------------------------------------------------------------------------
def commit(store: ObjectStore, ref: PlanRef) -> dict[str, Any]:
    """Merge the partition results into one manifest (stored in parts) and publish it (CAS on HEAD).

    Idempotent: when HEAD already names the plan's version (an earlier attempt published and
    its response was lost) nothing is written again. The manifest's bytes are deterministic
    for one plan (its version and ``created_at`` come from the plan), so a retried publish
    recognises its own manifest.
    """
    started = time.perf_counter()
    p = _load_plan(store, ref)
    live = catalog.read_head(store, ref.collection)
    if live is not None and live.head.version == p["version"]:
        return _response(p, ref, live.head.manifest_key, None, started, reused=True)
    if (None if live is None else live.etag) != p["expected_etag"]:
        raise Conflict(
            f"collection {ref.collection!r} was published by another writer since this build was planned; "
            "nothing was published — start the build again"
        )
    routing = _require(store, _key(ref, "routing"), "the routing summary")
    parts: list[dict[str, Any]] = []
    for i in range(int(p["partitions"])):
        got = _get(store, _key(ref, "parts", f"{i:05d}"))
        if got is None:
            raise InvalidRequest(
                "partition", f"{i} was not built: {_failure(store, ref, f'partition-{i:05d}')}"
            )
        parts.append(got)
    merged = merge_partitions(p, parts, ref)
    keys, primary, secondary = merged.directory
    uniq, counts = np.unique(keys, return_counts=True)
    if len(uniq) != len(keys):
        raise SourceError(
            "source.ids",
            f"must be unique; id key {int(uniq[np.argmax(counts > 1)])} appears {counts.max()} times",
        )
    shards = [encode_shard(s) for s in build_shards(keys, primary, secondary, shard_count(len(keys)))]
    shard_fps = [codec.fingerprint(b) for b in shards]
    store.put_many(
        [(layout.id_shard_key(ref.collection, fp), b) for fp, b in zip(shard_fps, shards, strict=True)]
    )
    del shards
    params = BuildParams(**p["params"])
    manifest = Manifest(
        collection=ref.collection,
        version=p["version"],
        parent=p["parent"],
        created_at=p["created_at"],
        dim=int(p["dim"]),
        metric=params.metric,
        dtype=params.dtype,
        count=int(p["count"]),
        id_kind=routing["id_kind"],
        label_names=routing["label_names"],
        params=params.as_dict(),
        tree=merged.tree,
        buckets=merged.table,
        id_shards=shard_fps,
        part_buckets=part_buckets_for(len(merged.table))
        if params.part_buckets is None
        else params.part_buckets,
    )
    curve = _calibration(routing, parts, merged, manifest, int(p["count"]))
    manifest = dataclasses.replace(manifest, extra={"calibration": curve})
    mkey = catalog.publish(store, manifest, p["expected_etag"])
    return _response(p, ref, mkey, merged.table, started, reused=False)


def _response(
    p: dict[str, Any], ref: PlanRef, mkey: str, table: BucketTable | None, started: float, *, reused: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "collection": ref.collection,
        "version": p["version"],
        "count": int(p["count"]),
        "dim": int(p["dim"]),
        "partitions": int(p["partitions"]),
        "manifest": mkey,
        "plan_id": ref.plan_id,
        "already_published": reused,
        "commit_ms": round((time.perf_counter() - started) * 1000.0, 1),
    }
    if table is not None:
        out["buckets"] = len(table)
        out["stored_rows"] = int(table.rows.sum())
    return out


@dataclass(frozen=True)
class Merged:
    """The partitions as one flat index: grafted tree, bucket table, directory, bucket offsets."""

    tree: Tree
    table: BucketTable
    directory: tuple[np.ndarray, np.ndarray, np.ndarray]
    offsets: np.ndarray  # first global bucket of each partition


def merge_partitions(p: dict[str, Any], parts: list[dict[str, Any]], ref: PlanRef) -> Merged:
    """Concatenate the partitions' bucket tables and graft their trees under the top tree.

    Partition ``i``'s bucket ``b`` becomes bucket ``offsets[i] + b``; its tree replaces top
    leaf ``i`` (children still follow parents, as the manifest requires). This is the one
    place that builds the flat format; a hierarchical manifest keeps ``parts`` apart instead.
    """
    key = _key(ref, "parts")
    top = _unpack_tree(p["top_tree"], _key(ref, "plan"))
    subs = [_unpack_tree(part["tree"], key) for part in parts]
    sizes = np.array([len(part["fingerprints"]) for part in parts], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    tree = graft(top, subs, offsets)
    table = BucketTable(
        fingerprints=[fp for part in parts for fp in part["fingerprints"]],
        sizes=np.concatenate([_arr(part, "sizes", key) for part in parts]).astype(np.int64),
        rows=np.concatenate([_arr(part, "bucket_rows", key) for part in parts]).astype(np.int64),
        centroids=np.concatenate([_arr(part, "centroids", key) for part in parts]).astype(np.float32),
    )
    keys = np.concatenate([_arr(part, "keys", key) for part in parts]).astype(np.int64)
    primary = np.concatenate(
        [_arr(part, "primary", key).astype(np.int64) + o for part, o in zip(parts, offsets, strict=True)]
    )
    secondary = np.concatenate(
        [
            _shift(_arr(part, "secondary", key).astype(np.int64), o)
            for part, o in zip(parts, offsets, strict=True)
        ]
    )
    halo_keys = np.concatenate([_arr(part, "halo_keys", key) for part in parts]).astype(np.int64)
    halo_bucket = np.concatenate(
        [_arr(part, "halo_bucket", key).astype(np.int64) + o for part, o in zip(parts, offsets, strict=True)]
    )
    if len(halo_keys):  # a halo copy is the secondary of the row its home partition owns
        order = np.argsort(keys, kind="stable")
        at = order[np.minimum(np.searchsorted(keys[order], halo_keys), len(keys) - 1)]
        if np.any(keys[at] != halo_keys):
            raise CorruptObject(key, "a halo copy names a row no partition owns")
        secondary[at] = halo_bucket
    return Merged(tree, table, (keys, primary, secondary), offsets)


def _shift(buckets: np.ndarray, offset: int) -> np.ndarray:
    return np.where(buckets >= 0, buckets + offset, -1)


def graft(top: Tree, subs: list[Tree], offsets: np.ndarray) -> Tree:
    """One tree: top leaf ``i`` replaced by ``subs[i]`` whose leaves are numbered from ``offsets[i]``."""
    plane_blocks = [top.planes]
    n_planes = len(top.planes)
    node_plane = top.node_plane.astype(np.int64).tolist()
    threshold = top.threshold.astype(np.float64).tolist()
    left = top.left.astype(np.int64).tolist()
    right = top.right.astype(np.int64).tolist()
    node_leaf = top.node_leaf.astype(np.int64).tolist()
    for node in range(top.n_nodes):
        leaf = int(top.node_leaf[node])
        if leaf < 0:
            continue
        sub, offset = subs[leaf], int(offsets[leaf])
        base = len(node_plane)  # sub's node j >= 1 becomes base + j - 1; its root becomes `node`

        def at(j: int, base: int = base, node: int = node) -> int:
            return node if j == 0 else base + j - 1

        for j in range(sub.n_nodes):
            fields = (
                int(sub.node_plane[j]) + n_planes if sub.node_plane[j] >= 0 else -1,
                float(sub.threshold[j]),
                at(int(sub.left[j])) if sub.left[j] >= 0 else -1,
                at(int(sub.right[j])) if sub.right[j] >= 0 else -1,
                int(sub.node_leaf[j]) + offset if sub.node_leaf[j] >= 0 else -1,
            )
            if j == 0:
                node_plane[node], threshold[node], left[node], right[node], node_leaf[node] = fields
            else:
                node_plane.append(fields[0])
                threshold.append(fields[1])
                left.append(fields[2])
                right.append(fields[3])
                node_leaf.append(fields[4])
        plane_blocks.append(
            sub.planes.reshape(-1, top.planes.shape[1])
            if sub.planes.size
            else np.zeros((0, top.planes.shape[1]), np.float32)
        )
        n_planes += len(plane_blocks[-1])
    return Tree(
        planes=np.concatenate(plane_blocks).astype(np.float32),
        node_plane=np.array(node_plane, np.int32),
        threshold=np.array(threshold, np.float32),
        left=np.array(left, np.int32),
        right=np.array(right, np.int32),
        node_leaf=np.array(node_leaf, np.int32),
    )


def _calibration(
    routing: dict[str, Any], parts: list[dict[str, Any]], merged: Merged, manifest: Manifest, n: int
) -> dict[str, Any]:
    """Recall curves as :func:`kdbuckets.calibration.calibrate` computes them, from merged truth."""
    nb = len(merged.table)
    if n < 2:
        return {"k": CAL_K, "sample": 0, "recall": [1.0] * nb}
    queries = _arr(routing, "calibration_vectors", "routing")
    ks = sorted({min(k, n - 1) for k in KS})
    key = "parts"
    dist = np.concatenate([_arr(part, "cal_dist", key) for part in parts], axis=1)
    rows = np.concatenate([_arr(part, "cal_rows", key) for part in parts], axis=1)
    prim = np.concatenate(
        [
            _shift(_arr(part, "cal_primary", key).astype(np.int64), o)
            for part, o in zip(parts, merged.offsets, strict=True)
        ],
        axis=1,
    )
    sec = np.concatenate(
        [
            _shift(_arr(part, "cal_secondary", key).astype(np.int64), o)
            for part, o in zip(parts, merged.offsets, strict=True)
        ],
        axis=1,
    )
    order = np.lexsort((rows, dist), axis=1)  # nearest first, ties by row
    rows, prim, sec = (np.take_along_axis(a, order, axis=1) for a in (rows, prim, sec))
    # a row with a halo copy is a candidate of two partitions: once, in both of its buckets
    again = np.zeros(rows.shape, bool)
    again[:, 1:] = (rows[:, 1:] == rows[:, :-1]) & (rows[:, 1:] >= 0)
    first = np.flatnonzero(again.ravel()) - 1
    sec.ravel()[first] = np.where(sec.ravel()[first] < 0, prim.ravel()[first + 1], sec.ravel()[first])
    keep = np.argsort(again, axis=1, kind="stable")[:, : ks[-1]]
    truth_primary = np.take_along_axis(prim, keep, axis=1)
    truth_secondary = np.take_along_axis(sec, keep, axis=1)
    positions = read_positions(queries, manifest, manifest.params.get("ranking", "centroid"))
    return curves_from_ranks(positions, truth_primary, truth_secondary, ks)


# -- the Catch path ------------------------------------------------------------------------------
def report(store: ObjectStore, state: dict[str, Any]) -> dict[str, Any]:
    """Why the build failed, for the execution's Fail state; HEAD is never touched here.

    ``state`` is the execution state at the failed step: ``error`` ({Error, Cause}, Cause
    being a Lambda error document or Step Functions' text) and, once planned, ``plan.ref``.
    Failures the map children recorded are added, since a map's own error names none of them.
    """
    error = state.get("error") if isinstance(state.get("error"), dict) else {}
    name = str(error.get("Error") or "BuildFailed")
    cause = str(error.get("Cause") or "")
    try:
        doc = json.loads(cause)
        if isinstance(doc, dict) and "errorMessage" in doc:
            name = str(doc.get("errorType") or name)
            cause = str(doc["errorMessage"])
    except ValueError:
        pass
    ref_doc = (state.get("plan") or {}).get("ref") if isinstance(state.get("plan"), dict) else None
    recorded: list[str] = []
    if isinstance(ref_doc, dict):
        try:
            ref = PlanRef.model_validate(ref_doc)
            prefix = _key(ref, "failed/")
            for key in sorted(store.list_keys(store.bucket, store.prefix + prefix))[:5]:
                doc = json.loads(store.get(key[len(store.prefix) :])[0])
                line = f"{doc['error']}: {doc['cause']}"
                if line not in cause:
                    recorded.append(line)
        except (KdBucketsError, ValueError, KeyError, TypeError):
            pass
    full = "; ".join([c for c in [cause, *recorded] if c]) or "the build failed"
    return {"error": name, "cause": f"{full} (HEAD was not changed)"}
