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
from dataclasses import dataclass, field, replace
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

BOX_CSV_COLUMNS = "image,label,x0,y0,x1,y1[,patient_id]"
_IMAGE_COLUMNS = ("image", "path", "filename")
_LABEL_COLUMNS = ("label", "class")
_COORD_COLUMNS = (("x0", "y0", "x1", "y1"), ("xmin", "ymin", "xmax", "ymax"))
ROI_MULTIPLE = ("error", "largest")


@dataclass(frozen=True)
class BoxRecord:
    """One box of a box file: which image, which name, where it was written.

    ``box`` is as written, rounded to whole pixels; it may be empty or lie outside the image
    (readers keep such boxes so the crop step can count them instead of losing them).
    """

    image: str  #: image as the box file names it (path relative to the images folder, or bare name)
    label: str | None  #: the box's class name; None when the box file has no names
    box: Box
    where: str  #: "boxes.csv row 3 (line 4)" / "img1.xml object 2", for messages
    patient: str | None = None  #: patient id from the CSV's patient column, if any
    declared_size: tuple[int, int] | None = None  #: (width, height) a VOC file states for its image

    @property
    def empty(self) -> bool:
        x0, y0, x1, y1 = self.box
        return not (x1 > x0 and y1 > y0)


@dataclass
class BoxTable:
    """Every box of a CSV file or VOC folder, in file order."""

    source: Path
    records: list[BoxRecord]
    #: VOC files that name an image but hold no <object> (images without boxes)
    no_boxes: list[str] = field(default_factory=list)
    #: whether the boxes carry class names (VOC always; CSV with a label column)
    has_labels: bool = True

    def by_image(self) -> dict[str, list[BoxRecord]]:
        groups: dict[str, list[BoxRecord]] = {}
        for r in self.records:
            groups.setdefault(r.image, []).append(r)
        return groups

    def names(self) -> list[str]:
        return sorted({r.label for r in self.records if r.label is not None})


def _one_column(path: Path, cols: list[str], options, role: str) -> str | None:
    present = [c for c in options if c in cols]
    if len(present) > 1:
        raise DataError(f"{path}: columns {present} both could be the {role} column; keep one "
                        f"(expected {BOX_CSV_COLUMNS})")
    return present[0] if present else None


def _read_box_csv(path: Path, patient_column: str | None = None) -> BoxTable:
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: drop the BOM Excel writes
        reader = csv.DictReader(f)
        cols = [c.strip() for c in (reader.fieldnames or [])]
        image_col = _one_column(path, cols, _IMAGE_COLUMNS, "image")
        label_col = _one_column(path, cols, _LABEL_COLUMNS, "label")
        coords = next((c for c in _COORD_COLUMNS if all(k in cols for k in c)), None)
        if image_col is None or coords is None:
            raise DataError(
                f"{path}: box CSV needs columns {BOX_CSV_COLUMNS} (the image column may be called image, path or "
                "filename; coordinates x0,y0,x1,y1 or xmin,ymin,xmax,ymax, in pixels, x1/y1 exclusive; label is "
                f"needed for per-box classes); found {cols}")
        if patient_column is not None and patient_column not in cols:
            raise DataError(f"{path}: patient column {patient_column!r} not found; columns are {cols}")
        patient_col = patient_column or ("patient_id" if "patient_id" in cols else None)
        records = []
        for row_no, row in enumerate(reader, start=1):
            row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
            if not any(row.values()):
                continue  # blank line
            where = f"{path.name} row {row_no} (line {row_no + 1})"
            if not row.get(image_col):
                raise DataError(f"{where}: empty {image_col}")
            try:
                box = tuple(int(round(float(row[c]))) for c in coords)
            except (TypeError, ValueError):
                raise DataError(f"{where}: box coordinates must be numbers, got "
                                f"{[row.get(c) for c in coords]}") from None
            label = None
            if label_col is not None:
                label = row.get(label_col) or None
                if label is None:
                    raise DataError(f"{where}: empty {label_col}; give every box a name or drop the column")
            patient = None
            if patient_col is not None:
                patient = row.get(patient_col) or None
                if patient is None:
                    raise DataError(f"{where}: empty {patient_col}; give every row one or drop the column")
            records.append(BoxRecord(row[image_col], label, box, where, patient))
    return BoxTable(path, records, has_labels=label_col is not None)


