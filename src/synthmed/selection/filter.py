"""Keep the synthetic images whose realism score passes (pcam-ddpm), and generate until enough pass.

``filter_synthetic`` scores a finished synthetic set. ``generate_until`` asks a generator for more
images, round after round and only for the classes still short, until every class has its requested
number of accepted images or its generation budget is spent; the real features and k-NN radii are
computed once and reused in every round. The loop itself, ``generate_until_accepted``, takes any
per-batch accept function: the confidence filter (``synthmed.selection.confidence``) uses it too.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable, Mapping, Sequence

import numpy as np

from synthmed.data.dataset import DataError, ImageDataset, concat
from synthmed.selection.realism import (
    DEFAULT_ROBUST_QUANTILE,
    class_knn_radii,
    class_realism_scores,
    real_knn_radii,
    realism_scores,
    score_summary,
    select,
)

MODES = ("class", "global")


class _RealReference:
    """Real features and their k-NN radii, computed once; scores any batch of synthetic images."""

    def __init__(self, real: ImageDataset, extractor, *, mode: str, k: int, robust_quantile: float | None,
                 progress: bool):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got '{mode}'")
        if real.synthetic:
            raise DataError(f"{real.name} is marked synthetic; realism is measured against real images only")
        self.real, self.extractor, self.mode, self.k = real, extractor, mode, k
        self.robust_quantile = robust_quantile
        self.progress = progress
        self.feats = np.asarray(extractor.extract(real, progress=progress), dtype=np.float64)
        if mode == "class":
            self.radii = class_knn_radii(self.feats, real.labels, k)
        else:
            self.radii = real_knn_radii(self.feats, k)

    def scores(self, synthetic: ImageDataset) -> np.ndarray:
        if list(synthetic.class_names) != list(self.real.class_names):
            raise DataError(f"class lists differ: real {self.real.class_names} vs synthetic {synthetic.class_names}")
        if len(synthetic) == 0:
            return np.zeros(0)
        fake = np.asarray(self.extractor.extract(synthetic, progress=self.progress), dtype=np.float64)
        if self.mode == "class":
            return class_realism_scores(self.feats, self.real.labels, fake, synthetic.labels, self.k,
                                        real_radii=self.radii, robust_quantile=self.robust_quantile)
        return realism_scores(self.feats, fake, self.k, real_radii=self.radii, robust_quantile=self.robust_quantile)

    def held_out_acceptance(self, held_out: ImageDataset, threshold: float) -> dict:
        """Acceptance of REAL images the reference has not seen (e.g. the validation split): the rate a
        generator indistinguishable from the real data would get. Without it an acceptance of 5% cannot
        be read: is the generator poor, or the filter strict? (With the robust reference, about half of
        held-out real images pass on BloodMNIST.)"""
        keep = select(self.scores(held_out), threshold)
        per_class = {}
        for i, c in enumerate(held_out.class_names):
            m = held_out.labels == i
            per_class[c] = float(keep[m].mean()) if m.any() else None
        return {"split": held_out.name, "n": len(held_out), "accepted": int(keep.sum()),
                "acceptance_rate": float(keep.mean()) if len(held_out) else None, "per_class": per_class}

    def settings(self, threshold: float) -> dict:
        return {
            "mode": self.mode,
            "threshold": threshold,
            "k": self.k,
            "robust_quantile": self.robust_quantile,
            "extractor": self.extractor.describe() if hasattr(self.extractor, "describe") else
            {"name": getattr(self.extractor, "name", type(self.extractor).__name__)},
            "real_fingerprint": self.real.fingerprint(),
            "num_real": len(self.real),
        }


def _empty_like(ds: ImageDataset, name: str) -> ImageDataset:
    return ImageDataset(ds.images[:0], ds.labels[:0], list(ds.class_names), name=name, synthetic=True)


def filter_synthetic(synthetic: ImageDataset, real: ImageDataset, extractor, *, mode: str = "class",
                     threshold: float = 1.0, k: int = 3, robust_quantile: float | None = DEFAULT_ROBUST_QUANTILE,
                     held_out: ImageDataset | None = None, progress: bool = False) -> tuple[ImageDataset, dict]:
    """Keep the synthetic images with realism score R >= ``threshold`` against ``real`` (the real
    training split the extractor was built on). ``mode="class"`` scores each image against the real
    images of its own label (also drops mislabelled images), ``"global"`` against all real images.

    Returns ``(kept, report)``; ``report["per_class"][name]`` has generated, kept and acceptance_rate.
    ``held_out``: real images not in ``real`` (e.g. the validation split), filtered the same way for
    ``report["real_val_acceptance"]`` (see :meth:`_RealReference.held_out_acceptance`).
    """
    ref = _RealReference(real, extractor, mode=mode, k=k, robust_quantile=robust_quantile, progress=progress)
    scores = ref.scores(synthetic)
    keep = select(scores, threshold)
    kept = synthetic.subset(np.flatnonzero(keep), name=f"{synthetic.name}-selected")
    kept.meta["selection"] = {"mode": mode, "threshold": threshold, "k": k, "robust_quantile": robust_quantile}
    report = {**ref.settings(threshold), **acceptance_report(synthetic, keep, scores)}
    if held_out is not None:
        report["real_val_acceptance"] = ref.held_out_acceptance(held_out, threshold)
    return kept, report


def held_out_acceptance(real: ImageDataset, held_out: ImageDataset, extractor, *, mode: str = "class",
                        threshold: float = 1.0, k: int = 3,
                        robust_quantile: float | None = DEFAULT_ROBUST_QUANTILE) -> dict:
    """The filter's acceptance of real ``held_out`` images on its own (``filter_synthetic`` and
    ``generate_until`` compute it with their reference when given ``held_out``).
    Returns ``{"split", "n", "accepted", "acceptance_rate", "per_class": {name: rate or None}}``."""
    ref = _RealReference(real, extractor, mode=mode, k=k, robust_quantile=robust_quantile, progress=False)
    return ref.held_out_acceptance(held_out, threshold)


def _targets(n_per_class, class_names: list[str]) -> np.ndarray:
    nc = len(class_names)
    if isinstance(n_per_class, Mapping):
        t = np.zeros(nc, dtype=np.int64)
        for key, n in n_per_class.items():
            t[class_names.index(key) if isinstance(key, str) else int(key)] = int(n)
    elif np.ndim(n_per_class) == 0:
        t = np.full(nc, int(n_per_class), dtype=np.int64)
    else:
        t = np.asarray(n_per_class, dtype=np.int64).reshape(-1)
        if len(t) != nc:
            raise ValueError(f"n_per_class has {len(t)} entries for {nc} classes {class_names}")
    if (t < 0).any():
        raise ValueError(f"n_per_class must be >= 0, got {t.tolist()}")
    return t


def _round_seed(seed: int, round_index: int) -> int:
    # independent, reproducible noise per round (seed + r would reuse round r of seed + 1)
    return int(np.random.SeedSequence([int(seed), int(round_index)]).generate_state(1)[0] & 0x7FFFFFFF)


def _sample(generator, counts: np.ndarray, seed: int, guidance: float | None, progress: bool) -> ImageDataset:
    kwargs: dict = {"seed": seed}
    params = inspect.signature(generator.sample).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if guidance is not None:
        kwargs["guidance"] = guidance
    if takes_any or "progress" in params:
        kwargs["progress"] = progress
    return generator.sample(counts.tolist(), **kwargs)


def acceptance_report(synthetic: ImageDataset, keep: np.ndarray, scores: np.ndarray) -> dict:
    """What every filter reports: generated / kept / acceptance rate and the score summary, overall and
    per class (``accepted`` = ``kept`` for a one-pass filter), and every image's score."""
    per_class = {}
    for i, c in enumerate(synthetic.class_names):
        m = synthetic.labels == i
        n = int(m.sum())
        per_class[c] = {"generated": n, "accepted": int(keep[m].sum()), "kept": int(keep[m].sum()),
                        "acceptance_rate": float(keep[m].mean()) if n else None, "scores": score_summary(scores[m])}
    return {"per_class": per_class, "generated": len(synthetic), "kept": int(keep.sum()),
            "acceptance_rate": float(keep.mean()) if len(synthetic) else None, "scores": score_summary(scores),
            "per_image_scores": scores}


