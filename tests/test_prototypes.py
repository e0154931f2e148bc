"""Convolutional prototype learning (features/prototypes.py) on constructed points: the DCE
probabilities and the prototype loss against hand computations, then what learning must do."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from synthmed.config import PrototypeConfig
from synthmed.features.prototypes import learn_prototypes, membership_probabilities, prototype_losses


def test_points_on_their_own_prototypes_have_zero_prototype_loss():
    m = torch.tensor([[[0.0, 0.0], [1.0, 0.0]], [[0.0, 3.0], [2.0, 2.0]]])  # C=2, K=2, D=2
    f = m.reshape(4, 2)
    y = torch.tensor([0, 0, 1, 1])
    _, pl = prototype_losses(f, y, m, gamma=1.0)
    assert float(pl) == 0.0
    # the same points labelled with the other class are not on any of their own prototypes
    _, pl_wrong = prototype_losses(f, 1 - y, m, gamma=1.0)
    assert float(pl_wrong) > 0.5


def test_membership_probabilities_and_dce_match_a_hand_computation():
    # one 1-d point at 0; class 0 prototypes at 1 and 3, class 1 prototypes at 2 and 0; gamma 0.5
    m = torch.tensor([[[1.0], [3.0]], [[2.0], [0.0]]])
    f = torch.tensor([[0.0]])
    gamma = 0.5
    weights = [math.exp(-0.5 * 1), math.exp(-0.5 * 9), math.exp(-0.5 * 4), math.exp(0.0)]
    z = sum(weights)
    expected = np.array(weights).reshape(2, 2) / z
    p = membership_probabilities(f, m, gamma)[0].numpy()
    np.testing.assert_allclose(p, expected, rtol=1e-6)
    dce, pl = prototype_losses(f, torch.tensor([0]), m, gamma)
    assert float(dce) == pytest.approx(-math.log((weights[0] + weights[1]) / z), rel=1e-6)
    assert float(pl) == pytest.approx(1.0)  # the NEAREST own-class prototype (at 1), not the one at 3
    dce1, pl1 = prototype_losses(f, torch.tensor([1]), m, gamma)
    assert float(dce1) == pytest.approx(-math.log((weights[2] + weights[3]) / z), rel=1e-6)
    assert float(pl1) == 0.0


def _blobs(n=60, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0, 0.0, 0.0], [4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    x = np.concatenate([c + 0.5 * rng.standard_normal((n, 3)) for c in centres]) * scale
    y = np.repeat(np.arange(3), n)
    return x, y


def test_learned_prototypes_separate_classes_and_the_prototype_loss_keeps_them_in_their_class():
    x, y = _blobs()
    loose = learn_prototypes(x, y, 3, PrototypeConfig(weight=0.0, steps=300))
    tight = learn_prototypes(x, y, 3, PrototypeConfig(weight=1.0, steps=300))
    for p in (loose, tight):
        assert (p.predict(x) == y).mean() == 1.0
        assert p.vectors.shape == (3, 1, 3) and p.class_vectors().shape == (3, 3)
    z = tight.standardise(x)
    means = np.stack([z[y == c].mean(0) for c in range(3)])
    dist = lambda p: np.linalg.norm(p.vectors[:, 0] - means, axis=1).mean()  # noqa: E731
    # DCE alone pushes the prototypes apart, out of their class's data; lambda pulls them back in
    assert dist(tight) < dist(loose)


def test_two_prototypes_per_class_cover_a_two_mode_class_and_learning_is_deterministic():
    rng = np.random.default_rng(1)
    a = np.concatenate([rng.normal([-3, 0], 0.3, (40, 2)), rng.normal([3, 0], 0.3, (40, 2))])  # class 0: two modes
    b = rng.normal([0, 3], 0.3, (80, 2))
    x, y = np.concatenate([a, b]), np.repeat([0, 1], 80)
    cfg = PrototypeConfig(per_class=2, steps=300)
    p = learn_prototypes(x, y, 2, cfg, seed=3)
    assert p.assignments.sum() == len(x)
    assert (p.assignments[0] >= 20).all(), p.assignments  # each mode of class 0 holds its own prototype
    q = learn_prototypes(x, y, 2, cfg, seed=3)
    np.testing.assert_array_equal(p.vectors, q.vectors)


def test_feature_scale_does_not_change_the_prototypes_in_standardised_space():
    x, y = _blobs()
    a = learn_prototypes(x, y, 3, PrototypeConfig(steps=100))
    b = learn_prototypes(x * 250.0 + 7.0, y, 3, PrototypeConfig(steps=100))
    np.testing.assert_allclose(a.vectors, b.vectors, atol=1e-4)


def test_a_class_without_images_is_refused():
    x, y = _blobs()
    with pytest.raises(ValueError, match="no images"):
        learn_prototypes(x, y, 4)
