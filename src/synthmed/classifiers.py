"""Image classifiers shared by the judge (conditional accuracy), selection and the downstream check.

Two architectures: ``smallcnn`` (a few conv blocks, trains in seconds on a CPU) and
``resnet18`` (torchvision, optionally initialised from a local ImageNet state dict). Both
expose ``features(x)``, the penultimate representation, so feature-based metrics and
filters can reuse a classifier trained on the user's own images instead of an ImageNet
network that has never seen a micrograph.

Training works on in-memory tensors (no DataLoader, no PIL): on the small sets synthmed is
built for, per-sample Python overhead would dominate the convolutions. Early stopping
always watches a REAL validation split; a synthetic one would reward the generator's own
mistakes.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from synthmed import distributed, runtime
from synthmed.config import ClassifierConfig
from synthmed.data.dataset import ImageDataset
from synthmed.data.storage import batches_of, training_images

log = logging.getLogger(__name__)

ARCHS = ("smallcnn", "resnet18")
AUGMENTATIONS = ("flip", "rot90", "jitter")

#: training recipes of the reference papers, as ClassifierConfig fields (see :func:`classifier_preset`)
CLASSIFIER_PRESETS = {
    # MedMNIST v2: ResNet-18, Adam 1e-3, batch 128, 100 epochs, lr x 0.1 at epochs 50 and 75, best
    # validation epoch kept. patience = epochs: the paper trains every epoch and selects afterwards.
    "medmnist": dict(arch="resnet18", optimizer="adam", lr=1e-3, batch_size=128, epochs=100, patience=100,
                     lr_milestones=[0.5, 0.75], weight_decay=0.0),
    # pcam-ddpm downstream classifier: ResNet-18, SGD momentum 0.9, lr 1e-4, batch 32
    "pcam-ddpm": dict(arch="resnet18", optimizer="sgd", lr=1e-4, batch_size=32, epochs=50, patience=8),
}


def classifier_preset(name: str, **overrides) -> ClassifierConfig:
    """A paper's classifier recipe; ``overrides`` change single fields (e.g. ``epochs=5`` on a CPU)."""
    if name not in CLASSIFIER_PRESETS:
        raise ValueError(f"unknown classifier preset {name!r}; choose one of {sorted(CLASSIFIER_PRESETS)}")
    return ClassifierConfig(**{**CLASSIFIER_PRESETS[name], **overrides})


# --------------------------------------------------------------------------- architectures


class SmallCNN(nn.Module):
    """conv-BN-ReLU blocks (32-64-128), each followed by 2x2 max pooling while the map is
    still at least 2 px wide, then global average pooling, dropout and a linear head."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int,
                 widths: tuple[int, ...] = (32, 64, 128), dropout: float = 0.3):
        super().__init__()
        layers: list[nn.Module] = []
        c, size = in_channels, image_size
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            c = w
        self.body = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class ResNet18(nn.Module):
    """torchvision ResNet-18 with a ``features`` method. For images of 64 px or less the
    7x7 stride-2 stem and the max pool would shrink a 32 px image to 8 px before the first
    residual block, so they are replaced by a 3x3 stride-1 conv (the usual CIFAR variant)."""

    def __init__(self, num_classes: int, in_channels: int, image_size: int):
        super().__init__()
        from torchvision.models import resnet18

        self.net = resnet18(weights=None, num_classes=num_classes)
        if image_size <= 64:
            self.net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            self.net.maxpool = nn.Identity()
        elif in_channels != 3:
            self.net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        x = n.layer4(n.layer3(n.layer2(n.layer1(x))))
        return torch.flatten(n.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.fc(self.features(x))


def _load_imagenet_weights(model: ResNet18, weights_path: str) -> None:
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(
            f"ResNet-18 weights file not found: {path} (set classifier.weights_path to a local torchvision "
            f"resnet18 state dict, or to null to train from scratch)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.net.state_dict()
    usable, skipped = {}, []
    for key, val in state.items():
        key = key.removeprefix("module.")
        if key.startswith("fc."):
            skipped.append(key)  # ImageNet's 1000-class head: the new head is trained from scratch
        elif key == "conv1.weight" and key in own and val.shape != own[key].shape:
            if val.shape[2:] == own[key].shape[2:] and own[key].shape[1] == 1:
                usable[key] = val.sum(dim=1, keepdim=True)  # RGB stem -> grey stem (sum keeps the response)
            else:
                skipped.append(key)  # 7x7 ImageNet stem does not fit the 3x3 small-image stem
        elif key in own and own[key].shape == val.shape:
            usable[key] = val
        else:
            skipped.append(key)
    missing = [k for k in own if k not in usable]
    model.net.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s; skipped %s; left at random init: %s",
             len(usable), path, skipped or "none", missing or "none")
    if not usable:
        raise ValueError(f"{path}: no tensor matches a torchvision ResNet-18; is this the right file?")


def build_classifier(arch: str, num_classes: int, in_channels: int, image_size: int,
                     weights_path: str | None = None, widths: Sequence[int] = (32, 64, 128)) -> nn.Module:
    """A fresh classifier with ``forward(x) -> logits`` and ``features(x) -> penultimate``;
    ``widths``: the small CNN's block channels."""
    if arch == "smallcnn":
        if weights_path:
            raise ValueError("weights_path is only supported for arch 'resnet18'")
        if not widths or min(widths) < 1:
            raise ValueError(f"smallcnn widths must be positive channel counts, got {list(widths)}")
        return SmallCNN(num_classes, in_channels, image_size, widths=tuple(widths))
    if arch == "resnet18":
        model = ResNet18(num_classes, in_channels, image_size)
        if weights_path:
            _load_imagenet_weights(model, weights_path)
        return model
    raise ValueError(f"unknown classifier arch {arch!r}; choose one of {list(ARCHS)}")


