"""The one registry of feature extractors (their shared base class is in ``base.py``).

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

from typing import Callable

# re-exported: the names extractors and callers have imported from here
from synthmed.features.base import (DEFAULT_BATCH_SIZE, FeatureExtractor, FeatureExtractorError,  # noqa: F401
                                    default_cache_dir, file_sha256, images_key, state_dict_sha256, uint8_nchw_rgb)
from synthmed.features.domain import DomainExtractor
from synthmed.features.inception import InceptionExtractor
from synthmed.features.torchscript import TorchScriptExtractor

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
    return sorted(_FACTORIES)


def get_extractor(name: str, **options) -> FeatureExtractor:
    """Build the extractor registered as ``name``; ``"name:ARG"`` passes ``ARG`` as the
    factory's first positional argument (a weights or model path)."""
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
    if name.partition(":")[0] not in _FACTORIES:
        raise FeatureExtractorError(
            f"evaluate.extractor = {name!r}: unknown feature extractor; known: {', '.join(sorted(_FACTORIES))} "
            "(inception and torchscript take a path: 'inception:/path/weights.pth', 'torchscript:/path/model.pt')")


for _name, _factory in (("inception", InceptionExtractor), ("domain", DomainExtractor.from_options),
                       ("torchscript", TorchScriptExtractor)):
    register_extractor(_name, _factory)
