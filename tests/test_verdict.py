"""report.verdict: the verdict the report leads with and the warnings read off a run's numbers,
on constructed metrics.json / data.json dicts (no HTML, no training)."""

from __future__ import annotations

import numpy as np
import pytest

from synthmed.pipeline import report_view
from synthmed.report.html import render_report
from synthmed.report.verdict import classify_difference, loss_still_falling, run_verdict, run_warnings

CLASSES = ("2-cell", "3-cell", "4-cell")


def _diff(values):
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else None,
            "values": [float(x) for x in v]}


def metrics(diff_values=(0.04, 0.05, 0.03, 0.045, 0.035), ca=(0.9, 0.7, 0.85), flagged=(0, 0, 0),
            train=(280, 98, 281), acceptance=None, with_ci=False) -> dict:
    """A metrics.json as pipeline.run writes it, with the parts the verdict reads."""
    seeds = list(range(len(diff_values)))
    d = _diff(diff_values)
    if with_ci:  # as quick.real_vs_augmented stores it; without, the verdict derives it from the values
        d.update(ci_low=0.001, ci_high=0.002)
    recall_real = [0.6] * len(seeds)
    recall_aug = [0.6 + x for x in diff_values]
    per_class = {c: {"support": 40, "recall": {"real": {"mean": 0.6}, "augmented": {"mean": float(np.mean(recall_aug))},
                                               "difference": _diff(np.subtract(recall_aug, recall_real))}}
                 for c in CLASSES}
    m = {
        "conditional_accuracy": {
            "accuracy": {"accuracy": float(np.mean(ca))}, "chance": 1 / 3,
            "per_class": {c: {"accuracy": a, "n": 100, "real_accuracy": 0.9} for c, a in zip(CLASSES, ca)},
            "real_test": {"accuracy": 0.9},
            "judge": {"arch": "smallcnn", "trained_on_fingerprint": "abc", "n_train": 659}},
        "memorisation": {"overall": {"n": 300, "n_flagged": sum(flagged)},
                         "per_class": {c: {"n": 100, "n_flagged": f} for c, f in zip(CLASSES, flagged)},
                         "spaces": {"pixel": {"baseline_fraction": 0.01}}},
        "downstream": {
            "seeds": seeds, "n_test": 188, "difference": {"balanced_accuracy": d, "accuracy": _diff(diff_values)},
            "per_class": per_class,
            "composition": {"real": {"real": dict(zip(CLASSES, train))}, "augmented": {"real": dict(zip(CLASSES, train))}},
            "summary": {"real": {}, "augmented": {}}, "classifier": {"arch": "smallcnn"}, "std": "sample std",
        },
        "generator": {"train_steps": 1300, "loss_curve": flat_curve()},
        "warnings": [],
    }
    if acceptance is not None:
        m["selection"] = {"mode": "class", "threshold": 1.0,
                          "real_val_acceptance": {"acceptance_rate": float(np.mean(acceptance)),
                                                  "per_class": dict(zip(CLASSES, acceptance))}}
    return m


def data(train=(280, 98, 281), test=(80, 40, 80)) -> dict:
    return {s: {"classes": dict(zip(CLASSES, counts)), "num_images": sum(counts)}
            for s, counts in (("train", train), ("val", (40, 14, 40)), ("test", test))}


def flat_curve(seed=0, n=52, noise=0.1):
    rng = np.random.default_rng(seed)
    return [[25 * (i + 1), float(0.05 * np.exp(rng.normal(0, noise)))] for i in range(n)]


def falling_curve(seed=0, n=52, noise=0.05, tau=800):
    rng = np.random.default_rng(seed)
    steps = 25 * (np.arange(n) + 1)
    return [[int(s), float((0.03 + 0.1 * np.exp(-s / tau)) * np.exp(rng.normal(0, noise)))] for s in steps]


# ------------------------------------------------------------------ downstream: helps / hurts / inconclusive
def test_classify_difference_reads_the_interval():
    assert classify_difference(0.02, 0.005, 0.035) == "helps"
    assert classify_difference(-0.02, -0.035, -0.005) == "hurts"
    assert classify_difference(0.02, -0.01, 0.05) == "inconclusive"
    assert classify_difference(0.05, None, None) == "inconclusive"  # a single seed has no interval


