"""classifiers: metrics against hand-worked numbers, learning, early stopping, save/load, guards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from synthmed.classifiers import (TrainedClassifier, augment_batch, build_classifier, classification_metrics,
                                  train_classifier)
from synthmed.config import ClassifierConfig
from toydata import CLASSES, toy

FAST = ClassifierConfig(arch="smallcnn", lr=3e-3, batch_size=32, epochs=8, patience=3)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# --------------------------------------------------------------------------- metrics


def test_metrics_hand_worked_binary():
    y = [0, 0, 0, 1, 1]
    p1 = np.array([0.1, 0.6, 0.2, 0.8, 0.4])  # predictions 0 1 0 1 0
    m = classification_metrics(y, np.stack([1 - p1, p1], 1), ["neg", "pos"])
    assert m["accuracy"] == pytest.approx(3 / 5)
    # recall neg 2/3, pos 1/2
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # neg: P=2/3 R=2/3 F1=2/3; pos: P=1/2 R=1/2 F1=1/2
    assert m["per_class"]["neg"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["per_class"]["pos"]["f1"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # AUC: positives {0.8, 0.4} vs negatives {0.1, 0.6, 0.2}: pairs won 3 + 2 = 5 of 6
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]


def test_metrics_multiclass_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    logits = rng.normal(size=(60, 3)) + 1.5 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = classification_metrics(y, proba, CLASSES)
    pred = proba.argmax(1)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["auc"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    assert np.trace(np.array(m["confusion_matrix"])) == (pred == y).sum()
    assert sum(m["per_class"][c]["support"] for c in CLASSES) == 60


def test_metrics_auc_undefined_when_class_missing():
    proba = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    m = classification_metrics([0, 1], proba, CLASSES)
    assert m["auc"] is None and m["accuracy"] == 1.0
    assert m["per_class"]["striped"]["support"] == 0


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("arch,size", [("smallcnn", 8), ("resnet18", 16), ("resnet18", 72)])
def test_build_shapes(arch, size):
    model = build_classifier(arch, 3, 1, size).eval()
    x = torch.zeros(2, 1, size, size)
    assert model(x).shape == (2, 3)
    assert model.features(x).ndim == 2
    if arch == "resnet18":
        assert model.net.conv1.kernel_size == ((3, 3) if size <= 64 else (7, 7))


def test_resnet_weights(tmp_path):
    from torchvision.models import resnet18

    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        build_classifier("resnet18", 3, 3, 32, weights_path=str(tmp_path / "nowhere.pth"))
    ref = resnet18(weights=None)  # stands in for a local ImageNet file
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    model = build_classifier("resnet18", 3, 3, 32, weights_path=str(tmp_path / "r18.pth"))
    assert torch.equal(model.net.layer3[0].conv1.weight, ref.layer3[0].conv1.weight)
    assert model.net.fc.out_features == 3  # head is new, stem is the small-image one
    assert model.net.conv1.kernel_size == (3, 3)


def test_augment_preserves_content():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 16, dtype=torch.float32).view(2, 1, 4, 4)
    y = augment_batch(x.repeat(50, 1, 1, 1), gen)
    # every output is one of the 8 symmetries of its input: same multiset of pixels
    assert torch.equal(y.flatten(1).sort(1).values, x.repeat(50, 1, 1, 1).flatten(1).sort(1).values)
    assert len({tuple(v.tolist()) for v in y[::2].flatten(1)}) > 1  # and not always the identity


# --------------------------------------------------------------------------- training


def test_learns_easy_task_and_roundtrips(tmp_path):
    train, val, test = toy(40, 0), toy(10, 1), toy(30, 2)
    clf = train_classifier(train, val, FAST, seed=0, augment=True)
    pred = clf.predict(test)
    assert (pred == test.labels).mean() > 0.9
    assert clf.features(test).shape == (len(test), 128)
    assert clf.train_fingerprint == train.fingerprint()
    h = clf.history
    assert len(h["val_loss"]) == len(h["train_loss"]) == len(h["val_acc"]) >= 1

    path = clf.save(tmp_path / "clf.pt")
    again = TrainedClassifier.load(path)
    np.testing.assert_array_equal(again.predict_proba(test), clf.predict_proba(test))
    assert again.class_names == CLASSES and again.train_fingerprint == clf.train_fingerprint


def test_deterministic_for_a_seed():
    train, val, test = toy(12, 0), toy(4, 1), toy(4, 2)
    cfg = ClassifierConfig(epochs=2, batch_size=16)
    a = train_classifier(train, val, cfg, seed=3, augment=True).predict_proba(test)
    b = train_classifier(train, val, cfg, seed=3, augment=True).predict_proba(test)
    c = train_classifier(train, val, cfg, seed=4, augment=True).predict_proba(test)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_early_stopping_restores_best_epoch():
    # validation labels are rotated, so learning the training task makes val loss worse:
    # the best epoch is an early one and the final weights must be rolled back to it
    train, val = toy(30, 0), toy(10, 1)
    val.labels = (val.labels + 1) % 3
    cfg = ClassifierConfig(lr=3e-3, batch_size=32, epochs=20, patience=3)
    clf = train_classifier(train, val, cfg, seed=0)
    h = clf.history
    best = int(np.argmin(h["val_loss"]))
    assert h["best_epoch"] == best
    assert h["stopped_early"] and len(h["val_loss"]) == best + 1 + cfg.patience
    assert h["val_loss"][-1] > h["val_loss"][best]
    proba = clf.predict_proba(val)
    restored_loss = -np.log(proba[np.arange(len(val)), val.labels]).mean()
    assert restored_loss == pytest.approx(h["val_loss"][best], rel=1e-4)


def test_step_budget_is_the_same_whatever_the_training_set_size(monkeypatch):
    """With ``steps`` every training set gets exactly that many optimizer steps (a protocol with
    twice the images must not get twice the training), validated every ``eval_every`` steps."""
    import synthmed.classifiers as classifiers

    counted = {"n": 0}
    real_step = torch.optim.Adam.step

    def counting_step(self, *a, **k):
        counted["n"] += 1
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    cfg = ClassifierConfig(batch_size=8, steps=25, eval_every=10, patience=10)
    for n_per_class in (4, 30):  # 12 images = 2 batches per epoch; 90 images = 12 batches per epoch
        counted["n"] = 0
        clf = classifiers.train_classifier(toy(n_per_class, 0), toy(4, 1), cfg, seed=0)
        assert counted["n"] == 25 and clf.history["steps"] == 25
        assert clf.history["step"] == [10, 20, 25] and len(clf.history["val_loss"]) == 3
        assert clf.history["best_step"] in (10, 20, 25)
    with pytest.raises(ValueError, match="steps"):
        classifiers.train_classifier(toy(4, 0), toy(4, 1), ClassifierConfig(steps=0), seed=0)


def test_refuses_synthetic_validation():
    with pytest.raises(ValueError, match="synthetic"):
        train_classifier(toy(4, 0), toy(2, 1, synthetic=True), FAST)


def test_balanced_class_weights_give_every_class_the_same_total_weight():
    import torch

    from synthmed.classifiers import class_weights

    y = torch.tensor([0] * 60 + [1] * 5 + [2] * 35)
    w = class_weights(y, 4, "balanced")  # class 3 has no images
    per_class = torch.stack([w[y][y == c].sum() for c in range(3)])
    assert torch.allclose(per_class, per_class[0].expand(3)) and w[3] == 0
    assert torch.isclose(w[y].mean(), torch.tensor(1.0))  # the mean loss keeps its scale
    assert class_weights(y, 4, "none") is None


def test_the_judge_is_class_balanced_by_default_and_downstream_is_not():
    from synthmed.config import load_config

    cfg = load_config(preset="demo")
    assert cfg.evaluate.judge.class_weighting == "balanced"
    assert cfg.downstream.classifier.class_weighting == "none"


def test_balanced_weighting_trains_and_weighs_the_validation_loss():
    cfg = ClassifierConfig(arch="smallcnn", widths=[8, 16], epochs=2, patience=2, class_weighting="balanced")
    train, val = toy([40, 4, 40], seed=0), toy([10, 10, 10], seed=1)
    clf = train_classifier(train, val, cfg, seed=0, progress=False)
    assert len(clf.history["val_loss"]) == 2 and all(v == v for v in clf.history["val_loss"])


def test_early_stopping_keeps_the_best_weights_and_stops_after_patience():
    from torch import nn

    from synthmed.classifiers import EarlyStopping

    model = nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(patience=2)
    stops = []
    for at, (weight, loss) in enumerate([(1.0, 0.9), (2.0, 0.5), (3.0, 0.7), (4.0, 0.5), (5.0, 0.6)]):
        with torch.no_grad():
            model.weight.fill_(weight)
        stops.append(stopper.update(model, loss, at))
    # 0.5 at step 1 is the best; 0.7 and an equal 0.5 are two validations without a new lowest
    assert stops == [False, False, False, True, True] and stopper.stopped
    assert stopper.best_at == 1 and stopper.best_loss == 0.5
    stopper.restore(model)
    assert model.weight.item() == 2.0
    fresh = nn.Linear(1, 1, bias=False)
    before = fresh.weight.clone()
    EarlyStopping(3).restore(fresh)  # nothing seen: the model is left as it is
    assert torch.equal(fresh.weight, before)
