"""Memorisation audit: planted copies are caught, fresh images are not; a memorising generator is caught."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from synthmed.data.dataset import DataError, ImageDataset
from synthmed.metrics.memorisation import memorisation_audit, worst_pairs_grid

#: measured (CPU, 1 thread, shared machine): 2000 steps -> 38% of samples flagged, 3000 -> 70%, 30 -> 0%;
#: fresh images from the same distribution -> 0%. The whole test took 218 s, hence @slow.
STEPS_LONG = 3000


def field_set(n_per_class=30, size=16, seed=0, grid=4, channels=1) -> ImageDataset:
    """Smooth random images (bicubic-upsampled grid x grid noise, so ~grid^2 degrees of freedom),
    class 0 darker than class 1: fresh draws are new images, not near-duplicates of old ones."""
    g = torch.Generator().manual_seed(seed)
    imgs, labels = [], []
    for c in range(2):
        z = torch.randn(n_per_class, channels, grid, grid, generator=g)
        x = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
        x = (0.3 + 0.4 * c) * 255 + 45 * x
        imgs.append(x.clamp(0, 255).round().byte().permute(0, 2, 3, 1).numpy())
        labels += [c] * n_per_class
    return ImageDataset(np.concatenate(imgs), np.array(labels), ["low", "high"], name="fields")


class PixelExtractor:
    name, dim, weights_hash, input_policy = "pixels", 256, "none", "as-is"

    def extract(self, ds, batch_size=256, progress=False):
        return ds.images.reshape(len(ds), -1).astype(np.float64) / 255.0

    def describe(self):
        return {"name": self.name}


def as_synthetic(images, labels, class_names, **meta) -> ImageDataset:
    return ImageDataset(np.asarray(images, dtype=np.uint8), labels, class_names, synthetic=True, meta=meta)


def test_fresh_samples_are_not_flagged():
    train = field_set(30, seed=0)
    fresh = field_set(100, seed=1)
    fresh = as_synthetic(fresh.images, fresh.labels, fresh.class_names)
    audit = memorisation_audit(train, fresh, PixelExtractor())
    assert audit["overall"]["n"] == 200
    assert audit["overall"]["fraction_flagged"] <= 0.02, audit["overall"]
    assert audit["overall"]["n_exact_copies"] == 0
    assert audit["spaces"]["pixel"]["baseline_fraction"] <= 0.05


def test_planted_exact_flipped_and_noisy_copies_are_flagged():
    train = field_set(30, seed=0)
    fresh = field_set(30, seed=1)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(train), 12, replace=False)
    exact = train.images[idx[:4]]
    flipped = train.images[idx[4:8]][:, :, ::-1]  # generators train with flips: mirrored copies leak too
    noisy = np.clip(train.images[idx[8:]] + rng.normal(0, 4, train.images[idx[8:]].shape), 0, 255)
    planted = np.concatenate([exact, flipped, noisy])
    images = np.concatenate([planted, fresh.images])
    labels = np.concatenate([train.labels[idx], fresh.labels])
    syn = as_synthetic(images, labels, train.class_names, train_fingerprint=train.fingerprint())
    audit = memorisation_audit(train, syn, worst=12)
    flagged = audit["per_image"]["flagged"]
    assert flagged[:12].all(), audit["per_image"]["pixel_nn_distance"][:12]
    assert flagged[12:].mean() <= 0.05
    assert audit["overall"]["n_exact_copies"] == 8  # byte-identical, flips included
    np.testing.assert_array_equal(audit["per_image"]["pixel_nn_index"][:12], idx)
    assert audit["per_image"]["pixel_nn_flip"][4:8] == ["hflip"] * 4
    assert audit["fingerprint_matches"] is True and audit["train_fingerprint"] == train.fingerprint()
    # per class counts add up
    per_class = audit["per_class"]
    assert sum(v["n"] for v in per_class.values()) == len(syn)
    assert sum(v["n_flagged"] for v in per_class.values()) == audit["overall"]["n_flagged"] == flagged.sum()
    # the worst pairs are the planted ones, and the grid shows each next to its (matched) training image
    assert {p["synthetic_index"] for p in audit["worst_pairs"]} == set(range(12))
    grid = worst_pairs_grid(audit, train, syn)
    assert grid.dtype == np.uint8 and grid.shape == (12 * 16 + 11 * 2, 2 * 16 + 2, 1)
    for r, p in enumerate(audit["worst_pairs"]):
        left, right = grid[r * 18 : r * 18 + 16, :16], grid[r * 18 : r * 18 + 16, 18:]
        np.testing.assert_array_equal(left, syn.images[p["synthetic_index"]])
        if p["exact_copy"]:
            np.testing.assert_array_equal(left, right)


def test_feature_space_and_rgb_and_other_split():
    train = field_set(20, seed=0, channels=3)
    copies = as_synthetic(train.images[:5], train.labels[:5], train.class_names, train_fingerprint="other")
    audit = memorisation_audit(train, copies, PixelExtractor(), flips=False)
    assert audit["spaces"]["feature"]["n_flagged"] == 5 and audit["spaces"]["pixel"]["n_flagged"] == 5
    assert audit["fingerprint_matches"] is False and audit["flips"] == ["none"]
    with pytest.raises(DataError, match="image shapes differ"):
        memorisation_audit(field_set(5), copies)


def test_reference_subsample_keeps_threshold_and_flags():
    """A subsampled real-to-real reference (for large training sets) estimates the same threshold,
    is repeatable, and still flags copies of training images outside the subsample."""
    train = field_set(150, seed=0)
    fresh = field_set(20, seed=1)
    syn = as_synthetic(np.concatenate([train.images[-6:], fresh.images]),
                       np.concatenate([train.labels[-6:], fresh.labels]), train.class_names)
    full = memorisation_audit(train, syn, reference_size=None)
    sub = memorisation_audit(train, syn, reference_size=100)
    again = memorisation_audit(train, syn, reference_size=100)
    assert full["num_reference"] == 300 and sub["num_reference"] == 100
    t_full, t_sub = full["spaces"]["pixel"]["threshold"], sub["spaces"]["pixel"]["threshold"]
    assert abs(t_sub - t_full) / t_full < 0.1
    assert t_sub == again["spaces"]["pixel"]["threshold"]
    assert sub["per_image"]["flagged"][:6].all() and sub["per_image"]["flagged"][6:].mean() <= 0.05
    with pytest.raises(ValueError, match="reference_size"):
        memorisation_audit(train, syn, reference_size=1)


@pytest.mark.slow
def test_diffusion_trained_long_on_20_images_is_caught():
    """The issue's requirement: a generator trained for long on a tiny set memorises, and the audit sees it."""
    from synthmed.config import DiffusionConfig
    from synthmed.generators.diffusion import DiffusionGenerator

    torch.set_num_threads(1)
    train = field_set(10)  # 20 images of 16x16, 2 classes
    t0 = time.time()

    def trained(steps):
        cfg = DiffusionConfig(block_out_channels=[16, 32], layers_per_block=1, lr=2e-3, warmup_steps=20, batch_size=20,
                              train_steps=steps, log_every=100, checkpoint_every=0, hflip=0.0, vflip=0.0)
        g = DiffusionGenerator(cfg, image_size=16, channels=1, class_names=train.class_names, seed=0)
        g.fit(train, progress=False)
        return g.sample([20, 20], seed=1, steps=20, progress=False)

    memorised = memorisation_audit(train, trained(STEPS_LONG))
    barely = memorisation_audit(train, trained(30))
    print(f"\nmemorisation test: {time.time() - t0:.0f} s; long: {memorised['overall']}; barely: {barely['overall']}")
    assert memorised["overall"]["fraction_flagged"] >= 0.3
    assert barely["overall"]["fraction_flagged"] <= 0.05



def test_a_quarter_turned_copy_is_an_exact_copy():
    """A generator trained with transposes can return a training image turned by 90 degrees: the audit
    matches all 8 rotations and reflections, so it is flagged as an exact copy."""
    rng = np.random.default_rng(0)
    train = ImageDataset(rng.integers(0, 256, (12, 8, 8, 1), dtype=np.uint8), np.zeros(12, int), ["a"])
    turned = np.rot90(train.images[:3], k=1, axes=(1, 2)).copy()
    fresh = rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    syn = ImageDataset(np.concatenate([turned, fresh]), np.zeros(8, int), ["a"])
    rep = memorisation_audit(train, syn, reference_size=None)
    assert rep["overall"]["n_exact_copies"] == 3
    assert rep["per_image"]["flagged"][:3].all() and not rep["per_image"]["flagged"][3:].any()
    assert {"rot90", "rot270", "transpose", "antitranspose"} <= set(rep["flips"])
