"""Training and sampling throughput of each denoiser behind the diffusion generator, same data and batch.

The U-Net of a preset (class embedding added to the time embedding), the same U-Net with a class
vector concatenated to the time embedding (the `improve` layout), the cross-attention U-Net, and DiTs
of the given patch sizes. Each is timed through the generator's own fit() (after warm-up steps) and
sample() (its sampler and steps, guidance batched).

    python benchmarks/denoiser_throughput.py                      # pixel28 sizes, 28x28 RGB
    python benchmarks/denoiser_throughput.py --device cuda --steps 100

Writes benchmarks/results/denoiser_throughput_<device>.json (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from synthmed.config import load_config
from synthmed.data.dataset import ImageDataset
from synthmed.data.procedural import make_embryo_dataset
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.runtime import resolve_device, set_threads


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(cfg, ds: ImageDataset, device: str, steps: int, warm: int, sample_n: int) -> dict:
    cfg = dataclasses.replace(cfg, train_steps=warm, log_every=10**9, checkpoint_every=0)
    gen = DiffusionGenerator(cfg, image_size=ds.image_size, channels=ds.channels, class_names=ds.class_names,
                             device=device)
    if cfg.conditioning == "prototype":
        gen.set_class_vectors(torch.randn(ds.num_classes, cfg.class_embed_dim))
    gen.fit(ds, progress=False)
    gen.cfg = dataclasses.replace(cfg, train_steps=warm + steps)
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    gen.fit(ds, progress=False)  # continues from step `warm` (same object)
    _sync(device)
    train_ips = steps * cfg.batch_size / (time.perf_counter() - t0)
    train_cpu_ips = steps * cfg.batch_size / (time.process_time() - c0)
    per_class = max(1, sample_n // ds.num_classes)
    t0, c0 = time.perf_counter(), time.process_time()
    gen.sample([per_class] * ds.num_classes, seed=0, progress=False)
    _sync(device)
    sample_ips = per_class * ds.num_classes / (time.perf_counter() - t0)
    sample_cpu_ips = per_class * ds.num_classes / (time.process_time() - c0)
    # on a CPU shared with other processes the wall clock counts their time too; per CPU-second of this
    # process (1 thread) is what the denoiser itself costs
    return {"summary": gen.describe()["summary"], "num_parameters": gen.num_parameters,
            "train_images_per_second": train_ips, "sample_images_per_second": sample_ips,
            "train_images_per_cpu_second": train_cpu_ips, "sample_images_per_cpu_second": sample_cpu_ips,
            "sampler": f"{cfg.sampler} {cfg.sample_steps} steps, guidance {cfg.guidance}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="pixel28")
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20, help="timed training steps per denoiser")
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--sample-n", type=int, default=48)
    ap.add_argument("--dit-patch", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--dit-depth", type=int, default=4)
    ap.add_argument("--dit-width", type=int, default=128)
    ap.add_argument("--dit-heads", type=int, default=4)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    base = load_config(preset=args.preset)
    size = base.data.image_size
    g = dataclasses.replace(base.generator, batch_size=args.batch_size)
    ds = make_embryo_dataset([200, 200, 200], image_size=size, seed=0)
    if args.channels == 3:
        ds = ImageDataset(np.repeat(ds.images, 3, axis=-1), ds.labels, ds.class_names, name="embryo-rgb")
    variants = {
        "unet (class added to time embedding)": g,
        "unet (class vector concatenated, improve layout)": dataclasses.replace(g, class_embed_dim=128),
        "unet (prototype vector concatenated)": dataclasses.replace(g, conditioning="prototype", class_embed_dim=128),
        "unet-cross-attention": dataclasses.replace(g, denoiser="unet-cross-attention"),
    }
    for p in args.dit_patch:
        variants[f"dit patch {p} depth {args.dit_depth} width {args.dit_width}"] = dataclasses.replace(
            g, denoiser="dit", dit_patch_size=p, dit_depth=args.dit_depth, dit_width=args.dit_width,
            dit_heads=args.dit_heads)
    result: dict = {"device": device, "threads": threads, "torch": torch.__version__, "platform": platform.platform(),
                    "preset": args.preset, "image_size": size, "channels": ds.channels, "batch_size": args.batch_size,
                    "timed_steps": args.steps, "denoisers": {}}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()
    for name, cfg in variants.items():
        t0 = time.perf_counter()
        result["denoisers"][name] = r = measure(cfg, ds, device, args.steps, args.warm, args.sample_n)
        r["wall_seconds"] = time.perf_counter() - t0
        print(f"{name:50s} {r['num_parameters']:>9,} params  train {r['train_images_per_second']:6.1f} img/s "
              f"({r['train_images_per_cpu_second']:6.1f} per CPU-s)  sample {r['sample_images_per_second']:5.1f} img/s "
              f"({r['sample_images_per_cpu_second']:5.1f} per CPU-s)", flush=True)
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"denoiser_throughput_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
