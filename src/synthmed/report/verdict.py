"""What a run found, in one place: the verdict the report leads with and the warnings under it.

Both are computed from the raw run outputs (``metrics.json`` and ``data.json`` as
:func:`synthmed.pipeline.run` writes them), with no HTML involved, so they can be tested on
constructed dicts and re-derived by ``synthmed report`` for an older run folder.

The verdict answers four questions, always with the numbers behind the answer:

1. **Does synthetic data help here?** The quick downstream check's paired difference
   (real + synthetic minus real only, per seed) with its 95% t interval over seeds:
   *helps* when the interval lies above 0, *hurts* when below, *inconclusive* otherwise.
2. **Are the synthetic images class-recognisable?** Conditional accuracy overall and of the
   worst class, flagged when at or below chance.
3. **Near-copies of training images?** The memorisation audit's flagged count.
4. **What is too small to judge?** Classes with few training/test images, few seeds.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from synthmed.downstream.stats import paired_difference
from synthmed.metrics.diversity import diversity_warning
from synthmed.metrics.reconstruction import reconstruction_warning

# Below these, a number still gets computed but the report says how little it means.
MIN_TRAIN_PER_CLASS = 50
MIN_TEST_PER_CLASS = 30
#: fewer seeds than this: the paired interval is wide and the sign of a small difference unstable
MIN_SEEDS = 5
#: a realism filter that passes fewer real validation images than this cannot judge synthetic ones
MIN_REAL_ACCEPTANCE = 0.10
#: conditional accuracy per class is a proportion; below this many synthetic images it is coarse
MIN_SYNTHETIC_PER_CLASS = 30
#: the metric the downstream verdict is read on, in order of preference
VERDICT_METRICS = ("balanced_accuracy", "accuracy", "f1_macro")
CONFIDENCE = 0.95


def _num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def _get(d: Any, *keys, default=None):
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return default
        d = d[k]
    return d


# =====================================================================================
# downstream: helps / hurts / inconclusive
# =====================================================================================
def interval(entry: Mapping | None) -> tuple[float | None, float | None, int]:
    """(ci_low, ci_high, n) of a paired-difference entry; computed from its per-seed ``values``
    (95% t interval) when the entry predates stored intervals."""
    if not isinstance(entry, Mapping):
        return None, None, 0
    values = [float(v) for v in entry.get("values") or [] if _num(v)]
    n = len(values) or int(entry.get("n") or 0)
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if _num(lo) and _num(hi):
        return float(lo), float(hi), n
    if len(values) >= 2:
        d = paired_difference(values, [0.0] * len(values), confidence=CONFIDENCE)
        return d["ci_low"], d["ci_high"], n
    return None, None, n


def classify_difference(mean: float | None, ci_low: float | None, ci_high: float | None) -> str:
    """helps (interval above 0), hurts (below 0), inconclusive (spans 0 or no interval)."""
    if not _num(mean) or not _num(ci_low) or not _num(ci_high):
        return "inconclusive"
    if ci_low > 0:
        return "helps"
    if ci_high < 0:
        return "hurts"
    return "inconclusive"


def _fmt_ci(lo, hi) -> str:
    return f"{CONFIDENCE:.0%} CI {lo:+.3f} to {hi:+.3f}"


def downstream_finding(difference: Mapping, *, seeds: Sequence | None = None, n_test: int | None = None,
                       per_class: Mapping | None = None, train_counts: Mapping | None = None,
                       test_split: str = "real test split") -> dict:
    """The downstream verdict from the paired differences per metric (``{metric: {mean, std,
    values, ci_low, ci_high}}``), with the smallest training class's recall change next to it."""
    metric = next((m for m in VERDICT_METRICS if isinstance(difference.get(m), Mapping)
                   and _num(difference[m].get("mean"))), None)
    if metric is None:
        return {"status": "not run", "text": "No paired difference between the arms was recorded."}
    d = difference[metric]
    mean = float(d["mean"])
    lo, hi, n = interval(d)
    n_seeds = len(seeds) if isinstance(seeds, (list, tuple)) and seeds else n
    status = classify_difference(mean, lo, hi)
    name = metric.replace("_", " ")
    where = f"{test_split}, n={int(n_test):,}" if _num(n_test) else test_split
    if lo is None:
        numbers = (f"{name} changed by {mean:+.3f} with a single seed, so there is no interval ({where})")
        reason = "one seed cannot separate an effect from run-to-run noise"
    else:
        numbers = (f"{name} changed by {mean:+.3f} ({_fmt_ci(lo, hi)}, paired over {n_seeds} seeds; {where})")
        reason = {"helps": "the interval lies above 0", "hurts": "the interval lies below 0",
                  "inconclusive": "the interval spans 0"}[status]
    text = f"Adding synthetic images: {numbers}; {reason}."
    out = {"status": status, "metric": metric, "mean": mean, "ci_low": lo, "ci_high": hi,
           "confidence": CONFIDENCE, "n_seeds": n_seeds, "n_test": int(n_test) if _num(n_test) else None,
           "test_split": test_split}
    minority = _minority_recall(per_class, train_counts)
    if minority:
        out["minority"] = minority
        m = minority
        change = (f"{m['real']:.3f} → {m['augmented']:.3f} ({m['mean']:+.3f}"
                  + (f", {_fmt_ci(m['ci_low'], m['ci_high'])})" if m["ci_low"] is not None else ")"))
        text += f" Recall of the smallest training class '{m['class']}' ({m['n_train']:,} images): {change}."
    out["text"] = text
    return out


