"""Readers that turn a build request's ``source`` into a validated :class:`Collection`.

Three shapes are accepted:

- ``{"vectors": "s3://…/vectors.npy", "ids": "s3://…/ids.npy", "labels": "s3://…/labels.npy",
  "label_names": "s3://…/labels.json"}`` — ``.npy`` arrays (never unpickled); ``ids``, ``labels``
  and ``label_names`` (a JSON object mapping integer label codes to names) are optional;
- ``{"jsonl": "s3://…/items.jsonl[.gz]"}`` — one ``{"id", "vector", "label"}`` object per line;
- ``{"items": [{"id", "vector", "label"}, …]}`` — a small inline collection.
"""

from __future__ import annotations

import gzip
import io
import json
import tokenize
import zlib
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import numpy as np

from .collection import Collection, make_collection
from .errors import InvalidRequest, SourceError
from .metadata import validate_metadata
from .storage import AccessDenied, BucketNotFound, NotFound, S3Uri

#: Largest source object a single build reads (the real limit is the Lambda's memory).
MAX_SOURCE_BYTES = 4 << 30
#: Largest decompressed JSON Lines source (JSON text is ~4x the size of the float32 vectors).
MAX_JSONL_BYTES = 1 << 30
MAX_LABEL_CHARS = 256

Fetch = Callable[[S3Uri], bytes]

_SOURCE_FIELDS = {
    "vectors": {"vectors", "ids", "labels", "label_names"},
    "jsonl": {"jsonl"},
    "items": {"items"},
}


def read_source(source: dict[str, Any], *, metric: str, fetch: Fetch) -> Collection:
    """Dispatch on the source's shape; ``fetch`` reads one S3 object's bytes."""
    kinds = [k for k in ("vectors", "jsonl", "items") if k in source]
    if len(kinds) != 1:
        raise InvalidRequest("source", "must have exactly one of 'vectors', 'jsonl' or 'items'")
    allowed = _SOURCE_FIELDS[kinds[0]]
    for name in source:
        if name not in allowed:
            raise InvalidRequest(f"source.{name}", f"is not a known field (expected {sorted(allowed)})")
    if kinds[0] == "vectors":
        return _read_npy_source(source, metric=metric, fetch=fetch)
    if kinds[0] == "jsonl":
        uri = S3Uri.parse(source["jsonl"], field="source.jsonl")
        lines = _decompress(_fetch(fetch, uri, "source.jsonl"), "source.jsonl").splitlines()
        return items_to_collection(_parse_lines(lines), metric=metric, field="source.jsonl")
    items = source["items"]
    if not isinstance(items, list):
        raise InvalidRequest("source.items", f"must be a list of items, got {type(items).__name__}")
    return items_to_collection(items, metric=metric, field="source.items")


def _read_npy_source(source: dict[str, Any], *, metric: str, fetch: Fetch) -> Collection:
    arrays: dict[str, np.ndarray | None] = {}
    for name in ("vectors", "ids", "labels"):
        uri = source.get(name)
        field = f"source.{name}"
        arrays[name] = (
            None if uri is None else load_npy(_fetch(fetch, S3Uri.parse(uri, field=field), field), field)
        )
    labels = arrays["labels"]
    if source.get("label_names") is not None:
        if labels is None or labels.dtype.kind not in "iu":
            raise InvalidRequest("source.label_names", "needs integer labels in source.labels")
        labels = _apply_label_names(labels, source["label_names"], fetch)
    return make_collection(arrays["vectors"], arrays["ids"], labels, metric=metric)


def _apply_label_names(codes: np.ndarray, uri: Any, fetch: Fetch) -> np.ndarray:
    field = "source.label_names"
    body = _fetch(fetch, S3Uri.parse(uri, field=field), field)  # its errors say more than ours below
    try:
        mapping = json.loads(body)
        table = {int(k): str(v) for k, v in mapping.items()}
    except (ValueError, AttributeError, TypeError, RecursionError):
        raise SourceError(field, "must be a JSON object mapping label codes to names") from None
    missing = set(np.unique(codes).tolist()) - set(table)
    if missing:
        raise SourceError(field, f"has no name for label code(s) {sorted(missing)[:5]}")
    return np.array([table[c] for c in codes.tolist()])


