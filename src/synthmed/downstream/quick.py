"""The downstream question: does adding synthetic images make the user's classifier better?

Two arms per seed, identical except for the training set: (a) the real training split,
(b) the real training split plus synthetic images. Both early-stop on the REAL validation
split and are scored on the REAL test split. The same seed gives both arms the same
initial weights and batch-order stream, so the per-seed difference (b - a) is a paired
comparison and its spread is the honest error bar.

Guards refuse comparisons that would flatter the synthetic arm: synthetic images that are
copies of val/test images, or a generator trained on a different split than this one
(e.g. on train + test).
"""

from __future__ import annotations

from dataclasses import asdict

import numpy as np

from synthmed.classifiers import classification_metrics, train_classifier
from synthmed.config import DownstreamConfig
from synthmed.data.dataset import DataSplits, ImageDataset, concat
from synthmed.downstream.stats import paired_difference

SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auc")
PER_CLASS_METRICS = ("precision", "recall", "f1")


class LeakageError(ValueError):
    """The comparison would let test or validation information into training."""


def check_no_leakage(splits: DataSplits, synthetic: ImageDataset, generator_fingerprint: str | None = None) -> dict:
    """Raise :class:`LeakageError` when the comparison is invalid; return what was checked."""
    if not synthetic.synthetic:
        raise LeakageError(f"'{synthetic.name}' is not flagged synthetic=True; refusing to count it as generated "
                           f"images (if these are real images, they belong in the training split)")
    for split_name in ("train", "val", "test"):
        if getattr(splits, split_name).synthetic:
            raise LeakageError(f"the {split_name} split is flagged synthetic; the comparison needs real splits")
    if synthetic.class_names != splits.class_names:
        raise LeakageError(f"synthetic classes {synthetic.class_names} differ from the data's {splits.class_names}")
    if synthetic.images.shape[1:] != splits.train.images.shape[1:]:
        raise LeakageError(f"synthetic images {synthetic.images.shape[1:]} differ in shape from the real "
                           f"{splits.train.images.shape[1:]}")
    syn_hashes = synthetic.image_hashes()
    for split_name in ("val", "test"):
        shared = syn_hashes & getattr(splits, split_name).image_hashes()
        if shared:
            raise LeakageError(f"{len(shared)} synthetic image(s) are pixel-identical to {split_name} images; "
                               f"the generator saw the {split_name} split (or the files were mixed up)")
    fingerprints = {s: getattr(splits, s).fingerprint() for s in ("train", "val", "test")}
    if generator_fingerprint is not None:
        for split_name in ("val", "test"):
            if generator_fingerprint == fingerprints[split_name]:
                raise LeakageError(f"the generator was trained on the {split_name} split "
                                   f"(fingerprint {generator_fingerprint})")
        if generator_fingerprint != fingerprints["train"]:
            raise LeakageError(f"the generator was trained on a set with fingerprint {generator_fingerprint}, not on "
                               f"this training split ({fingerprints['train']}); its training images may include this "
                               f"val/test split. Retrain it on this split, or load the split it was trained with")
    return {
        "fingerprints": fingerprints,
        "generator_fingerprint": generator_fingerprint,
        "generator_fingerprint_checked": generator_fingerprint is not None,
        # not leakage, but memorisation: the augmented arm then just repeats training images
        "synthetic_copies_of_train": len(syn_hashes & splits.train.image_hashes()),
    }


def synthetic_per_class(real_counts: list[int], available: list[int], ratio: float) -> list[int]:
    """Synthetic images to add per class: ``ratio`` x the real total, split in proportion to
    the real class counts (largest-remainder rounding, so the total is exact), capped at
    what is available in each class."""
    if ratio < 0:
        raise ValueError(f"synthetic_ratio must be >= 0, got {ratio}")
    want = np.asarray(real_counts, dtype=np.float64) * ratio
    total = int(np.floor(want.sum() + 0.5))  # half up: Python's round(10.5) == 10 would surprise
    base = np.floor(want).astype(np.int64)
    order = np.argsort(-(want - base), kind="stable")
    base[order[: total - int(base.sum())]] += 1
    return np.minimum(base, np.asarray(available, dtype=np.int64)).tolist()


def _draw(synthetic: ImageDataset, counts: list[int], seed: int) -> ImageDataset:
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(synthetic.labels == c), size=n, replace=False) for c, n in enumerate(counts)]
    return synthetic.subset(np.sort(np.concatenate(idx)).astype(np.int64), name=f"{synthetic.name}-drawn")


def _mean_std(values: list[float | None]) -> dict:
    """Mean and sample std (ddof=1) over seeds; None when a value is undefined for some seed."""
    if not values or any(v is None for v in values):
        return {"mean": None, "std": None, "values": values}
    arr = np.asarray(values, dtype=np.float64)
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if len(arr) > 1 else None,
            "values": [float(v) for v in arr]}


