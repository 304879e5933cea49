"""Event-shaped entry points shared by the Lambda handlers, the CLI and the demo.

Each takes a decoded JSON event and returns a JSON-ready response (DESIGN.md §4), so every
front end behaves identically. Nothing here knows about Lambda or reads the environment.
"""

from __future__ import annotations

import time
from typing import Any

from . import events
from .builder import build_index
from .searcher import Searcher
from .sources import read_source
from .storage import ObjectStore


def build(event: object, store: ObjectStore) -> dict[str, Any]:
    """Validate a build event, read its source, build and publish. Response per DESIGN §4."""
    request = events.parse_build(event)
    params = request.params()
    started = time.perf_counter()
    data = read_source(
        request.source, metric=params.metric, fetch=lambda uri: store.get_from(uri.bucket, uri.key)[0]
    )
    read_ms = round((time.perf_counter() - started) * 1000.0, 1)
    result = build_index(store, request.collection, data, params)
    timings = {"read_ms": read_ms, **result.timings_ms}
    timings["total_ms"] = round(read_ms + result.timings_ms["total_ms"], 1)
    return {
        "collection": result.collection,
        "version": result.version,
        "count": result.count,
        "dim": data.dim,
        "buckets": result.buckets,
        "buckets_written": result.buckets_written,
        "manifest": store.prefix + result.manifest_key,
        "params": params.as_dict(),
        "timings_ms": timings,
    }


def query(event: object, searcher: Searcher) -> dict[str, Any]:
    """Validate a query event and run it (``mode`` "search" or "classify")."""
    request, vectors = events.parse_query(event)
    options = {
        "k": request.k,
        "probes": request.probes,
        "recall_target": request.recall_target,
        "version": request.version,
        "ranking": request.ranking,
    }
    if request.mode == "classify":
        classification = searcher.classify(request.collection, vectors, **options)
        result = classification.neighbours
    else:
        classification = None
        result = searcher.search(request.collection, vectors, **options)
    labels = result.labels()
    response: dict[str, Any] = {
        "collection": request.collection,
        "version": result.version,
        "results": [
            [
                {"id": ident, "distance": float(dist), "label": label}
                for ident, dist, label in zip(ids, dists, labs, strict=True)
                if ident is not None
            ]
            for ids, dists, labs in zip(result.ids, result.distances.tolist(), labels, strict=True)
        ],
        "stats": result.stats.as_dict(),
    }
    if classification is not None:
        response["predictions"] = [
            {"label": label, "votes": classification.votes(i)}
            for i, label in enumerate(classification.predicted)
        ]
    return response
