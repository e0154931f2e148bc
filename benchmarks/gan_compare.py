"""Generator families on BloodMNIST at equal wall time: diffusion vs R3GAN vs conditional ProGAN (issue #10).

Every generator gets the same training budget (``--minutes``, its ``generator.budget_minutes``: the
number of steps, or for a GAN the kimg with every schedule and growing phase scaled alike, is set
from the speed measured over the first steps). Parts:

- ``full``: trained on the whole official training split;
- ``200``: trained on ``--subsets`` non-overlapping subsets of 200 images per class;
- ``balance``: 200 per class with ``--minority`` cut to 10%; the ``balance`` protocol (synthetic images
  of each class up to the largest class) against ``baseline`` for each generator, per-class recall /
  F1 and macro-F1 over the subsets with paired 95% intervals (the `r3gan-small` paper: minority
  recall 0.06 -> 0.69, F1 0.11 -> 0.60).

For every trained generator: domain FD against the real test split next to the same-N real floor,
precision / recall / coverage, conditional accuracy by an independent judge (trained once on the real
training split), the mode-collapse guard (synthmed.metrics.diversity), sampling speed (images/s) and
training wall time. `blastdiffusion` reports diffusion FID 94 against ProGAN 233: the table says
whether that ordering holds here.

    python benchmarks/gan_compare.py --minutes 12                       # ~2.5 h on 2 CPU cores
    python benchmarks/gan_compare.py --minutes 0.5 --quick              # smoke size (~5 min)
    python benchmarks/gan_compare.py --device cuda --minutes 30 --presets diffusion=pixel28,r3gan=r3gan28,progan=progan28

Writes ``benchmarks/results/gan_compare_<device>[_quick].{json,md}`` and sample grids to ``--grids``.
Resumable: trained generators under ``--work`` are reused on a rerun.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generator_quality import JUDGE, JUDGE_SEED, real_floor, save_grid  # noqa: E402

from synthmed.config import ClassifierConfig, load_config, set_dotted, validate  # noqa: E402
from synthmed.data.sources import load_dataset  # noqa: E402
from synthmed.data.splits import disjoint_subsets, make_imbalanced  # noqa: E402
from synthmed.downstream.experiment import format_results_table  # noqa: E402
from synthmed.features.domain import DomainExtractor  # noqa: E402
from synthmed.generators.registry import build_generator, load_generator  # noqa: E402
from synthmed.metrics.conditional_accuracy import conditional_accuracy  # noqa: E402
from synthmed.metrics.diversity import class_diversity  # noqa: E402
from synthmed.metrics.evaluate import evaluate  # noqa: E402
from synthmed.pipeline import step_downstream_experiment  # noqa: E402
from synthmed.runtime import resolve_device, set_threads  # noqa: E402

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
DEFAULT_PRESETS = {"diffusion": "pixel28", "r3gan": "r3gan28", "progan": "progan28"}
#: planned length far beyond what the budget fits, so every family trains for the whole budget
GAN_CAP_KIMG = 2000.0
DIFFUSION_CAP_STEPS = 10**6


def family_config(kind: str, preset: str, args, extra: dict | None = None):
    overrides: dict = {}
    for item in args.set:
        key, val = item.split("=", 1)
        set_dotted(overrides, key, val)
    overrides = {**overrides, "device": args.device, "seed": 0,
                 "data": {"dataset": "medmnist:bloodmnist", "data_root": str(args.data_root), "image_size": 28,
                          **(extra or {})}}
    cfg = load_config(preset=preset, overrides=overrides)
    g = cfg.generator
    if g.kind != kind:
        raise SystemExit(f"preset {preset} is a {g.kind} generator, not {kind}")
    if kind == "diffusion":
        g = dataclasses.replace(g, budget_minutes=args.minutes, train_steps=DIFFUSION_CAP_STEPS,
                                checkpoint_every=500)
    else:
        # phases keep their share of the training when the budget scales it
        factor = GAN_CAP_KIMG / g.train_kimg
        changes = {"budget_minutes": args.minutes, "train_kimg": GAN_CAP_KIMG, "fd_every_kimg": 0.0}
        if kind == "progan":
            changes["phase_kimg"] = g.phase_kimg * factor
        g = dataclasses.replace(g, **changes)
    cfg = dataclasses.replace(cfg, generator=g, downstream=dataclasses.replace(
        cfg.downstream, classifier=ClassifierConfig(arch="smallcnn", widths=[16, 32, 64], steps=args.steps,
                                                    eval_every=100, patience=3),
        seeds=[0, 1, 2], synthetic_ratio=1.0))
    validate(cfg)
    return cfg


def train_or_load(cfg, train, val, folder: Path, device: str):
    if (folder / "generator.json").is_file():
        return load_generator(folder, device=device)
    gen = build_generator(cfg.generator, image_size=train.image_size, channels=train.channels,
                          class_names=train.class_names, device=device, seed=cfg.seed)
    gen.fit(train, val, checkpoint_dir=folder / "checkpoints", progress=True)
    gen.save(folder)
    return gen


def score(gen, train, splits, judge, per_class: int, seed: int) -> tuple[dict, object]:
    syn = gen.sample([per_class] * len(splits.class_names), seed=seed, progress=False)
    ca = conditional_accuracy(judge.classifier, syn)
    ev = evaluate(splits.test, syn, judge, metrics=("fid", "precision", "recall", "coverage"), per_class=False,
                  n_boot=0, seed=seed, real_train_fingerprint=splits.train.fingerprint())
    m = ev["rows"][0]["metrics"]
    floor = real_floor(judge, splits.val, splits.test, syn.class_counts(), seed=seed)
    div = class_diversity(judge.extract(splits.test), splits.test.labels, judge.extract(syn), syn.labels,
                          splits.class_names)
    h = gen.history
    return {
        "train_seconds": h.get("train_seconds"), "train_steps": gen.describe()["train_steps"],
        "train_kimg": gen.describe().get("train_kimg"), "train_images_per_second": h.get("images_per_second"),
        "sampling_images_per_second": syn.meta["images_per_second"], "n_synthetic": len(syn),
        "conditional_accuracy": ca["accuracy"]["accuracy"], "fd": m["fid"]["value"], "fd_real_floor": floor["fd"],
        "fd_ratio": m["fid"]["value"] / max(floor["fd"], 1e-12), "precision": m["precision"]["value"],
        "recall": m["recall"]["value"], "coverage": m["coverage"]["value"],
        "collapsed_classes": div["collapsed"],
        "min_spread_ratio": min((e["spread_ratio"] for e in div["per_class"].values()
                                 if e["spread_ratio"] is not None), default=None),
    }, syn


COLUMNS = [("train_seconds", "train s", "{:.0f}"), ("train_steps", "steps", "{}"), ("fd", "FD", "{:.3g}"),
           ("fd_real_floor", "real floor", "{:.3g}"), ("fd_ratio", "FD ratio", "{:.2f}"),
           ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"), ("coverage", "coverage", "{:.3f}"),
           ("conditional_accuracy", "cond. acc.", "{:.3f}"), ("sampling_images_per_second", "sampling img/s", "{:.0f}"),
           ("min_spread_ratio", "min spread ratio", "{:.2f}")]


def table(rows: dict[str, dict]) -> str:
    head = "| generator | " + " | ".join(c[1] for c in COLUMNS) + " | collapsed |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for name, r in rows.items():
        cells = [fmt.format(r[k]) if r.get(k) is not None else "-" for k, _, fmt in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {', '.join(r['collapsed_classes']) or '-'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--generators", default="diffusion,r3gan,progan")
    ap.add_argument("--presets", default="", help="kind=preset,... (default diffusion=pixel28,r3gan=r3gan28,"
                                                  "progan=progan28)")
    ap.add_argument("--minutes", type=float, default=12.0, help="training budget of every generator")
    ap.add_argument("--parts", default="full,200,balance")
    ap.add_argument("--subsets", type=int, default=3, help="non-overlapping subsets of the 200 / balance parts")
    ap.add_argument("--minority", default="basophil", help="class cut to 10%% in the balance part")
    ap.add_argument("--samples-per-class", type=int, default=200)
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps of every downstream classifier")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="smoke size: 20 per class in the subset parts, 1 subset "
                    "for 200, 2 for balance, a small judge, 20 samples per class, 20 classifier steps")
    ap.add_argument("--work", type=Path, default=Path("runs/gan_compare"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--grids", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "images")
    args = ap.parse_args()
    size = 200
    judge_cfg = JUDGE
    if args.quick:
        size, args.samples_per_class, args.steps = 20, 20, 20
        judge_cfg = dataclasses.replace(JUDGE, steps=100, eval_every=50)
        args.work = args.work.with_name(args.work.name + "_quick")
        args.grids = args.work / "grids"
    presets = dict(DEFAULT_PRESETS)
    presets.update(dict(p.split("=", 1) for p in args.presets.split(",") if p))
    kinds = [k.strip() for k in args.generators.split(",") if k.strip()]
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    t_start = time.time()
    cfgs = {k: family_config(k, presets[k], args) for k in kinds}
    splits = load_dataset(cfgs[kinds[0]].data)
    judge = DomainExtractor(splits.train, splits.val, judge_cfg, cache_dir=None, seed=JUDGE_SEED, device=device)
    args.grids.mkdir(parents=True, exist_ok=True)
    report: dict = {"dataset": "BloodMNIST 28x28 RGB, official split", "device": device, "threads": threads,
                    "torch": torch.__version__, "platform": platform.platform(), "minutes_per_generator": args.minutes,
                    "presets": {k: presets[k] for k in kinds}, "quick": args.quick, "parts": {}}
    md = [f"Generator families on BloodMNIST at equal wall time (the training minutes of each part are stated with it; {device}, "
          f"{threads} threads, torch {torch.__version__}). FD in the judge's features against the real test split, "
          "next to the real floor (real validation images at the same class counts); judge: small CNN trained once "
          f"on the real training split. {args.samples_per_class} samples per class.\n"]

    if "full" in parts:
        rows = {}
        for k in kinds:
            gen = train_or_load(cfgs[k], splits.train, splits.val, args.work / "full" / k, device)
            rows[k], syn = score(gen, splits.train, splits, judge, args.samples_per_class, seed=1)
            save_grid(syn, args.grids / f"gan_compare_full_{k}.png")
        report["parts"]["full"] = rows
        md += [f"## Full training split ({len(splits.train)} images)\n", table(rows), ""]

    if "200" in parts:
        n_sub = 1 if args.quick else args.subsets
        subsets = disjoint_subsets(splits.train, n_sub, n_per_class=size, seed=0)
        per_kind = {}
        for k in kinds:
            scores = []
            for i, sub in enumerate(subsets):
                gen = train_or_load(cfgs[k], sub, splits.val, args.work / f"n{size}" / f"{k}_subset{i}", device)
                s, _ = score(gen, sub, splits, judge, args.samples_per_class, seed=1 + i)
                scores.append(s)
            mean = {key: (float(np.mean([s[key] for s in scores])) if isinstance(scores[0][key], (int, float)) else
                          scores[0][key]) for key in scores[0]}
            mean["collapsed_classes"] = sorted({c for s in scores for c in s["collapsed_classes"]})
            per_kind[k] = {"mean": mean, "per_subset": scores}
        report["parts"][str(size)] = per_kind
        md += [f"## {size} images per class (mean over {n_sub} subset(s))\n",
               table({k: v["mean"] for k, v in per_kind.items()}), ""]

    if "balance" in parts:
        n_sub = 2 if args.quick else args.subsets
        subsets = disjoint_subsets(splits.train, n_sub, n_per_class=size, seed=0)
        repeats = [(f"imb{size}_subset{i}", make_imbalanced(sub, args.minority, 0.1, seed=i), i)
                   for i, sub in enumerate(subsets)]
        report["parts"]["balance"] = {"minority": args.minority, "kinds": {}}
        md.append(f"## Balancing: {size} per class, '{args.minority}' cut to 10%, {n_sub} subsets\n")
        keys = ("balanced_accuracy", "f1_macro", f"recall[{args.minority}]", f"f1[{args.minority}]")
        for k in kinds:
            cfg = dataclasses.replace(cfgs[k], downstream=dataclasses.replace(
                cfgs[k].downstream, protocols=["baseline", "balance"]))
            validate(cfg)
            t0 = time.time()
            res = step_downstream_experiment(cfg, args.work, splits, device, repeats=repeats,
                                             exp_dir=args.work / f"balance_{k}", quiet=True)
            rows = [r for r in res["summary"] if r["metric"] in keys and r["filter"] == "none"]
            report["parts"]["balance"]["kinds"][k] = {"seconds": time.time() - t0, "summary": rows}
            md += [f"### {k} ({presets[k]}), wall {time.time() - t0:.0f} s\n", "```",
                   format_results_table(rows, metrics=keys), "```", ""]

    report["wall_seconds"] = time.time() - t_start
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"gan_compare_{device}" + ("_quick" if args.quick else "")
    path = args.out / f"{name}.json"
    if path.is_file():  # parts run at another time keep their results (each part states its own budget)
        old = json.loads(path.read_text())
        for part, rows in old.get("parts", {}).items():
            if part not in report["parts"]:
                report["parts"][part] = rows
                report.setdefault("part_runs", {})[part] = old.get("part_runs", {}).get(part) or {
                    k: old.get(k) for k in ("minutes_per_generator", "threads", "wall_seconds")}
    for part in parts:
        report.setdefault("part_runs", {})[part] = {"minutes_per_generator": args.minutes, "threads": threads,
                                                    "wall_seconds": report["wall_seconds"]}
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    md = [md[0]] + markdown_parts(report, args)
    (args.out / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"written: {args.out / name}.json / .md")


def markdown_parts(report: dict, args) -> list[str]:
    """Every part in the results file, each with the budget it was run at."""
    md: list[str] = []
    runs = report.get("part_runs", {})
    for part in ("full", "200", "20", "balance"):
        rows = report["parts"].get(part)
        if rows is None:
            continue
        run = runs.get(part) or {}
        budget = (f" ({run['minutes_per_generator']:g} min of training per generator, {run.get('threads')} thread(s); "
                  f"whole run {run['wall_seconds'] / 60:.0f} min)" if run.get("minutes_per_generator") else "")
        if part == "full":
            md += [f"## Full training split{budget}\n", table(rows), ""]
        elif part == "balance":
            keys = ("balanced_accuracy", "f1_macro", f"recall[{rows['minority']}]", f"f1[{rows['minority']}]")
            md.append(f"## Balancing: '{rows['minority']}' cut to 10%{budget}\n")
            for k, v in rows["kinds"].items():
                md += [f"### {k}, wall {v['seconds']:.0f} s\n", "```", format_results_table(v["summary"], metrics=keys),
                       "```", ""]
        else:
            md += [f"## {part} images per class (mean over {len(next(iter(rows.values()))['per_subset'])} "
                   f"subset(s)){budget}\n", table({k: v["mean"] for k, v in rows.items()}), ""]
    return md


if __name__ == "__main__":
    main()
