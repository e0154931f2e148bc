"""The masks and captions a diffusion generator is conditioned on, taken from its training split.

With ``generator.mask_condition`` and/or ``generator.context: caption`` every training image brings
more than its class: its label mask (one input channel per mask class, joined to the noisy image)
and/or its caption (token embeddings the cross-attention U-Net attends to; renal-ldm). This module
holds them for the training loop and, after training, is the *bank* that sampling draws conditions
from: to make an image of class c the generator takes the mask and caption of a training image of
class c, so

- every synthetic image comes with the mask (and caption) it was generated from, ready for a
  segmenter or for caption accuracy, with no hand annotation (what renal-ldm had to do);
- sampling conditions come from the training split only, never from validation or test: the
  bank is built inside ``fit()`` from the split the generator trains on, and saved with it.

Masks stay uint8 label maps (N, H, W) in memory and become one-hot channels per batch, area-pooled
to the latent grid in latent space. Captions are embedded once per distinct caption
(``data/text.py``, cached) and padded with zero vectors to one length, the longest training caption
(at most ``generator.context_tokens``); the empty caption is the unconditional one of guidance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from synthmed.data.dataset import ImageDataset
from synthmed.generators.base import GeneratorError

def flip_variants(hflip: float, vflip: float, transpose: float = 0.0) -> list[tuple[bool, bool, bool]]:
    """(horizontal flip, vertical flip, transpose) of each variant a latent generator encodes, in the order
    it stacks them; a variant flips first, then transposes."""
    flips = [(False, False)]
    if hflip > 0:
        flips.append((True, False))
    if vflip > 0:
        flips.append((False, True))
    if hflip > 0 and vflip > 0:
        flips.append((True, True))
    variants = [(h, v, False) for h, v in flips]
    if transpose > 0:
        variants += [(h, v, True) for h, v in flips]
    return variants


def apply_variant(x: torch.Tensor, flip_h: bool, flip_v: bool, transpose: bool) -> torch.Tensor:
    """``x`` (..., H, W) in one variant of :func:`flip_variants`: flipped, then transposed."""
    if flip_h:
        x = x.flip(-1)
    if flip_v:
        x = x.flip(-2)
    return x.transpose(-1, -2) if transpose else x


def one_hot_masks(masks: torch.Tensor, num_mask_classes: int, size: int) -> torch.Tensor:
    """(B, H, W) integer label maps -> (B, M, size, size) float channels, class k in channel k - 1 (background
    has none); area fractions when ``size`` is smaller than the mask (latent space)."""
    hot = F.one_hot(masks.long(), num_mask_classes + 1)[..., 1:].permute(0, 3, 1, 2).float()
    if hot.shape[-1] != size:
        hot = F.adaptive_avg_pool2d(hot, size)
    return hot


def pad_tokens(context: torch.Tensor, length: int) -> torch.Tensor:
    """(N, L, D) -> (N, length, D): cut, or padded with zero vectors."""
    if context.shape[1] >= length:
        return context[:, :length].contiguous()
    return F.pad(context, (0, 0, 0, length - context.shape[1]))


class TrainingConditions:
    """Masks and/or caption embeddings of the training split, per image, for training and sampling.

    ``masks``: uint8 (N, H, W) or None; ``caption_index``: int64 (N,) into ``context_table`` (U + 1, L, D),
    whose last row is the empty caption (the null context), or None; ``captions``: the N caption texts.
    """

    def __init__(self, labels: np.ndarray, *, masks: np.ndarray | None = None, mask_class_names: list[str] | None = None,
                 captions: list[str] | None = None, distinct_captions: list[str] | None = None,
                 caption_index: np.ndarray | None = None, context_table: torch.Tensor | None = None,
                 encoder: dict | None = None):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.masks = masks
        self.mask_class_names = mask_class_names
        self.captions = captions
        self.distinct_captions = distinct_captions
        self.caption_index = caption_index
        self.context_table = context_table
        #: the text encoder's spec and id (what embedded the captions), or None
        self.encoder = encoder

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dataset(cls, train: ImageDataset, *, mask_condition: bool, context: str, embeddings=None,
                     max_tokens: int = 64, encoder_spec: str | None = None) -> "TrainingConditions":
        """From the training split; ``embeddings`` (a :class:`~synthmed.data.text.CaptionEmbeddings`) when
        ``context == "caption"``. Refuses a split without the masks or captions asked for."""
        masks = names = None
        if mask_condition:
            if train.masks is None:
                raise GeneratorError(f"generator.mask_condition: the training split '{train.name}' has no masks; give "
                                     "the data a mask_path column (csv:) or set data.masks.embryo: true")
            masks, names = np.ascontiguousarray(train.masks), list(train.mask_class_names)
        captions = distinct = index = table = encoder = None
        if context == "caption":
            if train.captions is None:
                raise GeneratorError(f"generator.context = caption: the training split '{train.name}' has no captions; "
                                     "`synthmed run` builds them from its masks (captions: settings), or set "
                                     "ImageDataset.captions")
            if embeddings is None:
                raise GeneratorError("generator.context = caption needs a text encoder (set_caption_encoder)")
            captions = list(train.captions)
            distinct = list(dict.fromkeys(captions))
            where = {c: i for i, c in enumerate(distinct)}
            index = np.array([where[c] for c in captions], dtype=np.int64)
            ctx, _ = embeddings.context(distinct + [""], max_tokens=max_tokens)
            table = ctx.float()
            encoder = {"spec": encoder_spec, "id": embeddings.encoder.id, "dim": embeddings.dim,
                       "tokens": int(table.shape[1])}
        return cls(train.labels, masks=masks, mask_class_names=names, captions=captions, distinct_captions=distinct,
                   caption_index=index, context_table=table, encoder=encoder)

    # ------------------------------------------------------------------ what the denoiser is built for
    @property
    def num_mask_classes(self) -> int:
        return 0 if self.mask_class_names is None else len(self.mask_class_names)

    @property
    def context_dim(self) -> int | None:
        return None if self.context_table is None else int(self.context_table.shape[2])

    @property
    def context_null(self) -> torch.Tensor | None:
        return None if self.context_table is None else self.context_table[-1]

    def __len__(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------------ per batch
    def mask_batch(self, idx: torch.Tensor, size: int, *, flip_h: torch.Tensor | None = None,
                   flip_v: torch.Tensor | None = None, transpose: torch.Tensor | None = None,
                   device: str = "cpu") -> torch.Tensor | None:
        """One-hot masks (B, M, size, size) of training images ``idx``; ``flip_h`` / ``flip_v`` / ``transpose``
        (B,) bool: the images that were flipped, then transposed (their masks get the same)."""
        if self.masks is None:
            return None
        m = torch.from_numpy(self.masks[idx.cpu().numpy()]).to(device)
        if flip_h is not None:
            m = torch.where(flip_h.to(device)[:, None, None], m.flip(-1), m)
        if flip_v is not None:
            m = torch.where(flip_v.to(device)[:, None, None], m.flip(-2), m)
        if transpose is not None:
            m = torch.where(transpose.to(device)[:, None, None], m.transpose(-1, -2), m)
        return one_hot_masks(m, self.num_mask_classes, size)

    def context_batch(self, idx: torch.Tensor, device: str = "cpu") -> torch.Tensor | None:
        if self.context_table is None:
            return None
        return self.context_table[torch.from_numpy(self.caption_index[idx.cpu().numpy()])].to(device)

    # ------------------------------------------------------------------ sampling
    def draw(self, labels: np.ndarray, seed: int) -> np.ndarray:
        """For each requested label, the index of a training image of that class whose mask/caption it is
        generated from: each class's images in a seeded random order, cycled, so no condition is used twice
        before every one of its class was used once."""
        rng = np.random.default_rng([seed, 7])
        out = np.empty(len(labels), dtype=np.int64)
        for c in np.unique(labels):
            pool = np.flatnonzero(self.labels == c)
            if not len(pool):
                raise GeneratorError(f"class {int(c)} has no training image whose mask/caption could condition it")
            want = np.flatnonzero(labels == c)
            order = np.concatenate([rng.permutation(pool) for _ in range(-(-len(want) // len(pool)))])
            out[want] = order[: len(want)]
        return out

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict:
        return {"labels": self.labels, "masks": self.masks, "mask_class_names": self.mask_class_names,
                "captions": self.captions, "distinct_captions": self.distinct_captions,
                "caption_index": self.caption_index, "context_table": self.context_table, "encoder": self.encoder}

    @classmethod
    def from_state(cls, state: dict | None) -> "TrainingConditions | None":
        return None if not state else cls(**state)

    def describe(self) -> dict:
        out = {"n": len(self)}
        if self.masks is not None:
            out["mask_classes"] = self.mask_class_names
        if self.context_table is not None:
            out.update(distinct_captions=len(self.distinct_captions), caption_tokens=int(self.context_table.shape[1]),
                       text_encoder=self.encoder)
        return out


__all__ = ["TrainingConditions", "one_hot_masks", "pad_tokens", "flip_variants", "apply_variant"]