def _read_voc_folder(folder: Path) -> BoxTable:
    files = sorted(folder.glob("*.xml"))
    if not files:
        raise DataError(f"{folder}: no Pascal VOC .xml files found")
    records: list[BoxRecord] = []
    no_boxes: list[str] = []
    file_of: dict[str, str] = {}
    for xml_path in files:
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as e:
            raise DataError(f"{xml_path}: not valid XML ({e})") from None
        name = (root.findtext("filename") or "").strip()
        if not name:
            raise DataError(f"{xml_path}: needs a <filename> naming its image")
        if name in file_of:
            raise DataError(f"{xml_path} and {file_of[name]} both annotate {name}; merge them or remove one")
        file_of[name] = xml_path.name
        size = None
        try:
            w, h = int(float(root.findtext("size/width") or 0)), int(float(root.findtext("size/height") or 0))
            size = (w, h) if w > 0 and h > 0 else None
        except ValueError:
            size = None  # a malformed <size> is not used; the image itself gives the size
        objects = root.findall("object")
        if not objects:
            no_boxes.append(xml_path.name)
        for k, obj in enumerate(objects, start=1):
            where = f"{xml_path.name} object {k}"
            bnd = obj.find("bndbox")
            if bnd is None:
                raise DataError(f"{where}: needs a <bndbox>")
            try:
                box = tuple(int(round(float(bnd.findtext(t)))) for t in ("xmin", "ymin", "xmax", "ymax"))
            except (TypeError, ValueError):
                raise DataError(f"{where}: <bndbox> needs numeric xmin, ymin, xmax, ymax") from None
            label = (obj.findtext("name") or "").strip() or None
            records.append(BoxRecord(name, label, box, where, declared_size=size))
    return BoxTable(folder, records, no_boxes=no_boxes, has_labels=True)


