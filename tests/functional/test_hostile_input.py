"""Hostile events, generated around the valid shapes, for every operation.

Hypothesis mutates one thing in a valid event of each operation — build, search, classify,
upsert, delete, compact, versions, describe, rollback, gc — wrong types for every field,
huge and negative numbers, NaN/Inf, deep nesting, huge strings, wrong dimensions, empty and
oversized lists, path-like collection names, metadata and filter abuse, hostile source
objects. Each example must end in one of:

- :class:`InvalidRequest` whose ``field`` names what was broken (a path prefix of it either
  way, ``[]`` matching any index) or whose message names it, and nothing written to S3;
- :class:`CollectionNotFound` when the collection or version was changed into a well-formed
  unknown one, and nothing written;
- :class:`Conflict` only for a well-formed ``expected_version`` that HEAD does not name;
- success, when the mutation happened to be valid (then only writes may change S3).

Any other exception fails the test. S3 is moto in-process (one module-scoped mock); the
collection is built once through ``kdbuckets.service`` (what the handlers call). The oversized
events (close to and above Lambda's 6 MB request limit) go through the Lambda handlers.

Inputs that once broke the library (a long string inside a vector, bad id lengths, huge
labels, lone surrogates in ids, deeply nested JSON sources) are generated like any other; the
exact inputs are also pinned by the regression tests at the end.

Examples per operation are printed at module teardown (``-s`` or ``-p no:xdist`` shows the
summary line; ``--hypothesis-show-statistics`` gives Hypothesis' own figures).
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import math
import re
import sys
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools import local
from kdbuckets import CollectionNotFound, InvalidRequest, ObjectStore, Searcher, service
from kdbuckets.errors import Conflict

pytestmark = [
    pytest.mark.filterwarnings("ignore:No application metrics to publish:UserWarning"),
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),  # overflow in float32 casts of huge numbers
]

REPO = Path(__file__).resolve().parents[2]
NAME = "hostile"  # the module's collection: 4-d cosine, string ids, labels, metadata
FUZZ_BUILD = "fuzz-build"  # builds that turn out valid publish here, never over NAME
DIM = 4
SRC = f"s3://{local.SOURCE_BUCKET}/hostile/"
MiB = 1 << 20
HUGE_1MB = "h" * MiB
HUGE_7MB = "H" * (7 * MiB)  # above Lambda's 6 MB synchronous request limit on its own

READ_ONLY = {"search", "classify", "versions", "describe"}
EXAMPLES = {  # per operation (~25 ms each); the module stays under a minute on two cores
    "build": 100,
    "search": 150,
    "classify": 100,
    "upsert": 150,
    "delete": 120,
    "compact": 100,
    "versions": 100,
    "describe": 100,
    "rollback": 100,
    "gc": 120,
}
HYPOTHESIS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
RUN: Counter[str] = Counter()
OUTCOMES: Counter[tuple[str, str]] = Counter()


# --------------------------------------------------------------------------- the world
@dataclass
class World:
    """The module's S3 and collection, with what the library's client has written so far."""

    s3: Any
    store: ObjectStore
    searcher: Searcher
    first_version: str
    writes: list[str]  # every non-read S3 request the library's client made
    last: dict[tuple[str, str], str]  # the latest snapshot (S3 changes only through accepted writes)

    def head_version(self) -> str:
        body = self.s3.get_object(Bucket=local.INDEX_BUCKET, Key=f"{NAME}/HEAD")["Body"].read()
        return str(json.loads(body)["version"])


def _items(n: int, *, prefix: str = "h-", metadata: bool = True) -> list[dict[str, Any]]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        vector = (rng.random(DIM) + 0.05).round(3).tolist()
        item: dict[str, Any] = {"id": f"{prefix}{i}", "vector": vector, "label": ["a", "b", "c"][i % 3]}
        if metadata:
            item["metadata"] = {"year": 2015 + i, "lang": ["en", "fr"][i % 2], "tags": ["x", f"t{i % 4}"]}
        out.append(item)
    return out


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=array.dtype.hasobject)
    return buf.getvalue()


def source_objects() -> dict[str, bytes]:
    """Objects in the source bucket: valid ones a build may read, and ones it must refuse."""
    vectors = np.random.default_rng(3).random((12, DIM), dtype=np.float32) + 0.05
    huge_header = io.BytesIO()  # claims 2**40 × 4 floats (16 TiB), carries 32 bytes
    np.lib.format.write_array_header_1_0(
        huge_header, {"descr": "<f4", "fortran_order": False, "shape": (2**40, 4)}
    )
    jsonl = "\n".join(json.dumps(item) for item in _items(6, prefix="j-")).encode()
    return {
        "vectors.npy": _npy(vectors),
        "ids.npy": _npy(np.arange(100, 112, dtype=np.int64)),
        "labels.npy": _npy(np.arange(12, dtype=np.int32) % 3),
        "label_names.json": json.dumps({"0": "zero", "1": "one", "2": "two"}).encode(),
        "items.jsonl": jsonl,
        "items.jsonl.gz": gzip.compress(jsonl),
        # refused:
        "pickled.npy": _npy(np.array([{"x": 1}, None] * 6, dtype=object)),
        "truncated.npy": _npy(vectors)[:-7],
        "huge-header.npy": huge_header.getvalue() + bytes(32),
        "not-npy.npy": b"\x93NUMPY\x09\x09garbage",
        "strings.npy": _npy(np.array(["a"] * 12)),
        "vectors-3d.npy": _npy(np.zeros((2, 2, 2), np.float32)),
        "ids-short.npy": _npy(np.arange(5, dtype=np.int64)),
        "ids-dup.npy": _npy(np.zeros(12, dtype=np.int64)),
        "labels-float.npy": _npy(np.zeros(12, np.float64)),
        "label_names-list.json": b'["zero", "one"]',
        "label_names-partial.json": b'{"0": "zero"}',
        "label_names-bad.json": b"{not json",
        "nan.jsonl": b'{"id": 1, "vector": [NaN, 1, 1, 1]}',
        "badline.jsonl": b'{"id": 1, "vector": [1, 1, 1, 1]}\n{"id": 2, "vec',
        "scalar.jsonl": b"42\n",
        "bad.jsonl.gz": b"\x1f\x8bnot really gzip",
        "empty.jsonl": b"",
        "binary.jsonl": b"\xff\xfe\x00\x01",
        "deep-open.json": b"[" * 100_000,  # json's parser recursed until RecursionError
        "deep-closed.json": b"[" * 50_000 + b"]" * 50_000,
    }


@pytest.fixture(scope="module")
def world(module_s3: Any) -> World:
    """NAME built once (then upserted once, so it has two versions) and the source objects."""
    store = ObjectStore(local.INDEX_BUCKET)
    built = service.build({"collection": NAME, "source": {"items": _items(12)}, "bucket_size": 3}, store)
    service.write({"collection": NAME, "operation": "upsert", "items": _items(2, prefix="second-")}, store)
    for name, body in source_objects().items():
        module_s3.put_object(Bucket=local.SOURCE_BUCKET, Key=f"hostile/{name}", Body=body)
    writes: list[str] = []

    def record(model: Any, **_: Any) -> None:
        if not model.name.startswith(("Get", "Head", "List")):
            writes.append(model.name)

    store.client.meta.events.register("before-call.s3", record)  # the store keeps this client
    return World(module_s3, store, Searcher(store), built["version"], writes, {})


@pytest.fixture(autouse=True)
def _fresh_snapshot(world: World) -> None:
    """Re-read S3 at the start of every test: the examples of one test then list it once each."""
    world.last = snapshot(world.s3, (local.INDEX_BUCKET,))


@pytest.fixture(scope="module", autouse=True)
def _report_examples(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print how many examples each operation ran, once the module is done."""
    yield
    if not RUN:
        return
    parts = []
    for op in EXAMPLES:
        if RUN[op]:
            outcomes = ", ".join(f"{n} {o}" for (o_op, o), n in sorted(OUTCOMES.items()) if o_op == op)
            parts.append(f"{op}={RUN[op]} ({outcomes})")
    line = "hypothesis examples run per operation: " + "; ".join(parts)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and not hasattr(request.config, "workerinput"):
        with capture.global_and_fixture_disabled():  # not an xdist worker: straight to the terminal
            reporter.write("\n")
            reporter.write_line(line)
    else:  # under xdist: in the captured output of the module's last test (-rP shows it)
        print(line)


