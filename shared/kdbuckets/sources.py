"""Readers that turn a build request's ``source`` into a validated :class:`Collection`.

Three shapes are accepted:

- ``{"vectors": "s3://…/vectors.npy", "ids": "s3://…/ids.npy", "labels": "s3://…/labels.npy",
  "label_names": "s3://…/labels.json"}`` — ``.npy`` arrays (never unpickled); ``ids``, ``labels``
  and ``label_names`` (a JSON object mapping integer label codes to names) are optional;
- ``{"jsonl": "s3://…/items.jsonl[.gz]"}`` — one ``{"id", "vector", "label"}`` object per line;
- ``{"items": [{"id", "vector", "label"}, …]}`` — a small inline collection.

A ``vectors``/``ids``/``labels`` or ``jsonl`` URI ending in ``/`` names a *prefix*: every ``.npy``
(or ``.jsonl``/``.jsonl.gz``) object under it, in key order, is one shard, and the ids and labels
prefixes hold shards of the same names. The shards read exactly as their concatenation would.

Why chunked: a build function's memory is the limit on a collection's size, so the vectors are
read once into one preallocated float32 matrix — ``.npy`` data by ranged GETs of a few MB,
JSON Lines decompressed and parsed line by line into a growing matrix — and never held twice
(the raw object, a parsed copy and a converted copy, as a whole-object read would).
A :class:`SourceReader` does the I/O: :class:`StoreReader` (ranged GETs and listings through an
:class:`~kdbuckets.storage.ObjectStore`) in the build handler, or any ``fetch`` callable (whole
objects; no prefixes) for library callers and tests.
"""

from __future__ import annotations

import io
import json
import math
import tokenize
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, pairwise
from typing import Any, Protocol

import numpy as np

from .capacity import check_fits, max_vector_bytes
from .collection import MAX_DIM, Collection, check_vectors, id_problem, make_collection
from .errors import InvalidRequest, SourceError
from .metadata import validate_metadata
from .storage import AccessDenied, BucketNotFound, NotFound, ObjectStore, S3Uri

#: Largest source object a single build reads (the real limit is the Lambda's memory).
MAX_SOURCE_BYTES = 4 << 30
#: Largest decompressed JSON Lines object (split bigger collections into shards under a prefix).
MAX_JSONL_BYTES = 1 << 30
#: Longest JSON Lines line (one item: its vector, id, label and metadata).
MAX_JSONL_LINE_BYTES = 64 << 20
MAX_LABEL_CHARS = 256
#: ``.npy`` dtype kinds read: floats, signed and unsigned integers, str and bytes (ids, labels).
NPY_KINDS = "fiuUS"
#: Most dimensions a ``.npy`` source may declare (vectors are 2-D, ids and labels 1-D).
MAX_NPY_DIMS = 8
#: Bytes of one ranged GET (a ``.npy`` data chunk or a piece of a JSON Lines object).
CHUNK_BYTES = 16 << 20
#: Ranged GETs of one object in flight at once (so at most this many chunks are in memory).
READ_WINDOW = 4
#: First bytes read of a ``.npy`` object: its header (numpy pads headers to 64 bytes; v1 ≤ 64 KiB).
NPY_HEAD_BYTES = 1 << 16
#: Longest ``.npy`` header read (version 2 allows 4 GiB of header text; no real file needs it).
MAX_NPY_HEADER_BYTES = 1 << 20
#: JSON Lines items parsed per numpy conversion.
JSONL_BLOCK_ROWS = 4096

Fetch = Callable[[S3Uri], bytes]

_SOURCE_FIELDS = {
    "vectors": {"vectors", "ids", "labels", "label_names"},
    "jsonl": {"jsonl"},
    "items": {"items"},
}
_NPY_SUFFIXES = (".npy",)
_JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")


