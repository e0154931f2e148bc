"""Minority balancing on the demo's rare 3-cell class with each generator family (issue #10).

The embedded embryo set of `synthmed demo` (400 / 140 / 400 images of 2-cell / 3-cell / 4-cell at 32 px):
each family (diffusion with the demo's settings, R3GAN `r3gan28`, ProGAN `progan28`, sized for 32 px by
their stage count) trains once on the real training split for the same ``--minutes``; then the
``balance`` protocol (synthetic images of each class up to the largest class: 260 synthetic 3-cell
images) against ``baseline`` over ``--seeds``, paired per seed: per-class recall and F1 of 3-cell,
macro-F1 and balanced accuracy with 95% t intervals. The `r3gan-small` paper's figure: minority recall
0.06 -> 0.69, F1 0.11 -> 0.60 (a far more extreme imbalance than 140 of 940).

    python benchmarks/demo_balance.py --minutes 4 --seeds 0,1,2      # ~25 min on one CPU core

Writes ``benchmarks/results/demo_balance_<device>.{json,md}``; resumable (cells and generators under
``--work``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import torch

from synthmed.compare import at_equal_time, family_generator_config
from synthmed.config import load_config, validate
from synthmed.downstream.experiment import format_results_table
from synthmed.pipeline import step_data, step_downstream_experiment
from synthmed.runtime import resolve_device, set_threads

MINORITY = "3-cell"
KEYS = ("balanced_accuracy", "f1_macro", f"recall[{MINORITY}]", f"f1[{MINORITY}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--generators", default="diffusion,r3gan,progan")
    ap.add_argument("--minutes", type=float, default=4.0, help="training wall time of every family")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("runs/demo_balance"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    base = load_config(preset="demo", overrides={"device": device, "threads": args.threads,
                                                 "out_dir": str(args.work.parent), "name": args.work.name})
    base = dataclasses.replace(base, downstream=dataclasses.replace(
        base.downstream, protocols=["baseline", "balance"], seeds=seeds, subsets=0, reuse_generator=True))
    args.work.mkdir(parents=True, exist_ok=True)
    splits = step_data(base, args.work, quiet=True)
    t_start = time.time()
    report = {"dataset": f"embedded embryo set (demo preset), train {splits.train.class_counts()} per class",
              "minority": MINORITY, "device": device, "threads": threads, "torch": torch.__version__,
              "platform": platform.platform(), "minutes_per_generator": args.minutes, "seeds": seeds, "kinds": {}}
    md = [f"Minority balancing on the demo's {MINORITY} class ({report['dataset']}; test "
          f"{splits.test.class_counts()}): each family trained once on the real training split for "
          f"{args.minutes:g} min ({device}, {threads} thread(s)); `balance` vs `baseline` paired over seeds {seeds} "
          "(small CNN, the demo's downstream classifier).\n"]
    for kind in [k.strip() for k in args.generators.split(",") if k.strip()]:
        g = at_equal_time(family_generator_config(base, kind), args.minutes)
        cfg = dataclasses.replace(base, generator=g)
        validate(cfg)
        t0 = time.time()
        res = step_downstream_experiment(cfg, args.work, splits, device, exp_dir=args.work / kind, quiet=True)
        rows = [r for r in res["summary"] if r["metric"] in KEYS and r["filter"] == "none"]
        report["kinds"][kind] = {"seconds": time.time() - t0, "summary": rows, "generator": dataclasses.asdict(g)}
        md += [f"### {kind}, wall {time.time() - t0:.0f} s\n", "```", format_results_table(rows, metrics=KEYS), "```",
               ""]
        print("\n".join(md[-4:]), flush=True)
    report["wall_seconds"] = time.time() - t_start
    md.append(f"Total wall time: {report['wall_seconds'] / 60:.1f} min.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"demo_balance_{device}"
    (args.out / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / f"{name}.md").write_text("\n".join(md))
    print(f"written: {args.out / name}.json / .md")


if __name__ == "__main__":
    main()
