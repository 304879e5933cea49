"""The storage layer on moto: conditional writes, conditional reads, listing, deletion, errors.

Every error :class:`ObjectStore` raises is a :class:`StorageError` subclass that names its
object (``bucket``, ``key``, ``uri``), so callers tell "missing object", "missing bucket",
"access denied", "lost a compare-and-swap" and "S3 is failing" apart by type, never by
parsing a message. The index bucket itself missing is a :class:`ConfigurationError`, not a
missing collection. Error responses moto cannot produce (403, 500, 503) come from botocore's
``Stubber`` (which also bypasses botocore's retries, so each stubbed error is seen once).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from urllib3.exceptions import ProtocolError

from kdbuckets import storage
from kdbuckets.errors import ConfigurationError, KdBucketsError, StorageError
from kdbuckets.storage import AccessDenied, BucketNotFound, NotFound, ObjectStore, PreconditionFailed

INDEX_BUCKET = "kdbuckets-unit-index"  # what the s3_store fixture creates
MISSING_BUCKET = "kdbuckets-unit-never-created"


def calls(store: ObjectStore, operation: str) -> list[dict[str, Any]]:
    """Parameters of every ``operation`` request the store's client sends from now on."""
    seen: list[dict[str, Any]] = []
    store.client.meta.events.register(
        f"provide-client-params.s3.{operation}", lambda params, **_: seen.append(dict(params))
    )
    return seen


# --------------------------------------------------------------------------- conditional writes
def test_put_if_absent_writes_once_then_loses_naming_the_object(s3_store: ObjectStore) -> None:
    store = ObjectStore(INDEX_BUCKET, "p/")
    store.put("a/HEAD", b"first", if_absent=True)
    with pytest.raises(PreconditionFailed) as info:
        store.put("a/HEAD", b"second", if_absent=True)
    assert (info.value.bucket, info.value.key) == (INDEX_BUCKET, "p/a/HEAD")
    assert info.value.uri == f"s3://{INDEX_BUCKET}/p/a/HEAD"
    assert store.get("a/HEAD")[0] == b"first"


def test_put_if_match_succeeds_on_the_current_etag_and_fails_on_a_stale_one(s3_store: ObjectStore) -> None:
    old = s3_store.put("HEAD", b"v1")
    new = s3_store.put("HEAD", b"v2", if_match=old)
    assert new != old
    with pytest.raises(PreconditionFailed) as info:
        s3_store.put("HEAD", b"v3", if_match=old)
    assert info.value.key == "HEAD"
    assert s3_store.get("HEAD") == (b"v2", new)


def test_get_of_a_missing_key_is_not_found_naming_it(s3_store: ObjectStore) -> None:
    store = ObjectStore(INDEX_BUCKET, "idx/")
    with pytest.raises(NotFound) as info:
        store.get("c/HEAD")
    assert type(info.value) is NotFound
    assert info.value.uri == f"s3://{INDEX_BUCKET}/idx/c/HEAD"


# --------------------------------------------------------------------------- conditional reads
def test_get_if_changed_is_none_while_the_etag_holds_and_the_new_body_after(s3_store: ObjectStore) -> None:
    etag = s3_store.put("HEAD", b"v1")
    assert s3_store.get_if_changed("HEAD", etag) is None  # HTTP 304
    new = s3_store.put("HEAD", b"v2")
    assert s3_store.get_if_changed("HEAD", etag) == (b"v2", new)


def test_get_if_changed_of_a_missing_key_is_not_found(s3_store: ObjectStore) -> None:
    with pytest.raises(NotFound) as info:
        s3_store.get_if_changed("gone", '"0123"')
    assert info.value.key == "gone"


