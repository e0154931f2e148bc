"""FID: Fréchet distance against closed forms and an independent computation; streaming statistics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from synthmed.metrics.fid import FeatureStats, fid, fid_from_stats, fid_per_class, frechet_distance, small_n_warning


def random_cov(rng, d, scale=1.0):
    a = rng.normal(size=(d, d)) * scale
    return a @ a.T / d + 0.1 * np.eye(d)


def test_fd_of_a_distribution_with_itself_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), random_cov(rng, 16)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)
    x = rng.normal(size=(200, 16))
    assert fid(x, x)["fid"] == pytest.approx(0.0, abs=1e-9)


def test_fd_closed_form_for_diagonal_gaussians_exact():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    s1, s2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    # worked by hand: 1 + 0 + 6.25 + (1 + 9 - 6) + (4 + 1 - 4) + 0 = 12.25
    assert expected == pytest.approx(12.25)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-12)


def test_fd_closed_form_from_large_samples():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 2.0]), np.array([1.0, 0.0])
    s1, s2 = np.array([1.0, 4.0]), np.array([4.0, 1.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))  # 5 + 2 = 7
    x = mu1 + rng.normal(size=(200_000, 2)) * np.sqrt(s1)
    y = mu2 + rng.normal(size=(200_000, 2)) * np.sqrt(s2)
    assert fid(x, y)["fid"] == pytest.approx(expected, rel=0.02)


def test_fd_non_diagonal_matches_independent_computations():
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(2)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = random_cov(rng, d), random_cov(rng, d, scale=2.0)
    ours = frechet_distance(mu1, s1, mu2, s2)
    # pytorch-fid's formulation: scipy's general matrix square root of the (non-symmetric) product
    covmean = linalg.sqrtm(s1 @ s2).real
    reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert ours == pytest.approx(reference, rel=1e-9)
    # torch-fidelity's: square roots of the eigenvalues of the non-symmetric product
    tf = fid_statistics_to_metric({"mu": mu1, "sigma": s1}, {"mu": mu2, "sigma": s2}, verbose=False)
    assert ours == pytest.approx(tf["frechet_inception_distance"], rel=1e-9)


def test_fd_is_finite_and_stable_for_singular_covariances():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(10, 64)), rng.normal(size=(10, 64)) + 0.5  # rank <= 9 in 64 dimensions
    res = fid(x, y)
    assert np.isfinite(res["fid"]) and res["fid"] > 0
    assert any("singular" in w for w in res["warnings"])
    assert small_n_warning(5000, 2048) is None


@pytest.mark.parametrize("n_a,n_b,d", [(30, 50, 64), (80, 20, 64), (200, 300, 16), (5, 500, 32)])
def test_fd_through_the_images_equals_the_covariance_route(n_a, n_b, d):
    """Fewer images than dimensions: the n_a x n_b nuclear-norm route must give the d x d value."""
    from synthmed.metrics.fid import frechet_distance_from_features

    rng = np.random.default_rng(n_a + n_b)
    x = rng.normal(size=(n_a, d)) @ rng.normal(size=(d, d)) * 0.3
    y = rng.normal(size=(n_b, d)) + 0.4
    # rel 1e-7: the d x d route clips the rounding noise of a singular covariance's zero eigenvalues
    assert frechet_distance_from_features(x, y) == pytest.approx(fid(x, y)["fid"], rel=1e-7, abs=1e-9)
    assert frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-8)
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance_from_features(x[:1], y)


def test_batch_size_and_order_invariance_and_streaming_equals_one_shot():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 8)) * 3 + 100.0  # large mean: a naive sum-of-squares would lose digits
    one_shot = FeatureStats.from_features(x)
    assert np.allclose(one_shot.mean, x.mean(axis=0), rtol=1e-12)
    assert np.allclose(one_shot.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    for batch in (1, 7, 64, 499):
        streamed = FeatureStats(8)
        for i in range(0, len(x), batch):
            streamed.update(x[i:i + batch])
        assert streamed.n == 500
        assert np.allclose(streamed.mean, one_shot.mean, rtol=1e-12)
        assert np.allclose(streamed.cov, one_shot.cov, rtol=1e-10, atol=1e-12)
    shuffled = FeatureStats.from_features(x[rng.permutation(len(x))])
    assert np.allclose(shuffled.cov, one_shot.cov, rtol=1e-10, atol=1e-12)
    y = rng.normal(size=(300, 8)) + 99.0
    base = fid(x, y)["fid"]
    assert fid(x[::-1], y[rng.permutation(300)])["fid"] == pytest.approx(base, rel=1e-9)
    merged = FeatureStats.from_features(x[:123]).merge(FeatureStats.from_features(x[123:]))
    assert np.allclose(merged.cov, one_shot.cov, rtol=1e-10, atol=1e-12)


def test_feature_stats_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    desc = {"name": "domain", "dim": 6, "weights_hash": "abc", "input_policy": "native"}
    stats = FeatureStats.from_features(rng.normal(size=(40, 6)), extractor=desc, fingerprint="f00d")
    path = stats.save(tmp_path / "ref" / "stats.npz")
    back = FeatureStats.load(path)
    assert back.n == 40 and back.dim == 6 and back.fingerprint == "f00d" and back.extractor == desc
    assert np.array_equal(back.mean, stats.mean)
    assert np.allclose(back.cov, stats.cov, rtol=1e-14)
    other = FeatureStats.from_features(rng.normal(size=(40, 6)) + 1, extractor=desc)
    assert fid_from_stats(back, other)["fid"] == pytest.approx(fid_from_stats(stats, other)["fid"], rel=1e-12)
    # continuing to stream into a loaded reference works like never having saved it
    more = rng.normal(size=(10, 6))
    assert np.allclose(back.update(more).cov, stats.update(more).cov, rtol=1e-12)


def test_stats_from_different_extractors_are_refused():
    rng = np.random.default_rng(6)
    a = FeatureStats.from_features(rng.normal(size=(20, 4)), extractor={"name": "inception", "dim": 4})
    b = FeatureStats.from_features(rng.normal(size=(20, 4)), extractor={"name": "domain", "dim": 4})
    with pytest.raises(ValueError, match="different feature extractors"):
        fid_from_stats(a, b)


def test_fid_per_class_and_total():
    rng = np.random.default_rng(7)
    xa = np.concatenate([rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) + 5])
    la = np.repeat([0, 1], 60)
    xb = np.concatenate([rng.normal(size=(50, 3)), rng.normal(size=(1, 3)) + 5])
    lb = np.array([0] * 50 + [1])
    res = fid_per_class(xa, la, xb, lb, ["a", "b"])
    assert res["per_class"]["a"]["fid"] < 0.5
    assert res["per_class"]["b"]["fid"] is None and any("class 'b'" in w for w in res["warnings"])
    assert res["total"]["n_a"] == 120 and res["total"]["n_b"] == 51
