"""Conditional accuracy: does a synthetic image look like the class it was generated for?

A judge classifier trained on the REAL training split labels every synthetic image; the
score is the fraction labelled as the class it was asked for. It only means something
next to two references, both reported here: chance (1/K) and the judge's own accuracy on
real test images of the same class. Synthetic accuracy near the real one says the classes
are as recognisable as real images; near chance says the conditioning was ignored. Above
the real one is also a warning sign: the generator may produce exaggerated, too-easy
prototypes rather than the real variety.
"""

from __future__ import annotations

import math

import numpy as np

from synthmed.classifiers import TrainedClassifier, classification_metrics
from synthmed.data.dataset import ImageDataset


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float] | None:
    """95% Wilson score interval of a proportion k/n; honest for small n and k near 0 or n."""
    if n == 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def _rate(k: int, n: int) -> dict:
    return {"accuracy": k / n if n else None, "n": n, "n_correct": k, "ci95": wilson_interval(k, n)}


def conditional_accuracy(judge: TrainedClassifier, synthetic: ImageDataset,
                         real_test: ImageDataset | None = None) -> dict:
    """Fraction of ``synthetic`` images the judge assigns to their conditioning class,
    overall and per class, with chance level and (given ``real_test``) the judge's own
    accuracy / per-class recall on real test images for comparison."""
    if judge.meta.get("train_synthetic"):
        raise ValueError("the judge was trained on synthetic images; train it on the REAL training split only")
    if synthetic.class_names != judge.class_names:
        raise ValueError(f"synthetic classes {synthetic.class_names} differ from the judge's {judge.class_names}")
    names, k = judge.class_names, len(judge.class_names)

    pred = judge.predict(synthetic) if len(synthetic) else np.zeros(0, dtype=np.int64)
    correct = pred == synthetic.labels
    per_class = {}
    for c, name in enumerate(names):
        sel = synthetic.labels == c
        per_class[name] = _rate(int(correct[sel].sum()), int(sel.sum()))
    # rows: the class asked for; columns: what the judge saw. Shows which class a failing one drifts to.
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (synthetic.labels, pred), 1)

    real = None
    if real_test is not None:
        if real_test.synthetic:
            raise ValueError(f"real_test '{real_test.name}' is flagged synthetic; pass the REAL test split")
        if real_test.fingerprint() == judge.train_fingerprint:
            raise ValueError("real_test is the judge's own training split; its accuracy there is not a reference")
        m = classification_metrics(real_test.labels, judge.predict_proba(real_test), names)
        real = {key: m[key] for key in ("n", "accuracy", "balanced_accuracy", "f1_macro", "auc")}
        real["fingerprint"] = real_test.fingerprint()
        for name in names:
            support, recall = m["per_class"][name]["support"], m["per_class"][name]["recall"]
            per_class[name]["real_accuracy"] = recall if support else None  # per-class accuracy = recall
            per_class[name]["real_n"] = support

    h = judge.history
    return {
        "accuracy": _rate(int(correct.sum()), len(synthetic)),
        "per_class": per_class,
        "chance": 1.0 / k,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(names),
        "real_test": real,
        "synthetic": {"name": synthetic.name, "n": len(synthetic), "flagged_synthetic": synthetic.synthetic,
                      "fingerprint": synthetic.fingerprint()},
        "judge": {
            "arch": judge.config.arch,
            "trained_on_fingerprint": judge.train_fingerprint,
            "n_train": judge.meta.get("n_train"),
            "train_class_counts": judge.meta.get("train_class_counts"),
            "seed": judge.meta.get("seed"),
            "best_epoch": h.get("best_epoch"),
            "best_val_loss": h.get("best_val_loss"),
            "val_acc_at_best": h["val_acc"][h["best_epoch"]] if h.get("best_epoch", -1) >= 0 else None,
        },
    }
