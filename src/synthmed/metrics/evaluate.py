"""One call that evaluates a synthetic set against a real one: every metric, in total and per
class, with subsampling intervals, small-sample warnings and the provenance needed to trust or
reproduce the numbers. Outputs: a result dict (metrics.json), a flat CSV and a terminal table.

Features are extracted once per set; every feature metric (FID, KID, precision / recall / F1,
density / coverage) reads the same arrays, and the per-class rows are slices of them.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import synthmed
from synthmed.data.dataset import ImageDataset
from synthmed.metrics.bootstrap import DEFAULT_FRACTION, subsample_ci, subsampling_method
from synthmed.metrics.prdc import DEFAULT_K, prdc

DEFAULT_METRICS = ("fid", "kid", "precision", "recall", "f1", "density", "coverage", "ssim")
FEATURE_METRICS = ("fid", "kid", "precision", "recall", "f1", "density", "coverage")
PRDC_METRICS = ("precision", "recall", "f1", "density", "coverage")
IMAGE_METRICS = ("ssim", "lpips")
KNOWN_METRICS = FEATURE_METRICS + IMAGE_METRICS
DEFAULT_N_BOOT = 100
DEFAULT_ALPHA = 0.05
#: below this many images on either side a class's numbers are reported but flagged
MIN_IMAGES_PER_CLASS = 10
KID_SUBSET_SIZE = 1000
KID_N_SUBSETS = 100
#: subsets per subsample replicate: the replicates carry the resampling noise, so fewer subsets
#: each keep the intervals affordable (it adds a little subset noise: slightly wider interval)
KID_N_SUBSETS_PER_REPLICATE = 10
#: share of each set one interval replicate keeps (subsampling without replacement)
CI_FRACTION = DEFAULT_FRACTION
#: FID's 1/N bias correction is reported only when both half-samples hold at least this many
#: images per feature dimension: below it the bias is no longer linear in 1/N (measured on
#: Gaussians: 512 vs 256 images in 64-d corrected to within 0.5 standard errors, 256 vs 128 not)
BIAS_CORRECTION_MIN_PER_DIM = 2
DEFAULT_PAIRING = "nearest"
TOTAL = "total"
CSV_NAME = "metrics.csv"
JSON_NAME = "metrics.json"
BOOTSTRAP_POLICY = (
    f"subsampling without replacement: each replicate keeps {CI_FRACTION:g} of the real and of the synthetic"
    f" images and recomputes the metric; interval value +/- z * se, se = s * sd(replicates), s = sqrt(f / (1 - f))"
    f" = {(CI_FRACTION / (1 - CI_FRACTION)) ** 0.5:g} (finite-population correction: the delete-d jackknife"
    " standard error), so it holds the value and targets its expectation at these image counts (KID: the"
    " population value, its estimator is unbiased); fid.bias_corrected removes FID's 1/N bias to target the"
    " population distance"
)
CI_TARGETS = {
    "fid": "expected FID at these image counts (FID is biased upwards by ~1/N; bias_corrected targets the "
           "population distance)",
    "kid": "population KID (unbiased estimator)",
    **{m: "expected value at these image counts (k-NN radii depend on N)" for m in PRDC_METRICS},
}


def _fid_value(a: np.ndarray, b: np.ndarray) -> float:
    # through the images when they are fewer than the dimensions: subsample replicates of a small
    # class in a 2048-d space cost an n x n SVD instead of two 2048 x 2048 eigenproblems each
    from synthmed.metrics.fid import frechet_distance_from_features

    return frechet_distance_from_features(a, b)


def _metric_entry(value, ci: dict | None = None, **extra) -> dict:
    entry = {"value": None if value is None else float(value), "ci_low": None, "ci_high": None}
    if ci is not None:
        entry.update(ci_low=ci["ci_low"], ci_high=ci["ci_high"], std=ci["std"], n_boot=ci["n_boot"])
        for key in ("ci_method", "m_real", "m_synthetic"):
            if key in ci:
                entry[key] = ci[key]
        if ci.get("n_failed"):
            entry["n_boot_failed"] = ci["n_failed"]
    entry.update(extra)
    return entry


def _feature_row(real_f: np.ndarray, fake_f: np.ndarray, metrics: tuple, *, k: int, n_boot: int, alpha: float,
                 seed: int) -> tuple[dict, list[str]]:
    """Feature metrics of one (real, synthetic) pair of feature arrays, and the warnings they raise."""
    n_r, n_s, dim = len(real_f), len(fake_f), real_f.shape[1]
    out, warnings = {}, []
    boot = n_boot > 0

    def interval(fn, value, **options):
        return subsample_ci(fn, real_f, fake_f, n_boot, alpha, seed, fraction=CI_FRACTION, point_estimate=value,
                            **options)

    if "fid" in metrics:
        if n_r < 2 or n_s < 2:
            out["fid"] = _metric_entry(None)
            warnings.append(f"FID needs at least 2 images on each side ({n_r} real, {n_s} synthetic)")
        else:
            value = _fid_value(real_f, fake_f)
            ci, extra = None, {}
            if boot:
                ci = interval(_fid_value, value, bias_correction=True, lower_bound=0.0)
                extra["ci_target"] = CI_TARGETS["fid"]
                # the 1/N extrapolation holds only with enough images per dimension in every half-sample
                half = min(ci["m_real"], ci["m_synthetic"])
                if half >= BIAS_CORRECTION_MIN_PER_DIM * dim:
                    extra["bias_corrected"] = {**ci["bias_corrected"], "target": "population Fréchet distance "
                                               "(1/N bias removed by extrapolating from the half-samples)"}
                else:
                    extra["bias_corrected"] = {
                        "value": None, "ci_low": None, "ci_high": None,
                        "reason": f"needs {BIAS_CORRECTION_MIN_PER_DIM} x {dim} = {BIAS_CORRECTION_MIN_PER_DIM * dim} "
                                  f"images in each subsample, has {half}: the bias is not linear in 1/N there"}
            out["fid"] = _metric_entry(value, ci, **extra)
            if min(n_r, n_s) <= dim:
                warnings.append(f"FID with fewer samples than feature dimensions ({n_r} real, {n_s} synthetic, "
                                f"{dim}-d features): singular covariance, biased upwards; compare only at equal "
                                f"counts or prefer KID")

    if "kid" in metrics:
        if n_r < 2 or n_s < 2:
            out["kid"] = _metric_entry(None)
            warnings.append(f"KID needs at least 2 images on each side ({n_r} real, {n_s} synthetic)")
        else:
            from synthmed.metrics.kid import kid

            res = kid(real_f, fake_f, subset_size=KID_SUBSET_SIZE, n_subsets=KID_N_SUBSETS, seed=seed)
            ci = None
            if boot:
                def kid_mean(a, b):
                    return kid(a, b, subset_size=KID_SUBSET_SIZE, n_subsets=KID_N_SUBSETS_PER_REPLICATE,
                               seed=seed)["mean"]
                # the unbiased MMD^2 estimator's expectation does not depend on the set size, so the
                # interval targets the population KID
                ci = interval(kid_mean, res["mean"])
            out["kid"] = _metric_entry(res["mean"], ci, subset_std=res["std"], subset_size=res["subset_size"],
                                       n_subsets=res["n_subsets"], **({"ci_target": CI_TARGETS["kid"]} if ci else {}))
            warnings += [f"KID: {w}" for w in res.get("warnings", [])]

    wanted = [m for m in PRDC_METRICS if m in metrics]
    if wanted:
        if min(n_r, n_s) <= k:
            for m in wanted:
                out[m] = _metric_entry(None)
            warnings.append(f"precision/recall/density/coverage need more than k={k} images on each side "
                            f"({n_r} real, {n_s} synthetic)")
        else:
            value = prdc(real_f, fake_f, k=k)
            cis = None
            if boot:
                cis = interval(lambda a, b: prdc(a, b, k=k), value, lower_bound=0.0)
                for m in ("precision", "recall", "f1", "coverage"):  # fractions; density is not capped
                    cis[m]["ci_high"] = min(cis[m]["ci_high"], 1.0)
            for m in wanted:
                out[m] = _metric_entry(value[m], None if cis is None else cis[m],
                                       **({"ci_target": CI_TARGETS[m]} if cis else {}))

    for m, e in out.items():
        low, high, v = e.get("ci_low"), e.get("ci_high"), e.get("value")
        bounded = v is not None and low is not None and high is not None and math.isfinite(low)
        if bounded and not low <= v <= high:
            # cannot happen while the replicates' mean lies between their quantiles; say so if it ever does
            warnings.append(f"{m}: interval [{low:.4g}, {high:.4g}] excludes the value {v:.4g} (too few or extreme "
                            f"subsample values, n_boot={e.get('n_boot')}); raise --n-boot")
    return out, warnings


def _image_rows(real: ImageDataset, synthetic: ImageDataset, metrics: tuple, seed: int, lpips_options: dict) -> dict:
    from synthmed.metrics.similarity import image_similarity

    return {m: image_similarity(real, synthetic, metric=m, pairing=DEFAULT_PAIRING, seed=seed,
                                **(lpips_options if m == "lpips" else {}))
            for m in IMAGE_METRICS if m in metrics}


def _similarity_entry(stats: dict) -> dict:
    return _metric_entry(stats["mean"], std=stats["std"], n_pairs=stats["n"])


def _dataset_header(ds: ImageDataset) -> dict:
    return {"name": ds.name, "fingerprint": ds.fingerprint(), "num_images": len(ds), "synthetic": ds.synthetic,
            "class_counts": dict(zip(ds.class_names, ds.class_counts()))}


def evaluate(real: ImageDataset, synthetic: ImageDataset, extractor, *, metrics=DEFAULT_METRICS,
             per_class: bool = True, n_boot: int = DEFAULT_N_BOOT, k: int = DEFAULT_K, seed: int = 0,
             lpips: bool = False, real_train_fingerprint: str | None = None, alpha: float = DEFAULT_ALPHA,
             allow_real_as_synthetic: bool = False, lpips_net: str = "alex",
             lpips_weights_dir: str | os.PathLike | None = None, batch_size: int = 256,
             progress: bool = False) -> dict:
    """Evaluate ``synthetic`` against ``real`` through ``extractor`` (total and per class).

    Returns ``{"header": ..., "rows": [...], "warnings": [...]}``: each row has ``class``
    (``"total"`` for all images), ``scope``, ``n_real``, ``n_synthetic``, ``metrics``
    (name -> value, ci_low, ci_high, ...) and ``warnings``. ``lpips=True`` adds LPIPS and
    raises :class:`~synthmed.metrics.similarity.MetricUnavailable` when its backbone weights
    are missing. ``n_boot=0`` skips the intervals.
    """
    metrics = tuple(dict.fromkeys(tuple(metrics) + (("lpips",) if lpips else ())))
    unknown = [m for m in metrics if m not in KNOWN_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {list(KNOWN_METRICS)}")
    if not synthetic.synthetic and not allow_real_as_synthetic:
        raise ValueError(
            f"'{synthetic.name}' is not flagged synthetic: comparing two real sets is allowed but must be explicit "
            f"(pass allow_real_as_synthetic=True), so that real images are never reported as generated ones")
    if real.synthetic:
        raise ValueError(f"the reference set '{real.name}' is flagged synthetic; pass real images as `real`")
    if real.class_names != synthetic.class_names:
        raise ValueError(f"class lists differ: real {real.class_names} vs synthetic {synthetic.class_names}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")

    header_warnings = []
    description = extractor.describe()
    train_fp = real_train_fingerprint or description.get("trained_on")
    real_fp = real.fingerprint()
    if train_fp and real_fp == train_fp:
        header_warnings.append(
            "the real reference set is the split the feature extractor was trained on: its features are fitted to "
            "these exact images, so synthetic images look further away than they are; evaluate against held-out "
            "real images")

    feature_metrics = tuple(m for m in metrics if m in FEATURE_METRICS)
    if feature_metrics:
        real_f = np.asarray(extractor.extract(real, batch_size=batch_size, progress=progress), dtype=np.float64)
        fake_f = np.asarray(extractor.extract(synthetic, batch_size=batch_size, progress=progress), dtype=np.float64)
    similarity = _image_rows(real, synthetic, metrics, seed,
                             {"net": lpips_net, "lpips_weights_dir": lpips_weights_dir})

    scopes = [(TOTAL, "total", None)]
    if per_class:
        scopes += [(name, "class", c) for c, name in enumerate(real.class_names)]
    rows = []
    for i, (label, scope, c) in enumerate(scopes):
        r_sel = np.ones(len(real), bool) if c is None else real.labels == c
        s_sel = np.ones(len(synthetic), bool) if c is None else synthetic.labels == c
        n_r, n_s = int(r_sel.sum()), int(s_sel.sum())
        row = {"class": label, "scope": scope, "n_real": n_r, "n_synthetic": n_s, "metrics": {}, "warnings": []}
        if min(n_r, n_s) < MIN_IMAGES_PER_CLASS:
            row["warnings"].append(f"only {n_r} real / {n_s} synthetic images: too few for a meaningful value")
        if feature_metrics:
            # distinct subsampling seeds per row so that rows do not share resampling noise
            vals, warns = _feature_row(real_f[r_sel], fake_f[s_sel], feature_metrics, k=k, n_boot=n_boot,
                                       alpha=alpha, seed=seed + 1000 * i)
            row["metrics"].update(vals)
            row["warnings"] += warns
        for m, res in similarity.items():
            stats = res["total"] if c is None else res["per_class"][label]
            row["metrics"][m] = _similarity_entry(stats)
        # keep the caller's metric order in every row
        row["metrics"] = {m: row["metrics"][m] for m in metrics if m in row["metrics"]}
        rows.append(row)

    for res in similarity.values():
        header_warnings += [f"{res['metric']}: {w}" for w in res["warnings"]]
    pairing = {m: res["pairing_policy"] for m, res in similarity.items()}
    header = {
        "extractor": description,
        "real": {**_dataset_header(real), "fingerprint": real_fp},
        "synthetic": _dataset_header(synthetic),
        "real_train_fingerprint": train_fp,
        "metrics": list(metrics),
        "pairing_policy": pairing.get("ssim") or pairing.get("lpips"),
        "pairing": DEFAULT_PAIRING if pairing else None,
        "k": k,
        "n_boot": n_boot,
        "alpha": alpha,
        "bootstrap": BOOTSTRAP_POLICY if n_boot else "none",
        "ci_method": subsampling_method(CI_FRACTION) if n_boot else "none",
        "seed": seed,
        "kid_subset_size": KID_SUBSET_SIZE if "kid" in metrics else None,
        "min_images_per_class": MIN_IMAGES_PER_CLASS,
        "synthmed_version": synthmed.__version__,
        "warnings": header_warnings,
    }
    if "lpips" in similarity:
        header["lpips_net"] = lpips_net
    all_warnings = header_warnings + [f"{r['class']}: {w}" for r in rows for w in r["warnings"]]
    return {"header": header, "rows": rows, "warnings": all_warnings}


# ----------------------------------------------------------------------------- data card
CARD_METRICS = ("fid", "kid", "precision", "recall")


def _card_interval(e: dict | None) -> dict | None:
    if not e:
        return None
    out = {key: e.get(key) for key in ("value", "ci_low", "ci_high") if key in e}
    return {**out, **{key: e[key] for key in ("n", "real_accuracy") if key in e}}


def card_summaries(result: dict, synthetic_fingerprint: str | None = None) -> tuple[dict | None, dict | None]:
    """(evaluation summary, memorisation summary) of an evaluation result (``conditional_accuracy``,
    ``evaluation``, ``memorisation`` as :func:`synthmed.pipeline.evaluate_synthetic` returns them)
    for the set's data card: conditional accuracy overall and per class with the judge, the total
    row's FID / KID / precision / recall with intervals, extractor and image counts, and the number
    of flagged near-copies. Both name the fingerprint of the synthetic set they describe."""
    ev, ca, audit = result.get("evaluation"), result.get("conditional_accuracy"), result.get("memorisation")
    summary = None
    if ev or ca:
        header = (ev or {}).get("header") or {}
        summary = {"evaluated_at": datetime.now(timezone.utc).replace(microsecond=0).isoformat(),
                   "synthmed_version": synthmed.__version__,
                   "synthetic_fingerprint": (header.get("synthetic") or {}).get("fingerprint")
                   or ((ca or {}).get("synthetic") or {}).get("fingerprint") or synthetic_fingerprint}
        if ca:
            acc = ca["accuracy"]
            real = ca.get("real_test") or {}
            summary["conditional_accuracy"] = {
                "overall": {"value": acc["accuracy"], "ci_low": acc["ci95"][0], "ci_high": acc["ci95"][1]},
                "n": acc["n"], "chance": ca["chance"],
                "per_class": {c: {"value": e["accuracy"], "ci_low": e["ci95"][0], "ci_high": e["ci95"][1], "n": e["n"],
                                  "real_accuracy": e.get("real_accuracy")} for c, e in ca["per_class"].items()},
                "judge": {"arch": ca["judge"]["arch"], "trained_on_fingerprint": ca["judge"]["trained_on_fingerprint"],
                          "n_train": ca["judge"]["n_train"], "real_test_accuracy": real.get("accuracy"),
                          "real_test_n": real.get("n")},
            }
            if ca.get("scored_by"):  # which classifier scored it (an independent grader for a confidence-selected set)
                summary["conditional_accuracy"]["scored_by"] = ca["scored_by"]
        if ev:
            ex = header.get("extractor") or {}
            summary["extractor"] = {key: ex.get(key) for key in ("name", "dim", "weights_hash", "input_policy",
                                                                 "trained_on") if key in ex}
            summary["real"] = {key: (header.get("real") or {}).get(key) for key in ("name", "num_images", "fingerprint")}
            total = next((r for r in ev["rows"] if r["class"] == TOTAL), None)
            if total:
                metrics = {m: _card_interval(total["metrics"].get(m)) for m in CARD_METRICS if m in total["metrics"]}
                bc = (total["metrics"].get("fid") or {}).get("bias_corrected")
                if bc and bc.get("value") is not None:
                    metrics["fid_bias_corrected"] = _card_interval(bc)
                summary["distribution"] = {"n_real": total["n_real"], "n_synthetic": total["n_synthetic"],
                                           "ci_method": header.get("ci_method"), "alpha": header.get("alpha"),
                                           "metrics": metrics, "n_warnings": len(ev.get("warnings") or [])}
    memorisation = None
    if audit:
        o = audit["overall"]
        memorisation = {"n": o["n"], "n_flagged": o["n_flagged"], "fraction_flagged": o["fraction_flagged"],
                        "n_exact_copies": o.get("n_exact_copies"), "rule": audit.get("rule"),
                        "train_fingerprint": audit.get("train_fingerprint"),
                        "per_class": {c: e["n_flagged"] for c, e in (audit.get("per_class") or {}).items()},
                        "synthetic_fingerprint": (summary or {}).get("synthetic_fingerprint") or synthetic_fingerprint}
    return _clean(summary), _clean(memorisation)


# ----------------------------------------------------------------------------- outputs
def _clean(obj):
    """JSON-safe copy: NaN / inf become null (strict JSON has no NaN), numpy scalars become Python ones."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


