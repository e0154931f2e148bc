"""The one dataset abstraction every synthmed step consumes and produces.

An :class:`ImageDataset` holds decoded images in memory as a uint8 array of shape
``(N, H, W, C)`` (C = 1 or 3), integer labels, the class names, and optionally a patient
id, a label mask, a caption and the source path of each image. Small medical sets fit in
memory many times over, and decoding once up front (rather than per epoch through PIL) is what
makes CPU training fast enough to be useful.

Masks are integer label maps ``(N, H, W)``: 0 is background and 1..M are the mask classes named
by ``mask_class_names`` (so ``mask_class_names[k - 1]`` names value k). They are a second kind
of label, beside the image-level class: a 3-cell embryo has zona, blastomere and fragment pixels.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np


class DataError(ValueError):
    """A problem with the user's data. The message names the file or class and the fix."""


@dataclass
class ImageDataset:
    images: np.ndarray  # uint8 (N, H, W, C)
    labels: np.ndarray  # int64 (N,)
    class_names: list[str]
    patient_ids: np.ndarray | None = None  # str (N,) or None
    masks: np.ndarray | None = None  # uint8 (N, H, W) label maps, 0 = background, k = mask_class_names[k-1]
    paths: list[str] | None = None  # where each image came from (for messages and manifests)
    name: str = "dataset"
    synthetic: bool = False  # True for generated images; guards keep these out of val/test
    meta: dict = field(default_factory=dict)  # free-form provenance (skipped files, source, ...)
    mask_class_names: list[str] | None = None  # names of mask values 1..M; None with masks: "class1".."classM"
    captions: list[str] | None = None  # one text per image (e.g. built from its mask), or None

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.images.ndim == 3:  # (N, H, W) grey -> (N, H, W, 1)
            self.images = self.images[..., None]
        if self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
            raise DataError(
                f"{self.name}: images must have shape (N, H, W, C) with C = 1 or 3, got {self.images.shape}"
            )
        if self.images.dtype != np.uint8:
            raise DataError(f"{self.name}: images must be uint8, got {self.images.dtype}")
        n = len(self.images)
        if len(self.labels) != n:
            raise DataError(f"{self.name}: {n} images but {len(self.labels)} labels")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            bad = sorted(set(self.labels[(self.labels < 0) | (self.labels >= len(self.class_names))].tolist()))
            raise DataError(
                f"{self.name}: labels {bad} are outside the {len(self.class_names)} classes {self.class_names}"
            )
        if self.patient_ids is not None:
            self.patient_ids = np.asarray(self.patient_ids).astype(str)
            if len(self.patient_ids) != n:
                raise DataError(f"{self.name}: {n} images but {len(self.patient_ids)} patient ids")
        self._check_masks()
        if self.captions is not None:
            self.captions = [str(c) for c in self.captions]
            if len(self.captions) != n:
                raise DataError(f"{self.name}: {n} images but {len(self.captions)} captions")
        if self.paths is not None and len(self.paths) != n:
            raise DataError(f"{self.name}: {n} images but {len(self.paths)} paths")

    def _check_masks(self) -> None:
        """Masks: one (H, W) integer label map per image, values 0..M with M mask class names."""
        if self.masks is None:
            if self.mask_class_names is not None:
                self.mask_class_names = [str(c) for c in self.mask_class_names]
            return
        masks = np.asarray(self.masks)
        n, hw = len(self.images), self.images.shape[1:3]
        if masks.ndim == 4 and masks.shape[-1] == 1:  # (N, H, W, 1) -> (N, H, W)
            masks = masks[..., 0]
        if masks.ndim != 3 or len(masks) != n or masks.shape[1:] != hw:
            raise DataError(f"{self.name}: masks have shape {masks.shape}, expected {(n, *hw)} (one H x W label "
                            "map per image, matching the images pixel for pixel)")
        if masks.dtype == bool:
            masks = masks.astype(np.uint8)
        if not np.issubdtype(masks.dtype, np.integer):
            raise DataError(f"{self.name}: masks must hold integer class ids (0 = background), got {masks.dtype}")
        top = int(masks.max()) if masks.size else 0
        if masks.size and (masks.min() < 0 or top > 255):
            raise DataError(f"{self.name}: mask values {masks.min()}..{top} do not fit class ids 0..255")
        if self.mask_class_names is None:
            self.mask_class_names = [f"class{k}" for k in range(1, top + 1)]
        self.mask_class_names = [str(c) for c in self.mask_class_names]
        if len(set(self.mask_class_names)) != len(self.mask_class_names):
            raise DataError(f"{self.name}: mask class names {self.mask_class_names} repeat a name")
        if top > len(self.mask_class_names):
            bad = int(np.flatnonzero((masks > len(self.mask_class_names)).reshape(n, -1).any(axis=1))[0])
            where = self.paths[bad] if self.paths is not None else f"image {bad}"
            raise DataError(f"{self.name}: mask of {where} has value {top} but only {len(self.mask_class_names)} mask "
                            f"classes {self.mask_class_names} are named (values 1..{len(self.mask_class_names)}); "
                            "name every value in data.masks.class_names or map the values with data.masks.values")
        self.masks = masks.astype(np.uint8, copy=False)

    # ----------------------------------------------------------------- basics
    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    @property
    def channels(self) -> int:
        return int(self.images.shape[-1])

    def class_counts(self) -> list[int]:
        return np.bincount(self.labels, minlength=self.num_classes).tolist()

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> "ImageDataset":
        """The images ``indices`` (in that order); a subset of a memory-mapped set is memory-mapped too,
        copied chunk by chunk (data/storage.py), so it never holds the subset in memory."""
        from .storage import take_rows

        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            images=take_rows(self.images, idx),
            labels=self.labels[idx],
            patient_ids=None if self.patient_ids is None else self.patient_ids[idx],
            masks=None if self.masks is None else self.masks[idx],
            captions=None if self.captions is None else [self.captions[i] for i in idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            name=name or self.name,
            meta={k: v for k, v in self.meta.items() if k != "storage"},  # not the parent's cache file
        )

    def fingerprint(self) -> str:
        """Content hash of images and labels: identifies a split across runs and machines.

        Order-independent (per-image hashes are sorted) so that shuffling a split does not
        change its identity, while adding, removing or relabelling any image does. Masks and
        captions, when present, join each image's hash (with the mask class names), so changing
        a mask changes the fingerprint; a set without them hashes exactly as before they existed.
        """
        def extra(i: int) -> bytes:
            out = b""
            if self.masks is not None:
                out += b"mask" + self.masks[i].tobytes()
            if self.captions is not None:
                out += b"caption" + self.captions[i].encode()
            return out

        per_image = sorted(
            hashlib.sha1(img.tobytes() + int(lab).to_bytes(4, "little") + extra(i)).digest()
            for i, (img, lab) in enumerate(zip(self.images, self.labels))
        )
        h = hashlib.sha256()
        h.update(str(self.images.shape[1:]).encode())
        if self.masks is not None:
            h.update(("mask classes " + repr(self.mask_class_names)).encode())
        for d in per_image:
            h.update(d)
        return h.hexdigest()[:16]

    def image_hashes(self) -> set[str]:
        """Per-image content hashes (pixels only), used to prove that two sets share no image."""
        return {hashlib.sha1(img.tobytes()).hexdigest() for img in self.images}

    def summary(self) -> dict:
        counts = self.class_counts()
        return {
            "name": self.name,
            "num_images": len(self),
            "image_shape": list(self.images.shape[1:]),
            "classes": {c: n for c, n in zip(self.class_names, counts)},
            "num_patients": None if self.patient_ids is None else int(len(set(self.patient_ids.tolist()))),
            "has_masks": self.masks is not None,
            **({"mask_classes": list(self.mask_class_names)} if self.masks is not None else {}),
            "has_captions": self.captions is not None,
            "synthetic": self.synthetic,
            "fingerprint": self.fingerprint(),
            **({"skipped": self.meta["skipped"]} if self.meta.get("skipped") else {}),
        }

    # ----------------------------------------------------------------- tensors
    def to_tensor(self):
        """Images as float32 torch tensor (N, C, H, W) in [-1, 1] and labels as int64 tensor."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.images)).permute(0, 3, 1, 2).float()
        return x.div_(127.5).sub_(1.0), torch.from_numpy(self.labels.copy())

    @staticmethod
    def from_tensor(x, labels, class_names: list[str], name: str = "synthetic", synthetic: bool = True,
                    meta: dict | None = None, masks=None, mask_class_names: list[str] | None = None,
                    captions: list[str] | None = None) -> "ImageDataset":
        """Inverse of :meth:`to_tensor` for generator outputs in [-1, 1]; ``masks`` (N, H, W) are the
        label maps the images were generated from (mask conditioning), ``captions`` their captions."""
        arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to("cpu").numpy().astype(np.uint8)
        arr = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
        lab = labels.cpu().numpy() if hasattr(labels, "cpu") else np.asarray(labels)
        if masks is not None and hasattr(masks, "cpu"):
            masks = masks.cpu().numpy()
        return ImageDataset(arr, lab, list(class_names), name=name, synthetic=synthetic, meta=meta or {},
                            masks=masks, mask_class_names=mask_class_names, captions=captions)

    def mask_tensor(self):
        """Masks as an int64 torch tensor (N, H, W) of class ids (0 = background); None without masks."""
        import torch

        return None if self.masks is None else torch.from_numpy(self.masks.astype(np.int64))


def concat(datasets: Sequence[ImageDataset], name: str = "concat") -> ImageDataset:
    """Concatenate datasets with identical class lists and image shapes."""
    if not datasets:
        raise DataError("concat: nothing to concatenate")
    first = datasets[0]
    for d in datasets[1:]:
        if d.class_names != first.class_names:
            raise DataError(f"concat: class lists differ: {first.class_names} vs {d.class_names}")
        if d.images.shape[1:] != first.images.shape[1:]:
            raise DataError(
                f"concat: image shapes differ: {first.name} {first.images.shape[1:]} vs {d.name} {d.images.shape[1:]}"
            )
    has_pid = all(d.patient_ids is not None for d in datasets)
    has_paths = all(d.paths is not None for d in datasets)
    # Masks and captions are kept only when every part has them (a class-conditional synthetic set
    # mixed into masked real data has none); whatever needs them (segmentation) checks for them.
    with_masks = [d.masks is not None for d in datasets]
    if all(with_masks):
        for d in datasets[1:]:
            if d.mask_class_names != first.mask_class_names:
                raise DataError(f"concat: mask classes differ: {first.name} {first.mask_class_names} vs "
                                f"{d.name} {d.mask_class_names}")
    has_captions = all(d.captions is not None for d in datasets)
    return ImageDataset(
        images=np.concatenate([d.images for d in datasets]),
        labels=np.concatenate([d.labels for d in datasets]),
        class_names=list(first.class_names),
        patient_ids=np.concatenate([d.patient_ids for d in datasets]) if has_pid else None,
        masks=np.concatenate([d.masks for d in datasets]) if all(with_masks) else None,
        mask_class_names=list(first.mask_class_names) if all(with_masks) else None,
        captions=sum((list(d.captions) for d in datasets), []) if has_captions else None,
        paths=sum((list(d.paths) for d in datasets), []) if has_paths else None,
        name=name,
        synthetic=any(d.synthetic for d in datasets),
    )


@dataclass
class DataSplits:
    """train / val / test of one dataset; the unit every pipeline step receives."""

    train: ImageDataset
    val: ImageDataset
    test: ImageDataset
    source: str = ""
    split_policy: str = ""  # e.g. "official", "patient-stratified 70/10/20 seed 0"

    @property
    def class_names(self) -> list[str]:
        return self.train.class_names

    def summary(self) -> dict:
        return {
            "source": self.source,
            "split_policy": self.split_policy,
            "train": self.train.summary(),
            "val": self.val.summary(),
            "test": self.test.summary(),
        }


def counts_str(ds: ImageDataset) -> str:
    return ", ".join(f"{c}={n}" for c, n in zip(ds.class_names, ds.class_counts()))

