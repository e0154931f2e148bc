"""Caption accuracy (renal-ldm, section 4.2.1): does a caption-conditioned image show what its caption says?

Each synthetic image is segmented, its caption is rebuilt from the predicted mask with the same
rules that captioned the training data (:mod:`synthmed.data.captions`), and the rebuilt caption
is compared with the generating one, class by class:

* presence accuracy: the share of images where "class mentioned" agrees;
* level accuracy: the share where the stated level agrees, "absent" counting as a fourth level
  (none / low / medium / high), so a missing class is a level error too;
* the table generating level x predicted level (counts), whose rows for one generating caption
  are the thesis's Table 5.1 (how often glomeruli came out none / low / medium / high);
* exact-caption rate: every class agrees.

The segmenter is a user callable (images -> label masks) or synthmed's U-Net trained on the real
training masks (:mod:`synthmed.metrics.segmenter`). Its own error bounds what caption accuracy
can show, so its real-test Dice is reported next to the result, and so is the same caption
accuracy measured on the real test images against the captions of their true masks: the score
a perfect generator would get with this segmenter.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from synthmed.data.captions import LEVELS, CaptionRules, mask_levels, parse_caption
from synthmed.data.dataset import DataError, ImageDataset
from synthmed.metrics.conditional_accuracy import wilson_interval

Segmenter = Callable[[ImageDataset], np.ndarray]
_ROWS = ("none",) + LEVELS


def compare_levels(generating: list[list[str | None]], predicted: list[list[str | None]],
                   class_names: tuple[str, ...] | list[str]) -> dict:
    """Presence / level accuracy per class, confusion tables and exact-caption rate of paired level lists."""
    if len(generating) != len(predicted):
        raise ValueError(f"{len(generating)} generating captions but {len(predicted)} predicted ones")
    n = len(generating)
    per_class = {}
    for k, name in enumerate(class_names):
        gen = [g[k] or "none" for g in generating]
        pred = [p[k] or "none" for p in predicted]
        table = {r: {c: 0 for c in _ROWS} for r in _ROWS}
        for a, b in zip(gen, pred):
            table[a][b] += 1
        presence = sum((a != "none") == (b != "none") for a, b in zip(gen, pred))
        level = sum(a == b for a, b in zip(gen, pred))
        per_class[name] = {
            "presence_accuracy": presence / n if n else None,
            "level_accuracy": level / n if n else None,
            # 95% Wilson intervals over the n images (one segmenter: the images are the only repeat)
            "presence_ci95": wilson_interval(presence, n), "level_ci95": wilson_interval(level, n),
            "generated_as": {r: sum(table[r].values()) for r in _ROWS},
            "predicted_as": {c: sum(table[r][c] for r in _ROWS) for c in _ROWS},
            "table": table,  # table[generating level][predicted level] = images
        }
    exact = [all((g or "none") == (p or "none") for g, p in zip(gl, pl)) for gl, pl in zip(generating, predicted)]
    return {
        "n_images": n,
        "exact_caption_rate": float(np.mean(exact)) if n else None,
        "exact_caption_ci95": wilson_interval(int(sum(exact)), n),
        "mean_presence_accuracy": float(np.mean([c["presence_accuracy"] for c in per_class.values()])) if n else None,
        "mean_level_accuracy": float(np.mean([c["level_accuracy"] for c in per_class.values()])) if n else None,
        "per_class": per_class,
    }


def caption_accuracy(images: ImageDataset, segment: Segmenter, rules: CaptionRules, *,
                     real_test: ImageDataset | None = None, segmenter_info: dict | None = None) -> dict:
    """Caption accuracy of ``images`` (captioned: the generating captions) read by ``segment``.

    ``real_test`` (real images with true masks): adds the segmenter's Dice on it and the caption
    accuracy of the real images against their true masks' captions (the reference a perfect
    generator would reach with this segmenter). ``segmenter_info``: what the segmenter is."""
    if images.captions is None:
        raise DataError(f"{images.name}: caption accuracy needs the generating caption of every image")
    generating = [parse_caption(c, rules) for c in images.captions]
    predicted_masks = _segment(segment, images)
    predicted = [mask_levels(m, rules) for m in predicted_masks]
    out = {"images": {"name": images.name, "synthetic": images.synthetic, "fingerprint": images.fingerprint()},
           "rules": {"low_below": rules.low_below, "high_above": rules.high_above, "min_pixels": rules.min_pixels,
                     "prevalence": "class pixels / all pixels of the image"},
           **compare_levels(generating, predicted, rules.class_names)}
    out["segmenter"] = dict(segmenter_info or {"kind": "user callable"})
    if real_test is not None:
        if real_test.masks is None or real_test.synthetic:
            raise DataError(f"{real_test.name}: the reference needs REAL test images with their true masks")
        from synthmed.metrics.segmentation import dice_iou

        real_pred = _segment(segment, real_test)
        names = real_test.mask_class_names
        out["segmenter"]["real_test"] = {k: v for k, v in dice_iou(real_pred, real_test.masks, names).items()
                                         if k != "convention"}
        true_levels = [mask_levels(m, rules) for m in real_test.masks]
        out["real_reference"] = compare_levels(true_levels, [mask_levels(m, rules) for m in real_pred],
                                               rules.class_names)
    return out


def _segment(segment: Segmenter, ds: ImageDataset) -> np.ndarray:
    masks = np.asarray(segment(ds))
    if masks.shape != ds.images.shape[:3]:
        raise DataError(f"the segmenter returned masks of shape {masks.shape} for images {ds.images.shape[:3]}; it "
                        "must return one (H, W) label map per image")
    return masks
