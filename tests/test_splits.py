"""Splits and small-data tools: stratification, patient-level leakage, determinism, sizes."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.data import (DataError, DataSplits, ImageDataset, assert_disjoint, disjoint_subsets, make_imbalanced,
                           per_class_subset, split_dataset)


def make_ds(per_class=(60, 30, 90), patients_per_class=None, mixed=False, seed=0) -> ImageDataset:
    """Distinct random 4x4 images; optional patient ids (each patient one class, or mixed)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    n = len(labels)
    images = rng.integers(0, 256, (n, 4, 4, 1), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256  # with the rest random, every image is unique
    images[:, 0, 1, 0] = np.arange(n) // 256
    pids = None
    if patients_per_class is not None:
        if mixed:  # patients hold images of several classes, in uneven numbers
            pids = [f"p{int(rng.integers(0, patients_per_class))}" for _ in range(n)]
        else:
            pids = [f"c{c}p{i % patients_per_class}" for c, cnt in enumerate(per_class) for i in range(cnt)]
    return ImageDataset(images, labels, [f"class{c}" for c in range(len(per_class))], patient_ids=pids,
                        name="toy")


def test_image_level_split_stratified_and_deterministic():
    ds = make_ds()
    s = split_dataset(ds, 0.1, 0.2, seed=1)
    assert [len(s.train), len(s.val), len(s.test)] == [126, 18, 36]
    assert s.test.class_counts() == [12, 6, 18] and s.val.class_counts() == [6, 3, 9]
    again = split_dataset(ds, 0.1, 0.2, seed=1)
    assert again.test.fingerprint() == s.test.fingerprint()
    assert split_dataset(ds, 0.1, 0.2, seed=2).test.fingerprint() != s.test.fingerprint()
    assert_disjoint(s)


@pytest.mark.parametrize("mixed", [False, True])
def test_patient_level_split_has_no_leakage(mixed):
    ds = make_ds((120, 60, 120), patients_per_class=40 if mixed else 12, mixed=mixed)
    s = split_dataset(ds, 0.1, 0.2, seed=0)
    ids = [set(d.patient_ids.tolist()) for d in (s.train, s.val, s.test)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert set.union(*ids) == set(ds.patient_ids.tolist())
    assert s.split_policy.startswith("patient-level")
    for part, frac in ((s.train, 0.7), (s.val, 0.1), (s.test, 0.2)):
        counts = np.array(part.class_counts())
        assert np.all(counts > 0)  # every class in every split
        # stratification roughly holds: within 10 percentage points of the target share
        assert np.all(np.abs(counts / np.array(ds.class_counts()) - frac) < 0.1), (part.name, counts)
    assert split_dataset(ds, 0.1, 0.2, seed=0).val.fingerprint() == s.val.fingerprint()
    assert_disjoint(s)


def test_patient_split_too_few_patients():
    ds = make_ds((20, 20), patients_per_class=2)
    with pytest.raises(DataError, match=r"class 'class0' has images from only 2 patient"):
        split_dataset(ds)


def test_split_too_few_images_and_bad_fractions():
    with pytest.raises(DataError, match=r"class 'class1' has 2 image"):
        split_dataset(make_ds((10, 2)))
    with pytest.raises(DataError, match="sum below 1"):
        split_dataset(make_ds(), 0.5, 0.5)


def test_per_class_subset():
    ds = make_ds()
    sub = per_class_subset(ds, 25, seed=0)
    assert sub.class_counts() == [25, 25, 25]
    assert per_class_subset(ds, 25, seed=0).fingerprint() == sub.fingerprint()
    with pytest.raises(DataError, match=r"class 'class1' has 30 images, fewer than the 31"):
        per_class_subset(ds, 31)


def test_disjoint_subsets_fraction_and_n():
    ds = make_ds((100, 50, 200))
    subs = disjoint_subsets(ds, 5, fraction=0.1, seed=0)
    assert len(subs) == 5
    assert all(s.class_counts() == [10, 5, 20] for s in subs)
    hashes = [s.image_hashes() for s in subs]
    assert sum(len(h) for h in hashes) == len(set().union(*hashes))  # no image in two subsets
    subs = disjoint_subsets(ds, 3, n_per_class=16, seed=1)
    assert all(s.class_counts() == [16, 16, 16] for s in subs)
    with pytest.raises(DataError, match=r"class 'class1' has 50 images; 4 disjoint subsets of 16"):
        disjoint_subsets(ds, 4, n_per_class=16)


def test_disjoint_subsets_with_patients():
    ds = make_ds((200, 100, 200), patients_per_class=50)  # 4 or 2 images per patient
    subs = disjoint_subsets(ds, 5, fraction=0.1, seed=0)
    ids = [set(s.patient_ids.tolist()) for s in subs]
    for i in range(5):
        for j in range(i + 1, 5):
            assert not ids[i] & ids[j]
    for s in subs:
        counts = np.array(s.class_counts())
        assert np.all(counts <= [20, 10, 20]) and np.all(counts >= [16, 8, 16])


def test_make_imbalanced():
    ds = make_ds()
    imb = make_imbalanced(ds, "class2", 0.25, seed=0)
    assert imb.class_counts() == [60, 30, 22]  # round(22.5) = 22 (half to even)
    assert make_imbalanced(ds, 1, 0.5).class_counts() == [60, 15, 90]
    with pytest.raises(DataError, match=r"unknown class 'tumour'; classes are \['class0', 'class1', 'class2'\]"):
        make_imbalanced(ds, "tumour", 0.5)


def test_assert_disjoint_catches_patients_and_images():
    ds = make_ds((30, 30), patients_per_class=10)
    s = split_dataset(ds, seed=0)
    leaked_patient = DataSplits(s.train, s.val, ds.subset([0] + list(range(1, 3))), split_policy="x")
    with pytest.raises(DataError, match="patient"):
        assert_disjoint(leaked_patient)
    no_ids = ImageDataset(ds.images, ds.labels, ds.class_names, paths=[f"f{i}.png" for i in range(len(ds))])
    with pytest.raises(DataError, match=r"identical image.*f0\.png"):
        assert_disjoint({"train": no_ids.subset([0, 1, 2]), "test": no_ids.subset([0, 5])})
    assert_disjoint([no_ids.subset([0, 1]), no_ids.subset([2, 3])])
