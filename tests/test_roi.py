"""ROI: automatic round-object crop, box files, and ROI inside the loaders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from synthmed.data import (DataError, ImageDataset, apply_auto_crop, auto_crop_round_object, crop_box, load_boxes_csv,
                           load_folder, load_voc_boxes, make_roi_fn, otsu_threshold)
from synthmed.data.roi import round_object_box


def disc_image(h=120, w=180, cx=130, cy=50, r=25, bright=True, seed=0) -> np.ndarray:
    """Noisy background with one textured disc (an oocyte-like object)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 <= r ** 2
    img = rng.normal(60, 12, (h, w))
    img[inside] = rng.normal(190, 25, inside.sum())
    if not bright:
        img = 255 - img
    return np.clip(img, 0, 255).astype(np.uint8)[..., None]


def test_otsu_splits_two_levels():
    grey = np.concatenate([np.full(100, 40.0), np.full(100, 200.0)])
    assert 40 <= otsu_threshold(grey) < 200


@pytest.mark.parametrize("bright", [True, False])
def test_round_object_box_finds_the_disc(bright):
    x0, y0, x1, y1 = round_object_box(disc_image(bright=bright))
    assert abs(x0 - 105) <= 3 and abs(x1 - 156) <= 3 and abs(y0 - 25) <= 3 and abs(y1 - 76) <= 3


def test_auto_crop_is_square_and_centred():
    crop = auto_crop_round_object(disc_image(), margin=0.1)
    assert crop.shape[0] == crop.shape[1] and abs(crop.shape[0] - 61) <= 3
    c = crop.shape[0] // 2
    assert crop[c, c, 0] > 120  # the disc is in the middle of the crop


def test_auto_crop_fallback_warns():
    flat = np.full((40, 60, 1), 128, np.uint8)
    with pytest.warns(UserWarning, match="no object found"):
        out = auto_crop_round_object(flat)
    assert out.shape == flat.shape


def test_crop_box_square_margin_and_border():
    img = np.arange(100 * 200).reshape(100, 200)
    assert crop_box(img, (10, 10, 30, 20), square=False).shape == (10, 20)
    assert crop_box(img, (10, 10, 30, 20)).shape == (20, 20)
    assert crop_box(img, (40, 40, 60, 60), margin=0.5).shape == (40, 40)
    near_edge = crop_box(img, (0, 0, 10, 10), margin=1.0)  # shifted inside, not padded
    assert near_edge.shape == (30, 30) and near_edge[0, 0] == 0
    assert crop_box(img, (0, 0, 200, 100)).shape == (100, 100)  # capped at the short side
    with pytest.raises(DataError, match="empty"):
        crop_box(img, (5, 5, 5, 9))


def test_apply_auto_crop_dataset():
    imgs = np.stack([disc_image(cx=60, seed=i)[:, :120] for i in range(3)] + [np.full((120, 120, 1), 9, np.uint8)])
    ds = ImageDataset(imgs, [0, 0, 1, 1], ["a", "b"], masks=np.zeros((4, 120, 120), np.uint8))
    with pytest.warns(UserWarning, match="1 of 4"):
        out = apply_auto_crop(ds, 32)
    assert out.images.shape == (4, 32, 32, 1) and out.masks.shape == (4, 32, 32)
    assert out.meta["roi"]["fallbacks"] == [3]
    assert out.images[0, 16, 16, 0] > 120


