"""Loaders: folder, CSV manifest, MedMNIST files and the load_dataset dispatcher."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.config import DataConfig
from synthmed.data import (DataError, ImageDataset, assert_disjoint, load_csv, load_dataset, load_folder,
                           load_medmnist, medmnist_path)

# The shared data folder is a sibling of the repository (../shared from the repo root).
MEDMNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"
needs_medmnist = pytest.mark.skipif(
    not (MEDMNIST_DIR / "bloodmnist.npz").is_file(),
    reason=f"official MedMNIST files not found in {MEDMNIST_DIR} (only present on the development machines)",
)


def save(path: Path, size=(16, 16), mode="RGB", value=None, seed=0) -> Path:
    """A small random (or constant) image; distinct seeds give distinct pixels."""
    rng = np.random.default_rng(seed)
    w, h = size
    shape = (h, w) if mode == "L" else (h, w, 3)
    arr = np.full(shape, value, np.uint8) if value is not None else rng.integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=None).convert(mode).save(path)
    return path


def make_folder(root: Path, per_class=None, **kw) -> Path:
    per_class = per_class or {"benign": 3, "malignant": 2}
    seed = 0
    for cls, n in per_class.items():
        for i in range(n):
            seed += 1
            save(root / cls / f"img{i}.png", seed=seed, **kw)
    return root


# --------------------------------------------------------------------------- folder


def test_folder_basic_order_paths_and_sizes(tmp_path):
    root = make_folder(tmp_path / "data", {"b": 2, "a": 3}, size=(20, 12))
    ds = load_folder(root, image_size=8)
    assert ds.class_names == ["a", "b"]
    assert ds.class_counts() == [3, 2]
    assert ds.images.shape == (5, 8, 8, 3) and ds.images.dtype == np.uint8
    assert all(Path(p).is_file() for p in ds.paths)
    assert ds.meta["skipped"] == [] and ds.meta["duplicates"] == []


def test_folder_classes_fix_order_and_numeric_names(tmp_path):
    root = make_folder(tmp_path / "d", {"10": 1, "9": 1, "2": 1})
    assert load_folder(root).class_names == ["2", "9", "10"]
    assert load_folder(root, classes=["10", "2", "9"]).class_names == ["10", "2", "9"]
    with pytest.raises(DataError, match=r"\['9'\] are not in classes"):
        load_folder(root, classes=["10", "2"])
    with pytest.raises(DataError, match="have no folder"):
        load_folder(root, classes=["10", "2", "9", "77"])


def test_folder_non_image_files_are_counted(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "benign" / "notes.txt").write_text("hello")
    (root / "README.md").write_text("readme")
    with pytest.warns(UserWarning, match="skipped 2"):
        ds = load_folder(root)
    assert sorted(ds.meta["skipped"]) == ["README.md", str(Path("benign") / "notes.txt")]
    assert ds.summary()["skipped"] == ds.meta["skipped"]
    assert len(ds) == 5


def test_folder_empty_class(tmp_path):
    root = make_folder(tmp_path / "d")
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty has no images.*add images"):
        load_folder(root)


def test_folder_corrupt_image_named(tmp_path):
    root = make_folder(tmp_path / "d")
    bad = root / "benign" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.raises(DataError, match=r"broken\.png: cannot be decoded: .*remove or replace it"):
        load_folder(root)


def test_folder_mixed_sizes_resize_and_error(tmp_path):
    root = make_folder(tmp_path / "d", size=(16, 16))
    save(root / "malignant" / "wide.png", size=(40, 20), seed=99)
    ds = load_folder(root, image_size=16)
    assert ds.images.shape == (6, 16, 16, 3)
    with pytest.raises(DataError, match=r"wide\.png is 40x20, expected 16x16"):
        load_folder(root, image_size=16, resize_policy="error")
    with pytest.raises(DataError, match=r"wide\.png is 40x20, expected 16x16.*set image_size"):
        load_folder(root)  # no target size: all must match the first image


def test_resize_centre_crops_before_resizing(tmp_path):
    # left third red, middle third green, right third blue: the centre crop keeps only green
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0] = arr[:, 30:60, 1] = arr[:, 60:, 2] = 255
    (tmp_path / "d" / "x").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "d" / "x" / "a.png")
    ds = load_folder(tmp_path / "d", image_size=10)
    assert ds.images[0, :, :, 1].min() > 200 and ds.images[0, :, :, [0, 2]].max() < 50


def test_folder_mixed_channels(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 2})
    save(root / "b" / "grey.png", mode="L", seed=5)
    with pytest.raises(DataError, match=r"mix grey and RGB.*data\.channels"):
        load_folder(root)
    assert load_folder(root, channels=1).images.shape[-1] == 1
    assert load_folder(root, channels=3).images.shape[-1] == 3


def test_folder_16bit_tiff_min_max(tmp_path):
    arr = np.linspace(1000, 5000, 64 * 64).reshape(64, 64).astype(np.uint16)
    (tmp_path / "d" / "ct").mkdir(parents=True)
    Image.fromarray(arr).save(tmp_path / "d" / "ct" / "slice.tif")
    save(tmp_path / "d" / "ct" / "other.png", size=(64, 64), mode="L")
    ds = load_folder(tmp_path / "d", image_size=64)
    tif = ds.images[[p.endswith(".tif") for p in ds.paths].index(True), ..., 0]
    assert tif.dtype == np.uint8 and tif.min() == 0 and tif.max() == 255
    assert np.all(np.diff(tif.reshape(-1).astype(int)) >= 0)  # order of intensities preserved
    assert ds.meta["rescaled_high_bit_depth"] == 1


def test_folder_float_tiff(tmp_path):
    arr = np.array([[0.0, 0.5], [0.25, 1.0]], np.float32)
    (tmp_path / "d" / "x").mkdir(parents=True)
    Image.fromarray(arr, mode="F").save(tmp_path / "d" / "x" / "f.tiff")
    ds = load_folder(tmp_path / "d")
    assert ds.images[0, ..., 0].tolist() == [[0, 128], [64, 255]]


def test_folder_duplicates_counted_not_dropped(tmp_path):
    root = make_folder(tmp_path / "d")
    save(root / "malignant" / "copy.png", seed=1)  # same pixels as benign/img0.png
    with pytest.warns(UserWarning, match="same pixels"):
        ds = load_folder(root)
    assert len(ds) == 6
    assert len(ds.meta["duplicates"]) == 1
    a, b = ds.meta["duplicates"][0]
    assert a.endswith("img0.png") and b.endswith("copy.png")


def test_folder_missing_root(tmp_path):
    with pytest.raises(DataError, match="folder not found"):
        load_folder(tmp_path / "nope")


# --------------------------------------------------------------------------- CSV


def write_csv(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_csv_with_patients_and_masks(tmp_path):
    for i in range(4):
        save(tmp_path / "img" / f"{i}.png", size=(20, 20), seed=i)
        mask = np.zeros((20, 20), np.uint8)
        mask[5:15, 5:15] = i % 3  # class ids, must survive resizing untouched
        Image.fromarray(mask).save(tmp_path / "img" / f"{i}_m.png")
    csv_path = write_csv(tmp_path / "list.csv", ["path,label,patient_id,mask_path"] + [
        f"img/{i}.png,{i % 2},p{i // 2},img/{i}_m.png" for i in range(4)])
    ds = load_csv(csv_path, image_size=8)
    assert ds.class_names == ["0", "1"]  # integer labels are read as names
    assert ds.labels.tolist() == [0, 1, 0, 1]
    assert ds.patient_ids.tolist() == ["p0", "p0", "p1", "p1"]
    assert ds.masks.shape == (4, 8, 8) and ds.masks.dtype == np.uint8
    assert set(np.unique(ds.masks[1])) == {0, 1} and set(np.unique(ds.masks[2])) == {0, 2}


def test_csv_missing_column(tmp_path):
    save(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "l.csv", ["file,label", "a.png,x"])
    with pytest.raises(DataError, match=r"missing column.*'path'.*found columns \['file', 'label'\]"):
        load_csv(csv_path)


def test_csv_missing_file_names_row(tmp_path):
    save(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "l.csv", ["path,label", "a.png,x", "gone.png,y"])
    with pytest.raises(DataError, match=r"row 2 .*file not found: gone\.png"):
        load_csv(csv_path)


def test_csv_unknown_label_and_duplicate_path(tmp_path):
    save(tmp_path / "a.png", seed=1)
    save(tmp_path / "b.png", seed=2)
    csv_path = write_csv(tmp_path / "l.csv", ["path,label", "a.png,x", "b.png,z"])
    with pytest.raises(DataError, match=r"row 2 .*label 'z' is not one of classes"):
        load_csv(csv_path, classes=["x", "y"])
    dup = write_csv(tmp_path / "d.csv", ["path,label", "a.png,x", "b.png,y", "./a.png,y"])
    with pytest.raises(DataError, match=r"row 3 .*listed twice \(also row 1\)"):
        load_csv(dup)


def test_csv_classes_without_rows(tmp_path):
    save(tmp_path / "a.png")
    csv_path = write_csv(tmp_path / "l.csv", ["path,label", "a.png,x"])
    with pytest.raises(DataError, match=r"\['y'\].*have no rows"):
        load_csv(csv_path, classes=["x", "y"])


# --------------------------------------------------------------------------- MedMNIST


@needs_medmnist
def test_medmnist_bloodmnist_official_split():
    splits = load_medmnist("bloodmnist", MEDMNIST_DIR)
    assert splits.split_policy == "official MedMNIST split"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (11959, 1712, 3421)
    assert splits.train.num_classes == 8 and splits.class_names[0] == "basophil"
    assert splits.train.class_counts() == [852, 2181, 1085, 2026, 849, 993, 2330, 1643]
    assert splits.train.images.shape[1:] == (28, 28, 3)


@needs_medmnist
def test_medmnist_breast_resize_and_channels():
    splits = load_medmnist("breastmnist", MEDMNIST_DIR, image_size=32, channels=3, verify=True)
    assert splits.train.images.shape == (546, 32, 32, 3)
    assert splits.train.class_counts() == [147, 399]
    assert splits.class_names == ["malignant", "normal, benign"]


def test_medmnist_missing_file_names_path(tmp_path):
    with pytest.raises(DataError, match=r"pathmnist\.npz.*pip install medmnist.*--download"):
        load_medmnist("pathmnist", tmp_path)
    with pytest.raises(DataError, match=r"bloodmnist_64\.npz"):
        load_medmnist("bloodmnist", tmp_path, size=64)
    assert medmnist_path("octmnist", tmp_path, 128) == tmp_path / "octmnist_128.npz"
    assert medmnist_path("octmnist") == Path.home() / ".medmnist" / "octmnist.npz"


def test_medmnist_unsupported_flags(tmp_path):
    with pytest.raises(DataError, match="multi-label"):
        load_medmnist("chestmnist", tmp_path)
    with pytest.raises(DataError, match="unknown MedMNIST flag"):
        load_medmnist("catmnist", tmp_path)


def test_medmnist_file_layout_roundtrip(tmp_path):
    # a hand-made file in the medmnist layout loads like the real one
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    splits = load_medmnist("pneumoniamnist", tmp_path)
    assert splits.train.images.shape == (12, 28, 28, 1) and splits.class_names == ["normal", "pneumonia"]
    np.savez(tmp_path / "pneumoniamnist.npz", train_images=arrays["train_images"])
    with pytest.raises(DataError, match="missing arrays"):
        load_medmnist("pneumoniamnist", tmp_path)


# --------------------------------------------------------------------------- dispatcher


@needs_medmnist
def test_load_dataset_medmnist_train_only_steps():
    cfg = DataConfig(dataset="medmnist:breastmnist", data_root=str(MEDMNIST_DIR), image_size=32,
                     train_per_class=40, minority_class="malignant", imbalance_ratio=0.25)
    splits = load_dataset(cfg)
    assert splits.train.class_counts() == [10, 40]
    assert len(splits.val) == 78 and len(splits.test) == 156  # val/test untouched
    assert splits.train.images.shape[1:] == (32, 32, 1)
    assert "official MedMNIST split" in splits.split_policy and "minority class 'malignant'" in splits.split_policy
    assert any("40 images per class" in s for s in splits.train.meta["steps"])
    swapped = load_dataset(DataConfig(dataset="medmnist:breastmnist", data_root=str(MEDMNIST_DIR),
                                      classes=["normal, benign", "malignant"]))
    assert swapped.class_names == ["normal, benign", "malignant"] and swapped.train.class_counts() == [399, 146]  # one malignant train image is pixel-identical to a test image (dropped)


@needs_medmnist
def test_load_dataset_medmnist_random_split():
    cfg = DataConfig(dataset="medmnist:breastmnist", data_root=str(MEDMNIST_DIR), split="random", split_seed=3)
    splits = load_dataset(cfg)
    # BreastMNIST holds one pixel-identical pair across its official splits; re-split, one copy can land in
    # train next to the other in val/test and is then dropped from train (reported in the split policy)
    total = sum(len(d) for d in (splits.train, splits.val, splits.test))
    assert total == 546 + 78 + 156 - ("removed 1 image" in splits.split_policy)
    assert splits.split_policy.startswith("stratified 70/10/20")


def test_load_dataset_folder_and_policies(tmp_path):
    root = make_folder(tmp_path / "d", {"a": 10, "b": 10}, size=(12, 12))
    cfg = DataConfig(dataset=f"folder:{root}", image_size=8, train_per_class=5)
    splits = load_dataset(cfg)
    assert splits.train.class_counts() == [5, 5]
    assert len(splits.val) + len(splits.test) == 20 - 14
    assert splits.train.images.shape[1:] == (8, 8, 3)
    assert splits.source == f"folder:{root}"
    assert load_dataset(cfg).train.fingerprint() == splits.train.fingerprint()  # deterministic
    with pytest.raises(DataError, match="no official split"):
        load_dataset(DataConfig(dataset=f"folder:{root}", split="official"))
    with pytest.raises(DataError, match=r"folder:PATH.*csv:PATH.*medmnist:FLAG"):
        load_dataset(DataConfig(dataset="s3://bucket"))
    with pytest.raises(DataError, match="minority_class"):
        load_dataset(DataConfig(dataset=f"folder:{root}", imbalance_ratio=0.5))


def test_load_dataset_csv_patient_split(tmp_path):
    lines = ["path,label,patient_id"]
    for i in range(36):
        save(tmp_path / f"{i}.png", size=(8, 8), seed=i)
        lines.append(f"{i}.png,{'ab'[i % 2]},pt{i // 3}")
    cfg = DataConfig(dataset=f"csv:{write_csv(tmp_path / 'm.csv', lines)}", image_size=8)
    splits = load_dataset(cfg)
    assert splits.split_policy.startswith("patient-level")
    assert_disjoint(splits)


def test_load_dataset_embryo(monkeypatch):
    try:
        import synthmed.data.procedural  # noqa: F401
    except ImportError:  # stand-in with the agreed signature until the real module lands
        def make_embryo_dataset(per_class, image_size=32, seed=0):
            rng = np.random.default_rng(seed)
            n = sum(per_class)
            labels = np.repeat(np.arange(3), per_class)
            return ImageDataset(rng.integers(0, 256, (n, image_size, image_size, 1), dtype=np.uint8), labels,
                                ["2-cell", "3-cell", "4-cell"], patient_ids=[f"d{i % 12}" for i in range(n)],
                                name="embryo")
        monkeypatch.setitem(sys.modules, "synthmed.data.procedural",
                            types.SimpleNamespace(make_embryo_dataset=make_embryo_dataset))
    cfg = DataConfig(dataset="embryo", embryo_per_class=[40, 20, 40], image_size=16, minority_class="3-cell",
                     imbalance_ratio=0.5)
    splits = load_dataset(cfg)
    assert splits.class_names == ["2-cell", "3-cell", "4-cell"]
    assert splits.train.images.shape[1:] == (16, 16, 1)
    assert splits.split_policy.startswith("patient-level")
    assert_disjoint(splits)
    imb = splits.train.meta["imbalance"]
    assert imb["kept"] == round(imb["of"] * 0.5)


@pytest.mark.skipif(not (MEDMNIST_DIR / "bloodmnist.npz").is_file(), reason=f"BloodMNIST not found in {MEDMNIST_DIR}")
def test_cross_split_duplicates_of_the_official_split():
    """BloodMNIST's official split has 8 training images pixel-identical to val/test images."""
    from synthmed.config import DataConfig
    from synthmed.data.sources import load_dataset

    root = str(MEDMNIST_DIR)
    cfg = DataConfig(dataset="medmnist:bloodmnist", data_root=root, image_size=28)
    with pytest.warns(UserWarning, match="removed 8 image"):
        dropped = load_dataset(cfg)
    assert len(dropped.train) == 11959 - 8 and len(dropped.test) == 3421
    held_out = dropped.val.image_hashes() | dropped.test.image_hashes()
    assert not (dropped.train.image_hashes() & held_out)
    assert "removed 8" in dropped.split_policy
    kept = load_dataset(DataConfig(dataset="medmnist:bloodmnist", data_root=root, image_size=28,
                                   cross_split_duplicates="keep"))
    assert len(kept.train) == 11959
    with pytest.raises(DataError, match="pixel-identical"):
        load_dataset(DataConfig(dataset="medmnist:bloodmnist", data_root=root, image_size=28,
                                cross_split_duplicates="error"))


