"""Conditional ProGAN with WGAN-GP: `blastdiffusion`'s Blastocyst-GAN baseline (after ProGleason-GAN),
on Karras et al., "Progressive growing of GANs" (2018) and Gulrajani et al., "Improved training of
Wasserstein GANs" (2017).

- Progressive growing: training starts at the lowest resolution (4x4 for 32/64/256 px images;
  7x7 for 28 px MedMNIST, grown 7 -> 14 -> 28 so no image is resized). Each new level fades in over
  ``phase_kimg``: the output is (1 - alpha) x the upsampled image of the level below plus alpha x
  the new level's, alpha rising 0 -> 1; then the level trains on its own for ``phase_kimg``. Real
  images are shown at the current resolution, blended the same way during a fade-in.
- Equalised learning rate: weights drawn N(0, 1) and scaled at run time by He's constant, so
  Adam's step is the same relative size for every layer.
- Pixel normalisation after every conv of G; minibatch standard deviation before D's last block.
- WGAN-GP: L_D = D(fake) - D(real) + lambda (||grad D(x_hat)|| - 1)^2 + drift D(real)^2, with
  x_hat between a real and a generated image; L_G = -D(fake). Adam (0, 0.99), lr 1e-3.
- Conditioning: an embedding of the label is joined to the noise in G (then pixel-normalised
  together, as ProGleason-GAN's embedding layers); D adds the projection of its last features on
  an embedding of the label (Miyato and Koyama 2018) to its output.
- EMA of G's weights samples the images.

Truncation does not apply: G pixel-normalises its input, so scaling the noise changes nothing.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from synthmed import runtime
from synthmed.config import ProGANConfig
from synthmed.generators.gan import GANGenerator

LEAK = 0.2


# --------------------------------------------------------------------------- growing
def growth_state(progress_kimg: float, levels: int, phase_kimg: float) -> tuple[int, float]:
    """(level, alpha) at this progress: level 0 trains for one phase, then each further level fades
    in over one phase (alpha 0 -> 1) and trains on its own for one more; after the last, it stays."""
    if phase_kimg <= 0 or levels <= 1:
        return levels - 1, 1.0
    p = progress_kimg / phase_kimg
    if p < 1:
        return 0, 1.0
    k = p - 1.0
    level = 1 + int(k // 2)
    if level > levels - 1:
        return levels - 1, 1.0
    return level, float(min(k - 2 * (level - 1), 1.0))


# --------------------------------------------------------------------------- layers
class EqualizedConv2d(nn.Module):
    """Conv whose N(0, 1) weights are scaled by sqrt(2 / fan_in) at every call (equalised learning rate)."""

    def __init__(self, c_in: int, c_out: int, k: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, k, k))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in * k * k)
        self.pad = k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class EqualizedLinear(nn.Module):
    def __init__(self, c_in: int, c_out: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.scale = gain / math.sqrt(c_in)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Each pixel's feature vector scaled to unit mean square (ProGAN's PixelNorm)."""
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


def minibatch_stddev(x: torch.Tensor, group: int) -> torch.Tensor:
    """Append one channel: the standard deviation of each feature over a group of images, averaged
    over features and pixels, so D can see how varied a batch is (a guard against mode collapse)."""
    n, c, h, w = x.shape
    g = min(group, n)
    while n % g:
        g -= 1
    y = x.view(g, -1, c, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean(dim=(1, 2, 3))  # (n / g,)
    y = y.view(-1, 1, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y], 1)


