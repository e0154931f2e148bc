"""conditional_accuracy: correctly-labelled images score high, label-shuffled ones near chance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmed.classifiers import train_classifier
from synthmed.config import ClassifierConfig
from synthmed.data.dataset import concat
from synthmed.metrics.conditional_accuracy import conditional_accuracy, wilson_interval
from toydata import CLASSES, toy


@pytest.fixture(scope="module")
def judge():
    torch.set_num_threads(1)
    cfg = ClassifierConfig(lr=3e-3, batch_size=32, epochs=8, patience=3)
    return train_classifier(toy(40, 0), toy(10, 1), cfg, seed=0)


def test_correct_labels_high_shuffled_near_chance(judge):
    good = toy(60, 5, synthetic=True)
    real_test = toy(20, 2)
    res = conditional_accuracy(judge, good, real_test=real_test)
    assert res["accuracy"]["accuracy"] > 0.9
    assert res["accuracy"]["n"] == 180 and res["chance"] == pytest.approx(1 / 3)
    for name in CLASSES:
        pc = res["per_class"][name]
        assert pc["n"] == 60 and pc["accuracy"] > 0.8
        assert pc["real_n"] == 20 and pc["real_accuracy"] > 0.8
    assert res["real_test"]["accuracy"] > 0.9
    assert np.trace(np.array(res["confusion_matrix"])) == res["accuracy"]["n_correct"]
    assert res["judge"]["trained_on_fingerprint"] == toy(40, 0).fingerprint()
    assert res["judge"]["n_train"] == 120 and res["judge"]["arch"] == "smallcnn"

    shuffled = toy(60, 5, synthetic=True)
    shuffled.labels = np.random.default_rng(0).permutation(shuffled.labels)
    bad = conditional_accuracy(judge, shuffled)
    assert abs(bad["accuracy"]["accuracy"] - 1 / 3) < 0.12
    assert bad["real_test"] is None


def test_one_class_collapsed(judge):
    # a generator that ignores the label and always draws 'bright': per-class scores show it
    syn = toy(30, 6, synthetic=True)
    syn.images = np.concatenate([syn.images[:30]] * 3)
    res = conditional_accuracy(judge, syn)
    assert res["per_class"]["bright"]["accuracy"] > 0.9
    assert res["per_class"]["dark"]["accuracy"] < 0.1 and res["per_class"]["striped"]["accuracy"] < 0.1
    assert res["confusion_matrix"][1][0] > 25  # 'dark' requests judged 'bright'


def test_guards(judge):
    syn = toy(5, 5, synthetic=True)
    with pytest.raises(ValueError, match="training split"):
        conditional_accuracy(judge, syn, real_test=toy(40, 0))
    with pytest.raises(ValueError, match="synthetic"):
        conditional_accuracy(judge, syn, real_test=toy(5, 2, synthetic=True))
    cfg = ClassifierConfig(epochs=1)
    tainted = train_classifier(concat([toy(5, 0), syn]), toy(3, 1), cfg)
    with pytest.raises(ValueError, match="REAL"):
        conditional_accuracy(tainted, syn)


def test_wilson_interval():
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.25 < hi < 0.35  # 0/10 does not mean 0%: upper bound ~0.28
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 0) is None
