"""``domain``: penultimate features of a classifier trained by synthmed on the REAL training split.

Inception-v3 has never seen a micrograph or an X-ray; its features can be blind to what
matters in them. A small classifier trained on the user's own labelled images learns the
features that separate their classes, and measures realism in that space. It is trained
once per (training split, validation split, classifier config, seed), cached under
``~/.cache/synthmed/domain`` by those fingerprints, and reused by every metric and by the
realism filter, so they all look through the same eyes.

It is only ever trained on real images: trained on synthetic ones it would call the
generator's own artefacts "realistic".
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np

from synthmed.classifiers import TrainedClassifier, train_classifier
from synthmed.config import ClassifierConfig
from synthmed.data.dataset import ImageDataset
from synthmed.features.base import (DEFAULT_BATCH_SIZE, FeatureExtractor, FeatureExtractorError,
                                        default_cache_dir, file_sha256, state_dict_sha256)

log = logging.getLogger(__name__)


def config_hash(cfg: ClassifierConfig, augment: bool = False) -> str:
    """Hash of everything in the classifier config that changes the trained weights."""
    values = {**asdict(cfg), "augment": bool(augment)}
    if cfg.weights_path and Path(cfg.weights_path).is_file():
        values["weights_path"] = file_sha256(cfg.weights_path)  # the content, not where it lies
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


class DomainExtractor(FeatureExtractor):
    """Train (or load from the cache) a classifier on ``real_train``, early-stopped on
    ``real_val``, and use its penultimate layer as the feature space.

    ``cache_hit`` says whether the classifier came from the cache; ``cache_path`` is its file.
    """

    name = "domain"

    def __init__(self, real_train: ImageDataset, real_val: ImageDataset, cfg: ClassifierConfig | None = None,
                 cache_dir: str | os.PathLike | None = None, seed: int = 0, device: str = "cpu", *,
                 augment: bool = False, progress: bool = False):
        for ds, role in ((real_train, "training"), (real_val, "validation")):
            if ds.synthetic:
                raise FeatureExtractorError(
                    f"the domain extractor must be trained on REAL images; {role} set '{ds.name}' is synthetic")
        cfg = cfg or ClassifierConfig()
        folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "domain"
        train_fp, val_fp = real_train.fingerprint(), real_val.fingerprint()
        path = folder / f"{train_fp}-{val_fp}-{config_hash(cfg, augment)}-s{seed}.pt"

        clf = self._load_cached(path, train_fp, val_fp, device)
        cache_hit = clf is not None
        if clf is None:
            log.info("training the domain feature classifier (%s) on %d real images", cfg.arch, len(real_train))
            clf = train_classifier(real_train, real_val, cfg, seed=seed, device=device, augment=augment,
                                   progress=progress)
            clf.save(path)
        self._init_from(clf, cache_path=path, cache_hit=cache_hit)

    @staticmethod
    def _load_cached(path: Path, train_fp: str, val_fp: str, device: str) -> TrainedClassifier | None:
        if not path.is_file():
            return None
        try:
            clf = TrainedClassifier.load(path, device=device)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is retrained, not fatal
            log.warning("ignoring unreadable cached domain classifier %s (%s); retraining", path, e)
            return None
        if clf.train_fingerprint != train_fp or clf.meta.get("val_fingerprint") != val_fp:
            log.warning("cached domain classifier %s was trained on other data; retraining", path)
            return None
        return clf

    @classmethod
    def from_classifier(cls, clf: TrainedClassifier) -> "DomainExtractor":
        """Use an already trained classifier (e.g. the run's judge) as the feature space."""
        if clf.meta.get("train_synthetic"):
            raise FeatureExtractorError("this classifier was trained on synthetic images; the domain extractor "
                                        "must come from a classifier trained on the REAL training split")
        self = cls.__new__(cls)
        self._init_from(clf, cache_path=None, cache_hit=False)
        return self

    @classmethod
    def from_options(cls, checkpoint: str | None = None, *, classifier: TrainedClassifier | None = None,
                     real_train: ImageDataset | None = None, real_val: ImageDataset | None = None,
                     **options) -> "DomainExtractor":
        """Registry factory: ``domain`` with ``real_train`` and ``real_val`` (trains or loads the cache),
        ``domain`` with ``classifier=``, or ``domain:PATH`` of a saved :class:`TrainedClassifier`."""
        if checkpoint:
            return cls.from_classifier(TrainedClassifier.load(checkpoint, device=options.get("device", "cpu")))
        if classifier is not None:
            return cls.from_classifier(classifier)
        if real_train is None or real_val is None:
            raise FeatureExtractorError("the 'domain' extractor needs real_train= and real_val= (the REAL splits "
                                        "to train on), classifier= (a trained classifier), or 'domain:PATH'")
        return cls(real_train, real_val, **options)

    def _init_from(self, clf: TrainedClassifier, cache_path: Path | None, cache_hit: bool) -> None:
        import torch

        self.classifier = clf
        self.cache_path = cache_path
        self.cache_hit = cache_hit
        self.image_size = int(clf.meta["image_size"])
        self.channels = int(clf.meta["in_channels"])
        clf.model.eval()
        with torch.no_grad():
            probe = torch.zeros(1, self.channels, self.image_size, self.image_size, device=clf.device)
            self.dim = int(clf.model.features(probe).shape[1])
        self.weights_hash = state_dict_sha256(clf.model.state_dict())
        self.input_policy = (f"native {self.image_size}x{self.image_size} px, {self.channels} channel(s), no resize "
                             f"(other sizes are refused); uint8 -> [-1, 1] as in training")

    def extract(self, ds: ImageDataset, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray:
        if len(ds) and (ds.image_size, ds.images.shape[2], ds.channels) != (self.image_size,) * 2 + (self.channels,):
            raise FeatureExtractorError(
                f"{ds.name}: images are {ds.images.shape[1]}x{ds.images.shape[2]} px x {ds.channels} ch; the domain "
                f"classifier was trained on {self.image_size}x{self.image_size} px x {self.channels} ch")
        return super().extract(ds, batch_size, progress)

    def _extract_batch(self, images: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
        model = self.classifier.model
        model.eval()  # BatchNorm running statistics and no dropout: features must not depend on the batch
        with torch.no_grad():
            return model.features(x.to(self.classifier.device)).double().cpu().numpy()

    def describe(self) -> dict:
        clf = self.classifier
        hist = clf.history
        best = hist.get("best_epoch", -1)
        epochs = hist.get("epoch", [])
        val_acc = hist["val_acc"][epochs.index(best)] if best in epochs else None
        return {
            **super().describe(),
            "arch": clf.config.arch,
            "trained_on": clf.train_fingerprint,
            "val_fingerprint": clf.meta.get("val_fingerprint"),
            "n_train": clf.meta.get("n_train"),
            "train_class_counts": clf.meta.get("train_class_counts"),
            "class_names": list(clf.class_names),
            "seed": clf.meta.get("seed"),
            "best_epoch": best,
            "val_acc": val_acc,
            "image_size": self.image_size,
            "channels": self.channels,
            "cache_file": None if self.cache_path is None else str(self.cache_path),
        }
