"""Do synthmed's generators help a small-data classifier? The proof on BloodMNIST (issue #9, part 4).

BloodMNIST 28x28 RGB, official split. Generators are trained on

- ``full``: the whole official training split (11,959 images);
- ``50`` / ``200``: each of 3 non-overlapping subsets of 50 (200) images per class, on that subset only.

For every generator: training wall time, conditional accuracy by an INDEPENDENT judge (a classifier
trained once on the real training split, never used to select or tune anything), domain FD against
the real test split next to the same-N real floor (real validation images drawn at the synthetic
set's class counts vs the same test split) and their ratio, precision / recall / coverage, and the
memorisation audit's flags. For the subsets also the downstream protocols baseline, traditional,
mix, mix-traditional and transfer (``--protocols`` to choose), every classifier at the same optimizer-step
budget, early-stopped on the real validation split, scored on the full test split, with paired 95% t
intervals over the 3 subsets. A two-stage protocol (transfer: pretrain on synthetic, fine-tune on real)
may spend twice the steps, so the real-only protocols are then also run at twice the budget and the
best real-only row over both budgets is the bar (``--equal-budget off`` skips this).

    python benchmarks/generator_quality.py --only full          # ~35 min on 2 CPU cores (generator 30 min)
    python benchmarks/generator_quality.py --only 50            # 3 generators, 5 protocols x 3 subsets (one seed each)
    python benchmarks/generator_quality.py --only 200
    python benchmarks/generator_quality.py --only 50 --synthetic-ratio 6 --protocols baseline,traditional,transfer
    python benchmarks/generator_quality.py --only 50 --guidance-sweep 1,1.5,2,3   # rescore trained ones
    python benchmarks/generator_quality.py --preset pixel28 --set generator.formulation=edm
    python benchmarks/generator_quality.py --device cuda --full-steps 20000 --subset-steps 8000   # GPU size

Resumable part by part and cell by cell: trained generators and finished classifier cells under
``--work`` are reused on a rerun; finished parts are kept in the JSON. Writes
``benchmarks/results/generator_quality_<device>.{json,md}`` and sample grids to ``docs/images/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from synthmed.config import ClassifierConfig, ConfigError, load_config, set_dotted, validate
from synthmed.data.sources import load_dataset
from synthmed.data.splits import disjoint_subsets
from synthmed.downstream.protocols import NotEnoughSyntheticError, stage_count
from synthmed.downstream.stats import paired_difference
from synthmed.features.domain import DomainExtractor
from synthmed.files import atomic_write_text
from synthmed.generators.registry import build_generator, load_generator
from synthmed.metrics.conditional_accuracy import conditional_accuracy
from synthmed.metrics.evaluate import evaluate, real_fd_floor
from synthmed.metrics.memorisation import memorisation_audit
from synthmed.pipeline import step_downstream_experiment
from synthmed.runtime import resolve_device, set_threads

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
#: the issue's four protocols and transfer (pretrain on synthetic, fine-tune on real): the best synthetic one so far
PROTOCOLS = ["baseline", "traditional", "mix", "mix-traditional", "transfer"]
#: protocols that use no synthetic image: the bar every synthetic protocol is measured against
REAL_ONLY = ("baseline", "traditional")
#: the independent judge: never used for selection or tuning, only to score
JUDGE = ClassifierConfig(arch="smallcnn", widths=[32, 64, 128], steps=2000, eval_every=200, patience=4)
JUDGE_SEED = 1234
TARGETS = {"full": "conditional accuracy >= 0.85 and FD ratio <= 3 with <= 30 min of generator training (2 CPU cores)",
           "50": "best synthetic protocol beats the best real-only protocol by >= 0.02 balanced accuracy, paired CI > 0",
           "200": "best synthetic protocol not below the best real-only protocol"}

real_floor = real_fd_floor  # one implementation (synthmed.metrics.evaluate); gan_compare imports it from here


def study_config(args):
    overrides: dict = {}
    for item in args.set:
        key, val = item.split("=", 1)
        set_dotted(overrides, key, val)
    set_dotted(overrides, "data.dataset", json.dumps("medmnist:bloodmnist"))
    set_dotted(overrides, "data.data_root", json.dumps(str(args.data_root)))
    set_dotted(overrides, "data.image_size", "28")
    set_dotted(overrides, "device", json.dumps(args.device))
    set_dotted(overrides, "downstream.classifier", json.dumps(
        {"arch": "smallcnn", "widths": [16, 32, 64], "steps": args.steps, "eval_every": 100, "patience": 3}))
    set_dotted(overrides, "downstream.seeds", "[0, 1, 2]")
    set_dotted(overrides, "downstream.synthetic_ratio", str(args.synthetic_ratio))
    set_dotted(overrides, "downstream.filters", json.dumps(args.filters.split(",")))
    set_dotted(overrides, "downstream.oversample", str(args.oversample))
    return load_config(preset=args.preset, overrides=overrides)


def with_steps(cfg, steps: int):
    cfg = dataclasses.replace(cfg, generator=dataclasses.replace(cfg.generator, train_steps=steps))
    validate(cfg)
    return cfg


def score_generator(gen, train, splits, judge, n_per_class: int, seed: int, guidance: float | None = None) -> dict:
    t0 = time.time()
    syn = gen.sample([n_per_class] * len(splits.class_names), seed=seed, guidance=guidance, progress=False)
    sample_seconds = time.time() - t0
    ca = conditional_accuracy(judge.classifier, syn)
    ev = evaluate(splits.test, syn, judge, metrics=("fid", "precision", "recall", "coverage"), per_class=False,
                  n_boot=20, seed=seed, real_train_fingerprint=splits.train.fingerprint())
    m = ev["rows"][0]["metrics"]
    floor = real_floor(judge, splits.val, splits.test, syn.class_counts(), seed=seed)
    audit = memorisation_audit(train, syn, judge)
    return {
        "train_seconds": gen.history.get("train_seconds"), "train_steps": gen.describe()["train_steps"],
        "images_per_second": gen.history.get("images_per_second"), "sample_seconds": sample_seconds,
        "n_synthetic": len(syn), "conditional_accuracy": ca["accuracy"]["accuracy"],
        "conditional_accuracy_per_class": {c: e["accuracy"] for c, e in ca["per_class"].items()},
        "fd": m["fid"]["value"], "fd_ci": [m["fid"].get("ci_low"), m["fid"].get("ci_high")],
        "fd_real_floor": floor["fd"], "fd_ratio": m["fid"]["value"] / max(floor["fd"], 1e-12),
        "precision": m["precision"]["value"], "recall": m["recall"]["value"], "coverage": m["coverage"]["value"],
        "memorisation_flagged": audit["overall"]["n_flagged"], "memorisation_n": audit["overall"]["n"],
        # how often the same rule flags training images against the rest of the training split: the rate
        # expected of images that copy nothing, to read the flags against
        "memorisation_baseline_fraction": {space: v["baseline_fraction"] for space, v in audit["spaces"].items()},
        "memorisation_flagged_by_space": {space: v["n_flagged"] for space, v in audit["spaces"].items()},
        "guidance": syn.meta.get("guidance"),
    }, syn, audit


def save_pairs(audit, train, syn, path: Path) -> None:
    """The audit's most copy-like synthetic images beside their nearest training image."""
    from synthmed.metrics.memorisation import worst_pairs_grid
    from synthmed.report.figures import save_png

    save_png(worst_pairs_grid(audit, train, syn), path)