# -- object access ---------------------------------------------------------------------------
class SourceReader(Protocol):
    """How sources reach S3: whole objects, byte ranges and prefix listings."""

    def get(self, uri: S3Uri) -> bytes:
        """The whole object."""
        ...

    def get_range(
        self, uri: S3Uri, start: int, end: int, if_match: str | None = None
    ) -> tuple[bytes, int, str]:
        """Bytes ``[start, end)``, the object's size and its ETag (``if_match``: it must not change)."""
        ...

    def get_ranges(
        self, uri: S3Uri, ranges: Sequence[tuple[int, int]], if_match: str | None
    ) -> Iterator[bytes]:
        """Several ranges of one object, in order (a reader may fetch a few in parallel)."""
        ...

    def list_keys(self, uri: S3Uri) -> list[str]:
        """Every key under the prefix ``uri.key``, in key order."""
        ...


class StoreReader:
    """A :class:`SourceReader` over an :class:`ObjectStore`: ranged GETs, ``window`` in flight."""

    def __init__(self, store: ObjectStore, window: int = READ_WINDOW) -> None:
        self.store = store
        self.window = max(1, window)

    def get(self, uri: S3Uri) -> bytes:
        return self.store.get_from(uri.bucket, uri.key)[0]

    def get_range(
        self, uri: S3Uri, start: int, end: int, if_match: str | None = None
    ) -> tuple[bytes, int, str]:
        return self.store.get_range(uri.bucket, uri.key, start, end, if_match=if_match)

    def get_ranges(
        self, uri: S3Uri, ranges: Sequence[tuple[int, int]], if_match: str | None
    ) -> Iterator[bytes]:
        pending: list[Future[tuple[bytes, int, str]]] = []
        try:
            for start, end in ranges:
                pending.append(self.store.submit(self.get_range, uri, start, end, if_match))
                if len(pending) >= self.window:
                    yield pending.pop(0).result()[0]
            while pending:
                yield pending.pop(0).result()[0]
        finally:
            for future in pending:
                future.cancel()

    def list_keys(self, uri: S3Uri) -> list[str]:
        return self.store.list_keys(uri.bucket, uri.key)


class FetchReader:
    """A :class:`SourceReader` over a ``fetch`` callable: whole objects only, no listings.

    Ranges are cut from the last object fetched (kept until another is asked for), so a
    chunked reader works unchanged on it, with a whole-object read's memory.
    """

    def __init__(self, fetch: Fetch) -> None:
        self.fetch = fetch
        self._last: tuple[S3Uri, bytes] | None = None

    def get(self, uri: S3Uri) -> bytes:
        return self.fetch(uri)

    def get_range(
        self, uri: S3Uri, start: int, end: int, if_match: str | None = None
    ) -> tuple[bytes, int, str]:
        if self._last is None or self._last[0] != uri:
            self._last = None  # drop the previous body before fetching the next
            self._last = (uri, self.fetch(uri))
        body = self._last[1]
        return body[start:end], len(body), ""

    def get_ranges(
        self, uri: S3Uri, ranges: Sequence[tuple[int, int]], if_match: str | None
    ) -> Iterator[bytes]:
        for start, end in ranges:
            yield self.get_range(uri, start, end)[0]

    def list_keys(self, uri: S3Uri) -> list[str]:
        raise NotImplementedError("a fetch callable cannot list a prefix")


def _where(uri: S3Uri) -> str:
    return f"s3://{uri.bucket}/{uri.key}"


@contextmanager
def _reading(uri: S3Uri, field: str) -> Iterator[None]:
    """Turn what the caller got wrong about ``uri`` into a :class:`SourceError` naming it.

    A missing object, a missing bucket or a refusal (403) will not change by retrying: the
    request named the wrong object. Any other :class:`StorageError` (throttling, 5xx after
    botocore's retries, a body cut off, an object replaced while being read) propagates as
    itself, so the caller may retry.
    """
    where = _where(uri)
    try:
        yield
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