BOTH = (local.INDEX_BUCKET, local.SOURCE_BUCKET)


def snapshot(s3: Any, buckets: tuple[str, ...] = BOTH) -> dict[tuple[str, str], str]:
    """Every key of ``buckets`` with its ETag (ListObjectsV2)."""
    out = {}
    for bucket in buckets:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            out.update({(bucket, o["Key"]): o["ETag"] for o in page.get("Contents", [])})
    return out


# --------------------------------------------------------------------------- checking one case
@dataclass(frozen=True)
class Case:
    """One event; ``path`` is what was broken, ``must_fail`` whether that makes it invalid."""

    event: Any
    path: str
    must_fail: bool = True


def names_the_field(exc: InvalidRequest, path: str) -> bool:
    """``exc.field`` and ``path`` are one a path prefix of the other ("[]" = any index), or
    the message names ``path`` as a whole word."""
    field = exc.field
    pattern = re.escape(field).replace(re.escape("[]"), r"\[\d+\]")
    if re.match(pattern + r"(?:$|[.\[])", path):
        return True
    if field.startswith(path) and field[len(path) : len(path) + 1] in ("", ".", "["):
        return True
    if path == "collection":  # every message about a query names the collection; its errors say "collection"
        return False
    return re.search(r"(?<![\w.\[])" + re.escape(path) + r"(?!\w)", str(exc)) is not None


def run(op: str, event: Any, world: World) -> dict[str, Any]:
    if op == "build":
        return service.build(event, world.store)
    if op in ("search", "classify"):
        return service.query(event, world.searcher)
    return service.write(event, world.store)


def check(op: str, case: Case, world: World) -> None:
    RUN[op] += 1
    before, requests = world.last, len(world.writes)
    exc: Exception | None = None
    try:
        run(op, case.event, world)
    except (InvalidRequest, CollectionNotFound, Conflict) as caught:  # anything else fails the test
        exc = caught
    # The index bucket is listed after every example; a write anywhere else (the source bucket)
    # would show in world.writes, which sees every request of the library's client.
    world.last = snapshot(world.s3, (local.INDEX_BUCKET,))
    wrote = world.last != before or len(world.writes) > requests
    if isinstance(exc, InvalidRequest):
        OUTCOMES[op, "refused"] += 1
        assert case.path, f"{op}: the valid event was refused: {exc}"
        assert names_the_field(exc, case.path), f"{op}: broke {case.path!r}, error names {exc.field!r}: {exc}"
        assert not wrote, f"{op}: refused ({exc}) but wrote to S3; {_show(case)}"
    elif isinstance(exc, CollectionNotFound):
        OUTCOMES[op, "not found"] += 1
        assert case.path in ("collection", "version"), f"{op}: broke {case.path!r}, got {exc!r}"
        assert not wrote, f"{op}: {exc} but wrote to S3; {_show(case)}"
    elif isinstance(exc, Conflict):
        OUTCOMES[op, "conflict"] += 1
        assert case.path == "expected_version", f"{op}: broke {case.path!r}, got {exc!r}"
        assert not wrote, f"{op}: {exc} but wrote to S3; {_show(case)}"
    else:
        OUTCOMES[op, "accepted"] += 1
        assert not case.must_fail, f"{op}: accepted an invalid {case.path!r}; {_show(case)}"
        dry_run = op == "gc" and isinstance(case.event, dict) and case.event.get("dry_run") is True
        assert not (wrote and (op in READ_ONLY or dry_run)), (
            f"{op} is read-only here but wrote; {_show(case)}"
        )


def _show(case: Case) -> str:
    text = repr(case.event)
    return f"event {text[:300]}{'…' if len(text) > 300 else ''}"


