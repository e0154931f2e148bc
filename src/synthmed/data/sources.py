"""Loaders that turn the user's files into :class:`ImageDataset` / :class:`DataSplits`.

Sources: a folder per class, a CSV manifest, the official MedMNIST ``.npz`` files, and the
embedded procedural embryo set. Every problem with the data raises :class:`DataError` naming
the file (or row) and the fix; files that are skipped or look suspicious are counted in
``meta`` and warned about, never dropped silently. :func:`load_dataset` is the one entry
point the pipeline uses: it loads, splits and subsets as a :class:`DataConfig` says and
records each step so the report can state exactly which data were used.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..config import DataConfig
from .dataset import DataError, DataSplits, ImageDataset, concat
from .masks import MaskSpec, read_mask
from .roi import apply_auto_crop, crop_box, make_roi_fn, resize_square
from .splits import make_imbalanced, per_class_subset, split_dataset
from .storage import decode_buffer

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
GREY_MODES = {"1", "L", "LA", "La", "I", "F"}  # plus every "I;16..." variant

# --------------------------------------------------------------------------- decoding


def _scale_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Per-image min-max to 0..255 for 16-bit, 32-bit and float images.

    Medical 16-bit files rarely use the full range (12-bit detectors, CT offsets), so a fixed
    division by 257 would leave most of them nearly black; min-max per image uses the whole
    8-bit range for every image. It discards absolute intensity between images, which is
    the usual trade-off for generative models trained on 8-bit data.
    """
    arr = arr.astype(np.float64)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros(arr.shape, np.uint8)
    lo, hi = arr[finite].min(), arr[finite].max()
    arr = np.where(finite, arr, lo)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_image(path) -> tuple[np.ndarray, bool]:
    """Decode one file to uint8 (H, W, C), C = 1 (grey modes) or 3 (everything else).

    Returns the array and whether its intensities were rescaled from a higher bit depth.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)  # camera JPEGs store rotation in EXIF
            mode = im.mode
            if mode.startswith("I") or mode == "F":
                return _scale_to_uint8(np.asarray(im))[..., None], True
            if mode in GREY_MODES:
                return np.asarray(im.convert("L"))[..., None], False
            # palette, RGBA (alpha dropped), CMYK, YCbCr, ... -> RGB
            rgb = im.convert("RGBA").convert("RGB") if mode in ("P", "PA") else im.convert("RGB")
            return np.asarray(rgb), False
    except Exception as e:  # Pillow raises several unrelated types for bad files
        raise DataError(f"{path}: cannot be decoded: {e}; remove or replace it") from None


def _sorted_names(names) -> list[str]:
    """Sorted, numerically when every name is an integer (so '10' comes after '9')."""
    names = sorted(set(names))
    if names and all(n.lstrip("-").isdigit() for n in names):
        return sorted(names, key=int)
    return names


def _to_channels(img: np.ndarray, channels: int) -> np.ndarray:
    if img.shape[-1] == channels:
        return img
    if channels == 1:  # ITU-R 601 luma, as Pillow's "L" conversion
        luma = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.round(luma)[..., None].astype(np.uint8)
    return np.repeat(img, 3, axis=-1)


def _flow_list(names) -> str:
    return "[" + ",".join(names) + "]"


def _hw(img: np.ndarray) -> str:
    return f"{img.shape[1]}x{img.shape[0]}"


# --------------------------------------------------------------------------- file loaders


@dataclass
class _Item:
    path: Path
    label: str
    where: str  # "row 3" / file path, for messages
    patient: str | None = None
    mask: Path | None = None
    caption: str | None = None


def _load_items(items: list[_Item], class_names: list[str], *, name: str, source: str, image_size, channels,
                resize_policy: str, roi_fn, meta: dict, mask_spec: MaskSpec | None = None,
                buffer=None) -> ImageDataset:
    """Decode ``items`` one by one into one (N, H, W, C) array. ``buffer(shape)`` makes that array
    once the first image fixes H, W and C (default: in memory); :func:`synthmed.data.storage.decode_buffer`
    gives a memory-mapped one under ``data.storage: disk``, so decoding holds one image, not the set."""
    if resize_policy not in ("resize", "error"):
        raise DataError(f"resize_policy = {resize_policy!r}; use 'resize' or 'error'")
    if channels not in (None, 1, 3):
        raise DataError(f"channels = {channels!r}; use 1 (grey), 3 (RGB) or None (keep)")
    images, masks = None, []
    first: tuple[np.ndarray, Path] | None = None  # first image (after ROI), for size/channel messages
    seen: dict[str, str] = {}
    duplicates: list[list[str]] = []
    rescaled = 0
    for it in items:
        img, was_rescaled = read_image(it.path)
        rescaled += was_rescaled
        digest = hashlib.sha1(str(img.shape).encode() + img.tobytes()).hexdigest()
        if digest in seen:
            duplicates.append([seen[digest], str(it.path)])
        else:
            seen[digest] = str(it.path)
        mask = read_mask(it.mask, it.path, img.shape[:2], mask_spec) if it.mask is not None else None
        if roi_fn is not None:  # crop at full resolution, before any resize
            if mask is None:
                img = roi_fn(str(it.path), img)
            elif hasattr(roi_fn, "box"):
                box, margin = roi_fn.box(str(it.path), img), getattr(roi_fn, "margin", 0.0)
                img, mask = crop_box(img, box, margin=margin), crop_box(mask, box, margin=margin)
            else:
                raise DataError("masks need an ROI object with a .box(path, image) method (see make_roi_fn)")
        if first is None:
            first = (img, it.path)
        if channels is None and img.shape[-1] != first[0].shape[-1]:
            kinds = {1: "grey", 3: "RGB"}
            raise DataError(
                f"{name}: images mix grey and RGB ({it.path} is {kinds[img.shape[-1]]}, {first[1]} is "
                f"{kinds[first[0].shape[-1]]}); set data.channels: 1 or 3 (channels=1/3) to convert them all"
            )
        if resize_policy == "error" or image_size is None:
            expected = (image_size, image_size) if image_size is not None else first[0].shape[:2]
            if img.shape[:2] != tuple(expected):
                ref = f"{expected[1]}x{expected[0]}" + (
                    " (image_size)" if image_size is not None else f" (the size of {first[1]})")
                fix = ("set resize_policy: resize to centre-crop and resize every image" if image_size is not None
                       else "set image_size so every image is brought to one size")
                raise DataError(f"{it.path} is {_hw(img)}, expected {ref}; {fix}")
        if channels is not None:
            img = _to_channels(img, channels)
        if image_size is not None:
            img = resize_square(img, image_size)
            mask = None if mask is None else resize_square(mask, image_size, nearest=True)
        if images is None:
            images = (buffer or _in_memory)((len(items), *img.shape))
        if img.shape != images.shape[1:]:
            raise DataError(f"{it.path} is {img.shape[1]}x{img.shape[0]}x{img.shape[2]} after resizing, the first "
                            f"image {first[1]} is {images.shape[2]}x{images.shape[1]}x{images.shape[3]}; set "
                            "data.image_size and data.channels so every image is brought to one shape")
        images[len(masks)] = img
        masks.append(mask)
    if duplicates:
        warnings.warn(
            f"{name}: {len(duplicates)} image(s) have exactly the same pixels as another file (kept; listed in "
            f"meta['duplicates']), e.g. {duplicates[0][0]} and {duplicates[0][1]}",
            stacklevel=3,
        )
    has_masks = any(m is not None for m in masks)
    meta = {
        **meta,
        "source": source,
        "duplicates": duplicates,
        "rescaled_high_bit_depth": rescaled,
        "image_size": image_size,
        "resize_policy": resize_policy,
        "channels": channels,
    }
    if roi_fn is not None:
        meta["roi"] = roi_fn.report() if hasattr(roi_fn, "report") else {"spec": "custom"}
        if meta["roi"].get("fallbacks"):
            warnings.warn(
                f"{name}: auto ROI crop found no object in {len(meta['roi']['fallbacks'])} image(s); those keep "
                "the full frame (listed in meta['roi']['fallbacks'])",
                stacklevel=3,
            )
    if images is None:
        images = np.stack([])  # no items: numpy's own error, as before
    return ImageDataset(
        images=images,
        labels=np.array([class_names.index(it.label) for it in items], dtype=np.int64),
        class_names=list(class_names),
        patient_ids=np.array([it.patient for it in items]) if items[0].patient is not None else None,
        masks=np.stack(masks) if has_masks else None,
        mask_class_names=None if mask_spec is None or mask_spec.class_names is None else list(mask_spec.class_names),
        captions=[it.caption for it in items] if items[0].caption is not None else None,
        paths=[str(it.path) for it in items],
        name=name,
        meta=meta,
    )


def _in_memory(shape: tuple) -> np.ndarray:
    return np.empty(shape, np.uint8)


def _warn_skipped(name: str, skipped: list[str]) -> None:
    if skipped:
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warnings.warn(
            f"{name}: skipped {len(skipped)} file(s)/folder(s) that are not images (listed in meta['skipped']): "
            f"{', '.join(skipped[:5])}{more}",
            stacklevel=3,
        )


def load_folder(root, *, image_size: int | None = None, channels: int | None = None, resize_policy: str = "resize",
                classes: list[str] | None = None, roi_fn=None, buffer=None) -> ImageDataset:
    """Images in ``root/<class name>/`` (sub-folders searched too).

    ``buffer(shape)``: the array the images are decoded into (default: in memory; see _load_items).

    Class order is the sorted folder names (numeric when all are integers) unless ``classes``
    gives it. Files without an image suffix, hidden files and folders outside the classes
    are skipped and listed in ``meta["skipped"]``.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; expected {root}/<class name>/<image files>")
    skipped: list[str] = []
    class_dirs = {}
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith("."):
            class_dirs[p.name] = p
        else:
            skipped.append(str(p.relative_to(root)))
    if classes is not None:
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise DataError(f"classes {classes} lists a class twice")
        extra = [n for n in class_dirs if n not in classes]
        if extra:
            raise DataError(
                f"{root}: folder(s) {extra} are not in classes {classes}; add them to data.classes or move them out"
            )
        missing = [c for c in classes if c not in class_dirs]
        if missing:
            raise DataError(f"{root}: class(es) {missing} have no folder; create {root}/<class>/ with images "
                            "or remove them from data.classes")
        class_names = classes
    else:
        class_names = _sorted_names(class_dirs)
    if not class_names:
        raise DataError(f"{root}: no class folders found; expected {root}/<class name>/<image files>")
    items = []
    for cls in class_names:
        files = sorted(f for f in class_dirs[cls].rglob("*") if f.is_file())
        images = [f for f in files if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".")]
        skipped += [str(f.relative_to(root)) for f in files if f.suffix.lower() not in IMAGE_SUFFIXES
                    or f.name.startswith(".")]
        if not images:
            raise DataError(
                f"class folder {class_dirs[cls]} has no images ({', '.join(IMAGE_SUFFIXES)}); add images to it, "
                "or remove the folder (and the class from data.classes)"
            )
        items += [_Item(f, cls, str(f)) for f in images]
    _warn_skipped(root.name, skipped)
    return _load_items(items, class_names, name=root.name, source=f"folder:{root}", image_size=image_size,
                       channels=channels, resize_policy=resize_policy, roi_fn=roi_fn, meta={"skipped": skipped},
                       buffer=buffer)


