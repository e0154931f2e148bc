"""The base class every feature extractor shares, and the helpers they use (hashes, cache folder).

In its own file so the implementations (domain, inception, torchscript) import it and the registry
imports them: no cycle.
"""


from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from synthmed.data.dataset import ImageDataset

#: images per forward pass unless the caller says otherwise
DEFAULT_BATCH_SIZE = 256


class FeatureExtractorError(ValueError):
    """An extractor cannot be built or used: unknown name, missing or wrong weights file."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/synthmed`` (``~/.cache/synthmed``): where trained extractors are kept."""
    from synthmed import files

    return files.default_cache_dir()  # one definition, shared with the generators' autoencoder cache


def file_sha256(path: str | os.PathLike, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def state_dict_sha256(state_dict: dict, length: int = 16) -> str:
    """Hash of names, dtypes, shapes and values: identifies weights that never lived in one file."""
    import torch

    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        # view as bytes: numpy has no bfloat16, and the raw bytes are what identifies the weights
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:length]


class FeatureExtractor:
    """Maps an :class:`ImageDataset` to one float64 feature vector per image.

    Subclasses set ``name``, ``dim``, ``weights_hash`` and ``input_policy`` and implement
    :meth:`_extract_batches`; :meth:`describe` is what results record, so that a number is
    never separated from the network and preprocessing that produced it.
    """

    name: str = "base"
    dim: int = 0
    weights_hash: str = ""
    #: how images reach the network: channels, resize, value range
    input_policy: str = ""

    #: features of the last few image sets, by their pixels: one evaluation asks for the same set's
    #: features in conditional accuracy, the metrics and the audit, and a network pass is the cost
    memo_size: int = 4

    def extract(self, ds: ImageDataset, batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> np.ndarray:
        """Features of every image of ``ds``, in order, as float64 ``(N, dim)`` (a fresh array)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(ds) == 0:
            return np.zeros((0, self.dim), dtype=np.float64)
        key = images_key(ds.images)
        memo = self.__dict__.setdefault("_memo", {})
        if key in memo:
            self.memo_hits = getattr(self, "memo_hits", 0) + 1
            return memo[key].copy()
        feats = self._extract_all(ds, batch_size, progress)
        if self.memo_size > 0:
            while len(memo) >= self.memo_size:
                memo.pop(next(iter(memo)))
            memo[key] = feats
        return feats.copy()

    def _extract_all(self, ds: ImageDataset, batch_size: int, progress: bool) -> np.ndarray:
        """Batch after batch; in a process group (torchrun, synthmed.distributed) every rank computes
        its share of the batches (round-robin) and all ranks receive all of them in order: the same
        batches as one process, so the same features. Every rank must then call it (it is collective)."""
        from tqdm.auto import tqdm

        from synthmed import distributed

        def batch(start: int, stop: int) -> np.ndarray:
            return np.asarray(self._extract_batch(ds.images[start:stop]), dtype=np.float64)

        if distributed.world().active:
            out = distributed.map_chunks(batch, len(ds), batch_size)
        else:
            starts = range(0, len(ds), batch_size)
            bar = tqdm(starts, desc=f"features ({self.name})", disable=not progress, leave=False)
            out = [batch(i, i + batch_size) for i in bar]
        feats = np.concatenate(out)
        if feats.shape != (len(ds), self.dim):
            raise FeatureExtractorError(
                f"extractor {self.name!r} returned features of shape {feats.shape}, expected ({len(ds)}, {self.dim})")
        return feats

    def _extract_batch(self, images: np.ndarray) -> np.ndarray:
        """uint8 (B, H, W, C) -> (B, dim) features."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "dim": int(self.dim), "weights_hash": self.weights_hash,
                "input_policy": self.input_policy}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim}, weights_hash={self.weights_hash!r})"


def images_key(images: np.ndarray) -> tuple:
    """Order-dependent identity of an image array (shape + BLAKE2 of the bytes; ~30 ms for 12k
    BloodMNIST images): the same pixels in the same order give the same key."""
    arr = np.ascontiguousarray(images)
    return arr.shape, str(arr.dtype), hashlib.blake2b(memoryview(arr).cast("B"), digest_size=16).hexdigest()


def uint8_nchw_rgb(images: np.ndarray):
    """uint8 (B, H, W, C) numpy -> uint8 (B, 3, H, W) torch; grey is replicated to three
    channels (what an RGB network sees when shown a grey image), colour passes unchanged."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x.contiguous()


