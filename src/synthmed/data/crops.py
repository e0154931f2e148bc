"""One crop per box: turn detector or annotation boxes into a labelled image set.

A blood smear annotated in Pascal VOC holds many boxes with different names (RBC, WBC,
Platelets); ``data.roi: boxes:`` takes one box per image, which is not what such a set needs.
:func:`crop_boxes` writes every box as its own image, labelled by the box's name::

    OUT/<class>/<source stem>_<box no>.png   lossless crops
    OUT/manifest.csv                         path,label,patient_id,source,x0,y0,x1,y1 (csv: loadable)
    OUT/crops_report.json                    counts per class, every skipped box and why

The patient id of a crop is its source image (or a patient column of the box CSV), so a
patient-level split never puts two cells of one smear on both sides. No box is lost in
silence: boxes of other names, empty boxes, boxes wholly outside the image and boxes under
``min_size`` are counted per reason and listed; boxes partly outside are clipped and counted.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import DataError
from .export import _safe_name
from .roi import clip_box, crop_box, read_box_table
from .sources import CROP_COLUMNS, read_image

#: why a box gave no crop, in the order the checks run
SKIP_REASONS = {
    "other_class": "name not in --classes",
    "empty": "empty box (x1 <= x0 or y1 <= y0)",
    "outside": "wholly outside its image",
    "too_small": "short side under --min-size after clipping",
}
MANIFEST_COLUMNS = ["path", "label", "patient_id", *CROP_COLUMNS]


def _resolve_image(images_dir: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else images_dir / p


def crop_boxes(boxes, images, out, *, classes: list[str] | None = None, min_size: int = 0, pad: float = 0.0,
               square: bool = False, patient_column: str | None = None) -> dict:
    """Write one crop per box of ``boxes`` (box CSV or VOC folder) from the images in ``images``.

    ``classes`` keeps only boxes with those names (each must occur, to catch typos); ``pad``
    widens every box by that fraction of its size on each side; ``square`` widens the short
    side to the long one (both through :func:`crop_box`, which shifts a window that runs past
    the border back inside instead of padding it); ``min_size`` skips boxes whose short side,
    after clipping to the image, is under that many pixels. ``out`` must be new or empty.
    Returns the report written to ``out/crops_report.json``.
    """
    images_dir, out = Path(images).expanduser(), Path(out).expanduser()
    if not images_dir.is_dir():
        raise DataError(f"--images {images_dir}: folder not found; give the folder holding the annotated images")
    if pad < 0:
        raise DataError(f"pad = {pad}; give a fraction >= 0 (0.1 widens each box by 10% on every side)")
    if min_size < 0:
        raise DataError(f"min_size = {min_size}; give a number of pixels >= 0")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"--to {out} exists and is not an empty folder; choose a new folder (old crops would "
                        "mix with the new ones)")
    table = read_box_table(boxes, patient_column=patient_column)
    if not table.has_labels:
        raise DataError(f"{table.source}: box CSV has no label column; one crop per box needs each box's class "
                        "name (columns image,label,x0,y0,x1,y1[,patient_id])")
    unnamed = [r.where for r in table.records if r.label is None]
    if unnamed:
        raise DataError(f"{unnamed[0]}: box without a <name> ({len(unnamed)} in all); name every box")
    names = table.names()
    if classes is not None:
        classes = [str(c).strip() for c in classes]
        if len(set(classes)) != len(classes) or "" in classes:
            raise DataError(f"classes {classes}: give each class once, without empty names")
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise DataError(f"class(es) {unknown} from --classes have no box in {table.source}; names found: {names}")
    wanted = classes if classes is not None else names
    folders = {c: _safe_name(c) for c in wanted}
    clash = [c for c in wanted if list(folders.values()).count(folders[c]) > 1]
    if clash:
        raise DataError(f"classes {clash} map to the same folder name; rename them in the box file")

    groups = table.by_image()
    # Every image that has a box to crop must exist before anything is written.
    missing = [(img, recs[0].where) for img, recs in groups.items()
               if any(r.label in wanted for r in recs) and not _resolve_image(images_dir, img).is_file()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise DataError(f"{missing[0][1]} names {missing[0][0]}, which is not in --images {images_dir} (looked for "
                        f"{_resolve_image(images_dir, missing[0][0])}){more}; point --images at the image folder")
    patients = {}
    for img, recs in groups.items():
        ids = {r.patient for r in recs}
        if len(ids) > 1:
            raise DataError(f"{img}: rows disagree on the patient id ({sorted(map(str, ids))}); one image belongs "
                            "to one patient")
        patients[img] = recs[0].patient or img

    written = {c: 0 for c in wanted}
    skipped: list[dict] = []
    other: dict[str, int] = {}
    clipped: list[dict] = []
    rows = []
    used_names: set[str] = set()
    rescaled = 0
    for img_name, recs in groups.items():
        todo = [r for r in recs if r.label in wanted]
        for r in recs:
            if r.label not in wanted:
                other[r.label] = other.get(r.label, 0) + 1
        if not todo:
            continue
        path = _resolve_image(images_dir, img_name)
        img, was_rescaled = read_image(path)
        rescaled += was_rescaled
        h, w = img.shape[:2]
        declared = recs[0].declared_size
        if declared is not None and declared != (w, h):
            raise DataError(f"{recs[0].where.rsplit(' object', 1)[0]} says {img_name} is {declared[0]}x{declared[1]} "
                            f"but {path} is {w}x{h}; the boxes would land in the wrong place -- fix <size> or use "
                            "the image the file was made for")
        stem = _safe_name(str(Path(img_name).with_suffix("")))
        if stem in used_names:  # a.jpg and a.png, or sub/a and sub_a: keep the suffix too
            stem = _safe_name(img_name)
        used_names.add(stem)
        for k, r in enumerate(recs, start=1):
            if r.label not in wanted:
                continue
            reason = None
            box = clip_box(r.box, w, h)
            if r.empty:
                reason = "empty"
            elif not (box[2] > box[0] and box[3] > box[1]):
                reason = "outside"
            elif min(box[2] - box[0], box[3] - box[1]) < min_size:
                reason = "too_small"
            if reason:
                skipped.append({"where": r.where, "image": img_name, "label": r.label, "box": list(r.box),
                                "reason": reason})
                continue
            if box != r.box:
                clipped.append({"where": r.where, "image": img_name, "box": list(r.box), "clipped_to": list(box)})
            crop = crop_box(img, box, square=square, margin=pad)
            rel = f"{folders[r.label]}/{stem}_{k:03d}.png"
            (out / folders[r.label]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop[..., 0] if crop.shape[-1] == 1 else np.ascontiguousarray(crop)).save(out / rel)
            rows.append([rel, r.label, patients[img_name], img_name, *box])
            written[r.label] += 1

    by_reason = {reason: sum(s["reason"] == reason for s in skipped) for reason in SKIP_REASONS}
    by_reason["other_class"] = sum(other.values())
    report = {
        "boxes": str(table.source),
        "images_dir": str(images_dir),
        "options": {"classes": classes, "min_size": min_size, "pad": pad, "square": square,
                    "patient_column": patient_column},
        "boxes_read": len(table.records),
        "images_with_boxes": len(groups),
        "annotations_without_boxes": list(table.no_boxes),
        "written": written,
        "total_written": len(rows),
        "skipped": by_reason,
        "other_class": dict(sorted(other.items())),
        "skipped_boxes": skipped,
        "clipped": clipped,
        "rescaled_high_bit_depth": rescaled,
        "patients": "patient column of the box CSV" if any(r.patient for r in table.records) else "source image",
    }
    if not rows:
        why = ", ".join(f"{n} {SKIP_REASONS[k]}" for k, n in by_reason.items() if n)
        raise DataError(f"no crop written from {table.source}: {len(table.records)} box(es) read, all skipped "
                        f"({why}); check --classes and --min-size")
    absent = [c for c, n in written.items() if n == 0]
    if absent:
        warnings.warn(f"class(es) {absent} got no crop: every box of theirs was skipped (see skipped_boxes in "
                      "crops_report.json); a csv: dataset of these crops will not have them", stacklevel=2)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "manifest.csv", "w", newline="") as f:
        wr = csv.writer(f)
        wr.writerow(MANIFEST_COLUMNS)
        wr.writerows(rows)
    report["manifest"] = str(out / "manifest.csv")
    (out / "crops_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
