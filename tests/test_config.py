from __future__ import annotations

import pytest

from synthmed.config import ConfigError, load_config, preset_dict, preset_names, set_dotted


def test_every_preset_loads_and_validates():
    names = preset_names()
    for key in ("demo", "blastdiffusion", "pcam-ddpm", "renal-ldm", "improve", "pixel28", "pixel32", "latent64",
                "latent28", "latent28-f4"):
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


# --------------------------------------------------------------------------- types and ranges

from dataclasses import fields, is_dataclass  # noqa: E402
from typing import get_type_hints  # noqa: E402

from synthmed import config as C  # noqa: E402


def _leaf_fields(cls, where=""):
    """(dotted key, type hint) of every non-section field, found from the dataclasses themselves."""
    hints = get_type_hints(cls)
    for f in fields(cls):
        key = f"{where}.{f.name}" if where else f.name
        if is_dataclass(hints[f.name]):
            yield from _leaf_fields(hints[f.name], key)
        else:
            yield key, hints[f.name]


def _nested(dotted, value):
    over: dict = {}
    d = over
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value
    return over


def test_every_field_refuses_a_value_of_the_wrong_type():
    # covers fields added later without touching this test: the check comes from the type hints
    checked = 0
    for key, hint in _leaf_fields(C.RunConfig):
        inner, _optional = C._unpack_optional(hint)
        if inner is str:
            bad = {"x": 1}
        elif inner in (int, float, bool) or getattr(inner, "__origin__", None) is list:
            bad = "abc"
        else:
            continue
        with pytest.raises(ConfigError, match=f"^{key.replace('.', r'[.]')} = "):
            load_config(overrides=_nested(key, bad))
        checked += 1
    assert checked > 60


def test_lossless_conversions_are_accepted():
    cfg = load_config(overrides={"generator": {"lr": 1, "train_steps": 300.0, "guidance": "1.5e0"},
                                 "data": {"classes": [0, 1]}, "evaluate": {"judge": {"lr": "1e-3"}}})
    assert cfg.generator.lr == 1.0 and isinstance(cfg.generator.lr, float)
    assert cfg.generator.train_steps == 300 and isinstance(cfg.generator.train_steps, int)
    assert cfg.generator.guidance == 1.5 and cfg.evaluate.judge.lr == 0.001  # YAML 1.1 reads 1e-3 as text
    assert cfg.data.classes == ["0", "1"]


@pytest.mark.parametrize("override, message", [
    ({"generator": {"lr": "abc"}}, "generator.lr = 'abc': expected a number (float), e.g. 0.001"),
    ({"generator": {"train_steps": 1.5}}, "generator.train_steps = 1.5: expected a whole number (int)"),
    ({"downstream": {"seeds": "abc"}}, "downstream.seeds = 'abc': expected a list of whole numbers, e.g. [0,"),
    ({"generator": {"batch_size": True}}, "expected a whole number"),
    ({"generator": {"attention": 0}}, "expected true or false"),
    ({"samples_per_class": "all"}, "samples_per_class = 'all': expected a whole number (int) or null"),
    ({"generator": {"lr": float("inf")}}, "finite"),
])
def test_wrong_types_name_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=override)
    assert message in str(e.value)


def test_every_rule_names_a_real_field_and_refuses_a_value_outside_it():
    for cls, rules in C.RULES.items():
        names = {f.name for f in fields(cls)}
        assert set(rules) <= names, (cls.__name__, set(rules) - names)
    r = C.Range(0, 1, hi_open=True)
    assert r.ok(0) and r.ok(0.99) and not r.ok(1) and not r.ok(-0.01) and str(r) == "in [0, 1)"
    assert C.Range(0, lo_open=True).ok(1e-9) and not C.Range(0, lo_open=True).ok(0)
    for key, value, phrase in [("generator.train_steps", 0, ">= 1"), ("generator.lr", 0.0, "> 0"),
                               ("generator.cond_dropout", 1.0, "[0, 1)"), ("data.val_fraction", 0.0, "(0, 1)"),
                               ("select.budget_factor", 0.5, ">= 1"), ("downstream.seeds", [], "not be empty"),
                               ("downstream.seeds", [0, -1], ">= 0"), ("evaluate.n_boot", -1, ">= 0"),
                               ("downstream.protocols", ["mix", "mixx"], "'mixx' is not allowed"),
                               ("data.channels", 2, "choose one of [1, 3]")]:
        with pytest.raises(ConfigError, match=key.replace(".", "[.]")) as e:
            load_config(overrides=_nested(key, value))
        assert phrase in str(e.value), (key, str(e.value))
    # the values at the edges pass, and so do None for optional fields and a ratio-R:S protocol
    load_config(overrides={"data": {"val_fraction": 0.05, "train_per_class": None},
                           "downstream": {"protocols": ["ratio-50:50", "ratio-sweep"], "seeds": [0]}})


def test_names_checked_by_the_config_match_the_modules_that_own_them():
    from synthmed.classifiers import AUGMENTATIONS
    from synthmed.downstream.experiment import FILTERS
    from synthmed.downstream.protocols import PROTOCOLS, RATIO_SWEEP, get_protocol
    from synthmed.metrics.evaluate import KNOWN_METRICS

    assert set(C.METRIC_NAMES) == set(KNOWN_METRICS)
    assert set(C.AUGMENTATION_NAMES) == set(AUGMENTATIONS)
    assert set(C.FILTER_NAMES) == set(FILTERS)
    assert set(C.PROTOCOL_NAMES) == set(PROTOCOLS) | {"ratio-sweep"}
    rule = C.RULES[C.DownstreamConfig]["protocols"].rule
    for name in RATIO_SWEEP:
        get_protocol(name)
        assert rule.ok(name)


def test_validated_config_can_be_replaced_and_checked_again():
    import dataclasses

    cfg = load_config()
    bad = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, image_size=30))
    with pytest.raises(ConfigError, match="not divisible"):
        C.validate(bad)
    C.validate(bad, for_training=False)  # only real data is loaded: the U-Net size does not matter
    assert cfg.data.image_size == 32


def test_budget_presets_build_on_their_base_and_set_the_budget():
    base = load_config(preset="pixel28").generator
    for minutes in (10, 30, 60):
        g = load_config(preset=f"pixel28-{minutes}min").generator
        assert g.budget_minutes == minutes and g.train_steps > base.train_steps
        assert g.block_out_channels == base.block_out_channels and g.formulation == base.formulation
    gpu = load_config(preset="pixel28-gpu")
    assert gpu.device == "cuda" and gpu.data.image_size == 28 and gpu.generator.compile


def test_a_preset_that_builds_on_itself_is_refused(monkeypatch, tmp_path):
    import synthmed.config as config

    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "a.yaml").write_text("preset: b\n")
    (tmp_path / "presets" / "b.yaml").write_text("preset: a\n")
    monkeypatch.setattr(config.resources, "files", lambda pkg: tmp_path)
    with pytest.raises(ConfigError, match="builds on itself"):
        preset_dict("a")
