"""Realism score of synthetic images (Kynkaanniemi et al. 2019; pcam-ddpm eq. 11).

For a synthetic feature vector phi_g and real feature vectors Phi_r::

    R(phi_g) = max over phi_r in Phi_r of  ||phi_r - NN_k(phi_r)|| / ||phi_g - phi_r||

where NN_k(phi_r) is the k-th nearest OTHER real vector, so ||phi_r - NN_k(phi_r)|| is the radius of
the k-NN ball around phi_r. R >= 1 exactly when phi_g lies inside (or on) at least one real ball;
pcam-ddpm keeps those images. The class-based variant uses only the real images of the sample's own
class, which also drops samples that look real but like another class (mislabelled).

Robustness (``robust_quantile``): the original authors' realism-score script builds the real manifold
with ``clamp_to_percentile=50``: the half of the real balls with the largest radii is discarded, because
a few outliers with huge k-NN balls would otherwise declare almost anything "realistic". pcam-ddpm cites
that method and states no deviation, so the default here is the original's: ``robust_quantile=0.5``
(keep the balls whose radius is <= the median radius). ``robust_quantile=None`` uses every real ball,
i.e. eq. 11 literally. The original computes the ratio of *squared* distances; eq. 11 (used here) has
plain distances. The two are monotone in each other and agree on R >= 1, so the selection is the same.

All distances are computed in blocks of rows and columns, so memory stays bounded (a few tens of MB)
for 50k x 50k comparisons; the cost is the matrix products themselves.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

#: realism thresholds are on R; R >= 1 <=> inside at least one real k-NN ball
DEFAULT_THRESHOLD = 1.0
#: fraction of smallest real balls kept (Kynkaenniemi et al.'s clamp_to_percentile=50)
DEFAULT_ROBUST_QUANTILE = 0.5
#: elements per distance block (float64): 4M elements = 32 MB
_BLOCK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------------------- distances
def _as_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:  # 1-D points
        x = x[:, None]
    return x.reshape(len(x), int(np.prod(x.shape[1:])))  # not -1: an empty set keeps its width


def _block_sizes(n_query: int, n_ref: int, chunk: int | None) -> tuple[int, int]:
    """Rows of query and of reference per block so that one distance block has ~_BLOCK_ELEMENTS."""
    if chunk is not None:
        q_rows = max(1, int(chunk))
    else:
        q_rows = max(1, min(n_query, 1024))
    r_rows = max(1, min(n_ref, _BLOCK_ELEMENTS // q_rows))
    return q_rows, r_rows


def iter_sq_distance_blocks(query: np.ndarray, ref: np.ndarray, *, chunk: int | None = None,
                            scale: float = 1.0, dtype=np.float64) -> Iterator[tuple[slice, slice, np.ndarray]]:
    """Yield ``(query_rows, ref_rows, squared_distances)`` blocks covering the full query x ref matrix.

    Inputs may be any numeric dtype (e.g. uint8 pixels); each block is converted to ``dtype`` and
    multiplied by ``scale`` on the fly, so a large uint8 image set never exists as floats at once.
    Both sides are centred on the reference mean first: the expansion |a|^2 + |b|^2 - 2ab loses
    precision when |a|, |b| are large compared with |a - b| (exact copies must come out ~0).
    """
    query, ref = _as_rows(query), _as_rows(ref)
    if query.shape[1] != ref.shape[1]:
        raise ValueError(f"feature dimensions differ: {query.shape[1]} vs {ref.shape[1]}")
    nq, nr = len(query), len(ref)
    if nq == 0 or nr == 0:
        return
    q_rows, r_rows = _block_sizes(nq, nr, chunk)
    centre = np.zeros(ref.shape[1])
    for s in range(0, nr, r_rows):
        centre += ref[s : s + r_rows].astype(np.float64).sum(0)
    centre *= scale / nr
    centre = centre.astype(dtype)

    def load(x: np.ndarray, sl: slice) -> np.ndarray:
        b = x[sl].astype(dtype)
        b *= scale
        b -= centre
        return b

    ref_norms = np.empty(nr, dtype=dtype)
    for s in range(0, nr, r_rows):
        b = load(ref, slice(s, s + r_rows))
        ref_norms[s : s + len(b)] = np.einsum("ij,ij->i", b, b)
    for qs in range(0, nq, q_rows):
        q_sl = slice(qs, min(qs + q_rows, nq))
        qb = load(query, q_sl)
        q_norms = np.einsum("ij,ij->i", qb, qb)
        for rs in range(0, nr, r_rows):
            r_sl = slice(rs, min(rs + r_rows, nr))
            rb = load(ref, r_sl)
            d2 = q_norms[:, None] + ref_norms[None, r_sl] - 2.0 * (qb @ rb.T)
            np.maximum(d2, 0.0, out=d2)
            yield q_sl, r_sl, d2


def _exact_sq_distances(query: np.ndarray, ref: np.ndarray, index: np.ndarray, scale: float,
                        rows: int = 256) -> np.ndarray:
    """float64 squared distances between each query row and the reference rows ``index`` (Nq, k)
    names; ``inf`` where the index is -1 (no neighbour)."""
    out = np.full(index.shape, np.inf)
    if len(ref) == 0:
        return out
    for s in range(0, len(query), rows):
        idx = index[s : s + rows]
        ok = idx >= 0
        q = query[s : s + rows].astype(np.float64) * scale
        r = ref[np.where(ok, idx, 0)].astype(np.float64) * scale  # (rows, k, D)
        d2 = np.einsum("ikd,ikd->ik", r - q[:, None], r - q[:, None])
        out[s : s + rows] = np.where(ok, d2, np.inf)
    return out


def nearest_neighbours(query: np.ndarray, ref: np.ndarray, k: int = 1, *,
                       query_groups: np.ndarray | None = None, ref_groups: np.ndarray | None = None,
                       chunk: int | None = None, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest reference rows of every query row (Euclidean), nearest first.

    ``query_groups`` / ``ref_groups`` (int arrays) exclude pairs with equal group ids: pass
    ``arange(N)`` for both to find each point's nearest OTHER point in the same set, or an
    image id repeated over its flipped variants to exclude an image's own variants.
    Returns ``(distances (Nq, k), indices (Nq, k))``; missing neighbours are ``inf`` / ``-1``.
    """
    query, ref = _as_rows(query), _as_rows(ref)
    nq = len(query)
    best_d2 = np.full((nq, k), np.inf)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    if (query_groups is None) != (ref_groups is None):
        raise ValueError("pass both query_groups and ref_groups, or neither")
    # The search runs in float32 (twice the matmul throughput of float64, half the memory traffic);
    # the distances of the pairs it finds are then recomputed exactly in float64 below, so what is
    # returned is exact and only near-ties (|d1^2 - d2^2| ~ 1e-6 |x|^2) may swap neighbours.
    for q_sl, r_sl, d2 in iter_sq_distance_blocks(query, ref, chunk=chunk, scale=scale, dtype=np.float32):
        if query_groups is not None:
            same = np.asarray(query_groups)[q_sl, None] == np.asarray(ref_groups)[None, r_sl]
            d2[same] = np.inf
        if k == 1:  # the common case (memorisation audit): an argmin, no candidate bookkeeping
            j = d2.argmin(axis=1)
            dj = d2[np.arange(len(j)), j]
            better = dj < best_d2[q_sl, 0]
            rows = np.flatnonzero(better) + q_sl.start
            best_d2[rows, 0] = dj[better]
            best_i[rows, 0] = j[better] + r_sl.start
            continue
        cand_d2 = np.concatenate([best_d2[q_sl], d2], axis=1)
        cand_i = np.concatenate([best_i[q_sl], np.broadcast_to(np.arange(r_sl.start, r_sl.stop), d2.shape)], axis=1)
        if cand_d2.shape[1] > k:
            part = np.argpartition(cand_d2, k - 1, axis=1)[:, :k]
            cand_d2 = np.take_along_axis(cand_d2, part, axis=1)
            cand_i = np.take_along_axis(cand_i, part, axis=1)
        best_d2[q_sl], best_i[q_sl] = cand_d2, cand_i
    best_d2 = _exact_sq_distances(query, ref, best_i, scale)
    order = np.argsort(best_d2, axis=1, kind="stable")
    best_d2 = np.take_along_axis(best_d2, order, axis=1)
    best_i = np.take_along_axis(best_i, order, axis=1)
    best_i[~np.isfinite(best_d2)] = -1
    return np.sqrt(best_d2), best_i


