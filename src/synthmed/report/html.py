"""One self-contained HTML report per run: what data went in, how the generator trained, what
the synthetic images look like, whether they are recognisable and whether they help.

Everything is inline (CSS, base64 PNGs, SVG charts) so the file can be mailed or archived and
opens in any browser without a network connection or JavaScript. Each section is drawn only
when its key is in ``results``; a section that fails to draw is replaced by a short notice
rather than losing the whole report at the end of a long run.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from html import escape
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import yaml

import synthmed
from synthmed.data.dataset import ImageDataset
from synthmed.report.compare_section import render_comparison
from synthmed.report.downstream_section import render_downstream_experiment
from synthmed.report.segmentation_section import render_caption_accuracy, render_segmentation_downstream
from synthmed.report.figures import bar_chart_svg, class_grid, line_chart_svg, png_base64
from synthmed.report.verdict import MIN_SEEDS, downstream_finding, interval

log = logging.getLogger(__name__)

# Below this many seeds a mean ± std across seeds says little about the true spread.
MIN_SEEDS_FOR_EVIDENCE = MIN_SEEDS
# Images per class shown in the real-vs-synthetic comparison, as a grid of GRID_COLUMNS columns:
# two grids of 8 x 56 px fit side by side in the page width for 28-32 px images.
IMAGES_PER_CLASS_SHOWN = 16
GRID_COLUMNS = 8
# Displayed size of one image in the grids (CSS px); the PNG keeps the native pixels.
GRID_CELL_PX = 56

CSS = """
:root { --fg:#1d1d1f; --muted:#5f6368; --line:#d0d4d9; --bg-soft:#f5f7fa; --accent:#0b5cad; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; }
h1 { font-size: 1.8em; margin: 0 0 4px; }
h2 { font-size: 1.3em; margin: 36px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.05em; margin: 18px 0 6px; }
p { margin: 6px 0 10px; }
.meta { color: var(--muted); font-size: 0.9em; margin-bottom: 16px; }
.meta span + span::before { content: " · "; }
.box { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; margin: 12px 0; }
.box h2 { border: 0; margin-top: 0; font-size: 1.15em; }
.warnings { background: #fff4e5; border: 1px solid #f0a33a; border-left: 6px solid #e07b00;
  border-radius: 6px; padding: 10px 16px; margin: 16px 0; }
.warnings h2 { border: 0; margin: 0 0 4px; font-size: 1.15em; color: #8a4b00; }
.warnings ul { margin: 4px 0; padding-left: 20px; }
.error { background: #fdecea; border: 1px solid #e0a0a0; border-radius: 6px; padding: 8px 14px; }
.verdict { background: #eef5fc; border-left: 5px solid var(--accent); padding: 8px 14px; margin: 12px 0; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--bg-soft); font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.total td { font-weight: 600; background: #fafbfc; }
table.kv th { width: 210px; }
.grid-table td { vertical-align: middle; }
.grid-table img { display: block; }
figure { margin: 14px 0; }
figcaption { color: var(--muted); font-size: 0.88em; margin-top: 4px; max-width: 900px; }
img.pixels { image-rendering: pixelated; max-width: 100%; height: auto; }
svg { max-width: 100%; height: auto; }
.charts { display: flex; flex-wrap: wrap; gap: 12px 24px; align-items: flex-start; }
pre { background: var(--bg-soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px;
  overflow-x: auto; font-size: 0.85em; line-height: 1.35; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.92em; }
.muted { color: var(--muted); }
details > summary { cursor: pointer; color: var(--accent); }
.scroll { overflow-x: auto; max-width: 100%; }
/* verdict first: four answers, each with its numbers */
.findings { background: #f3f8fd; border: 1px solid #b8d3ee; border-left: 6px solid var(--accent);
  border-radius: 6px; padding: 10px 16px; margin: 14px 0; }
.findings h2 { border: 0; margin: 0 0 6px; font-size: 1.2em; }
.findings table { width: 100%; margin: 0; background: #fff; }
.findings th { width: 230px; }
.findings td.answer { width: 150px; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-weight: 600; font-size: 0.9em;
  white-space: nowrap; }
.good { background: #dff3e4; color: #11602a; } .bad { background: #fbe0dd; color: #8c1d12; }
.neutral { background: #eceff3; color: #3c4043; } .caution { background: #fff0d6; color: #7a4a00; }
/* click to enlarge, no script: the hidden checkbox's label is the image */
label.zoom { display: inline-block; cursor: zoom-in; }
label.zoom input { display: none; }
label.zoom input:checked + img { position: fixed; inset: 0; width: 100vw !important; height: 100vh !important;
  max-width: none; padding: 2vh 2vw; object-fit: contain; background: rgba(12, 12, 12, 0.96); z-index: 100;
  cursor: zoom-out; }
.hint { font-size: 0.85em; }
/* wide metric tables: smaller type so nine columns fit at 1400 px without scrolling */
table.compact { font-size: 0.82em; }
table.compact th, table.compact td { padding: 3px 6px; }
table.confusion td.num { min-width: 44px; }
.cms { display: flex; flex-wrap: wrap; gap: 8px 28px; align-items: flex-start; }
@media (min-width: 1300px) { main { max-width: 1260px; } }
"""


# =====================================================================================
# formatting
# =====================================================================================
def _e(value: Any) -> str:
    """Escape anything for HTML text or attribute use."""
    return escape("" if value is None else str(value), quote=True)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _plain(v: Any) -> str:
    """A value as it is written (a seed: 1001, not 1,001)."""
    return "–" if v is None else str(v)


def _num(v: Any, digits: int = 4) -> str:
    """Numbers for tables: thousands separators for counts, ~4 significant digits otherwise."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            return str(f)
        if f == int(f) and abs(f) < 1e15:
            return f"{int(f):,}"
        if abs(f) >= 1000:
            return f"{f:,.0f}"
        return f"{f:.{digits}g}"
    return str(v)


def _frac(v: Any) -> str:
    """Accuracy-like values in [0, 1] with three decimals."""
    if v is None:
        return "–"
    try:
        return f"{float(v):.3f}"
    except (TypeError, ValueError):
        return _e(v)


def _seconds(s: Any) -> str:
    if not _is_number(s):
        return _e(s) if s is not None else "–"
    s = float(s)
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(round(s % 60)):02d} s"
    return f"{int(s // 3600)} h {int(round(s % 3600 / 60)):02d} min"


def _count_params(n: Any) -> str:
    if not _is_number(n):
        return _e(n)
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.3g} {unit} ({int(n):,})"
    return f"{int(n):,}"


def _inline(v: Any) -> str:
    """A compact, escaped one-line rendering of a scalar, list or small dict."""
    if isinstance(v, Mapping):
        return ", ".join(f"{_e(k)}: {_inline(x)}" for k, x in v.items()) or "–"
    if isinstance(v, (list, tuple)):
        return ", ".join(_inline(x) for x in v) or "–"
    return _e(_num(v))


def _kv_table(rows: list[tuple[str, str]]) -> str:
    """Two-column table; values must already be escaped HTML."""
    body = "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table(header: list[str], rows: list[list[str]], numeric: set[int] | None = None,
           total_last: bool = False) -> str:
    """A table from escaped cell HTML; columns in ``numeric`` are right-aligned."""
    numeric = numeric or set()

    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        tr = ' class="total"' if total_last and r == len(rows) - 1 else ""
        body.append(f"<tr{tr}>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _inline_svg(svg: str) -> str:
    # inside HTML the svg element needs no namespace, and dropping it keeps the file free of
    # any http:// text, which makes "no external resources" easy to check
    return svg.replace(' xmlns="http://www.w3.org/2000/svg"', "", 1)


def _figure(content: str, caption: str = "") -> str:
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f"<figure>{content}{cap}</figure>"


def _img(array: np.ndarray, alt: str) -> str:
    return f'<img class="pixels" alt="{_e(alt)}" src="data:image/png;base64,{png_base64(array)}">'


def _zoom_img(array: np.ndarray, alt: str, width: int | None = None) -> str:
    """An image that fills the window while clicked (pure CSS: a hidden checkbox in its label).

    ``width``: displayed width in CSS px (the PNG keeps its native pixels, which keeps the file
    small; ``image-rendering: pixelated`` enlarges them without blurring)."""
    size = f' style="width:{int(width)}px"' if width else ""
    return (f'<label class="zoom" title="click to enlarge, click again to close"><input type="checkbox">'
            f'<img class="pixels" alt="{_e(alt)}"{size} src="data:image/png;base64,{png_base64(array)}"></label>')


def _yaml(data: Any) -> str:
    def plain(x: Any) -> Any:
        # configs may hold numpy scalars, paths or dataclasses; YAML-dump their plain form
        if isinstance(x, Mapping):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, (np.integer,)):
            return int(x)
        if isinstance(x, (np.floating,)):
            return float(x)
        if x is None or isinstance(x, (bool, int, float, str)):
            return x
        return str(x)

    return yaml.safe_dump(plain(data), sort_keys=False, default_flow_style=False, allow_unicode=True)


# =====================================================================================
# sections
# =====================================================================================
def _section_header(results: dict) -> str:
    title = results.get("title") or "synthmed report"
    created = results.get("created") or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z").strip()
    version = results.get("synthmed_version") or synthmed.__version__
    run_name = results.get("run_name") or results.get("name")
    meta = [f"<span>created {_e(created)}</span>", f"<span>synthmed {_e(version)}</span>"]
    if run_name:
        meta.insert(0, f"<span>run <b>{_e(run_name)}</b></span>")
    return f"<header><h1>{_e(title)}</h1><div class=\"meta\">{''.join(meta)}</div></header>"


def _split_counts_table(data: dict) -> str:
    splits = [s for s in ("train", "val", "test") if isinstance(data.get(s), Mapping)]
    if not splits:
        return ""
    classes: list[str] = []
    for s in splits:
        for c in (data[s].get("classes") or {}):
            if c not in classes:
                classes.append(c)
    rows = []
    for c in classes:
        counts = [data[s].get("classes", {}).get(c) for s in splits]
        rows.append([_e(c)] + [_num(n) for n in counts]
                    + [_num(sum(n for n in counts if _is_number(n)))])
    totals = [data[s].get("num_images", sum(v for v in (data[s].get("classes") or {}).values() if _is_number(v)))
              for s in splits]
    rows.append(["all classes"] + [_num(n) for n in totals] + [_num(sum(n for n in totals if _is_number(n)))])
    extra = []
    if any(data[s].get("num_patients") is not None for s in splits):
        extra.append(["patients"] + [_num(data[s].get("num_patients")) for s in splits])
    extra.append(["fingerprint"] + [f'<span class="mono">{_e(data[s].get("fingerprint", "–"))}</span>'
                                    for s in splits])
    numeric = set(range(1, len(splits) + 2))
    table = _table(["class"] + splits + ["total"], rows, numeric=numeric, total_last=True)
    table += _table(["", *splits], extra, numeric=numeric)
    return table


# verdict status -> badge colour
_STATUS_CLASS = {"helps": "good", "hurts": "bad", "inconclusive": "caution", "not run": "neutral",
                 "recognisable": "good", "at or below chance": "bad", "none found": "good", "found": "bad",
                 "ok": "good"}
_VERDICT_ROWS = (("downstream", "Does synthetic data help here?"),
                 ("recognisable", "Are the synthetic images class-recognisable?"),
                 ("near_copies", "Near-copies of training images?"),
                 ("too_small", "What is too small to judge?"))


def _section_verdict(verdict: dict) -> str:
    """The four answers the report leads with (synthmed.report.verdict.run_verdict)."""
    rows = []
    for key, question in _VERDICT_ROWS:
        f = verdict.get(key)
        if not isinstance(f, Mapping):
            continue
        status = str(f.get("status", "–"))
        badge = f'<span class="badge {_STATUS_CLASS.get(status, "caution")}">{_e(status)}</span>'
        if key == "too_small" and f.get("items"):
            detail = "<ul>" + "".join(f"<li>{_e(i)}</li>" for i in f["items"]) + "</ul>"
        else:
            detail = _e(f.get("text"))
        rows.append(f'<tr><th>{_e(question)}</th><td class="answer">{badge}</td><td>{detail}</td></tr>')
    if not rows:
        return ""
    return ('<section class="findings" id="verdict"><h2>What this run found</h2>'
            f'<table><tbody>{"".join(rows)}</tbody></table></section>')


def _section_run_inputs(results: dict) -> str:
    data = results.get("data") if isinstance(results.get("data"), Mapping) else {}
    rows: list[tuple[str, str]] = []
    if data.get("source"):
        rows.append(("dataset source", _e(data["source"])))
    if data.get("split_policy"):
        rows.append(("split policy", _e(data["split_policy"])))
    shape = next((data[s].get("image_shape") for s in ("train", "val", "test")
                  if isinstance(data.get(s), Mapping) and data[s].get("image_shape")), None)
    if shape:
        dims = list(shape)
        channels = {1: "grey", 3: "RGB"}.get(dims[-1], f"{dims[-1]} channels") if len(dims) == 3 else ""
        rows.append(("image size", _e(" × ".join(str(d) for d in dims[:2])) + (f" px, {channels}" if channels else "")))
    if results.get("device"):
        rows.append(("device", _inline(results["device"])))
    if results.get("seeds") is not None:
        rows.append(("seeds", _inline(results["seeds"])))
    skipped = [(s, data[s]["skipped"]) for s in ("train", "val", "test")
               if isinstance(data.get(s), Mapping) and data[s].get("skipped")]
    for split, sk in skipped:
        n = len(sk) if isinstance(sk, (list, tuple, Mapping)) else sk
        rows.append((f"skipped files ({split})", _e(_num(n)) if isinstance(n, int) else _inline(n)))
    counts = _split_counts_table(data)
    if not rows and not counts:
        return ""
    return ('<section class="box" id="inputs"><h2>What this run used</h2>'
            + (_kv_table(rows) if rows else "") + counts + "</section>")


def _section_warnings(results: dict) -> str:
    warnings = results.get("warnings") or []
    if isinstance(warnings, str):
        warnings = [warnings]
    if not warnings:
        return ""
    items = "".join(f"<li>{_e(w)}</li>" for w in warnings)
    return f'<section class="warnings" id="warnings"><h2>⚠ Warnings</h2><ul>{items}</ul></section>'


def _section_images(real: ImageDataset | None, synthetic: ImageDataset | None, seed: int = 0) -> str:
    sets = [(label, ds) for label, ds in (("real (training split)", real), ("synthetic", synthetic))
            if ds is not None]
    class_names: list[str] = []
    for _, ds in sets:
        for c in ds.class_names:
            if c not in class_names:
                class_names.append(c)
    header = "<th>class</th>" + "".join(f"<th>{_e(label)}</th>" for label, _ in sets)
    rows = []
    for c in class_names:
        cells = [f"<th>{_e(c)}</th>"]
        for label, ds in sets:
            if c not in ds.class_names:
                cells.append('<td class="muted">class not in this set</td>')
                continue
            k = ds.class_names.index(c)
            n = int(np.sum(ds.labels == k))
            if n == 0:
                cells.append('<td class="muted">no images</td>')
                continue
            grid = class_grid(ds, k, n=IMAGES_PER_CLASS_SHOWN, columns=GRID_COLUMNS, seed=seed)
            # ~GRID_CELL_PX per image whatever the native size, so 28 px and 128 px sets both read
            # well; small images by a whole factor, so every source pixel stays the same size
            size = max(ds.image_size, 1)
            zoom = max(1, round(GRID_CELL_PX / size)) if size <= GRID_CELL_PX else GRID_CELL_PX / size
            width = round(grid.shape[1] * zoom)
            shown = min(n, IMAGES_PER_CLASS_SHOWN)
            cells.append(f"<td>{_zoom_img(grid, f'{label} images of class {c}', width)}"
                         f'<div class="muted">{shown} of {n:,}</div></td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    table = f'<table class="grid-table"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    drawn_from = "; ".join(f"{_e(label)}: {len(ds):,} images ({_e(_count_summary(ds))})" for label, ds in sets)
    caption = (f"Each row shows up to {IMAGES_PER_CLASS_SHOWN} images of one class, picked at random "
               f"(seed {seed}); click a grid to enlarge it, click again to close. Drawn from {drawn_from}.")
    intro = ("<p>Real training images next to synthetic images of the same class. Look for the "
             "class-defining features, for artefacts, and for synthetic images that are near copies "
             "of the real ones.</p>")
    return f'<section id="images"><h2>Real vs synthetic images</h2>{intro}{_figure(table, caption)}</section>'


def _count_summary(ds: ImageDataset) -> str:
    return ", ".join(f"{c} {n:,}" for c, n in zip(ds.class_names, ds.class_counts()))


def _section_extra_grids(extra_grids: dict[str, np.ndarray]) -> str:
    # each grid on its own, so one bad array costs only its own figure
    figs = [_safe(f"grid {name!r}", lambda n=name, a=arr: _figure(_zoom_img(np.asarray(a), str(n)), _e(n)))
            for name, arr in extra_grids.items()]
    return f'<section id="more-images"><h2>More image grids</h2>{"".join(figs)}</section>'


def _moving_average(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    ys = np.array([p[1] for p in points], dtype=float)
    kernel = np.ones(window) / window
    smooth = np.convolve(ys, kernel, mode="valid")
    # each mean is drawn at the centre of its window, so the smoothed curve does not lag the raw one
    start = (window - 1) // 2
    xs = [p[0] for p in points][start : start + len(smooth)]
    return list(zip(xs, smooth.tolist()))


def _fd_chart(curve: Any, reference: Any) -> str:
    points = [(float(p[0]), float(p[1])) for p in (curve or []) if p is not None and len(p) >= 2]
    what = reference.get("features") if isinstance(reference, Mapping) else None
    return _inline_svg(line_chart_svg({"FD": points}, f"FD during training ({what or 'monitor features'})",
                                      "kimg", "FD", log_y=True, width=530, height=320))


def _loss_chart(curve: Any, title: str, log_y: bool = True) -> str:
    points = [(float(p[0]), float(p[1])) for p in (curve or []) if p is not None and len(p) >= 2]
    series: dict[str, list[tuple[float, float]]] = {"loss": points}
    styles: dict[str, dict] = {}
    if len(points) >= 50:
        # per-step losses of diffusion models are very noisy; the running mean shows the trend
        window = max(5, len(points) // 25)
        series = {"loss (per logged step)": points, f"running mean ({window} points)": _moving_average(points, window)}
        styles = {"loss (per logged step)": {"color": "#9cc3e4", "width": 1.0},
                  f"running mean ({window} points)": {"color": "#0b3d91", "width": 2.2}}
    # two charts of this width fit side by side in the page
    return _inline_svg(line_chart_svg(series, title, "training step", "loss", log_y=log_y, styles=styles,
                                      width=530, height=320))


def _section_generator(g: dict) -> str:
    adversarial = bool(g.get("adversarial"))
    # a GAN's (discriminator) loss can be negative (WGAN) and does not fall as it learns: linear axis
    charts = [_loss_chart(g.get("loss_curve"), "Discriminator loss" if adversarial else "Generator training loss",
                          log_y=not adversarial)]
    if g.get("fd_curve"):
        charts.append(_fd_chart(g["fd_curve"], g.get("fd_reference")))
    ae = g.get("autoencoder") if isinstance(g.get("autoencoder"), Mapping) else None
    if ae and ae.get("loss_curve"):
        charts.append(_loss_chart(ae["loss_curve"], "Autoencoder training loss"))
    rows: list[tuple[str, str]] = []
    known = {
        "kind": ("generator", _e),
        "space": ("works in", _e),
        "latent_shape": ("latent shape", lambda v: _e("×".join(str(d) for d in v))),
        "num_parameters": ("parameters", _count_params),
        "train_steps": ("training steps", _num),
        "train_kimg": ("training progress", lambda v: f"{_num(v)} kimg (thousands of real images shown)"),
        "sampling_network": ("samples drawn from", _e),
        "truncation": ("truncation", _e),
        "train_seconds": ("training time", _seconds),
        "images_per_second": ("training throughput", lambda v: f"{_num(v)} images/s"),
        "train_fingerprint": ("trained on split", lambda v: f'<span class="mono">{_e(v)}</span>'),
    }
    for key, (label, fmt) in known.items():
        if g.get(key) is not None:
            rows.append((label, fmt(g[key])))
    rows += _timing_rows(g.get("budget"), g.get("estimate"), "")
    if ae:
        rows += _timing_rows(ae.get("budget"), ae.get("estimate"), "autoencoder ")
        rec = ae.get("reconstruction") or {}
        if rec:
            parts = []
            if rec.get("mse") is not None:
                parts.append(f"MSE {_num(rec['mse'])}")
            psnr = rec.get("psnr", rec.get("psnr_db"))
            if psnr is not None:
                parts.append(f"PSNR {_num(psnr)} dB")
            parts += [f"{_e(k)} {_e(_num(v))}" for k, v in rec.items() if k not in ("mse", "psnr", "psnr_db", "note")]
            rows.append(("autoencoder reconstruction", ", ".join(parts)))
        judged = ae.get("reconstruction_judge")
        if isinstance(judged, Mapping) and judged.get("accuracy_reconstructed") is not None:
            # the number that says whether the decoder keeps what tells the classes apart
            worst = min(((c, e) for c, e in (judged.get("per_class") or {}).items()
                         if isinstance(e, Mapping) and e.get("drop") is not None),
                        key=lambda ce: -ce[1]["drop"], default=None)
            text = (f"judge accuracy {_num(judged['accuracy_reconstructed'])} on reconstructions vs "
                    f"{_num(judged.get('accuracy_original'))} on the originals "
                    f"({_num(-100 * (judged.get('drop') or 0) + 0.0)} points; {_num(judged.get('n'))} real validation "
                    f"images; same label {_num(judged.get('agreement'))})")
            if worst is not None and worst[1]["drop"] > 0:
                text += f"; most lost: class {_e(worst[0])} ({_num(-100 * worst[1]['drop'])} points)"
            rows.append(("autoencoder reconstructions, judged", text))
        for k, v in ae.items():
            if k not in ("reconstruction", "loss_curve") and not isinstance(v, (Mapping, list)):
                rows.append((f"autoencoder {k.replace('_', ' ')}", _e(_num(v))))
    skip = set(known) | {"loss_curve", "autoencoder", "config", "adversarial", "fd_curve", "fd_reference"}
    for k, v in g.items():
        if k not in skip and v is not None and not isinstance(v, (Mapping, list)):
            rows.append((k.replace("_", " "), _e(_num(v))))
    config = ""
    if g.get("config"):
        config = f"<details><summary>generator config</summary><pre>{_e(_yaml(g['config']))}</pre></details>"
    caption = ("Training loss on a log scale; with many logged steps the light line is the loss as logged "
               "and the dark line its running mean.")
    if adversarial:
        caption = ("The discriminator's loss (linear scale): a GAN's losses stay level while it learns, so they "
                   "say little about quality" + ("; the FD curve (against kimg, in the monitor's features, not "
                   "comparable with the evaluation's FD) is what picked the snapshot that samples." if g.get("fd_curve")
                   else "."))
    return ('<section id="generator"><h2>Generator training</h2>'
            + _figure(f'<div class="charts">{"".join(charts)}</div>', caption)
            + _kv_table(rows) + config + "</section>")


def _timing_rows(budget: Any, estimate: Any, prefix: str) -> list[tuple[str, str]]:
    """Rows of the time budget (generator.budget_minutes) and of the estimate made after the first steps."""
    rows = []
    if isinstance(budget, Mapping):
        limit = (f"{_num(budget['budget_minutes'])} min" if budget.get("budget_minutes") is not None
                 else _seconds(budget.get("budget_seconds")))
        if budget.get("seconds_per_step"):
            text = (f"{limit}: {_num(budget.get('chosen_steps'))} of at most {_num(budget.get('train_steps_cap'))} "
                    f"steps, from {_num(budget['seconds_per_step'], 3)} s/step measured over "
                    f"{_num(budget.get('measured_over_steps'))} steps")
        else:
            text = f"{limit}: the run ended before its speed was measured"
        if budget.get("stopped_at_step") is not None:
            text += (f"; the time was up at step {_num(budget['stopped_at_step'])} (the steps got slower than "
                     "measured), training stopped there")
        rows.append((f"{prefix}time budget", _e(text)))
    if isinstance(estimate, Mapping) and estimate.get("seconds_per_step"):
        rows.append((f"{prefix}estimate after the first steps",
                     _e(f"{_seconds(estimate.get('estimated_seconds'))} ({_num(estimate['seconds_per_step'], 3)} "
                        f"s/step x {_num(estimate.get('steps'))} steps)")))
    return rows


def _section_guidance_selection(sel: Mapping) -> str:
    rows = []
    for r in sel.get("candidates") or []:
        mark = " (chosen)" if r.get("guidance") == sel.get("chosen") else ""
        rows.append([_e(_num(r.get("guidance"))) + mark, _frac(r.get("conditional_accuracy")),
                     _frac(r.get("coverage")), f"<b>{_frac(r.get('score'))}</b>" if mark else _frac(r.get("score")),
                     _seconds(r.get("seconds"))])
    intro = (f"<p>Guidance scale {_e(_num(sel.get('chosen')))} was chosen after training: "
             f"{_e(_num(sel.get('samples_per_class')))} images per class were generated at each candidate scale "
             f"(the same noise for every scale) and scored by {_e(sel.get('criterion'))}, against the "
             f"{_e(_num(sel.get('num_real')))} real validation images. The test split was not used. The judge that "
             "scores them was early-stopped on the same validation split.</p>")
    if sel.get("at_edge"):
        intro += ("<p><b>The chosen scale is the end of the range tried</b>: a scale beyond it may score higher; "
                  "widen <code>generator.guidance_candidates</code>.</p>")
    table = _table(["guidance", "conditional accuracy", "coverage", "score", "time"], rows, numeric={1, 2, 3, 4})
    return f"<h3>Guidance chosen on validation data</h3>{intro}{table}"


def _section_sampling(s: dict) -> str:
    rows: list[tuple[str, str]] = []
    for key, label in (("sampler", "sampler"), ("steps", "sampling steps"), ("guidance", "guidance scale")):
        if s.get(key) is not None:
            chosen_here = key == "guidance" and isinstance(s.get("guidance_selection"), Mapping)
            rows.append((label, _e(_num(s[key])) + (" (chosen on the validation split, below)" if chosen_here else "")))
    per_class = s.get("num_per_class")
    if isinstance(per_class, Mapping) and per_class:
        total = sum(v for v in per_class.values() if _is_number(v))
        rows.append(("images generated", f"{_num(total)} ({_inline(per_class)})"))
    if s.get("seconds") is not None:
        rows.append(("sampling time", _seconds(s["seconds"])))
    if s.get("images_per_second") is not None:
        rows.append(("sampling throughput", f"{_num(s['images_per_second'])} images/s"))
    done = {"sampler", "steps", "guidance", "num_per_class", "seconds", "images_per_second"}
    for k, v in s.items():
        if k not in done and v is not None and not isinstance(v, (Mapping, list)):
            rows.append((k.replace("_", " "), _e(_num(v))))
    chosen = ""
    if isinstance(s.get("guidance_selection"), Mapping):
        chosen = _safe("guidance selection", lambda: _section_guidance_selection(s["guidance_selection"]))
    return f'<section id="sampling"><h2>Sampling</h2>{_kv_table(rows)}{chosen}</section>'


def _section_conditional_accuracy(ca: dict) -> str:
    judge = ca.get("judge") if isinstance(ca.get("judge"), Mapping) else {}
    per_class = ca.get("per_class") if isinstance(ca.get("per_class"), Mapping) else {}
    real_per_class = judge.get("real_test_accuracy_per_class") or {}
    chance = ca.get("chance")
    explain = (
        "<p>The <b>conditional accuracy</b> of class <i>c</i> is the fraction of synthetic images "
        "generated for class <i>c</i> that a classifier (the <i>judge</i>), trained only on the real "
        "training split, assigns to class <i>c</i>. Read it next to the judge's accuracy on real test "
        "images of the same class, which is roughly the best a synthetic class can score with this judge: "
        "close to it means the synthetic images carry the class's features as clearly as real ones; "
        "close to chance means the generator ignores the class label. A high score alone does not "
        "show that the images are realistic or varied.</p>"
    )
    judge_rows: list[tuple[str, str]] = []
    for key, label in (("arch", "judge architecture"), ("trained_on", "trained on"),
                       ("num_train_images", "training images")):
        if judge.get(key) is not None:
            judge_rows.append((label, _e(_num(judge[key]))))
    if judge.get("train_fingerprint"):
        judge_rows.append(("training split fingerprint", f'<span class="mono">{_e(judge["train_fingerprint"])}</span>'))
    if judge.get("real_test_accuracy") is not None:
        judge_rows.append(("judge accuracy on real test images", _frac(judge["real_test_accuracy"])))
    scored_by = ca.get("scored_by") if isinstance(ca.get("scored_by"), Mapping) else {}
    independence = ""
    if scored_by.get("role") == "independent grader":
        selector = scored_by.get("selector") if isinstance(scored_by.get("selector"), Mapping) else {}
        judge_rows.append(("scored by", f"independent judge: {_e(scored_by.get('arch'))} seed "
                                        f"{_e(_plain(scored_by.get('seed')))}, weights "
                                        f'<span class="mono">{_e(scored_by.get("weights_hash"))}</span>'))
        independence = (
            f"<p><b>Scored by an independent judge ({_e(scored_by.get('arch'))} seed {_e(_plain(scored_by.get('seed')))}), "
            f"not the selecting classifier</b> ({_e(selector.get('arch'))} seed {_e(_plain(selector.get('seed')))}, "
            "which kept these images for its own confidence and would call nearly all of them correct). Both were "
            "trained on the same real training split; the independent judge's own accuracy on real test images is "
            "the reference below.</p>")

    rows = []
    chart_syn, chart_real, groups = [], [], []
    for c, entry in per_class.items():
        entry = entry if isinstance(entry, Mapping) else {"accuracy": entry}
        acc = entry.get("accuracy")
        real_acc = real_per_class.get(c)
        note = ""
        if _is_number(acc) and _is_number(chance) and acc <= chance:
            note = "at or below chance"
        elif _is_number(acc) and _is_number(real_acc) and real_acc > 0:
            note = f"{acc / real_acc:.0%} of the judge's real-image accuracy"
        rows.append([_e(c), _num(entry.get("n")), _frac(acc), _frac(real_acc), _frac(chance), _e(note)])
        groups.append(str(c))
        chart_syn.append((acc, None) if _is_number(acc) else None)
        chart_real.append((real_acc, None) if _is_number(real_acc) else None)
    if ca.get("overall") is not None:
        n_all = sum(e.get("n", 0) for e in per_class.values() if isinstance(e, Mapping) and _is_number(e.get("n")))
        rows.append(["all classes", _num(n_all) if n_all else "–", _frac(ca["overall"]),
                     _frac(judge.get("real_test_accuracy")), _frac(chance), ""])
        groups.append("all classes")
        chart_syn.append((ca["overall"], None))
        real_overall = judge.get("real_test_accuracy")
        chart_real.append((real_overall, None) if _is_number(real_overall) else None)
    table = _table(["class", "synthetic images", "conditional accuracy (synthetic)",
                    "judge accuracy (real test)", "chance", "note"], rows,
                   numeric={1, 2, 3, 4}, total_last=ca.get("overall") is not None)
    chart = ""
    if groups:
        series = {"synthetic (conditional accuracy)": chart_syn, "real test images (judge accuracy)": chart_real}
        svg = bar_chart_svg(groups, series, "Is each synthetic class recognised as that class?", "accuracy",
                            y_max=1.0, reference=(float(chance), f"chance {float(chance):.2f}")
                            if _is_number(chance) else None)
        chart = _figure(_inline_svg(svg), "Bars: fraction classified as the intended class. Dashed line: chance.")
    return ('<section id="conditional-accuracy"><h2>Are the synthetic images class-recognisable?</h2>'
            + explain + independence + (_kv_table(judge_rows) if judge_rows else "") + table + chart + "</section>")


def _mean_std(entry: Any) -> str:
    if not isinstance(entry, Mapping):
        return _frac(entry) if _is_number(entry) else "–"
    mean, std = entry.get("mean"), entry.get("std")
    if mean is None:
        return "–"
    return _frac(mean) + (f" ± {_frac(std)}" if _is_number(std) else "")


def _signed(v: float) -> str:
    return f"{v:+.3f}"


def downstream_verdict(down: dict) -> str:
    """The downstream verdict (helps / hurts / inconclusive from the paired 95% interval over
    seeds, see :mod:`synthmed.report.verdict`) as one plain-text sentence, numbers included."""
    diffs = down.get("paired_difference") if isinstance(down.get("paired_difference"), Mapping) else {}
    arms = down.get("arms") if isinstance(down.get("arms"), Mapping) else {}
    first = next(iter(arms.values()), {}) if arms else {}
    train_counts = (first.get("composition") or {}).get("real") if isinstance(first, Mapping) else None
    f = downstream_finding(diffs, seeds=down.get("seeds"), n_test=down.get("n_test"),
                           per_class=down.get("per_class"),
                           train_counts=train_counts if isinstance(train_counts, Mapping) else None,
                           test_split=_test_split_name(down.get("test_split")))
    if f["status"] == "not run":
        return "No paired difference between the arms was recorded, so no verdict is given."
    text = f"{f['status'].capitalize()}. {f['text']}"
    if 1 < f["n_seeds"] < MIN_SEEDS_FOR_EVIDENCE:
        text += (f" With only {f['n_seeds']} seeds this evidence is weak (the sign of a small difference can flip "
                 f"between reruns); run at least {MIN_SEEDS_FOR_EVIDENCE} seeds before relying on it.")
    if _is_number(f.get("n_test")) and f["n_test"] > 0:
        text += f" For scale: on {f['n_test']:,} test images, one image is {1 / f['n_test']:.3f} of accuracy."
    return text


def _test_split_name(name: Any) -> str:
    name = str(name or "test")
    name = name if name.startswith("real") else f"real {name}"
    return name if name.endswith("split") else f"{name} split"


def diff_label_plain(arm_names: list[str]) -> str:
    # the paired difference is taken as last arm minus first arm (the augmented arm minus the baseline)
    return f"paired difference ({arm_names[-1]} − {arm_names[0]})" if len(arm_names) >= 2 else "paired difference"


def _section_downstream(down: dict) -> str:
    arms = down.get("arms") if isinstance(down.get("arms"), Mapping) else {}
    diffs = down.get("paired_difference") if isinstance(down.get("paired_difference"), Mapping) else {}
    metrics: list[str] = []
    for arm in arms.values():
        for m in (arm.get("metrics") or {}) if isinstance(arm, Mapping) else {}:
            if m not in metrics:
                metrics.append(m)
    arm_names = list(arms)
    diff_label = _e(diff_label_plain(arm_names))
    header = ["metric"] + [_e(a) for a in arm_names] + ([diff_label] if diffs else [])
    rows = []
    for m in metrics:
        row = [_e(m.replace("_", " "))]
        row += [_mean_std((arms[a].get("metrics") or {}).get(m)) for a in arm_names]
        if diffs:
            row.append(_diff_ci_cell(diffs.get(m), with_std=True))
        rows.append(row)
    table = _table(header, rows, numeric=set(range(1, len(header))))

    seeds = down.get("seeds")
    n_seeds = len(seeds) if isinstance(seeds, (list, tuple)) else None
    test_split = down.get("test_split", "test")
    std_kind = down.get("std", "standard deviation")
    bits = []
    if n_seeds is not None:
        bits.append(f"{n_seeds} seed{'s' if n_seeds != 1 else ''} ({_inline(seeds)})")
    bits.append(f"evaluated on the {_e(_test_split_name(test_split))}"
                + (f" (n={_num(down['n_test'])})" if down.get("n_test") is not None else ""))
    std_kind = str(std_kind).split(";")[0].replace(" over seeds", "")  # "sample standard deviation (ddof=1)"
    caption = (", ".join(bits) + f". Values are mean ± {_e(std_kind)} across seeds; the paired difference is "
               "computed per seed (same seed, same real data) and then averaged; under it its 95% t interval "
               "over seeds, in bold when it excludes 0.")

    chart = ""
    if metrics and arm_names:
        series = {}
        for a in arm_names:
            entries = []
            for m in metrics:
                e = (arms[a].get("metrics") or {}).get(m)
                entries.append((e.get("mean"), e.get("std")) if isinstance(e, Mapping) else None)
            series[a] = entries
        labels = [m.replace("_", " ") for m in metrics]
        charts = [bar_chart_svg(labels, series, "Classifier scores on the real test split", "score",
                                y_max=1.0, width=530)]
        diff_entries = []
        for m in metrics:
            d = diffs.get(m)
            lo, hi, _ = interval(d)
            # the error bar is the statement the verdict reads: the 95% interval (symmetric t interval)
            diff_entries.append((d.get("mean"), (hi - lo) / 2 if lo is not None else None)
                                if isinstance(d, Mapping) else None)
        if any(e is not None for e in diff_entries):
            # on a 0-1 axis a few points of difference are barely visible; this chart zooms in on them
            charts.append(bar_chart_svg(labels, {diff_label_plain(arm_names): diff_entries},
                                        "Paired difference per metric (95% CI)", "difference", width=530))
        chart = _figure(f'<div class="charts">{"".join(_inline_svg(c) for c in charts)}</div>',
                        "Scores: mean across seeds, error bars ± one standard deviation across seeds. Paired "
                        "difference: mean, error bars its 95% t interval over seeds (a bar whose interval "
                        "crosses 0 is no evidence either way).")

    per_seed = ""
    if diffs and any(isinstance(d, Mapping) and d.get("values") for d in diffs.values()):
        n_vals = max(len(d.get("values") or []) for d in diffs.values() if isinstance(d, Mapping))
        seed_labels = [str(s) for s in seeds] if isinstance(seeds, (list, tuple)) and len(seeds) == n_vals \
            else [str(i) for i in range(n_vals)]
        rows_ps = []
        for m, d in diffs.items():
            vals = list(d.get("values") or []) if isinstance(d, Mapping) else []
            rows_ps.append([_e(m.replace("_", " "))] + [_signed(float(v)) if _is_number(v) else "–"
                                                         for v in vals + [None] * (n_vals - len(vals))])
        per_seed = ("<h3>Paired difference per seed</h3>"
                    + _table(["metric"] + [f"seed {_e(s)}" for s in seed_labels], rows_ps,
                             numeric=set(range(1, n_vals + 1))))

    setup_rows: list[tuple[str, str]] = []
    if isinstance(down.get("classifier"), Mapping) and down["classifier"]:
        setup_rows.append(("classifier", _inline(down["classifier"])))
    for a in arm_names:
        comp = arms[a].get("composition") if isinstance(arms[a], Mapping) else None
        if comp:
            setup_rows.append((f"training data: {a}", _inline(comp)))

    verdict = f'<p class="verdict">{_e(downstream_verdict(down))}</p>'
    per_class = _safe("per-class downstream metrics", lambda: _downstream_per_class(down, arm_names))
    confusion = _safe("confusion matrices", lambda: _downstream_confusion(down, arm_names))
    return ('<section id="downstream"><h2>Does synthetic data help a classifier?</h2>'
            + verdict + _figure(table, caption) + per_class + confusion + chart + per_seed
            + ("<h3>Classifier and training data</h3>" + _kv_table(setup_rows) if setup_rows else "")
            + "</section>")


def _diff_ci_cell(d: Any, with_std: bool = False) -> str:
    """A paired difference: mean (± std), its 95% interval underneath, bold when it excludes 0."""
    if not isinstance(d, Mapping) or not _is_number(d.get("mean")):
        return "–"
    text = _signed(float(d["mean"])) + (f" ± {_frac(d['std'])}" if with_std and _is_number(d.get("std")) else "")
    lo, hi, _ = interval(d)
    if lo is None:
        return text + '<br><span class="muted">no interval (1 seed)</span>'
    ci = f"[{_signed(lo)}, {_signed(hi)}]"
    if lo > 0 or hi < 0:
        return f"<b>{text}</b><br><b>{ci}</b>"
    return f'{text}<br><span class="muted">{ci}</span>'


def _downstream_per_class(down: dict, arm_names: list[str]) -> str:
    """Precision, recall and F1 per class for both arms and their paired difference."""
    per_class = down.get("per_class")
    if not isinstance(per_class, Mapping) or not per_class:
        return ""
    metrics = [m for m in ("recall", "f1", "precision")
               if any(isinstance(e, Mapping) and isinstance(e.get(m), Mapping) for e in per_class.values())]
    first = next(iter(down.get("arms", {}).values()), {}) if down.get("arms") else {}
    train_counts = ((first.get("composition") or {}).get("real") or {}) if isinstance(first, Mapping) else {}
    train_counts = train_counts if isinstance(train_counts, Mapping) else {}
    short = {"real": "real", "augmented": "+ syn.", "difference": "Δ [95% CI]"}
    top = '<th rowspan="2">class</th><th rowspan="2" class="num">train</th><th rowspan="2" class="num">test</th>'
    top += "".join(f'<th colspan="3">{_e(m if m != "f1" else "F1")}</th>' for m in metrics)
    sub = "".join(f'<th class="num">{_e(short[k])}</th>' for _ in metrics for k in short)
    rows = []
    for c, e in per_class.items():
        if not isinstance(e, Mapping):
            continue
        cells = [f"<td>{_e(c)}</td>", f'<td class="num">{_num(train_counts.get(c))}</td>',
                 f'<td class="num">{_num(e.get("support"))}</td>']
        for m in metrics:
            entry = e.get(m) if isinstance(e.get(m), Mapping) else {}
            cells += [f'<td class="num">{_mean_std(entry.get("real"))}</td>',
                      f'<td class="num">{_mean_std(entry.get("augmented"))}</td>',
                      f'<td class="num">{_diff_ci_cell(entry.get("difference"))}</td>']
        rows.append("<tr>" + "".join(cells) + "</tr>")
    names = f"{arm_names[0]} vs {arm_names[-1]}" if len(arm_names) >= 2 else "the two arms"
    table = (f'<table class="compact"><thead><tr>{top}</tr><tr>{sub}</tr></thead>'
             f"<tbody>{''.join(rows)}</tbody></table>")
    caption = (f"Per class on the real test split, {_e(names)}: mean ± std across seeds; Δ: paired difference "
               "(real + synthetic − real only) with its 95% t interval over seeds, in bold when it excludes 0. "
               "On imbalanced data watch the small classes: their recall is what synthetic images are meant "
               "to lift, and an overall score can hide it.")
    return "<h3>Per class</h3>" + _figure(table, caption)


def _downstream_confusion(down: dict, arm_names: list[str]) -> str:
    """Test-set confusion matrix per arm, summed over seeds, shaded by row fraction."""
    cm = down.get("confusion_matrix")
    if not isinstance(cm, Mapping):
        return ""
    names = list(cm.get("class_names") or [])
    labels = {"real": arm_names[0] if arm_names else "real only",
              "augmented": arm_names[-1] if len(arm_names) >= 2 else "real + synthetic"}
    tables = []
    for key, label in labels.items():
        m = np.asarray(cm.get(key) or [], dtype=np.int64)
        if m.ndim != 2 or m.shape != (len(names), len(names)):
            continue
        head = '<th class="muted">true ↓ predicted →</th>' + "".join(f'<th class="num">{_e(n)}</th>' for n in names)
        body = []
        for i, n in enumerate(names):
            total = int(m[i].sum())
            cells = []
            for j in range(len(names)):
                share = m[i, j] / total if total else 0.0
                # blue on the diagonal (right), red off it (wrong); the shade is the row fraction
                rgb = (11, 92, 173) if i == j else (192, 57, 43)
                bg = f"rgba({rgb[0]},{rgb[1]},{rgb[2]},{0.08 + 0.5 * share:.2f})" if m[i, j] else "transparent"
                cells.append(f'<td class="num" style="background:{bg}" title="{share:.1%} of true {_e(n)}">'
                             f"{int(m[i, j]):,}</td>")
            body.append(f"<tr><th>{_e(n)}</th>{''.join(cells)}</tr>")
        tables.append(f'<div><h3>{_e(label)}</h3><table class="confusion compact"><thead><tr>{head}</tr></thead>'
                      f"<tbody>{''.join(body)}</tbody></table></div>")
    if not tables:
        return ""
    n_seeds = cm.get("n_seeds")
    caption = ("Confusion matrices on the real test split: rows are the true class, columns the predicted one, "
               + (f"summed over {int(n_seeds)} seed{'s' if n_seeds != 1 else ''} (each row adds up to seeds × "
                  "test images of that class)" if _is_number(n_seeds) else "summed over seeds")
               + "; the shade is the fraction of the row.")
    return _figure(f'<div class="cms">{"".join(tables)}</div>', caption)


def _metric_cell(entry: Any) -> str:
    """value, then its bootstrap CI or ± std underneath when present."""
    if not isinstance(entry, Mapping) or entry.get("value") is None:
        return "–"
    text = _num(entry["value"], 3)
    if entry.get("ci_low") is not None and entry.get("ci_high") is not None:
        text += f'<br><span class="muted">[{_num(entry["ci_low"], 3)}, {_num(entry["ci_high"], 3)}]</span>'
    elif entry.get("std") is not None:
        text += f' <span class="muted">± {_num(entry["std"], 2)}</span>'
    return text


def _section_evaluation(ev: dict) -> str:
    header = ev.get("header") or {}
    metrics = list(header.get("metrics") or [])
    ex = header.get("extractor") or {}
    rows = []
    for row in ev.get("rows") or []:
        flag = " ⚠" if row.get("warnings") else ""
        rows.append([_e(row.get("class")) + flag, _num(row.get("n_real")), _num(row.get("n_synthetic"))]
                    + [_metric_cell((row.get("metrics") or {}).get(m)) for m in metrics])
    if rows:  # the total row comes first in the data; show it last like the other tables
        rows = rows[1:] + rows[:1]
    table = _table(["class", "real", "synthetic"] + [_e(m) for m in metrics], rows,
                   numeric=set(range(1, 3 + len(metrics))), total_last=True)
    table = table.replace("<table>", '<table class="compact">', 1)  # nine metric columns: fit 1400 px
    real, syn = header.get("real") or {}, header.get("synthetic") or {}
    ex_bits = [f"<b>{_e(ex.get('name', '?'))}</b>"]
    if ex.get("trained_on"):
        ex_bits.append(f"trained on the real training split ({_e(ex.get('trained_on'))}, "
                       f"{_num(ex.get('n_train'))} images)")
    if ex.get("weights_hash"):
        ex_bits.append(f'weights <span class="mono">{_e(ex["weights_hash"])}</span>')
    if ex.get("input_policy"):
        ex_bits.append(_e(ex["input_policy"]))
    caption = (f"Features: {', '.join(ex_bits)}. Real: '{_e(real.get('name'))}' ({_num(real.get('num_images'))} images); "
               f"synthetic: {_num(syn.get('num_images'))} images. k = {_num(header.get('k'))} for the k-NN metrics; "
               f"brackets: {int(round(100 * (1 - header.get('alpha', 0.05))))}% intervals, "
               f"{_e(header.get('ci_method', 'bootstrap'))} (n_boot = {_num(header.get('n_boot'))}; FID's interval is for "
               f"the FID at these image counts, its bias-corrected value is in metrics.json). "
               f"SSIM pairing: {_e(header.get('pairing_policy', '–'))}.")
    explain = ("<p>Lower FID/KID: synthetic features distributed more like real ones. <b>Precision</b>: fraction of "
               "synthetic images inside the real feature manifold (fidelity); <b>recall</b>: fraction of real images "
               "inside the synthetic manifold (diversity); density/coverage are their outlier-robust versions. "
               "These numbers are only comparable between runs with the same feature extractor and image counts.</p>")
    warns = ev.get("warnings") or []
    warn_html = ("<details><summary>" + f"{len(warns)} metric warnings</summary><ul>"
                 + "".join(f"<li>{_e(w)}</li>" for w in warns) + "</ul></details>") if warns else ""
    scroll_table = f'<div class="scroll">{table}</div>'  # nine metric columns overflow narrow windows
    return (f'<section id="evaluation"><h2>How close are the synthetic images to real ones?</h2>{explain}'
            f"{_figure(scroll_table, caption)}{warn_html}</section>")


def _section_diversity(div: dict) -> str:
    rows = []
    for c, e in (div.get("per_class") or {}).items():
        if not isinstance(e, Mapping):
            continue
        flag = "<b>collapsed?</b>" if e.get("collapsed") else "ok"
        rows.append([_e(c), _num(e.get("n_synthetic")), _num(e.get("synthetic_spread")), _num(e.get("real_spread")),
                     _num(e.get("spread_ratio"), 3), _frac(e.get("recall")), _frac(e.get("coverage")), flag])
    table = _table(["class", "synthetic images", "synthetic spread", "real spread", "ratio", "recall", "coverage",
                    "guard"], rows, numeric={1, 2, 3, 4, 5, 6})
    caption = (f"Spread: mean pairwise feature distance within a class. A class is flagged when "
               f"{_e(div.get('criterion') or '')}; recall and coverage (k = {_e(_num(div.get('k')))}) of the "
               "synthetic class against the real class are shown beside it.")
    return ('<section id="diversity"><h2>Is each class as varied as the real one?</h2>'
            "<p>A class-conditional generator can collapse a class to a few images and still look recognisable; "
            "this guard compares the variety of each class's synthetic images with that of its real images.</p>"
            f"{_figure(table, caption)}</section>")


def _section_memorisation(audit: dict) -> str:
    per_class = audit.get("per_class") or {}
    rows = [[_e(c), _num(e.get("n")), _num(e.get("n_flagged")), _frac(e.get("fraction_flagged"))]
            for c, e in per_class.items() if isinstance(e, Mapping)]
    overall = audit.get("overall") or {}
    if overall:
        rows.append(["all classes", _num(overall.get("n")), _num(overall.get("n_flagged")),
                     _frac(overall.get("fraction_flagged"))])
    table = _table(["class", "synthetic images", "flagged near-copies", "fraction"], rows, numeric={1, 2, 3},
                   total_last=bool(overall))
    rule = audit.get("rule") or audit.get("rule_text") or ""
    spaces = audit.get("spaces") or {}
    baseline = "; ".join(
        f"{_e(name)} space: threshold {_num(s.get('threshold'))}, {_frac(s.get('baseline_fraction'))} of training "
        "images would be flagged against the rest of the training set"
        for name, s in spaces.items() if isinstance(s, Mapping))
    caption = _e(rule) + (f". Reference rate ({baseline}): compare the synthetic fraction with it." if baseline else "")
    grid_html = ""
    grid = audit.get("worst_pairs_grid")
    pairs = [p for p in audit.get("worst_pairs") or [] if isinstance(p, Mapping)]
    if grid is not None:
        listed = "; ".join(
            f"{i + 1}. {_e(p.get('synthetic_class'))}: pixel distance {_num(p.get('pixel_distance'))}"
            + (" (flipped)" if p.get("flip") not in (None, "none") else "")
            + (", byte-identical" if p.get("exact_copy") else "") + (", flagged" if p.get("flagged") else "")
            for i, p in enumerate(pairs))
        grid_html = _figure(_zoom_img(np.asarray(grid), "closest synthetic/training pairs"),
                            "The synthetic images closest to a training image (left), each next to that training "
                            f"image (right, in the flip that matched), most copy-like first. {listed}")
    return ('<section id="memorisation"><h2>Does the generator copy training images?</h2>'
            "<p>Every synthetic image is compared with its nearest <b>training</b> image. A synthetic image closer to "
            "a training image than real training images usually are to each other is flagged as a near-copy: for "
            "patient data that is a privacy leak, and for the downstream check it is no new information.</p>"
            f"{_figure(table, caption)}{grid_html}</section>")


def _section_selection(sel: dict) -> str:
    per_class = sel.get("per_class") or {}
    reference = sel.get("real_val_acceptance") if isinstance(sel.get("real_val_acceptance"), Mapping) else {}
    ref_rates = reference.get("per_class") or {}
    rows = []
    for c, e in per_class.items():
        if isinstance(e, Mapping):
            generated, accepted = e.get("generated"), e.get("accepted", e.get("kept"))
            rate = e.get("acceptance_rate", accepted / generated if generated and accepted is not None else None)
            row = [_e(c), _num(generated), _num(e.get("kept")), _frac(rate)]
            if reference:
                row.append(_frac(ref_rates.get(c)))
            rows.append(row)
    header = ["class", "generated", "kept", "acceptance"] + (["real validation images passing"] if reference else [])
    table = _table(header, rows, numeric={1, 2, 3, 4})
    calibration = ("<p>The last column applies the same filter to real validation images: the rate a generator "
                   "indistinguishable from real data would get. A class where real images rarely pass is one the "
                   "filter cannot judge.</p>") if reference else ""
    if sel.get("mode") == "confidence":
        s = sel.get("selector") if isinstance(sel.get("selector"), Mapping) else {}
        return ('<section id="selection"><h2>Confidence filtering</h2>'
                f"<p>Kept when the judge ({_e(s.get('arch'))} seed {_e(_plain(s.get('seed')))}, trained on the real "
                f"training split, weights <span class=\"mono\">{_e(s.get('weights_hash'))}</span>) gives the class "
                f"an image was generated for a probability p ≥ {_num(sel.get('tau'))}. Only kept images are used "
                "downstream. Because this classifier chose the images, their conditional accuracy is scored by an "
                "independent judge (see below), never by it.</p>"
                f"{table}{calibration}</section>")
    return ('<section id="selection"><h2>Realism filtering</h2>'
            f"<p>Mode <b>{_e(sel.get('mode'))}</b>, threshold R ≥ {_num(sel.get('threshold'))}, k = {_num(sel.get('k'))} "
            "(realism score of Kynkäänniemi et al. 2019). Only kept images are used downstream.</p>"
            f"{table}{calibration}</section>")


def _section_provenance(results: dict) -> str:
    parts = []
    timings = results.get("timings")
    if isinstance(timings, Mapping) and timings:
        rows = [[_e(k), _seconds(v)] for k, v in timings.items() if k != "total"]
        # a recorded wall-clock total beats the sum of the steps (which misses start-up and I/O)
        total = timings.get("total", sum(float(v) for v in timings.values() if _is_number(v)))
        rows.append(["total (wall clock)" if "total" in timings else "total", _seconds(total)])
        parts.append("<h3>Timings</h3>" + _table(["step", "time"], rows, numeric={1}, total_last=True))
    if results.get("config") is not None:
        parts.append("<h3>Resolved configuration</h3>"
                     "<details><summary>Every setting this run used, defaults included (click to show)</summary>"
                     f"<pre>{_e(_yaml(results['config']))}</pre></details>")
    return f'<section id="provenance"><h2>Provenance</h2>{"".join(parts)}</section>'


def _safe(name: str, render: Callable[[], str]) -> str:
    """Render one section; if it fails, say so in its place and keep the rest of the report."""
    try:
        return render()
    except Exception as exc:  # noqa: BLE001 - losing the whole report for one bad section is worse
        log.warning("report section %r could not be drawn: %s", name, exc, exc_info=True)
        return (f'<section class="error"><b>The {_e(name)} section could not be drawn:</b> '
                f"{_e(type(exc).__name__)}: {_e(exc)}</section>")


# =====================================================================================
# entry point
# =====================================================================================
def render_report(results: dict, real: ImageDataset | None = None, synthetic: ImageDataset | None = None,
                  extra_grids: dict[str, np.ndarray] | None = None) -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    results = results or {}
    body = [_safe("header", lambda: _section_header(results))]
    if isinstance(results.get("verdict"), Mapping):  # the verdict leads, above everything else
        body.append(_safe("verdict", lambda: _section_verdict(results["verdict"])))
    body += [_safe("warnings", lambda: _section_warnings(results)),
            _safe("run inputs", lambda: _section_run_inputs(results))]
    if real is not None or synthetic is not None:
        body.append(_safe("real vs synthetic images", lambda: _section_images(real, synthetic)))
    if extra_grids:
        body.append(_safe("more image grids", lambda: _section_extra_grids(extra_grids)))
    sections: list[tuple[str, str, Callable[[Any], str]]] = [
        ("generator", "generator training", _section_generator),
        ("sampling", "sampling", _section_sampling),
        ("selection", "filtering", _section_selection),
        ("conditional_accuracy", "conditional accuracy", _section_conditional_accuracy),
        ("evaluation", "distribution metrics", _section_evaluation),
        ("diversity", "mode-collapse guard", _section_diversity),
        ("memorisation", "memorisation audit", _section_memorisation),
        ("downstream", "downstream classifier", _section_downstream),
        ("downstream_experiment", "downstream experiment", render_downstream_experiment),
        ("caption_accuracy", "caption accuracy", render_caption_accuracy),
        ("segmentation_downstream", "segmentation downstream", render_segmentation_downstream),
        ("comparison", "generator comparison", render_comparison),
    ]
    for key, name, render in sections:
        if isinstance(results.get(key), Mapping):
            body.append(_safe(name, lambda r=render, k=key: r(results[k])))
    if results.get("config") is not None or results.get("timings"):
        body.append(_safe("provenance", lambda: _section_provenance(results)))
    title = results.get("title") or "synthmed report"
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_e(title)}</title><style>{CSS}</style></head>\n"
            f"<body><main>\n{chr(10).join(b for b in body if b)}\n"
            f'<footer class="meta"><span>generated by synthmed {_e(synthmed.__version__)}</span></footer>'
            "</main></body></html>\n")


def write_report(path: str | Path, results: dict, real: ImageDataset | None = None,
                 synthetic: ImageDataset | None = None,
                 extra_grids: dict[str, np.ndarray] | None = None) -> Path:
    """Write one self-contained HTML report and return its path.

    Sections appear only for the keys present in ``results`` (``title``, ``data``,
    ``warnings``, ``generator``, ``sampling``, ``conditional_accuracy``, ``downstream``,
    ``config``, ``timings``; also ``run_name``, ``device``, ``seeds``, ``created``). ``real``
    and ``synthetic`` add a per-class side-by-side image comparison; ``extra_grids`` adds
    named uint8 image arrays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_report(results, real, synthetic, extra_grids), encoding="utf-8")
    return path
