"""The contract every registered generator kind keeps, whatever its network: fit on tiny data, sample
the asked shapes and labels, save / load, same seed same images, resume continues exactly, and its
images refuse to be scored on the generator's own training split.

A new kind registers itself in synthmed.generators.registry and adds a tiny config to TINY below
(the first test fails until it does).
"""

from __future__ import annotations

import numpy as np
import pytest
from toydata import toy

from synthmed.config import AutoencoderConfig, DiffusionConfig, ProGANConfig, R3GANConfig
from synthmed.data.dataset import DataSplits
from synthmed.downstream.quick import LeakageError, check_no_leakage
from synthmed.generators.base import Generator, GeneratorError
from synthmed.generators.registry import build_generator, generator_kinds, load_generator

#: a config per kind that trains in a second or two on 8x8 images; ``steps`` is its training budget key
TINY = {
    "diffusion": (lambda steps: DiffusionConfig(block_out_channels=[16, 16], layers_per_block=1, lr=2e-3,
                                                warmup_steps=2, batch_size=8, train_steps=steps, log_every=2,
                                                sample_steps=3, checkpoint_every=steps // 2 or 1), "train_steps"),
    "diffusion-ddpm": (lambda steps: DiffusionConfig(formulation="ddpm", block_out_channels=[16, 16], lr=2e-3,
                                                    warmup_steps=2, batch_size=8, train_steps=steps, log_every=2,
                                                    sample_steps=3, checkpoint_every=steps // 2 or 1), "train_steps"),
    # the other denoisers behind the same call: a U-Net attending to the class token, a DiT (patch 2 on 8x8),
    # and the U-Net with a learned class vector concatenated to the time embedding (the `improve` baseline)
    "diffusion-crossattn": (lambda steps: DiffusionConfig(
        denoiser="unet-cross-attention", cross_attention_dim=16, block_out_channels=[16, 16], lr=2e-3, warmup_steps=2,
        batch_size=8, train_steps=steps, log_every=2, sample_steps=3, checkpoint_every=steps // 2 or 1), "train_steps"),
    "diffusion-dit": (lambda steps: DiffusionConfig(
        denoiser="dit", dit_patch_size=2, dit_depth=2, dit_width=32, dit_heads=2, lr=2e-3, warmup_steps=2, batch_size=8,
        train_steps=steps, log_every=2, sample_steps=3, checkpoint_every=steps // 2 or 1), "train_steps"),
    "diffusion-classvector": (lambda steps: DiffusionConfig(
        class_embed_dim=8, block_out_channels=[16, 16], lr=2e-3, warmup_steps=2, batch_size=8, train_steps=steps,
        log_every=2, sample_steps=3, checkpoint_every=steps // 2 or 1), "train_steps"),
    # latent space: a factor-2 autoencoder (8x8 -> 4x4x4 latents), trained once and cached per split
    "diffusion-latent": (lambda steps: DiffusionConfig(
        space="latent", block_out_channels=[16, 16], lr=2e-3, warmup_steps=2, batch_size=8, train_steps=steps,
        log_every=2, sample_steps=3, checkpoint_every=steps // 2 or 1,
        autoencoder=AutoencoderConfig(block_out_channels=[8, 8], latent_channels=4, train_steps=6, batch_size=8)),
        "train_steps"),
    # GANs count training in kimg: `steps` steps of batch 8 are steps * 8 / 1000 kimg. R3GAN's schedules
    # run over the whole training, so a shorter run has other values along the way: here they are held
    # constant (start = end) for "resume continues exactly" to compare like with like
    "r3gan": (lambda steps: R3GANConfig(widths=[16, 16], cardinality=4, noise_dim=8, embed_dim=8, batch_size=8,
                                        train_kimg=steps * 8 / 1000, lr_start=2e-3, lr_end=2e-3, gamma_start=0.1,
                                        gamma_end=0.1, beta2_start=0.99, beta2_end=0.99, aug_start=0.3, aug_end=0.3,
                                        ema_half_life_start_kimg=0.01, ema_half_life_end_kimg=0.01, log_every=2,
                                        checkpoint_every=steps // 2 or 1), "train_kimg"),
    # progressive growing 4 -> 8 px within the first 3 steps (phase 1 step = 0.008 kimg)
    "progan": (lambda steps: ProGANConfig(widths=[16, 16], latent_dim=8, embed_dim=4, batch_size=8, phase_kimg=0.008,
                                          train_kimg=steps * 8 / 1000, ema_half_life_kimg=0.01, log_every=2,
                                          checkpoint_every=steps // 2 or 1), "train_kimg"),
}
CASES = sorted(TINY)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Networks a generator caches (the latent autoencoder) go to this test's own folder."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make(case: str, train, steps: int = 8, seed: int = 0) -> Generator:
    cfg = TINY[case][0](steps)
    return build_generator(cfg, image_size=train.image_size, channels=train.channels, class_names=train.class_names,
                           seed=seed)


def test_every_registered_kind_has_a_tiny_config():
    assert set(generator_kinds()) <= {case.split("-")[0] for case in TINY}


@pytest.mark.parametrize("case", CASES)
def test_fit_sample_shapes_labels_and_provenance(case):
    train = toy(6, seed=0)
    gen = make(case, train)
    with pytest.raises(GeneratorError):
        gen.sample([1, 1, 1], progress=False)  # before fit
    hist = gen.fit(train, progress=False)
    assert hist["loss_curve"] and hist["train_seconds"] >= 0
    syn = gen.sample({0: 2, 2: 3}, seed=1, progress=False)
    assert syn.images.shape == (5, 8, 8, 1) and syn.images.dtype == np.uint8
    assert syn.labels.tolist() == [0, 0, 2, 2, 2]
    assert syn.synthetic and syn.class_names == train.class_names
    assert syn.meta["train_fingerprint"] == train.fingerprint() == gen.train_fingerprint
    assert syn.meta["generator"] == gen.kind
    for key, value in gen.sampling_defaults.items():
        assert syn.meta[key] == value
    d = gen.describe()
    assert d["kind"] == gen.kind and d["num_parameters"] == gen.num_parameters > 0 and d["summary"]
    assert d["train_fingerprint"] == train.fingerprint()


@pytest.mark.parametrize("case", CASES)
def test_save_load_and_same_seed_same_images(case, tmp_path):
    train = toy(6, seed=0)
    gen = make(case, train)
    gen.fit(train, progress=False)
    a = gen.sample([2, 2, 2], seed=5, progress=False)
    gen.save(tmp_path / "g")
    back = load_generator(tmp_path / "g")
    assert type(back) is type(gen) and back.train_fingerprint == gen.train_fingerprint
    np.testing.assert_array_equal(back.sample([2, 2, 2], seed=5, progress=False).images, a.images)
    other = gen.sample([2, 2, 2], seed=6, progress=False)
    assert not np.array_equal(other.images, a.images)


@pytest.mark.parametrize("case", CASES)
def test_resume_continues_exactly_where_it_stopped(case, tmp_path):
    train = toy(6, seed=0)
    whole = make(case, train, steps=8)
    whole.fit(train, progress=False)
    half = make(case, train, steps=4)
    half.fit(train, checkpoint_dir=tmp_path / "ck", progress=False)
    resumed = make(case, train, steps=8)
    resumed.fit(train, checkpoint_dir=tmp_path / "ck", resume=True, progress=False)
    assert resumed.describe()["train_steps"] == 8
    np.testing.assert_array_equal(resumed.sample([2, 2, 2], seed=3, progress=False).images,
                                  whole.sample([2, 2, 2], seed=3, progress=False).images)
    # a checkpoint of other data is refused, not continued
    with pytest.raises(GeneratorError, match="trained on data"):
        make(case, train, steps=8).fit(toy(6, seed=9), checkpoint_dir=tmp_path / "ck", progress=False)


@pytest.mark.parametrize("case", CASES)
def test_refuses_synthetic_training_data_and_scoring_on_its_training_split(case):
    train = toy(6, seed=0)
    gen = make(case, train)
    with pytest.raises(GeneratorError, match="synthetic"):
        gen.fit(toy(6, seed=0, synthetic=True), progress=False)
    gen.fit(train, progress=False)
    syn = gen.sample([2, 2, 2], seed=0, progress=False)
    # the generator's training images cast as the test split: its images must not be scored there
    leaky = DataSplits(train=toy(6, seed=1), val=toy(4, seed=2), test=train)
    with pytest.raises(LeakageError, match="test split"):
        check_no_leakage(leaky, syn, gen.train_fingerprint)
    check_no_leakage(DataSplits(train=train, val=toy(4, seed=2), test=toy(4, seed=3)), syn, gen.train_fingerprint)
