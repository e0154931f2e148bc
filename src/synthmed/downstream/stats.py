"""Summary statistics over repeats (data subsets and/or seeds).

Protocols are compared *paired*: repeat i of every protocol shares the training subset, the
seed and therefore the initial weights, so the per-repeat difference removes the variation
that the protocols have in common, and its t interval is the honest answer to "is the gain
real?". Undefined values (None, e.g. AUC on a test set missing a class) are left out and
the count ``n`` says how many values remain.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats


def mean_std(values: Sequence[float | None]) -> dict:
    """Mean and sample std (ddof=1) of the defined values; std None below two values."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    return {"mean": float(v.mean()) if len(v) else None,
            "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "n": int(len(v))}


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], confidence: float = 0.95) -> dict:
    """Mean of the paired differences a[i] - b[i] with a two-sided t confidence interval.

    CI = mean ± t_{(1+confidence)/2, n-1} * std / sqrt(n) with the sample std (ddof=1);
    None below two pairs. Pairs with a None on either side are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired_difference: {len(a)} values vs {len(b)}; pairs need equal lengths")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = np.asarray([x - y for x, y in zip(a, b) if x is not None and y is not None], dtype=np.float64)
    n = len(d)
    out = {"mean": float(d.mean()) if n else None, "std": None, "ci_low": None, "ci_high": None, "n": n,
           "confidence": confidence}
    if n >= 2:
        std = float(d.std(ddof=1))
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out
