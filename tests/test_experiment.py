"""downstream.experiment: cells, guards, resume, summary files; one real end-to-end run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

import synthmed.downstream.experiment as experiment
from synthmed.classifiers import train_classifier
from synthmed.config import ClassifierConfig, DownstreamConfig
from synthmed.data.dataset import DataSplits
from synthmed.data.splits import disjoint_subsets
from synthmed.downstream.experiment import format_results_table, run_experiment
from synthmed.downstream.quick import LeakageError
from synthmed.downstream.stats import paired_difference
from synthmed.report.downstream_section import render_downstream_experiment
from toydata import CLASSES, toy

CFG = DownstreamConfig(classifier=ClassifierConfig(lr=3e-3, batch_size=16, epochs=1, patience=1))


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


SPLITS = DataSplits(toy([12, 12, 8], 0), toy(4, 1), toy(6, 2))
REPEATS = [(f"s{j}", sub, j) for j, sub in enumerate(disjoint_subsets(SPLITS.train, k=2, n_per_class=4, seed=0))]


class SyntheticFor:
    """Stub generator: flagged-synthetic images 'trained' on the subset it is given."""

    def __init__(self, fingerprint=None, pool=None):
        self.calls, self.fingerprint, self.pool = [], fingerprint, pool

    def __call__(self, subset, i):
        self.calls.append(i)
        pool = self.pool if self.pool is not None else toy(12, 100 + i, synthetic=True)
        return pool, self.fingerprint or subset.fingerprint()


class FakeClassifier:
    """Right on the first (n_train mod n_test) test images, so protocols get different scores."""

    def __init__(self, n_train):
        self.n_train, self.history = n_train, {"best_epoch": 0}

    def predict_proba(self, ds):
        correct = self.n_train % len(ds)
        pred = np.where(np.arange(len(ds)) < correct, ds.labels, (ds.labels + 1) % 3)
        return np.eye(3)[pred] * 0.8 + 0.2 / 3


@pytest.fixture
def spy(monkeypatch):
    """Replace training by a recorder: what was trained, on what, from what."""
    calls = []

    def fake_train(train, val, cfg, *, seed, device, augment, init_from):
        assert val is SPLITS.val  # every stage early-stops on the real validation split
        calls.append({"n": len(train), "synthetic": train.synthetic, "augment": augment, "seed": seed,
                      "init_from": init_from})
        return FakeClassifier(len(train))

    monkeypatch.setattr(experiment, "train_classifier", fake_train)
    return calls


def halve(synthetic, real, mode):  # stub realism filter: keep the first half of each class
    keep = np.concatenate([np.flatnonzero(synthetic.labels == c)[: (synthetic.labels == c).sum() // 2]
                           for c in range(synthetic.num_classes)])
    return synthetic.subset(np.sort(keep)), {"mode": mode, "kept": int(len(keep))}


def run(tmp_path, protocols=("baseline", "traditional", "mix", "transfer"), synthetic_for=None, **kw):
    kw = {"cfg": CFG, "repeats": REPEATS, "out_dir": tmp_path / "exp", "progress": False, **kw}
    return run_experiment(kw.pop("splits", SPLITS), protocols=list(protocols),
                          synthetic_for=synthetic_for or SyntheticFor(), **kw)


# --------------------------------------------------------------------------- cells and summary


def test_cells_summary_and_files(tmp_path, spy):
    res = run(tmp_path, filters=("none", "class"), filter_fn=halve)
    # real-only protocols run once (filter "none"); mix and transfer once per filter
    per_repeat = 2 + 2 * 2
    assert len(res["cells"]) == 2 * per_repeat and len(list((tmp_path / "exp/cells").glob("*.json"))) == 12
    assert len(spy) == 2 * (2 + 2 + 2 * 2)  # transfer trains twice
    transfer = [c for c in res["cells"] if c["protocol"] == "transfer" and c["filter"] == "class"][0]
    assert [s["stage"] for s in transfer["stages"]] == ["pretrain", "finetune"]
    assert transfer["stages"][0]["synthetic"] == {"bright": 4, "dark": 4, "striped": 4}  # pool of 6 per class
    assert transfer["filter_report"] == {"mode": "class", "kept": 18}
    assert [c["augment"] for c in spy if c["n"] == 12 and not c["synthetic"]][:2] == [(), ("flip", "rot90", "jitter")]

    # the summary is exactly the paired statistics of the per-cell numbers
    def acc(p, f="none"):
        return [next(c for c in res["cells"] if (c["repeat"], c["protocol"], c["filter"]) == (r[0], p, f))
                ["metrics"]["accuracy"] for r in REPEATS]

    row = next(r for r in res["summary"] if (r["protocol"], r["filter"], r["metric"]) == ("mix", "none", "accuracy"))
    assert row["mean"] == pytest.approx(np.mean(acc("mix")))
    assert row["vs_baseline"] == pytest.approx(paired_difference(acc("mix"), acc("baseline")))
    assert row["vs_traditional"] == pytest.approx(paired_difference(acc("mix"), acc("traditional")))
    assert "vs_baseline" not in next(r for r in res["summary"] if r["protocol"] == "baseline")

    on_disk = json.loads((tmp_path / "exp/results.json").read_text())
    assert on_disk["n_repeats"] == 2 and on_disk["data"]["test"]["n"] == len(SPLITS.test)
    assert on_disk["classifier"]["epochs"] == 1 and not on_disk["warnings"]
    assert on_disk["repeats"][0]["fingerprint"] == REPEATS[0][1].fingerprint()
    csv_lines = (tmp_path / "exp/results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("protocol,filter,metric,mean,std,n,diff_vs_baseline,ci_low_vs_baseline")
    assert len(csv_lines) == 1 + len(res["summary"])
    table = format_results_table(res["summary"])
    assert "mix / class" in table and "paired difference vs traditional" in table

    html = render_downstream_experiment(res)
    assert html.startswith("<section") and html.endswith("</section>") and html.count("<svg") == 4
    assert "2 repeats" in html and f"n={len(SPLITS.test)}" in html and "smallcnn" in html


def test_every_protocol_including_the_sweep_and_balance(tmp_path, spy):
    imbalanced = [(r, s.subset(np.flatnonzero(s.labels != 2)[:-1].tolist() + np.flatnonzero(s.labels == 2)[:2]
                               .tolist()), seed) for r, s, seed in REPEATS[:1]]  # counts [4, 3, 2]
    res = run(tmp_path, protocols=["balance", "synthetic-only", "ratio-sweep"], repeats=imbalanced)
    comp = res["composition"]
    assert comp["balance / none"]["train"]["synthetic"] == {"bright": 0, "dark": 1, "striped": 2}
    assert comp["synthetic-only / none"]["train"] == {"real": dict.fromkeys(CLASSES, 0),
                                                       "synthetic": {"bright": 4, "dark": 3, "striped": 2},
                                                       "augment": []}
    assert comp["ratio-50:50 / none"]["train"]["real"] == {"bright": 2, "dark": 2, "striped": 1}
    assert comp["ratio-100:100 / none"]["train"]["synthetic"] == {"bright": 4, "dark": 3, "striped": 2}
    assert len(res["cells"]) == 8 and len(spy) == 8
    assert (res["warnings"] and "single repeat" in res["warnings"][0])


# --------------------------------------------------------------------------- guards


def test_guard_generator_trained_on_test(tmp_path, spy):
    with pytest.raises(LeakageError, match="trained on the test split"):
        run(tmp_path, synthetic_for=SyntheticFor(fingerprint=SPLITS.test.fingerprint()))
    assert not spy


def test_guard_generator_of_another_subset_needs_reuse_and_warns(tmp_path, spy):
    shared = SyntheticFor(fingerprint=REPEATS[0][1].fingerprint())  # one generator for all repeats
    with pytest.raises(LeakageError, match="repeat s1: .*reuse_generator=True"):
        run(tmp_path, synthetic_for=shared)
    assert not list((tmp_path / "exp/cells").glob("s1__*"))  # repeat s0 is valid and done; s1 refused
    with pytest.raises(LeakageError, match="neither the training split nor"):
        run(tmp_path, synthetic_for=SyntheticFor(fingerprint="0123456789abcdef"), reuse_generator=True)
    res = run(tmp_path, synthetic_for=shared, reuse_generator=True)
    assert any("reused" in w and "repeat s1" in w for w in res["warnings"])
    assert not any("repeat s0" in w for w in res["warnings"])


def test_one_generator_for_seed_repeats_on_the_whole_split_warns(tmp_path, spy):
    """Repeats over seeds on the full training split with reuse_generator: every repeat's generator
    fingerprint is its own data, yet it is one generator, and the output must say so."""
    seeds = [(f"seed{j}", SPLITS.train, j) for j in range(2)]
    shared = SyntheticFor(fingerprint=SPLITS.train.fingerprint())
    res = run(tmp_path, protocols=("baseline", "mix"), synthetic_for=shared, repeats=seeds, reuse_generator=True)
    assert any("one generator served all 2 repeats" in w for w in res["warnings"])
    fresh = run(tmp_path / "b", protocols=("baseline", "mix"), synthetic_for=shared, repeats=seeds)
    assert not fresh["warnings"]


def test_guard_synthetic_copy_of_a_test_image(tmp_path, spy):
    pool = toy(12, 100, synthetic=True)
    pool.images[5] = SPLITS.test.images[3]
    with pytest.raises(LeakageError, match="pixel-identical to test"):
        run(tmp_path, synthetic_for=SyntheticFor(pool=pool))
    assert not spy


def test_guard_synthetic_flagged_val_or_unflagged_synthetic(tmp_path, spy):
    bad = replace(SPLITS, val=replace(SPLITS.val, synthetic=True))
    with pytest.raises(LeakageError, match="val split is flagged synthetic"):
        run(tmp_path, splits=bad, protocols=["baseline"])
    with pytest.raises(LeakageError, match="not flagged synthetic"):
        run(tmp_path, synthetic_for=SyntheticFor(pool=toy(12, 100)))
    assert not spy


def test_guard_patients_and_images_shared_with_test(tmp_path, spy):
    def with_ids(ds, prefix):
        return replace(ds, patient_ids=np.array([f"{prefix}{i}" for i in range(len(ds))]))

    test = with_ids(SPLITS.test, "t")
    sub = with_ids(REPEATS[0][1], "r")
    sub.patient_ids[0] = "t0"  # one patient in a training subset and in test
    ok_splits = DataSplits(SPLITS.train, with_ids(SPLITS.val, "v"), test)
    with pytest.raises(LeakageError, match="patient"):
        run(tmp_path, splits=ok_splits, repeats=[("s0", sub, 0)], protocols=["baseline"])
    with pytest.raises(LeakageError, match="patient ids"):  # cannot be checked when only some splits have ids
        run(tmp_path, splits=DataSplits(SPLITS.train, SPLITS.val, test), protocols=["baseline"])
    leaky = REPEATS[0][1].subset(range(len(REPEATS[0][1])))
    leaky.images[0] = SPLITS.test.images[0]
    with pytest.raises(LeakageError, match="identical image"):
        run(tmp_path, repeats=[("s0", leaky, 0)], protocols=["baseline"])
    assert not spy


# --------------------------------------------------------------------------- resume


def test_rerun_recomputes_nothing(tmp_path, spy):
    gen = SyntheticFor()
    first = run(tmp_path, synthetic_for=gen)
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "exp/cells").iterdir()}
    n_calls = len(spy)
    again_gen = SyntheticFor()
    again = run(tmp_path, synthetic_for=again_gen)
    assert len(spy) == n_calls and again_gen.calls == []  # no training, no generator
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "exp/cells").iterdir()} == mtimes
    assert again["summary"] == first["summary"]


def test_killed_run_resumes_with_only_the_missing_cells(tmp_path, monkeypatch, spy):
    full = run(tmp_path / "full")
    n_full = len(spy)
    spy.clear()
    recorder = experiment.train_classifier

    def dies_after_4(*a, **k):
        if len(spy) == 4:
            raise KeyboardInterrupt  # the user (or the machine) kills the sweep mid-cell
        return recorder(*a, **k)

    monkeypatch.setattr(experiment, "train_classifier", dies_after_4)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path)
    done = sorted(p.name for p in (tmp_path / "exp/cells").iterdir())
    assert done == ["s0__baseline__none.json", "s0__mix__none.json", "s0__traditional__none.json"]
    monkeypatch.setattr(experiment, "train_classifier", recorder)
    gen = SyntheticFor()
    resumed = run(tmp_path, synthetic_for=gen)
    assert len(spy) == n_full + 1  # the pretrain stage of the killed transfer cell ran twice, nothing else
    assert gen.calls == [0, 1]
    assert [(r["protocol"], r["metric"], r["mean"]) for r in resumed["summary"]] == \
        [(r["protocol"], r["metric"], r["mean"]) for r in full["summary"]]


def test_changed_config_refuses_the_old_out_dir(tmp_path, spy):
    run(tmp_path, protocols=["baseline", "mix"])
    with pytest.raises(ValueError, match="use a new out_dir"):
        run(tmp_path, protocols=["baseline", "mix"], cfg=replace(CFG, synthetic_ratio=0.5))


# --------------------------------------------------------------------------- end to end


def test_real_training_end_to_end(tmp_path, monkeypatch):
    stages = []

    def recording_train(train, val, cfg, **kw):
        stages.append((train.synthetic, kw["init_from"] is not None))
        return train_classifier(train, val, cfg, **kw)

    monkeypatch.setattr(experiment, "train_classifier", recording_train)
    res = run(tmp_path, protocols=["baseline", "transfer"], repeats=REPEATS[:1])
    assert stages == [(False, False), (True, False), (False, True)]  # transfer: synthetic, then fine-tune
    acc = [r for r in res["summary"] if r["metric"] == "accuracy"]
    assert len(acc) == 2 and all(0 <= r["mean"] <= 1 for r in acc)
    assert {"sensitivity[dark]", "specificity[dark]", "f1[dark]"} <= {r["metric"] for r in res["summary"]}


# --------------------------------------------------------------------------- job arrays and local workers


def test_job_array_shards_compute_their_repeats_and_the_last_assembles(tmp_path, spy):
    full = run(tmp_path / "full")
    spy.clear()
    first = run(tmp_path, cfg=replace(CFG, shard="0/2"))
    assert first["partial"] and first["cells_missing"] > 0
    assert sorted({p.name.split("__")[0] for p in (tmp_path / "exp/cells").iterdir()}) == ["s0"]
    second = run(tmp_path, cfg=replace(CFG, shard="1/2"))  # the other task finds every cell: it assembles
    assert not second.get("partial")
    assert [(r["protocol"], r["metric"], r["mean"]) for r in second["summary"]] == \
        [(r["protocol"], r["metric"], r["mean"]) for r in full["summary"]]
    with pytest.raises(ValueError, match="0 <= K < N"):
        run(tmp_path / "bad", cfg=replace(CFG, shard="2/2"))


@pytest.mark.slow  # spawns worker processes that import torch
def test_cells_in_parallel_workers_give_the_serial_numbers(tmp_path):
    serial = run(tmp_path / "serial", protocols=["baseline", "mix"], repeats=REPEATS[:1])
    parallel = run(tmp_path / "parallel", protocols=["baseline", "mix"], repeats=REPEATS[:1],
                   cfg=replace(CFG, workers=2))
    assert [(r["protocol"], r["metric"], r["mean"]) for r in parallel["summary"]] == \
        [(r["protocol"], r["metric"], r["mean"]) for r in serial["summary"]]
