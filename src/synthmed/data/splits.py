"""Train/val/test splits and the small-data tools (per-class subsets, disjoint subsets, imbalance).

Every function is deterministic for a seed and class-stratified. When a dataset carries
patient ids, splitting is done at patient level: images of one patient are near-duplicates
in the eyes of a classifier or generator, so a patient in both train and test inflates every
downstream number.
"""

from __future__ import annotations

import hashlib
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np

from .dataset import DataError, DataSplits, ImageDataset

SPLIT_NAMES = ("train", "val", "test")


def _class_index(ds: ImageDataset, cls: str | int) -> int:
    if isinstance(cls, (int, np.integer)):
        if not 0 <= int(cls) < ds.num_classes:
            raise DataError(f"{ds.name}: class index {cls} out of range; classes are {ds.class_names}")
        return int(cls)
    if cls not in ds.class_names:
        raise DataError(f"{ds.name}: unknown class {cls!r}; classes are {ds.class_names}")
    return ds.class_names.index(cls)


def _patient_table(ds: ImageDataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unique patient ids, per-image patient index, and a (patients, classes) image-count table."""
    pids, inverse = np.unique(ds.patient_ids, return_inverse=True)
    table = np.zeros((len(pids), ds.num_classes), dtype=np.int64)
    np.add.at(table, (inverse, ds.labels), 1)
    return pids, inverse, table


def _big_first_order(sizes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random order, then largest first (stable): big patients are hardest to place, so go first."""
    perm = rng.permutation(len(sizes))
    return perm[np.argsort(-sizes[perm], kind="stable")]


# --------------------------------------------------------------------------- train / val / test


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise DataError(
            f"val_fraction={val_fraction}, test_fraction={test_fraction}: each must be in (0, 1) and their sum below 1"
        )


def _assign_images(ds: ImageDataset, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per class: shuffle, then cut test and val off the front; each split gets >= 1 image."""
    which = np.zeros(len(ds), dtype=np.int64)
    for c, name in enumerate(ds.class_names):
        idx = rng.permutation(np.flatnonzero(ds.labels == c))
        n = len(idx)
        if n < 3:
            raise DataError(
                f"{ds.name}: class {name!r} has {n} image(s); a split needs at least 3 so that train, val and "
                "test each get one (add images, drop the class, or lower the number of classes)"
            )
        n_val = min(max(1, round(n * fractions[1])), n - 2)
        n_test = min(max(1, round(n * fractions[2])), n - 1 - n_val)
        which[idx[:n_test]] = 2
        which[idx[n_test:n_test + n_val]] = 1
    return which


def _assign_patients(ds: ImageDataset, fractions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Greedy patient-level stratified assignment.

    Patients are placed (largest first) in the split where they most reduce the squared
    relative gap between the split's per-class counts and its target. A repair pass then
    makes sure every class has at least one patient in every split, moving the smallest
    suitable patient from a split that has more than one patient of that class.
    """
    pids, inverse, table = _patient_table(ds)
    totals = table.sum(axis=0).astype(np.float64)
    target = fractions[:, None] * totals[None, :]  # (3, C)
    weight = 1.0 / np.maximum(target, 1.0)
    current = np.zeros_like(target)
    split_of = np.zeros(len(pids), dtype=np.int64)

    for p in _big_first_order(table.sum(axis=1), rng):
        before = ((current - target) ** 2 * weight).sum(axis=1)
        after = ((current + table[p] - target) ** 2 * weight).sum(axis=1)
        s = int(np.argmin(after - before))
        split_of[p] = s
        current[s] += table[p]

    for c, name in enumerate(ds.class_names):
        holders = np.flatnonzero(table[:, c] > 0)
        if len(holders) < 3:
            raise DataError(
                f"{ds.name}: class {name!r} has images from only {len(holders)} patient(s) "
                f"({', '.join(pids[holders][:5])}); a patient-level split needs at least 3 patients per class "
                "so that train, val and test each get one (add patients, drop the class, or use a source "
                "with an official split)"
            )
    for _ in range(len(pids)):  # each move fixes one gap; bounded so it cannot loop forever
        counts = np.stack([(table[split_of == s] > 0).sum(axis=0) for s in range(3)])  # patients per split/class
        gaps = np.argwhere(counts == 0)
        if not len(gaps):
            break
        s, c = (int(v) for v in gaps[0])
        movable = [
            p for p in np.flatnonzero(table[:, c] > 0)
            if split_of[p] != s and np.all(counts[split_of[p]][table[p] > 0] > 1)
        ]
        if not movable:
            raise DataError(
                f"{ds.name}: cannot give split '{SPLIT_NAMES[s]}' a patient of class {ds.class_names[c]!r} "
                "without emptying another split; add patients of that class or change the fractions"
            )
        p = min(movable, key=lambda q: (table[q].sum(), q))
        split_of[p] = s
    return split_of[inverse]


def split_dataset(ds: ImageDataset, val_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0) -> DataSplits:
    """Class-stratified train/val/test split; patient-level when ``ds.patient_ids`` is set."""
    _check_fractions(val_fraction, test_fraction)
    fractions = np.array([1 - val_fraction - test_fraction, val_fraction, test_fraction])
    rng = np.random.default_rng(seed)
    by_patient = ds.patient_ids is not None
    which = _assign_patients(ds, fractions, rng) if by_patient else _assign_images(ds, fractions, rng)
    pct = "/".join(f"{round(100 * f)}" for f in fractions)
    policy = f"{'patient-level ' if by_patient else ''}stratified {pct} split (seed {seed})"
    parts = []
    for s, name in enumerate(SPLIT_NAMES):
        part = ds.subset(np.flatnonzero(which == s), name=name)
        part.meta["split"] = policy
        parts.append(part)
    return DataSplits(*parts, source=ds.meta.get("source", ds.name), split_policy=policy)


# --------------------------------------------------------------------------- small-data tools


def per_class_subset(ds: ImageDataset, n_per_class: int, seed: int = 0) -> ImageDataset:
    """``n_per_class`` random images of every class (original order kept)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c, name in enumerate(ds.class_names):
        idx = np.flatnonzero(ds.labels == c)
        if len(idx) < n_per_class:
            raise DataError(
                f"{ds.name}: class {name!r} has {len(idx)} images, fewer than the {n_per_class} per class asked for "
                "(lower train_per_class or add images)"
            )
        keep.append(rng.choice(idx, size=n_per_class, replace=False))
    out = ds.subset(np.sort(np.concatenate(keep)) if keep else [], name=ds.name)
    out.meta["per_class_subset"] = {"n_per_class": n_per_class, "seed": seed}
    return out


def disjoint_subsets(ds: ImageDataset, k: int, n_per_class: int | None = None, fraction: float | None = None,
                     seed: int = 0) -> list[ImageDataset]:
    """``k`` non-overlapping class-stratified subsets (the ``pcam-ddpm`` regime: 5 subsets of 10%).

    Give ``n_per_class`` (balanced subsets) or ``fraction`` (each subset holds that fraction of
    every class); with neither the data is partitioned into k equal parts. With patient ids,
    subsets are disjoint in patients too; whole patients are packed, so a subset holds *at
    most* its per-class target (exactly, when each patient has one image).
    """
    if k < 1:
        raise DataError(f"disjoint_subsets: k must be >= 1, got {k}")
    if n_per_class is not None and fraction is not None:
        raise DataError("disjoint_subsets: give n_per_class or fraction, not both")
    if fraction is None and n_per_class is None:
        fraction = 1.0 / k
    counts = np.array(ds.class_counts())
    if n_per_class is not None:
        target = np.full(ds.num_classes, int(n_per_class))
    else:
        if not 0 < fraction * k <= 1 + 1e-9:
            raise DataError(f"disjoint_subsets: {k} subsets of fraction {fraction} do not fit in one dataset")
        target = np.floor(counts * fraction + 1e-9).astype(np.int64)
    for c, name in enumerate(ds.class_names):
        if target[c] * k > counts[c]:
            raise DataError(
                f"{ds.name}: class {name!r} has {counts[c]} images; {k} disjoint subsets of {target[c]} need "
                f"{target[c] * k}"
            )
    rng = np.random.default_rng(seed)
    members: list[list[int]] = [[] for _ in range(k)]
    if ds.patient_ids is None:
        for c in range(ds.num_classes):
            idx = rng.permutation(np.flatnonzero(ds.labels == c))
            for j in range(k):
                members[j].extend(idx[j * target[c]:(j + 1) * target[c]].tolist())
    else:
        _, inverse, table = _patient_table(ds)
        # image indices of each patient, without a scan over all images per patient
        images_of = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
        fill = np.zeros((k, ds.num_classes), dtype=np.int64)
        for p in _big_first_order(table.sum(axis=1), rng):
            fits = [j for j in range(k) if np.all(fill[j] + table[p] <= target)]
            if not fits:
                continue  # left out of every subset
            j = min(fits, key=lambda q: (fill[q].sum(), q))
            fill[j] += table[p]
            members[j].extend(images_of[p].tolist())
    subsets = []
    for j, idx in enumerate(members):
        sub = ds.subset(np.sort(np.array(idx, dtype=np.int64)), name=f"{ds.name}-subset{j}")
        sub.meta["disjoint_subset"] = {"index": j, "k": k, "target_per_class": target.tolist(), "seed": seed}
        subsets.append(sub)
    return subsets


def make_imbalanced(ds: ImageDataset, minority_class: str | int, ratio: float, seed: int = 0) -> ImageDataset:
    """Keep ``ratio`` (0 < ratio <= 1) of one class's images, all of the others."""
    if not 0 < ratio <= 1:
        raise DataError(f"make_imbalanced: ratio must be in (0, 1], got {ratio}")
    c = _class_index(ds, minority_class)
    idx = np.flatnonzero(ds.labels == c)
    n_keep = max(1, int(round(len(idx) * ratio))) if len(idx) else 0
    kept = np.random.default_rng(seed).choice(idx, size=n_keep, replace=False)
    keep = np.sort(np.concatenate([np.flatnonzero(ds.labels != c), kept]))
    out = ds.subset(keep, name=ds.name)
    out.meta["imbalance"] = {"minority_class": ds.class_names[c], "ratio": ratio, "kept": int(n_keep),
                             "of": int(len(idx)), "seed": seed}
    return out


# --------------------------------------------------------------------------- leakage guard


def assert_disjoint(splits: DataSplits | Mapping[str, ImageDataset] | Sequence[ImageDataset]) -> None:
    """Raise DataError if a patient id or an identical image appears in two splits."""
    if isinstance(splits, DataSplits):
        named = {"train": splits.train, "val": splits.val, "test": splits.test}
    elif isinstance(splits, Mapping):
        named = dict(splits)
    else:
        named = {f"{d.name}[{i}]": d for i, d in enumerate(splits)}
    problems = []
    for (na, a), (nb, b) in combinations(named.items(), 2):
        if a.patient_ids is not None and b.patient_ids is not None:
            shared = sorted(set(a.patient_ids.tolist()) & set(b.patient_ids.tolist()))
            if shared:
                problems.append(f"{len(shared)} patient(s) in both {na} and {nb} (e.g. {', '.join(shared[:5])})")
        shared_img = a.image_hashes() & b.image_hashes()
        if shared_img:
            example = ""
            if a.paths is not None and b.paths is not None:
                ha = {h: p for h, p in zip(_hashes(a), a.paths)}
                hb = {h: p for h, p in zip(_hashes(b), b.paths)}
                h = sorted(shared_img)[0]
                example = f" (e.g. {ha[h]} and {hb[h]})"
            problems.append(f"{len(shared_img)} identical image(s) in both {na} and {nb}{example}")
    if problems:
        raise DataError("data leakage between splits: " + "; ".join(problems))


def _hashes(ds: ImageDataset) -> list[str]:
    # same recipe as ImageDataset.image_hashes, but per image so a leak can be named by path
    return [hashlib.sha1(img.tobytes()).hexdigest() for img in ds.images]
