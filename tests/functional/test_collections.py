"""Collections as a whole through the write handler on a moto server: list_collections and drop.

After a drop every query gets CollectionNotFound (a warm container too), list_collections no
longer shows the collection and no object is left under its prefix; a collection whose name
extends the dropped one's (``docs`` / ``docs2``) is untouched, byte for byte. A drop with a
stale ``expected_version`` is a Conflict naming the live version and changes nothing. The
committed events ``events/write_list_collections.json`` and ``events/write_drop.json`` run as
documented.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

from devtools import local
from kdbuckets import CollectionNotFound, Conflict, InvalidRequest

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning")

INDEX = local.INDEX_BUCKET
VECTOR = [[0.85, 0.15, 0.05, 0.0]]


@pytest.fixture
def run(
    moto_server: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    write_handler: ModuleType,
    lambda_context: Any,
) -> dict[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    def query(event: dict[str, Any], warm: bool = False) -> dict[str, Any]:
        if not warm:
            query_handler._searcher = None
        return query_handler.lambda_handler(event, lambda_context)

    return {
        "build": lambda e: build_handler.lambda_handler(e, lambda_context),
        "write": lambda e: write_handler.lambda_handler(e, lambda_context),
        "query": query,
    }


def build(run: Any, load_event: Callable[[str], dict[str, Any]], name: str) -> str:
    return run["build"]({**load_event("build_inline.json"), "collection": name})["version"]


def objects(s3: Any, prefix: str = "") -> dict[str, str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=INDEX, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def test_drop_removes_the_collection_and_nothing_else(
    run: Any, moto_server: Any, load_event: Callable[[str], dict[str, Any]]
) -> None:
    version = build(run, load_event, "docs")
    build(run, load_event, "docs2")
    build(run, load_event, "doc")
    upsert = {**load_event("write_upsert.json"), "collection": "docs"}
    version = run["write"](upsert)["version"]  # two versions, id shards, buckets of both
    assert run["query"]({"collection": "docs", "vectors": VECTOR, "k": 3}, warm=False)["results"][0]
    run["query"]({"collection": "docs", "vectors": VECTOR, "k": 3}, warm=True)  # keep a warm container
    others = {k: e for k, e in objects(moto_server.s3).items() if not k.startswith("docs/")}
    assert any(k.startswith("docs2/") for k in others)

    listed = run["write"](load_event("write_list_collections.json"))
    assert [c["collection"] for c in listed["collections"]] == ["doc", "docs", "docs2"]
    assert listed["collections"][1] == {"collection": "docs", "version": version, "count": 9}

    dropped = run["write"]({"collection": "docs", "operation": "drop", "expected_version": version})
    assert dropped["operation"] == "drop"
    assert dropped["version"] == version
    assert dropped["deleted_objects"] > 0
    assert objects(moto_server.s3, "docs/") == {}
    assert objects(moto_server.s3) == others
    for warm in (True, False):
        with pytest.raises(CollectionNotFound):
            run["query"]({"collection": "docs", "vectors": VECTOR, "k": 3}, warm=warm)
    listed = run["write"](load_event("write_list_collections.json"))
    assert [c["collection"] for c in listed["collections"]] == ["doc", "docs2"]
    assert run["query"]({"collection": "docs2", "vectors": VECTOR, "k": 3})["results"][0]
    with pytest.raises(CollectionNotFound):
        run["write"](load_event("write_versions.json") | {"collection": "docs"})


def test_drop_with_a_stale_expected_version_is_a_conflict_naming_the_live_one(
    run: Any, moto_server: Any, load_event: Callable[[str], dict[str, Any]]
) -> None:
    version = build(run, load_event, "tiny")
    before = objects(moto_server.s3)
    event = load_event("write_drop.json")  # the committed event names a version never live
    assert event["collection"] == "tiny"
    with pytest.raises(Conflict, match=f"is at version {version}, not expected_version"):
        run["write"](event)
    assert objects(moto_server.s3) == before
    assert run["query"](load_event("query_tiny.json"))["version"] == version
    # ... and with the live version filled in, it drops.
    assert run["write"]({**event, "expected_version": version})["collection"] == "tiny"
    assert objects(moto_server.s3) == {}


def test_list_collections_of_an_empty_index(run: Any, load_event: Callable[[str], dict[str, Any]]) -> None:
    assert run["write"](load_event("write_list_collections.json")) == {
        "operation": "list_collections",
        "prefix": "",
        "collections": [],
    }


@pytest.mark.parametrize(
    ("event", "field", "problem"),
    [
        ({"collection": "tiny", "operation": "drop"}, "expected_version", "is required for operation 'drop'"),
        (
            {"collection": "tiny", "operation": "drop", "expected_version": "../x"},
            "expected_version",
            "is not a valid version id",
        ),
        ({"operation": "drop", "expected_version": "v1"}, "collection", "is required for operation 'drop'"),
        (
            {"operation": "list_collections", "collection": "tiny"},
            "collection",
            "does not apply to operation 'list_collections'",
        ),
    ],
)
def test_malformed_collection_events_are_refused_and_change_nothing(
    run: Any,
    moto_server: Any,
    load_event: Callable[[str], dict[str, Any]],
    event: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    build(run, load_event, "tiny")
    before = objects(moto_server.s3)
    with pytest.raises(InvalidRequest) as excinfo:
        run["write"](event)
    assert excinfo.value.field == field
    assert excinfo.value.problem.startswith(problem)
    assert objects(moto_server.s3) == before
