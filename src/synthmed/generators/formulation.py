"""Diffusion formulations: how noise is added, what the network predicts, how the loss is weighted,
and which diffusers scheduler samples from it.

Kept apart from the backbone (``networks.py``) and from the train/sample loop (``diffusion.py``), as
in EDM's preconditioner: any network ``net(x, t, class_labels) -> tensor`` works with any
formulation here.

- ``ddpm``: discrete-time DDPM (Ho et al. 2020) on diffusers' ``DDPMScheduler``; the network predicts
  the noise (``epsilon``) or the velocity (``v_prediction``); the loss is the plain MSE ("uniform")
  or Min-SNR-gamma weighted (Hang et al. 2023), which stops the many nearly-clean timesteps from
  dominating the gradient.
- ``edm``: the preconditioned continuous-sigma formulation of Karras et al. 2022: log-normal
  training sigmas, input/output/skip scalings that keep the network's input and target at unit
  variance, the loss weight lambda(sigma) that makes every sigma count equally. Sampled with
  diffusers' ``EDMDPMSolverMultistepScheduler`` (or ``EDMEulerScheduler``), whose preconditioning
  is the same as here.
"""

from __future__ import annotations

from typing import Callable

import torch

from synthmed.config import DiffusionConfig

Network = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class DDPMFormulation:
    name = "ddpm"

    def __init__(self, cfg: DiffusionConfig, device: str = "cpu"):
        self.cfg = cfg
        self.alphas_cumprod = self.noise_scheduler().alphas_cumprod.to(device)

    def noise_scheduler(self):
        from diffusers import DDPMScheduler

        return DDPMScheduler(
            num_train_timesteps=self.cfg.num_train_timesteps,
            beta_schedule="squaredcos_cap_v2" if self.cfg.schedule == "cosine" else "linear",
            prediction_type=self.cfg.prediction_type,
            clip_sample=False,
        )

    def loss(self, net: Network, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
             rows: slice | None = None) -> torch.Tensor:
        """The batch's loss. ``rows`` (distributed training): every random number is drawn for the
        whole batch, the network runs on these rows only, and the result is their share of the batch
        mean (their sum / the batch size), see :mod:`synthmed.distributed`."""
        cfg, dev = self.cfg, x0.device
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        t = torch.randint(0, cfg.num_train_timesteps, (len(x0),), generator=gen).to(dev)
        n = len(x0)
        if rows is not None:
            x0, y, noise, t = x0[rows], y[rows], noise[rows], t[rows]
        a = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = noise if cfg.prediction_type == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
        err = (net(xt, t, y).float() - target).pow(2).mean(dim=(1, 2, 3))
        weighted = err * self.loss_weight(a.view(-1))
        return weighted.mean() if rows is None else weighted.sum() / n

    def loss_weight(self, alpha_bar: torch.Tensor) -> torch.Tensor:
        """Per-sample weight; Min-SNR-gamma: min(SNR, gamma) / SNR for epsilon, / (SNR + 1) for v."""
        if self.cfg.loss_weighting == "uniform":
            return torch.ones_like(alpha_bar)
        snr = alpha_bar / (1 - alpha_bar).clamp_min(1e-12)
        clipped = snr.clamp_max(self.cfg.min_snr_gamma)
        return clipped / snr.clamp_min(1e-12) if self.cfg.prediction_type == "epsilon" else clipped / (snr + 1)

    def sampling_scheduler(self, sampler: str):
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        base = self.noise_scheduler().config
        # "leading" spacing starts a few steps below T. At t = T - 1 the cosine schedule's alpha_bar is
        # ~2e-9, and the data prediction x0 = (x - sqrt(1 - a) eps) / sqrt(a) multiplies the network's
        # error by ~2e4: measured on the demo, DPM-Solver++ from t = 999 gave saturated noise
        # (conditional accuracy at chance), from the leading grid 0.81.
        if sampler == "dpmsolver++":
            return DPMSolverMultistepScheduler.from_config(base, algorithm_type="dpmsolver++", solver_order=2,
                                                           timestep_spacing="leading")
        if sampler == "ddim":
            return DDIMScheduler.from_config(base, timestep_spacing="leading")
        return DDPMScheduler.from_config(base, timestep_spacing="leading")


class EDMFormulation:
    name = "edm"

    def __init__(self, cfg: DiffusionConfig, device: str = "cpu"):
        self.cfg = cfg
        self.sigma_data = cfg.sigma_data if cfg.sigma_data is not None else (1.0 if cfg.space == "latent" else 0.5)

    def scalings(self, sigma: torch.Tensor):
        """(c_skip, c_out, c_in, c_noise) of Karras et al. 2022, Table 1."""
        sd = self.sigma_data
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        c_in = 1 / (sigma**2 + sd**2).sqrt()
        return c_skip, c_out, c_in, 0.25 * sigma.log()

    def loss(self, net: Network, x0: torch.Tensor, y: torch.Tensor, gen: torch.Generator,
             rows: slice | None = None) -> torch.Tensor:
        """As :meth:`DDPMFormulation.loss` (``rows``: this rank's share of the batch)."""
        dev = x0.device
        sigma = (torch.randn(len(x0), generator=gen) * self.cfg.edm_p_std + self.cfg.edm_p_mean).exp().to(dev)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        n = len(x0)
        if rows is not None:
            x0, y, noise, sigma = x0[rows], y[rows], noise[rows], sigma[rows]
        s = sigma.view(-1, 1, 1, 1)
        x = x0 + s * noise
        c_skip, c_out, c_in, c_noise = self.scalings(s)
        # lambda(sigma) * ||D(x) - x0||^2 with D = c_skip x + c_out F equals ||F - (x0 - c_skip x) / c_out||^2,
        # since lambda = 1 / c_out^2: the network's target has unit variance at every sigma.
        target = (x0 - c_skip * x) / c_out
        err = (net(c_in * x, c_noise.view(-1), y).float() - target).pow(2)
        return err.mean() if rows is None else err.mean(dim=(1, 2, 3)).sum() / n

    def sampling_scheduler(self, sampler: str):
        from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

        common = dict(sigma_min=self.cfg.edm_sigma_min, sigma_max=self.cfg.edm_sigma_max,
                      sigma_data=self.sigma_data, sigma_schedule="karras", rho=7.0)
        if sampler == "dpmsolver++":
            return EDMDPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
        if sampler == "ddim":  # deterministic first-order ODE step: DDIM's counterpart in sigma space
            return EDMEulerScheduler(**common)
        return EDMDPMSolverMultistepScheduler(**common, algorithm_type="sde-dpmsolver++", solver_order=2)


FORMULATIONS = {"ddpm": DDPMFormulation, "edm": EDMFormulation}


def build_formulation(cfg: DiffusionConfig, device: str = "cpu"):
    return FORMULATIONS[cfg.formulation](cfg, device)