def _minority_recall(per_class: Mapping | None, train_counts: Mapping | None) -> dict | None:
    if not isinstance(per_class, Mapping) or not isinstance(train_counts, Mapping) or not train_counts:
        return None
    counts = {c: n for c, n in train_counts.items() if _num(n) and c in per_class}
    if len(set(counts.values())) < 2:  # balanced data: no minority class to single out
        return None
    c = min(counts, key=counts.get)
    rec = _get(per_class, c, "recall") or {}
    diff = rec.get("difference") or {}
    real, aug = _get(rec, "real", "mean"), _get(rec, "augmented", "mean")
    if not (_num(real) and _num(aug) and _num(diff.get("mean"))):
        return None
    lo, hi, _ = interval(diff)
    return {"class": c, "n_train": int(counts[c]), "real": float(real), "augmented": float(aug),
            "mean": float(diff["mean"]), "ci_low": lo, "ci_high": hi}


# =====================================================================================
# the other three questions
# =====================================================================================
def recognisability_finding(ca: Mapping) -> dict:
    """Conditional accuracy overall and of the worst class, flagged at or below chance."""
    overall = _get(ca, "accuracy", "accuracy")
    if overall is None and _num(ca.get("overall")):
        overall = ca["overall"]
    chance = ca.get("chance")
    per_class = {c: e for c, e in (ca.get("per_class") or {}).items()
                 if isinstance(e, Mapping) and _num(e.get("accuracy"))}
    if not _num(overall) or not _num(chance):
        return {"status": "not run", "text": "Conditional accuracy was not computed."}
    real_overall = _get(ca, "real_test", "accuracy")
    scored_by = ca.get("scored_by") if isinstance(ca.get("scored_by"), Mapping) else {}
    who = "The judge (trained on real training images only)"
    if scored_by.get("role") == "independent grader":
        who = (f"An independent judge ({scored_by.get('arch')} seed {scored_by.get('seed')}, trained on real training "
               "images only; not the classifier that selected the images)")
    text = (f"{who} labels {overall:.3f} of synthetic images as the "
            f"class they were generated for (chance {chance:.3f}"
            + (f"; it scores {real_overall:.3f} on real test images" if _num(real_overall) else "") + ").")
    out = {"status": "recognisable", "overall": float(overall), "chance": float(chance),
           "real_test_accuracy": float(real_overall) if _num(real_overall) else None}
    if per_class:
        worst = min(per_class, key=lambda c: per_class[c]["accuracy"])
        w = per_class[worst]
        at_chance = [c for c, e in per_class.items() if e["accuracy"] <= chance]
        out.update(worst_class=worst, worst_accuracy=float(w["accuracy"]), at_or_below_chance=at_chance,
                   worst_real_accuracy=w.get("real_accuracy"))
        real_w = f"; real test images of this class: {w['real_accuracy']:.3f}" if _num(w.get("real_accuracy")) else ""
        if at_chance:
            out["status"] = "at or below chance"
            text += (f" Worst class '{worst}': {w['accuracy']:.3f}{real_w}; AT OR BELOW CHANCE"
                     + (f" (also {', '.join(repr(c) for c in at_chance if c != worst)})" if len(at_chance) > 1 else "")
                     + ": the generator does not draw what makes the class recognisable.")
        else:
            text += f" Worst class '{worst}': {w['accuracy']:.3f}{real_w}."
    elif overall <= chance:
        out["status"] = "at or below chance"
        text += " That is AT OR BELOW CHANCE."
    out["text"] = text
    return out