def _fetch(reader: SourceReader, uri: S3Uri, field: str) -> bytes:
    with _reading(uri, field):
        return reader.get(uri)


@contextmanager
def _in_shard(uri: S3Uri, sharded: bool) -> Iterator[None]:
    """Name the shard in any error about it (single-object sources keep their messages)."""
    if not sharded:
        yield
        return
    try:
        yield
    except InvalidRequest as exc:
        if _where(uri) in exc.problem:
            raise
        raise type(exc)(exc.field, f"(shard {_where(uri)}) {exc.problem}") from None


# -- dispatch ----------------------------------------------------------------------------------
def read_source(
    source: dict[str, Any],
    *,
    metric: str,
    fetch: Fetch | None = None,
    dtype: str = "float32",
    reader: SourceReader | None = None,
    memory_mb: int | None = None,
) -> Collection:
    """Dispatch on the source's shape and read it through ``reader`` (or ``fetch``).

    ``memory_mb`` (the build function's memory) refuses a collection one build cannot hold
    (:func:`kdbuckets.capacity.check_fits`): a ``.npy`` source from its headers, before any
    row is read; a JSON Lines one as soon as its rows pass the limit.

    ``reader`` (the build handler passes a :class:`StoreReader`) reads in chunks and lists
    prefixes; ``fetch`` reads one S3 object's bytes whole and serves single-object sources.
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
    if kinds[0] == "items":
        items = source["items"]
        if not isinstance(items, list):
            raise InvalidRequest("source.items", f"must be a list of items, got {type(items).__name__}")
        return items_to_collection(items, metric=metric, field="source.items", dtype=dtype)
    if reader is None:
        if fetch is None:
            raise TypeError("read_source needs a reader or a fetch")
        reader = FetchReader(fetch)
    if kinds[0] == "vectors":
        return _read_npy_source(source, metric=metric, reader=reader, dtype=dtype, memory_mb=memory_mb)
    field = "source.jsonl"
    shards = shard_uris(reader, source["jsonl"], field, _JSONL_SUFFIXES)
    items = jsonl_items(reader, shards, field, sharded=_is_prefix(source["jsonl"]))
    return items_to_collection(_fitting(items, memory_mb, field), metric=metric, field=field, dtype=dtype)


def _fitting(items: Iterator[Any], memory_mb: int | None, field: str) -> Iterator[Any]:
    """``items``, refused (:func:`capacity.check_fits`) once more arrive than a build can hold."""
    if memory_mb is None:
        yield from items
        return
    limit: int | None = None
    for count, item in enumerate(items, start=1):
        if limit is None:
            vector = item.get("vector") if isinstance(item, dict) else None
            dim = len(vector) if isinstance(vector, list) and vector else 1
            limit = max_vector_bytes(memory_mb) // (4 * dim)
        if count > limit:
            check_fits(count, dim, memory_mb, field)
        yield item


def _is_prefix(uri: object) -> bool:
    return isinstance(uri, str) and uri.endswith("/")


def shard_uris(reader: SourceReader, uri: object, field: str, suffixes: tuple[str, ...]) -> list[S3Uri]:
    """The objects a source URI names: itself, or every ``suffixes`` object under a prefix.

    Keys are in key order (S3 lists in UTF-8 binary order), which is the shards' row order.
    An empty prefix is a :class:`SourceError` naming it.
    """
    parsed = S3Uri.parse(uri, field=field)
    if not _is_prefix(uri):
        return [parsed]
    with _reading(parsed, field):
        try:
            keys = reader.list_keys(parsed)
        except NotImplementedError:
            raise InvalidRequest(
                field, "names a prefix (ends in '/'); prefixes are read through an object store"
            ) from None
    found = [S3Uri(parsed.bucket, k) for k in keys if k.endswith(suffixes) and k != parsed.key]
    if not found:
        raise SourceError(
            field, f"names the prefix {_where(parsed)}, which holds no {' or '.join(suffixes)} objects"
        )
    return found


# -- .npy sources --------------------------------------------------------------------------------
@dataclass(frozen=True)
class NpyHeader:
    """Where a ``.npy`` object's data lies and what it holds (read from its first bytes)."""

    uri: S3Uri
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool
    offset: int  # first data byte
    size: int  # bytes in the object
    etag: str  # of the object read (every later range must match it; "" if unknown)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1


