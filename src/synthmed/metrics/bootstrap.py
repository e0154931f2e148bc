"""Bootstrap confidence intervals for set-vs-set metrics (FID, KID, precision, recall, ...).

Resampling scheme: each replicate draws the real set AND the synthetic set with replacement,
each at its own original size, independently, and recomputes the metric; the interval is the
percentile interval [alpha/2, 1 - alpha/2] of the replicates. Both sets are resampled because
both are finite samples: a small real class is as much a source of noise as the generator.

Known caveats, stated so that nobody reads more into the interval than it holds:

* FID: a resample contains ~63% distinct points, so its covariance estimate is noisier and FID
  (a biased, sample-size-dependent estimator) is pushed *up*; bootstrap FIDs therefore sit
  mostly above the point estimate. The interval shows the spread, not an unbiased range.
* k-NN metrics: an exact duplicate counts as a neighbour, so repeated points shrink k-NN radii.
  ``distinct=True`` keeps one copy of each drawn point (the metric then sees ~63% of the
  points, with no zero-distance duplicates); :func:`synthmed.metrics.evaluate.evaluate` uses it
  for precision / recall / density / coverage. Measured on two 500-point Gaussian clouds
  (d=16, k=3): the plain bootstrap put coverage at [0.43, 0.54] around a point value of 0.73
  and precision at [0.45, 0.58] around 0.61 (intervals that miss their own estimate), while
  the distinct-point bootstrap gave [0.68, 0.80] and [0.58, 0.67]. Seeing fewer points makes
  the distinct-point interval somewhat wider than the true sampling spread: conservative.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

DEFAULT_N_BOOT = 200
DEFAULT_ALPHA = 0.05


def _summary(value: float, replicates: np.ndarray, alpha: float, n_boot: int) -> dict:
    finite = replicates[np.isfinite(replicates)]
    if len(finite) == 0:
        low = high = std = float("nan")
    else:
        low, high = (float(v) for v in np.quantile(finite, [alpha / 2, 1 - alpha / 2]))
        std = float(finite.std(ddof=1)) if len(finite) > 1 else 0.0
    return {"value": float(value), "ci_low": low, "ci_high": high, "std": std, "n_boot": int(n_boot),
            "n_failed": int(len(replicates) - len(finite)), "alpha": float(alpha)}


def _resample(rng: np.random.Generator, n: int, distinct: bool) -> np.ndarray:
    idx = rng.integers(0, n, size=n)
    return np.unique(idx) if distinct else idx


def bootstrap_ci(metric_fn: Callable, real_feats, fake_feats, n_boot: int = DEFAULT_N_BOOT,
                 alpha: float = DEFAULT_ALPHA, seed: int = 0, *, distinct: bool = False,
                 point_estimate=None) -> dict:
    """Percentile bootstrap interval of ``metric_fn(real_feats, fake_feats)``.

    ``metric_fn`` returns a float, or a dict of floats (several metrics from one computation,
    e.g. precision and recall). Returns ``dict(value, ci_low, ci_high, std, n_boot, n_failed,
    alpha)`` for a float metric, or ``{key: that dict}`` for a dict metric. ``value`` is the
    metric on the full sets (pass ``point_estimate`` to reuse one already computed). A
    replicate that raises ``ValueError`` (e.g. too few distinct points) is counted in
    ``n_failed`` and left out.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    real = np.asarray(real_feats)
    fake = np.asarray(fake_feats)
    value = metric_fn(real, fake) if point_estimate is None else point_estimate
    keys = list(value) if isinstance(value, dict) else None

    rng = np.random.default_rng(seed)
    reps = np.full((n_boot, len(keys) if keys else 1), np.nan)
    for b in range(n_boot):
        ri = _resample(rng, len(real), distinct)
        fi = _resample(rng, len(fake), distinct)
        try:
            out = metric_fn(real[ri], fake[fi])
        except ValueError:
            continue
        reps[b] = [out[key] for key in keys] if keys else [out]

    if keys is None:
        return _summary(value, reps[:, 0], alpha, n_boot)
    return {key: _summary(value[key], reps[:, j], alpha, n_boot) for j, key in enumerate(keys)}


def bootstrap_mean_ci(values, n_boot: int = DEFAULT_N_BOOT, alpha: float = DEFAULT_ALPHA, seed: int = 0) -> dict:
    """Percentile bootstrap interval of the mean of per-item values (vectorised: one index matrix)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if len(v) == 0:
        raise ValueError("bootstrap_mean_ci needs at least one value")
    rng = np.random.default_rng(seed)
    reps = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    return _summary(float(v.mean()), reps, alpha, n_boot)
