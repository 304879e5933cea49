"""Regenerate the committed example events in ``events/`` (run: python -m devtools.make_events).

Query events carry real held-out vectors of the sample collection (rounded to 5 decimals),
so `make invoke FN=query EVENT=events/query_basic.json` prints meaningful neighbours.
"""

from __future__ import annotations

import json

import numpy as np

from devtools.local import COLLECTION, REPO, SOURCE_BUCKET, SOURCE_PREFIX, load_sample

SRC = f"s3://{SOURCE_BUCKET}/{SOURCE_PREFIX}"

TINY_ITEMS = [
    {
        "id": "sport-1",
        "vector": [0.9, 0.1, 0.0, 0.0],
        "label": "sports",
        "metadata": {"year": 2019, "lang": "en"},
    },
    {
        "id": "sport-2",
        "vector": [0.8, 0.2, 0.1, 0.0],
        "label": "sports",
        "metadata": {"year": 2023, "lang": "fr"},
    },
    {
        "id": "sport-3",
        "vector": [0.95, 0.0, 0.05, 0.1],
        "label": "sports",
        "metadata": {"year": 2024, "lang": "en"},
    },
    {
        "id": "food-1",
        "vector": [0.0, 0.1, 0.9, 0.1],
        "label": "food",
        "metadata": {"year": 2020, "lang": "en"},
    },
    {
        "id": "food-2",
        "vector": [0.1, 0.0, 0.8, 0.2],
        "label": "food",
        "metadata": {"year": 2022, "lang": "de"},
    },
    {"id": "food-3", "vector": [0.0, 0.2, 0.95, 0.0], "label": "food"},
    {
        "id": "music-1",
        "vector": [0.1, 0.9, 0.0, 0.1],
        "label": "music",
        "metadata": {"year": 2021, "tags": ["live"]},
    },
    {
        "id": "music-2",
        "vector": [0.0, 0.85, 0.1, 0.2],
        "label": "music",
        "metadata": {"year": 2024, "lang": "en"},
    },
]


#: Collection-level write events (``make invoke FN=write EVENT=events/write_drop.json``). The
#: drop names a version that is never live on purpose: it answers Conflict naming the live one,
#: which is how a drop is meant to be used (look first, then drop exactly what you saw).
COLLECTION_EVENTS = {
    "write_list_collections.json": {"operation": "list_collections"},
    "write_drop.json": {
        "collection": "tiny",
        "operation": "drop",
        "expected_version": "20260101T000000000000Z-00000000",
    },
}


def main() -> None:
    sample = load_sample()
    q = [np.round(v.astype(np.float64), 5).tolist() for v in sample.queries[:3]]
    events = {
        "build_npy.json": {
            "collection": COLLECTION,
            "source": {"vectors": SRC + "vectors.npy", "ids": SRC + "ids.npy", "labels": SRC + "labels.npy"},
            "metric": "cosine",
            "bucket_size": 1000,
            "max_depth": 32,
            "seed": 0,
        },
        "build_jsonl.json": {
            "collection": "demo-jsonl",
            "source": {"jsonl": SRC + "items.jsonl.gz"},
            "metric": "cosine",
            "bucket_size": 200,
            "seed": 0,
        },
        "build_inline.json": {
            "collection": "tiny",
            "source": {"items": TINY_ITEMS},
            "metric": "cosine",
            "bucket_size": 3,
        },
        "query_basic.json": {"collection": COLLECTION, "vectors": q[:1], "k": 5},
        "query_probes.json": {"collection": COLLECTION, "vectors": q[:1], "k": 5, "probes": 8},
        "query_recall_target.json": {
            "collection": COLLECTION,
            "vectors": q[:1],
            "k": 10,
            "recall_target": 0.9,
        },
        "query_batch.json": {"collection": COLLECTION, "vectors": q, "k": 10, "probes": 16},
        "classify_basic.json": {"collection": COLLECTION, "vectors": q, "k": 10, "mode": "classify"},
        "query_filter.json": {
            "collection": "tiny",
            "vectors": [[0.85, 0.15, 0.05, 0.0]],
            "k": 3,
            "filter": {"lang": "en", "year": {"$gte": 2020}},
            "include_metadata": True,
        },
        "bad_query_filter_operator.json": {
            "collection": "tiny",
            "vectors": [[0.85, 0.15, 0.05, 0.0]],
            "filter": {"year": {"$where": "1"}},
        },
        "query_tiny.json": {"collection": "tiny", "vectors": [[0.85, 0.15, 0.05, 0.0]], "k": 3, "probes": 2},
        "classify_tiny.json": {
            "collection": "tiny",
            "vectors": [[0.05, 0.1, 0.9, 0.1]],
            "k": 3,
            "probes": 3,
            "mode": "classify",
        },
        "bad_query_wrong_dimension.json": {"collection": COLLECTION, "vectors": [[0.1, 0.2, 0.3]], "k": 5},
        "bad_query_k_zero.json": {"collection": COLLECTION, "vectors": q[:1], "k": 0},
        "bad_query_unknown_collection.json": {"collection": "no-such-collection", "vectors": q[:1]},
        "bad_query_non_numeric.json": {"collection": "tiny", "vectors": [[0.1, "x", 0.3, 0.4]]},
        "bad_query_unknown_mode.json": {
            "collection": "tiny",
            "vectors": [[0.1, 0.2, 0.3, 0.4]],
            "mode": "cluster",
        },
        "bad_build_missing_collection.json": {"source": {"items": TINY_ITEMS}},
        "bad_build_malformed_uri.json": {
            "collection": "broken",
            "source": {"vectors": "https://example.com/v.npy"},
        },
        "bad_build_missing_source_object.json": {
            "collection": "broken",
            "source": {"vectors": SRC + "missing.npy"},
        },
    }
    events.update(COLLECTION_EVENTS)
    for name, event in events.items():
        text = json.dumps(event, indent=1)
        (REPO / "events" / name).write_text((text if len(text) < 2000 else json.dumps(event)) + "\n")
    print(f"wrote {len(events)} events from {sample.name}")


if __name__ == "__main__":
    main()
