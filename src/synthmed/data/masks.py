"""Reading the user's label masks: one PNG (or other image) per image, turned into class ids.

A mask file holds, per pixel, which structure the pixel belongs to. synthmed stores masks as
integer label maps: 0 = background and 1..M = the mask classes named in
``data.masks.class_names`` (value k is ``class_names[k - 1]``). A file can say this three ways:

* class ids directly: a single-channel (grey or palette) PNG whose values are 0..M
  (the default; palette PNGs keep their indices, they are not converted to luminance);
* other grey values: ``data.masks.values`` lists the pixel value of each class in order
  (e.g. ``[255]`` for a 0/255 binary mask, ``[85, 170, 255]`` for three classes); 0 stays
  background and any value not listed is an error (never silently background);
* colours: ``data.masks.colours`` lists each class's ``#rrggbb`` colour in order, for RGB masks
  painted in an annotation tool; black is background and an unlisted colour is an error.

Every problem names the mask file and the fix, as a one-line :class:`DataError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import DataError

_HEX = re.compile(r"#?([0-9a-fA-F]{6})")


def parse_colour(text: str) -> tuple[int, int, int]:
    """``"#ff8000"`` (or ``"ff8000"``) -> (255, 128, 0); anything else is a DataError."""
    m = _HEX.fullmatch(str(text).strip())
    if m is None:
        raise DataError(f"mask colour {text!r}: write colours as '#rrggbb' hex, e.g. '#ff0000' for red")
    h = m[1]
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


@dataclass(frozen=True)
class MaskSpec:
    """How mask files map to class ids; from ``data.masks`` (:class:`synthmed.config.MaskConfig`)."""

    class_names: tuple[str, ...] | None = None
    values: tuple[int, ...] | None = None
    colours: tuple[tuple[int, int, int], ...] | None = None

    @staticmethod
    def from_config(cfg) -> "MaskSpec":
        if cfg is None:
            return MaskSpec()
        colours = None if cfg.colours is None else tuple(parse_colour(c) for c in cfg.colours)
        return MaskSpec(class_names=None if cfg.class_names is None else tuple(cfg.class_names),
                        values=None if cfg.values is None else tuple(int(v) for v in cfg.values), colours=colours)


def _unlisted(found: np.ndarray, listed: list, what: str, path: Path, key: str) -> DataError:
    shown = ", ".join(str(v) for v in found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
    return DataError(f"mask {path}: {what} {shown} not listed in data.masks.{key} {listed} (and not background); "
                     f"add them to data.masks.{key} (with a name in data.masks.class_names) or repaint the mask")


def read_mask(path: Path, image_path: Path, hw: tuple[int, int], spec: MaskSpec | None = None) -> np.ndarray:
    """Label mask of one image as uint8 (H, W) class ids, 0 = background."""
    spec = spec or MaskSpec()
    if not path.is_file():
        raise DataError(f"mask {path} (for {image_path}) not found; fix the mask_path of that row")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as e:  # Pillow raises several unrelated types for bad files
        raise DataError(f"mask {path}: cannot be decoded: {e}; remove or replace it") from None
    if spec.colours is not None:
        arr = _from_colours(arr, path, spec.colours)
    else:
        if arr.ndim == 3:
            if np.all(arr[..., :3] == arr[..., :1]):
                arr = arr[..., 0]
            else:
                raise DataError(f"mask {path} is a colour image; save label masks as single-channel images of "
                                "class ids, or list each class's colour in data.masks.colours")
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        if not np.issubdtype(arr.dtype, np.integer):
            raise DataError(f"mask {path}: pixel type {arr.dtype} is not an integer class id; save it as an 8-bit "
                            "PNG of class ids")
        if spec.values is not None:
            arr = _from_values(arr, path, spec.values)
        elif arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"mask {path}: values {arr.min()}..{arr.max()} do not fit uint8 class ids (0..255); "
                            "map them with data.masks.values")
    if arr.shape != tuple(hw):
        raise DataError(
            f"mask {path} is {arr.shape[1]}x{arr.shape[0]} but its image {image_path} is {hw[1]}x{hw[0]}; "
            "masks must match their image pixel for pixel"
        )
    if spec.class_names is not None and arr.size and int(arr.max()) > len(spec.class_names):
        raise DataError(f"mask {path}: class id {int(arr.max())} but data.masks.class_names names only "
                        f"{len(spec.class_names)} classes {list(spec.class_names)}; name every class id 1..M, or map "
                        "the file's values with data.masks.values")
    return arr.astype(np.uint8)


def _from_values(arr: np.ndarray, path: Path, values: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(arr.shape, np.uint8)
    known = arr == 0
    for k, v in enumerate(values, start=1):
        hit = arr == v
        out[hit] = k
        known |= hit
    if not known.all():
        raise _unlisted(np.unique(arr[~known]), list(values), "value(s)", path, "values")
    return out


def _from_colours(arr: np.ndarray, path: Path, colours: tuple[tuple[int, int, int], ...]) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise DataError(f"mask {path} is not an RGB image but data.masks.colours is set; save the mask as an RGB "
                        "PNG or drop data.masks.colours and store class ids")
    rgb = arr[..., :3].astype(np.int32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.zeros(code.shape, np.uint8)
    known = code == 0
    for k, (r, g, b) in enumerate(colours, start=1):
        hit = code == ((r << 16) | (g << 8) | b)
        out[hit] = k
        known |= hit
    if not known.all():
        found = [f"#{c:06x}" for c in np.unique(code[~known])]
        raise _unlisted(np.asarray(found), [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in colours], "colour(s)", path,
                        "colours")
    return out
