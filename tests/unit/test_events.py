"""Event validation: every refusal is an InvalidRequest whose field names the culprit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from kdbuckets.builder import BuildParams
from kdbuckets.errors import InvalidRequest
from kdbuckets.events import MAX_QUERY_VECTORS, parse_build, parse_query

QUERY = {"collection": "docs", "vectors": [[0.5, 1.0, -2.0]]}
BUILD = {"collection": "docs", "source": {"items": [{"vector": [1, 2]}]}}


def refused(parse: Any, event: object, field: str) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        parse(event)
    err = info.value
    assert isinstance(err, InvalidRequest)
    assert err.field == field, str(err)
    assert field in str(err)
    return err


def test_minimal_query_gets_the_defaults() -> None:
    request, vectors, _ = parse_query(QUERY)
    assert (
        request.k,
        request.probes,
        request.recall_target,
        request.mode,
        request.version,
        request.ranking,
    ) == (
        10,
        None,  # the searcher then picks probes from the index's calibration curve (target 0.95)
        None,
        "search",
        None,
        None,
    )
    assert vectors.dtype == np.float32
    assert vectors.shape == (1, 3)


def test_full_query_is_accepted() -> None:
    event = {
        **QUERY,
        "k": 1000,
        "probes": 4096,
        "mode": "classify",
        "version": "20240501T120000123456Z-0a1b2c3d",
        "ranking": "bbf",
    }
    request, _, _ = parse_query(event)
    assert request.k == 1000
    assert request.probes == 4096
    assert request.ranking == "bbf"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": -1}, "k"),
        ({"k": 1001}, "k"),
        ({"k": 10**9}, "k"),
        ({"k": "5"}, "k"),
        ({"k": 5.0}, "k"),
        ({"k": True}, "k"),
        ({"k": None}, "k"),
        ({"probes": 0}, "probes"),
        ({"probes": 4097}, "probes"),
        ({"probes": 10**12}, "probes"),
        ({"probes": "8"}, "probes"),
        ({"mode": "knn"}, "mode"),
        ({"mode": "SEARCH"}, "mode"),
        ({"ranking": "random"}, "ranking"),
        ({"version": "../v1"}, "version"),
        ({"version": "v1/x"}, "version"),
        ({"version": ""}, "version"),
        ({"version": "v" * 65}, "version"),
        ({"version": 20240501}, "version"),
        ({"limit": 5}, "limit"),
        ({"Collection": "docs"}, "Collection"),
        ({"collection": "../x"}, "collection"),
        ({"collection": "a/b"}, "collection"),
        ({"collection": ""}, "collection"),
        ({"collection": "x" * 200}, "collection"),
        ({"collection": "a\x00b"}, "collection"),
        ({"collection": "."}, "collection"),
        ({"collection": "-x"}, "collection"),
        ({"collection": 7}, "collection"),
        ({"collection": None}, "collection"),
        ({"vectors": []}, "vectors"),
        ({"vectors": "0.5,1.0"}, "vectors"),
        ({"vectors": [[1.0]] * (MAX_QUERY_VECTORS + 1)}, "vectors"),
        ({"vectors": [[0.5, "1.0", 2.0]]}, "vectors[0][1]"),
        ({"vectors": [[0.5, 1.0], [0.5]]}, "vectors[1]"),
        ({"vectors": [[True, False]]}, "vectors[0][0]"),
        ({"vectors": [[]]}, "vectors[0]"),
    ],
)
def test_bad_query_events_name_the_field(change: dict[str, Any], field: str) -> None:
    refused(parse_query, {**QUERY, **change}, field)


@pytest.mark.parametrize("missing", ["collection", "vectors"])
def test_missing_query_fields_are_named(missing: str) -> None:
    event = {k: v for k, v in QUERY.items() if k != missing}
    err = refused(parse_query, event, missing)
    assert "required" in err.problem


@pytest.mark.parametrize("event", [None, [], "docs", 5])
def test_query_event_that_is_not_an_object_is_refused(event: object) -> None:
    refused(parse_query, event, "event")


def test_non_numeric_query_vector_message_names_element_and_type() -> None:
    err = refused(parse_query, {**QUERY, "vectors": [[1.0, "x"]]}, "vectors[0][1]")
    assert str(err) == "vectors[0][1] must be a number, got str"


@pytest.mark.parametrize("name", ["a", "docs", "A-b_c.d", "x" * 128, "0abc"])
def test_reasonable_collection_names_are_accepted(name: str) -> None:
    assert parse_query({**QUERY, "collection": name})[0].collection == name


def test_minimal_build_gets_the_default_params() -> None:
    request = parse_build(BUILD)
    assert request.params() == BuildParams()


def test_build_params_are_passed_through() -> None:
    event = {
        **BUILD,
        "metric": "ip",
        "bucket_size": 7,
        "max_depth": 0,
        "seed": 2**32 - 1,
        "split": "random",
        "projection": "none",
        "dtype": "float16",
    }
    assert parse_build(event).params() == BuildParams(
        metric="ip",
        bucket_size=7,
        max_depth=0,
        seed=2**32 - 1,
        split="random",
        projection="none",
        dtype="float16",
    )


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"metric": "hamming"}, "metric"),
        ({"metric": "COSINE"}, "metric"),
        ({"bucket_size": 0}, "bucket_size"),
        ({"bucket_size": 1_000_001}, "bucket_size"),
        ({"bucket_size": "100"}, "bucket_size"),
        ({"bucket_size": 100.0}, "bucket_size"),
        ({"max_depth": -1}, "max_depth"),
        ({"max_depth": 65}, "max_depth"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"split": "median"}, "split"),
        ({"projection": "umap"}, "projection"),
        ({"dtype": "float64"}, "dtype"),
        ({"source": "s3://b/x.npy"}, "source"),
        ({"source": None}, "source"),
        ({"sources": {}}, "sources"),
        ({"collection": "../x"}, "collection"),
        ({"collection": "a/b"}, "collection"),
    ],
)
def test_bad_build_events_name_the_field(change: dict[str, Any], field: str) -> None:
    refused(parse_build, {**BUILD, **change}, field)


@pytest.mark.parametrize("missing", ["collection", "source"])
def test_missing_build_fields_are_named(missing: str) -> None:
    refused(parse_build, {k: v for k, v in BUILD.items() if k != missing}, missing)


def test_collection_with_a_trailing_newline_is_refused() -> None:
    refused(parse_query, {**QUERY, "collection": "docs\n"}, "collection")