def memorisation_finding(audit: Mapping) -> dict:
    o = audit.get("overall") or {}
    n, flagged = o.get("n"), o.get("n_flagged")
    if not _num(n) or not _num(flagged):
        return {"status": "not run", "text": "The memorisation audit did not run."}
    n, flagged = int(n), int(flagged)
    classes = {c: int(e["n_flagged"]) for c, e in (audit.get("per_class") or {}).items()
               if isinstance(e, Mapping) and _num(e.get("n_flagged")) and e["n_flagged"] > 0}
    baseline = [s.get("baseline_fraction") for s in (audit.get("spaces") or {}).values()
                if isinstance(s, Mapping) and _num(s.get("baseline_fraction"))]
    ref = (f" (reference: {max(baseline):.3f} of training images are that close to another training image)"
           if baseline else "")
    if flagged:
        by_class = ", ".join(f"'{c}' {k}" for c, k in sorted(classes.items(), key=lambda kv: -kv[1]))
        text = (f"{flagged} of {n} synthetic images ({flagged / max(n, 1):.1%}) are near-copies of a training "
                f"image{ref}" + (f"; by class: {by_class}" if by_class else "") + ".")
        status = "found"
    else:
        text = f"None of {n} synthetic images is a near-copy of a training image{ref}."
        status = "none found"
    return {"status": status, "n": n, "n_flagged": flagged, "per_class": classes, "text": text}


def too_small(metrics: Mapping, data: Mapping | None = None) -> list[str]:
    """What this run is too small to judge, one sentence each."""
    items = []
    data = data or {}
    for split, least, what in (("train", MIN_TRAIN_PER_CLASS, "training"), ("test", MIN_TEST_PER_CLASS, "test")):
        classes = _get(data, split, "classes") or {}
        small = {c: n for c, n in classes.items() if _num(n) and n < least}
        if small:
            listed = ", ".join(f"'{c}' ({int(n)})" for c, n in small.items())
            consequence = ("the generator may memorise it" if split == "train"
                           else "its per-class scores move by " + ", ".join(
                               f"{1 / max(int(n), 1):.2f}" for n in small.values()) + " per image")
            items.append(f"fewer than {least} {what} images: {listed}; {consequence}")
    seeds = _get(metrics, "downstream", "seeds")
    if isinstance(seeds, (list, tuple)) and len(seeds) < MIN_SEEDS:
        items.append(f"{len(seeds)} downstream seed{'s' if len(seeds) != 1 else ''} (fewer than {MIN_SEEDS}): the "
                     "paired interval is wide and the sign of a small difference can flip between reruns")
    per_class = _get(metrics, "conditional_accuracy", "per_class") or {}
    few = {c: e["n"] for c, e in per_class.items() if isinstance(e, Mapping) and _num(e.get("n"))
           and e["n"] < MIN_SYNTHETIC_PER_CLASS}
    if few:
        items.append("fewer than " f"{MIN_SYNTHETIC_PER_CLASS} synthetic images: "
                     + ", ".join(f"'{c}' ({int(n)})" for c, n in few.items())
                     + "; their conditional accuracy is coarse")
    return items


