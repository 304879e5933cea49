"""The query Lambda driven by the committed events, checked against brute force.

Response contract (DESIGN.md §4): ``results`` (one list per query vector, nearest first, each
hit ``{id, distance, label}``), ``stats`` (``buckets_fetched``, ``bytes_fetched``,
``cache_hits``, ``elapsed_ms``), ``version``; classify mode adds ``predictions``
(``{label, votes}``). With ``probes`` at least the number of buckets the search is exact.
"""

from __future__ import annotations

import json
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from devtools import local

STATS = {"buckets_fetched", "bytes_fetched", "cache_hits", "elapsed_ms"}


def assert_query_response_shape(response: dict[str, Any], nq: int, k: int) -> None:
    assert {"results", "stats", "version"} <= set(response)
    assert isinstance(response["version"], str)
    assert response["version"]
    assert set(response["stats"]) >= STATS
    stats = response["stats"]
    assert all(isinstance(stats[name], int) and stats[name] >= 0 for name in STATS - {"elapsed_ms"})
    assert isinstance(stats["elapsed_ms"], float)
    assert stats["elapsed_ms"] >= 0
    assert len(response["results"]) == nq
    for hits in response["results"]:
        assert 1 <= len(hits) <= k
        for hit in hits:
            assert set(hit) == {"id", "distance", "label"}
            assert isinstance(hit["distance"], float)
        distances = [hit["distance"] for hit in hits]
        assert distances == sorted(distances)
        assert len({hit["id"] for hit in hits}) == len(hits)
    json.dumps(response)  # a Lambda response must be plain JSON


def assert_predictions_shape(response: dict[str, Any], nq: int, labels: set[str]) -> None:
    predictions = response["predictions"]
    assert len(predictions) == nq
    for prediction, hits in zip(predictions, response["results"], strict=True):
        assert set(prediction) == {"label", "votes"}
        votes = prediction["votes"]
        assert set(votes) <= labels
        assert set(votes) <= {hit["label"] for hit in hits}
        assert sum(votes.values()) == pytest.approx(1.0, abs=1e-4)
        assert prediction["label"] == max(votes, key=votes.get)


@pytest.fixture
def tiny(s3: Any, build_handler: ModuleType, lambda_context: Any, load_event: Any) -> dict[str, Any]:
    """The 8-item inline collection of events/build_inline.json, built."""
    return build_handler.lambda_handler(load_event("build_inline.json"), lambda_context)


@pytest.fixture
def demo(s3: Any, demo_index: Any) -> dict[str, Any]:
    """The synthetic sample uploaded and built with events/build_npy.json."""
    return demo_index(s3)


def stored_vectors(sample: local.Sample) -> np.ndarray:
    """The sample as the index holds it: upload_sample stores float16, read back as float32."""
    return sample.vectors.astype(np.float16).astype(np.float32)


# --------------------------------------------------------------------------- tiny collection
def test_query_tiny_event_returns_the_sports_items_nearest_first(
    tiny: dict[str, Any], query_handler: ModuleType, lambda_context: Any, load_event: Any, exact_knn: Any
) -> None:
    event = load_event("query_tiny.json")
    items = load_event("build_inline.json")["source"]["items"]

    response = query_handler.lambda_handler(event, lambda_context)

    assert_query_response_shape(response, nq=1, k=3)
    assert response["version"] == tiny["version"]
    assert response["collection"] == "tiny"
    hits = response["results"][0]
    distances, rows = exact_knn(np.array([it["vector"] for it in items]), np.array(event["vectors"]), 3)
    assert [h["id"] for h in hits] == [items[r]["id"] for r in rows[0]]
    np.testing.assert_allclose([h["distance"] for h in hits], distances[0], atol=1e-6)
    assert {h["label"] for h in hits} == {"sports"}
    assert "predictions" not in response
    assert response["stats"]["buckets_fetched"] <= 2


