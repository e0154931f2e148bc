"""Kernel Inception Distance: unbiased MMD^2 with a cubic polynomial kernel (Bińkowski et al. 2018).

Unlike FID, the estimator is unbiased, so it is meaningful for the small image counts of
medical classes and comparable across counts. As in the paper and torch-fidelity, MMD^2
is averaged over random subsets (drawn without replacement within each subset) and the
spread over subsets is reported as the standard deviation (ddof=0, as torch-fidelity).
"""

from __future__ import annotations

import numpy as np

#: defaults of Bińkowski et al. / torch-fidelity
DEFAULT_SUBSET_SIZE = 1000
DEFAULT_N_SUBSETS = 100


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef0)^degree, gamma = 1/d by default."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def mmd2_unbiased(k_xx: np.ndarray, k_yy: np.ndarray, k_xy: np.ndarray) -> float:
    """Unbiased MMD^2 from kernel matrices: within-set means exclude the diagonal (k(x, x))."""
    m, n = len(k_xx), len(k_yy)
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
    return float(xx + yy - 2.0 * k_xy.mean())


def kid(features_a: np.ndarray, features_b: np.ndarray, subset_size: int = DEFAULT_SUBSET_SIZE,
        n_subsets: int = DEFAULT_N_SUBSETS, seed: int = 0, degree: int = 3, gamma: float | None = None,
        coef0: float = 1.0) -> dict:
    """KID between two feature arrays: mean and std of unbiased MMD^2 over ``n_subsets``
    random subsets of ``min(subset_size, n_a, n_b)`` images from each side.

    Returns ``dict(mean, std, subset_size, n_subsets, n_a, n_b, warnings)``."""
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"features must be (N, d) arrays of equal d, got {a.shape} and {b.shape}")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be at least 1, got {n_subsets}")
    n_a, n_b = len(a), len(b)
    size = min(subset_size, n_a, n_b)
    if size < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {n_a} and {n_b}")
    warnings = []
    if size < subset_size:
        # small classes: the whole smaller set forms each subset rather than failing as
        # torch-fidelity does; the estimate stays unbiased, only noisier
        warnings.append(f"subset size reduced from {subset_size} to {size} (only {n_a} vs {n_b} images)")
    if size == n_a == n_b:
        warnings.append(f"every subset holds all {size} images of both sets, so std = 0 says nothing about the "
                        f"uncertainty of the mean")

    rng = np.random.default_rng(seed)
    mmds = np.empty(n_subsets)
    if size == n_a == n_b:
        # every subset is the whole of both sets in another order: one computation gives them all
        mmds[:] = mmd2_unbiased(polynomial_kernel(a, a, degree, gamma, coef0),
                                polynomial_kernel(b, b, degree, gamma, coef0),
                                polynomial_kernel(a, b, degree, gamma, coef0))
    else:
        for i in range(n_subsets):
            x = a[rng.choice(n_a, size, replace=False)]
            y = b[rng.choice(n_b, size, replace=False)]
            mmds[i] = mmd2_unbiased(polynomial_kernel(x, x, degree, gamma, coef0),
                                    polynomial_kernel(y, y, degree, gamma, coef0),
                                    polynomial_kernel(x, y, degree, gamma, coef0))
    return {"mean": float(mmds.mean()), "std": float(mmds.std()), "subset_size": size, "n_subsets": n_subsets,
            "n_a": n_a, "n_b": n_b, "warnings": warnings}


def kid_per_class(features_a: np.ndarray, labels_a: np.ndarray, features_b: np.ndarray, labels_b: np.ndarray,
                  class_names: list[str], **options) -> dict:
    """KID per class and over all images; a class with < 2 images on a side gets ``mean: None``."""
    from synthmed.metrics.fid import per_class

    return per_class(lambda a, b: kid(a, b, **options), {"mean": None, "std": None}, "KID",
                     features_a, labels_a, features_b, labels_b, class_names)
