"""R3GAN (Huang et al., "The GAN is dead; long live the GAN!", NeurIPS 2024), written from the paper
(its official code carries no licence), with the small-data schedules of `r3gan-small`.

Loss: the relativistic pairing GAN, each real image paired with a generated one,
    L_D = softplus(D(fake) - D(real)) + gamma/2 (R1 + R2),   L_G = softplus(D(real) - D(fake)),
with R1 = ||grad_x D(x_real)||^2 and R2 = ||grad_x D(x_fake)||^2, both zero-centred. With them
the paper drops every trick (normalisation, minibatch stddev, path-length ...).

Networks: a ResNet generator and its mirror-image discriminator. Each block is ResNeXt-style:
1x1 conv up to ``expansion`` x width, 3x3 grouped conv (``cardinality`` groups), 1x1 conv back,
leaky ReLU between, added to the input; no normalisation layers. Fix-up initialisation: the last
layer of every residual branch starts at zero and the others are scaled by L^(-1/(2m-2)) (L blocks,
m = 3 layers per branch), so the untrained networks are close to identity maps and train without
normalisation. Resolution changes between stages by bilinear resampling with a 1x1 conv for the
channel change. G: class embedding joined to the noise, a linear layer to the first stage's
feature map; D: the last feature vector projected on the class embedding.

Every setting (lr, gamma, Adam beta2, EMA half-life, augmentation p) moves on the burn-in schedule
of :mod:`synthmed.generators.schedules`; augmentation (:mod:`synthmed.generators.augment`) is
applied to real and generated images alike before D.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from synthmed.config import R3GANConfig
from synthmed.generators.augment import augment
from synthmed.generators.gan import GANGenerator
from synthmed.generators.schedules import scheduled

LEAK = 0.2


# --------------------------------------------------------------------------- losses
def relativistic_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """softplus(D(fake) - D(real)), averaged over the pairs."""
    return F.softplus(d_fake - d_real).mean()


def relativistic_g_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """softplus(D(real) - D(fake)), averaged over the pairs."""
    return F.softplus(d_real - d_fake).mean()


def zero_centred_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Per-sample ||grad_inputs logits||^2 (R1 on real inputs, R2 on generated ones), with the graph
    kept so the penalty trains D."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.square().flatten(1).sum(1)


# --------------------------------------------------------------------------- networks
def _fixup_scale(conv: nn.Conv2d, factor: float) -> None:
    nn.init.kaiming_normal_(conv.weight, a=LEAK, nonlinearity="leaky_relu")
    with torch.no_grad():
        conv.weight.mul_(factor)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class ResidualBlock(nn.Module):
    """x + conv1x1(act(grouped conv3x3(act(conv1x1(x))))): no normalisation, fix-up initialised."""

    def __init__(self, width: int, cardinality: int, expansion: int, total_blocks: int):
        super().__init__()
        inner = width * expansion
        self.expand = nn.Conv2d(width, inner, 1)
        self.grouped = nn.Conv2d(inner, inner, 3, padding=1, groups=cardinality)
        self.reduce = nn.Conv2d(inner, width, 1, bias=False)
        scale = total_blocks ** (-1.0 / (2 * 3 - 2))
        _fixup_scale(self.expand, scale)
        _fixup_scale(self.grouped, scale)
        nn.init.zeros_(self.reduce.weight)  # the branch starts as zero: the block is the identity

    def forward(self, x):
        h = F.leaky_relu(self.expand(x), LEAK)
        h = F.leaky_relu(self.grouped(h), LEAK)
        return x + self.reduce(h)


class Transition(nn.Module):
    """Resample by 2 (bilinear up / down) and change channels with a 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, up: bool):
        super().__init__()
        self.up = up
        self.conv = nn.Conv2d(c_in, c_out, 1, bias=False) if c_in != c_out else None
        if self.conv is not None:
            nn.init.kaiming_normal_(self.conv.weight, nonlinearity="linear")

    def forward(self, x):
        if self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        if self.conv is not None:
            x = self.conv(x)
        if not self.up:
            x = F.avg_pool2d(x, 2)
        return x


