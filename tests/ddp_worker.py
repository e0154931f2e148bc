"""What tests/test_distributed.py runs in each process under ``torchrun`` (and, for the reference, in one
process): a few training steps of each kind, sampling, and a run that may be killed and resumed.

``python ddp_worker.py TASK OUT_DIR``; rank 0 writes ``OUT_DIR/TASK.pt`` (a process that trains
alone writes the same file name into its own folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from toydata import toy  # noqa: E402

from synthmed import distributed  # noqa: E402
from synthmed.config import ClassifierConfig, DiffusionConfig, ProGANConfig, R3GANConfig  # noqa: E402
from synthmed.generators.registry import build_generator  # noqa: E402

#: global batch 8 over 2 ranks: 4 images per rank
TINY = {
    "diffusion": lambda steps: DiffusionConfig(block_out_channels=[16, 16], layers_per_block=1, lr=2e-3,
                                               warmup_steps=2, batch_size=8, train_steps=steps, log_every=1,
                                               sample_steps=3, hflip=0.5, cond_dropout=0.2,
                                               checkpoint_every=2),
    "diffusion-ddpm": lambda steps: DiffusionConfig(formulation="ddpm", block_out_channels=[16, 16], layers_per_block=1,
                                                    lr=2e-3, warmup_steps=2, batch_size=8, train_steps=steps,
                                                    log_every=1, sample_steps=3, sampler="ddpm", checkpoint_every=2),
    "r3gan": lambda steps: R3GANConfig(widths=[16, 16], cardinality=4, noise_dim=8, embed_dim=8, batch_size=8,
                                       train_kimg=steps * 8 / 1000, lr_start=2e-3, lr_end=2e-3, gamma_start=0.1,
                                       gamma_end=0.1, aug_start=0.3, aug_end=0.3, ema_half_life_start_kimg=0.01,
                                       ema_half_life_end_kimg=0.01, log_every=1, fd_every_kimg=0,
                                       checkpoint_every=2),
    # minibatch stddev groups images within a rank's rows: one image per group is the same on any number
    "progan": lambda steps: ProGANConfig(widths=[16, 16], latent_dim=8, embed_dim=4, batch_size=8, phase_kimg=0.008,
                                         train_kimg=steps * 8 / 1000, ema_half_life_kimg=0.01, log_every=1,
                                         mbstd_group=1, fd_every_kimg=0, checkpoint_every=2),
}


def train_data():
    return toy(6, seed=0)


def make(kind: str, steps: int, device: str = "cpu"):
    train = train_data()
    return build_generator(TINY[kind](steps), image_size=train.image_size, channels=train.channels,
                           class_names=train.class_names, device=device, seed=0)


def weights(gen) -> dict:
    nets = {"unet": "unet", "ema": "ema"} if hasattr(gen, "unet") else {"G": "G", "D": "D", "G_ema": "G_ema"}
    return {k: {n: t.detach().clone() for n, t in getattr(gen, a).state_dict().items()} for k, a in nets.items()}


def task_train(kind: str, steps: int = 4) -> dict:
    gen = make(kind, steps)
    gen.fit(train_data(), progress=False)
    nets = ("unet",) if hasattr(gen, "unet") else ("G", "D")
    # the last step's gradients (all-reduced under DDP): compared without the optimiser's amplification
    grads = {f"{k}.{n}": p.grad.detach().clone() for k in nets for n, p in getattr(gen, k).named_parameters()
             if p.grad is not None}
    return {"weights": weights(gen), "grads": grads, "loss_curve": gen.history["loss_curve"], "step": gen.step}


def task_sample(kind: str) -> dict:
    gen = make(kind, 2)
    gen.fit(train_data(), progress=False)
    syn = gen.sample([3, 2, 4], seed=5, batch_size=2, progress=False)  # 5 chunks of 2 over the ranks
    return {"images": torch.from_numpy(syn.images), "labels": torch.from_numpy(syn.labels)}


def task_classifier(batchnorm: bool) -> dict:
    """``batchnorm`` False: the small CNN without its BatchNorm layers and dropout, whose per-rank batch
    statistics (on CPU; SyncBatchNorm needs CUDA) and per-rank masks differ from one process's."""
    from torch import nn

    from synthmed import classifiers

    if not batchnorm:
        build = classifiers.build_classifier

        def without_batchnorm(*args, **kwargs):
            model = build(*args, **kwargs)
            for name, child in list(model.body.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    model.body.add_module(name, nn.Identity())
            model.dropout = nn.Identity()
            return model
        classifiers.build_classifier = without_batchnorm
    train_classifier = classifiers.train_classifier
    cfg = ClassifierConfig(arch="smallcnn", widths=[8, 8], batch_size=8, epochs=3, patience=3, lr=1e-2,
                           augmentations=["flip", "rot90"], class_weighting="balanced")
    clf = train_classifier(toy([7, 4, 6], seed=1), toy(3, seed=2), cfg, seed=0, augment=True)
    if not batchnorm:
        classifiers.build_classifier = build
    state = {n: t.detach().clone() for n, t in clf.model.state_dict().items()}
    if distributed.world().active:  # every rank must end with the same classifier
        import torch.distributed as dist

        everyone = [None] * distributed.world().world_size
        dist.all_gather_object(everyone, state)
        agree = all(torch.equal(everyone[0][n], other[n]) for other in everyone for n in state)
    else:
        agree = True
    return {"weights": state, "history": clf.history, "ranks_agree": agree}


def task_latent() -> dict:
    """Latent diffusion's autoencoder (trained first, then the denoiser on its latents)."""
    from synthmed.config import AutoencoderConfig

    cfg = DiffusionConfig(space="latent", block_out_channels=[16, 16], lr=2e-3, warmup_steps=2, batch_size=8,
                          train_steps=2, sample_steps=3, log_every=1,
                          autoencoder=AutoencoderConfig(block_out_channels=[8, 8], latent_channels=4, train_steps=3,
                                                        batch_size=8, cache=False))
    train = train_data()
    gen = build_generator(cfg, image_size=train.image_size, channels=train.channels, class_names=train.class_names,
                          seed=0)
    gen.fit(train, progress=False)
    return {"weights": {"vae": {n: t.detach().clone() for n, t in gen.autoencoder.vae.state_dict().items()},
                        **weights(gen)}}


def task_features() -> dict:
    """Features of 11 images in batches of 3 (4 batches): under a process group each rank computes its
    share of the batches (synthmed.features.base), every rank receives them all."""
    import numpy as np

    from synthmed.features.base import FeatureExtractor

    class Tiny(FeatureExtractor):
        name, dim = "tiny-conv", 6

        def __init__(self):
            self.conv = torch.nn.Conv2d(1, 6, 3).eval()
            torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(3))
            self.batches: list[int] = []

        def _extract_batch(self, images):
            self.batches.append(len(images))
            x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255
            with torch.no_grad():
                return self.conv(x).mean(dim=(2, 3)).double().numpy()

    ex = Tiny()
    feats = ex.extract(toy([4, 3, 4], seed=4), batch_size=3)
    computed = [ex.batches]
    if distributed.world().active:
        import torch.distributed as dist

        computed = [None] * distributed.world().world_size
        dist.all_gather_object(computed, ex.batches)
    return {"features": torch.from_numpy(feats), "batches_per_rank": computed}