def read_npy_header(reader: SourceReader, uri: S3Uri, field: str) -> NpyHeader:
    """Parse a ``.npy`` header from a ranged GET of the object's first bytes (no data read)."""
    with _reading(uri, field):
        head, size, etag = reader.get_range(uri, 0, NPY_HEAD_BYTES)
        if head[6:7] == b"\x02" and len(head) >= 12:  # version 2: a 4-byte header length
            needed = 12 + int.from_bytes(head[8:12], "little")
            if needed > MAX_NPY_HEADER_BYTES:
                raise SourceError(field, f"has a {needed}-byte .npy header; at most {MAX_NPY_HEADER_BYTES}")
            if needed > len(head) and size >= needed:
                head, size, etag = reader.get_range(uri, 0, needed, etag or None)
    f = io.BytesIO(head)
    shape, fortran, dtype = _parse_npy_header(f, field)
    nbytes = math.prod(shape) * dtype.itemsize
    if size - f.tell() < nbytes:
        raise SourceError(field, f"is truncated: shape {_short(shape)} needs {nbytes} data bytes")
    return NpyHeader(uri, shape, dtype, fortran, f.tell(), size, etag)


def _parse_npy_header(f: io.BytesIO, field: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Shape, order and dtype from a ``.npy`` header, refusing everything malformed or absurd.

    The header is the caller's text: every way it can be malformed or absurd (unknown or
    zero-size dtypes, structured or subarray dtypes, dimensions that overflow numpy's index
    type) becomes a :class:`SourceError` naming ``field``, never numpy's own exception.
    """
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
    if extent * dtype.itemsize > MAX_SOURCE_BYTES:
        raise SourceError(
            field, f"declares shape {_short(shape)}, larger than the {MAX_SOURCE_BYTES >> 30} GiB limit"
        )
    return shape, bool(fortran), dtype


def load_npy(body: bytes, field: str) -> np.ndarray:
    """Parse a whole ``.npy`` file without pickle and without copying the data.

    Header checks as :func:`_parse_npy_header`; a short body is a :class:`SourceError` too.
    """
    f = io.BytesIO(body)
    shape, fortran, dtype = _parse_npy_header(f, field)
    nbytes = math.prod(shape) * dtype.itemsize
    if len(body) - f.tell() < nbytes:
        raise SourceError(field, f"is truncated: shape {_short(shape)} needs {nbytes} data bytes")
    array = np.frombuffer(body, dtype=dtype, count=math.prod(shape), offset=f.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def read_npy_rows(reader: SourceReader, header: NpyHeader, field: str) -> Iterator[tuple[int, np.ndarray]]:
    """A 2-D ``.npy`` object's rows in chunks of about :data:`CHUNK_BYTES`: (first row, rows).

    C-order data comes by ranged GETs (the object must keep its ETag throughout); a rare
    Fortran-order file is read whole, as its rows are not contiguous. The chunks are views of
    the fetched bytes in the file's dtype; converting them is the caller's.
    """
    n, d = header.shape
    row_bytes = d * header.dtype.itemsize
    if n == 0 or row_bytes == 0:
        return
    step = max(1, CHUNK_BYTES // row_bytes)
    if header.fortran:
        whole = load_npy(_fetch(reader, header.uri, field), field)
        for start in range(0, n, step):
            yield start, whole[start : start + step]
        return
    starts = range(0, n, step)
    ranges = [(header.offset + a * row_bytes, header.offset + min(a + step, n) * row_bytes) for a in starts]
    with _reading(header.uri, field):
        bodies = reader.get_ranges(header.uri, ranges, header.etag or None)
        for start, (lo, hi), body in zip(starts, ranges, bodies, strict=True):
            if len(body) != hi - lo:
                raise SourceError(field, f"is truncated: bytes {lo}–{hi} read as {len(body)}")
            yield start, np.frombuffer(body, dtype=header.dtype).reshape(-1, d)


def _read_npy_source(
    source: dict[str, Any], *, metric: str, reader: SourceReader, dtype: str, memory_mb: int | None = None
) -> Collection:
    sharded = _is_prefix(source["vectors"])
    for name in ("ids", "labels"):
        if source.get(name) is not None and _is_prefix(source[name]) != sharded:
            raise InvalidRequest(
                f"source.{name}",
                "must be a prefix (ending in '/') exactly when source.vectors is one, "
                "so that its shards pair with the vectors shards",
            )
    shards = shard_uris(reader, source["vectors"], "source.vectors", _NPY_SUFFIXES)
    vectors = _read_npy_vectors(
        reader, shards, sharded=sharded, metric=metric, dtype=dtype, memory_mb=memory_mb
    )
    rows = [len(v) for v in vectors.shards]
    arrays: dict[str, np.ndarray | None] = {}
    for name in ("ids", "labels"):
        uri = source.get(name)
        field = f"source.{name}"
        if uri is None:
            arrays[name] = None
        elif not sharded:
            arrays[name] = load_npy(_fetch(reader, S3Uri.parse(uri, field=field), field), field)
        else:
            arrays[name] = _read_paired_shards(reader, uri, field, source["vectors"], shards, rows)
    labels = arrays["labels"]
    if source.get("label_names") is not None:
        if labels is None or labels.dtype.kind not in "iu":
            raise InvalidRequest("source.label_names", "needs integer labels in source.labels")
        labels = _apply_label_names(labels, source["label_names"], reader)
    return make_collection(vectors.matrix, arrays["ids"], labels, metric=metric, dtype=dtype)


@dataclass(frozen=True)
class _Vectors:
    matrix: np.ndarray  # (n, d) float32, every shard's rows in order
    shards: list[range]  # rows of each shard


def _read_npy_vectors(
    reader: SourceReader,
    shards: list[S3Uri],
    *,
    sharded: bool,
    metric: str,
    dtype: str,
    memory_mb: int | None = None,
) -> _Vectors:
    """Every shard's rows, checked chunk by chunk, into one preallocated float32 matrix."""
    field = "source.vectors"
    headers: list[NpyHeader] = []
    for uri in shards:
        with _in_shard(uri, sharded):
            header = read_npy_header(reader, uri, field)
            if len(header.shape) != 2:
                raise InvalidRequest(
                    field, f"must be a 2-D array (rows × dimensions), got shape {header.shape}"
                )
            if header.dtype.kind not in "fiu":
                raise InvalidRequest(field, f"must be numeric, got dtype {header.dtype}")
            d = header.shape[1]
            if not 1 <= d <= MAX_DIM:
                raise InvalidRequest(field, f"has {d} dimensions; supported are 1 to {MAX_DIM}")
            if headers and d != headers[0].shape[1]:
                raise SourceError(
                    field,
                    f"shard {_where(uri)} has {d} dimensions; the first shard "
                    f"{_where(headers[0].uri)} has {headers[0].shape[1]}",
                )
        headers.append(header)
    bounds = np.cumsum([0] + [h.rows for h in headers]).tolist()
    check_fits(bounds[-1], headers[0].shape[1], memory_mb, field)
    matrix = np.empty((bounds[-1], headers[0].shape[1]), dtype=np.float32)
    for header, first in zip(headers, bounds, strict=False):
        with _in_shard(header.uri, sharded):
            filled = 0  # rows written: the matrix is np.empty, so every row must be
            for start, chunk in read_npy_rows(reader, header, field):
                block = matrix[first + start : first + start + len(chunk)]
                with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: Inf, named below
                    block[...] = chunk
                check_rows(block, field, first + start, metric=metric, dtype=dtype)
                filled += len(chunk)
            if filled != header.rows:
                raise SourceError(field, f"read {filled} of its {header.rows} rows")
    return _Vectors(matrix, [range(a, b) for a, b in pairwise(bounds)])


