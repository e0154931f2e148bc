"""downstream.quick: arm composition, paired statistics, and every leakage guard."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import synthmed.downstream.quick as quick
from synthmed.config import ClassifierConfig, DownstreamConfig
from synthmed.data.dataset import DataSplits, concat
from synthmed.downstream.quick import LeakageError, real_vs_augmented, synthetic_per_class
from toydata import toy


def splits(train_counts=(20, 10, 6)) -> DataSplits:
    return DataSplits(toy(list(train_counts), 0), toy(6, 1), toy(10, 2))


FAST = DownstreamConfig(classifier=ClassifierConfig(lr=3e-3, batch_size=32, epochs=4, patience=2), seeds=[0, 1])


def test_synthetic_per_class_proportional_and_capped():
    assert synthetic_per_class([20, 10, 6], [100, 100, 100], 1.5) == [30, 15, 9]
    assert synthetic_per_class([20, 10, 6], [40, 40, 5], 1.5) == [30, 15, 5]  # capped at what exists
    assert synthetic_per_class([10, 10, 1], [9, 9, 9], 0.5) == [5, 5, 1]  # 10.5 rounds up, largest remainder
    assert sum(synthetic_per_class([7, 5, 3], [99] * 3, 1 / 3)) == 5
    assert synthetic_per_class([7, 5, 3], [99] * 3, 0.0) == [0, 0, 0]


def test_arm_composition_is_exact(monkeypatch):
    """Capture the training sets actually handed to the classifier and count their images."""
    s = splits((20, 10, 6))
    syn = toy([40, 40, 5], 9, synthetic=True)
    syn_hashes = syn.image_hashes()
    seen = []

    class Uniform:
        history = {"best_epoch": 0}

        def predict_proba(self, ds):
            return np.full((len(ds), 3), 1 / 3)

    def fake_train(train, val, cfg, **kw):
        assert val is s.val  # early stopping watches the real val split
        seen.append((kw["seed"], train))
        return Uniform()

    monkeypatch.setattr(quick, "train_classifier", fake_train)
    cfg = DownstreamConfig(classifier=ClassifierConfig(), seeds=[0, 1], synthetic_ratio=1.5)
    res = real_vs_augmented(s, syn, cfg)

    assert [seed for seed, _ in seen] == [0, 0, 1, 1]
    for i, (_, train) in enumerate(seen):
        is_syn = np.array([hashlib.sha1(im.tobytes()).hexdigest() in syn_hashes for im in train.images])
        real_counts = np.bincount(train.labels[~is_syn], minlength=3).tolist()
        syn_counts = np.bincount(train.labels[is_syn], minlength=3).tolist()
        assert real_counts == [20, 10, 6]
        assert syn_counts == ([0, 0, 0] if i % 2 == 0 else [30, 15, 5])
    assert res["composition"]["augmented"]["synthetic"] == {"bright": 30, "dark": 15, "striped": 5}
    assert res["composition"]["real"]["synthetic"] == {"bright": 0, "dark": 0, "striped": 0}
    assert res["composition"]["augmented"]["real"] == {"bright": 20, "dark": 10, "striped": 6}
    assert res["per_seed"][0]["augmented"]["n_train"] == 36 + 50
    assert res["n_test"] == 30 and res["checks"]["synthetic_copies_of_train"] == 0
    # different seeds draw different synthetic subsets of the 40 'bright' images
    aug0, aug1 = seen[1][1], seen[3][1]
    assert aug0.fingerprint() != aug1.fingerprint()
    # a uniform predictor says class 0 for everything: summed over 2 seeds, column 0 holds all test images
    test_counts = s.test.class_counts()
    for arm in ("real", "augmented"):
        cm = np.asarray(res["confusion_matrix"][arm])
        assert cm[:, 0].tolist() == [2 * n for n in test_counts] and cm[:, 1:].sum() == 0
        assert res["per_class"]["bright"]["recall"][arm]["mean"] == 1.0
        assert res["per_class"]["dark"]["recall"][arm]["mean"] == 0.0
    assert res["confusion_matrix"]["n_seeds"] == 2 and res["confusion_matrix"]["class_names"] == s.class_names
    assert res["per_class"]["striped"]["support"] == test_counts[2]
    # identical arms: a zero paired difference with a zero-width interval
    d = res["difference"]["accuracy"]
    assert d["mean"] == 0.0 and d["ci_low"] == d["ci_high"] == 0.0


def test_end_to_end_statistics():
    torch.set_num_threads(1)
    s = splits((12, 12, 12))
    syn = toy(12, 7, synthetic=True)
    res = real_vs_augmented(s, syn, FAST, generator_fingerprint=s.train.fingerprint())
    assert res["seeds"] == [0, 1] and len(res["per_seed"]) == 2
    for arm in ("real", "augmented"):
        vals = [r[arm]["accuracy"] for r in res["per_seed"]]
        assert res["summary"][arm]["accuracy"]["mean"] == pytest.approx(np.mean(vals))
        assert res["summary"][arm]["accuracy"]["std"] == pytest.approx(np.std(vals, ddof=1))
    diffs = [r["augmented"]["f1_macro"] - r["real"]["f1_macro"] for r in res["per_seed"]]
    assert res["difference"]["f1_macro"]["mean"] == pytest.approx(np.mean(diffs))
    assert res["difference"]["f1_macro"]["std"] == pytest.approx(np.std(diffs, ddof=1))
    # 95% paired t interval over the 2 seeds: mean ± t_{0.975,1} * std / sqrt(2)
    half = 12.706204736174707 * np.std(diffs, ddof=1) / np.sqrt(2)
    assert res["difference"]["f1_macro"]["ci_low"] == pytest.approx(np.mean(diffs) - half)
    assert res["difference"]["f1_macro"]["ci_high"] == pytest.approx(np.mean(diffs) + half)
    # per class: mean over seeds of each arm's recall, paired difference of the two
    for c in s.class_names:
        rec = [(r["real"]["per_class"][c]["recall"], r["augmented"]["per_class"][c]["recall"]) for r in res["per_seed"]]
        entry = res["per_class"][c]["recall"]
        assert entry["real"]["mean"] == pytest.approx(np.mean([a for a, _ in rec]))
        assert entry["difference"]["mean"] == pytest.approx(np.mean([b - a for a, b in rec]))
        assert set(res["per_class"][c]) == {"support", "precision", "recall", "f1"}
    cm = np.asarray(res["confusion_matrix"]["augmented"])
    assert cm.sum() == 2 * len(s.test)  # every test image once per seed
    assert np.trace(cm) == round(sum(r["augmented"]["accuracy"] * len(s.test) for r in res["per_seed"]))
    assert res["summary"]["augmented"]["accuracy"]["mean"] > 0.9  # an easy task with good synthetic data
    assert res["classifier"]["epochs"] == 4 and res["n_test"] == 30


def test_guard_synthetic_flag_missing():
    s = splits()
    with pytest.raises(LeakageError, match="not flagged synthetic"):
        real_vs_augmented(s, toy(5, 9, synthetic=False), FAST)


def test_guard_synthetic_copies_a_test_image():
    s = splits()
    syn = concat([toy(5, 9), s.test.subset([3])])
    syn.synthetic = True
    with pytest.raises(LeakageError, match="1 synthetic image.*identical to test"):
        real_vs_augmented(s, syn, FAST)


def test_guard_synthetic_copies_a_val_image():
    s = splits()
    syn = concat([toy(5, 9), s.val.subset([0, 1])])
    syn.synthetic = True
    with pytest.raises(LeakageError, match="identical to val"):
        real_vs_augmented(s, syn, FAST)


def test_guard_generator_fingerprint():
    s = splits()
    syn = toy(5, 9, synthetic=True)
    other = concat([s.train, s.test]).fingerprint()  # a generator trained on train + test
    with pytest.raises(LeakageError, match="not on this training split"):
        real_vs_augmented(s, syn, FAST, generator_fingerprint=other)
    with pytest.raises(LeakageError, match="trained on the test split"):
        real_vs_augmented(s, syn, FAST, generator_fingerprint=s.test.fingerprint())
    with pytest.raises(LeakageError, match="trained on the val split"):
        real_vs_augmented(s, syn, FAST, generator_fingerprint=s.val.fingerprint())


def test_guard_real_splits_must_be_real():
    s = splits()
    s.test.synthetic = True
    with pytest.raises(LeakageError, match="test split is flagged synthetic"):
        real_vs_augmented(s, toy(5, 9, synthetic=True), FAST)