# --------------------------------------------------------------------------- trained classifier


@dataclass
class TrainedClassifier:
    model: nn.Module
    history: dict
    config: ClassifierConfig
    class_names: list[str]
    train_fingerprint: str
    #: what the classifier was trained on and how: n_train, class counts, synthetic share, seed, ...
    meta: dict = field(default_factory=dict)
    device: str = "cpu"

    def _check(self, ds: ImageDataset) -> None:
        if ds.class_names != self.class_names:
            raise ValueError(f"{ds.name}: classes {ds.class_names} differ from the classifier's {self.class_names}")
        want = (self.meta.get("image_size"), self.meta.get("in_channels"))
        if want != (ds.image_size, ds.channels):
            raise ValueError(f"{ds.name}: images are {ds.image_size} px x {ds.channels} ch, "
                             f"the classifier expects {want[0]} px x {want[1]} ch")

    @torch.no_grad()
    def _batched(self, ds: ImageDataset, fn, batch_size: int) -> np.ndarray:
        self._check(ds)
        self.model.eval()
        x, _ = ds.to_tensor()
        outs = [fn(x[i:i + batch_size].to(self.device)).float().cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(outs).numpy() if outs else np.zeros((0, 0), dtype=np.float32)

    def predict_proba(self, ds: ImageDataset, batch_size: int = 256) -> np.ndarray:
        proba = self._batched(ds, lambda xb: self.model(xb).softmax(dim=1), batch_size)
        return proba.reshape(len(ds), len(self.class_names))

    def predict(self, ds: ImageDataset, batch_size: int = 256) -> np.ndarray:
        return self.predict_proba(ds, batch_size).argmax(axis=1)

    def features(self, ds: ImageDataset, batch_size: int = 256) -> np.ndarray:
        return self._batched(ds, self.model.features, batch_size)

    def save(self, path: str | Path) -> Path:
        from synthmed.files import atomic_torch_save

        atomic_torch_save({
            "state_dict": {k: v.cpu() for k, v in self.model.state_dict().items()},
            "config": asdict(self.config),
            "class_names": list(self.class_names),
            "train_fingerprint": self.train_fingerprint,
            "history": self.history,
            "meta": self.meta,
        }, path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str = "cpu") -> "TrainedClassifier":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"classifier checkpoint not found: {path}")
        # weights_only: a checkpoint is plain tensors and containers, never pickled code
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        cfg = ClassifierConfig(**ckpt["config"])
        meta = ckpt["meta"]
        model = build_classifier(cfg.arch, len(ckpt["class_names"]), meta["in_channels"], meta["image_size"],
                                 widths=cfg.widths)
        model.load_state_dict(ckpt["state_dict"])
        return cls(model.to(device).eval(), ckpt["history"], cfg, ckpt["class_names"],
                   ckpt["train_fingerprint"], meta, device)


