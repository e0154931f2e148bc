"""Sampling throughput against the batch size: the images per network call that `sample()` uses by default.

A pixel28 generator (U-Net [32, 64, 64], dpmsolver++ 20 steps, guidance 2: two network passes per step,
batched) generates the same images at each batch size; images per second of wall time and of this
process's CPU time, and the ratio to batch 256 (the default before; still the default on a GPU). The
weights are two training steps old: throughput does not depend on them. The images are checked to be
identical across batch sizes (the sampler is deterministic), so a faster batch costs nothing.

    taskset -c 1 python benchmarks/sample_batch.py --threads 1
    python benchmarks/sample_batch.py --device cuda --batch-sizes 64 256 1024 --images 4096

Writes benchmarks/results/sample_batch_<device>.json (or --out).
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
from synthmed.files import atomic_write_text
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.runtime import resolve_device, sampling_batch_size, set_threads

REFERENCE = 256  # the earlier fixed default


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--images", type=int, default=256, help="images generated at each batch size")
    ap.add_argument("--preset", default="pixel28")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    threads, device = set_threads(args.threads), resolve_device(args.device)
    cfg = dataclasses.replace(load_config(preset=args.preset).generator, train_steps=2, log_every=10**9,
                              checkpoint_every=0)
    rng = np.random.default_rng(0)
    classes = [f"class{i}" for i in range(8)]
    ds = ImageDataset(rng.integers(0, 256, (64, 28, 28, 3), dtype=np.uint8), np.arange(64) % 8, classes, name="noise")
    gen = DiffusionGenerator(cfg, image_size=28, channels=3, class_names=classes, device=device)
    gen.fit(ds, progress=False)
    counts = [args.images // 8] * 8
    gen.sample([4] * 8, seed=0, batch_size=32, progress=False)  # warm-up
    rows, first = [], None
    for bs in args.batch_sizes:
        t0, c0 = time.perf_counter(), time.process_time()
        syn = gen.sample(counts, seed=0, batch_size=bs, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        first = syn.images if first is None else first
        rows.append({"batch_size": bs, "images_per_second": len(syn) / wall, "images_per_cpu_second": len(syn) / cpu,
                     "same_images_as_first": bool(np.array_equal(first, syn.images))})
        print(rows[-1], flush=True)
    ref = next((r for r in rows if r["batch_size"] == REFERENCE), None)
    for r in rows:
        r["ratio_to_256"] = r["images_per_second"] / ref["images_per_second"] if ref else None
    default = sampling_batch_size(device)
    out = {"what": __doc__.split("\n")[0], "device": device, "threads": threads, "torch": torch.__version__,
           "platform": platform.platform(), "preset": args.preset, "sampler": f"{cfg.sampler} {cfg.sample_steps} steps",
           "guidance": cfg.guidance, "images": sum(counts), "default_batch_size": default, "rows": rows,
           "default_vs_256": next((r["ratio_to_256"] for r in rows if r["batch_size"] == default), None)}
    path = args.out or Path(__file__).parent / "results" / f"sample_batch_{device}.json"
    atomic_write_text(json.dumps(out, indent=1) + "\n", path)
    print(f"default batch {default}: {out['default_vs_256'] or float('nan'):.2f}x batch 256; wrote {path}")


if __name__ == "__main__":
    main()
