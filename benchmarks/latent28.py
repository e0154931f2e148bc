"""Latent space at 28 px: what an autoencoder of factor 2 or 4 costs, what it keeps, and what it buys.

For each autoencoder: its training time, MSE/PSNR of its reconstructions of the real validation
split, and the judge's accuracy on those reconstructions next to its accuracy on the originals
(the judge: a small CNN trained on the real training split, the one ``synthmed run`` uses).
For each denoiser: training throughput (images/s) on latents vs on pixels with the same U-Net
widths, measured by the generator's own training loop (flips off, so latents are encoded once).

    python benchmarks/latent28.py --data-root ../shared/data/medmnist --threads 1 --only f2-c4 f4-c8

Writes benchmarks/results/latent28_<device>.json (or --out). The autoencoders go through the
cache (~/.cache/synthmed/autoencoder), so a rerun only repeats the throughput part; their
``train_seconds`` are then the ones measured when they were trained.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from synthmed.config import AutoencoderConfig, ClassifierConfig, DiffusionConfig, load_config
from synthmed.data.sources import load_dataset
from synthmed.features.domain import DomainExtractor
from synthmed.generators.autoencoder import LatentAutoencoder
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.metrics.reconstruction import reconstruction_judge_accuracy
from synthmed.runtime import resolve_device, set_threads

AUTOENCODERS = {  # name: (block_out_channels, latent_channels)
    "f2-c4": ([32, 64], 4),
    "f4-c8": ([32, 64, 64], 8),
    "f4-c4": ([32, 64, 64], 4),
}
#: (name, space, autoencoder, U-Net widths, layers per block): each latent one next to the same U-Net on pixels
DENOISERS = [
    ("pixel [64,128]", "pixel", None, [64, 128], 1),
    ("latent f2 [64,128]", "latent", "f2-c4", [64, 128], 1),
    ("pixel [128] x2", "pixel", None, [128], 2),
    ("latent f4 [128] x2", "latent", "f4-c8", [128], 2),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="medmnist:bloodmnist")
    ap.add_argument("--data-root", default="../shared/data/medmnist")
    ap.add_argument("--ae-steps", type=int, default=600)
    ap.add_argument("--ae-batch-size", type=int, default=32)
    ap.add_argument("--denoiser-steps", type=int, default=20, help="training steps timed per denoiser")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--judge-steps", type=int, default=2000)
    ap.add_argument("--judge-seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--only", nargs="*", help="autoencoders to run (default: all)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    cfg = load_config(overrides={"data": {"dataset": args.dataset, "data_root": args.data_root, "image_size": 28}})
    splits = load_dataset(cfg.data)
    train, val = splits.train, splits.val
    print(f"{args.dataset}: train {len(train)}, val {len(val)}, {train.channels} ch, {threads} threads", flush=True)

    t0 = time.time()
    judge_cfg = ClassifierConfig(widths=[32, 64, 128], steps=args.judge_steps, eval_every=200, patience=4)
    judge = DomainExtractor(train, val, judge_cfg, seed=args.judge_seed, device=device)
    print(f"judge: {'from cache' if judge.cache_hit else f'trained in {time.time() - t0:.0f} s'}", flush=True)

    x, _ = train.to_tensor()
    x_val, _ = val.to_tensor()
    results: dict = {"autoencoders": {}, "denoisers": {}}
    for name, (widths, latent_channels) in AUTOENCODERS.items():
        if args.only and name not in args.only:
            continue
        ae_cfg = AutoencoderConfig(block_out_channels=widths, latent_channels=latent_channels,
                                   train_steps=args.ae_steps, batch_size=args.ae_batch_size)
        torch.manual_seed(0)
        ae = LatentAutoencoder(ae_cfg, train.image_size, train.channels, device)
        t0 = time.time()
        h = ae.fit_or_load(x, x_val, train_fingerprint=train.fingerprint(), val_fingerprint=val.fingerprint(),
                           seed=0, progress=False)
        wall = time.time() - t0
        rec = ae.reconstruct(x_val)
        from synthmed.data.dataset import ImageDataset

        rec_ds = ImageDataset.from_tensor(rec, torch.from_numpy(val.labels), val.class_names, name="reconstructions")
        judged = reconstruction_judge_accuracy(judge.classifier, val, rec_ds)
        results["autoencoders"][name] = {
            "config": asdict(ae_cfg), "latent_shape": list(ae.latent_shape), "factor": ae.downsample_factor,
            "num_parameters": h["num_parameters"], "train_seconds": h["train_seconds"], "cache": h["cache"],
            "fit_or_load_seconds": wall, "reconstruction": h["reconstruction"],
            "judge": {k: judged[k] for k in ("accuracy_original", "accuracy_reconstructed", "drop", "agreement")},
            "judge_per_class": {c: e["reconstructed"] for c, e in judged["per_class"].items()},
        }
        r = results["autoencoders"][name]
        print(f"autoencoder {name}: latents {r['latent_shape']}, {h['train_seconds']:.0f} s for {args.ae_steps} "
              f"steps ({h['cache']}), PSNR {h['reconstruction']['psnr_db']:.2f} dB, judge "
              f"{judged['accuracy_reconstructed']:.3f} on reconstructions vs {judged['accuracy_original']:.3f}",
              flush=True)

    for name, space, ae_name, widths, layers in DENOISERS:
        if space == "latent" and ae_name not in results["autoencoders"]:
            continue
        ae_widths, ae_ch = AUTOENCODERS[ae_name] if ae_name else ([32, 64], 4)
        g_cfg = DiffusionConfig(space=space, block_out_channels=widths, layers_per_block=layers,
                                batch_size=args.batch_size, train_steps=args.denoiser_steps, warmup_steps=10,
                                hflip=0.0, vflip=0.0, checkpoint_every=0, log_every=10,
                                autoencoder=AutoencoderConfig(block_out_channels=ae_widths, latent_channels=ae_ch,
                                                              train_steps=args.ae_steps,
                                                              batch_size=args.ae_batch_size))
        gen = DiffusionGenerator(g_cfg, image_size=28, channels=train.channels, class_names=train.class_names,
                                 device=device, seed=0)
        t0 = time.time()
        h = gen.fit(train, val, progress=False)
        wall = time.time() - t0
        results["denoisers"][name] = {
            "space": space, "model_shape": list(gen.model_shape), "block_out_channels": widths,
            "layers_per_block": layers, "num_parameters": gen.num_parameters, "steps": h["train_steps"],
            "batch_size": h["batch_size"], "images_per_second": h["images_per_second"],
            "seconds_outside_the_loop": wall - h["train_seconds"],
            "autoencoder_cache": (h.get("autoencoder") or {}).get("cache"),
        }
        print(f"denoiser {name}: {list(gen.model_shape)}, {gen.num_parameters:,} parameters, "
              f"{h['images_per_second']:.1f} images/s", flush=True)
    d = results["denoisers"]
    ratios = {}
    for latent, pixel in (("latent f2 [64,128]", "pixel [64,128]"), ("latent f4 [128] x2", "pixel [128] x2")):
        if latent in d and pixel in d:
            ratios[latent] = d[latent]["images_per_second"] / d[pixel]["images_per_second"]
            print(f"speed-up {latent} over {pixel}: {ratios[latent]:.2f}x", flush=True)
    results["speedup_latent_over_pixel"] = ratios
    results["setup"] = {"dataset": args.dataset, "n_train": len(train), "n_val": len(val), "device": device,
                        "threads": threads, "ae_steps": args.ae_steps, "ae_batch_size": args.ae_batch_size,
                        "denoiser_steps": args.denoiser_steps,
                        "torch": torch.__version__, "platform": platform.platform(),
                        "judge": {"config": asdict(judge_cfg), "seed": args.judge_seed, "cache_hit": judge.cache_hit}}
    out = Path(args.out or Path(__file__).parent / "results" / f"latent28_{device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
