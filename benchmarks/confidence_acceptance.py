"""Confidence-filter acceptance at several tau for subset 0's generator (50 per class), synthetic pool vs real val.

Run after `generator_quality.py --only 50 ... --work runs/gq50conf` has trained subset 0's generator: the
selector is the classifier the downstream confidence filter trains on that subset (cached in its feature_cache).
Writes benchmarks/results/generator_quality_attempts/confidence/acceptance_subset0.json (docs/benchmarks.md)."""
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
import numpy as np
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import generator_quality as gq
from synthmed.data.sources import load_dataset
from synthmed.data.splits import disjoint_subsets
from synthmed.features.domain import DomainExtractor
from synthmed.generators.registry import load_generator
from synthmed.runtime import set_threads
from synthmed.selection.confidence import intended_class_probability
set_threads(2)
args = SimpleNamespace(set=[], data_root=gq.DEFAULT_ROOT, device="cpu", steps=500, synthetic_ratio=3.0,
                       filters="none", oversample=1.0, preset="pixel28")
cfg = gq.study_config(args)
splits = load_dataset(cfg.data)
sub = disjoint_subsets(splits.train, 3, n_per_class=50, seed=0)[0]
w = ROOT / "runs" / "gq50conf" / "n50"
ext = DomainExtractor(sub, splits.val, cache_dir=w / "feature_cache", device="cpu")
gen = load_generator(w / "generators" / "repeat0", device="cpu")
t0 = time.time()
syn = gen.sample([200] * 8, seed=1, progress=False)
print("sampled", len(syn), "in", round(time.time() - t0), "s", flush=True)
ps, pv = intended_class_probability(ext.classifier, syn), intended_class_probability(ext.classifier, splits.val)
out = {"selector": "DomainExtractor classifier trained on subset 0 (400 images), as the downstream filter uses",
       "n_synthetic_per_class": 200, "n_val": len(splits.val), "per_class": {}}
for i, c in enumerate(splits.class_names):
    ms, mv = syn.labels == i, splits.val.labels == i
    out["per_class"][c] = {f"tau {t}": {"synthetic": float((ps[ms] >= t).mean()), "real_val": float((pv[mv] >= t).mean())}
                           for t in (0.5, 0.7, 0.9)}
    out["per_class"][c]["median p"] = {"synthetic": float(np.median(ps[ms])), "real_val": float(np.median(pv[mv]))}
out["overall"] = {f"tau {t}": {"synthetic": float((ps >= t).mean()), "real_val": float((pv >= t).mean())} for t in (0.5, 0.7, 0.9)}
(ROOT / "benchmarks/results/generator_quality_attempts/confidence").mkdir(parents=True, exist_ok=True)
(ROOT / "benchmarks/results/generator_quality_attempts/confidence/acceptance_subset0.json").write_text(json.dumps(out, indent=1))
for c, d in out["per_class"].items():
    print(c[:22].ljust(22), " ".join(f"{k}: syn {v['synthetic']:.3f} val {v['real_val']:.3f}" for k, v in d.items()))
print("overall", out["overall"])
