"""Dice and IoU of predicted label masks against the true ones.

Per mask class c (1..M; 0 is background and is not scored), over the whole evaluated set:

    Dice_c = 2 |P_c ∩ G_c| / (|P_c| + |G_c|)        IoU_c = |P_c ∩ G_c| / |P_c ∪ G_c|

with P_c, G_c the pixels predicted / labelled c in all images together (pooled, "global"
aggregation: a class that is tiny in most images is scored by all its pixels, not by an
average of per-image ratios that a single missed speck drives to 0). A class absent from both
the prediction and the truth of the whole set is undefined (None) and left out of the mean;
a class absent from the truth but predicted scores 0. ``mean_dice`` / ``mean_iou`` average the
defined classes; with one foreground class (renal-ldm's glomeruli vs rest) they are that
class's Dice / IoU, the DSC the thesis reports.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def overlap_counts(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes + 1, 3) int64: per class id, |P ∩ G|, |P|, |G| summed over all pixels."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"predicted masks {pred.shape} and true masks {target.shape} differ in shape")
    k = num_classes + 1
    for what, m in (("predicted", pred), ("true", target)):
        if m.size and (m.min() < 0 or m.max() >= k):
            raise ValueError(f"{what} masks hold class ids {int(m.min())}..{int(m.max())}, outside 0..{num_classes}")
    p, t = pred.ravel().astype(np.int64), target.ravel().astype(np.int64)
    inter = np.bincount(p[p == t], minlength=k)
    return np.stack([inter, np.bincount(p, minlength=k), np.bincount(t, minlength=k)], axis=1)


def dice_iou(pred: np.ndarray, target: np.ndarray, class_names: Sequence[str]) -> dict:
    """Dice and IoU per mask class and their means over the defined classes (module docstring)."""
    counts = overlap_counts(pred, target, len(class_names))
    dice, iou = {}, {}
    for c, name in enumerate(class_names, start=1):
        inter, n_pred, n_true = (int(v) for v in counts[c])
        union = n_pred + n_true - inter
        dice[name] = None if n_pred + n_true == 0 else 2 * inter / (n_pred + n_true)
        iou[name] = None if union == 0 else inter / union
    defined = [v for v in dice.values() if v is not None]
    defined_iou = [v for v in iou.values() if v is not None]
    return {
        "mean_dice": float(np.mean(defined)) if defined else None,
        "mean_iou": float(np.mean(defined_iou)) if defined_iou else None,
        "dice": dice,
        "iou": iou,
        "pixel_accuracy": float((np.asarray(pred) == np.asarray(target)).mean()) if np.asarray(pred).size else None,
        "n_images": int(len(pred)),
        "convention": "pooled over all pixels of the set; background not scored; a class absent from prediction "
                      "and truth is undefined (None) and left out of the mean",
    }