# ----------------------------------------------------------------------------------- realism score
def real_knn_radii(real_feats: np.ndarray, k: int = 3, *, chunk: int | None = None) -> np.ndarray:
    """Distance of each real vector to its k-th nearest OTHER real vector (the k-NN ball radius).

    Same definition as ``synthmed.metrics.prdc.knn_radii``; kept here so that selection does not
    depend on the metrics package. Duplicated real vectors count as neighbours at distance 0.
    """
    real = _as_rows(real_feats)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(real) <= k:
        raise ValueError(f"need more than k={k} real feature vectors for k-NN radii, got {len(real)}; "
                         "lower k or use more real images")
    ids = np.arange(len(real))
    d, _ = nearest_neighbours(real, real, k, query_groups=ids, ref_groups=ids, chunk=chunk)
    return d[:, k - 1]


def _active_balls(radii: np.ndarray, robust_quantile: float | None) -> np.ndarray:
    """Mask of the real balls used: radius > 0 and, if robust, radius <= the quantile of radii."""
    radii = np.asarray(radii, dtype=np.float64)
    # a zero-radius ball (k duplicates of one vector) contains only that vector; R would be 0/0 there
    use = radii > 0
    if robust_quantile is not None:
        if not 0 < robust_quantile <= 1:
            raise ValueError(f"robust_quantile must be in (0, 1] or None, got {robust_quantile}")
        use &= radii <= np.quantile(radii, robust_quantile)
    return use


