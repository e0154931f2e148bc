"""Class prototypes on image features: convolutional prototype learning (Yang et al. 2018), as
`improve` uses it to condition its diffusion model.

Given features f(x) of the REAL training images (any registered extractor: the domain classifier
offline, a CLIP-style image encoder by local path when a user has one), learn K prototypes m_ij per
class i with

    p(x in m_ij) = exp(-gamma d_ij) / sum_kl exp(-gamma d_kl),   d_ij = ||f(x) - m_ij||^2
    p(y | x)     = sum_j p(x in m_yj)
    loss         = -log p(y | x)  +  lambda * min_j ||f(x) - m_yj||^2

(distance-based cross-entropy "DCE" plus the prototype loss "PL"). The extractor is frozen here:
only the prototypes move, so PL pulls each prototype into its class's features and DCE pushes the
classes' prototypes apart where they overlap.

Features are standardised first (per dimension, with the training features' mean and standard
deviation) and scaled by 1 / sqrt(D) so their mean squared norm is 1: gamma and lambda then mean
the same whatever the extractor's width or scale. The generator receives the prototypes in that
space (their null, the zero vector, is the training features' mean).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from synthmed.config import PrototypeConfig


def squared_distances(f: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """(B, C, K) ||f(x) - m_ij||^2 of features (B, D) to prototypes (C, K, D)."""
    diff = f[:, None, None, :] - prototypes[None]
    return diff.pow(2).sum(-1)


def membership_probabilities(f: torch.Tensor, prototypes: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, C, K) p(x in m_ij): softmax of -gamma d over all C x K prototypes."""
    d = squared_distances(f, prototypes)
    b, c, k = d.shape
    return torch.softmax(-gamma * d.reshape(b, c * k), dim=1).reshape(b, c, k)


def prototype_losses(f: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, gamma: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(DCE, PL), each the batch mean: -log sum_j p(x in m_yj) and min_j ||f(x) - m_yj||^2."""
    d = squared_distances(f, prototypes)
    b, c, k = d.shape
    logits = -gamma * d.reshape(b, c * k)
    log_p = torch.log_softmax(logits, dim=1).reshape(b, c, k)
    own = log_p[torch.arange(b), labels]  # (B, K)
    dce = -torch.logsumexp(own, dim=1).mean()
    pl = d[torch.arange(b), labels].min(dim=1).values.mean()
    return dce, pl


@dataclass
class Prototypes:
    """Learned prototypes (C, K, D) in standardised feature space, and how to get there."""

    vectors: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    #: (C, K) training images nearest to each own-class prototype
    assignments: np.ndarray
    config: dict
    history: dict = field(default_factory=dict)

    def standardise(self, features: np.ndarray) -> np.ndarray:
        return (np.asarray(features, dtype=np.float64) - self.mean) / self.scale

    def class_vectors(self) -> np.ndarray:
        """(C, D) one vector per class for the generator: the prototype holding most of its class's images."""
        main = self.assignments.argmax(axis=1)
        return self.vectors[np.arange(len(self.vectors)), main].astype(np.float32)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Class of the nearest prototype (what DCE's p(y|x) ranks first, for any gamma)."""
        d = squared_distances(torch.from_numpy(self.standardise(features)).float(), torch.from_numpy(self.vectors).float())
        return d.min(dim=2).values.argmin(dim=1).numpy()

    def describe(self) -> dict:
        return {"num_classes": int(self.vectors.shape[0]), "per_class": int(self.vectors.shape[1]),
                "dim": int(self.vectors.shape[2]), "assignments": self.assignments.tolist(), "config": self.config,
                **self.history}


def learn_prototypes(features: np.ndarray, labels: np.ndarray, num_classes: int, cfg: PrototypeConfig | None = None,
                     *, seed: int = 0) -> Prototypes:
    """Learn ``cfg.per_class`` prototypes per class on ``features`` (N, D) of labelled real images.

    Initialised at K images of each class drawn with ``seed`` (K = 1: the class mean, where PL alone
    would put it), then Adam on the full batch for ``cfg.steps`` steps. Deterministic for a seed.
    """
    cfg = cfg or PrototypeConfig()
    t0 = time.time()
    labels = np.asarray(labels, dtype=np.int64)
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or len(feats) != len(labels):
        raise ValueError(f"features must be (N, D) with one row per label; got {feats.shape} for {len(labels)} labels")
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no images to learn prototypes from")
    mean = feats.mean(axis=0)
    std = feats.std(axis=0)
    std[std < 1e-8] = 1.0  # a constant feature carries nothing; leave it at zero
    scale = std * np.sqrt(feats.shape[1])
    f = torch.from_numpy((feats - mean) / scale).float()
    y = torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    init = []
    for c in range(num_classes):
        fc = f[y == c]
        if cfg.per_class == 1:
            init.append(fc.mean(0, keepdim=True))
        else:
            pick = torch.randint(0, len(fc), (cfg.per_class,), generator=gen)
            init.append(fc[pick] + 1e-3 * torch.randn(cfg.per_class, f.shape[1], generator=gen))
    m = torch.nn.Parameter(torch.stack(init))
    opt = torch.optim.Adam([m], lr=cfg.lr)
    curve = []
    for step in range(cfg.steps):
        dce, pl = prototype_losses(f, y, m, cfg.gamma)
        loss = dce + cfg.weight * pl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, cfg.steps // 20) == 0 or step == cfg.steps - 1:
            curve.append([step + 1, dce.item(), pl.item()])
    with torch.no_grad():
        d = squared_distances(f, m)
        own = d[torch.arange(len(f)), y]
        nearest_own = own.argmin(dim=1)
        assignments = torch.zeros(num_classes, cfg.per_class, dtype=torch.long)
        assignments.index_put_((y, nearest_own), torch.ones_like(y), accumulate=True)
        train_acc = float((d.min(dim=2).values.argmin(dim=1) == y).float().mean())
    return Prototypes(vectors=m.detach().numpy().astype(np.float32), mean=mean, scale=scale,
                      assignments=assignments.numpy(), config=asdict(cfg),
                      history={"loss_curve": curve, "train_nearest_prototype_accuracy": train_acc,
                               "n_train": int(len(f)), "seconds": time.time() - t0})


__all__ = ["Prototypes", "learn_prototypes", "prototype_losses", "membership_probabilities", "squared_distances"]
