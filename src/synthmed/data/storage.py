"""Data that does not fit in memory: a one-off decoded cache as a memory-mapped array, read lazily.

Every split is decoded into memory by default: the fast path for the small sets synthmed is mostly
used on. 100k images at 256 x 256 RGB are ~20 GB as uint8 (~79 GB as the float32 tensor training
used to build), so above ``data.in_memory_max_gb`` (or with ``data.storage: disk``) each split is
written once to ``<cache>/storage/<fingerprint>.npy`` and reopened as a read-only ``np.memmap``:

- decoding streams: a folder or CSV source decodes image after image straight into a memory-mapped
  scratch file (:func:`decode_buffer`), and the split, the subsets and the cache file are copied
  from it chunk by chunk (:func:`take_rows`, :func:`to_disk`), so memory holds a chunk, never the
  split (MedMNIST ``.npz`` files are read as the arrays they are);
- the ImageDataset is the same object type with the same pixels, so its fingerprint and per-image
  hashes (what the leak guards compare) are computed from the same bytes: the same answers on both
  paths (tests/test_storage.py);
- the training loops take their batches through :func:`training_images`, which for a memory-mapped
  split returns :class:`LazyImages`: ``images[idx]`` reads just those rows from the file and converts
  them to float, so memory holds a batch, not the split. Batch indices come from the loop's own
  seeded generator, as in memory: the same seed draws the same batches on both paths.
  ``data.loader_workers`` > 0 has a torch DataLoader's worker processes do the reading and the
  conversion (:class:`LazyImages` feeds the loop's own index batches to the DataLoader as its
  sampler, so the batches stay the loop's).

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
#: bytes copied per chunk between memory-mapped arrays (decoding, subsets, the cache file)
CHUNK_BYTES = 64 << 20


def split_bytes(ds: ImageDataset) -> int:
    """Bytes of the float32 tensor a split becomes for training (4 x its uint8 pixels)."""
    return int(np.prod(ds.images.shape, dtype=np.int64)) * 4


def _memmap_of(a):
    """The ``np.memmap`` (or ``mmap``) an array is a view of, or None (ImageDataset keeps the view, as
    a plain ndarray over the mapped buffer, never a copy)."""
    import mmap

    while a is not None:
        if isinstance(a, (np.memmap, mmap.mmap)):
            return a
        a = getattr(a, "base", None)
    return None


def is_mapped(images) -> bool:
    """True when ``images`` is a view of a memory-mapped file."""
    return _memmap_of(images) is not None


def is_on_disk(ds: ImageDataset) -> bool:
    """True when the split's pixels are a view of a memory-mapped file."""
    return is_mapped(ds.images)


def mapped_file(images) -> str | None:
    """The file ``images`` is mapped from while it still exists under that name (None for a scratch
    array, whose file is unlinked once mapped, and for in-memory arrays)."""
    m = _memmap_of(images)
    name = getattr(m, "filename", None)
    return str(name) if name and os.path.isfile(name) else None


def choose_storage(total_bytes: int, storage: str = "auto", in_memory_max_gb: float = 8.0) -> str:
    """"memory" or "disk": ``storage`` when forced, else disk once the splits' float32 tensors would
    exceed ``in_memory_max_gb``."""
    if storage not in STORAGE_MODES:
        raise ValueError(f"data.storage = {storage!r}: choose one of {', '.join(STORAGE_MODES)}")
    if storage != "auto":
        return storage
    return "disk" if total_bytes > in_memory_max_gb * 1024**3 else "memory"


def _storage_dir(cache_dir) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "storage"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def scratch_array(shape: tuple, cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """A writable uint8 array of ``shape`` backed by a memory-mapped file of the cache folder that is
    unlinked as soon as it is mapped: the pages live on disk (the OS writes them back and evicts
    them as it needs), and the disk space is freed when the array is garbage-collected."""
    shape = tuple(int(s) for s in shape)
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, np.uint8)  # an empty file cannot be mapped
    fd, tmp = tempfile.mkstemp(dir=_storage_dir(cache_dir), prefix="scratch-", suffix=".npy")
    os.close(fd)
    try:
        return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    finally:
        os.remove(tmp)  # POSIX: the mapping stays valid without a name


