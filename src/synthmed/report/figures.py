"""Figures for the report, with no plotting library: image grids as uint8 arrays and charts as SVG text.

Charts are written as plain SVG strings so the report stays one self-contained HTML file and
the toolkit does not pull in matplotlib. The axis maths (:class:`LinearScale`,
:class:`LogScale`, :func:`nice_ticks`, :func:`log_ticks`) is kept separate from the drawing so
it can be tested on its own.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from synthmed.data.dataset import ImageDataset

# Okabe-Ito palette: distinguishable with the common forms of colour blindness.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]

FONT = "system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif"
AXIS_COLOR = "#444"
GRID_COLOR = "#e3e3e3"
TEXT_COLOR = "#222"
REFERENCE_COLOR = "#b00020"
# Rough width of one character of the 12 px chart font, used to lay out legends and to
# shorten labels that would otherwise run into their neighbours (SVG cannot measure text).
CHAR_WIDTH_12PX = 6.8


# =====================================================================================
# Image grids
# =====================================================================================
def _sample_class_indices(ds: ImageDataset, class_index: int, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` random indices of images of one class.

    The generator is seeded per class so that a class's images do not change when another
    class gains or loses images.
    """
    idx = np.flatnonzero(ds.labels == class_index)
    if len(idx) > n:
        rng = np.random.default_rng([int(seed), int(class_index)])
        idx = np.sort(rng.choice(idx, size=n, replace=False))
    return idx


def _tile(
    rows: Sequence[Sequence[np.ndarray]],
    columns: int,
    cell_hw: tuple[int, int],
    channels: int,
    scale: int,
    pad: int,
    pad_value: int,
) -> np.ndarray:
    """Lay out rows of (h, w, c) uint8 images on a padded canvas; short rows leave blank cells."""
    h, w = cell_hw
    ch, cw = h * scale, w * scale
    height = len(rows) * ch + (len(rows) + 1) * pad
    width = columns * cw + (columns + 1) * pad
    canvas = np.full((height, width, channels), pad_value, dtype=np.uint8)
    for r, row in enumerate(rows):
        top = pad + r * (ch + pad)
        for c, img in enumerate(row[:columns]):
            left = pad + c * (cw + pad)
            # nearest-neighbour upscaling keeps the pixels crisp; small medical images are
            # only a few dozen pixels wide and would be unreadable at 1:1
            big = np.repeat(np.repeat(img, scale, axis=0), scale, axis=1)
            canvas[top : top + ch, left : left + cw] = big
    return canvas


def image_grid(
    ds: ImageDataset,
    per_class: int = 8,
    seed: int = 0,
    scale: int = 2,
    pad: int = 2,
    pad_value: int = 255,
    classes: Sequence[int] | None = None,
) -> np.ndarray:
    """A grid of random images: one row per class, ``per_class`` columns.

    Returns a uint8 array of shape ``(rows*H*scale + (rows+1)*pad, per_class*W*scale +
    (per_class+1)*pad, C)`` with C as in ``ds`` (1 or 3). Padding is in output pixels.
    A class with fewer than ``per_class`` images leaves the rest of its row blank.
    ``classes`` picks and orders the rows (label indices); default all classes.
    """
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    if scale < 1:
        raise ValueError(f"scale must be at least 1, got {scale}")
    class_list = list(range(ds.num_classes)) if classes is None else [int(c) for c in classes]
    rows = [list(ds.images[_sample_class_indices(ds, c, per_class, seed)]) for c in class_list]
    _, h, w, channels = ds.images.shape
    return _tile(rows, per_class, (h, w), channels, scale, pad, pad_value)


def class_strip(
    ds: ImageDataset, class_index: int, per_class: int = 8, seed: int = 0, scale: int = 2, pad: int = 2,
    pad_value: int = 255,
) -> np.ndarray:
    """One row of :func:`image_grid` (the same images for the same seed)."""
    return image_grid(ds, per_class=per_class, seed=seed, scale=scale, pad=pad, pad_value=pad_value,
                      classes=[class_index])