#: the columns load_csv reads; any other column must be named in ``extra_columns``
CSV_COLUMNS = ("path", "label", "patient_id", "mask_path", "caption")
#: provenance columns `synthmed data crops` writes (source image and box); known, carried, never read as data
CROP_COLUMNS = ("source", "x0", "y0", "x1", "y1")


def load_csv(csv_path, *, image_size: int | None = None, channels: int | None = None, resize_policy: str = "resize",
             classes: list[str] | None = None, roi_fn=None, extra_columns=(),
             mask_spec: MaskSpec | None = None, buffer=None) -> ImageDataset:
    """Images listed in a CSV manifest with header ``path,label[,patient_id][,mask_path][,caption]``.

    Paths are relative to the CSV's folder (absolute paths also work). Labels are class
    names, read as strings. Class order: ``classes`` when given, else the sorted labels.
    ``mask_path`` names each image's label mask (read by :func:`synthmed.data.masks.read_mask`
    as ``mask_spec`` says); ``caption`` gives each image's text (may be empty: unconditional).
    A column that is neither one of these nor in ``extra_columns`` is an error: a misspelt
    ``patient_id`` would otherwise give an image-level split (patients leaking across splits).
    ``buffer(shape)``: the array the images are decoded into (default: in memory; see _load_items).
    """
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: CSV manifest not found")
    base = csv_path.parent
    with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: drop the BOM Excel writes
        rows = list(csv.reader(f))
    if not rows:
        raise DataError(f"{csv_path}: empty file; the first line must be the header "
                        "path,label[,patient_id][,mask_path]")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {missing}; found columns {header}. The first line must be a header "
            "naming path,label[,patient_id][,mask_path]"
        )
    unknown = [c for c in header if c not in CSV_COLUMNS + CROP_COLUMNS and c not in set(extra_columns)]
    if unknown:
        close = {c: difflib.get_close_matches(c, CSV_COLUMNS, n=1) for c in unknown}
        hint = "; ".join(f"did you mean {m[0]!r} instead of {c!r}?" for c, m in close.items() if m)
        raise DataError(
            f"{csv_path}: unknown column(s) {unknown}; synthmed reads {list(CSV_COLUMNS)}"
            f"{' (' + hint + ')' if hint else ''} -- rename the column, or keep a column of your own with "
            f"data.extra_columns: {_flow_list(unknown)} (--set data.extra_columns={_flow_list(unknown)})"
        )
    items: list[_Item] = []
    first_row_of: dict[Path, int] = {}
    for row_no, row in enumerate(rows[1:], start=1):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        where = f"{csv_path}: row {row_no} (line {row_no + 1})"
        if len(row) != len(header):
            raise DataError(f"{where} has {len(row)} fields, the header has {len(header)}")
        rec = dict(zip(header, (cell.strip() for cell in row)))
        if not rec["path"] or not rec["label"]:
            raise DataError(f"{where}: empty path or label")
        path = Path(rec["path"]).expanduser()
        path = path if path.is_absolute() else base / path
        if not path.is_file():
            raise DataError(f"{where}: file not found: {rec['path']} (looked for {path})")
        key = path.resolve()
        if key in first_row_of:
            raise DataError(f"{where}: {rec['path']} is listed twice (also row {first_row_of[key]}); "
                            "each image may appear once")
        first_row_of[key] = row_no
        if classes is not None and rec["label"] not in [str(c) for c in classes]:
            raise DataError(f"{where}: label {rec['label']!r} is not one of classes {list(classes)}")
        patient = mask = None
        if "patient_id" in rec:
            patient = rec["patient_id"]
            if not patient:
                raise DataError(f"{where}: empty patient_id; give every row one or drop the column")
        if "mask_path" in rec:
            if not rec["mask_path"]:
                raise DataError(f"{where}: empty mask_path; give every row a mask or drop the column")
            mask = Path(rec["mask_path"]).expanduser()
            mask = mask if mask.is_absolute() else base / mask
        items.append(_Item(path, rec["label"], where, patient, mask, rec.get("caption")))
    if not items:
        raise DataError(f"{csv_path}: no rows after the header")
    labels = {it.label for it in items}
    if classes is not None:
        class_names = [str(c) for c in classes]
        empty = [c for c in class_names if c not in labels]
        if empty:
            raise DataError(f"{csv_path}: class(es) {empty} from data.classes have no rows; add images or drop them")
    else:
        class_names = _sorted_names(labels)
    return _load_items(items, class_names, name=csv_path.stem, source=f"csv:{csv_path}", image_size=image_size,
                       channels=channels, resize_policy=resize_policy, roi_fn=roi_fn, meta={"skipped": []},
                       mask_spec=mask_spec, buffer=buffer)