def save_grid(syn, path: Path, per_class: int = 8) -> None:
    from synthmed.report.figures import image_grid, save_png

    save_png(image_grid(syn, per_class=per_class, scale=2), path)


def part_full(args, cfg, splits, judge, device) -> dict:
    cfg = with_steps(cfg, args.full_steps)
    folder = args.work / "full" / "generator"
    if (folder / "generator.json").is_file():
        gen = load_generator(folder, device=device)
    else:
        gen = build_generator(cfg.generator, image_size=28, channels=3, class_names=splits.class_names, device=device,
                              seed=cfg.seed)
        gen.fit(splits.train, splits.val, checkpoint_dir=args.work / "full" / "checkpoints", progress=True)
        gen.save(folder)
    scores, syn, audit = score_generator(gen, splits.train, splits, judge, args.samples_per_class, seed=cfg.seed + 1)
    save_grid(syn, args.grids / "generator_quality_full.png")
    save_pairs(audit, splits.train, syn, args.grids / "generator_quality_full_memorisation.png")
    return {"generator": gen.describe()["summary"], "scores": scores,
            "generator_steps": args.full_steps, "samples_per_class": args.samples_per_class}


def part_subsets(args, cfg, splits, judge, device, size: int) -> dict:
    cfg = with_steps(cfg, args.subset_steps)
    cfg = dataclasses.replace(cfg, downstream=dataclasses.replace(cfg.downstream, protocols=args.protocols.split(",")))
    validate(cfg)
    subsets = disjoint_subsets(splits.train, 3, n_per_class=size, seed=0)
    repeats = [(f"n{size}_subset{i}", sub, i) for i, sub in enumerate(subsets)]
    exp_dir = args.work / f"n{size}"
    t0 = time.time()
    res = step_downstream_experiment(cfg, args.work, splits, device, repeats=repeats, exp_dir=exp_dir, quiet=False)
    per_subset = []
    previous = (getattr(args, "previous_parts", {}) or {}).get(str(size)) if args.reuse_scores else None
    if previous and previous.get("generator_steps") == args.subset_steps and \
            previous.get("samples_per_class") == args.samples_per_class and previous.get("generators"):
        per_subset = previous["generators"]  # the same generators (same work folder): scored already
        subsets = []
    for i, sub in enumerate(subsets):
        gen = load_generator(exp_dir / "generators" / f"repeat{i}", device=device)
        scores, syn, audit = score_generator(gen, sub, splits, judge, args.samples_per_class, seed=cfg.seed + 1 + i)
        per_subset.append(scores)
        if i == 0:
            save_grid(syn, args.grids / f"generator_quality_{size}.png")
            save_pairs(audit, sub, syn, args.grids / f"generator_quality_{size}_memorisation.png")
    summary = compare_to_real_only(summary_rows(res) + equal_budget_rows(args, cfg, splits, device, repeats, size))
    return {"seconds": time.time() - t0, "downstream": summary, "generators": per_subset,
            "filters": cfg.downstream.filters, "filter_acceptance": filter_acceptance(res),
            "generator_steps": args.subset_steps, "samples_per_class": args.samples_per_class,
            "synthetic_ratio": args.synthetic_ratio, "threads": torch.get_num_threads(),
            "mean": {k: float(np.mean([s[k] for s in per_subset])) for k in
                     ("conditional_accuracy", "fd", "fd_real_floor", "fd_ratio", "precision", "recall", "coverage",
                      "train_seconds")}}


