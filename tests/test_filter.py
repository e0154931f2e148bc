"""filter_synthetic / generate_until with a pixel 'extractor' and a stub generator of known acceptance."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.data.dataset import DataError, ImageDataset
from synthmed.selection.filter import filter_synthetic, generate_until

SIZE = 6


class PixelExtractor:
    """Stand-in for a feature extractor: flattened pixels in [0, 1]."""

    name, dim, weights_hash, input_policy = "pixels", SIZE * SIZE, "none", "as-is"

    def __init__(self):
        self.calls = 0

    def extract(self, ds, batch_size=256, progress=False):
        self.calls += 1
        return ds.images.reshape(len(ds), -1).astype(np.float64) / 255.0

    def describe(self):
        return {"name": self.name, "dim": self.dim}


def real_set(n_per_class=40, seed=0) -> ImageDataset:
    """Class 0 dark, class 1 bright, small per-pixel noise: two tight clusters far apart."""
    rng = np.random.default_rng(seed)
    imgs = [np.clip(rng.normal(60 + 130 * c, 6, (n_per_class, SIZE, SIZE)), 0, 255) for c in range(2)]
    labels = np.repeat([0, 1], n_per_class)
    return ImageDataset(np.concatenate(imgs).astype(np.uint8), labels, ["dark", "bright"], name="real")


class StubGenerator:
    """Each image is, with probability ``p_good[c]``, a real image of class c plus faint noise (inside
    that real image's k-NN ball), otherwise uniform noise (far from both clusters)."""

    class_names = ["dark", "bright"]

    def __init__(self, p_good, real=None):
        self.p_good = p_good
        self.real = real_set() if real is None else real
        self.seeds, self.requests = [], []

    def sample(self, counts, *, seed=0, guidance=None, progress=False):
        self.seeds.append(seed)
        self.requests.append(list(counts))
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(2), counts)
        good = rng.random(len(labels)) < np.asarray(self.p_good)[labels]
        source = np.array([rng.choice(np.flatnonzero(self.real.labels == c)) for c in labels], dtype=np.int64)
        near_real = self.real.images[source, ..., 0] + rng.normal(0, 0.5, (len(labels), SIZE, SIZE))
        imgs = np.where(good[:, None, None], near_real, rng.uniform(0, 255, (len(labels), SIZE, SIZE)))
        ds = ImageDataset(np.clip(imgs, 0, 255).astype(np.uint8), labels, list(self.class_names), synthetic=True,
                          meta={"generator": "stub", "train_fingerprint": "abc"})
        ds.meta["good"] = good
        return ds


def test_filter_keeps_in_manifold_and_reports_acceptance():
    real = real_set()
    syn = StubGenerator([0.5, 0.5]).sample([40, 40], seed=3)
    good = syn.meta["good"]
    ext = PixelExtractor()
    kept, rep = filter_synthetic(syn, real, ext, mode="global", k=3, robust_quantile=None)
    assert len(kept) == good.sum() and kept.synthetic
    np.testing.assert_array_equal(kept.images, syn.images[good])
    for i, c in enumerate(real.class_names):
        m = syn.labels == i
        assert rep["per_class"][c]["generated"] == m.sum()
        assert rep["per_class"][c]["kept"] == good[m].sum()
        assert rep["per_class"][c]["acceptance_rate"] == pytest.approx(good[m].mean())
    assert rep["extractor"] == {"name": "pixels", "dim": SIZE * SIZE}
    assert rep["mode"] == "global" and rep["threshold"] == 1.0 and rep["robust_quantile"] is None
    # the default (Kynkaanniemi's pruning of the larger half of the real balls) is stricter
    kept_robust, rep_robust = filter_synthetic(syn, real, ext, mode="global", k=3)
    assert rep_robust["robust_quantile"] == 0.5 and 0 < len(kept_robust) <= len(kept)