def realism_scores(real_feats: np.ndarray, fake_feats: np.ndarray, k: int = 3, real_radii: np.ndarray | None = None,
                   chunk: int | None = None, *, robust_quantile: float | None = DEFAULT_ROBUST_QUANTILE) -> np.ndarray:
    """Realism score R of each fake vector against all real vectors (eq. 11), shape (N_fake,).

    ``real_radii``: precomputed k-NN radii of ``real_feats`` (e.g. reused across generation rounds);
    computed with ``k`` when omitted. ``chunk``: fake rows per distance block (memory bound).
    ``robust_quantile``: see the module docstring (default 0.5 as in Kynkaenniemi et al.; None = all
    balls). A fake vector that coincides with the centre of a used ball scores ``inf``.
    """
    real, fake = _as_rows(real_feats), _as_rows(fake_feats)
    radii = real_knn_radii(real, k, chunk=chunk) if real_radii is None else np.asarray(real_radii, np.float64)
    if len(radii) != len(real):
        raise ValueError(f"{len(radii)} radii for {len(real)} real vectors")
    use = _active_balls(radii, robust_quantile)
    scores = np.zeros(len(fake))
    if len(fake) == 0 or not use.any():
        return scores
    real_used, r_used = real[use], radii[use]
    for q_sl, r_sl, d2 in iter_sq_distance_blocks(fake, real_used, chunk=chunk):
        with np.errstate(divide="ignore"):
            ratio = r_used[None, r_sl] / np.sqrt(d2)  # d = 0 -> inf: the fake sits on a real centre
        scores[q_sl] = np.maximum(scores[q_sl], ratio.max(axis=1))
    return scores


def class_knn_radii(real_feats: np.ndarray, real_labels: np.ndarray, k: int = 3, *,
                    chunk: int | None = None) -> np.ndarray:
    """k-NN radii computed within each class (a real vector's neighbours are of its own class)."""
    real, labels = _as_rows(real_feats), np.asarray(real_labels).reshape(-1)
    if len(labels) != len(real):
        raise ValueError(f"{len(labels)} labels for {len(real)} real vectors")
    radii = np.empty(len(real))
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) <= k:
            raise ValueError(f"class {c} has {len(idx)} real images; the class-based realism score needs more "
                             f"than k={k}: lower k or use mode='global'")
        radii[idx] = real_knn_radii(real[idx], k, chunk=chunk)
    return radii


def class_realism_scores(real_feats: np.ndarray, real_labels: np.ndarray, fake_feats: np.ndarray,
                         fake_labels: np.ndarray, k: int = 3, real_radii: np.ndarray | None = None,
                         chunk: int | None = None, *,
                         robust_quantile: float | None = DEFAULT_ROBUST_QUANTILE) -> np.ndarray:
    """Class-based realism score: each fake is scored only against the real vectors of its own class
    (radii, and the robust pruning, also within that class). A fake whose label has no real image
    cannot be judged and scores 0 (rejected)."""
    real, fake = _as_rows(real_feats), _as_rows(fake_feats)
    real_labels, fake_labels = np.asarray(real_labels).reshape(-1), np.asarray(fake_labels).reshape(-1)
    if len(fake_labels) != len(fake):
        raise ValueError(f"{len(fake_labels)} labels for {len(fake)} fake vectors")
    if real_radii is None:
        present = np.isin(real_labels, np.unique(fake_labels))
        radii = np.full(len(real), np.nan)
        radii[present] = class_knn_radii(real[present], real_labels[present], k, chunk=chunk)
    else:
        radii = np.asarray(real_radii, np.float64)
    scores = np.zeros(len(fake))
    for c in np.unique(fake_labels):
        f_idx = np.flatnonzero(fake_labels == c)
        r_idx = np.flatnonzero(real_labels == c)
        if len(r_idx) == 0:
            continue
        scores[f_idx] = realism_scores(real[r_idx], fake[f_idx], k, real_radii=radii[r_idx], chunk=chunk,
                                       robust_quantile=robust_quantile)
    return scores


def select(scores: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Boolean mask of the samples to keep: R >= threshold (pcam-ddpm keeps R >= 1)."""
    return np.asarray(scores) >= threshold


def score_summary(scores: np.ndarray) -> dict:
    """JSON-friendly quantiles of a score array (inf, from fakes on a real centre, counted apart)."""
    s = np.asarray(scores, dtype=np.float64)
    finite = s[np.isfinite(s)]
    out: dict = {"n": int(len(s)), "n_infinite": int(len(s) - len(finite))}
    if len(finite):
        q = np.quantile(finite, [0.05, 0.25, 0.5, 0.75, 0.95])
        out.update({f"q{int(p * 100):02d}": float(v) for p, v in zip([0.05, 0.25, 0.5, 0.75, 0.95], q)})
    return out


__all__ = [
    "DEFAULT_ROBUST_QUANTILE",
    "DEFAULT_THRESHOLD",
    "class_knn_radii",
    "class_realism_scores",
    "iter_sq_distance_blocks",
    "nearest_neighbours",
    "real_knn_radii",
    "realism_scores",
    "score_summary",
    "select",
]
