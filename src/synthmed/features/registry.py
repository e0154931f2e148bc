"""The one registry of feature extractors, and the base class they share.

Every feature-based metric (FID, KID, precision/recall) and the realism filter ask this
registry for an extractor by name, so "which network saw the images" is decided in one
place and recorded with every number. Names:

- ``inception``: the standard FID Inception-v3 (torch-fidelity's network and weights);
- ``domain``: a classifier trained by synthmed on the real training split;
- ``torchscript:PATH``: any exported TorchScript feature network (DINOv2, CLIP, ...).

``get_extractor("name:ARG", **options)`` passes ``ARG`` as the first argument of the
factory, so ``inception:/data/weights.pth`` and ``torchscript:/data/dino.pt`` read naturally.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from synthmed.data.dataset import ImageDataset

#: images per forward pass unless the caller says otherwise
DEFAULT_BATCH_SIZE = 256


class FeatureExtractorError(ValueError):
    """An extractor cannot be built or used: unknown name, missing or wrong weights file."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/synthmed`` (``~/.cache/synthmed``): where trained extractors are kept."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "synthmed"


def file_sha256(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def state_dict_sha256(state_dict: dict, length: int = 16) -> str:
    """Hash of names, dtypes, shapes and values: identifies weights that never lived in one file."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # view as bytes: numpy has no bfloat16, and the raw bytes are what identifies the weights
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


class FeatureExtractor:
    """Maps an :class:`ImageDataset` to one float64 feature vector per image.

    Subclasses set ``name``, ``dim``, ``weights_hash`` and ``input_policy`` and implement
    :meth:`_extract_batches`; :meth:`describe` is what results record, so that a number is
    never separated from the network and preprocessing that produced it.
    """

    name: str = "base"
    dim: int = 0
    weights_hash: str = ""
    #: how images reach the network: channels, resize, value range
    input_policy: str = ""

    def extract(self, ds: ImageDataset, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray:
        """Features of every image of ``ds``, in order, as float64 ``(N, dim)``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(ds) == 0:
            return np.zeros((0, self.dim), dtype=np.float64)
        from tqdm.auto import tqdm

        starts = range(0, len(ds), batch_size)
        bar = tqdm(starts, desc=f"features ({self.name})", disable=not progress, leave=False)
        out = [np.asarray(self._extract_batch(ds.images[i:i + batch_size]), dtype=np.float64) for i in bar]
        feats = np.concatenate(out)
        if feats.shape != (len(ds), self.dim):
            raise FeatureExtractorError(
                f"extractor {self.name!r} returned features of shape {feats.shape}, expected ({len(ds)}, {self.dim})")
        return feats

    def _extract_batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> (B, dim) features."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "dim": int(self.dim), "weights_hash": self.weights_hash,
                "input_policy": self.input_policy}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, weights_hash={self.weights_hash!r})"


def uint8_nchw_rgb(images: np.ndarray):
    """uint8 (B, H, W, C) numpy -> uint8 (B, 3, H, W) torch; grey is replicated to three
    channels (what an RGB network sees when shown a grey image), colour passes unchanged."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


# --------------------------------------------------------------------------- registry

_FACTORIES: dict[str, Callable[..., FeatureExtractor]] = {}


def register_extractor(name: str, factory: Callable[..., FeatureExtractor], *, overwrite: bool = False) -> None:
    """Make ``get_extractor(name, **options)`` call ``factory(**options)``.

    ``name`` must not contain ':' (the separator of ``name:ARG``)."""
    if not name or ":" in name:
        raise ValueError(f"extractor name {name!r} must be non-empty and contain no ':'")
    if name in _FACTORIES and not overwrite:
        raise ValueError(f"extractor {name!r} is already registered (pass overwrite=True to replace it)")
    _FACTORIES[name] = factory


def available_extractors() -> list[str]:
    _register_builtins()
    return sorted(_FACTORIES)


def get_extractor(name: str, **options) -> FeatureExtractor:
    """Build the extractor registered as ``name``; ``"name:ARG"`` passes ``ARG`` as the
    factory's first positional argument (a weights or model path)."""
    _register_builtins()
    base, sep, arg = name.partition(":")
    factory = _FACTORIES.get(base)
    if factory is None:
        raise FeatureExtractorError(
            f"unknown feature extractor {name!r}; known: {', '.join(sorted(_FACTORIES))} "
            f"(torchscript takes a path: 'torchscript:/path/model.pt')")
    return factory(arg, **options) if sep else factory(**options)


def check_extractor_name(name: str) -> None:
    """Raise FeatureExtractorError when no extractor is registered under ``name``'s base (the part
    before ``:``). Builds nothing, so a run can refuse a typo before it trains anything."""
    _register_builtins()
    if name.partition(":")[0] not in _FACTORIES:
        raise FeatureExtractorError(
            f"evaluate.extractor = {name!r}: unknown feature extractor; known: {', '.join(sorted(_FACTORIES))} "
            "(inception and torchscript take a path: 'inception:/path/weights.pth', 'torchscript:/path/model.pt')")


_builtins_registered = False


def _register_builtins() -> None:
    # Imported lazily: the built-in modules import torch and this registry, and a plain
    # `import synthmed.features.registry` should stay cheap and cycle-free.
    global _builtins_registered
    if _builtins_registered:
        return
    _builtins_registered = True
    from synthmed.features.domain import DomainExtractor
    from synthmed.features.inception import InceptionExtractor
    from synthmed.features.torchscript import TorchScriptExtractor

    for key, factory in (("inception", InceptionExtractor), ("domain", DomainExtractor.from_options),
                         ("torchscript", TorchScriptExtractor)):
        _FACTORIES.setdefault(key, factory)
