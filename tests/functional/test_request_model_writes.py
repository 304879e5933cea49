"""Write requests that used to lose or corrupt data at the request boundary, end to end.

Each test builds a small collection on moto, sends the write through ``service.write`` (what
the write handler and the CLI call) and checks what a query answers afterwards:

- an upserted item without an id was numbered by its position and replaced ids 0, 1, …;
- a delete naming one id 300 times counted 300 deletions;
- an id differing from a stored one by a trailing NUL ("doc2" + NUL) became that id once in a
  numpy text array, so an upsert replaced and a delete removed "doc2";
- an upsert batch mixing labelled and unlabelled items was accepted.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from devtools import local
from kdbuckets import InvalidRequest, ObjectStore, Searcher, service

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

DIM = 4
VECTORS = np.random.default_rng(11).normal(size=(6, DIM)).round(3)


def build(store: ObjectStore, ids: list[Any], *, labels: list[str] | None = None) -> None:
    items = [
        {"id": i, "vector": v.tolist()} | ({} if labels is None else {"label": labels[n]})
        for n, (i, v) in enumerate(zip(ids, VECTORS, strict=False))
    ]
    service.build(
        {"collection": "c", "source": {"items": items}, "metric": "l2", "bucket_size": 2, "dtype": "float32"},
        store,
    )


def nearest(store: ObjectStore, vector: Any) -> dict[str, Any]:
    """The exact nearest neighbour of ``vector`` (every bucket read)."""
    event = {"collection": "c", "vectors": [np.asarray(vector, dtype=float).tolist()], "k": 1, "probes": 4096}
    return service.query(event, Searcher(store))["results"][0][0]


def count(store: ObjectStore) -> int:
    return service.write({"collection": "c", "operation": "versions"}, store)["versions"][0]["count"]


@pytest.fixture
def store(s3: Any) -> ObjectStore:
    return ObjectStore(local.INDEX_BUCKET)


def refused(store: ObjectStore, s3: Any, snapshot: Any, event: dict[str, Any], field: str) -> InvalidRequest:
    """The write is refused naming ``field`` and the index bucket is left exactly as it was."""
    before = snapshot(s3)
    with pytest.raises(InvalidRequest) as info:
        service.write(event, store)
    assert info.value.field == field, str(info.value)
    assert snapshot(s3) == before
    return info.value


def test_an_upserted_item_without_an_id_replaces_nothing(
    store: ObjectStore, s3: Any, index_snapshot: Any
) -> None:
    build(store, list(range(6)))
    stranger = [9.0, 9.0, 9.0, 9.0]

    refused(
        store,
        s3,
        index_snapshot,
        {"collection": "c", "operation": "upsert", "items": [{"vector": stranger}]},
        "items[0].id",
    )

    assert nearest(store, VECTORS[0]) == {"id": 0, "distance": 0.0, "label": None}
    assert count(store) == 6


def test_a_delete_repeating_an_id_deletes_and_counts_it_once(store: ObjectStore) -> None:
    build(store, list(range(6)))

    response = service.write({"collection": "c", "operation": "delete", "ids": [3] * 300}, store)

    assert (response["deleted"], response["not_found"], response["count"]) == (1, 0, 5)
    assert count(store) == 5


def test_an_upsert_repeating_an_id_is_refused_and_writes_nothing(
    store: ObjectStore, s3: Any, index_snapshot: Any
) -> None:
    build(store, list(range(6)))
    items = [
        {"id": 1, "vector": [1.0, 0, 0, 0]},
        {"id": 7, "vector": [0, 1.0, 0, 0]},
        {"id": 1, "vector": [0, 0, 1.0, 0]},
    ]

    err = refused(
        store, s3, index_snapshot, {"collection": "c", "operation": "upsert", "items": items}, "items[2].id"
    )

    assert "items[0].id" in err.problem


@pytest.mark.parametrize("operation", ["upsert", "delete"])
def test_an_id_that_differs_by_a_trailing_nul_neither_replaces_nor_deletes_the_stored_one(
    store: ObjectStore, s3: Any, index_snapshot: Any, operation: str
) -> None:
    ids = [f"doc{i}" for i in range(6)]
    build(store, ids)
    event = (
        {"collection": "c", "operation": "upsert", "items": [{"id": "doc2\x00", "vector": [9.0, 9, 9, 9]}]}
        if operation == "upsert"
        else {"collection": "c", "operation": "delete", "ids": ["doc2\x00"]}
    )
    field = "items[0].id" if operation == "upsert" else "ids[0]"

    err = refused(store, s3, index_snapshot, event, field)

    assert "U+0000" in err.problem
    assert nearest(store, VECTORS[2]) == {"id": "doc2", "distance": 0.0, "label": None}


def test_an_upsert_mixing_labelled_and_unlabelled_items_is_refused_and_writes_nothing(
    store: ObjectStore, s3: Any, index_snapshot: Any
) -> None:
    build(store, [f"doc{i}" for i in range(6)], labels=list("ababab"))
    items = [{"id": "doc0", "vector": [1.0, 0, 0, 0], "label": "b"}, {"id": "new", "vector": [0, 1.0, 0, 0]}]

    err = refused(
        store,
        s3,
        index_snapshot,
        {"collection": "c", "operation": "upsert", "items": items},
        "items[1].label",
    )

    assert "items[0]" in err.problem


def test_a_build_with_a_control_character_in_an_inline_id_is_refused_naming_the_item(
    store: ObjectStore, s3: Any, index_snapshot: Any
) -> None:
    items = [{"id": "doc7", "vector": [1.0, 0, 0, 0]}, {"id": "doc7\x00", "vector": [0, 1.0, 0, 0]}]
    before = index_snapshot(s3)

    with pytest.raises(InvalidRequest) as info:
        service.build({"collection": "c", "source": {"items": items}}, store)

    assert info.value.field == "source.items[1].id"
    assert index_snapshot(s3) == before
