"""Differentiable augmentation for GAN training (DiffAugment / ADA style).

The discriminator sees every image, real or generated, through the same random transforms, each
applied to an image with probability ``p``; the transforms are differentiable, so the generator
still gets gradients through them. Because the real images are augmented too, D cannot learn the
transforms as a sign of "fake", and with small ``p`` the transforms do not leak into the samples
(Karras et al. 2020 found leaking starts around p = 0.8 for these kinds).

Every random number is drawn from the caller's ``torch.Generator`` whether or not a transform is
applied, so a run with a schedule on ``p`` stays reproducible and resumes exactly.
"""

from __future__ import annotations

import torch

#: the transforms by name, in the order they are applied
AUGMENTATIONS = ("translation", "flip", "colour", "cutout")


def _chosen(p: float, n: int, gen: torch.Generator, device) -> torch.Tensor:
    """(n, 1, 1, 1) bool: which images get this transform."""
    return (torch.rand(n, generator=gen) < p).to(device).view(n, 1, 1, 1)


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Shift each image by integer ``shift[i] = (dy, dx)`` pixels, filling with zeros (mid grey in [-1, 1])."""
    n, _c, h, w = x.shape
    t = int(shift.abs().max().item()) if len(shift) else 0
    if t == 0:
        return x
    padded = torch.nn.functional.pad(x, (t, t, t, t))
    rows = (torch.arange(h, device=x.device)[None, :] + t - shift[:, 0:1].to(x.device)).clamp(0, h + 2 * t - 1)
    cols = (torch.arange(w, device=x.device)[None, :] + t - shift[:, 1:2].to(x.device)).clamp(0, w + 2 * t - 1)
    b = torch.arange(n, device=x.device)[:, None, None]
    # (n, h, w, c) by advanced indexing, back to (n, c, h, w)
    return padded.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def augment(x: torch.Tensor, p: float, gen: torch.Generator, *, kinds=AUGMENTATIONS, translation: float = 0.125,
            cutout: float = 0.25, rows: torch.Tensor | None = None, total: int | None = None) -> torch.Tensor:
    """``x`` (N, C, H, W) in [-1, 1], each transform of ``kinds`` applied to each image with probability ``p``.

    translation: up to ``translation`` x the image size in each direction; flip: horizontal and
    vertical, each on its own (medical images have no up or left); colour: brightness, contrast and
    (RGB) saturation; cutout: one square of ``cutout`` x the size set to 0.

    ``rows`` and ``total`` (distributed training): ``x`` holds the images ``rows`` of a batch of
    ``total``; the draws are made for the whole batch and these rows' draws applied, so every rank
    augments its share exactly as one process augments the whole batch.
    """
    unknown = set(kinds) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from {list(AUGMENTATIONS)}")
    n, c, h, w = x.shape
    dev = x.device
    drawn = n if rows is None else int(total)
    # all draws happen whatever p is, so the stream of random numbers never depends on the schedule
    draws = {
        "translation": (_chosen(p, drawn, gen, dev),
                        torch.randint(-int(translation * h), int(translation * h) + 1, (drawn, 2), generator=gen)),
        "flip": (_chosen(p, drawn, gen, dev), _chosen(p, drawn, gen, dev)),
        "colour": (_chosen(p, drawn, gen, dev), torch.rand(drawn, 3, generator=gen).to(dev)),
        "cutout": (_chosen(p, drawn, gen, dev), torch.rand(drawn, 2, generator=gen)),
    }
    if rows is not None:
        draws = {k: tuple(t[rows.to(t.device)] for t in v) for k, v in draws.items()}
    if p <= 0:
        return x
    if "translation" in kinds and int(translation * h) > 0:
        m, shift = draws["translation"]
        shift = shift * m.view(n, 1).cpu().long()
        x = translate(x, shift)
    if "flip" in kinds:
        mh, mv = draws["flip"]
        x = torch.where(mh, x.flip(-1), x)
        x = torch.where(mv, x.flip(-2), x)
    if "colour" in kinds:
        m, r = draws["colour"]
        r = r.view(n, 3, 1, 1)
        y = x + (r[:, 0:1] - 0.5)  # brightness: +-0.5 in [-1, 1] units
        if c == 3:
            grey = y.mean(dim=1, keepdim=True)
            y = (y - grey) * (r[:, 1:2] * 2) + grey  # saturation x [0, 2]
        mean = y.mean(dim=(1, 2, 3), keepdim=True)
        y = (y - mean) * (r[:, 2:3] + 0.5) + mean  # contrast x [0.5, 1.5]
        x = torch.where(m, y, x)
    if "cutout" in kinds and int(cutout * h) > 0:
        m, r = draws["cutout"]
        size_h, size_w = max(1, int(cutout * h)), max(1, int(cutout * w))
        cy = (r[:, 0] * (h - size_h + 1)).long().clamp(0, h - size_h)
        cx = (r[:, 1] * (w - size_w + 1)).long().clamp(0, w - size_w)
        ys = torch.arange(h)[None, :, None]
        xs = torch.arange(w)[None, None, :]
        hole = ((ys >= cy[:, None, None]) & (ys < (cy + size_h)[:, None, None])
                & (xs >= cx[:, None, None]) & (xs < (cx + size_w)[:, None, None])).to(dev)[:, None]
        x = torch.where(m & hole, torch.zeros_like(x), x)
    return x


__all__ = ["AUGMENTATIONS", "augment", "translate"]
