"""Query by example (stored ids, recommend, analogy) and grouped results, against moto S3.

Indexes are built once per module on seeded data; with every bucket probed the search is
exact, so results are compared with brute force over the same stored vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from kdbuckets import distances, examples, reading
from kdbuckets.builder import BuildParams, build_index
from kdbuckets.collection import make_collection
from kdbuckets.errors import InvalidRequest
from kdbuckets.searcher import Classification, Searcher, SearchResult
from kdbuckets.storage import ObjectStore

ALL = 4096
N, DIM = 1500, 16


@dataclass(frozen=True)
class Built:
    name: str
    vectors: np.ndarray  # as stored (prepared for the metric), (n, d) float32
    ids: np.ndarray
    metadata: list[dict | None]


def _build(store: ObjectStore, name: str, raw: np.ndarray, metric: str, metadata: list | None) -> Built:
    ids = np.array([f"v{i}" for i in range(len(raw))])
    labels = np.array([f"c{i % 3}" for i in range(len(raw))])
    data = make_collection(raw, ids, labels, metric=metric, metadata=metadata)
    build_index(
        store, name, data, BuildParams(metric=metric, bucket_size=100, dtype="float32", part_buckets=4)
    )
    return Built(name, distances.prepare(raw, metric), ids, metadata or [None] * len(raw))


@pytest.fixture(scope="module")
def coll(module_s3_store: ObjectStore) -> Built:
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(20, DIM)) * 3.0
    raw = (centres[rng.integers(0, 20, N)] + rng.normal(size=(N, DIM))).astype(np.float32)
    # documents of 5 chunks; every 7th row has no "doc" key (it belongs to no group)
    meta = [None if i % 7 == 0 else {"doc": f"d{i // 5}"} for i in range(N)]
    return _build(module_s3_store, "ex", raw, "cosine", meta)


@pytest.fixture(scope="module")
def searcher(module_s3_store: ObjectStore) -> Searcher:
    return Searcher(module_s3_store)


def brute(built: Built, query: np.ndarray, metric: str = "cosine") -> np.ndarray:
    """Row indices of every stored vector, nearest first."""
    q = distances.prepare(query[None, :], metric)[0].astype(np.float64)
    v = built.vectors.astype(np.float64)
    d = 1.0 - v @ q if metric == "cosine" else np.linalg.norm(v - q, axis=1)
    return np.argsort(d, kind="stable")


def _ids(result: SearchResult | Classification, i: int = 0) -> list:
    res = result.neighbours if isinstance(result, Classification) else result
    return [x for x in res.ids[i] if x is not None]


def test_ids_and_vectors_give_identical_results_for_the_same_vector(
    searcher: Searcher, coll: Built, module_s3_store: ObjectStore
) -> None:
    wanted = ["v3", "v400", "v1234"]
    stored = reading.fetch(module_s3_store, "ex", wanted, include_vectors=True)
    vectors = np.array([r["vector"] for r in stored.vectors], np.float32)
    for probes in (2, ALL):
        by_id = examples.run(searcher, "ex", examples.ByIds(wanted, exclude_self=False), k=10, probes=probes)
        by_vec = searcher.search("ex", vectors, k=10, probes=probes)
        assert by_id.ids == by_vec.ids
        np.testing.assert_array_equal(by_id.distances, by_vec.distances)
    assert by_id.stats.example_gets > 0


def test_self_exclusion_returns_k_results_without_the_id(searcher: Searcher, coll: Built) -> None:
    wanted = ["v10", "v11", "v999"]
    result = examples.run(searcher, "ex", examples.ByIds(wanted), k=10, probes=ALL)
    for i, ident in enumerate(wanted):
        got = _ids(result, i)
        assert len(got) == 10
        assert ident not in got
        row = int(ident[1:])
        expect = [coll.ids[j] for j in brute(coll, coll.vectors[row]) if j != row][:10]
        assert got == expect


def test_unknown_ids_error_names_them(searcher: Searcher, coll: Built) -> None:
    with pytest.raises(InvalidRequest, match=r"ids.*'nope-1'.*'nope-2'"):
        examples.run(searcher, "ex", examples.ByIds(["v1", "nope-1", "nope-2"]))


def test_classify_accepts_ids(searcher: Searcher, coll: Built) -> None:
    result = examples.run(searcher, "ex", examples.ByIds(["v5", "v6"]), mode="classify", k=5, probes=ALL)
    assert isinstance(result, Classification)
    assert len(result.predicted) == 2
    assert "v5" not in _ids(result, 0)


def test_recommend_with_only_positives_is_a_search_of_their_mean(searcher: Searcher, coll: Built) -> None:
    positive = ["v20", "v21", [float(x) for x in coll.vectors[300]]]
    rec = examples.run(searcher, "ex", examples.Recommend(positive), k=10, probes=ALL)
    mean = np.mean([coll.vectors[20], coll.vectors[21], coll.vectors[300]], axis=0)
    plain = searcher.search("ex", mean[None, :], k=12, probes=ALL)
    assert _ids(rec) == [i for i in _ids(plain) if i not in ("v20", "v21")][:10]


def test_recommend_average_vector_pushes_away_from_negatives(searcher: Searcher, coll: Built) -> None:
    rec = examples.run(searcher, "ex", examples.Recommend(["v20"], ["v21"]), k=10, probes=ALL)
    target = 2 * coll.vectors[20] - coll.vectors[21]
    expect = [coll.ids[j] for j in brute(coll, target) if j not in (20, 21)][:10]
    assert _ids(rec) == expect


def test_best_score_ranks_by_best_positive_minus_best_negative(searcher: Searcher, coll: Built) -> None:
    pos, neg = [40, 900], [41]
    spec = examples.Recommend([f"v{p}" for p in pos], [f"v{n}" for n in neg], "best_score")
    rec = examples.run(searcher, "ex", spec, k=10, probes=ALL)
    v = coll.vectors.astype(np.float64)
    score = (v @ v[pos].T).max(axis=1) - (v @ v[neg].T).max(axis=1)
    score[pos + neg] = -np.inf
    expect = [coll.ids[j] for j in np.argsort(-score, kind="stable")[:10]]
    assert _ids(rec) == expect
    np.testing.assert_allclose(-rec.distances[0], np.sort(score)[::-1][:10], atol=1e-5)


def test_analogy_finds_the_constructed_answer(module_s3_store: ObjectStore, searcher: Searcher) -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(400, DIM)).astype(np.float32) * 3.0
    a, b, c = rng.normal(size=(3, DIM)).astype(np.float32) * 3.0
    raw = np.vstack([base, a, b, c, b - a + c + 0.01]).astype(np.float32)
    built = _build(module_s3_store, "analogy", raw, "l2", None)
    spec = examples.Analogy("v400", "v401", "v402")
    result = examples.run(searcher, "analogy", spec, k=5, probes=ALL)
    got = _ids(result)
    assert got[0] == "v403"
    assert not {"v400", "v401", "v402"} & set(got)
    # the same analogy with the vectors themselves, mixed with ids
    mixed = examples.run(
        searcher, "analogy", examples.Analogy([float(x) for x in built.vectors[400]], "v401", "v402"), k=5
    )
    assert _ids(mixed)[0] == "v403"


def test_groups_never_exceed_group_size_and_are_k_when_possible(searcher: Searcher, coll: Built) -> None:
    queries = coll.vectors[[0, 77, 500, 1400]]
    for size in (1, 3):
        result = searcher.search("ex", queries, k=6, probes=1, group_by="doc", group_size=size)
        assert result.groups is not None
        for i, groups in enumerate(result.groups):
            assert len(groups) == 6  # hundreds of documents within reach
            values = [value for value, _ in groups]
            assert len(set(values)) == 6
            for value, members in groups:
                assert 1 <= len(members) <= size
                assert all(result.metadata[i][j]["doc"] == value for j in members)
            shown = [j for _, members in groups for j in members]
            assert sorted(shown) == list(range(len(shown)))
            assert np.all(np.diff(result.distances[i][: len(shown)]) >= 0)


def test_groups_match_brute_force_when_every_bucket_is_read(searcher: Searcher, coll: Built) -> None:
    q = coll.vectors[123]
    result = searcher.search("ex", q[None, :], k=4, probes=ALL, group_by="doc", group_size=2)
    expect: dict[str, list[str]] = {}
    for j in brute(coll, q):
        meta = coll.metadata[j]
        if meta is None:
            continue  # rows without the key form no group
        doc = meta["doc"]
        if doc in expect or len(expect) < 4:
            members = expect.setdefault(doc, [])
            if len(members) < 2:
                members.append(str(coll.ids[j]))
    got = {value: [result.ids[0][j] for j in members] for value, members in result.groups[0]}
    assert got == expect


def test_grouping_by_ids_excludes_self(searcher: Searcher, coll: Built) -> None:
    result = examples.run(
        searcher, "ex", examples.ByIds(["v8"]), k=3, probes=ALL, group_by="doc", group_size=3
    )
    assert "v8" not in _ids(result)
    assert len(result.groups[0]) == 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"group_by": "doc", "group_size": 11}, "group_size"),
        ({"group_size": 2}, "group_size"),
    ],
)
def test_bad_grouping_names_the_field(searcher: Searcher, coll: Built, kwargs: dict, field: str) -> None:
    with pytest.raises(InvalidRequest, match=field):
        searcher.search("ex", coll.vectors[:1], k=10, **kwargs)


def test_vector_example_with_wrong_dimension_names_it(searcher: Searcher, coll: Built) -> None:
    with pytest.raises(InvalidRequest, match=r"recommend\[1\].*3 dimensions"):
        examples.run(searcher, "ex", examples.Recommend(["v1", [1.0, 2.0, 3.0]]))


def test_zero_analogy_is_refused(searcher: Searcher, coll: Built) -> None:
    with pytest.raises(InvalidRequest, match="analogy"):
        examples.run(searcher, "ex", examples.Analogy("v1", "v1", [0.0] * DIM))
