"""Dice / IoU, the U-Net segmenter, caption accuracy and the real:synthetic segmentation ratio sweep."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.config import SegmentationConfig
from synthmed.data import DataError, DataSplits, ImageDataset
from synthmed.data.captions import CaptionRules, add_captions, caption_for_mask
from synthmed.downstream.segmentation import segmentation_experiment
from synthmed.metrics.caption_accuracy import caption_accuracy, compare_levels
from synthmed.metrics.segmentation import dice_iou
from synthmed.metrics.segmenter import UNet, train_segmenter

NAMES = ["a", "b", "c"]


# --------------------------------------------------------------------------- Dice / IoU


def test_dice_and_iou_on_constructed_masks():
    target = np.zeros((2, 4, 4), np.uint8)
    pred = np.zeros((2, 4, 4), np.uint8)
    target[0, :2, :2] = 1          # 4 pixels of a
    pred[0, :2, :1] = 1            # 2 of them predicted
    pred[0, 3, 3] = 1              # + 1 false positive
    target[1, 0, :] = 2            # 4 pixels of b in image 1 ...
    pred[1, 0, :] = 2              # ... all found
    pred[1, 3, 0] = 3              # c never in the truth, predicted once
    out = dice_iou(pred, target, NAMES)
    assert out["dice"]["a"] == pytest.approx(2 * 2 / (3 + 4)) and out["iou"]["a"] == pytest.approx(2 / 5)
    assert out["dice"]["b"] == 1.0 and out["iou"]["b"] == 1.0
    assert out["dice"]["c"] == 0.0 and out["iou"]["c"] == 0.0  # predicted but absent: 0, not undefined
    assert out["mean_dice"] == pytest.approx((4 / 7 + 1 + 0) / 3)
    assert out["pixel_accuracy"] == pytest.approx(28 / 32)


def test_a_class_absent_everywhere_is_undefined_and_left_out_of_the_mean():
    target = np.zeros((1, 4, 4), np.uint8)
    target[0, 0, 0] = 1
    out = dice_iou(target.copy(), target, NAMES)
    assert out["dice"] == {"a": 1.0, "b": None, "c": None} and out["iou"]["b"] is None
    assert out["mean_dice"] == 1.0 and out["mean_iou"] == 1.0
    empty = dice_iou(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 4, 4), np.uint8), NAMES)
    assert empty["mean_dice"] is None  # nothing to score at all
    # pooled over the set: a speck missed in one image does not zero the class
    t = np.zeros((2, 10, 10), np.uint8)
    t[0, :5] = 1
    t[1, 0, 0] = 1
    p = t.copy()
    p[1, 0, 0] = 0
    assert dice_iou(p, t, NAMES)["dice"]["a"] == pytest.approx(2 * 50 / (50 + 51))
    with pytest.raises(ValueError, match="outside 0..3"):
        dice_iou(np.full((1, 2, 2), 4, np.uint8), np.zeros((1, 2, 2), np.uint8), NAMES)


def test_dice_agrees_with_torchmetrics_global_dice():
    tm = pytest.importorskip("torchmetrics.segmentation")
    import torch

    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (5, 8, 8)).astype(np.uint8)
    pred = np.where(rng.random((5, 8, 8)) < 0.7, target, rng.integers(0, 4, (5, 8, 8))).astype(np.uint8)
    ours = dice_iou(pred, target, NAMES)["dice"]
    metric = tm.DiceScore(num_classes=4, include_background=False, average="none", aggregation_level="global",
                          input_format="index")
    theirs = metric(torch.from_numpy(pred).long(), torch.from_numpy(target).long()).numpy()
    assert np.allclose([ours[n] for n in NAMES], theirs, atol=1e-6)


# --------------------------------------------------------------------------- segmenter


def _squares(n: int, size: int = 16, seed: int = 0, synthetic: bool = False) -> ImageDataset:
    """Bright squares (class 1) and dark discs (class 2) on grey: a segmenter must find both."""
    rng = np.random.default_rng(seed)
    images = np.full((n, size, size, 1), 128, np.uint8)
    masks = np.zeros((n, size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        y, x = rng.integers(1, size - 6, 2)
        masks[i, y:y + 5, x:x + 5] = 1
        cy, cx = rng.integers(3, size - 3, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 4
        masks[i][disc & (masks[i] == 0)] = 2
    images[masks == 1] = 230
    images[masks == 2] = 30
    images = np.clip(images.astype(int) + rng.integers(-10, 11, images.shape), 0, 255).astype(np.uint8)
    return ImageDataset(images, np.arange(n) % 2, ["x", "y"], masks=masks, mask_class_names=["square", "disc"],
                        synthetic=synthetic, name="synthetic" if synthetic else "real")


FAST = SegmentationConfig(widths=[8, 16], steps=120, eval_every=20, patience=3, batch_size=16, lr=3e-3)


def test_segmenter_learns_to_segment_and_is_deterministic():
    train, val, test = _squares(48, seed=0), _squares(16, seed=1), _squares(16, seed=2)
    seg = train_segmenter(train, val, FAST, seed=0)
    scores = seg.evaluate(test)
    untrained = dice_iou(np.zeros_like(test.masks), test.masks, test.mask_class_names)
    assert scores["mean_dice"] > 0.8 and scores["mean_dice"] > (untrained["mean_dice"] or 0) + 0.5
    assert seg.history["val_loss"][0] > seg.history["best_val_loss"]
    again = train_segmenter(train, val, FAST, seed=0)
    assert np.array_equal(again.predict(test), seg.predict(test))
    assert seg.predict(test).shape == (16, 16, 16)


def test_segmenter_refuses_what_it_cannot_train_on():
    train, val = _squares(8), _squares(4, seed=1)
    with pytest.raises(DataError, match="synthetic"):
        train_segmenter(train, _squares(4, synthetic=True), FAST)
    bare = ImageDataset(train.images, train.labels, train.class_names)
    with pytest.raises(DataError, match="needs masks"):
        train_segmenter(bare, val, FAST)
    with pytest.raises(DataError, match="divisible by 32"):  # 6 levels halve 16 px five times
        train_segmenter(train, val, SegmentationConfig(widths=[4] * 6))
    assert UNet(1, 3, [4, 8])(__import__("torch").zeros(2, 1, 8, 8)).shape == (2, 3, 8, 8)


# --------------------------------------------------------------------------- caption accuracy


RULES = CaptionRules(("square", "disc"), opening="Shapes.")


def test_compare_levels_counts_presence_and_level_agreement():
    gen = [["low", "high"], ["medium", None], [None, "low"], ["low", "low"]]
    pred = [["low", "medium"], [None, None], ["low", "low"], ["low", "low"]]
    out = compare_levels(gen, pred, ("square", "disc"))
    sq, disc = out["per_class"]["square"], out["per_class"]["disc"]
    assert sq["presence_accuracy"] == 0.5 and sq["level_accuracy"] == 0.5
    assert disc["presence_accuracy"] == 1.0 and disc["level_accuracy"] == 0.75
    assert sq["table"]["medium"]["none"] == 1 and sq["predicted_as"] == {"none": 1, "low": 3, "medium": 0, "high": 0}
    assert out["exact_caption_rate"] == 0.25  # only the last image agrees on both classes


def test_caption_accuracy_with_a_perfect_and_a_blind_segmenter():
    ds = add_captions(_squares(12, seed=3, synthetic=True), RULES)
    real = _squares(6, seed=4)
    perfect = caption_accuracy(ds, lambda d: d.masks if d.synthetic else real.masks, RULES, real_test=real,
                               segmenter_info={"kind": "oracle"})
    assert perfect["exact_caption_rate"] == 1.0 and perfect["mean_level_accuracy"] == 1.0
    assert perfect["segmenter"]["real_test"]["mean_dice"] == 1.0 and perfect["real_reference"]["exact_caption_rate"] == 1.0
    blind = caption_accuracy(ds, lambda d: np.zeros(d.images.shape[:3], np.uint8), RULES)
    assert blind["per_class"]["square"]["presence_accuracy"] == 0.0  # every image has a square, none found
    assert blind["per_class"]["square"]["predicted_as"]["none"] == 12
    with pytest.raises(DataError, match="generating caption"):
        caption_accuracy(_squares(2), lambda d: d.masks, RULES)
    with pytest.raises(DataError, match="one \\(H, W\\) label map per image"):
        caption_accuracy(ds, lambda d: np.zeros((1, 2, 2), np.uint8), RULES)
    assert ds.captions[0] == caption_for_mask(ds.masks[0], RULES)


# --------------------------------------------------------------------------- ratio sweep


def test_ratio_sweep_draws_real_and_synthetic_pairs_and_compares_with_real_only():
    splits = DataSplits(_squares(24, seed=5), _squares(8, seed=6), _squares(8, seed=7))
    synthetic = _squares(48, seed=8, synthetic=True)
    cfg = SegmentationConfig(widths=[4, 8], steps=6, eval_every=3, patience=2, batch_size=8, seeds=[0, 1],
                             protocols=["ratio-100:0", "ratio-50:50", "ratio-0:100", "ratio-100:100"])
    out = segmentation_experiment(splits, synthetic, cfg)
    comp = {(r["protocol"], r["seed"]): r for r in out["runs"]}
    assert len(out["runs"]) == 8
    assert comp[("ratio-50:50", 0)]["n_train"] == 24 and comp[("ratio-100:100", 0)]["n_train"] == 48
    c = comp[("ratio-50:50", 1)]["composition"]
    assert sum(c["real"].values()) == 12 and sum(c["synthetic"].values()) == 12
    assert sum(comp[("ratio-0:100", 0)]["composition"]["real"].values()) == 0
    s = out["summary"]
    assert s["ratio-100:0"]["mean_dice"]["n"] == 2 and "vs_100_0" not in s["ratio-100:0"]
    d = s["ratio-50:50"]["vs_100_0"]["mean_dice"]
    expect = np.mean([comp[("ratio-50:50", k)]["mean_dice"] - comp[("ratio-100:0", k)]["mean_dice"] for k in (0, 1)])
    assert d["n"] == 2 and d["mean"] == pytest.approx(expect) and d["ci_low"] <= d["mean"] <= d["ci_high"]


def test_ratio_sweep_refuses_synthetic_images_without_masks_and_runs_real_only_without_any():
    splits = DataSplits(_squares(16, seed=5), _squares(8, seed=6), _squares(8, seed=7))
    no_masks = ImageDataset(_squares(16, synthetic=True).images, np.arange(16) % 2, ["x", "y"], synthetic=True)
    cfg = SegmentationConfig(widths=[4, 8], steps=3, eval_every=3, seeds=[0], protocols=["ratio-sweep"])
    with pytest.raises(DataError, match="has no masks; generate images from masks"):
        segmentation_experiment(splits, no_masks, cfg)
    with pytest.raises(DataError, match="need synthetic image-mask pairs"):
        segmentation_experiment(splits, None, cfg)
    cfg.protocols = ["ratio-100:0"]
    assert segmentation_experiment(splits, None, cfg)["summary"]["ratio-100:0"]["mean_dice"]["n"] == 1


def test_segmenter_losses_dice_and_class_weights():
    import torch

    from synthmed.metrics.segmenter import class_weights, soft_dice_loss

    target = torch.zeros(2, 8, 8, dtype=torch.long)
    target[:, :4] = 1
    target[0, 6, 6] = 2  # a rare class: 1 of 128 pixels
    perfect = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 40
    assert soft_dice_loss(perfect, target).item() < 1e-3
    assert soft_dice_loss(perfect.roll(1, dims=1), target).item() > 0.9  # every pixel called a wrong class
    w = class_weights(target, 3, "sqrt-inverse")
    share = torch.bincount(target.reshape(-1), minlength=3).float() / target.numel()
    assert w[2] > w[1] > 0 and abs(float((w * share).sum()) - 1) < 1e-5
    assert class_weights(target, 3, "none") is None


def test_segmenter_saves_and_loads_the_same_predictions(tmp_path):
    from dataclasses import replace

    from synthmed.metrics.segmenter import load_segmenter

    train, val = _squares(24), _squares(8, seed=1)
    seg = train_segmenter(train, val, replace(FAST, steps=20, class_weighting="sqrt-inverse"), seed=0)
    assert seg.meta["loss"] == "ce+dice" and len(seg.meta["class_weights"]) == 3
    again = load_segmenter(seg.save(tmp_path / "seg"))
    assert np.array_equal(again.predict(val), seg.predict(val)) and again.history == seg.history
