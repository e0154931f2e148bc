"""downstream.protocols: the exact training-set composition of every protocol, counted from the
images themselves (not from the plan's own bookkeeping), and the classifier pieces they use."""

from __future__ import annotations

import hashlib

import pytest
import torch

from synthmed.classifiers import augment_batch, classifier_preset, train_classifier
from synthmed.config import ClassifierConfig
from synthmed.data.dataset import DataError, ImageDataset
from synthmed.downstream.protocols import (PROTOCOLS, RATIO_SWEEP, NotEnoughSyntheticError, ProtocolOptions,
                                           build_plan, expand_protocols, stage_count, uses_synthetic)
from toydata import CLASSES, toy

REAL_COUNTS = [10, 6, 3]


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


REAL = toy(REAL_COUNTS, 0)
SYN = toy([30, 30, 30], 9, synthetic=True)


def counted(ds: ImageDataset) -> tuple[list[int], list[int]]:
    """Per-class (real, synthetic) counts of a training set, by looking every image up."""
    real_h, syn_h = REAL.image_hashes(), SYN.image_hashes()
    real, syn = [0] * 3, [0] * 3
    for img, lab in zip(ds.images, ds.labels):
        h = hashlib.sha1(img.tobytes()).hexdigest()
        assert (h in real_h) != (h in syn_h), "every training image comes from exactly one of the two pools"
        (real if h in real_h else syn)[lab] += 1
    return real, syn


def check(plan, stage: int, real: list[int], syn: list[int], augment=()) -> None:
    data, aug = plan.stages[stage]
    assert counted(data) == (real, syn)
    assert aug == tuple(augment)
    comp = list(plan.composition.values())[stage]
    assert comp == {"real": dict(zip(CLASSES, real)), "synthetic": dict(zip(CLASSES, syn))}


def test_baseline_and_traditional_are_real_only():
    check(build_plan("baseline", REAL, SYN), 0, REAL_COUNTS, [0, 0, 0])
    plan = build_plan("traditional", REAL, SYN)
    check(plan, 0, REAL_COUNTS, [0, 0, 0], augment=("flip", "rot90", "jitter"))
    plan = build_plan("traditional", REAL, None, ProtocolOptions(augmentations=("flip",)))
    assert plan.stages[0][1] == ("flip",)  # the augmentation set is configurable


@pytest.mark.parametrize("ratio, syn", [(1.0, [10, 6, 3]), (0.5, [5, 3, 2]), (2.0, [20, 12, 6])])
def test_mix_adds_ratio_times_real_per_class(ratio, syn):
    # 0.5 x [10, 6, 3] = [5, 3, 1.5]: total 9.5 rounds half up to 10, the remainder goes to the last class
    plan = build_plan("mix", REAL, SYN, ProtocolOptions(synthetic_ratio=ratio))
    assert len(plan.stages) == 1
    check(plan, 0, REAL_COUNTS, syn)


def test_mix_traditional_is_mix_with_the_traditional_augmentation():
    opts = ProtocolOptions(synthetic_ratio=1.0, augmentations=("flip", "jitter"))
    plan = build_plan("mix-traditional", REAL, SYN, opts)
    check(plan, 0, REAL_COUNTS, [10, 6, 3], augment=("flip", "jitter"))
    assert build_plan("mix", REAL, SYN, opts).stages[0][1] == ()


def test_synthetic_only_matches_the_real_class_counts():
    check(build_plan("synthetic-only", REAL, SYN), 0, [0, 0, 0], REAL_COUNTS)


def test_transfer_is_synthetic_then_real():
    plan = build_plan("transfer", REAL, SYN)
    assert list(plan.composition) == ["pretrain", "finetune"]
    check(plan, 0, [0, 0, 0], REAL_COUNTS)
    check(plan, 1, REAL_COUNTS, [0, 0, 0])


def test_every_protocol_that_draws_the_ratio_is_sized_for_in_the_pool():
    """The experiment's synthetic pool must hold what each protocol draws (a protocol missing from
    RATIO_SCALED got an empty pool)."""
    from synthmed.config import load_config
    from synthmed.pipeline import synthetic_pool_sizes

    for name in PROTOCOLS:
        if name in ("baseline", "traditional", "balance"):
            continue
        cfg = load_config(overrides={"downstream": {"protocols": [name], "synthetic_ratio": 2.0}})
        assert synthetic_pool_sizes(cfg, REAL) == [2 * n for n in REAL_COUNTS], name


@pytest.mark.parametrize("name", [*PROTOCOLS, "ratio-50:50"])
def test_stage_count_is_the_number_of_stages_the_plan_trains(name):
    """stage_count sets the equal-compute budget of the real-only bar in generator_quality.py: a protocol
    whose plan grows a stage without stage_count knowing would be compared at half its steps."""
    assert stage_count(name) == len(build_plan(name, REAL, SYN).stages)


def test_transfer_traditional_augments_both_stages():
    plan = build_plan("transfer-traditional", REAL, SYN)
    assert list(plan.composition) == ["pretrain", "finetune"]
    check(plan, 0, [0, 0, 0], REAL_COUNTS, augment=("flip", "rot90", "jitter"))
    check(plan, 1, REAL_COUNTS, [0, 0, 0], augment=("flip", "rot90", "jitter"))
    assert build_plan("transfer", REAL, SYN).stages[1][1] == ()


def test_balance_tops_minorities_up_to_the_majority():
    plan = build_plan("balance", REAL, SYN)
    check(plan, 0, REAL_COUNTS, [0, 4, 7])
    assert plan.stages[0][0].class_counts() == [10, 10, 10]


