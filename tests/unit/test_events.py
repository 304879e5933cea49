"""Event validation: every refusal is an InvalidRequest whose field names the culprit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from kdbuckets.builder import BuildParams
from kdbuckets.errors import InvalidRequest
from kdbuckets.events import (
    MAX_QUERY_VECTORS,
    CompactRequest,
    DeleteRequest,
    DescribeRequest,
    GcRequest,
    RollbackRequest,
    UpsertRequest,
    VersionsRequest,
    parse_build,
    parse_query,
    parse_write,
)

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
        ({"tail_rows": -1}, "tail_rows"),
        ({"tail_rows": 65_537}, "tail_rows"),  # a query holds the whole decoded tail
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


# --------------------------------------------------------------------------- error wording
def test_a_bound_violation_names_the_bound_and_the_value() -> None:
    assert str(refused(parse_query, {**QUERY, "k": 0}, "k")) == "k must be ≥ 1, got 0"
    assert str(refused(parse_query, {**QUERY, "k": 1001}, "k")) == "k must be ≤ 1000, got 1001"


def test_a_wrong_type_names_what_was_expected_and_what_came() -> None:
    assert str(refused(parse_query, {**QUERY, "k": "5"}, "k")) == 'k must be an integer, got a string "5"'
    assert str(refused(parse_query, {**QUERY, "k": None}, "k")) == "k must be an integer, got null"


def test_a_value_outside_a_choice_lists_the_choices() -> None:
    err = refused(parse_query, {**QUERY, "mode": "knn"}, "mode")
    assert str(err) == "mode must be 'search' or 'classify', got \"knn\""


def test_an_unknown_field_is_named_as_not_known() -> None:
    assert refused(parse_query, {**QUERY, "limit": 5}, "limit").problem == "is not a known field"


# --------------------------------------------------------------------------- response size
def test_query_asking_for_more_results_than_a_response_carries_names_vectors_and_k() -> None:
    err = refused(parse_query, {**QUERY, "vectors": [[1.0, 2.0, 3.0]] * 51, "k": 1000}, "vectors, k")
    assert "51 × 1000" in err.problem


def test_include_metadata_lowers_the_result_bound() -> None:
    event = {**QUERY, "vectors": [[1.0, 2.0, 3.0]] * 3, "k": 1000}
    assert parse_query(event)[0].k == 1000
    err = refused(parse_query, {**event, "include_metadata": True}, "vectors, k")
    assert "include_metadata" in err.problem


# --------------------------------------------------------------------------- version ids
GOOD_VERSION = "20240501T120000123456Z-0a1b2c3d"
VERSION_FIELDS = [
    pytest.param(parse_query, {**QUERY}, "version", id="query-version"),
    pytest.param(parse_build, {**BUILD}, "expected_version", id="build-expected_version"),
    pytest.param(
        parse_write, {"collection": "docs", "operation": "describe"}, "version", id="describe-version"
    ),
    pytest.param(
        parse_write, {"collection": "docs", "operation": "rollback"}, "version", id="rollback-version"
    ),
    pytest.param(
        parse_write,
        {"collection": "docs", "operation": "rollback", "version": GOOD_VERSION},
        "expected_version",
        id="rollback-expected_version",
    ),
]


@pytest.mark.parametrize(("parse", "event", "field"), VERSION_FIELDS)
@pytest.mark.parametrize(
    "bad",
    ["../v1", "v1/x", "", "v" * 65, "v1\n", "\u0663", "vé", "v 1", 20240501],
    ids=[
        "dots-slash",
        "slash",
        "empty",
        "too-long",
        "newline",
        "arabic-digit",
        "accent",
        "space",
        "int",
    ],
)
def test_every_version_field_follows_the_one_version_id_rule(
    parse: Any, event: dict[str, Any], field: str, bad: object
) -> None:
    refused(parse, {**event, field: bad}, field)


@pytest.mark.parametrize(("parse", "event", "field"), VERSION_FIELDS)
def test_every_version_field_accepts_a_version_the_builder_makes(
    parse: Any, event: dict[str, Any], field: str
) -> None:
    parsed = parse({**event, field: GOOD_VERSION})
    request = parsed[0] if isinstance(parsed, tuple) else parsed
    assert getattr(request, field) == GOOD_VERSION


# --------------------------------------------------------------------------- build parameters
@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"refine": 51}, "refine"),
        ({"refine": -1}, "refine"),
        ({"replicate": 1.5}, "replicate"),
        ({"replicate": True}, "replicate"),
        ({"ranking": "magic"}, "ranking"),
        ({"metric": "hamming"}, "metric"),
        ({"bucket_size": 0}, "bucket_size"),
        ({"max_depth": 65}, "max_depth"),
        ({"seed": 2**32}, "seed"),
        ({"split": "median"}, "split"),
        ({"projection": "umap"}, "projection"),
        ({"dtype": "int8"}, "dtype"),
        ({"bucketsize": 10}, "bucketsize"),
    ],
)
def test_build_params_from_a_library_caller_raise_invalid_request_naming_the_field(
    kwargs: dict[str, Any], field: str
) -> None:
    refused(lambda kw: BuildParams(**kw), kwargs, field)


def test_build_params_keep_their_defaults_and_are_immutable_values() -> None:
    params = BuildParams()
    assert params.as_dict() == {
        "metric": "cosine",
        "bucket_size": 1000,
        "max_depth": 32,
        "seed": 0,
        "split": "spread",
        "projection": "pca",
        "dtype": "float16",
        "refine": 10,
        "replicate": 0.25,
        "ranking": "centroid",
    }
    assert params == BuildParams()
    assert hash(params) == hash(BuildParams())
    with pytest.raises(ValidationError):
        params.bucket_size = 5  # type: ignore[misc]


def test_an_integer_replicate_is_a_fraction() -> None:
    assert BuildParams(replicate=0).replicate == 0.0


def test_build_event_params_hold_only_the_build_knobs() -> None:
    request = parse_build({**BUILD, "bucket_size": 7, "replace": True})
    assert request.params() == BuildParams(bucket_size=7)
    assert set(request.params().as_dict()) == set(BuildParams.model_fields) - {
        "part_buckets",
        "tail_rows",
    }  # unset
    assert parse_build({**BUILD, "part_buckets": 64}).params().as_dict()["part_buckets"] == 64


def test_build_over_a_live_version_may_name_it_or_replace_whatever_is_live() -> None:
    assert parse_build(BUILD).replace is False
    assert parse_build({**BUILD, "replace": True}).replace is True
    assert parse_build({**BUILD, "expected_version": GOOD_VERSION}).expected_version == GOOD_VERSION
    refused(parse_build, {**BUILD, "replace": "yes"}, "replace")


# --------------------------------------------------------------------------- write events
def write(operation: str, **fields: Any) -> dict[str, Any]:
    return {"collection": "docs", "operation": operation, **fields}


def item(ident: object = "a", vector: object = (1.0, 2.0), **fields: Any) -> dict[str, Any]:
    return {"id": ident, "vector": list(vector) if isinstance(vector, tuple) else vector, **fields}


@pytest.mark.parametrize(
    ("event", "model"),
    [
        (write("upsert", items=[item()]), UpsertRequest),
        (write("delete", ids=["a"]), DeleteRequest),
        (write("compact"), CompactRequest),
        (write("versions"), VersionsRequest),
        (write("describe", version=GOOD_VERSION), DescribeRequest),
        (write("rollback", version=GOOD_VERSION, expected_version=GOOD_VERSION), RollbackRequest),
        (write("gc", keep_last=2, grace_seconds=0, dry_run=True), GcRequest),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else "",
)
def test_each_write_operation_parses_into_its_own_model(event: dict[str, Any], model: type) -> None:
    assert type(parse_write(event)) is model


def test_gc_gets_its_defaults() -> None:
    request = parse_write(write("gc"))
    assert (request.keep_last, request.grace_seconds, request.dry_run) == (5, 900, False)


@pytest.mark.parametrize(
    ("event", "field", "owners"),
    [
        (write("compact", ids=[1]), "ids", "'delete'"),
        (write("versions", version=GOOD_VERSION), "version", "'describe', 'rollback', 'export'"),
        (write("delete", ids=[1], items=[item()]), "items", "'upsert'"),
        (write("rollback", version=GOOD_VERSION, keep_last=2), "keep_last", "'gc'"),
        (
            write("describe", version=GOOD_VERSION, expected_version=GOOD_VERSION),
            "expected_version",
            "'rollback', 'drop'",
        ),
        (write("upsert", items=[item()], dry_run=True), "dry_run", "'gc'"),
    ],
)
def test_a_field_of_another_operation_is_refused_naming_the_operation(
    event: dict[str, Any], field: str, owners: str
) -> None:
    err = refused(parse_write, event, field)
    assert err.problem == f"does not apply to operation {event['operation']!r} (only to {owners})"


def test_a_field_of_no_operation_is_not_a_known_field() -> None:
    assert refused(parse_write, write("compact", idz=[1]), "idz").problem == "is not a known field"


@pytest.mark.parametrize("operation", ["insert", "UPSERT", "", 5, None, ["delete"]])
def test_an_unknown_operation_is_refused_listing_the_allowed_ones(operation: object) -> None:
    err = refused(parse_write, write("upsert") | {"operation": operation}, "operation")
    assert "'upsert', 'delete', 'compact', 'versions', 'describe', 'rollback', 'gc'" in err.problem


def test_a_missing_operation_is_required() -> None:
    err = refused(parse_write, {"collection": "docs", "ids": [1]}, "operation")
    assert err.problem.startswith("is required")


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (write("upsert"), "items"),
        (write("delete"), "ids"),
        (write("describe"), "version"),
        (write("rollback"), "version"),
    ],
)
def test_the_field_an_operation_needs_is_required_for_it(event: dict[str, Any], field: str) -> None:
    err = refused(parse_write, event, field)
    assert err.problem == f"is required for operation {event['operation']!r}"


def test_a_write_without_a_collection_is_refused() -> None:
    # "for operation ...": list_collections is the one write operation that names no collection
    problem = refused(parse_write, {"operation": "compact"}, "collection").problem
    assert problem == "is required for operation 'compact'"


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (write("gc", keep_last=0), "keep_last"),
        (write("gc", keep_last=1001), "keep_last"),
        (write("gc", keep_last="5"), "keep_last"),
        (write("gc", grace_seconds=-1), "grace_seconds"),
        (write("gc", grace_seconds=1.5), "grace_seconds"),
        (write("gc", dry_run=1), "dry_run"),
        (write("upsert", items=[]), "items"),
        (write("upsert", items=[item(i) for i in range(5001)]), "items"),
        (write("upsert", items="abc"), "items"),
        (write("upsert", items=[item(), [1.0, 2.0]]), "items[1]"),
        (write("upsert", items=[item(), item("b", None)]), "items[1].vector"),
        (write("upsert", items=[item(), {"id": "b"}]), "items[1].vector"),
        (write("upsert", items=[item(), item("b", colour="red")]), "items[1].colour"),
        (write("upsert", items=[item(1.5)]), "items[0].id"),
        (write("upsert", items=[item(True)]), "items[0].id"),
        (write("upsert", items=[item(2**63)]), "items[0].id"),
        (write("upsert", items=[item("")]), "items[0].id"),
        (write("upsert", items=[item("x" * 257)]), "items[0].id"),
        (write("upsert", items=[item("a"), item(2)]), "items[1].id"),
        (write("delete", ids=[]), "ids"),
        (write("delete", ids=list(range(10_001))), "ids"),
        (write("delete", ids=["a", 7]), "ids[1]"),
        (write("delete", ids=["a", "b", 1.5]), "ids[2]"),
        (write("delete", ids=[True]), "ids[0]"),
        (write("delete", ids=[None]), "ids[0]"),
        (write("delete", ids=[2**63]), "ids[0]"),
        (write("delete", ids=["a", ""]), "ids[1]"),
        (write("delete", ids="a"), "ids"),
        (write("upsert", items=[item()]) | {"collection": "../x"}, "collection"),
    ],
)
def test_bad_write_events_name_the_field(event: dict[str, Any], field: str) -> None:
    refused(parse_write, event, field)


def test_a_bad_vector_element_of_an_upserted_item_is_named_when_the_items_are_read() -> None:
    request = parse_write(write("upsert", items=[item(), item("b", [1.0, "x"])]))
    with pytest.raises(InvalidRequest) as info:
        request.to_collection()
    assert info.value.field == "items[1].vector[1]"


# --------------------------------------------------------------------------- write regressions
def test_an_upserted_item_without_an_id_is_refused_rather_than_numbered() -> None:
    """Numbering items by position (right for a build) would overwrite ids 0, 1, …"""
    err = refused(parse_write, write("upsert", items=[item(7), {"vector": [1.0, 2.0]}]), "items[1].id")
    assert err.problem == "is required"


def test_an_upsert_naming_an_id_twice_is_refused_naming_the_repeat() -> None:
    err = refused(parse_write, write("upsert", items=[item("a"), item("b"), item("a")]), "items[2].id")
    assert "items[0].id" in err.problem


def test_a_delete_naming_an_id_many_times_deletes_it_once() -> None:
    request = parse_write(write("delete", ids=[5] * 300 + [3, 5]))
    assert request.ids == [5, 3]
    assert request.id_array().tolist() == [5, 3]


@pytest.mark.parametrize(
    "ident",
    ["doc7\x00", "doc\x007", "\x00", "doc7\n", "a\tb", "\x1f", "del\x7f"],
    ids=["trailing-nul", "inner-nul", "only-nul", "newline", "tab", "unit-separator", "del"],
)
@pytest.mark.parametrize(
    ("parse", "event", "field"),
    [
        (parse_write, lambda i: write("upsert", items=[item("doc1"), item(i)]), "items[1].id"),
        (parse_write, lambda i: write("delete", ids=["doc1", i]), "ids[1]"),
        (
            parse_build,
            lambda i: {**BUILD, "source": {"items": [item("doc1"), item(i)]}},
            "source.items[1].id",
        ),
    ],
    ids=["upsert", "delete", "build-items"],
)
def test_an_id_with_a_control_character_is_refused_where_it_enters(
    parse: Any, event: Any, field: str, ident: str
) -> None:
    """numpy text arrays drop trailing NULs: "doc7" + NUL would replace (or delete) "doc7"."""
    err = refused(parse, event(ident), field)
    assert "control character" in err.problem


def test_an_upsert_mixing_unlabelled_into_labelled_items_names_the_first_unlabelled_one() -> None:
    items = [item("a", label="x"), item("b", label="y"), item("c"), item("d")]
    err = refused(parse_write, write("upsert", items=items), "items[2].label")
    assert err.problem.startswith("is missing")


def test_an_upsert_mixing_labelled_into_unlabelled_items_names_the_first_labelled_one() -> None:
    items = [item("a"), item("b", label=None), item("c", label="x")]
    err = refused(parse_write, write("upsert", items=items), "items[2].label")
    assert err.problem.startswith("is given")


def test_an_upsert_labelling_every_item_or_none_is_accepted() -> None:
    assert parse_write(write("upsert", items=[item("a", label="x"), item("b", label=3)]))
    assert parse_write(write("upsert", items=[item("a"), item("b")]))
