"""The GPU fast path's decisions, checked on the CPU: float32 and the plain optimiser here, bf16 only
where a GPU supports it (never fp16), SDPA attention in diffusers' blocks."""

from __future__ import annotations

import torch

from synthmed import runtime


def test_cpu_trains_in_float32_with_the_foreach_optimiser():
    assert runtime.autocast_dtype("cpu") is None
    assert runtime.autocast_dtype("cpu", enabled=True) is None
    assert not runtime.fused_adam_supported("cpu")


def test_a_gpu_without_bf16_falls_back_to_float32_never_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert runtime.autocast_dtype("cuda") is None
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert runtime.autocast_dtype("cuda:0") is torch.bfloat16
    assert runtime.autocast_dtype("cuda", enabled=False) is None  # generator.mixed_precision: false
    assert runtime.fused_adam_supported("cuda:1")


def test_diffusers_attention_uses_scaled_dot_product_attention():
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    block = Attention(query_dim=16, heads=2, dim_head=8)
    assert isinstance(block.processor, AttnProcessor2_0)  # F.scaled_dot_product_attention inside


def test_channels_last_is_ignored_on_cpu():
    from toydata import toy

    from synthmed.config import DiffusionConfig
    from synthmed.generators.diffusion import DiffusionGenerator

    train = toy(4, seed=0)
    curves = []
    for channels_last in (False, True):
        cfg = DiffusionConfig(block_out_channels=[16, 16], layers_per_block=1, batch_size=8, train_steps=2,
                              log_every=1, channels_last=channels_last)
        gen = DiffusionGenerator(cfg, image_size=8, channels=1, class_names=train.class_names)
        gen.fit(train, progress=False)
        curves.append(gen.history["loss_curve"])
        assert next(gen.unet.parameters()).is_contiguous()
    assert curves[0] == curves[1]
