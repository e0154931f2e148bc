"""``inception``: the standard FID Inception-v3, exactly torch-fidelity's network and weights.

Published FID/KID numbers (and torchmetrics') come from this network: the TensorFlow 2015
Inception-v3 converted to PyTorch by torch-fidelity ("inception-v3-compat"), fed uint8
images that it resizes to 299 px with a TF1-compatible bilinear kernel, 2048-d pool
features. Anything else (torchvision's Inception, another resize) gives numbers that only
look comparable, so this extractor never substitutes another network: without the weights
file it fails and says where the file goes.

Weights are looked up where torch-fidelity itself would download them
(``torch.hub.get_dir()/checkpoints/<file>``), or taken from ``weights_path``.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from synthmed.features.base import (FeatureExtractor, FeatureExtractorError, file_sha256, state_dict_sha256,
                                        uint8_nchw_rgb)

FEATURE_LAYER = "2048"
INPUT_SIZE = 299
RANDOM_NAME = "inception-random (timing only)"


def _torch_fidelity_inception():
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3

    return URL_INCEPTION_V3, FeatureExtractorInceptionV3


def weights_url() -> str:
    return _torch_fidelity_inception()[0]


def weights_filename() -> str:
    # the same rule torch.hub.load_state_dict_from_url uses to name its cached file
    return os.path.basename(urlparse(weights_url()).path)


def default_weights_path() -> Path:
    """Where torch-fidelity (and hence torchmetrics' FID) caches the Inception weights."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / weights_filename()


def published_hash_prefix() -> str | None:
    """The sha256 prefix torch hub embeds in the file name (``...-6726825d.pth``)."""
    stem = weights_filename().rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if tail and all(c in "0123456789abcdef" for c in tail) else None


class InceptionExtractor(FeatureExtractor):
    """torch-fidelity's ``FeatureExtractorInceptionV3``, 2048-d pool features.

    Args:
        weights_path: the weights file; default: torch-fidelity's cache location
            (:func:`default_weights_path`).
        random_weights: build the same network with randomly initialised weights. For timing
            benchmarks only: the features mean nothing, and results are labelled
            ``inception-random (timing only)`` so they cannot pass for FIDs.
        device: torch device for the forward passes.
        seed: initialisation seed of the random weights.
    """

    dim = 2048
    input_policy = (f"grey->RGB replicate; uint8 0-255 as torch-fidelity expects; its TF1-compatible bilinear "
                    f"resize to {INPUT_SIZE}x{INPUT_SIZE} inside the network; (x-128)/128")

    def __init__(self, weights_path: str | os.PathLike | None = None, *, random_weights: bool = False,
                 device: str = "cpu", seed: int = 0):
        self.device = device
        self.random_weights = bool(random_weights)
        if random_weights:
            if weights_path:
                raise FeatureExtractorError("pass either weights_path or random_weights=True, not both")
            self.name = RANDOM_NAME
            self.weights_path = None
            self.published_weights = False
            self.net = _random_network(seed)
            self.weights_hash = state_dict_sha256(self.net.state_dict())
        else:
            self.name = "inception"
            path = Path(weights_path).expanduser() if weights_path else default_weights_path()
            if not path.is_file():
                raise FeatureExtractorError(_missing_message(path, given=weights_path is not None))
            self.weights_path = path
            full_hash = file_sha256(path, 64)
            self.weights_hash = full_hash[:16]
            prefix = published_hash_prefix()
            self.published_weights = prefix is None or full_hash.startswith(prefix)
            if not self.published_weights:
                warnings.warn(f"{path}: sha256 does not start with {prefix} (torch-fidelity's published file); "
                              f"FIDs from these weights are not comparable to published ones", stacklevel=2)
            self.net = _network_from_file(path)
        self.net = self.net.to(device).eval()

    def _extract_batch(self, images: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            (feats,) = self.net(uint8_nchw_rgb(images).to(self.device))
        return feats.double().cpu().numpy()

    def describe(self) -> dict:
        return {
            **super().describe(),
            "network": "torch-fidelity inception-v3-compat",
            "feature_layer": FEATURE_LAYER,
            "input_size": INPUT_SIZE,
            "weights_file": None if self.weights_path is None else str(self.weights_path),
            "published_weights": self.published_weights,
            "timing_only": self.random_weights,
        }


def _missing_message(path: Path, given: bool) -> str:
    if given:
        return (f"Inception-v3 weights file not found: {path} (weights_path must point to torch-fidelity's "
                f"{weights_filename()}, from {weights_url()})")
    return (f"Inception-v3 FID weights not found at {path}; download {weights_url()} to that path "
            f"(torch-fidelity does this itself when online), or pass weights_path=/path/to/{weights_filename()}; "
            f"synthmed never substitutes another network (the 'domain' extractor needs no download)")


def _network_from_file(path: Path):
    import torch

    _, FeatureExtractorInceptionV3 = _torch_fidelity_inception()
    # torch-fidelity loads with weights_only=False, which would run any code pickled in the
    # file; loading it here first with weights_only=True admits only plain tensors.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a plain state dict"
        raise FeatureExtractorError(f"{path}: not a plain PyTorch state dict ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise FeatureExtractorError(f"{path}: expected a state dict, found {type(state).__name__}")
    try:
        return FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER],
                                           feature_extractor_weights_path=str(path))
    except RuntimeError as e:  # load_state_dict(strict=True): missing/unexpected keys or shapes
        first = str(e).splitlines()[0]
        raise FeatureExtractorError(f"{path}: not torch-fidelity Inception-v3 weights ({first})") from None


def _random_network(seed: int):
    """The genuine torch-fidelity class with randomly initialised weights.

    Its constructor always loads a state dict, so a subclass that skips that one load
    builds a randomly initialised twin; its state dict, saved to a temporary file, then
    goes through the normal constructor. The result is exactly the class used for real
    FIDs (same forward, same resize), only the weights differ."""
    import torch

    _, FeatureExtractorInceptionV3 = _torch_fidelity_inception()

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # noqa: ARG002
            return None

    with tempfile.TemporaryDirectory(prefix="synthmed-inception-") as tmp:
        empty, random = Path(tmp) / "empty.pt", Path(tmp) / "random.pt"
        torch.save({}, empty)
        with torch.random.fork_rng(devices=[]):  # seeding must not move the caller's random stream
            torch.manual_seed(seed)
            twin = _Unloaded("inception-v3-compat", [FEATURE_LAYER], feature_extractor_weights_path=str(empty))
        torch.save(twin.state_dict(), random)
        return FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER],
                                           feature_extractor_weights_path=str(random))
