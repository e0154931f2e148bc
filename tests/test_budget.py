"""Training budget in minutes and honest time estimates, on a fake clock (no test depends on the
machine's speed): the budget sets the steps from the measured speed and resume keeps them; a long
run warns at once with its estimate and how to shorten it, a short one stays silent."""

from __future__ import annotations

import warnings

import pytest
import torch
from toydata import toy

from synthmed import runtime
from synthmed.config import AutoencoderConfig, ClassifierConfig, DiffusionConfig
from synthmed.generators.autoencoder import LatentAutoencoder
from synthmed.generators.registry import build_generator


class FakeClock:
    """Time passes only when a faked step says so."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(runtime, "clock", fake)
    return fake


def steps_take(gen, clock: FakeClock, seconds, stop_after: int | None = None, first: float | None = None):
    """Every training step of ``gen`` takes ``seconds`` on the fake clock (a number, or a function of
    the step's number from 1; the first step ``first`` when given: one-time costs); with
    ``stop_after`` the run is killed (KeyboardInterrupt) in the step after that many."""
    loss = gen.formulation.loss
    calls = [0]

    def timed(*args, **kwargs):
        calls[0] += 1
        if stop_after is not None and calls[0] > stop_after:
            raise KeyboardInterrupt
        clock.t += first if first is not None and calls[0] == 1 else (
            seconds(calls[0]) if callable(seconds) else seconds)
        return loss(*args, **kwargs)

    gen.formulation.loss = timed


def tiny(train, **kw):
    base = dict(block_out_channels=[16, 16], layers_per_block=1, lr=2e-3, warmup_steps=100, batch_size=8,
                train_steps=200, log_every=5, sample_steps=2, checkpoint_every=0)
    return build_generator(DiffusionConfig(**{**base, **kw}), image_size=train.image_size, channels=train.channels,
                           class_names=train.class_names)


def record():
    caught = warnings.catch_warnings(record=True)
    out = caught.__enter__()
    warnings.simplefilter("always")
    return caught, out


def test_step_timer_leaves_out_warmup_and_estimates_a_slow_step_at_once(clock):
    timer = runtime.StepTimer(warmup=2, timed_steps=5, min_seconds=10)
    for dt in (3.0, 3.0):  # warm-up: not measured
        clock.t += dt
        assert not timer.tick()
    done = []
    for dt in (1.0, 1.0, 1.0, 1.0, 1.0, 1.0):
        clock.t += dt
        done.append(timer.tick())
    assert done == [False, False, False, False, True, False]
    assert timer.seconds_per_step == 1.0 and timer.measured_over == 5 and timer.elapsed == 12.0
    slow = runtime.StepTimer(warmup=2, timed_steps=5, min_seconds=10)
    clock.t += 180.0  # one 3-minute step is measurement enough: no need to wait for more
    assert slow.tick() and slow.seconds_per_step == 180.0 and slow.measured_over == 1
    exact = runtime.StepTimer(warmup=2, timed_steps=5, min_seconds=10, exact=True)  # for a budget: never
    clock.t += 180.0
    assert not exact.tick() and exact.seconds_per_step is None


def test_format_duration_reads_like_a_person_would_say_it():
    assert [runtime.format_duration(s) for s in (45, 14 * 60, 2 * 3600 + 10 * 60, 3 * 86400 + 4 * 3600)] == \
        ["45 s", "14 min", "2 h 10 min", "3 d 4 h"]


def test_budget_sets_the_steps_from_the_measured_speed_and_stops_there(clock):
    train = toy(6, seed=0)
    gen = tiny(train, budget_minutes=1.0)
    steps_take(gen, clock, 2.0)
    caught, seen = record()
    try:
        hist = gen.fit(train, progress=False)
    finally:
        caught.__exit__(None, None, None)
    b = hist["budget"]
    assert b["seconds_per_step"] == pytest.approx(2.0) and b["measured_over_steps"] >= 5
    # 60 s at 2 s/step: every step that fits, and no more (the measured steps count against the budget)
    assert 29 <= b["chosen_steps"] <= 30 and gen.step == b["chosen_steps"] == hist["train_steps"]
    assert b["train_steps_cap"] == 200
    assert any(f"{b['chosen_steps']} of the 200 generator steps fit" in str(w.message) for w in seen)
    # the warm-up follows the chosen steps: the run ends at the full learning rate, not a third of it
    assert b["warmup_steps"] <= b["chosen_steps"] // 10
    assert gen._sched_state["_last_lr"][0] == pytest.approx(2e-3)


def test_a_slow_first_step_does_not_cut_a_budgeted_run_short(clock):
    train = toy(6, seed=0)
    gen = tiny(train, budget_minutes=1.0)
    steps_take(gen, clock, 2.0, first=20.0)  # one-time costs in the first step
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = gen.fit(train, progress=False)
    # measured on the later steps (2 s each): (60 - 20 - 2) s left after the first step -> about 20 steps
    assert hist["budget"]["seconds_per_step"] == pytest.approx(2.0)
    assert 19 <= gen.step == hist["budget"]["chosen_steps"] <= 21


def test_a_run_that_slows_down_stops_at_the_budget_and_stays_stopped_on_resume(clock, tmp_path):
    train = toy(6, seed=0)
    gen = tiny(train, budget_minutes=1.0, checkpoint_every=5)
    steps_take(gen, clock, lambda i: 2.0 if i <= 10 else 10.0)  # the machine gets 5x slower after step 10
    start = clock.t
    caught, seen = record()
    try:
        hist = gen.fit(train, checkpoint_dir=tmp_path, progress=False)
    finally:
        caught.__exit__(None, None, None)
    b = hist["budget"]
    assert gen.step == b["stopped_at_step"] < b["chosen_steps"]  # planned ~30 at 2 s/step, stopped sooner
    assert 60 <= clock.t - start < 60 + 10 and b["seconds_spent"] == pytest.approx(clock.t - start)
    assert sum(f"the time is up at step {gen.step}" in str(w.message) for w in seen) == 1
    resumed = tiny(train, budget_minutes=1.0, checkpoint_every=5)
    steps_take(resumed, clock, 0.1)
    caught, seen = record()
    try:
        resumed.fit(train, checkpoint_dir=tmp_path, progress=False)
    finally:
        caught.__exit__(None, None, None)
    assert resumed.step == gen.step and not [w for w in seen if "budget" in str(w.message)]


def test_a_budget_larger_than_needed_trains_train_steps_and_says_nothing(clock):
    train = toy(6, seed=0)
    gen = tiny(train, budget_minutes=10.0, train_steps=30)
    steps_take(gen, clock, 1.0)
    caught, seen = record()
    try:
        hist = gen.fit(train, progress=False)
    finally:
        caught.__exit__(None, None, None)
    assert gen.step == 30 and hist["budget"]["chosen_steps"] == 30
    assert not [w for w in seen if "budget" in str(w.message) or "will take" in str(w.message)]


def test_resume_keeps_the_total_the_budget_chose(clock, tmp_path):
    train = toy(6, seed=0)
    straight = tiny(train, budget_minutes=1.0)
    steps_take(straight, clock, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        straight.fit(train, progress=False)
        chosen = straight.history["budget"]["chosen_steps"]

        killed = tiny(train, budget_minutes=1.0, checkpoint_every=10)
        steps_take(killed, clock, 2.0, stop_after=chosen - 5)
        with pytest.raises(KeyboardInterrupt):
            killed.fit(train, checkpoint_dir=tmp_path, progress=False)
        # resumed on a machine ten times faster: re-deciding would train all 200 steps
        resumed = tiny(train, budget_minutes=1.0, checkpoint_every=10)
        steps_take(resumed, clock, 0.2)
        resumed.fit(train, checkpoint_dir=tmp_path, progress=False)
    assert resumed.step == chosen and resumed.history["budget"]["chosen_steps"] == chosen
    for p, q in zip(straight.ema.parameters(), resumed.ema.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_a_long_run_warns_at_once_with_estimate_and_how_to_shorten_it(clock):
    train = toy(6, seed=0)
    slow = tiny(train, train_steps=40)
    steps_take(slow, clock, 30.0, stop_after=2)  # 40 x 30 s = 20 min > 15 min; killed after 2 steps
    caught, seen = record()
    try:
        with pytest.raises(KeyboardInterrupt):
            slow.fit(train, progress=False)
    finally:
        caught.__exit__(None, None, None)
    msgs = [str(w.message) for w in seen if "will take" in str(w.message)]
    assert len(msgs) == 1
    assert msgs[0].startswith("generator training will take about 20 min on cpu (30 s/step x 40 steps); to shorten:")
    assert "generator.train_steps=30" in msgs[0] and "generator.budget_minutes=" in msgs[0]
    assert msgs[0].endswith("or --device cuda")
    assert slow.history["estimate"]["measured_over_steps"] == 1  # said after the first step, not after many

    quick = tiny(train, train_steps=40)
    steps_take(quick, clock, 20.0, stop_after=2)  # 40 x 20 s = 13 min: below the threshold
    caught, seen = record()
    try:
        with pytest.raises(KeyboardInterrupt):
            quick.fit(train, progress=False)
    finally:
        caught.__exit__(None, None, None)
    assert quick.history["estimate"]["estimated_seconds"] == pytest.approx(800.0)
    assert not [w for w in seen if "will take" in str(w.message)]


def _timed_autoencoder(clock, seconds, stop_after=None, **kw):
    cfg = AutoencoderConfig(block_out_channels=[8, 8], latent_channels=2, batch_size=8, **kw)
    ae = LatentAutoencoder(cfg, image_size=8, channels=1)
    encode, calls = ae.vae.encode, [0]

    def timed(x, *a, **k):
        if ae.vae.training:  # training steps only, not the encoding after training
            calls[0] += 1
            if stop_after is not None and calls[0] > stop_after:
                raise KeyboardInterrupt
            clock.t += seconds
        return encode(x, *a, **k)

    ae.vae.encode = timed
    return ae


def test_autoencoder_warns_when_long_and_keeps_to_its_budget(clock):
    x = toy(6, seed=0).to_tensor()[0]
    ae = _timed_autoencoder(clock, 100.0, stop_after=2, train_steps=12)  # 12 x 100 s = 20 min
    caught, seen = record()
    try:
        with pytest.raises(KeyboardInterrupt):
            ae.fit(x, progress=False)
    finally:
        caught.__exit__(None, None, None)
    msgs = [str(w.message) for w in seen if "will take" in str(w.message)]
    assert len(msgs) == 1 and msgs[0].startswith("autoencoder training will take about 20 min on cpu")
    assert "generator.autoencoder.train_steps=9" in msgs[0]

    budgeted = _timed_autoencoder(clock, 2.0, train_steps=40)
    budgeted.time_budget_seconds = 20.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = budgeted.fit(x, progress=False)
    assert 9 <= hist["budget"]["chosen_steps"] <= 10 and hist["budget"]["budget_seconds"] == 20
    assert hist["train_steps"] == hist["budget"]["chosen_steps"] == hist["loss_curve"][-1][0]


def test_latent_budget_covers_autoencoder_and_denoiser(clock):
    train = toy(6, seed=0)
    ae = AutoencoderConfig(block_out_channels=[8, 8], latent_channels=2, batch_size=8, train_steps=100,
                           cache=False)  # a cache hit would cost no time and leave the denoiser the whole budget
    gen = tiny(train, space="latent", block_out_channels=[16, 16], budget_minutes=1.0, autoencoder=ae)
    encode = gen.autoencoder.vae.encode

    def timed(x, *a, **k):
        if gen.autoencoder.vae.training:
            clock.t += 2.0
        return encode(x, *a, **k)

    gen.autoencoder.vae.encode = timed
    steps_take(gen, clock, 2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hist = gen.fit(train, progress=False)
    ae_steps = hist["autoencoder"]["budget"]["chosen_steps"]
    assert ae_steps <= 10  # at most a third of 60 s at 2 s/step
    assert ae_steps + hist["budget"]["chosen_steps"] <= 30 and gen.step == hist["budget"]["chosen_steps"] > 10


def test_classifier_training_warns_once_when_long(clock, monkeypatch):
    from synthmed import classifiers

    train, val = toy(8, seed=0), toy(4, seed=1)
    forward = classifiers.SmallCNN.forward

    def timed(self, x):
        if self.training:
            clock.t += 60.0
        return forward(self, x)

    monkeypatch.setattr(classifiers.SmallCNN, "forward", timed)
    monkeypatch.setattr(runtime, "_warned_once", set())
    cfg = ClassifierConfig(widths=[8], epochs=30, patience=1, batch_size=8)
    caught, seen = record()
    try:
        classifiers.train_classifier(train, val, cfg, seed=0)
        classifiers.train_classifier(train, val, cfg, seed=1)  # same setting: not said twice
    finally:
        caught.__exit__(None, None, None)
    msgs = [str(w.message) for w in seen if "will take" in str(w.message)]
    assert len(msgs) == 1 and msgs[0].startswith("classifier training (smallcnn, 24 images; early stopping")
    assert "(60 s/step x 90 steps)" in msgs[0] and "evaluate.judge.epochs=" in msgs[0]
