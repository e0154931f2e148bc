"""Feature extractors: registry, domain classifier (training and cache), Inception guards, TorchScript."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from synthmed.config import ClassifierConfig
from synthmed.data.dataset import ImageDataset
from synthmed.features import FeatureExtractor, FeatureExtractorError, available_extractors, get_extractor
from synthmed.features import registry
from synthmed.features.domain import DomainExtractor
from synthmed.features.inception import InceptionExtractor, default_weights_path, weights_filename

CLASSES = ["bright", "dark"]
FAST = ClassifierConfig(arch="smallcnn", lr=3e-3, batch_size=16, epochs=2, patience=2)


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def toy(n_per_class: int, seed: int, size: int = 16, channels: int = 1, synthetic: bool = False) -> ImageDataset:
    rng = np.random.default_rng(seed)
    means = [200.0, 55.0]
    images = np.concatenate([m + rng.normal(0, 20, (n_per_class, size, size, channels)) for m in means])
    labels = np.repeat(np.arange(2), n_per_class)
    return ImageDataset(np.clip(images, 0, 255).astype(np.uint8), labels, list(CLASSES), name=f"toy{seed}",
                        synthetic=synthetic)


# --------------------------------------------------------------------------- registry


def test_registry_lists_builtins_and_rejects_unknown_names():
    names = available_extractors()
    assert {"inception", "domain", "torchscript"} <= set(names)
    with pytest.raises(FeatureExtractorError, match="unknown feature extractor 'dino'.*domain.*inception"):
        get_extractor("dino")


def test_register_custom_extractor():
    class Mean(FeatureExtractor):
        name, dim, weights_hash, input_policy = "mean-test", 1, "none", "native"

        def _extract_batch(self, images):
            return images.reshape(len(images), -1).mean(axis=1, keepdims=True)

    registry.register_extractor("mean-test", Mean, overwrite=True)
    try:
        ext = get_extractor("mean-test")
        feats = ext.extract(toy(3, 0), batch_size=4)
        assert feats.shape == (6, 1) and feats.dtype == np.float64
        assert ext.describe() == {"name": "mean-test", "dim": 1, "weights_hash": "none", "input_policy": "native"}
        with pytest.raises(ValueError, match="already registered"):
            registry.register_extractor("mean-test", Mean)
    finally:
        registry._FACTORIES.pop("mean-test", None)


# --------------------------------------------------------------------------- domain


def test_domain_extractor_trains_caches_and_reuses(tmp_path):
    train, val, other = toy(24, 0), toy(8, 1), toy(5, 2)
    first = DomainExtractor(train, val, FAST, cache_dir=tmp_path, seed=0)
    assert first.cache_hit is False and first.cache_path.is_file()
    assert first.cache_path.name.startswith(f"{train.fingerprint()}-{val.fingerprint()}-")
    feats = first.extract(other, batch_size=3)
    assert feats.shape == (10, first.dim) and feats.dtype == np.float64 and first.dim == 128

    second = get_extractor("domain", real_train=train, real_val=val, cfg=FAST, cache_dir=tmp_path, seed=0)
    assert second.cache_hit is True and second.cache_path == first.cache_path
    assert second.weights_hash == first.weights_hash
    np.testing.assert_array_equal(second.extract(other, batch_size=3), feats)
    # batch size only changes float32 rounding (eval mode: BatchNorm uses running statistics)
    np.testing.assert_allclose(second.extract(other), feats, rtol=1e-5, atol=1e-6)

    desc = second.describe()
    assert desc["name"] == "domain" and desc["arch"] == "smallcnn" and desc["trained_on"] == train.fingerprint()
    assert desc["n_train"] == 48 and 0.0 <= desc["val_acc"] <= 1.0 and desc["weights_hash"] == first.weights_hash
    assert "no resize" in desc["input_policy"]

    # another seed is another classifier, hence another cache entry
    third = DomainExtractor(train, val, FAST, cache_dir=tmp_path, seed=1)
    assert third.cache_hit is False and third.cache_path != first.cache_path

    # from an existing classifier: same features, no cache involved
    reused = DomainExtractor.from_classifier(first.classifier)
    np.testing.assert_array_equal(reused.extract(other, batch_size=3), feats)
    assert reused.cache_path is None


def test_domain_extractor_refuses_synthetic_training_data_and_other_sizes(tmp_path):
    with pytest.raises(FeatureExtractorError, match="REAL"):
        DomainExtractor(toy(4, 0, synthetic=True), toy(4, 1), FAST, cache_dir=tmp_path)
    with pytest.raises(FeatureExtractorError, match="real_train"):
        get_extractor("domain")
    ext = DomainExtractor(toy(8, 0), toy(4, 1), FAST, cache_dir=tmp_path)
    with pytest.raises(FeatureExtractorError, match="trained on 16x16"):
        ext.extract(toy(2, 3, size=8))


# --------------------------------------------------------------------------- inception


def test_inception_without_weights_names_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / weights_filename()
    assert default_weights_path() == expected
    with pytest.raises(FeatureExtractorError) as err:
        get_extractor("inception")
    msg = str(err.value)
    assert str(expected) in msg and "https://" in msg and "weights_path" in msg and "\n" not in msg
    with pytest.raises(FeatureExtractorError, match="not found: .*missing.pth"):
        get_extractor("inception", weights_path=tmp_path / "missing.pth")


def test_inception_rejects_a_file_that_is_not_its_weights(tmp_path):
    bogus = tmp_path / "bogus.pth"
    torch.save({"conv.weight": torch.zeros(1)}, bogus)
    with pytest.warns(UserWarning, match="not comparable to published"):
        with pytest.raises(FeatureExtractorError, match="not torch-fidelity Inception-v3 weights"):
            get_extractor(f"inception:{bogus}")


def test_inception_random_weights_for_timing_only(tmp_path, monkeypatch):
    start = time.perf_counter()
    ext = InceptionExtractor(random_weights=True)
    if time.perf_counter() - start > 30:
        pytest.skip("building Inception-v3 took more than 30 s on this machine")
    assert ext.name == "inception-random (timing only)" and ext.describe()["timing_only"] is True
    grey = toy(1, 0, size=28)
    rgb = toy(1, 1, size=28, channels=3)
    for ds in (grey, rgb):
        feats = ext.extract(ds, batch_size=2)
        assert feats.shape == (2, 2048) and feats.dtype == np.float64 and np.isfinite(feats).all()
    # grey is replicated to RGB: a grey image and its three-channel copy give the same features
    grey_as_rgb = ImageDataset(np.repeat(grey.images, 3, axis=-1), grey.labels, CLASSES)
    np.testing.assert_allclose(ext.extract(grey), ext.extract(grey_as_rgb), rtol=1e-6)

    # the loading path of real weights: a file at torch-fidelity's cache location is picked up,
    # hashed, and flagged (with a warning) when it is not the published file
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    default_weights_path().parent.mkdir(parents=True)
    torch.save(ext.net.state_dict(), default_weights_path())
    with pytest.warns(UserWarning, match="not comparable to published"):
        loaded = get_extractor("inception")
    desc = loaded.describe()
    assert desc["name"] == "inception" and desc["published_weights"] is False
    assert desc["weights_file"] == str(default_weights_path()) and len(desc["weights_hash"]) == 16
    np.testing.assert_array_equal(loaded.extract(rgb), ext.extract(rgb))


# --------------------------------------------------------------------------- torchscript


class _TinyFeatures(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.shape[-1] == 20  # the stated input size
        return self.conv(x).mean(dim=(2, 3))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit's deprecation notice; TorchScript files still load
def test_torchscript_extractor(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pt"
    torch.jit.save(torch.jit.script(_TinyFeatures()), str(path))
    ext = get_extractor(f"torchscript:{path}", image_size=20)
    assert ext.dim == 5 and ext.name == "torchscript:tiny.pt" and len(ext.weights_hash) == 16
    for ds in (toy(2, 0, size=16), toy(2, 1, size=28, channels=3)):
        feats = ext.extract(ds, batch_size=3)
        assert feats.shape == (4, 5) and feats.dtype == np.float64
    assert ext.describe()["image_size"] == 20
    with pytest.raises(FeatureExtractorError, match="not found"):
        get_extractor(f"torchscript:{tmp_path / 'nope.pt'}")


def test_features_of_the_same_images_are_computed_once():
    from toydata import toy

    from synthmed.features.base import FeatureExtractor

    class Counting(FeatureExtractor):
        name, dim = "counting", 2

        def __init__(self):
            self.calls = 0

        def _extract_batch(self, images):
            self.calls += 1
            flat = images.reshape(len(images), -1).astype(np.float64)
            return np.stack([flat.mean(1), flat.std(1)], axis=1)

    ex, ds = Counting(), toy(5, seed=0)
    a = ex.extract(ds, batch_size=100)
    a[:] = -1  # the caller's array is its own: the memo is not changed through it
    b = ex.extract(ds.subset(np.arange(len(ds))), batch_size=100)  # same pixels, same order, another object
    assert ex.calls == 1 and (b != -1).all()
    reordered = ds.subset(np.arange(len(ds))[::-1])
    c = ex.extract(reordered, batch_size=100)
    assert ex.calls == 2
    np.testing.assert_array_equal(c, b[::-1])
    ex.memo_size = 0
    ex._memo.clear()
    ex.extract(ds, batch_size=100)
    ex.extract(ds, batch_size=100)
    assert ex.calls == 4
