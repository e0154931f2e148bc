"""Out-of-core splits (data/storage.py): a memory-mapped cache read lazily, with the same pixels,
fingerprints, leak-guard hashes and training batches as the in-memory path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from toydata import toy

from synthmed.classifiers import train_classifier
from synthmed.config import ClassifierConfig, DataConfig, DiffusionConfig
from synthmed.data.dataset import DataSplits
from synthmed.data import storage
from synthmed.data.sources import load_dataset
from synthmed.data.storage import LazyImages, choose_storage, is_on_disk, split_bytes, to_disk, training_images
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.pipeline import place_splits


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_disk_copy_has_the_same_identity_and_leak_hashes(tmp_path):
    ds = toy([5, 3, 4], seed=0)
    disk = to_disk(ds, tmp_path)
    assert is_on_disk(disk) and not is_on_disk(ds)
    assert disk.fingerprint() == ds.fingerprint()
    assert disk.image_hashes() == ds.image_hashes()
    assert np.array_equal(np.asarray(disk.images), ds.images)
    # the cache is written once per fingerprint: a second copy reopens the same file
    again = to_disk(ds, tmp_path)
    assert again.meta["storage"] == disk.meta["storage"] and len(list(tmp_path.iterdir())) == 1


def test_lazy_batches_equal_the_in_memory_tensor(tmp_path):
    ds = toy([5, 3, 4], seed=0)
    x, y = ds.to_tensor()
    lazy, y_lazy = training_images(to_disk(ds, tmp_path))
    assert isinstance(lazy, LazyImages) and lazy.shape == tuple(x.shape) and len(lazy) == len(x)
    idx = torch.tensor([7, 0, 7, 11, 3])  # unsorted, with a repeat
    assert torch.equal(lazy[idx], x[idx])
    assert torch.equal(lazy[2:6], x[2:6]) and torch.equal(y_lazy, y)


def test_storage_is_chosen_by_size_and_forced_by_the_key():
    gb = 1024**3
    assert choose_storage(3 * gb, "auto", in_memory_max_gb=8) == "memory"
    assert choose_storage(9 * gb, "auto", in_memory_max_gb=8) == "disk"
    assert choose_storage(1, "disk") == "disk" and choose_storage(100 * gb, "memory") == "memory"
    with pytest.raises(ValueError, match="data.storage"):
        choose_storage(1, "ssd")


def test_dataloader_workers_serve_the_loops_own_batches(tmp_path):
    ds = toy([5, 3, 4], seed=0)
    x, _ = ds.to_tensor()
    lazy, _ = training_images(to_disk(ds, tmp_path, loader_workers=2))
    assert lazy.workers == 2  # recorded with the split (data.loader_workers)
    for idx in (torch.tensor([7, 0, 7, 11, 3]), torch.tensor([4])):  # split over the workers, a one-image batch
        assert torch.equal(lazy[idx], x[idx])
    batches = [torch.randperm(12, generator=torch.Generator().manual_seed(s))[:5] for s in range(4)]
    assert all(torch.equal(b, x[i]) for i, b in zip(batches, lazy.stream(batches)))  # read ahead, in order
    assert all(torch.equal(b, x[i]) for i, b in zip(batches, lazy.stream(batches)))  # the workers are reused


def test_folder_images_are_decoded_straight_to_disk(tmp_path, monkeypatch):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(60):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "imgs" / c / f"{i}.png")
    cfg = dict(dataset=f"folder:{tmp_path / 'imgs'}", image_size=64, channels=3)
    set_bytes = 120 * 64 * 64 * 3  # 1.5 MB; what else loading allocates is ~0.2 MB, whatever the image size
    monkeypatch.setattr(storage, "CHUNK_BYTES", 8 * 64 * 64 * 3)  # copies of 8 images: far below the set

    import tracemalloc

    peaks, loaded = {}, {}
    for mode in ("memory", "disk"):
        tracemalloc.start()
        splits = load_dataset(DataConfig(storage=mode, **cfg))
        splits = place_splits(splits, DataConfig(storage=mode, **cfg))
        peaks[mode] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        loaded[mode] = splits
    mem, disk = loaded["memory"], loaded["disk"]
    assert all(is_on_disk(s) for s in (disk.train, disk.val, disk.test)) and not is_on_disk(mem.train)
    for a, b in ((mem.train, disk.train), (mem.val, disk.val), (mem.test, disk.test)):
        assert np.array_equal(a.images, np.asarray(b.images)) and a.fingerprint() == b.fingerprint()
    assert peaks["memory"] >= set_bytes  # the decoded set itself
    assert peaks["disk"] < set_bytes / 4, peaks  # decoded, split and cached through memory-mapped files
    # the scratch files of the decoding are unlinked once mapped: the cache holds the three split files only
    assert sorted(p.suffix for p in (tmp_path / "cache" / "synthmed" / "storage").iterdir()) == [".npy"] * 3


def test_splits_decoded_to_disk_come_back_to_memory_when_they_fit():
    ds = toy(6, seed=0)
    on_disk = storage.take_rows(storage.to_disk(ds).images, np.arange(len(ds)))  # a scratch-backed copy
    assert storage.is_mapped(on_disk) and storage.mapped_file(on_disk) is None
    from dataclasses import replace

    mapped = DataSplits(replace(ds, images=on_disk), toy(3, seed=1), toy(3, seed=2))
    back = place_splits(mapped, DataConfig())  # auto, far below the default cap
    assert not is_on_disk(back.train) and np.array_equal(back.train.images, ds.images)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_generator_and_a_classifier_train_on_splits_above_the_memory_cap(workers):
    splits = DataSplits(toy(6, seed=0), toy(3, seed=1), toy(3, seed=2))
    cap_gb = 4e-6  # ~4 KB: the toy splits' float32 tensors (~7 KB) do not fit
    assert sum(split_bytes(s) for s in (splits.train, splits.val, splits.test)) > cap_gb * 1024**3
    on_disk = place_splits(splits, DataConfig(in_memory_max_gb=cap_gb, loader_workers=workers))
    assert all(is_on_disk(s) for s in (on_disk.train, on_disk.val, on_disk.test))
    assert training_images(on_disk.train)[0].workers == workers  # batches read by DataLoader workers, or in-process
    assert place_splits(splits, DataConfig()).train is splits.train  # below the default cap: untouched

    cfg = DiffusionConfig(block_out_channels=[16, 16], layers_per_block=1, batch_size=8, train_steps=4, log_every=1,
                          hflip=0.5, sample_steps=2)
    curves = []
    for s in (splits, on_disk):
        gen = DiffusionGenerator(cfg, image_size=8, channels=1, class_names=s.train.class_names)
        gen.fit(s.train, progress=False)
        curves.append(gen.history["loss_curve"])
        assert gen.train_fingerprint == splits.train.fingerprint()
        assert gen.train_image_hashes == splits.train.image_hashes()  # the leak guard sees the same images
    assert curves[0] == curves[1]  # the same batches, read lazily

    # epochs (the DataLoader reads an epoch's batches ahead) and a step budget (each batch when it is drawn)
    for ccfg in (ClassifierConfig(arch="smallcnn", widths=[8], batch_size=8, epochs=2, patience=2,
                                  augmentations=["flip"]),
                 ClassifierConfig(arch="smallcnn", widths=[8], batch_size=8, steps=5, eval_every=2, patience=5)):
        a = train_classifier(splits.train, splits.val, ccfg, seed=0, augment=True)
        b = train_classifier(on_disk.train, on_disk.val, ccfg, seed=0, augment=True)
        assert len(a.history["train_loss"]) == len(b.history["train_loss"]) >= 2
        assert a.history["train_loss"] == pytest.approx(b.history["train_loss"], rel=1e-6)  # same batches; the
        # conv kernels may see other strides (a batch read from the file is contiguous), hence rounding apart
