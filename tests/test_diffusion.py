"""Class-conditional diffusion generator: learns, samples right, saves/loads/resumes exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from synthmed.config import AutoencoderConfig, DiffusionConfig
from synthmed.data.dataset import ImageDataset
from synthmed.generators.base import GeneratorError, counts_to_labels
from synthmed.generators.diffusion import DiffusionGenerator
from synthmed.generators.registry import load_generator
from synthmed.runtime import bf16_supported


def tiny_set(n_per_class=16, size=16, seed=0) -> ImageDataset:
    """Three easy classes: bright disc, dark disc on grey, horizontal stripes."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, labels = [], []
    for c in range(3):
        for _ in range(n_per_class):
            cx, cy = rng.uniform(size * 0.35, size * 0.65, 2)
            disc = np.hypot(xx - cx, yy - cy) < size * 0.3
            if c == 0:
                img = np.where(disc, 230, 40)
            elif c == 1:
                img = np.where(disc, 20, 150)
            else:
                img = np.where((yy // 2) % 2 == 0, 220, 30)
            imgs.append(np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8))
            labels.append(c)
    return ImageDataset(np.stack(imgs)[..., None], np.array(labels), ["bright", "dark", "stripes"], name="tiny")


def tiny_cfg(**kw) -> DiffusionConfig:
    base = dict(block_out_channels=[16, 32], layers_per_block=1, lr=2e-3, warmup_steps=5, batch_size=16,
                train_steps=40, log_every=5, sample_steps=4, checkpoint_every=0)
    base.update(kw)
    return DiffusionConfig(**base)


def make_gen(cfg, ds, seed=0):
    return DiffusionGenerator(cfg, image_size=ds.image_size, channels=ds.channels, class_names=ds.class_names, seed=seed)


def test_loss_falls_well_below_start_on_tiny_set():
    ds = tiny_set()
    g = make_gen(tiny_cfg(train_steps=150), ds)
    h = g.fit(ds, progress=False)
    curve = [loss for _, loss in h["loss_curve"]]
    assert curve[-1] < 0.5 * curve[0], curve
    assert h["frozen_parameters"] == []
    assert h["precision"] == "float32"


def test_samples_have_requested_shapes_and_labels():
    ds = tiny_set()
    g = make_gen(tiny_cfg(train_steps=5), ds)
    g.fit(ds, progress=False)
    syn = g.sample({0: 3, 2: 5}, seed=1, progress=False)
    assert syn.images.shape == (8, 16, 16, 1) and syn.images.dtype == np.uint8
    assert syn.labels.tolist() == [0] * 3 + [2] * 5
    assert syn.synthetic and syn.class_names == ds.class_names
    assert syn.meta["train_fingerprint"] == ds.fingerprint()
    per_class = g.sample([2, 1, 0], seed=1, progress=False)
    assert per_class.class_counts() == [2, 1, 0]
    for sampler in ("ddim", "ddpm"):
        s = g.sample([1, 1, 1], seed=0, sampler=sampler, steps=3, guidance=1.0, progress=False)
        assert s.images.shape == (3, 16, 16, 1)


def test_same_seed_same_images_whatever_the_batch_size():
    ds = tiny_set()
    g = make_gen(tiny_cfg(train_steps=5), ds)
    g.fit(ds, progress=False)
    a = g.sample([3, 3, 3], seed=7, batch_size=9, progress=False)
    b = g.sample([3, 3, 3], seed=7, batch_size=4, progress=False)
    c = g.sample([3, 3, 3], seed=8, batch_size=9, progress=False)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.array_equal(a.images, c.images)


def test_guidance_changes_samples():
    ds = tiny_set()
    g = make_gen(tiny_cfg(train_steps=20), ds)
    g.fit(ds, progress=False)
    a = g.sample([2, 2, 2], seed=0, guidance=1.0, progress=False)
    b = g.sample([2, 2, 2], seed=0, guidance=3.0, progress=False)
    assert not np.array_equal(a.images, b.images)


def test_save_load_gives_identical_samples(tmp_path):
    ds = tiny_set()
    g = make_gen(tiny_cfg(train_steps=10), ds)
    g.fit(ds, progress=False)
    g.save(tmp_path / "gen")
    loaded = load_generator(tmp_path / "gen")
    assert loaded.train_fingerprint == ds.fingerprint()
    assert loaded.train_image_hashes == ds.image_hashes()
    np.testing.assert_array_equal(g.sample([2, 2, 2], seed=3, progress=False).images,
                                  loaded.sample([2, 2, 2], seed=3, progress=False).images)


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    ds = tiny_set()
    straight = make_gen(tiny_cfg(train_steps=20), ds)
    straight.fit(ds, progress=False)

    first = make_gen(tiny_cfg(train_steps=10, checkpoint_every=5), ds)
    first.fit(ds, checkpoint_dir=tmp_path, progress=False)  # "killed" after step 10
    resumed = make_gen(tiny_cfg(train_steps=20, checkpoint_every=5), ds)
    resumed.fit(ds, checkpoint_dir=tmp_path, progress=False)
    assert resumed.step == 20
    for p, q in zip(straight.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(straight.sample([2, 2, 2], seed=0, progress=False).images,
                                  resumed.sample([2, 2, 2], seed=0, progress=False).images)


def test_resume_refuses_checkpoint_of_other_data(tmp_path):
    ds = tiny_set()
    make_gen(tiny_cfg(train_steps=5, checkpoint_every=5), ds).fit(ds, checkpoint_dir=tmp_path, progress=False)
    other = tiny_set(seed=1)
    with pytest.raises(GeneratorError, match="trained on data"):
        make_gen(tiny_cfg(train_steps=10), other).fit(other, checkpoint_dir=tmp_path, progress=False)


def test_refuses_bad_training_data():
    ds = tiny_set()
    g = make_gen(tiny_cfg(), ds)
    syn = ImageDataset(ds.images, ds.labels, ds.class_names, synthetic=True)
    with pytest.raises(GeneratorError, match="real images only"):
        g.fit(syn, progress=False)
    with pytest.raises(GeneratorError, match="no training images"):
        g.fit(ds.subset(np.flatnonzero(ds.labels != 1)), progress=False)
    with pytest.raises(GeneratorError, match="before fit"):
        make_gen(tiny_cfg(), ds).sample([1, 1, 1], progress=False)


def test_latent_space_trains_autoencoder_and_reports_reconstruction(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # the trained autoencoder is cached: not in ~/.cache
    ds = tiny_set(size=16)
    ae = AutoencoderConfig(block_out_channels=[16, 32], latent_channels=4, train_steps=30, batch_size=16)
    cfg = tiny_cfg(space="latent", block_out_channels=[32, 32], train_steps=10, autoencoder=ae)
    g = make_gen(cfg, ds)
    assert g.model_shape == (4, 8, 8)
    h = g.fit(ds, val=ds.subset(range(0, 48, 4)), progress=False)
    rec = h["autoencoder"]["reconstruction"]
    assert rec["num_images"] == 12 and 0 <= rec["mse"] < 0.25 and rec["psnr_db"] > 6
    assert g.autoencoder.scaling_factor > 0
    syn = g.sample([2, 2, 2], seed=0, progress=False)
    assert syn.images.shape == (6, 16, 16, 1)


def test_counts_to_labels_forms():
    assert counts_to_labels({1: 2, 0: 1}, 3).tolist() == [0, 1, 1]
    assert counts_to_labels([1, 0, 2], 3).tolist() == [0, 2, 2]
    assert counts_to_labels({"labels": [2, 2, 0]}, 3).tolist() == [2, 2, 0]
    with pytest.raises(GeneratorError):
        counts_to_labels({"labels": [3]}, 3)


def test_no_bf16_on_cpu():
    assert bf16_supported("cpu") is False


class GaussianOracle(torch.nn.Module):
    """The exact noise predictor for data x0 ~ N(mu, s^2) per pixel: E[eps | x_t] in closed form.

    With it every sampler must reproduce the data distribution, whatever the schedule: a check of
    the sampling loop (guidance arithmetic, scheduler wiring) that does not depend on training.
    """

    def __init__(self, alphas_cumprod, mu: float, s: float):
        super().__init__()
        self.register_buffer("a", alphas_cumprod)
        self.mu, self.s = mu, s

    def forward(self, x, t, condition=None):  # the denoiser call: (noisy input, time, condition) -> prediction
        a = self.a[t.long()].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s**2 + 1 - a)


@pytest.mark.parametrize("sampler, steps", [("dpmsolver++", 20), ("ddim", 50), ("ddpm", 100)])
def test_samplers_reproduce_a_gaussian_with_the_exact_denoiser(sampler, steps):
    ds = tiny_set(size=8)
    g = make_gen(tiny_cfg(block_out_channels=[16, 16], formulation="ddpm"), ds)
    g.train_fingerprint = "oracle"
    mu, s = 0.3, 0.2
    g.ema = GaussianOracle(g.formulation.noise_scheduler().alphas_cumprod, mu, s)
    syn = g.sample([300, 0, 0], seed=0, sampler=sampler, steps=steps, guidance=2.0, progress=False)
    x = syn.images.astype(np.float64) / 127.5 - 1  # back to [-1, 1]
    assert abs(x.mean() - mu) < 0.03, x.mean()
    assert abs(x.std() - s) < 0.03, x.std()


def test_sampling_grid_avoids_the_cosine_endpoint():
    # alpha_bar(T-1) ~ 2e-9 under the cosine schedule: starting there amplifies the network's error ~2e4x
    g = make_gen(tiny_cfg(formulation="ddpm"), tiny_set())
    for sampler in ("dpmsolver++", "ddim", "ddpm"):
        sch = g.sampling_scheduler(sampler)
        sch.set_timesteps(16)
        assert int(sch.timesteps[0]) < 990, (sampler, sch.timesteps[:3])


class EDMGaussianOracle(torch.nn.Module):
    """The exact EDM network output F for x0 ~ N(mu, s^2) per pixel.

    D(x; sigma) = E[x0 | x] = (s^2 x + sigma^2 mu) / (s^2 + sigma^2), and F = (D - c_skip x) / c_out;
    the network sees c_in * x and c_noise = log(sigma) / 4, from which both are recovered.
    """

    def __init__(self, formulation, mu: float, s: float):
        super().__init__()
        self.f, self.mu, self.s = formulation, mu, s

    def forward(self, xin, c_noise, condition=None):
        sigma = (4 * c_noise.float()).exp().view(-1, 1, 1, 1)
        c_skip, c_out, c_in, _ = self.f.scalings(sigma)
        x = xin / c_in
        d = (self.s**2 * x + sigma**2 * self.mu) / (self.s**2 + sigma**2)
        return (d - c_skip * x) / c_out


@pytest.mark.parametrize("sampler, steps", [("dpmsolver++", 20), ("ddim", 40), ("ddpm", 40)])
def test_edm_samplers_reproduce_a_gaussian_with_the_exact_denoiser(sampler, steps):
    ds = tiny_set(size=8)
    g = make_gen(tiny_cfg(block_out_channels=[16, 16], formulation="edm"), ds)
    g.train_fingerprint = "oracle"
    mu, s = 0.3, 0.2
    g.ema = EDMGaussianOracle(g.formulation, mu, s)
    syn = g.sample([300, 0, 0], seed=0, sampler=sampler, steps=steps, guidance=2.0, progress=False)
    x = syn.images.astype(np.float64) / 127.5 - 1
    assert abs(x.mean() - mu) < 0.03, x.mean()
    assert abs(x.std() - s) < 0.03, x.std()


def test_edm_loss_of_the_exact_denoiser_is_its_irreducible_minimum():
    # For Gaussian data the oracle's loss must be below that of any perturbed output: a check of the
    # scalings and of the target, not of learning.
    from synthmed.generators.formulation import EDMFormulation

    f = EDMFormulation(tiny_cfg(formulation="edm"))
    mu, s = 0.3, 0.2
    oracle = EDMGaussianOracle(f, mu, s)
    x0 = mu + s * torch.randn(512, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    exact = f.loss(lambda x, t, y: oracle(x, t), x0, None, torch.Generator().manual_seed(1))
    biased = f.loss(lambda x, t, y: oracle(x, t) + 0.1, x0, None, torch.Generator().manual_seed(1))
    assert exact < biased
    # unit-variance target: the oracle's residual is the posterior noise, lambda-weighted to O(1)
    assert 0.0 < float(exact) < 1.0


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_weights_cap_the_high_snr_timesteps(prediction):
    from synthmed.generators.formulation import DDPMFormulation

    f = DDPMFormulation(tiny_cfg(formulation="ddpm", loss_weighting="min_snr", min_snr_gamma=5.0,
                                 prediction_type=prediction))
    a = f.alphas_cumprod
    w = f.loss_weight(a)
    snr = a / (1 - a)
    low = snr < 5.0
    expect_low = torch.ones_like(w[low]) if prediction == "epsilon" else snr[low] / (snr[low] + 1)
    torch.testing.assert_close(w[low], expect_low)
    assert (w[~low] < (1.0 if prediction == "epsilon" else 5 / 6 + 1e-6)).all()
    assert w[0] < 1e-2  # the nearly clean first timestep barely counts
    uniform = DDPMFormulation(tiny_cfg(formulation="ddpm", prediction_type=prediction))
    assert torch.equal(uniform.loss_weight(a), torch.ones_like(a))


@pytest.mark.parametrize("kw", [dict(formulation="ddpm"),
                                dict(formulation="ddpm", prediction_type="v_prediction", loss_weighting="min_snr")])
def test_other_formulations_learn_and_resume(kw, tmp_path):
    ds = tiny_set()
    g = make_gen(tiny_cfg(train_steps=120, **kw), ds)
    h = g.fit(ds, progress=False)
    curve = [loss for _, loss in h["loss_curve"]]
    assert curve[-1] < 0.7 * curve[0], curve
    g.save(tmp_path / "g")
    g2 = load_generator(tmp_path / "g")
    a = g.sample([2, 2, 2], seed=3, progress=False)
    b = g2.sample([2, 2, 2], seed=3, progress=False)
    np.testing.assert_array_equal(a.images, b.images)


@pytest.mark.parametrize("balance, rare_share", [(0.0, 4 / 36), (1.0, 1 / 3), (0.5, None)])
def test_class_balance_sets_how_often_a_rare_class_is_drawn(balance, rare_share):
    """class_balance 0 draws classes as often as the data holds them; 1 draws every class equally often;
    in between lies in between. Checked on the batches fit actually draws."""
    imgs = tiny_set(16, size=8)
    keep = np.r_[np.arange(16), np.arange(16, 20), np.arange(32, 48)]  # 'dark' cut to 4 of 36 images
    train = imgs.subset(keep)
    gen = DiffusionGenerator(tiny_cfg(class_balance=balance, train_steps=30, batch_size=48), image_size=8,
                             channels=1, class_names=train.class_names)
    drawn = []
    real_loss = gen.formulation.loss

    def spy(net, x0, y, g):
        drawn.append(y.clone())
        return real_loss(net, x0, y, g)

    gen.formulation.loss = spy
    gen.fit(train, progress=False)
    y = torch.cat(drawn)
    y = y[y < 3]  # the null class of condition dropout is not a draw
    share = float((y == 1).float().mean())
    if rare_share is None:
        assert 4 / 36 + 0.05 < share < 1 / 3 - 0.05
    else:
        assert abs(share - rare_share) < 0.04


@pytest.mark.slow  # compiling the U-Net takes a minute on CPU
def test_compiled_training_matches_eager_training():
    """generator.compile changes how the step runs, not what it computes: same seed, same data, the
    weights after a few steps agree to float tolerance and the saved state has the plain parameter names."""
    train = tiny_set(8, size=8)
    runs = []
    for compiled in (False, True):
        gen = DiffusionGenerator(tiny_cfg(train_steps=6, compile=compiled), image_size=8, channels=1,
                                 class_names=train.class_names)
        gen.fit(train, progress=False)
        runs.append(gen.unet.state_dict())
    assert runs[0].keys() == runs[1].keys()
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=1e-3, atol=1e-4)


def _drawn_batches(cfg, train):
    gen = DiffusionGenerator(cfg, image_size=train.image_size, channels=1, class_names=train.class_names)
    drawn, real_loss = [], gen.formulation.loss

    def spy(net, x0, y, g):
        drawn.append(x0[y == 2].clone())  # the stripe images (condition dropout hides a few: no matter)
        return real_loss(net, x0, y, g)

    gen.formulation.loss = spy
    gen.fit(train, progress=False)
    return torch.cat(drawn)


def test_transpose_turns_the_training_images_and_is_off_by_default():
    """generator.transpose: each training image is transposed with that probability (1: all of them);
    at 0 no batch ever holds a transposed image. Horizontal stripes transposed are vertical stripes, so
    the rows (not the columns) of every drawn stripe image become constant."""
    stripes = tiny_set(16, size=8)  # class 2: horizontal stripes
    base = dict(train_steps=6, batch_size=24, hflip=0.0, vflip=0.0)

    def along(x, dim):  # mean spread of pixel values along rows (dim -1) or along columns (dim -2)
        return float(x.std(dim=dim).mean())

    plain = _drawn_batches(tiny_cfg(**base), stripes)
    turned = _drawn_batches(tiny_cfg(transpose=1.0, **base), stripes)
    assert along(plain, -1) < 0.2 < along(plain, -2)  # horizontal stripes: constant along each row
    assert along(turned, -2) < 0.2 < along(turned, -1)  # transposed: constant along each column
    half = _drawn_batches(tiny_cfg(transpose=0.5, **dict(base, train_steps=20)), stripes)
    vertical = (half.std(dim=-2).mean(dim=(1, 2)) < 0.2).float().mean()
    assert 0.3 < float(vertical) < 0.7


def test_flip_and_transpose_variants_are_the_eight_symmetries_of_the_square():
    from synthmed.generators.training_conditions import apply_variant, flip_variants

    x = torch.arange(16.0).view(1, 4, 4)  # no symmetry: every variant differs
    variants = flip_variants(0.5, 0.5, 0.5)
    images = {tuple(apply_variant(x, *v).flatten().tolist()) for v in variants}
    assert len(variants) == 8 and len(images) == 8
    rotations = {tuple(torch.rot90(x, k, dims=(-2, -1)).flatten().tolist()) for k in range(4)}
    assert rotations <= images
    assert flip_variants(0.5, 0.5) == [(h, v, False) for h, v in [(False, False), (True, False), (False, True),
                                                                   (True, True)]]
    assert len(flip_variants(0.0, 0.0, 0.5)) == 2


def test_a_transposed_image_gets_its_mask_transposed():
    """mask_condition with transpose: each image's mask gets the same flips and transpose as the image."""
    from synthmed.generators.training_conditions import TrainingConditions, apply_variant, flip_variants

    masks = np.zeros((2, 4, 4), np.uint8)
    masks[:, 0, 1:] = 1  # top row, right of the corner: changes under every symmetry but the anti-diagonal ones
    conds = TrainingConditions(np.zeros(2, int), masks=masks, mask_class_names=["cell"])
    idx = torch.tensor([0, 1])
    for h, v, t in flip_variants(0.5, 0.5, 0.5):
        got = conds.mask_batch(idx, 4, flip_h=torch.tensor([h, False]), flip_v=torch.tensor([v, False]),
                               transpose=torch.tensor([t, False]))
        want = apply_variant(torch.from_numpy(masks[0]).float(), h, v, t)
        torch.testing.assert_close(got[0, 0], want)
        torch.testing.assert_close(got[1, 0], torch.from_numpy(masks[1]).float())  # untouched image
