"""Write an image set to disk so it can be read back as a dataset, and read it back.

Layout of an exported folder::

    images.npz        uint8 images, labels, class names, synthetic flag (exact, fast to reload)
    manifest.csv      path,label  (loadable with `synthmed.data.load_csv` / `csv:` datasets)
    <class>/000000.png
    info.json         provenance (generator, sampler, seed, training-data fingerprint, ...)
    card.md/.json     data card of a synthetic set: what it is, how it was made, how it scored, what it is
                      not for (:mod:`synthmed.data.card`)
"""

from __future__ import annotations

import csv
import json
import re
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
    np.savez_compressed(
        folder / "images.npz",
        images=ds.images,
        labels=ds.labels,
        class_names=np.asarray(ds.class_names),
        synthetic=np.asarray(ds.synthetic),
    )
    if png:
        dirs = {c: _safe_name(name) for c, name in enumerate(ds.class_names)}
        rows = []
        for i, (img, lab) in enumerate(zip(ds.images, ds.labels)):
            rel = f"{dirs[int(lab)]}/{i:06d}.png"
            (folder / dirs[int(lab)]).mkdir(exist_ok=True)
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / rel)
            rows.append((rel, ds.class_names[int(lab)]))
        with open(folder / "manifest.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
    # the set's own counts last: meta read back from a parent set's info.json carries the parent's
    info = {**ds.meta, "name": ds.name, "num_images": len(ds), "synthetic": ds.synthetic,
            "class_counts": dict(zip(ds.class_names, ds.class_counts()))}
    (folder / "info.json").write_text(json.dumps(info, indent=2, default=str) + "\n")
    if ds.synthetic:
        # a fresh card: an evaluation in a card left from earlier images in this folder does not carry over
        files = ["images.npz", "info.json"] + (["manifest.csv", "<class>/*.png"] if png else [])
        write_data_card(folder, ds.meta, set_info=describe_set(ds, files))
    return folder


def load_image_set(folder: str | Path) -> ImageDataset:
    folder = Path(folder)
    path = folder / "images.npz" if folder.is_dir() else folder
    if not path.is_file():
        raise DataError(f"no exported image set at {path}; expected a folder written by `synthmed sample`")
    with np.load(path, allow_pickle=False) as z:
        ds = ImageDataset(z["images"], z["labels"], [str(c) for c in z["class_names"]],
                          name=path.parent.name, synthetic=bool(z["synthetic"]))
    info = path.parent / "info.json"
    if info.is_file():
        ds.meta = json.loads(info.read_text())
    return ds
