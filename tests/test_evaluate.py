"""evaluate(): rows per class, warnings, outputs and guards, through a stub extractor (no training)."""

import csv
import json

import numpy as np
import pytest

from synthmed.data.dataset import ImageDataset
from synthmed.metrics.evaluate import evaluate, format_table, write_outputs

CLASSES = ["benign", "malignant", "rare"]
METRICS = ("fid", "kid", "precision", "recall", "f1", "density", "coverage", "ssim")


class StubExtractor:
    """Has the FeatureExtractor attributes; features are the first `dim` pixels, so they are fixed by the images."""

    name = "stub"
    dim = 16
    weights_hash = "0000"
    input_policy = "first 16 grey pixels as floats"

    def __init__(self):
        self.calls = 0

    def extract(self, ds, batch_size=256, progress=False):
        self.calls += 1
        return ds.images.reshape(len(ds), -1)[:, : self.dim].astype(np.float64)

    def describe(self):
        return {"name": self.name, "dim": self.dim, "weights_hash": self.weights_hash,
                "input_policy": self.input_policy}


def _sets():
    rng = np.random.default_rng(0)
    counts_real, counts_synth = [40, 30, 5], [30, 30, 4]

    def make(counts, shift):
        labels = np.repeat(np.arange(3), counts)
        imgs = rng.integers(0, 200, size=(len(labels), 8, 8, 1)) + shift + 10 * labels[:, None, None, None]
        return imgs.astype(np.uint8), labels

    ri, rl = make(counts_real, 0)
    si, sl = make(counts_synth, 5)
    si[:30] = ri[:30]  # synthetic 'benign' images are copies of real ones: precision 1 there
    real = ImageDataset(ri, rl, CLASSES, name="real-test")
    synthetic = ImageDataset(si, sl, CLASSES, name="gen", synthetic=True)
    return real, synthetic


@pytest.fixture(scope="module")
def result():
    real, synthetic = _sets()
    return evaluate(real, synthetic, StubExtractor(), n_boot=10, seed=0)


def test_rows_per_class_and_total(result):
    assert [r["class"] for r in result["rows"]] == ["total", *CLASSES]
    total = result["rows"][0]
    assert total["n_real"] == 75 and total["n_synthetic"] == 64
    assert list(total["metrics"]) == list(METRICS)
    for m in ("fid", "kid", "precision", "recall"):
        e = total["metrics"][m]
        assert e["ci_low"] is not None and e["ci_low"] <= e["value"] <= e["ci_high"]
        assert e["ci_method"] == "subsampling m=0.5n" and e["ci_target"]
    # 75 vs 64 images in 16-d: half-samples of 32 hold 2 x 16 images, enough for FID's 1/N correction
    bc = total["metrics"]["fid"]["bias_corrected"]
    assert bc["ci_low"] <= bc["value"] <= bc["ci_high"] and bc["value"] < total["metrics"]["fid"]["value"]
    assert result["rows"][3]["metrics"]["fid"]["bias_corrected"]["value"] is None  # the 'rare' class: 5 vs 4
    benign = result["rows"][1]["metrics"]
    assert benign["precision"]["value"] == 1.0 and benign["ssim"]["value"] == pytest.approx(1.0, abs=1e-5)


def test_small_class_warnings(result):
    rare = result["rows"][3]
    text = " ".join(rare["warnings"])
    assert "too few for a meaningful value" in text
    assert "fewer samples than feature dimensions" in text
    assert "subset size reduced" in text
    assert not any("too few" in w for w in result["rows"][1]["warnings"])
    assert len(result["warnings"]) >= len(rare["warnings"])


def test_header_records_provenance(result):
    real, synthetic = _sets()
    h = result["header"]
    assert h["extractor"]["name"] == "stub"
    assert h["real"]["fingerprint"] == real.fingerprint() and h["real"]["num_images"] == 75
    assert h["synthetic"]["fingerprint"] == synthetic.fingerprint() and h["synthetic"]["num_images"] == 64
    assert "nearest real image" in h["pairing_policy"]
    assert h["k"] == 3 and h["n_boot"] == 10 and h["seed"] == 0 and h["synthmed_version"]
    assert h["ci_method"] == "subsampling m=0.5n" and "without replacement" in h["bootstrap"]


def test_outputs(result, tmp_path):
    json_path, csv_path = write_outputs(result, tmp_path)

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    loaded = json.loads(json_path.read_text(), parse_constant=no_nan)
    assert loaded["header"]["extractor"]["name"] == "stub"
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == (len(CLASSES) + 1) * len(METRICS)
    assert {r["extractor"] for r in rows} == {"stub"}
    fid_total = next(r for r in rows if r["class"] == "total" and r["metric"] == "fid")
    assert float(fid_total["ci_low"]) <= float(fid_total["ci_high"])
    table = format_table(result)
    assert "stub" in table and "rare" in table and "75 images" in table and "warnings" in table
    assert "subsampling m=0.5n" in table


def test_features_extracted_once_per_set():
    real, synthetic = _sets()
    ex = StubExtractor()
    evaluate(real, synthetic, ex, metrics=("fid", "precision"), n_boot=0)
    assert ex.calls == 2


def test_real_as_synthetic_guard_and_training_split_warning():
    real, synthetic = _sets()
    not_flagged = ImageDataset(synthetic.images, synthetic.labels, CLASSES, name="other-real")
    with pytest.raises(ValueError, match="allow_real_as_synthetic"):
        evaluate(real, not_flagged, StubExtractor(), n_boot=0)
    out = evaluate(real, not_flagged, StubExtractor(), metrics=("kid",), n_boot=0, per_class=False,
                   allow_real_as_synthetic=True, real_train_fingerprint=real.fingerprint())
    assert len(out["rows"]) == 1
    assert any("trained on" in w for w in out["header"]["warnings"])