# --------------------------------------------------------------------------- MedMNIST

# Label names of the single-label 2D MedMNIST flags, in label order (from medmnist 3.0.2's INFO,
# kept in ../shared/data/medmnist/medmnist_official_info_v3.0.2.json), and the md5 of each file.
MEDMNIST_CLASSES = {
    "pathmnist": ["adipose", "background", "debris", "lymphocytes", "mucus", "smooth muscle", "normal colon mucosa",
                  "cancer-associated stroma", "colorectal adenocarcinoma epithelium"],
    "dermamnist": ["actinic keratoses and intraepithelial carcinoma", "basal cell carcinoma",
                   "benign keratosis-like lesions", "dermatofibroma", "melanoma", "melanocytic nevi",
                   "vascular lesions"],
    "octmnist": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    "pneumoniamnist": ["normal", "pneumonia"],
    "retinamnist": ["0", "1", "2", "3", "4"],
    "breastmnist": ["malignant", "normal, benign"],
    "bloodmnist": ["basophil", "eosinophil", "erythroblast",
                   "immature granulocytes(myelocytes, metamyelocytes and promyelocytes)", "lymphocyte", "monocyte",
                   "neutrophil", "platelet"],
    "tissuemnist": ["Collecting Duct, Connecting Tubule", "Distal Convoluted Tubule", "Glomerular endothelial cells",
                    "Interstitial endothelial cells", "Leukocytes", "Podocytes", "Proximal Tubule Segments",
                    "Thick Ascending Limb"],
    "organamnist": ["bladder", "femur-left", "femur-right", "heart", "kidney-left", "kidney-right", "liver",
                    "lung-left", "lung-right", "pancreas", "spleen"],
}
MEDMNIST_CLASSES["organcmnist"] = MEDMNIST_CLASSES["organsmnist"] = MEDMNIST_CLASSES["organamnist"]