def test_load_boxes_csv_both_layouts(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("path,x0,y0,x1,y1\nimgs/1.png,1,2,30,40\n")
    assert load_boxes_csv(a) == {"imgs/1.png": (1, 2, 30, 40)}
    b = tmp_path / "b.csv"
    b.write_text("filename,xmin,ymin,xmax,ymax,extra\n1.png,1.4,2,30.6,40,z\n")
    assert load_boxes_csv(b) == {"1.png": (1, 2, 31, 40)}
    c = tmp_path / "c.csv"
    c.write_text("name,left,top\n")
    with pytest.raises(DataError, match=r"image,label,x0,y0,x1,y1\[,patient_id\].*found \['name', 'left', 'top'\]"):
        load_boxes_csv(c)
    d = tmp_path / "d.csv"
    d.write_text("path,x0,y0,x1,y1\n1.png,5,5,2,9\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\): box .* is empty"):
        load_boxes_csv(d)
    # a second row for an image used to replace the first silently; now both rows are named
    e = tmp_path / "e.csv"
    e.write_text("image,x0,y0,x1,y1\n1.png,1,1,9,9\n2.png,1,1,9,9\n1.png,2,2,8,8\n")
    with pytest.raises(DataError, match=r"1\.png has two rows: e\.csv row 1 \(line 2\) and e\.csv row 3 \(line 4\)"):
        load_boxes_csv(e)


def test_load_voc_boxes(tmp_path):
    (tmp_path / "one.xml").write_text(
        "<annotation><filename>one.jpg</filename><size><width>100</width><height>80</height></size>"
        "<object><name>oocyte</name><bndbox><xmin>10</xmin><ymin>12</ymin><xmax>50</xmax><ymax>60</ymax></bndbox>"
        "</object><object><bndbox><xmin>0</xmin><ymin>0</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "</annotation>")
    # two boxes, one named: taking the first silently is what the blood-smear report was about
    with pytest.raises(DataError, match=r"one\.jpg: its boxes carry several names \['\(unnamed\)', 'oocyte'\]"
                                        r".*roi_class"):
        load_voc_boxes(tmp_path)
    assert load_voc_boxes(tmp_path, roi_class="oocyte") == {"one.jpg": (10, 12, 50, 60)}
    (tmp_path / "bad.xml").write_text("<annotation><object><name>a</name></object></annotation>")
    with pytest.raises(DataError, match=r"bad\.xml: needs a <filename>"):
        load_voc_boxes(tmp_path)
    (tmp_path / "bad.xml").write_text("<annotation><filename>x.jpg</filename><object><name>a</name></object>"
                                      "</annotation>")
    with pytest.raises(DataError, match=r"bad\.xml object 1: needs a <bndbox>"):
        load_voc_boxes(tmp_path)


def test_make_roi_fn_specs(tmp_path):
    assert make_roi_fn("none") is None
    assert make_roi_fn("auto").spec == "auto"
    with pytest.raises(DataError, match="'none', 'auto' or 'boxes:PATH'"):
        make_roi_fn("yolo")
    with pytest.raises(DataError, match="not found"):
        make_roi_fn(f"boxes:{tmp_path / 'missing.csv'}")


def test_folder_loader_crops_before_resizing(tmp_path):
    (tmp_path / "d" / "oocyte").mkdir(parents=True)
    for i in range(2):
        Image.fromarray(disc_image(seed=i)[..., 0]).save(tmp_path / "d" / "oocyte" / f"{i}.png")
    # boxes: image 0 by relative path, image 1 by bare file name
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\nd/oocyte/0.png,105,25,156,76\n1.png,105,25,156,76\n")
    by_box = load_folder(tmp_path / "d", image_size=16, roi_fn=make_roi_fn(f"boxes:{boxes}"))
    by_auto = load_folder(tmp_path / "d", image_size=16, roi_fn=make_roi_fn("auto"))
    plain = load_folder(tmp_path / "d", image_size=16)
    for ds in (by_box, by_auto):
        assert ds.images.shape == (2, 16, 16, 1)
        assert ds.images[:, 8, 8, 0].min() > 120  # disc fills the centre of the crop
    assert plain.images[:, 8, 8, 0].max() < 120  # without ROI the centre is background
    assert by_auto.meta["roi"]["fallbacks"] == []
    missing = tmp_path / "few.csv"
    missing.write_text("path,x0,y0,x1,y1\n0.png,105,25,156,76\n")
    with pytest.raises(DataError, match=r"1\.png: no box for this image"):
        load_folder(tmp_path / "d", image_size=16, roi_fn=make_roi_fn(f"boxes:{missing}"))
