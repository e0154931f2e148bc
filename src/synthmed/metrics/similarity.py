"""Paired image similarity between synthetic and real images: SSIM and LPIPS.

Unlike FID or precision / recall, these compare *pairs* of images, so the number depends on
how pairs are chosen; every result states its pairing policy:

* ``nearest``: each synthetic image against the real image of the same class closest to it
  in pixel space (Euclidean distance on [0, 1] intensities). High SSIM / low LPIPS here is
  also a *memorisation* signal: a generator that copies training images scores best. Read
  it next to the ``random`` pairing and, ideally, against held-out real images.
* ``random``: each synthetic image against a real image of the same class drawn uniformly at
  random (seeded). This measures typical within-class similarity; compare it with the same
  number computed between two real sets.

SSIM runs on torchmetrics' functional SSIM with data_range 1 on [0, 1] images (grey or RGB).
LPIPS runs on torchmetrics' ``LearnedPerceptualImagePatchSimilarity``: its linear heads ship
with torchmetrics, but its backbone (AlexNet / VGG16 / SqueezeNet ImageNet weights) comes from
torchvision's download cache. Offline, without that file, LPIPS cannot be computed and
:class:`MetricUnavailable` says which file to put where.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np

from synthmed.data.dataset import ImageDataset
from synthmed.metrics.prdc import iter_distance_blocks


class MetricUnavailable(ValueError):
    """A metric cannot be computed in this environment (e.g. missing pretrained weights)."""


PAIRINGS = ("nearest", "random")
PAIRING_POLICIES = {
    "nearest": ("each synthetic image vs its nearest real image of the same class "
                "(pixel-space L2 on [0,1] intensities); also a memorisation signal"),
    "random": "each synthetic image vs a random real image of the same class (uniform, seeded)",
}
SIMILARITY_METRICS = {"ssim": True, "lpips": False}  # name -> higher is better
LPIPS_NETS = {"alex": ("alexnet", "AlexNet_Weights"), "vgg": ("vgg16", "VGG16_Weights"),
              "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights")}
# AlexNet's pooling stack collapses images below ~32 px to nothing; LPIPS was calibrated on 64 px
# patches, so smaller images are upsampled (bilinear) to this side before LPIPS.
LPIPS_MIN_SIDE = 64
SSIM_KERNEL = 11
SSIM_SIGMA = 1.5


# ----------------------------------------------------------------------------- inputs
def _images_of(x) -> np.ndarray:
    """(N, H, W, C) array from an ImageDataset, a uint8 array (N, H, W[, C]) or a float array in [0, 1]."""
    arr = x.images if isinstance(x, ImageDataset) else np.asarray(x)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, C) with C = 1 or 3, got {arr.shape}")
    return arr


def _to_unit_tensor(arr: np.ndarray):
    """float32 torch tensor (N, C, H, W) in [0, 1]."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2)
    if arr.dtype == np.uint8:
        return t.float().div_(255.0)
    t = t.float()
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError("float images must be in [0, 1]; pass uint8 images or rescale")
    return t