# --------------------------------------------------------------------------- value strategies
def deep_list(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = [value]
    return value


def deep_dict(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value}
    return value


ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=24)  # lone surrogates included
NUMBERS = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -1, 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e-320, 1e308, 3.5e38, -3.5e38]),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    ANY_TEXT,
    st.sampled_from(["", " ", "\x00", "\n", "NaN", "Infinity", "1e999", "$where", "../x", HUGE_1MB]),
)
NESTED = st.one_of(
    st.integers(min_value=2, max_value=900).map(deep_list),
    st.integers(min_value=2, max_value=900).map(deep_dict),
)
# Long strings included: numpy once allocated rows × dims × their length × 4 bytes for them.
VECTOR_ELEMENTS = st.one_of(
    st.none(),
    st.booleans(),
    NUMBERS,
    ANY_TEXT,
    st.sampled_from(["x" * 50_000, HUGE_1MB]),
    NESTED,
    st.lists(NUMBERS, max_size=3),
    st.just({}),
)
JUNK = st.one_of(
    st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
        max_leaves=10,
    ),
    NESTED,
)
HUGE = st.sampled_from([HUGE_1MB, HUGE_7MB])
NOTHING: st.SearchStrategy[Any] = st.nothing()

HOSTILE_NAMES = [
    "../x", "..", ".", "a/b", "/abs", "a\\b", "x/../../y", f"{NAME}/../{NAME}", f"{NAME}/HEAD",
    f"{NAME}\n", f"\n{NAME}", f"{NAME}\r", "ho\x00stile", "ho\tstile", "h\u043estile",  # Cyrillic о
    "\uff48\uff4f\uff53\uff54\uff49\uff4c\uff45", f"{NAME}\u200b", f"\u202e{NAME}", f"{NAME} ", f" {NAME}",
    "", "-x", "_x", ".x", "a..b", "a" * 129, "%2e%2e", "~root", "h\u00e9llo", "\ud800", HUGE_1MB, HUGE_7MB,
]  # fmt: skip


def well_formed_name(name: object) -> bool:
    """The documented collection-name rule (1-128 of [A-Za-z0-9_.-], leading alnum, no "..")."""
    return (
        isinstance(name, str)
        and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name) is not None
        and ".." not in name
    )


def collection_values(*, well_formed_allowed: bool) -> st.SearchStrategy[Any]:
    """Anything but NAME; well-formed unknown names only where they cannot build something."""
    unknown = st.sampled_from(["unknown", "Hostile", "HOSTILE", "hostile2", "hostile.", "h" * 128, "0"])
    values = st.one_of(st.sampled_from(HOSTILE_NAMES), unknown, ANY_TEXT, JUNK)
    values = values.filter(lambda v: v != NAME)
    return values if well_formed_allowed else values.filter(lambda v: not well_formed_name(v))


def is_int(v: object, lo: int, hi: int) -> bool:
    return type(v) is int and lo <= v <= hi


def is_float(v: object, lo: float, hi: float, *, open_low: bool = False) -> bool:
    return type(v) is float and (lo < v if open_low else lo <= v) and v <= hi


def is_number_for_float32(v: object) -> bool:
    if type(v) is int:
        return abs(v) <= 1e38
    return type(v) is float and math.isfinite(v) and abs(v) <= 3.4e38


def one_of_values(*values: object) -> Callable[[object], bool]:
    return lambda v: any(type(v) is type(x) and v == x for x in values)


# --------------------------------------------------------------------------- generic mutations
@dataclass(frozen=True)
class Field:
    """A field of an event: when a value is valid, and values worth trying besides junk."""

    valid: Callable[[object], bool]
    extra: st.SearchStrategy[Any] = NOTHING
    required: bool = False


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any], fields: dict[str, Field]) -> Case:
    """Replace one field (wrong type, out of range, junk), drop a required one, or add one."""
    event = json.loads(json.dumps(base))
    how = draw(st.sampled_from(["replace", "replace", "replace", "drop", "unknown"]))
    if how == "drop":
        name = draw(st.sampled_from(sorted(k for k, f in fields.items() if f.required) or sorted(base)))
        event.pop(name, None)
        return Case(event, name, must_fail=fields[name].required if name in fields else False)
    if how == "unknown":
        name = draw(st.text(min_size=1, max_size=12).filter(lambda n: n not in fields and n != "operation"))
        event[name] = draw(JUNK)
        return Case(event, name)
    name = draw(st.sampled_from(sorted(fields)))
    value = draw(st.one_of(JUNK, fields[name].extra, HUGE))
    event[name] = value
    return Case(event, name, must_fail=not fields[name].valid(value))


# --------------------------------------------------------------------------- vectors, metadata, filters
@st.composite
def vectors_case(
    draw: st.DrawFn, base: list[list[float]], path: str, suffix: str = "", *, any_dim: bool = False
) -> tuple[Any, str, bool]:
    """Broken vectors: (new vectors, broken path, must_fail). ``path`` names the list.

    ``any_dim``: a new collection (a build) may have any dimension from 1 to 4096.
    """
    rows = json.loads(json.dumps(base))
    kind = draw(st.sampled_from(["element", "element", "dims", "ragged", "row", "empty", "not a list"]))
    if kind == "element":
        i, j = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, DIM - 1))
        value = draw(VECTOR_ELEMENTS)
        rows[i][j] = value
        zero_row = all(x == 0 for x in rows[i] if is_number_for_float32(x))
        return rows, f"{path}[{i}]{suffix}[{j}]", not is_number_for_float32(value) or zero_row
    if kind == "dims":
        width = draw(st.sampled_from([0, 1, 2, 3, 5, 8, 384, 5000]))
        return [[0.5] * width for _ in rows], path, not (any_dim and 1 <= width <= 4096)
    if kind == "ragged":
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = rows[i][: draw(st.integers(0, DIM - 1))]
        return rows, f"{path}[{i}]{suffix}", True
    if kind == "row":
        i = draw(st.integers(0, len(rows) - 1))
        rows[i] = draw(JUNK.filter(lambda v: not isinstance(v, list)))
        return rows, f"{path}[{i}]{suffix}", True
    if kind == "empty":
        return [], path, True
    return draw(JUNK.filter(lambda v: not isinstance(v, list))), path, True


METADATA_ABUSE = st.one_of(
    JUNK.filter(lambda v: v is not None and not isinstance(v, dict)),
    st.just({"$where": "sleep(10000)"}),
    st.just({"nested": {"a": {"b": 1}}}),
    st.integers(2, 900).map(lambda d: {"deep": deep_list(d)}),
    st.integers(2, 900).map(lambda d: {"deep": deep_dict(d)}),
    st.just({f"k{i}": i for i in range(33)}),
    st.just({"long": "x" * 257}),
    st.just({"big": "y" * 200, "bigger": "z" * 200, "biggest": "w" * 200, "more": "v" * 200, "x": "u" * 200}),
    st.just({"tags": list(range(17))}),
    st.just({"tags": [[1]]}),
    st.just({"tags": [{"a": 1}]}),
    st.just({"n": math.nan}),
    st.just({"n": math.inf}),
    st.just({"n": 2**53}),
    st.just({"": 1}),
    st.just({"k" * 65: 1}),
    st.just({"a\x00b": 1}),
    st.just({"\ud800": 1}),
    st.just({"s": "\udfff"}),
    st.just({"big": HUGE_1MB}),
)

