"""Segmentation on the embryo set's masks: the real-only (100:0) row of renal-ldm's ratio sweep, and the
U-Net segmenter that caption accuracy reads synthetic images with, scored on real test images.

1. ``segmentation_experiment`` with protocol ratio-100:0 over seeds: Dice / IoU per mask class on the
   real test split. The synthetic rows (75:25 ... 100:100) need mask-conditional samples, which do not
   exist yet; they are not faked with real images.
2. Caption accuracy's reference: the seed-0 segmenter reads the real test images, their captions are
   rebuilt from its masks and compared with the captions of their true masks (presence and level
   accuracy per class): the score a perfect generator would get with this segmenter.

    taskset -c 0 python benchmarks/segmentation_embryo.py            # ~6 min on one CPU thread
    python benchmarks/segmentation_embryo.py --seeds 0 --steps 200   # smoke test

Writes benchmarks/results/segmentation_embryo_cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch

from synthmed.config import CaptionConfig, DataConfig, MaskConfig, SegmentationConfig
from synthmed.data import load_dataset
from synthmed.data.captions import CaptionRules, add_captions
from synthmed.downstream.segmentation import segmentation_experiment
from synthmed.files import atomic_write_json
from synthmed.metrics.caption_accuracy import caption_accuracy
from synthmed.metrics.segmenter import train_segmenter


def embryo_splits(image_size: int):
    """The embedded embryo set with its masks at ``image_size``: the data of every embryo segmentation benchmark."""
    return load_dataset(DataConfig(image_size=image_size, masks=MaskConfig(embryo=True)))


def real_caption_reference(seg, splits) -> dict:
    """Caption accuracy of the real test images read by ``seg`` against their true masks' captions: the score
    a perfect generator would get with this segmenter."""
    rules = CaptionRules.from_config(CaptionConfig(), splits.train.mask_class_names)
    return caption_accuracy(add_captions(splits.test, rules), seg, rules, real_test=splits.test,
                            segmenter_info={"kind": "synthmed U-Net", "best_step": seg.history["best_step"]})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=SegmentationConfig.steps)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "segmentation_embryo_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    t0 = time.perf_counter()
    splits = embryo_splits(args.image_size)
    data_s = time.perf_counter() - t0
    cfg = SegmentationConfig(steps=args.steps, seeds=args.seeds, protocols=["ratio-100:0"])

    t0 = time.perf_counter()
    experiment = segmentation_experiment(splits, None, cfg, progress=print)
    experiment_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    seg = train_segmenter(splits.train, splits.val, cfg, seed=cfg.seeds[0])
    reference = real_caption_reference(seg, splits)
    caption_s = time.perf_counter() - t0

    row = experiment["summary"]["ratio-100:0"]
    print(f"100:0 real only: mean Dice {row['mean_dice']['mean']:.3f} +- {row['mean_dice']['std'] or 0:.3f}, "
          f"IoU {row['mean_iou']['mean']:.3f} over seeds {cfg.seeds}; per class "
          + ", ".join(f"{c} {v['mean']:.3f}" for c, v in row["dice"].items() if v["mean"] is not None))
    print("caption accuracy of real test images read by the segmenter (presence / level): "
          + ", ".join(f"{c} {v['presence_accuracy']:.3f}/{v['level_accuracy']:.3f}"
                      for c, v in reference["per_class"].items())
          + f"; exact caption {reference['exact_caption_rate']:.3f}")
    out = {"what": __doc__.split("\n")[0], "platform": platform.platform(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "image_size": args.image_size,
           "data": {k: len(getattr(splits, k)) for k in ("train", "val", "test")},
           "seconds": {"data": data_s, "ratio_100_0_all_seeds": experiment_s, "caption_reference": caption_s},
           "segmentation": experiment, "caption_accuracy_real_reference": reference}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
