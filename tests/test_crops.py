"""One crop per box (`synthmed data crops`) and the one-box-per-image rules of `data.roi: boxes:`.

The fixture is a small blood-smear-like VOC folder: several boxes and names per image, an
empty box, a box wholly outside its image, one partly outside and one tiny box. Each box
region is painted its own grey value, so a crop's content says which box it came from.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from synthmed.cli import main
from synthmed.config import DataConfig
from synthmed.data import DataError, crop_boxes, load_csv, load_dataset, load_folder, make_roi_fn, read_box_table

H, W = 60, 80
BACKGROUND = 10
# image -> [(name, (xmin, ymin, xmax, ymax), value painted inside)]; value None = not painted
SMEARS = {
    "img_a.png": [("RBC", (5, 5, 20, 20), 50), ("WBC", (30, 10, 50, 40), 100), ("Platelets", (60, 40, 70, 50), 150),
                  ("RBC", (40, 42, 40, 55), None)],  # empty box: xmax == xmin
    "img_b.png": [("RBC", (0, 0, 15, 15), 60), ("RBC", (20, 20, 40, 40), 70),
                  ("WBC", (50, 20, 90, 50), 110),  # runs past the right border (W = 80): clipped to x 50..80
                  ("Platelets", (100, 100, 120, 120), None)],  # wholly outside
    "img_c.png": [("WBC", (10, 10, 30, 30), 120), ("Platelets", (40, 40, 43, 44), 160)],  # 3x4: under --min-size 4
}


def write_smears(root, sizes=None):
    """VOC folder root/ann (plus one annotation without objects) and the images in root/img."""
    ann, img_dir = root / "ann", root / "img"
    ann.mkdir(parents=True)
    img_dir.mkdir()
    for name, boxes in SMEARS.items():
        img = np.full((H, W, 3), BACKGROUND, np.uint8)
        objects = ""
        for label, (x0, y0, x1, y1), value in boxes:
            if value is not None:
                img[y0:y1, x0:x1] = value
            objects += (f"<object><name>{label}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax>"
                        f"<ymax>{y1}</ymax></bndbox></object>")
        Image.fromarray(img).save(img_dir / name)
        w, h = (sizes or {}).get(name, (W, H))
        (ann / name.replace(".png", ".xml")).write_text(
            f"<annotation><filename>{name}</filename><size><width>{w}</width><height>{h}</height><depth>3</depth>"
            f"</size>{objects}</annotation>")
    (ann / "img_d.xml").write_text("<annotation><filename>img_d.png</filename></annotation>")
    return ann, img_dir


def read_manifest(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_crops_counts_reasons_and_contents(tmp_path):
    ann, img_dir = write_smears(tmp_path)
    out = tmp_path / "crops"
    rep = crop_boxes(ann, img_dir, out, min_size=4)
    assert rep["boxes_read"] == 10 and rep["images_with_boxes"] == 3
    assert rep["written"] == {"Platelets": 1, "RBC": 3, "WBC": 3} and rep["total_written"] == 7
    assert rep["skipped"] == {"other_class": 0, "empty": 1, "outside": 1, "too_small": 1}
    reasons = {s["where"]: s["reason"] for s in rep["skipped_boxes"]}
    assert reasons == {"img_a.xml object 4": "empty", "img_b.xml object 4": "outside",
                       "img_c.xml object 2": "too_small"}
    assert [c["where"] for c in rep["clipped"]] == ["img_b.xml object 3"]
    assert rep["annotations_without_boxes"] == ["img_d.xml"]
    assert json.loads((out / "crops_report.json").read_text())["written"] == rep["written"]

    rows = read_manifest(out / "manifest.csv")
    assert list(rows[0]) == ["path", "label", "patient_id", "source", "x0", "y0", "x1", "y1"]
    assert len(rows) == 7
    values = {"WBC": {100, 110, 120}, "RBC": {50, 60, 70}, "Platelets": {150}}
    for r in rows:
        crop = np.asarray(Image.open(out / r["path"]))
        box = [int(r[k]) for k in ("x0", "y0", "x1", "y1")]
        assert crop.shape == (box[3] - box[1], box[2] - box[0], 3)  # no pad, not square: exactly the box
        assert len(np.unique(crop)) == 1 and int(crop[0, 0, 0]) in values[r["label"]]  # the box's own pixels
        assert r["path"].startswith(r["label"] + "/") and r["patient_id"] == r["source"]
    clipped = next(r for r in rows if r["source"] == "img_b.png" and r["label"] == "WBC")
    assert [int(clipped[k]) for k in ("x0", "x1")] == [50, W]

    # csv: loads the manifest directly, patient ids included (crops of one smear stay one patient)
    ds = load_csv(out / "manifest.csv", image_size=16)
    assert ds.class_names == ["Platelets", "RBC", "WBC"] and list(ds.class_counts()) == [1, 3, 3]
    assert sorted(set(ds.patient_ids)) == ["img_a.png", "img_b.png", "img_c.png"]
    wbc = ds.images[ds.labels == 2][:, 8, 8, 0]
    assert set(wbc.tolist()) == {100, 110, 120}
    wbc_only = crop_boxes(ann, img_dir, tmp_path / "wbc", classes=["WBC"])["manifest"]
    splits = load_dataset(DataConfig(dataset=f"csv:{wbc_only}", image_size=16, split="random",
                                     val_fraction=0.34, test_fraction=0.34))
    assert len(splits.train) == len(splits.val) == len(splits.test) == 1
    patients = [set(getattr(splits, s).patient_ids) for s in ("train", "val", "test")]
    assert all(not (patients[i] & patients[j]) for i in range(3) for j in range(i + 1, 3))


def test_crops_classes_pad_square(tmp_path):
    ann, img_dir = write_smears(tmp_path)
    rep = crop_boxes(ann, img_dir, tmp_path / "o", classes=["WBC", "Platelets"], pad=0.25, square=True)
    assert rep["written"] == {"WBC": 3, "Platelets": 2}  # tiny platelet kept: no --min-size
    assert rep["skipped"]["other_class"] == 4 and rep["other_class"] == {"RBC": 4}
    assert rep["skipped"]["outside"] == 1 and rep["skipped"]["empty"] == 0  # the empty box is an RBC
    rows = read_manifest(tmp_path / "o" / "manifest.csv")
    assert {r["label"] for r in rows} == {"WBC", "Platelets"}
    a_wbc = next(r for r in rows if r["source"] == "img_a.png" and r["label"] == "WBC")
    crop = np.asarray(Image.open(tmp_path / "o" / a_wbc["path"]))
    # 20x30 box, 25% pad per side -> 30x45, square -> 45x45 around the box centre (40, 25)
    assert crop.shape == (45, 45, 3)
    assert crop[22, 22, 0] == 100 and crop[0, 0, 0] == BACKGROUND


def test_crops_refusals(tmp_path):
    ann, img_dir = write_smears(tmp_path)
    with pytest.raises(DataError, match=r"\['Monocyte'\] from --classes have no box.*names found: \['Platelets', "
                                        r"'RBC', 'WBC'\]"):
        crop_boxes(ann, img_dir, tmp_path / "o1", classes=["WBC", "Monocyte"])
    (img_dir / "img_c.png").unlink()
    with pytest.raises(DataError, match=r"img_c\.xml object 1 names img_c\.png, which is not in --images"):
        crop_boxes(ann, img_dir, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()  # checked before anything is written
    # img_c's boxes are all Platelets/WBC: keeping only RBC needs no img_c.png
    assert crop_boxes(ann, img_dir, tmp_path / "o3", classes=["RBC"])["written"] == {"RBC": 3}
    with pytest.raises(DataError, match="is not an empty folder"):
        crop_boxes(ann, img_dir, tmp_path / "o3", classes=["RBC"])
    with pytest.raises(DataError, match="pad = -0.1"):
        crop_boxes(ann, img_dir, tmp_path / "o4", pad=-0.1)


def test_crops_class_with_every_box_skipped(tmp_path):
    ann, img_dir = write_smears(tmp_path)
    with pytest.warns(UserWarning, match=r"\['Platelets'\] got no crop"):  # 10x10 and 3x4 platelets < 12 px
        rep = crop_boxes(ann, img_dir, tmp_path / "o5", classes=["WBC", "Platelets"], min_size=12)
    assert rep["written"] == {"WBC": 3, "Platelets": 0} and rep["skipped"]["too_small"] == 2
    with pytest.raises(DataError, match=r"no crop written .* all skipped \(7 name not in --classes, 1 wholly outside"):
        crop_boxes(ann, img_dir, tmp_path / "o6", classes=["Platelets"], min_size=12)


def test_crops_voc_size_mismatch(tmp_path):
    ann, img_dir = write_smears(tmp_path, sizes={"img_b.png": (160, 120)})
    with pytest.raises(DataError, match=r"img_b\.xml says img_b\.png is 160x120 but .* is 80x60"):
        crop_boxes(ann, img_dir, tmp_path / "o")


def test_crops_from_box_csv_with_patient_column(tmp_path):
    _, img_dir = write_smears(tmp_path)
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("image,label,x0,y0,x1,y1,subject\n"
                     "img_a.png,WBC,30,10,50,40,p1\nimg_b.png,WBC,50,20,90,50,p1\nimg_c.png,WBC,10,10,30,30,p2\n"
                     "img_a.png,RBC,5,5,20,20,p1\n")
    rep = crop_boxes(boxes, img_dir, tmp_path / "o", patient_column="subject")
    assert rep["written"] == {"RBC": 1, "WBC": 3}
    ds = load_csv(tmp_path / "o" / "manifest.csv", image_size=16)
    assert sorted(ds.patient_ids.tolist()) == ["p1", "p1", "p1", "p2"]
    with pytest.raises(DataError, match="patient column 'patient' not found"):
        crop_boxes(boxes, img_dir, tmp_path / "o5", patient_column="patient")
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("image,x0,y0,x1,y1\nimg_a.png,1,1,5,5\n")
    with pytest.raises(DataError, match="no label column"):
        crop_boxes(nolabel, img_dir, tmp_path / "o6")


def test_cli_data_crops(tmp_path, capsys):
    ann, img_dir = write_smears(tmp_path)
    out = tmp_path / "o"
    assert main(["data", "crops", "--boxes", str(ann), "--images", str(img_dir), "--to", str(out),
                 "--classes", "WBC,Platelets", "--min-size", "4"]) == 0
    text = capsys.readouterr().out
    assert "  WBC: 3" in text and "  Platelets: 1" in text
    assert "4 name not in --classes (RBC=4)" in text and "1 wholly outside its image" in text
    assert "1 short side under --min-size" in text and "clipped to the image border (kept): 1" in text
    assert read_manifest(out / "manifest.csv")
    code = main(["data", "crops", "--boxes", str(ann), "--images", str(img_dir), "--to", str(tmp_path / "p"),
                 "--classes", "WBC,wbc"])
    assert code == 2 and "error: class(es) ['wbc'] from --classes have no box" in capsys.readouterr().err
    (img_dir / "img_a.png").unlink()
    code = main(["data", "crops", "--boxes", str(ann), "--images", str(img_dir), "--to", str(tmp_path / "q")])
    assert code == 2 and "img_a.png, which is not in --images" in capsys.readouterr().err


# --------------------------------------------------------------------------- data.roi: boxes: (one crop per image)


def smear_folder(tmp_path, names=("img_a.png", "img_b.png")):
    """Class folder dataset holding some of the smears, as a user who labelled every image 'WBC' would."""
    ann, img_dir = write_smears(tmp_path)
    (tmp_path / "ds" / "WBC").mkdir(parents=True)
    for n in names:
        (tmp_path / "ds" / "WBC" / n).write_bytes((img_dir / n).read_bytes())
    return ann, tmp_path / "ds"


def test_roi_refuses_several_names_and_takes_the_named_class(tmp_path):
    ann, ds_dir = smear_folder(tmp_path)
    with pytest.raises(DataError, match=r"img_a\.png: its boxes carry several names \['Platelets', 'RBC', 'WBC'\]; "
                                        r"set data\.roi_class"):
        load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{ann}"))
    ds = load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{ann}", roi_class="WBC"))
    assert ds.images[:, 8, 8, 0].tolist() == [100, 110]  # the white cells, not the first (red) box
    assert ds.meta["roi"]["roi_class"] == "WBC" and ds.meta["roi"]["largest_of_several"] == []
    with pytest.raises(DataError, match=r"data\.roi_class = 'Monocyte': no box .* names found: \['Platelets'"):
        make_roi_fn(f"boxes:{ann}", roi_class="Monocyte")
    with pytest.raises(DataError, match=r"data\.roi_class is set but data\.roi = 'auto'"):
        make_roi_fn("auto", roi_class="WBC")
    with pytest.raises(DataError, match="roi_multiple = 'biggest'"):
        make_roi_fn(f"boxes:{ann}", multiple="biggest")


def test_roi_several_boxes_of_the_class_error_or_largest(tmp_path):
    ann, ds_dir = smear_folder(tmp_path, names=("img_b.png",))
    with pytest.raises(DataError, match=r"img_b\.png: 2 boxes named 'RBC' \(img_b\.xml object 1; img_b\.xml object 2\)"
                                        r".*data\.roi_multiple: largest"):
        load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{ann}", roi_class="RBC"))
    ds = load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{ann}", roi_class="RBC", multiple="largest"))
    assert ds.images[0, 8, 8, 0] == 70  # the 20x20 red cell, not the 15x15 one listed first
    assert len(ds.meta["roi"]["largest_of_several"]) == 1
    # an image whose taken box is empty is refused, naming the box
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("path,label,x0,y0,x1,y1\nimg_b.png,WBC,40,42,40,55\nimg_b.png,RBC,0,0,15,15\n")
    with pytest.raises(DataError, match=r"labelled\.csv row 1 \(line 2\): box \(40, 42, 40, 55\) for .*img_b\.png is "
                                        r"empty"):
        load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{labelled}", roi_class="WBC"))


def test_roi_through_the_config(tmp_path):
    ann, ds_dir = smear_folder(tmp_path, names=("img_a.png", "img_b.png", "img_c.png"))
    base = dict(dataset=f"folder:{ds_dir}", image_size=16, roi=f"boxes:{ann}", split="random", val_fraction=0.34,
                test_fraction=0.34)
    with pytest.raises(DataError, match="several names"):
        load_dataset(DataConfig(**base))
    splits = load_dataset(DataConfig(**base, roi_class="WBC"))
    crops = np.concatenate([d.images for d in (splits.train, splits.val, splits.test)])
    assert sorted(crops[:, 8, 8, 0].tolist()) == [100, 110, 120]
    assert any("boxes named 'WBC'" in step for step in splits.train.meta["steps"])
    with pytest.raises(DataError, match=r"data\.roi_multiple is set but data\.roi = 'none'"):
        load_dataset(DataConfig(dataset="embryo", embryo_per_class=[4, 4, 4], roi_multiple="largest"))


def test_roi_box_csv_duplicate_rows_and_outside(tmp_path):
    _, ds_dir = smear_folder(tmp_path, names=("img_b.png",))
    boxes = tmp_path / "boxes.csv"
    boxes.write_text("path,x0,y0,x1,y1\nimg_b.png,0,0,15,15\nimg_b.png,20,20,40,40\n")
    with pytest.raises(DataError, match=r"img_b\.png: 2 boxes \(boxes\.csv row 1 \(line 2\); boxes\.csv row 2 "
                                        r"\(line 3\)\)"):
        load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{boxes}"))
    ds = load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{boxes}", multiple="largest"))
    assert ds.images[0, 8, 8, 0] == 70
    outside = tmp_path / "outside.csv"
    outside.write_text("path,x0,y0,x1,y1\nimg_b.png,100,100,120,120\n")
    with pytest.raises(DataError, match=r"outside\.csv row 1 \(line 2\): box \(100, 100, 120, 120\) lies outside"):
        load_folder(ds_dir, image_size=16, roi_fn=make_roi_fn(f"boxes:{outside}"))
    with pytest.raises(DataError, match="has no label column"):
        make_roi_fn(f"boxes:{boxes}", roi_class="WBC")


def test_read_box_table_keeps_every_box(tmp_path):
    ann, _ = write_smears(tmp_path)
    table = read_box_table(ann)
    assert len(table.records) == 10 and table.names() == ["Platelets", "RBC", "WBC"]
    assert [r.label for r in table.by_image()["img_a.png"]] == ["RBC", "WBC", "Platelets", "RBC"]
    assert table.records[3].empty and table.no_boxes == ["img_d.xml"]
