"""Region-of-interest cropping and the square-resize geometry shared by all loaders.

Medical photographs often show a small object (an oocyte, an embryo, a cell) in a large
field of view. Cropping it at full resolution *before* resizing keeps the detail that a
32 or 64 pixel generator can learn from (``blastdiffusion`` crops 3000x2000 to 1500x1500).

Boxes are ``(x0, y0, x1, y1)`` in pixels, x to the right, y down, ``x1``/``y1`` exclusive.
"""

from __future__ import annotations

import csv
import warnings
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image
from .dataset import DataError, ImageDataset

Box = tuple[int, int, int, int]


# --------------------------------------------------------------------------- geometry


def center_crop_square(img: np.ndarray) -> np.ndarray:
    """Largest centred square of an (H, W[, C]) array."""
    h, w = img.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return img[y0:y0 + side, x0:x0 + side]


def resize_square(img: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """Centre-crop to a square, then resize to ``size`` x ``size``.

    Bilinear for images (Pillow widens the filter when shrinking, i.e. it is antialiased, so
    a 1500 px crop brought to 32 px does not alias); nearest neighbour for label masks, whose
    values are class ids that must not be blended.
    """
    img = center_crop_square(img)
    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    squeeze = img.ndim == 3 and img.shape[2] == 1
    pil = Image.fromarray(img[..., 0] if squeeze else img)
    out = np.asarray(pil.resize((size, size), Image.NEAREST if nearest else Image.BILINEAR))
    return out[..., None] if squeeze else out


def crop_box(img: np.ndarray, box, square: bool = True, margin: float = 0.0) -> np.ndarray:
    """Crop ``box`` (x0, y0, x1, y1) from an (H, W[, C]) image.

    ``margin`` widens the box by that fraction of its size on every side. With ``square`` the
    short side is widened to the long one around the box centre. A window that runs past the
    border is shifted back inside rather than padded (padding would add artificial black
    edges the generator would learn); if it is larger than the image it is capped at the
    image's short side, so the result is still square.
    """
    h, w = img.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    if not (x1 > x0 and y1 > y0):
        raise DataError(f"box {tuple(box)} is empty: need x1 > x0 and y1 > y0")
    bw, bh = (x1 - x0) * (1 + 2 * margin), (y1 - y0) * (1 + 2 * margin)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if square:
        bw = bh = min(max(bw, bh), float(min(h, w)))
    bw, bh = min(bw, float(w)), min(bh, float(h))
    nx0 = int(round(min(max(cx - bw / 2, 0.0), w - bw)))
    ny0 = int(round(min(max(cy - bh / 2, 0.0), h - bh)))
    nw, nh = max(1, int(round(bw))), max(1, int(round(bh)))
    return img[ny0:ny0 + nh, nx0:nx0 + nw]


# --------------------------------------------------------------------------- automatic crop


def otsu_threshold(grey: np.ndarray) -> float:
    """Otsu's threshold on a 256-bin histogram: the cut maximising between-class variance."""
    lo, hi = float(grey.min()), float(grey.max())
    if hi <= lo:
        return lo
    hist, edges = np.histogram(grey, bins=256, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centres)
    m0 = s0 / np.maximum(w0, 1)
    m1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (m0 - m1) ** 2
    return float(centres[int(np.argmax(between))])


def round_object_box(img: np.ndarray) -> Box | None:
    """Bounding box of the largest foreground blob, or None when no plausible object is found.

    Classical pipeline (no detector weights are available offline): grey, Gaussian smoothing
    (so texture inside the object does not fragment the mask), Otsu threshold, polarity chosen
    so that the border is background (objects can be brighter or darker than their
    surroundings), hole filling, largest connected component.
    """
    from scipy import ndimage  # lazy: importing scipy costs ~0.3 s for every user of synthmed.data

    grey = img.astype(np.float64)
    if grey.ndim == 3:
        grey = grey.mean(axis=2)
    h, w = grey.shape
    grey = ndimage.gaussian_filter(grey, sigma=max(1.0, min(h, w) / 100))
    mask = grey > otsu_threshold(grey)
    border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
    if border.mean() > 0.5:
        mask = ~mask
    mask = ndimage.binary_fill_holes(mask)
    labels, n = ndimage.label(mask)
    if n == 0:
        return None
    areas = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    best = int(np.argmax(areas)) + 1
    # A blob covering almost nothing or almost everything is noise or background, not an object.
    if not 0.002 * h * w <= areas[best - 1] <= 0.95 * h * w:
        return None
    sl = ndimage.find_objects((labels == best).astype(np.int32))[0]
    return sl[1].start, sl[0].start, sl[1].stop, sl[0].stop


def auto_crop_round_object(img: np.ndarray, margin: float = 0.1) -> np.ndarray:
    """Square crop around the one round object in the image (with ``margin``).

    Falls back to the full image, with a warning, when no object is found.
    """
    box = round_object_box(img)
    if box is None:
        warnings.warn("auto ROI crop: no object found; using the full image", stacklevel=2)
        return img
    return crop_box(img, box, square=True, margin=margin)


def apply_auto_crop(ds: ImageDataset, out_size: int, margin: float = 0.1) -> ImageDataset:
    """Auto-crop every image of an in-memory dataset and resize the crops to ``out_size``.

    Masks get the same crop (nearest-neighbour resize). Images where no object is found keep
    the full frame; how many is recorded in ``meta["roi"]`` and warned about once.
    """
    images, masks, fallbacks = [], [], []
    for i, img in enumerate(ds.images):
        box = round_object_box(img)
        if box is None:
            fallbacks.append(ds.paths[i] if ds.paths else int(i))
            box = (0, 0, img.shape[1], img.shape[0])  # with the margin this becomes the centred square
        images.append(resize_square(crop_box(img, box, margin=margin), out_size))
        if ds.masks is not None:
            masks.append(resize_square(crop_box(ds.masks[i], box, margin=margin), out_size, nearest=True))
    if fallbacks:
        warnings.warn(
            f"{ds.name}: auto ROI crop found no object in {len(fallbacks)} of {len(ds)} images; "
            "those keep the full frame (listed in meta['roi']['fallbacks'])",
            stacklevel=2,
        )
    empty = np.zeros((0, out_size, out_size, ds.channels), np.uint8)
    return replace(
        ds,
        images=np.stack(images) if images else empty,
        masks=np.stack(masks) if masks else None,
        meta={**ds.meta, "roi": {"method": "auto", "margin": margin, "fallbacks": fallbacks}},
    )


# --------------------------------------------------------------------------- box files


def load_boxes_csv(path) -> dict[str, Box]:
    """Boxes from a CSV with columns ``path,x0,y0,x1,y1`` or ``filename,xmin,ymin,xmax,ymax``."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        for key, coords in (("path", ("x0", "y0", "x1", "y1")), ("filename", ("xmin", "ymin", "xmax", "ymax"))):
            if key in cols and all(c in cols for c in coords):
                break
        else:
            raise DataError(
                f"{path}: box CSV needs columns path,x0,y0,x1,y1 or filename,xmin,ymin,xmax,ymax; found {cols}"
            )
        boxes: dict[str, Box] = {}
        for row_no, row in enumerate(reader, start=1):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
            try:
                box = tuple(int(round(float(row[c]))) for c in coords)
            except ValueError:
                raise DataError(f"{path}: row {row_no}: box coordinates must be numbers, got "
                                f"{[row[c] for c in coords]}") from None
            if not (box[2] > box[0] and box[3] > box[1]):
                raise DataError(f"{path}: row {row_no}: box {box} is empty (need x1 > x0 and y1 > y0)")
            boxes[row[key]] = box
    return boxes


def load_voc_boxes(folder) -> dict[str, Box]:
    """Boxes from Pascal VOC XML files in ``folder``: ``<filename>`` and the first ``<bndbox>``.

    Coordinates are used as written (VOC's 1-based convention moves a crop by one pixel at
    most, which does not matter for a crop with margin).
    """
    folder = Path(folder)
    boxes: dict[str, Box] = {}
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise DataError(f"{folder}: no Pascal VOC .xml files found")
    for xml_path in files:
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as e:
            raise DataError(f"{xml_path}: not valid XML ({e})") from None
        name = root.findtext("filename")
        bnd = root.find("object/bndbox")
        if not name or bnd is None:
            raise DataError(f"{xml_path}: needs a <filename> and an <object><bndbox>")
        try:
            box = tuple(int(round(float(bnd.findtext(t)))) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError):
            raise DataError(f"{xml_path}: <bndbox> needs numeric xmin, ymin, xmax, ymax") from None
        boxes[name.strip()] = box
    return boxes


# --------------------------------------------------------------------------- ROI for loaders


class RoiCropper:
    """``callable(path, image) -> cropped image`` used by the file loaders before resizing.

    ``box(path, image)`` gives the crop window so masks can be cut identically; ``report()``
    says what happened (for ``meta["roi"]``).
    """

    def __init__(self, spec: str, boxes: dict[str, Box] | None = None, margin: float = 0.0,
                 boxes_root: Path | None = None):
        self.spec = spec
        self.margin = margin
        self.fallbacks: list[str] = []
        self._by_path: dict[str, Box] = {}
        self._by_name: dict[str, Box] = {}
        if boxes is not None:
            names = [Path(k).name for k in boxes]
            for key, box in boxes.items():
                p = Path(key)
                self._by_path[str((boxes_root / p if boxes_root and not p.is_absolute() else p).resolve())] = box
                # Matching on the bare file name is only safe when names are unique.
                if names.count(p.name) == 1:
                    self._by_name[p.name] = box

    def box(self, path, img: np.ndarray) -> Box:
        h, w = img.shape[:2]
        if self.spec == "auto":
            found = round_object_box(img)
            if found is None:
                self.fallbacks.append(str(path))
                return (0, 0, w, h)
            return found
        p = Path(path)
        box = self._by_path.get(str(p.resolve())) or self._by_name.get(p.name)
        if box is None:
            raise DataError(f"{path}: no box for this image in {self.spec[len('boxes:'):]}; "
                            "add a row for it or remove the image")
        return box

    def __call__(self, path, img: np.ndarray) -> np.ndarray:
        # A full-frame fallback box with a margin still yields the centred square, as intended.
        return crop_box(img, self.box(path, img), square=True, margin=self.margin)

    def report(self) -> dict:
        return {"spec": self.spec, "margin": self.margin, "fallbacks": list(self.fallbacks)}


def make_roi_fn(spec: str | None) -> RoiCropper | None:
    """``"none"`` -> None, ``"auto"`` -> round-object crop, ``"boxes:PATH"`` -> CSV file or VOC folder."""
    if spec in (None, "", "none"):
        return None
    if spec == "auto":
        return RoiCropper("auto", margin=0.1)
    if spec.startswith("boxes:"):
        path = Path(spec[len("boxes:"):]).expanduser()
        if path.is_dir():
            return RoiCropper(spec, load_voc_boxes(path), boxes_root=path)
        if path.is_file():
            return RoiCropper(spec, load_boxes_csv(path), boxes_root=path.parent)
        raise DataError(f"roi: {path} not found (give a box CSV file or a folder of Pascal VOC .xml files)")
    raise DataError(f"roi = {spec!r}; use 'none', 'auto' or 'boxes:PATH' (CSV file or VOC folder)")
