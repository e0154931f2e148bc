"""BloodMNIST small-data study: does synthetic data help a classifier trained on few images?

BloodMNIST 28x28 RGB (8 classes), official split. For each size (default 50 and 200 images per
class) three non-overlapping training subsets; a class-conditional diffusion model is trained
on each subset only; protocols baseline / traditional / mix / transfer / synthetic-only are
run per subset, the ratio sweep (real:synthetic 100:0 ... 0:100 at fixed total, and 100:100) on
the larger subsets, plus baseline / traditional / balance on an imbalanced variant of the larger
subsets (one class cut to 10% of the others). Every classifier gets the same number of optimizer
steps whatever its training-set size (``--steps``), is early-stopped on the real official
validation split and scored on the full official test split (3421 images).

    python benchmarks/bloodmnist_small_data.py                       # CPU default (~70 min, 2 cores)
    python benchmarks/bloodmnist_small_data.py --quick               # smoke test (~3 min)
    python benchmarks/bloodmnist_small_data.py --gen-steps 20000 --steps 5000 --widths 32,64,128 \
        --device cuda                                                # GPU size

Resumable: rerun the same command and finished cells (and trained generators) are reused.
Writes benchmarks/results/bloodmnist_small_data.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from synthmed.config import load_config, validate
from synthmed.data.sources import load_dataset
from synthmed.data.splits import disjoint_subsets, make_imbalanced
from synthmed.downstream.experiment import format_results_table
from synthmed.pipeline import step_downstream_experiment
from synthmed.runtime import resolve_device, set_threads

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auc")


def study_config(args):
    overrides = {
        "name": "bloodmnist_small_data", "seed": 0, "device": args.device,
        "data": {"dataset": "medmnist:bloodmnist", "data_root": str(args.data_root), "image_size": 28},
        "generator": {"space": "pixel", "block_out_channels": [16, 32, 64], "layers_per_block": 1,
                      "lr": 2e-3, "warmup_steps": 50, "batch_size": 64, "train_steps": args.gen_steps,
                      "sample_steps": 16, "guidance": 2.0, "checkpoint_every": 200, "log_every": 50},
        "downstream": {"classifier": {"arch": "smallcnn", "widths": args.widths, "steps": args.steps,
                                      "eval_every": args.eval_every, "patience": args.patience,
                                      "batch_size": 64},
                       "seeds": [0, 1, 2], "synthetic_ratio": 1.0},
    }
    return load_config(overrides=overrides)


def markdown(results: dict, title: str, extra_metrics: tuple[str, ...] = ()) -> str:
    """One row per protocol: mean ± std per metric and the paired difference in balanced accuracy
    vs baseline with its 95% t interval over subsets."""
    metrics = METRICS + extra_metrics
    rows: dict[str, dict] = {}
    for row in results["summary"]:
        if row["filter"] == "none" and row["metric"] in metrics:
            rows.setdefault(row["protocol"], {})[row["metric"]] = row
    lines = [f"### {title}", "",
             "| protocol | " + " | ".join(metrics) + " | Δ balanced acc. vs baseline [95% CI] |",
             "|---" * (len(metrics) + 2) + "|"]
    for protocol, by_metric in rows.items():
        cells = []
        for m in metrics:
            e = by_metric.get(m) or {}
            cells.append("–" if e.get("mean") is None else f"{e['mean']:.3f} ± {(e.get('std') or 0):.3f}")
        d = (by_metric.get("balanced_accuracy") or {}).get("vs_baseline") or {}
        diff = "–" if d.get("mean") is None else f"{d['mean']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]"
        lines.append(f"| {protocol} | " + " | ".join(cells) + f" | {diff} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--sizes", default="50,200", help="images per class of each training subset")
    ap.add_argument("--subsets", type=int, default=3, help="non-overlapping subsets per size")
    ap.add_argument("--gen-steps", type=int, default=700, help="diffusion training steps per subset")
    ap.add_argument("--steps", type=int, default=500, help="optimizer steps of every classifier")
    ap.add_argument("--eval-every", type=int, default=100, help="validate every this many steps")
    ap.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    ap.add_argument("--widths", default="16,32,64", help="small CNN block channels")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = all cores)")
    ap.add_argument("--minority", default="basophil", help="class cut to 10%% in the imbalanced variant")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("runs/bloodmnist_small_data"),
                    help="working folder (checkpoints, cells); rerun to resume")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--quick", action="store_true", help="tiny smoke configuration")
    args = ap.parse_args()
    if args.quick:
        args.sizes, args.subsets, args.gen_steps, args.steps, args.eval_every = "10", 2, 20, 20, 10
        args.work = args.work.with_name(args.work.name + "_quick")
    args.widths = [int(w) for w in str(args.widths).split(",")]
    if not (args.data_root / "bloodmnist.npz").is_file():
        raise SystemExit(f"BloodMNIST not found at {args.data_root / 'bloodmnist.npz'}; pass --data-root")

    t_start = time.time()
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    cfg = study_config(args)
    splits = load_dataset(cfg.data)  # official split; train images identical to val/test ones dropped
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict = {"dataset": "BloodMNIST 28x28 RGB, official split", "data_steps": splits.train.meta.get("steps"),"device": device, "threads": threads,
                    "torch": torch.__version__, "platform": platform.platform(),
                    "test_images": len(splits.test), "val_images": len(splits.val),
                    "generator": {"train_steps": args.gen_steps, "widths": cfg.generator.block_out_channels,
                                  "sampler": f"{cfg.generator.sampler} {cfg.generator.sample_steps} steps, "
                                             f"guidance {cfg.generator.guidance}"},
                    "classifier": {"arch": "smallcnn", "widths": args.widths, "steps": args.steps,
                                   "eval_every": args.eval_every, "patience": args.patience, "batch_size": 64},
                    "experiments": {}}
    md = [f"BloodMNIST small-data study ({device}, {threads} threads, torch {torch.__version__}). "
          f"Test: official split, n={len(splits.test)}. Classifier: small CNN {args.widths}, {args.steps} "
          f"optimizer steps of batch 64 for every protocol, validated every {args.eval_every} steps on the "
          f"official val split, early stopping (patience {args.patience}), best weights kept. Generator: pixel diffusion "
          f"{cfg.generator.block_out_channels}, {args.gen_steps} steps per subset, trained on that subset only. "
          f"Mean ± sample std over {args.subsets} non-overlapping subsets.\n"]

    for size in sizes:
        t0 = time.time()
        subsets = disjoint_subsets(splits.train, args.subsets, n_per_class=size, seed=0)
        repeats = [(f"n{size}_subset{i}", sub, i) for i, sub in enumerate(subsets)]
        protocols = ["baseline", "traditional", "mix", "transfer", "synthetic-only"]
        if size == max(sizes):
            protocols.append("ratio-sweep")
        res = _run(cfg, args, splits, device, repeats, f"n{size}", protocols)
        report["experiments"][f"{size}_per_class"] = {"seconds": time.time() - t0, "summary": res["summary"]}
        md.append(markdown(res, f"{size} images per class ({8 * size} training images), wall {time.time() - t0:.0f} s"))

    size = max(sizes)
    t0 = time.time()
    subsets = disjoint_subsets(splits.train, args.subsets, n_per_class=size, seed=0)
    repeats = [(f"imb{size}_subset{i}", make_imbalanced(sub, args.minority, 0.1, seed=i), i)
               for i, sub in enumerate(subsets)]
    res = _run(cfg, args, splits, device, repeats, f"imbalanced{size}", ["baseline", "traditional", "balance"])
    report["experiments"][f"imbalanced_{size}_per_class"] = {"seconds": time.time() - t0, "summary": res["summary"],
                                                             "minority": args.minority}
    md.append(markdown(res, f"imbalanced: {size} per class, '{args.minority}' cut to 10%, wall "
                            f"{time.time() - t0:.0f} s", extra_metrics=(f"recall[{args.minority}]",
                                                                        f"f1[{args.minority}]")))
    report["wall_seconds"] = time.time() - t_start
    md.append(f"\nTotal wall time: {report['wall_seconds'] / 60:.1f} min.\n")

    args.out.mkdir(parents=True, exist_ok=True)
    name = "bloodmnist_small_data" + ("_quick" if args.quick else "")
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text("\n".join(md))
    print("\n".join(md))
    print(f"written: {args.out / name}.json / .md")


def _run(cfg, args, splits, device, repeats, key, protocols):
    # a new, checked config per group of protocols (a checked config is never changed in place)
    cfg = dataclasses.replace(cfg, downstream=dataclasses.replace(cfg.downstream, protocols=list(protocols)))
    validate(cfg)
    res = step_downstream_experiment(cfg, args.work, splits, device, repeats=repeats, exp_dir=args.work / key,
                                     quiet=False)
    print(format_results_table(res["summary"]), flush=True)
    return res


if __name__ == "__main__":
    main()
