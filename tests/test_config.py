from __future__ import annotations

import pytest

from synthmed.config import ConfigError, load_config, preset_dict, preset_names, set_dotted


def test_every_preset_loads_and_validates():
    names = preset_names()
    for key in ("demo", "blastdiffusion", "pcam-ddpm", "renal-ldm", "improve", "pixel28", "pixel32", "latent64"):
        assert key in names
    for name in names:
        cfg = load_config(preset=name)
        assert cfg.preset == name


def test_paper_settings_in_presets():
    blast = load_config(preset="blastdiffusion").generator
    assert blast.block_out_channels == [64, 128, 256, 512] and blast.cond_dropout == 0.2
    assert (blast.hflip, blast.vflip, blast.lr, blast.batch_size) == (0.5, 0.3, 5e-5, 24)
    renal = load_config(preset="renal-ldm").generator
    assert renal.autoencoder.latent_channels == 3 and renal.guidance == 1.5 and renal.mixed_precision is False
    assert (renal.sampler, renal.sample_steps, renal.warmup_steps) == ("ddim", 50, 1000)
    assert load_config(preset="pcam-ddpm").generator.schedule == "cosine"


def test_file_overrides_preset_and_set_overrides_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: demo\ngenerator:\n  train_steps: 77\n")
    over: dict = {}
    set_dotted(over, "generator.lr", "0.5")
    cfg = load_config(f, overrides=over)
    assert cfg.generator.train_steps == 77 and cfg.generator.lr == 0.5
    assert cfg.generator.block_out_channels == preset_dict("demo")["generator"]["block_out_channels"]


def test_unknown_key_names_the_key(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("generator:\n  train_stepz: 5\n")
    with pytest.raises(ConfigError, match="generator.train_stepz"):
        load_config(f)


def test_bad_values_are_explained():
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="nope")
    with pytest.raises(ConfigError, match="sampler"):
        load_config(overrides={"generator": {"sampler": "euler"}})
    with pytest.raises(ConfigError, match="not divisible"):
        load_config(overrides={"data": {"image_size": 30}, "generator": {"block_out_channels": [8, 16, 16]}})
