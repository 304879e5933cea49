"""kdbuckets.queue: coalescing queued writes in order, and what becomes of each message.

Coalescing is checked on its own (no storage); ``apply_batch`` against an in-process moto S3,
with message bodies as the handler passes them (JSON text) or already decoded.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import numpy as np
import pytest

from kdbuckets import ObjectStore, Searcher, list_versions, queue, storage
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.errors import InvalidRequest
from kdbuckets.queue import Message, Write

DIM = 4
RNG = np.random.default_rng(5)
BASE = RNG.normal(size=(40, DIM)).astype(np.float32)


def upserts(ids: list[Any], vectors: np.ndarray, labels: list[str] | None = None, meta: Any = None) -> Write:
    data = make_collection(
        vectors, np.array(ids), None if labels is None else np.array(labels), metric="l2", metadata=meta
    )
    return Write(Message("m", {}), data, None, "items")


def deletes(ids: list[Any]) -> Write:
    return Write(Message("m", {}), None, np.array(ids), "ids")


# --------------------------------------------------------------------------- coalesce
def test_coalesce_keeps_the_last_operation_on_each_id() -> None:
    v = RNG.normal(size=(4, DIM)).astype(np.float32)
    up, gone = queue.coalesce(
        [
            upserts(["a", "b"], v[:2]),  # a: upsert then delete -> deleted
            deletes(["a", "c"]),  # c: delete then upsert -> upserted
            upserts(["c", "b"], v[2:]),  # b: upserted twice -> the last value
        ]
    )

    assert up is not None
    assert gone is not None
    assert gone.tolist() == ["a"]
    got = dict(zip(up.ids.tolist(), up.vectors, strict=True))
    assert sorted(got) == ["b", "c"]
    np.testing.assert_array_equal(got["c"], v[2])
    np.testing.assert_array_equal(got["b"], v[3])


def test_coalesce_merges_label_vocabularies_and_carries_metadata() -> None:
    v = RNG.normal(size=(3, DIM)).astype(np.float32)
    up, gone = queue.coalesce(
        [
            upserts(["a", "b"], v[:2], ["sports", "food"], [{"y": 1}, None]),
            upserts(["c"], v[2:], ["music"]),
        ]
    )

    assert gone is None
    assert up is not None
    labels = [up.label_names[c] for c in up.label_codes] if up.label_names else []
    assert dict(zip(up.ids.tolist(), labels, strict=True)) == {"a": "sports", "b": "food", "c": "music"}
    assert up.metadata == [{"y": 1}, None, None]


def test_coalesce_of_deletes_only_has_no_upserts() -> None:
    up, gone = queue.coalesce([deletes([3, 1]), deletes([1, 2])])

    assert up is None
    assert gone is not None
    assert sorted(gone.tolist()) == [1, 2, 3]
    assert gone.dtype == np.int64


def test_coalesce_refuses_integer_and_string_ids_together() -> None:
    with pytest.raises(InvalidRequest, match="mix integers and strings"):
        queue.coalesce([deletes([1]), deletes(["a"])])


# --------------------------------------------------------------------------- apply_batch
@pytest.fixture
def store(s3_store: ObjectStore) -> ObjectStore:
    """A labelled collection 'c' of 40 string ids, float32, cosine."""
    ids = np.array([f"c-{i}" for i in range(len(BASE))])
    labels = np.array(["x", "y"] * (len(BASE) // 2))
    data = make_collection(BASE, ids, labels, metric="cosine")
    build_index(s3_store, "c", data, BuildParams(bucket_size=10, dtype="float32", refine=0, replicate=0.0))
    return s3_store


def body(**fields: Any) -> dict[str, Any]:
    return {"collection": "c", "operation": "upsert", **fields}


def one(ident: str, vector: Any, label: str | None = "x") -> dict[str, Any]:
    return {"id": ident, "vector": [float(x) for x in vector], **({"label": label} if label else {})}


def reasons(report: queue.BatchReport) -> dict[str, str | None]:
    return {o.message_id: o.reason for o in report.with_status("dead_letter")}


def test_apply_batch_commits_valid_messages_once_and_dead_letters_each_bad_one_with_its_reason(
    store: ObjectStore,
) -> None:
    new = RNG.normal(size=(3, DIM)).astype(np.float32)
    messages = [
        Message("ok-1", json.dumps(body(items=[one("n-1", new[0])])), "c"),
        Message("not-json", "{'collection': 'c'", "c"),
        Message("compact", json.dumps({"collection": "c", "operation": "compact"}), "c"),
        Message("group", json.dumps(body(items=[one("n-2", new[1])])), "other"),
        Message("int-ids", json.dumps({"collection": "c", "operation": "delete", "ids": [4]}), "c"),
        Message("no-label", json.dumps(body(items=[one("n-3", new[2], label=None)])), "c"),
        Message("ok-2", body(items=[one("n-4", new[2])]), "c"),
        Message("unknown", json.dumps({**body(items=[one("z", new[0])]), "collection": "nope"}), "nope"),
    ]
    before = len(list_versions(store, "c"))

    report = queue.apply_batch(store, messages)

    statuses = {o.message_id: o.status for o in report.outcomes}
    assert statuses == {
        "ok-1": "committed",
        "ok-2": "committed",
        **{m.message_id: "dead_letter" for m in messages if not m.message_id.startswith("ok")},
    }
    assert reasons(report) == {
        "not-json": "body is not valid JSON",
        "compact": "operation 'compact' is not taken from the write queue, only 'upsert' and 'delete' "
        "(invoke the write function directly)",
        "group": "MessageGroupId is 'other'; a write's message group must be its collection 'c' "
        "(writes are ordered per group)",
        "int-ids": "ids must be strings like the ids of 'c'",
        "no-label": "items[0].label is required: collection 'c' is labelled",
        "unknown": "collection 'nope' does not exist (no published version)",
    }
    (commit,) = report.commits
    assert commit.message_ids == ("ok-1", "ok-2")
    assert commit.upserted == 2
    assert len(list_versions(store, "c")) == before + 1
    assert {o.version for o in report.outcomes if o.status == "committed"} == {commit.version}


def test_an_items_uri_item_without_an_id_is_refused_not_numbered(store: ObjectStore) -> None:
    lines = json.dumps({"id": "r-0", "vector": [1, 0, 0, 0], "label": "x"}) + "\n"
    lines += json.dumps({"vector": [0, 1, 0, 0], "label": "x"}) + "\n"
    store.client.put_object(Bucket=store.bucket, Key="payloads/a.jsonl", Body=lines.encode())
    uri = f"s3://{store.bucket}/payloads/a.jsonl"

    report = queue.apply_batch(store, [Message("ref", body(items_uri=uri), "c")])

    assert reasons(report) == {"ref": "items_uri[1].id is missing; an upsert names the id of every item"}
    assert report.commits == []


def test_an_items_uri_message_refuses_fields_of_an_inline_upsert(store: ObjectStore) -> None:
    message = Message("ref", body(items_uri="s3://b/k.jsonl", items=[]), "c")

    (outcome,) = queue.apply_batch(store, [message]).outcomes

    assert outcome.status == "dead_letter"
    assert outcome.reason is not None
    assert outcome.reason.startswith("items ")


def test_a_refusal_only_the_writer_sees_is_isolated_by_halving_in_order(store: ObjectStore) -> None:
    """The collection is rebuilt with 8 dimensions between the check and the commit."""
    wider = RNG.normal(size=(20, 8)).astype(np.float32)
    rebuild = make_collection(wider, np.array([f"w-{i}" for i in range(20)]), None, metric="cosine")
    other = ObjectStore(store.bucket, client=boto3.client("s3", region_name="us-east-1"))
    head_gets = []

    def rebuild_before_the_writer_reads_head(request: Any, **_: Any) -> None:
        if request.method == "GET" and request.url.endswith("/c/HEAD"):
            head_gets.append(request.url)
            if len(head_gets) == 2:  # the first was the check's
                build_index(other, "c", rebuild, BuildParams(bucket_size=10), replace=True)

    storage.s3_client(storage.DEFAULT_CONCURRENCY).meta.events.register(
        "before-send.s3", rebuild_before_the_writer_reads_head
    )
    new = RNG.normal(size=(3, DIM)).astype(np.float32)
    messages = [Message(f"m{i}", body(items=[one(f"n-{i}", new[i])]), "c") for i in range(3)]
    versions = len(list_versions(other, "c"))

    report = queue.apply_batch(store, messages)

    assert [o.status for o in report.outcomes] == ["dead_letter"] * 3
    assert set(reasons(report).values()) == {"items[0].vector has 4 dimensions; collection 'c' has 8"}
    assert report.commits == []
    assert len(list_versions(other, "c")) == versions + 1  # the rebuild's, and none of ours
    assert Searcher(other).search("c", wider[:1], k=1, probes=4096).ids[0] == ["w-0"]


def test_messages_without_a_group_are_grouped_by_the_collection_they_name(store: ObjectStore) -> None:
    new = RNG.normal(size=(2, DIM)).astype(np.float32)
    messages = [
        Message("a", body(items=[one("n-1", new[0])])),
        Message("b", {"collection": "c", "operation": "delete", "ids": ["n-1", "c-0"]}),
        Message("c", body(items=[one("n-2", new[1])])),
    ]

    report = queue.apply_batch(store, messages)

    (commit,) = report.commits
    assert commit.message_ids == ("a", "b", "c")
    assert commit.upserted == 1
    assert commit.deleted == 1