def run_verdict(metrics: Mapping, data: Mapping | None = None) -> dict:
    """The four answers the report leads with (see the module docstring); each has a
    ``status`` and a ``text`` with the numbers."""
    metrics = metrics or {}
    down = metrics.get("downstream")
    if isinstance(down, Mapping) and isinstance(down.get("difference"), Mapping):
        downstream = downstream_finding(down["difference"], seeds=down.get("seeds"), n_test=down.get("n_test"),
                                        per_class=down.get("per_class"),
                                        train_counts=_get(down, "composition", "real", "real"))
    else:
        downstream = {"status": "not run", "text": "The downstream check did not run."}
    ca = metrics.get("conditional_accuracy")
    recog = recognisability_finding(ca) if isinstance(ca, Mapping) else {
        "status": "not run", "text": "Conditional accuracy was not computed."}
    audit = metrics.get("memorisation")
    mem = memorisation_finding(audit) if isinstance(audit, Mapping) else {
        "status": "not run", "text": "The memorisation audit did not run."}
    small = too_small(metrics, data)
    return {"downstream": downstream, "recognisable": recog, "near_copies": mem,
            "too_small": {"status": "ok" if not small else f"{len(small)} item{'s' if len(small) != 1 else ''}",
                          "items": small,
                          "text": "; ".join(small) if small else "Nothing flagged as too small."}}


