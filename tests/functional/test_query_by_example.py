"""Query by stored id, recommend, analogy and grouped results through the query Lambda.

The committed events (``events/query_by_id*.json``, ``recommend*.json``, ``analogy.json``,
``query_group.json``) run against the 8-item inline collection with every bucket probed, so
each answer is checked against brute force over the items themselves.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np
import pytest

from kdbuckets.errors import InvalidRequest


@pytest.fixture
def tiny(s3: Any, build_handler: ModuleType, lambda_context: Any, load_event: Any) -> dict[str, Any]:
    return build_handler.lambda_handler(load_event("build_inline.json"), lambda_context)


@pytest.fixture
def items(load_event: Any) -> dict[str, np.ndarray]:
    rows = load_event("build_inline.json")["source"]["items"]
    return {it["id"]: np.array(it["vector"], np.float64) / np.linalg.norm(it["vector"]) for it in rows}


def nearest(items: dict[str, np.ndarray], q: np.ndarray, skip: tuple[str, ...] = ()) -> list[str]:
    q = q / np.linalg.norm(q)
    return sorted((i for i in items if i not in skip), key=lambda i: 1.0 - float(items[i] @ q))


def ids_of(hits: list[dict[str, Any]]) -> list[str]:
    return [h["id"] for h in hits]


def test_query_by_id_event_excludes_each_query_item(
    tiny: Any, query_handler: ModuleType, lambda_context: Any, load_event: Any, items: Any
) -> None:
    response = query_handler.lambda_handler(load_event("query_by_id.json"), lambda_context)
    for ident, hits in zip(["sport-1", "food-1"], response["results"], strict=True):
        assert ids_of(hits) == nearest(items, items[ident], (ident,))[:3]
    assert response["stats"]["example_gets"] > 0


def test_ids_and_vectors_give_identical_results(
    tiny: Any, query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    by_id = query_handler.lambda_handler(load_event("query_by_id_keep_self.json"), lambda_context)
    fetched = query_handler.lambda_handler(
        {"collection": "tiny", "operation": "fetch", "ids": ["sport-1"], "include_vectors": True},
        lambda_context,
    )
    event = {"collection": "tiny", "vectors": [fetched["vectors"][0]["vector"]], "k": 3, "probes": 4}
    by_vector = query_handler.lambda_handler(event, lambda_context)
    assert by_id["results"] == by_vector["results"]
    assert by_id["results"][0][0]["id"] == "sport-1"


def test_classify_by_id(tiny: Any, query_handler: ModuleType, lambda_context: Any, load_event: Any) -> None:
    response = query_handler.lambda_handler(load_event("query_by_id_classify.json"), lambda_context)
    assert "music-1" not in ids_of(response["results"][0])
    assert response["predictions"][0]["label"] in {"music", "sports"}


def test_recommend_event_searches_the_average_vector(
    tiny: Any, query_handler: ModuleType, lambda_context: Any, load_event: Any, items: Any
) -> None:
    event = load_event("recommend.json")
    response = query_handler.lambda_handler(event, lambda_context)
    given = np.array(event["recommend"]["positive"][1], np.float64)
    mean_pos = (items["sport-1"] + given / np.linalg.norm(given)) / 2
    target = 2 * mean_pos - items["food-1"]
    assert ids_of(response["results"][0]) == nearest(items, target, ("sport-1", "food-1"))[:3]


def test_recommend_best_score_event(
    tiny: Any, query_handler: ModuleType, lambda_context: Any, load_event: Any, items: Any
) -> None:
    response = query_handler.lambda_handler(load_event("recommend_best_score.json"), lambda_context)
    score = {
        i: max(v @ items["sport-1"], v @ items["music-1"]) - v @ items["food-2"]
        for i, v in items.items()
        if i not in ("sport-1", "music-1", "food-2")
    }
    assert ids_of(response["results"][0]) == sorted(score, key=lambda i: -score[i])[:3]


def test_analogy_event_excludes_its_terms(
    tiny: Any, query_handler: ModuleType, lambda_context: Any, load_event: Any, items: Any
) -> None:
    response = query_handler.lambda_handler(load_event("analogy.json"), lambda_context)
    target = items["sport-2"] - items["sport-1"] + items["food-1"]
    assert ids_of(response["results"][0]) == nearest(items, target, ("sport-1", "sport-2", "food-1"))[:3]


def test_group_event_returns_groups_of_at_most_group_size(
    tiny: Any, query_handler: ModuleType, lambda_context: Any, load_event: Any
) -> None:
    response = query_handler.lambda_handler(load_event("query_group.json"), lambda_context)
    groups = response["groups"][0]
    assert [g["group"] for g in groups] == ["en", "fr", "de"]
    assert all(1 <= len(g["hits"]) <= 2 for g in groups)
    assert all(h["metadata"]["lang"] == g["group"] for g in groups for h in g["hits"])


def test_unknown_ids_error_names_them(tiny: Any, query_handler: ModuleType, lambda_context: Any) -> None:
    with pytest.raises(InvalidRequest, match=r"^ids unknown ids .*\['nope'\]"):
        query_handler.lambda_handler({"collection": "tiny", "ids": ["sport-1", "nope"]}, lambda_context)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"ids": ["sport-1"], "vectors": [[1, 0, 0, 0]]}, "vectors"),
        ({}, "vectors"),
        ({"vectors": [[1, 0, 0, 0]], "group_by": "lang", "group_size": 4, "k": 3}, "group_size"),
        ({"vectors": [[1, 0, 0, 0]], "group_size": 2}, "group_size"),
        ({"vectors": [[1, 0, 0, 0]], "exclude_self": False}, "exclude_self"),
        ({"recommend": {"positive": []}}, "recommend.positive"),
        ({"recommend": {"positive": ["sport-1"], "strategy": "max"}}, "recommend.strategy"),
        ({"analogy": {"a": "sport-1", "b": "sport-2"}}, "analogy.c"),
        ({"ids": ["sport-1"], "mode": "classify", "group_by": "lang"}, "group_by"),
    ],
)
def test_bad_combinations_name_the_field(
    query_handler: ModuleType, lambda_context: Any, aws_env: None, extra: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        query_handler.lambda_handler({"collection": "tiny", **extra}, lambda_context)
    assert str(info.value).startswith(field)