# --------------------------------------------------------------------------- immutable objects
def test_put_immutable_writes_new_objects_and_touches_existing_ones(s3_store: ObjectStore) -> None:
    copies = calls(s3_store, "CopyObject")
    assert s3_store.put_immutable("c/buckets/abc", b"bytes") is True
    assert copies == []
    before = s3_store.list_objects("c/buckets/")[0].last_modified
    assert s3_store.put_immutable("c/buckets/abc", b"bytes") is False
    # Refreshed by a copy onto itself (garbage collection's grace period restarts), not rewritten.
    assert [(c["Key"], c["CopySource"]) for c in copies] == [
        ("c/buckets/abc", {"Bucket": INDEX_BUCKET, "Key": "c/buckets/abc"})
    ]
    assert s3_store.get("c/buckets/abc")[0] == b"bytes"
    assert s3_store.list_objects("c/buckets/")[0].last_modified >= before


def test_put_many_reports_per_item_whether_it_was_new(s3_store: ObjectStore) -> None:
    s3_store.put_immutable("k1", b"one")
    assert s3_store.put_many([("k1", b"one"), ("k2", b"two")]) == [False, True]


def test_get_many_keeps_the_order_and_fails_on_a_missing_key(s3_store: ObjectStore) -> None:
    for i in range(5):
        s3_store.put(f"k{i}", f"body-{i}".encode())
    assert s3_store.get_many([f"k{i}" for i in (3, 0, 4, 1)]) == [b"body-3", b"body-0", b"body-4", b"body-1"]
    with pytest.raises(NotFound) as info:
        s3_store.get_many(["k0", "nope", "k1"])
    assert info.value.key == "nope"


# --------------------------------------------------------------------------- listing and deletion
def test_list_objects_follows_pages_and_keeps_to_the_prefix(s3_store: ObjectStore) -> None:
    store = ObjectStore(INDEX_BUCKET, "p/")
    for i in range(7):
        store.put(f"c/manifests/v{i}", b"m" * i)
    store.put("c/HEAD", b"h")
    store.put("cc/manifests/v0", b"other collection")
    s3_store.put("c/manifests/outside-the-prefix", b"x")
    requests = calls(store, "ListObjectsV2")
    store.client.meta.events.register(  # three keys a page: seven keys need three pages
        "provide-client-params.s3.ListObjectsV2", lambda params, **_: params.__setitem__("MaxKeys", 3)
    )

    listed = store.list_objects("c/manifests/")

    assert len(requests) == 3
    assert all(r["Prefix"] == "p/c/manifests/" for r in requests)
    assert [o.key for o in listed] == [f"c/manifests/v{i}" for i in range(7)]
    assert [o.size for o in listed] == list(range(7))
    assert all(o.etag.startswith('"') for o in listed)


def test_delete_if_match_deletes_only_the_version_read(s3_store: ObjectStore) -> None:
    old = s3_store.put("c/HEAD", b"v1")
    new = s3_store.put("c/HEAD", b"v2")
    with pytest.raises(PreconditionFailed):
        s3_store.delete_if_match("c/HEAD", old)
    assert s3_store.get("c/HEAD")[0] == b"v2"
    assert s3_store.delete_if_match("c/HEAD", new) is True
    assert s3_store.delete_if_match("c/HEAD", new) is False  # already gone: not an error


def test_list_prefixes_names_the_folders_under_the_store_prefix(s3_store: ObjectStore) -> None:
    for key in ("a/HEAD", "a/buckets/x", "b/HEAD", "loose-object"):
        s3_store.put(key, b"x")
    assert sorted(s3_store.list_prefixes(page_size=1)) == ["a", "b"]


def test_list_objects_of_an_empty_prefix_is_empty(s3_store: ObjectStore) -> None:
    assert s3_store.list_objects("nothing/") == []


def test_delete_many_sends_batches_of_a_thousand(s3_store: ObjectStore) -> None:
    store = ObjectStore(INDEX_BUCKET, "p/")
    keys = [f"c/buckets/{i:05d}" for i in range(2001)]
    present = [keys[0], keys[999], keys[1000], keys[2000]]
    for key in present:
        store.put(key, b"x")
    store.put("c/HEAD", b"stays")
    requests = calls(store, "DeleteObjects")

    assert store.delete_many(keys) == 2001

    assert [len(r["Delete"]["Objects"]) for r in requests] == [1000, 1000, 1]
    assert requests[1]["Delete"]["Objects"][0] == {"Key": "p/c/buckets/01000"}
    assert [o.key for o in store.list_objects("c/")] == ["c/HEAD"]
    assert store.delete_many([]) == 0


