"""How much of what tells the classes apart survives a latent generator's autoencoder.

A latent diffusion model can never draw more than its decoder shows. MSE and PSNR do not say
whether the detail that was lost mattered: a blurry autoencoder can score a decent PSNR while the
judge no longer recognises the classes. So the judge (trained on the real training split) labels
real validation images and their reconstructions; the drop in its accuracy is the ceiling the
autoencoder puts on the conditional accuracy of everything sampled through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the report's warnings import this module; they need no torch
    from synthmed.classifiers import TrainedClassifier
    from synthmed.data.dataset import ImageDataset

#: reconstructions losing more judge accuracy than this (absolute, 0.10 = 10 points) are warned about
MAX_RECONSTRUCTION_ACCURACY_DROP = 0.10


def reconstruction_judge_accuracy(judge: "TrainedClassifier", originals: "ImageDataset",
                                  reconstructions: "ImageDataset") -> dict:
    """The judge's accuracy on ``originals`` (real images) and on ``reconstructions`` (the same
    images, same order, through the autoencoder), overall and per class, the drop between them and
    how often the judge gives both the same label."""
    if originals.synthetic:
        raise ValueError(f"{originals.name} is flagged synthetic; reconstructions are measured on REAL images")
    if len(originals) != len(reconstructions) or not np.array_equal(originals.labels, reconstructions.labels):
        raise ValueError(f"{reconstructions.name} does not match {originals.name} image for image "
                         f"({len(reconstructions)} vs {len(originals)} images, or other labels)")
    if originals.fingerprint() == judge.train_fingerprint:
        raise ValueError("the originals are the judge's own training split; measure on the validation split")
    names = judge.class_names
    y = originals.labels
    pred_o = judge.predict(originals) if len(originals) else np.zeros(0, dtype=np.int64)
    pred_r = judge.predict(reconstructions) if len(reconstructions) else np.zeros(0, dtype=np.int64)

    def rate(mask: np.ndarray, pred: np.ndarray) -> float | None:
        return float((pred[mask] == y[mask]).mean()) if mask.any() else None

    everything = np.ones(len(y), dtype=bool)
    acc_o, acc_r = rate(everything, pred_o), rate(everything, pred_r)
    per_class = {}
    for c, name in enumerate(names):
        m = y == c
        o, r = rate(m, pred_o), rate(m, pred_r)
        per_class[name] = {"n": int(m.sum()), "original": o, "reconstructed": r,
                           "drop": None if o is None or r is None else o - r}
    return {
        "n": int(len(y)),
        "accuracy_original": acc_o,
        "accuracy_reconstructed": acc_r,
        "drop": None if acc_o is None or acc_r is None else acc_o - acc_r,
        "agreement": float((pred_o == pred_r).mean()) if len(y) else None,
        "per_class": per_class,
        "chance": 1.0 / len(names),
        "real_fingerprint": originals.fingerprint(),
        "judge": {"arch": judge.config.arch, "trained_on_fingerprint": judge.train_fingerprint},
        "note": "judge trained on the real training split; accuracy on real images and on their "
                "autoencoder reconstructions",
    }


def reconstruction_warning(result: dict | None, max_drop: float = MAX_RECONSTRUCTION_ACCURACY_DROP) -> str | None:
    """One line when reconstructions lose more than ``max_drop`` of judge accuracy, else None."""
    if not isinstance(result, dict) or not isinstance(result.get("drop"), (int, float)):
        return None
    if result["drop"] <= max_drop:
        return None
    return (f"autoencoder reconstructions of {result.get('n')} real validation images lose "
            f"{100 * result['drop']:.0f} points of judge accuracy ({result['accuracy_reconstructed']:.3f} vs "
            f"{result['accuracy_original']:.3f} on the originals): the autoencoder blurs away what tells the classes "
            "apart, and no latent generator can draw more than its decoder shows; train it longer "
            "(generator.autoencoder.train_steps), give it more latent channels (generator.autoencoder.latent_channels), "
            "use a smaller factor, or generator.space: pixel")
