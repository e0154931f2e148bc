"""The guidance scale is chosen on the REAL VALIDATION split by a stated criterion, recorded, and used
for the run's images; the test split is never looked at."""

from __future__ import annotations

import json

import numpy as np
import pytest
from toydata import toy

from synthmed import pipeline
from synthmed.config import ClassifierConfig, load_config
from synthmed.data.dataset import DataSplits, ImageDataset
from synthmed.metrics import guidance as G


class FakeGenerator:
    """Samples toy images whatever the scale; remembers what it was asked."""

    def __init__(self, train: ImageDataset):
        self.train_fingerprint = train.fingerprint()
        self.calls = []

    def sample(self, counts, *, guidance=None, seed=0, progress=False, **_):
        self.calls.append({"counts": list(counts), "guidance": guidance, "seed": seed})
        syn = toy(counts, seed=100 + seed)
        syn.synthetic, syn.meta = True, {"guidance": guidance}
        return syn


class SpyScorer:
    """A constructed score peaking at w = 3.2, recording which real set every call was given."""

    def __init__(self):
        self.real_seen = []

    def __call__(self, synthetic, real):
        self.real_seen.append(real.fingerprint())
        w = synthetic.meta["guidance"]
        return {"score": 1 - (w - 3.2) ** 2 / 10, "w_seen": w}


def splits():
    return DataSplits(train=toy(6, seed=0), val=toy(5, seed=1), test=toy(5, seed=2))


def test_picks_the_highest_score_records_every_candidate_and_uses_only_val():
    s, scorer = splits(), SpyScorer()
    gen = FakeGenerator(s.train)
    out = G.choose_guidance(gen, s.val, [4.0, 1.0, 2.0, 1.5, 3.0], score=scorer, per_class=7, seed=11,
                            forbidden={"test": s.test.fingerprint()})
    assert out["chosen"] == 3.0
    assert [r["guidance"] for r in out["candidates"]] == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert [r["score"] for r in out["candidates"]] == [pytest.approx(1 - (w - 3.2) ** 2 / 10)
                                                      for w in (1.0, 1.5, 2.0, 3.0, 4.0)]
    assert all(r["w_seen"] == r["guidance"] for r in out["candidates"])  # each score is of its own scale
    assert set(scorer.real_seen) == {s.val.fingerprint()} and out["real_fingerprint"] == s.val.fingerprint()
    # the same noise (seed) for every scale, the asked number per class
    assert [c["seed"] for c in gen.calls] == [11] * 5 and all(c["counts"] == [7, 7, 7] for c in gen.calls)
    assert out["samples_per_class"] == 7 and out["real_split"] == "val" and out["criterion"] == G.CRITERION


def test_equal_scores_go_to_the_smaller_scale_and_a_best_at_the_end_of_the_range_is_flagged():
    s = splits()
    out = G.choose_guidance(FakeGenerator(s.train), s.val, [3.0, 1.0, 2.0], score=lambda syn, real: {"score": 0.5})
    assert out["chosen"] == 1.0 and not out["at_edge"]  # 1 is plain conditional sampling, a natural end
    rising = G.choose_guidance(FakeGenerator(s.train), s.val, [1.0, 2.0, 3.0],
                               score=lambda syn, real: {"score": syn.meta["guidance"] / 10})
    assert rising["chosen"] == 3.0 and rising["at_edge"]
    assert "widen generator.guidance_candidates" in pipeline._guidance_warnings(rising)[0]
    assert not out["at_edge"] and pipeline._guidance_warnings(out) == []


def test_refuses_the_test_split_the_training_split_and_synthetic_images():
    s = splits()
    gen, scorer = FakeGenerator(s.train), SpyScorer()
    with pytest.raises(ValueError, match="test split"):
        G.choose_guidance(gen, s.test, [1.0, 2.0], score=scorer, forbidden={"test": s.test.fingerprint()})
    with pytest.raises(ValueError, match="training split"):
        G.choose_guidance(gen, s.train, [1.0, 2.0], score=scorer)
    with pytest.raises(ValueError, match="synthetic"):
        G.choose_guidance(gen, toy(5, seed=1, synthetic=True), [1.0, 2.0], score=scorer)
    assert scorer.real_seen == [] and gen.calls == []  # refused before anything was generated