def summary_rows(res: dict) -> list[dict]:
    """The balanced-accuracy rows of a downstream experiment; a filtered pool gets its own row named
    "transfer / confidence" (real-only protocols run with filter "none" only, so they keep their names)."""
    return [{**r, "protocol": r["protocol"] if r["filter"] == "none" else f"{r['protocol']} / {r['filter']}",
             "real_only": r["protocol"] in REAL_ONLY} for r in res["summary"] if r["metric"] == "balanced_accuracy"]


def filter_acceptance(res: dict) -> dict:
    """Per filter and subset, the share of each class's synthetic pool a filter kept, beside the same rule's
    acceptance of real validation images where the filter reports it (the confidence filter does)."""
    out: dict = {}
    for cell in res["cells"]:
        report = cell.get("filter_report")
        if not report or cell["filter"] == "none":
            continue
        per_class = report.get("per_class") or {}
        out.setdefault(cell["filter"], {})[cell["repeat"]] = {
            "synthetic": {c: v.get("acceptance_rate") for c, v in per_class.items()},
            "real_val": (report.get("real_val_acceptance") or {}).get("per_class")}
    return out


def equal_budget_rows(args, cfg, splits, device, repeats, size: int) -> list[dict]:
    """The real-only protocols once more at the step budget of the longest synthetic protocol.

    ``transfer`` trains two stages (synthetic, then real) of up to --steps each, so beating real-only
    classifiers held to --steps could be more optimizer steps rather than synthetic images. The real-only
    bar therefore also gets stages x --steps; the best real-only row over both budgets is the bar."""
    protocols = cfg.downstream.protocols
    stages = max((stage_count(p) for p in protocols if p not in REAL_ONLY), default=1)
    real = [p for p in protocols if p in REAL_ONLY]
    if args.equal_budget == "off" or stages == 1 or not real:
        return []
    budget = stages * args.steps
    classifier = dataclasses.replace(cfg.downstream.classifier, steps=budget)
    cfg = dataclasses.replace(cfg, downstream=dataclasses.replace(cfg.downstream, protocols=real, classifier=classifier))
    validate(cfg)
    res = step_downstream_experiment(cfg, args.work, splits, device, repeats=repeats,
                                     exp_dir=args.work / f"n{size}_real_only_{budget}_steps", quiet=False)
    rows = [r for r in res["summary"] if r["filter"] == "none" and r["metric"] == "balanced_accuracy"]
    return [{**r, "protocol": f"{r['protocol']} ({budget} steps)", "steps": budget, "real_only": True} for r in rows]


