"""Training and sampling throughput of synthmed's diffusion generator vs a textbook diffusers loop.

Same model config, same batch size, same process, same threads. Reports images/s for both and
their ratio, achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter) as a fraction of a
large fp32 matmul's GFLOP/s measured in this run, and sampling images/s.

    python benchmarks/train_throughput.py                 # the demo preset's U-Net, 32x32 grey
    python benchmarks/train_throughput.py --preset pixel28 --channels 3 --image-size 28
    python benchmarks/train_throughput.py --device cuda   # on a GPU

Writes benchmarks/results/train_throughput_<device>.json (or --out).

The reference is what a diffusers tutorial writes: a torch Dataset decoding PIL images with
torchvision transforms (flip, ToTensor, Normalize) through a DataLoader, DDPMScheduler.add_noise,
UNet2DModel with class labels, MSE, AdamW, grad clipping; sampling with a DDIM loop of 50 steps
and classifier-free guidance done as two separate forward passes.
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
import torch.nn.functional as F
from PIL import Image

from synthmed.config import load_config
from synthmed.data.dataset import ImageDataset
from synthmed.data.procedural import make_embryo_dataset
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.generators.networks import build_unet
from synthmed import runtime
from synthmed.runtime import resolve_device, set_threads


def matmul_gflops(device: str, n: int = 2048, reps: int = 10, dtype=torch.float32) -> float:
    """GFLOP/s of an n x n matmul: the peak the training step is measured against (fp32 on CPU; on a
    GPU a large bf16 matmul, the tensor-core peak the bf16-autocast step can reach)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def train_step_flops(denoiser, x, t, y) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = denoiser(x, t, y)
        F.mse_loss(out, x).backward()
    denoiser.zero_grad(set_to_none=True)
    return counter.get_total_flops()


class PILDataset(torch.utils.data.Dataset):
    """What a tutorial does: keep PIL images and transform each one on every access."""

    def __init__(self, ds: ImageDataset):
        from torchvision import transforms

        mode = "L" if ds.channels == 1 else "RGB"
        self.images = [Image.fromarray(im[..., 0] if ds.channels == 1 else im, mode=mode) for im in ds.images]
        self.labels = ds.labels
        self.tf = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                      transforms.Normalize([0.5] * ds.channels, [0.5] * ds.channels)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.tf(self.images[i]), int(self.labels[i])


def reference_training(cfg, ds: ImageDataset, device: str, steps: int, warmup: int) -> float:
    """Textbook diffusers class-conditional training loop; returns images/s."""
    from diffusers import DDPMScheduler

    torch.manual_seed(0)
    unet = build_unet(cfg, ds.image_size, ds.channels, ds.num_classes).to(device)
    sched = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr)
    loader = torch.utils.data.DataLoader(PILDataset(ds), batch_size=cfg.batch_size, shuffle=True, drop_last=True)
    done, t0 = 0, None
    while done < steps + warmup:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            x, y = x.to(device), y.to(device)
            drop = torch.rand(len(y), device=device) < cfg.cond_dropout
            y = torch.where(drop, torch.full_like(y, ds.num_classes), y)
            noise = torch.randn_like(x)
            t = torch.randint(0, cfg.num_train_timesteps, (len(x),), device=device)
            loss = F.mse_loss(unet(sched.add_noise(x, noise, t), t, class_labels=y).sample, noise)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            opt.step()
            done += 1
            if done >= steps + warmup:
                break
    _sync(device)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


