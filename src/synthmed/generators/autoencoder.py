"""KL autoencoder for latent diffusion: trained on the user's training split, or loaded from a
local pretrained checkpoint (a Stable-Diffusion-style ``AutoencoderKL`` folder).

Its reconstruction quality is measured on held-out real images *before* diffusion trains:
a latent model can never be better than its decoder, and users should see that number first.

A trained autoencoder is cached under ``~/.cache/synthmed/autoencoder`` (``$XDG_CACHE_HOME``) by
the fingerprints of the training and validation splits, its config and the seed, so a rerun, a
second run on the same split or a sweep of denoiser settings trains it once.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from synthmed import distributed, runtime
from synthmed.config import AutoencoderConfig
from synthmed.files import atomic_torch_save, default_cache_dir
from synthmed.generators.networks import build_autoencoder, count_parameters

#: format tag of a cached autoencoder file
CACHE_FORMAT = "synthmed.autoencoder/1"


def autoencoder_config_hash(cfg: AutoencoderConfig, image_size: int, channels: int) -> str:
    """Hash of everything that changes the trained weights (``cache`` itself does not)."""
    values = {k: v for k, v in asdict(cfg).items() if k != "cache"}
    values.update(image_size=int(image_size), channels=int(channels), format=CACHE_FORMAT)
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def autoencoder_cache_path(cfg: AutoencoderConfig, image_size: int, channels: int, train_fingerprint: str,
                           val_fingerprint: str, seed: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """``<cache>/autoencoder/<train>-<val>-<config hash>-s<seed>.pt``."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "autoencoder"
    return folder / (f"{train_fingerprint}-{val_fingerprint}-{autoencoder_config_hash(cfg, image_size, channels)}"
                     f"-s{seed}.pt")