def load_npy(body: bytes, field: str) -> np.ndarray:
    """Parse a ``.npy`` file without pickle and without copying the data."""
    f = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(f)
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    except (ValueError, SyntaxError, tokenize.TokenError) as exc:
        raise SourceError(field, f"is not a valid .npy file ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise SourceError(field, "holds Python objects; only numeric or string arrays are read")
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise SourceError(field, f"has an impossible shape {shape}")
    count = 1
    for s in shape:
        count *= s
    if count * dtype.itemsize > MAX_SOURCE_BYTES:
        raise SourceError(
            field, f"declares shape {shape}, larger than the {MAX_SOURCE_BYTES >> 30} GiB limit"
        )
    if len(body) - f.tell() < count * dtype.itemsize:
        raise SourceError(field, f"is truncated: shape {shape} needs {count * dtype.itemsize} data bytes")
    array = np.frombuffer(body, dtype=dtype, count=count, offset=f.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def items_to_collection(items: Iterable[Any], *, metric: str, field: str) -> Collection:
    """Turn ``{"id", "vector", "label"}`` objects into a collection, naming bad items."""
    ids: list[Any] = []
    vectors: list[Any] = []
    labels: list[Any] = []
    metadata: list[dict | None] = []
    for i, item in enumerate(items):
        where = f"{field}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(where, f"must be an object with 'vector', got {type(item).__name__}")
        unknown = set(item) - {"id", "vector", "label", "metadata"}
        if unknown:
            raise InvalidRequest(where, f"has unknown field(s) {sorted(unknown)}")
        if "vector" not in item:
            raise InvalidRequest(f"{where}.vector", "is missing")
        ids.append(item.get("id", i))
        vectors.append(item["vector"])
        labels.append(item.get("label"))
        metadata.append(validate_metadata(item.get("metadata"), f"{where}.metadata"))
    if not vectors:
        raise InvalidRequest(field, "is empty; a collection needs at least one vector")
    matrix = vector_matrix(vectors, field=field, suffix=".vector")
    id_array = _id_array(ids, field)
    has_labels = [lab is not None for lab in labels]
    label_array = None
    if any(has_labels):
        if not all(has_labels):
            raise InvalidRequest(
                f"{field}[{has_labels.index(False)}].label", "is missing; label all items or none"
            )
        bad = [
            i
            for i, lab in enumerate(labels)
            if isinstance(lab, bool) or not isinstance(lab, str | int) or len(str(lab)) > MAX_LABEL_CHARS
        ]
        if bad:
            raise InvalidRequest(
                f"{field}[{bad[0]}].label",
                f"must be a string (at most {MAX_LABEL_CHARS} characters) or an integer",
            )
        label_array = np.array([str(lab) for lab in labels])
    return make_collection(
        matrix,
        id_array,
        label_array,
        metric=metric,
        fields=(field, f"{field}[].id", f"{field}[].label"),
        metadata=metadata,
    )


def vector_matrix(vectors: list[Any], *, field: str, suffix: str = "") -> np.ndarray:
    """Convert JSON vectors to float32 (n, d), naming the first bad element precisely.

    The fast path is one numpy conversion; only when it fails (or yields a non-numeric dtype)
    do we walk the rows to say which one is wrong.
    """
    if all(type(row) is list for row in vectors):
        # Check element types before numpy sees them: a stray string would make np.array
        # build a fixed-width text array as wide as that string for every element.
        kinds = set(map(type, chain.from_iterable(vectors)))
        if kinds and kinds <= {int, float}:
            try:
                matrix = np.array(vectors, dtype=np.float64)
            except (ValueError, OverflowError):
                matrix = None  # ragged rows or huge ints: named precisely below
            if (
                matrix is not None
                and matrix.ndim == 2
                and matrix.shape[1] > 0
                and (
                    np.abs(matrix).max(initial=0.0) <= np.finfo(np.float32).max
                    or not np.isfinite(matrix).all()
                )
            ):
                return matrix.astype(np.float32)
    width = None
    for i, row in enumerate(vectors):
        where = f"{field}[{i}]{suffix}"
        if not isinstance(row, list) or not row:
            raise InvalidRequest(where, "must be a non-empty list of numbers")
        for j, x in enumerate(row):
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise InvalidRequest(f"{where}[{j}]", f"must be a number, got {type(x).__name__}")
            if abs(x) > 3.4e38 and x == x and abs(x) != float("inf"):
                raise InvalidRequest(f"{where}[{j}]", "is too large for float32")
        if width is None:
            width = len(row)
        elif len(row) != width:
            raise InvalidRequest(where, f"has {len(row)} dimensions; {field}[0]{suffix} has {width}")
    raise InvalidRequest(field, "must be a list of equal-length lists of numbers")


def _id_array(ids: list[Any], field: str) -> np.ndarray:
    if all(isinstance(x, int) and not isinstance(x, bool) for x in ids):
        if any(abs(x) >= 2**63 for x in ids):
            raise InvalidRequest(f"{field}[].id", "integer ids must fit in int64")
        return np.array(ids, dtype=np.int64)
    if all(isinstance(x, str) for x in ids):
        return np.array(ids, dtype=str)
    for i, x in enumerate(ids):
        if isinstance(x, bool) or not isinstance(x, str | int):
            raise InvalidRequest(
                f"{field}[{i}].id", f"must be a string or an integer, got {type(x).__name__}"
            )
    raise InvalidRequest(f"{field}[].id", "must be all strings or all integers, not a mix")


def _parse_lines(lines: list[bytes]) -> Iterable[Any]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            raise SourceError("source.jsonl", f"line {number} is not valid JSON") from None


def _decompress(body: bytes, field: str) -> bytes:
    if body[:2] != b"\x1f\x8b":
        return body
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(body)) as f:
            while chunk := f.read(1 << 20):
                out.write(chunk)
                if out.tell() > MAX_JSONL_BYTES:
                    raise SourceError(
                        field, f"expands beyond {MAX_JSONL_BYTES >> 30} GiB; split the collection"
                    )
    except (OSError, EOFError, zlib.error):
        raise SourceError(field, "is not a valid gzip file") from None
    return out.getvalue()


def _fetch(fetch: Fetch, uri: S3Uri, field: str) -> bytes:
    """Read a source object; only what the caller got wrong becomes a :class:`SourceError`.

    A missing object, a missing bucket or a refusal (403) will not change by retrying: the
    request named the wrong object. Any other :class:`StorageError` (throttling, 5xx after
    botocore's retries, a body cut off) propagates as itself, so the caller may retry.
    """
    where = f"s3://{uri.bucket}/{uri.key}"
    try:
        return fetch(uri)
    except BucketNotFound:
        raise SourceError(field, f"names {where}, but bucket {uri.bucket!r} does not exist") from None
    except NotFound:
        raise SourceError(field, f"names {where}, which does not exist") from None
    except AccessDenied:
        raise SourceError(
            field,
            f"names {where}, which this function may not read (access denied; a missing key "
            "reads as denied without s3:ListBucket)",
        ) from None
