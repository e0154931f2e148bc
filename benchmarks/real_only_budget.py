"""Is `transfer`'s lead in generator_quality.py's 50-per-class part more classifier steps, not synthetic images?

`transfer` trains twice (pretrain on synthetic images, then fine-tune on real, each stage up to the
classifier's step budget and early-stopped on real validation), so it may spend twice the optimizer steps
of `baseline` and `traditional`. This reruns the two real-only protocols on the SAME three disjoint
50-per-class BloodMNIST subsets, seeds and classifier, at twice the step budget, so the comparison is at
equal (or greater) compute for the real-only side. No generator is trained.

    python benchmarks/real_only_budget.py --steps 1000 --threads 1

Writes ``benchmarks/results/real_only_budget_<device>.json``; resumable cell by cell under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from generator_quality import DEFAULT_ROOT, study_config, with_steps

from synthmed.data.sources import load_dataset
from synthmed.data.splits import disjoint_subsets
from synthmed.files import atomic_write_text
from synthmed.pipeline import step_downstream_experiment
from synthmed.runtime import resolve_device, set_threads


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--size", type=int, default=50, help="images per class of each subset")
    ap.add_argument("--steps", type=int, default=1000, help="optimizer steps of every real-only classifier")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--work", type=Path, default=Path("runs/real_only_budget"))
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    # the generator_quality settings (same preset, data, classifier family, seeds), real-only protocols
    gq_args = argparse.Namespace(set=[], data_root=args.data_root, device=args.device, steps=args.steps,
                                 synthetic_ratio=1.0, preset="pixel28")
    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    cfg = with_steps(study_config(gq_args), 1)
    import dataclasses

    cfg = dataclasses.replace(cfg, downstream=dataclasses.replace(cfg.downstream, protocols=["baseline", "traditional"]))
    splits = load_dataset(cfg.data)
    subsets = disjoint_subsets(splits.train, 3, n_per_class=args.size, seed=0)  # generator_quality's subsets
    repeats = [(f"n{args.size}_subset{i}", sub, i) for i, sub in enumerate(subsets)]
    t0 = time.time()
    res = step_downstream_experiment(cfg, args.work, splits, device, repeats=repeats, exp_dir=args.work / f"n{args.size}",
                                     quiet=False)
    summary = [r for r in res["summary"] if r["filter"] == "none"]
    out = args.out / f"real_only_budget_{device}.json"
    atomic_write_text(json.dumps({"size": args.size, "classifier_steps": args.steps, "threads": threads,
                                  "seconds": time.time() - t0, "summary": summary}, indent=1, default=str) + "\n", out)
    for r in summary:
        if r["metric"] == "balanced_accuracy":
            print(r["protocol"], r["mean"], r.get("std"), flush=True)


if __name__ == "__main__":
    main()