# --------------------------------------------------------------------------- training


def check_augmentations(ops: Sequence[str]) -> None:
    unknown = set(ops) - set(AUGMENTATIONS)
    if unknown:
        raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from {list(AUGMENTATIONS)}")


def augment_batch(x: torch.Tensor, gen: torch.Generator, ops=("flip", "rot90"), jitter: float = 0.2) -> torch.Tensor:
    """Random label-preserving transforms of images in [-1, 1], drawn per image.

    ``ops``: "flip" (horizontal and vertical), "rot90" (quarter turns) and "jitter"
    (brightness and contrast factors in [1 - jitter, 1 + jitter], on the whole image so
    colour balance is kept). Flips and turns suit most microscopy and histology (no
    canonical orientation), not every modality (chest X-rays have a left and a right),
    hence augmentation is off unless asked for."""
    check_augmentations(ops)
    n = x.shape[0]
    if "flip" in ops:
        flip_h = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(n, 1, 1, 1)
        flip_v = (torch.rand(n, generator=gen) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(flip_h, x.flip(3), x)
        x = torch.where(flip_v, x.flip(2), x)
    if "rot90" in ops and x.shape[2] == x.shape[3]:  # a quarter turn would change a non-square image's shape
        turns = torch.randint(0, 4, (n,), generator=gen).to(x.device)
        out = x.clone()
        for k in (1, 2, 3):
            sel = turns == k
            if sel.any():
                out[sel] = torch.rot90(x[sel], k, dims=(2, 3))
        x = out
    if "jitter" in ops and jitter > 0:
        # torchvision's ColorJitter recipe, applied in [0, 1]: scale, then stretch around the image mean
        brightness = (1 + jitter * (2 * torch.rand(n, generator=gen) - 1)).to(x.device).view(n, 1, 1, 1)
        contrast = (1 + jitter * (2 * torch.rand(n, generator=gen) - 1)).to(x.device).view(n, 1, 1, 1)
        u = ((x + 1) / 2 * brightness).clamp(0, 1)
        mean = u.mean(dim=(1, 2, 3), keepdim=True)
        x = ((u - mean) * contrast + mean).clamp(0, 1) * 2 - 1
    return x


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: str, batch_size: int,
              class_weight: torch.Tensor | None = None) -> tuple[float, float]:
    """Mean loss (class-weighted with ``class_weight``: the weighted mean cross-entropy) and accuracy."""
    model.eval()
    loss_sum, weight_sum, correct = 0.0, 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        yb = y[i:i + batch_size].to(device)
        loss_sum += F.cross_entropy(logits, yb, weight=class_weight, reduction="sum").item()
        weight_sum += len(yb) if class_weight is None else class_weight[yb].sum().item()
        correct += (logits.argmax(1) == yb).sum().item()
    return loss_sum / weight_sum, correct / len(x)


def class_weights(labels: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    """Cross-entropy weights n / (classes present x n_class) for ``mode == "balanced"`` (their mean over the
    images is 1, so the loss keeps its scale; a class absent from ``labels`` gets weight 0), None for "none"."""
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).float()
    present = (counts > 0).sum()
    w = torch.where(counts > 0, counts.sum() / (present * counts.clamp_min(1)), torch.zeros_like(counts))
    return w


def _one_epoch(n: int, bs: int, gen: torch.Generator):
    """Index batches of one shuffled pass over ``n`` images."""
    perm = torch.randperm(n, generator=gen)
    for i in range(0, n, bs):
        idx = perm[i:i + bs]
        if len(idx) == 1 and i > 0:
            continue  # a trailing single image: BatchNorm cannot normalise one image over a 1x1 map
        yield idx


def _batch_stream(n: int, bs: int, gen: torch.Generator):
    """Endless index batches, epoch after shuffled epoch (for a step budget)."""
    while True:
        yield from _one_epoch(n, bs, gen)


