"""Diffusion formulations compared at equal compute on BloodMNIST (issue #9, part 2).

Every recipe trains the same U-Net for the same number of steps of the same batch on the same
training images (the official BloodMNIST training split, or a per-class subset of it), then samples
the same number of images per class with the same sampler budget. Scored by a judge (a classifier
trained once on the real training split, independent of every generator) and in the judge's
feature space against the real validation split:

- conditional accuracy: the fraction of synthetic images the judge assigns to their class;
- FD (Frechet distance of judge features) synthetic vs real val, next to the real floor
  (real test vs real val at the same class counts) and their ratio;
- wall time of training and sampling.

    python benchmarks/diffusion_recipes.py --steps 1500 --threads 2
    python benchmarks/diffusion_recipes.py --recipes edm,ddpm-eps --steps 3000 --per-class 200

Writes benchmarks/results/diffusion_recipes_<device>.json and .md; resumable recipe by recipe
(a finished recipe in the JSON is not rerun unless --fresh).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from synthmed.config import ClassifierConfig, DiffusionConfig
from synthmed.data.sources import load_medmnist
from synthmed.data.splits import per_class_subset
from synthmed.features.domain import DomainExtractor
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.metrics.conditional_accuracy import conditional_accuracy
from synthmed.metrics.fid import frechet_distance_from_features
from synthmed.metrics.evaluate import real_fd_floor
from synthmed.runtime import resolve_device, set_threads

RECIPES = {
    "ddpm-eps": dict(formulation="ddpm", prediction_type="epsilon", loss_weighting="uniform"),
    "ddpm-eps-minsnr": dict(formulation="ddpm", prediction_type="epsilon", loss_weighting="min_snr"),
    "ddpm-v-minsnr": dict(formulation="ddpm", prediction_type="v_prediction", loss_weighting="min_snr"),
    "edm": dict(formulation="edm"),
}


def real_floor(extractor, val, test, counts, seed=0) -> float:
    """FD of real test images (drawn at the synthetic set's class counts) vs real val: what a perfect
    generator would score with this N (this benchmark's FD reference is the validation split, so the roles
    of synthmed.metrics.evaluate.real_fd_floor's two splits are swapped)."""
    return real_fd_floor(extractor, test, val, counts, seed=seed)["fd"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"))
    p.add_argument("--recipes", default=",".join(RECIPES))
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--widths", default="32,64,64")
    p.add_argument("--per-class", type=int, default=None, help="train on this many images per class (default all)")
    p.add_argument("--sample-per-class", type=int, default=100)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=2.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "synthmed" / "domain"))
    p.add_argument("--out", default=None)
    p.add_argument("--fresh", action="store_true")
    args = p.parse_args()

    threads = set_threads(args.threads)
    device = resolve_device(args.device)
    splits = load_medmnist("bloodmnist", args.data_root)
    train = splits.train if args.per_class is None else per_class_subset(splits.train, args.per_class, seed=args.seed)
    out = Path(args.out or Path(__file__).parent / "results" / f"diffusion_recipes_{device}.json")
    results = json.loads(out.read_text()) if out.is_file() and not args.fresh else {}
    results.setdefault("recipes", {})

    t0 = time.time()
    judge_cfg = ClassifierConfig(arch="smallcnn", widths=[32, 64, 128], steps=2000, eval_every=200, patience=4)
    judge = DomainExtractor(splits.train, splits.val, judge_cfg, cache_dir=args.cache, seed=1234, device=device)
    judge_seconds = time.time() - t0
    counts = [args.sample_per_class] * len(splits.class_names)
    floor = real_floor(judge, splits.val, splits.test, counts)
    val_feats = judge.extract(splits.val)
    real_ca = conditional_accuracy(judge.classifier, splits.test)["accuracy"]["accuracy"]
    results["setup"] = {
        "data": f"BloodMNIST 28x28 RGB, official split; generator training images {len(train)} "
                f"({'all' if args.per_class is None else f'{args.per_class} per class'})",
        "judge": f"smallcnn [32,64,128] trained on the real training split (seed 1234, {judge_seconds:.0f} s incl. cache)",
        "judge_real_test_accuracy": real_ca,
        "unet_widths": args.widths, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "samples_per_class": args.sample_per_class, "sampler": f"dpmsolver++ {args.sample_steps} steps",
        "guidance": args.guidance, "fd_real_floor": floor, "fd_reference": "real validation split (judge features)",
        "device": device, "threads": threads, "torch": torch.__version__, "platform": platform.platform(),
    }
    print(json.dumps(results["setup"], indent=1), flush=True)

    for name in args.recipes.split(","):
        if name in results["recipes"] and not args.fresh:
            print(f"{name}: done before, skipped", flush=True)
            continue
        cfg = replace(DiffusionConfig(), block_out_channels=[int(w) for w in args.widths.split(",")],
                      train_steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=100,
                      sample_steps=args.sample_steps, guidance=args.guidance, checkpoint_every=0, **RECIPES[name])
        gen = DiffusionGenerator(cfg, image_size=train.image_size, channels=train.channels,
                                 class_names=train.class_names, device=device, seed=args.seed)
        h = gen.fit(train, splits.val, progress=False)
        syn = gen.sample(counts, seed=args.seed + 1, progress=False)
        ca = conditional_accuracy(judge.classifier, syn)
        fd = frechet_distance_from_features(judge.extract(syn), val_feats)
        results["recipes"][name] = {
            "settings": RECIPES[name], "train_seconds": h["train_seconds"], "images_per_second": h["images_per_second"],
            "sample_seconds": syn.meta["seconds"], "conditional_accuracy": ca["accuracy"]["accuracy"],
            "per_class": {c: e["accuracy"] for c, e in ca["per_class"].items()},
            "fd": fd, "fd_ratio_to_floor": fd / floor, "final_loss": h["loss_curve"][-1][1],
        }
        r = results["recipes"][name]
        print(f"{name}: conditional accuracy {r['conditional_accuracy']:.3f}, FD {fd:.2f} (floor {floor:.2f}, "
              f"ratio {fd / floor:.1f}), train {h['train_seconds']:.0f} s, sample {syn.meta['seconds']:.0f} s", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=1) + "\n")
        write_markdown(results, out.with_suffix(".md"))


def write_markdown(results: dict, path: Path) -> None:
    s = results["setup"]
    lines = [f"# Diffusion recipes at equal compute ({s['device']}, {s['threads']} threads)", "",
             f"Data: {s['data']}. U-Net {s['unet_widths']}, {s['steps']} steps of batch {s['batch_size']}, lr {s['lr']}; "
             f"{s['samples_per_class']} samples per class, {s['sampler']}, guidance {s['guidance']}.",
             f"Judge: {s['judge']}; its accuracy on real test images {s['judge_real_test_accuracy']:.3f}. "
             f"FD against {s['fd_reference']}; real floor {s['fd_real_floor']:.2f}.", "",
             "| recipe | conditional accuracy | worst class | FD | FD / floor | train s | img/s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results["recipes"].items():
        worst = min(r["per_class"].items(), key=lambda kv: kv[1])
        lines.append(f"| {name} | {r['conditional_accuracy']:.3f} | {worst[0]} {worst[1]:.2f} | {r['fd']:.2f} | "
                     f"{r['fd_ratio_to_floor']:.1f} | {r['train_seconds']:.0f} | {r['images_per_second']:.0f} |")
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
