"""Captions from label masks, as renal-ldm builds them (section 4.1.4 of the thesis).

For every mask class present in an image, its prevalence is the share of the image's pixels
that belong to it (class pixels / all pixels, background included: the thesis counts "how many
pixels are of that class, and divid[es] by the total number of pixels", over the whole patch).
The prevalence gives a level:

    prevalence <  low_below (0.2)              -> low
    low_below <= prevalence <= high_above (0.4) -> medium   (0.2 and 0.4 themselves are medium)
    prevalence >  high_above                   -> high

("less than 20% ... low, those between 20% and 40% as medium, and anything above 40% as high").
The caption is a fixed opening sentence followed by one sentence per present class, in class
order; a class with fewer than ``min_pixels`` pixels (default 1: "do not occur anywhere") gets
no sentence. The sentences are renal-ldm's three, one per level ("The image shows a low amount
of X." / "The prevalence of X is medium." / "There is a lot of X visible in the image."), and
everything (opening, names, sentences, thresholds) is configurable (``captions:`` in the config).

:func:`parse_caption` reads a caption built with the same settings back into levels per class,
which is how caption accuracy compares a generating caption with the one rebuilt from a
segmentation of the generated image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from synthmed.config import CaptionConfig

from .dataset import DataError, ImageDataset

LEVELS = ("low", "medium", "high")


@dataclass(frozen=True)
class CaptionRules:
    """What a caption says and how; built from :class:`synthmed.config.CaptionConfig`."""

    class_names: tuple[str, ...]  # names of mask values 1..M as the sentences say them
    # defaults are the config's (one place): CaptionConfig's class attributes hold them
    opening: str = CaptionConfig.opening
    low_sentence: str = CaptionConfig.low_sentence
    medium_sentence: str = CaptionConfig.medium_sentence
    high_sentence: str = CaptionConfig.high_sentence
    low_below: float = CaptionConfig.low_below
    high_above: float = CaptionConfig.high_above
    min_pixels: int = CaptionConfig.min_pixels

    @staticmethod
    def from_config(cfg, mask_class_names: Sequence[str]) -> "CaptionRules":
        """Rules of a ``captions:`` config for data whose masks name ``mask_class_names``."""
        names = list(cfg.class_names) if cfg.class_names is not None else list(mask_class_names)
        if len(names) != len(mask_class_names):
            raise DataError(f"captions.class_names has {len(names)} names but the masks have {len(mask_class_names)} "
                            f"classes {list(mask_class_names)}; give one name per mask class, in class order")
        return CaptionRules(tuple(names), cfg.opening, cfg.low_sentence, cfg.medium_sentence, cfg.high_sentence,
                            cfg.low_below, cfg.high_above, cfg.min_pixels)

    def sentence(self, level: str, name: str) -> str:
        template = {"low": self.low_sentence, "medium": self.medium_sentence, "high": self.high_sentence}[level]
        return template.format(name=name, level=level)


def prevalence(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of all pixels that each mask class 1..num_classes covers, shape (num_classes,)."""
    counts = np.bincount(np.asarray(mask).ravel(), minlength=num_classes + 1)
    if len(counts) > num_classes + 1:
        raise DataError(f"mask holds class id {len(counts) - 1} but only {num_classes} mask classes are named")
    return counts[1:] / max(int(np.asarray(mask).size), 1)


def level_of(p: float, low_below: float = 0.2, high_above: float = 0.4) -> str:
    """low below ``low_below``, high above ``high_above``, medium from one to the other (both included)."""
    if p < low_below:
        return "low"
    return "high" if p > high_above else "medium"


def mask_levels(mask: np.ndarray, rules: CaptionRules) -> list[str | None]:
    """Level of each mask class (None: not present) in one label mask."""
    n = len(rules.class_names)
    counts = np.bincount(np.asarray(mask).ravel(), minlength=n + 1)
    if len(counts) > n + 1:
        raise DataError(f"mask holds class id {len(counts) - 1} but the caption rules name only {n} classes")
    total = max(int(np.asarray(mask).size), 1)
    return [level_of(c / total, rules.low_below, rules.high_above) if c >= rules.min_pixels else None
            for c in counts[1:]]


def caption_from_levels(levels: Sequence[str | None], rules: CaptionRules) -> str:
    """Opening sentence, then one sentence per present class, in class order, joined by spaces."""
    parts = [rules.opening] if rules.opening else []
    parts += [rules.sentence(lv, name) for lv, name in zip(levels, rules.class_names) if lv is not None]
    return " ".join(parts)


def caption_for_mask(mask: np.ndarray, rules: CaptionRules) -> str:
    return caption_from_levels(mask_levels(mask, rules), rules)


def parse_caption(caption: str, rules: CaptionRules) -> list[str | None]:
    """Level per class that a caption built with ``rules`` states (None: the class is not mentioned).

    Exact matching of the rules' own sentences: a caption from other rules, or edited by hand, is
    a DataError naming the part that does not parse, not a guess."""
    rest = caption.strip()
    if rules.opening and rest.startswith(rules.opening):
        rest = rest[len(rules.opening):].strip()
    levels: list[str | None] = [None] * len(rules.class_names)
    # longest sentences first, so a class whose name ends another's ("Glomeruli" in "Sclerotic Glomeruli")
    # is not matched inside the longer one
    candidates = sorted(((rules.sentence(lv, name), k, lv) for k, name in enumerate(rules.class_names)
                         for lv in LEVELS), key=lambda c: -len(c[0]))
    while rest:
        for text, k, lv in candidates:
            if rest.startswith(text):
                levels[k] = lv
                rest = rest[len(text):].strip()
                break
        else:
            raise DataError(f"caption part {rest[:60]!r} is not one of the caption rules' sentences; captions are "
                            "compared only when built with the same captions: settings")
    return levels


def add_captions(ds: ImageDataset, rules: CaptionRules) -> ImageDataset:
    """A copy of ``ds`` whose ``captions`` are built from its masks."""
    if ds.masks is None:
        raise DataError(f"{ds.name}: captions from masks need masks; give the data a mask_path column (csv:) or "
                        "set data.masks.embryo: true for the embryo set")
    if len(rules.class_names) != len(ds.mask_class_names):
        raise DataError(f"{ds.name}: caption rules name {len(rules.class_names)} classes but the masks have "
                        f"{len(ds.mask_class_names)} {ds.mask_class_names}; set captions.class_names to match")
    out = ds.subset(np.arange(len(ds)), name=ds.name)
    out.captions = [caption_for_mask(m, rules) for m in ds.masks]
    out.meta["captions"] = {"rules": "renal-ldm prevalence levels", "low_below": rules.low_below,
                            "high_above": rules.high_above, "min_pixels": rules.min_pixels}
    return out
