"""Write an image set to disk so it can be read back as a dataset, and read it back.

Layout of an exported folder::

    images.npz        uint8 images, labels, class names, synthetic flag (exact, fast to reload); masks,
                      mask class names and captions when the set has them
    manifest.csv      path,label[,mask_path]  (loadable with `synthmed.data.load_csv` / `csv:` datasets)
    <class>/000000.png
    masks/<class>/000000.png  a mask-conditional set's masks, grey value k = mask class k (0 = background)
    info.json         provenance (generator, sampler, seed, training-data fingerprint, ...)
    card.md/.json     data card of a synthetic set: what it is, how it was made, how it scored, what it is
                      not for (:mod:`synthmed.data.card`)
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from synthmed.data.card import describe_set, write_data_card
from synthmed.data.dataset import DataError, ImageDataset


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def save_image_set(ds: ImageDataset, folder: str | Path, *, png: bool = True) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extra = {}
    if ds.masks is not None:  # a mask-conditional set keeps the masks it was generated from
        extra.update(masks=ds.masks, mask_class_names=np.asarray(ds.mask_class_names, dtype=str))
    if ds.captions is not None:
        extra["captions"] = np.asarray(ds.captions, dtype=str)
    np.savez_compressed(
        folder / "images.npz",
        images=ds.images,
        labels=ds.labels,
        class_names=np.asarray(ds.class_names),
        synthetic=np.asarray(ds.synthetic),
        **extra,
    )
    if png:
        dirs = {c: _safe_name(name) for c, name in enumerate(ds.class_names)}
        rows = []
        for i, (img, lab) in enumerate(zip(ds.images, ds.labels)):
            rel = f"{dirs[int(lab)]}/{i:06d}.png"
            (folder / dirs[int(lab)]).mkdir(exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / rel)
            row = [rel, ds.class_names[int(lab)]]
            if ds.masks is not None:  # grey value k = mask class k (0 background): csv: reads it back as is
                mask_rel = f"masks/{rel}"
                (folder / "masks" / dirs[int(lab)]).mkdir(parents=True, exist_ok=True)
                Image.fromarray(ds.masks[i]).save(folder / mask_rel)
                row.append(mask_rel)
            rows.append(row)
        with open(folder / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"] + (["mask_path"] if ds.masks is not None else []))
            w.writerows(rows)
    # the set's own counts last: meta read back from a parent set's info.json carries the parent's
    info = {**ds.meta, "name": ds.name, "num_images": len(ds), "synthetic": ds.synthetic,
            "class_counts": dict(zip(ds.class_names, ds.class_counts()))}
    (folder / "info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if ds.synthetic:
        # a fresh card: an evaluation in a card left from earlier images in this folder does not carry over
        files = ["images.npz", "info.json"] + (["manifest.csv", "<class>/*.png"] if png else []) + (
            ["masks/<class>/*.png"] if png and ds.masks is not None else [])
        write_data_card(folder, ds.meta, set_info=describe_set(ds, files))
    return folder


def load_image_set(folder: str | Path) -> ImageDataset:
    folder = Path(folder)
    path = folder / "images.npz" if folder.is_dir() else folder
    if not path.is_file():
        raise DataError(f"no exported image set at {path}; expected a folder written by `synthmed sample`")
    with np.load(path, allow_pickle=False) as z:
        has_masks = "masks" in z.files
        ds = ImageDataset(z["images"], z["labels"], [str(c) for c in z["class_names"]],
                          name=path.parent.name, synthetic=bool(z["synthetic"]),
                          masks=z["masks"] if has_masks else None,
                          mask_class_names=[str(c) for c in z["mask_class_names"]] if has_masks else None,
                          captions=[str(c) for c in z["captions"]] if "captions" in z.files else None)
    info = path.parent / "info.json"
    if info.is_file():
        ds.meta = json.loads(info.read_text())
    return ds


def align_classes(ds: ImageDataset, class_names: list[str], *, where: str) -> ImageDataset:
    """``ds`` relabelled to ``class_names`` (their order), matching each of its class names to the
    exact name or to the file-safe folder name :func:`save_image_set` writes (``normal, benign`` is
    the folder ``normal_benign``), so a folder of synthmed's own samples read through ``folder:``
    lines up with the real data again. Anything else that does not match is a DataError saying how
    to fix it; nothing is matched by guesswork."""
    class_names = [str(c) for c in class_names]
    if ds.class_names == class_names:
        return ds
    safe: dict[str, list[str]] = {}
    for name in class_names:
        safe.setdefault(_safe_name(name), []).append(name)
    mapped, unmatched, ambiguous = [], [], []
    for name in ds.class_names:
        if name in class_names:
            mapped.append(name)
        elif len(safe.get(name, [])) == 1:
            mapped.append(safe[name][0])
        else:
            (ambiguous if safe.get(name) else unmatched).append(name)
            mapped.append(None)
    fix = (f"rename the class folders to the real class names {class_names} (or their folder-safe forms "
           f"{[_safe_name(c) for c in class_names]}), or pass csv:MANIFEST with a label column of the real names "
           "(synthmed sample writes one: manifest.csv)")
    if unmatched or ambiguous:
        what = f"class(es) {unmatched} match no class of the real data {class_names}" if unmatched else \
            f"class(es) {ambiguous} match several real classes {[safe[a] for a in ambiguous]}"
        raise DataError(f"{where}: {what} -- {fix}")
    missing = [c for c in class_names if c not in mapped]
    twice = sorted({m for m in mapped if mapped.count(m) > 1})
    if missing or twice:
        what = f"has no class for the real class(es) {missing}" if missing else \
            f"has several classes that stand for {twice}"
        raise DataError(f"{where}: the synthetic set {what} (its classes: {ds.class_names}) -- {fix}")
    remap = np.array([class_names.index(m) for m in mapped], dtype=np.int64)
    return replace(ds, labels=remap[ds.labels], class_names=class_names)
