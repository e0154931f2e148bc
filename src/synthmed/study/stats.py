"""Agreement and proportion statistics of a reader study, each a few lines that can be checked by hand.

- Cohen's kappa (Cohen 1960): kappa = (p_o - p_e) / (1 - p_e), p_o the observed agreement of two raters
  (or a reader and the truth), p_e = sum_c p1(c) p2(c) the agreement expected from their marginals alone.
- Fleiss' kappa (Fleiss 1971): N subjects each rated by n raters into k categories; n_ij raters put
  subject i in category j. P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P_bar their mean, p_j = sum_i n_ij / (N n),
  P_e = sum_j p_j^2, kappa = (P_bar - P_e) / (1 - P_e).
- An exact two-sided binomial test of k successes in n against chance p (scipy's ``binomtest``), and
  the exact (Clopper-Pearson) interval of a proportion.

A kappa whose expected agreement is 1 (everyone, truth included, gave one single category) is
undefined: None, never a made-up number.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
from scipy import stats


def cohen_kappa(a: Sequence, b: Sequence) -> float | None:
    """Cohen's kappa of two equally long label sequences (any hashable labels)."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"cohen_kappa: {len(a)} vs {len(b)} labels")
    if not a:
        return None
    n = len(a)
    cats = sorted(set(a) | set(b), key=str)
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum((a.count(c) / n) * (b.count(c) / n) for c in cats)
    if p_e >= 1.0:
        return None
    return (p_o - p_e) / (1.0 - p_e)


def fleiss_kappa(counts) -> float | None:
    """Fleiss' kappa of an (N subjects, k categories) table of rater counts, the same number of
    raters for every subject (at least 2)."""
    m = np.asarray(counts, dtype=float)
    if m.ndim != 2 or len(m) == 0:
        raise ValueError("fleiss_kappa: expected a non-empty (subjects, categories) table")
    n = m.sum(axis=1)
    if not np.allclose(n, n[0]) or n[0] < 2:
        raise ValueError(f"fleiss_kappa: every subject needs the same number (>= 2) of ratings, got {sorted(set(n))}")
    n = n[0]
    p_i = (np.square(m).sum(axis=1) - n) / (n * (n - 1))
    p_bar = p_i.mean()
    p_j = m.sum(axis=0) / m.sum()
    p_e = float(np.square(p_j).sum())
    if p_e >= 1.0:
        return None
    return float((p_bar - p_e) / (1.0 - p_e))


def binomial_test(k: int, n: int, p: float = 0.5) -> float | None:
    """Exact two-sided p-value of k successes in n trials against chance ``p``."""
    if n == 0:
        return None
    return float(stats.binomtest(int(k), int(n), p, alternative="two-sided").pvalue)


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float, float] | None:
    """Exact (Clopper-Pearson) interval of the proportion k / n."""
    if n == 0:
        return None
    ci = stats.binomtest(int(k), int(n)).proportion_ci(confidence_level=level, method="exact")
    return float(ci.low), float(ci.high)


def auc(scores_positive: Sequence[float], scores_negative: Sequence[float]) -> float | None:
    """P(score of a positive > score of a negative) + half the ties (the Mann-Whitney AUC)."""
    pos, neg = np.asarray(scores_positive, float), np.asarray(scores_negative, float)
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def pairwise_kappas(labels_by_rater: dict[str, dict]) -> list[dict]:
    """Cohen's kappa of every pair of raters over the subjects both rated. ``labels_by_rater``:
    rater -> {subject: label}."""
    out = []
    for r1, r2 in combinations(labels_by_rater, 2):
        common = sorted(set(labels_by_rater[r1]) & set(labels_by_rater[r2]))
        out.append({"reader_a": r1, "reader_b": r2, "n": len(common),
                    "kappa": cohen_kappa([labels_by_rater[r1][s] for s in common],
                                         [labels_by_rater[r2][s] for s in common])})
    return out


def summary(values: Sequence[float | None]) -> dict:
    """mean / min / max / n of the defined values."""
    v = [x for x in values if x is not None]
    if not v:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": float(np.mean(v)), "min": float(np.min(v)), "max": float(np.max(v)), "n": len(v)}
