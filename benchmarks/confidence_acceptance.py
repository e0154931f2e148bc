"""How much of each class the downstream confidence filter keeps at several tau: one subset's generator and
selector, synthetic samples against the real validation split.

Run after `generator_quality.py --only 50 ... --work runs/gq50conf` has trained the subset's generator. The
selector is the classifier the downstream confidence filter trains on that subset (the same call, so it is
read from the experiment's feature cache). Probabilities are computed once and thresholded at every tau.

    python benchmarks/confidence_acceptance.py --work runs/gq50conf --subset 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import generator_quality as gq  # noqa: E402  (its study config: the same data and splits as the benchmark)

from synthmed.data.sources import load_dataset  # noqa: E402
from synthmed.data.splits import disjoint_subsets  # noqa: E402
from synthmed.features.domain import DomainExtractor  # noqa: E402
from synthmed.files import atomic_write_text  # noqa: E402
from synthmed.generators.registry import load_generator  # noqa: E402
from synthmed.runtime import set_threads  # noqa: E402
from synthmed.selection.confidence import intended_class_probability  # noqa: E402


def kept(p: np.ndarray, tau: float) -> float:
    return float((p >= tau).mean()) if len(p) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "gq50conf", help="generator_quality.py --work")
    ap.add_argument("--size", type=int, default=50, help="images per class of the subset part")
    ap.add_argument("--subset", type=int, default=0, help="which of the 3 subsets")
    ap.add_argument("--per-class", type=int, default=200, help="synthetic images sampled per class")
    ap.add_argument("--taus", default="0.5,0.7,0.9")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path,
                    default=ROOT / "benchmarks" / "results" / "generator_quality_attempts" / "confidence")
    args = ap.parse_args()
    taus = [float(t) for t in args.taus.split(",")]
    set_threads(args.threads)
    cfg = gq.study_config(SimpleNamespace(set=[], data_root=gq.DEFAULT_ROOT, device="cpu", steps=500,
                                          synthetic_ratio=3.0, filters="none", oversample=1.0, preset="pixel28"))
    splits = load_dataset(cfg.data)
    sub = disjoint_subsets(splits.train, 3, n_per_class=args.size, seed=0)[args.subset]
    exp = args.work / f"n{args.size}"
    folder = exp / "generators" / f"repeat{args.subset}"
    if not (folder / "generator.json").is_file():
        raise SystemExit(f"no trained generator at {folder}; run generator_quality.py --only {args.size} "
                         f"--work {args.work} first")
    # the selector of synthmed.downstream.experiment's confidence filter: trained on this subset only
    selector = DomainExtractor(sub, splits.val, cache_dir=exp / "feature_cache", device="cpu").classifier
    t0 = time.time()
    syn = load_generator(folder, device="cpu").sample([args.per_class] * len(splits.class_names), seed=1,
                                                      progress=False)
    print(f"sampled {len(syn)} in {time.time() - t0:.0f} s", flush=True)
    ps, pv = intended_class_probability(selector, syn), intended_class_probability(selector, splits.val)
    out = {"selector": f"DomainExtractor classifier trained on subset {args.subset} ({len(sub)} images), as the "
                       "downstream filter uses", "n_synthetic_per_class": args.per_class, "n_val": len(splits.val),
           "per_class": {}}
    for i, c in enumerate(splits.class_names):
        s, v = ps[syn.labels == i], pv[splits.val.labels == i]
        out["per_class"][c] = {f"tau {t}": {"synthetic": kept(s, t), "real_val": kept(v, t)} for t in taus}
        out["per_class"][c]["median p"] = {"synthetic": float(np.median(s)), "real_val": float(np.median(v))}
    out["overall"] = {f"tau {t}": {"synthetic": kept(ps, t), "real_val": kept(pv, t)} for t in taus}
    atomic_write_text(json.dumps(out, indent=1) + "\n", args.out / f"acceptance_subset{args.subset}.json")
    for c, d in out["per_class"].items():
        print(c[:22].ljust(22), " ".join(f"{k}: syn {x['synthetic']:.3f} val {x['real_val']:.3f}" for k, x in d.items()))
    print("overall", out["overall"])


if __name__ == "__main__":
    main()
