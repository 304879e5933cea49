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
import math
import tokenize
import zlib
from collections.abc import Callable, Iterable
from itertools import chain
from typing import Any

import numpy as np

from .collection import Collection, check_vectors, id_problem, make_collection
from .errors import InvalidRequest, SourceError
from .metadata import validate_metadata
from .storage import AccessDenied, BucketNotFound, NotFound, S3Uri

#: Largest source object a single build reads (the real limit is the Lambda's memory).
MAX_SOURCE_BYTES = 4 << 30
#: Largest decompressed JSON Lines source (JSON text is ~4x the size of the float32 vectors).
MAX_JSONL_BYTES = 1 << 30
MAX_LABEL_CHARS = 256
#: ``.npy`` dtype kinds read: floats, signed and unsigned integers, str and bytes (ids, labels).
NPY_KINDS = "fiuUS"
#: Most dimensions a ``.npy`` source may declare (vectors are 2-D, ids and labels 1-D).
MAX_NPY_DIMS = 8

Fetch = Callable[[S3Uri], bytes]

_SOURCE_FIELDS = {
    "vectors": {"vectors", "ids", "labels", "label_names"},
    "jsonl": {"jsonl"},
    "items": {"items"},
}


def read_source(source: dict[str, Any], *, metric: str, fetch: Fetch, dtype: str = "float32") -> Collection:
    """Dispatch on the source's shape; ``fetch`` reads one S3 object's bytes.

    ``dtype`` is the collection's storage precision (``BuildParams.dtype``): a float16
    collection refuses components it could not store.
    """
    kinds = [k for k in ("vectors", "jsonl", "items") if k in source]
    if len(kinds) != 1:
        raise InvalidRequest("source", "must have exactly one of 'vectors', 'jsonl' or 'items'")
    allowed = _SOURCE_FIELDS[kinds[0]]
    for name in source:
        if name not in allowed:
            raise InvalidRequest(f"source.{name}", f"is not a known field (expected {sorted(allowed)})")
    if kinds[0] == "vectors":
        return _read_npy_source(source, metric=metric, fetch=fetch, dtype=dtype)
    if kinds[0] == "jsonl":
        uri = S3Uri.parse(source["jsonl"], field="source.jsonl")
        lines = _decompress(_fetch(fetch, uri, "source.jsonl"), "source.jsonl").splitlines()
        return items_to_collection(_parse_lines(lines), metric=metric, field="source.jsonl", dtype=dtype)
    items = source["items"]
    if not isinstance(items, list):
        raise InvalidRequest("source.items", f"must be a list of items, got {type(items).__name__}")
    return items_to_collection(items, metric=metric, field="source.items", dtype=dtype)


def _read_npy_source(source: dict[str, Any], *, metric: str, fetch: Fetch, dtype: str) -> Collection:
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
    return make_collection(arrays["vectors"], arrays["ids"], labels, metric=metric, dtype=dtype)


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
    """Parse a ``.npy`` file without pickle and without copying the data.

    The header is the caller's text: every way it can be malformed or absurd (unknown or
    zero-size dtypes, structured or subarray dtypes, dimensions that overflow numpy's index
    type) becomes a :class:`SourceError` naming ``field``, never numpy's own exception.
    """
    f = io.BytesIO(body)
    try:
        major, _ = np.lib.format.read_magic(f)
        if major not in (1, 2):  # version 3 (UTF-8 field names) only serves structured dtypes
            raise ValueError(f"unsupported .npy version {major}")
        reader = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = reader(f)
    except (
        ValueError,
        TypeError,
        KeyError,
        SyntaxError,
        RecursionError,
        MemoryError,
        tokenize.TokenError,
    ) as exc:
        raise SourceError(field, f"is not a valid .npy file ({type(exc).__name__})") from None
    if dtype.hasobject:
        raise SourceError(field, "holds Python objects; only numeric or string arrays are read")
    problem = _npy_dtype_problem(dtype)
    if problem is not None:
        raise SourceError(field, problem)
    if not (
        isinstance(shape, tuple)
        and len(shape) <= MAX_NPY_DIMS
        and all(type(s) is int and 0 <= s <= MAX_SOURCE_BYTES for s in shape)
    ):
        raise SourceError(field, f"has an impossible shape {_short(shape)}")
    # Bound the product of the nonzero dimensions too: numpy multiplies every dimension,
    # zeros or not, and (0, 10**20) overflows its index type although it holds no data.
    extent = 1
    for s in shape:
        extent *= max(s, 1)
    nbytes = math.prod(shape) * dtype.itemsize
    if extent * dtype.itemsize > MAX_SOURCE_BYTES:
        raise SourceError(
            field, f"declares shape {_short(shape)}, larger than the {MAX_SOURCE_BYTES >> 30} GiB limit"
        )
    if len(body) - f.tell() < nbytes:
        raise SourceError(field, f"is truncated: shape {_short(shape)} needs {nbytes} data bytes")
    array = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=f.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def _npy_dtype_problem(dtype: np.dtype) -> str | None:
    """Why a ``.npy`` dtype is not one we read (numbers or text, one fixed-size value per cell)."""
    if dtype.fields is not None or dtype.subdtype is not None:
        return (
            f"has a structured or subarray dtype {_short(dtype.descr)}; "
            "only plain numeric or string arrays are read"
        )
    if dtype.kind not in NPY_KINDS:
        return f"has dtype {dtype.str}; only integers, floats or strings are read"
    if dtype.itemsize == 0:
        return f"has zero-size dtype {dtype.str}"
    return None


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def items_to_collection(
    items: Iterable[Any], *, metric: str, field: str, dtype: str = "float32"
) -> Collection:
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
    matrix = vector_matrix(vectors, field=field, suffix=".vector", metric=metric, dtype=dtype)
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
        dtype=dtype,
    )


def vector_matrix(
    vectors: list[Any], *, field: str, suffix: str = "", metric: str | None = None, dtype: str = "float32"
) -> np.ndarray:
    """Convert JSON vectors to float32 (n, d), naming the first bad element precisely.

    The fast path is one numpy conversion; only when it fails (or yields a non-numeric dtype)
    do we walk the rows to say which one is wrong. Finite rows must also keep the numeric rule
    (:func:`kdbuckets.collection.check_vectors`: ``metric=None`` for queries, whose metric is
    the collection's); NaN, Inf and all-zero rows are left for the caller to name.
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
                check_vectors(matrix, f"{field}[]{suffix}", metric=metric, dtype=dtype, finite=False)
                with np.errstate(over="ignore"):  # beyond float32: Inf, named by the caller
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
    """Ids as int64 or unicode, each checked by :func:`id_problem` *before* numpy sees it.

    A numpy text array cannot hold a trailing NUL ("doc7" + NUL is stored as "doc7") and
    refuses lone surrogates only later and without a row, so every id is checked as JSON
    gave it, naming its item: ``source.jsonl[3].id``.
    """
    for i, x in enumerate(ids):
        problem = id_problem(x)
        if problem is not None:
            raise InvalidRequest(f"{field}[{i}].id", problem)
    if all(isinstance(x, int) for x in ids):  # bools were refused by id_problem
        return np.array(ids, dtype=np.int64)
    if all(isinstance(x, str) for x in ids):
        return np.array(ids, dtype=str)
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
