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
