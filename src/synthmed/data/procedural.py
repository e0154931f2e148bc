"""The embedded default dataset: cleavage-stage embryos rendered procedurally.

``synthmed demo`` needs a labelled image set that ships with the package (no download, no
files), is small enough to train a diffusion model on a laptop CPU in minutes, looks like a
real medical-imaging problem and is neither trivial nor hopeless for a classifier. Early
embryos from time-lapse incubators fit: the classes (2, 3 and 4 blastomeres) are defined by
morphology a person can count, while overlap between cells, fragments, defocus and
illumination changes make some images genuinely ambiguous, as they are in the clinic.

Each image is drawn at 2-4x the requested size and box-downsampled (an antialiasing filter
for integer factors), so thin membranes and the zona edge survive as soft grey lines rather
than aliased stairs. Images are grouped into simulated dishes ("patients") that share
illumination, focus, noise and contrast, so a random image-level split leaks
acquisition characteristics between train and test exactly as real multi-embryo dishes do.

With ``masks=True`` every image also gets a label mask drawn from the very geometry that
rendered it (zona ring, blastomere discs, fragments, debris; see :data:`EMBRYO_MASK_CLASSES`),
at render resolution and brought to the output size by a majority vote over each output
pixel's block, the same block the image is averaged over. The masks draw no random numbers,
so the images are byte-identical with and without them.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from synthmed.data.dataset import DataError, ImageDataset

EMBRYO_CLASS_NAMES = ["2-cell", "3-cell", "4-cell"]
#: mask values 1..4 (0 = background: culture medium and perivitelline space); later ones cover earlier
#: ones where they overlap, as in the rendering (fragments lie over cells and zona)
EMBRYO_MASK_CLASSES = ["zona", "blastomere", "fragment", "debris"]
_ZONA, _BLASTOMERE, _FRAGMENT, _DEBRIS = 1, 2, 3, 4
GENERATOR_VERSION = 1  # bump when rendering changes, so cached/recorded datasets are not confused
_MIN_SIZE, _MAX_SIZE = 16, 256
_RENDER_TARGET = 96  # render resolution we aim for: enough for membranes, cheap enough to be fast
_MAX_FACTOR = 4
_MIN_PER_DISH, _MAX_PER_DISH = 4, 12  # embryos per simulated dish (patient)

# Random streams are keyed by purpose so that changing how one part draws numbers does not
# reshuffle the others, and so an image's content depends only on (seed, class, index).
_STREAM_DISH_ASSIGNMENT = 0
_STREAM_DISH = 1
_STREAM_IMAGE = 2
# Pixel noise draws a resolution-dependent amount of numbers; a separate stream keeps the
# geometry of an embryo identical at every image_size.
_STREAM_TEXTURE = 3


def make_embryo_dataset(
    per_class: Sequence[int] = (400, 140, 400),
    image_size: int = 32,
    seed: int = 0,
    masks: bool = False,
) -> ImageDataset:
    """Render a labelled set of grey cleavage-stage embryo images.

    ``per_class`` gives the number of 2-cell, 3-cell and 4-cell embryos (the default mirrors
    the real imbalance: the 3-cell stage is short-lived, so it is rarely caught on camera).
    The same ``seed`` gives byte-identical images; an image's content depends only on
    ``(seed, class, index within class)`` and on the dish it is assigned to. ``masks=True`` adds
    each image's label mask (:data:`EMBRYO_MASK_CLASSES`); the images do not change.
    """
    counts = [int(n) for n in per_class]
    if len(counts) != len(EMBRYO_CLASS_NAMES):
        raise DataError(
            f"embryo: per_class needs {len(EMBRYO_CLASS_NAMES)} counts "
            f"({', '.join(EMBRYO_CLASS_NAMES)}), got {len(counts)}"
        )
    if any(n < 0 for n in counts):
        raise DataError(f"embryo: per_class counts must be >= 0, got {counts}")
    if not (_MIN_SIZE <= int(image_size) <= _MAX_SIZE):
        raise DataError(f"embryo: image_size must be between {_MIN_SIZE} and {_MAX_SIZE}, got {image_size}")
    size = int(image_size)
    factor = _render_factor(size)

    labels = np.concatenate([np.full(n, c, dtype=np.int64) for c, n in enumerate(counts)])
    index_in_class = np.concatenate([np.arange(n) for n in counts]).astype(np.int64)
    dish_of_image = _assign_dishes(len(labels), seed)
    dishes = [_draw_dish(np.random.default_rng([seed, _STREAM_DISH, d])) for d in range(dish_of_image.max(initial=-1) + 1)]

    grid = _Grid(size * factor)
    images = np.empty((len(labels), size, size, 1), dtype=np.uint8)
    label_maps = np.empty((len(labels), size, size), dtype=np.uint8) if masks else None
    for k, (label, idx, dish) in enumerate(zip(labels, index_in_class, dish_of_image)):
        key = [int(label), int(idx)]
        rng = np.random.default_rng([seed, _STREAM_IMAGE, *key])
        texture_rng = np.random.default_rng([seed, _STREAM_TEXTURE, *key])
        fine = np.zeros((grid.n, grid.n), dtype=np.uint8) if masks else None
        images[k, :, :, 0] = _render_embryo(int(label) + 2, dishes[dish], rng, texture_rng, grid, size, factor,
                                            label_map=fine)
        if masks:
            label_maps[k] = _majority_downsample(fine, size, factor, len(EMBRYO_MASK_CLASSES) + 1)

    return ImageDataset(
        images=images,
        labels=labels,
        class_names=list(EMBRYO_CLASS_NAMES),
        patient_ids=np.array([f"dish{d:03d}" for d in dish_of_image]),
        masks=label_maps,
        mask_class_names=list(EMBRYO_MASK_CLASSES) if masks else None,
        name="embryo",
        meta={
            "source": "synthmed.data.procedural.make_embryo_dataset",
            "generator_version": GENERATOR_VERSION,
            "seed": int(seed),
            "per_class": counts,
            "image_size": size,
            "render_size": size * factor,
            "embryos_per_dish": [_MIN_PER_DISH, _MAX_PER_DISH],
            "num_dishes": len(dishes),
            "description": "procedural cleavage-stage embryos (2/3/4 blastomeres) in simulated dishes",
            **({"mask_classes": list(EMBRYO_MASK_CLASSES)} if masks else {}),
        },
    )


# --------------------------------------------------------------------------- layout
def _render_factor(size: int) -> int:
    return int(min(_MAX_FACTOR, max(2, round(_RENDER_TARGET / size))))


def _assign_dishes(n: int, seed: int) -> np.ndarray:
    """Dish index per image: a shuffled cover of all images by dishes of 4-12 embryos.

    Dishes mix classes (embryos in one dish cleave at different times), so a patient-level
    split does not also become a class split.
    """
    rng = np.random.default_rng([seed, _STREAM_DISH_ASSIGNMENT])
    order = rng.permutation(n)
    dish = np.empty(n, dtype=np.int64)
    start, d = 0, 0
    while start < n:
        size = int(rng.integers(_MIN_PER_DISH, _MAX_PER_DISH + 1))
        if n - (start + size) < _MIN_PER_DISH:  # never leave a dish with fewer than 4 embryos
            size = n - start
        dish[order[start:start + size]] = d
        start += size
        d += 1
    return dish


class _Grid:
    """Pixel-centre coordinates of the render canvas in [-1, 1] (embryo units)."""

    def __init__(self, n: int) -> None:
        c = (np.arange(n, dtype=np.float32) + 0.5) / n * 2.0 - 1.0
        self.n = n
        self.y, self.x = np.meshgrid(c, c, indexing="ij")


def _draw_dish(rng: np.random.Generator) -> dict:
    """Acquisition settings shared by every embryo in one dish (one imaging session)."""
    angle = rng.uniform(0, 2 * np.pi)
    return {
        "gain": rng.uniform(0.8, 1.15),
        "offset": rng.uniform(-0.08, 0.08),
        "gradient": rng.uniform(0.0, 0.18) * np.array([np.cos(angle), np.sin(angle)]),
        "vignette": rng.uniform(0.0, 0.15),
        "focus": rng.uniform(0.1, 0.6),  # blur sigma in pixels of a 32-px image (scales with size)
        "noise": rng.uniform(0.01, 0.035),  # noise std in [0, 1] intensity units
        "relief": rng.uniform(0.03, 0.10),  # strength of the modulation-contrast shading
        "light": rng.uniform(0, 2 * np.pi),  # shading direction, fixed by the microscope
        "zona_brightness": rng.uniform(0.16, 0.26),
        "fragmentation": rng.uniform(0.3, 2.5),  # mean fragments per embryo in this dish
    }


def _rotation(rng: np.random.Generator, max_tilt: float) -> np.ndarray:
    """In-plane rotation uniform, tilt out of plane (radians) half-normal capped at max_tilt."""
    phi = rng.uniform(0, 2 * np.pi)
    tilt = min(abs(rng.normal(0, max_tilt / 2)), max_tilt)
    axis_angle = rng.uniform(0, 2 * np.pi)
    rz = np.array([[np.cos(phi), -np.sin(phi), 0], [np.sin(phi), np.cos(phi), 0], [0, 0, 1]])
    # Tilt about an in-plane axis, so cells stacked in depth project onto each other.
    u = np.array([np.cos(axis_angle), np.sin(axis_angle), 0.0])
    k = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    rt = np.eye(3) + np.sin(tilt) * k + (1 - np.cos(tilt)) * (k @ k)
    return rt @ rz


def _blastomeres(n_cells: int, inner: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """3-D centres (n, 3) and radii (n,) of the blastomeres inside a zona of inner radius ``inner``.

    Radii follow volume conservation: each division halves a cell's volume, so a 4-cell
    blastomere has 2^(-1/3) the radius of a 2-cell one, and the 3-cell stage is one
    undivided large cell next to two small daughters.
    """
    r2 = inner * rng.uniform(0.48, 0.54)
    r4 = r2 * 2 ** (-1 / 3)
    squeeze = rng.uniform(0.78, 0.92)  # blastomeres flatten against each other, so centres sit closer than 2r
    if n_cells == 2:
        radii = np.array([r2, r2])
        half = r2 * squeeze
        centres = np.array([[-half, 0, 0], [half, 0, 0]])
        tilt = 0.9
    elif n_cells == 3:
        radii = np.array([r2, r4, r4])
        small_half = r4 * squeeze
        contact = (r2 + r4) * squeeze
        dx = math.sqrt(max(contact ** 2 - small_half ** 2, 1e-6))
        # The two daughters sit side by side, twisted somewhat out of the image plane.
        daughters_twist = rng.uniform(-0.45, 0.45)
        off = small_half * np.array([0, np.cos(daughters_twist), np.sin(daughters_twist)])
        centres = np.array([[0, 0, 0], [dx, 0, 0] + off, [dx, 0, 0] - off])
        tilt = 0.6
    else:
        radii = np.full(4, r4)
        half = r4 * squeeze
        if rng.random() < 0.5:
            # Tetrahedral, the usual 4-cell arrangement: resting on a face (three cells on the
            # dish, one above or below them), so the fourth cell overlaps the other three.
            edge = 2 * half
            height = edge * math.sqrt(2 / 3)
            rho = edge / math.sqrt(3)
            base = [[rho * np.cos(a), rho * np.sin(a), -height / 4] for a in (0, 2 * np.pi / 3, 4 * np.pi / 3)]
            centres = np.array(base + [[0.0, 0.0, 3 * height / 4]]) * rng.choice([-1.0, 1.0])
            tilt = 1.0
        else:  # planar cross
            centres = half * np.array([[1, 1, 0], [1, -1, 0], [-1, 1, 0], [-1, -1, 0]], dtype=float)
            tilt = 0.7
    radii = radii * rng.uniform(0.96, 1.04, size=len(radii))
    centres = centres + rng.normal(0, 0.05 * r4, size=centres.shape)
    centres = centres - centres.mean(axis=0)
    centres = centres @ _rotation(rng, tilt).T
    # The zona confines the cluster: shrink the spacing so the projection fits inside it.
    extent = np.max(np.hypot(centres[:, 0], centres[:, 1]) + radii)
    if extent > 0.97 * inner:
        centres *= max(0.6, (0.97 * inner - radii.max()) / max(extent - radii.max(), 1e-6))
    return centres, radii


# --------------------------------------------------------------------------- rendering
def _render_embryo(n_cells: int, dish: dict, rng: np.random.Generator, texture_rng: np.random.Generator,
                   grid: _Grid, size: int, factor: int, label_map: np.ndarray | None = None) -> np.ndarray:
    """One image (size, size) uint8. ``label_map`` (render resolution, zeros), when given, receives
    the mask: each structure's class where its geometric extent lies, painted in drawing order.
    Painting only reads values already drawn, so the random streams and the image do not change."""
    paint = label_map is not None
    px = 2.0 / grid.n  # one render pixel in embryo units
    cx, cy = rng.normal(0, 0.05, size=2).clip(-0.1, 0.1)
    x, y = grid.x - cx, grid.y - cy

    # Noise fields, drawn once per image: fine grain for cytoplasm, coarse for zona / medium.
    white = texture_rng.standard_normal((grid.n, grid.n)).astype(np.float32)
    grain = gaussian_filter(white, 0.45 * factor)
    grain /= grain.std() + 1e-6
    coarse = gaussian_filter(white, 1.6 * factor)
    coarse /= coarse.std() + 1e-6

    # Medium background with faint texture.
    img = 0.52 + 0.012 * coarse

    # Zona pellucida: slightly elliptical thick ring with dark borders and radial texture.
    zona_outer = rng.uniform(0.78, 0.88)
    thickness = rng.uniform(0.085, 0.13)
    ellipticity = rng.uniform(0.0, 0.07)
    theta = rng.uniform(0, np.pi)
    xr = x * np.cos(theta) + y * np.sin(theta)
    yr = -x * np.sin(theta) + y * np.cos(theta)
    rho = np.sqrt((xr / (1 + ellipticity)) ** 2 + (yr / (1 - ellipticity)) ** 2)
    inner = zona_outer - thickness
    mid, half_t = zona_outer - thickness / 2, thickness / 2
    ring = _smooth_box(rho, inner, zona_outer, 1.2 * px)
    zona_val = dish["zona_brightness"] * (1 + 0.25 * coarse + 0.15 * grain)
    img = img + ring * zona_val
    edge_w = 1.3 * px
    img = img - 0.16 * np.exp(-((rho - zona_outer) / edge_w) ** 2) - 0.12 * np.exp(-((rho - inner) / edge_w) ** 2)
    img = img - 0.05 * np.exp(-((rho - mid) / (0.35 * half_t)) ** 2)  # zona's inner/outer layer boundary
    if paint:
        label_map[(rho >= inner) & (rho <= zona_outer)] = _ZONA

    # Perivitelline space, a little brighter than medium.
    pvs = _smooth_step(inner - rho, 1.0 * px)
    img = img + 0.035 * pvs

    # Blastomeres, drawn back to front so nearer cells cover farther ones.
    centres, radii = _blastomeres(n_cells, inner, rng)
    focal_z = rng.normal(0, 0.08)
    light = np.array([np.cos(dish["light"]), np.sin(dish["light"])])
    cyto = rng.uniform(0.43, 0.49)
    for i in np.argsort(centres[:, 2]):
        (ccx, ccy, ccz), r = centres[i], radii[i]
        # Cells away from the focal plane lose texture and get soft, faint membranes.
        defocus = abs(ccz - focal_z) / r
        sharp = 1.0 / (1.0 + 1.2 * defocus ** 2)
        stretch = rng.uniform(0.93, 1.07)  # blastomeres are slightly ellipsoidal
        ang = rng.uniform(0, np.pi)
        dx, dy = x - ccx, y - ccy
        u = (dx * np.cos(ang) + dy * np.sin(ang)) / stretch
        v = (-dx * np.sin(ang) + dy * np.cos(ang)) * stretch
        dist = np.sqrt(u * u + v * v)
        edge = (1.0 + 3.0 * defocus) * px
        inside = _smooth_step(r - dist, edge)
        shade = dish["relief"] * ((dx * light[0] + dy * light[1]) / r).clip(-1, 1)
        cell = cyto + shade + 0.045 * sharp * grain + 0.01 * coarse
        if rng.random() < 0.55:  # nucleus: a smooth, slightly brighter round area
            nr = r * rng.uniform(0.22, 0.3)
            off = rng.normal(0, 0.25 * r, size=2)
            nd = np.hypot(dx - off[0], dy - off[1])
            nuc = _smooth_step(nr - nd, 1.5 * px)
            cell = cell + nuc * (0.05 * sharp - 0.04 * sharp * grain) - 0.06 * sharp * np.exp(-((nd - nr) / (1.2 * px)) ** 2)
        alpha = rng.uniform(0.8, 0.92)
        img = img + alpha * inside * (cell - img)
        membrane_w = (1.1 + 2.5 * defocus) * px
        img = img - 0.3 * (0.35 + 0.65 * sharp) * np.exp(-((dist - r) / membrane_w) ** 2)
        if paint:  # the cell's extent is where its soft indicator crosses one half: dist < r
            label_map[dist < r] = _BLASTOMERE

    # Fragments: small refractile bodies with dark rims, mostly in the perivitelline space.
    n_frag = min(int(rng.poisson(dish["fragmentation"] * rng.uniform(0.3, 1.7))), 9)
    for _ in range(n_frag):
        fr = inner * rng.uniform(0.035, 0.13) * (1.0 if rng.random() < 0.85 else 1.5)
        a = rng.uniform(0, 2 * np.pi)
        d = inner * rng.uniform(0.45, 0.97) - fr
        fx, fy = d * np.cos(a), d * np.sin(a)
        fd = np.hypot(x - fx, y - fy)
        img = img + 0.05 * _smooth_step(fr - fd, px) - 0.13 * np.exp(-((fd - fr) / (1.0 * px)) ** 2)
        if paint:
            label_map[fd < fr] = _FRAGMENT

    # Debris in the medium outside the zona.
    for _ in range(int(rng.integers(0, 3))):
        a, d = rng.uniform(0, 2 * np.pi), rng.uniform(zona_outer + 0.05, 1.3)
        fd = np.hypot(x - d * np.cos(a), y - d * np.sin(a))
        spread = rng.uniform(0.8, 2.0) * px * factor  # drawn in the same order as before the masks
        img = img - 0.12 * np.exp(-(fd / spread) ** 2)
        if paint:  # a dark Gaussian blob: its extent is where it is deepest, within one spread of its centre
            label_map[fd < spread] = _DEBRIS

    # Acquisition: illumination gradient and vignetting, defocus blur, then sensor noise.
    illum = 1.0 + dish["gradient"][0] * grid.x + dish["gradient"][1] * grid.y - dish["vignette"] * (grid.x ** 2 + grid.y ** 2) / 2
    img = (img * illum) * dish["gain"] + dish["offset"]
    blur = dish["focus"] * rng.uniform(0.7, 1.4)
    # Blur is physical (optics), so it is fixed in embryo units, not in output pixels.
    img = gaussian_filter(img, blur * grid.n / 32, mode="nearest") if blur > 0.05 else img
    small = img.reshape(size, factor, size, factor).mean(axis=(1, 3))
    noise_std = dish["noise"] * rng.uniform(0.8, 1.25)
    small = small + noise_std * texture_rng.standard_normal(small.shape).astype(np.float32)
    return np.clip(np.round(small * 255.0), 0, 255).astype(np.uint8)


def _majority_downsample(fine: np.ndarray, size: int, factor: int, num_values: int) -> np.ndarray:
    """(size*factor)^2 label map -> size^2: each output pixel takes the value covering most of its
    factor x factor block (ties: the lower value), the block the image's box filter averages."""
    blocks = fine.reshape(size, factor, size, factor)
    counts = np.stack([(blocks == v).sum(axis=(1, 3)) for v in range(num_values)])
    return counts.argmax(axis=0).astype(np.uint8)


def _smooth_step(signed_distance: np.ndarray, width: float) -> np.ndarray:
    """Soft indicator of ``signed_distance > 0`` with a transition about ``width`` wide."""
    return 0.5 * (1.0 + np.tanh(signed_distance / width))


def _smooth_box(value: np.ndarray, lo: float, hi: float, width: float) -> np.ndarray:
    return _smooth_step(value - lo, width) * _smooth_step(hi - value, width)
