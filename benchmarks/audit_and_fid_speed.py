"""Speed of the two evaluation steps that dominate on realistic small medical sets.

1. Memorisation audit on BloodMNIST: every synthetic image against all 11,951 official training
   images and their three flips (47,804 references of 2352 pixels), plus the real-to-real reference
   distribution. synthmed's ``memorisation_audit`` (float32 blocked search, exact float64
   distances of the matches, real-to-real reference on 2000 sampled training images) vs the plain
   way: scikit-learn ``NearestNeighbors(algorithm="brute")`` in float64 for the synthetic queries
   and for every training image. The "synthetic" images are official validation images flagged
   synthetic (no generator needed; they copy nothing, so both must flag ~nothing), and both
   pipelines must find the same nearest training image for every query.
2. Per-class FID with a bootstrap in Inception's 2048-d space, a class of n images on each side
   (n < d, the normal case for small classes): synthmed's route through the images (nuclear norm of
   the n x n cross product) vs the d x d route (covariances, eigh + eigvalsh, as every FID code does).

    python benchmarks/audit_and_fid_speed.py                    # ~5 min on 2 CPU cores
    python benchmarks/audit_and_fid_speed.py --n-synthetic 200 --n-boot 5   # smoke test

Writes benchmarks/results/audit_and_fid_speed_cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"


def audit_benchmark(args) -> dict:
    from sklearn.neighbors import NearestNeighbors

    from synthmed.config import DataConfig
    from synthmed.data.dataset import ImageDataset
    from synthmed.data.sources import load_dataset
    from synthmed.metrics.memorisation import memorisation_audit

    splits = load_dataset(DataConfig(dataset="medmnist:bloodmnist", data_root=str(args.data_root), image_size=28))
    train, val = splits.train, splits.val
    n = min(args.n_synthetic, len(val))
    syn = ImageDataset(val.images[:n], val.labels[:n], val.class_names, name="val as synthetic", synthetic=True)

    t = time.perf_counter()
    audit = memorisation_audit(train, syn)
    ours_s = time.perf_counter() - t

    # the plain way: float64 brute-force k-NN over the same 4 x N flipped training images
    t = time.perf_counter()
    flips = [train.images, train.images[:, :, ::-1], train.images[:, ::-1], train.images[:, ::-1, ::-1]]
    ref = np.concatenate(flips).reshape(4 * len(train), -1).astype(np.float64) / 255.0
    nn = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(ref)
    d_syn, i_syn = nn.kneighbors(syn.images.reshape(n, -1).astype(np.float64) / 255.0, n_neighbors=1)
    # real-to-real over every training image: 5 neighbours (itself and its 3 flips come first)
    d_real, i_real = nn.kneighbors(ref[: len(train)], n_neighbors=5)
    own = (i_real % len(train)) == np.arange(len(train))[:, None]
    real_nn = np.where(own, np.inf, d_real).min(axis=1)
    plain_s = time.perf_counter() - t
    plain_threshold = 0.5 * float(np.median(real_nn))
    same_match = float(np.mean((i_syn[:, 0] % len(train)) == audit["per_image"]["pixel_nn_index"]))
    return {
        "train_images": len(train), "references_with_flips": 4 * len(train), "pixels": int(ref.shape[1]),
        "synthetic_images": n,
        "synthmed_seconds": ours_s, "plain_sklearn_float64_seconds": plain_s, "speedup": plain_s / ours_s,
        "synthmed_reference_images": audit["num_reference"],
        "synthmed_threshold": audit["spaces"]["pixel"]["threshold"], "plain_threshold_all_train": plain_threshold,
        "same_nearest_training_image": same_match,
        "synthmed_flagged": audit["overall"]["n_flagged"],
        "plain_flagged": int(np.sum(d_syn[:, 0] <= plain_threshold)),
    }


def fid_benchmark(args) -> dict:
    from synthmed.metrics.bootstrap import bootstrap_ci
    from synthmed.metrics.fid import fid, frechet_distance_from_features

    rng = np.random.default_rng(0)
    d, n = 2048, args.class_size
    mix = rng.normal(size=(64, d)) / 8  # low-rank structure, like real network features
    real = rng.normal(size=(n, 64)) @ mix + 0.1 * rng.normal(size=(n, d))
    fake = rng.normal(size=(n, 64)) @ mix + 0.1 * rng.normal(size=(n, d)) + 0.05
    out = {"dim": d, "class_size": n, "n_boot": args.n_boot}
    for name, fn in (("through_images", frechet_distance_from_features),
                     ("covariance_dxd", lambda a, b: fid(a, b)["fid"])):
        t = time.perf_counter()
        ci = bootstrap_ci(fn, real, fake, n_boot=args.n_boot, seed=0)
        out[name] = {"seconds": time.perf_counter() - t, "fid": ci["value"], "ci": [ci["ci_low"], ci["ci_high"]]}
    out["speedup"] = out["covariance_dxd"]["seconds"] / out["through_images"]["seconds"]
    out["relative_difference"] = abs(out["through_images"]["fid"] - out["covariance_dxd"]["fid"]) / out["covariance_dxd"]["fid"]
    return out


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    ap.add_argument("--n-synthetic", type=int, default=1600)
    ap.add_argument("--class-size", type=int, default=300)
    ap.add_argument("--n-boot", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    from synthmed.runtime import set_threads

    threads = set_threads(args.threads)
    res = {"machine": platform.platform(), "threads": threads, "torch": torch.__version__, "numpy": np.__version__,
           "fid_bootstrap": fid_benchmark(args), "memorisation_audit": audit_benchmark(args)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "audit_and_fid_speed_cpu.json"
    path.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