def test_verdict_helps_with_its_numbers():
    v = run_verdict(metrics(), data())["downstream"]
    assert v["status"] == "helps" and v["metric"] == "balanced_accuracy"
    assert v["n_seeds"] == 5 and v["n_test"] == 188
    # the 95% t interval over the 5 paired differences, derived from the per-seed values
    t = 2.7764451051977987  # t_{0.975, 4}
    sd = np.std([0.04, 0.05, 0.03, 0.045, 0.035], ddof=1)
    assert v["ci_low"] == pytest.approx(0.04 - t * sd / np.sqrt(5))
    assert v["ci_high"] == pytest.approx(0.04 + t * sd / np.sqrt(5))
    assert v["ci_low"] > 0
    for bit in ("+0.040", "95% CI", "5 seeds", "n=188", "balanced accuracy", "above 0"):
        assert bit in v["text"], bit


def test_verdict_uses_the_stored_interval_when_there_is_one():
    v = run_verdict(metrics(with_ci=True), data())["downstream"]
    assert (v["ci_low"], v["ci_high"]) == (0.001, 0.002)


def test_verdict_hurts_and_inconclusive():
    hurts = run_verdict(metrics(diff_values=(-0.04, -0.05, -0.03, -0.045, -0.035)), data())["downstream"]
    assert hurts["status"] == "hurts" and hurts["ci_high"] < 0 and "below 0" in hurts["text"]
    # the demo's sign flipped between reruns: -0.041 and +0.056 are both inside one wide interval
    flip = run_verdict(metrics(diff_values=(-0.041, 0.056, 0.01, -0.02, 0.03)), data())["downstream"]
    assert flip["status"] == "inconclusive" and flip["ci_low"] < 0 < flip["ci_high"]
    assert "spans 0" in flip["text"]
    single = run_verdict(metrics(diff_values=(0.1,)), data())["downstream"]
    assert single["status"] == "inconclusive" and single["ci_low"] is None and "single seed" in single["text"]


def test_verdict_reports_the_minority_class_recall():
    v = run_verdict(metrics(), data())["downstream"]
    assert v["minority"]["class"] == "3-cell" and v["minority"]["n_train"] == 98
    assert "Recall of the smallest training class '3-cell' (98 images): 0.600 → 0.640" in v["text"]
    balanced = run_verdict(metrics(train=(100, 100, 100)), data())["downstream"]
    assert "minority" not in balanced


# ------------------------------------------------------------------ the other questions
def test_recognisable_overall_and_worst_class():
    r = run_verdict(metrics(ca=(0.9, 0.7, 0.85)), data())["recognisable"]
    assert r["status"] == "recognisable" and r["worst_class"] == "3-cell" and r["worst_accuracy"] == 0.7
    assert "0.817" in r["text"] and "'3-cell': 0.700" in r["text"]
    low = run_verdict(metrics(ca=(0.9, 1 / 3, 0.2)), data())["recognisable"]
    assert low["status"] == "at or below chance" and low["worst_class"] == "4-cell"
    assert low["at_or_below_chance"] == ["3-cell", "4-cell"]  # exactly at chance counts
    assert "AT OR BELOW CHANCE" in low["text"]


def test_near_copies():
    none = run_verdict(metrics(), data())["near_copies"]
    assert none["status"] == "none found" and "None of 300" in none["text"]
    found = run_verdict(metrics(flagged=(0, 4, 1)), data())["near_copies"]
    assert found["status"] == "found" and found["n_flagged"] == 5 and found["per_class"] == {"3-cell": 4, "4-cell": 1}
    assert "5 of 300" in found["text"] and "'3-cell' 4" in found["text"]


def test_too_small_to_judge():
    ok = run_verdict(metrics(), data())["too_small"]
    assert ok["items"] == [] and ok["status"] == "ok"
    small = run_verdict(metrics(diff_values=(0.01, 0.02, 0.0)), data(train=(280, 30, 281), test=(80, 12, 80)))
    items = small["too_small"]["items"]
    assert any("training images" in i and "'3-cell' (30)" in i for i in items)
    assert any("test images" in i and "'3-cell' (12)" in i and "0.08" in i for i in items)  # 1/12 per image
    assert any("3 downstream seeds" in i for i in items)
    assert not any("'2-cell'" in i for i in items)


