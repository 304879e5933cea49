"""`python -m kdbuckets` runs the committed events through the same service as the handlers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kdbuckets.__main__ import main
from kdbuckets.storage import ObjectStore

EVENTS = Path(__file__).resolve().parents[2] / "events"


def test_build_then_query_prints_json_responses(
    s3_store: ObjectStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", str(EVENTS / "build_inline.json"), "--bucket", s3_store.bucket]) == 0
    built = json.loads(capsys.readouterr().out)
    assert main(["query", str(EVENTS / "query_tiny.json"), "--bucket", s3_store.bucket]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["version"] == built["version"]
    assert found["results"][0][0]["label"] == "sports"


def test_an_invalid_event_exits_1_with_the_error_named(
    s3_store: ObjectStore, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["query", str(EVENTS / "bad_query_unknown_mode.json"), "--bucket", s3_store.bucket]) == 1
    assert capsys.readouterr().err.startswith("InvalidRequest: mode")


def test_a_write_event_with_an_unknown_operation_exits_1_listing_the_operations(
    s3_store: ObjectStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"collection": "tiny", "operation": "purge"}))

    assert main(["write", str(event), "--bucket", s3_store.bucket]) == 1

    err = capsys.readouterr().err
    assert err.startswith("InvalidRequest: operation must be one of 'upsert', 'delete'")
    assert '"purge"' in err


def test_list_collections_and_drop_from_the_committed_events(
    s3_store: ObjectStore, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bucket = ["--bucket", s3_store.bucket]
    assert main(["build", str(EVENTS / "build_inline.json"), *bucket]) == 0
    version = json.loads(capsys.readouterr().out)["version"]
    assert main(["write", str(EVENTS / "write_list_collections.json"), *bucket]) == 0
    listed = json.loads(capsys.readouterr().out)["collections"]
    assert listed == [{"collection": "tiny", "version": version, "count": 8}]
    # The committed drop names a version that is not live: refused, naming the live one.
    assert main(["write", str(EVENTS / "write_drop.json"), *bucket]) == 1
    assert f"is at version {version}" in capsys.readouterr().err
    event = tmp_path / "drop.json"
    event.write_text(
        json.dumps({**json.loads((EVENTS / "write_drop.json").read_text()), "expected_version": version})
    )
    assert main(["write", str(event), *bucket]) == 0
    assert json.loads(capsys.readouterr().out)["operation"] == "drop"
    assert main(["query", str(EVENTS / "query_tiny.json"), *bucket]) == 1
    assert capsys.readouterr().err.startswith("CollectionNotFound: ")
