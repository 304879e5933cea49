"""The demo's synthetic sample behaves like real embeddings, not like separable blobs.

A user's clone has no ``../shared/data``, so `make demo` shows :func:`devtools.local.realistic`.
Pinned on a small instance (2,000 indexed vectors in ~40 buckets): one probe finds well under
all ten true neighbours, reading every bucket finds all of them, recall rises with probes, and
a k-NN vote is far from always right (overlapping clusters, noisy labels) — the shape of the
real WordNet set's curve, not the 1.000/1.000 of separable blobs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devtools import local
from kdbuckets import Searcher, build_index, make_collection
from kdbuckets.params import BuildParams
from kdbuckets.storage import ObjectStore

QUERIES = 200


@pytest.fixture(scope="module")
def curve(module_s3_store: ObjectStore) -> dict[str, float]:
    sample = local.realistic(n=3000)
    data = make_collection(sample.vectors, sample.ids, sample.labels, metric="cosine")
    built = build_index(module_s3_store, "realistic", data, BuildParams(bucket_size=100))
    unit = sample.vectors / np.linalg.norm(sample.vectors, axis=1, keepdims=True)
    queries = sample.queries[:QUERIES]
    exact = np.argsort(-(queries / np.linalg.norm(queries, axis=1, keepdims=True)) @ unit.T, axis=1)[:, :10]
    truth = [set(sample.ids[row].tolist()) for row in exact]
    searcher = Searcher(module_s3_store)
    out = {"buckets": float(built.buckets)}
    for name, probes in (("one", 1), ("four", 4), ("all", built.buckets)):
        result = searcher.classify("realistic", queries, k=10, probes=probes)
        found = [set(map(str, ids)) for ids in result.neighbours.ids]
        out[name] = float(np.mean([len(f & t) / 10 for f, t in zip(found, truth, strict=True)]))
        out[f"accuracy_{name}"] = float(np.mean(np.array(result.predicted) == sample.query_labels[:QUERIES]))
    return out


def test_one_probe_finds_well_under_all_neighbours_and_every_bucket_finds_all(
    curve: dict[str, float],
) -> None:
    assert curve["buckets"] >= 30
    assert 0.35 <= curve["one"] <= 0.75
    assert curve["one"] < curve["four"] < curve["all"]
    assert curve["all"] == 1.0


def test_labels_are_not_separable(curve: dict[str, float]) -> None:
    assert 0.3 <= curve["accuracy_all"] <= 0.85


def test_the_sample_is_deterministic_and_unit_norm() -> None:
    a, b = local.realistic(n=1500), local.realistic(n=1500)
    assert np.array_equal(a.vectors, b.vectors)
    assert np.array_equal(a.labels, b.labels)
    np.testing.assert_allclose(np.linalg.norm(a.vectors, axis=1), 1.0, atol=1e-5)
    assert len(set(a.labels.tolist())) > 10


def test_load_sample_falls_back_to_the_realistic_set_and_can_be_forced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "realistic", lambda: "realistic")
    monkeypatch.delenv(local.FORCE_SYNTHETIC, raising=False)
    assert local.load_sample(data_dir=tmp_path) == "realistic"
    monkeypatch.setenv(local.FORCE_SYNTHETIC, "1")
    assert local.load_sample() == "realistic"
