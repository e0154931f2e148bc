"""KID: unbiased MMD^2 with the cubic polynomial kernel."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.metrics.kid import kid, kid_per_class


def test_kid_near_zero_for_one_distribution_and_positive_for_shifted():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(400, 16)), rng.normal(size=(400, 16))
    same = kid(x, y, subset_size=100, n_subsets=50)
    assert abs(same["mean"]) <= 3 * same["std"] + 1e-12
    shifted = kid(x, y + 0.5, subset_size=100, n_subsets=50)
    assert shifted["mean"] > 5 * shifted["std"] and shifted["mean"] > 10 * abs(same["mean"])


def test_kid_matches_torch_fidelity_when_subsets_are_whole_sets():
    import torch
    from torch_fidelity.metric_kid import kid_features_to_metric

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 8)), rng.normal(size=(30, 8)) + 0.3
    ours = kid(x, y, subset_size=30, n_subsets=3)
    # subsets holding the whole sets are permutations of them: MMD^2 cannot depend on the draw
    ref = kid_features_to_metric(torch.from_numpy(x), torch.from_numpy(y), kid_subsets=3, kid_subset_size=30,
                                 verbose=False, kid_kernel="poly", kid_kernel_poly_degree=3,
                                 kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1, rng_seed=0)
    assert ours["mean"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)


def test_subset_size_adapts_to_small_classes_with_a_warning():
    rng = np.random.default_rng(2)
    res = kid(rng.normal(size=(25, 4)), rng.normal(size=(60, 4)), subset_size=1000, n_subsets=20)
    assert res["subset_size"] == 25 and res["n_subsets"] == 20
    assert any("reduced from 1000 to 25" in w for w in res["warnings"])
    assert res["std"] > 0  # the larger side still varies between subsets
    assert kid(rng.normal(size=(80, 4)), rng.normal(size=(80, 4)), subset_size=50, n_subsets=5)["warnings"] == []
    with pytest.raises(ValueError, match="at least 2"):
        kid(rng.normal(size=(1, 4)), rng.normal(size=(10, 4)))


def test_kid_is_reproducible_for_a_seed():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(100, 4)), rng.normal(size=(100, 4))
    assert kid(x, y, subset_size=40, n_subsets=10, seed=5) == kid(x, y, subset_size=40, n_subsets=10, seed=5)


def test_kid_per_class():
    rng = np.random.default_rng(4)
    xa, la = rng.normal(size=(80, 4)), np.repeat([0, 1], 40)
    xb, lb = rng.normal(size=(41, 4)), np.array([0] * 40 + [1])
    res = kid_per_class(xa, la, xb, lb, ["a", "b"], subset_size=20, n_subsets=5)
    assert res["per_class"]["a"]["mean"] is not None and res["per_class"]["b"]["mean"] is None
    assert res["total"]["subset_size"] == 20
