"""Bootstrap intervals: contain the point estimate, shrink with N, are reproducible."""

import numpy as np
import pytest

from synthmed.metrics.bootstrap import bootstrap_ci, bootstrap_mean_ci
from synthmed.metrics.prdc import prdc


def mean_gap(a, b):
    return float(np.linalg.norm(a.mean(axis=0) - b.mean(axis=0)))


def test_ci_contains_point_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    widths = []
    for n in (100, 1600):
        real, fake = rng.normal(size=(n, 3)), rng.normal(size=(n, 3)) + 0.5
        out = bootstrap_ci(mean_gap, real, fake, n_boot=200, seed=0)
        assert out["ci_low"] <= out["value"] <= out["ci_high"]
        assert out["n_boot"] == 200 and out["std"] > 0
        widths.append(out["ci_high"] - out["ci_low"])
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(N): 16x the data, ~4x narrower


def test_reproducible_and_seed_dependent():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(50, 2)), rng.normal(size=(60, 2))
    a = bootstrap_ci(mean_gap, real, fake, n_boot=50, seed=3)
    assert a == bootstrap_ci(mean_gap, real, fake, n_boot=50, seed=3)
    assert a != bootstrap_ci(mean_gap, real, fake, n_boot=50, seed=4)


def test_dict_metric_with_distinct_points_contains_estimate():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(300, 4)), rng.normal(size=(300, 4)) * 1.1 + 0.2
    out = bootstrap_ci(lambda a, b: prdc(a, b, k=3), real, fake, n_boot=40, seed=0, distinct=True)
    assert set(out) == {"precision", "recall", "f1", "density", "coverage"}
    for key in ("precision", "recall", "coverage"):
        assert out[key]["ci_low"] <= out[key]["value"] <= out[key]["ci_high"], key


def test_failing_replicates_are_counted():
    def picky(a, b):
        if len(np.unique(a, axis=0)) < len(a):
            raise ValueError("duplicates")
        return 1.0

    out = bootstrap_ci(picky, np.arange(20.0)[:, None], np.arange(20.0)[:, None], n_boot=30, seed=0)
    assert out["n_failed"] == 30 and np.isnan(out["ci_low"])


def test_mean_ci_vectorised():
    v = np.random.default_rng(3).normal(loc=2.0, size=400)
    out = bootstrap_mean_ci(v, n_boot=500)
    assert out["ci_low"] < 2.0 < out["ci_high"] and out["value"] == pytest.approx(v.mean())


def test_bad_arguments():
    with pytest.raises(ValueError):
        bootstrap_ci(mean_gap, np.zeros((5, 2)), np.zeros((5, 2)), alpha=1.5)
    with pytest.raises(ValueError):
        bootstrap_ci(mean_gap, np.zeros((5, 2)), np.zeros((5, 2)), n_boot=0)


# ----------------------------------------------------------------------------- subsampling intervals
from synthmed.metrics.bootstrap import subsample_ci  # noqa: E402
from synthmed.metrics.evaluate import BIAS_CORRECTION_MIN_PER_DIM, _feature_row  # noqa: E402
from synthmed.metrics.fid import frechet_distance, frechet_distance_from_features  # noqa: E402


def gaussian_pair(d: int, seed: int = 0):
    """Two Gaussians with different means and (non-diagonal) covariances; returns their parameters."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(d, d)) / np.sqrt(d), rng.normal(size=(d, d)) / np.sqrt(d)
    return np.zeros(d), np.eye(d) + 0.3 * a @ a.T, rng.normal(0, 0.25, d), 1.2 * np.eye(d) + 0.3 * b @ b.T


def sampler(mu1, s1, mu2, s2, n1, n2, seed):
    l1, l2, rng = np.linalg.cholesky(s1), np.linalg.cholesky(s2), np.random.default_rng(seed)
    d = len(mu1)
    return lambda: (mu1 + rng.normal(size=(n1, d)) @ l1.T, mu2 + rng.normal(size=(n2, d)) @ l2.T)


def test_subsampling_spread_is_the_full_sample_standard_error():
    # a mean difference has SE sqrt(1/n1 + 1/n2); the half-sample spread with the finite-population
    # factor must reproduce it (the m-out-of-n scaling sqrt(m/n) alone would give 0.71 of it)
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(400, 1)), rng.normal(size=(300, 1))
    gap = lambda a, b: float(a.mean() - b.mean())  # noqa: E731
    out = subsample_ci(gap, real, fake, n_sub=400, seed=0)
    se = np.sqrt(1 / 400 + 1 / 300)
    assert out["std"] == pytest.approx(se, rel=0.15)
    assert out["ci_high"] - out["ci_low"] == pytest.approx(2 * 1.96 * out["std"], rel=1e-3)
    assert out["m_real"] == 200 and out["m_synthetic"] == 150 and out["ci_method"] == "subsampling m=0.5n"
    assert out["ci_low"] <= out["value"] <= out["ci_high"]
    assert out == subsample_ci(gap, real, fake, n_sub=400, seed=0)
    basic = subsample_ci(gap, real, fake, n_sub=400, seed=0, kind="basic")
    assert basic["ci_method"] == "subsampling m=0.5n, basic"
    assert basic["ci_high"] - basic["ci_low"] == pytest.approx(2 * 1.96 * se, rel=0.2)
    for bad in ({"fraction": 1.0}, {"kind": "percentile"}, {"n_sub": 0}):
        with pytest.raises(ValueError):
            subsample_ci(gap, real, fake, **bad)


def test_with_replacement_bootstrap_misses_its_own_fid_and_subsampling_does_not():
    # the symptom: duplicates push every bootstrap FID above the estimate
    real, fake = sampler(*gaussian_pair(16), 500, 500, seed=3)()
    value = frechet_distance_from_features(real, fake)
    boot = bootstrap_ci(frechet_distance_from_features, real, fake, n_boot=40, seed=0)
    assert boot["ci_low"] > value
    sub = subsample_ci(frechet_distance_from_features, real, fake, n_sub=40, seed=0)
    assert sub["ci_low"] <= value <= sub["ci_high"]


def realistic_features(rng, n: int, d: int, shift: float) -> np.ndarray:
    """Skewed, sparse, correlated features like a CNN's penultimate layer: ReLU of a projection of t noise."""
    z = rng.standard_t(4, size=(n, d)) + shift
    return np.maximum(z @ rng.normal(size=(d, d)) / np.sqrt(d) + 0.2, 0.0)