# =====================================================================================
# warnings
# =====================================================================================
def loss_still_falling(curve: Sequence, *, n_se: float = 2.0, min_relative_drop: float = 0.02) -> dict | None:
    """Is the training loss still falling over the last 20% of steps?

    Compares the mean log-loss over the 10% of logged points just before the last 20% with the
    mean over the final 10%. Diffusion losses are noisy (each step draws new noise levels) and
    spiky, so each window is first clipped to its median ± 3 robust standard deviations (MAD),
    and the drop must exceed ``n_se`` standard errors of the difference (Welch) *and*
    ``min_relative_drop``. Working in log space makes the drop relative and tames the tails.
    Returns the comparison when the loss is still falling, None otherwise (also when the curve
    has fewer than 10 logged points)."""
    pts = [(float(p[0]), float(p[1])) for p in curve or [] if p is not None and len(p) >= 2
           and _num(p[1]) and p[1] > 0]
    n = len(pts)
    if n < 10:
        return None
    w = max(2, n // 10)
    tail = max(w, n // 5)  # the two windows never overlap
    before = pts[n - tail - w: n - tail]
    final = pts[n - w:]

    def clipped_logs(window):
        y = np.log([v for _, v in window])
        med = float(np.median(y))
        mad = 1.4826 * float(np.median(np.abs(y - med)))
        return np.clip(y, med - 3 * mad, med + 3 * mad) if mad > 0 else y

    a, b = clipped_logs(before), clipped_logs(final)
    drop = float(a.mean() - b.mean())
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    # with a handful of points per window the SE itself is uncertain: scale n_se by the ratio
    # of the Welch t quantile to the normal one, so a flat curve warns ~2% of the time, not ~5%
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if va + vb > 0 else math.inf
    p = stats.norm.cdf(n_se)
    threshold = n_se * float(stats.t.ppf(p, df) / stats.norm.ppf(p)) if math.isfinite(df) else n_se
    relative = 1 - math.exp(-drop)
    if drop <= threshold * se or relative < min_relative_drop:
        return None
    return {"steps_before": [before[0][0], before[-1][0]], "steps_final": [final[0][0], final[-1][0]],
            "loss_before": float(np.exp(a.mean())), "loss_final": float(np.exp(b.mean())),
            "relative_drop": relative, "standard_errors": drop / se if se > 0 else math.inf}


def run_warnings(metrics: Mapping, data: Mapping | None = None) -> list[str]:
    """Warnings derived from the run's numbers: a class at or below chance, an undertrained
    generator, a single downstream seed, a realism filter that rejects most real images, a class whose
    synthetic images collapsed to few (the mode-collapse guard, synthmed.metrics.diversity)."""
    metrics = metrics or {}
    out = []
    adversarial_kind = bool(_get(metrics, "generator", "adversarial"))
    ca = metrics.get("conditional_accuracy")
    if isinstance(ca, Mapping) and _num(ca.get("chance")):
        chance = float(ca["chance"])
        for c, e in (ca.get("per_class") or {}).items():
            if isinstance(e, Mapping) and _num(e.get("accuracy")) and e["accuracy"] <= chance:
                out.append(f"class '{c}': conditional accuracy {e['accuracy']:.3f} is at or below chance "
                           f"({chance:.3f}): the judge does not recognise its synthetic images as '{c}'; train the "
                           + ("generator longer (generator.train_kimg)" if adversarial_kind else
                              "generator longer (generator.train_steps) or raise generator.guidance"))
    g = metrics.get("generator")
    # a GAN's losses do not fall as it learns (the two networks keep each other in balance): not a sign
    adversarial = isinstance(g, Mapping) and bool(g.get("adversarial"))
    falling = loss_still_falling(g.get("loss_curve")) if isinstance(g, Mapping) and not adversarial else None
    if falling:
        f = falling
        out.append(f"the generator looks undertrained: its loss was still falling over the last 20% of training "
                   f"(mean {f['loss_before']:.4g} at steps {f['steps_before'][0]:.0f}-{f['steps_before'][1]:.0f}, "
                   f"{f['loss_final']:.4g} at steps {f['steps_final'][0]:.0f}-{f['steps_final'][1]:.0f}: "
                   f"-{f['relative_drop']:.1%}, {f['standard_errors']:.1f} standard errors); raise "
                   f"generator.train_steps (now {g.get('train_steps')})")
    seeds = _get(metrics, "downstream", "seeds")
    if isinstance(seeds, (list, tuple)) and len(seeds) == 1:
        out.append(f"the downstream check ran with a single seed (downstream.seeds = {list(seeds)}): there is no "
                   "interval and the sign of the difference can flip between runs; use at least "
                   f"{MIN_SEEDS} seeds, e.g. --set downstream.seeds=[0,1,2,3,4]")
    sel = metrics.get("selection")
    ref = _get(sel, "real_val_acceptance")
    if isinstance(ref, Mapping):
        low = {}
        if _num(ref.get("acceptance_rate")) and ref["acceptance_rate"] < MIN_REAL_ACCEPTANCE:
            low["all classes"] = ref["acceptance_rate"]
        for c, r in (ref.get("per_class") or {}).items():
            if _num(r) and r < MIN_REAL_ACCEPTANCE:
                low[f"class '{c}'"] = r
        if low and sel.get("mode") == "confidence":
            listed = ", ".join(f"{k} {v:.1%}" for k, v in low.items())
            out.append(f"the confidence filter (tau {sel.get('tau')}) passes fewer than {MIN_REAL_ACCEPTANCE:.0%} of "
                       f"real validation images ({listed}): the judge is rarely that sure even of real images, so its "
                       "acceptance of synthetic ones says little; lower select.tau")
        elif low:
            listed = ", ".join(f"{k} {v:.1%}" for k, v in low.items())
            out.append(f"the {sel.get('mode', '')} realism filter (threshold {sel.get('threshold')}) passes fewer "
                       f"than {MIN_REAL_ACCEPTANCE:.0%} of real validation images ({listed}): it rejects real images "
                       "too, so its acceptance of synthetic ones says little; lower select.threshold or use "
                       "select.mode global")
    rec = reconstruction_warning(_get(metrics, "generator", "autoencoder", "reconstruction_judge"))
    if rec:
        out.append(rec)
    collapse = diversity_warning(metrics.get("diversity") if isinstance(metrics.get("diversity"), Mapping) else None)
    if collapse:
        out.append(collapse)
    return out


__all__ = ["run_verdict", "run_warnings", "loss_still_falling", "downstream_finding", "classify_difference",
           "recognisability_finding", "memorisation_finding", "too_small", "interval"]