MEDMNIST_MD5 = {
    "pathmnist": {28: "a8b06965200029087d5bd730944a56c1", 64: "55aa9c1e0525abe5a6b9d8343a507616",
                  128: "ac42d08fb904d92c244187169d1fd1d9", 224: "2c51a510bcdc9cf8ddb2af93af1eadec"},
    "dermamnist": {28: "0744692d530f8e62ec473284d019b0c7", 64: "b70a2f5635c6199aeaa28c31d7202e1f",
                   128: "2defd784463fa5243564e855ed717de1", 224: "8974907d8e169bef5f5b96bc506ae45d"},
    "octmnist": {28: "c68d92d5b585d8d81f7112f81e2d0842", 64: "e229e9440236b774d9f0dfef9d07bdaf",
                 128: "0a97e76651ace45c5d943ee3f65b63ae", 224: "abc493b6d529d5de7569faaef2773ba3"},
    "pneumoniamnist": {28: "28209eda62fecd6e6a2d98b1501bb15f", 64: "8f4eceb4ccffa70c672198ea285246c6",
                       128: "05b46931834c231683c68f40c47b2971", 224: "d6a3c71de1b945ea11211b03746c1fe1"},
    "retinamnist": {28: "bd4c0672f1bba3e3a89f0e4e876791e4", 64: "afda852cc34dcda56f86ad2b2457dbcc",
                    128: "e48e916a24454daf90583d4e6efb1a18", 224: "eae7e3b6f3fcbda4ae613ebdcbe35348"},
    "breastmnist": {28: "750601b1f35ba3300ea97c75c52ff8f6", 64: "742edef2a1fd1524b2efff4bd7ba9364",
                    128: "363e4b3f8d712e9b5de15470a2aaadf1", 224: "b56378a6eefa9fed602bb16d192d4c8b"},
    "bloodmnist": {28: "7053d0359d879ad8a5505303e11de1dc", 64: "2b94928a2ae4916078ca51e05b6b800b",
                   128: "adace1e0ed228fccda1f39692059dd4c", 224: "b718ff6835fcbdb22ba9eacccd7b2601"},
    "tissuemnist": {28: "ebe78ee8b05294063de985d821c1c34b", 64: "123ece2eba09d0aa5d698fda57103344",
                    128: "61b955355d7425a89687b06cca3ce0c2", 224: "b077128c4a949f0a4eb01517f9037b9c"},
    "organamnist": {28: "68e3f8846a6bd62f0c9bf841c0d9eacc", 64: "2dcccc29b88e6da5a01161ef20cda288",
                    128: "eeae80d0a227a8d099027e1b3cfd3b60", 224: "50747347e05c87dd3aaf92c49f9f3170"},
    "organcmnist": {28: "b9ceb9546e10131b32923c5bbeaea2b1", 64: "3ce34a8724ea6f548e6db4744d03b6a9",
                    128: "773c1f009daa3fe5d9a2a201b2a7ed94", 224: "050f5e875dc056f6768abf94ec9995d1"},
    "organsmnist": {28: "9ab87b696fb54e2a387ebe992d6ed5f1", 64: "53a6d115339d874c25e309a994ff46d3",
                    128: "ded0c5fa01a95dc4978b956f613e9b8e", 224: "b354719e553fbbb2513d5533f52a4cb1"},
}
MEDMNIST_SIZES = (28, 64, 128, 224)
MEDMNIST_UNSUPPORTED = {
    "chestmnist": "is multi-label (several findings per image); synthmed needs one label per image",
    **{f: "holds 3D volumes; synthmed works on 2D images" for f in (
        "organmnist3d", "nodulemnist3d", "adrenalmnist3d", "fracturemnist3d", "vesselmnist3d", "synapsemnist3d")},
}