def class_grid(ds: ImageDataset, class_index: int, n: int = 16, columns: int = 8, seed: int = 0, scale: int = 1,
               pad: int = 1, pad_value: int = 255) -> np.ndarray:
    """Up to ``n`` random images of one class in rows of ``columns`` (a short last row is left blank).

    At ``scale`` 1 the array keeps the native pixels: the report enlarges it in the browser,
    which keeps the file small."""
    if n < 1 or columns < 1:
        raise ValueError(f"n and columns must be at least 1, got {n} and {columns}")
    images = list(ds.images[_sample_class_indices(ds, class_index, n, seed)])
    columns = min(columns, max(len(images), 1))
    rows = [images[i: i + columns] for i in range(0, max(len(images), 1), columns)] if images else [[]]
    _, h, w, channels = ds.images.shape
    return _tile(rows, columns, (h, w), channels, scale, pad, pad_value)


def _as_pil(array: np.ndarray) -> Image.Image:
    arr = np.asarray(array)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0-255), got {arr.dtype}; convert before saving")
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), mode="L")
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(arr), mode="RGB" if arr.shape[-1] == 3 else "RGBA")
    raise ValueError(f"image arrays must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {arr.shape}")


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    _as_pil(array).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def save_png(array: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array as a lossless PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(array))
    return path


def png_base64(array: np.ndarray) -> str:
    """The PNG of ``array`` as base64 text (without a ``data:`` prefix)."""
    return base64.b64encode(png_bytes(array)).decode("ascii")