def test_verdict_of_an_empty_run_says_what_did_not_run():
    v = run_verdict({}, {})
    assert {v[k]["status"] for k in ("downstream", "recognisable", "near_copies")} == {"not run"}


# ------------------------------------------------------------------ warnings
def test_warning_for_a_class_at_or_below_chance():
    w = run_warnings(metrics(ca=(0.9, 0.3, 0.85)), data())
    assert len([x for x in w if "at or below chance" in x]) == 1 and "class '3-cell'" in w[0]
    assert not any("chance" in x for x in run_warnings(metrics(), data()))


def test_undertrained_curve_warns_and_flat_curve_does_not():
    m = metrics()
    m["generator"]["loss_curve"] = falling_curve()
    w = [x for x in run_warnings(m, data()) if "undertrained" in x]
    assert len(w) == 1 and "generator.train_steps (now 1300)" in w[0]
    assert not any("undertrained" in x for x in run_warnings(metrics(), data()))


def test_loss_still_falling_on_synthetic_curves():
    # flat noisy curves (diffusion losses are noisy): few false alarms over many noise draws
    flat = [loss_still_falling(flat_curve(seed=s)) for s in range(200)]
    assert sum(f is not None for f in flat) <= 10
    # a spike in the final window alone does not turn a flat curve into a falling one, nor hide a falling one
    spiky = flat_curve(seed=3)
    spiky[-8][1] *= 20
    assert loss_still_falling(spiky) is None
    falling = [loss_still_falling(falling_curve(seed=s)) for s in range(50)]
    assert sum(f is not None for f in falling) >= 45
    f = next(x for x in falling if x)
    assert f["loss_final"] < f["loss_before"] and f["relative_drop"] > 0.02
    assert f["steps_final"][1] == 1300 and f["steps_before"][1] < f["steps_final"][0]
    # converged early: flat over the last 20%
    rng = np.random.default_rng(0)
    converged = [[25 * (i + 1), (0.03 + 0.5 * np.exp(-25 * (i + 1) / 100)) * np.exp(rng.normal(0, 0.05))]
                 for i in range(52)]
    assert loss_still_falling(converged) is None
    assert loss_still_falling(falling_curve(n=8)) is None  # too few points to say


def test_warning_for_a_single_seed():
    w = run_warnings(metrics(diff_values=(0.05,)), data())
    assert any("single seed" in x and "[0]" in x for x in w)
    assert not any("single seed" in x for x in run_warnings(metrics(), data()))


def test_warning_for_a_filter_that_rejects_real_images():
    w = run_warnings(metrics(acceptance=(0.5, 0.04, 0.3)), data())
    low = [x for x in w if "realism filter" in x]
    assert len(low) == 1 and "class '3-cell' 4.0%" in low[0] and "'2-cell'" not in low[0]
    assert not any("realism filter" in x for x in run_warnings(metrics(acceptance=(0.5, 0.1, 0.3)), data()))


# ------------------------------------------------------------------ the report leads with them
def test_report_view_carries_the_verdict_and_the_html_shows_it_first():
    m = metrics(ca=(0.9, 0.3, 0.85))
    m["warnings"] = ["class '3-cell' has only 28 test images"]  # as pipeline.data_warnings writes them
    view = report_view({"name": "t", "seed": 0}, {}, data(), m)
    assert view["verdict"]["downstream"]["status"] == "helps"
    assert view["warnings"][0] == "class '3-cell' has only 28 test images"  # the run's own warnings stay first
    assert sum("at or below chance" in w for w in view["warnings"]) == 1
    # rendering twice from the same metrics.json does not duplicate the derived warnings
    m["warnings"] = view["warnings"]
    again = report_view({"name": "t", "seed": 0}, {}, data(), m)
    assert again["warnings"] == view["warnings"]
    text = render_report(view)
    first_section = text.index("<section")
    assert text[first_section:].startswith('<section class="findings" id="verdict">')
    assert text.index('id="verdict"') < text.index('id="warnings"')
    verdict = text[text.index('id="verdict"'):text.index("</section>", first_section)]
    for bit in ("Does synthetic data help here?", "helps", "95% CI", "at or below chance", "none found"):
        assert bit in verdict, bit
