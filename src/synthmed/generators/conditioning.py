"""What a diffusion denoiser is conditioned on, and what "no condition" is for each kind.

A :class:`Condition` always carries the class label: the judge, the filters and the downstream
protocols read it, whatever else guided the image. Next to it it may carry

- ``context``: a token sequence (B, L, D) that a cross-attention denoiser attends to (a caption
  embedding, for instance); its null is ``context_null`` (L, D), e.g. the empty caption's
  embedding, or zeros when the kind has none;
- ``mask``: extra input channels (B, M, H, W) the denoiser reads next to the noisy image (a
  segmentation mask); its null is the zero mask.

Classifier-free guidance mixes the conditional prediction with the one under :meth:`Condition.null_like`;
training drops the condition of some images with :meth:`Condition.drop`. Both replace every part by
that part's own null, so a new kind of context plugs in by saying what its null is.

The class label itself becomes a vector through a :class:`ClassVectorTable`: learned rows (``class``
conditioning, random init) or frozen rows (``prototype`` conditioning, `improve`: class prototypes
learned on image features). Its extra last row is the null class of guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn


@dataclass
class Condition:
    """A batch of conditions. ``labels`` (B,) int64: class index, ``null_label`` for "no class"."""

    labels: torch.Tensor
    #: (B, L, D) tokens for cross-attention, or None
    context: torch.Tensor | None = None
    #: (L, D) what "no context" is for this kind (the empty caption's embedding); None: zeros
    context_null: torch.Tensor | None = None
    #: (B, M, H, W) extra input channels, or None (the denoiser then reads zeros)
    mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, rows) -> "Condition":
        """The conditions of some rows (a rank's share of the batch under distributed training)."""
        pick = lambda t: None if t is None else t[rows]  # noqa: E731
        return replace(self, labels=self.labels[rows], context=pick(self.context), mask=pick(self.mask))

    def null_like(self, null_label: int) -> "Condition":
        """The same batch with every part replaced by its null: guidance's unconditional branch."""
        return self.drop(torch.ones(len(self), dtype=torch.bool, device=self.labels.device), null_label)

    def drop(self, where: torch.Tensor, null_label: int) -> "Condition":
        """Replace the condition of the images where ``where`` (B,) is true by the null (training dropout)."""
        labels = torch.where(where, torch.full_like(self.labels, null_label), self.labels)
        context = self.context
        if context is not None:
            null = (self.context_null.to(context) if self.context_null is not None
                    else torch.zeros_like(context[0]))
            context = torch.where(where[:, None, None], null.expand_as(context), context)
        mask = None if self.mask is None else torch.where(where[:, None, None, None], torch.zeros_like(self.mask),
                                                          self.mask)
        return replace(self, labels=labels, context=context, mask=mask)

    @staticmethod
    def cat(conditions: list["Condition"]) -> "Condition":
        """One batch from several (the conditional and unconditional halves of a guided step)."""
        first = conditions[0]

        def join(name):
            parts = [getattr(c, name) for c in conditions]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts):
                raise ValueError(f"cannot join conditions where only some carry a {name}")
            return torch.cat(parts)

        return Condition(labels=join("labels"), context=join("context"), context_null=first.context_null,
                         mask=join("mask"))

    def to(self, device) -> "Condition":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Condition(move(self.labels), move(self.context), move(self.context_null), move(self.mask))


def as_condition(y) -> Condition:
    """A Condition, or labels alone (what the training loop and older callers pass) wrapped as one."""
    return y if isinstance(y, Condition) else Condition(labels=y)


class ClassVectorTable(nn.Module):
    """One vector per class plus a null row (index ``num_classes``) for guidance.

    ``frozen=False``: learned rows, randomly initialised (the `improve` baseline: "class embeddings").
    ``frozen=True``: fixed rows set by :meth:`set_vectors` (class prototypes); kept as a buffer so the
    optimiser never sees them and the checkpoint carries them. The null row is then the zero vector:
    prototypes live in standardised features, where zero is the mean image of all classes.
    """

    def __init__(self, num_classes: int, dim: int, *, frozen: bool = False):
        super().__init__()
        self.num_classes, self.dim, self.frozen = num_classes, dim, frozen
        if frozen:
            self.register_buffer("vectors", torch.zeros(num_classes + 1, dim))
            self.register_buffer("is_set", torch.zeros((), dtype=torch.bool))
        else:
            self.vectors = nn.Parameter(torch.randn(num_classes + 1, dim) * dim**-0.5)

    @torch.no_grad()
    def set_vectors(self, vectors: torch.Tensor) -> None:
        if not self.frozen:
            raise ValueError("only a frozen table (prototype conditioning) takes given vectors")
        if tuple(vectors.shape) != (self.num_classes, self.dim):
            raise ValueError(f"class vectors of shape {tuple(vectors.shape)}; this table holds "
                             f"({self.num_classes}, {self.dim})")
        self.vectors[: self.num_classes] = vectors.to(self.vectors)
        self.vectors[self.num_classes] = 0
        self.is_set.fill_(True)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.vectors[labels.long()]


__all__ = ["Condition", "as_condition", "ClassVectorTable"]