def task_resume(kind: str, out: Path, steps: int, kill_at: int | None) -> dict:
    """Train ``steps`` steps with checkpoints in ``out/ckpt``; ``kill_at``: this process dies (os._exit)
    right after the checkpoint of that step is written, as a killed job would."""
    gen = make(kind, steps)
    if kill_at is not None:
        original = gen._save_checkpoint

        def save_then_die(path):
            original(path)
            if gen.step >= kill_at:
                distributed.barrier()
                os._exit(17)
        gen._save_checkpoint = save_then_die
    gen.fit(train_data(), checkpoint_dir=out / "ckpt", progress=False)
    return {"weights": weights(gen), "step": gen.step}


def run_task(task: str, out: Path) -> dict:
    if task.startswith("train:"):  # train:KIND[:STEPS]
        parts = task.split(":")
        result = task_train(parts[1], *(int(v) for v in parts[2:]))
    elif task.startswith("sample:"):
        result = task_sample(task.split(":")[1])
    elif task.startswith("classifier"):  # classifier (no BatchNorm) or classifier-bn
        result = task_classifier(batchnorm=task.endswith("-bn"))
    elif task == "features":
        result = task_features()
    elif task == "train-latent":
        result = task_latent()
    elif task.startswith("resume:"):
        _, kind, steps, kill = task.split(":")
        result = task_resume(kind, out, int(steps), int(kill) if kill else None)
    else:
        raise SystemExit(f"unknown task {task}")
    result["world_size"] = distributed.world().world_size
    return result


def main(argv: list[str]) -> int:
    """``TASK[,TASK...] OUT_DIR``: several tasks in one launch (starting processes is the slow part)."""
    tasks, out = argv[0].split(","), Path(argv[1])
    torch.set_num_threads(1)
    distributed.init("auto")
    for task in tasks:
        result = run_task(task, out)
        if distributed.is_main():
            out.mkdir(parents=True, exist_ok=True)
            torch.save(result, out / f"{task.replace(':', '_')}.pt")
    distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
