"""Object keys, and which collection names may become part of one."""

from __future__ import annotations

import pytest

from kdbuckets import layout
from kdbuckets.errors import InvalidRequest


@pytest.mark.parametrize("name", ["a", "docs", "Docs-2024_v1.2", "0", "x" * 128, "a.b"])
def test_safe_collection_names_are_returned_unchanged(name: str) -> None:
    assert layout.check_collection(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../x",
        "a/../b",
        "a..b",
        "a/b",
        "/abs",
        "a\\b",
        ".hidden",
        "-dash",
        "_under",
        "x" * 129,
        "x" * 200,
        "a\x00b",
        "a\tb",
        "a b",
        "ñandú",
        "docs?x=1",
        "a%2Fb",
    ],
)
def test_unsafe_collection_names_are_refused_naming_the_field(name: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        layout.check_collection(name)
    assert info.value.field == "collection"
    assert str(info.value).startswith("collection ")


@pytest.mark.parametrize("name", [None, 5, b"docs", ["docs"]])
def test_non_string_collection_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidRequest, match="must be a string"):
        layout.check_collection(name)


def test_the_error_uses_the_callers_field_name() -> None:
    with pytest.raises(InvalidRequest) as info:
        layout.check_collection("a/b", field="source.collection")
    assert info.value.field == "source.collection"


def test_long_bad_names_are_shortened_in_the_message() -> None:
    with pytest.raises(InvalidRequest) as info:
        layout.check_collection("/" * 10_000)
    assert len(str(info.value)) < 300


def test_keys_follow_the_documented_layout() -> None:
    assert layout.head_key("docs") == "docs/HEAD"
    assert layout.manifest_key("docs", "v1") == "docs/manifests/v1"
    assert layout.bucket_key("docs", "ab" * 32) == "docs/buckets/" + "ab" * 32


@pytest.mark.parametrize(
    "build_key", [layout.head_key, lambda c: layout.manifest_key(c, "v"), lambda c: layout.bucket_key(c, "f")]
)
def test_keys_are_never_built_for_unsafe_names(build_key: object) -> None:
    with pytest.raises(InvalidRequest):
        build_key("../other")  # type: ignore[operator]


@pytest.mark.parametrize("name", ["docs\n", "x\n"])
def test_collection_names_with_a_trailing_newline_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest):
        layout.check_collection(name)
