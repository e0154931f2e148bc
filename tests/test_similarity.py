"""SSIM / LPIPS pairs, pairing policies, and LPIPS failing clearly without its backbone weights."""

import os

import numpy as np
import pytest
import torch

from synthmed.data.dataset import ImageDataset
from synthmed.metrics.similarity import (MetricUnavailable, image_similarity, lpips_backbone_file, lpips_pairs,
                                         pair_indices, ssim_pairs)


def _images(n, size=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    # smooth-ish images (SSIM on pure noise is dominated by the noise itself)
    base = rng.integers(0, 256, size=(n, size // 4, size // 4, channels)).astype(np.uint8)
    return np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)


def _noisy(images, amount=40, seed=1):
    rng = np.random.default_rng(seed)
    return np.clip(images.astype(int) + rng.integers(-amount, amount + 1, images.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_self_is_one_and_noise_lowers_it(channels):
    imgs = _images(5, channels=channels)
    np.testing.assert_allclose(ssim_pairs(imgs, imgs), 1.0, atol=1e-5)
    noisy = ssim_pairs(imgs, _noisy(imgs))
    assert noisy.shape == (5,) and np.all(noisy < 0.99)
    assert np.all(ssim_pairs(imgs, _noisy(imgs, 100)) < noisy)  # more noise, lower SSIM


def test_ssim_accepts_datasets_and_tiny_images():
    imgs = _images(3, size=8)
    ds = ImageDataset(imgs, [0, 0, 0], ["a"])
    np.testing.assert_allclose(ssim_pairs(ds, ds), 1.0, atol=1e-5)


def test_nearest_pairing_picks_the_matching_image_of_the_same_class():
    real_imgs = _images(6, seed=3)
    real = ImageDataset(real_imgs, [0, 0, 0, 1, 1, 1], ["a", "b"])
    # synthetic: slightly perturbed copies of real 2 (class a) and real 4 (class b), plus an exact copy of
    # real 0 labelled class b: it must be paired within class b, not with its pixel twin in class a
    synth_imgs = np.stack([_noisy(real_imgs[2:3], 5)[0], _noisy(real_imgs[4:5], 5)[0], real_imgs[0]])
    synthetic = ImageDataset(synth_imgs, [0, 1, 1], ["a", "b"], synthetic=True)
    partner = pair_indices(real, synthetic, "nearest")
    assert partner[0] == 2 and partner[1] == 4 and partner[2] in (3, 4, 5)


def test_random_pairing_is_seeded_and_within_class():
    real = ImageDataset(_images(20, seed=4), [0] * 10 + [1] * 10, ["a", "b"])
    synthetic = ImageDataset(_images(8, seed=5), [0, 1] * 4, ["a", "b"], synthetic=True)
    p1, p2 = pair_indices(real, synthetic, "random", seed=7), pair_indices(real, synthetic, "random", seed=7)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(real.labels[p1], synthetic.labels)


def test_image_similarity_reports_per_class_total_and_policy():
    real_imgs = _images(6, seed=3)
    real = ImageDataset(real_imgs, [0, 0, 0, 1, 1, 1], ["a", "b", "c"])
    synthetic = ImageDataset(np.concatenate([real_imgs[:4], real_imgs[:1]]), [0, 0, 0, 1, 2], ["a", "b", "c"],
                             synthetic=True)
    out = image_similarity(real, synthetic, metric="ssim", pairing="nearest")
    assert "nearest real image of the same class" in out["pairing_policy"]
    assert out["per_class"]["a"] == {"mean": pytest.approx(1.0, abs=1e-5), "std": pytest.approx(0, abs=1e-5), "n": 3}
    assert out["per_class"]["c"]["n"] == 0 and out["total"]["n"] == 4
    assert any("'c'" in w and "no real image" in w for w in out["warnings"])
    rand = image_similarity(real, synthetic, metric="ssim", pairing="random", seed=3)
    assert "random real image" in rand["pairing_policy"] and "seed 3" in rand["pairing_policy"]


def test_lpips_without_weights_fails_clearly(tmp_path):
    filename = lpips_backbone_file("alex")
    with pytest.raises(MetricUnavailable) as err:
        lpips_pairs(_images(2), _images(2), lpips_weights_dir=tmp_path)
    msg = str(err.value)
    assert filename in msg and "checkpoints" in msg and "lpips_weights_dir" in msg
    assert isinstance(err.value, ValueError)


def test_lpips_default_cache_either_works_or_fails_clearly():
    filename = lpips_backbone_file("alex")
    if not os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", filename)):
        # offline and uncached: the download attempt must become a MetricUnavailable naming the file
        with pytest.raises(MetricUnavailable, match=filename):
            lpips_pairs(_images(2), _images(2))
    else:
        out = lpips_pairs(_images(2), _images(2))
        assert out.shape == (2,) and np.allclose(out, 0, atol=1e-6)


def test_lpips_runs_from_a_weights_dir(tmp_path):
    # A randomly initialised AlexNet saved under the expected name exercises the whole LPIPS path
    # (weights_dir -> torch hub -> torchmetrics) offline; its values are not meaningful LPIPS.
    torchvision = pytest.importorskip("torchvision")
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), tmp_path / lpips_backbone_file("alex"))
    before = torch.hub.get_dir()
    imgs = _images(3, size=28)
    same = lpips_pairs(imgs, imgs, lpips_weights_dir=tmp_path)
    diff = lpips_pairs(imgs, imgs[::-1], lpips_weights_dir=tmp_path)
    assert torch.hub.get_dir() == before  # hub dir restored
    np.testing.assert_allclose(same, 0.0, atol=1e-6)
    assert diff[0] > 0 and diff[1] == pytest.approx(0.0, abs=1e-6)  # pair 1 is the middle image with itself
