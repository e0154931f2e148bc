"""k-NN manifold metrics: improved precision / recall, F1, density and coverage.

Conventions (pinned by tests/test_prdc.py):

* **precision** (Kynkäänniemi et al. 2019) = fraction of *synthetic* samples that fall inside
  the *real* manifold, i.e. within the k-NN ball of at least one real sample. The ball of a
  real sample has radius = distance to its k-th nearest *other* real sample. Low precision:
  the generator produces samples unlike any real one (poor fidelity).
* **recall** = the same with the roles swapped: fraction of *real* samples inside the
  *synthetic* manifold. Low recall: parts of the real distribution are never generated
  (mode dropping).
* **F1** = harmonic mean of precision and recall (0 when both are 0).
* **density** (Naeem et al. 2020) = (1 / kM) * sum over synthetic samples of the number of real
  balls containing it. ~1 when the two sets come from the same distribution; it is not
  capped at 1 (samples crowded where real samples are dense score higher).
* **coverage** = fraction of *real* samples whose own ball contains at least one synthetic
  sample. Uses only real radii, so it is robust to synthetic outliers.

A point exactly on a ball boundary counts as inside (``<=``), as in both papers.

Distances are exact Euclidean distances in float64, computed chunk by chunk so that memory
stays bounded (at most ``chunk_size`` x N values at a time) for 10k-50k points.
"""

from __future__ import annotations

import numpy as np

DEFAULT_K = 3
# Upper bound on the number of float64 values in one distance block (64 MiB); the row count of
# a chunk is derived from it so that a block never grows with the square of the set size.
MAX_BLOCK_ELEMENTS = 2**23


def _as_features(x, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} features must be a 2-D array (N, d), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} features contain NaN or inf")
    return arr


def _rows_per_chunk(n_cols: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        return int(chunk_size)
    return max(1, MAX_BLOCK_ELEMENTS // max(1, n_cols))


def _distance_block(a: np.ndarray, a_sq: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
    """Euclidean distances between the rows of ``a`` and ``b`` (both float64).

    ||a||^2 + ||b||^2 - 2 a.b runs on BLAS (the direct difference form is orders of magnitude
    slower at d = 512-2048); rounding can push tiny squared distances below zero, hence the clip.
    """
    sq = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
    np.maximum(sq, 0.0, out=sq)
    return np.sqrt(sq, out=sq)


def iter_distance_blocks(a, b, chunk_size: int | None = None):
    """Yield ``(start, stop, block)`` with ``block`` = distances between ``a[start:stop]`` and all of ``b``."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a_sq = np.einsum("ij,ij->i", a, a)
    b_sq = np.einsum("ij,ij->i", b, b)
    rows = _rows_per_chunk(len(b), chunk_size)
    for start in range(0, len(a), rows):
        stop = min(start + rows, len(a))
        yield start, stop, _distance_block(a[start:stop], a_sq[start:stop], b, b_sq)


def knn_radii(features, k: int = DEFAULT_K, chunk_size: int | None = None) -> np.ndarray:
    """Distance from every sample to its k-th nearest *other* sample of the same set, shape (N,).

    The sample itself (distance 0) is excluded; an exact duplicate of it is not, so a point
    repeated more than k times gets radius 0.
    """
    x = _as_features(features, "knn_radii")
    n = len(x)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need at least {k + 1} samples, got {n}")
    radii = np.empty(n, dtype=np.float64)
    for start, stop, block in iter_distance_blocks(x, x, chunk_size):
        # Each row's own distance is the smallest entry (0 up to rounding); force it to exactly 0
        # so that index k of the partial sort is the k-th neighbour *excluding* the sample itself.
        block[np.arange(stop - start), np.arange(start, stop)] = 0.0
        radii[start:stop] = np.partition(block, k, axis=1)[:, k]
    return radii


def _manifold_counts(real: np.ndarray, fake: np.ndarray, real_radii: np.ndarray, fake_radii: np.ndarray,
                     chunk_size: int | None) -> dict:
    """One pass over the synthetic x real distance matrix collecting everything the four metrics need."""
    fake_in_real = np.zeros(len(fake), dtype=bool)  # precision
    real_in_fake = np.zeros(len(real), dtype=bool)  # recall
    balls_containing_fake = 0  # density numerator
    nearest_fake = np.full(len(real), np.inf)  # coverage: distance from each real sample to its nearest fake
    for start, stop, block in iter_distance_blocks(fake, real, chunk_size):
        inside_real_ball = block <= real_radii[None, :]
        fake_in_real[start:stop] = inside_real_ball.any(axis=1)
        balls_containing_fake += int(inside_real_ball.sum())
        real_in_fake |= (block <= fake_radii[start:stop, None]).any(axis=0)
        np.minimum(nearest_fake, block.min(axis=0), out=nearest_fake)
    return {
        "fake_in_real": fake_in_real,
        "real_in_fake": real_in_fake,
        "balls_containing_fake": balls_containing_fake,
        "real_covered": nearest_fake <= real_radii,
    }


def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def prdc(real, fake, k: int = DEFAULT_K, chunk_size: int | None = None) -> dict:
    """Precision, recall, F1, density and coverage of ``fake`` against ``real`` (both (N, d))."""
    real = _as_features(real, "real")
    fake = _as_features(fake, "synthetic")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature dimensions differ: real {real.shape[1]}, synthetic {fake.shape[1]}")
    real_radii = knn_radii(real, k, chunk_size)
    fake_radii = knn_radii(fake, k, chunk_size)
    c = _manifold_counts(real, fake, real_radii, fake_radii, chunk_size)
    precision = float(c["fake_in_real"].mean())
    recall = float(c["real_in_fake"].mean())
    return {
        "precision": precision,
        "recall": recall,
        "f1": _f1(precision, recall),
        "density": float(c["balls_containing_fake"] / (k * len(fake))),
        "coverage": float(c["real_covered"].mean()),
    }


def precision_recall(real, fake, k: int = DEFAULT_K, chunk_size: int | None = None) -> dict:
    """Improved precision / recall (Kynkäänniemi et al. 2019) and their F1; see the module docstring."""
    out = prdc(real, fake, k, chunk_size)
    return {key: out[key] for key in ("precision", "recall", "f1")}


def density_coverage(real, fake, k: int = DEFAULT_K, chunk_size: int | None = None) -> dict:
    """Density and coverage (Naeem et al. 2020); see the module docstring."""
    out = prdc(real, fake, k, chunk_size)
    return {key: out[key] for key in ("density", "coverage")}
