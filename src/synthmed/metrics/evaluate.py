"""One call that evaluates a synthetic set against a real one: every metric, in total and per
class, with bootstrap intervals, small-sample warnings and the provenance needed to trust or
reproduce the numbers. Outputs: a result dict (metrics.json), a flat CSV and a terminal table.

Features are extracted once per set; every feature metric (FID, KID, precision / recall / F1,
density / coverage) reads the same arrays, and the per-class rows are slices of them.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np

import synthmed
from synthmed.data.dataset import ImageDataset
from synthmed.metrics.bootstrap import bootstrap_ci
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
#: subsets per bootstrap replicate: the replicates carry the resampling noise, so fewer subsets
#: each keep the bootstrap affordable (it adds a little subset noise: slightly wider interval)
KID_N_SUBSETS_PER_REPLICATE = 10
DEFAULT_PAIRING = "nearest"
TOTAL = "total"
CSV_NAME = "metrics.csv"
JSON_NAME = "metrics.json"
BOOTSTRAP_POLICY = (
    "percentile bootstrap, real and synthetic sets each resampled with replacement at their own size;"
    " k-NN metrics and KID keep one copy of each drawn point (duplicates would collapse k-NN radii);"
    " FID bootstrap values are biased upwards (fewer distinct points), read the interval as spread"
)


def _fid_value(a: np.ndarray, b: np.ndarray) -> float:
    # through the images when they are fewer than the dimensions: bootstrap replicates of a small
    # class in a 2048-d space cost an n x n SVD instead of two 2048 x 2048 eigenproblems each
    from synthmed.metrics.fid import frechet_distance_from_features

    return frechet_distance_from_features(a, b)


def _metric_entry(value, ci: dict | None = None, **extra) -> dict:
    entry = {"value": None if value is None else float(value), "ci_low": None, "ci_high": None}
    if ci is not None:
        entry.update(ci_low=ci["ci_low"], ci_high=ci["ci_high"], std=ci["std"], n_boot=ci["n_boot"])
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

    if "fid" in metrics:
        if n_r < 2 or n_s < 2:
            out["fid"] = _metric_entry(None)
            warnings.append(f"FID needs at least 2 images on each side ({n_r} real, {n_s} synthetic)")
        else:
            value = _fid_value(real_f, fake_f)
            ci = bootstrap_ci(_fid_value, real_f, fake_f, n_boot, alpha, seed, point_estimate=value) if boot else None
            out["fid"] = _metric_entry(value, ci)
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
                # distinct points: the unbiased MMD^2 estimator's expectation does not depend on the
                # set size, so a without-replacement subsample keeps the interval centred
                ci = bootstrap_ci(kid_mean, real_f, fake_f, n_boot, alpha, seed, distinct=True,
                                  point_estimate=res["mean"])
            out["kid"] = _metric_entry(res["mean"], ci, subset_std=res["std"], subset_size=res["subset_size"],
                                       n_subsets=res["n_subsets"])
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
                cis = bootstrap_ci(lambda a, b: prdc(a, b, k=k), real_f, fake_f, n_boot, alpha, seed,
                                   distinct=True, point_estimate=value)
            for m in wanted:
                out[m] = _metric_entry(value[m], None if cis is None else cis[m])

    for m, e in out.items():
        low, high, v = e.get("ci_low"), e.get("ci_high"), e.get("value")
        bounded = v is not None and low is not None and high is not None and math.isfinite(low)
        if bounded and not low <= v <= high:
            # typical for FID (its sample-size bias moves every replicate up); say so rather than
            # let a reader take the interval as a range around the value
            warnings.append(f"{m}: bootstrap interval [{low:.4g}, {high:.4g}] excludes the value {v:.4g}; the "
                            f"estimator's sample-size bias dominates here, read the interval as spread only")
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
    are missing. ``n_boot=0`` skips the bootstrap.
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
            # distinct bootstrap seeds per row so that rows do not share resampling noise
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
    """Class x metric table: a value line per class and, beneath it, its bootstrap interval (or ± std)."""
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
    ci = f"{int(round(100 * (1 - header.get('alpha', DEFAULT_ALPHA))))}% bootstrap CI (n_boot={header['n_boot']})"
    footer = (f"extractor {ex.get('name')} (dim {ex.get('dim')}, weights {ex.get('weights_hash') or '-'}) | "
              f"real '{header['real']['name']}' {header['real']['num_images']} images | "
              f"synthetic '{header['synthetic']['name']}' {header['synthetic']['num_images']} images | "
              f"k={header['k']}, {ci} | {len(result['warnings'])} warnings"
              + (" (rows marked ! ; see metrics.json)" if result["warnings"] else ""))
    if header.get("pairing_policy"):
        footer += f"\nssim/lpips pairing: {header['pairing_policy']}"
    return "\n".join(body + [rule, footer])