def medmnist_path(flag: str, root=None, size: int = 28) -> Path:
    """Where the ``medmnist`` package keeps (and looks for) a file: ``<root>/<flag>[_<size>].npz``."""
    root = Path(root).expanduser() if root else Path.home() / ".medmnist"
    return root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")


def _download_medmnist(flag: str, path: Path, size: int) -> None:
    try:
        import medmnist
    except ImportError:
        raise DataError(
            f"medmnist file {path} not found and the medmnist package is not installed; run `pip install medmnist` "
            f"and retry with --download, or put {path.name} in {path.parent}"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        cls = getattr(medmnist, medmnist.INFO[flag]["python_class"])
        # constructing one split with download=True fetches the single .npz holding all three
        cls(split="train", root=str(path.parent), download=True, size=None if size == 28 else size)
    except Exception as e:
        raise DataError(f"downloading {flag} (size {size}) into {path.parent} failed: {e}") from None
    if not path.is_file():
        raise DataError(f"medmnist download finished but {path} is not there; put the file there by hand")


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_medmnist(flag: str, root=None, *, size: int = 28, download: bool = False, image_size: int | None = None,
                  channels: int | None = None, verify: bool = False) -> DataSplits:
    """A MedMNIST 2D dataset with its official train/val/test split.

    Reads the file the ``medmnist`` package would use (``<root>/<flag>.npz`` for 28 px,
    ``<root>/<flag>_<size>.npz`` otherwise; root defaults to ``~/.medmnist``), so a folder
    filled by hand works offline. ``image_size`` resizes (bilinear), ``channels`` converts,
    ``verify`` checks the file's md5 against the official table.
    """
    flag = flag.strip().lower()
    if flag in MEDMNIST_UNSUPPORTED:
        raise DataError(f"medmnist:{flag} is not supported: it {MEDMNIST_UNSUPPORTED[flag]}")
    if flag not in MEDMNIST_CLASSES:
        raise DataError(f"unknown MedMNIST flag {flag!r}; supported: {', '.join(MEDMNIST_CLASSES)}")
    if size not in MEDMNIST_SIZES:
        raise DataError(f"MedMNIST size {size} does not exist; choose one of {MEDMNIST_SIZES}")
    path = medmnist_path(flag, root, size)
    if not path.is_file():
        if not download:
            raise DataError(
                f"MedMNIST file not found: {path}. Either put {path.name} there (data_root points at its folder), "
                "or install the downloader (`pip install medmnist`) and run with --download"
            )
        _download_medmnist(flag, path, size)
    if verify and _md5(path) != MEDMNIST_MD5[flag][size]:
        raise DataError(f"{path}: md5 does not match the official release; delete it and download it again")
    class_names = MEDMNIST_CLASSES[flag]
    source = f"medmnist:{flag}"
    parts = []
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")
                       if f"{s}_{k}" not in npz.files]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; found {npz.files}. Is it a MedMNIST 2D file?")
            for split in ("train", "val", "test"):
                images = np.asarray(npz[f"{split}_images"])
                labels = np.asarray(npz[f"{split}_labels"])
                if labels.ndim == 2 and labels.shape[1] != 1:
                    raise DataError(f"{path}: {split}_labels has shape {labels.shape}; expected one label per image")
                if images.dtype != np.uint8:
                    images = (np.stack([_scale_to_uint8(im) for im in images]) if len(images)
                              else images.astype(np.uint8))
                if images.ndim == 3:
                    images = images[..., None]
                if channels is not None and images.shape[-1] != channels:
                    images = np.stack([_to_channels(im, channels) for im in images])
                if image_size is not None and images.shape[1] != image_size:
                    images = np.stack([resize_square(im, image_size) for im in images])
                parts.append(ImageDataset(
                    images=images,
                    labels=labels.reshape(-1).astype(np.int64),
                    class_names=list(class_names),
                    paths=[f"{path.name}:{split}/{i}" for i in range(len(images))],
                    name=split,
                    meta={"source": source, "file": str(path), "medmnist_size": size, "image_size": image_size,
                          "channels": channels, "split": "official MedMNIST split"},
                ))
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot be read as a MedMNIST .npz file: {e}; "
                        "delete it and download it again") from None
    return DataSplits(*parts, source=source, split_policy="official MedMNIST split")


