"""The embedded embryo dataset: shape contract, determinism, dishes and class morphology."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.data.dataset import DataError, ImageDataset
from synthmed.data.procedural import EMBRYO_CLASS_NAMES, make_embryo_dataset


@pytest.fixture(scope="module")
def embryos() -> ImageDataset:
    return make_embryo_dataset([90, 60, 90], image_size=32, seed=3)


def test_shapes_dtypes_labels_and_counts(embryos):
    assert isinstance(embryos, ImageDataset)
    assert embryos.images.shape == (240, 32, 32, 1)
    assert embryos.images.dtype == np.uint8
    assert embryos.labels.dtype == np.int64
    assert embryos.class_names == ["2-cell", "3-cell", "4-cell"] == EMBRYO_CLASS_NAMES
    assert embryos.class_counts() == [90, 60, 90]
    assert embryos.name == "embryo"
    assert embryos.meta["seed"] == 3 and embryos.meta["per_class"] == [90, 60, 90]
    # Images use a real dynamic range: neither blank nor saturated.
    assert 60 < embryos.images.mean() < 200
    assert embryos.images.std() > 10


def test_default_arguments_match_the_documented_demo_set():
    ds = make_embryo_dataset.__defaults__
    assert list(ds[0]) == [400, 140, 400] and ds[1] == 32 and ds[2] == 0


def test_same_seed_is_byte_identical_and_different_seeds_differ():
    a = make_embryo_dataset([6, 4, 6], image_size=32, seed=11)
    b = make_embryo_dataset([6, 4, 6], image_size=32, seed=11)
    c = make_embryo_dataset([6, 4, 6], image_size=32, seed=12)
    assert a.images.tobytes() == b.images.tobytes()
    assert np.array_equal(a.labels, b.labels)
    assert np.array_equal(a.patient_ids, b.patient_ids)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != c.fingerprint()
    # Different seeds must not just shift a few pixels: no image is shared.
    assert not (a.image_hashes() & c.image_hashes())


def test_images_within_a_set_are_distinct(embryos):
    assert len(embryos.image_hashes()) == len(embryos)


def test_every_image_has_a_dish_and_each_dish_has_several_embryos_of_mixed_stages(embryos):
    pids = embryos.patient_ids
    assert pids is not None and len(pids) == len(embryos)
    ids, sizes = np.unique(pids, return_counts=True)
    assert len(ids) >= 10
    assert sizes.min() >= 4
    # Dishes are not one class each, otherwise a patient split would also be a class split.
    mixed = sum(len(set(embryos.labels[pids == p].tolist())) > 1 for p in ids)
    assert mixed >= 0.7 * len(ids)


def test_embryos_in_one_dish_share_acquisition_characteristics(embryos):
    # Background brightness (image corners, outside the zona) is set by the dish's
    # illumination, so it should vary much more between dishes than within one.
    corners = np.concatenate(
        [embryos.images[:, :4, :4, 0].reshape(len(embryos), -1), embryos.images[:, -4:, -4:, 0].reshape(len(embryos), -1)],
        axis=1,
    ).mean(axis=1)
    ids = np.unique(embryos.patient_ids)
    dish_means = np.array([corners[embryos.patient_ids == p].mean() for p in ids])
    within = np.mean([corners[embryos.patient_ids == p].var() for p in ids])
    between = dish_means.var()
    assert between > 2.0 * within


def test_class_morphology_differs_measurably(embryos):
    # More blastomeres means more membrane: the share of clearly dark pixels (relative to the
    # image's own brightness, so illumination does not matter) in the embryo centre rises
    # with the cell count.
    x = embryos.images[..., 0].astype(np.float64)
    flat = x.reshape(len(x), -1)
    z = (x - flat.mean(1)[:, None, None]) / (flat.std(1)[:, None, None] + 1e-6)
    coords = (np.arange(32) + 0.5) / 32 * 2 - 1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    centre = np.hypot(xx, yy) < 0.45
    dark_share = (z < -1.0)[:, centre].mean(axis=1)
    per_class = [dark_share[embryos.labels == k].mean() for k in range(3)]
    assert per_class[0] + 0.02 < per_class[1] < per_class[2] - 0.02, per_class


def test_zona_ring_is_visible_around_the_cells(embryos):
    # Mean radial profile: the zona pellucida is a bright ring outside the darker cells.
    x = embryos.images[..., 0].astype(np.float64).mean(axis=0)
    coords = (np.arange(32) + 0.5) / 32 * 2 - 1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    r = np.hypot(xx, yy)
    cells = x[r < 0.4].mean()
    zona = x[(r > 0.7) & (r < 0.85)].mean()
    assert zona > cells + 5


@pytest.mark.parametrize("size", [28, 32, 48, 64])
def test_supported_sizes(size):
    ds = make_embryo_dataset([3, 2, 3], image_size=size, seed=1)
    assert ds.images.shape == (8, size, size, 1)
    assert ds.images.dtype == np.uint8
    assert ds.meta["image_size"] == size and ds.meta["render_size"] % size == 0
    assert ds.meta["render_size"] >= 2 * size


def test_sizes_render_the_same_embryos():
    # Size only changes resolution: downsampled 64 px images resemble the 32 px ones.
    small = make_embryo_dataset([3, 3, 3], image_size=32, seed=2).images[..., 0].astype(np.float64)
    big = make_embryo_dataset([3, 3, 3], image_size=64, seed=2).images[..., 0].astype(np.float64)
    big_down = big.reshape(9, 32, 2, 32, 2).mean(axis=(2, 4))
    for s, b in zip(small, big_down):
        assert np.corrcoef(s.ravel(), b.ravel())[0, 1] > 0.8  # unrelated embryos: ~0.3


def test_empty_class_and_tiny_sets_work():
    ds = make_embryo_dataset([2, 0, 1], image_size=32, seed=0)
    assert ds.class_counts() == [2, 0, 1]
    assert len(set(ds.patient_ids.tolist())) == 1


@pytest.mark.parametrize(
    "kwargs",
    [{"per_class": [10, 10]}, {"per_class": [10, -1, 10]}, {"image_size": 8}, {"image_size": 1024}],
)
def test_bad_arguments_raise_data_error(kwargs):
    with pytest.raises(DataError):
        make_embryo_dataset(**kwargs)