def is_real_only(row: dict) -> bool:
    """Set where the row is made (its protocol uses no synthetic image), never read off the row's name."""
    return bool(row["real_only"])


def compare_to_real_only(rows: list[dict]) -> list[dict]:
    """Every row's paired difference to the plain baseline and to the best real-only row (over the subsets,
    which every experiment takes in the same order), recomputed here because rows of the equal-budget run
    were paired inside their own experiment."""
    baseline = next((r for r in rows if r["protocol"] == "baseline"), None)
    real = [r for r in rows if is_real_only(r)]
    best = max(real, key=lambda r: r["mean"]) if real else None
    out = []
    for r in rows:
        if baseline is not None:
            r["vs_baseline"] = None if r["protocol"] == "baseline" else \
                paired_difference(r["values"], baseline["values"])
        if best is not None and not r["real_only"]:
            r["best_real_only"] = best["protocol"]
            r["vs_best_real_only"] = paired_difference(r["values"], best["values"])
        out.append(r)
    return out


def guidance_sweep(args, splits, judge, device) -> dict:
    """Score the generators already trained under --work at each --guidance-sweep scale: the trade between
    class-recognisability (conditional accuracy) and diversity (coverage, FD) that the scale sets.
    Test-split figures, for the table only; a run chooses its scale on the validation split."""
    scales = [float(v) for v in args.guidance_sweep.split(",")]
    out: dict = {}
    for part in args.only.split(","):
        if part == "full":
            folders = [(args.work / "full" / "generator", splits.train)]
        else:
            subsets = disjoint_subsets(splits.train, 3, n_per_class=int(part), seed=0)
            folders = [(args.work / f"n{part}" / "generators" / f"repeat{i}", sub) for i, sub in enumerate(subsets)]
        folders = [(f, t) for f, t in folders if (f / "generator.json").is_file()]
        if not folders:
            raise SystemExit(f"--guidance-sweep: no trained generator for part {part} under {args.work}; run it first")
        rows = []
        for w in scales:
            scores = [score_generator(load_generator(f, device=device), t, splits, judge, args.samples_per_class,
                                      seed=1 + i, guidance=w)[0] for i, (f, t) in enumerate(folders)]
            rows.append({"guidance": w, "n_generators": len(scores), **{
                k: float(np.mean([sc[k] for sc in scores])) for k in
                ("conditional_accuracy", "fd", "fd_real_floor", "fd_ratio", "precision", "recall", "coverage",
                 "memorisation_flagged")},
                "memorisation_baseline_fraction": scores[0]["memorisation_baseline_fraction"]})
            print(rows[-1], flush=True)
        out[part] = {"samples_per_class": args.samples_per_class, "rows": rows}
    return out


