"""Every decoder of stored or source bytes refuses hostile input the same way.

codec.loads, bucket.decode_bucket, manifest.decode_manifest, manifest.decode_head,
directory.decode_shard and metadata.MetadataColumns.decode raise :class:`CorruptObject`;
sources.load_npy raises :class:`SourceError`. Never another exception, never an allocation
out of proportion to the input (a ~100-byte object claiming 2**31 elements must not make us
reserve gigabytes: ``tracemalloc`` peak stays under 10 MB), and never pickle.

Inputs come from Hypothesis: random bytes, msgpack headers whose lengths lie (arrays, maps,
bin, str and ext claiming up to 2**32-1 elements with a short body), deep nesting, ext types,
and single-field mutations of real objects (a bucket with string ids, labels, dedup keys and
metadata; its manifest; an id-directory shard; HEAD) built once on moto. A decoder that
accepts a mutated object must return values of the declared types.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kdbuckets import codec, layout
from kdbuckets.bucket import Bucket, decode_bucket
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.directory import Shard, decode_shard
from kdbuckets.errors import CorruptObject, SourceError
from kdbuckets.manifest import (
    Head,
    Manifest,
    Part,
    PartTable,
    Root,
    decode_head,
    decode_manifest,
    decode_part,
    decode_stored,
    encode_manifest,
)
from kdbuckets.metadata import MetadataColumns
from kdbuckets.sources import load_npy
from kdbuckets.storage import ObjectStore
from tests.conftest import read_manifest

KEY = "hostile/buckets/x"
MiB = 1 << 20
PEAK_LIMIT = 10 * MiB
HYPOTHESIS = {
    "deadline": None,
    "derandomize": True,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


# --------------------------------------------------------------------------- real objects to mutate
class Samples:
    """Encoded objects of one small collection (a plain class: Hypothesis prints it by repr)."""

    def __init__(
        self,
        bucket: bytes,
        manifest: bytes,
        head: bytes,
        shard: bytes,
        n_buckets: int,
        root: bytes,
        part: bytes,
    ) -> None:
        self.bucket = bucket  # string ids, labels, dedup keys (replicated) and metadata
        self.manifest = manifest  # the flat format 1
        self.root = root  # format 2: the root of the hierarchy, and one of its parts
        self.part = part
        self.root_obj = decode_stored(root, key="root")
        self.head = head
        self.shard = shard
        self.n_buckets = n_buckets
        node = msgpack.unpackb(bucket, raw=False)
        self.metadata_node: dict[str, Any] = node["metadata"]
        self.metadata_rows: int = node["count"]

    def __repr__(self) -> str:
        sizes = f"bucket={len(self.bucket)} B, manifest={len(self.manifest)} B, shard={len(self.shard)} B"
        return f"Samples({sizes})"


@pytest.fixture(scope="module")
def samples(module_s3_store: ObjectStore) -> Samples:
    rng = np.random.default_rng(11)
    n = 40
    data = make_collection(
        rng.standard_normal((n, 6)).astype(np.float32),
        np.array([f"doc-{i}" for i in range(n)]),
        np.array([["red", "green", "blue"][i % 3] for i in range(n)]),
        metric="cosine",
        metadata=[
            {"year": 2000 + i, "lang": ["en", "fr"][i % 2], "tags": ["a", f"t{i % 3}"]} for i in range(n)
        ],
    )
    built = build_index(module_s3_store, "hostile", data, BuildParams(bucket_size=8, replicate=0.25))
    head, _ = module_s3_store.get(layout.head_key("hostile"))
    root_body, _ = module_s3_store.get(built.manifest_key)
    manifest = read_manifest(module_s3_store, built.manifest_key)
    manifest_body = encode_manifest(manifest)  # the flat format, still read for old collections
    root = decode_stored(root_body, key="root")
    part_body, _ = module_s3_store.get(layout.part_key("hostile", root.parts.fingerprints[0]))
    bucket, _ = module_s3_store.get(layout.bucket_key("hostile", manifest.buckets.fingerprints[0]))
    shard, _ = module_s3_store.get(layout.id_shard_key("hostile", manifest.id_shards[0]))
    node = msgpack.unpackb(bucket, raw=False)
    assert node.get("metadata") is not None, "the sample bucket must carry metadata"
    assert node.get("keys") is not None, "the sample bucket must carry dedup keys"
    return Samples(bucket, manifest_body, head, shard, manifest.n_buckets, root_body, part_body)


#: A root for decoding part objects without a collection at hand (dimension 4, 4 buckets).
_TINY_ROOT = Root(
    collection="c",
    version="v",
    created_at="",
    dim=4,
    metric="l2",
    dtype="float32",
    count=0,
    id_kind="int",
    label_names=None,
    params={},
    n_buckets=4,
    parts=PartTable([], *([np.zeros(0, np.int64)] * 4), np.zeros((0, 4), np.float32)),
    tree_ref="0" * 64,
    part_buckets=0,
    route_parts=2,
)


# --------------------------------------------------------------------------- running a decoder
def _decoders(samples: Samples | None) -> dict[str, Callable[[bytes], Any]]:
    n_buckets = samples.n_buckets if samples else 4
    rows = samples.metadata_rows if samples else 3
    return {
        "codec.loads": lambda body: codec.loads(body, key=KEY),
        "decode_bucket": lambda body: decode_bucket(body, key=KEY),
        "decode_manifest": lambda body: decode_manifest(body, key=KEY),
        "decode_stored": lambda body: decode_stored(body, key=KEY),
        "decode_part": lambda body: decode_part(
            body, key=KEY, root=samples.root_obj if samples else _TINY_ROOT
        ),
        "decode_head": lambda body: decode_head(body, key=KEY),
        "decode_shard": lambda body: decode_shard(
            body, key=KEY, expected_fingerprint=codec.fingerprint(body), n_buckets=n_buckets
        ),
        "MetadataColumns.decode": lambda body: MetadataColumns.decode(
            codec.loads(body, key=KEY), rows, key=KEY
        ),
        "load_npy": lambda body: load_npy(body, "source.vectors"),
    }


DECODER_NAMES = list(_decoders(None))
EXPECTED = {name: CorruptObject for name in DECODER_NAMES} | {"load_npy": SourceError}


def refuses_in_bounded_memory(name: str, decode: Callable[[bytes], Any], body: bytes) -> Any:
    """Decode ``body``: the expected error or a result, under the allocation limit.

    Any other exception propagates and fails the test. Returns the result (None if refused).
    """
    tracemalloc.start()
    try:
        result = decode(body)
    except EXPECTED[name]:
        result = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"{name} allocated {peak >> 20} MB for {len(body)} bytes"
    return result


# --------------------------------------------------------------------------- hostile byte strings
MSGPACK_LENGTH_HEADERS = {  # type byte -> struct format of its length field
    0xC4: ">B", 0xC5: ">H", 0xC6: ">I",  # bin 8/16/32
    0xD9: ">B", 0xDA: ">H", 0xDB: ">I",  # str 8/16/32
    0xDC: ">H", 0xDD: ">I",  # array 16/32
    0xDE: ">H", 0xDF: ">I",  # map 16/32
    0xC7: ">B", 0xC8: ">H", 0xC9: ">I",  # ext 8/16/32 (a type byte follows the length)
}  # fmt: skip


@st.composite
def lying_header(draw: st.DrawFn) -> bytes:
    """A msgpack container/bytes header claiming up to 2**32-1 elements, with a short body."""
    code = draw(st.sampled_from(sorted(MSGPACK_LENGTH_HEADERS)))
    fmt = MSGPACK_LENGTH_HEADERS[code]
    limit = {">B": 0xFF, ">H": 0xFFFF, ">I": 0xFFFFFFFF}[fmt]
    length = draw(st.sampled_from([limit, limit - 1, 2**31 if fmt == ">I" else limit, 1000 % (limit + 1)]))
    header = bytes([code]) + struct.pack(fmt, length)
    if code in (0xC7, 0xC8, 0xC9):
        header += bytes([draw(st.integers(0, 255))])
    return header + draw(st.binary(max_size=64))


def _in_a_bucket_map(value: bytes) -> bytes:
    """A map that looks like a bucket up to ``value`` (raw msgpack bytes) under "vectors"."""
    head = msgpack.packb({"format": "kdbuckets/bucket", "format_version": 1, "count": 2, "dim": 2})
    return bytes([head[0] + 1]) + head[1:] + msgpack.packb("vectors") + value


DEEP = st.one_of(
    st.integers(100, 200_000).map(lambda d: b"\x91" * d + b"\xc0"),  # [[[...nil...]]]
    st.integers(100, 50_000).map(lambda d: b"\x81\xa1k" * d + b"\xc0"),  # {"k": {"k": ...}}
    st.integers(100, 50_000).map(lambda d: b"[" * d),  # JSON (HEAD) arrays
    st.integers(100, 50_000).map(lambda d: b'{"a":' * d),  # JSON objects
)
EXT = st.one_of(
    st.tuples(
        st.sampled_from([0xD4, 0xD5, 0xD6, 0xD7, 0xD8]),
        st.integers(0, 255),
        st.binary(min_size=16, max_size=16),
    ).map(lambda t: bytes([t[0], t[1]]) + t[2][: {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}[t[0]]]),
    st.integers(0, 127).map(lambda code: msgpack.packb(msgpack.ExtType(code, b"payload"))),
    st.integers(128, 255).map(lambda code: bytes([0xC7, 7, code]) + b"payload"),  # negative ext codes
    st.just(msgpack.packb({"t": msgpack.Timestamp(1, 2)})),
)
HOSTILE_BYTES = st.one_of(
    st.binary(max_size=128),
    lying_header(),
    lying_header().map(_in_a_bucket_map),
    EXT,
    EXT.map(_in_a_bucket_map),
    DEEP,
    st.binary(max_size=100).map(lambda b: b"\x93NUMPY" + b),
    st.binary(max_size=100).map(lambda b: b'{"format": "kdbuckets/head"' + b),
    st.just(msgpack.packb({1: 2})),  # non-string keys
    st.just(msgpack.packb([1, 2, 3])),  # not a map
    st.just(msgpack.packb({"format": "kdbuckets/bucket"}) + b"trailing"),
)


@settings(max_examples=600, **HYPOTHESIS)
@given(body=HOSTILE_BYTES, name=st.sampled_from(DECODER_NAMES))
def test_decoders_refuse_hostile_bytes_in_bounded_memory(name: str, body: bytes) -> None:
    refuses_in_bounded_memory(name, _decoders(None)[name], body)


@pytest.mark.parametrize("name", [n for n in DECODER_NAMES if n not in ("decode_head", "load_npy")])
@pytest.mark.parametrize(
    "body",
    [
        b"\xdd\x80\x00\x00\x00" + b"\x00" * 95,  # array32 claiming 2**31 elements
        b"\xdf\xff\xff\xff\xff" + b"\xc0" * 95,  # map32 claiming 2**32-1 pairs
        b"\xc6\x80\x00\x00\x00" + b"x" * 95,  # bin32 longer than the body
        b"\xdb\xff\xff\xff\xff" + b"x" * 95,  # str32 longer than the body
        b"\xc9\x7f\xff\xff\xff\x05" + b"x" * 94,  # ext32
        b"\x91" * 100,  # 100 nested arrays, no end
    ],
    ids=["array32", "map32", "bin32", "str32", "ext32", "nested"],
)
def test_a_100_byte_lie_is_refused_without_allocating_what_it_claims(name: str, body: bytes) -> None:
    assert len(body) == 100
    with pytest.raises(CorruptObject):
        _decoders(None)[name](body)
    refuses_in_bounded_memory(name, _decoders(None)[name], body)


# --------------------------------------------------------------------------- mutations of real objects
def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``obj`` (dict keys and list indices), the root included."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:8]):  # long lists (fingerprints, vocabularies): the first few
            out += _paths(v, (*prefix, i))
    return out


MSGPACK_INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        MSGPACK_INTS,
        st.sampled_from([-1, 0, 1, 2, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -(2**63)]),
        st.floats(),
        st.text(max_size=16),
        st.binary(max_size=64),
        st.sampled_from(
            ["<f4", "<f2", "<i8", "<i4", "|u1", "|O", ">f4", "<U10", "V8", "float32", "kdbuckets/bucket"]
        ),
    ),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
ARRAY_NODES = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["<f4", "<f2", "<f8", "<i4", "<i8", "<u8", "|u1", "|i1", "|O", "<c8", "V4"]),
        "shape": st.lists(
            st.one_of(st.integers(-2, 8), st.sampled_from([2**30, 2**31 - 1, 2**31, 2**32])), max_size=4
        ),
        "data": st.binary(max_size=96),
    }
)


@st.composite
def mutation(draw: st.DrawFn, obj: Any) -> Any:
    """``obj`` (decoded msgpack or JSON) with one node replaced, deleted, grown or truncated."""
    obj = msgpack.unpackb(msgpack.packb(obj, use_bin_type=True), raw=False, strict_map_key=False)
    path = draw(st.sampled_from(_paths(obj)))
    if not path:
        return draw(VALUES)
    parent = obj
    for part in path[:-1]:
        parent = parent[part]
    old = parent[path[-1]]
    how = draw(st.sampled_from(["replace", "replace", "array", "delete", "bytes", "extra key"]))
    if how == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how == "array":
        parent[path[-1]] = draw(ARRAY_NODES)
    elif how == "bytes" and isinstance(old, bytes) and old:
        cut = draw(st.integers(0, len(old)))
        parent[path[-1]] = draw(st.sampled_from([old[:cut], old + old[:cut], bytes(len(old)), old[::-1]]))
    elif how == "extra key" and isinstance(old, dict):
        old[draw(st.text(max_size=8))] = draw(VALUES)
    else:
        parent[path[-1]] = draw(VALUES)
    return obj


def _check_bucket(b: Bucket) -> None:
    assert b.vectors.dtype == np.float32
    assert b.vectors.ndim == 2
    assert len(b.ids) == b.count
    assert b.labels is None or b.labels.shape == (b.count,)
    assert b.keys is None or b.keys.shape == (b.count,)
    assert b.metadata is None or b.metadata.count == b.count


def _check_manifest(m: Manifest) -> None:
    for name, kind in (
        ("collection", str),
        ("version", str),
        ("params", dict),
        ("extra", dict),
        ("dim", int),
    ):
        assert isinstance(getattr(m, name), kind), f"{name} decoded as {type(getattr(m, name)).__name__}"
    assert m.parent is None or isinstance(m.parent, str), f"parent decoded as {type(m.parent).__name__}"


@settings(max_examples=400, **HYPOTHESIS)
@given(data=st.data())
def test_decode_bucket_refuses_or_returns_a_consistent_bucket(samples: Samples, data: st.DataObject) -> None:
    mutated = data.draw(mutation(msgpack.unpackb(samples.bucket, raw=False)))
    body = msgpack.packb(mutated, use_bin_type=True)
    bucket = refuses_in_bounded_memory("decode_bucket", _decoders(samples)["decode_bucket"], body)
    if bucket is not None:
        _check_bucket(bucket)


@settings(max_examples=400, **HYPOTHESIS)
@given(data=st.data())
def test_decode_manifest_refuses_or_returns_a_consistent_manifest(
    samples: Samples, data: st.DataObject
) -> None:
    obj = msgpack.unpackb(samples.manifest, raw=False)
    mutated = data.draw(mutation(obj))
    body = msgpack.packb(mutated, use_bin_type=True)
    manifest = refuses_in_bounded_memory("decode_manifest", _decoders(samples)["decode_manifest"], body)
    if manifest is not None:
        _check_manifest(manifest)


@settings(max_examples=200, **HYPOTHESIS)
@given(data=st.data())
def test_decode_root_refuses_or_returns_a_consistent_root(samples: Samples, data: st.DataObject) -> None:
    mutated = data.draw(mutation(msgpack.unpackb(samples.root, raw=False)))
    body = msgpack.packb(mutated, use_bin_type=True)
    root = refuses_in_bounded_memory("decode_stored", _decoders(samples)["decode_stored"], body)
    if isinstance(root, Root):
        n = len(root.parts)
        assert root.parts.centroids.shape == (n, root.dim)
        assert int(root.parts.buckets.sum()) == root.n_buckets
        assert all(len(a) == n for a in (root.parts.sizes, root.parts.nonempty, root.parts.rows))
    elif root is not None:
        _check_manifest(root)


@settings(max_examples=200, **HYPOTHESIS)
@given(data=st.data())
def test_decode_part_refuses_or_returns_a_consistent_part(samples: Samples, data: st.DataObject) -> None:
    mutated = data.draw(mutation(msgpack.unpackb(samples.part, raw=False)))
    body = msgpack.packb(mutated, use_bin_type=True)
    part = refuses_in_bounded_memory("decode_part", _decoders(samples)["decode_part"], body)
    if part is not None:
        assert isinstance(part, Part)
        m = len(part.ids)
        assert len(part.buckets.fingerprints) == m
        assert part.buckets.centroids.shape == (m, samples.root_obj.dim)
        assert np.all((part.ids >= 0) & (part.ids < samples.root_obj.n_buckets))


@settings(max_examples=300, **HYPOTHESIS)
@given(data=st.data())
def test_decode_shard_refuses_or_returns_a_consistent_shard(samples: Samples, data: st.DataObject) -> None:
    mutated = data.draw(mutation(msgpack.unpackb(samples.shard, raw=False)))
    body = msgpack.packb(mutated, use_bin_type=True)
    shard = refuses_in_bounded_memory("decode_shard", _decoders(samples)["decode_shard"], body)
    if shard is not None:
        assert isinstance(shard, Shard)
        assert shard.keys.shape == shard.primary.shape == shard.secondary.shape
        assert int(shard.primary.max(initial=0)) < samples.n_buckets


@settings(max_examples=400, **HYPOTHESIS)
@given(data=st.data())
def test_metadata_decode_refuses_or_returns_consistent_columns(samples: Samples, data: st.DataObject) -> None:
    node = data.draw(mutation(samples.metadata_node))
    tracemalloc.start()
    try:
        columns = MetadataColumns.decode(node, samples.metadata_rows, key=KEY)
    except CorruptObject:
        columns = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < PEAK_LIMIT, f"allocated {peak >> 20} MB"
    if columns is not None:
        assert columns.count == samples.metadata_rows
        rows = columns.take(np.arange(columns.count))  # stored JSON must come back as objects
        assert all(r is None or isinstance(r, dict) for r in rows)


@settings(max_examples=300, **HYPOTHESIS)
@given(data=st.data())
def test_decode_head_refuses_or_returns_a_valid_pointer(samples: Samples, data: st.DataObject) -> None:
    doc = data.draw(mutation(json.loads(samples.head)))
    try:
        body = json.dumps(doc).encode()
    except (TypeError, ValueError):  # bytes and NaN have no JSON form: send the raw repr instead
        body = repr(doc).encode()
    head = refuses_in_bounded_memory("decode_head", _decoders(samples)["decode_head"], body)
    if head is not None:
        assert isinstance(head, Head)
        assert all(isinstance(v, str) for v in (head.version, head.manifest_key, head.sha256))


# --------------------------------------------------------------------------- .npy sources
UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    UNPICKLED.append("unpickled")
    return "trap"


class Trap:
    """Unpickling a Trap calls :func:`_record_unpickling` (a harmless stand-in for os.system)."""

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return _record_unpickling, ()


def _npy(header: dict[str, Any], payload: bytes, version: tuple[int, int] = (1, 0)) -> bytes:
    text = repr(header).encode("latin1")
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    length = struct.pack("<H", len(text)) if version[0] == 1 else struct.pack("<I", len(text))
    return b"\x93NUMPY" + bytes(version) + length + text + payload


def test_load_npy_never_unpickles_an_object_array() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([Trap(), Trap()], dtype=object), allow_pickle=True)
    assert b"_record_unpickling" in buf.getvalue(), "the file must carry the pickled trap"
    with pytest.raises(SourceError, match=r"source\.vectors.*Python objects"):
        load_npy(buf.getvalue(), "source.vectors")
    assert UNPICKLED == []
    pickle.loads(pickle.dumps(Trap()))  # the trap is live: unpickling it is recorded
    assert UNPICKLED == ["unpickled"]
    UNPICKLED.clear()


@pytest.mark.parametrize(
    "descr", ["|O", [("a", "<f4"), ("b", "|O")], [("nested", [("x", "|O")])], "|O8"], ids=str
)
def test_load_npy_refuses_any_dtype_holding_objects(descr: Any) -> None:
    payload = pickle.dumps([Trap()] * 3)
    with pytest.raises(SourceError):
        load_npy(_npy({"descr": descr, "fortran_order": False, "shape": (3,)}, payload), "source.ids")
    assert UNPICKLED == []


NPY_DESCRS = st.sampled_from(
    ["<f4", ">f8", "<i8", "|u1", "<U4", "|S3", "|b1", "<c16", "V8", "|O", "<U2147483647", "V2147483647",
     "<M8[s]", "<m8", "", "nonsense", "<f4, <f4", 42, None, [("a", "<f4")], [("a", "|O")], [("a",)]]
)  # fmt: skip
NPY_SHAPES = st.one_of(
    st.lists(st.integers(-3, 2**62), max_size=4).map(tuple),
    st.sampled_from([(2**31,), (2**40, 4), (2**62, 2**62), (-1,), (1.5,), ("3",), [3], 3, None, ((2,),)]),
)


@st.composite
def hostile_npy(draw: st.DrawFn) -> bytes:
    header = {
        "descr": draw(NPY_DESCRS),
        "fortran_order": draw(st.one_of(st.booleans(), st.sampled_from([0, "yes", None]))),
        "shape": draw(NPY_SHAPES),
    }
    if draw(st.booleans()):
        header[draw(st.sampled_from(["extra", "descr2"]))] = 1
    if draw(st.integers(0, 9)) == 0:
        del header[draw(st.sampled_from(sorted(header)))]
    payload = draw(st.one_of(st.binary(max_size=64), st.just(pickle.dumps([Trap()]))))
    body = _npy(header, payload, draw(st.sampled_from([(1, 0), (2, 0), (3, 0), (9, 9)])))
    if draw(st.booleans()):  # a lying header length
        cut = draw(st.integers(0, len(body)))
        body = body[:8] + struct.pack("<H", draw(st.integers(0, 0xFFFF))) + body[10:cut]
    return body


@settings(max_examples=600, **HYPOTHESIS)
@given(body=hostile_npy())
def test_load_npy_refuses_hostile_headers_in_bounded_memory_without_unpickling(body: bytes) -> None:
    array = refuses_in_bounded_memory("load_npy", _decoders(None)["load_npy"], body)
    assert UNPICKLED == []
    if array is not None:
        assert isinstance(array, np.ndarray)
        assert not array.dtype.hasobject
        assert array.nbytes <= len(body)


# --------------------------------------------------------------------------- regressions
# Each input below once escaped its decoder with a foreign exception (or unbounded work); the
# properties above no longer exclude them, and these pin the exact inputs.
def test_decode_head_refuses_deeply_nested_json() -> None:
    with pytest.raises(CorruptObject):
        decode_head(b"[" * 100_000, key="c/HEAD")


@pytest.mark.parametrize(("field", "value"), [("extra", [1, 2]), ("parent", 7)])
def test_decode_manifest_refuses_extra_or_parent_of_the_wrong_type(
    samples: Samples, field: str, value: Any
) -> None:
    obj = msgpack.unpackb(samples.manifest, raw=False)
    obj[field] = value
    with pytest.raises(CorruptObject):
        decode_manifest(msgpack.packb(obj, use_bin_type=True), key=KEY)


def test_unpack_array_refuses_a_shape_whose_size_overflows() -> None:
    node = {"dtype": "<f4", "shape": [2**30, 2**30, 16], "data": b""}
    with pytest.raises(CorruptObject):
        codec.unpack_array(node, key=KEY, name="a")


@pytest.mark.parametrize("dtype", [["<f4"], {"a": 1}])
def test_unpack_array_refuses_an_unhashable_dtype(samples: Samples, dtype: Any) -> None:
    obj = msgpack.unpackb(samples.bucket, raw=False)
    obj["vectors"]["dtype"] = dtype
    with pytest.raises(CorruptObject):
        decode_bucket(msgpack.packb(obj, use_bin_type=True), key=KEY)


@pytest.mark.parametrize("header", [b"{", b"{'descr': ", b"{'descr': '<f4', 'shape': (2,"])
def test_load_npy_refuses_a_header_with_an_unclosed_bracket(header: bytes) -> None:
    body = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    with pytest.raises(SourceError):
        load_npy(body, "source.vectors")
