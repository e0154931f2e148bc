"""Tiny labelled image sets shared by the classifier, evaluation and downstream tests."""

from __future__ import annotations

import numpy as np

from synthmed.data.dataset import ImageDataset

CLASSES = ["bright", "dark", "striped"]


def toy(counts, seed: int, size: int = 8, synthetic: bool = False) -> ImageDataset:
    """Three easy classes of grey ``size`` x ``size`` images: bright, dark, and vertical stripes of
    mid mean, each with N(0, 20) pixel noise. ``counts``: images per class (an int for all classes)."""
    rng = np.random.default_rng(seed)
    stripes = np.tile(np.array([40.0, 215.0]), size // 2)[None, :].repeat(size, 0)
    means = [np.full((size, size), 200.0), np.full((size, size), 55.0), stripes]
    counts = [counts] * 3 if np.isscalar(counts) else list(counts)
    images = np.concatenate([m + rng.normal(0, 20, (n, size, size)) for m, n in zip(means, counts)])
    return ImageDataset(np.clip(images, 0, 255).astype(np.uint8)[..., None], np.repeat(np.arange(3), counts),
                        list(CLASSES), name=f"toy{seed}", synthetic=synthetic)