# --------------------------------------------------------------------------- folder: of synthmed's own samples


def test_own_sample_folder_reads_back_with_the_real_class_names(tmp_path):
    from synthmed.data.export import align_classes, save_image_set

    real_names = ["malignant", "normal, benign"]  # BreastMNIST: the second is no safe folder name
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 12, 12, 1), dtype=np.uint8)
    labels = np.array([1, 0, 1, 1, 0, 1])
    saved = save_image_set(ImageDataset(images, labels, real_names, synthetic=True), tmp_path / "samples")
    assert (saved / "normal_benign").is_dir()
    back = load_folder(saved, image_size=12)
    assert back.class_names == ["malignant", "normal_benign"]
    aligned = align_classes(back, real_names, where="folder:samples")
    assert aligned.class_names == real_names
    assert aligned.class_counts() == [2, 4]
    # the same images land in the same classes (order on disk differs from the order saved)
    by_class = {name: sorted(im.tobytes() for im, lab in zip(aligned.images, aligned.labels) if lab == c)
                for c, name in enumerate(real_names)}
    assert by_class == {name: sorted(im.tobytes() for im, lab in zip(images, labels) if lab == c)
                        for c, name in enumerate(real_names)}


def test_align_classes_reorders_and_refuses_what_it_cannot_match():
    from synthmed.data.export import align_classes

    ds = ImageDataset(np.zeros((3, 8, 8, 1), np.uint8), [0, 1, 1], ["b", "a"])
    out = align_classes(ds, ["a", "b"], where="x")
    assert out.class_names == ["a", "b"] and out.labels.tolist() == [1, 0, 0]
    with pytest.raises(DataError, match=r"\['c'\] match no class of the real data \['a', 'b', 'c d'\]"):
        align_classes(ImageDataset(np.zeros((1, 8, 8, 1), np.uint8), [0], ["c"]), ["a", "b", "c d"], where="x")
    with pytest.raises(DataError, match=r"no class for the real class\(es\) \['b'\]"):
        align_classes(ImageDataset(np.zeros((1, 8, 8, 1), np.uint8), [0], ["a"]), ["a", "b"], where="x")
    with pytest.raises(DataError, match="match several real classes"):  # "a b" and "a,b" are both folder a_b
        align_classes(ImageDataset(np.zeros((1, 8, 8, 1), np.uint8), [0], ["a_b"]), ["a b", "a,b"], where="x")


def test_csv_columns_are_strict_unless_listed(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    rows = []
    for i in range(4):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(root / f"{i}.png")
        rows.append(f"imgs/{i}.png,{'ab'[i % 2]},p{i // 2},note {i}")
    (tmp_path / "m.csv").write_text("path,label,patient_id,notes\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"unknown column\(s\) \['notes'\].*data.extra_columns"):
        load_csv(tmp_path / "m.csv")
    ds = load_csv(tmp_path / "m.csv", extra_columns=["notes"])
    assert ds.patient_ids.tolist() == ["p0", "p0", "p1", "p1"]
    (tmp_path / "typo.csv").write_text("path,label,patientid\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows))
    with pytest.raises(DataError, match="did you mean 'patient_id' instead of 'patientid'"):
        load_csv(tmp_path / "typo.csv")