def test_delete_many_reports_the_first_key_s3_refused() -> None:
    store, stub = stubbed()
    stub.add_response(
        "delete_objects",
        {"Errors": [{"Key": "p/c/b2", "Code": "AccessDenied", "Message": "no"}]},
    )
    with stub, pytest.raises(StorageError) as info:
        store.delete_many(["c/b1", "c/b2"])
    assert info.value.uri == "s3://kdbuckets-stubbed/p/c/b2"
    assert "AccessDenied" in str(info.value)


# --------------------------------------------------------------------------- error translation
def stubbed() -> tuple[ObjectStore, Stubber]:
    """A store on a stubbed client: responses are queued, nothing is sent."""
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    return ObjectStore("kdbuckets-stubbed", "p/", client=client), Stubber(client)


ERRORS = [
    (404, "NoSuchKey", NotFound),
    (404, "NoSuchBucket", BucketNotFound),
    (403, "AccessDenied", AccessDenied),
    (412, "PreconditionFailed", PreconditionFailed),
    (409, "ConditionalRequestConflict", PreconditionFailed),
    (500, "InternalError", StorageError),
    (503, "SlowDown", StorageError),
]


@pytest.mark.parametrize(("status", "code", "expected"), ERRORS, ids=[e[1] for e in ERRORS])
def test_errors_reading_another_bucket_map_onto_types_naming_the_object(
    status: int, code: str, expected: type[StorageError]
) -> None:
    store, stub = stubbed()
    stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
    with stub, pytest.raises(StorageError) as info:
        store.get_from("kdbuckets-src", "data/v.npy")
    assert type(info.value) is expected
    assert (info.value.bucket, info.value.key) == ("kdbuckets-src", "data/v.npy")
    assert info.value.uri == "s3://kdbuckets-src/data/v.npy"
    assert info.value.uri in str(info.value)


def test_bucket_not_found_is_a_not_found_and_access_denied_is_not() -> None:
    assert issubclass(BucketNotFound, NotFound)
    assert not issubclass(AccessDenied, NotFound)
    assert not issubclass(ConfigurationError, StorageError)  # not "the object is missing"
    assert issubclass(ConfigurationError, KdBucketsError)


OWN_OPERATIONS: dict[str, tuple[str, Callable[[ObjectStore], Any]]] = {
    "get": ("get_object", lambda s: s.get("c/HEAD")),
    "get_if_changed": ("get_object", lambda s: s.get_if_changed("c/HEAD", '"e"')),
    "put": ("put_object", lambda s: s.put("c/HEAD", b"x", if_match='"e"')),
    "touch": ("copy_object", lambda s: s.touch("c/buckets/b")),
    "list_objects": ("list_objects_v2", lambda s: s.list_objects("c/")),
    "delete_many": ("delete_objects", lambda s: s.delete_many(["c/buckets/b"])),
}


@pytest.mark.parametrize("name", list(OWN_OPERATIONS))
@pytest.mark.parametrize(("status", "code", "expected"), ERRORS, ids=[e[1] for e in ERRORS])
def test_errors_on_the_index_bucket_name_the_full_key(
    name: str, status: int, code: str, expected: type[StorageError]
) -> None:
    operation, call = OWN_OPERATIONS[name]
    store, stub = stubbed()
    stub.add_client_error(operation, service_error_code=code, http_status_code=status)
    with stub, pytest.raises(KdBucketsError) as info:
        call(store)
    if code == "NoSuchBucket":
        assert type(info.value) is ConfigurationError
        assert str(info.value) == "index bucket 'kdbuckets-stubbed' does not exist; check INDEX_BUCKET"
        assert info.value.bucket == "kdbuckets-stubbed"
        return
    assert type(info.value) is expected
    assert isinstance(info.value, StorageError)
    assert info.value.bucket == "kdbuckets-stubbed"
    assert info.value.key is not None
    assert info.value.key.startswith("p/c/")
    assert info.value.uri is not None
    assert info.value.uri in str(info.value)


