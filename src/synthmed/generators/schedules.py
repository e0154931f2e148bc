"""Training progress in kimg, the burn-in schedules of R3GAN, and EMA by half-life.

Progress is counted in kimg: thousands of real images shown to the discriminator, so a schedule
means the same whatever the batch size (Karras et al.; R3GAN). During the burn-in every scheduled
setting moves from its start to its end value on a cosine; after it, the end value holds. The
burn-in is a fraction of the whole training and may exceed 1 (the small-data preset uses 1.5):
then the schedule never finishes, and training ends two thirds of the way along it.
"""

from __future__ import annotations

import math

#: decay shapes: "cosine" 0.5 (1 + cos(pi x)), R3GAN's own; "squared" 0.5 (1 + cos(pi x^2)), the
#: delayed decay of `r3gan-small` (flat head, steep tail); x = progress / burn-in in [0, 1]
SHAPES = ("cosine", "squared")


def kimg(images_shown: int) -> float:
    """Training progress in kimg from the number of real images shown."""
    return images_shown / 1000.0


def burn_in_position(progress_kimg: float, total_kimg: float, burn_in: float) -> float:
    """x in [0, 1]: how far along the burn-in a run is (1 once it is over). ``burn_in``: fraction of
    ``total_kimg`` (> 0; above 1 the end of training comes before x reaches 1)."""
    if burn_in <= 0 or total_kimg <= 0:
        return 1.0
    return min(max(progress_kimg / (burn_in * total_kimg), 0.0), 1.0)


def decay(x: float, shape: str = "cosine") -> float:
    """1 at x = 0 falling to 0 at x = 1 (the weight of the start value)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown schedule shape '{shape}'; choose one of {list(SHAPES)}")
    x = min(max(x, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * (x * x if shape == "squared" else x)))


def scheduled(start: float, end: float, progress_kimg: float, total_kimg: float, burn_in: float,
              shape: str = "cosine") -> float:
    """The value of a setting that moves from ``start`` to ``end`` over the burn-in: rising
    (gamma 5 -> 40) or falling (lr 2e-4 -> 5e-5) alike."""
    w = decay(burn_in_position(progress_kimg, total_kimg, burn_in), shape)
    return end + (start - end) * w


def ema_beta(batch_size: int, half_life_kimg: float) -> float:
    """Per-step EMA decay whose weights halve every ``half_life_kimg`` kimg of images at this batch
    size (StyleGAN's ema_kimg); 0 (a plain copy) for a half-life of 0."""
    if half_life_kimg <= 0:
        return 0.0
    return 0.5 ** (batch_size / (half_life_kimg * 1000.0))


__all__ = ["SHAPES", "kimg", "burn_in_position", "decay", "scheduled", "ema_beta"]