CSV_COLUMNS = ("class", "metric", "value", "ci_low", "ci_high", "std", "n_real", "n_synthetic", "extractor")


def write_outputs(result: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``metrics.json`` (the whole result) and ``metrics.csv`` (one row per class x metric)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out / JSON_NAME, out / CSV_NAME
    with open(json_path, "w") as f:
        json.dump(_clean(result), f, indent=2)
    extractor = result["header"]["extractor"].get("name", "")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for row in result["rows"]:
            for metric in result["header"]["metrics"]:
                e = _clean(row["metrics"].get(metric, {}))
                writer.writerow([row["class"], metric, *("" if e.get(key) is None else e[key]
                                                         for key in ("value", "ci_low", "ci_high", "std")),
                                 row["n_real"], row["n_synthetic"], extractor])
    return json_path, csv_path


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def format_table(result: dict) -> str:
    """Class x metric table: a value line per class and, beneath it, its interval (or ± std)."""
    header = result["header"]
    metrics = header["metrics"]
    lines_in = []
    for row in result["rows"]:
        values, spreads = [], []
        for m in metrics:
            e = row["metrics"].get(m, {})
            values.append(_fmt(e.get("value")))
            if e.get("ci_low") is not None and e.get("ci_high") is not None:
                spreads.append(f"[{_fmt(e['ci_low'])}, {_fmt(e['ci_high'])}]")
            elif e.get("std") is not None and e.get("value") is not None:
                spreads.append(f"±{_fmt(e['std'])}")
            else:
                spreads.append("")
        flag = " !" if row["warnings"] else ""
        lines_in.append([f"{row['class']}{flag}", str(row["n_real"]), str(row["n_synthetic"]), *values])
        lines_in.append(["", "", "", *spreads])
    head = ["class", "n_real", "n_synth", *metrics]
    widths = [max(len(h), *(len(line[j]) for line in lines_in)) for j, h in enumerate(head)]

    def fmt_line(cells):
        return "  ".join(c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * len(fmt_line(head))
    body = [fmt_line(head), rule] + [fmt_line(line) for line in lines_in]
    ex = header["extractor"]
    ci = (f"{int(round(100 * (1 - header.get('alpha', DEFAULT_ALPHA))))}% CI, "
          f"{header.get('ci_method', 'bootstrap')} (n_boot={header['n_boot']})")
    footer = (f"extractor {ex.get('name')} (dim {ex.get('dim')}, weights {ex.get('weights_hash') or '-'}) | "
              f"real '{header['real']['name']}' {header['real']['num_images']} images | "
              f"synthetic '{header['synthetic']['name']}' {header['synthetic']['num_images']} images | "
              f"k={header['k']}, {ci} | {len(result['warnings'])} warnings"
              + (" (rows marked ! ; see metrics.json)" if result["warnings"] else ""))
    if header.get("pairing_policy"):
        footer += f"\nssim/lpips pairing: {header['pairing_policy']}"
    return "\n".join(body + [rule, footer])


def real_fd_floor(extractor, val, test, counts: list[int], seed: int = 0) -> dict:
    """FD of real validation images drawn at ``counts`` per class against the test split: what a
    generator indistinguishable from real data would score at this N (FD is biased upward at small N)."""
    rng = np.random.default_rng(seed)
    idx = np.concatenate([rng.choice(np.flatnonzero(val.labels == c), min(n, int((val.labels == c).sum())),
                                     replace=False) for c, n in enumerate(counts)])
    ev = evaluate(test, val.subset(idx, name="real val (floor)"), extractor, metrics=("fid",), per_class=False,
                  n_boot=0, allow_real_as_synthetic=True)
    return {"fd": ev["rows"][0]["metrics"]["fid"]["value"], "n": int(len(idx))}
