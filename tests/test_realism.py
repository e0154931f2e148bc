"""Realism score (eq. 11): hand calculations, the ball property, robust pruning, class-based variant."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.selection.realism import (
    class_realism_scores,
    nearest_neighbours,
    real_knn_radii,
    realism_scores,
    select,
)

REAL_1D = np.array([0.0, 1.0, 3.0, 7.0])  # k=1 radii: 1, 1, 2, 4


def test_radii_are_kth_nearest_other_point():
    np.testing.assert_allclose(real_knn_radii(REAL_1D, k=1), [1, 1, 2, 4])
    np.testing.assert_allclose(real_knn_radii(REAL_1D, k=2), [3, 2, 3, 6])


def test_hand_calculation_1d_k1():
    fake = np.array([0.5, 5.0, 12.0])
    # 0.5: max(1/0.5, 1/0.5, 2/2.5, 4/6.5) = 2 ; 5: max(1/5, 1/4, 2/2, 4/2) = 2 ; 12: max(.., 2/9, 4/5) = 0.8
    r = realism_scores(REAL_1D, fake, k=1, robust_quantile=None)
    np.testing.assert_allclose(r, [2.0, 2.0, 0.8], rtol=1e-12)
    assert select(r).tolist() == [True, True, False]
    # robust: only balls with radius <= median radius (1.5) survive -> the balls at 0 and 1
    r_robust = realism_scores(REAL_1D, fake, k=1, robust_quantile=0.5)
    np.testing.assert_allclose(r_robust, [2.0, 0.25, 1 / 11], rtol=1e-12)


def test_hand_calculation_2d_k1():
    real = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    # radii: (0,0)->3, (3,0)->3, (0,4)->4
    fake = np.array([[1.0, 0.0], [0.0, 10.0]])
    r = realism_scores(real, fake, k=1, robust_quantile=None)
    # (1,0): max(3/1, 3/2, 4/sqrt(17)) = 3 ; (0,10): max(3/10, 3/sqrt(109), 4/6) = 2/3
    np.testing.assert_allclose(r, [3.0, 2.0 / 3.0], rtol=1e-12)


def test_score_is_at_least_one_exactly_inside_a_real_ball():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(60, 5))
    radii = real_knn_radii(real, k=3)
    centres = rng.integers(0, 60, 200)
    direction = rng.normal(size=(200, 5))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    frac = rng.uniform(0.0, 0.99, 200)[:, None]
    inside = real[centres] + frac * radii[centres, None] * direction
    assert (realism_scores(real, inside, k=3, robust_quantile=None) >= 1).all()
    far = real.mean(0) + 100 * direction
    assert (realism_scores(real, far, k=3, robust_quantile=None) < 1).all()


def test_chunked_equals_brute_force():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(230, 6)), rng.normal(size=(170, 6))
    d = cdist(real, real)
    np.fill_diagonal(d, np.inf)
    radii = np.sort(d, axis=1)[:, 2]
    brute = (radii[None] / cdist(fake, real)).max(axis=1)
    for chunk in (1, 7, 1000):
        np.testing.assert_allclose(realism_scores(real, fake, k=3, chunk=chunk, robust_quantile=None), brute, rtol=1e-10)
    dist, idx = nearest_neighbours(fake, real, 2, chunk=11)
    e = cdist(fake, real)
    np.testing.assert_allclose(dist, np.sort(e, axis=1)[:, :2], atol=1e-10)
    np.testing.assert_array_equal(idx, np.argsort(e, axis=1)[:, :2])


def test_nearest_neighbour_distances_are_exact_despite_float32_search():
    """The search runs in float32; returned distances must still be float64-exact, also far from 0
    (a large common offset) and for exact copies (distance 0, not ~1e-3 of cancellation noise)."""
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(2)
    ref = 1e3 + rng.normal(size=(300, 50))
    query = np.concatenate([ref[:5], 1e3 + rng.normal(size=(40, 50))])
    for k in (1, 3):
        dist, idx = nearest_neighbours(query, ref, k, chunk=13)
        e = cdist(query, ref)
        np.testing.assert_array_equal(idx, np.argsort(e, axis=1)[:, :k])
        np.testing.assert_allclose(dist, np.sort(e, axis=1)[:, :k], rtol=1e-12, atol=0)
        assert (dist[:5, 0] == 0).all()
    # no reference rows: no neighbours, not an error
    dist, idx = nearest_neighbours(query, ref[:0], 2)
    assert np.isinf(dist).all() and (idx == -1).all()
    # excluding each point's own group gives its nearest OTHER point
    ids = np.arange(len(ref))
    dist, idx = nearest_neighbours(ref, ref, 1, query_groups=ids, ref_groups=ids)
    e = cdist(ref, ref)
    np.fill_diagonal(e, np.inf)
    np.testing.assert_array_equal(idx[:, 0], e.argmin(axis=1))


def test_fake_on_a_real_point_scores_infinity_and_is_kept():
    r = realism_scores(REAL_1D, np.array([1.0]), k=1, robust_quantile=None)
    assert np.isinf(r[0]) and select(r)[0]


def test_class_based_drops_mislabelled_point_global_keeps_it():
    rng = np.random.default_rng(2)
    a = rng.normal(0, 1, size=(30, 2))
    b = rng.normal(0, 1, size=(30, 2)) + [10, 0]
    real = np.concatenate([a, b])
    real_labels = np.array([0] * 30 + [1] * 30)
    fake = np.array([[0.1, 0.1], [10.1, -0.1], [10.0, 0.0]])
    fake_labels = np.array([0, 1, 0])  # the last one claims class A but lies in B's cluster
    g = realism_scores(real, fake, k=3)
    c = class_realism_scores(real, real_labels, fake, fake_labels, k=3)
    assert select(g).tolist() == [True, True, True]
    assert select(c).tolist() == [True, True, False]


def test_too_few_real_images_for_k_is_explained():
    with pytest.raises(ValueError, match="lower k"):
        real_knn_radii(np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match="mode='global'"):
        class_realism_scores(np.arange(10.0), np.array([0] * 8 + [1] * 2), np.zeros(2), np.array([0, 1]), k=3)