def _check_pairable(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired images must have the same shape, got {a.shape} and {b.shape}")


# ----------------------------------------------------------------------------- SSIM
def ssim_pairs(a, b, *, batch_size: int = 256, kernel_size: int = SSIM_KERNEL, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """SSIM of each pair ``(a[i], b[i])``, shape (N,); 1 for identical images."""
    import torch
    from torchmetrics.functional.image import structural_similarity_index_measure

    ia, ib = _images_of(a), _images_of(b)
    _check_pairable(ia, ib)
    # The Gaussian window must fit the image (reflection padding needs pad < side); shrink it for tiny images.
    side = min(ia.shape[1], ia.shape[2])
    k = min(kernel_size, side if side % 2 else side - 1)
    if k < 3:
        raise ValueError(f"SSIM needs images of at least 3 x 3 pixels, got {ia.shape[1:3]}")
    out = []
    with torch.no_grad():
        for s in range(0, len(ia), batch_size):
            ta, tb = _to_unit_tensor(ia[s:s + batch_size]), _to_unit_tensor(ib[s:s + batch_size])
            v = structural_similarity_index_measure(ta, tb, data_range=1.0, kernel_size=k, sigma=sigma,
                                                    reduction="none")
            out.append(v.reshape(-1).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ----------------------------------------------------------------------------- LPIPS
def lpips_backbone_file(net: str = "alex") -> str:
    """File name torchvision expects in ``torch.hub.get_dir()/checkpoints/`` for this LPIPS backbone."""
    import torchvision

    if net not in LPIPS_NETS:
        raise ValueError(f"LPIPS net must be one of {sorted(LPIPS_NETS)}, got {net!r}")
    weights = getattr(torchvision.models, LPIPS_NETS[net][1]).DEFAULT
    return os.path.basename(weights.url)


def _unavailable_message(net: str, filename: str, looked_in: str, cause: BaseException | None) -> str:
    import torch
    import torchvision

    url = getattr(torchvision.models, LPIPS_NETS[net][1]).DEFAULT.url
    return (
        f"LPIPS ({net}) needs the ImageNet backbone weights '{filename}', which are not available"
        f" (looked in {looked_in}{'; download failed: ' + repr(cause) if cause else ''}). To provide them,"
        f" download {url} on a machine with internet access and copy it to"
        f" {os.path.join(torch.hub.get_dir(), 'checkpoints', filename)} (the torch hub cache; set TORCH_HOME"
        f" to move it), or pass lpips_weights_dir=FOLDER holding '{filename}' (directly or in FOLDER/checkpoints/)."
    )


@contextlib.contextmanager
def _hub_dir_holding(weights_dir: str | os.PathLike, filename: str):
    """Point torch.hub at ``weights_dir`` (or a temporary view of it) while the backbone loads, then restore."""
    import torch

    folder = Path(weights_dir).expanduser()
    previous = torch.hub._hub_dir  # None means "derived from TORCH_HOME"; restored exactly, not frozen
    with tempfile.TemporaryDirectory(prefix="synthmed-hub-") as tmp:
        if (folder / "checkpoints" / filename).is_file():
            hub = folder
        else:  # the file directly in the folder: expose it as <tmp>/checkpoints/<file>
            (Path(tmp) / "checkpoints").mkdir()
            os.symlink((folder / filename).resolve(), Path(tmp) / "checkpoints" / filename)
            hub = Path(tmp)
        torch.hub.set_dir(str(hub))
        try:
            yield
        finally:
            torch.hub._hub_dir = previous


def load_lpips(net: str = "alex", lpips_weights_dir: str | os.PathLike | None = None):
    """torchmetrics' LPIPS module with its ImageNet backbone, or :class:`MetricUnavailable`.

    With ``lpips_weights_dir`` the weights must be in that folder (nothing is downloaded);
    without it, torchvision's usual cache / download path is used.
    """
    import torch
    from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

    filename = lpips_backbone_file(net)
    if lpips_weights_dir is not None:
        folder = Path(lpips_weights_dir).expanduser()
        if not ((folder / filename).is_file() or (folder / "checkpoints" / filename).is_file()):
            raise MetricUnavailable(_unavailable_message(net, filename, str(folder), None))
        ctx = _hub_dir_holding(folder, filename)
        looked_in = str(folder)
    else:
        ctx = contextlib.nullcontext()
        looked_in = os.path.join(torch.hub.get_dir(), "checkpoints")
    try:
        with ctx:
            metric = LearnedPerceptualImagePatchSimilarity(net_type=net, reduction="none", normalize=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; a truncated/corrupt file is a RuntimeError
        raise MetricUnavailable(_unavailable_message(net, filename, looked_in, exc)) from exc
    return metric


def lpips_pairs(a, b, *, net: str = "alex", lpips_weights_dir: str | os.PathLike | None = None,
                batch_size: int = 32, metric=None) -> np.ndarray:
    """LPIPS distance of each pair ``(a[i], b[i])``, shape (N,); 0 for identical images, lower = more alike.

    Grey images are repeated to 3 channels (the backbone is an RGB ImageNet network) and
    images smaller than ``LPIPS_MIN_SIDE`` are upsampled bilinearly.
    """
    import torch
    import torch.nn.functional as F

    ia, ib = _images_of(a), _images_of(b)
    _check_pairable(ia, ib)
    metric = metric if metric is not None else load_lpips(net, lpips_weights_dir)
    out = []
    with torch.no_grad():
        for s in range(0, len(ia), batch_size):
            ta, tb = _to_unit_tensor(ia[s:s + batch_size]), _to_unit_tensor(ib[s:s + batch_size])
            if ta.shape[1] == 1:
                ta, tb = ta.repeat(1, 3, 1, 1), tb.repeat(1, 3, 1, 1)
            side = min(ta.shape[2], ta.shape[3])
            if side < LPIPS_MIN_SIDE:
                scale = LPIPS_MIN_SIDE / side
                size = (round(ta.shape[2] * scale), round(ta.shape[3] * scale))
                ta = F.interpolate(ta, size=size, mode="bilinear", align_corners=False).clamp_(0, 1)
                tb = F.interpolate(tb, size=size, mode="bilinear", align_corners=False).clamp_(0, 1)
            metric.reset()
            metric.update(ta, tb)
            out.append(metric.compute().reshape(-1).double().numpy())
    return np.concatenate(out) if out else np.zeros(0)


# ----------------------------------------------------------------------------- pairing
def pair_indices(real: ImageDataset, synthetic: ImageDataset, pairing: str = "nearest", seed: int = 0,
                 chunk_size: int | None = None) -> np.ndarray:
    """Index into ``real`` of each synthetic image's partner (same class); -1 where the class has no real image."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}, got {pairing!r}")
    if real.class_names != synthetic.class_names:
        raise ValueError(f"class lists differ: real {real.class_names} vs synthetic {synthetic.class_names}")
    if real.images.shape[1:] != synthetic.images.shape[1:]:
        raise ValueError(f"image shapes differ: real {real.images.shape[1:]} vs synthetic {synthetic.images.shape[1:]}")
    rng = np.random.default_rng(seed)
    partner = np.full(len(synthetic), -1, dtype=np.int64)
    for c in range(synthetic.num_classes):
        s_idx = np.flatnonzero(synthetic.labels == c)
        r_idx = np.flatnonzero(real.labels == c)
        if len(s_idx) == 0 or len(r_idx) == 0:
            continue
        if pairing == "random":
            partner[s_idx] = r_idx[rng.integers(0, len(r_idx), size=len(s_idx))]
            continue
        r_flat = real.images[r_idx].reshape(len(r_idx), -1).astype(np.float64) / 255.0
        s_flat = synthetic.images[s_idx].reshape(len(s_idx), -1).astype(np.float64) / 255.0
        for start, stop, block in iter_distance_blocks(s_flat, r_flat, chunk_size):
            partner[s_idx[start:stop]] = r_idx[block.argmin(axis=1)]
    return partner


def _mean_std(v: np.ndarray) -> dict:
    if len(v) == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "n": int(len(v))}


def image_similarity(real: ImageDataset, synthetic: ImageDataset, metric: str = "ssim", pairing: str = "nearest",
                     seed: int = 0, *, net: str = "alex", lpips_weights_dir: str | os.PathLike | None = None,
                     chunk_size: int | None = None) -> dict:
    """Mean ± std (sample std) of paired SSIM or LPIPS, per class and in total, with the pairing policy stated."""
    if metric not in SIMILARITY_METRICS:
        raise ValueError(f"metric must be one of {sorted(SIMILARITY_METRICS)}, got {metric!r}")
    lpips_module = load_lpips(net, lpips_weights_dir) if metric == "lpips" else None  # fail before pairing work
    partner = pair_indices(real, synthetic, pairing, seed, chunk_size)
    paired = np.flatnonzero(partner >= 0)
    warnings = [
        f"class '{name}': {int((synthetic.labels == c).sum())} synthetic images but no real image to pair with; "
        f"left out"
        for c, name in enumerate(synthetic.class_names)
        if (synthetic.labels == c).any() and not (real.labels == c).any()
    ]
    a, b = synthetic.images[paired], real.images[partner[paired]]
    if metric == "ssim":
        values = ssim_pairs(a, b)
    else:
        values = lpips_pairs(a, b, metric=lpips_module)
    labels = synthetic.labels[paired]
    policy = PAIRING_POLICIES[pairing]
    result = {
        "metric": metric,
        "higher_is_better": SIMILARITY_METRICS[metric],
        "pairing": pairing,
        "pairing_policy": policy + ("" if pairing == "nearest" else f"; seed {seed}"),
        "seed": seed,
        "total": _mean_std(values),
        "per_class": {name: _mean_std(values[labels == c]) for c, name in enumerate(synthetic.class_names)},
        "warnings": warnings,
    }
    if metric == "lpips":
        result["lpips_net"] = net
        result["lpips_min_side"] = LPIPS_MIN_SIDE
    return result
