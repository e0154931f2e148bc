"""Data that does not fit in memory: a one-off decoded cache as a memory-mapped array, read lazily.

Every split is decoded into memory by default: the fast path for the small sets synthmed is mostly
used on. 100k images at 256 x 256 RGB are ~20 GB as uint8 (~79 GB as the float32 tensor training
used to build), so above ``data.in_memory_max_gb`` (or with ``data.storage: disk``) each split is
written once to ``<cache>/storage/<fingerprint>.npy`` and reopened as a read-only ``np.memmap``:

- the ImageDataset is the same object type with the same pixels, so its fingerprint and per-image
  hashes (what the leak guards compare) are computed from the same bytes: the same answers on both
  paths (tests/test_storage.py);
- the training loops take their batches through :func:`training_images`, which for a memory-mapped
  split returns :class:`LazyImages`: ``images[idx]`` reads just those rows from the file (the OS
  page cache keeps what is hot) and converts them to float on the fly, so memory holds a batch, not
  the split. Batch indices come from the loop's own seeded generator, as in memory: the same seed
  draws the same batches on both paths.

The file is written atomically (temporary file, then rename) and named by the split's fingerprint,
so a second run on the same split reuses it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from synthmed.data.dataset import ImageDataset
from synthmed.files import default_cache_dir

#: ``data.storage`` values
STORAGE_MODES = ("auto", "memory", "disk")


def split_bytes(ds: ImageDataset) -> int:
    """Bytes of the float32 tensor a split becomes for training (4 x its uint8 pixels)."""
    return int(np.prod(ds.images.shape, dtype=np.int64)) * 4


def is_on_disk(ds: ImageDataset) -> bool:
    """True when the split's pixels are a view of a memory-mapped file (ImageDataset keeps the view,
    as a plain ndarray over the mapped buffer, never a copy)."""
    import mmap

    a = ds.images
    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return True
        a = getattr(a, "base", None)
    return False


def choose_storage(total_bytes: int, storage: str = "auto", in_memory_max_gb: float = 8.0) -> str:
    """"memory" or "disk": ``storage`` when forced, else disk once the splits' float32 tensors would
    exceed ``in_memory_max_gb``."""
    if storage not in STORAGE_MODES:
        raise ValueError(f"data.storage = {storage!r}: choose one of {', '.join(STORAGE_MODES)}")
    if storage != "auto":
        return storage
    return "disk" if total_bytes > in_memory_max_gb * 1024**3 else "memory"


def to_disk(ds: ImageDataset, cache_dir: str | os.PathLike | None = None) -> ImageDataset:
    """``ds`` with its images in a memory-mapped file of the cache (written once per fingerprint)."""
    if is_on_disk(ds):
        return ds
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "storage"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.fingerprint()}.npy"
    if not path.is_file() or _shape_of(path) != ds.images.shape:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=ds.images.shape)
            for i in range(0, len(ds), 4096):  # in chunks: never a second copy of the split in memory
                out[i:i + 4096] = ds.images[i:i + 4096]
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    images = np.load(path, mmap_mode="r")
    from dataclasses import replace

    return replace(ds, images=images, meta={**ds.meta, "storage": str(path)})


def _shape_of(path: Path) -> tuple:
    try:
        return np.load(path, mmap_mode="r").shape
    except (OSError, ValueError):
        return ()


class LazyImages:
    """The training tensor of a memory-mapped split without building it: ``self[idx]`` (an index
    tensor, array or slice) is the float32 (n, C, H, W) batch in [-1, 1] on :attr:`device`."""

    def __init__(self, images: np.ndarray, device: str = "cpu"):
        self.images, self.device = images, device
        n, h, w, c = images.shape
        self.shape = (n, c, h, w)

    def __len__(self) -> int:
        return self.shape[0]

    def to(self, device) -> "LazyImages":
        return LazyImages(self.images, str(device))

    def __getitem__(self, idx):
        import torch

        if isinstance(idx, slice):
            rows = np.array(self.images[idx])  # a copy: torch wants writable memory, the mapping is read-only
        else:
            idx = np.asarray(idx.cpu() if hasattr(idx, "cpu") else idx, dtype=np.int64).reshape(-1)
            order = np.argsort(idx, kind="stable")  # read the file forwards, then put the rows back in order
            rows = np.empty((len(idx), *self.images.shape[1:]), np.uint8)
            rows[order] = self.images[idx[order]]
        x = torch.from_numpy(np.ascontiguousarray(rows)).permute(0, 3, 1, 2).float()
        return x.div_(127.5).sub_(1.0).to(self.device)


def training_images(ds: ImageDataset):
    """(images, labels) for a training loop: the float tensor of an in-memory split, or
    :class:`LazyImages` over a memory-mapped one (both answer ``images[idx]`` the same)."""
    import torch

    if is_on_disk(ds):
        return LazyImages(ds.images), torch.from_numpy(np.asarray(ds.labels).copy())
    return ds.to_tensor()


__all__ = ["STORAGE_MODES", "split_bytes", "is_on_disk", "choose_storage", "to_disk", "LazyImages",
           "training_images"]
