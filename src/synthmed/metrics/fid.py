"""Fréchet distance between Gaussians fitted to features (FID with Inception features).

Statistics are accumulated in one pass (:class:`FeatureStats`): memory is O(d^2) whatever
the number of images, batches can arrive in any order and size, and per-class statistics
merge exactly into the total. Reference statistics of a real split are saved as .npz
(``mu``/``sigma`` like pytorch-fid's files, plus ``n`` and the extractor's description)
so they are computed once.

The matrix square root uses the symmetric eigenvalue formulation (see
:func:`frechet_distance`), not ``scipy.linalg.sqrtm``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

#: extractor fields that must agree for two statistics to live in the same feature space
_SPACE_KEYS = ("name", "dim", "weights_hash", "input_policy")


def small_n_warning(n: int, dim: int) -> str | None:
    """The warning to attach when ``n`` images cannot give a full-rank ``dim``-d covariance."""
    if n <= dim:
        return (f"only {n} images for {dim}-d features: the covariance is singular, so the FID is biased upwards "
                f"and unstable; compare FIDs only at equal image counts, or prefer KID")
    return None


class FeatureStats:
    """Streaming mean and covariance of feature vectors (float64).

    Uses Chan et al.'s parallel update: each batch contributes its own mean and centred
    scatter matrix, merged with the running ones through the difference of the means.
    Unlike accumulating the raw sum of outer products (then subtracting n*mu*mu^T), this
    does not cancel catastrophically when features have a large mean relative to their
    spread; the result is independent of batch size and order up to rounding.
    """

    def __init__(self, dim: int | None = None, extractor: dict | None = None, fingerprint: str | None = None):
        self.n = 0
        self.dim = dim
        self._mean = None if dim is None else np.zeros(dim)
        self._scatter = None if dim is None else np.zeros((dim, dim))  # sum of (x - mean)(x - mean)^T
        #: the extractor's describe(): which feature space these statistics are in
        self.extractor = dict(extractor or {})
        #: fingerprint of the dataset the statistics were computed from (for reference caches)
        self.fingerprint = fingerprint

    @classmethod
    def from_features(cls, features: np.ndarray, extractor: dict | None = None,
                      fingerprint: str | None = None) -> "FeatureStats":
        stats = cls(np.asarray(features).shape[1], extractor, fingerprint)
        return stats.update(features)

    def update(self, features: np.ndarray) -> "FeatureStats":
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2:
            raise ValueError(f"features must be 2-d (N, d), got shape {x.shape}")
        if self.dim is None:
            self.dim, self._mean, self._scatter = x.shape[1], np.zeros(x.shape[1]), np.zeros((x.shape[1],) * 2)
        if x.shape[1] != self.dim:
            raise ValueError(f"features have {x.shape[1]} dimensions, these statistics {self.dim}")
        if len(x) == 0:
            return self
        if not np.isfinite(x).all():
            raise ValueError("features contain NaN or infinity")
        m = len(x)
        batch_mean = x.mean(axis=0)
        centred = x - batch_mean
        self._merge(m, batch_mean, centred.T @ centred)
        return self

    def _merge(self, m: int, mean: np.ndarray, scatter: np.ndarray) -> None:
        n = self.n
        total = n + m
        delta = mean - self._mean
        self._mean = self._mean + delta * (m / total)
        self._scatter = self._scatter + scatter + np.outer(delta, delta) * (n * m / total)
        self.n = total

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Add another set's statistics (e.g. per-class stats into a total), in place."""
        if other.n == 0:
            return self
        if self.dim is None:
            self.dim, self._mean, self._scatter = other.dim, np.zeros(other.dim), np.zeros((other.dim,) * 2)
            self.extractor = self.extractor or dict(other.extractor)
        check_same_space(self, other)
        self._merge(other.n, other._mean, other._scatter)
        return self

    @property
    def mean(self) -> np.ndarray:
        if self.n == 0:
            raise ValueError("no features accumulated yet")
        return self._mean.copy()

    @property
    def cov(self) -> np.ndarray:
        """Unbiased covariance (ddof=1), as pytorch-fid and torch-fidelity compute it."""
        if self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, have {self.n}")
        return self._scatter / (self.n - 1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``mu``, ``sigma``, ``n`` and the metadata (JSON) to an .npz file, atomically."""
        import tempfile

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"extractor": self.extractor, "fingerprint": self.fingerprint, "n": self.n}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp.npz")
        os.close(fd)
        try:
            np.savez(tmp, mu=self.mean, sigma=self.cov, n=np.int64(self.n), meta=np.array(json.dumps(meta)))
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeatureStats":
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"feature statistics file not found: {path}")
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("mu", "sigma", "n", "meta") if k not in f]
            if missing:
                raise ValueError(f"{path}: missing {missing}; not a synthmed feature statistics file "
                                 f"(the image count and extractor are needed to compare statistics safely)")
            mu, sigma, n = f["mu"].astype(np.float64), f["sigma"].astype(np.float64), int(f["n"])
            meta = json.loads(str(f["meta"]))
        stats = cls(len(mu), meta.get("extractor"), meta.get("fingerprint"))
        stats.n, stats._mean, stats._scatter = n, mu, sigma * (n - 1)
        return stats

    def __repr__(self) -> str:
        return f"FeatureStats(n={self.n}, dim={self.dim}, extractor={self.extractor.get('name')!r})"


def check_same_space(a: FeatureStats, b: FeatureStats) -> None:
    """Refuse to compare statistics from different extractors: the distance would be meaningless."""
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ: {a.dim} vs {b.dim}")
    if a.extractor and b.extractor:
        diff = [k for k in _SPACE_KEYS if a.extractor.get(k) != b.extractor.get(k)]
        if diff:
            raise ValueError("statistics come from different feature extractors ("
                             + "; ".join(f"{k}: {a.extractor.get(k)!r} vs {b.extractor.get(k)!r}" for k in diff)
                             + "); recompute both with the same one")


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((sigma + sigma.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2)).

    The trace term is computed as the sum of square roots of the eigenvalues of the
    symmetric PSD matrix sqrt(sigma1) sigma2 sqrt(sigma1), which has the same eigenvalues
    as sigma1 sigma2. Why not ``scipy.linalg.sqrtm(sigma1 @ sigma2)``: that product is not
    symmetric, its Schur-based root turns complex or non-finite when the covariances are
    singular (fewer images than dimensions, the normal case for small medical classes), and
    needs the eps*I retry and imaginary-part dropping of pytorch-fid. Both roots here come
    from ``eigh`` on symmetric matrices, whose eigenvalues are real; tiny negative ones
    from rounding are clipped to zero. It is also faster (two d x d eigendecompositions).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1),) * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    for arr in (mu1, mu2, s1, s2):
        if not np.isfinite(arr).all():
            raise ValueError("means and covariances must be finite")
    root1 = _psd_sqrt(s1)
    inner = root1 @ s2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eig, 0.0, None)).sum()
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt
    # the exact value is a squared distance (>= 0); a negative result is rounding noise around 0
    return float(max(value, 0.0))


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> dict:
    """FID between two :class:`FeatureStats`, with image counts, extractor and warnings."""
    check_same_space(a, b)
    warnings = [w for w in (small_n_warning(s.n, s.dim) for s in (a, b) if s.n) if w]
    return {
        "fid": frechet_distance(a.mean, a.cov, b.mean, b.cov),
        "n_a": a.n,
        "n_b": b.n,
        "dim": a.dim,
        "extractor": a.extractor or b.extractor or None,
        "warnings": list(dict.fromkeys(warnings)),
    }


def frechet_distance_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between the sample Gaussians (mean, ddof=1 covariance) of two feature arrays.

    Same value as :func:`frechet_distance` on their statistics, but when a set has fewer images
    than feature dimensions (a class of 300 images in Inception's 2048-d space, and every bootstrap
    replicate of it) the trace term goes through the images instead of two d x d eigenproblems:
    with centred X (n_a x d) and Y (n_b x d), sigma_a sigma_b = X'X Y'Y / c, c = (n_a - 1)(n_b - 1),
    whose non-zero eigenvalues are those of (X Y')(X Y')' / c, i.e. the squared singular values
    of X Y' / sqrt(c). So tr((sigma_a sigma_b)^(1/2)) = ||X Y'||_* / sqrt(c) (nuclear norm), an
    SVD of an n_a x n_b matrix: O(min(n_a, n_b)^2 max(n_a, n_b)) instead of O(d^3).
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need two (N, d) feature arrays of equal d, got {a.shape} and {b.shape}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a covariance needs at least 2 feature vectors, have {len(a)} and {len(b)}")
    d = a.shape[1]
    if min(len(a), len(b)) >= d:
        return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("means and covariances must be finite")
    mu_a, mu_b = a.mean(0), b.mean(0)
    x, y = a - mu_a, b - mu_b
    c = (len(a) - 1) * (len(b) - 1)
    trace_sqrt = np.linalg.svd(x @ y.T, compute_uv=False).sum() / np.sqrt(c)
    diff = mu_a - mu_b
    tr_a = np.einsum("ij,ij->", x, x) / (len(a) - 1)
    tr_b = np.einsum("ij,ij->", y, y) / (len(b) - 1)
    return float(max(diff @ diff + tr_a + tr_b - 2.0 * trace_sqrt, 0.0))


def fid(features_a: np.ndarray, features_b: np.ndarray, extractor: dict | None = None) -> dict:
    """FID between two feature arrays (N_a, d) and (N_b, d); see :func:`fid_from_stats`."""
    return fid_from_stats(FeatureStats.from_features(features_a, extractor),
                          FeatureStats.from_features(features_b, extractor))


def per_class(metric, too_few: dict, name: str, features_a, labels_a, features_b, labels_b,
              class_names: list[str]) -> dict:
    """Apply ``metric(fa, fb) -> dict with "warnings"`` per class and over all images; a class with
    fewer than 2 images on a side gets ``too_few`` (values None) and a warning instead."""
    features_a, features_b = np.asarray(features_a), np.asarray(features_b)
    la, lb = np.asarray(labels_a).reshape(-1), np.asarray(labels_b).reshape(-1)
    rows, warnings = {}, []
    for c, cls in enumerate(class_names):
        fa, fb = features_a[la == c], features_b[lb == c]
        if len(fa) < 2 or len(fb) < 2:
            rows[cls] = {**too_few, "n_a": len(fa), "n_b": len(fb),
                         "warnings": [f"{len(fa)} vs {len(fb)} images; {name} needs at least 2 on each side"]}
        else:
            rows[cls] = metric(fa, fb)
        warnings += [f"class {cls!r}: {w}" for w in rows[cls]["warnings"]]
    total = metric(features_a, features_b)
    return {"total": total, "per_class": rows, "warnings": total["warnings"] + warnings}


def fid_per_class(features_a: np.ndarray, labels_a: np.ndarray, features_b: np.ndarray, labels_b: np.ndarray,
                  class_names: list[str], extractor: dict | None = None) -> dict:
    """FID per class (class-conditional realism) and over all images.

    A class with fewer than 2 images on either side gets ``fid: None`` and a warning."""
    return per_class(lambda a, b: fid(a, b, extractor), {"fid": None, "dim": np.asarray(features_a).shape[1]},
                     "FID", features_a, labels_a, features_b, labels_b, class_names)