def test_anything_but_a_botocore_error_is_not_reworded() -> None:
    class Broken:
        def get_object(self, **kwargs: Any) -> Any:
            raise TypeError("a bug")

    with pytest.raises(TypeError):
        ObjectStore("b", client=Broken()).get("k")


def test_a_body_cut_off_on_every_attempt_is_a_storage_error_naming_the_object(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class CutOff(io.BytesIO):
        def read(self, amt: int | None = None) -> bytes:  # type: ignore[override]
            raise ProtocolError("Connection broken")

    class Client:
        attempts = 0

        def get_object(self, **kwargs: Any) -> dict[str, Any]:
            Client.attempts += 1
            return {"Body": CutOff(b"x"), "ETag": '"e"'}

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    with pytest.raises(StorageError) as info:
        ObjectStore("idx", "p/", client=Client()).get("c/buckets/b")
    assert type(info.value) is StorageError
    assert info.value.uri == "s3://idx/p/c/buckets/b"
    assert Client.attempts == storage.BODY_ATTEMPTS


# --------------------------------------------------------------------------- the index bucket itself missing
@pytest.fixture
def missing(s3_store: ObjectStore) -> ObjectStore:
    """A store (on moto) whose index bucket was never created."""
    return ObjectStore(MISSING_BUCKET, "idx/")


OWN_ON_MOTO: dict[str, Callable[[ObjectStore], Any]] = {
    "get": lambda s: s.get("c/HEAD"),
    "get_if_changed": lambda s: s.get_if_changed("c/HEAD", '"e"'),
    "get_many": lambda s: s.get_many(["c/buckets/a", "c/buckets/b"]),
    "put": lambda s: s.put("c/HEAD", b"x"),
    "put_if_absent": lambda s: s.put("c/HEAD", b"x", if_absent=True),
    "put_immutable": lambda s: s.put_immutable("c/buckets/a", b"x"),
    "put_many": lambda s: s.put_many([("c/buckets/a", b"x"), ("c/buckets/b", b"y")]),
    "touch": lambda s: s.touch("c/buckets/a"),
    "list_objects": lambda s: s.list_objects("c/"),
    "delete_many": lambda s: s.delete_many(["c/buckets/a"]),
}


@pytest.mark.parametrize("name", list(OWN_ON_MOTO))
def test_a_missing_index_bucket_is_a_configuration_error_not_a_missing_object(
    missing: ObjectStore, name: str
) -> None:
    with pytest.raises(ConfigurationError, match=f"^index bucket '{MISSING_BUCKET}' does not exist") as info:
        OWN_ON_MOTO[name](missing)
    assert not isinstance(info.value, NotFound)
    assert isinstance(info.value.__cause__, BucketNotFound)  # the S3 error stays in the chain


def test_reading_from_a_missing_other_bucket_is_bucket_not_found(missing: ObjectStore) -> None:
    store = ObjectStore(INDEX_BUCKET)
    with pytest.raises(BucketNotFound) as info:
        store.get_from(MISSING_BUCKET, "data/v.npy")
    assert info.value.uri == f"s3://{MISSING_BUCKET}/data/v.npy"


def test_a_missing_key_in_an_existing_other_bucket_is_plain_not_found(s3_store: ObjectStore) -> None:
    with pytest.raises(NotFound) as info:
        s3_store.get_from(INDEX_BUCKET, "nope")
    assert type(info.value) is NotFound


def test_client_errors_without_a_response_status_are_generic_storage_errors() -> None:
    exc = ClientError({"Error": {"Code": "Weird", "Message": "?"}}, "GetObject")
    err = storage._translate(exc, "b", "k")
    assert type(err) is StorageError
    assert err.uri == "s3://b/k"
