"""A small U-Net segmenter trained on real masks.

Two jobs: the segmentation downstream check (renal-ldm's real:synthetic ratio sweep) trains
one per ratio and seed, and caption accuracy reads synthetic images with one trained on the
real training split (scored on the real test split first, so its own error is known).

The network is a plain U-Net of our own (readable, ~30k parameters at widths 8/16/32):
per level two 3x3 conv + GroupNorm + SiLU, max-pool down, nearest upsample + skip
concatenation up, a 1x1 conv to background + M mask classes. Training: AdamW on per-pixel
cross-entropy (renal-ldm: categorical cross-entropy; ``segmentation.class_weighting`` may weight it by
1/sqrt of each class's pixel share) plus, with ``segmentation.loss: ce+dice``, the soft Dice of the
mask classes pooled over the batch (a class of 0.5% of the pixels weighs in it as much as one of
20%), random horizontal/vertical flips of
image and mask together, a fixed step budget, validation on the REAL validation split every
``eval_every`` steps (the training objective on it), early stopping after ``patience``
evaluations without improvement, and the weights of the best validation loss kept. Deterministic for a seed on CPU.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthmed.classifiers import EarlyStopping
from synthmed.config import SegmentationConfig
from synthmed.data.dataset import DataError, ImageDataset
from synthmed.files import atomic_torch_save, atomic_write_json
from synthmed.metrics.segmentation import dice_iou


class _Block(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        groups = math.gcd(8, cout)
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class UNet(nn.Module):
    """U-Net with ``len(widths)`` levels; the input size must be divisible by 2^(levels-1)."""

    def __init__(self, in_channels: int, num_outputs: int, widths=(8, 16, 32)) -> None:
        super().__init__()
        widths = list(widths)
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths:
            self.down.append(_Block(cin, w))
            cin = w
        self.up = nn.ModuleList(_Block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = block(torch.cat([F.interpolate(x, scale_factor=2, mode="nearest"), skip], dim=1))
        return self.head(x)


class TrainedSegmenter:
    def __init__(self, model: UNet, mask_class_names: list[str], history: dict, meta: dict, device: str) -> None:
        self.model, self.mask_class_names, self.history, self.meta, self.device = model, mask_class_names, history, \
            meta, device

    @torch.no_grad()
    def predict(self, ds: ImageDataset | torch.Tensor, batch_size: int = 128) -> np.ndarray:
        """Label masks (N, H, W) uint8 of images (an ImageDataset, or a (N, C, H, W) tensor in [-1, 1])."""
        x = ds.to_tensor()[0] if isinstance(ds, ImageDataset) else ds
        self.model.eval()
        out = [self.model(x[i:i + batch_size].to(self.device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
        return (torch.cat(out) if out else torch.zeros(0, *x.shape[2:], dtype=torch.long)).numpy().astype(np.uint8)

    __call__ = predict  # a segmenter is a callable images -> masks, as caption accuracy takes one

    def save(self, folder) -> Path:
        """Weights (segmenter.pt) and what they are (segmenter.json) in ``folder``; :func:`load_segmenter` reads them."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.model.state_dict(), folder / "segmenter.pt")
        atomic_write_json({"mask_class_names": self.mask_class_names, "history": self.history, "meta": self.meta,
                           "in_channels": self.model.down[0][0].in_channels,
                           "num_outputs": self.model.head.out_channels}, folder / "segmenter.json")
        return folder

    def evaluate(self, ds: ImageDataset) -> dict:
        """Dice / IoU of this segmenter on ``ds`` (which must have masks)."""
        _need_masks(ds, "evaluation")
        if ds.mask_class_names != self.mask_class_names:
            raise DataError(f"{ds.name}: mask classes {ds.mask_class_names} differ from the segmenter's "
                            f"{self.mask_class_names}")
        return dice_iou(self.predict(ds), ds.masks, self.mask_class_names)


def load_segmenter(folder, device: str = "cpu") -> TrainedSegmenter:
    """The segmenter :meth:`TrainedSegmenter.save` wrote to ``folder``."""
    folder = Path(folder)
    info = json.loads((folder / "segmenter.json").read_text())
    model = UNet(info["in_channels"], info["num_outputs"], info["meta"]["widths"])
    model.load_state_dict(torch.load(folder / "segmenter.pt", map_location="cpu", weights_only=True))
    model.to(device).eval()
    return TrainedSegmenter(model, list(info["mask_class_names"]), info["history"], info["meta"], device)


def _need_masks(ds: ImageDataset, what: str) -> None:
    if ds.masks is None:
        hint = ("synthetic images need the masks they were generated from (mask-conditional generation)"
                if ds.synthetic else "give the data a mask_path column (csv:) or set data.masks.embryo: true")
        raise DataError(f"{ds.name}: segmenter {what} needs masks; {hint}")


