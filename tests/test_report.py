"""Report figures and the HTML report: grid layout, PNG round trip, chart geometry, self-containment."""

from __future__ import annotations

import base64
import io
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.data.dataset import ImageDataset
from synthmed.report.figures import (
    LinearScale,
    LogScale,
    bar_chart_svg,
    class_strip,
    image_grid,
    line_chart_svg,
    log_ticks,
    nice_ticks,
    png_base64,
    save_png,
)
from synthmed.report.html import downstream_verdict, render_report, write_report

SVG_NS = "{http://www.w3.org/2000/svg}"


# ------------------------------------------------------------------ fixtures
def blob_dataset(per_class=(12, 5, 9), size=28, channels=1, seed=0, synthetic=False,
                 class_names=("2-cell", "3-cell", "4-cell")) -> ImageDataset:
    """Grey or RGB images with a class-dependent number of bright blobs, so grids look like something."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    yy, xx = np.mgrid[:size, :size]
    for k, n in enumerate(per_class):
        for _ in range(n):
            img = rng.normal(40, 8, (size, size))
            for b in range(k + 2):
                cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
                img += 160 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 9) ** 2))
            img = np.clip(img, 0, 255).astype(np.uint8)
            if channels == 3:
                img = np.stack([img, (img * 0.8).astype(np.uint8), (img * 0.6).astype(np.uint8)], axis=-1)
            images.append(img)
            labels.append(k)
    return ImageDataset(np.stack(images), np.array(labels), list(class_names), synthetic=synthetic,
                        name="synthetic" if synthetic else "train")


def _summary(name, counts, classes=("2-cell", "3-cell", "4-cell")):
    return {"name": name, "num_images": sum(counts), "image_shape": [28, 28, 1],
            "classes": dict(zip(classes, counts)), "num_patients": sum(counts) // 4,
            "fingerprint": {"train": "3f9a1c0b7d2e4a61", "val": "b2c4e6f8a0d1c3e5", "test": "0a9f8e2dc4651575"}[name]}


def full_results(class_names=("2-cell", "3-cell", "4-cell")) -> dict:
    rng = np.random.default_rng(1)
    steps = np.arange(0, 3000, 10)
    loss = 0.9 * np.exp(-steps / 400) + 0.04 + rng.normal(0, 0.01, len(steps)) * (1 + np.exp(-steps / 400))
    ae_steps = np.arange(0, 1000, 20)
    ae_loss = 0.2 * np.exp(-ae_steps / 200) + 0.01
    c = list(class_names)
    return {
        "title": "Embryo stages: latent diffusion, 3 seeds",
        "run_name": "embryo-ldm-demo",
        "created": "2025-01-01 12:00 UTC",
        "device": "cpu (2 threads)",
        "seeds": {"split": 0, "generator": 0, "downstream": [0, 1, 2]},
        "data": {
            "source": "embryo (embedded procedural dataset)",
            "split_policy": "patient-stratified 70/10/20, seed 0",
            "train": {**_summary("train", [280, 98, 280], c), "skipped": ["bad1.png", "bad2.png"]},
            "val": _summary("val", [40, 14, 40], c),
            "test": _summary("test", [80, 28, 80], c),
        },
        "warnings": ["Only 28 test images of class '3-cell': per-class accuracies are noisy.",
                     "3 downstream seeds: differences smaller than ~0.02 are not interpretable."],
        "generator": {
            "kind": "latent diffusion (UNet2DConditionModel)", "space": "latent 4×8×8",
            "num_parameters": 3_412_345, "train_steps": 3000, "train_seconds": 1834.2,
            "images_per_second": 104.7,
            "loss_curve": [[int(s), float(v)] for s, v in zip(steps, loss)],
            "autoencoder": {"reconstruction": {"mse": 0.0031, "psnr": 31.2},
                            "loss_curve": [[int(s), float(v)] for s, v in zip(ae_steps, ae_loss)]},
            "train_fingerprint": "a1b2c3d4e5f60718",
            "config": {"lr": 2e-4, "batch_size": 64, "ema": 0.999},
        },
        "sampling": {"sampler": "DDIM", "steps": 50, "guidance": 2.0,
                     "num_per_class": dict(zip(c, [200, 200, 200])), "seconds": 41.3, "images_per_second": 14.5},
        "conditional_accuracy": {
            "judge": {"arch": "resnet18-small", "trained_on": "real train split", "train_fingerprint": "a1b2c3d4e5f60718",
                      "num_train_images": 658, "real_test_accuracy": 0.91,
                      "real_test_accuracy_per_class": dict(zip(c, [0.95, 0.79, 0.93]))},
            "overall": 0.84,
            "per_class": {c[0]: {"accuracy": 0.92, "n": 200}, c[1]: {"accuracy": 0.31, "n": 200},
                          c[2]: {"accuracy": 0.88, "n": 200}},
            "chance": 1 / 3,
        },
        "downstream": {
            "classifier": {"arch": "small CNN", "epochs": 30, "lr": 1e-3},
            "seeds": [0, 1, 2], "n_test": 188, "test_split": "test", "std": "sample std (ddof=1)",
            "arms": {
                "real only": {"composition": {"real": 658},
                              "metrics": {"accuracy": {"mean": 0.862, "std": 0.012, "values": [0.85, 0.87, 0.866]},
                                          "balanced_accuracy": {"mean": 0.801, "std": 0.02, "values": [0.78, 0.82, 0.803]},
                                          "macro_f1": {"mean": 0.81, "std": 0.018, "values": [0.79, 0.825, 0.815]}}},
                "real + synthetic": {"composition": {"real": 658, "synthetic": 600},
                                     "metrics": {"accuracy": {"mean": 0.874, "std": 0.01, "values": [0.865, 0.885, 0.872]},
                                                 "balanced_accuracy": {"mean": 0.842, "std": 0.015, "values": [0.83, 0.859, 0.837]},
                                                 "macro_f1": {"mean": 0.845, "std": 0.012, "values": [0.833, 0.857, 0.845]}}},
            },
            "per_class": {
                c[0]: {"support": 80, "recall": {"real": {"mean": 0.9, "std": 0.01}, "augmented": {"mean": 0.9, "std": 0.02},
                                                 "difference": {"mean": 0.0, "std": 0.01, "ci_low": -0.025, "ci_high": 0.025}},
                       "f1": {"real": {"mean": 0.88}, "augmented": {"mean": 0.89}, "difference": {"mean": 0.01}}},
                c[1]: {"support": 28, "recall": {"real": {"mean": 0.61, "std": 0.04}, "augmented": {"mean": 0.73, "std": 0.03},
                                                 "difference": {"mean": 0.12, "std": 0.02, "values": [0.1, 0.12, 0.14]}},
                       "f1": {"real": {"mean": 0.66}, "augmented": {"mean": 0.74}, "difference": {"mean": 0.08}},
                       "precision": {"real": {"mean": 0.7}, "augmented": {"mean": 0.75}, "difference": {"mean": 0.05}}},
            },
            "confusion_matrix": {"real": [[217, 13, 10], [20, 51, 13], [9, 12, 219]],
                                 "augmented": [[220, 12, 8], [12, 61, 11], [10, 10, 220]],
                                 "class_names": c, "n_seeds": 3},
            "paired_difference": {"accuracy": {"mean": 0.012, "std": 0.004, "values": [0.015, 0.015, 0.006]},
                                  "balanced_accuracy": {"mean": 0.041, "std": 0.006, "values": [0.05, 0.039, 0.034]},
                                  "macro_f1": {"mean": 0.035, "std": 0.005, "values": [0.043, 0.032, 0.03]}},
        },
        "timings": {"load data": 2.1, "train generator": 1834.2, "sample": 41.3, "judge": 120.5, "downstream": 610.0},
        "config": {"data": {"dataset": "embryo", "image_size": 28}, "generator": {"kind": "ldm", "steps": 3000},
                   "downstream": {"seeds": [0, 1, 2]}},
    }


class TagBalance(HTMLParser):
    """Checks that every opened non-void element is closed in order; collects resource URLs."""

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.urls: list[str] = []
        self.text: list[str] = []
        self.headings: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "poster", "action") and value:
                self.urls.append(value)
        if tag == "h2":
            self._in_h2 = True
            self.headings.append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href", "xlink:href") and value:
                self.urls.append(value)

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}>, open: {self.stack[-3:]}")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.headings[-1] += data


def parse_html(text: str) -> TagBalance:
    p = TagBalance()
    p.feed(text)
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], f"unclosed tags: {p.stack}"
    return p


SECTION_HEADINGS = [
    "What this run used",
    "Real vs synthetic images",
    "Generator training",
    "Sampling",
    "Are the synthetic images class-recognisable?",
    "Does synthetic data help a classifier?",
    "Warnings",
    "Provenance",
]


# ------------------------------------------------------------------ grids
@pytest.mark.parametrize("channels", [1, 3])
def test_grid_shape_rows_are_classes_with_padding_and_scale(channels):
    ds = blob_dataset(per_class=(12, 5, 9), size=28, channels=channels)
    grid = image_grid(ds, per_class=8, scale=2)
    rows, cols, pad, cell = 3, 8, 2, 28 * 2
    assert grid.dtype == np.uint8
    assert grid.shape == (rows * cell + (rows + 1) * pad, cols * cell + (cols + 1) * pad, channels)
    # padding lines are background; the class with 5 images leaves 3 blank cells at the end of row 2
    assert (grid[:pad] == 255).all() and (grid[:, :pad] == 255).all()
    row2_top = pad + (cell + pad)
    blank = grid[row2_top:row2_top + cell, pad + 5 * (cell + pad):]
    assert (blank == 255).all()
    assert not (grid[row2_top:row2_top + cell, pad:pad + cell] == 255).all()


def test_grid_cells_are_nearest_neighbour_copies_of_dataset_images():
    ds = blob_dataset(per_class=(3, 3), size=10, class_names=("a", "b"))
    grid = image_grid(ds, per_class=3, scale=3, pad=2)
    cell = grid[2:2 + 30, 2:2 + 30, 0]
    # every 3x3 block is constant and the downsampled cell is one of class 0's images
    small = cell[::3, ::3]
    assert (np.repeat(np.repeat(small, 3, 0), 3, 1) == cell).all()
    assert any((small == img[..., 0]).all() for img in ds.images[ds.labels == 0])


def test_grid_is_deterministic_and_class_strip_matches_grid_row():
    ds = blob_dataset()
    assert (image_grid(ds, seed=3) == image_grid(ds, seed=3)).all()
    assert not (image_grid(ds, seed=3) == image_grid(ds, seed=4)).all()
    grid = image_grid(ds, per_class=4, scale=1, pad=2)
    strip = class_strip(ds, 1, per_class=4, scale=1, pad=2)
    assert (grid[28 + 2:2 * 28 + 2 * 2 + 2] == strip).all()


def test_grid_rejects_bad_arguments():
    ds = blob_dataset()
    with pytest.raises(ValueError):
        image_grid(ds, per_class=0)
    with pytest.raises(ValueError):
        image_grid(ds, scale=0)


# ------------------------------------------------------------------ PNG
@pytest.mark.parametrize("shape", [(7, 9), (7, 9, 1), (7, 9, 3)])
def test_png_base64_round_trips_pixels(shape, tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(png_base64(arr)))))
    assert (decoded == arr.reshape(decoded.shape)).all()
    path = save_png(arr, tmp_path / "sub" / "x.png")
    assert (np.asarray(Image.open(path)) == arr.reshape(decoded.shape)).all()


def test_png_rejects_float_arrays():
    with pytest.raises(ValueError, match="uint8"):
        png_base64(np.zeros((4, 4), dtype=np.float32))


# ------------------------------------------------------------------ axis maths
def test_linear_and_log_scales():
    assert LinearScale(0, 10, 0, 100)(5) == 50
    y = LinearScale(0, 1, 300, 20)  # y axis: larger values are higher up (smaller pixel y)
    assert y(0) == 300 and y(1) == 20 and y(0.5) == 160
    log = LogScale(1, 100, 0, 200)
    assert math.isclose(log(10), 100) and math.isclose(log(1), 0) and math.isclose(log(100), 200)
    with pytest.raises(ValueError):
        LogScale(0, 10, 0, 1)


def test_nice_ticks_cover_range_with_round_steps():
    assert nice_ticks(0, 0.93) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 5000) == [0, 1000, 2000, 3000, 4000, 5000]
    assert nice_ticks(-0.03, 0.05) == [-0.04, -0.02, 0, 0.02, 0.04, 0.06]
    flat = nice_ticks(2.0, 2.0)
    assert flat[0] < 2.0 < flat[-1]
    for lo, hi in [(0.013, 0.087), (3, 997), (-5.5, 12.25), (1e-5, 3e-5)]:
        t = nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and 3 <= len(t) <= 12
        steps = np.diff(t)
        assert np.allclose(steps, steps[0])


def test_log_ticks_span_decades():
    assert log_ticks(0.02, 0.9) == [0.02, 0.05, 0.1, 0.2, 0.5, 1.0]
    assert log_ticks(0.011, 0.21) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5]
    assert log_ticks(1e-4, 3) == [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0]


# ------------------------------------------------------------------ charts
def test_line_chart_is_valid_svg_with_points_on_the_axes():
    svg = line_chart_svg({"train": [(0, 1.0), (50, 0.5), (100, 0.1)], "val <b>": [(0, 0.8), (100, 0.3)]},
                         "Loss & more", "step", "loss")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    lines = root.findall(f".//{SVG_NS}polyline")
    assert len(lines) == 2
    texts = [t.text for t in root.iter(f"{SVG_NS}text")]
    assert "Loss & more" in texts and "val <b>" in texts and "step" in texts
    # x ticks run 0..100, y ticks 0..1: first point (0, 1.0) is top-left of the plot, last bottom-right-ish
    pts = [tuple(map(float, p.split(","))) for p in lines[0].get("points").split()]
    assert pts[0][0] < pts[1][0] < pts[2][0]
    assert pts[0][1] < pts[1][1] < pts[2][1]
    # the middle x (50) is halfway between the first and last x pixel
    assert math.isclose(pts[1][0], (pts[0][0] + pts[2][0]) / 2, abs_tol=0.11)


def test_line_chart_log_y_places_decades_evenly_and_drops_nonpositive():
    svg = line_chart_svg({"loss": [(0, 1.0), (1, 0.1), (2, 0.01), (3, 0.0), (4, -1)]}, "t", "x", "y", log_y=True)
    root = ET.fromstring(svg)
    pts = [tuple(map(float, p.split(","))) for p in root.find(f".//{SVG_NS}polyline").get("points").split()]
    assert len(pts) == 3
    assert math.isclose(pts[1][1] - pts[0][1], pts[2][1] - pts[1][1], abs_tol=0.11)


def test_charts_without_data_say_so():
    for svg in (line_chart_svg({}, "empty", "x", "y"), line_chart_svg({"a": []}, "e", "x", "y", log_y=True),
                bar_chart_svg([], {}, "empty", "y")):
        root = ET.fromstring(svg)
        assert "no data" in [t.text for t in root.iter(f"{SVG_NS}text")]


def _bars(svg: str):
    root = ET.fromstring(svg)
    return root, [b for b in root.iter(f"{SVG_NS}rect") if b.get("class") == "bar"]


def test_bar_heights_are_proportional_to_values():
    series = {"real only": [(0.8, 0.02), (0.6, 0.05), (0.4, None)], "real + synthetic": [(0.9, 0.01), 0.3, None]}
    root, bars = _bars(bar_chart_svg(["acc", "bal acc", "<f1>"], series, "t", "score"))
    assert len(bars) == 5  # the None entry is left out
    ratios = [float(b.get("height")) / float(b.get("data-value")) for b in bars]
    assert np.allclose(ratios, ratios[0], rtol=0.01)
    # all bars stand on the same baseline
    bottoms = {round(float(b.get("y")) + float(b.get("height")), 0) for b in bars}
    assert len(bottoms) == 1
    assert len(root.findall(f".//{SVG_NS}g[@class='errorbar']")) == 3
    labels = [t.text for t in root.iter(f"{SVG_NS}text") if t.get("class") == "value-label"]
    assert "0.800" in labels and "0.300" in labels
    assert "<f1>" in [t.text for t in root.iter(f"{SVG_NS}text")]


def test_bar_chart_negative_values_hang_below_zero_and_y_max_caps_axis():
    root, bars = _bars(bar_chart_svg(["a", "b"], {"diff": [(0.04, 0.01), (-0.02, 0.01)]}, "t", "d"))
    pos, neg = bars
    assert math.isclose(float(pos.get("y")) + float(pos.get("height")), float(neg.get("y")), abs_tol=0.11)
    assert math.isclose(float(pos.get("height")) / float(neg.get("height")), 2.0, rel_tol=0.02)
    root, _ = _bars(bar_chart_svg(["a"], {"s": [(0.5, 0.1)]}, "t", "acc", y_max=1.0, reference=(0.33, "chance")))
    tick_labels = [t.text for t in root.iter(f"{SVG_NS}text") if t.get("text-anchor") == "end"]
    assert "1.0" in tick_labels and "1.2" not in tick_labels
    assert root.find(f".//{SVG_NS}line[@class='reference']") is not None


# ------------------------------------------------------------------ HTML report
def test_full_report_has_all_sections_and_is_self_contained(tmp_path):
    real = blob_dataset(per_class=(20, 7, 20))
    syn = blob_dataset(per_class=(30, 30, 30), seed=5, synthetic=True)
    path = write_report(tmp_path / "r" / "report.html", full_results(), real=real, synthetic=syn,
                        extra_grids={"nearest real neighbour of each synthetic image": image_grid(syn, 4)})
    assert path == tmp_path / "r" / "report.html"
    text = path.read_text(encoding="utf-8")
    parsed = parse_html(text)
    for h in SECTION_HEADINGS:
        assert any(h in heading for heading in parsed.headings), h
    assert "could not be drawn" not in text
    # self-contained: no URL is fetched, images are inline data
    assert "http://" not in text and "https://" not in text
    assert parsed.urls and all(u.startswith("data:image/png;base64,") for u in parsed.urls)
    assert "<script" not in text.lower()
    # numbers the reader needs
    assert "0.842 ± 0.015" in text and "+0.041" in text
    assert "3 seeds" in text and "n=188" in text
    assert "evidence is weak" in text
    assert "of 20" in text and "of 30" in text
    assert "bad1.png" not in text  # skipped files are counted, not listed
    # inline SVGs parse as XML
    for svg in re.findall(r"<svg.*?</svg>", text, flags=re.S):
        ET.fromstring(svg)


def test_memorisation_section_shows_its_worst_pairs_and_reference_rate():
    grid = np.zeros((10, 22, 1), dtype=np.uint8)
    audit = {"rule": "flag when close", "overall": {"n": 4, "n_flagged": 1, "fraction_flagged": 0.25},
             "per_class": {"a": {"n": 4, "n_flagged": 1, "fraction_flagged": 0.25}},
             "spaces": {"pixel": {"threshold": 1.5, "baseline_fraction": 0.01}},
             "worst_pairs": [{"synthetic_class": "a", "pixel_distance": 0.0, "flip": "hflip", "exact_copy": True,
                              "flagged": True}],
             "worst_pairs_grid": grid}
    text = render_report({"memorisation": audit})
    section = text[text.index('id="memorisation"'):]
    section = section[: section.index("</section>")]
    assert "data:image/png;base64," in section  # the pairs are in the audit's own section
    assert "(flipped), byte-identical, flagged" in section and "0.010 of training images" in section


def test_minimal_report_only_has_the_title(tmp_path):
    text = write_report(tmp_path / "min.html", {"title": "Just a title"}).read_text(encoding="utf-8")
    parsed = parse_html(text)
    assert "Just a title" in text
    assert parsed.headings == []
    for h in SECTION_HEADINGS:
        assert h not in text
    assert "could not be drawn" not in text
    assert write_report(tmp_path / "empty.html", {}).exists()


def test_partial_and_odd_results_do_not_crash(tmp_path):
    results = {"title": "partial", "generator": {"kind": "gan", "loss_curve": []},
               "downstream": {"seeds": [0], "arms": {"real only": {"metrics": {"accuracy": {"mean": 0.7}}}}},
               "conditional_accuracy": {"overall": 0.5}, "warnings": "one warning as a string"}
    text = write_report(tmp_path / "p.html", results).read_text(encoding="utf-8")
    parse_html(text)
    assert "Generator training" in text and "Sampling" not in text and "one warning as a string" in text
    assert "could not be drawn" not in text


def test_a_bad_extra_grid_is_reported_in_place_without_losing_the_report(caplog):
    good = np.zeros((6, 6, 3), dtype=np.uint8)
    text = render_report({"title": "t"}, extra_grids={"bad": np.zeros((4, 4), np.float32), "good": good})
    parse_html(text)
    assert text.count("could not be drawn") == 1 and "uint8" in text
    assert text.count("data:image/png;base64,") == 1


def test_user_strings_are_escaped(tmp_path):
    evil = "<script>alert(1)</script>"
    results = full_results(class_names=("normal", evil, "tumour & co"))
    results["title"] = evil
    results["warnings"] = [evil]
    ds = blob_dataset(class_names=("normal", evil, "tumour & co"))
    text = render_report(results, real=ds, synthetic=ds)
    parse_html(text)
    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "tumour &amp; co" in text


def test_verdict_reads_the_paired_interval():
    down = full_results()["downstream"]
    v = downstream_verdict(down)
    # values +0.05, +0.039, +0.034: the 95% t interval over 3 seeds lies above 0
    assert v.startswith("Helps.") and "+0.041 (95% CI +0.021 to +0.061, paired over 3 seeds" in v
    assert "weak" in v and "n=188" in v
    noisy = {**down, "paired_difference": {"balanced_accuracy": {"mean": 0.01, "std": 0.03,
                                                                 "values": [0.04, -0.02, 0.01]}}}
    assert downstream_verdict(noisy).startswith("Inconclusive.") and "spans 0" in downstream_verdict(noisy)
    many = {**down, "seeds": list(range(6)), "paired_difference": {
        "balanced_accuracy": {"mean": -0.03, "std": 0.01, "values": [-0.03, -0.02, -0.04, -0.03, -0.02, -0.04]}}}
    v = downstream_verdict(many)
    assert v.startswith("Hurts.") and "6 seeds" in v and "weak" not in v
    assert "single seed" in downstream_verdict({"paired_difference": {"accuracy": {"mean": 0.1, "values": [0.1]}}})


def _section(text: str, section_id: str) -> str:
    start = text.index(f'id="{section_id}"')
    return text[start: text.index("</section>", start)]


def test_downstream_section_has_per_class_metrics_and_confusion_matrices():
    text = render_report(full_results())
    section = _section(text, "downstream")
    assert "<h3>Per class</h3>" in section
    per_class = section[section.index("<h3>Per class</h3>"):]
    for c in ("2-cell", "3-cell", "4-cell"):
        assert c in per_class
    assert "recall" in per_class and "F1" in per_class and "precision" in per_class
    assert "0.610 ± 0.040" in per_class  # the minority class's recall, real only
    # the minority class's recall gain has an interval above 0: in bold
    assert "<b>+0.120</b><br><b>[" in per_class
    # confusion matrices for both arms, with the summed counts
    assert section.count('class="confusion compact"') == 2
    assert "summed over 3 seeds" in section and ">217<" in section
    assert "true ↓ predicted →" in section


def test_grids_show_16_images_per_class_and_enlarge_on_click(tmp_path):
    real = blob_dataset(per_class=(20, 7, 20))
    syn = blob_dataset(per_class=(30, 30, 30), seed=5, synthetic=True)
    text = render_report(full_results(), real=real, synthetic=syn)
    section = _section(text, "images")
    assert section.count('<label class="zoom"') == 6  # one grid per class and set
    assert "16 of 20" in section and "7 of 7" in section and "16 of 30" in section
    assert "image-rendering: pixelated" in text and "input:checked + img" in text
    # each grid is one PNG at native pixels with 16 images in two rows of 8 (1 px padding)
    pngs = re.findall(r'<label class="zoom"[^>]*><input type="checkbox"><img class="pixels" alt="synthetic images'
                      r' of class 2-cell" style="width:(\d+)px" src="data:image/png;base64,([^"]+)"', section)
    assert len(pngs) == 1
    width, data = pngs[0]
    grid = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))
    assert grid.shape[:2] == (2 * 28 + 3, 8 * 28 + 9)
    assert int(width) == 2 * grid.shape[1]  # 28 px images shown at a whole 2x


def test_verdict_leads_and_config_is_folded():
    results = full_results()
    results["verdict"] = {"downstream": {"status": "helps", "text": "+0.041 (95% CI +0.021 to +0.061)"},
                          "too_small": {"status": "1 item", "items": ["3 downstream seeds (fewer than 5)"]}}
    text = render_report(results)
    parsed = parse_html(text)
    assert parsed.headings[0] == "What this run found"
    verdict = _section(text, "verdict")
    assert "badge good" in verdict and "<li>3 downstream seeds (fewer than 5)</li>" in verdict
    provenance = _section(text, "provenance")
    details = provenance[provenance.index("Resolved configuration"):]
    assert details.index("<details>") < details.index("<pre>") < details.index("</details>")


def write_example(path: str | Path = "/tmp/report_example.html") -> Path:
    """Render the full example report (used to eyeball the layout in a browser)."""
    real = blob_dataset(per_class=(20, 7, 20))
    syn = blob_dataset(per_class=(30, 30, 30), seed=5, synthetic=True)
    return write_report(path, full_results(), real=real, synthetic=syn,
                        extra_grids={"synthetic, 4 per class": image_grid(syn, 4)})


if __name__ == "__main__":
    print(write_example())
