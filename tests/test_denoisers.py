"""The denoiser and condition seams (generators/denoisers.py, conditioning.py): nulls per part of a
condition, context tokens and mask channels reaching the network, checkpoints from before the seam,
prototype conditioning, and fine-tuning a pretrained local diffusers folder."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from toydata import toy

from synthmed.config import ConfigError, DiffusionConfig, load_config
from synthmed.generators.base import GeneratorError
from synthmed.generators.conditioning import ClassVectorTable, Condition
from synthmed.generators.denoisers import PretrainedError, build_denoiser, weights_sha256
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.generators.registry import load_generator


def tiny(**kw) -> DiffusionConfig:
    base = dict(block_out_channels=[16, 16], lr=2e-3, warmup_steps=2, batch_size=8, train_steps=4, log_every=2,
                sample_steps=3, checkpoint_every=0, cross_attention_dim=16, dit_depth=2, dit_width=32, dit_heads=2)
    return DiffusionConfig(**{**base, **kw})


def gen_for(cfg, train, seed=0):
    return DiffusionGenerator(cfg, image_size=train.image_size, channels=train.channels, class_names=train.class_names,
                              seed=seed)


def test_null_condition_replaces_each_part_by_its_own_null():
    labels = torch.tensor([0, 2, 1])
    context = torch.randn(3, 2, 4)
    empty = torch.full((2, 4), 7.0)  # e.g. the empty caption's embedding
    mask = torch.ones(3, 1, 8, 8)
    c = Condition(labels, context=context, context_null=empty, mask=mask)
    null = c.null_like(3)
    assert null.labels.tolist() == [3, 3, 3]
    assert torch.equal(null.context, empty.expand(3, 2, 4)) and torch.equal(null.mask, torch.zeros_like(mask))
    part = c.drop(torch.tensor([False, True, False]), 3)
    assert part.labels.tolist() == [0, 3, 1]
    assert torch.equal(part.context[0], context[0]) and torch.equal(part.context[1], empty)
    assert part.mask[1].sum() == 0 and part.mask[0].sum() == 64
    both = Condition.cat([c, null])
    assert len(both) == 6 and both.context.shape == (6, 2, 4)
    # no context: zeros are the null
    assert torch.equal(Condition(labels, context=context).null_like(3).context, torch.zeros_like(context))


def test_context_tokens_and_mask_channels_reach_the_network():
    torch.manual_seed(0)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 500])
    cross = build_denoiser(tiny(denoiser="unet-cross-attention"), 8, 1, 3, context_dim=5).eval()
    y = torch.tensor([0, 1])
    ctx = torch.randn(2, 4, 5)
    with torch.no_grad():
        a = cross(x, t, Condition(y))
        b = cross(x, t, Condition(y, context=ctx))
        c = cross(x, t, Condition(y, context=ctx * 3))
    assert not torch.allclose(a, b) and not torch.allclose(b, c)  # the caption tokens are attended to
    masked = build_denoiser(tiny(), 8, 1, 3, mask_channels=1).eval()
    assert masked.net.config.in_channels == 2 and masked.net.config.out_channels == 1
    m = torch.ones(2, 1, 8, 8)
    with torch.no_grad():
        none = masked(x, t, Condition(y))
        zero = masked(x, t, Condition(y, mask=torch.zeros_like(m)))
        ones = masked(x, t, Condition(y, mask=m))
    assert torch.equal(none, zero) and not torch.allclose(none, ones)  # no mask = the zero mask


def test_dit_does_not_drop_labels_itself_and_its_labels_matter():
    # diffusers' DiT drops 10% of labels in train mode from the global RNG; synthmed drops them itself
    dit = build_denoiser(tiny(denoiser="dit"), 8, 1, 3).train()
    with torch.no_grad():
        for block in dit.net.transformer_blocks:  # zero-initialised gates: open them to see the labels' effect
            block.norm1.linear.weight.normal_(0, 0.05)
        dit.net.proj_out_2.weight.normal_(0, 0.05)
    x, t = torch.randn(64, 1, 8, 8), torch.full((64,), 300)
    y = torch.zeros(64, dtype=torch.long)
    with torch.no_grad():
        a, b = dit(x, t, y), dit(x, t, y)
        null = dit(x, t, torch.full_like(y, 3))
    assert torch.equal(a, b)
    assert not torch.allclose(a, null)


def test_fresh_dit_starts_as_zero_prediction():
    dit = build_denoiser(tiny(denoiser="dit"), 8, 1, 3)
    out = dit(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), torch.tensor([0, 1]))
    assert torch.equal(out, torch.zeros_like(out))


def test_checkpoint_from_before_the_denoiser_seam_still_loads(tmp_path):
    train = toy(6, seed=0)
    g = gen_for(tiny(), train)
    g.fit(train, progress=False)
    folder = g.save(tmp_path / "g")
    state = torch.load(folder / "checkpoint.pt", weights_only=False)
    # the old layout: a bare UNet2DModel state dict, no recorded architecture, no new config keys
    for key in ("unet", "ema"):
        state[key] = {k.removeprefix("net."): v for k, v in state[key].items()}
    del state["denoiser_arch"], state["pretrained"]
    for key in ("denoiser", "conditioning", "class_embed_dim", "cross_attention_dim", "dit_patch_size", "dit_depth",
                "dit_width", "dit_heads", "pretrained", "prototypes"):
        state["config"].pop(key)
    torch.save(state, folder / "checkpoint.pt")
    old = load_generator(folder)
    np.testing.assert_array_equal(old.sample([2, 2, 2], seed=4, progress=False).images,
                                  g.sample([2, 2, 2], seed=4, progress=False).images)


@pytest.mark.parametrize("denoiser", ["unet", "unet-cross-attention", "dit"])
def test_prototype_conditioning_keeps_the_prototypes_frozen_and_saves_them(denoiser, tmp_path):
    train = toy(6, seed=0)
    g = gen_for(tiny(denoiser=denoiser, conditioning="prototype", class_embed_dim=5), train)
    with pytest.raises(GeneratorError, match="prototypes are not set"):
        g.fit(train, progress=False)
    protos = torch.randn(3, 5)
    g.set_class_vectors(protos, {"extractor": "test"})
    g.fit(train, progress=False)
    for net in (g.unet, g.ema):
        assert torch.equal(net.table.vectors[:3], protos) and net.table.vectors[3].abs().sum() == 0
        assert not any(p is net.table.vectors for p in net.parameters())
    back = load_generator(g.save(tmp_path / "g"))
    assert torch.equal(back.unet.table.vectors[:3], protos)
    assert back.describe()["prototypes"] == {"extractor": "test"}
    # the class vector is what tells the classes apart: other prototypes, other images
    a = back.sample([0, 2, 0], seed=1, progress=False).images
    back.set_class_vectors(protos * 0 + protos[0], {})
    assert not np.array_equal(back.sample([0, 2, 0], seed=1, progress=False).images, a)


def test_prototype_conditioning_needs_its_width():
    with pytest.raises(GeneratorError, match="class_embed_dim"):
        gen_for(tiny(conditioning="prototype"), toy(2, seed=0))


def test_config_checks_dit_and_pretrained_combinations():
    with pytest.raises(ConfigError, match="dit_heads"):
        load_config(overrides={"generator": {"denoiser": "dit", "dit_width": 30, "dit_heads": 4}})
    with pytest.raises(ConfigError, match="dit_patch_size"):
        load_config(overrides={"data": {"image_size": 28}, "generator": {"denoiser": "dit", "dit_patch_size": 8}})
    with pytest.raises(ConfigError, match="prototype"):
        load_config(overrides={"generator": {"pretrained": "/x", "conditioning": "prototype"}})
    cfg = load_config(overrides={"data": {"image_size": 28}, "generator": {"denoiser": "dit", "dit_patch_size": 4}})
    assert cfg.generator.denoiser == "dit"
    for preset in ("pcam-ddpm", "pcam-ddpm-dit", "improve", "improve-baseline", "blastdiffusion"):
        load_config(preset=preset)


# --------------------------------------------------------------------------- pretrained folders


def _save_unet(path, num_class_embeds=5, in_channels=1):
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    UNet2DModel(sample_size=8, in_channels=in_channels, out_channels=in_channels, block_out_channels=(16, 16),
                layers_per_block=1, down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                norm_num_groups=8, num_class_embeds=num_class_embeds).save_pretrained(path)
    return path


def test_fine_tune_a_pretrained_unet_folder_adapts_its_class_table(tmp_path):
    train = toy(6, seed=0)
    src = _save_unet(tmp_path / "pipe" / "unet")  # a pipeline folder: the U-Net in unet/
    cfg = tiny(pretrained=str(tmp_path / "pipe"), block_out_channels=[32, 32, 32])  # shapes come from the folder
    g = gen_for(cfg, train)
    assert list(g.unet.net.config.block_out_channels) == [16, 16]
    rec = g.describe()["pretrained"]
    assert rec["model_class"] == "UNet2DModel" and "5 -> 4 rows" in rec["adapted"][0]
    file = next(src.glob("*.safetensors"))
    assert rec["weights_sha256"][file.name] == hashlib.sha256(file.read_bytes()).hexdigest()
    # the source weights are where training starts (but for the new class table)
    from diffusers import UNet2DModel

    source = UNet2DModel.from_pretrained(str(src)).state_dict()
    mine = g.unet.net.state_dict()
    assert torch.equal(mine["conv_in.weight"], source["conv_in.weight"])
    assert mine["class_embedding.weight"].shape == (4, source["class_embedding.weight"].shape[1])
    g.fit(train, progress=False)
    assert not torch.equal(g.unet.net.state_dict()["conv_in.weight"], source["conv_in.weight"])
    syn = g.sample([1, 1, 1], seed=0, progress=False)
    assert syn.images.shape == (3, 8, 8, 1)
    # the saved generator rebuilds from its recorded architecture, without the source folder
    folder = g.save(tmp_path / "g")
    for f in src.iterdir():
        f.unlink()
    back = load_generator(folder)
    assert back.describe()["pretrained"]["weights_sha256"] == rec["weights_sha256"]
    np.testing.assert_array_equal(back.sample([1, 1, 1], seed=0, progress=False).images, syn.images)


def test_fine_tune_pretrained_dit_and_cross_attention_folders(tmp_path):
    from diffusers import DiTTransformer2DModel, UNet2DConditionModel

    train = toy(6, seed=0)
    DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1, num_layers=1,
                          sample_size=8, patch_size=2, num_embeds_ada_norm=10).save_pretrained(tmp_path / "dit")
    g = gen_for(tiny(denoiser="dit", pretrained=str(tmp_path / "dit")), train)
    assert "10 -> 3 classes" in g.pretrained["adapted"][0]
    g.fit(train, progress=False)
    assert g.sample([1, 1, 1], seed=0, progress=False).images.shape == (3, 8, 8, 1)
    UNet2DConditionModel(sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 16), layers_per_block=1,
                         down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                         up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8, cross_attention_dim=12,
                         attention_head_dim=4).save_pretrained(tmp_path / "cross")
    g = gen_for(tiny(denoiser="unet-cross-attention", pretrained=str(tmp_path / "cross")), train)
    assert g.unet.table.dim == 12
    g.fit(train, progress=False)
    assert g.sample([1, 1, 1], seed=0, progress=False).images.shape == (3, 8, 8, 1)


def test_pretrained_folders_that_do_not_fit_are_refused_with_the_fix(tmp_path):
    train = toy(2, seed=0)
    _save_unet(tmp_path / "rgb", in_channels=3)
    with pytest.raises(PretrainedError, match="3-channel inputs.*data.channels"):
        gen_for(tiny(pretrained=str(tmp_path / "rgb")), train)
    _save_unet(tmp_path / "u")
    with pytest.raises(PretrainedError, match="set generator.denoiser: unet"):
        gen_for(tiny(denoiser="dit", pretrained=str(tmp_path / "u")), train)
    with pytest.raises(PretrainedError, match="no diffusers model"):
        gen_for(tiny(pretrained=str(tmp_path / "nothing")), train)


def test_weight_hashes_cover_the_weight_files(tmp_path):
    _save_unet(tmp_path / "u")
    hashes = weights_sha256(tmp_path / "u")
    assert "config.json" in hashes and any(k.endswith(".safetensors") for k in hashes)


def test_learned_class_table_is_trained_and_the_frozen_one_refuses_nothing_else():
    t = ClassVectorTable(3, 4)
    assert t.vectors.requires_grad
    with pytest.raises(ValueError, match="frozen"):
        t.set_vectors(torch.zeros(3, 4))
    f = ClassVectorTable(3, 4, frozen=True)
    with pytest.raises(ValueError, match="shape"):
        f.set_vectors(torch.zeros(2, 4))


def test_run_with_prototype_conditioning_learns_prototypes_from_the_judges_features(tmp_path, monkeypatch):
    import json

    from synthmed.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    argv = ["run", "--out", str(tmp_path), "--name", "proto", "--quiet", "--threads", "1",
            "--set", "data.embryo_per_class=[30,20,30]", "--image-size", "16",
            "--set", "generator.conditioning=prototype", "--set", "generator.block_out_channels=[16,32]",
            "--set", "generator.train_steps=6", "--set", "generator.batch_size=16", "--set", "generator.log_every=2",
            "--set", "generator.sample_steps=3", "--set", "samples_per_class=4", "--set", "downstream.seeds=[0]",
            "--set", "downstream.classifier.epochs=1", "--set", "evaluate.judge.epochs=1", "--set", "evaluate.n_boot=0"]
    assert main(argv) == 0
    saved = json.loads((tmp_path / "proto" / "generator" / "generator.json").read_text())
    assert saved["config"]["conditioning"] == "prototype" and saved["config"]["class_embed_dim"] == 128
    gen = load_generator(tmp_path / "proto" / "generator")
    record = gen.describe()["prototypes"]
    assert record["extractor"] == "domain" and record["per_class"] == 1 and record["dim"] == 128
    n_train = json.loads((tmp_path / "proto" / "data.json").read_text())["train"]["num_images"]
    assert sum(map(sum, record["assignments"])) == n_train == record["n_train"]
    # the prototypes came from the same (cached) network that judges the run: one classifier trained
    assert len(list((tmp_path / "cache" / "synthmed" / "domain").glob("*.pt"))) == 1