def check_rows(block: np.ndarray, field: str, offset: int, *, metric: str | None, dtype: str) -> None:
    """:func:`check_vectors` on rows ``offset…`` of a larger matrix, naming the row in the whole."""
    try:
        check_vectors(block, field, metric=metric, dtype=dtype)
    except InvalidRequest as exc:
        inside = exc.field[len(field) :]
        if offset and inside.startswith("[") and inside[1:].split("]", 1)[0].isdigit():
            row = int(inside[1:].split("]", 1)[0])
            raise InvalidRequest(f"{field}[{offset + row}]", exc.problem) from None
        raise


def _read_paired_shards(
    reader: SourceReader,
    prefix: str,
    field: str,
    vectors_prefix: str,
    vector_shards: list[S3Uri],
    rows: list[int],
) -> np.ndarray:
    """The ids (or labels) shards named like the vectors shards, concatenated in their order."""
    base = S3Uri.parse(prefix, field=field)
    vbase = S3Uri.parse(vectors_prefix, field="source.vectors")
    names = [u.key[len(vbase.key) :] for u in vector_shards]
    listed = {u.key[len(base.key) :]: u for u in shard_uris(reader, prefix, field, _NPY_SUFFIXES)}
    for name, uri in listed.items():
        if name not in names:
            raise SourceError(field, f"has shard {_where(uri)} but there is no vectors shard {name!r}")
    parts: list[np.ndarray] = []
    for name, vec_uri, n in zip(names, vector_shards, rows, strict=True):
        uri = listed.get(name)
        if uri is None:
            raise SourceError(
                field, f"has no shard {_where(S3Uri(base.bucket, base.key + name))} for {_where(vec_uri)}"
            )
        with _in_shard(uri, True):
            part = load_npy(_fetch(reader, uri, field), field)
            if part.shape != (n,):
                raise SourceError(
                    field, f"has shape {part.shape}; expected ({n},) to match {_where(vec_uri)}"
                )
            if parts and (part.dtype.kind in "iu") != (parts[0].dtype.kind in "iu"):
                raise SourceError(field, "holds integers in some shards and strings in others")
            if part.dtype.kind == "S":
                try:
                    part = np.char.decode(part, "utf-8")
                except UnicodeDecodeError:
                    raise SourceError(field, "holds text that is not valid UTF-8") from None
        parts.append(part)
    return np.concatenate(parts)


