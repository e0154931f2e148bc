"""Latent diffusion at 28 px: the autoencoder is trained once per split (cached by fingerprints),
latents have the size its factor says, the config refuses a U-Net too deep for them, and the
judge says how much class information survives the autoencoder."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from toydata import toy

from synthmed.classifiers import train_classifier
from synthmed.config import AutoencoderConfig, ClassifierConfig, ConfigError, DiffusionConfig, load_config
from synthmed.data.dataset import DataSplits, ImageDataset
from synthmed.features.domain import DomainExtractor
from synthmed.generators.autoencoder import LatentAutoencoder, autoencoder_cache_path
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.generators.registry import load_generator
from synthmed.metrics.reconstruction import reconstruction_judge_accuracy, reconstruction_warning
from synthmed.report.html import render_report
from synthmed.report.verdict import run_warnings


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own empty ~/.cache/synthmed (and one thread: tiny nets on a busy machine
    run many times slower on two)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path / "cache" / "synthmed" / "autoencoder"
    torch.set_num_threads(threads)


@pytest.fixture
def fit_calls(monkeypatch):
    """Counts real autoencoder trainings (LatentAutoencoder.fit), whatever calls them."""
    calls = []
    real_fit = LatentAutoencoder.fit

    def counting_fit(self, *args, **kwargs):
        calls.append(self)
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(LatentAutoencoder, "fit", counting_fit)
    return calls


def latent_cfg(ae_widths=(8, 8), unet=(16, 16), **ae) -> DiffusionConfig:
    ae = AutoencoderConfig(block_out_channels=list(ae_widths), latent_channels=4, train_steps=6, batch_size=8,
                           **ae)
    return DiffusionConfig(space="latent", block_out_channels=list(unet), lr=2e-3, warmup_steps=1, batch_size=8,
                           train_steps=2, log_every=1, sample_steps=2, checkpoint_every=0, autoencoder=ae)


def make(cfg, ds, seed=0) -> DiffusionGenerator:
    return DiffusionGenerator(cfg, image_size=ds.image_size, channels=ds.channels, class_names=ds.class_names,
                              seed=seed)


def vae_weights(gen) -> dict:
    return {k: v.clone() for k, v in gen.autoencoder.vae.state_dict().items()}


# --------------------------------------------------------------------------- cache


def test_second_fit_on_the_same_split_loads_the_autoencoder_from_the_cache(fit_calls, private_cache):
    train, val = toy(6, seed=0), toy(3, seed=1)
    first = make(latent_cfg(), train)
    h1 = first.fit(train, val, progress=False)
    assert len(fit_calls) == 1 and h1["autoencoder"]["cache"] == "miss"
    path = autoencoder_cache_path(first.cfg.autoencoder, 8, 1, train.fingerprint(), val.fingerprint(), 0)
    assert path.parent == private_cache and path.is_file()
    assert h1["autoencoder"]["cache_file"] == str(path)

    second = make(latent_cfg(), train)
    h2 = second.fit(train, val, progress=False)
    assert len(fit_calls) == 1, "the cached autoencoder was retrained"
    assert h2["autoencoder"]["cache"] == "hit"
    for k, v in vae_weights(first).items():
        torch.testing.assert_close(second.autoencoder.vae.state_dict()[k], v, rtol=0, atol=0)
    assert second.autoencoder.scaling_factor == first.autoencoder.scaling_factor
    assert h2["autoencoder"]["reconstruction"] == h1["autoencoder"]["reconstruction"]


def test_an_autoencoder_cut_short_by_the_budget_is_not_cached(monkeypatch, private_cache):
    """Its key promises autoencoder.train_steps: a training cut short by generator.budget_minutes must not be
    loaded later as if it were the full one (it is retrained), and an old short entry is not trusted."""
    real_fit = LatentAutoencoder.fit
    calls = []

    def short_fit(self, *args, **kwargs):  # what a budget that fits 3 of the 6 steps leaves
        calls.append(self)
        out = real_fit(self, *args, **kwargs)
        self.history["train_steps"] = 3
        return out

    monkeypatch.setattr(LatentAutoencoder, "fit", short_fit)
    train, val = toy(6, seed=0), toy(3, seed=1)
    h = make(latent_cfg(), train).fit(train, val, progress=False)
    assert h["autoencoder"]["cache"].startswith("miss (cut short")
    assert not any(private_cache.glob("*.pt")) if private_cache.exists() else True
    make(latent_cfg(), train).fit(train, val, progress=False)
    assert len(calls) == 2, "the short training was stored and loaded"


def test_the_cached_autoencoder_is_the_one_a_fresh_fit_trains(fit_calls):
    # the cache may only stand in for training if training is reproducible from the seed
    train, val = toy(6, seed=0), toy(3, seed=1)
    cached = make(latent_cfg(), train)
    cached.fit(train, val, progress=False)
    fresh = make(latent_cfg(cache=False), train)
    assert fresh.fit(train, val, progress=False)["autoencoder"]["cache"] == "off"
    assert len(fit_calls) == 2
    for k, v in vae_weights(cached).items():
        torch.testing.assert_close(fresh.autoencoder.vae.state_dict()[k], v)


def test_other_split_other_seed_or_other_config_retrains(fit_calls, private_cache):
    train, val = toy(6, seed=0), toy(3, seed=1)
    make(latent_cfg(), train).fit(train, val, progress=False)
    other = toy(6, seed=5)
    assert make(latent_cfg(), other).fit(other, val, progress=False)["autoencoder"]["cache"] == "miss"
    assert make(latent_cfg(), train, seed=1).fit(train, val, progress=False)["autoencoder"]["cache"] == "miss"
    assert make(latent_cfg(kl_weight=1e-3), train).fit(train, val, progress=False)["autoencoder"]["cache"] == "miss"
    assert len(fit_calls) == 4 and len(list(private_cache.glob("*.pt"))) == 4
    # `cache` itself is no setting of the network: switching it off and on again finds the first entry
    assert make(latent_cfg(), train).fit(train, val, progress=False)["autoencoder"]["cache"] == "hit"
    assert len(fit_calls) == 4


def test_no_cache_writes_nothing(fit_calls, private_cache):
    train, val = toy(6, seed=0), toy(3, seed=1)
    for _ in range(2):
        assert make(latent_cfg(cache=False), train).fit(train, val, progress=False)["autoencoder"]["cache"] == "off"
    assert len(fit_calls) == 2 and not private_cache.exists()


def test_a_corrupted_cache_file_is_retrained_with_a_warning_and_replaced(fit_calls):
    train, val = toy(6, seed=0), toy(3, seed=1)
    first = make(latent_cfg(), train)
    first.fit(train, val, progress=False)
    path = first.history["autoencoder"]["cache_file"]
    with open(path, "r+b") as f:  # a truncated, half-overwritten file
        f.seek(100)
        f.write(b"\x00garbage" * 50)
        f.truncate(600)
    again = make(latent_cfg(), train)
    with pytest.warns(UserWarning, match="ignoring the cached autoencoder"):
        h = again.fit(train, val, progress=False)
    assert len(fit_calls) == 2 and h["autoencoder"]["cache"] == "miss"
    for k, v in vae_weights(first).items():  # retrained from the seed's initial weights, as the first time
        torch.testing.assert_close(again.autoencoder.vae.state_dict()[k], v)
    assert make(latent_cfg(), train).fit(train, val, progress=False)["autoencoder"]["cache"] == "hit"


def test_a_cache_file_of_other_data_under_this_name_is_not_trusted(fit_calls):
    train, val, other = toy(6, seed=0), toy(3, seed=1), toy(6, seed=5)
    a = make(latent_cfg(), train)
    a.fit(train, val, progress=False)
    b = make(latent_cfg(), other)
    b.fit(other, val, progress=False)
    import shutil

    shutil.copy(b.history["autoencoder"]["cache_file"], a.history["autoencoder"]["cache_file"])
    with pytest.warns(UserWarning, match="train_fingerprint"):
        h = make(latent_cfg(), train).fit(train, val, progress=False)
    assert h["autoencoder"]["cache"] == "miss" and len(fit_calls) == 3


def test_a_saved_generator_carries_its_autoencoder(tmp_path, fit_calls):
    train, val = toy(6, seed=0), toy(3, seed=1)
    gen = make(latent_cfg(), train)
    gen.fit(train, val, progress=False)
    a = gen.sample([2, 2, 2], seed=3, progress=False)
    gen.save(tmp_path / "g")
    for f in (tmp_path / "cache").rglob("*.pt"):  # the cache is gone: the folder alone must do
        f.unlink()
    back = load_generator(tmp_path / "g")
    np.testing.assert_array_equal(back.sample([2, 2, 2], seed=3, progress=False).images, a.images)
    assert len(fit_calls) == 1


# --------------------------------------------------------------------------- 28 px latents


@pytest.mark.parametrize("ae_widths, unet, side", [((8, 8), (16, 16), 14), ((8, 8, 8), (16,), 7)])
def test_latents_at_28px_for_factor_2_and_4(ae_widths, unet, side):
    torch.manual_seed(0)
    rgb = toy(4, seed=0, size=28)
    rgb = ImageDataset(np.repeat(rgb.images, 3, axis=-1), rgb.labels, rgb.class_names, name="rgb28")
    gen = make(latent_cfg(ae_widths, unet), rgb)
    assert gen.model_shape == (4, side, side)
    assert gen.autoencoder.downsample_factor == 28 // side
    x, _ = rgb.to_tensor()
    assert gen.autoencoder.encode(x[:3]).shape == (3, 4, side, side)
    gen.fit(rgb, progress=False)
    syn = gen.sample([1, 1, 1], seed=0, progress=False)
    assert syn.images.shape == (3, 28, 28, 3)
    rec = gen.reconstruct(rgb)
    assert rec.images.shape == rgb.images.shape and rec.labels.tolist() == rgb.labels.tolist() and rec.synthetic
    assert gen.describe()["latent_shape"] == [4, side, side]


def test_pixel_space_generators_have_nothing_to_reconstruct():
    ds = toy(3, seed=0)
    gen = make(DiffusionConfig(block_out_channels=[16, 16]), ds)
    assert gen.reconstruct(ds) is None


def _latent28(**generator):
    return load_config(overrides={"data": {"image_size": 28}, "generator": {"space": "latent", **generator}})


def test_config_refuses_a_unet_too_deep_for_the_latents():
    with pytest.raises(ConfigError, match=r"latents are 7x7 .*autoencoder factor 4.*at most 1 level \(e\.g\. \[64\]\)"):
        _latent28(block_out_channels=[64, 128], autoencoder={"block_out_channels": [32, 64, 64]})
    with pytest.raises(ConfigError, match=r"latents are 14x14 .*at most 2 levels"):
        _latent28(block_out_channels=[64, 128, 128], autoencoder={"block_out_channels": [32, 64]})
    with pytest.raises(ConfigError, match=r"data.image_size = 28 is not divisible by the autoencoder's factor 8"):
        _latent28(block_out_channels=[64], autoencoder={"block_out_channels": [8, 8, 8, 8]})
    # what fits passes, and a pixel-space U-Net is held to the image size, not to latents
    assert _latent28(block_out_channels=[64], autoencoder={"block_out_channels": [32, 64, 64]}).generator.space == "latent"
    assert _latent28(block_out_channels=[64, 128], autoencoder={"block_out_channels": [32, 64]}).generator
    load_config(overrides={"data": {"image_size": 28}, "generator": {"block_out_channels": [32, 64, 64],
                                                                      "autoencoder": {"block_out_channels": [32, 64, 64]}}})


def test_config_reads_a_pretrained_autoencoders_factor(tmp_path):
    (tmp_path / "config.json").write_text('{"block_out_channels": [32, 64, 64]}')
    with pytest.raises(ConfigError, match=r"latents are 7x7 .*the pretrained autoencoder at .* \(3 levels\)"):
        _latent28(block_out_channels=[64, 128], autoencoder={"pretrained_path": str(tmp_path)})


def test_latent28_presets_validate_with_the_latent_size_they_promise():
    for name, side, in (("latent28", 14), ("latent28-f4", 7)):
        g = load_config(preset=name).generator
        factor = 2 ** (len(g.autoencoder.block_out_channels) - 1)
        assert g.space == "latent" and 28 // factor == side and side % 2 ** (len(g.block_out_channels) - 1) == 0


# --------------------------------------------------------------------------- reconstructions vs the judge


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    return train_classifier(toy(40, 0), toy(10, 1), ClassifierConfig(lr=3e-3, batch_size=32, epochs=8, patience=3),
                            seed=0)


def test_faithful_reconstructions_keep_the_judges_accuracy(judge):
    real = toy(20, seed=2)
    copy = ImageDataset(real.images.copy(), real.labels.copy(), real.class_names, name="copy", synthetic=True)
    res = reconstruction_judge_accuracy(judge, real, copy)
    assert res["accuracy_original"] > 0.9 and res["accuracy_reconstructed"] == res["accuracy_original"]
    assert res["drop"] == 0 and res["agreement"] == 1.0 and res["n"] == 60
    assert all(e["n"] == 20 and e["drop"] == 0 for e in res["per_class"].values())
    assert reconstruction_warning(res) is None


def test_blurred_reconstructions_lose_accuracy_and_are_warned_about(judge):
    real = toy(20, seed=2)
    # a "decoder" that keeps each image's mean grey level but blurs away the stripes
    means = real.images.astype(float).mean(axis=(1, 2, 3), keepdims=True)
    blur = ImageDataset(np.broadcast_to(means, real.images.shape).round().astype(np.uint8), real.labels.copy(),
                        real.class_names, name="blur", synthetic=True)
    res = reconstruction_judge_accuracy(judge, real, blur)
    assert res["per_class"]["striped"]["reconstructed"] < 0.5 < res["per_class"]["striped"]["original"]
    assert res["drop"] > 0.1 and res["agreement"] < 1
    line = reconstruction_warning(res)
    assert "blurs away what tells the classes apart" in line and f"{100 * res['drop']:.0f} points" in line
    assert "\n" not in line
    metrics = {"generator": {"autoencoder": {"reconstruction_judge": res}}}
    assert line in run_warnings(metrics)
    html = render_report({"title": "t", "generator": {"kind": "latent", "latent_shape": [4, 14, 14],
                                                      "autoencoder": {"reconstruction_judge": res, "cache": "hit"}}})
    assert "autoencoder reconstructions, judged" in html and "most lost: class striped" in html
    assert "4×14×14" in html and "autoencoder cache" in html


def test_reconstructions_must_match_real_originals(judge):
    real = toy(5, seed=2)
    with pytest.raises(ValueError, match="image for image"):
        reconstruction_judge_accuracy(judge, real, toy(4, seed=2, synthetic=True))
    with pytest.raises(ValueError, match="REAL"):
        reconstruction_judge_accuracy(judge, toy(5, seed=2, synthetic=True), toy(5, seed=2, synthetic=True))
    with pytest.raises(ValueError, match="training split"):
        reconstruction_judge_accuracy(judge, toy(40, 0), toy(40, 0, synthetic=True))


def test_pipeline_records_the_judged_reconstructions_in_the_generator(judge, tmp_path):
    from synthmed.pipeline import step_reconstruction

    splits = DataSplits(train=toy(40, 0), val=toy(10, 1), test=toy(10, 3))
    gen = make(latent_cfg(), splits.train)
    gen.fit(splits.train, splits.val, progress=False)
    res = step_reconstruction(tmp_path, gen, splits, DomainExtractor.from_classifier(judge), quiet=True)
    assert res["n"] == 30 and res["split"] == "val" and 0 <= res["accuracy_reconstructed"] <= 1
    assert gen.history["autoencoder"]["reconstruction_judge"] == res
    assert load_generator(tmp_path / "generator").history["autoencoder"]["reconstruction_judge"] == res
    pixel = make(DiffusionConfig(block_out_channels=[16, 16], train_steps=1, warmup_steps=1), splits.train)
    assert step_reconstruction(tmp_path / "p", pixel, splits, DomainExtractor.from_classifier(judge), quiet=True) is None


def test_transpose_adds_the_four_transposed_latent_variants():
    """With generator.transpose on, the latents are encoded once per rotation/reflection (8 with both
    flips), and variant k is the encoding of the image in flip_variants()[k]."""
    from synthmed.generators.training_conditions import apply_variant, flip_variants

    ds = toy(3, seed=0)
    gen = make(dataclasses.replace(latent_cfg(), hflip=0.5, vflip=0.5, transpose=0.5), ds)
    latents, _, n_variants = gen._training_tensors(ds, None, progress=False)
    assert n_variants == 8 and latents.shape[0] == 8
    x, _ = ds.to_tensor()
    for k, variant in enumerate(flip_variants(0.5, 0.5, 0.5)):
        torch.testing.assert_close(latents[k], gen.autoencoder.encode(apply_variant(x, *variant)).cpu())
    gen.fit(ds, progress=False)  # and the loop trains on them
