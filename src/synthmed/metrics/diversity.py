"""Mode-collapse guard: is each class's synthetic set as varied as the real class?

A class-conditional GAN can collapse a class to one or a few images and still score high on
conditional accuracy and precision. Per class this measures, in the same features as the other
metrics:

* **spread**: the mean pairwise distance between the synthetic images of the class, next to the
  same for the real images of the class; ``spread_ratio`` = synthetic / real. About 1 for a
  generator as varied as the data; near 0 when the class collapsed to few images.
* **recall** and **coverage** of the synthetic class against the real class
  (:mod:`synthmed.metrics.prdc`): how much of the real class the synthetic images reach.

A class is flagged as collapsed when its spread ratio is below ``min_spread_ratio`` (0.5: half the
real variety). Recall and coverage are reported with it, not used for the flag: an undertrained
but varied generator also has low recall, and that is not collapse.
"""

from __future__ import annotations

import numpy as np

from synthmed.metrics.prdc import DEFAULT_K, iter_distance_blocks, prdc

#: flag a class whose synthetic spread is below this fraction of the real class's
MIN_SPREAD_RATIO = 0.5
#: pairwise distances are computed on at most this many images per set (random subset, seeded)
MAX_PAIRWISE = 1000


def mean_pairwise_distance(features: np.ndarray, *, max_n: int = MAX_PAIRWISE, seed: int = 0) -> float | None:
    """Mean Euclidean distance over all pairs of distinct rows; None for fewer than 2 rows."""
    f = np.asarray(features, dtype=np.float64)
    if len(f) < 2:
        return None
    if len(f) > max_n:
        f = f[np.random.default_rng(seed).choice(len(f), max_n, replace=False)]
    total = 0.0
    for _start, _stop, block in iter_distance_blocks(f, f):
        total += float(block.sum())
    n = len(f)
    return total / (n * (n - 1))  # the diagonal is 0


def class_diversity(real_features: np.ndarray, real_labels: np.ndarray, synthetic_features: np.ndarray,
                    synthetic_labels: np.ndarray, class_names: list[str], *, k: int = DEFAULT_K,
                    min_spread_ratio: float = MIN_SPREAD_RATIO, seed: int = 0) -> dict:
    """Per class: spread of synthetic and real images, their ratio, recall and coverage, and whether
    the class collapsed. ``collapsed``: the names of the flagged classes."""
    per_class, collapsed = {}, []
    for c, name in enumerate(class_names):
        r = np.asarray(real_features)[np.asarray(real_labels) == c]
        s = np.asarray(synthetic_features)[np.asarray(synthetic_labels) == c]
        if len(s) == 0:
            continue
        real_spread = mean_pairwise_distance(r, seed=seed)
        syn_spread = mean_pairwise_distance(s, seed=seed)
        ratio = (syn_spread / real_spread if real_spread and syn_spread is not None else None)
        entry = {"n_real": int(len(r)), "n_synthetic": int(len(s)), "synthetic_spread": syn_spread,
                 "real_spread": real_spread, "spread_ratio": ratio, "recall": None, "coverage": None}
        if len(r) > k and len(s) > k:
            m = prdc(r, s, k=k)
            entry["recall"], entry["coverage"] = m["recall"], m["coverage"]
        entry["collapsed"] = bool(ratio is not None and ratio < min_spread_ratio)
        if entry["collapsed"]:
            collapsed.append(name)
        per_class[name] = entry
    return {"per_class": per_class, "collapsed": collapsed, "min_spread_ratio": min_spread_ratio, "k": k,
            "criterion": "mean pairwise feature distance of a class's synthetic images / that of its real images "
                         f"< {min_spread_ratio:g}"}


def diversity_warning(result: dict | None) -> str | None:
    """One line naming the collapsed classes with their numbers, or None."""
    if not result or not result.get("collapsed"):
        return None
    parts = []
    for name in result["collapsed"]:
        e = result["per_class"][name]
        extra = (f", recall {e['recall']:.2f}, coverage {e['coverage']:.2f}" if e.get("recall") is not None else "")
        parts.append(f"'{name}' spread {e['spread_ratio']:.2f} x real{extra}")
    return (f"possible mode collapse: the synthetic images of {len(parts)} class(es) are far less varied than the "
            f"real ones ({'; '.join(parts)}; flagged below {result['min_spread_ratio']:g} x the real spread); look at "
            "the image grid, train longer or with a stronger gradient penalty, or use another generator kind")


__all__ = ["class_diversity", "mean_pairwise_distance", "diversity_warning", "MIN_SPREAD_RATIO"]