# =====================================================================================
# Axis maths
# =====================================================================================
@dataclass(frozen=True)
class LinearScale:
    """Maps data values in [d0, d1] linearly onto pixel positions [r0, r1] (r1 < r0 for a y axis)."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __call__(self, v: float) -> float:
        if self.d1 == self.d0:
            return (self.r0 + self.r1) / 2
        return self.r0 + (v - self.d0) / (self.d1 - self.d0) * (self.r1 - self.r0)


@dataclass(frozen=True)
class LogScale:
    """Maps positive data values in [d0, d1] onto [r0, r1] linearly in log10."""

    d0: float
    d1: float
    r0: float
    r1: float

    def __post_init__(self) -> None:
        if self.d0 <= 0 or self.d1 <= 0:
            raise ValueError(f"a log scale needs a positive domain, got [{self.d0}, {self.d1}]")

    def __call__(self, v: float) -> float:
        lo, hi = math.log10(self.d0), math.log10(self.d1)
        if hi == lo:
            return (self.r0 + self.r1) / 2
        return self.r0 + (math.log10(v) - lo) / (hi - lo) * (self.r1 - self.r0)


def nice_step(span: float, target: int = 5) -> float:
    """A 1-2-2.5-5 x 10^k step that splits ``span`` into about ``target`` intervals."""
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10 * mag


def nice_ticks(lo: float, hi: float, target: int = 5) -> list[float]:
    """Evenly spaced round ticks whose first is <= lo and last is >= hi."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"ticks need finite bounds, got [{lo}, {hi}]")
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:  # a flat series still needs an axis around its value
        half = abs(lo) * 0.1 or 1.0
        lo, hi = lo - half, hi + half
    step = nice_step(hi - lo, target)
    start = math.floor(lo / step + 1e-9)
    stop = math.ceil(hi / step - 1e-9)
    # integer multiples of the step, rounded, so 0.1*3 prints as 0.3 and not 0.30000000000000004
    return [round(i * step, 12) for i in range(start, stop + 1)]


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis covering [lo, hi]: whole decades, plus 2 and 5 when there are few decades."""
    if lo <= 0 or hi <= 0:
        raise ValueError(f"log ticks need positive bounds, got [{lo}, {hi}]")
    k0 = math.floor(math.log10(lo) + 1e-12)
    k1 = math.ceil(math.log10(hi) - 1e-12)
    if k1 == k0:
        k1 += 1
    decades = k1 - k0
    if decades <= 2:
        mantissas = (1, 2, 5)
    else:
        mantissas = (1,)
    stride = 1 if decades <= 6 else math.ceil(decades / 6)
    ticks = []
    for k in range(k0, k1 + 1):
        if (k - k0) % stride:
            continue
        for m in mantissas:
            v = float(f"{m}e{k}")  # exact decimal, avoids 10**-3 = 0.0010000000000000002
            if v <= 10 ** k1 * (1 + 1e-12):
                ticks.append(v)
    if len(mantissas) > 1:
        # with 1-2-5 ticks, end the axis at the ticks just outside the data rather than at
        # whole decades, which can leave most of a decade empty
        first = max(i for i, t in enumerate(ticks) if t <= lo * (1 + 1e-12))
        last = min(i for i, t in enumerate(ticks) if t >= hi * (1 - 1e-12))
        ticks = ticks[first : last + 1]
    return ticks


def _decimals_for_step(step: float) -> int:
    if step <= 0:
        return 0
    d = max(0, -math.floor(math.log10(step) + 1e-9))
    mantissa = step / 10 ** math.floor(math.log10(step) + 1e-9)
    if abs(mantissa - 2.5) < 1e-6 and step < 10:
        d += 1
    return d


def format_tick(v: float, step: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e6 or (abs(v) < 1e-3):
        return f"{v:.2g}".replace("e-0", "e-").replace("e+0", "e")
    d = _decimals_for_step(step)
    return f"{v:,.{d}f}"


def format_log_tick(v: float) -> str:
    if 1e-3 <= v < 1e5:
        return f"{v:g}"
    return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e")


def format_value(v: float, all_small: bool) -> str:
    return f"{v:.3f}" if all_small else f"{v:.3g}"


# =====================================================================================
# SVG drawing
# =====================================================================================
def _t(x: float) -> str:
    """A pixel coordinate, rounded: keeps the SVG small without visible effect."""
    s = f"{x:.1f}"
    if s.endswith(".0"):
        s = s[:-2]
    return "0" if s == "-0" else s


def _text(x: float, y: float, s: str, size: int = 12, anchor: str = "middle", weight: str = "normal",
          rotate: float | None = None, color: str = TEXT_COLOR, extra: str = "") -> str:
    transform = f' transform="rotate({_t(rotate)} {_t(x)} {_t(y)})"' if rotate is not None else ""
    w = f' font-weight="{weight}"' if weight != "normal" else ""
    return (f'<text x="{_t(x)}" y="{_t(y)}" font-size="{size}" text-anchor="{anchor}" fill="{color}"'
            f"{w}{transform}{extra}>{escape(s)}</text>")


def _shorten(s: str, max_chars: int) -> str:
    max_chars = max(max_chars, 3)
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def _svg_open(width: int, height: int, title: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="{escape(FONT)}" role="img" '
        f'aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>',
    ]


def _legend_rows(names: list[str], max_width: float) -> list[list[str]]:
    """Break legend entries into rows that fit ``max_width`` pixels."""
    rows: list[list[str]] = [[]]
    used = 0.0
    for name in names:
        w = 22 + len(name) * CHAR_WIDTH_12PX + 16
        if rows[-1] and used + w > max_width:
            rows.append([])
            used = 0.0
        rows[-1].append(name)
        used += w
    return rows if rows[0] else []


def _draw_legend(rows: list[list[str]], colors: dict[str, str], x0: float, y0: float, kind: str,
                 dashes: dict[str, str] | None = None) -> list[str]:
    """Legend entries; ``kind`` "line" or "bar" sets the swatch (dashed entries are always lines)."""
    out = []
    for r, row in enumerate(rows):
        x = x0
        y = y0 + r * 18
        for name in row:
            color = colors[name]
            if kind == "line" or (dashes or {}).get(name):
                dash = (dashes or {}).get(name)
                dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
                out.append(f'<line x1="{_t(x)}" y1="{_t(y)}" x2="{_t(x + 16)}" y2="{_t(y)}" stroke="{color}" '
                           f'stroke-width="2.5"{dash_attr}/>')
            else:
                out.append(f'<rect x="{_t(x)}" y="{_t(y - 6)}" width="14" height="12" fill="{color}"/>')
            out.append(_text(x + 22, y + 4, name, anchor="start"))
            x += 22 + len(name) * CHAR_WIDTH_12PX + 16
    return out


def _no_data_svg(width: int, height: int, title: str) -> str:
    parts = _svg_open(width, height, title)
    parts.append(_text(width / 2, 22, title, size=14, weight="bold"))
    parts.append(_text(width / 2, height / 2, "no data", size=13, color="#888"))
    parts.append("</svg>")
    return "\n".join(parts)


def _finite_points(points, log_y: bool) -> list[tuple[float, float]]:
    out = []
    for p in points:
        try:
            x, y = float(p[0]), float(p[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log_y):
            out.append((x, y))
    return out


def _thin(points: list[tuple[float, float]], max_points: int) -> list[tuple[float, float]]:
    """Evenly spaced subset (first and last kept) so very long curves stay a reasonable size."""
    if len(points) <= max_points:
        return points
    idx = np.unique(np.linspace(0, len(points) - 1, max_points).round().astype(int))
    return [points[i] for i in idx]


def line_chart_svg(
    series: dict[str, Sequence[tuple[float, float]]],
    title: str,
    xlabel: str,
    ylabel: str,
    log_y: bool = False,
    width: int = 640,
    height: int = 340,
    styles: dict[str, dict] | None = None,
    max_points: int = 1500,
) -> str:
    """A line chart of one or more (x, y) series with ticks, axis labels and a legend.

    With ``log_y`` non-positive y values cannot be drawn and are left out. ``styles`` may set,
    per series name, ``color``, ``width``, ``opacity`` and ``dash`` (an SVG dash array).
    """
    styles = styles or {}
    cleaned = {str(name): _thin(_finite_points(pts, log_y), max_points) for name, pts in series.items()}
    drawn = {name: pts for name, pts in cleaned.items() if pts}
    if not drawn:
        return _no_data_svg(width, height, title)

    colors = {name: styles.get(name, {}).get("color", PALETTE[i % len(PALETTE)])
              for i, name in enumerate(cleaned)}
    dashes = {name: styles.get(name, {}).get("dash") for name in cleaned}
    left, right, bottom = 70, 20, 50
    legend = _legend_rows(list(drawn), width - left - right)
    top = 34 + 18 * len(legend) + 8

    xs = [x for pts in drawn.values() for x, _ in pts]
    ys = [y for pts in drawn.values() for _, y in pts]
    xticks = nice_ticks(min(xs), max(xs), target=6)
    xscale = LinearScale(xticks[0], xticks[-1], left, width - right)
    if log_y:
        yticks = log_ticks(min(ys), max(ys))
        yscale: LinearScale | LogScale = LogScale(yticks[0], yticks[-1], height - bottom, top)
        ylabels = [format_log_tick(v) for v in yticks]
    else:
        yticks = nice_ticks(min(ys), max(ys), target=5)
        yscale = LinearScale(yticks[0], yticks[-1], height - bottom, top)
        ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0
        ylabels = [format_tick(v, ystep) for v in yticks]
    xstep = xticks[1] - xticks[0] if len(xticks) > 1 else 1.0

    parts = _svg_open(width, height, title)
    parts.append(_text(width / 2, 20, title, size=14, weight="bold"))
    parts += _draw_legend(legend, colors, left, 34 + 6, "line", dashes)

    # grid and ticks
    for v, label in zip(yticks, ylabels):
        y = yscale(v)
        parts.append(f'<line x1="{left}" y1="{_t(y)}" x2="{width - right}" y2="{_t(y)}" stroke="{GRID_COLOR}"/>')
        parts.append(f'<line x1="{left - 5}" y1="{_t(y)}" x2="{left}" y2="{_t(y)}" stroke="{AXIS_COLOR}"/>')
        parts.append(_text(left - 8, y + 4, label, size=11, anchor="end"))
    for v in xticks:
        x = xscale(v)
        parts.append(f'<line x1="{_t(x)}" y1="{top}" x2="{_t(x)}" y2="{height - bottom}" stroke="{GRID_COLOR}"/>')
        parts.append(f'<line x1="{_t(x)}" y1="{height - bottom}" x2="{_t(x)}" y2="{height - bottom + 5}" '
                     f'stroke="{AXIS_COLOR}"/>')
        parts.append(_text(x, height - bottom + 18, format_tick(v, xstep), size=11))
    # axes
    parts.append(f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" '
                 f'stroke="{AXIS_COLOR}"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="{AXIS_COLOR}"/>')
    parts.append(_text((left + width - right) / 2, height - 12, xlabel))
    parts.append(_text(16, (top + height - bottom) / 2, ylabel + (" (log scale)" if log_y else ""),
                       rotate=-90))

    for name, pts in drawn.items():
        st = styles.get(name, {})
        coords = " ".join(f"{_t(xscale(x))},{_t(yscale(y))}" for x, y in pts)
        dash = f' stroke-dasharray="{st["dash"]}"' if st.get("dash") else ""
        opacity = f' stroke-opacity="{st["opacity"]}"' if "opacity" in st else ""
        parts.append(f'<polyline class="series" data-series="{escape(name)}" fill="none" stroke="{colors[name]}" '
                     f'stroke-width="{st.get("width", 1.8)}" stroke-linejoin="round"{dash}{opacity} '
                     f'points="{coords}"/>')
        if len(pts) == 1:  # a single point has no line; show it as a dot
            x, y = pts[0]
            parts.append(f'<circle cx="{_t(xscale(x))}" cy="{_t(yscale(y))}" r="3" fill="{colors[name]}"/>')
    parts.append("</svg>")
    return "\n".join(parts)


def bar_chart_svg(
    groups: Sequence[str],
    series: dict[str, Sequence[tuple[float, float | None] | float | None]],
    title: str,
    ylabel: str,
    width: int = 640,
    height: int = 340,
    y_max: float | None = None,
    reference: tuple[float, str] | None = None,
    value_format: str | None = None,
) -> str:
    """Grouped bars: one group per entry of ``groups``, one bar per series, with ±std error bars.

    Each series holds one ``(mean, std)`` per group (std may be None for no error bar; a
    plain number or None also works, None leaves the bar out). Bars start at 0, so their
    heights are proportional to their values. ``y_max`` fixes the top of the axis (e.g. 1 for
    accuracies); ``reference`` draws a labelled dashed horizontal line, e.g. chance level.
    """
    groups = [str(g) for g in groups]
    names = [str(n) for n in series]
    values: dict[str, list[tuple[float, float] | None]] = {}
    for name, entries in zip(names, series.values()):
        row: list[tuple[float, float] | None] = []
        for i in range(len(groups)):
            e = entries[i] if i < len(entries) else None
            if isinstance(e, (tuple, list)):
                mean, std = (e[0], e[1] if len(e) > 1 else None)
            else:
                mean, std = e, None
            if mean is None or not math.isfinite(float(mean)):
                row.append(None)
                continue
            std_f = float(std) if std is not None and math.isfinite(float(std)) else 0.0
            row.append((float(mean), abs(std_f)))
        values[name] = row
    present = [v for row in values.values() for v in row if v is not None]
    if not groups or not present:
        return _no_data_svg(width, height, title)

    lows = [m - s for m, s in present] + [0.0]
    highs = [m + s for m, s in present] + [0.0]
    if reference is not None:
        lows.append(float(reference[0]))
        highs.append(float(reference[0]))
    yticks = nice_ticks(min(lows), max(highs) if y_max is None else max(y_max, max(highs)), target=5)
    if y_max is not None and max(highs) <= y_max:
        yticks = [t for t in yticks if t <= y_max + 1e-12]
        if yticks[-1] < y_max:
            yticks.append(y_max)
    ystep = yticks[1] - yticks[0] if len(yticks) > 1 else 1.0

    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(names)}
    left, right, bottom = 70, 20, 46
    plot_w = width - left - right
    group_w = plot_w / len(groups)
    bar_w = group_w * 0.8 / max(len(names), 1)
    small = all(abs(m) < 10 and s < 10 for m, s in present)
    fmt = (lambda v: format(v, value_format)) if value_format else (lambda v: format_value(v, small))
    label_len = max(len(fmt(m)) for m, _ in present)
    # labels wider than their bar would run into the neighbouring bar's label: turn them upright
    rotate_labels = bar_w < label_len * 6.2 + 2
    legend_names = names + ([str(reference[1])] if reference is not None else [])
    legend = _legend_rows(legend_names, plot_w)
    # room above the plot for the value labels of the tallest bars
    label_room = label_len * 6.2 + 8 if rotate_labels else 22
    top = round(34 + 18 * len(legend) + label_room)
    yscale = LinearScale(yticks[0], yticks[-1], height - bottom, top)
    y0 = yscale(0.0)

    parts = _svg_open(width, height, title)
    parts.append(_text(width / 2, 20, title, size=14, weight="bold"))
    legend_colors = dict(colors)
    dashes = {}
    if reference is not None:
        # the reference line is named in the legend: a label on the line itself collides with bars
        legend_colors[str(reference[1])] = REFERENCE_COLOR
        dashes[str(reference[1])] = "6 4"
    parts += _draw_legend(legend, legend_colors, left, 34 + 6, "bar", dashes)
    for v in yticks:
        y = yscale(v)
        parts.append(f'<line x1="{left}" y1="{_t(y)}" x2="{width - right}" y2="{_t(y)}" stroke="{GRID_COLOR}"/>')
        parts.append(f'<line x1="{left - 5}" y1="{_t(y)}" x2="{left}" y2="{_t(y)}" stroke="{AXIS_COLOR}"/>')
        parts.append(_text(left - 8, y + 4, format_tick(v, ystep), size=11, anchor="end"))

    max_chars = int(group_w / CHAR_WIDTH_12PX)
    for gi, group in enumerate(groups):
        gx = left + gi * group_w
        short = _shorten(group, max_chars)
        full = f"<title>{escape(group)}</title>" if short != group else ""
        parts.append(f'<g class="group-label">{full}'
                     + _text(gx + group_w / 2, height - bottom + 18, short) + "</g>")
        for si, name in enumerate(names):
            v = values[name][gi]
            x = gx + group_w * 0.1 + si * bar_w
            if v is None:
                parts.append(_text(x + bar_w / 2, y0 - 4, "n/a", size=10, color="#888"))
                continue
            mean, std = v
            y_top = min(yscale(mean), y0)
            h = abs(yscale(mean) - y0)
            tooltip = f"{name} · {group}: {fmt(mean)}" + (f" ± {fmt(std)}" if std else "")
            parts.append(
                f'<rect class="bar" data-series="{escape(name)}" data-group="{escape(group)}" '
                f'data-value="{mean!r}" x="{_t(x + 1)}" y="{_t(y_top)}" width="{_t(max(bar_w - 2, 1))}" '
                f'height="{_t(h)}" fill="{colors[name]}"><title>{escape(tooltip)}</title></rect>'
            )
            cx = x + bar_w / 2
            if std > 0:
                ya, yb = yscale(mean - std), yscale(mean + std)
                cap = min(bar_w * 0.25, 6)
                parts.append(
                    f'<g class="errorbar" stroke="{AXIS_COLOR}" stroke-width="1.3">'
                    f'<line x1="{_t(cx)}" y1="{_t(ya)}" x2="{_t(cx)}" y2="{_t(yb)}"/>'
                    f'<line x1="{_t(cx - cap)}" y1="{_t(ya)}" x2="{_t(cx + cap)}" y2="{_t(ya)}"/>'
                    f'<line x1="{_t(cx - cap)}" y1="{_t(yb)}" x2="{_t(cx + cap)}" y2="{_t(yb)}"/></g>'
                )
            # the value sits beyond the end of the error bar so the two never overlap
            if mean >= 0:
                ly = yscale(mean + std) - 5
                anchor = "start" if rotate_labels else "middle"
            else:
                ly = yscale(mean - std) + (5 if rotate_labels else 13)
                anchor = "end" if rotate_labels else "middle"
            parts.append(_text(cx + (4 if rotate_labels else 0), ly, fmt(mean), size=10, anchor=anchor,
                               rotate=-90 if rotate_labels else None, extra=' class="value-label"'))
    if reference is not None:
        ry = yscale(float(reference[0]))
        parts.append(f'<line class="reference" x1="{left}" y1="{_t(ry)}" x2="{width - right}" y2="{_t(ry)}" '
                     f'stroke="{REFERENCE_COLOR}" stroke-width="1.3" stroke-dasharray="6 4"/>')
    parts.append(f'<line x1="{left}" y1="{_t(y0)}" x2="{width - right}" y2="{_t(y0)}" stroke="{AXIS_COLOR}"/>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="{AXIS_COLOR}"/>')
    parts.append(_text(16, (top + height - bottom) / 2, ylabel, rotate=-90))
    parts.append("</svg>")
    return "\n".join(parts)
