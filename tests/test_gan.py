"""The GAN kinds (R3GAN, conditional ProGAN with WGAN-GP) and what they share: losses and penalties
against hand computations, schedules and their endpoints, fade-in, augmentation, EMA by half-life,
the time budget on a fake clock, the mode-collapse guard, and overfitting a tiny set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toydata import toy

from synthmed import runtime
from synthmed.config import ConfigError, ProGANConfig, R3GANConfig, load_config
from synthmed.generators.augment import augment, translate
from synthmed.generators.base import GeneratorError
from synthmed.generators.progan import growth_state, minibatch_stddev, pixel_norm, wgan_gp_penalty
from synthmed.generators.r3gan import relativistic_d_loss, relativistic_g_loss, zero_centred_penalty
from synthmed.generators.registry import build_generator
from synthmed.generators.schedules import burn_in_position, decay, ema_beta, scheduled
from synthmed.metrics.diversity import class_diversity, diversity_warning, mean_pairwise_distance
from synthmed.report.verdict import run_warnings

torch.set_num_threads(1)


def r3(train, **kw):
    base = dict(widths=[16, 16], cardinality=4, noise_dim=8, embed_dim=8, batch_size=8, train_kimg=0.08,
                log_every=5, checkpoint_every=0)
    return build_generator(R3GANConfig(**{**base, **kw}), image_size=train.image_size, channels=train.channels,
                           class_names=train.class_names)


def pro(train, **kw):
    base = dict(widths=[16, 16], latent_dim=8, embed_dim=4, batch_size=8, phase_kimg=0.016, train_kimg=0.08,
                log_every=5, checkpoint_every=0)
    return build_generator(ProGANConfig(**{**base, **kw}), image_size=train.image_size, channels=train.channels,
                           class_names=train.class_names)


# --------------------------------------------------------------------------- losses and penalties
def test_r1_r2_equal_a_hand_computation_on_a_tiny_discriminator():
    torch.manual_seed(0)
    x = torch.randn(5, 1, 2, 2, requires_grad=True)
    # linear D(x) = w.x + b: the gradient is w for every input, the penalty ||w||^2
    w = torch.tensor([0.5, -1.0, 2.0, 0.25])
    d = x.flatten(1) @ w + 0.3
    np.testing.assert_allclose(zero_centred_penalty(d, x).detach().numpy(), np.full(5, float((w ** 2).sum())),
                               rtol=1e-6)
    # quadratic D(x) = sum(a x^2): the gradient is 2 a x, the penalty sum(4 a^2 x^2) per image
    a = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 2, 2)
    d = (a * x ** 2).flatten(1).sum(1)
    expected = (4 * a ** 2 * x ** 2).flatten(1).sum(1)
    np.testing.assert_allclose(zero_centred_penalty(d, x).detach().numpy(), expected.detach().numpy(), rtol=1e-6)
    # the penalty keeps its graph: it trains D (d/da of sum 4 a^2 x^2 = 8 a x^2)
    a2 = a.clone().requires_grad_(True)
    zero_centred_penalty((a2 * x ** 2).flatten(1).sum(1), x).sum().backward()
    np.testing.assert_allclose(a2.grad.numpy(), (8 * a * (x ** 2).sum(0, keepdim=True)).detach().numpy(), rtol=1e-5)


def test_relativistic_losses_match_their_formula_on_fixed_logits():
    d_real = torch.tensor([1.0, 0.0, -2.0, 3.0])
    d_fake = torch.tensor([0.5, 0.0, 1.0, -1.0])
    diff = (d_fake - d_real).tolist()
    assert relativistic_d_loss(d_real, d_fake).item() == pytest.approx(np.mean([math.log1p(math.exp(v)) for v in diff]))
    assert relativistic_g_loss(d_real, d_fake).item() == pytest.approx(np.mean([math.log1p(math.exp(-v)) for v in diff]))
    # pairing: a constant shift of both logits changes nothing
    assert relativistic_d_loss(d_real + 7, d_fake + 7).item() == pytest.approx(relativistic_d_loss(d_real, d_fake).item())


def test_r3gan_discriminator_loss_is_the_adversarial_term_plus_gamma_half_r1_r2():
    train = toy(4, seed=0)
    g = r3(train, gamma_start=3.0, gamma_end=3.0, train_kimg=0.016, log_every=1)
    g.fit(train, progress=False)
    for e in g.history["losses"]:
        assert e["loss"] == pytest.approx(e["d_adversarial"] + 3.0 / 2 * (e["r1"] + e["r2"]), rel=1e-5)
        assert e["r1"] > 0 and e["r2"] > 0


def test_wgan_gp_penalty_on_a_linear_critic():
    # D(x) = w.x: the gradient is w everywhere, the penalty (||w|| - 1)^2
    w = torch.tensor([3.0, 0.0, 4.0, 0.0])
    D = lambda x, y: x.flatten(1) @ w  # noqa: E731
    real, fake = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    gp = wgan_gp_penalty(D, real, fake, torch.zeros(3, dtype=torch.long), torch.rand(3, 1, 1, 1))
    np.testing.assert_allclose(gp.detach().numpy(), np.full(3, (5.0 - 1) ** 2), rtol=1e-6)


def test_pixel_norm_and_minibatch_stddev():
    x = torch.randn(8, 5, 3, 3) * 7
    assert torch.allclose(pixel_norm(x).square().mean(1), torch.ones(8, 3, 3), atol=1e-4)
    same = torch.ones(8, 5, 3, 3)
    assert torch.allclose(minibatch_stddev(same, 4)[:, -1], torch.full((8, 3, 3), 1e-4), atol=1e-4)
    out = minibatch_stddev(x, 4)
    assert out.shape == (8, 6, 3, 3) and (out[:, -1] > 1).all()


# --------------------------------------------------------------------------- schedules
def test_schedules_hit_their_endpoints_rising_and_falling():
    for start, end in [(5.0, 40.0), (150.0, 15.0), (2e-4, 5e-5)]:
        for shape in ("cosine", "squared"):
            assert scheduled(start, end, 0.0, 100.0, 0.2, shape) == pytest.approx(start)
            assert scheduled(start, end, 20.0, 100.0, 0.2, shape) == pytest.approx(end)
            assert scheduled(start, end, 80.0, 100.0, 0.2, shape) == pytest.approx(end)
            values = [scheduled(start, end, k, 100.0, 1.0, shape) for k in np.linspace(0, 100, 21)]
            steps = np.diff(values) * np.sign(end - start)
            assert (steps >= -1e-12).all()  # monotonic towards the end value
    # the cosine halfway is the midpoint; the squared (delayed) decay is still above it there
    assert decay(0.5, "cosine") == pytest.approx(0.5)
    assert decay(0.5, "squared") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert all(decay(x, "squared") >= decay(x, "cosine") - 1e-12 for x in np.linspace(0, 1, 11))


def test_burn_in_over_100_percent_never_finishes():
    # 150%: training ends 2/3 of the way along the schedule
    assert burn_in_position(750, 750, 1.5) == pytest.approx(2 / 3)
    at_end = scheduled(5.0, 40.0, 750, 750, 1.5)
    assert at_end == pytest.approx(40 + (5 - 40) * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    assert 5.0 < at_end < 40.0
    assert burn_in_position(750, 750, 1.0) == 1.0


def test_ema_half_life():
    beta = ema_beta(32, 10.0)
    assert beta ** (10_000 / 32) == pytest.approx(0.5)
    assert ema_beta(32, 0.0) == 0.0


def test_r3gan_settings_follow_the_schedule_during_training():
    train = toy(4, seed=0)
    g = r3(train, gamma_start=5.0, gamma_end=40.0, aug_start=0.0, aug_end=0.6, burn_in=1.5, train_kimg=0.08,
           log_every=1)
    g.fit(train, progress=False)
    gammas = [e["gamma"] for e in g.history["losses"]]
    assert gammas == sorted(gammas) and 5.0 < gammas[-1] < 40.0  # rising, never finished
    assert g.schedule("aug", 0.0, 0.08) == 0.0


# --------------------------------------------------------------------------- progressive growing
def test_fade_in_alpha_moves_0_to_1_per_phase():
    levels, phase = 3, 10.0
    assert growth_state(0.0, levels, phase) == (0, 1.0)
    assert growth_state(9.99, levels, phase) == (0, 1.0)
    for level in (1, 2):
        start = phase * (1 + 2 * (level - 1))
        alphas = [growth_state(start + f * phase, levels, phase) for f in np.linspace(0, 0.999, 11)]
        assert all(lv == level for lv, _ in alphas)
        a = [al for _, al in alphas]
        assert a[0] == pytest.approx(0.0) and a[-1] == pytest.approx(0.999) and a == sorted(a)
        assert growth_state(start + 1.5 * phase, levels, phase) == (level, 1.0)  # stabilisation
    assert growth_state(1e6, levels, phase) == (2, 1.0)


def test_fade_in_blends_the_upsampled_lower_level_into_the_new_one():
    train = toy(2, seed=0)
    g = pro(train)
    z, y = torch.randn(3, 8), torch.tensor([0, 1, 2])
    with torch.no_grad():
        low = F.interpolate(g.G(z, y, 0, 1.0), scale_factor=2, mode="nearest")
        high = g.G(z, y, 1, 1.0)
        torch.testing.assert_close(g.G(z, y, 1, 0.0), low)
        torch.testing.assert_close(g.G(z, y, 1, 0.25), 0.75 * low + 0.25 * high)
        # the critic fades the same way at the lower resolution
        x = torch.randn(3, 1, 8, 8)
        torch.testing.assert_close(g.D(x, y, 1, 0.0), g.D(F.avg_pool2d(x, 2), y, 0, 1.0))


def test_progan_growth_is_recorded_while_training():
    train = toy(4, seed=0)
    g = pro(train, train_kimg=0.064, phase_kimg=0.016, log_every=1)
    g.fit(train, progress=False)
    levels = [e["level"] for e in g.history["losses"]]
    alphas = [e["alpha"] for e in g.history["losses"] if e["level"] == 1]
    assert levels[0] == 0 and levels[-1] == 1 and alphas[0] < 1 and alphas[-1] == 1
    assert g.describe()["growth"]["to_px"] == 8


# --------------------------------------------------------------------------- augmentation
def test_augmentation_is_identity_at_p0_reproducible_and_differentiable():
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    assert torch.equal(augment(x, 0.0, torch.Generator().manual_seed(0)), x)
    a = augment(x, 1.0, torch.Generator().manual_seed(1))
    b = augment(x, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    xg = x.clone().requires_grad_(True)
    augment(xg, 1.0, torch.Generator().manual_seed(2)).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    # the random stream does not depend on p: what follows is the same
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    augment(x, 0.0, g1), augment(x, 0.7, g2)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_translation_moves_pixels_and_fills_with_zero():
    x = torch.zeros(1, 1, 5, 5)
    x[0, 0, 2, 2] = 1.0
    out = translate(x, torch.tensor([[1, -2]]))
    assert out[0, 0, 3, 0] == 1.0 and out.sum() == 1.0
    assert translate(x, torch.tensor([[3, 0]])).sum() == 0.0  # moved out of the image


# --------------------------------------------------------------------------- config, sampling, budget
def test_gan_configs_check_their_sizes():
    with pytest.raises(ConfigError, match="generator.widths"):
        load_config(overrides={"data": {"image_size": 28}, "generator": {"kind": "r3gan", "widths": [8, 8, 8, 8]}})
    with pytest.raises(ConfigError, match="cardinality"):
        load_config(overrides={"generator": {"kind": "r3gan", "widths": [24, 24], "cardinality": 5}})
    with pytest.raises(ConfigError, match="ends before growing is done"):
        load_config(overrides={"generator": {"kind": "progan", "phase_kimg": 10, "train_kimg": 20}})
    with pytest.raises(ConfigError, match="unknown config key 'generator.guidance'"):
        load_config(overrides={"generator": {"kind": "progan", "guidance": 2.0}})
    cfg = load_config(preset="demo", overrides={"generator": {"kind": "r3gan"}})  # the demo's diffusion keys drop
    assert isinstance(cfg.generator, R3GANConfig)


def test_gan_presets_carry_the_papers_settings():
    small = load_config(preset="r3gan-small")
    g = small.generator
    assert (g.burn_in, g.gamma_start, g.gamma_end, g.aug_start, g.aug_end, g.train_kimg) == (1.5, 5, 40, 0, 0.6, 750)
    assert small.data.image_size == 256
    ffhq = load_config(preset="r3gan-ffhq256").generator
    assert (ffhq.burn_in, ffhq.gamma_start, ffhq.gamma_end) == (0.2, 150, 15)
    p = load_config(preset="blastdiffusion-progan").generator
    assert (p.gp_lambda, p.drift, p.adam_beta1, p.adam_beta2) == (10, 1e-3, 0, 0.99)
    assert load_config(preset="r3gan28").data.image_size == 28 and load_config(preset="progan28").generator.widths


def test_gan_sampling_refuses_guidance_and_states_truncation():
    train = toy(4, seed=0)
    g = r3(train, train_kimg=0.016)
    g.fit(train, progress=False)
    with pytest.raises(GeneratorError, match="guidance"):
        g.sample([1, 1, 1], guidance=2.0, progress=False)
    d = g.describe()
    assert d["sampling"]["guidance"] is None and "off" in d["truncation"]
    syn = g.sample([2, 2, 2], seed=0, progress=False)
    assert syn.meta["images_per_second"] > 0 and syn.meta["sampler"] == "single pass"


def test_best_snapshot_by_fd_samples(tmp_path):
    train = toy(6, seed=0)
    g = r3(train, train_kimg=0.08, fd_every_kimg=0.02, fd_samples=12)
    g.fit(train, toy(4, seed=1), progress=False)
    curve = g.history["fd_curve"]
    assert len(curve) >= 4 and curve == sorted(curve, key=lambda p: p[0])
    best = min(curve, key=lambda p: p[1])
    assert g.best["fd"] == best[1] and g.history["fd_reference"]["split"] == "val"
    net, _ = g._sampling_net()
    for k, v in net.state_dict().items():
        assert torch.equal(v, g.best["state"][k])
    g.save(tmp_path / "g")
    back = type(g).load(tmp_path / "g")
    np.testing.assert_array_equal(back.sample([2, 2, 2], seed=4, progress=False).images,
                                  g.sample([2, 2, 2], seed=4, progress=False).images)


@pytest.mark.parametrize("make", [r3, pro])
def test_budget_scales_the_training_to_fit_on_a_fake_clock(make, monkeypatch):
    t = [1000.0]
    monkeypatch.setattr(runtime, "clock", lambda: t[0])
    train = toy(6, seed=0)
    g = make(train, train_kimg=2.0, phase_kimg=0.1, budget_minutes=1.0) if make is pro else \
        make(train, train_kimg=2.0, budget_minutes=1.0)
    step = g._train_step

    def timed(*a, **k):
        t[0] += 0.5  # every step takes half a second: 120 fit in the minute
        return step(*a, **k)

    g._train_step = timed
    with pytest.warns(UserWarning, match="budget_minutes"):
        g.fit(train, progress=False)
    b = g.history["budget"]
    assert 0 < b["scale"] < 1 and g.step <= 121
    assert b["seconds_spent"] <= 60.0 + 0.5


def test_progan_budget_plans_with_measured_per_level_step_costs(monkeypatch):
    """Growth makes later steps dearer by a factor that is measured, not assumed (4x per level
    overstated it on a CPU and stopped an 8-minute run after 3): with level-1 steps at twice the
    cost of level-0 steps, the plan uses the minute without running out."""
    t = [1000.0]
    monkeypatch.setattr(runtime, "clock", lambda: t[0])
    train = toy(6, seed=0)
    g = pro(train, train_kimg=4.0, phase_kimg=0.2, budget_minutes=1.0)
    step = g._train_step

    def timed(real, labels, gen, opts, progress, total):
        level, _ = growth_state(progress, g.levels, g._phase_kimg())
        t[0] += 0.25 if level == 0 else 0.5
        return step(real, labels, gen, opts, progress, total)

    g._train_step = timed
    with pytest.warns(UserWarning, match="budget_minutes"):
        g.fit(train, progress=False)
    b = g.history["budget"]
    assert b["level_seconds_per_step"] == pytest.approx([0.25, 0.5])
    assert b["stopped_at_step"] is None, {k: v for k, v in b.items()}  # the plan fitted: no deadline stop
    assert 0.85 * 60 <= b["seconds_spent"] <= 60.0


def test_progan_step_cost_calibration_leaves_training_untouched():
    train = toy(6, seed=0)
    g = pro(train)
    x, y = train.to_tensor()
    opts = g._make_optimizers()
    before = [p.detach().clone() for p in [*g.G.parameters(), *g.D.parameters()]]
    g._calibrate_step_costs(x, y, 8, opts)
    after = [*g.G.parameters(), *g.D.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert all(not o.state for o in opts.values())  # Adam moments restored to none
    assert len(g.history["budget"]["level_seconds_per_step"]) == g.levels


# --------------------------------------------------------------------------- mode-collapse guard
class OneImagePerClass:
    """A planted class-conditional 'GAN' that emits one fixed image per class, whatever the noise."""

    def __init__(self, real):
        self.images = {c: real.images[real.labels == c][0] for c in range(real.num_classes)}
        self.class_names = real.class_names

    def sample(self, counts):
        from synthmed.data.dataset import ImageDataset

        labels = np.repeat(np.arange(len(counts)), counts)
        return ImageDataset(np.stack([self.images[c] for c in labels]), labels, self.class_names, synthetic=True)


def _features(ds):
    return ds.images.reshape(len(ds), -1).astype(np.float64) / 255.0


def test_mode_collapse_guard_catches_one_image_per_class():
    real = toy(20, seed=1)
    syn = OneImagePerClass(toy(20, seed=2)).sample([15, 15, 15])
    res = class_diversity(_features(real), real.labels, _features(syn), syn.labels, real.class_names)
    assert res["collapsed"] == real.class_names
    for e in res["per_class"].values():
        assert e["spread_ratio"] < 1e-4 and e["recall"] < 0.2
    line = diversity_warning(res)
    assert line and "mode collapse" in line and "'bright'" in line
    assert line in run_warnings({"diversity": res})


def test_a_diverse_set_is_not_flagged():
    real = toy(20, seed=1)
    other = toy(20, seed=3, synthetic=True)  # as varied as real data: what a good generator gives
    res = class_diversity(_features(real), real.labels, _features(other), other.labels, real.class_names)
    assert res["collapsed"] == [] and diversity_warning(res) is None
    assert all(0.7 < e["spread_ratio"] < 1.4 and e["recall"] > 0.5 for e in res["per_class"].values())
    assert mean_pairwise_distance(np.zeros((1, 3))) is None


# --------------------------------------------------------------------------- learning
def _nearest_mean_accuracy(real, syn) -> float:
    means = np.stack([_features(real)[real.labels == c].mean(0) for c in range(real.num_classes)])
    f = _features(syn)
    pred = ((f[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)
    return float((pred == syn.labels).mean())


@pytest.mark.parametrize("kind", ["r3gan", "progan"])
def test_each_gan_overfits_a_tiny_set(kind):
    """300 steps on 3 easy classes (bright / dark / stripes, 8x8; ~6-12 s each on one thread): the samples
    are told apart by a nearest-class-mean judge on the real images, as the real images are. No flips:
    a flipped stripe pattern is another image (its phase inverts). ProGAN's stripes need lr 3e-3 here to
    appear within the 150 steps at 8 px (at 4 px the stripes average to grey)."""
    train = toy(16, seed=0)
    if kind == "r3gan":
        g = r3(train, widths=[32, 32], cardinality=8, batch_size=16, train_kimg=4.8, lr_start=2e-3, lr_end=1e-3,
               gamma_start=0.1, gamma_end=0.1, aug_start=0.0, aug_end=0.0, ema_half_life_end_kimg=0.2)
    else:
        g = pro(train, widths=[32, 32], batch_size=16, phase_kimg=0.4, train_kimg=4.8, ema_half_life_kimg=0.2,
                hflip=0.0, lr=3e-3)
    g.fit(train, progress=False)
    assert g.step == 300
    syn = g.sample([20, 20, 20], seed=0, progress=False)
    assert _nearest_mean_accuracy(train, syn) >= 0.9
    bright, dark = (syn.images[syn.labels == c].mean() for c in (0, 1))
    assert bright > 150 and dark < 105