def _apply_label_names(codes: np.ndarray, uri: Any, reader: SourceReader) -> np.ndarray:
    field = "source.label_names"
    body = _fetch(reader, S3Uri.parse(uri, field=field), field)  # its errors say more than ours below
    try:
        mapping = json.loads(body)
        table = {int(k): str(v) for k, v in mapping.items()}
    except (ValueError, AttributeError, TypeError, RecursionError):
        raise SourceError(field, "must be a JSON object mapping label codes to names") from None
    missing = set(np.unique(codes).tolist()) - set(table)
    if missing:
        raise SourceError(field, f"has no name for label code(s) {sorted(missing)[:5]}")
    return np.array([table[c] for c in codes.tolist()])


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
    """Turn ``{"id", "vector", "label"}`` objects into a collection, naming bad items.

    Items are consumed as they come (a generator over a JSON Lines stream holds one block of
    parsed items at a time); their vectors go into one growing float32 matrix.
    """
    builder = _ItemCollector(field, metric=metric, dtype=dtype)
    for item in items:
        builder.add(item)
    return builder.collection()


class _ItemCollector:
    """Validates items one by one and converts their vectors a block at a time.

    Why blocks: a JSON vector as Python floats takes ~8× its float32 bytes, so parsed items
    are kept only until :data:`JSONL_BLOCK_ROWS` of them are converted (one numpy call, as
    :func:`vector_matrix` does for a whole list) into :class:`_GrowingRows`.
    """

    def __init__(self, field: str, *, metric: str, dtype: str) -> None:
        self.field, self.metric, self.dtype = field, metric, dtype
        self.ids: list[Any] = []
        self.labels: list[Any] = []
        self.metadata: list[dict | None] = []
        self.pending: list[Any] = []  # vectors not yet converted
        self.rows: _GrowingRows | None = None

    def add(self, item: Any) -> None:
        i = len(self.ids)
        where = f"{self.field}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(where, f"must be an object with 'vector', got {type(item).__name__}")
        unknown = set(item) - {"id", "vector", "label", "metadata"}
        if unknown:
            raise InvalidRequest(where, f"has unknown field(s) {sorted(unknown)}")
        if "vector" not in item:
            raise InvalidRequest(f"{where}.vector", "is missing")
        self.ids.append(item.get("id", i))
        self.pending.append(item["vector"])
        self.labels.append(item.get("label"))
        self.metadata.append(validate_metadata(item.get("metadata"), f"{where}.metadata"))
        if len(self.pending) >= JSONL_BLOCK_ROWS:
            self._convert()

    def _convert(self) -> None:
        offset = len(self.ids) - len(self.pending)
        block = vector_matrix(
            self.pending,
            field=self.field,
            suffix=".vector",
            metric=self.metric,
            dtype=self.dtype,
            offset=offset,
        )
        self.pending = []
        if self.rows is None:
            self.rows = _GrowingRows(block.shape[1])
        elif block.shape[1] != self.rows.dim:
            raise InvalidRequest(
                f"{self.field}[{offset}].vector",
                f"has {block.shape[1]} dimensions; {self.field}[0].vector has {self.rows.dim}",
            )
        self.rows.append(block)

    def collection(self) -> Collection:
        field = self.field
        if self.pending:
            self._convert()
        if self.rows is None:
            raise InvalidRequest(field, "is empty; a collection needs at least one vector")
        matrix = self.rows.finish()
        self.rows = None
        id_array = _id_array(self.ids, field)
        self.ids = []
        labels = self.labels
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
        self.labels = []
        return make_collection(
            matrix,
            id_array,
            label_array,
            metric=self.metric,
            fields=(field, f"{field}[].id", f"{field}[].label"),
            metadata=self.metadata,
            dtype=self.dtype,
        )


