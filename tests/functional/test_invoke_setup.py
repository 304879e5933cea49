"""`make invoke` setup: the demo index is built once and cached; an own endpoint needs INDEX_BUCKET.

Pinned: a second ``devtools.local.prepare`` restores the saved index instead of building it
(no build, no sample loaded, no source uploaded) and the restored collections answer exactly as
the built ones; ``rebuild`` builds again; the cache key changes with the build events; and with
``AWS_ENDPOINT_URL_S3`` set but no ``INDEX_BUCKET``, ``python -m devtools.invoke`` stops with a
message naming INDEX_BUCKET (exit status 2) before starting anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devtools import invoke, local
from kdbuckets import ObjectStore, Searcher, service

INDEX = local.INDEX_BUCKET


def _empty_index_bucket(s3: Any) -> None:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=INDEX)
    keys = [{"Key": o["Key"]} for page in pages for o in page.get("Contents", [])]
    if keys:
        s3.delete_objects(Bucket=INDEX, Delete={"Objects": keys})


def _answers(sample: local.Sample) -> list[Any]:
    searcher = Searcher(ObjectStore(INDEX))
    demo = searcher.search(local.COLLECTION, sample.queries[:5], k=5, probes=4)
    tiny = service.query(json.loads((local.REPO / "events" / "query_tiny.json").read_text()), searcher)
    return [demo.version, [list(map(str, row)) for row in demo.ids], tiny["version"], tiny["results"]]


@pytest.mark.slow  # builds the sample index twice (~15 s)
def test_the_sample_index_is_built_once_then_restored_from_the_cache(
    moto_server: Any, sample: local.Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDBUCKETS_CACHE_DIR", str(tmp_path))
    loads, builds = [], []
    monkeypatch.setattr(local, "load_sample", lambda: loads.append(1) or sample)
    real_build = service.build
    monkeypatch.setattr(service, "build", lambda event, store: builds.append(1) or real_build(event, store))

    local.prepare(moto_server.url, build_index=True)
    assert (len(loads), len(builds)) == (1, 2)
    first = _answers(sample)

    _empty_index_bucket(moto_server.s3)
    moto_server.s3.delete_object(Bucket=local.SOURCE_BUCKET, Key=local.SOURCE_PREFIX + "vectors.npy")
    local.prepare(moto_server.url, build_index=True)
    assert (len(loads), len(builds)) == (1, 2)  # nothing loaded, uploaded or built
    assert _answers(sample) == first
    assert "Contents" not in moto_server.s3.list_objects_v2(Bucket=local.SOURCE_BUCKET, Prefix="demo/vectors")

    _empty_index_bucket(moto_server.s3)
    local.prepare(moto_server.url, build_index=True, rebuild=True)
    assert (len(loads), len(builds)) == (2, 4)
    assert len(list((tmp_path / "invoke").iterdir())) == 1  # the rebuilt copy replaced the old one


def test_fn_build_gets_the_source_but_no_index(
    moto_server: Any, sample: local.Sample, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KDBUCKETS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(local, "load_sample", lambda: sample)
    local.prepare(moto_server.url, build_index=False)
    assert moto_server.s3.list_objects_v2(Bucket=INDEX).get("KeyCount") == 0
    body = moto_server.s3.get_object(Bucket=local.SOURCE_BUCKET, Key=local.SOURCE_PREFIX + "ids.npy")["Body"]
    assert len(body.read()) > 0
    assert not (tmp_path / "invoke").exists()


def test_the_cache_key_follows_the_build_events_and_the_synthetic_switch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(local.FORCE_SYNTHETIC, raising=False)
    base = local.index_fingerprint()
    assert local.index_fingerprint() == base
    monkeypatch.setenv(local.FORCE_SYNTHETIC, "1")
    assert local.index_fingerprint() != base
    monkeypatch.delenv(local.FORCE_SYNTHETIC)
    events = tmp_path / "events"
    events.mkdir()
    for name in local.BUILD_EVENTS:
        (events / name).write_text(
            (local.REPO / "events" / name).read_text().replace('"seed": 0', '"seed": 1')
        )
    monkeypatch.setattr(local, "REPO", tmp_path)
    (tmp_path / "shared" / "kdbuckets").mkdir(parents=True)
    assert local.index_fingerprint() != base
    assert np.all([len(local.index_fingerprint()) == 20])


def test_invoke_with_an_endpoint_but_no_index_bucket_says_what_to_set(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    monkeypatch.delenv("INDEX_BUCKET", raising=False)
    assert invoke.main(["query", str(local.REPO / "events" / "query_tiny.json")]) == 2
    err = capsys.readouterr().err
    assert "set INDEX_BUCKET" in err
    assert "http://127.0.0.1:9" in err
