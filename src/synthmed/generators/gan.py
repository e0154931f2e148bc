"""What the GAN kinds share: the training loop in kimg, EMA of the generator by half-life, the time
budget and time estimate, the FD curve with its best snapshot, one-pass sampling, checkpoints.

A kind (R3GAN, ProGAN) supplies its networks, its optimisers and one adversarial step
(:meth:`GANGenerator._train_step`); everything a caller sees (fit / sample / save / load / resume,
provenance, history) is the same for every kind and mirrors the diffusion generator.

Why it is written this way:
- progress is counted in real images shown (kimg), so schedules do not depend on the batch size;
- every random number of a step comes from one ``torch.Generator`` saved in the checkpoint, so a
  resumed run continues exactly where it stopped;
- GANs train in float32 on every device: the R1/R2 and gradient penalties differentiate through a
  gradient, where bf16 loses the small values they are made of.
"""

from __future__ import annotations

import copy
import math
import os
import time
import warnings
from abc import abstractmethod
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import synthmed
from synthmed import distributed, runtime
from synthmed.data.dataset import ImageDataset
from synthmed.data.storage import training_images
from synthmed.files import atomic_torch_save
from synthmed.generators.base import Generator, GeneratorError, counts_to_labels
from synthmed.generators.monitor import FDMonitor
from synthmed.generators.networks import count_parameters
from synthmed.generators.schedules import ema_beta


#: what GANs report as their sampler: one forward pass of the generator per image
SINGLE_PASS = "single pass"


