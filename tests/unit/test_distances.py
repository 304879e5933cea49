"""Distance metrics agree with a float64 numpy reference; cosine vectors are unit-normalised."""

from __future__ import annotations

import numpy as np
import pytest

from kdbuckets import distances

RNG = np.random.default_rng(42)
Q = RNG.normal(size=(7, 16)).astype(np.float32) * 3
V = RNG.normal(size=(40, 16)).astype(np.float32) * 3


def reference(q: np.ndarray, v: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) distances in float64, straight from the definitions."""
    q64, v64 = q.astype(np.float64), v.astype(np.float64)
    if metric == "l2":
        return np.sqrt(((q64[:, None, :] - v64[None, :, :]) ** 2).sum(axis=2))
    if metric == "ip":
        return -(q64 @ v64.T)
    qn = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
    vn = v64 / np.linalg.norm(v64, axis=1, keepdims=True)
    return 1.0 - qn @ vn.T


def test_metrics_are_the_three_documented_ones() -> None:
    assert distances.METRICS == ("cosine", "l2", "ip")


def test_prepare_normalises_rows_for_cosine_only() -> None:
    cos = distances.prepare(V, "cosine")
    assert cos.dtype == np.float32
    assert cos.flags.c_contiguous
    assert np.allclose(np.linalg.norm(cos.astype(np.float64), axis=1), 1.0, atol=1e-6)
    assert np.allclose(cos * np.linalg.norm(V, axis=1, keepdims=True), V, atol=1e-5)
    for metric in ("l2", "ip"):
        assert np.array_equal(distances.prepare(V, metric), V)


def test_prepare_converts_to_contiguous_float32() -> None:
    out = distances.prepare(np.asfortranarray(V.astype(np.float64)), "l2")
    assert out.dtype == np.float32
    assert out.flags.c_contiguous
    assert np.allclose(out, V)


@pytest.mark.parametrize("metric", distances.METRICS)
def test_pairwise_ranks_like_the_float64_reference(metric: str) -> None:
    q, v = distances.prepare(Q, metric), distances.prepare(V, metric)
    got = distances.pairwise(q, v, metric).astype(np.float64)
    want = reference(Q, V, metric)
    if metric == "l2":
        want = want**2  # pairwise returns squared l2 (monotone; used for selection only)
    assert got.shape == (7, 40)
    assert np.allclose(got, want, rtol=1e-4, atol=1e-4)
    assert np.array_equal(np.argsort(got, axis=1)[:, :5], np.argsort(want, axis=1)[:, :5])


def test_pairwise_l2_accepts_precomputed_norms_and_never_goes_negative() -> None:
    sq = np.einsum("ij,ij->i", V, V)
    assert np.array_equal(distances.pairwise(Q, V, "l2", sq), distances.pairwise(Q, V, "l2"))
    same = distances.pairwise(V[:5], V[:5], "l2")
    assert np.all(same >= 0.0)
    assert np.allclose(np.diag(same), 0.0, atol=1e-3)


@pytest.mark.parametrize("metric", distances.METRICS)
def test_exact_equals_the_float64_reference(metric: str) -> None:
    q, v = distances.prepare(Q, metric), distances.prepare(V, metric)
    picks = RNG.integers(0, 40, size=(7, 5))
    got = distances.exact(q, v[picks], metric)
    want = np.take_along_axis(reference(Q, V, metric), picks, axis=1)
    assert got.dtype == np.float64
    assert got.shape == (7, 5)
    assert np.allclose(got, want, rtol=1e-6, atol=1e-6)


def test_smaller_is_closer_for_every_metric() -> None:
    q = np.array([[1.0, 0.0]], np.float32)
    v = np.array([[2.0, 0.1], [-1.0, 0.0]], np.float32)
    for metric in distances.METRICS:
        d = distances.exact(distances.prepare(q, metric), distances.prepare(v, metric)[None], metric)[0]
        assert d[0] < d[1], metric


def test_exact_distances_of_a_vector_to_itself() -> None:
    v = distances.prepare(V[:3], "cosine")
    assert np.allclose(distances.exact(v, v[:, None, :], "cosine"), 0.0, atol=1e-6)
    assert np.array_equal(distances.exact(V[:3], V[:3, None, :], "l2"), np.zeros((3, 1)))


def test_cosine_distance_of_a_vector_to_itself_is_never_negative() -> None:
    v = distances.prepare(RNG.normal(size=(200, 384)).astype(np.float32), "cosine")
    d = distances.exact(v, v[:, None, :], "cosine")
    assert np.all(d >= 0.0)
    assert np.all(d < 1e-6)


@pytest.mark.parametrize("metric", distances.METRICS)
def test_selection_relative_to_a_centre_ranks_like_float64_far_from_the_origin(metric: str) -> None:
    """At 1000 ± 0.01 the plain float32 expansion cannot rank; centred scores can."""
    rng = np.random.default_rng(9)
    v = distances.prepare((1000.0 + 0.01 * rng.normal(size=(60, 8))).astype(np.float32), metric)
    q = distances.prepare((1000.0 + 0.01 * rng.normal(size=(5, 8))).astype(np.float32), metric)
    q64, v64 = q.astype(np.float64), v.astype(np.float64)
    if metric == "l2":
        want = ((q64[:, None, :] - v64[None]) ** 2).sum(axis=2)
    else:
        want = (1.0 - q64 @ v64.T) if metric == "cosine" else -(q64 @ v64.T)
    centre = v.mean(axis=0, dtype=np.float64).astype(np.float32)
    shifted = v - centre
    base, delta = distances.selection(q, shifted, metric, centre, np.einsum("ij,ij->i", shifted, shifted))
    assert base.dtype == np.float64
    assert delta.dtype == np.float32
    got = base[:, None] + delta.astype(np.float64)
    assert np.array_equal(np.argsort(got, axis=1)[:, :10], np.argsort(want, axis=1)[:, :10])
    plain_base, plain = distances.selection(q, v, metric)
    plain_rank = np.argsort(plain_base[:, None] + plain.astype(np.float64), axis=1)[:, :10]
    assert not np.array_equal(plain_rank, np.argsort(want, axis=1)[:, :10])


def test_exact_pairs_matches_exact_and_can_leave_cosine_unclamped() -> None:
    q, v = distances.prepare(Q, "cosine"), distances.prepare(V[:7], "cosine")
    for metric in distances.METRICS:
        np.testing.assert_array_equal(
            distances.exact_pairs(q, v, metric), distances.exact(q, v[:, None, :], metric)[:, 0]
        )
    same = distances.prepare(RNG.normal(size=(300, 64)).astype(np.float32), "cosine")
    raw = distances.exact_pairs(same, same, "cosine", clamp=False)
    assert raw.min() < 0.0  # float32 normalisation leaves some norms a hair above 1
    assert np.all(distances.exact_pairs(same, same, "cosine") == np.maximum(raw, 0.0))
