"""The interface every synthmed generator implements.

A generator is trained on one training split and remembers that split's fingerprint in
every checkpoint, so later steps (evaluation, downstream) can refuse to score it on the
images it was trained on.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from synthmed.data.dataset import ImageDataset


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

    def reconstruct(self, ds: ImageDataset) -> ImageDataset | None:
        """``ds`` passed through the generator's encoder and decoder (labels kept, flagged synthetic),
        so a judge can say how much of what tells the classes apart survives it; None for generators
        without one (pixel space)."""
        return None