# hand-worked largest-remainder rounding for real counts [10, 6, 3] (total 19):
# 75%: [7.5, 4.5, 2.25] -> total 14, floors [7, 4, 2], the first .5 remainder gets the 14th -> [8, 4, 2]
# 50%: [5, 3, 1.5] -> total 10 (half up), the last class gets it -> [5, 3, 2]
# 25%: [2.5, 1.5, .75] -> total 5, floors [2, 1, 0], remainders .75 then .5 -> [3, 1, 1]
RATIO_EXPECTED = {
    "ratio-100:0": ([10, 6, 3], [0, 0, 0]),
    "ratio-75:25": ([8, 4, 2], [2, 2, 1]),
    "ratio-50:50": ([5, 3, 2], [5, 3, 1]),
    "ratio-25:75": ([3, 1, 1], [7, 5, 2]),
    "ratio-0:100": ([0, 0, 0], [10, 6, 3]),
    "ratio-100:100": ([10, 6, 3], [10, 6, 3]),
}


@pytest.mark.parametrize("name", RATIO_SWEEP)
def test_ratio_sweep_composition(name):
    real, syn = RATIO_EXPECTED[name]
    check(build_plan(name, REAL, SYN), 0, real, syn)
    if name != "ratio-100:100":  # fixed total: every class keeps its real size
        assert [r + s for r, s in zip(real, syn)] == REAL_COUNTS


def test_expand_and_validate_names():
    assert expand_protocols(["baseline", "ratio-sweep", "ratio-50:50"]) == ["baseline", *RATIO_SWEEP]
    assert set(PROTOCOLS) == {"baseline", "traditional", "mix", "mix-traditional", "transfer", "transfer-traditional",
                              "synthetic-only", "balance"}
    for bad in ("ratio-60:60", "ratio-50:40", "mixx"):
        with pytest.raises(ValueError, match="unknown protocol"):
            expand_protocols([bad])
    assert [uses_synthetic(n) for n in ("baseline", "traditional", "ratio-100:0", "ratio-0:100", "mix")] == \
        [False, False, False, True, True]


def test_draws_are_seeded():
    def syn_hashes(seed):
        return build_plan("mix", REAL, SYN, ProtocolOptions(seed=seed)).stages[0][0].image_hashes()

    assert syn_hashes(0) == syn_hashes(0)
    assert syn_hashes(0) != syn_hashes(1)


def test_not_enough_synthetic_says_how_many_to_generate():
    few = toy([20, 20, 2], 5, synthetic=True)
    with pytest.raises(NotEnoughSyntheticError, match=r"'striped': needs 3, has 2.*generate at least 3"):
        build_plan("mix", REAL, few)
    with pytest.raises(NotEnoughSyntheticError, match="'dark': needs 4, has 2"):
        build_plan("balance", REAL, toy([0, 2, 9], 6, synthetic=True))


def test_refuses_missing_or_unflagged_synthetic_and_synthetic_real():
    with pytest.raises(DataError, match="needs synthetic images"):
        build_plan("mix", REAL, None)
    with pytest.raises(DataError, match="not flagged synthetic"):
        build_plan("mix", REAL, toy([30] * 3, 7))
    with pytest.raises(DataError, match="flagged synthetic"):
        build_plan("baseline", SYN, None)


# --------------------------------------------------------------------------- classifier pieces


FAST = ClassifierConfig(lr=3e-3, batch_size=16, epochs=2, patience=2)


def test_presets():
    med = classifier_preset("medmnist")
    assert (med.optimizer, med.lr, med.batch_size, med.lr_milestones) == ("adam", 1e-3, 128, [0.5, 0.75])
    pcam = classifier_preset("pcam-ddpm", epochs=3)
    assert (pcam.optimizer, pcam.lr, pcam.batch_size, pcam.epochs) == ("sgd", 1e-4, 32, 3)
    with pytest.raises(ValueError, match="unknown classifier preset"):
        classifier_preset("nope")


def test_lr_milestones_step_at_fractions(monkeypatch):
    seen = []
    real_step = torch.optim.Adam.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    cfg = ClassifierConfig(lr=1e-2, batch_size=64, epochs=4, patience=9, lr_milestones=[0.5, 0.75])
    train_classifier(REAL, toy([2, 2, 2], 1), cfg)
    # one batch per epoch; x 0.1 after epoch 2 (of 4) and after epoch 3
    assert seen == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])


def test_jitter_keeps_range_and_geometry():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 4, 4) * 2 - 1
    y = augment_batch(x, gen, ("jitter",), jitter=0.3)
    assert y.min() >= -1 and y.max() <= 1 and not torch.equal(x, y)
    flat = augment_batch(torch.full((4, 1, 4, 4), 0.2), gen, ("jitter",), jitter=0.3)
    assert torch.allclose(flat, flat[:, :, :1, :1].expand_as(flat))  # a uniform image stays uniform
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(x, gen, ("shear",))


def test_init_from_starts_from_the_given_weights():
    val = toy([2, 2, 2], 1)
    first = train_classifier(SYN, val, FAST, seed=0)
    before = {k: v.clone() for k, v in first.model.state_dict().items()}
    cfg_zero_lr = ClassifierConfig(lr=0.0, batch_size=16, epochs=1, patience=1, weight_decay=0.0)
    tuned = train_classifier(REAL, val, cfg_zero_lr, seed=1, init_from=first)
    conv = "body.0.weight"
    assert torch.equal(tuned.model.state_dict()[conv], before[conv])  # lr 0: exactly the source weights
    assert torch.equal(first.model.state_dict()[conv], before[conv])  # and the source is left untouched
    assert tuned.meta["init_from"] == SYN.fingerprint()