def class_weights(masks: torch.Tensor, num_outputs: int, how: str) -> torch.Tensor | None:
    """Per-class cross-entropy weights from the training masks' pixel counts: None for "none";
    "sqrt-inverse": 1 / sqrt(pixel share), scaled so the pixel-weighted mean is 1 (a class of 0.5% of
    the pixels weighs ~6x a class of 20%, not the 40x of plain inverse frequency)."""
    if how == "none":
        return None
    counts = torch.bincount(masks.reshape(-1), minlength=num_outputs).double()
    share = counts / counts.sum()
    w = torch.where(share > 0, share.clamp_min(1e-12).rsqrt(), torch.zeros_like(share))
    return (w / (w * share).sum()).float()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """1 - mean over the foreground classes of the soft Dice of the softmax, pooled over the batch
    (as :func:`synthmed.metrics.segmentation.dice_iou` pools over the set); ``smooth`` keeps a class
    absent from both prediction and batch near 1, not 0/0."""
    probs = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    inter = (probs * onehot).sum((0, 2, 3))
    total = probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3))
    return 1 - ((2 * inter + smooth) / (total + smooth)).mean()


def objective(logits: torch.Tensor, target: torch.Tensor, loss: str, weights: torch.Tensor | None) -> torch.Tensor:
    """The training loss of ``segmentation.loss``: (class-weighted) cross-entropy, plus soft Dice for "ce+dice"."""
    ce = F.cross_entropy(logits, target, weight=None if weights is None else weights.to(logits.device))
    return ce + soft_dice_loss(logits, target) if loss == "ce+dice" else ce


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, loss: str = "ce",
          weights: torch.Tensor | None = None, batch_size: int = 256) -> float:
    """The training objective on a whole split (batches weighted by their pixels)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            yb = y[i:i + batch_size].to(device)
            total += objective(model(x[i:i + batch_size].to(device)), yb, loss, weights).item() * yb.numel()
    model.train()
    return total / max(y.numel(), 1)


def train_segmenter(train: ImageDataset, val: ImageDataset, cfg: SegmentationConfig | None = None, *, seed: int = 0,
                    device: str = "cpu") -> TrainedSegmenter:
    """Train the U-Net on ``train``'s masks; early-stop on the loss of the real ``val`` split."""
    cfg = cfg or SegmentationConfig()
    _need_masks(train, "training")
    _need_masks(val, "validation")
    if val.synthetic:
        raise DataError(f"validation set '{val.name}' is synthetic: early stopping must watch REAL masks")
    if train.mask_class_names != val.mask_class_names:
        raise DataError(f"train mask classes {train.mask_class_names} differ from val's {val.mask_class_names}")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"cannot train a segmenter on {len(train)} training / {len(val)} validation images")
    down = 2 ** (len(cfg.widths) - 1)
    if train.image_size % down or train.images.shape[1] != train.images.shape[2]:
        raise DataError(f"segmentation.widths has {len(cfg.widths)} levels, so images must be square with a size "
                        f"divisible by {down}; they are {train.images.shape[1]}x{train.images.shape[2]}")
    num_outputs = len(train.mask_class_names) + 1
    with torch.random.fork_rng(devices=[]):  # seeding here must not change the caller's random stream
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = UNet(train.channels, num_outputs, cfg.widths).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        x_tr, y_tr = train.to_tensor()[0], train.mask_tensor()
        x_va, y_va = val.to_tensor()[0], val.mask_tensor()
        weights = class_weights(y_tr, num_outputs, cfg.class_weighting)
        n, bs = len(x_tr), min(cfg.batch_size, len(x_tr))
        history = {"step": [], "train_loss": [], "val_loss": []}
        stopper, step, running = EarlyStopping(cfg.patience), 0, []
        order, pos = torch.randperm(n, generator=gen), 0
        model.train()
        while step < cfg.steps:
            if pos + bs > n:
                order, pos = torch.randperm(n, generator=gen), 0
            idx = order[pos:pos + bs]
            pos += bs
            xb, yb = x_tr[idx], y_tr[idx]
            if cfg.flips:  # the same flip for image and mask
                flip_h = torch.rand(len(idx), generator=gen) < 0.5
                flip_v = torch.rand(len(idx), generator=gen) < 0.5
                xb, yb = xb.clone(), yb.clone()
                xb[flip_h], yb[flip_h] = xb[flip_h].flip(-1), yb[flip_h].flip(-1)
                xb[flip_v], yb[flip_v] = xb[flip_v].flip(-2), yb[flip_v].flip(-2)
            loss = objective(model(xb.to(device)), yb.to(device), cfg.loss, weights)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running.append(loss.item())
            step += 1
            if step % cfg.eval_every == 0 or step == cfg.steps:
                val_loss = _loss(model, x_va, y_va, device, cfg.loss, weights)
                history["step"].append(step)
                history["train_loss"].append(float(np.mean(running)))
                history["val_loss"].append(val_loss)
                running = []
                if stopper.update(model, val_loss, step):
                    break
        stopper.restore(model)
    model.eval()
    history.update(best_step=stopper.best_at or 0, best_val_loss=stopper.best_loss, stopped_early=stopper.stopped,
                   steps=step)
    meta = {"seed": seed, "widths": list(cfg.widths), "n_train": len(train), "train_synthetic": bool(train.synthetic),
            "train_fingerprint": train.fingerprint(), "val_fingerprint": val.fingerprint(),
            "parameters": sum(p.numel() for p in model.parameters()), "loss": cfg.loss,
            "class_weighting": cfg.class_weighting,
            **({"class_weights": [round(float(w), 4) for w in weights]} if weights is not None else {})}
    return TrainedSegmenter(model, list(train.mask_class_names), history, meta, device)