def verdicts(results: dict) -> dict:
    out = {}
    f = (results.get("parts") or {}).get("full")
    if f:
        s = f["scores"]
        minutes = (s["train_seconds"] or 0) / 60
        out["full"] = {"met": s["conditional_accuracy"] >= 0.85 and s["fd_ratio"] <= 3 and minutes <= 30,
                       "by": f"conditional accuracy {s['conditional_accuracy']:.3f} (target 0.85, "
                             f"{s['conditional_accuracy'] - 0.85:+.3f}); FD ratio {s['fd_ratio']:.1f} (target 3); "
                             f"{minutes:.1f} min of training"}
    for size in ("50", "200"):
        p = (results.get("parts") or {}).get(size)
        if not p:
            continue
        rows = {r["protocol"]: r for r in p["downstream"]}
        real_best = max((k for k, r in rows.items() if is_real_only(r)), key=lambda k: rows[k]["mean"])
        syn_best = max((k for k, r in rows.items() if not is_real_only(r)), key=lambda k: rows[k]["mean"])
        gap = rows[syn_best]["mean"] - rows[real_best]["mean"]
        vs = paired_difference(rows[syn_best]["values"], rows[real_best]["values"])
        ci = (vs or {}).get("ci_low"), (vs or {}).get("ci_high")
        met = (gap >= 0.02 and ci[0] is not None and ci[0] > 0) if size == "50" else gap >= 0
        out[size] = {"met": bool(met), "by": f"best synthetic {syn_best} {rows[syn_best]['mean']:.3f} vs best real-only "
                     f"{real_best} {rows[real_best]['mean']:.3f}: {gap:+.3f}"
                     + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci[0] is not None else "")}
    return out


