"""Fréchet distance tracked against kimg while a GAN trains, to keep its best snapshot.

R3GAN's tuning (`r3gan-small`) chose the snapshot with the lowest FID along training. synthmed's
judge (the domain extractor) is trained after the generator, so during training the features
come from a stand-in: a small convolutional network with fixed random weights (seeded, never
trained). Random-feature Fréchet distances rank generators much like trained ones on small
images, at a fraction of the cost; the numbers are not comparable with the evaluation's FD in the
judge's features, and the report labels them so. A caller with a feature extractor of its own
sets ``generator.fd_feature_fn`` (uint8 NHWC images -> (N, d) features) before ``fit``.

It lives with the generators because the metrics stage comes after them (tests/test_layering.py).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg


class RandomFeatures(torch.nn.Module):
    """Fixed random conv features (three 3x3 conv + leaky ReLU, average-pooled to 2x2): 4 x widths[-1]-d."""

    def __init__(self, channels: int, widths=(32, 64, 64), seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        layers, c = [], channels
        for i, w in enumerate(widths):
            conv = torch.nn.Conv2d(c, w, 3, stride=1 if i == 0 else 2, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (c * 9)) ** 0.5)
                conv.bias.zero_()
            layers += [conv, torch.nn.LeakyReLU(0.2)]
            c = w
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
        self.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def images_to_unit(x_uint8_nhwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x_uint8_nhwc).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (N, d)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular covariances: nudge the diagonals
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


class FDMonitor:
    """Features of a fixed real reference set, and the FD of generated images against them."""

    def __init__(self, real_x: torch.Tensor, feature_fn=None, seed: int = 0, batch_size: int = 256):
        self.batch_size = batch_size
        self.external = feature_fn
        self.net = None if feature_fn is not None else RandomFeatures(real_x.shape[1], seed=seed)
        self.features_name = "caller's features" if feature_fn is not None else "fixed random conv features"
        self.real = self.features(real_x)

    def features(self, x: torch.Tensor) -> np.ndarray:
        """``x`` (N, C, H, W) in [-1, 1] on any device -> (N, d) numpy."""
        out = []
        for i in range(0, len(x), self.batch_size):
            xb = x[i:i + self.batch_size].float().cpu()
            if self.external is not None:
                u8 = ((xb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
                out.append(np.asarray(self.external(u8), np.float64))
            else:
                out.append(self.net(xb.clamp(-1, 1)).double().numpy())
        return np.concatenate(out)

    def fd(self, fake_x: torch.Tensor) -> float:
        return frechet_distance(self.real, self.features(fake_x))


__all__ = ["RandomFeatures", "FDMonitor", "frechet_distance"]