class EarlyStopping:
    """The weights of the lowest validation loss, and when to stop: after ``patience`` validations in a
    row without a new lowest. One rule for every model trained on real validation here (the classifiers,
    the segmenter)."""

    def __init__(self, patience: int):
        self.patience = patience
        self.best_loss, self.best_at, self.state = math.inf, None, None
        self.waited, self.stopped = 0, False

    def update(self, model: nn.Module, val_loss: float, at: int) -> bool:
        """Record one validation at ``at`` (an epoch or a step); True when training should stop."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_at, self.waited = val_loss, at, 0
            self.state = copy.deepcopy(model.state_dict())
        else:
            self.waited += 1
            self.stopped = self.waited >= self.patience
        return self.stopped

    def restore(self, model: nn.Module) -> None:
        """Load the best weights seen (none seen: the model stays as it is)."""
        if self.state is not None:
            model.load_state_dict(self.state)


def train_classifier(train: ImageDataset, val: ImageDataset, cfg: ClassifierConfig, *, seed: int = 0,
                     device: str = "cpu", augment: bool | Sequence[str] = False, progress: bool = False,
                     init_from: TrainedClassifier | None = None) -> TrainedClassifier:
    """Train ``cfg.arch`` on ``train``; early-stop on the loss of the real ``val`` split and
    return the weights of the best validation epoch. Deterministic for a seed on CPU.

    ``augment``: False, True (``cfg.augmentations``) or a list of augmentation names.
    ``init_from``: start from this classifier's weights instead of ``cfg.weights_path`` or a
    random init (fine-tuning, e.g. the ``transfer`` protocol: synthetic first, then real)."""
    if val.synthetic:
        raise ValueError(f"validation set '{val.name}' is synthetic: early stopping must watch REAL images, "
                         f"otherwise the classifier is tuned to the generator's mistakes")
    if len(train) == 0 or len(val) == 0:
        raise ValueError(f"cannot train a classifier on {len(train)} training / {len(val)} validation images")
    if train.class_names != val.class_names:
        raise ValueError(f"train classes {train.class_names} differ from val classes {val.class_names}")
    if train.images.shape[1:] != val.images.shape[1:]:
        raise ValueError(f"train images {train.images.shape[1:]} and val images {val.images.shape[1:]} differ in shape")
    if cfg.epochs < 1 or cfg.patience < 1:
        raise ValueError(f"classifier epochs ({cfg.epochs}) and patience ({cfg.patience}) must be at least 1")
    if cfg.steps is not None and (cfg.steps < 1 or cfg.eval_every < 1):
        raise ValueError(f"classifier steps ({cfg.steps}) and eval_every ({cfg.eval_every}) must be at least 1")
    if cfg.optimizer not in ("adam", "sgd"):
        raise ValueError(f"unknown optimizer {cfg.optimizer!r}; choose 'adam' or 'sgd'")
    if any(not 0 < f < 1 for f in cfg.lr_milestones):
        raise ValueError(f"lr_milestones {cfg.lr_milestones} must be fractions of the epochs, each in (0, 1)")
    ops = tuple(cfg.augmentations if augment is True else augment or ())
    check_augmentations(ops)
    if init_from is not None:
        if init_from.class_names != train.class_names or init_from.config.arch != cfg.arch:
            raise ValueError(f"init_from: a {init_from.config.arch} for {init_from.class_names} cannot start a "
                             f"{cfg.arch} for {train.class_names}")
        init_from._check(train)

    # fork_rng: seeding here must not change the caller's random stream
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # weight init and dropout
        gen = torch.Generator().manual_seed(seed)  # shuffling and augmentation
        if init_from is None:
            model = build_classifier(cfg.arch, train.num_classes, train.channels, train.image_size,
                                     cfg.weights_path, widths=cfg.widths).to(device)
        else:
            model = copy.deepcopy(init_from.model).to(device)  # the source classifier stays as it was
        if cfg.optimizer == "adam":
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        x_tr, y_tr = training_images(train)  # memory-mapped splits are read batch by batch (data/storage.py)
        x_va, y_va = val.to_tensor()
        n, bs = len(x_tr), max(1, cfg.batch_size)
        # a "round" ends with a validation: one epoch, or eval_every steps under a step budget
        if cfg.steps is None:
            n_rounds, round_steps = cfg.epochs, None
        else:
            n_rounds = math.ceil(cfg.steps / cfg.eval_every)
        milestones = sorted({max(1, round(f * n_rounds)) for f in cfg.lr_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, gamma=cfg.lr_gamma) if milestones else None
        batches = _batch_stream(n, bs, gen)
        weight = class_weights(y_tr, train.num_classes, cfg.class_weighting)
        weight = None if weight is None else weight.to(device)
        # several ranks: bs is the global batch; every rank draws and augments it, trains on its rows
        world = distributed.world()
        if world.active and str(device).startswith("cuda"):
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # BatchNorm over the global batch, as one process
        train_model = distributed.wrap(model, device)
        if world.rank > 0:  # dropout draws from torch's own stream: other masks than rank 0's rows get
            torch.manual_seed(seed + 1_000_003 * world.rank)

        history = {"epoch": [], "step": [], "train_loss": [], "val_loss": [], "val_acc": []}
        stopper, step = EarlyStopping(cfg.patience), 0
        bar = tqdm(range(n_rounds), desc=f"classifier ({cfg.arch}, seed {seed})",
                   disable=not progress or not distributed.is_main(), leave=False)
        # at most this many steps: early stopping may end sooner
        max_steps, timer = cfg.steps or cfg.epochs * math.ceil(n / bs), runtime.StepTimer()
        for epoch in bar:
            model.train()
            if cfg.steps is not None:
                round_steps = min(cfg.eval_every, cfg.steps - step)
            loss_sum, seen = 0.0, 0
            if round_steps:  # a step budget: the next epoch's order is drawn when the stream reaches it
                pairs = ((idx, x_tr[idx]) for idx in (next(batches) for _ in range(round_steps)))
            else:  # an epoch's shuffled order is drawn at its start: a DataLoader may read its batches ahead
                pairs = batches_of(x_tr, list(_one_epoch(n, bs, gen)))
            for idx, xb in pairs:
                if world.active and len(idx) < world.world_size:
                    continue  # a trailing batch too small to give every rank an image
                yb = y_tr[idx]
                if ops:
                    xb = augment_batch(xb, gen, ops, cfg.jitter)
                if world.active:
                    loss = _rank_share_of_loss(train_model, xb, yb, weight, device)
                    opt.zero_grad(set_to_none=True)
                    (loss * distributed.gradient_scale()).backward()  # DDP's mean over ranks -> the global gradient
                    loss = torch.tensor(distributed.sum_over_ranks(loss.item()))
                else:
                    loss = F.cross_entropy(model(xb.to(device)), yb.to(device), weight=weight)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                opt.step()
                loss_sum += loss.item() * len(idx)
                seen += len(idx)
                step += 1
                if timer.tick():
                    _warn_if_long(cfg, timer.seconds_per_step, max_steps, n, device)
            if sched is not None:
                sched.step()
            distributed.broadcast_buffers(model)  # each rank's BatchNorm statistics saw its rows: use rank 0's
            val_loss, val_acc = _evaluate(model, x_va, y_va, device, 256, weight)
            history["epoch"].append(epoch)
            history["step"].append(step)
            history["train_loss"].append(loss_sum / max(seen, 1))
            history["val_loss"].append(val_loss)
            history["val_acc"].append(val_acc)
            bar.set_postfix(val_loss=f"{val_loss:.3f}", val_acc=f"{val_acc:.3f}")
            if stopper.update(model, val_loss, epoch):
                break
        stopper.restore(model)
    model.eval()
    best_epoch = -1 if stopper.best_at is None else stopper.best_at
    history.update(best_epoch=best_epoch, best_val_loss=stopper.best_loss, stopped_early=stopper.stopped, steps=step,
                   best_step=history["step"][best_epoch] if best_epoch >= 0 else 0)
    meta = {
        "arch": cfg.arch,
        "seed": seed,
        "augment": list(ops),
        "init_from": None if init_from is None else init_from.train_fingerprint,
        "image_size": train.image_size,
        "in_channels": train.channels,
        "n_train": len(train),
        "train_class_counts": dict(zip(train.class_names, train.class_counts())),
        "train_synthetic": bool(train.synthetic),
        "val_fingerprint": val.fingerprint(),
    }
    return TrainedClassifier(model, history, cfg, list(train.class_names), train.fingerprint(), meta, device)


def _rank_share_of_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor, weight: torch.Tensor | None,
                        device: str) -> torch.Tensor:
    """This rank's rows' part of the global batch's (class-weighted) mean cross-entropy: their sum over
    the whole batch's weight, so the ranks' parts add up to the one-process loss."""
    rows = distributed.shard_rows(len(yb))
    per_image = F.cross_entropy(model(xb[rows].to(device)), yb[rows].to(device), weight=weight, reduction="none")
    total_weight = len(yb) if weight is None else weight[yb.to(device)].sum()
    return per_image.sum() / total_weight


def _warn_if_long(cfg: ClassifierConfig, seconds_per_step: float, max_steps: int, n: int, device: str) -> None:
    # once per process and setting: the downstream check trains one classifier per seed and arm
    fit = max(1, runtime.steps_within(runtime.LONG_TRAINING_SECONDS, seconds_per_step))
    budget = f"steps={fit}" if cfg.steps else f"epochs={max(1, fit * cfg.epochs // max(max_steps, 1))}"
    runtime.warn_if_long(
        f"classifier training ({cfg.arch}, {n} images; early stopping may end it sooner)", seconds_per_step, max_steps,
        device, [f"--set evaluate.judge.{budget} (the judge) or downstream.classifier.{budget}",
                 "arch smallcnn with smaller widths"],
        once_key=("classifier", cfg.arch, tuple(cfg.widths), n, max_steps, str(device)))


# --------------------------------------------------------------------------- metrics


def _ratio(num: int, den: int) -> float | None:
    return float(num / den) if den else None


def sensitivity_specificity(confusion: np.ndarray) -> list[tuple[float | None, float | None]]:
    """(sensitivity, specificity) of each class against the rest, from a confusion matrix with
    rows = true class; None where undefined (no image of the class, or none of the rest)."""
    cm = np.asarray(confusion, dtype=np.int64)
    out = []
    for c in range(len(cm)):
        tp = cm[c, c]
        fn = cm[c].sum() - tp
        fp = cm[:, c].sum() - tp
        tn = cm.sum() - tp - fn - fp
        out.append((_ratio(tp, tp + fn), _ratio(tn, tn + fp)))
    return out


def classification_metrics(y_true, proba, class_names: list[str]) -> dict:
    """Accuracy, balanced accuracy, macro F1 / precision / recall, per-class precision/recall/F1,
    sensitivity and specificity, AUC and the confusion matrix (rows = true class, columns =
    predicted), as plain Python numbers.

    Sensitivity and specificity: for two classes of the second class (``class_names[1]``,
    the positive one, e.g. "malignant" after "benign"); for every class one-vs-rest in
    ``one_vs_rest``. The top-level pair is None for more than two classes.

    Macro F1 averages over the classes present in ``y_true`` or predicted (scikit-learn's
    default), so a class missing from a small test set does not count as F1 = 0. AUC is
    binary ROC AUC for two classes, macro one-vs-rest for more, and None when a class is
    missing from ``y_true`` (it is undefined then)."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 precision_recall_fscore_support, roc_auc_score)

    y_true = np.asarray(y_true, dtype=np.int64).reshape(-1)
    proba = np.asarray(proba, dtype=np.float64)
    k = len(class_names)
    if proba.shape != (len(y_true), k):
        raise ValueError(f"proba has shape {proba.shape}, expected ({len(y_true)}, {k})")
    if len(y_true) == 0:
        raise ValueError("classification_metrics: no samples")
    y_pred = proba.argmax(axis=1)
    labels = list(range(k))
    prec, rec, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    present = set(y_true.tolist())
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is expected on small sets
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    auc = None
    if k == 2 and present == {0, 1}:
        auc = float(roc_auc_score(y_true, proba[:, 1]))
    elif k > 2 and len(present) == k:
        p = proba / proba.sum(axis=1, keepdims=True)  # float32 softmax rows may miss 1 by ~1e-7
        auc = float(roc_auc_score(y_true, p, multi_class="ovr", average="macro", labels=labels))
    confusion = confusion_matrix(y_true, y_pred, labels=labels)
    sens_spec = sensitivity_specificity(confusion)
    macro = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)
    return {
        "n": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "precision_macro": float(macro[0]),
        "recall_macro": float(macro[1]),
        "auc": auc,
        "sensitivity": sens_spec[1][0] if k == 2 else None,
        "specificity": sens_spec[1][1] if k == 2 else None,
        "one_vs_rest": {name: {"sensitivity": se, "specificity": sp}
                        for name, (se, sp) in zip(class_names, sens_spec)},
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
    }
