"""Fixtures for the pure unit tests: fake AWS credentials and an in-process moto S3.

Nothing here opens a socket; moto's ``mock_aws`` intercepts botocore in-process. The shared
S3 client in :mod:`kdbuckets.storage` is cached per process, so every fixture forgets it
before and after its moto instance (a client bound to a stopped mock must not leak into the
next test).
"""

from __future__ import annotations

from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from kdbuckets import storage
from kdbuckets.storage import ObjectStore

INDEX_BUCKET = "kdbuckets-unit-index"

_FAKE_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}
_CLEARED_ENV = ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE")


def _fake_aws_env(mp: pytest.MonkeyPatch) -> None:
    """Point boto3 at fake credentials so that nothing can reach a real account."""
    for name in _CLEARED_ENV:
        mp.delenv(name, raising=False)
    for name, value in _FAKE_ENV.items():
        mp.setenv(name, value)


def _moto_store(mp: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    _fake_aws_env(mp)
    with mock_aws():
        storage.reset_clients()
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=INDEX_BUCKET)
        try:
            yield ObjectStore(INDEX_BUCKET)
        finally:
            storage.reset_clients()


@pytest.fixture
def s3_store(monkeypatch: pytest.MonkeyPatch) -> Iterator[ObjectStore]:
    """An empty index bucket in a fresh in-process moto S3, for one test."""
    yield from _moto_store(monkeypatch)


@pytest.fixture(scope="module")
def module_s3_store() -> Iterator[ObjectStore]:
    """Like :func:`s3_store` but shared by a module, so that indexes are built once."""
    with pytest.MonkeyPatch.context() as mp:
        yield from _moto_store(mp)
