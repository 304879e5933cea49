"""The distributed build's state machine on moto, its Lambda tasks run by our real handler.

``statemachine/build.asl.json`` executes on moto's Step Functions interpreter (Distributed
Maps, ItemReader over the source prefix, Retry/Catch) through :mod:`devtools.sfn_local`, which
hands each ``lambda:invoke`` to ``functions/distbuild/app.py`` in-process. A sharded build
through it answers exactly as the single-function build of the same data when both read every
bucket; a bad shard fails the execution with HEAD untouched, and the rerun after the fix
reuses what the failed one wrote.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import boto3
import numpy as np
import pytest

from devtools import sfn_local
from kdbuckets import catalog
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.searcher import Searcher
from kdbuckets.sources import StoreReader, read_source
from kdbuckets.storage import ObjectStore
from tests.conftest import INDEX_BUCKET, SOURCE_BUCKET

SHARDS, ROWS, DIM = 3, 700, 16
PARAMS = {"metric": "cosine", "bucket_size": 60, "seed": 5, "dtype": "float16"}


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    centres = rng.normal(size=(12, DIM))
    which = rng.integers(0, len(centres), SHARDS * ROWS)
    vectors = (centres[which] + 0.4 * rng.normal(size=(len(which), DIM))).astype(np.float32)
    ids = np.array([f"doc-{i:05d}" for i in range(len(which))])
    labels = np.array([f"topic-{c % 5}" for c in which])
    return vectors, ids, labels


def upload(s3: Any, vectors: np.ndarray, ids: np.ndarray, labels: np.ndarray) -> None:
    for shard in range(SHARDS):
        rows = slice(shard * ROWS, (shard + 1) * ROWS)
        name = f"part-{shard:03d}.npy"
        s3.put_object(Bucket=SOURCE_BUCKET, Key=f"big/vectors/{name}", Body=npy(vectors[rows]))
        s3.put_object(Bucket=SOURCE_BUCKET, Key=f"big/ids/{name}", Body=npy(ids[rows]))
        s3.put_object(Bucket=SOURCE_BUCKET, Key=f"big/labels/{name}", Body=npy(labels[rows]))


SOURCE = {
    "vectors": f"s3://{SOURCE_BUCKET}/big/vectors/",
    "ids": f"s3://{SOURCE_BUCKET}/big/ids/",
    "labels": f"s3://{SOURCE_BUCKET}/big/labels/",
}


@pytest.fixture
def machine(aws_env: None) -> Iterator[tuple[sfn_local.LocalStepFunctions, Any]]:
    with sfn_local.local_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        for bucket in (INDEX_BUCKET, SOURCE_BUCKET):
            s3.create_bucket(Bucket=bucket)
        yield sfn_local.LocalStepFunctions(concurrency=2), s3


def test_definition_is_the_template_one_and_uses_only_its_function(
    machine: tuple[sfn_local.LocalStepFunctions, Any],
) -> None:
    local, _ = machine
    described = local.sfn.describe_state_machine(stateMachineArn=local.state_machine_arn)
    doc = json.loads(described["definition"])
    assert "ItemBatcher" not in described["definition"]
    maps = [s for s in doc["States"].values() if s["Type"] == "Map"]
    assert [m["ItemProcessor"]["ProcessorConfig"]["Mode"] for m in maps] == ["DISTRIBUTED"] * 2
    assert maps[0]["ItemReader"]["Resource"] == "arn:aws:states:::s3:listObjectsV2"

    def tasks(states: dict[str, Any]) -> Iterator[dict[str, Any]]:
        for state in states.values():
            if state["Type"] == "Task":
                yield state
            if state["Type"] == "Map":
                yield from tasks(state["ItemProcessor"]["States"])

    found = list(tasks(doc["States"]))
    assert len(found) == 6
    assert {t["Parameters"]["FunctionName"] for t in found} == {local.function_arn}
    assert all(t["Retry"][0]["ErrorEquals"][0] == "StorageError" for t in found)


def test_sharded_build_answers_exactly_as_the_single_function_build(
    machine: tuple[sfn_local.LocalStepFunctions, Any],
) -> None:
    local, s3 = machine
    vectors, ids, labels = dataset()
    upload(s3, vectors, ids, labels)
    result = local.run({"collection": "dist", "source": SOURCE, "partitions": 3, **PARAMS})
    assert result.status == "SUCCEEDED", (result.error, result.cause)
    assert result.states == ["Plan", "RouteShards", "Collect", "BuildPartitions", "Commit"]
    assert sum(t["step"] == "route" for t in result.tasks) == SHARDS
    assert sum(t["step"] == "partition" for t in result.tasks) == result.output["partitions"] > 1

    store = ObjectStore(INDEX_BUCKET)
    params = BuildParams(**PARAMS)
    data = read_source(SOURCE, metric=params.metric, dtype=params.dtype, reader=StoreReader(store))
    build_index(store, "single", data, params, in_place=True)
    dist = catalog.read_live(store, "dist").manifest
    single = catalog.read_live(store, "single").manifest
    assert (dist.count, dist.dim, dist.label_names, dist.id_kind) == (
        single.count,
        single.dim,
        single.label_names,
        "str",
    )
    # each partition spills its own `replicate` share of rows into a second bucket
    assert abs(int(dist.buckets.rows.sum()) - round((1 + params.replicate) * dist.count)) <= dist.n_buckets
    assert dist.extra["calibration"]["sample"] == single.extra["calibration"]["sample"]

    queries = np.random.default_rng(3).normal(size=(40, DIM)).astype(np.float32)
    searcher = Searcher(store)
    a = searcher.search("dist", queries, k=10, probes=dist.n_buckets)
    b = searcher.search("single", queries, k=10, probes=single.n_buckets)
    assert a.ids == b.ids
    assert np.array_equal(a.distances, b.distances)
    assert a.labels() == b.labels()


def test_bad_shard_fails_the_execution_leaves_head_and_the_fixed_rerun_reuses_objects(
    machine: tuple[sfn_local.LocalStepFunctions, Any],
) -> None:
    local, s3 = machine
    vectors, ids, labels = dataset()
    upload(s3, vectors, ids, labels)
    first = local.run({"collection": "dist", "source": SOURCE, "partitions": 3, **PARAMS})
    assert first.status == "SUCCEEDED", (first.error, first.cause)
    store = ObjectStore(INDEX_BUCKET)
    head = catalog.read_head(store, "dist")
    assert head is not None

    bad = vectors[ROWS : 2 * ROWS].copy()
    bad[17, 3] = np.nan
    s3.put_object(Bucket=SOURCE_BUCKET, Key="big/vectors/part-001.npy", Body=npy(bad))
    event = {
        "collection": "dist",
        "source": SOURCE,
        "partitions": 3,
        "expected_version": head.head.version,
        **PARAMS,
    }
    failed = local.run(event)
    assert failed.status == "FAILED"
    assert failed.states[-2:] == ["Report", "BuildFailed"]
    assert failed.error == "SourceError"
    assert f"s3://{SOURCE_BUCKET}/big/vectors/part-001.npy" in failed.cause
    assert "source.vectors[17]" in failed.cause
    assert "NaN" in failed.cause
    assert "HEAD was not changed" in failed.cause
    assert catalog.read_head(store, "dist") == head  # same version, same ETag

    s3.put_object(Bucket=SOURCE_BUCKET, Key="big/vectors/part-001.npy", Body=npy(vectors[ROWS : 2 * ROWS]))
    rerun = local.run(event)
    assert rerun.status == "SUCCEEDED", (rerun.error, rerun.cause)
    routes = {t["item"]: t["result"] for t in rerun.tasks if t["step"] == "route"}
    assert [routes[f"big/vectors/part-{i:03d}.npy"]["reused"] for i in range(SHARDS)] == [True, False, True]
    assert rerun.output["version"] != head.head.version
    plans = [t["result"] for run in (failed, rerun) for t in run.tasks if t["step"] == "plan"]
    assert plans[0]["ref"] == plans[1]["ref"]
    assert plans[0]["version"] == plans[1]["version"]
    live = catalog.read_live(store, "dist").manifest
    assert live.version == rerun.output["version"]
    assert live.parent == head.head.version