@torch.no_grad()
def reference_sampling(unet, cfg, n: int, shape, num_classes: int, device: str, steps: int = 50) -> float:
    """Textbook DDIM loop, 50 steps, CFG as two forward passes; returns images/s."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule="squaredcos_cap_v2")
    sched.set_timesteps(steps)
    y = torch.arange(n, device=device) % num_classes
    null = torch.full_like(y, num_classes)
    x = torch.randn((n, *shape), device=device)
    t0 = time.perf_counter()
    for t in sched.timesteps:
        cond = unet(x, t, class_labels=y).sample
        uncond = unet(x, t, class_labels=null).sample
        x = sched.step(uncond + cfg.guidance * (cond - uncond), t, x).prev_sample
    _sync(device)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--channels", type=int, default=1, help="1 (embryo grey) or 3 (replicated to RGB)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40, help="timed training steps per loop")
    ap.add_argument("--sample-n", type=int, default=128)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--compile", action="store_true",
                    help="also time the loop with generator.compile (torch.compile; compile time excluded)")
    ap.add_argument("--channels-last", action="store_true", help="generator.channels_last (CUDA only)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    device = resolve_device(args.device)
    threads = set_threads(args.threads)
    cfg = load_config(preset=args.preset)
    size = args.image_size or cfg.data.image_size
    g = cfg.generator
    g.batch_size = args.batch_size
    g.channels_last = args.channels_last
    ds = make_embryo_dataset([300, 300, 300], image_size=size, seed=0)
    if args.channels == 3:
        ds = ImageDataset(np.repeat(ds.images, 3, axis=-1), ds.labels, ds.class_names, name="embryo-rgb")

    gpu = device.startswith("cuda")
    peak = matmul_gflops(device, n=8192, reps=20, dtype=torch.bfloat16) if gpu else matmul_gflops(device)
    result: dict = {"device": device, "threads": threads, "torch": torch.__version__, "platform": platform.platform(),
                    "preset": args.preset, "image_size": size, "channels": ds.channels, "batch_size": g.batch_size,
                    "block_out_channels": g.block_out_channels, "layers_per_block": g.layers_per_block,
                    "precision": "bf16 autocast" if gpu and runtime.bf16_supported(device) else "float32",
                    "channels_last": bool(args.channels_last and gpu),
                    ("matmul_bf16_gflops" if gpu else "matmul_fp32_gflops"): peak}
    if device.startswith("cuda"):
        result["gpu"] = torch.cuda.get_device_name()

    # synthmed: the generator's own fit() loop, timed after warm-up steps
    warm = 5
    g.train_steps, g.log_every, g.checkpoint_every = warm, 10**9, 0
    gen = DiffusionGenerator(g, image_size=size, channels=ds.channels, class_names=ds.class_names, device=device)
    gen.fit(ds, progress=False)
    g.train_steps = warm + args.steps
    _sync(device)
    t0 = time.perf_counter()
    gen.fit(ds, progress=False)  # continues from step `warm` (same object, resume in memory)
    _sync(device)
    ours = args.steps * g.batch_size / (time.perf_counter() - t0)
    ref = reference_training(g, ds, device, args.steps, warm)
    compiled = None
    if args.compile:
        gc = dataclasses.replace(g, compile=True, train_steps=warm)
        genc = DiffusionGenerator(gc, image_size=size, channels=ds.channels, class_names=ds.class_names, device=device)
        t0 = time.perf_counter()
        genc.fit(ds, progress=False)  # the first steps compile
        compile_seconds = time.perf_counter() - t0
        genc.cfg = dataclasses.replace(gc, train_steps=warm + args.steps)
        _sync(device)
        t0 = time.perf_counter()
        genc.fit(ds, progress=False)
        _sync(device)
        compiled = {"images_per_second": args.steps * g.batch_size / (time.perf_counter() - t0),
                    "compile_and_warmup_seconds": compile_seconds}

    x = torch.randn(g.batch_size, ds.channels, size, size, device=device)
    t = torch.randint(0, g.num_train_timesteps, (g.batch_size,), device=device)
    y = torch.randint(0, ds.num_classes, (g.batch_size,), device=device)
    flops = train_step_flops(gen.unet, x, t, y)
    achieved = flops * ours / g.batch_size / 1e9

    t0 = time.perf_counter()
    gen.sample([args.sample_n // 3 + 1] * 3, seed=0, progress=False)
    ours_sample = 3 * (args.sample_n // 3 + 1) / (time.perf_counter() - t0)
    ref_sample = reference_sampling(gen.ema.net, g, args.sample_n // 4, gen.model_shape, ds.num_classes, device)

    result.update({
        "num_parameters": sum(p.numel() for p in gen.unet.parameters()),
        "train_images_per_second": {"synthmed": ours, "reference": ref, "ratio": ours / ref},
        "train_images_per_second_compiled": None if compiled is None else {
            **compiled, "ratio_to_reference": compiled["images_per_second"] / ref,
            "ratio_to_eager": compiled["images_per_second"] / ours,
            "fraction_of_matmul_peak": flops * compiled["images_per_second"] / g.batch_size / 1e9 / peak},
        "train_step_gflop_per_image": flops / g.batch_size / 1e9,
        "achieved_gflops": achieved,
        "achieved_tflops": achieved / 1000,
        "fraction_of_matmul_peak": achieved / peak,
        "sample_images_per_second": {
            "synthmed": ours_sample, "synthmed_sampler": f"{g.sampler} {g.sample_steps} steps, CFG batched",
            "reference": ref_sample, "reference_sampler": "DDIM 50 steps, CFG as two passes",
            "ratio": ours_sample / ref_sample,
        },
    })
    out = Path(args.out) if args.out else Path(__file__).parent / "results" / f"train_throughput_{device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