def decode_buffer(shape: tuple, storage: str = "auto", in_memory_max_gb: float = 8.0,
                  cache_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Where a file source decodes its ``shape`` (N, H, W, C) images into: an array in memory, or a
    :func:`scratch_array` when ``data.storage`` / ``data.in_memory_max_gb`` put the splits on disk
    (the same rule as :func:`choose_storage`, on the whole set before it is split)."""
    total = int(np.prod(shape, dtype=np.int64)) * 4
    if choose_storage(total, storage, in_memory_max_gb) == "memory":
        return np.empty(shape, np.uint8)
    return scratch_array(shape, cache_dir)


def _chunk_rows(images) -> int:
    row = int(np.prod(images.shape[1:], dtype=np.int64)) or 1
    return max(1, CHUNK_BYTES // row)


def take_rows(images: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``images[idx]``; of a memory-mapped array, a :func:`scratch_array` filled chunk by chunk, so
    taking a subset of a split on disk never holds the subset in memory."""
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    if not is_mapped(images) or len(idx) == 0:
        return images[idx]
    out = scratch_array((len(idx), *images.shape[1:]))
    step = _chunk_rows(images)
    for s in range(0, len(idx), step):
        out[s:s + step] = images[idx[s:s + step]]
    return out


def to_disk(ds: ImageDataset, cache_dir: str | os.PathLike | None = None, *, loader_workers: int = 0) -> ImageDataset:
    """``ds`` with its images in a memory-mapped file of the cache (written once per fingerprint,
    copied chunk by chunk); ``loader_workers`` is recorded for :func:`training_images`."""
    from dataclasses import replace

    folder = _storage_dir(cache_dir)
    path = folder / f"{ds.fingerprint()}.npy"
    if mapped_file(ds.images) != str(path):
        if not path.is_file() or _shape_of(path) != ds.images.shape:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=path.name + ".", suffix=".tmp")
            os.close(fd)
            try:
                out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=ds.images.shape)
                step = _chunk_rows(ds.images)
                for i in range(0, len(ds), step):  # in chunks: never a second copy of the split in memory
                    out[i:i + step] = ds.images[i:i + step]
                out.flush()
                del out
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        images = np.load(path, mmap_mode="r")
    else:
        images = ds.images
    return replace(ds, images=images, meta={**ds.meta, "storage": str(path), "loader_workers": int(loader_workers)})


def to_memory(ds: ImageDataset) -> ImageDataset:
    """``ds`` with its images read into memory (itself when they are there already)."""
    from dataclasses import replace

    if not is_on_disk(ds):
        return ds
    meta = {k: v for k, v in ds.meta.items() if k not in ("storage", "loader_workers")}
    return replace(ds, images=np.array(ds.images), meta=meta)


def _shape_of(path: Path) -> tuple:
    try:
        return np.load(path, mmap_mode="r").shape
    except (OSError, ValueError):
        return ()


def read_rows(images: np.ndarray, idx):
    """Rows ``idx`` (an index tensor or array, a slice) of uint8 (N, H, W, C) ``images`` as the float32
    (n, C, H, W) batch in [-1, 1]; reads the file forwards (sorted), then puts the rows back in order.
    The one conversion both the training process and the DataLoader workers run."""
    import torch

    if isinstance(idx, slice):
        rows = np.array(images[idx])  # a copy: torch wants writable memory, the mapping is read-only
    else:
        idx = np.asarray(idx.cpu() if hasattr(idx, "cpu") else idx, dtype=np.int64).reshape(-1)
        order = np.argsort(idx, kind="stable")
        rows = np.empty((len(idx), *images.shape[1:]), np.uint8)
        rows[order] = images[idx[order]]
    x = torch.from_numpy(np.ascontiguousarray(rows)).permute(0, 3, 1, 2).float()
    return x.div_(127.5).sub_(1.0)


class _Rows:
    """Map-style dataset for the DataLoader: an item is a whole index batch (an int64 array), read by
    :func:`read_rows`. Pickled for a spawned worker, it carries the file's name, not the pixels."""

    def __init__(self, images: np.ndarray):
        self.images, self.path = images, mapped_file(images)

    def __getitem__(self, idx):
        return read_rows(self.images, idx)

    def __getstate__(self):
        return {"images": None if self.path else self.images, "path": self.path}

    def __setstate__(self, state):
        self.path = state["path"]
        self.images = state["images"] if state["images"] is not None else np.load(self.path, mmap_mode="r")