# --------------------------------------------------------------------------- networks
class ProGenerator(nn.Module):
    def __init__(self, cfg: ProGANConfig, image_size: int, channels: int, num_classes: int):
        super().__init__()
        w = list(cfg.widths)
        self.base = image_size // 2 ** (len(w) - 1)
        self.embed = nn.Embedding(num_classes, cfg.embed_dim)
        nn.init.normal_(self.embed.weight)
        self.dense = EqualizedLinear(cfg.latent_dim + cfg.embed_dim, w[0] * self.base * self.base,
                                     gain=math.sqrt(2) / 4)
        self.first = EqualizedConv2d(w[0], w[0], 3)
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(w[i - 1], w[i], 3), EqualizedConv2d(w[i], w[i], 3)]) for i in range(1, len(w)))
        self.to_image = nn.ModuleList(EqualizedConv2d(c, channels, 1, gain=1.0) for c in w)
        self.widths = w

    def forward(self, z: torch.Tensor, y: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        """Images at the resolution of ``level`` (None: the last), the level below faded out by ``alpha``."""
        level = len(self.widths) - 1 if level is None else level
        h = pixel_norm(torch.cat([z, self.embed(y)], 1))
        h = F.leaky_relu(self.dense(h), LEAK).view(len(z), self.widths[0], self.base, self.base)
        h = pixel_norm(F.leaky_relu(self.first(pixel_norm(h)), LEAK))
        prev = h
        for i in range(1, level + 1):
            prev = h
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            for conv in self.blocks[i - 1]:
                h = pixel_norm(F.leaky_relu(conv(h), LEAK))
        out = self.to_image[level](h)
        if level > 0 and alpha < 1.0:
            low = F.interpolate(self.to_image[level - 1](prev), scale_factor=2, mode="nearest")
            out = torch.lerp(low, out, alpha)
        return out


class ProDiscriminator(nn.Module):
    def __init__(self, cfg: ProGANConfig, image_size: int, channels: int, num_classes: int):
        super().__init__()
        w = list(cfg.widths)
        self.base = image_size // 2 ** (len(w) - 1)
        self.from_image = nn.ModuleList(EqualizedConv2d(channels, c, 1) for c in w)
        # blocks[i - 1] takes level i (width w[i]) down to level i - 1 (width w[i - 1])
        self.blocks = nn.ModuleList(
            nn.ModuleList([EqualizedConv2d(w[i], w[i], 3), EqualizedConv2d(w[i], w[i - 1], 3)]) for i in range(1, len(w)))
        self.last_conv = EqualizedConv2d(w[0] + 1, w[0], 3)
        self.dense = EqualizedLinear(w[0] * self.base * self.base, w[0])
        self.out = EqualizedLinear(w[0], 1, gain=1.0)
        self.embed = nn.Embedding(num_classes, w[0])
        nn.init.normal_(self.embed.weight, std=1.0 / math.sqrt(w[0]))
        self.group = cfg.mbstd_group
        self.widths = w

    def forward(self, x: torch.Tensor, y: torch.Tensor, level: int | None = None, alpha: float = 1.0) -> torch.Tensor:
        level = len(self.widths) - 1 if level is None else level
        h = F.leaky_relu(self.from_image[level](x), LEAK)
        for i in range(level, 0, -1):
            for conv in self.blocks[i - 1]:
                h = F.leaky_relu(conv(h), LEAK)
            h = F.avg_pool2d(h, 2)
            if i == level and alpha < 1.0:
                low = F.leaky_relu(self.from_image[level - 1](F.avg_pool2d(x, 2)), LEAK)
                h = torch.lerp(low, h, alpha)
        h = F.leaky_relu(self.last_conv(minibatch_stddev(h, self.group)), LEAK)
        h = F.leaky_relu(self.dense(h.flatten(1)), LEAK)
        return self.out(h).squeeze(1) + (h * self.embed(y)).sum(1)


def wgan_gp_penalty(D, real: torch.Tensor, fake: torch.Tensor, labels: torch.Tensor, eps: torch.Tensor,
                    **kwargs) -> torch.Tensor:
    """Per-sample (||grad D(x_hat)|| - 1)^2 at x_hat = eps real + (1 - eps) fake."""
    x_hat = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(D(x_hat, labels, **kwargs).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).square()


# --------------------------------------------------------------------------- generator kind
class ProGANGenerator(GANGenerator):
    kind = "progan"
    config_class = ProGANConfig

    def _build_networks(self):
        c = self.cfg
        return (ProGenerator(c, self.image_size, self.channels, self.num_classes),
                ProDiscriminator(c, self.image_size, self.channels, self.num_classes))

    @property
    def levels(self) -> int:
        return len(self.cfg.widths)

    def _noise_dim(self) -> int:
        return self.cfg.latent_dim

    def _phase_kimg(self) -> float:
        return self.cfg.phase_kimg * self._scale()

    def _growth(self, progress_kimg: float) -> dict:
        level, alpha = growth_state(progress_kimg, self.levels, self._phase_kimg())
        return {"level": level, "alpha": alpha}

    def _generate(self, net, z, y, growth):
        level = growth.get("level", self.levels - 1)
        x = net(z, y, level, growth.get("alpha", 1.0))
        if x.shape[-1] != self.image_size:  # a snapshot from before the last level: shown at full size
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="nearest")
        return x

    def _level_costs(self) -> np.ndarray:
        """Cost of one step at each level relative to level 0: measured by ``_calibrate_step_costs``
        when a budget plan was made (kept in the history, so a resumed run plans alike), else the
        pixel count (4x per level), which on a CPU overstates the growth several times over: small
        levels are dominated by per-layer overheads."""
        measured = (self.history.get("budget") or {}).get("level_seconds_per_step")
        if measured and len(measured) == self.levels:
            s = np.asarray(measured, dtype=float)
            return s / max(s[0], 1e-12)
        return 4.0 ** np.arange(self.levels)

    def _relative_step_cost(self, progress_kimg: np.ndarray, scale: float) -> np.ndarray:
        costs = self._level_costs()
        phase = self.cfg.phase_kimg * scale
        if phase <= 0:
            return np.full(np.shape(np.atleast_1d(progress_kimg)), costs[-1])
        p = np.atleast_1d(progress_kimg) / phase  # the level of growth_state, for many points at once
        levels = np.where(p < 1, 0, np.minimum(1 + np.floor((p - 1) / 2), self.levels - 1)).astype(int)
        return costs[levels]

    def _calibrate_step_costs(self, x, y, bs, opts, steps: int = 3) -> None:
        """Seconds per training step at every level, timed on the real batch size (one untimed step,
        then ``steps`` timed, per level) with the networks and optimisers restored afterwards, so
        training continues exactly as if nothing had run. Costs a few seconds at 28-64 px on a CPU;
        it replaced the 4x-per-level model that made an 8-minute budget stop ProGAN after 3 minutes."""
        saved = (copy.deepcopy(self.G.state_dict()), copy.deepcopy(self.D.state_dict()),
                 {k: copy.deepcopy(o.state_dict()) for k, o in opts.items()})
        gen = torch.Generator().manual_seed(self.seed + 1)
        phase = self.cfg.phase_kimg
        seconds = []
        try:
            for level in range(self.levels):
                # the middle of a fade-in (alpha 0.5), where a step runs both the new and the old head
                progress = 0.5 * phase if level == 0 or phase <= 0 else phase * (1 + 2 * (level - 1) + 0.5)
                idx = torch.randint(0, len(y), (bs,), generator=gen)
                real, labels = x[idx], y[idx]
                times = []
                for i in range(steps + 1):
                    t0 = runtime.clock()
                    self._train_step(real, labels, gen, opts, progress, self.cfg.train_kimg)
                    if i:
                        times.append(runtime.clock() - t0)
                seconds.append(float(np.median(times)))
        finally:
            self.G.load_state_dict(saved[0])
            self.D.load_state_dict(saved[1])
            for k, o in opts.items():
                o.load_state_dict(saved[2][k])
        self._budget_record()["level_seconds_per_step"] = seconds

    def _make_optimizers(self):
        c = self.cfg
        return {"G": torch.optim.Adam(self.G.parameters(), lr=c.lr, betas=(c.adam_beta1, c.adam_beta2)),
                "D": torch.optim.Adam(self.D.parameters(), lr=c.lr, betas=(c.adam_beta1, c.adam_beta2))}

    def _real_at(self, real: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
        """Real images at the resolution of ``level``, blended with the level below while it fades in."""
        factor = 2 ** (self.levels - 1 - level)
        x = F.avg_pool2d(real, factor) if factor > 1 else real
        if level > 0 and alpha < 1.0:
            low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2, mode="nearest")
            x = torch.lerp(low, x, alpha)
        return x

    def _train_step(self, real, labels, gen, opts, progress_kimg, total_kimg):
        c = self.cfg
        level, alpha = growth_state(progress_kimg, self.levels, self._phase_kimg())
        # several ranks: real / labels are the global batch, this rank computes its rows (gan.py, distributed.py);
        # minibatch stddev then groups images within a rank's rows (as one process only with mbstd_group 1)
        n, rows, share, grad_scale = self._rank_share(len(real))
        real, labels = real[rows], labels[rows]
        m = len(real)
        flip_h = (torch.rand(n, generator=gen) < c.hflip)[rows].to(self.device).view(m, 1, 1, 1)
        flip_v = (torch.rand(n, generator=gen) < c.vflip)[rows].to(self.device).view(m, 1, 1, 1)
        real = torch.where(flip_h, real.flip(-1), real)
        real = torch.where(flip_v, real.flip(-2), real)
        real = self._real_at(real, level, alpha)
        # ---- critic: WGAN-GP + drift
        z = torch.randn((n, c.latent_dim), generator=gen)[rows].to(self.device)
        eps = torch.rand((n, 1, 1, 1), generator=gen)[rows].to(self.device)
        with torch.no_grad():
            fake = self.G(z, labels, level, alpha)
        d_real = self._train_D(real, labels, level, alpha)
        d_fake = self._train_D(fake, labels, level, alpha)
        gp = wgan_gp_penalty(self._train_D, real, fake, labels, eps, level=level, alpha=alpha).mean() * share
        wasserstein = (d_fake.mean() - d_real.mean()) * share
        d_loss = wasserstein + c.gp_lambda * gp + c.drift * d_real.square().mean() * share
        opts["D"].zero_grad(set_to_none=True)
        (d_loss * grad_scale).backward()
        opts["D"].step()
        # ---- generator
        z = torch.randn((n, c.latent_dim), generator=gen)[rows].to(self.device)
        self.D.requires_grad_(False)
        g_loss = -self.D(self._train_G(z, labels, level, alpha), labels, level, alpha).mean() * share
        opts["G"].zero_grad(set_to_none=True)
        (g_loss * grad_scale).backward()
        opts["G"].step()
        self.D.requires_grad_(True)
        return {"loss": d_loss.item(), "wasserstein_estimate": -wasserstein.item(), "gp": gp.item(),
                "g_loss": g_loss.item(), "level": float(level), "alpha": alpha}

    #: the losses _train_step returns as this rank's share, summed over ranks for the log
    rank_summed = ("loss", "wasserstein_estimate", "gp", "g_loss")
    #: the blocks of levels not yet grown (and the to-RGB layers of finished fade-ins) take no part in a step
    ddp_options = {"find_unused_parameters": True}

    def describe(self) -> dict:
        d = super().describe()
        d["truncation"] = "none (G pixel-normalises its noise, so truncation does not apply)"
        d["growth"] = {"levels": self.levels, "from_px": self.image_size // 2 ** (self.levels - 1),
                       "to_px": self.image_size, "phase_kimg": self._phase_kimg(), **self._growth(self.kimg)}
        return d

    def _summary(self) -> str:
        c = self.cfg
        base = self.image_size // 2 ** (self.levels - 1)
        return (f"class-conditional ProGAN with WGAN-GP (grown {base} -> {self.image_size} px, widths {c.widths}, "
                f"{c.phase_kimg:g} kimg per fade-in / stabilisation phase, lambda {c.gp_lambda:g}, drift {c.drift:g})")


__all__ = ["ProGANGenerator", "growth_state", "pixel_norm", "minibatch_stddev", "wgan_gp_penalty"]
