"""Precision / recall / density / coverage on constructed point clouds with known answers."""

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from synthmed.metrics.prdc import density_coverage, knn_radii, prdc, precision_recall


def grid_cloud(offset=(0.0, 0.0), side=6, spacing=10.0):
    """Integer-valued grid: distances are exact in float64, so ball boundaries are not decided by rounding."""
    xs, ys = np.meshgrid(np.arange(side), np.arange(side))
    return np.stack([xs.ravel(), ys.ravel()], axis=1) * spacing + np.asarray(offset)


def test_identical_sets_are_perfect():
    x = grid_cloud()
    out = prdc(x, x.copy(), k=3)
    assert out["precision"] == 1.0 and out["recall"] == 1.0 and out["f1"] == 1.0
    assert out["coverage"] == 1.0


def test_identical_random_sets_density_is_k_plus_one_over_k():
    # Without distance ties every real ball holds its centre plus exactly k others, so an exact
    # copy of the real set scores density (k + 1) / k, not 1.
    x = np.random.default_rng(0).normal(size=(300, 5))
    out = density_coverage(x, x.copy(), k=3)
    assert out["coverage"] == 1.0
    assert out["density"] == pytest.approx(4 / 3)


def test_same_distribution_density_near_one():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    out = prdc(real, fake, k=5)
    assert 0.85 < out["density"] < 1.15
    # Naeem et al.: expected coverage for equal sizes is about 1 - 1/2^k
    assert out["coverage"] == pytest.approx(1 - 0.5**5, abs=0.03)


def test_disjoint_sets_score_zero():
    real, fake = grid_cloud(), grid_cloud(offset=(1000.0, 1000.0))
    out = prdc(real, fake, k=3)
    assert out == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "density": 0.0, "coverage": 0.0}


def test_half_the_modes_gives_recall_half_precision_one():
    # 10 well-separated modes (small integer grids 1000 apart); the generator reproduces 5 of them
    modes = [grid_cloud(offset=(1000.0 * m, 0.0), side=4, spacing=1.0) for m in range(10)]
    real = np.concatenate(modes)
    fake = np.concatenate(modes[:5])
    out = precision_recall(real, fake, k=3)
    assert out["precision"] == pytest.approx(1.0)
    assert out["recall"] == pytest.approx(0.5)
    assert out["f1"] == pytest.approx(2 / 3)


def test_half_the_modes_gaussian_blobs():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(10, 2)) * 50
    real = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres])
    fake = np.concatenate([c + rng.normal(size=(100, 2)) for c in centres[:5]])
    out = precision_recall(real, fake, k=3)
    # the 5 dropped modes contribute nothing; k-NN manifolds of finite samples miss a few points of the
    # covered modes, so recall lands just under 0.5
    assert 0.45 <= out["recall"] <= 0.5
    assert out["precision"] > 0.95  # (measured 0.97, recall 0.478)


def test_hand_computed_1d_pins_the_convention():
    # k = 1. Real 0, 1, 3 -> radii 1, 1, 2 -> real balls [-1,1], [0,2], [1,5].
    # Fake 2.2, 6, 9 -> radii 3.8, 3, 3 -> fake balls [-1.6,6], [3,9], [6,12].
    real = np.array([[0.0], [1.0], [3.0]])
    fake = np.array([[2.2], [6.0], [9.0]])
    np.testing.assert_allclose(knn_radii(real, 1), [1, 1, 2])
    np.testing.assert_allclose(knn_radii(fake, 1), [3.8, 3, 3])
    out = prdc(real, fake, k=1)
    # precision: fake samples inside REAL balls -> only 2.2 (in [1,5]); the swapped convention would give 1
    assert out["precision"] == pytest.approx(1 / 3)
    # recall: real samples inside FAKE balls -> all three lie in [-1.6, 6]
    assert out["recall"] == pytest.approx(1.0)
    assert out["f1"] == pytest.approx(0.5)
    # density: 2.2 lies in one real ball, 6 and 9 in none -> 1 / (k * M) = 1/3
    assert out["density"] == pytest.approx(1 / 3)
    # coverage: only real 3 has a fake (2.2, at 0.8) within its radius 2
    assert out["coverage"] == pytest.approx(1 / 3)


def test_hand_computed_2d_precision_uses_real_radii():
    # Real unit square (radii 1). Fake: two close points (radii 0.141) and a far outlier whose own
    # radius (distance to (0.6, 0.4): 41.72) is huge.
    real = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    fake = np.array([[0.5, 0.5], [0.6, 0.4], [30.0, 30.0]])
    out = precision_recall(real, fake, k=1)
    assert out["precision"] == pytest.approx(2 / 3)  # the outlier is outside every real ball
    # recall: the tiny fake balls hold no real point; the outlier's ball reaches only (1, 1) (at 41.01;
    # (1, 0) and (0, 1) are at 41.73 > 41.72)
    assert out["recall"] == pytest.approx(1 / 4)


def test_radii_match_sklearn_reference():
    x = np.random.default_rng(3).normal(size=(200, 7))
    dist, _ = NearestNeighbors(n_neighbors=4).fit(x).kneighbors(x)
    np.testing.assert_allclose(knn_radii(x, 3), dist[:, 3], rtol=1e-9, atol=1e-9)


def test_chunked_equals_unchunked():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(157, 6)), rng.normal(size=(131, 6)) + 0.3
    np.testing.assert_allclose(knn_radii(real, 3, chunk_size=7), knn_radii(real, 3))
    assert prdc(real, fake, k=3, chunk_size=7) == prdc(real, fake, k=3)
    assert prdc(real, fake, k=3, chunk_size=1) == prdc(real, fake, k=3, chunk_size=1000)


def test_too_few_points_and_bad_shapes():
    with pytest.raises(ValueError, match="at least 4 samples"):
        knn_radii(np.zeros((3, 2)), 3)
    with pytest.raises(ValueError, match="dimensions differ"):
        prdc(np.zeros((10, 2)), np.zeros((10, 3)))
