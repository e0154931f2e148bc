"""Selection by classifier confidence (synthmed.selection.confidence) and the independent grader that
scores conditional accuracy when the judge selected the images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmed.classifiers import train_classifier
from synthmed.config import ClassifierConfig, ConfigError, DownstreamConfig, SelectConfig, load_config
from synthmed.data.dataset import DataError, DataSplits, ImageDataset
from synthmed.selection.confidence import (DEFAULT_TAU, confidence_filter, generate_until_confident,
                                           intended_class_probability, real_acceptance)
from toydata import CLASSES, toy

TINY = ClassifierConfig(widths=[8, 16, 16], steps=60, eval_every=10, batch_size=16, lr=1e-2)
SPLITS = DataSplits(toy(30, 0), toy(12, 1), toy(12, 2))


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def selector():
    clf = train_classifier(SPLITS.train, SPLITS.val, TINY, seed=0)
    # the toy classes are easy: a selector that cannot tell them apart would make every test below vacuous
    assert (clf.predict(SPLITS.val) == SPLITS.val.labels).mean() > 0.9
    return clf


class ToyGenerator:
    """Asked for class c, draws with probability ``p_wrong[c]`` an image of class c + 1 (labelled c)."""

    class_names = list(CLASSES)

    def __init__(self, p_wrong):
        self.p_wrong = np.asarray(p_wrong, dtype=float)
        self.seeds, self.requests = [], []

    def sample(self, counts, *, seed=0, guidance=None, progress=False):
        self.seeds.append(seed)
        self.requests.append(list(counts))
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(3), counts)
        wrong = rng.random(len(labels)) < self.p_wrong[labels]
        source = np.where(wrong, (labels + 1) % 3, labels)
        pool = toy(len(labels), seed=1000 + seed % 1000)
        idx = [np.flatnonzero(pool.labels == s)[j] for j, s in enumerate(source)]
        ds = ImageDataset(pool.images[idx], labels, list(CLASSES), name="stub", synthetic=True,
                          meta={"generator": "stub", "train_fingerprint": SPLITS.train.fingerprint()})
        ds.meta["wrong"] = wrong
        return ds


def test_default_tau_is_the_configs():
    assert SelectConfig().tau == DEFAULT_TAU


def test_tau_zero_keeps_all_and_tau_above_one_keeps_none(selector):
    syn = ToyGenerator([0.5, 0.5, 0.5]).sample([10, 10, 10], seed=1)
    kept, rep = confidence_filter(syn, selector, 0.0)
    assert len(kept) == 30 and rep["acceptance_rate"] == 1.0 and kept.synthetic
    kept, rep = confidence_filter(syn, selector, 1.01)
    assert len(kept) == 0 and rep["kept"] == 0
    assert all(e["acceptance_rate"] == 0.0 for e in rep["per_class"].values())


def test_kept_images_have_p_at_least_tau_under_the_selector(selector):
    syn = ToyGenerator([0.5, 0.3, 0.6]).sample([20, 20, 20], seed=2)
    kept, rep = confidence_filter(syn, selector, 0.9)
    p_kept = selector.predict_proba(kept)[np.arange(len(kept)), kept.labels]  # recomputed, not read from the report
    assert len(kept) and (p_kept >= 0.9).all()
    p_all = intended_class_probability(selector, syn)
    assert ((p_all >= 0.9).sum() == len(kept)) and 0 < len(kept) < len(syn)
    # the wrong-class images are what the filter is for: (almost) none of them survive
    assert (p_all[syn.meta["wrong"]] >= 0.9).mean() < 0.1
    for i, c in enumerate(CLASSES):
        e = rep["per_class"][c]
        assert e["generated"] == 20 and e["kept"] == kept.class_counts()[i]
        assert e["acceptance_rate"] == pytest.approx(e["kept"] / 20)
    sel = kept.meta["selection"]
    assert sel["mode"] == "confidence" and sel["tau"] == 0.9
    assert sel["selector"]["arch"] == "smallcnn" and sel["selector"]["seed"] == 0 and sel["selector"]["weights_hash"]


def test_real_reference_is_computed_on_the_held_out_split_only(selector):
    syn = ToyGenerator([0, 0, 0]).sample([4, 4, 4], seed=3)
    _, rep = confidence_filter(syn, selector, 0.8, held_out=SPLITS.val)
    ref = rep["real_val_acceptance"]
    assert ref["fingerprint"] == SPLITS.val.fingerprint() and ref["n"] == len(SPLITS.val)
    p = selector.predict_proba(SPLITS.val)[np.arange(len(SPLITS.val)), SPLITS.val.labels]
    for i, c in enumerate(CLASSES):
        assert ref["per_class"][c] == pytest.approx((p[SPLITS.val.labels == i] >= 0.8).mean())
    assert ref["accepted"] == (p >= 0.8).sum() and "early-stopped" in ref["note"]
    assert real_acceptance(selector, SPLITS.test, 0.8)["note"] is None  # a split it never saw at all
    with pytest.raises(DataError, match="own training split"):
        real_acceptance(selector, SPLITS.train, 0.8)
    with pytest.raises(DataError, match="synthetic"):
        real_acceptance(selector, syn, 0.8)


def test_generate_until_confident_reaches_the_request(selector):
    gen = ToyGenerator([0.5, 0.0, 0.3])
    kept, rep = generate_until_confident(gen, selector, 10, tau=0.9, seed=5, held_out=SPLITS.val)
    assert kept.class_counts() == [10, 10, 10] and rep["reached"] and rep["shortfall"] == {}
    assert (intended_class_probability(selector, kept) >= 0.9).all()
    assert len(set(gen.seeds)) == len(gen.seeds) > 1  # the wrong-class half of 'bright' needs a second round
    assert rep["per_class"]["bright"]["generated"] > 10 and rep["real_val_acceptance"]["n"] == len(SPLITS.val)
    assert rep["mode"] == "confidence" and kept.meta["selection"]["seed"] == 5
    again, _ = generate_until_confident(ToyGenerator([0.5, 0.0, 0.3]), selector, 10, tau=0.9, seed=5)
    np.testing.assert_array_equal(kept.images, again.images)


def test_generate_until_confident_stops_at_the_budget_and_reports_the_shortfall(selector):
    gen = ToyGenerator([1.0, 0.0, 0.0])  # every 'bright' image shows another class
    with pytest.warns(UserWarning, match="confidence selection fell short.*lower tau"):
        kept, rep = generate_until_confident(gen, selector, 10, tau=0.9, budget_factor=3)
    assert not rep["reached"] and rep["shortfall"] == {"bright": 10}
    assert rep["per_class"]["bright"]["generated"] == 30 == rep["per_class"]["bright"]["budget"]
    assert rep["per_class"]["bright"]["shortfall"] == 10 and kept.class_counts() == [0, 10, 10]


def test_refuses_a_selector_trained_on_synthetic_images_and_a_nan_tau(selector):
    syn = ToyGenerator([0, 0, 0]).sample([2, 2, 2])
    fake = train_classifier(toy(6, 9, synthetic=True), SPLITS.val, TINY, seed=0)
    with pytest.raises(ValueError, match="trained on synthetic"):
        confidence_filter(syn, fake, 0.9)
    with pytest.raises(ValueError, match="finite"):
        confidence_filter(syn, selector, float("nan"))


# ----------------------------------------------------------------- the independent grader


def _cfg(**select):
    return load_config(overrides={"seed": 0, "select": {"mode": "confidence", **select},
                                  "evaluate": {"judge": {"widths": [8, 16, 16], "steps": 60, "eval_every": 10,
                                                         "batch_size": 16, "lr": 1e-2},
                                               "metrics": ["fid"], "n_boot": 0, "memorisation": False}})


def test_config_refuses_a_grader_that_is_the_selector():
    with pytest.raises(ConfigError, match="grader_seed_offset = 0.*selecting judge"):
        load_config(overrides={"select": {"mode": "confidence"}, "evaluate": {"grader_seed_offset": 0}})
    # another architecture with the same seed is another classifier; and without confidence there is no selector
    load_config(overrides={"select": {"mode": "confidence"}, "evaluate": {"grader_seed_offset": 0,
                                                                         "grader_arch": "resnet18"}})
    load_config(overrides={"evaluate": {"grader_seed_offset": 0}})
    for tau in (-0.1, 1.5):
        with pytest.raises(ConfigError, match=r"select.tau = .*must be in \[0, 1\]"):
            load_config(overrides={"select": {"tau": tau}})


def test_grader_config_takes_the_judges_settings_with_its_own_seed_and_arch():
    from synthmed.pipeline import grader_config

    cfg = _cfg()
    gcfg, seed = grader_config(cfg)
    assert seed == 1001 and gcfg.arch == "smallcnn" and gcfg.widths == [8, 16, 16] and gcfg.steps == 60
    cfg = load_config(overrides={"seed": 4, "evaluate": {"grader_arch": "resnet18", "grader_seed_offset": 7,
                                                         "judge": {"weights_path": None}}})
    gcfg, seed = grader_config(cfg)
    assert (gcfg.arch, seed) == ("resnet18", 11)


def test_confidence_selected_set_is_graded_by_an_independent_classifier(tmp_path, monkeypatch):
    from synthmed import pipeline

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = _cfg()
    judge = pipeline.step_judge(cfg, SPLITS, "cpu", quiet=True)
    grader = pipeline.step_grader(cfg, SPLITS, "cpu", quiet=True)
    assert grader.weights_hash != judge.weights_hash
    assert (judge.classifier.meta["seed"], grader.classifier.meta["seed"]) == (0, 1001)
    assert pipeline.step_grader(cfg, SPLITS, "cpu", quiet=True).cache_hit  # cached like the judge
    kept, _ = confidence_filter(ToyGenerator([0.3, 0, 0]).sample([8, 8, 8], seed=4), judge.classifier, 0.5)
    assert kept.meta["selection"]["selector"]["weights_hash"] == judge.weights_hash
    ev = cfg.evaluate
    with pytest.raises(ConfigError, match="independent grader"):
        pipeline.evaluate_synthetic(SPLITS, kept, ev, judge, judge, tmp_path / "a", quiet=True)
    with pytest.raises(ConfigError, match="same weights"):
        pipeline.evaluate_synthetic(SPLITS, kept, ev, judge, judge, tmp_path / "b", grader=judge, quiet=True)
    res = pipeline.evaluate_synthetic(SPLITS, kept, ev, judge, judge, tmp_path / "c", grader=grader, quiet=True)
    ca = res["conditional_accuracy"]
    by = ca["scored_by"]
    assert by["role"] == "independent grader" and by["independent_of_selector"]
    assert (by["arch"], by["seed"], by["weights_hash"]) == ("smallcnn", 1001, grader.weights_hash)
    assert by["selector"]["weights_hash"] == judge.weights_hash != by["weights_hash"]
    assert ca["judge"]["seed"] == 1001  # the reference accuracy on real test images is the grader's own
    # an unselected set is scored by the judge, as before
    plain = ToyGenerator([0, 0, 0]).sample([4, 4, 4], seed=6)
    res = pipeline.evaluate_synthetic(SPLITS, plain, ev, judge, judge, tmp_path / "d", quiet=True)
    assert res["conditional_accuracy"]["scored_by"]["role"] == "judge"


def test_downstream_confidence_filter_axis(tmp_path):
    from synthmed.downstream.experiment import run_experiment

    cfg = DownstreamConfig(classifier=ClassifierConfig(widths=[8, 16, 16], lr=3e-3, batch_size=16, epochs=1,
                                                       patience=1), synthetic_ratio=0.2)
    repeats = [("all", SPLITS.train, 0)]
    pool = ToyGenerator([0.5, 0, 0]).sample([30, 30, 30], seed=8)

    def synthetic_for(subset, i):
        return pool, subset.fingerprint()

    kw = dict(protocols=["baseline", "mix"], synthetic_for=synthetic_for, repeats=repeats, cfg=cfg,
              filters=["none", "confidence"], out_dir=tmp_path / "exp", progress=False)
    res = run_experiment(SPLITS, **kw, tau=0.9)
    cell = next(c for c in res["cells"] if (c["protocol"], c["filter"]) == ("mix", "confidence"))
    rep = cell["filter_report"]
    assert rep["mode"] == "confidence" and rep["tau"] == 0.9 and rep["real_val_acceptance"]["n"] == len(SPLITS.val)
    assert cell["synthetic_pool"]["n"] == rep["kept"] < len(pool)
    assert rep["per_class"]["bright"]["acceptance_rate"] < rep["per_class"]["dark"]["acceptance_rate"]
    with pytest.raises(ValueError, match="different configuration"):  # tau is part of the cell's identity
        run_experiment(SPLITS, **kw, tau=0.5)
