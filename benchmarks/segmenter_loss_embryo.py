"""Which segmenter loss finds the embryo set's rare classes? Per-class real-test Dice of one seed per variant.

The segmenter that caption accuracy reads images with, and that the segmentation ratio sweep trains,
was trained with plain cross-entropy and never predicted fragments (0.5% of the pixels). This trains
seed 0 on the real training masks (early-stopped on real val) for each loss variant and scores it on
the real test split (Dice / IoU per mask class, pooled over the split).

    taskset -c 0 python benchmarks/segmenter_loss_embryo.py                        # all variants
    taskset -c 0 python benchmarks/segmenter_loss_embryo.py --variants ce ce+dice:sqrt-inverse --steps 1500

A variant is LOSS[:WEIGHTING] (segmentation.loss, segmentation.class_weighting). Writes
benchmarks/results/segmenter_loss_embryo_cpu.json (or --out), after every variant.
"""

from __future__ import annotations

import argparse
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from segmentation_embryo import embryo_splits, real_caption_reference

from synthmed.config import SegmentationConfig
from synthmed.files import atomic_write_json
from synthmed.metrics.segmenter import train_segmenter


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="+", default=["ce", "ce:sqrt-inverse", "ce+dice", "ce+dice:sqrt-inverse"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="U-Net widths (default: the config's)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "segmenter_loss_embryo_cpu.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    splits = embryo_splits(args.image_size)
    out = {"what": __doc__.split("\n")[0], "platform": platform.platform(), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "image_size": args.image_size, "seed": args.seed,
           "data": {k: len(getattr(splits, k)) for k in ("train", "val", "test")},
           "data_seconds": time.perf_counter() - t0, "variants": {}}
    for v in args.variants:
        loss, _, weighting = v.partition(":")
        cfg = replace(SegmentationConfig(), steps=args.steps, loss=loss, class_weighting=weighting or "none",
                      **({"widths": args.widths} if args.widths else {}))
        t0, c0 = time.perf_counter(), time.process_time()
        seg = train_segmenter(splits.train, splits.val, cfg, seed=args.seed)
        scores = seg.evaluate(splits.test)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        # caption accuracy's real-test reference: true masks' captions vs captions rebuilt from this segmenter
        ref = real_caption_reference(seg, splits)
        h = seg.history
        out["variants"][v] = {"widths": list(cfg.widths), "loss": loss, "class_weighting": cfg.class_weighting, "steps": cfg.steps,
                              "dice": scores["dice"], "iou": scores["iou"], "mean_dice": scores["mean_dice"],
                              "mean_iou": scores["mean_iou"], "best_step": h["best_step"], "steps_run": h["steps"],
                              "stopped_early": h["stopped_early"], "wall_seconds": wall, "cpu_seconds": cpu,
                              "class_weights": seg.meta.get("class_weights"),
                              "caption_reference": {"exact_caption_rate": ref["exact_caption_rate"],
                                                    **{c: {k: e[k] for k in ("presence_accuracy", "level_accuracy")}
                                                       for c, e in ref["per_class"].items()}}}
        print(f"{v} widths {cfg.widths} ({cfg.steps} steps, best {h['best_step']}, {wall:.0f} s wall / {cpu:.0f} s CPU): mean Dice "
              f"{scores['mean_dice']:.3f}; " + ", ".join(f"{c} {d:.3f}" for c, d in scores["dice"].items()
                                                          if d is not None)
              + "; caption reference presence/level " + ", ".join(
                  f"{c} {e['presence_accuracy']:.3f}/{e['level_accuracy']:.3f}" for c, e in ref["per_class"].items())
              + f", exact {ref['exact_caption_rate']:.3f}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