def markdown(results: dict) -> str:
    s = results["setup"]
    lines = [f"# Generator quality on BloodMNIST ({s['device']}, {s['threads']} threads, torch {s['torch']})", "",
             f"Generator: {s['generator']}. Independent judge: {s['judge']} (real test accuracy "
             f"{s['judge_real_test_accuracy']:.3f}); FD in its 128-d features against the real test split "
             f"(n={s['n_test']}), floor = real validation images at the same class counts. "
             f"{s['samples_per_class']} synthetic images per class. Downstream: small CNN [16,32,64], "
             f"{s['classifier_steps']} steps of batch 64 per training stage (a row named '(N steps)' is a real-only "
             "protocol given the N steps of a two-stage one), synthetic images per real one as each part says, "
             "mean ± std over 3 subsets, paired 95% t interval.", "",
             "| part | steps | syn/class | train min | cond. acc. | FD | floor | FD/floor | precision | recall | coverage "
             "| flagged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    parts = results.get("parts", {})
    for name, p in parts.items():
        g = p["scores"] if name == "full" else p["mean"]
        flagged = g.get("memorisation_flagged", sum(x["memorisation_flagged"] for x in p.get("generators", [])))
        lines.append(f"| {name} | {p.get('generator_steps', '?')} | {p.get('samples_per_class', '?')} | "
                     f"{(g['train_seconds'] or 0) / 60:.1f} | {g['conditional_accuracy']:.3f} | {g['fd']:.2f} | "
                     f"{g['fd_real_floor']:.2f} | {g['fd_ratio']:.1f} | {g['precision']:.3f} | {g['recall']:.3f} | "
                     f"{g['coverage']:.3f} | {flagged} |")
    for size in ("50", "200"):
        if size not in parts:
            continue
        ratio = parts[size].get("synthetic_ratio")
        lines += ["", f"## {size} images per class: balanced accuracy on the test split"
                  + (f" (synthetic ratio {ratio:g})" if ratio is not None else ""), "",
                  "| protocol | mean ± std | vs baseline [95% CI] | vs best real-only [95% CI] |", "|---|---|---|---|"]

        def diff(d):
            return "–" if not d or d.get("mean") is None else \
                f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"

        for r in parts[size]["downstream"]:
            best = f" ({r['best_real_only']})" if r.get("best_real_only") else ""
            lines.append(f"| {r['protocol']} | {r['mean']:.3f} ± {(r.get('std') or 0):.3f} | "
                         f"{diff(r.get('vs_baseline'))} | {diff(r.get('vs_best_real_only'))}{best} |")
        for filt, per_repeat in (parts[size].get("filter_acceptance") or {}).items():
            lines += ["", f"Filter '{filt}', share of each class kept (synthetic pool; real validation images "
                      "under the same rule where reported), mean over subsets:", "",
                      "| class | synthetic kept | real validation kept |", "|---|---|---|"]
            names = list(next(iter(per_repeat.values()))["synthetic"])
            for c in names:
                syn = [r["synthetic"].get(c) for r in per_repeat.values() if r["synthetic"].get(c) is not None]
                val = [(r["real_val"] or {}).get(c) for r in per_repeat.values()]
                val = [v for v in val if v is not None]
                lines.append(f"| {c} | {np.mean(syn):.3f} | " + (f"{np.mean(val):.3f}" if val else "–") + " |")
    for part, sw in results.get("guidance_sweep", {}).items():
        lines += ["", f"## Guidance scale, part {part} ({sw['samples_per_class']} per class, mean over "
                  f"{sw['rows'][0]['n_generators']} generator(s))", "",
                  "| guidance | cond. acc. | FD | floor | FD/floor | precision | recall | coverage | flagged |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sw["rows"]:
            lines.append(f"| {r['guidance']:g} | {r['conditional_accuracy']:.3f} | {r['fd']:.2f} | "
                         f"{r['fd_real_floor']:.2f} | {r['fd_ratio']:.1f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['coverage']:.3f} | {r['memorisation_flagged']:.0f} |")
    lines += ["", "## Targets", ""]
    for name, v in results.get("verdicts", {}).items():
        lines.append(f"- {name}: {'met' if v['met'] else 'MISSED'} ({TARGETS[name]}): {v['by']}")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--only", default="full,50,200", help="parts to run: full, 50, 200 (comma list)")
    ap.add_argument("--preset", default="pixel28", help="generator preset (default pixel28)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    ap.add_argument("--full-steps", type=int, default=4000, help="generator steps on the full split")
    ap.add_argument("--subset-steps", type=int, default=1500, help="generator steps per subset")
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps of every downstream classifier")
    ap.add_argument("--samples-per-class", type=int, default=200)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--protocols", default=",".join(PROTOCOLS),
                    help="downstream protocols of the subset parts (comma list; baseline and traditional needed)")
    ap.add_argument("--reuse-scores", action="store_true",
                    help="subset parts: keep the generator scores already in the JSON (same --work, steps and samples "
                         "per class) and only add downstream cells, e.g. a new protocol")
    ap.add_argument("--synthetic-ratio", type=float, default=1.0,
                    help="synthetic images added per real training image in the mixing protocols")
    ap.add_argument("--filters", default="none",
                    help="synthetic pools of the subset parts: none, global, class (realism), confidence (p(intended "
                         "class) >= select.tau under a classifier trained on the subset); comma list, one row each")
    ap.add_argument("--oversample", type=float, default=1.0,
                    help="synthetic pool per class = oversample x what a protocol needs (raise it with a filter)")
    ap.add_argument("--equal-budget", choices=["auto", "off"], default="auto",
                    help="auto: with a two-stage protocol (transfer) also run the real-only protocols at 2 x --steps, "
                         "so the synthetic side is never measured against a real-only bar given fewer steps")
    ap.add_argument("--guidance-sweep", default="", metavar="W1,W2,...",
                    help="only rescore the generators already trained for --only at these guidance scales")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("runs/generator_quality"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--grids", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = ap.parse_args()
    if not (args.data_root / "bloodmnist.npz").is_file():
        raise SystemExit(f"BloodMNIST not found at {args.data_root / 'bloodmnist.npz'}; pass --data-root")
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    try:
        cfg = study_config(args)  # --set, --filters, --oversample: validated once, before any work
    except ConfigError as e:
        print(f"generator_quality: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    splits = load_dataset(cfg.data)
    args.grids.mkdir(parents=True, exist_ok=True)
    out = args.out / f"generator_quality_{device}.json"
    results = json.loads(out.read_text()) if out.is_file() else {}
    args.previous_parts = results.get("parts", {})
    judge = DomainExtractor(splits.train, splits.val, JUDGE, seed=JUDGE_SEED, device=device, progress=False)
    real_acc = float((judge.classifier.predict(splits.test) == splits.test.labels).mean())
    results["setup"] = {
        "data": "BloodMNIST 28x28 RGB, official split", "n_train": len(splits.train), "n_val": len(splits.val),
        "n_test": len(splits.test), "preset": args.preset, "overrides": args.set,
        "generator": build_generator(cfg.generator, image_size=28, channels=3, class_names=splits.class_names)
        .describe()["summary"] + " (steps per part in the table)",
        "judge": f"smallcnn {JUDGE.widths} ({JUDGE.steps} steps, seed {JUDGE_SEED}) on the real training split",
        "judge_real_test_accuracy": real_acc, "samples_per_class": args.samples_per_class,
        "classifier_steps": args.steps, "synthetic_ratio": args.synthetic_ratio, "device": device, "threads": threads,
        "torch": torch.__version__,
        "platform": platform.platform(), "generator_settings": dataclasses.asdict(cfg.generator),
    }
    results.setdefault("parts", {})
    if args.guidance_sweep:
        sweep = guidance_sweep(args, splits, judge, device)
        on_disk = json.loads(out.read_text()) if out.is_file() else {}
        results = {**on_disk, "setup": results["setup"],
                   "guidance_sweep": {**on_disk.get("guidance_sweep", {}), **sweep}}
        atomic_write_text(json.dumps(results, indent=1, default=str) + "\n", out)
        atomic_write_text(markdown(results), out.with_suffix(".md"))
        print(markdown(results), flush=True)
        return
    for part in args.only.split(","):
        t0 = time.time()
        if part == "full":
            results["parts"]["full"] = part_full(args, cfg, splits, judge, device)
        elif part in ("50", "200"):
            try:
                results["parts"][part] = part_subsets(args, cfg, splits, judge, device, int(part))
            except NotEnoughSyntheticError as e:  # a filter kept too few: say which class and the knob, exit 2
                print(f"generator_quality: part {part}: {e}", file=sys.stderr)
                raise SystemExit(2) from None
        else:
            raise SystemExit(f"--only: unknown part {part!r}; use full, 50, 200")
        results["parts"][part]["wall_seconds"] = time.time() - t0
        # parts may run as separate processes at once: merge into what is on disk now, never overwrite it
        on_disk = json.loads(out.read_text()) if out.is_file() else {}
        results["parts"] = {**on_disk.get("parts", {}), part: results["parts"][part]}
        results["verdicts"] = verdicts(results)
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(results, indent=1, default=str) + "\n", out)
        atomic_write_text(markdown(results), out.with_suffix(".md"))
        print(markdown(results), flush=True)


if __name__ == "__main__":
    main()