def generate_until_accepted(generator, class_names: list[str], n_per_class: int | Sequence[int] | Mapping,
                            accept: Callable[[ImageDataset], tuple[np.ndarray, np.ndarray]], *,
                            batch_per_class: int | None = None, budget_factor: float = 10, max_rounds: int = 100,
                            guidance: float | None = None, seed: int = 0, template: ImageDataset | None = None,
                            what: str = "selection", hint: str = "loosen the filter",
                            progress: bool = False) -> tuple[ImageDataset, dict]:
    """The generate-until loop every filter shares: sample from ``generator`` until each class has
    ``n_per_class`` accepted images, or until ``budget_factor`` x its request has been generated for it.

    ``accept(batch) -> (passed, scores)``: a boolean mask and the score it was read from, one per
    image of the batch (the realism score R, a classifier's probability of the intended class, ...).
    Rounds sample only the classes still short, each round with its own seed derived from ``seed``.
    ``batch_per_class``: images per short class per round; None sizes each round from the acceptance
    rate seen so far (remaining / rate, with 20% margin), so easy classes finish in one or two rounds.
    ``template``: a set of the same image shape, for an empty result when nothing was generated.
    Returns ``(kept, report)``: kept holds exactly the requested number per class where reached (its
    meta: the generator's sampling provenance); ``report`` has per_class (requested, generated,
    accepted, kept, budget, acceptance_rate, shortfall), the totals, ``shortfall`` (class -> images
    missing), ``rounds`` and a summary of the scores. ``what``/``hint`` word the shortfall warning.
    """
    names = list(class_names)
    if list(getattr(generator, "class_names", names) or names) != names:
        raise DataError(f"generator classes {generator.class_names} != real classes {names}")
    target = _targets(n_per_class, names)
    budget = np.array([math.floor(budget_factor * t) for t in target], dtype=np.int64)
    generated = np.zeros_like(target)
    accepted = np.zeros_like(target)
    kept_parts: list[ImageDataset] = []
    kept_n = np.zeros_like(target)
    rounds, all_scores, gen_meta = [], [], {}
    for r in range(max_rounds):
        need = target - kept_n
        room = budget - generated
        active = (need > 0) & (room > 0)
        if not active.any():
            break
        if batch_per_class is not None:
            want = np.full_like(target, int(batch_per_class))
        else:
            # Laplace-smoothed acceptance so a class with no passes yet still gets a finite request
            rate = (accepted + 1) / (generated + 2)
            want = np.where(generated == 0, need, np.ceil(1.2 * need / rate)).astype(np.int64)
        counts = np.where(active, np.minimum(np.maximum(want, 1), room), 0)
        round_seed = _round_seed(seed, r)
        syn = _sample(generator, counts, round_seed, guidance, progress)
        template = syn
        gen_meta = gen_meta or {key: syn.meta[key] for key in ("generator", "train_fingerprint", "space", "sampler",
                                                                 "steps", "guidance", "train_class_counts",
                                                                 "train_steps", "generator_config") if key in syn.meta}
        passed, scores = accept(syn)
        passed = np.asarray(passed, dtype=bool)
        all_scores.append(np.asarray(scores, dtype=np.float64))
        round_info = {"round": r, "seed": round_seed, "requested": {}, "accepted": {}}
        for i, c in enumerate(names):
            m = syn.labels == i
            n_gen, n_pass = int(m.sum()), int(passed[m].sum())
            generated[i] += n_gen
            accepted[i] += n_pass
            if n_gen:
                round_info["requested"][c], round_info["accepted"][c] = n_gen, n_pass
            take = np.flatnonzero(m & passed)[: max(int(target[i] - kept_n[i]), 0)]
            if len(take):
                kept_parts.append(syn.subset(take))
                kept_n[i] += len(take)
        rounds.append(round_info)
    if kept_parts:
        kept = concat(kept_parts, name="synthetic-selected")
    elif template is not None:
        kept = _empty_like(template, "synthetic-selected")
    else:
        raise ValueError("nothing was requested (n_per_class is 0 for every class) and no template set was given")
    kept.class_names = names
    kept.synthetic = True
    kept.meta = dict(gen_meta)
    shortfall = {c: int(target[i] - kept_n[i]) for i, c in enumerate(names) if kept_n[i] < target[i]}
    if shortfall:
        warnings.warn(f"{what} fell short of the request after generating up to {budget_factor:g}x: "
                      f"{shortfall} images missing; {hint}, raise budget_factor, or improve the generator")
    per_class = {
        c: {"requested": int(target[i]), "generated": int(generated[i]), "accepted": int(accepted[i]),
            "kept": int(kept_n[i]), "budget": int(budget[i]),
            "acceptance_rate": float(accepted[i] / generated[i]) if generated[i] else None,
            "shortfall": int(target[i] - kept_n[i])}
        for i, c in enumerate(names)
    }
    scores = np.concatenate(all_scores) if all_scores else np.zeros(0)
    report = {
        "budget_factor": budget_factor,
        "seed": seed,
        "per_class": per_class,
        "generated": int(generated.sum()),
        "kept": int(kept_n.sum()),
        "acceptance_rate": float(accepted.sum() / generated.sum()) if generated.sum() else None,
        "reached": not shortfall,
        "shortfall": shortfall,
        "rounds": rounds,
        "scores": score_summary(scores),
    }
    return kept, report