@pytest.mark.parametrize("n_real, n_syn, d", [(300, 150, 16), (40, 30, 32)])
def test_every_interval_contains_its_estimate(n_real, n_syn, d):
    metrics = ("fid", "kid", "precision", "recall", "density", "coverage")
    for draw in range(12):
        rng = np.random.default_rng(100 + draw)
        real = realistic_features(rng, n_real, d, 0.0)
        fake = realistic_features(np.random.default_rng(draw), n_syn, d, 0.3 * (draw % 3))
        out, warnings = _feature_row(real, fake, metrics, k=3, n_boot=20, alpha=0.05, seed=draw)
        for m in metrics:
            e = out[m]
            assert e["ci_low"] <= e["value"] <= e["ci_high"], (m, draw, e)
            assert e["ci_method"] == "subsampling m=0.5n" and e["ci_target"]
        bc = out["fid"]["bias_corrected"]
        if min(n_real, n_syn) // 2 >= BIAS_CORRECTION_MIN_PER_DIM * d:
            assert bc["ci_low"] <= bc["value"] <= bc["ci_high"] and bc["value"] < out["fid"]["value"]
        else:
            assert bc["value"] is None and "not linear" in bc["reason"]
        assert not any("excludes the value" in w for w in warnings)


def test_fid_interval_coverage_on_gaussians_with_closed_form_distance():
    """200 draws of 500 vs 500 points in 16-d: the bias-corrected interval holds the closed-form
    Fréchet distance ~95% of the time, the plain one holds E[FID at N] ~95% of the time, and the
    plain one cannot hold the population value (FID's 1/N bias is ~2.3 standard errors here)."""
    params = gaussian_pair(16)
    true = frechet_distance(*params)
    draw = sampler(*params, 500, 500, seed=1)
    expected_at_n = np.mean([frechet_distance_from_features(*draw()) for _ in range(1000)])
    hits = {"bias_corrected": 0, "plain_expected": 0, "plain_true": 0}
    for r in range(200):
        out, _ = _feature_row(*draw(), ("fid",), k=3, n_boot=50, alpha=0.05, seed=r)
        e, bc = out["fid"], out["fid"]["bias_corrected"]
        hits["bias_corrected"] += bc["ci_low"] <= true <= bc["ci_high"]
        hits["plain_expected"] += e["ci_low"] <= expected_at_n <= e["ci_high"]
        hits["plain_true"] += e["ci_low"] <= true <= e["ci_high"]
    rate = {k: v / 200 for k, v in hits.items()}
    assert 0.90 <= rate["bias_corrected"] <= 0.99, rate
    assert 0.90 <= rate["plain_expected"] <= 0.99, rate
    assert rate["plain_true"] < 0.5, rate


def population_kid(mu1, s1, mu2, s2) -> float:
    """Exact MMD^2 of two Gaussians under k(x, y) = (x.y / d + 1)^3: the kernel's feature map is
    [1, sqrt(3g) x, sqrt(3) g x(x)x, g^1.5 x(x)x(x)x], whose means are Gaussian moments up to order 3."""
    def embedding(mu, s, g):
        t3 = (np.einsum("i,j,k->ijk", mu, mu, mu) + np.einsum("i,jk->ijk", mu, s) + np.einsum("j,ik->ijk", mu, s)
              + np.einsum("k,ij->ijk", mu, s))
        return np.concatenate([[1.0], np.sqrt(3 * g) * mu, np.sqrt(3) * g * (s + np.outer(mu, mu)).ravel(),
                               g ** 1.5 * t3.ravel()])

    diff = embedding(mu1, s1, 1 / len(mu1)) - embedding(mu2, s2, 1 / len(mu1))
    return float(diff @ diff)


def test_kid_interval_coverage_of_the_population_value():
    """KID's estimator is unbiased, so its interval targets the population MMD^2 itself: computed
    exactly here, it is held ~95% of the time over 200 draws of 200 vs 200 points in 8-d."""
    params = gaussian_pair(8)
    true = population_kid(*params)
    draw = sampler(*params, 200, 200, seed=2)
    hits, estimates = 0, []
    for r in range(200):
        out, _ = _feature_row(*draw(), ("kid",), k=3, n_boot=40, alpha=0.05, seed=r)
        e = out["kid"]
        hits += e["ci_low"] <= true <= e["ci_high"]
        estimates.append(e["value"])
    # the closed form is right (and the estimator unbiased): the mean estimate is within 3 standard errors
    assert abs(np.mean(estimates) - true) < 3 * np.std(estimates) / np.sqrt(len(estimates))
    assert 0.90 <= hits / 200 <= 0.99, hits / 200