def test_classify_tiny_event_predicts_food(
    tiny: dict[str, Any], query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    response = query_handler.lambda_handler(load_event("classify_tiny.json"), lambda_context)

    assert_query_response_shape(response, nq=1, k=3)
    assert_predictions_shape(response, nq=1, labels={"sports", "food", "music"})
    assert response["predictions"][0]["label"] == "food"
    assert [h["label"] for h in response["results"][0]] == ["food"] * 3


def test_query_with_k_above_the_collection_size_returns_every_item_once(
    tiny: dict[str, Any], query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    event = {**load_event("query_tiny.json"), "k": 50, "probes": 50}

    response = query_handler.lambda_handler(event, lambda_context)

    assert_query_response_shape(response, nq=1, k=50)
    assert len(response["results"][0]) == tiny["count"]


# --------------------------------------------------------------------------- demo collection
def test_query_event_with_probes_matches_brute_force(
    demo: dict[str, Any],
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    sample: local.Sample,
    exact_knn: Any,
) -> None:
    event = load_event("query_probes.json")
    assert event["probes"] >= demo["buckets"]  # so the committed event is an exact search here

    response = query_handler.lambda_handler(event, lambda_context)

    assert_query_response_shape(response, nq=1, k=event["k"])
    assert response["version"] == demo["version"]
    assert len(response["results"][0]) == event["k"]
    distances, rows = exact_knn(stored_vectors(sample), np.array(event["vectors"]), event["k"])
    assert [h["id"] for h in response["results"][0]] == sample.ids[rows[0]].tolist()
    np.testing.assert_allclose([h["distance"] for h in response["results"][0]], distances[0], atol=1e-5)
    stats = response["stats"]
    assert stats["buckets_fetched"] == demo["buckets"]
    assert stats["bytes_fetched"] > 0
    assert stats["cache_hits"] == 0


def test_query_batch_event_returns_one_result_list_per_vector(
    demo: dict[str, Any],
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    sample: local.Sample,
    exact_knn: Any,
) -> None:
    event = load_event("query_batch.json")

    response = query_handler.lambda_handler(event, lambda_context)

    nq = len(event["vectors"])
    assert_query_response_shape(response, nq=nq, k=event["k"])
    distances, rows = exact_knn(stored_vectors(sample), np.array(event["vectors"]), event["k"])
    for i, hits in enumerate(response["results"]):
        assert [h["id"] for h in hits] == sample.ids[rows[i]].tolist()
        assert [h["label"] for h in hits] == sample.labels[rows[i]].tolist()
        np.testing.assert_allclose([h["distance"] for h in hits], distances[i], atol=1e-5)
    # a batch fetches each bucket once, however many of its queries probe it
    assert response["stats"]["buckets_fetched"] <= demo["buckets"]


def test_classify_basic_event_votes_over_the_neighbours(
    demo: dict[str, Any],
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
    sample: local.Sample,
) -> None:
    event = load_event("classify_basic.json")

    response = query_handler.lambda_handler(event, lambda_context)

    nq = len(event["vectors"])
    assert_query_response_shape(response, nq=nq, k=event["k"])
    assert_predictions_shape(response, nq=nq, labels=set(sample.labels.tolist()))


def test_classify_on_clustered_data_predicts_the_held_out_labels(
    demo: dict[str, Any],
    query_handler: ModuleType,
    lambda_context: Any,
    sample: local.Sample,
) -> None:
    queries, truth = sample.queries[:50], sample.query_labels[:50]
    event = {"collection": local.COLLECTION, "vectors": queries.tolist(), "mode": "classify"}

    response = query_handler.lambda_handler(event, lambda_context)

    predicted = [p["label"] for p in response["predictions"]]
    accuracy = np.mean(np.array(predicted) == truth)
    assert accuracy >= 0.9  # 40 well-separated synthetic clusters


def test_pinned_version_still_answers_after_a_rebuild(
    demo: dict[str, Any],
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    load_event: Any,
) -> None:
    rebuilt = build_handler.lambda_handler(
        {**load_event("build_npy.json"), "bucket_size": 500, "replace": True}, lambda_context
    )
    query_handler._searcher = None  # a new container: it reads the new HEAD

    live = query_handler.lambda_handler(load_event("query_basic.json"), lambda_context)
    pinned = query_handler.lambda_handler(
        {**load_event("query_basic.json"), "version": demo["version"]}, lambda_context
    )

    assert live["version"] == rebuilt["version"] != demo["version"]
    assert pinned["version"] == demo["version"]


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize(
    ("metric", "ranking"),
    [("cosine", None), ("l2", None), ("ip", None), ("cosine", "bbf"), ("l2", "bbf")],
)
def test_search_probing_every_bucket_equals_brute_force(
    s3: Any,
    build_handler: ModuleType,
    query_handler: ModuleType,
    lambda_context: Any,
    sample: local.Sample,
    exact_knn: Any,
    metric: str,
    ranking: str | None,
) -> None:
    data = sample.vectors[:600].astype(np.float64) * np.linspace(0.5, 2.0, 600)[:, None]  # varied norms
    items = [{"id": i, "vector": v.tolist()} for i, v in enumerate(data)]
    built = build_handler.lambda_handler(
        {"collection": f"exact-{metric}", "source": {"items": items}, "metric": metric, "bucket_size": 40},
        lambda_context,
    )
    assert built["buckets"] >= 15
    queries = sample.queries[:20]
    event = {
        "collection": f"exact-{metric}",
        "vectors": queries.tolist(),
        "k": 10,
        "probes": built["buckets"],
    }
    if ranking:
        event["ranking"] = ranking

    response = query_handler.lambda_handler(event, lambda_context)

    distances, rows = exact_knn(data, queries, 10, metric)
    for i, hits in enumerate(response["results"]):
        assert [h["id"] for h in hits] == rows[i].tolist()
        np.testing.assert_allclose([h["distance"] for h in hits], distances[i], atol=1e-5, rtol=1e-6)
    assert response["stats"]["buckets_fetched"] == built["buckets"]