class R3Generator(nn.Module):
    def __init__(self, cfg: R3GANConfig, image_size: int, channels: int, num_classes: int):
        super().__init__()
        w = list(cfg.widths)
        self.base = image_size // 2 ** (len(w) - 1)
        total = len(w) * cfg.blocks_per_stage
        self.embed = nn.Linear(num_classes, cfg.embed_dim, bias=False)  # one-hot -> embedding
        self.basis = nn.Linear(cfg.noise_dim + cfg.embed_dim, w[0] * self.base * self.base)
        self.num_classes = num_classes
        stages = []
        for i, width in enumerate(w):
            layers = [Transition(w[i - 1], width, up=True)] if i else []
            layers += [ResidualBlock(width, cfg.cardinality, cfg.expansion, total) for _ in range(cfg.blocks_per_stage)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Conv2d(w[-1], channels, 1)
        self.widths = w

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.embed(F.one_hot(y, self.num_classes).to(z.dtype))
        h = F.leaky_relu(self.basis(torch.cat([z, e], 1)), LEAK)
        h = h.view(len(z), self.widths[0], self.base, self.base)
        return self.to_image(self.stages(h))


class R3Discriminator(nn.Module):
    def __init__(self, cfg: R3GANConfig, image_size: int, channels: int, num_classes: int):
        super().__init__()
        w = list(reversed(cfg.widths))  # highest resolution first
        self.base = image_size // 2 ** (len(w) - 1)
        total = len(w) * cfg.blocks_per_stage
        self.from_image = nn.Conv2d(channels, w[0], 1)
        stages = []
        for i, width in enumerate(w):
            layers = [ResidualBlock(width, cfg.cardinality, cfg.expansion, total) for _ in range(cfg.blocks_per_stage)]
            if i + 1 < len(w):
                layers.append(Transition(width, w[i + 1], up=False))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(w[-1] * self.base * self.base, cfg.embed_dim)
        self.embed = nn.Linear(num_classes, cfg.embed_dim, bias=False)
        self.num_classes = num_classes
        self.scale = 1.0 / math.sqrt(cfg.embed_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.stages(F.leaky_relu(self.from_image(x), LEAK))
        h = self.head(F.leaky_relu(h, LEAK).flatten(1))
        e = self.embed(F.one_hot(y, self.num_classes).to(x.dtype))
        return (h * e).sum(1) * self.scale  # projection on the class embedding


# --------------------------------------------------------------------------- generator kind
class R3GANGenerator(GANGenerator):
    kind = "r3gan"
    config_class = R3GANConfig

    def _build_networks(self):
        c = self.cfg
        return (R3Generator(c, self.image_size, self.channels, self.num_classes),
                R3Discriminator(c, self.image_size, self.channels, self.num_classes))

    def _noise_dim(self) -> int:
        return self.cfg.noise_dim

    def _truncation(self):
        return self.cfg.truncation

    def schedule(self, name: str, progress_kimg: float, total_kimg: float) -> float:
        """The value of ``name`` (lr, gamma, beta2, ema_half_life, aug) at this progress."""
        c = self.cfg
        start, end = {"lr": (c.lr_start, c.lr_end), "gamma": (c.gamma_start, c.gamma_end),
                      "beta2": (c.beta2_start, c.beta2_end),
                      "ema_half_life": (c.ema_half_life_start_kimg, c.ema_half_life_end_kimg),
                      "aug": (c.aug_start, c.aug_end)}[name]
        return scheduled(start, end, progress_kimg, total_kimg, c.burn_in, c.schedule)

    def _ema_half_life_kimg(self, progress_kimg, total_kimg):
        return self.schedule("ema_half_life", progress_kimg, total_kimg)

    def _make_optimizers(self):
        c = self.cfg
        return {"G": torch.optim.Adam(self.G.parameters(), lr=c.lr_start, betas=(c.adam_beta1, c.beta2_start)),
                "D": torch.optim.Adam(self.D.parameters(), lr=c.lr_start, betas=(c.adam_beta1, c.beta2_start))}

    def _train_step(self, real, labels, gen, opts, progress_kimg, total_kimg):
        c = self.cfg
        lr = self.schedule("lr", progress_kimg, total_kimg)
        beta2 = self.schedule("beta2", progress_kimg, total_kimg)
        gamma = self.schedule("gamma", progress_kimg, total_kimg)
        p = self.schedule("aug", progress_kimg, total_kimg)
        for o in opts.values():
            for group in o.param_groups:
                group["lr"], group["betas"] = lr, (c.adam_beta1, beta2)
        kinds = tuple(c.augmentations)
        # several ranks: real / labels are the global batch, this rank computes its rows (gan.py, distributed.py)
        n, rows, share, grad_scale = self._rank_share(len(real))
        real, labels = real[rows], labels[rows]
        m = len(real)
        aug = {} if self._rows is None else {"rows": torch.cat([torch.arange(n)[rows], n + torch.arange(n)[rows]]),
                                             "total": 2 * n}
        # ---- discriminator: relativistic pairing loss + gamma/2 (R1 + R2)
        z = torch.randn((n, c.noise_dim), generator=gen)[rows].to(self.device)
        with torch.no_grad():
            fake = self.G(z, labels)
        # real and generated images in one batch through D (one pass, one gradient for R1 and R2 both)
        both = torch.cat([real, fake]).detach().requires_grad_(True)
        logits = self._train_D(augment(both, p, gen, kinds=kinds, **aug), torch.cat([labels, labels]))
        d_real, d_fake = logits[:m], logits[m:]
        adv = relativistic_d_loss(d_real, d_fake) * share
        penalty = zero_centred_penalty(logits, both)  # per image: R1 on the real half, R2 on the generated
        r1, r2 = penalty[:m].mean() * share, penalty[m:].mean() * share
        d_loss = adv + gamma / 2 * (r1 + r2)
        opts["D"].zero_grad(set_to_none=True)
        (d_loss * grad_scale).backward()
        opts["D"].step()
        # ---- generator: the same pairing the other way round
        z = torch.randn((n, c.noise_dim), generator=gen)[rows].to(self.device)
        self.D.requires_grad_(False)
        fake = self._train_G(z, labels)
        logits = self.D(augment(torch.cat([real, fake]), p, gen, kinds=kinds, **aug), torch.cat([labels, labels]))
        g_loss = relativistic_g_loss(logits[:m], logits[m:]) * share
        opts["G"].zero_grad(set_to_none=True)
        (g_loss * grad_scale).backward()
        opts["G"].step()
        self.D.requires_grad_(True)
        return {"loss": d_loss.item(), "d_adversarial": adv.item(), "g_loss": g_loss.item(), "r1": r1.item(),
                "r2": r2.item(), "gamma": gamma, "lr": lr, "aug_p": p}

    #: the losses _train_step returns as this rank's share, summed over ranks for the log
    rank_summed = ("loss", "d_adversarial", "g_loss", "r1", "r2")

    def _summary(self) -> str:
        c = self.cfg
        return (f"class-conditional R3GAN (relativistic pairing loss + R1/R2, ResNet widths {c.widths}, "
                f"cardinality {c.cardinality}, expansion {c.expansion}; gamma {c.gamma_start:g} -> {c.gamma_end:g}, "
                f"burn-in {c.burn_in:.0%} {c.schedule}, augmentation p {c.aug_start:g} -> {c.aug_end:g})")


__all__ = ["R3GANGenerator", "relativistic_d_loss", "relativistic_g_loss", "zero_centred_penalty"]
