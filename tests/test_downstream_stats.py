"""downstream.stats and the metrics it summarises: hand-worked numbers and scikit-learn agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import multilabel_confusion_matrix, precision_score, recall_score

from synthmed.classifiers import classification_metrics, sensitivity_specificity
from synthmed.downstream.stats import mean_std, paired_difference

T_975_DF2 = 4.302652729749462  # t distribution, 97.5th percentile, 2 degrees of freedom (printed tables: 4.303)


def test_paired_difference_by_hand():
    d = paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])  # differences 1, 2, 3
    half = T_975_DF2 * 1.0 / math.sqrt(3)  # std of [1, 2, 3] (ddof=1) is 1
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(2.0)
    assert d["std"] == pytest.approx(1.0)
    assert d["ci_low"] == pytest.approx(2.0 - half) and d["ci_low"] == pytest.approx(-0.4841, abs=1e-4)
    assert d["ci_high"] == pytest.approx(2.0 + half) and d["ci_high"] == pytest.approx(4.4841, abs=1e-4)


def test_paired_difference_confidence_and_constant_gain():
    d90 = paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0], confidence=0.9)
    assert d90["ci_high"] - d90["mean"] == pytest.approx(2.919986 / math.sqrt(3), rel=1e-6)  # t_0.95,2
    same = paired_difference([0.8, 0.7, 0.9], [0.7, 0.6, 0.8])  # a constant gain: zero-width interval
    assert (same["mean"], same["ci_low"], same["ci_high"]) == pytest.approx((0.1, 0.1, 0.1))


def test_paired_difference_drops_undefined_pairs_and_needs_two():
    d = paired_difference([1.0, None, 3.0, 5.0], [0.0, 1.0, None, 4.0])  # pairs kept: (1, 0), (5, 4)
    assert (d["n"], d["mean"], d["std"]) == (2, 1.0, 0.0)
    one = paired_difference([1.0], [0.5])
    assert (one["n"], one["mean"], one["std"], one["ci_low"]) == (1, 0.5, None, None)
    with pytest.raises(ValueError, match="equal lengths"):
        paired_difference([1.0, 2.0], [1.0])


def test_mean_std():
    assert mean_std([1.0, 2.0, None, 3.0]) == {"mean": 2.0, "std": 1.0, "n": 3}
    assert mean_std([0.5]) == {"mean": 0.5, "std": None, "n": 1}
    assert mean_std([None]) == {"mean": None, "std": None, "n": 0}


def test_sensitivity_specificity_hand_made_confusion():
    # rows = true, columns = predicted
    cm = np.array([[5, 1, 0],
                   [2, 6, 2],
                   [0, 0, 0]])  # class 2 never occurs
    (se0, sp0), (se1, sp1), (se2, sp2) = sensitivity_specificity(cm)
    assert (se0, sp0) == pytest.approx((5 / 6, 8 / 10))  # TN = 6 + 2 + 0 of the 10 non-0; FP = 2
    assert (se1, sp1) == pytest.approx((6 / 10, 5 / 6))  # TN = 5 of 6; FP = 1
    assert se2 is None and sp2 == pytest.approx(14 / 16)  # no positive: sensitivity undefined


def test_binary_sensitivity_specificity():
    y = [0, 0, 0, 1, 1]
    p1 = np.array([0.1, 0.6, 0.2, 0.8, 0.4])  # predictions 0 1 0 1 0 -> confusion [[2, 1], [1, 1]]
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["benign", "malignant"])
    assert m["sensitivity"] == pytest.approx(1 / 2)  # malignant found: 1 of 2
    assert m["specificity"] == pytest.approx(2 / 3)  # benign kept: 2 of 3
    assert m["one_vs_rest"]["benign"] == pytest.approx({"sensitivity": 2 / 3, "specificity": 1 / 2})


def test_multiclass_metrics_agree_with_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 80)
    logits = rng.normal(size=(80, 4)) + 1.2 * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    names = ["a", "b", "c", "d"]
    m = classification_metrics(y, proba, names)
    pred = proba.argmax(1)
    mcm = multilabel_confusion_matrix(y, pred, labels=range(4))  # per class [[tn, fp], [fn, tp]]
    for c, name in enumerate(names):
        (tn, fp), (fn, tp) = mcm[c]
        assert m["one_vs_rest"][name]["sensitivity"] == pytest.approx(tp / (tp + fn))
        assert m["one_vs_rest"][name]["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["precision_macro"] == pytest.approx(precision_score(y, pred, average="macro"))
    assert m["recall_macro"] == pytest.approx(recall_score(y, pred, average="macro"))
    assert m["sensitivity"] is None and m["specificity"] is None  # binary only
