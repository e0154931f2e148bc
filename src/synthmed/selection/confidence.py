"""Keep a synthetic image only when a classifier trained on the real training split is confident it
shows the class it was generated for: p(intended class) >= tau (selection by a real-data classifier's
confidence, as in HistoDiffusion, arXiv 2308.04020).

``confidence_filter`` scores a finished set; ``generate_until_confident`` generates until N per class
pass, within ``budget_factor`` x N per class, with the generate-until loop the realism filter uses
(:func:`synthmed.selection.filter.generate_until_accepted`).

The same statistic on REAL validation images (``real_val_acceptance``: the fraction of them whose own
class gets p >= tau under the same classifier) is what a generator indistinguishable from the real data
would get, and makes the synthetic acceptance readable. The classifier was early-stopped on that split,
so it saw it once per round for model selection (never for its weights): the reference is at most
slightly optimistic.

A classifier that selected the images must not grade them: every image it kept has its intended class
as the most probable one once tau > 0.5, so its conditional accuracy on them is 1 by construction. The
kept set's ``meta["selection"]["selector"]`` names the classifier (architecture, seed, weights hash),
and the evaluation refuses to score conditional accuracy with it (an independent grader does that).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from synthmed.classifiers import TrainedClassifier
from synthmed.data.dataset import DataError, ImageDataset
from synthmed.features.base import state_dict_sha256
from synthmed.selection.filter import acceptance_report, generate_until_accepted

#: keep an image when the selector gives its intended class at least this probability (docs/evaluation.md)
DEFAULT_TAU = 0.9


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not math.isfinite(tau):
        raise ValueError(f"tau must be a finite probability threshold, got {tau}")
    return tau  # tau <= 0 keeps everything, tau > 1 nothing: both are allowed here, the config checks [0, 1]


def describe_selector(classifier: TrainedClassifier) -> dict:
    """What identifies a selecting classifier: architecture, seed, training data and weights hash."""
    return {
        "arch": classifier.config.arch,
        "seed": classifier.meta.get("seed"),
        "trained_on": classifier.train_fingerprint,
        "val_fingerprint": classifier.meta.get("val_fingerprint"),
        "n_train": classifier.meta.get("n_train"),
        "weights_hash": state_dict_sha256(classifier.model.state_dict()),
    }


def _check_selector(classifier: TrainedClassifier, class_names: list[str]) -> None:
    if classifier.meta.get("train_synthetic"):
        raise ValueError("the selecting classifier was trained on synthetic images; train it on the REAL "
                         "training split only (it would otherwise reward the generator's own artefacts)")
    if list(classifier.class_names) != list(class_names):
        raise DataError(f"class lists differ: classifier {classifier.class_names} vs images {class_names}")


def intended_class_probability(classifier: TrainedClassifier, ds: ImageDataset) -> np.ndarray:
    """p(label of each image) under ``classifier``, float64 of shape (N,)."""
    if len(ds) == 0:
        return np.zeros(0)
    proba = np.asarray(classifier.predict_proba(ds), dtype=np.float64)
    return proba[np.arange(len(ds)), ds.labels]


def real_acceptance(classifier: TrainedClassifier, held_out: ImageDataset, tau: float) -> dict:
    """Fraction of REAL ``held_out`` images (e.g. the validation split) whose own class gets p >= tau:
    the rate a perfect generator would get. Returns ``{"split", "fingerprint", "n", "accepted",
    "acceptance_rate", "per_class": {name: rate or None}, "note"}``."""
    tau = _check_tau(tau)
    if held_out.synthetic:
        raise DataError(f"{held_out.name} is marked synthetic; the reference acceptance needs REAL images")
    _check_selector(classifier, list(held_out.class_names))
    fingerprint = held_out.fingerprint()
    if fingerprint == classifier.train_fingerprint:
        raise DataError(f"{held_out.name} is the classifier's own training split; its acceptance there is no "
                        "reference (pass the validation split)")
    keep = intended_class_probability(classifier, held_out) >= tau
    per_class = {}
    for i, c in enumerate(held_out.class_names):
        m = held_out.labels == i
        per_class[c] = float(keep[m].mean()) if m.any() else None
    note = ("the classifier was early-stopped on this split (model selection only, never trained on it)"
            if fingerprint == classifier.meta.get("val_fingerprint") else None)
    return {"split": held_out.name, "fingerprint": fingerprint, "n": len(held_out), "accepted": int(keep.sum()),
            "acceptance_rate": float(keep.mean()) if len(held_out) else None, "per_class": per_class, "note": note}


def _settings(classifier: TrainedClassifier, tau: float) -> dict:
    return {"mode": "confidence", "tau": tau, "selector": describe_selector(classifier),
            "rule": f"keep an image when the selector gives its intended class p >= {tau:g}"}


def confidence_filter(synthetic: ImageDataset, classifier: TrainedClassifier, tau: float = DEFAULT_TAU, *,
                      held_out: ImageDataset | None = None) -> tuple[ImageDataset, dict]:
    """Keep the synthetic images whose intended class gets probability >= ``tau`` under ``classifier``
    (trained on the real training split). Returns ``(kept, report)``; ``report["per_class"][name]``
    has generated, kept (= accepted) and acceptance_rate; ``report["real_val_acceptance"]`` the same
    rate on the real ``held_out`` images (see :func:`real_acceptance`)."""
    tau = _check_tau(tau)
    _check_selector(classifier, list(synthetic.class_names))
    p = intended_class_probability(classifier, synthetic)
    keep = p >= tau
    kept = synthetic.subset(np.flatnonzero(keep), name=f"{synthetic.name}-selected")
    kept.synthetic = True
    settings = _settings(classifier, tau)
    kept.meta["selection"] = {k: settings[k] for k in ("mode", "tau", "selector")}
    report = {**settings, **acceptance_report(synthetic, keep, p)}
    if held_out is not None:
        report["real_val_acceptance"] = real_acceptance(classifier, held_out, tau)
    return kept, report


def generate_until_confident(generator, classifier: TrainedClassifier, n_per_class: int | Sequence[int] | Mapping,
                             *, tau: float = DEFAULT_TAU, batch_per_class: int | None = None,
                             budget_factor: float = 10, max_rounds: int = 100, guidance: float | None = None,
                             seed: int = 0, held_out: ImageDataset | None = None,
                             progress: bool = False) -> tuple[ImageDataset, dict]:
    """Sample from ``generator`` until each class has ``n_per_class`` images whose intended class gets
    p >= ``tau`` under ``classifier``, or until ``budget_factor`` x its request was generated for it.
    Returns ``(kept, report)`` as :func:`synthmed.selection.filter.generate_until` does (``shortfall``:
    class -> images missing), plus ``real_val_acceptance`` when ``held_out`` is given."""
    tau = _check_tau(tau)
    names = list(classifier.class_names)
    _check_selector(classifier, names)

    def accept(syn: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
        p = intended_class_probability(classifier, syn)
        return p >= tau, p

    kept, loop = generate_until_accepted(generator, names, n_per_class, accept, batch_per_class=batch_per_class,
                                         budget_factor=budget_factor, max_rounds=max_rounds, guidance=guidance,
                                         seed=seed, template=held_out, what="confidence selection",
                                         hint="lower tau", progress=progress)
    settings = _settings(classifier, tau)
    kept.meta["selection"] = {**{k: settings[k] for k in ("mode", "tau", "selector")}, "seed": seed}
    report = {**settings, **loop}
    if held_out is not None:
        report["real_val_acceptance"] = real_acceptance(classifier, held_out, tau)
    return kept, report


__all__ = ["DEFAULT_TAU", "confidence_filter", "describe_selector", "generate_until_confident",
           "intended_class_probability", "real_acceptance"]
