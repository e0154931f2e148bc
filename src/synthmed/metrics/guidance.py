"""Choosing the classifier-free guidance scale on REAL VALIDATION images, never on test.

Guidance trades variety for class identity: a higher scale w makes each image more clearly its
class and the set less varied. Which w serves a dataset best is an empirical question, so after
training ``synthmed run`` can sample a few images per class at each candidate scale and score them
against the real validation split with one stated criterion:

    score(w) = conditional accuracy(w) x coverage(w)

- conditional accuracy: the fraction of the synthetic images the judge (the classifier trained on
  the real training split, early-stopped on the real validation split) assigns to the class they
  were generated for. It rewards class identity;
- coverage (Naeem et al. 2020): the fraction of the real validation images whose k-NN ball (in the
  judge's penultimate features, k = ``evaluate.k``) holds at least one synthetic image, all classes
  pooled. It rewards variety and drops when guidance collapses the images onto a few prototypes.

The product is high only when both are. The highest score wins (ties: the smaller scale). The test
split is never looked at: :func:`choose_guidance` refuses a real set that is the test split, the
generator's training split or a synthetic set. Note that the validation split is not wholly
untouched by the judge: it chose the judge's early-stopping epoch. It is still held out from the
generator and from every number the report gives on test.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

from synthmed.data.dataset import ImageDataset

CRITERION = ("conditional accuracy x coverage of the synthetic images against the real validation split "
             "(judge's decisions and features, k-NN coverage)")

#: ``score(synthetic, real_val) -> {"score": float, ...}``; other entries are recorded next to it
Scorer = Callable[[ImageDataset, ImageDataset], dict]


def accuracy_times_coverage(judge, k: int = 3) -> Scorer:
    """The default criterion, with ``judge`` a :class:`~synthmed.features.domain.DomainExtractor`:
    its classifier decides conditional accuracy, its features give the coverage."""
    from synthmed.metrics.conditional_accuracy import conditional_accuracy
    from synthmed.metrics.prdc import prdc

    real_features: dict[str, object] = {}  # the validation features, computed once for every candidate

    def score(synthetic: ImageDataset, real_val: ImageDataset) -> dict:
        acc = conditional_accuracy(judge.classifier, synthetic)["accuracy"]["accuracy"]
        fp = real_val.fingerprint()
        if fp not in real_features:
            real_features[fp] = judge.extract(real_val)
        coverage = prdc(real_features[fp], judge.extract(synthetic), k=k)["coverage"]
        return {"conditional_accuracy": acc, "coverage": coverage, "score": acc * coverage}

    return score


def choose_guidance(generator, real_val: ImageDataset, candidates: Sequence[float], *, score: Scorer,
                    per_class: int = 32, seed: int = 0, forbidden: Mapping[str, str] | None = None,
                    criterion: str = CRITERION, progress: bool = False) -> dict:
    """Sample ``per_class`` images of every class at each candidate scale (the same noise for every
    scale, so the scales are compared on equal terms), score each against ``real_val`` and return
    what was tried and chosen::

        {"chosen": w, "criterion": ..., "candidates": [{"guidance", "score", ..., "seconds"}, ...],
         "samples_per_class", "seed", "real_split": "val", "real_fingerprint", "num_real", "at_edge", "seconds"}

    ``at_edge``: the chosen scale is the smallest or largest candidate (other than 1, which is plain
    conditional sampling), so one beyond the range might score higher.

    ``forbidden``: {split name: fingerprint} of real splits the choice must never see (the pipeline
    passes the test and training splits); ``real_val`` being one of them is an error, as is a
    synthetic set or the generator's own training split."""
    if real_val.synthetic:
        raise ValueError(f"guidance must be chosen on REAL validation images; '{real_val.name}' is synthetic")
    fp = real_val.fingerprint()
    if fp == getattr(generator, "train_fingerprint", None):
        raise ValueError("guidance would be chosen on the generator's own training split; pass the real validation "
                         "split")
    for split, forbidden_fp in (forbidden or {}).items():
        if fp == forbidden_fp:
            raise ValueError(f"guidance would be chosen on the {split} split; it is chosen on the real validation "
                             "split only")
    if len(real_val) == 0:
        raise ValueError("the validation split is empty: guidance cannot be chosen on it; set "
                         "generator.guidance_candidates: null (or a val_fraction above 0)")
    scales = sorted({float(w) for w in candidates})
    if not scales:
        raise ValueError("no guidance candidates to choose from")
    t0 = time.time()
    rows = []
    for w in scales:
        t = time.time()
        syn = generator.sample([int(per_class)] * real_val.num_classes, guidance=w, seed=seed, progress=progress)
        result = dict(score(syn, real_val))
        rows.append({"guidance": w, **result, "seconds": time.time() - t})
    best = max(rows, key=lambda r: r["score"])  # max keeps the first of equal scores: the smaller scale
    # the best at the end of the range: a scale beyond it might score higher still
    at_edge = len(scales) > 1 and best["guidance"] in (scales[0], scales[-1]) and best["guidance"] != 1.0
    return {"chosen": best["guidance"], "criterion": criterion, "candidates": rows, "samples_per_class": int(per_class),
            "seed": seed, "real_split": "val", "real_fingerprint": fp, "num_real": len(real_val),
            "at_edge": at_edge, "seconds": time.time() - t0}


__all__ = ["CRITERION", "accuracy_times_coverage", "choose_guidance"]
