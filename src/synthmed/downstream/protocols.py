"""Downstream protocols of the reference papers: what a classifier is trained on, in which order.

A protocol turns (real training split, synthetic pool, options) into a :class:`TrainingPlan`:
one or more stages, each a training set and an augmentation set, trained in order (each
stage starting from the previous stage's weights), plus the per-class count of real and
synthetic images in every stage. Every protocol early-stops on the real validation split
and is scored on the real test split; that part lives in ``experiment.py``, so no protocol
can touch val or test.

    baseline        real, no augmentation
    traditional     real + flips, rotations, colour jitter (pcam-ddpm)
    mix             real + synthetic, synthetic = ratio x real per class (1:1 default; pcam-ddpm)
    transfer        synthetic (ratio x real), then fine-tune on real (pcam-ddpm)
    synthetic-only  synthetic (ratio x real) only (improve)
    balance         real + synthetic topping each class up to the majority count (r3gan-small)
    ratio-R:S       R% of the real images + S% of the real count in synthetic images, per class
                    (renal-ldm: 100:0, 75:25, 50:50, 25:75, 0:100 at fixed total, and 100:100)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

from synthmed.data.dataset import DataError, ImageDataset, concat
from synthmed.downstream.quick import synthetic_per_class

RATIO_SWEEP = ("ratio-100:0", "ratio-75:25", "ratio-50:50", "ratio-25:75", "ratio-0:100", "ratio-100:100")
TRADITIONAL_AUGMENTATIONS = ("flip", "rot90", "jitter")


class NotEnoughSyntheticError(DataError):
    """A protocol needs more synthetic images of a class than the pool holds."""


@dataclass
class ProtocolOptions:
    #: synthetic images per real training image in ``mix``, ``transfer`` and ``synthetic-only``
    synthetic_ratio: float = 1.0
    #: augmentation set of ``traditional``
    augmentations: tuple[str, ...] = TRADITIONAL_AUGMENTATIONS
    #: seeds which synthetic (and, for ratios, which real) images are drawn
    seed: int = 0


@dataclass
class TrainingPlan:
    name: str
    #: (training set, augmentation names) per stage; an empty tuple means no augmentation
    stages: list[tuple[ImageDataset, tuple[str, ...]]]
    #: per stage ("train", or "pretrain" then "finetune"): {"real": {class: n}, "synthetic": {class: n}}
    composition: dict[str, dict] = field(default_factory=dict)


# --------------------------------------------------------------------------- building blocks


def _counts(ds: ImageDataset | None, class_names: list[str]) -> dict[str, int]:
    counts = ds.class_counts() if ds is not None else [0] * len(class_names)
    return dict(zip(class_names, counts))


def _stage(real: ImageDataset | None, synthetic: ImageDataset | None, name: str) -> tuple[ImageDataset, dict]:
    """Training set of real and/or synthetic images and its composition (counted from the parts,
    because a concatenated set no longer knows which image was generated)."""
    parts = [d for d in (real, synthetic) if d is not None and len(d)]
    if not parts:
        raise DataError(f"{name}: the training set would be empty")
    data = parts[0] if len(parts) == 1 else concat(parts, name=name)
    names = parts[0].class_names
    return data, {"real": _counts(real, names), "synthetic": _counts(synthetic, names)}


def _scaled(counts: list[int], fraction: float) -> list[int]:
    """``fraction`` x each count, largest-remainder rounding (the total is exact), not capped:
    _draw raises when the pool is short instead of silently training on fewer images."""
    return synthetic_per_class(counts, [np.iinfo(np.int64).max] * len(counts), fraction)


def _draw(pool: ImageDataset, counts: list[int], rng: np.random.Generator, protocol: str,
          what: str = "synthetic") -> ImageDataset:
    """``counts[c]`` images of each class c, without replacement; a clear error when short."""
    available = pool.class_counts()
    short = [(name, n, a) for name, n, a in zip(pool.class_names, counts, available) if n > a]
    if short:
        need = ", ".join(f"{name!r}: needs {n}, has {a}" for name, n, a in short)
        hint = (f"generate at least {max(n for _, n, _ in short)} synthetic images per class (more if a "
                f"realism filter discards some)") if what == "synthetic" else "use a larger training split"
        err = NotEnoughSyntheticError if what == "synthetic" else DataError
        raise err(f"protocol {protocol!r}: not enough {what} images ({need}); {hint}")
    idx = [rng.choice(np.flatnonzero(pool.labels == c), size=n, replace=False) for c, n in enumerate(counts)]
    picked = np.sort(np.concatenate(idx)).astype(np.int64) if idx else np.zeros(0, dtype=np.int64)
    return pool.subset(picked, name=f"{pool.name}-{protocol}")


def _need_synthetic(synthetic: ImageDataset | None, protocol: str) -> ImageDataset:
    if synthetic is None:
        raise DataError(f"protocol {protocol!r} needs synthetic images, none were given")
    if not synthetic.synthetic:
        raise DataError(f"protocol {protocol!r}: '{synthetic.name}' is not flagged synthetic=True")
    return synthetic


def _scaled_draw(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions,
                 protocol: str) -> ImageDataset:
    """``opts.synthetic_ratio`` x the real count of each class, drawn from the pool."""
    counts = _scaled(real.class_counts(), opts.synthetic_ratio)
    return _draw(_need_synthetic(synthetic, protocol), counts, np.random.default_rng(opts.seed), protocol)


def _single(name: str, real: ImageDataset | None, synthetic: ImageDataset | None,
            augment: tuple[str, ...] = ()) -> TrainingPlan:
    data, comp = _stage(real, synthetic, name)
    return TrainingPlan(name, [(data, tuple(augment))], {"train": comp})


# --------------------------------------------------------------------------- protocols


def baseline(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    return _single("baseline", real, None)


def traditional(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    return _single("traditional", real, None, tuple(opts.augmentations))


def mix(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    return _single("mix", real, _scaled_draw(real, synthetic, opts, "mix"))


def mix_traditional(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    """``mix`` with ``traditional``'s augmentation on the whole mixed set: whether synthetic images add
    anything beyond what flips, rotations and jitter already give."""
    return _single("mix-traditional", real, _scaled_draw(real, synthetic, opts, "mix-traditional"),
                   tuple(opts.augmentations))


def synthetic_only(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    return _single("synthetic-only", None, _scaled_draw(real, synthetic, opts, "synthetic-only"))


def transfer(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    pretrain, pre_comp = _stage(None, _scaled_draw(real, synthetic, opts, "transfer"), "transfer-pretrain")
    finetune, fine_comp = _stage(real, None, "transfer-finetune")
    return TrainingPlan("transfer", [(pretrain, ()), (finetune, ())], {"pretrain": pre_comp, "finetune": fine_comp})


def transfer_traditional(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    """``transfer`` with ``traditional``'s augmentation in both stages: whether pretraining on synthetic images
    adds anything beyond flips, rotations and jitter of the real ones."""
    augment = tuple(opts.augmentations)
    pretrain, pre_comp = _stage(None, _scaled_draw(real, synthetic, opts, "transfer-traditional"),
                                "transfer-traditional-pretrain")
    finetune, fine_comp = _stage(real, None, "transfer-traditional-finetune")
    return TrainingPlan("transfer-traditional", [(pretrain, augment), (finetune, augment)],
                        {"pretrain": pre_comp, "finetune": fine_comp})


def balance(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions) -> TrainingPlan:
    counts = real.class_counts()
    top_up = [max(counts) - n for n in counts]
    drawn = _draw(_need_synthetic(synthetic, "balance"), top_up, np.random.default_rng(opts.seed), "balance")
    return _single("balance", real, drawn)


def ratio(real: ImageDataset, synthetic: ImageDataset | None, opts: ProtocolOptions, *, real_pct: int,
          synthetic_pct: int) -> TrainingPlan:
    """``real_pct``% of each class's real images and ``synthetic_pct``% of its real count in
    synthetic images. With real_pct + synthetic_pct = 100 the total stays the real training
    size and the class balance stays the real one, so only the real:synthetic share changes."""
    name = f"ratio-{real_pct}:{synthetic_pct}"
    counts = real.class_counts()
    n_real = _scaled(counts, real_pct / 100)
    if real_pct + synthetic_pct == 100:
        n_syn = [n - r for n, r in zip(counts, n_real)]  # the total of each class stays exactly the real one
    else:
        n_syn = _scaled(counts, synthetic_pct / 100)
    rng = np.random.default_rng(opts.seed)
    real_part = _draw(real, n_real, rng, name, what="real") if real_pct else None
    syn_part = _draw(_need_synthetic(synthetic, name), n_syn, rng, name) if synthetic_pct else None
    return _single(name, real_part, syn_part)


#: protocols that draw ``synthetic_ratio`` x the real count of each class from the synthetic pool
RATIO_SCALED = ("mix", "mix-traditional", "transfer", "transfer-traditional", "synthetic-only")

ProtocolFn = Callable[[ImageDataset, "ImageDataset | None", ProtocolOptions], TrainingPlan]

PROTOCOLS: dict[str, ProtocolFn] = {
    "baseline": baseline,
    "traditional": traditional,
    "mix": mix,
    "mix-traditional": mix_traditional,
    "transfer": transfer,
    "transfer-traditional": transfer_traditional,
    "synthetic-only": synthetic_only,
    "balance": balance,
}
_RATIO = re.compile(r"ratio-(\d+):(\d+)")


def _ratio_percentages(name: str) -> tuple[int, int] | None:
    m = _RATIO.fullmatch(name)
    if m is None:
        return None
    real_pct, syn_pct = int(m[1]), int(m[2])
    valid = syn_pct <= 100 and (real_pct + syn_pct == 100 or real_pct == 100)
    return (real_pct, syn_pct) if valid else None


def get_protocol(name: str) -> ProtocolFn:
    if name in PROTOCOLS:
        return PROTOCOLS[name]
    pct = _ratio_percentages(name)
    if pct is not None:
        return partial(ratio, real_pct=pct[0], synthetic_pct=pct[1])
    raise ValueError(f"unknown protocol {name!r}; choose from {sorted(PROTOCOLS)}, 'ratio-sweep' or 'ratio-R:S' "
                     "(R + S = 100 at fixed total, or R = 100 to add S% on top)")


def expand_protocols(names: list[str]) -> list[str]:
    """Replace ``ratio-sweep`` by its sub-protocols, drop repeats, check every name."""
    out: list[str] = []
    for name in names:
        for n in (RATIO_SWEEP if name == "ratio-sweep" else (name,)):
            get_protocol(n)
            if n not in out:
                out.append(n)
    return out


#: protocols that train in two stages (pretrain, then fine-tune), each up to the classifier's step budget
TWO_STAGE = ("transfer", "transfer-traditional")


def stage_count(name: str) -> int:
    """Training stages of a protocol: a two-stage protocol may spend twice the optimizer steps of a
    one-stage one, so an equal-compute comparison gives the one-stage side that many times the steps."""
    get_protocol(name)
    return 2 if name in TWO_STAGE else 1


def uses_synthetic(name: str) -> bool:
    """Whether a protocol trains on synthetic images (only then do realism filters matter)."""
    get_protocol(name)
    pct = _ratio_percentages(name)
    return pct[1] > 0 if pct is not None else name not in ("baseline", "traditional")


def build_plan(name: str, real: ImageDataset, synthetic: ImageDataset | None,
               opts: ProtocolOptions | None = None) -> TrainingPlan:
    if real.synthetic:
        raise DataError(f"protocol {name!r}: the real training split '{real.name}' is flagged synthetic")
    return get_protocol(name)(real, synthetic, opts or ProtocolOptions())