def test_held_out_real_images_calibrate_the_acceptance_rate():
    """Fresh real images of the same distribution mostly pass (the rate a perfect generator would get);
    the same images with swapped labels do not, in class mode."""
    from synthmed.selection.filter import held_out_acceptance

    real, held_out = real_set(40, seed=0), real_set(30, seed=7)
    ref = held_out_acceptance(real, held_out, PixelExtractor(), mode="class", robust_quantile=None)
    assert ref["n"] == 60 and ref["accepted"] == round(ref["acceptance_rate"] * 60)
    assert ref["acceptance_rate"] > 0.8 and set(ref["per_class"]) == {"dark", "bright"}
    swapped = ImageDataset(held_out.images, 1 - held_out.labels, held_out.class_names, name="swapped")
    assert held_out_acceptance(real, swapped, PixelExtractor(), mode="class", robust_quantile=None)["accepted"] == 0


def test_class_mode_drops_mislabelled_images():
    real = real_set()
    syn = StubGenerator([1.0, 1.0]).sample([10, 10], seed=4)
    swapped = ImageDataset(syn.images, 1 - syn.labels, syn.class_names, synthetic=True)  # every label wrong
    assert len(filter_synthetic(swapped, real, PixelExtractor(), mode="global", robust_quantile=None)[0]) == 20
    assert len(filter_synthetic(swapped, real, PixelExtractor(), mode="class", robust_quantile=None)[0]) == 0
    assert len(filter_synthetic(syn, real, PixelExtractor(), mode="class", robust_quantile=None)[0]) == 20


def test_generate_until_reaches_request_with_new_seeds_and_one_real_extraction():
    real = real_set()
    gen = StubGenerator([0.5, 0.9])
    ext = PixelExtractor()
    kept, rep = generate_until(gen, real, ext, 25, mode="class", seed=7, robust_quantile=None)
    assert kept.class_counts() == [25, 25] and kept.synthetic
    assert rep["reached"] and rep["shortfall"] == {}
    assert len(set(gen.seeds)) == len(gen.seeds) > 1  # several rounds, each with its own noise
    assert ext.calls == 1 + len(gen.seeds)  # real features once, then one call per round
    dark = rep["per_class"]["dark"]
    assert dark["kept"] == 25 and 0.3 < dark["acceptance_rate"] < 0.7
    assert rep["per_class"]["bright"]["generated"] <= 40  # sized from its observed acceptance, not the budget
    # same seed, same result
    kept2, _ = generate_until(StubGenerator([0.5, 0.9]), real, PixelExtractor(), 25, mode="class", seed=7,
                              robust_quantile=None)
    np.testing.assert_array_equal(kept.images, kept2.images)


def test_generate_until_fixed_batches_and_per_class_targets():
    gen = StubGenerator([1.0, 1.0])
    kept, rep = generate_until(gen, real_set(), PixelExtractor(), [5, 12], batch_per_class=4, mode="global",
                               robust_quantile=None)
    assert kept.class_counts() == [5, 12]
    assert gen.requests[0] == [4, 4] and gen.requests[2] == [0, 4]  # later rounds: only classes still short


def test_generate_until_stops_at_budget_and_reports_shortfall():
    gen = StubGenerator([0.0, 1.0])  # class 0 never passes
    with pytest.warns(UserWarning, match="fell short"):
        kept, rep = generate_until(gen, real_set(), PixelExtractor(), 10, mode="class", budget_factor=3)
    assert not rep["reached"]
    assert rep["shortfall"] == {"dark": 10}
    assert rep["per_class"]["dark"]["generated"] == 30  # exactly budget_factor x request
    assert rep["per_class"]["dark"]["acceptance_rate"] == 0.0
    assert rep["per_class"]["bright"]["kept"] == 10 and kept.class_counts() == [0, 10]


def test_refuses_synthetic_reference_and_unknown_mode():
    real = real_set()
    syn = StubGenerator([1, 1]).sample([2, 2])
    with pytest.raises(DataError, match="real images only"):
        filter_synthetic(syn, syn, PixelExtractor())
    with pytest.raises(ValueError, match="mode"):
        filter_synthetic(syn, real, PixelExtractor(), mode="both")
