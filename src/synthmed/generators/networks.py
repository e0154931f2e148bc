"""Network builders for the diffusion generators, all on diffusers' models.

Kept apart from the training loop so a reader sees the architecture in one place.
"""

from __future__ import annotations

from synthmed.config import AutoencoderConfig, DiffusionConfig


def _norm_groups(channels: list[int]) -> int:
    """Largest of 32/16/8/4 dividing every width: GroupNorm needs it, small CPU nets need < 32."""
    for g in (32, 16, 8, 4, 2, 1):
        if all(c % g == 0 for c in channels) and min(channels) // g >= 2:
            return g
    return 1


def build_unet(cfg: DiffusionConfig, sample_size: int, channels: int, num_classes: int):
    """Class-conditional ``UNet2DModel``.

    The class embedding is added to the timestep embedding (``num_class_embeds``), as in
    `pcam-ddpm`; index ``num_classes`` is the null class used for classifier-free guidance.
    Attention, when asked for, sits only at the lowest resolution: on CPU attention at
    32x32 costs more than the rest of the network.
    """
    from diffusers import UNet2DModel

    n = len(cfg.block_out_channels)
    down = ["DownBlock2D"] * n
    up = ["UpBlock2D"] * n
    if cfg.attention:
        down[-1] = "AttnDownBlock2D"
        up[0] = "AttnUpBlock2D"
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        add_attention=cfg.attention,
        attention_head_dim=8,
        dropout=cfg.dropout,
        norm_num_groups=_norm_groups(list(cfg.block_out_channels)),
        num_class_embeds=num_classes + 1,
    )


def build_autoencoder(cfg: AutoencoderConfig, image_size: int, channels: int):
    """Small KL autoencoder; the downsampling factor is 2 ** (len(block_out_channels) - 1)."""
    from diffusers import AutoencoderKL

    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        latent_channels=cfg.latent_channels,
        norm_num_groups=_norm_groups(list(cfg.block_out_channels)),
        sample_size=image_size,
        mid_block_add_attention=False,
    )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