FILTER_ABUSE = st.one_of(
    JUNK.filter(lambda v: v is not None and not isinstance(v, dict)),
    st.just({"$where": "this.year > 2000"}),
    st.just({"$regex": ".*"}),
    st.just({"year": {"$regex": ".*"}}),
    st.just({"year": {"$where": "1"}}),
    st.just({"year": {"a": 1}}),
    st.just({"year": {}}),
    st.integers(9, 200).map(lambda d: _nest_and(d)),
    st.integers(257, 20_000).map(lambda n: {"year": {"$in": list(range(n))}}),
    st.integers(257, 2_000).map(lambda n: {"year": {"$nin": [str(i) for i in range(n)]}}),
    st.just({f"k{i}": i for i in range(65)}),
    st.just({"$or": [{"year": i} for i in range(65)]}),
    st.just({"$and": []}),
    st.just({"$or": {"year": 1}}),
    st.just({"year": {"$in": 2020}}),
    st.just({"year": {"$in": [[2020]]}}),
    st.just({"year": {"$gte": [2020]}}),
    st.just({"year": {"$gte": True}}),
    st.just({"year": {"$gte": math.nan}}),
    st.just({"year": {"$eq": math.inf}}),
    st.just({"year": 2**53}),
    st.just({"year": {"$exists": 1}}),
    st.just({"lang": "x" * 257}),
    st.just({"lang": HUGE_1MB}),
    st.just({"lang": "\ud800"}),
    st.just({"": 1}),
    st.just({"a\x00": 1}),
    st.just({"$eq": 1}),
    st.just({"year": {"$and": [{"year": 1}]}}),
    st.integers(2, 900).map(lambda d: {"year": deep_list(d)}),
    st.integers(2, 900).map(lambda d: {"year": {"$in": [deep_list(d)]}}),
)

VALID_FILTERS = st.sampled_from(
    [
        {},
        {"year": {"$gte": 2020}},
        {"lang": "en"},
        {"tags": {"$in": ["x", "t1"]}},
        {"$or": [{"year": 2016}, {"lang": "fr"}]},
        {"missing": {"$exists": False}},
        {"year": None},
    ]
)


def _nest_and(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"year": 1}
    for _ in range(depth):
        value = {"$and": [value]}
    return value


# --------------------------------------------------------------------------- query
QUERY_BASE = {
    "collection": NAME,
    "vectors": [[0.85, 0.15, 0.05, 0.1], [0.1, 0.9, 0.2, 0.3]],
    "k": 3,
    "probes": 2,
}

QUERY_FIELDS = {
    "collection": Field(lambda v: v == NAME, collection_values(well_formed_allowed=True), required=True),
    "vectors": Field(lambda v: False, st.nothing(), required=True),
    "k": Field(lambda v: is_int(v, 1, 1000), st.integers(-(2**64), 2**64)),
    "probes": Field(lambda v: v is None or is_int(v, 1, 4096), st.integers(-10, 10_000)),
    "recall_target": Field(lambda v: v is None, st.floats(-1, 2)),  # the base has probes: exclusive
    "filter": Field(lambda v: v is None or isinstance(v, dict), VALID_FILTERS),
    "max_probes": Field(lambda v: v is None or is_int(v, 1, 4096), st.integers(-10, 10_000)),
    "include_metadata": Field(lambda v: type(v) is bool, st.booleans()),
    "mode": Field(
        lambda v: v in ("search", "classify") and type(v) is str, st.sampled_from(["Search", "knn"])
    ),
    "version": Field(
        lambda v: v is None,
        st.sampled_from(["..", "../HEAD", "v1/../../x", "0" * 64, "0" * 65, "v-unknown", "ver\n"]),
    ),
    "ranking": Field(
        lambda v: v is None or v in ("centroid", "bbf"), st.sampled_from(["centroid", "bbf", "best"])
    ),
}


@st.composite
def query_cases(draw: st.DrawFn, mode: str) -> Case:
    base = {**QUERY_BASE, "mode": mode}
    kind = draw(st.sampled_from(["field", "field", "vectors", "vectors", "filter", "filter", "oversized"]))
    if kind == "vectors":
        vectors, path, must_fail = draw(vectors_case(base["vectors"], "vectors"))
        return Case({**base, "vectors": vectors}, path, must_fail)
    if kind == "filter":
        valid = draw(st.booleans())
        value = draw(VALID_FILTERS if valid else FILTER_ABUSE)
        return Case({**base, "filter": value}, "filter", must_fail=not valid)
    if kind == "oversized":
        n = draw(st.sampled_from([1001, 5000]))
        return Case({**base, "vectors": [[0.5] * DIM] * n}, "vectors")
    return draw(mutated(base, QUERY_FIELDS))


@settings(max_examples=EXAMPLES["search"], **HYPOTHESIS)
@given(case=query_cases("search"))
def test_search_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    check("search", case, world)


@settings(max_examples=EXAMPLES["classify"], **HYPOTHESIS)
@given(case=query_cases("classify"))
def test_classify_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    check("classify", case, world)


