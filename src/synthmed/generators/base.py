"""The interface every synthmed generator implements.

A generator is trained on one training split and remembers that split's fingerprint in
every checkpoint, so later steps (evaluation, downstream) can refuse to score it on the
images it was trained on.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import asdict
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from synthmed import distributed
from synthmed.data.dataset import ImageDataset
from synthmed.files import atomic_write_json

#: the resumable training state inside a saved generator's folder (and a run's checkpoint folder)
CHECKPOINT = "checkpoint.pt"


class GeneratorError(RuntimeError):
    """A generator was used wrongly (sampled before fit, unknown class, ...)."""


def counts_to_labels(counts: Mapping[int, int] | Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    """Accept {class: n}, [n_0, n_1, ...] per class, or an explicit label array of length N.

    A sequence whose length equals num_classes is read as per-class counts; to pass explicit
    labels of that exact length use a numpy int array with ``ndim == 1`` wrapped as
    ``{"labels": array}`` -- or simply a dict of counts.
    """
    if isinstance(counts, Mapping):
        if "labels" in counts:
            labels = np.asarray(counts["labels"], dtype=np.int64)
        else:
            labels = np.concatenate(
                [np.full(int(n), int(c), dtype=np.int64) for c, n in sorted(counts.items())] or [np.zeros(0, np.int64)]
            )
    else:
        arr = np.asarray(counts, dtype=np.int64)
        if arr.ndim == 1 and len(arr) == num_classes:
            labels = np.repeat(np.arange(num_classes), arr)
        else:
            labels = arr.reshape(-1)
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise GeneratorError(f"class index out of range 0..{num_classes - 1}: {sorted(set(labels.tolist()))}")
    return labels


class Generator(ABC):
    """What every generator kind offers its callers (pipeline, selection, downstream, report):
    fit on a training split only, sample per class, save / load / resume, and describe itself.

    Callers use this interface alone, never a kind's internals (networks, configs), so a new kind
    plugs in by registering in :mod:`synthmed.generators.registry`.
    """

    #: registry name, e.g. "diffusion"
    kind: str = "generator"

    # Provenance every generator carries (set by fit, saved by save).
    train_fingerprint: str | None = None
    train_image_hashes: set[str] | None = None
    class_names: list[str] | None = None
    image_size: int | None = None
    channels: int | None = None
    #: training history: at least ``loss_curve`` ([step, loss] pairs) and ``train_seconds``
    history: dict

    @abstractmethod
    def fit(self, train: ImageDataset, val: ImageDataset | None = None, *, resume: bool = True,
            checkpoint_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
        """Train on ``train`` only (``val`` may be used for monitoring, never for fitting). With
        ``checkpoint_dir`` write resumable checkpoints there and, with ``resume``, continue from the
        last one (refusing one made on other data). Returns the history dict."""

    @abstractmethod
    def sample(self, counts, *, guidance: float | None = None, seed: int = 0, batch_size: int | None = None,
               sampler: str | None = None, steps: int | None = None, progress: bool = True) -> ImageDataset:
        """Generate images flagged synthetic. ``counts``: {class: n}, per-class list, or labels (see
        counts_to_labels). ``sampler``/``steps``/``guidance`` default to :attr:`sampling_defaults`;
        the same ``seed`` gives the same images. ``meta`` records the settings used."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> Path:
        """Write a self-describing folder (``generator.json`` with ``kind``, weights, provenance)."""

    @classmethod
    @abstractmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None) -> "Generator":
        """Rebuild a generator saved by :meth:`save`."""

    @property
    @abstractmethod
    def sampling_defaults(self) -> dict:
        """``{"sampler", "steps", "guidance"}`` that :meth:`sample` uses when not told otherwise."""

    @property
    @abstractmethod
    def num_parameters(self) -> int:
        """Trainable parameters of the sampling network(s)."""

    @abstractmethod
    def describe(self) -> dict:
        """What the report and data cards say about this generator: ``kind``, a one-line ``summary``,
        ``num_parameters``, ``settings`` (its config), ``sampling`` defaults, ``train_fingerprint``,
        ``train_steps``, ``train_seconds``, ``images_per_second``."""

    def _set_identity(self, cfg, *, image_size: int, channels: int, class_names, device: str, seed: int) -> None:
        """What every kind's constructor records first: its settings and what it generates, where, from which seed."""
        self.cfg = cfg
        self.image_size = image_size
        self.channels = channels
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.device = device
        self.seed = seed

    def begin_fit(self, train: ImageDataset, checkpoint_dir: str | os.PathLike | None, resume: bool
                  ) -> tuple[list[int], Path | None]:
        """What every kind's :meth:`fit` does first: check the training split (real, non-empty, this
        generator's classes and size, no empty class), resume from ``checkpoint_dir``'s checkpoint when
        asked (the kind's ``_load_checkpoint`` refuses one made on other data), and record the split's
        provenance. Returns the class counts and the checkpoint path (None without a folder)."""
        if train.synthetic:
            raise GeneratorError(f"{train.name} is marked synthetic; generators train on real images only")
        if len(train) == 0:
            raise GeneratorError("training split is empty")
        if list(train.class_names) != self.class_names:
            raise GeneratorError(f"class list of {train.name} {train.class_names} != generator's {self.class_names}")
        if (train.image_size, train.channels) != (self.image_size, self.channels):
            raise GeneratorError(f"{train.name} images are {train.image_size}px x {train.channels}ch; generator built "
                                 f"for {self.image_size}px x {self.channels}ch")
        counts = train.class_counts()
        empty = [c for c, n in zip(self.class_names, counts) if n == 0]
        if empty:
            raise GeneratorError(f"classes {empty} have no training images; remove them from the class list")
        fingerprint = train.fingerprint()
        ckpt = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir else None
        if resume and ckpt is not None and ckpt.is_file():
            self._load_checkpoint(ckpt, expect_fingerprint=fingerprint)
        distributed.barrier()  # every rank has read the checkpoint before rank 0 may replace it
        self.train_fingerprint = fingerprint
        self.train_image_hashes = train.image_hashes()
        # recorded for the data card of every set sampled later (saved with the checkpoint's history)
        self.history["train_class_counts"] = dict(zip(self.class_names, counts))
        return counts, ckpt

    def write_folder(self, directory: str | os.PathLike, **extra) -> Path:
        """The folder :meth:`save` writes, for any kind: the checkpoint (the kind's own
        ``_save_checkpoint``) and ``generator.json`` naming the kind, its settings and provenance, plus
        ``extra`` fields."""
        d = Path(directory)
        if not distributed.is_main():  # several processes: every rank holds the same generator, rank 0 writes it
            return d
        d.mkdir(parents=True, exist_ok=True)
        self._save_checkpoint(d / CHECKPOINT)
        import synthmed

        atomic_write_json({
            "kind": self.kind, "synthmed_version": synthmed.__version__, "config": asdict(self.cfg),
            "image_size": self.image_size, "channels": self.channels, "class_names": self.class_names,
            "train_fingerprint": self.train_fingerprint, "train_steps": self.step,
            "num_parameters": self.num_parameters, **extra,
        }, d / "generator.json")
        return d

    @staticmethod
    def read_checkpoint(directory: str | os.PathLike, device: str | None = None) -> dict:
        """The training state saved in a generator folder (or a checkpoint file itself)."""
        import torch

        d = Path(directory)
        path = d / CHECKPOINT if d.is_dir() else d
        if not path.is_file():
            raise GeneratorError(f"no generator checkpoint at {path}; train one with `synthmed train`")
        return torch.load(path, map_location=device or "cpu", weights_only=False)

    def reconstruct(self, ds: ImageDataset) -> ImageDataset | None:
        """``ds`` passed through the generator's encoder and decoder (labels kept, flagged synthetic),
        so a judge can say how much of what tells the classes apart survives it; None for generators
        without one (pixel space)."""
        return None