def test_pipeline_step_chooses_on_val_and_records_it_in_the_run(tmp_path, monkeypatch):
    s, scorer = splits(), SpyScorer()
    monkeypatch.setattr(G, "accuracy_times_coverage", lambda judge, k=3: scorer)
    cfg = load_config(overrides={"generator": {"guidance_candidates": [1.0, 4.0, 3.0], "guidance_samples_per_class": 5}})
    out = pipeline.step_choose_guidance(cfg, tmp_path, FakeGenerator(s.train), s, judge=None, quiet=True)
    assert out["chosen"] == 3.0 and set(scorer.real_seen) == {s.val.fingerprint()}
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["guidance_selection"]["chosen"] == 3.0 == pipeline.chosen_guidance(tmp_path)
    assert info["guidance_selection"]["real_fingerprint"] == s.val.fingerprint() != s.test.fingerprint()
    assert "choose_guidance" in info["timings"]
    # off unless asked for
    off = load_config(overrides={"generator": {"guidance_candidates": []}})
    assert pipeline.step_choose_guidance(off, tmp_path, FakeGenerator(s.train), s, judge=None, quiet=True) is None
    assert pipeline.chosen_guidance(tmp_path) is None  # the earlier choice no longer holds for `synthmed sample`


def test_accuracy_times_coverage_prefers_real_looking_images_to_noise(tmp_path):
    from synthmed.features.domain import DomainExtractor

    s = splits()
    judge = DomainExtractor(toy(20, seed=0), s.val, ClassifierConfig(widths=[8], epochs=3, patience=3),
                            cache_dir=tmp_path, seed=0)
    score = G.accuracy_times_coverage(judge, k=3)
    like_real = toy(8, seed=7, synthetic=True)
    rng = np.random.default_rng(0)
    noise = ImageDataset(rng.integers(0, 256, like_real.images.shape, dtype=np.uint8), like_real.labels,
                         like_real.class_names, synthetic=True)
    good, bad = score(like_real, s.val), score(noise, s.val)
    for r in (good, bad):
        assert 0 <= r["score"] <= 1 and r["score"] == pytest.approx(r["conditional_accuracy"] * r["coverage"])
    assert good["score"] > bad["score"] and good["coverage"] > bad["coverage"]


def test_report_shows_the_candidates_and_the_choice():
    from synthmed.report.html import render_report

    sel = {"chosen": 1.5, "criterion": G.CRITERION, "samples_per_class": 32, "num_real": 93, "real_split": "val",
           "candidates": [{"guidance": 1.0, "conditional_accuracy": 0.8, "coverage": 0.7, "score": 0.56, "seconds": 3},
                          {"guidance": 1.5, "conditional_accuracy": 0.9, "coverage": 0.7, "score": 0.63, "seconds": 4}]}
    html = render_report({"sampling": {"sampler": "ddim", "steps": 10, "guidance": 1.5, "guidance_selection": sel}})
    assert "Guidance chosen on validation data" in html and "1.5 (chosen)" in html and "0.630" in html
    assert "chosen on the validation split" in html and "could not be drawn" not in html


def test_a_run_chooses_guidance_on_val_samples_with_it_and_reports_it(tmp_path):
    from test_cli import TINY

    from synthmed.cli import main
    from synthmed.data.export import load_image_set

    argv = ["demo", "--out", str(tmp_path), "--name", "g", "--quiet", *TINY, "--set", "generator.budget_minutes=5",
            "--set", "generator.guidance_candidates=[1.0,2.0,4.0]", "--set", "generator.guidance_samples_per_class=4"]
    assert main(argv) == 0
    run = tmp_path / "g"
    metrics = json.loads((run / "metrics.json").read_text())
    sel = metrics["guidance_selection"]
    assert [r["guidance"] for r in sel["candidates"]] == [1.0, 2.0, 4.0]
    assert sel["chosen"] == max(sel["candidates"], key=lambda r: r["score"])["guidance"]
    data = json.loads((run / "data.json").read_text())
    assert sel["real_fingerprint"] == data["val"]["fingerprint"] != data["test"]["fingerprint"]
    assert metrics["sampling"]["guidance"] == sel["chosen"] == load_image_set(run / "samples").meta["guidance"]
    assert metrics["generator"]["budget"]["budget_minutes"] == 5.0  # 6 steps: all of them fit
    html = (run / "report.html").read_text()
    assert "Guidance chosen on validation data" in html and "time budget" in html
    # `synthmed sample` on the run uses the chosen scale unless told otherwise
    assert main(["sample", str(run), "--per-class", "1", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert load_image_set(tmp_path / "s").meta["guidance"] == sel["chosen"]
    assert main(["sample", str(run), "--per-class", "1", "--guidance", "1.5", "--out", str(tmp_path / "t"),
                 "--quiet"]) == 0
    assert load_image_set(tmp_path / "t").meta["guidance"] == 1.5
