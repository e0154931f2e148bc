"""Segmentation downstream check (renal-ldm, section 4.2.3): do synthetic image-mask pairs help a segmenter?

A small U-Net (:mod:`synthmed.metrics.segmenter`) is trained per real:synthetic ratio and seed:
100:0, 75:25, 50:50, 25:75, 0:100 at a fixed total (the real training size) and 100:100 (real
plus as many synthetic), drawn per class exactly as the classification ratio protocols draw them
(:func:`synthmed.downstream.protocols.ratio`). Every run early-stops on the loss of the REAL
validation split and is scored by Dice and IoU on the REAL test split; repeats over seeds give
mean +- std, and each ratio is compared with 100:0 by the paired difference over seeds (seed i
of every ratio shares the seed, so the initial weights), with its t interval
(:mod:`synthmed.downstream.stats`).

Synthetic images must come with masks: the masks they were generated from (mask-conditional
generation), never masks of val/test. renal-ldm had to annotate its synthetic images by hand.
"""

from __future__ import annotations

import time

from synthmed.config import SegmentationConfig
from synthmed.data.dataset import DataError, DataSplits, ImageDataset
from synthmed.downstream.protocols import ProtocolOptions, build_plan, expand_protocols, uses_synthetic
from synthmed.downstream.stats import mean_std, paired_difference
from synthmed.metrics.segmenter import train_segmenter

BASELINE = "ratio-100:0"


def _check(splits: DataSplits, synthetic: ImageDataset | None, protocols: list[str]) -> None:
    for name in ("train", "val", "test"):
        part = getattr(splits, name)
        if part.masks is None:
            raise DataError(f"segmentation downstream: the real {name} split has no masks; give the data a mask_path "
                            "column (csv:) or set data.masks.embryo: true")
        if part.synthetic:
            raise DataError(f"segmentation downstream: the {name} split is flagged synthetic; it must be real")
    if synthetic is not None:
        if not synthetic.synthetic:
            raise DataError(f"segmentation downstream: '{synthetic.name}' is not flagged synthetic=True")
        if synthetic.masks is None:
            raise DataError(f"segmentation downstream: the synthetic set '{synthetic.name}' has no masks; generate "
                            "images from masks (mask conditioning) so every image comes with its mask")
        if synthetic.mask_class_names != splits.train.mask_class_names:
            raise DataError(f"segmentation downstream: synthetic mask classes {synthetic.mask_class_names} differ "
                            f"from the real ones {splits.train.mask_class_names}")
    needing = [p for p in protocols if uses_synthetic(p)]
    if needing and synthetic is None:
        raise DataError(f"segmentation downstream: {needing} need synthetic image-mask pairs, none were given; "
                        f"run only {BASELINE!r} (segmentation.protocols) until mask-conditional samples exist")


def segmentation_experiment(splits: DataSplits, synthetic: ImageDataset | None, cfg: SegmentationConfig | None = None,
                            *, device: str = "cpu", progress=None) -> dict:
    """Train and score one segmenter per ratio and seed; the summary table and paired comparisons.

    ``progress``: optional callable(str) told about each finished run."""
    cfg = cfg or SegmentationConfig()
    protocols = expand_protocols(list(cfg.protocols))
    _check(splits, synthetic, protocols)
    runs: list[dict] = []
    for seed in cfg.seeds:
        for name in protocols:
            plan = build_plan(name, splits.train, synthetic, ProtocolOptions(seed=seed))
            train_set = plan.stages[0][0]
            t0 = time.perf_counter()
            seg = train_segmenter(train_set, splits.val, cfg, seed=seed, device=device)
            scores = seg.evaluate(splits.test)
            run = {"protocol": name, "seed": seed, "n_train": len(train_set), "composition": plan.composition["train"],
                   "mean_dice": scores["mean_dice"], "mean_iou": scores["mean_iou"], "dice": scores["dice"],
                   "iou": scores["iou"], "best_step": seg.history["best_step"], "steps": seg.history["steps"],
                   "best_val_loss": seg.history["best_val_loss"], "seconds": time.perf_counter() - t0}
            runs.append(run)
            if progress is not None:
                progress(f"{name} seed {seed}: Dice {run['mean_dice']:.3f}, IoU {run['mean_iou']:.3f} "
                         f"({run['seconds']:.0f} s)")
    return {"protocols": protocols, "seeds": list(cfg.seeds), "runs": runs,
            "summary": summarise(runs, protocols, list(cfg.seeds), splits.train.mask_class_names),
            "test": {"n": len(splits.test), "fingerprint": splits.test.fingerprint()},
            "val": {"n": len(splits.val), "fingerprint": splits.val.fingerprint()},
            "scoring": "Dice / IoU pooled over the real test split, mean over mask classes (metrics/segmentation.py)"}


def summarise(runs: list[dict], protocols: list[str], seeds: list[int], class_names: list[str]) -> dict:
    """Per protocol: mean +- std over seeds of mean Dice, mean IoU and per-class Dice; paired
    difference to 100:0 (same seeds) with its 95% t interval."""
    by = {(r["protocol"], r["seed"]): r for r in runs}

    def values(protocol: str, get) -> list:
        return [get(by[(protocol, s)]) if (protocol, s) in by else None for s in seeds]

    out = {}
    for p in protocols:
        row = {"mean_dice": mean_std(values(p, lambda r: r["mean_dice"])),
               "mean_iou": mean_std(values(p, lambda r: r["mean_iou"])),
               "dice": {c: mean_std(values(p, lambda r, c=c: r["dice"][c])) for c in class_names},
               "seconds": mean_std(values(p, lambda r: r["seconds"]))}
        if p != BASELINE and BASELINE in protocols:
            row["vs_100_0"] = {m: paired_difference(values(p, lambda r, m=m: r[m]),
                                                    values(BASELINE, lambda r, m=m: r[m]))
                               for m in ("mean_dice", "mean_iou")}
        out[p] = row
    return out