class GANGenerator(Generator):
    """Base of the class-conditional GAN kinds. Subclasses set ``kind``, ``config_class`` and implement
    the hooks below; ``self.G``, ``self.D`` and ``self.G_ema`` are built by :meth:`_build_networks`."""

    config_class: type = object
    #: what the report says about the loss curve: GAN losses do not fall as training succeeds
    adversarial = True

    def __init__(self, cfg, *, image_size: int, channels: int, class_names: list[str], device: str = "cpu",
                 seed: int = 0):
        self._set_identity(cfg, image_size=image_size, channels=channels, class_names=class_names, device=device,
                           seed=seed)
        torch.manual_seed(seed)
        self.G, self.D = self._build_networks()
        self.G.to(device)
        self.D.to(device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self.step = 0
        #: real images shown to the discriminator so far (progress = images_shown / 1000 kimg)
        self.images_shown = 0
        self.history: dict = {"loss_curve": [], "train_seconds": 0.0}
        self.train_fingerprint: str | None = None
        self.train_image_hashes: set[str] | None = None
        #: the lowest point of the FD curve: {"kimg", "fd", "state" (G_ema weights), "growth"}
        self.best: dict | None = None
        #: optional feature function for the FD curve (uint8 NHWC -> (N, d)); None: random conv features
        self.fd_feature_fn = None
        self._opt_state = None
        self._rng_state = None
        self._best_net = None

    # ------------------------------------------------------------------ hooks of each kind
    @abstractmethod
    def _build_networks(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """(generator, discriminator), on the CPU."""

    @abstractmethod
    def _make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """{"G": ..., "D": ...}."""

    @abstractmethod
    def _train_step(self, real: torch.Tensor, labels: torch.Tensor, gen: torch.Generator,
                    opts: dict, progress_kimg: float, total_kimg: float) -> dict[str, float]:
        """One discriminator and one generator update; returns the losses to log (``loss``: the
        discriminator's full loss, which the loss curve shows)."""

    @abstractmethod
    def _noise_dim(self) -> int:
        """Length of the noise vector of one image."""

    def _ema_half_life_kimg(self, progress_kimg: float, total_kimg: float) -> float:
        return float(self.cfg.ema_half_life_kimg)

    def _growth(self, progress_kimg: float) -> dict:
        """State of the network at this progress that sampling needs (ProGAN: level and fade-in alpha)."""
        return {}

    def _generate(self, net: torch.nn.Module, z: torch.Tensor, y: torch.Tensor, growth: dict) -> torch.Tensor:
        """Images (N, C, image_size, image_size) in about [-1, 1] from noise and labels."""
        return net(z, y)

    def _relative_step_cost(self, progress_kimg: np.ndarray, scale: float) -> np.ndarray:
        """Cost of a step at each progress point relative to the others (ProGAN: grows with the
        resolution), under a schedule whose phases are ``scale`` x their configured length."""
        return np.ones_like(progress_kimg, dtype=float)

    def _calibrate_step_costs(self, x: torch.Tensor, y: torch.Tensor, bs: int, opts: dict) -> None:
        """Measure what ``_relative_step_cost`` needs before a budget plan is chosen (default: nothing,
        every step costs the same)."""

    def _summary(self) -> str:
        return self.kind

    # ------------------------------------------------------------------ several processes (distributed.py)
    #: the losses :meth:`_train_step` returns as this rank's share of the batch mean, summed over ranks
    rank_summed: tuple[str, ...] = ("loss",)
    #: this rank's rows of the global batch while several ranks train (None: one process)
    _rows: slice | None = None
    _ddp: dict = {}
    #: DistributedDataParallel options of the kind's networks (ProGAN: layers of the levels not grown yet are unused)
    ddp_options: dict = {}

    @property
    def _train_G(self) -> torch.nn.Module:
        """G for a forward whose backward trains G: its DDP wrapper while several ranks train."""
        return self._ddp.get("G", self.G)

    @property
    def _train_D(self) -> torch.nn.Module:
        """D for a forward whose backward trains D (the plain D elsewhere, e.g. in the G step)."""
        return self._ddp.get("D", self.D)

    def _rank_share(self, n: int) -> tuple[int, slice, float, int]:
        """(global batch n, this rank's rows, the factor turning a mean over them into their share of
        the batch mean, the gradient scale undoing DDP's mean over ranks); (n, all, 1, 1) in one process."""
        if self._rows is None:
            return n, slice(None), 1.0, 1
        m = len(range(n)[self._rows])
        return n, self._rows, distributed.local_share(m, n), distributed.gradient_scale()

    def _truncation(self) -> float | None:
        return None

    # ------------------------------------------------------------------ progress and budget
    @property
    def kimg(self) -> float:
        return self.images_shown / 1000.0

    def _scale(self) -> float:
        """Length of training and of every phase relative to the config: 1 without a budget, else
        what the budget chose (saved in the history, so a resumed run keeps it)."""
        b = self.history.get("budget") or {}
        if self.cfg.budget_minutes is not None and b.get("budget_minutes") == self.cfg.budget_minutes \
                and b.get("scale") is not None:
            return float(b["scale"])
        return 1.0

    def _decided(self) -> bool:
        if self.cfg.budget_minutes is None:
            return True
        b = self.history.get("budget") or {}
        return b.get("budget_minutes") == self.cfg.budget_minutes and b.get("scale") is not None

    def total_kimg(self) -> float:
        return float(self.cfg.train_kimg) * self._scale()

    def _total_images(self) -> int:
        return int(round(self.total_kimg() * 1000))

    def _estimated_seconds(self, scale: float, seconds_per_step: float, measured_at_kimg: float, bs: int) -> float:
        """Seconds from now to the end of a plan of ``scale`` x the configured length."""
        end = self.cfg.train_kimg * scale * 1000
        if end <= self.images_shown:
            return 0.0
        shown = np.arange(self.images_shown, end, bs, dtype=float) / 1000.0
        cost = self._relative_step_cost(shown, scale)
        # the speed was measured under the plan in effect then (not the candidate's): a shorter
        # candidate plan may already have grown past the level the timing saw
        ref = float(self._relative_step_cost(np.array([measured_at_kimg]), self._scale())[0])
        return float(seconds_per_step * cost.sum() / max(ref, 1e-12))

    def _choose_scale(self, timer: runtime.StepTimer, seconds_left: float, bs: int) -> float:
        """The largest scale <= 1 whose plan fits in ``seconds_left`` at the measured speed (bisection),
        recorded in ``history["budget"]``."""
        sps, here = timer.seconds_per_step, self.kimg
        lo_images = self.images_shown + bs  # at least one more step
        lo = min(1.0, lo_images / max(self.cfg.train_kimg * 1000, 1))
        if self._estimated_seconds(1.0, sps, here, bs) <= seconds_left:
            scale = 1.0
        else:
            a, b = lo, 1.0
            for _ in range(40):
                m = 0.5 * (a + b)
                a, b = (m, b) if self._estimated_seconds(m, sps, here, bs) <= seconds_left else (a, m)
            scale = a
        steps = math.ceil(self.cfg.train_kimg * scale * 1000 / bs)
        self.history["budget"] = {
            **self._budget_record(), "budget_minutes": self.cfg.budget_minutes, "seconds_per_step": sps,
            "measured_over_steps": timer.measured_over, "decided_at_step": self.step,
            "seconds_left_at_decision": max(0.0, seconds_left), "scale": scale, "chosen_steps": steps,
            "chosen_kimg": self.cfg.train_kimg * scale, "train_kimg_cap": self.cfg.train_kimg,
            "train_steps_cap": math.ceil(self.cfg.train_kimg * 1000 / bs),
            "estimated_seconds": self._estimated_seconds(scale, sps, here, bs), "stopped_at_step": None,
        }
        if scale < 1.0:
            warnings.warn(
                f"generator.budget_minutes = {self.cfg.budget_minutes:g}: {self.cfg.train_kimg * scale:.4g} of the "
                f"{self.cfg.train_kimg:g} kimg fit ({sps:.3g} s/step on {self.device}, "
                f"{runtime.format_duration(max(0.0, seconds_left))} of the budget left at step {self.step}); every "
                "schedule and phase is shortened by the same factor; raise the budget or use --device cuda for more")
        return scale

    def _budget_record(self) -> dict:
        return self.history.setdefault("budget", {"budget_minutes": self.cfg.budget_minutes, "chosen_steps": None,
                                                  "scale": None, "seconds_per_step": None,
                                                  "train_kimg_cap": self.cfg.train_kimg})

    def _warn_if_long(self, timer: runtime.StepTimer, steps_left: int, bs: int) -> None:
        sps = timer.seconds_per_step
        seconds = self._estimated_seconds(1.0, sps, self.kimg, bs)
        per_step = seconds / max(steps_left, 1)  # progressive growing: later steps cost more
        self.history["estimate"] = {**timer.estimate(steps_left), "estimated_seconds": seconds}
        fit_kimg = self.cfg.train_kimg * runtime.LONG_TRAINING_SECONDS / max(seconds, 1e-9)
        runtime.warn_if_long("generator training", per_step, steps_left, self.device, [
            f"--set generator.train_kimg={fit_kimg:.3g}",
            f"generator.budget_minutes={runtime.LONG_TRAINING_SECONDS / 60:g}",
            "smaller generator.widths"])

    # ------------------------------------------------------------------ training
    def fit(self, train: ImageDataset, val: ImageDataset | None = None, *, resume: bool = True,
            checkpoint_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
        counts, ckpt = self.begin_fit(train, checkpoint_dir, resume)

        cfg, dev = self.cfg, self.device
        x, y = training_images(train)  # a memory-mapped split is read lazily, batch by batch (data/storage.py)
        x, y = x.to(dev), y.to(dev)
        n = len(y)
        bs = min(cfg.batch_size, n)
        world = distributed.world()
        if world.active and bs < world.world_size:
            raise GeneratorError(f"generator.batch_size = {bs} is smaller than the {world.world_size} processes; "
                                 "raise it (it is the global batch, shared out over the processes)")
        # several ranks: every rank draws the global batch, trains on its rows, DDP all-reduces the gradients
        self._rows = distributed.shard_rows(bs) if world.active else None
        self._ddp = ({k: distributed.wrap(net, dev, **self.ddp_options) for k, net in (("G", self.G), ("D", self.D))}
                     if world.active else {})
        opts = self._make_optimizers()
        if self._opt_state is not None:
            for k, o in opts.items():
                o.load_state_dict(self._opt_state[k])
        gen = torch.Generator().manual_seed(self.seed)
        if self._rng_state is not None:
            gen.set_state(self._rng_state)
        monitor = None
        if cfg.fd_every_kimg > 0:
            ref = val if val is not None and len(val) else train  # val is for monitoring only
            rx = ref.to_tensor()[0]
            if len(rx) > cfg.fd_samples:
                rx = rx[torch.randperm(len(rx), generator=torch.Generator().manual_seed(self.seed))[:cfg.fd_samples]]
            monitor = FDMonitor(rx, feature_fn=self.fd_feature_fn, seed=self.seed)
            self.history["fd_reference"] = {"split": "val" if ref is val else "train", "n": len(rx),
                                            "features": monitor.features_name}
        budget_s = cfg.budget_minutes * 60 if cfg.budget_minutes is not None else None
        spent_before = (self.history.get("budget") or {}).get("seconds_spent")
        if spent_before is None:
            spent_before = self.history.get("train_seconds", 0.0)
        decided = self._decided()
        params = list(self.G.parameters())
        ema_params = list(self.G_ema.parameters())
        self.G.train()
        self.D.train()
        t_start, fit_start = time.time(), runtime.clock()
        timer = distributed.SharedStepTimer(exact=not decided)
        bar = tqdm(total=math.ceil(self._total_images() / bs), initial=self.step, desc=self.kind,
                   disable=not progress or not distributed.is_main())
        running: dict[str, float] = {}
        run_n = 0
        next_fd = self._next_fd_kimg()

        def spent() -> float:
            return spent_before + (timer.last - fit_start)

        while self.images_shown < self._total_images():
            if budget_s is not None and distributed.main_decides(spent() >= budget_s):
                b = self._budget_record()
                if b.get("stopped_at_step") is None:
                    warnings.warn(f"generator.budget_minutes = {cfg.budget_minutes:g}: the time is up at "
                                  f"{self.kimg:.4g} of {self.total_kimg():.4g} kimg; stopped there")
                b["stopped_at_step"] = self.step
                break
            idx = torch.randint(0, n, (bs,), generator=gen)
            real, labels = x[idx], y[idx]
            losses = self._train_step(real, labels, gen, opts, self.kimg, self.total_kimg())
            losses = distributed.sum_dict_over_ranks(losses, self.rank_summed)  # the global batch's losses
            if not all(math.isfinite(v) for v in losses.values()):
                raise GeneratorError(f"a loss became {losses} at step {self.step}; lower the generator's learning "
                                     "rate or check the data for NaNs")
            self.images_shown += bs
            self.step += 1
            beta = ema_beta(bs, self._ema_half_life_kimg(self.kimg, self.total_kimg()))
            with torch.no_grad():
                torch._foreach_lerp_(ema_params, params, 1.0 - beta)
            for k, v in losses.items():
                running[k] = running.get(k, 0.0) + v
            run_n += 1
            if timer.tick():
                if not decided:
                    t_probe = runtime.clock()
                    self._calibrate_step_costs(x, y, bs, opts)  # every rank: its steps are collective
                    if distributed.is_main():  # rank 0's clock decides, so every rank trains as long
                        self._choose_scale(timer, budget_s - spent() - (runtime.clock() - t_probe), bs)
                    self.history["budget"] = distributed.main_decides(self.history.get("budget"))
                    decided = True
                    bar.total = math.ceil(self._total_images() / bs)
                    bar.refresh()
                elif budget_s is None:
                    self._warn_if_long(timer, math.ceil((self._total_images() - self.images_shown) / bs), bs)
            done = self.images_shown >= self._total_images()
            if self.step % cfg.log_every == 0 or done:
                means = {k: v / run_n for k, v in running.items()}
                self.history["loss_curve"].append([self.step, means["loss"]])
                self.history.setdefault("losses", []).append({"step": self.step, "kimg": self.kimg, **means})
                bar.set_postfix({k: f"{v:.3f}" for k, v in means.items()})
                running, run_n = {}, 0
            if monitor is not None and (self.kimg >= next_fd or done):
                self._log_fd(monitor, train)
                next_fd = self._next_fd_kimg()
            bar.update(1)
            if ckpt is not None and cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and not done:
                self._pause(opts, gen, t_start, budget_s, spent)
                t_start = time.time()
                self._save_checkpoint(ckpt)
        bar.close()
        self._pause(opts, gen, t_start, budget_s, spent)
        self.G.eval()
        self.D.eval()
        self._best_net = None
        self._rows, self._ddp = None, {}
        self.history.update({
            "train_steps": self.step, "train_kimg": self.kimg, "batch_size": bs, "processes": world.world_size,
            "num_parameters": self.num_parameters,
            "images_per_second": self.images_shown / max(self.history["train_seconds"], 1e-9),
            "device": dev, "precision": "float32",
            "best_snapshot": ({k: self.best[k] for k in ("kimg", "fd")} if self.best else None),
            "sampling_network": self._sampling_network_name(),
        })
        if ckpt is not None:
            self._save_checkpoint(ckpt)
        return self.history

    def _pause(self, opts, gen, t_start, budget_s, spent) -> None:
        """Bring the state the checkpoint saves up to date."""
        if budget_s is not None:
            self._budget_record()["seconds_spent"] = spent()
        self._opt_state = {k: o.state_dict() for k, o in opts.items()}
        self._rng_state = gen.get_state()
        self.history["train_seconds"] += time.time() - t_start

    def _next_fd_kimg(self) -> float:
        every = self.cfg.fd_every_kimg
        return (math.floor(self.kimg / every + 1e-9) + 1) * every if every > 0 else math.inf

    @torch.no_grad()
    def _log_fd(self, monitor: FDMonitor, train: ImageDataset) -> None:
        """FD of ``fd_samples`` EMA images (classes as in the training split) against the reference;
        the lowest point's weights are kept as the best snapshot."""
        n = len(monitor.real)
        counts = np.asarray(train.class_counts(), float)
        labels = np.repeat(np.arange(self.num_classes), np.round(counts / counts.sum() * n).astype(int))
        g = torch.Generator().manual_seed(self.seed + 12345)  # the same noise at every point of the curve
        z = torch.randn((len(labels), self._noise_dim()), generator=g)
        growth = self._growth(self.kimg)
        self.G_ema.eval()
        out = [self._generate(self.G_ema, z[i:i + 256].to(self.device),
                              torch.from_numpy(labels[i:i + 256]).to(self.device), growth)
               for i in range(0, len(labels), 256)]
        fd = monitor.fd(torch.cat(out))
        self.history.setdefault("fd_curve", []).append([self.kimg, fd])
        if self.best is None or fd < self.best["fd"]:
            self.best = {"kimg": self.kimg, "fd": fd, "growth": growth,
                         "state": {k: v.detach().cpu().clone() for k, v in self.G_ema.state_dict().items()}}

    # ------------------------------------------------------------------ sampling
    def _sampling_network_name(self) -> str:
        if self.cfg.keep_best and self.best is not None:
            return f"best snapshot by FD (at {self.best['kimg']:.4g} kimg, FD {self.best['fd']:.4g})"
        return "EMA of the generator at the end of training"

    def _sampling_net(self) -> tuple[torch.nn.Module, dict]:
        if self.cfg.keep_best and self.best is not None:
            if self._best_net is None:
                self._best_net = copy.deepcopy(self.G_ema)
                self._best_net.load_state_dict(self.best["state"])
            return self._best_net, self.best["growth"]
        return self.G_ema, self._growth(self.kimg)

    @torch.no_grad()
    def sample(self, counts, *, guidance: float | None = None, seed: int = 0, batch_size: int | None = None,
               sampler: str | None = None, steps: int | None = None, progress: bool = True) -> ImageDataset:
        """One generator pass per image (EMA weights, or the best snapshot by FD). ``guidance``,
        ``sampler`` and ``steps`` do not apply to a GAN: None (or the defaults) only. The noise of
        every image is drawn from ``seed`` up front, so the same seed gives the same images."""
        if self.train_fingerprint is None:
            raise GeneratorError("sample() before fit(): train the generator or load a checkpoint first")
        if guidance is not None:
            raise GeneratorError(f"guidance = {guidance}: a {self.kind} GAN has no classifier-free guidance; "
                                 "leave it unset")
        if sampler not in (None, SINGLE_PASS) or steps not in (None, 1):
            raise GeneratorError(f"a {self.kind} GAN samples in one pass: sampler/steps do not apply "
                                 f"(got sampler={sampler!r}, steps={steps!r})")
        labels = counts_to_labels(counts, self.num_classes)
        bs = batch_size or runtime.sampling_batch_size(self.device)
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((len(labels), self._noise_dim()), generator=g)
        psi = self._truncation()
        if psi is not None:
            z = z * psi
        net, growth = self._sampling_net()
        net.eval()
        out = {}
        t0 = time.time()
        for i in tqdm(range(0, len(labels), bs), desc="sampling", disable=not progress or not distributed.is_main(),
                      leave=False):
            if not distributed.chunk_owner(i // bs):
                continue  # another rank's chunk (several processes share the sampling)
            yb = torch.from_numpy(labels[i:i + bs]).to(self.device)
            out[i // bs] = self._generate(net, z[i:i + bs].to(self.device), yb, growth).float().cpu()
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        out = distributed.gather_chunks(out, -(-len(labels) // bs))
        x = torch.cat(out) if out else torch.zeros((0, self.channels, self.image_size, self.image_size))
        seconds = time.time() - t0
        meta = {
            "generator": self.kind, "space": "pixel", **self.sampling_defaults, "seed": seed,
            "train_fingerprint": self.train_fingerprint, "seconds": seconds,
            "images_per_second": len(labels) / max(seconds, 1e-9),
            "train_class_counts": self.history.get("train_class_counts"), "train_steps": self.step,
            "train_kimg": self.kimg, "sampling_network": self._sampling_network_name(),
            "generator_config": asdict(self.cfg),
        }
        return ImageDataset.from_tensor(x, torch.from_numpy(labels), self.class_names, name="synthetic", meta=meta)

    # ------------------------------------------------------------------ what callers may ask
    @property
    def sampling_defaults(self) -> dict:
        return {"sampler": SINGLE_PASS, "steps": 1, "guidance": None, "truncation": self._truncation()}

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.G)

    def describe(self) -> dict:
        h = self.history
        psi = self._truncation()
        return {
            "kind": self.kind, "summary": self._summary(), "adversarial": True,
            "num_parameters": self.num_parameters, "discriminator_parameters": count_parameters(self.D),
            "settings": asdict(self.cfg), "sampling": self.sampling_defaults,
            "truncation": "off (full noise distribution)" if psi is None else f"psi = {psi:g}",
            "train_fingerprint": self.train_fingerprint, "train_steps": self.step, "train_kimg": self.kimg,
            "training_plan": (f"{self.cfg.train_kimg:g} kimg" + (f" within {self.cfg.budget_minutes:g} min"
                                                                   if self.cfg.budget_minutes is not None else "")),
            "train_seconds": h.get("train_seconds"), "images_per_second": h.get("images_per_second"),
            "fd_curve": h.get("fd_curve"), "fd_reference": h.get("fd_reference"),
            "best_snapshot": h.get("best_snapshot"), "sampling_network": self._sampling_network_name(),
        }

    # ------------------------------------------------------------------ persistence
    def _state(self) -> dict:
        return {
            "format": f"synthmed.{self.kind}/1", "synthmed_version": synthmed.__version__,
            "config": asdict(self.cfg), "image_size": self.image_size, "channels": self.channels,
            "class_names": self.class_names, "seed": self.seed, "step": self.step,
            "images_shown": self.images_shown, "G": self.G.state_dict(), "D": self.D.state_dict(),
            "G_ema": self.G_ema.state_dict(), "optimizer": self._opt_state, "rng": self._rng_state,
            "history": self.history, "best": self.best, "train_fingerprint": self.train_fingerprint,
            "train_image_hashes": sorted(self.train_image_hashes or []),
        }

    def _save_checkpoint(self, path: Path) -> None:
        if distributed.is_main():  # every rank holds the same state; one writes it
            atomic_torch_save(self._state(), path)

    def _load_state(self, state: dict) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.G_ema.load_state_dict(state["G_ema"])
        self.step, self.images_shown = state["step"], state["images_shown"]
        self._opt_state, self._rng_state = state["optimizer"], state["rng"]
        self.history, self.best = state["history"], state.get("best")
        self.train_fingerprint = state["train_fingerprint"]
        self.train_image_hashes = set(state.get("train_image_hashes") or [])
        self._best_net = None

    def _load_checkpoint(self, path: Path, expect_fingerprint: str) -> None:
        state = torch.load(path, map_location=self.device, weights_only=False)
        if state["train_fingerprint"] != expect_fingerprint:
            raise GeneratorError(
                f"checkpoint {path} was trained on data {state['train_fingerprint']}, not on this training split "
                f"({expect_fingerprint}); use another run directory or pass resume=False")
        self._load_state(state)

    def save(self, directory: str | os.PathLike) -> Path:
        return self.write_folder(directory, train_kimg=self.kimg)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | None = None) -> "GANGenerator":
        state = cls.read_checkpoint(directory, device)
        g = cls(cls.config_class(**state["config"]), image_size=state["image_size"], channels=state["channels"],
                class_names=state["class_names"], device=device or "cpu", seed=state["seed"])
        g._load_state(state)
        return g


__all__ = ["GANGenerator", "SINGLE_PASS"]
