"""Training images/s with the splits in memory vs memory-mapped (data/storage.py), read in the
training process or by DataLoader workers (``data.loader_workers``).

A procedural set (default 20k images, 64x64 RGB, 3 classes of coloured blobs) is made in memory,
written once to the memory-mapped cache (:func:`synthmed.data.storage.to_disk`, timed) and trained on
three ways with the same seed:

- ``memory``: the in-memory float32 tensor (the reference);
- ``memmap``: :class:`~synthmed.data.storage.LazyImages`, rows read from the file in the training process;
- ``memmap+workers``: the same rows read and converted by ``--workers`` DataLoader worker processes.

Measured: the data path alone (batches of random indices, as the generator loops draw them, and a
shuffled epoch, as the classifier reads it), a small classifier's epoch (the DataLoader reads the
epoch's batches ahead) and a small pixel diffusion model (each batch is read when it is drawn).
Every figure is reported with its ratio to the in-memory reference. The file is in the OS page cache
(it was just written): this measures the cost of the lazy path, not of a cold disk. Optional
``--decode N``: N PNG files decoded through ``load_dataset`` into memory and straight to disk, with
the peak Python-heap memory (tracemalloc) of each.

    taskset -c 0 python benchmarks/out_of_core.py                  # one core, one thread
    python benchmarks/out_of_core.py --images 5000 --steps 50      # quicker

Writes benchmarks/results/out_of_core_cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def blobs(n: int, size: int, seed: int = 0):
    """``n`` uint8 (size, size, 3) images of one to three Gaussian blobs; class = number of blobs - 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = np.empty((n, size, size, 3), np.uint8)
    for s in range(0, n, 1000):
        m = min(1000, n - s)
        img = np.zeros((m, size, size, 3), np.float32) + rng.uniform(0, 60, (m, 1, 1, 3)).astype(np.float32)
        for k in range(3):
            on = (labels[s:s + m] >= k).astype(np.float32)[:, None, None, None]
            cy, cx = rng.uniform(0.2, 0.8, (2, m, 1, 1)).astype(np.float32)
            r = rng.uniform(0.05, 0.15, (m, 1, 1)).astype(np.float32)
            g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r ** 2))[..., None]
            img += on * g * rng.uniform(120, 195, (m, 1, 1, 3)).astype(np.float32)
        img += rng.normal(0, 8, img.shape).astype(np.float32)
        out[s:s + m] = np.clip(img, 0, 255).astype(np.uint8)
    return out, labels