class LatentAutoencoder:
    def __init__(self, cfg: AutoencoderConfig, image_size: int, channels: int, device: str = "cpu"):
        self.cfg = cfg
        self.image_size = image_size
        self.channels = channels
        self.device = device
        if cfg.pretrained_path:
            self.vae = load_pretrained_vae(cfg.pretrained_path, channels)
        else:
            self.vae = build_autoencoder(cfg, image_size, channels)
        self.vae.to(device)
        # 1 / std of the training latents, so the denoiser sees unit-variance inputs (as SD does).
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 1.0)) if cfg.pretrained_path else 1.0
        self.history: dict = {}
        #: seconds the next :meth:`fit` may take (set by the diffusion generator under
        #: ``generator.budget_minutes``); None trains ``cfg.train_steps`` steps
        self.time_budget_seconds: float | None = None

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        s = self.image_size // self.downsample_factor
        return (self.vae.config.latent_channels, s, s)

    def fit(self, x: torch.Tensor, x_val: torch.Tensor | None = None, *, seed: int = 0, progress: bool = True) -> dict:
        """Train on images in [-1, 1] (N, C, H, W): L1 + MSE reconstruction + small KL term.

        Batches, flips and the posterior samples all come from ``seed``, so the same seed on the
        same images trains the same autoencoder (what the cache relies on).

        With :attr:`time_budget_seconds` the number of steps is what fits in it at the speed
        measured over the first steps (at most ``cfg.train_steps``); the cosine schedule is then
        stretched to end at that step. Without, a long run says so once its speed is known."""
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(self.vae.parameters(), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.train_steps, 1), eta_min=cfg.lr * 0.1)
        self.vae.train()
        curve, running, t0 = [], 0.0, time.time()
        budget_s, total, done = self.time_budget_seconds, cfg.train_steps, 0
        decision: dict | None = None if budget_s is None else {
            "budget_seconds": budget_s, "seconds_per_step": None, "chosen_steps": None, "train_steps_cap": cfg.train_steps}
        estimate = None
        timer = distributed.SharedStepTimer(exact=budget_s is not None)
        bar = tqdm(range(cfg.train_steps), desc="autoencoder", disable=not progress or not distributed.is_main(),
                   leave=False)
        # several ranks: the global batch is drawn on every rank, each encodes and decodes its rows
        world = distributed.world()
        train_vae = distributed.wrap(_EncodeDecode(self.vae), self.device)
        for step in bar:
            if step >= total:
                break
            if budget_s is not None and distributed.main_decides(timer.elapsed >= budget_s):
                decision["stopped_at_step"] = step  # slower than measured at the start: the budget still holds
                warnings.warn(f"generator.budget_minutes: the autoencoder's share of the budget is up at step {step} "
                              f"of the {total} planned (the steps got slower than measured at the start); stopped there")
                break
            idx = torch.randint(0, len(x), (min(cfg.batch_size, len(x)),), generator=g)
            xb = x[idx].to(self.device)
            # flips keep the autoencoder equivariant enough to encode flipped training images
            if torch.rand((), generator=g) < 0.5:
                xb = xb.flip(-1)
            if torch.rand((), generator=g) < 0.5:
                xb = xb.flip(-2)
            if world.active:
                loss = self._rank_share_of_loss(train_vae, xb, g)
                opt.zero_grad(set_to_none=True)
                (loss * distributed.gradient_scale()).backward()  # DDP's mean over ranks -> the global gradient
                loss_value = distributed.sum_over_ranks(loss.item())
            else:
                post = self.vae.encode(xb).latent_dist
                z = post.sample(generator=g)
                rec = self.vae.decode(z).sample
                kl = post.kl().mean() / (xb[0].numel())
                loss = F.l1_loss(rec, xb) + F.mse_loss(rec, xb) + cfg.kl_weight * kl
                opt.zero_grad(set_to_none=True)
                loss.backward()
                loss_value = loss.item()
            opt.step()
            sched.step()
            running += loss_value
            done = step + 1
            if timer.tick():
                if decision is not None:
                    decision = distributed.main_decides(self._choose_steps(timer, budget_s, done)
                                                        if distributed.is_main() else None)
                    total = decision["chosen_steps"]
                    # the recursive cosine goes on from the present lr and reaches eta_min at the new end
                    sched.T_max = max(total, 1)
                    bar.total = total
                    bar.refresh()
                else:
                    estimate = timer.estimate(cfg.train_steps)
                    sps = timer.seconds_per_step
                    runtime.warn_if_long("autoencoder training", sps, cfg.train_steps, self.device, [
                        "--set generator.autoencoder.train_steps="
                        f"{max(1, runtime.steps_within(runtime.LONG_TRAINING_SECONDS, sps))}",
                        f"generator.budget_minutes={runtime.LONG_TRAINING_SECONDS / 60:g}",
                        "a smaller generator.autoencoder.block_out_channels or data.image_size"])
            if (step + 1) % 25 == 0 or step + 1 == total:
                k = (step % 25) + 1
                curve.append([step + 1, running / k])
                bar.set_postfix(loss=f"{running / k:.4f}")
                running = 0.0
        bar.close()
        self.vae.eval()
        with torch.no_grad():
            z = self.encode_raw(x[: min(len(x), 2048)])
            self.scaling_factor = float(1.0 / z.flatten().std().clamp_min(1e-6))
        self.history = {"loss_curve": curve, "train_seconds": time.time() - t0, "train_steps": done,
                        "num_parameters": count_parameters(self.vae)}
        if decision is not None:  # chosen_steps None: the run ended before its speed was measured
            self.history["budget"] = decision
        if estimate is not None:
            self.history["estimate"] = estimate
        if x_val is not None and len(x_val):
            self.history["reconstruction"] = self.reconstruction_quality(x_val)
        return self.history

    def _rank_share_of_loss(self, train_vae, xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        """This rank's rows' part of the global batch's loss as :meth:`fit` computes it in one process: the
        posterior noise is drawn for the whole batch, the rows' terms summed and divided by the batch size."""
        n = len(xb)
        rows = distributed.shard_rows(n)
        c, s, _ = self.latent_shape
        eps = torch.randn((n, c, s, s), generator=g)[rows].to(self.device)  # what post.sample(generator=g) draws
        rec, kl = train_vae(xb[rows], eps)
        per_image = ((rec - xb[rows]).abs().flatten(1).mean(1) + (rec - xb[rows]).square().flatten(1).mean(1)
                     + self.cfg.kl_weight * kl / xb[0].numel())
        return per_image.sum() / n

    def fit_or_load(self, x: torch.Tensor, x_val: torch.Tensor | None = None, *, train_fingerprint: str,
                    val_fingerprint: str | None, seed: int = 0, progress: bool = True,
                    cache_dir: str | os.PathLike | None = None) -> dict:
        """:meth:`fit`, or load the autoencoder a previous fit on the same split (same validation
        split, config and seed) left in the cache. ``history["cache"]`` says which: "hit", "miss"
        (trained, then stored) or "off" (``cfg.cache`` false); an unreadable or mismatching cache
        file is retrained (with a warning) and replaced."""
        if not self.cfg.cache:
            self.fit(x, x_val, seed=seed, progress=progress)
            self.history["cache"] = "off"
            return self.history
        path = autoencoder_cache_path(self.cfg, self.image_size, self.channels, train_fingerprint,
                                      val_fingerprint or "noval", seed, cache_dir)
        hit = path.is_file() and self._load_cached(path, train_fingerprint, val_fingerprint or "noval")
        if distributed.sum_over_ranks(0.0 if hit else 1.0) == 0:  # several ranks: all load it, or all train
            self.history.update(cache="hit", cache_file=str(path))
            return self.history
        self.fit(x, x_val, seed=seed, progress=progress)
        self.history.update(cache="miss", cache_file=str(path))
        if self.history.get("train_steps", self.cfg.train_steps) < self.cfg.train_steps:
            # cut short by generator.budget_minutes: the entry's key says train_steps, and a later run (with a
            # larger budget, or none) must not load this shorter training as if it were that
            self.history["cache"] = "miss (cut short by the time budget: not stored)"
            return self.history
        if not distributed.is_main():  # every rank trained the same autoencoder; rank 0 stores it
            return self.history
        try:
            atomic_torch_save({"format": CACHE_FORMAT, "train_fingerprint": train_fingerprint,
                               "val_fingerprint": val_fingerprint or "noval", "seed": seed,
                               "config": asdict(self.cfg), "image_size": self.image_size,
                               "channels": self.channels, **self._cpu_state()}, path)
        except OSError as e:  # a read-only or full cache costs a retrain next time, nothing else
            warnings.warn(f"could not store the trained autoencoder in the cache ({path}: {e}); it will be "
                          "retrained next time")
            self.history["cache"] = "miss (not stored)"
        return self.history

    def _load_cached(self, path: Path, train_fingerprint: str, val_fingerprint: str) -> bool:
        """Load ``path`` into this autoencoder; False (weights untouched, a warning) when it is
        unreadable or was made for other data or settings."""
        before = copy.deepcopy(self.vae.state_dict())
        try:
            # weights_only: a cache file holds tensors and plain containers, never pickled code
            state = torch.load(path, map_location=self.device, weights_only=True)
            expected = {"format": CACHE_FORMAT, "train_fingerprint": train_fingerprint,
                        "val_fingerprint": val_fingerprint, "image_size": self.image_size,
                        "channels": self.channels,
                        "config": {k: v for k, v in asdict(self.cfg).items() if k != "cache"}}
            found = {k: state.get(k) for k in expected}
            found["config"] = {k: v for k, v in (state.get("config") or {}).items() if k != "cache"}
            wrong = [k for k in expected if found[k] != expected[k]]
            if wrong:
                raise ValueError(f"made for other {', '.join(wrong)}")
            steps = (state.get("history") or {}).get("train_steps", self.cfg.train_steps)
            if steps < self.cfg.train_steps:  # stored before budget-cut trainings were kept out of the cache
                raise ValueError(f"trained {steps} of the {self.cfg.train_steps} steps its key promises")
            self.load_state(state)
        except Exception as e:  # noqa: BLE001 - a damaged cache entry is retrained, never fatal
            self.vae.load_state_dict(before)
            self.scaling_factor, self.history = 1.0, {}
            warnings.warn(f"ignoring the cached autoencoder {path} ({type(e).__name__}: {e}); retraining it")
            return False
        return True

    def _cpu_state(self) -> dict:
        return {"vae": {k: v.detach().cpu() for k, v in self.vae.state_dict().items()},
                "scaling_factor": self.scaling_factor, "history": self.history}

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """decode(encode(x)) in [-1, 1]: what the decoder makes of real images, clamped like samples."""
        out = [self.decode(self.encode(x[i : i + batch_size])).clamp(-1, 1).cpu() for i in range(0, len(x), batch_size)]
        return torch.cat(out) if out else x.new_zeros((0, *x.shape[1:]))
    def _choose_steps(self, timer: runtime.StepTimer, budget_seconds: float, done: int) -> dict:
        """The steps that fit in ``budget_seconds`` at the measured speed (at most train_steps), as recorded."""
        cfg, sps = self.cfg, timer.seconds_per_step
        total = min(cfg.train_steps, done + runtime.steps_within(budget_seconds - timer.elapsed, sps))
        if total < cfg.train_steps:
            warnings.warn(
                f"generator.budget_minutes: the autoencoder's share ({runtime.format_duration(budget_seconds)}) fits "
                f"{total} of its {cfg.train_steps} steps ({sps:.3g} s/step on {self.device}); raise the budget, or "
                "make steps cheaper (a smaller generator.autoencoder.block_out_channels or data.image_size, "
                "--device cuda)")
        return {"budget_seconds": budget_seconds, "seconds_per_step": sps, "measured_over_steps": timer.measured_over,
                "chosen_steps": total, "train_steps_cap": cfg.train_steps}

    @torch.no_grad()
    def reconstruction_quality(self, x: torch.Tensor, batch_size: int = 256) -> dict:
        """MSE and PSNR (images scaled to [0, 1]) of encode->decode on held-out real images."""
        self.vae.eval()
        mse = []
        for i in range(0, len(x), batch_size):
            xb = x[i : i + batch_size].to(self.device)
            rec = self.decode(self.encode(xb)).clamp(-1, 1)
            mse.append(((rec - xb) / 2).pow(2).flatten(1).mean(1).cpu())
        m = torch.cat(mse)
        psnr = (10 * torch.log10(1.0 / m.clamp_min(1e-10))).mean().item()
        return {"mse": float(m.mean()), "psnr_db": psnr, "num_images": int(len(x)),
                "note": "held-out real images (validation split), pixel range [0, 1]"}

    @torch.no_grad()
    def encode_raw(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.vae.eval()
        out = [self.vae.encode(x[i : i + batch_size].to(self.device)).latent_dist.mean for i in range(0, len(x), batch_size)]
        return torch.cat(out)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode_raw(x) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        self.vae.eval()
        out = [self.vae.decode(z[i : i + batch_size] / self.scaling_factor).sample for i in range(0, len(z), batch_size)]
        return torch.cat(out)

    def state(self) -> dict:
        return {"vae": self.vae.state_dict(), "scaling_factor": self.scaling_factor, "history": self.history}

    def load_state(self, state: dict) -> None:
        self.vae.load_state_dict(state["vae"])
        self.scaling_factor = state["scaling_factor"]
        self.history = state.get("history", {})


class _EncodeDecode(torch.nn.Module):
    """One training pass of the autoencoder as a module, for DistributedDataParallel: encode, sample the
    posterior with the given noise, decode; returns (reconstruction, per-image KL)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor):
        post = self.vae.encode(x).latent_dist
        z = post.mean + post.std * eps
        return self.vae.decode(z).sample, post.kl()


def load_pretrained_vae(path: str, channels: int):
    """Load a diffusers-format AutoencoderKL folder from disk (never from a hub)."""
    from diffusers import AutoencoderKL

    p = Path(path)
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"generator.autoencoder.pretrained_path = {p}: no diffusers AutoencoderKL there (expected {p / 'config.json'} "
            "and its weights). Save one with AutoencoderKL.save_pretrained(), or set pretrained_path: null to train one "
            "on your training split."
        )
    vae = AutoencoderKL.from_pretrained(str(p), local_files_only=True)
    if vae.config.in_channels != channels:
        raise ValueError(
            f"pretrained autoencoder at {p} takes {vae.config.in_channels}-channel images but the data has {channels}; "
            f"set data.channels: {vae.config.in_channels}"
        )
    return vae