# --------------------------------------------------------------------------- dataset-level transforms


def resize_dataset(ds: ImageDataset, size: int) -> ImageDataset:
    """Centre-crop to square and resize every image (bilinear) and mask (nearest) to ``size``."""
    if ds.images.shape[1:3] == (size, size):
        return ds
    images = np.stack([resize_square(im, size) for im in ds.images]) if len(ds) else \
        np.zeros((0, size, size, ds.channels), np.uint8)
    masks = None if ds.masks is None else np.stack([resize_square(m, size, nearest=True) for m in ds.masks])
    return replace(ds, images=images, masks=masks, meta=dict(ds.meta))


def convert_channels(ds: ImageDataset, channels: int) -> ImageDataset:
    """Grey -> RGB (repeat) or RGB -> grey (ITU-R 601 luma)."""
    if ds.channels == channels:
        return ds
    images = np.stack([_to_channels(im, channels) for im in ds.images]) if len(ds) else \
        np.zeros((*ds.images.shape[:3], channels), np.uint8)
    return replace(ds, images=images, meta=dict(ds.meta))


def select_classes(ds: ImageDataset, classes: list[str]) -> ImageDataset:
    """Keep only ``classes`` (relabelled in that order); a name the data lacks is an error."""
    classes = [str(c) for c in classes]
    unknown = [c for c in classes if c not in ds.class_names]
    if unknown:
        raise DataError(f"{ds.name}: data.classes {unknown} are not in this dataset; its classes are {ds.class_names}")
    old = [ds.class_names.index(c) for c in classes]
    keep = np.flatnonzero(np.isin(ds.labels, old))
    out = ds.subset(keep)
    remap = np.full(ds.num_classes, -1, np.int64)
    remap[old] = np.arange(len(old))
    return replace(out, labels=remap[out.labels], class_names=classes)