def _with_interval(entry: dict, augmented: list, real: list) -> dict:
    """``entry`` plus the 95% paired t interval of augmented - real over seeds."""
    if entry["mean"] is None:
        return {**entry, "ci_low": None, "ci_high": None, "confidence": 0.95}
    d = paired_difference(augmented, real, confidence=0.95)
    return {**entry, "ci_low": d["ci_low"], "ci_high": d["ci_high"], "confidence": d["confidence"]}


def real_vs_augmented(splits: DataSplits, synthetic: ImageDataset, cfg: DownstreamConfig, *, device: str = "cpu",
                      generator_fingerprint: str | None = None, augment: bool = False, progress: bool = False) -> dict:
    """Train real-only and real+synthetic classifiers for every seed in ``cfg.seeds``;
    return per-seed test metrics, mean and sample std (ddof=1) per arm, and the paired
    difference (augmented - real) with its 95% t interval over seeds (``ci_low``/``ci_high``,
    None below two seeds). Per class: precision/recall/F1 per arm (mean/std over seeds) and
    their paired difference (``per_class``), and each arm's test confusion matrix summed over
    seeds (``confusion_matrix``; rows = true class, columns = predicted)."""
    checked = check_no_leakage(splits, synthetic, generator_fingerprint)
    if not cfg.seeds:
        raise ValueError("downstream.seeds is empty")
    names = splits.class_names
    real_counts = splits.train.class_counts()
    n_add = synthetic_per_class(real_counts, synthetic.class_counts(), cfg.synthetic_ratio)

    per_seed = []
    for seed in cfg.seeds:
        # a fresh draw per seed when only part of the synthetic set is used: the spread over
        # seeds then includes which synthetic images happened to be picked
        drawn = _draw(synthetic, n_add, seed)
        arms = {"real": splits.train,
                "augmented": concat([splits.train, drawn], name="train+synthetic") if len(drawn) else splits.train}
        row = {"seed": seed, "synthetic_drawn": dict(zip(names, drawn.class_counts()))}
        for arm, train in arms.items():
            clf = train_classifier(train, splits.val, cfg.classifier, seed=seed, device=device,
                                   augment=augment, progress=progress)
            row[arm] = classification_metrics(splits.test.labels, clf.predict_proba(splits.test), names)
            row[arm]["best_epoch"] = clf.history["best_epoch"]
            row[arm]["n_train"] = len(train)
        per_seed.append(row)

    summary = {arm: {m: _mean_std([r[arm][m] for r in per_seed]) for m in SUMMARY_METRICS}
               for arm in ("real", "augmented")}
    difference = {}
    for m in SUMMARY_METRICS:
        pairs = [(r["real"][m], r["augmented"][m]) for r in per_seed]
        difference[m] = _with_interval(_mean_std([None if a is None or b is None else b - a for a, b in pairs]),
                                       [b for _, b in pairs], [a for a, _ in pairs])
    # on imbalanced data the minority class is the point: its recall can move while the overall
    # accuracy does not
    per_class = {}
    for c in names:
        entry = {"support": per_seed[0]["real"]["per_class"][c]["support"]}
        for m in PER_CLASS_METRICS:
            real_v = [r["real"]["per_class"][c][m] for r in per_seed]
            aug_v = [r["augmented"]["per_class"][c][m] for r in per_seed]
            entry[m] = {"real": _mean_std(real_v), "augmented": _mean_std(aug_v),
                        "difference": _with_interval(_mean_std([b - a for a, b in zip(real_v, aug_v)]), aug_v, real_v)}
        per_class[c] = entry
    confusion = {arm: np.sum([r[arm]["confusion_matrix"] for r in per_seed], axis=0).astype(int).tolist()
                 for arm in ("real", "augmented")}
    composition = {  # identical for every seed: the per-class counts are fixed, only the draw varies
        "real": {"real": dict(zip(names, real_counts)), "synthetic": dict.fromkeys(names, 0)},
        "augmented": {"real": dict(zip(names, real_counts)), "synthetic": per_seed[0]["synthetic_drawn"]},
    }
    return {
        "seeds": list(cfg.seeds),
        "per_seed": per_seed,
        "summary": summary,
        "difference": difference,
        "per_class": per_class,
        "confusion_matrix": {**confusion, "class_names": list(names), "n_seeds": len(per_seed),
                             "what": "test predictions summed over seeds; rows = true class, columns = predicted"},
        "std": "sample standard deviation over seeds (ddof=1); None with a single seed",
        "interval": "95% paired t interval over seeds (ci_low, ci_high); None with a single seed",
        "composition": composition,
        "synthetic_available": dict(zip(names, synthetic.class_counts())),
        "synthetic_ratio": cfg.synthetic_ratio,
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "classifier": asdict(cfg.classifier),
        "augment": augment,
        "checks": checked,
    }