def read_box_table(path, patient_column: str | None = None) -> BoxTable:
    """Every box of a box CSV file or a folder of Pascal VOC ``.xml`` files.

    CSV: header ``image,label,x0,y0,x1,y1[,patient_id]`` (``path``/``filename`` for the image,
    ``class`` for the label and ``xmin,ymin,xmax,ymax`` for the coordinates also work; label
    optional). VOC: every ``<object>`` of every file, named by its ``<name>``. Coordinates are
    used as written (VOC's 1-based convention moves a crop by one pixel at most).
    ``patient_column`` names a CSV column holding patient ids (default ``patient_id`` if present).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if patient_column is not None:
            raise DataError(f"{path}: a patient column needs a box CSV; VOC folders have none "
                            "(each crop's patient id is then its source image)")
        return _read_voc_folder(path)
    if path.is_file():
        return _read_box_csv(path, patient_column)
    raise DataError(f"{path} not found (give a box CSV file or a folder of Pascal VOC .xml files)")


def clip_box(box: Box, width: int, height: int) -> Box:
    x0, y0, x1, y1 = box
    return max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)


def _area(box: Box) -> int:
    x0, y0, x1, y1 = box
    return max(0, x1 - x0) * max(0, y1 - y0)


def select_roi_box(image: str, records: list[BoxRecord], *, roi_class: str | None = None, multiple: str = "error",
                   image_wh: tuple[int, int] | None = None) -> BoxRecord:
    """The one box of ``image`` that ``data.roi: boxes:`` crops.

    Boxes with several names need ``roi_class`` (which name to take); several boxes of the
    taken name need ``multiple="largest"`` (the largest area, inside the image when
    ``image_wh`` is given; the first of equals), else they are an error naming each box.
    """
    if multiple not in ROI_MULTIPLE:
        raise DataError(f"roi_multiple = {multiple!r}; use 'error' or 'largest'")
    names = sorted({r.label or "(unnamed)" for r in records})
    if roi_class is None:
        if len(names) > 1:
            raise DataError(
                f"{image}: its boxes carry several names {names}; set data.roi_class to the name to crop "
                "(or make one crop per box with `synthmed data crops`)")
        candidates = list(records)
    else:
        candidates = [r for r in records if r.label == roi_class]
        if not candidates:
            raise DataError(f"{image}: no box named {roi_class!r} (its boxes are named {names}); remove the image "
                            "from the dataset or set another data.roi_class")
    if len(candidates) > 1 and multiple == "error":
        named = f" named {candidates[0].label!r}" if candidates[0].label is not None else ""
        listed = "; ".join(r.where for r in candidates[:4]) + (
            f"; and {len(candidates) - 4} more" if len(candidates) > 4 else "")
        raise DataError(
            f"{image}: {len(candidates)} boxes{named} ({listed}); keep one box per image, or set "
            "data.roi_multiple: largest to crop the largest")

    def area(r: BoxRecord) -> int:
        return _area(clip_box(r.box, *image_wh) if image_wh else r.box)

    chosen = max(candidates, key=area)  # max keeps the first of equals
    if chosen.empty:
        raise DataError(f"{chosen.where}: box {chosen.box} for {image} is empty (need x1 > x0 and y1 > y0); "
                        "fix or remove it")
    return chosen


def load_boxes_csv(path) -> dict[str, Box]:
    """One box per image from a box CSV (columns as :func:`read_box_table`).

    An empty box, or a second row for the same image, is an error naming the rows (a dict
    cannot hold two boxes for an image, and keeping one of them silently loses the other).
    """
    table = _read_box_csv(Path(path))
    boxes: dict[str, Box] = {}
    first: dict[str, BoxRecord] = {}
    for r in table.records:
        if r.empty:
            raise DataError(f"{r.where}: box {r.box} is empty (need x1 > x0 and y1 > y0)")
        if r.image in first:
            raise DataError(f"{table.source}: {r.image} has two rows: {first[r.image].where} and {r.where}; keep one "
                            "box per image (or use data.roi_class / data.roi_multiple: largest with data.roi)")
        first[r.image] = r
        boxes[r.image] = r.box
    return boxes


def load_voc_boxes(folder, roi_class: str | None = None, multiple: str = "error") -> dict[str, Box]:
    """One box per image from Pascal VOC XML files, chosen as :func:`select_roi_box` says.

    A file whose boxes carry several names needs ``roi_class``; several boxes of one name need
    ``multiple="largest"``. Files with no ``<object>`` give no entry.
    """
    table = _read_voc_folder(Path(folder))
    return {image: select_roi_box(image, recs, roi_class=roi_class, multiple=multiple).box
            for image, recs in table.by_image().items()}


# --------------------------------------------------------------------------- ROI for loaders


class RoiCropper:
    """``callable(path, image) -> cropped image`` used by the file loaders before resizing.

    ``box(path, image)`` gives the crop window so masks can be cut identically; ``report()``
    says what happened (for ``meta["roi"]``). Boxes come either as a ``{image: box}`` dict or
    as a :class:`BoxTable`, from which :func:`select_roi_box` takes one box per image.
    """

    def __init__(self, spec: str, boxes: dict[str, Box] | BoxTable | None = None, margin: float = 0.0,
                 boxes_root: Path | None = None, roi_class: str | None = None, multiple: str = "error"):
        self.spec = spec
        self.margin = margin
        self.roi_class = roi_class
        self.multiple = multiple
        self.fallbacks: list[str] = []
        self.several: list[str] = []  # images where the largest of several boxes was taken
        self._by_path: dict[str, list[BoxRecord]] = {}
        self._by_name: dict[str, list[BoxRecord]] = {}
        if boxes is not None:
            if isinstance(boxes, BoxTable):
                groups = boxes.by_image()
            else:
                groups = {k: [BoxRecord(k, None, tuple(b), k)] for k, b in boxes.items()}
            names = [Path(k).name for k in groups]
            for key, recs in groups.items():
                p = Path(key)
                self._by_path[str((boxes_root / p if boxes_root and not p.is_absolute() else p).resolve())] = recs
                # Matching on the bare file name is only safe when names are unique.
                if names.count(p.name) == 1:
                    self._by_name[p.name] = recs
        self._no_boxes = boxes.no_boxes if isinstance(boxes, BoxTable) else []

    def box(self, path, img: np.ndarray) -> Box:
        h, w = img.shape[:2]
        if self.spec == "auto":
            found = round_object_box(img)
            if found is None:
                self.fallbacks.append(str(path))
                return (0, 0, w, h)
            return found
        p = Path(path)
        recs = self._by_path.get(str(p.resolve())) or self._by_name.get(p.name)
        if recs is None:
            hint = f" ({len(self._no_boxes)} annotation file(s) there hold no <object>)" if self._no_boxes else ""
            raise DataError(f"{path}: no box for this image in {self.spec[len('boxes:'):]}{hint}; "
                            "add a row for it or remove the image")
        chosen = select_roi_box(str(path), recs, roi_class=self.roi_class, multiple=self.multiple, image_wh=(w, h))
        if sum(r.label == chosen.label for r in recs) > 1:
            self.several.append(str(path))
        clipped = clip_box(chosen.box, w, h)
        if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
            raise DataError(f"{chosen.where}: box {chosen.box} lies outside {path} ({w}x{h}); fix the box or the "
                            "image it is matched to")
        return clipped

    def __call__(self, path, img: np.ndarray) -> np.ndarray:
        # A full-frame fallback box with a margin still yields the centred square, as intended.
        return crop_box(img, self.box(path, img), square=True, margin=self.margin)

    def report(self) -> dict:
        out = {"spec": self.spec, "margin": self.margin, "fallbacks": list(self.fallbacks)}
        if self.spec.startswith("boxes:"):
            out.update(roi_class=self.roi_class, multiple=self.multiple, largest_of_several=list(self.several))
        return out


def make_roi_fn(spec: str | None, roi_class: str | None = None, multiple: str = "error") -> RoiCropper | None:
    """``"none"`` -> None, ``"auto"`` -> round-object crop, ``"boxes:PATH"`` -> CSV file or VOC folder.

    ``roi_class`` and ``multiple`` (``data.roi_class`` / ``data.roi_multiple``) say which box
    to take when an image has several (see :func:`select_roi_box`); they only apply to boxes.
    """
    if multiple not in ROI_MULTIPLE:
        raise DataError(f"data.roi_multiple = {multiple!r}; use 'error' or 'largest'")
    if spec in (None, "", "none", "auto") and (roi_class is not None or multiple != "error"):
        key = "data.roi_class" if roi_class is not None else "data.roi_multiple"
        raise DataError(f"{key} is set but data.roi = {spec!r}; it only applies to roi: boxes:PATH -- "
                        "remove it or give a box file")
    if spec in (None, "", "none"):
        return None
    if spec == "auto":
        return RoiCropper("auto", margin=0.1)
    if spec.startswith("boxes:"):
        path = Path(spec[len("boxes:"):]).expanduser()
        if not path.exists():
            raise DataError(f"roi: {path} not found (give a box CSV file or a folder of Pascal VOC .xml files)")
        table = read_box_table(path)
        if roi_class is not None:
            if not table.has_labels:
                raise DataError(f"data.roi_class = {roi_class!r} but {path} has no label column; add one "
                                f"({BOX_CSV_COLUMNS}) or remove data.roi_class")
            if roi_class not in table.names():
                raise DataError(f"data.roi_class = {roi_class!r}: no box in {path} has that name; names found: "
                                f"{table.names()}")
        return RoiCropper(spec, table, boxes_root=path if path.is_dir() else path.parent, roi_class=roi_class,
                          multiple=multiple)
    raise DataError(f"roi = {spec!r}; use 'none', 'auto' or 'boxes:PATH' (CSV file or VOC folder)")