class _GrowingRows:
    """A float32 (n, d) matrix appended to a block at a time, grown in place.

    ``ndarray.resize`` reallocates; for large arrays the allocator remaps pages rather than
    copying them, so the matrix never exists twice. Growth by a quarter bounds the unused
    (but zero-filled) tail to 25 %; :meth:`finish` trims it.
    """

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.n = 0
        self.array = np.empty((JSONL_BLOCK_ROWS, dim), dtype=np.float32)

    def append(self, block: np.ndarray) -> None:
        need = self.n + len(block)
        if need > len(self.array):
            capacity = max(need, len(self.array) + len(self.array) // 4, len(self.array) + JSONL_BLOCK_ROWS)
            self.array.resize((capacity, self.dim), refcheck=False)
        self.array[self.n : need] = block
        self.n = need

    def finish(self) -> np.ndarray:
        self.array.resize((self.n, self.dim), refcheck=False)
        return self.array


def vector_matrix(
    vectors: list[Any],
    *,
    field: str,
    suffix: str = "",
    metric: str | None = None,
    dtype: str = "float32",
    offset: int = 0,
) -> np.ndarray:
    """Convert JSON vectors to float32 (n, d), naming the first bad element precisely.

    The fast path is one numpy conversion; only when it fails (or yields a non-numeric dtype)
    do we walk the rows to say which one is wrong. Finite rows must also keep the numeric rule
    (:func:`kdbuckets.collection.check_vectors`: ``metric=None`` for queries, whose metric is
    the collection's); NaN, Inf and all-zero rows are left for the caller to name. ``offset``
    is the first row's index in a larger collection, for the names in errors.
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
                try:
                    check_vectors(matrix, f"{field}[]{suffix}", metric=metric, dtype=dtype, finite=False)
                except InvalidRequest as exc:
                    row = exc.field[len(field) + 1 :].split("]", 1)[0]
                    if not (offset and exc.field.startswith(f"{field}[") and row.isdigit()):
                        raise
                    raise InvalidRequest(
                        f"{field}[{offset + int(row)}]{exc.field[len(field) + 2 + len(row) :]}", exc.problem
                    ) from None
                with np.errstate(over="ignore"):  # beyond float32: Inf, named by the caller
                    return matrix.astype(np.float32)
    width = None
    for i, row in enumerate(vectors, start=offset):
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
            raise InvalidRequest(where, f"has {len(row)} dimensions; {field}[{offset}]{suffix} has {width}")
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


def jsonl_items(reader: SourceReader, shards: list[S3Uri], field: str, *, sharded: bool) -> Iterator[Any]:
    """Every item of every shard, in order, parsed line by line as the objects stream in."""
    for uri in shards:
        with _in_shard(uri, sharded):
            for number, line in enumerate(_jsonl_lines(reader, uri, field), start=1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
                    raise SourceError(field, f"line {number} is not valid JSON") from None
                yield item


def _jsonl_lines(reader: SourceReader, uri: S3Uri, field: str) -> Iterator[bytes]:
    """One JSON Lines object's lines (``\\n``-separated), fetched in ranges and decompressed as
    they arrive: only a few MB of the object are in memory at a time."""
    with _reading(uri, field):
        first, size, etag = reader.get_range(uri, 0, CHUNK_BYTES)
        rest = reader.get_ranges(
            uri, [(a, min(a + CHUNK_BYTES, size)) for a in range(len(first), size, CHUNK_BYTES)], etag or None
        )
        pieces = chain([first], rest)
        text = _gunzip(pieces, field) if first[:2] == b"\x1f\x8b" else pieces
        tail = b""
        total = 0
        for data in text:
            total += len(data)
            if total > MAX_JSONL_BYTES:
                raise SourceError(field, f"expands beyond {MAX_JSONL_BYTES >> 30} GiB; split it into shards")
            lines = (tail + data).split(b"\n")
            tail = lines.pop()
            if len(tail) > MAX_JSONL_LINE_BYTES:
                raise SourceError(field, f"has a line longer than {MAX_JSONL_LINE_BYTES >> 20} MiB")
            yield from lines
        if tail:
            yield tail


def _gunzip(pieces: Iterable[bytes], field: str) -> Iterator[bytes]:
    """Decompress gzip data (one or more members) piece by piece, at most CHUNK_BYTES per step."""
    member: Any = None  # the zlib stream of the member being read, once it has input
    try:
        for piece in pieces:
            data = piece
            while data:
                if member is None:
                    member = zlib.decompressobj(31)
                out = member.decompress(data, CHUNK_BYTES)
                data = member.unconsumed_tail
                if member.eof:
                    data = member.unused_data + data
                    member = None
                if out:
                    yield out
        if member is not None:
            out = member.flush()
            if not member.eof:
                raise SourceError(field, "is not a valid gzip file (it ends mid-stream)")
            if out:
                yield out
    except zlib.error:
        raise SourceError(field, "is not a valid gzip file") from None