# --------------------------------------------------------------------------- items (upsert, inline build)
@st.composite
def items_case(
    draw: st.DrawFn, base: list[dict[str, Any]], path: str, *, any_dim: bool = False
) -> tuple[Any, str, bool]:
    """Broken items: (new items, broken path, must_fail)."""
    items = json.loads(json.dumps(base))
    i = draw(st.integers(0, len(items) - 1))
    where = f"{path}[{i}]"
    kind = draw(
        st.sampled_from(["vectors", "vectors", "id", "label", "metadata", "metadata", "item", "shape"])
    )
    if kind == "vectors":
        vectors, broken, must_fail = draw(
            vectors_case([it["vector"] for it in items], path, ".vector", any_dim=any_dim)
        )
        if not isinstance(vectors, list) or len(vectors) != len(items):
            return [{**items[0], "vector": vectors}], f"{path}[0].vector", True
        for item, vector in zip(items, vectors, strict=True):
            item["vector"] = vector
        return items, broken, must_fail
    if kind == "id":
        value = draw(
            st.one_of(JUNK, st.sampled_from([items[0]["id"], 7, -1, 2**63, True, 1.5, "", "i" * 257]))
        )
        items[i]["id"] = value
        duplicate = len(items) > 1 and value == items[0]["id"] and i != 0
        fine = (
            isinstance(value, str)
            and not duplicate
            and _encodable(value)
            and 1 <= len(value.encode("utf-8")) <= 256
        )
        return items, f"{where}.id", not fine
    if kind == "label":
        value = draw(JUNK)
        items[i]["label"] = value
        fine = (
            (type(value) is int or isinstance(value, str))
            and _encodable(str(value))
            and len(str(value)) <= 256
        )
        return items, f"{where}.label", not fine
    if kind == "metadata":
        value = draw(st.one_of(METADATA_ABUSE, st.none(), st.just({"year": 1999, "tags": ["ok"]})))
        items[i]["metadata"] = value
        return items, f"{where}.metadata", value is not None and value != {"year": 1999, "tags": ["ok"]}
    if kind == "item":
        items[i] = draw(JUNK.filter(lambda v: not isinstance(v, dict)))
        return items, where, True
    # shape: a missing vector, an unknown field, or no items at all
    which = draw(st.sampled_from(["no vector", "unknown field", "empty"]))
    if which == "no vector":
        del items[i]["vector"]
        return items, f"{where}.vector", True
    if which == "unknown field":
        items[i][draw(st.sampled_from(["vectors", "Vector", "$where", "embedding"]))] = 1
        return items, where, True
    return [], path, True


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --------------------------------------------------------------------------- build
BUILD_FIELDS = {
    "collection": Field(lambda v: False, collection_values(well_formed_allowed=False), required=True),
    "source": Field(lambda v: False, st.sampled_from([{}, {"items": []}, {"vectors": None}]), required=True),
    "metric": Field(one_of_values("cosine", "l2", "ip"), st.sampled_from(["l2", "L2", "hamming"])),
    "bucket_size": Field(lambda v: is_int(v, 1, 1_000_000), st.integers(-(2**40), 2**40)),
    "max_depth": Field(lambda v: is_int(v, 0, 64), st.integers(-5, 100)),
    "seed": Field(lambda v: is_int(v, 0, 2**32 - 1), st.integers(-(2**40), 2**40)),
    "split": Field(one_of_values("spread", "random"), st.sampled_from(["random", "median"])),
    "projection": Field(one_of_values("pca", "none"), st.sampled_from(["none", "PCA", "lpp"])),
    "dtype": Field(one_of_values("float32", "float16"), st.sampled_from(["float16", "float64", "int8"])),
    "refine": Field(lambda v: is_int(v, 0, 50), st.integers(-5, 10_000)),
    "replicate": Field(lambda v: is_float(v, 0.0, 1.0), st.floats(-1, 2)),
    "ranking": Field(one_of_values("centroid", "bbf"), st.sampled_from(["bbf", "exact"])),
}
BUILD_ITEMS = _items(8, prefix="b-")
HOSTILE_URIS = [
    "s3://", "s3://b", "s3:///key", "s3://Upper/key", "s3://bucket", "file:///etc/passwd",
    "http://169.254.169.254/latest/meta-data/", "https://example.com/x.npy", "../vectors.npy",
    f"{SRC}nope.npy", f"s3://{local.SOURCE_BUCKET}/\x00", f"s3://{local.SOURCE_BUCKET}/a\nb",
    "s3://no-such-bucket-for-kdbuckets/x.npy", f"s3://{local.SOURCE_BUCKET}/" + "k" * 1100, HUGE_1MB,
]  # fmt: skip
SOURCE_URIS = st.one_of(
    st.sampled_from(HOSTILE_URIS),
    st.sampled_from([f"{SRC}{name}" for name in sorted(source_objects())]),
    JUNK.filter(lambda v: v is not None),
)
VALID_AS = {  # (source field, object) pairs that make a valid build with the npy base source
    (field, f"{SRC}{name}")
    for field, names in {
        "vectors": ["vectors.npy"],
        "ids": ["ids.npy"],
        "labels": ["labels.npy", "ids.npy", "ids-dup.npy", "strings.npy"],  # any 12 ints or strings
        "label_names": ["label_names.json"],
        "jsonl": ["items.jsonl", "items.jsonl.gz"],
    }.items()
    for name in names
}


@st.composite
def source_case(draw: st.DrawFn) -> tuple[dict[str, Any], str, bool]:
    """A broken build source: (source, broken path, must_fail)."""
    kind = draw(st.sampled_from(["items", "items", "npy", "jsonl", "shape"]))
    if kind == "items":
        items, path, must_fail = draw(items_case(BUILD_ITEMS, "source.items", any_dim=True))
        return {"items": items}, path, must_fail
    if kind == "npy":
        source = {"vectors": f"{SRC}vectors.npy", "ids": f"{SRC}ids.npy", "labels": f"{SRC}labels.npy"}
        field = draw(st.sampled_from(["vectors", "ids", "labels", "label_names"]))
        source[field] = uri = draw(SOURCE_URIS)
        return source, f"source.{field}", not (isinstance(uri, str) and (field, uri) in VALID_AS)
    if kind == "jsonl":
        uri = draw(SOURCE_URIS)
        return {"jsonl": uri}, "source.jsonl", not (isinstance(uri, str) and ("jsonl", uri) in VALID_AS)
    which = draw(st.sampled_from(["two kinds", "none", "unknown", "ids without vectors"]))
    if which == "two kinds":
        return {"items": BUILD_ITEMS, "jsonl": f"{SRC}items.jsonl"}, "source", True
    if which == "none":
        return {}, "source", True
    if which == "unknown":
        return {"items": BUILD_ITEMS, "url": "http://x"}, "source.url", True
    return {"jsonl": f"{SRC}items.jsonl", "ids": f"{SRC}ids.npy"}, "source.ids", True


