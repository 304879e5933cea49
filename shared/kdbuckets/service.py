"""Event-shaped entry points shared by the Lambda handlers, the CLI (`python -m kdbuckets`) and the demo.

Each takes a decoded JSON event and returns a JSON-ready response (DESIGN.md §4), so every
front end behaves identically. Nothing here knows about Lambda or reads the environment.

The build and write machinery is imported inside :func:`build` and :func:`write`, so that the
query function (which imports this module for :func:`query`) never loads it at cold start.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import events
from .errors import InvalidRequest
from .searcher import Classification

if TYPE_CHECKING:
    from .searcher import Searcher
    from .storage import ObjectStore


def build(event: object, store: ObjectStore, *, memory_mb: int | None = None) -> dict[str, Any]:
    """Validate a build event, read its source, build and publish. Response per DESIGN §4.

    ``memory_mb`` (the function's memory) refuses, before reading it, a collection one build
    cannot hold, naming the state machine that can.
    """
    from .builder import build_index
    from .sources import StoreReader, read_source

    request = events.parse_build(event)
    params = request.params()
    started = time.perf_counter()
    data = read_source(
        request.source,
        metric=params.metric,
        dtype=params.dtype,
        reader=StoreReader(store),  # ranged GETs into one preallocated matrix; prefixes = shards
        memory_mb=memory_mb,
    )
    read_ms = round((time.perf_counter() - started) * 1000.0, 1)
    result = build_index(
        store,
        request.collection,
        data,
        params,
        replace=request.replace,
        expected_version=request.expected_version,
        in_place=True,  # the collection was read for this build alone: prepare it in place
    )
    timings = {"read_ms": read_ms, **result.timings_ms}
    timings["total_ms"] = round(read_ms + result.timings_ms["total_ms"], 1)
    return {
        "collection": result.collection,
        "version": result.version,
        "count": result.count,
        "dim": data.dim,
        "buckets": result.buckets,
        "buckets_written": result.buckets_written,
        "stored_rows": result.stored_rows,
        "manifest": store.prefix + result.manifest_key,
        "params": params.as_dict(),
        "timings_ms": timings,
    }


def query(event: object, searcher: Searcher) -> dict[str, Any]:
    """Validate a query-function event and run it.

    ``operation`` "query" (the default: ``mode`` "search" or "classify"), or one of the reads
    that need no search — "fetch", "list", "count" (:mod:`kdbuckets.reading`).
    """
    if events.read_operation(event) != "query":
        return read(events.parse_read(event), searcher.store)
    request, vectors, filt = events.parse_query(event)
    options = {
        "k": request.k,
        "probes": request.probes,
        "recall_target": request.recall_target,
        "version": request.version,
        "ranking": request.ranking,
        "filter": filt,
        "max_probes": request.max_probes,
        "consistency": request.consistency,
    }
    grouped = {"group_by": request.group_by, "group_size": request.group_size}
    spec = request.spec()
    outcome: Any
    if spec is not None:  # by example: stored ids, recommend, analogy
        from . import examples

        outcome = examples.run(searcher, request.collection, spec, mode=request.mode, **options, **grouped)
    elif request.mode == "classify":
        outcome = searcher.classify(request.collection, vectors, **options)
    else:
        outcome = searcher.search(request.collection, vectors, **options, **grouped)
    if isinstance(outcome, Classification):
        classification: Classification | None = outcome
        result = outcome.neighbours
    else:
        classification, result = None, outcome
    labels = result.labels()
    response: dict[str, Any] = {
        "collection": request.collection,
        "version": result.version,
        "results": [
            [
                {"id": ident, "distance": float(dist), "label": label}
                | ({"metadata": meta} if request.include_metadata else {})
                for ident, dist, label, meta in zip(ids, dists, labs, metas, strict=True)
                if ident is not None
            ]
            for ids, dists, labs, metas in zip(
                result.ids, result.distances.tolist(), labels, result.metadata, strict=True
            )
        ],
        "stats": result.stats.as_dict(),
    }
    if result.groups is not None:
        response["groups"] = [
            [{"group": value, "hits": [hits[j] for j in members]} for value, members in query_groups]
            for hits, query_groups in zip(response["results"], result.groups, strict=True)
        ]
    if classification is not None:
        response["predictions"] = [
            {"label": label, "votes": classification.votes(i)}
            for i, label in enumerate(classification.predicted)
        ]
    return response


def read(request: Any, store: ObjectStore) -> dict[str, Any]:
    """Run a validated fetch, list or count request (a query request is :func:`query`'s)."""
    from . import reading

    op = request.operation
    if isinstance(request, events.FetchRequest):
        result: Any = reading.fetch(
            store,
            request.collection,
            request.ids,
            include_vectors=request.include_vectors,
            include_metadata=request.include_metadata,
            version=request.version,
        )
    elif isinstance(request, events.ListRequest):
        result = reading.list_page(
            store,
            request.collection,
            limit=request.limit,
            cursor=request.cursor,
            include_vectors=request.include_vectors,
            include_metadata=request.include_metadata,
            version=request.version,
        )
    elif isinstance(request, events.CountRequest):
        result = reading.count(
            store, request.collection, filter=request.parsed_filter(), version=request.version
        )
    else:
        raise InvalidRequest("operation", f"{op!r} is not a read operation without vectors")
    return {"operation": op, **result.as_dict()}


def write(event: object, store: ObjectStore) -> dict[str, Any]:
    """Validate a write event and apply it; the response names the new (or live) version."""
    from . import admin, gc, versions, writer

    request = events.parse_write(event)
    op = request.operation
    if isinstance(request, events.ListCollectionsRequest):  # the one operation without a collection
        listed = admin.list_collections(store)
        return {"operation": op, "prefix": store.prefix, "collections": [c.as_dict() for c in listed]}
    collection = request.collection
    if isinstance(request, events.DropRequest):
        dropped = admin.drop_collection(store, collection, request.expected_version)
        return {"operation": op, **dropped.as_dict()}
    if isinstance(request, events.UpsertRequest | events.DeleteRequest):
        if isinstance(request, events.UpsertRequest):
            result = writer.write(store, collection, upserts=request.to_collection(), deletes=None)
        else:
            result = writer.write(store, collection, upserts=None, deletes=request.id_array())
        return {"operation": op, **result.as_dict()}
    if isinstance(request, events.CompactRequest):
        built = writer.compact(store, collection)
        return {
            "operation": op,
            "collection": collection,
            "version": built.version,
            "count": built.count,
            "buckets": built.buckets,
            "buckets_written": built.buckets_written,
        }
    if isinstance(request, events.RecalibrateRequest):
        from .recalibrate import recalibrate

        return {"operation": op, **recalibrate(store, collection).as_dict()}
    if isinstance(request, events.VersionsRequest):
        return {
            "operation": op,
            "collection": collection,
            "versions": [v.as_dict() for v in versions.list_versions(store, collection)],
        }
    if isinstance(request, events.DescribeRequest):
        return {"operation": op, **versions.describe_version(store, collection, request.version)}
    if isinstance(request, events.ExportRequest):
        from .export import export

        exported = export(
            store,
            collection,
            request.destination,
            version=request.version,
            rows_per_shard=request.rows_per_shard,
        )
        return {"operation": op, **exported.as_dict()}
    if isinstance(request, events.RollbackRequest):
        live = versions.rollback(
            store, collection, request.version, expected_head_version=request.expected_version
        )
        return {"operation": op, "collection": collection, "version": live}
    report = gc.collect_garbage(
        store,
        collection,
        keep_last=request.keep_last,
        grace_seconds=request.grace_seconds,
        dry_run=request.dry_run,
    )
    return {"operation": op, "collection": collection, **report.as_dict()}
