"""``torchscript:PATH``: any exported TorchScript feature network (DINOv2, CLIP, a user's own).

A generic plug for networks synthmed does not ship: the user exports a module that maps
float images in [0, 1] of shape (N, 3, S, S) to (N, d) features (normalisation included
in the module), and names S. Nothing is downloaded; the file's hash is recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from synthmed.features.base import FeatureExtractor, FeatureExtractorError, file_sha256, uint8_nchw_rgb


class TorchScriptExtractor(FeatureExtractor):
    """Args:
        path: the TorchScript file (``torch.jit.save``).
        image_size: the size S the module expects; images are resized to S x S (bilinear,
            antialiased when shrinking). None feeds images at their own size.
        device: torch device for the forward passes.
    """

    def __init__(self, path: str | os.PathLike, *, image_size: int | None = 224, device: str = "cpu"):
        import torch

        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise FeatureExtractorError(f"TorchScript feature network not found: {self.path}")
        try:
            self.module = torch.jit.load(str(self.path), map_location=device).eval()
        except Exception as e:  # noqa: BLE001 - anything torch.jit cannot read
            raise FeatureExtractorError(f"{self.path}: not a TorchScript module ({type(e).__name__}: {e})") from None
        self.device = device
        self.image_size = image_size
        self.name = f"torchscript:{self.path.name}"
        self.weights_hash = file_sha256(self.path)
        size = ("own size (no resize)" if image_size is None
                else f"bilinear (antialiased) resize to {image_size}x{image_size}")
        self.input_policy = f"grey->RGB replicate; {size}; float [0, 1]"
        probe = np.zeros((1, image_size or 32, image_size or 32, 3), dtype=np.uint8)
        out = self._forward(probe)
        if out.ndim != 2:
            raise FeatureExtractorError(f"{self.path}: module returns shape {tuple(out.shape)}, expected (N, d)")
        self.dim = int(out.shape[1])

    def _forward(self, images: np.ndarray):
        import torch
        import torch.nn.functional as F

        x = uint8_nchw_rgb(images).to(self.device).float().div_(255.0)
        if self.image_size is not None and x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.image_size).clamp_(0.0, 1.0)
        with torch.no_grad():
            out = self.module(x)
        return out

    def _extract_batch(self, images: np.ndarray) -> np.ndarray:
        return self._forward(images).double().cpu().numpy()

    def describe(self) -> dict:
        return {**super().describe(), "file": str(self.path), "image_size": self.image_size}