@st.composite
def build_cases(draw: st.DrawFn) -> Case:
    base = {"collection": FUZZ_BUILD, "source": {"items": BUILD_ITEMS}, "bucket_size": 3}
    if draw(st.booleans()):
        source, path, must_fail = draw(source_case())
        return Case({**base, "source": source}, path, must_fail)
    # A valid parameter leaves a valid build, which publishes FUZZ_BUILD (accepted).
    return draw(mutated(base, BUILD_FIELDS))


@settings(max_examples=EXAMPLES["build"], **HYPOTHESIS)
@given(case=build_cases())
def test_build_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    check("build", case, world)


# --------------------------------------------------------------------------- write: upsert, delete
UPSERT_BASE = {
    "collection": NAME,
    "operation": "upsert",
    "items": [
        {"id": "u-1", "vector": [0.3, 0.3, 0.3, 0.9], "label": "a", "metadata": {"year": 2024}},
        {"id": "u-2", "vector": [0.9, 0.3, 0.3, 0.3], "label": "b"},
    ],
}
WRITE_FIELD_NAMES = ("items", "ids", "version", "expected_version", "keep_last", "grace_seconds", "dry_run")


def write_fields(operation: str, **own: Field) -> dict[str, Field]:
    """Every write field: ``own`` as given, the others "do not apply" to ``operation``."""
    return {
        "collection": Field(lambda v: v == NAME, collection_values(well_formed_allowed=True), required=True),
        "operation": Field(
            one_of_values(operation), st.sampled_from(["Upsert", "insert", "drop", "gc "]), required=True
        ),
        **{name: Field(lambda v: False) for name in WRITE_FIELD_NAMES},
        **own,
    }


@st.composite
def upsert_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["items", "items", "items", "field", "oversized"]))
    if kind == "items":
        items, path, must_fail = draw(items_case(UPSERT_BASE["items"], "items"))
        return Case({**UPSERT_BASE, "items": items}, path, must_fail)
    if kind == "oversized":
        item = UPSERT_BASE["items"][0]
        return Case({**UPSERT_BASE, "items": [item] * draw(st.sampled_from([5001, 6000]))}, "items")
    fields = write_fields("upsert", items=Field(lambda v: False, st.just([]), required=True))
    return draw(mutated(UPSERT_BASE, fields))


@settings(max_examples=EXAMPLES["upsert"], **HYPOTHESIS)
@given(case=upsert_cases())
def test_upsert_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    check("upsert", case, world)


DELETE_BASE = {"collection": NAME, "operation": "delete", "ids": ["ghost-1", "ghost-2"]}


@st.composite
def delete_cases(draw: st.DrawFn) -> Case:
    kind = draw(st.sampled_from(["ids", "ids", "field", "oversized"]))
    if kind == "ids":
        ids = list(DELETE_BASE["ids"])
        i = draw(st.integers(0, len(ids) - 1))
        value = draw(st.one_of(JUNK, st.integers(), st.sampled_from([2**63, -(2**63) - 1, True, 1.0])))
        ids[i] = value
        fine = isinstance(value, str) and _encodable(value)
        return Case({**DELETE_BASE, "ids": ids}, f"ids[{i}]" if not fine else "ids", must_fail=not fine)
    if kind == "oversized":
        n = draw(st.sampled_from([10_001, 20_000]))
        return Case({**DELETE_BASE, "ids": [f"g{i}" for i in range(n)]}, "ids")
    ids = Field(lambda v: False, st.sampled_from([[], [1, "a"], [[1]], [None]]), required=True)
    return draw(mutated(DELETE_BASE, write_fields("delete", ids=ids)))


@settings(max_examples=EXAMPLES["delete"], **HYPOTHESIS)
@given(case=delete_cases())
def test_delete_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    check("delete", case, world)


# --------------------------------------------------------------------------- write: maintenance
@settings(max_examples=EXAMPLES["compact"], **HYPOTHESIS)
@given(case=mutated({"collection": NAME, "operation": "compact"}, write_fields("compact")))
def test_compact_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    check("compact", case, world)


@settings(max_examples=EXAMPLES["versions"], **HYPOTHESIS)
@given(case=mutated({"collection": NAME, "operation": "versions"}, write_fields("versions")))
def test_versions_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    check("versions", case, world)


VERSION_VALUES = st.sampled_from(
    ["..", ".", "../HEAD", "x/../../HEAD", "HEAD", "0" * 64, "0" * 65, "v\n", "v\x00", "\u0661", ""]
)


@st.composite
def version_or_field(draw: st.DrawFn, base: dict[str, Any], fields: dict[str, Field], name: str) -> Case:
    """Half the time a new value for the version field ``name``, else any other mutation."""
    if draw(st.booleans()):
        return draw(mutated(base, fields))
    value = draw(st.one_of(VERSION_VALUES, JUNK, st.sampled_from(["v1", "20260101T000000000000Z-deadbeef"])))
    return Case({**base, name: value}, name, must_fail=not fields[name].valid(value))


@settings(max_examples=EXAMPLES["describe"], **HYPOTHESIS)
@given(data=st.data())
def test_describe_refuses_hostile_events_naming_the_field(world: World, data: st.DataObject) -> None:
    base = {"collection": NAME, "operation": "describe", "version": world.first_version}
    fields = write_fields(
        "describe", version=Field(lambda v: v == world.first_version, VERSION_VALUES, required=True)
    )
    check("describe", data.draw(version_or_field(base, fields, "version")), world)


@settings(max_examples=EXAMPLES["rollback"], **HYPOTHESIS)
@given(data=st.data())
def test_rollback_refuses_hostile_events_naming_the_field(world: World, data: st.DataObject) -> None:
    live = world.head_version()
    base = {"collection": NAME, "operation": "rollback", "version": live}  # a no-op when valid
    fields = write_fields(
        "rollback",
        version=Field(lambda v: v == live, VERSION_VALUES, required=True),
        expected_version=Field(lambda v: v is None or v == live, VERSION_VALUES | st.just(live)),
    )
    name = data.draw(st.sampled_from(["version", "expected_version"]))
    check("rollback", data.draw(version_or_field(base, fields, name)), world)


GC_BASE = {"collection": NAME, "operation": "gc", "keep_last": 3, "grace_seconds": 900, "dry_run": True}