def generate_until(generator, real: ImageDataset, extractor, n_per_class: int | Sequence[int] | Mapping, *,
                   mode: str = "class", threshold: float = 1.0, k: int = 3,
                   robust_quantile: float | None = DEFAULT_ROBUST_QUANTILE, batch_per_class: int | None = None,
                   budget_factor: float = 10, max_rounds: int = 100, guidance: float | None = None, seed: int = 0,
                   held_out: ImageDataset | None = None, progress: bool = False) -> tuple[ImageDataset, dict]:
    """Sample from ``generator`` until each class has ``n_per_class`` images with R >= ``threshold``,
    or until ``budget_factor`` x its request has been generated for it (the loop of
    :func:`generate_until_accepted`; the real features and k-NN radii are computed once).

    Returns ``(kept, report)``: kept holds exactly the requested number per class where reached;
    ``report["shortfall"]`` maps each class that fell short to how many images it lacks.
    ``held_out``: as in :func:`filter_synthetic`.
    """
    ref = _RealReference(real, extractor, mode=mode, k=k, robust_quantile=robust_quantile, progress=progress)

    def accept(syn: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
        scores = ref.scores(syn)
        return select(scores, threshold), scores

    kept, loop = generate_until_accepted(generator, list(real.class_names), n_per_class, accept,
                                         batch_per_class=batch_per_class, budget_factor=budget_factor,
                                         max_rounds=max_rounds, guidance=guidance, seed=seed, template=real,
                                         what="realism selection", hint="lower the threshold", progress=progress)
    kept.meta["selection"] = {"mode": mode, "threshold": threshold, "k": k, "robust_quantile": robust_quantile,
                              "seed": seed}
    report = {**ref.settings(threshold), **loop}
    if held_out is not None:
        report["real_val_acceptance"] = ref.held_out_acceptance(held_out, threshold)
    return kept, report


__all__ = ["MODES", "filter_synthetic", "generate_until", "generate_until_accepted", "held_out_acceptance"]