def data_path(x, n: int, bs: int, batches: int, seed: int = 0) -> dict:
    """images/s of (a) random-index batches read one at a time and (b) a shuffled epoch's batches."""
    from synthmed.data.storage import batches_of

    g = torch.Generator().manual_seed(seed)
    for _ in batches_of(x, [torch.arange(bs)]):  # warm: a DataLoader starts its workers on its first batch
        pass
    t0 = time.perf_counter()
    for _ in range(batches):
        b = x[torch.randint(0, n, (bs,), generator=g)]
    random_s = time.perf_counter() - t0
    perm = torch.randperm(n, generator=g)
    epoch = [perm[i:i + bs] for i in range(0, min(n, batches * bs), bs)]
    t0 = time.perf_counter()
    for _, b in batches_of(x, epoch):
        pass
    epoch_s = time.perf_counter() - t0
    del b
    return {"random_batches_images_per_s": batches * bs / random_s,
            "epoch_images_per_s": sum(len(i) for i in epoch) / epoch_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=100, help="diffusion steps per variant")
    ap.add_argument("--classifier-steps", type=int, default=120, help="classifier steps per variant (one epoch's part)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--decode", type=int, default=2000, help="PNG files for the decoding measurement (0: skip)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("XDG_CACHE_HOME", tempfile.mkdtemp(prefix="ooc-cache-"))

    from dataclasses import replace

    from synthmed.classifiers import train_classifier
    from synthmed.config import ClassifierConfig, DiffusionConfig
    from synthmed.data.dataset import ImageDataset
    from synthmed.data.storage import split_bytes, to_disk, training_images
    from synthmed.generators.diffusion import DiffusionGenerator

    t0 = time.perf_counter()
    images, labels = blobs(args.images, args.image_size)
    train = ImageDataset(images, labels, ["one", "two", "three"], name="train")
    vi, vl = blobs(512, args.image_size, seed=1)
    val = ImageDataset(vi, vl, list(train.class_names), name="val")
    made_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    disk = to_disk(train)
    cache_s = time.perf_counter() - t0
    result = {"images": args.images, "image_size": args.image_size, "channels": 3, "threads": args.threads,
              "workers": args.workers, "batch_size": args.batch_size, "torch": torch.__version__,
              "platform": platform.platform(), "cpu_affinity": sorted(os.sched_getaffinity(0)),
              "uint8_mb": round(train.images.nbytes / 2**20, 1), "float32_tensor_mb": round(split_bytes(train) / 2**20, 1),
              "seconds_make_set": round(made_s, 2), "seconds_write_cache": round(cache_s, 2),
              "note": "the cache file is in the OS page cache (just written): the lazy path's cost, not a cold disk's"}
    variants = {"memory": lambda: training_images(train),
                "memmap": lambda: training_images(disk, workers=0),
                "memmap+workers": lambda: training_images(replace(disk, meta={**disk.meta,
                                                                              "loader_workers": args.workers}))}

    result["data_path"] = {}
    for name, make in variants.items():
        x, _ = make()
        result["data_path"][name] = data_path(x, len(train), args.batch_size, 60)
        print(name, "data path", result["data_path"][name], flush=True)
        del x

    # warm-up (thread pools, allocator, first kernels): the first variant timed must not pay for it
    train_classifier(train.subset(np.arange(4 * args.batch_size)), val, ClassifierConfig(
        arch="smallcnn", widths=[16, 32], batch_size=args.batch_size, epochs=1, patience=1), seed=0)
    DiffusionGenerator(DiffusionConfig(block_out_channels=[16, 32], layers_per_block=1, batch_size=args.batch_size,
                                       train_steps=2, sample_steps=2), image_size=args.image_size, channels=3,
                       class_names=train.class_names).fit(train, progress=False)

    result["classifier"] = {}
    ccfg = ClassifierConfig(arch="smallcnn", widths=[16, 32], batch_size=args.batch_size, epochs=1, patience=1)
    sub = train.subset(np.arange(args.classifier_steps * args.batch_size)) if \
        args.classifier_steps * args.batch_size < len(train) else train
    sub_disk = to_disk(sub)
    for name, ds in {"memory": sub, "memmap": replace(sub_disk, meta={**sub_disk.meta, "loader_workers": 0}),
                     "memmap+workers": replace(sub_disk, meta={**sub_disk.meta,
                                                               "loader_workers": args.workers})}.items():
        t0 = time.perf_counter()
        clf = train_classifier(ds, val, ccfg, seed=0)
        wall = time.perf_counter() - t0
        result["classifier"][name] = {"steps": clf.history["steps"], "seconds": round(wall, 2),
                                      "images_per_s": clf.history["steps"] * args.batch_size / wall,
                                      "train_loss": clf.history["train_loss"]}
        print(name, "classifier", result["classifier"][name], flush=True)

    result["diffusion"] = {}
    dcfg = DiffusionConfig(block_out_channels=[16, 32], layers_per_block=1, batch_size=args.batch_size,
                           train_steps=args.steps, log_every=max(1, args.steps // 4), hflip=0.5, sample_steps=2)
    for name, ds in {"memory": train, "memmap": replace(disk, meta={**disk.meta, "loader_workers": 0}),
                     "memmap+workers": replace(disk, meta={**disk.meta, "loader_workers": args.workers})}.items():
        gen = DiffusionGenerator(dcfg, image_size=args.image_size, channels=3, class_names=train.class_names)
        t0 = time.perf_counter()  # includes starting the DataLoader's workers, as a run pays it
        gen.fit(ds, progress=False)
        wall = time.perf_counter() - t0
        result["diffusion"][name] = {"steps": gen.step, "seconds": round(wall, 2),
                                     "images_per_s": gen.step * args.batch_size / wall,
                                     "loss_curve": gen.history["loss_curve"]}
        print(name, "diffusion", {k: v for k, v in result["diffusion"][name].items() if k != "loss_curve"}, flush=True)

    for part in ("data_path", "classifier", "diffusion"):
        ref = result[part]["memory"]
        for name, r in result[part].items():
            for k in [k for k in r if k.endswith("images_per_s")]:
                r[k.replace("images_per_s", "ratio_to_memory")] = round(r[k] / ref[k], 3)
                r[k] = round(r[k], 1)
    result["same_batches"] = {
        "classifier_train_loss_equal": all(np.allclose(r["train_loss"], result["classifier"]["memory"]["train_loss"],
                                                       rtol=1e-5) for r in result["classifier"].values()),
        "diffusion_loss_curve_equal": all(r["loss_curve"] == result["diffusion"]["memory"]["loss_curve"]
                                          for r in result["diffusion"].values())}

    if args.decode:
        result["decode"] = decode_measure(args.decode, args.image_size)
        print("decode", result["decode"], flush=True)

    out = Path(args.out) if args.out else Path(__file__).parent / "results" / "out_of_core_cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k in ("data_path", "same_batches")}, indent=2))
    print(f"wrote {out}")


def decode_measure(n: int, size: int) -> dict:
    """``n`` PNG files loaded through load_dataset + place_splits into memory and straight to disk:
    seconds and peak Python-heap memory (tracemalloc, which counts numpy's arrays)."""
    import tracemalloc

    from PIL import Image

    from synthmed.config import DataConfig
    from synthmed.data.sources import load_dataset
    from synthmed.pipeline import place_splits

    images, labels = blobs(n, size, seed=2)
    root = Path(tempfile.mkdtemp(prefix="ooc-png-"))
    for c in range(3):
        (root / f"c{c}").mkdir()
    for i, (im, lab) in enumerate(zip(images, labels)):
        Image.fromarray(im).save(root / f"c{lab}" / f"{i}.png")
    out = {"files": n, "uint8_mb": round(images.nbytes / 2**20, 2)}
    for mode in ("memory", "disk"):
        cfg = DataConfig(dataset=f"folder:{root}", image_size=size, channels=3, storage=mode)
        tracemalloc.start()
        t0 = time.perf_counter()
        splits = place_splits(load_dataset(cfg), cfg)
        secs = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        out[mode] = {"seconds": round(secs, 2), "peak_heap_mb": round(peak / 2**20, 2), "train": len(splits.train)}
        del splits
    return out


if __name__ == "__main__":
    main()