class _Feed:
    """The DataLoader's sampler: yields the index batches the caller hands it for the next pass."""

    def __init__(self):
        self.items: list = []

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


class LazyImages:
    """The training tensor of a memory-mapped split without building it: ``self[idx]`` (an index
    tensor, array or slice) is the float32 (n, C, H, W) batch in [-1, 1] on :attr:`device`.

    ``workers`` > 0: the rows are read and converted by a torch DataLoader with that many persistent
    worker processes. The loop still draws every index batch from its own seeded generator; the
    DataLoader's sampler only hands those batches on. ``self[idx]`` splits the batch over the
    workers (the loop needs it now: its next indices are drawn after this step's noise); :meth:`stream`
    reads a list of batches known in advance (a classifier epoch's shuffled pass) ahead of the loop."""

    def __init__(self, images: np.ndarray, device: str = "cpu", workers: int = 0):
        self.images, self.device, self.workers = images, device, int(workers)
        n, h, w, c = images.shape
        self.shape = (n, c, h, w)
        self._loader = self._feed = None

    def __len__(self) -> int:
        return self.shape[0]

    def to(self, device) -> "LazyImages":
        return LazyImages(self.images, str(device), self.workers)

    def _dataloader(self):
        if self._loader is None:
            import torch
            from torch.utils.data import DataLoader

            self._feed = _Feed()
            # a generator of its own: the workers' base seed would otherwise be drawn from torch's global
            # stream, which dropout and weight init draw from (the same seed must train the same model)
            self._loader = DataLoader(_Rows(self.images), batch_size=None, sampler=self._feed,
                                      num_workers=self.workers, persistent_workers=True, prefetch_factor=2,
                                      pin_memory=str(self.device).startswith("cuda"),
                                      generator=torch.Generator().manual_seed(0))
        return self._loader

    def _index(self, idx) -> np.ndarray:
        return np.asarray(idx.cpu() if hasattr(idx, "cpu") else idx, dtype=np.int64).reshape(-1)

    def __getitem__(self, idx):
        import torch

        if self.workers == 0 or isinstance(idx, slice):
            return read_rows(self.images, idx).to(self.device)
        idx = self._index(idx)
        loader = self._dataloader()
        self._feed.items = [p for p in np.array_split(idx, min(self.workers, len(idx))) if len(p)]
        return torch.cat(list(loader)).to(self.device)

    def stream(self, batches):
        """The batch of every index batch of ``batches`` (a list), in order."""
        batches = [self._index(b) for b in batches]
        if self.workers == 0:
            for b in batches:
                yield read_rows(self.images, b).to(self.device)
            return
        loader = self._dataloader()
        self._feed.items = batches
        for x in loader:
            yield x.to(self.device)


def training_images(ds: ImageDataset, workers: int | None = None):
    """(images, labels) for a training loop: the float tensor of an in-memory split, or
    :class:`LazyImages` over a memory-mapped one (both answer ``images[idx]`` the same). ``workers``
    (default: the split's ``data.loader_workers``, recorded by :func:`to_disk`) DataLoader processes
    read a memory-mapped split's batches."""
    import torch

    if is_on_disk(ds):
        workers = ds.meta.get("loader_workers", 0) if workers is None else workers
        return LazyImages(ds.images, workers=workers), torch.from_numpy(np.asarray(ds.labels).copy())
    return ds.to_tensor()


def batches_of(images, index_batches: list):
    """``(idx, images[idx])`` for every index batch of the list ``index_batches``: a :class:`LazyImages`
    with workers reads the whole list ahead (the indices are all known); a tensor is indexed."""
    if isinstance(images, LazyImages):
        return zip(index_batches, images.stream(index_batches))
    return ((idx, images[idx]) for idx in index_batches)


__all__ = ["STORAGE_MODES", "CHUNK_BYTES", "split_bytes", "is_mapped", "is_on_disk", "mapped_file", "choose_storage",
           "scratch_array", "decode_buffer", "take_rows", "to_disk", "to_memory", "read_rows", "LazyImages",
           "training_images", "batches_of"]