@settings(max_examples=EXAMPLES["gc"], **HYPOTHESIS)
@given(
    case=mutated(
        GC_BASE,
        write_fields(
            "gc",
            keep_last=Field(lambda v: is_int(v, 1, 1000), st.integers(-(2**40), 2**40)),
            grace_seconds=Field(lambda v: is_int(v, 0, 7 * 86400), st.integers(-(2**40), 2**40)),
            dry_run=Field(lambda v: type(v) is bool, st.booleans()),
        ),
    )
)
def test_gc_refuses_hostile_events_naming_the_field(world: World, case: Case) -> None:
    # One field changes at a time: a valid grace_seconds comes with dry_run, a real sweep
    # (dry_run false) with the 900 s grace, so nothing the other tests read is deleted.
    check("gc", case, world)


# --------------------------------------------------------------------------- oversized, through the handlers
def _import_handler(function: str) -> ModuleType:
    name = f"kdbuckets_hostile_{function}_app"
    spec = importlib.util.spec_from_file_location(name, REPO / "functions" / function / "app.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def handlers(world: World) -> Iterator[dict[str, ModuleType]]:
    """The three Lambda handler modules (imported by path: all are called ``app``)."""
    modules = {
        op: _import_handler(fn) for op, fn in (("build", "build"), ("query", "query"), ("write", "write"))
    }
    modules["query"]._searcher = None
    yield modules
    for function in ("build", "query", "write"):
        sys.modules.pop(f"kdbuckets_hostile_{function}_app", None)


def _set(event: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(event))
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    return out


QUERY = {"collection": NAME, "vectors": [[0.85, 0.15, 0.05, 0.1]], "k": 3, "probes": 2}
UPSERT = {"collection": NAME, "operation": "upsert", "items": [{"id": "o-1", "vector": [0.1, 0.2, 0.3, 0.4]}]}
BUILD = {"collection": FUZZ_BUILD, "source": {"items": BUILD_ITEMS}, "bucket_size": 3}
SEVEN_MB_CASES = [
    # (handler, event, path to the 7 MB string, the field the error must name)
    ("query", QUERY, ("collection",), "collection"),
    ("query", QUERY, ("mode",), "mode"),
    ("query", QUERY, ("version",), "version"),
    ("query", QUERY, ("ranking",), "ranking"),
    ("query", QUERY, ("vectors", 0, 0), "vectors[0][0]"),
    ("query", {**QUERY, "filter": {"lang": "en"}}, ("filter", "lang"), "filter.lang"),
    (
        "query",
        {**QUERY, "filter": {"year": {"$in": [1]}}},
        ("filter", "year", "$in", 0),
        "filter.year.$in[0]",
    ),
    ("build", BUILD, ("collection",), "collection"),
    ("build", BUILD, ("metric",), "metric"),
    ("build", {**BUILD, "source": {"vectors": ""}}, ("source", "vectors"), "source.vectors"),
    ("build", {**BUILD, "source": {"jsonl": ""}}, ("source", "jsonl"), "source.jsonl"),
    ("build", BUILD, ("source", "items", 0, "metadata"), "source.items[0].metadata"),
    ("write", UPSERT, ("collection",), "collection"),
    ("write", UPSERT, ("operation",), "operation"),
    ("write", UPSERT, ("items", 0, "vector", 1), "items[0].vector[1]"),
    (
        "write",
        _set(UPSERT, ("items", 0, "metadata"), {"k": ""}),
        ("items", 0, "metadata", "k"),
        "items[0].metadata.k",
    ),
    ("write", {"collection": NAME, "operation": "describe", "version": ""}, ("version",), "version"),
    ("write", {"collection": NAME, "operation": "rollback", "version": "v"}, ("version",), "version"),
    (
        "write",
        {"collection": NAME, "operation": "rollback", "version": "v"},
        ("expected_version",),
        "expected_version",
    ),
    # A 7 MB id to delete is accepted (see test_delete_refuses_an_id_longer_than_any_stored_id).
]


@pytest.mark.parametrize(
    ("function", "event", "path", "field"), SEVEN_MB_CASES, ids=[c[3] + "-" + c[0] for c in SEVEN_MB_CASES]
)
def test_a_seven_megabyte_string_is_refused_naming_its_field(
    world: World,
    handlers: dict[str, ModuleType],
    lambda_context: Any,
    function: str,
    event: dict[str, Any],
    path: tuple[Any, ...],
    field: str,
) -> None:
    """Lambda never delivers more than 6 MB, but the library has no such guard: field limits must hold."""
    hostile = _set(event, path, HUGE_7MB)
    before = snapshot(world.s3)
    with pytest.raises(InvalidRequest) as excinfo:
        handlers[function].lambda_handler(hostile, lambda_context)
    assert names_the_field(excinfo.value, field), f"error names {excinfo.value.field!r}"
    assert len(str(excinfo.value)) < 1000, "the error must not echo the 7 MB value"
    assert snapshot(world.s3) == before


def _compact(obj: Any) -> int:
    return len(json.dumps(obj, separators=(",", ":")))


def _near_limit_events() -> list[tuple[str, dict[str, Any], str, bool]]:
    """(handler, event, field, near 6 MB): 5-6 MB of JSON whose last part is wrong, or one
    element over a count limit (vectors 1000, items 5000, ids 10000)."""
    wide = [[round(0.001 * (i + j), 3) for j in range(800)] for i in range(1000)]
    meta = {f"k{i:02d}": "v" * 25 for i in range(30)}
    too_big = {**meta, "k30": "w" * 60}
    assert _compact(meta) <= 1024 < _compact(too_big)  # metadata.MAX_METADATA_BYTES
    items = [{"id": f"n-{i:058d}", "vector": [0.1, 0.2, 0.3, 0.4], "metadata": meta} for i in range(5000)]
    items[-1] = {**items[-1], "metadata": too_big}
    build_items = [{"id": i, "vector": [round(0.5 + 0.001 * (i % 500), 3)] * 160} for i in range(5000)]
    build_items[-1] = {"id": 4999, "vector": [0.5] * 159}
    delete = {"collection": NAME, "operation": "delete"}
    return [
        ("query", {**QUERY, "vectors": wide}, "vectors[0]", True),
        ("query", {**QUERY, "vectors": [[0.1, 0.2, 0.3, 0.4]] * 1001}, "vectors", False),
        ("write", {**UPSERT, "items": items}, "items[4999].metadata", True),
        ("write", {**UPSERT, "items": [UPSERT["items"][0]] * 5001}, "items", False),
        ("write", {**delete, "ids": [f"d-{i}" for i in range(10_001)]}, "ids", False),
        ("write", {**delete, "ids": ["x" * 550] * 9999 + [7]}, "ids", True),
        ("build", {**BUILD, "source": {"items": build_items}}, "source.items[4999].vector", True),
    ]


@pytest.mark.parametrize(
    "index",
    range(7),
    ids=lambda i: ["q-wide", "q-1001", "up-meta", "up-5001", "del-10001", "del-mixed", "build-wide"][i],
)
def test_an_event_near_the_six_megabyte_limit_is_refused_naming_its_field(
    world: World, handlers: dict[str, ModuleType], lambda_context: Any, index: int
) -> None:
    function, event, field, near = _near_limit_events()[index]
    size = len(json.dumps(event))
    assert not near or 5 * MiB < size < 6 * MiB, f"{size} bytes: not close to the 6 MB limit"
    before = snapshot(world.s3)
    with pytest.raises(InvalidRequest) as excinfo:
        handlers[function].lambda_handler(event, lambda_context)
    assert names_the_field(excinfo.value, field), f"error names {excinfo.value.field!r}: {excinfo.value}"
    assert snapshot(world.s3) == before


# --------------------------------------------------------------------------- regressions
# Each of these once failed (an unnamed field, a foreign exception, or an allocation out of
# proportion to the request); the generators above now produce such inputs too.
LIMIT = 16 * MiB  # what refusing a ~50 kB request may allocate


def peak_while(fn: Callable[[], Any]) -> tuple[Exception | None, int]:
    """Run ``fn``; return the project error it raised (if any) and the peak traced allocation."""
    tracemalloc.start()
    try:
        fn()
    except (InvalidRequest, CollectionNotFound) as exc:
        return exc, tracemalloc.get_traced_memory()[1]
    else:
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.fixture(scope="module")
def victim(world: World) -> str:
    """A collection of its own for the regression tests, so that one that wrote would not spoil NAME."""
    event = {"collection": "victim", "source": {"items": _items(6, prefix="v-")}, "bucket_size": 3}
    return str(service.build(event, world.store)["collection"])


@pytest.mark.parametrize("op", ["search", "upsert"])
def test_a_long_string_inside_a_vector_is_refused_in_bounded_memory(world: World, op: str) -> None:
    rows = [[0.1, 0.2, 0.3, 0.4] for _ in range(200)]
    rows[0][0] = "x" * 50_000
    if op == "search":
        event: dict[str, Any] = {"collection": NAME, "vectors": rows, "k": 1, "probes": 1}
        field = "vectors[0][0]"
    else:
        items = [{"id": f"s-{i}", "vector": row} for i, row in enumerate(rows)]
        event, field = {"collection": NAME, "operation": "upsert", "items": items}, "items[0].vector[0]"
    exc, peak = peak_while(lambda: run(op, event, world))
    assert isinstance(exc, InvalidRequest)
    assert exc.field == field
    assert peak < LIMIT, f"refusing a {len(json.dumps(event)) >> 10} kB event allocated {peak >> 20} MB"


def test_upsert_refuses_a_huge_label_in_bounded_memory(world: World, victim: str) -> None:
    items = [{"id": f"v-new-{i}", "vector": [0.1, 0.2, 0.3, 0.4 + i], "label": "a"} for i in range(200)]
    items[0]["label"] = "L" * 50_000
    before = snapshot(world.s3)
    exc, peak = peak_while(
        lambda: run("upsert", {"collection": victim, "operation": "upsert", "items": items}, world)
    )
    assert isinstance(exc, InvalidRequest)
    assert exc.field == "items[0].label"
    assert peak < LIMIT, f"allocated {peak >> 20} MB"
    assert snapshot(world.s3) == before


def test_delete_refuses_an_id_longer_than_any_stored_id(world: World, victim: str) -> None:
    ids = ["x" * 50_000] + [f"v-{i}" for i in range(999)]
    before = snapshot(world.s3)
    exc, peak = peak_while(
        lambda: run("delete", {"collection": victim, "operation": "delete", "ids": ids}, world)
    )
    assert isinstance(exc, InvalidRequest)
    assert exc.field == "ids[0]"
    assert peak < LIMIT, f"allocated {peak >> 20} MB"
    assert snapshot(world.s3) == before


def test_delete_refuses_an_id_that_is_not_valid_unicode(world: World) -> None:
    before = snapshot(world.s3)
    with pytest.raises(InvalidRequest) as excinfo:
        run("delete", {"collection": NAME, "operation": "delete", "ids": ["ok", "\ud800"]}, world)
    assert excinfo.value.field == "ids[1]"
    assert snapshot(world.s3) == before


@pytest.mark.parametrize("bad_id", ["", "x" * 257])
def test_upsert_with_an_id_of_a_bad_length_names_the_item(world: World, bad_id: str) -> None:
    items = [{"id": "fine", "vector": [0.1, 0.2, 0.3, 0.4]}, {"id": bad_id, "vector": [0.4, 0.3, 0.2, 0.1]}]
    with pytest.raises(InvalidRequest) as excinfo:
        run("upsert", {"collection": NAME, "operation": "upsert", "items": items}, world)
    assert excinfo.value.field == "items[1].id"


def test_delete_with_an_id_of_the_wrong_type_names_the_element(world: World) -> None:
    with pytest.raises(InvalidRequest) as excinfo:
        run("delete", {"collection": NAME, "operation": "delete", "ids": [1.5]}, world)
    assert excinfo.value.field == "ids[0]"
    assert "integer" in excinfo.value.problem


@pytest.mark.parametrize("field", ["label_names", "jsonl"])
def test_build_from_deeply_nested_json_is_a_source_error(world: World, field: str) -> None:
    world.s3.put_object(Bucket=local.SOURCE_BUCKET, Key="hostile/deep.json", Body=b"[" * 100_000)
    source = (
        {"vectors": f"{SRC}vectors.npy", "labels": f"{SRC}labels.npy", "label_names": f"{SRC}deep.json"}
        if field == "label_names"
        else {"jsonl": f"{SRC}deep.json"}
    )
    before = snapshot(world.s3)
    with pytest.raises(InvalidRequest) as excinfo:
        run("build", {"collection": FUZZ_BUILD, "source": source}, world)
    assert excinfo.value.field == f"source.{field}"
    assert snapshot(world.s3) == before
