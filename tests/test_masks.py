"""Label masks and captions in the data layer: ImageDataset, the embryo set's own masks, CSV mask files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthmed.config import ConfigError, DataConfig, MaskConfig, load_config
from synthmed.data import DataError, ImageDataset, concat, load_csv, load_dataset
from synthmed.data.masks import MaskSpec
from synthmed.data.procedural import EMBRYO_MASK_CLASSES, make_embryo_dataset


def _toy(n=4, size=8, masks=True, captions=False):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    m = rng.integers(0, 3, (n, size, size)).astype(np.uint8) if masks else None
    caps = [f"caption {i}" for i in range(n)] if captions else None
    return ImageDataset(images, np.arange(n) % 2, ["a", "b"], masks=m, mask_class_names=["x", "y"] if masks else None,
                        captions=caps, paths=[f"img{i}.png" for i in range(n)])


def _images_only_fingerprint(ds: ImageDataset) -> str:
    """The fingerprint as it was before masks existed: images and labels only."""
    per = sorted(hashlib.sha1(img.tobytes() + int(lab).to_bytes(4, "little")).digest()
                 for img, lab in zip(ds.images, ds.labels))
    h = hashlib.sha256()
    h.update(str(ds.images.shape[1:]).encode())
    for d in per:
        h.update(d)
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- ImageDataset


def test_masks_and_captions_follow_subsets_and_concat():
    ds = _toy(captions=True)
    sub = ds.subset([3, 1])
    assert np.array_equal(sub.masks, ds.masks[[3, 1]]) and sub.captions == ["caption 3", "caption 1"]
    assert sub.mask_class_names == ["x", "y"]
    both = concat([ds.subset([0]), ds.subset([2, 3])])
    assert np.array_equal(both.masks, ds.masks[[0, 2, 3]]) and both.captions == ["caption 0", "caption 2", "caption 3"]
    # a part without masks (a class-conditional synthetic set): the concatenation has none
    bare = ImageDataset(ds.images[:1], ds.labels[:1], ds.class_names)
    assert concat([ds, bare]).masks is None and concat([ds, bare]).captions is None
    other = ImageDataset(ds.images, ds.labels, ds.class_names, masks=ds.masks, mask_class_names=["p", "q"])
    with pytest.raises(DataError, match="mask classes differ"):
        concat([ds, other])


def test_fingerprint_without_masks_is_unchanged_and_with_masks_follows_them():
    plain = _toy(masks=False)
    assert plain.fingerprint() == _images_only_fingerprint(plain)
    ds = _toy()
    assert ds.fingerprint() != plain.fingerprint()
    changed = ds.masks.copy()
    changed[2, 0, 0] = (changed[2, 0, 0] + 1) % 3
    assert ImageDataset(ds.images, ds.labels, ds.class_names, masks=changed,
                        mask_class_names=["x", "y"]).fingerprint() != ds.fingerprint()
    assert ds.subset([3, 2, 1, 0]).fingerprint() == ds.fingerprint()  # still order-independent
    renamed = ImageDataset(ds.images, ds.labels, ds.class_names, masks=ds.masks, mask_class_names=["x", "z"])
    assert renamed.fingerprint() != ds.fingerprint()
    assert _toy(captions=True).fingerprint() != ds.fingerprint()


def test_bad_masks_are_one_line_errors_naming_the_image():
    ds = _toy()
    with pytest.raises(DataError, match=r"masks have shape \(4, 8, 7\), expected \(4, 8, 8\)"):
        ImageDataset(ds.images, ds.labels, ds.class_names, masks=ds.masks[:, :, :7])
    with pytest.raises(DataError, match="expected"):
        ImageDataset(ds.images, ds.labels, ds.class_names, masks=ds.masks[:3])
    high = ds.masks.copy()
    high[2, 1, 1] = 3
    with pytest.raises(DataError) as e:
        ImageDataset(ds.images, ds.labels, ds.class_names, masks=high, mask_class_names=["x", "y"], paths=ds.paths)
    assert "img2.png" in str(e.value) and "value 3" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(DataError, match="integer class ids"):
        ImageDataset(ds.images, ds.labels, ds.class_names, masks=ds.masks.astype(np.float32))
    with pytest.raises(DataError, match="captions"):
        ImageDataset(ds.images, ds.labels, ds.class_names, captions=["one"])
    # unnamed masks get names for their values, (N, H, W, 1) and bool masks are accepted
    named = ImageDataset(ds.images, ds.labels, ds.class_names, masks=ds.masks[..., None])
    assert named.mask_class_names == ["class1", "class2"] and named.masks.shape == (4, 8, 8)
    assert ImageDataset(ds.images, ds.labels, ds.class_names, masks=ds.masks > 0).mask_class_names == ["class1"]


def test_from_tensor_carries_the_generating_masks():
    x = torch.rand(2, 1, 8, 8) * 2 - 1
    masks = torch.randint(0, 3, (2, 8, 8))
    syn = ImageDataset.from_tensor(x, torch.tensor([0, 1]), ["a", "b"], masks=masks, mask_class_names=["x", "y"],
                                   captions=["c0", "c1"])
    assert np.array_equal(syn.masks, masks.numpy()) and syn.captions == ["c0", "c1"] and syn.synthetic
    assert torch.equal(syn.mask_tensor(), masks)


# --------------------------------------------------------------------------- embryo masks


def test_embryo_masks_leave_the_images_alone_and_are_deterministic():
    plain = make_embryo_dataset((4, 3, 4), image_size=32, seed=5)
    ds = make_embryo_dataset((4, 3, 4), image_size=32, seed=5, masks=True)
    assert np.array_equal(plain.images, ds.images) and plain.masks is None
    assert plain.fingerprint() == _images_only_fingerprint(plain)
    assert ds.mask_class_names == EMBRYO_MASK_CLASSES and ds.masks.shape == (11, 32, 32)
    again = make_embryo_dataset((4, 3, 4), image_size=32, seed=5, masks=True)
    assert np.array_equal(ds.masks, again.masks)
    # every embryo has its zona and blastomeres; the cells sit inside the zona ring
    for m in ds.masks:
        assert (m == 1).any() and (m == 2).any()
        ys, xs = np.nonzero(m == 2)
        zy, zx = np.nonzero(m == 1)
        assert zy.min() < ys.min() and ys.max() < zy.max() and zx.min() < xs.min() and xs.max() < zx.max()


def test_embryo_masks_lie_on_what_the_image_shows():
    ds = make_embryo_dataset((20, 20, 20), image_size=48, seed=1, masks=True)
    img = ds.images[..., 0].astype(np.float64)
    # per image: the zona ring is brighter than the medium around it; debris blobs are darker than it
    zona_brighter = [img[i][m == 1].mean() > img[i][m == 0].mean() for i, m in enumerate(ds.masks)]
    assert np.mean(zona_brighter) > 0.9
    debris = [img[i][m == 4].mean() < img[i][m == 0].mean() for i, m in enumerate(ds.masks) if (m == 4).any()]
    assert len(debris) > 5 and np.mean(debris) > 0.8
    # blastomeres fill a part of the frame, never none of it nor most of it
    area = np.array([(m == 2).mean() for m in ds.masks])
    assert 0.05 < area.min() and area.max() < 0.5


def test_split_embryo_masks_stay_with_their_images():
    cfg = DataConfig(embryo_per_class=[12, 8, 12], image_size=32, masks=MaskConfig(embryo=True))
    splits = load_dataset(cfg)
    full = make_embryo_dataset((12, 8, 12), image_size=32, seed=0, masks=True)
    by_image = {img.tobytes(): m for img, m in zip(full.images, full.masks)}
    for part in (splits.train, splits.val, splits.test):
        assert part.mask_class_names == EMBRYO_MASK_CLASSES
        for img, m in zip(part.images, part.masks):
            assert np.array_equal(by_image[img.tobytes()], m)
    assert load_dataset(DataConfig(embryo_per_class=[12, 8, 12], image_size=32)).train.masks is None


# --------------------------------------------------------------------------- mask files


def _csv(tmp_path: Path, masks: list[np.ndarray], header="path,label,mask_path", extra=None) -> Path:
    rows = [header]
    for i, m in enumerate(masks):
        img = np.full((12, 12), 20 * i + 10, np.uint8)
        Image.fromarray(img).save(tmp_path / f"i{i}.png")
        if m is not None:
            Image.fromarray(m).save(tmp_path / f"m{i}.png")
        rows.append(f"i{i}.png,{'ab'[i % 2]},m{i}.png" + (f",{extra[i]}" if extra else ""))
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "list.csv"


def test_grey_values_and_colours_map_to_classes(tmp_path):
    m = np.zeros((12, 12), np.uint8)
    m[2:6, 2:6], m[7:9, 7:9] = 255, 128
    path = _csv(tmp_path, [m, m])
    ds = load_csv(path, mask_spec=MaskSpec(class_names=("lesion", "edge"), values=(255, 128)))
    assert ds.mask_class_names == ["lesion", "edge"]
    assert (ds.masks[0] == 1).sum() == 16 and (ds.masks[0] == 2).sum() == 4 and (ds.masks[0] == 0).sum() == 124
    with pytest.raises(DataError, match=r"m0\.png: value\(s\) 128 not listed in data\.masks\.values \[255\]"):
        load_csv(path, mask_spec=MaskSpec(values=(255,)))
    with pytest.raises(DataError, match="class id 255 but data.masks.class_names names only 2"):
        load_csv(path, mask_spec=MaskSpec(class_names=("lesion", "edge")))

    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[1:3, 1:3] = (255, 0, 0)
    rgb[5:8, 5:8] = (0, 128, 255)
    cpath = _csv(tmp_path, [rgb, rgb])
    ds = load_csv(cpath, mask_spec=MaskSpec.from_config(MaskConfig(class_names=["red", "blue"],
                                                                    colours=["#ff0000", "0080FF"])))
    assert (ds.masks[1] == 1).sum() == 4 and (ds.masks[1] == 2).sum() == 9
    with pytest.raises(DataError, match=r"colour\(s\) #0080ff not listed"):
        load_csv(cpath, mask_spec=MaskSpec.from_config(MaskConfig(colours=["#ff0000"])))
    with pytest.raises(DataError, match="colour image.*data.masks.colours"):
        load_csv(cpath)


def test_missing_corrupt_or_misfit_mask_files_name_the_file(tmp_path):
    m = np.zeros((12, 12), np.uint8)
    path = _csv(tmp_path, [m, None])
    with pytest.raises(DataError, match=r"mask .*m1\.png \(for .*i1\.png\) not found"):
        load_csv(path)
    (tmp_path / "m1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"mask .*m1\.png: cannot be decoded"):
        load_csv(path)
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(tmp_path / "m1.png")
    with pytest.raises(DataError, match=r"m1\.png is 12x10 but its image .*i1\.png is 12x12"):
        load_csv(path)


def test_csv_captions_and_mask_config_through_load_dataset(tmp_path):
    m = np.zeros((12, 12), np.uint8)
    m[3:9, 3:9] = 255
    path = _csv(tmp_path, [m] * 10, header="path,label,mask_path,caption", extra=[f"text {i}" for i in range(10)])
    cfg = load_config(overrides={"data": {"dataset": f"csv:{path}", "image_size": 8,
                                          "masks": {"class_names": ["lesion"], "values": [255]}}})
    splits = load_dataset(cfg.data)
    ds = splits.train
    assert ds.mask_class_names == ["lesion"] and ds.masks.shape[1:] == (8, 8) and set(np.unique(ds.masks)) == {0, 1}
    assert all(c.startswith("text ") for c in ds.captions)


def test_mask_config_is_checked_once():
    with pytest.raises(ConfigError, match="data.masks.values has 2 entries but data.masks.class_names has 1"):
        load_config(overrides={"data": {"masks": {"class_names": ["a"], "values": [1, 2]}}})
    with pytest.raises(ConfigError, match="both set"):
        load_config(overrides={"data": {"masks": {"values": [1], "colours": ["#ff0000"]}}})
    with pytest.raises(ConfigError, match="data.masks.colours"):
        load_config(overrides={"data": {"masks": {"colours": ["red"]}}})
    with pytest.raises(ConfigError, match="data.masks.values"):
        load_config(overrides={"data": {"masks": {"values": [0]}}})


def test_exported_sets_keep_masks_and_captions(tmp_path):
    from synthmed.data.export import load_image_set, save_image_set

    ds = _toy(captions=True)
    ds.synthetic = True
    back = load_image_set(save_image_set(ds, tmp_path / "s", png=False))
    assert np.array_equal(back.masks, ds.masks) and back.mask_class_names == ["x", "y"]
    assert back.captions == ds.captions and back.fingerprint() == ds.fingerprint()
    plain = load_image_set(save_image_set(_toy(masks=False), tmp_path / "p", png=False))
    assert plain.masks is None and plain.captions is None