# --------------------------------------------------------------------------- dispatcher

DATASET_FORMS = "'embryo', 'folder:PATH', 'csv:PATH' or 'medmnist:FLAG' (e.g. medmnist:bloodmnist)"


def load_dataset(cfg: DataConfig, *, seed: int | None = None, download: bool = False) -> DataSplits:
    """Load, split and subset the data a :class:`DataConfig` describes.

    ``seed`` (default ``cfg.split_seed``) drives the procedural data, the split and the
    training subsets. Steps, in order: load (file sources crop the ROI and resize per image
    at full resolution) -> select ``classes`` -> split -> ROI/resize/channels for in-memory
    sources -> on TRAIN only: ``train_per_class``, then the minority-class variant. Each step
    is recorded in ``split_policy`` and in every split's ``meta["steps"]``. ``download``
    lets a missing MedMNIST file be fetched (needs the ``medmnist`` package).
    """
    seed = cfg.split_seed if seed is None else seed
    spec = (cfg.dataset or "").strip()
    kind, _, arg = spec.partition(":")
    arg = arg.strip()
    file_source = kind in ("folder", "csv") and bool(arg)
    if cfg.roi.startswith("boxes:") and not file_source:
        raise DataError(f"roi = {cfg.roi!r} needs a file-based dataset (folder:PATH or csv:PATH); "
                        f"{spec!r} has no image files to match boxes to")
    # built for every source so a roi_class / roi_multiple that cannot apply is refused, not ignored
    roi_fn = make_roi_fn(cfg.roi, roi_class=cfg.roi_class, multiple=cfg.roi_multiple)
    roi_fn = roi_fn if file_source else None
    auto_roi_later = cfg.roi == "auto" and not file_source
    steps: list[str] = []
    full: ImageDataset | None = None
    official: DataSplits | None = None
    if spec == "embryo":
        from .procedural import make_embryo_dataset  # lazy: the procedural generator is optional to import

        full = make_embryo_dataset(list(cfg.embryo_per_class), image_size=cfg.image_size, seed=seed,
                                   masks=cfg.masks.embryo)
        full.meta.setdefault("source", "embryo")
        steps.append(f"procedural embryo set, {list(cfg.embryo_per_class)} images per class (seed {seed})"
                     + (f", with masks {full.mask_class_names}" if cfg.masks.embryo else ""))
    elif file_source:
        loader = load_folder if kind == "folder" else partial(load_csv, extra_columns=cfg.extra_columns,
                                                              mask_spec=MaskSpec.from_config(cfg.masks))
        # decoded straight into a memory-mapped scratch file when the splits will live on disk
        # (data.storage / data.in_memory_max_gb): decoding then holds one image, not the set
        buffer = partial(decode_buffer, storage=cfg.storage, in_memory_max_gb=cfg.in_memory_max_gb)
        full = loader(arg, image_size=cfg.image_size, channels=cfg.channels, resize_policy=cfg.resize_policy,
                      classes=cfg.classes, roi_fn=roi_fn, buffer=buffer)
        steps.append(f"loaded {len(full)} images from {full.meta['source']}")
        if full.meta.get("skipped"):
            steps.append(f"skipped {len(full.meta['skipped'])} non-image file(s)")
        if full.meta.get("duplicates"):
            steps.append(f"{len(full.meta['duplicates'])} exact duplicate image(s) kept")
        if roi_fn is not None:
            roi = full.meta["roi"]
            chosen = "".join([f", boxes named {cfg.roi_class!r}" if cfg.roi_class else "",
                              f", largest of several in {len(roi['largest_of_several'])} image(s)"
                              if roi.get("largest_of_several") else ""])
            steps.append(f"ROI crop {cfg.roi} at full resolution{chosen} ({len(roi.get('fallbacks', []))} "
                         "fallback(s) to the full frame)")
        steps.append(f"images brought to {cfg.image_size}px "
                     f"(resize_policy {cfg.resize_policy}: centre-crop + bilinear)")
    elif kind == "medmnist" and arg:
        official = load_medmnist(arg, cfg.data_root, image_size=None if auto_roi_later else cfg.image_size,
                                 channels=cfg.channels, download=download)
        steps.append(f"MedMNIST {arg} from {official.train.meta['file']}")
    else:
        raise DataError(f"data.dataset = {spec!r}; use {DATASET_FORMS}")

    if cfg.classes is not None and not file_source:
        if official is not None:
            kept = (select_classes(d, cfg.classes) for d in (official.train, official.val, official.test))
            official = DataSplits(*kept, source=official.source, split_policy=official.split_policy)
        else:
            full = select_classes(full, cfg.classes)
        steps.append(f"kept classes {list(cfg.classes)}")

    if cfg.split == "official" and official is None:
        raise DataError(f"data.split = 'official' but {spec!r} has no official split (only medmnist:FLAG has one); "
                        "use split: auto or random")
    if official is not None and cfg.split in ("official", "auto"):
        splits = official
    else:
        if official is not None:
            full = concat([official.train, official.val, official.test], name=arg)
            full.meta = dict(official.train.meta)
            steps.append("pooled the official train/val/test for a new split")
        splits = split_dataset(full, cfg.val_fraction, cfg.test_fraction, seed=seed)
    steps.append(splits.split_policy)

    parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    if auto_roi_later:
        parts = {k: apply_auto_crop(d, cfg.image_size) for k, d in parts.items()}
        steps.append(f"auto ROI crop, resized to {cfg.image_size}px")
    if any(d.images.shape[1:3] != (cfg.image_size, cfg.image_size) for d in parts.values()):
        steps.append(f"bilinear resize {parts['train'].image_size} -> {cfg.image_size}px")
        parts = {k: resize_dataset(d, cfg.image_size) for k, d in parts.items()}
    if cfg.channels is not None and any(d.channels != cfg.channels for d in parts.values()):
        steps.append(f"converted to {cfg.channels} channel(s)")
        parts = {k: convert_channels(d, cfg.channels) for k, d in parts.items()}

    train = parts["train"]
    train_steps: list[str] = []
    # Some published splits share images across train and val/test (BloodMNIST's official split
    # has 8 such pixel-identical pairs at 28 px). They are dropped from train, never from the
    # evaluation splits, so test results stay comparable with published ones; the count is reported.
    held_out = parts["val"].image_hashes() | parts["test"].image_hashes()
    dup = [i for i, h in enumerate(_image_hashes(train)) if h in held_out]
    if dup and cfg.cross_split_duplicates == "error":
        raise DataError(f"{len(dup)} training image(s) are pixel-identical to validation/test images; set "
                        "data.cross_split_duplicates: drop to remove them from the training split")
    if dup and cfg.cross_split_duplicates == "drop":
        keep = np.setdiff1d(np.arange(len(train)), dup)
        train = train.subset(keep, name=train.name)
        msg = f"train: removed {len(dup)} image(s) pixel-identical to a val/test image (duplicates in the source)"
        train_steps.append(msg)
        warnings.warn(msg)
    if cfg.train_per_class is not None:
        train = per_class_subset(train, cfg.train_per_class, seed=seed)
        train_steps.append(f"train: {cfg.train_per_class} images per class (seed {seed})")
    if cfg.imbalance_ratio < 1:
        if cfg.minority_class is None:
            raise DataError("data.imbalance_ratio < 1 needs data.minority_class (the class to shrink)")
        train = make_imbalanced(train, cfg.minority_class, cfg.imbalance_ratio, seed=seed)
        imb = train.meta["imbalance"]
        train_steps.append(f"train: minority class {imb['minority_class']!r} kept {imb['kept']} of {imb['of']} "
                           f"(ratio {cfg.imbalance_ratio}, seed {seed})")
    parts["train"] = train
    for name, d in parts.items():
        d.name = name
        d.meta["steps"] = steps + (train_steps if name == "train" else [])
    policy = "; ".join([splits.split_policy] + train_steps)
    return DataSplits(parts["train"], parts["val"], parts["test"], source=spec, split_policy=policy)


def _image_hashes(ds: ImageDataset) -> list[str]:
    import hashlib

    return [hashlib.sha1(img.tobytes()).hexdigest() for img in ds.images]
