"""The downstream experiment: every protocol x filter (realism or confidence), repeated over data subsets and/or
seeds, scored on the real test split, summarised with paired confidence intervals.

A *cell* is one (repeat, protocol, filter). Within a repeat every cell shares the real
training subset and the seed (hence the initial weights), so differences between protocols
are paired over repeats. Each finished cell is written atomically to
``out_dir/cells/<repeat>__<protocol>__<filter>.json``; a rerun loads finished cells instead
of recomputing them, and asks for the synthetic images of a repeat only when one of its
cells still needs them. A cell records a hash of everything that determines it, so results
of a different configuration are never silently mixed into this one.

Guards, enforced before any training: val and test are real and share no patient or image
with a training subset; the generator of a repeat was trained on exactly that repeat's
training subset (or, when the user says it was reused, on the training split or a repeat
subset, with a warning in the output); no synthetic image equals a val or test image.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

from tqdm.auto import tqdm

from synthmed.classifiers import classification_metrics, train_classifier
from synthmed.config import DownstreamConfig
from synthmed.data.dataset import DataError, DataSplits, ImageDataset
from synthmed.data.splits import assert_disjoint
from synthmed.downstream.protocols import (NotEnoughSyntheticError, ProtocolOptions, build_plan, expand_protocols,
                                           uses_synthetic)
from synthmed.downstream.quick import LeakageError, check_no_leakage
from synthmed.downstream.stats import mean_std, paired_difference
from synthmed.files import atomic_write_text, json_default
from synthmed.selection.confidence import DEFAULT_TAU

#: "global"/"class": the realism filter; "confidence": p(intended class) >= tau under a classifier trained
#: on the repeat's real subset (synthmed.selection.confidence)
FILTERS = ("none", "global", "class", "confidence")
REFERENCES = ("baseline", "traditional")
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "auc", "f1_macro", "sensitivity", "specificity")
SCALAR_METRICS = HEADLINE_METRICS + ("precision_macro", "recall_macro")

SyntheticFor = Callable[[ImageDataset, int], tuple[ImageDataset, str]]
FilterFn = Callable[[ImageDataset, ImageDataset, str], tuple[ImageDataset, dict]]
Repeat = tuple[str | int, ImageDataset, int]


# --------------------------------------------------------------------------- small helpers


def _json_default(o):
    try:
        return json_default(o)
    except TypeError:
        return str(o)  # provenance only (enums in a filter report): readable beats failing


def _write_json(obj, path: Path) -> None:
    atomic_write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", path)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(name))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()[:16]


def _counts(ds: ImageDataset) -> dict[str, int]:
    return dict(zip(ds.class_names, ds.class_counts()))


def _describe(ds: ImageDataset) -> dict:
    return {"n": len(ds), "class_counts": _counts(ds), "fingerprint": ds.fingerprint()}


def flat_metrics(m: dict) -> dict[str, float | None]:
    """Scalar metrics plus per-class ones named ``metric[class]``, for summaries and CSV."""
    out = {k: m.get(k) for k in SCALAR_METRICS}
    for cls, d in m["per_class"].items():
        out.update({f"{k}[{cls}]": d[k] for k in ("precision", "recall", "f1")})
    for cls, d in m["one_vs_rest"].items():
        out.update({f"{k}[{cls}]": d[k] for k in ("sensitivity", "specificity")})
    return out


def _default_filter_fn(val: ImageDataset, cache_dir: Path, device: str, tau: float = DEFAULT_TAU) -> FilterFn:
    def filter_fn(synthetic: ImageDataset, real: ImageDataset, mode: str) -> tuple[ImageDataset, dict]:
        # imported here: only a run that filters needs the feature extractors
        from synthmed.features.domain import DomainExtractor
        from synthmed.selection.confidence import confidence_filter
        from synthmed.selection.filter import filter_synthetic

        extractor = DomainExtractor(real, val, cache_dir=cache_dir, device=device)  # trained on this subset only
        if mode == "confidence":  # the cell's classifier is scored on the real test labels, never by the selector
            return confidence_filter(synthetic, extractor.classifier, tau, held_out=val)
        return filter_synthetic(synthetic, real, extractor, mode=mode)

    return filter_fn


# --------------------------------------------------------------------------- guards


def _check_splits(splits: DataSplits, repeats: Sequence[Repeat]) -> None:
    for name in ("val", "test"):
        if getattr(splits, name).synthetic:
            raise LeakageError(f"the {name} split is flagged synthetic; validation and test must be real images")
    has_ids = [d.patient_ids is not None for d in (splits.val, splits.test, *(r[1] for r in repeats))]
    if any(has_ids) and not all(has_ids):
        raise LeakageError("some splits carry patient ids and others do not, so a patient in both training and "
                           "test cannot be ruled out; give every split its patient ids (or none)")
    for rid, subset, _ in repeats:
        if subset.synthetic:
            raise LeakageError(f"repeat {rid}: the real training subset '{subset.name}' is flagged synthetic")
        # train vs val and train vs test; an overlap between val and test (it exists in some
        # published splits) leaks nothing into training, so it is not this guard's business
        for name in ("val", "test"):
            try:
                assert_disjoint({f"train subset {rid}": subset, name: getattr(splits, name)})
            except DataError as e:
                raise LeakageError(f"repeat {rid}: {e}; data.cross_split_duplicates: drop removes such "
                                   "images from the training split") from None


def _check_synthetic(splits: DataSplits, subset: ImageDataset, synthetic: ImageDataset, generator_fp: str,
                     allowed_reused: set[str], reuse_generator: bool, rid) -> bool:
    """Raise LeakageError if the synthetic set of a repeat is not admissible; return True when
    the generator was reused (trained on another set than this repeat's subset)."""
    repeat_splits = DataSplits(subset, splits.val, splits.test)
    if not reuse_generator or generator_fp == subset.fingerprint():
        try:
            check_no_leakage(repeat_splits, synthetic, generator_fp)
        except LeakageError as e:
            hint = (" If one generator is deliberately shared by all repeats, pass reuse_generator=True."
                    if "this training split" in str(e) else "")
            raise LeakageError(f"repeat {rid}: {e}.{hint}") from None
        return False
    check_no_leakage(repeat_splits, synthetic, None)
    for name in ("val", "test"):
        if generator_fp == getattr(splits, name).fingerprint():
            raise LeakageError(f"repeat {rid}: the reused generator was trained on the {name} split")
    if generator_fp not in allowed_reused:
        raise LeakageError(f"repeat {rid}: the reused generator was trained on a set with fingerprint {generator_fp}, "
                           f"which is neither the training split nor a repeat's training subset; its training images "
                           f"may include val or test images")
    return True


# --------------------------------------------------------------------------- one cell


def _run_cell(plan, splits: DataSplits, cfg: DownstreamConfig, seed: int, device: str) -> dict:
    clf, stages = None, []
    for (data, augment), (stage, comp) in zip(plan.stages, plan.composition.items()):
        # every stage early-stops on the REAL validation split; later stages start from the previous one
        clf = train_classifier(data, splits.val, cfg.classifier, seed=seed, device=device, augment=augment,
                               init_from=clf)
        stages.append({"stage": stage, "augment": list(augment), "n_train": len(data), **comp,
                       "best_epoch": clf.history.get("best_epoch")})
    metrics = classification_metrics(splits.test.labels, clf.predict_proba(splits.test), splits.class_names)
    return {"stages": stages, "metrics": metrics}


def _parse_shard(shard: str | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    k, n = (int(v) for v in shard.split("/"))
    if not 0 <= k < n:
        raise ValueError(f"downstream.shard = {shard!r}: K/N needs 0 <= K < N (e.g. $SLURM_ARRAY_TASK_ID/"
                         "$SLURM_ARRAY_TASK_COUNT with an array 0..N-1)")
    return k, n


def _worker_pool(workers: int):
    """A pool of ``workers`` fresh processes (spawned: no forked torch state), or None for one."""
    if workers <= 1:
        return None
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(workers,))


def _start_worker(workers: int) -> None:
    """Each worker gets its share of the cores, so N workers do not oversubscribe the machine."""
    import os

    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // workers))


# --------------------------------------------------------------------------- experiment


def run_experiment(splits: DataSplits, *, protocols: Sequence[str], synthetic_for: SyntheticFor,
                   repeats: Sequence[Repeat], cfg: DownstreamConfig, filters: Sequence[str] = ("none",),
                   filter_fn: FilterFn | None = None, out_dir: str | Path, device: str = "cpu",
                   progress: bool = True, reuse_generator: bool = False, confidence: float = 0.95,
                   tau: float = DEFAULT_TAU) -> dict:
    """Run (or resume) every (repeat, protocol, filter) cell; write ``results.json`` and
    ``results.csv`` to ``out_dir`` and return the results.

    ``repeats``: (repeat id, real training subset, seed) per repeat. ``synthetic_for(subset,
    i)`` returns the synthetic pool of repeat i and the fingerprint of the data its generator
    was trained on. ``filter_fn(synthetic, real_subset, mode)`` returns (kept, report); by
    default the realism filter of :mod:`synthmed.selection.filter` ("global", "class") or the confidence
    filter of :mod:`synthmed.selection.confidence` ("confidence", keeping p >= ``tau``). Protocols trained
    on real images only are run once, with filter "none".

    ``cfg.workers`` > 1: a repeat's cells train their classifiers in that many local processes (each
    cell's numbers are those of a serial run: a cell depends on its seed and data only). ``cfg.shard``
    "K/N": only repeats i with i % N == K are computed here (one task of a job array); the results are
    assembled when every cell's file exists, else ``{"partial": True, ...}`` is returned.
    """
    protocols = expand_protocols(list(protocols))
    unknown = [f for f in filters if f not in FILTERS]
    if unknown or not filters:
        raise ValueError(f"unknown filter(s) {unknown}; choose from {list(FILTERS)}")
    if not repeats:
        raise ValueError("no repeats given")
    ids = [str(r[0]) for r in repeats]
    if len({_safe(i) for i in ids}) != len(ids):
        raise ValueError(f"repeat ids must be unique (after making them file-safe): {ids}")
    _check_splits(splits, repeats)

    out_dir = Path(out_dir)
    filter_fn = filter_fn or _default_filter_fn(splits.val, out_dir / "feature_cache", device, tau)
    allowed_reused = {splits.train.fingerprint(), *(r[1].fingerprint() for r in repeats)}
    # what determines a cell's numbers (besides its repeat, protocol and filter); the generator is
    # recorded in the cell, not hashed, so resuming never has to re-run it just to compare
    # (how the cells are shared out over processes or tasks does not change them: not hashed)
    how_run = ("workers", "shard")
    experiment_key = {"downstream": {k: v for k, v in asdict(cfg).items() if k not in how_run},
                      "val": splits.val.fingerprint(), "test": splits.test.fingerprint()}
    groups = [(p, f) for p in protocols for f in (filters if uses_synthetic(p) else ("none",))]

    def cell_hash(i: int, p: str, f: str) -> str:
        rid, subset, seed = repeats[i]
        # tau is hashed for the confidence filter only, so cells of the other filters keep their hash
        return _hash({**experiment_key, "repeat": str(rid), "seed": seed, "train": subset.fingerprint(),
                      "protocol": p, "filter": f, **({"tau": tau} if f == "confidence" else {})})

    def cell_path(rid, p: str, f: str) -> Path:
        return out_dir / "cells" / f"{_safe(rid)}__{_safe(p)}__{f}.json"

    cells: dict[tuple[str, str, str], dict] = {}  # (repeat, protocol, filter) -> finished cell
    todo: list[tuple[int, str, str]] = []
    for i, (rid, subset, seed) in enumerate(repeats):
        for p, f in groups:
            path = cell_path(rid, p, f)
            if path.is_file():
                cell = json.loads(path.read_text())
                if cell.get("config_hash") != cell_hash(i, p, f):
                    raise ValueError(f"{path} was computed with a different configuration or data than this run; "
                                     f"use a new out_dir (or delete {path.parent} to recompute everything)")
                cells[(str(rid), p, f)] = cell
            else:
                todo.append((i, p, f))

    shard = _parse_shard(cfg.shard)
    if shard is not None:  # one task of a job array: its repeats only, the others are other tasks'
        todo = [t for t in todo if t[0] % shard[1] == shard[0]]
    pool_of_workers = _worker_pool(cfg.workers)
    bar = tqdm(total=len(todo), desc="downstream cells", disable=not progress)
    for i in sorted({t[0] for t in todo}):
        rid, subset, seed = repeats[i]
        mine = [(p, f) for j, p, f in todo if j == i]
        synthetic, generator_fp, reused, pools = None, None, False, {}
        if any(uses_synthetic(p) for p, _ in mine):
            synthetic, generator_fp = synthetic_for(subset, i)
            reused = _check_synthetic(splits, subset, synthetic, generator_fp, allowed_reused, reuse_generator, rid)
        planned = []
        for p, f in mine:
            bar.set_postfix_str(f"repeat {rid}: {p} / {f}")
            pool, report = None, None
            if uses_synthetic(p):
                if f not in pools:  # one filtering per repeat and mode, shared by the protocols
                    pools[f] = (synthetic, None) if f == "none" else filter_fn(synthetic, subset, f)
                pool, report = pools[f]
            try:
                plan = build_plan(p, subset, pool, ProtocolOptions(cfg.synthetic_ratio, tuple(cfg.augmentations), seed))
            except NotEnoughSyntheticError as e:
                kept = "" if f == "none" else f" after the {f!r} filter kept {_counts(pool)}"
                hint = ("" if f == "none" else
                        f"; raise downstream.oversample (now {cfg.oversample:g}) so that the pool is larger than "
                        "what the protocols need by the filter's rejection rate")
                raise NotEnoughSyntheticError(f"repeat {rid}{kept}: {e}{hint}") from None
            planned.append((p, f, pool, report, plan))
        if pool_of_workers is None:
            results = (_run_cell(plan, splits, cfg, seed, device) for *_, plan in planned)
        else:  # the cells of this repeat in parallel processes, written in order as they finish
            results = pool_of_workers.map(_run_cell, [plan for *_, plan in planned], *zip(*[
                (splits, cfg, seed, device)] * len(planned)))
        for (p, f, pool, report, _plan), result in zip(planned, results):
            cell = {"repeat": str(rid), "protocol": p, "filter": f, "seed": seed, "config_hash": cell_hash(i, p, f),
                    "train": _describe(subset),
                    "generator_fingerprint": generator_fp if uses_synthetic(p) else None,
                    "generator_reused": reused if uses_synthetic(p) else False,
                    "synthetic_pool": _describe(pool) if pool is not None else None,
                    "filter_report": report, **result}
            path = cell_path(rid, p, f)
            _write_json(cell, path)
            cells[(str(rid), p, f)] = json.loads(path.read_text())  # exactly what a resumed run will load
            bar.update()
    bar.close()
    if pool_of_workers is not None:
        pool_of_workers.shutdown()
    if shard is not None:
        for i, (rid, _subset, _seed) in enumerate(repeats):  # cells other tasks finished meanwhile
            for p, f in groups:
                if (str(rid), p, f) not in cells and cell_path(rid, p, f).is_file():
                    cells[(str(rid), p, f)] = json.loads(cell_path(rid, p, f).read_text())
        missing = len(repeats) * len(groups) - len(cells)
        if missing:
            return {"partial": True, "shard": cfg.shard, "cells_done": len(cells), "cells_missing": missing}

    results = _assemble(splits, protocols, list(filters), repeats, cfg, cells, groups, confidence, reuse_generator)
    _write_json(results, out_dir / "results.json")
    atomic_write_text(results_csv(results["summary"]), out_dir / "results.csv")
    return results


# --------------------------------------------------------------------------- summary


def _assemble(splits, protocols, filters, repeats, cfg, cells, groups, confidence, reuse_generator) -> dict:
    ids = [str(r[0]) for r in repeats]
    flat = {key: flat_metrics(cell["metrics"]) for key, cell in cells.items()}
    metric_names = list(dict.fromkeys(m for values_of_cell in flat.values() for m in values_of_cell))

    def values(p, f, metric):  # one per repeat, in repeat order: the pairing of paired_difference
        return [flat[(rid, p, f)].get(metric) for rid in ids]

    summary = []
    for p, f in groups:
        for metric in metric_names:
            v = values(p, f, metric)
            if all(x is None for x in v):
                continue  # e.g. binary sensitivity in a multi-class task
            row = {"protocol": p, "filter": f, "metric": metric, **mean_std(v), "values": v}
            for ref in REFERENCES:
                if ref in protocols and p != ref:
                    row[f"vs_{ref}"] = paired_difference(v, values(ref, "none", metric), confidence)
            summary.append(row)

    warnings = []
    generators = {}
    for rid, subset, _ in repeats:
        fps = {c["generator_fingerprint"] for c in cells.values() if c["repeat"] == str(rid)
               and c["generator_fingerprint"]}
        generators[str(rid)] = sorted(fps)
        if fps - {subset.fingerprint()}:
            warnings.append(f"repeat {rid}: the generator was reused (trained on {', '.join(sorted(fps))}, not on "
                            f"this repeat's subset {subset.fingerprint()}); the spread over repeats then leaves out "
                            f"the variation between generators, so the intervals are too narrow for the question "
                            f"'does a generator trained on my data help?'")
    if reuse_generator and len(repeats) > 1 and any(c["generator_fingerprint"] for c in cells.values()) \
            and not warnings:
        # seeds on the whole training split: every repeat's data is the generator's, but it is ONE generator
        warnings.append(f"one generator served all {len(repeats)} repeats (reuse_generator): the spread over "
                        "repeats leaves out the variation between generators, so the intervals are too narrow for "
                        "the question 'does a generator trained on my data help?'")
    if len(repeats) < 2:
        warnings.append("a single repeat: no standard deviation or confidence interval; run at least 3 (5 is better)")
    compositions = {}
    for (rid, p, f), cell in cells.items():
        compositions.setdefault(f"{p} / {f}", {s["stage"]: {"real": s["real"], "synthetic": s["synthetic"],
                                                             "augment": s["augment"]} for s in cell["stages"]})
    return {
        "protocols": protocols,
        "filters": filters,
        "n_repeats": len(repeats),
        "repeats": [{"id": str(rid), "seed": seed, **_describe(subset), "generator_fingerprints": generators[str(rid)]}
                    for rid, subset, seed in repeats],
        "data": {"source": splits.source, "split_policy": splits.split_policy, "train": _describe(splits.train),
                 "val": _describe(splits.val), "test": _describe(splits.test)},
        "n_test": len(splits.test),
        "classifier": asdict(cfg.classifier),
        "config": asdict(cfg),
        "reuse_generator": reuse_generator,
        "confidence": confidence,
        "composition": compositions,
        "warnings": warnings,
        "summary": summary,
        "cells": [cells[k] for k in sorted(cells)],
        "std": "sample standard deviation over repeats (ddof=1)",
        "difference": f"paired over repeats (same subset and seed): protocol - reference, mean with a "
                      f"{round(confidence * 100)}% t interval",
    }


def _label(row: dict) -> str:
    return row["protocol"] if row["filter"] == "none" else f"{row['protocol']} / {row['filter']}"


def results_csv(summary: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    header = ["protocol", "filter", "metric", "mean", "std", "n"]
    for ref in REFERENCES:
        header += [f"diff_vs_{ref}", f"ci_low_vs_{ref}", f"ci_high_vs_{ref}", f"n_vs_{ref}"]
    w.writerow(header)
    for row in summary:
        line = [row["protocol"], row["filter"], row["metric"], row["mean"], row["std"], row["n"]]
        for ref in REFERENCES:
            d = row.get(f"vs_{ref}") or {}
            line += [d.get("mean"), d.get("ci_low"), d.get("ci_high"), d.get("n")]
        w.writerow(["" if v is None else v for v in line])
    return buf.getvalue()


def _fmt(v, signed: bool = False) -> str:
    return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def format_results_table(summary: list[dict], metrics: Sequence[str] = HEADLINE_METRICS) -> str:
    """Terminal tables: mean ± std per protocol, then the paired differences with CIs."""
    metrics = [m for m in metrics if any(r["metric"] == m for r in summary)]
    labels = list(dict.fromkeys(_label(r) for r in summary))
    by = {(_label(r), r["metric"]): r for r in summary}
    width = max([len(s) for s in labels] + [8]) + 2

    def table(title: str, cell: Callable[[dict], str], rows: list[str]) -> str:
        cols = [max(len(m), 24) + 2 for m in metrics]
        lines = [title, "protocol".ljust(width) + "".join(m.rjust(c) for m, c in zip(metrics, cols))]
        for label in rows:
            lines.append(label.ljust(width) + "".join(
                (cell(by[(label, m)]) if (label, m) in by else "–").rjust(c) for m, c in zip(metrics, cols)))
        return "\n".join(lines)

    def ms(r):
        return _fmt(r["mean"]) + ("" if r["std"] is None else f" ± {_fmt(r['std'])}") + f" (n={r['n']})"

    out = [table("mean ± std over repeats", ms, labels)]
    for ref in REFERENCES:
        rows = [label for label in labels if any(f"vs_{ref}" in by.get((label, m), {}) for m in metrics)]
        if not rows:
            continue

        def diff(r, ref=ref):
            d = r.get(f"vs_{ref}")
            if not d or d["mean"] is None:
                return "–"
            ci = "" if d["ci_low"] is None else f" [{_fmt(d['ci_low'], True)}, {_fmt(d['ci_high'], True)}]"
            return _fmt(d["mean"], True) + ci

        conf = next((round(100 * r[f"vs_{ref}"]["confidence"]) for r in summary if f"vs_{ref}" in r), 95)
        out.append(table(f"paired difference vs {ref}: mean [{conf}% CI]", diff, rows))
    return "\n\n".join(out)
