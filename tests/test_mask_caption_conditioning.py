"""Diffusion conditioned on label masks (input channels) and captions (cross-attention tokens), with the
training split's masks and captions as the bank sampling draws from (generators/training_conditions.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from toydata import toy

from synthmed.config import ConfigError, DiffusionConfig, load_config, validate
from synthmed.data.captions import CaptionRules, add_captions
from synthmed.data.dataset import ImageDataset
from synthmed.generators.base import GeneratorError
from synthmed.generators.conditioning import Condition
from synthmed.generators.registry import build_generator, load_generator
from synthmed.generators.training_conditions import TrainingConditions, one_hot_masks

MASK_NAMES = ["spot", "rim"]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def masked_toy(n: int = 6, seed: int = 0) -> ImageDataset:
    """toy images with a mask per image: a 'spot' square whose size differs per image, a 'rim' on some."""
    ds = toy(n, seed=seed)
    rng = np.random.default_rng(seed + 100)
    masks = np.zeros((len(ds), 8, 8), dtype=np.uint8)
    for i in range(len(ds)):
        k = int(rng.integers(1, 6))
        masks[i, :k, :k] = 1
        if rng.random() < 0.5:
            masks[i, -1, :] = 2
    ds = ImageDataset(ds.images, ds.labels, ds.class_names, name=ds.name, masks=masks, mask_class_names=MASK_NAMES)
    return add_captions(ds, CaptionRules(tuple(MASK_NAMES)))


def tiny(**kw) -> DiffusionConfig:
    base = dict(denoiser="unet-cross-attention", cross_attention_dim=16, block_out_channels=[16, 16], lr=2e-3,
                warmup_steps=2, batch_size=8, train_steps=6, log_every=2, sample_steps=3, checkpoint_every=3,
                mask_condition=True, context="caption")
    return DiffusionConfig(**{**base, **kw})


def make(cfg: DiffusionConfig, train: ImageDataset, seed: int = 0):
    gen = build_generator(cfg, image_size=8, channels=1, class_names=train.class_names, seed=seed)
    gen.set_caption_encoder("words")
    return gen


@pytest.mark.parametrize("space", ["pixel", "latent"])
def test_samples_come_with_the_masks_and_captions_of_training_images_of_their_class(space, tmp_path):
    train = masked_toy()
    cfg = tiny(space=space)
    if space == "latent":
        from synthmed.config import AutoencoderConfig

        cfg = dataclasses.replace(cfg, autoencoder=AutoencoderConfig(block_out_channels=[8, 8], latent_channels=4,
                                                                     train_steps=4, batch_size=8))
    gen = make(cfg, train)
    gen.fit(train, progress=False)
    assert gen.unet.mask_channels == len(MASK_NAMES) and gen.unet.context_dim == 64  # words encoder: 64-d
    syn = gen.sample([4, 3, 5], seed=3, progress=False)
    assert syn.masks.shape == (12, 8, 8) and syn.mask_class_names == MASK_NAMES and len(syn.captions) == 12
    for mask, caption, label in zip(syn.masks, syn.captions, syn.labels):
        same_class = np.flatnonzero(train.labels == label)
        hits = [j for j in same_class if np.array_equal(train.masks[j], mask)]
        assert hits, "every synthetic mask is the mask of a training image of its class"
        assert caption in {train.captions[j] for j in hits}  # ... and the caption is that image's
    # each class's training images in a seeded order, cycled: none is reused before every one was used once
    pool = np.flatnonzero(train.labels == 0)
    drawn = gen.conditions.draw(np.zeros(2 * len(pool), dtype=np.int64), seed=3)
    assert sorted(drawn[:len(pool)]) == sorted(pool) and sorted(drawn[len(pool):]) == sorted(pool)
    assert np.array_equal(drawn, gen.conditions.draw(np.zeros(2 * len(pool), dtype=np.int64), seed=3))
    assert "training" in syn.meta["conditions"]


def test_saved_generator_samples_the_same_and_resume_continues_exactly(tmp_path):
    train = masked_toy()
    full = make(tiny(train_steps=6), train)
    full.fit(train, checkpoint_dir=tmp_path / "a", progress=False)
    half = make(tiny(train_steps=3), train)
    half.fit(train, checkpoint_dir=tmp_path / "b", progress=False)
    resumed = make(tiny(train_steps=6), train)
    resumed.fit(train, checkpoint_dir=tmp_path / "b", progress=False)
    for a, b in zip(full.unet.state_dict().values(), resumed.unet.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
    full.save(tmp_path / "saved")
    again = load_generator(tmp_path / "saved")
    one, two = full.sample([2, 2, 2], seed=5, progress=False), again.sample([2, 2, 2], seed=5, progress=False)
    assert np.array_equal(one.images, two.images) and np.array_equal(one.masks, two.masks)
    assert one.captions == two.captions


def test_the_mask_reaches_the_denoiser():
    train = masked_toy()
    gen = make(tiny(context="none", denoiser="unet", cross_attention_dim=64), train)
    gen.fit(train, progress=False)
    drawn = gen.sample([2, 2, 2], seed=1, progress=False)
    empty = gen.sample([2, 2, 2], seed=1, progress=False, masks=np.zeros((6, 8, 8), np.uint8))
    assert not np.array_equal(drawn.images, empty.images)
    assert (empty.masks == 0).all() and empty.captions is None
    with pytest.raises(GeneratorError, match="shape"):
        gen.sample([2, 2, 2], masks=np.zeros((5, 8, 8), np.uint8), progress=False)
    with pytest.raises(GeneratorError, match="mask classes"):
        gen.sample([1, 1, 1], masks=np.full((3, 8, 8), 7, np.uint8), progress=False)
    with pytest.raises(GeneratorError, match="context: caption"):
        gen.sample([1, 1, 1], captions=["a", "b", "c"], progress=False)


def test_given_captions_are_embedded_and_change_the_images():
    train = masked_toy()
    gen = make(tiny(mask_condition=False), train)
    gen.fit(train, progress=False)
    a = gen.sample([1, 1, 1], seed=2, progress=False, captions=["spot rim"] * 3)
    b = gen.sample([1, 1, 1], seed=2, progress=False, captions=[""] * 3)
    assert a.captions == ["spot rim"] * 3 and not np.array_equal(a.images, b.images)


def test_a_split_without_masks_or_captions_is_refused_with_the_fix():
    plain = toy(4, seed=0)
    with pytest.raises(GeneratorError, match="mask_path"):
        make(tiny(context="none", denoiser="unet"), plain).fit(plain, progress=False)
    masked_only = ImageDataset(plain.images, plain.labels, plain.class_names, name="m",
                               masks=np.zeros((len(plain), 8, 8), np.uint8), mask_class_names=MASK_NAMES)
    with pytest.raises(GeneratorError, match="no captions"):
        make(tiny(), masked_only).fit(masked_only, progress=False)


def test_training_drops_label_mask_and_caption_together():
    labels = torch.tensor([0, 1, 2])
    ctx, null = torch.ones(3, 4, 5), torch.full((4, 5), -1.0)
    cond = Condition(labels=labels, context=ctx, context_null=null, mask=torch.ones(3, 2, 8, 8))
    dropped = cond.drop(torch.tensor([False, True, False]), null_label=3)
    assert dropped.labels.tolist() == [0, 3, 2]
    assert (dropped.context[1] == -1).all() and (dropped.context[0] == 1).all()
    assert (dropped.mask[1] == 0).all() and (dropped.mask[2] == 1).all()
    rows = dropped[1:]  # a rank's share under DDP
    assert rows.labels.tolist() == [3, 2] and rows.context.shape == (2, 4, 5) and rows.mask.shape == (2, 2, 8, 8)


def test_masks_are_flipped_with_their_images_and_pooled_to_the_latent_grid():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, 0, 0] = 1  # top-left pixel of class 1
    conds = TrainingConditions(np.array([0, 0]), masks=masks, mask_class_names=["a"])
    hot = conds.mask_batch(torch.tensor([0, 1]), 4, flip_h=torch.tensor([True, False]))
    assert hot.shape == (2, 1, 4, 4) and hot[0, 0, 0, 3] == 1 and hot[1, 0, 0, 0] == 1
    pooled = one_hot_masks(torch.from_numpy(masks.astype(np.int64)), 1, 2)
    assert pooled.shape == (2, 1, 2, 2) and float(pooled[0, 0, 0, 0]) == pytest.approx(0.25)  # area fraction


def test_config_refuses_conditions_the_data_or_denoiser_cannot_give():
    with pytest.raises(ConfigError, match="cross-attention"):
        load_config(overrides={"generator": {"context": "caption"}, "data": {"masks": {"embryo": True}}})
    with pytest.raises(ConfigError, match="masks.embryo: true"):
        load_config(overrides={"generator": {"mask_condition": True}})
    with pytest.raises(ConfigError, match="mask_path"):
        load_config(overrides={"generator": {"mask_condition": True}, "data": {"dataset": "medmnist:bloodmnist"}})
    with pytest.raises(ConfigError, match="pretrained"):
        load_config(overrides={"generator": {"mask_condition": True, "pretrained": "/nowhere"},
                               "data": {"masks": {"embryo": True}}})
    for preset in ("renal-ldm", "renal-ldm-masks"):
        cfg = load_config(preset=preset)
        validate(cfg)
        assert cfg.generator.context == "caption" and cfg.generator.guidance == 1.5 and cfg.generator.sample_steps == 50
        assert cfg.generator.sampler == "ddim" and cfg.generator.mixed_precision is False
    assert load_config(preset="renal-ldm-masks").generator.mask_condition


def test_a_saved_synthetic_set_keeps_its_masks_and_reads_back_as_a_csv_manifest(tmp_path):
    from synthmed.data.export import load_image_set, save_image_set
    from synthmed.data.masks import MaskSpec
    from synthmed.data.sources import load_csv

    train = masked_toy(3)
    syn = ImageDataset(train.images, train.labels, train.class_names, name="s", synthetic=True, masks=train.masks,
                       mask_class_names=MASK_NAMES, captions=train.captions)
    folder = save_image_set(syn, tmp_path / "set")
    again = load_image_set(folder)
    assert np.array_equal(again.masks, syn.masks) and again.captions == syn.captions
    header = (folder / "manifest.csv").read_text().splitlines()[0]
    assert header == "path,label,mask_path"
    via_csv = load_csv(folder / "manifest.csv", mask_spec=MaskSpec(class_names=tuple(MASK_NAMES)))
    assert via_csv.mask_class_names == MASK_NAMES
    # the same (image, mask) pairs, whatever order the manifest lists them in
    pairs = lambda ds: sorted(i.tobytes() + m.tobytes() for i, m in zip(ds.images, ds.masks))  # noqa: E731
    assert pairs(via_csv) == pairs(syn)


def test_synthmed_run_captions_every_split_from_its_masks_under_context_caption():
    from synthmed.data.dataset import DataError, DataSplits
    from synthmed.pipeline import with_captions

    def splits_of(ds):
        return DataSplits(train=ds, val=ds.subset(np.arange(3)), test=ds.subset(np.arange(3, 6)), source="toy",
                          split_policy="given")

    plain = masked_toy()
    plain.captions = None
    cfg = load_config(overrides={"generator": {"context": "caption", "denoiser": "unet-cross-attention"},
                                 "data": {"masks": {"embryo": True}}})
    captioned = with_captions(cfg, splits_of(plain))
    rules = CaptionRules(tuple(MASK_NAMES), opening=cfg.captions.opening)
    for ds in (captioned.train, captioned.val, captioned.test):
        assert ds.captions == add_captions(ds, rules).captions
    assert with_captions(load_config(), splits_of(plain)).train.captions is None  # context none: untouched
    bare = toy(4, seed=0)
    with pytest.raises(DataError, match="caption or mask_path"):
        with_captions(cfg, splits_of(bare))
