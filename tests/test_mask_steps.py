"""The mask steps of `synthmed run`: caption accuracy and the segmentation ratio sweep, and their report sections.

The synthetic set is a stand-in: REAL masked embryo training images flagged synthetic, with the captions
of their true masks (what a perfect mask- and caption-conditional generator would return)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from synthmed import pipeline
from synthmed.config import CaptionConfig, ConfigError, DataConfig, MaskConfig, RunConfig, SegmentationConfig, \
    load_config
from synthmed.data import load_dataset
from synthmed.data.captions import CaptionRules, add_captions, mask_levels
from synthmed.data.dataset import ImageDataset

TINY = SegmentationConfig(widths=[4, 8], steps=6, eval_every=3, patience=2, batch_size=8, seeds=[0, 1],
                          protocols=["ratio-100:0", "ratio-50:50"])


@pytest.fixture(scope="module")
def splits():
    return load_dataset(DataConfig(embryo_per_class=[12, 8, 12], image_size=32, masks=MaskConfig(embryo=True)))


def stand_in(ds: ImageDataset, captions: bool = True, masks: bool = True) -> ImageDataset:
    """Real images with their masks (and their masks' captions) flagged synthetic: a generator's output."""
    rules = CaptionRules.from_config(CaptionConfig(), ds.mask_class_names)
    caps = add_captions(ds, rules).captions if captions else None
    x, y = ds.to_tensor()
    return ImageDataset.from_tensor(x, y, ds.class_names, name="stand-in", masks=ds.masks if masks else None,
                                    mask_class_names=ds.mask_class_names if masks else None, captions=caps)


def cfg_with(**seg) -> RunConfig:
    return replace(RunConfig(), segmentation=replace(TINY, **seg))


def oracle(*sets: ImageDataset):
    """A perfect segmenter: the true mask of every image it has seen."""
    table = {ds.images[i].tobytes(): ds.masks[i] for ds in sets for i in range(len(ds))}
    return lambda ds: np.stack([table[im.tobytes()] for im in ds.images])


def test_caption_accuracy_step_result_cache_and_segmenter_cache(splits, tmp_path, monkeypatch):
    syn = stand_in(splits.train)
    res = pipeline.step_caption_accuracy(cfg_with(), tmp_path, splits, syn, "cpu", quiet=True)
    names = splits.train.mask_class_names
    assert res["n_images"] == len(syn) and list(res["per_class"]) == names
    assert res["real_reference"]["n_images"] == len(splits.test)
    assert set(res["segmenter"]["real_test"]["dice"]) == set(names) and res["segmenter"]["n_train"] == len(splits.train)
    for e in res["per_class"].values():
        assert 0 <= e["presence_accuracy"] <= 1 and e["presence_ci95"][0] <= e["presence_accuracy"] <= e["presence_ci95"][1]
        assert sum(e["generated_as"].values()) == len(syn)
    assert (tmp_path / "segmentation" / "caption_accuracy.json").is_file()
    assert (tmp_path / "segmentation" / "segmenter" / "segmenter.pt").is_file()

    def no_training(*a, **k):
        raise AssertionError("trained again although the cache holds the segmenter")

    monkeypatch.setattr("synthmed.metrics.segmenter.train_segmenter", no_training)
    again = pipeline.step_caption_accuracy(cfg_with(), tmp_path, splits, syn, "cpu", quiet=True)
    assert again["per_class"] == res["per_class"]  # the result file
    (tmp_path / "segmentation" / "caption_accuracy.json").unlink()
    reread = pipeline.step_caption_accuracy(cfg_with(), tmp_path, splits, syn, "cpu", quiet=True)
    assert reread["segmenter"]["cached"] is True  # the segmenter file: same weights, same numbers
    assert reread["per_class"] == res["per_class"]
    # another synthetic set is a new result; other segmenter settings are a new segmenter
    other = pipeline.step_caption_accuracy(cfg_with(), tmp_path, splits, stand_in(splits.val), "cpu", quiet=True)
    assert other["n_images"] == len(splits.val)
    with pytest.raises(AssertionError, match="trained again"):
        pipeline.step_caption_accuracy(cfg_with(steps=9), tmp_path, splits, syn, "cpu", quiet=True)


def test_caption_accuracy_of_a_perfect_and_a_blind_segmenter(splits, tmp_path):
    syn = stand_in(splits.train)
    perfect = pipeline.step_caption_accuracy(cfg_with(), tmp_path, splits, syn, "cpu", quiet=True,
                                             segment=oracle(splits.train, splits.test))
    assert perfect["mean_presence_accuracy"] == 1.0 and perfect["mean_level_accuracy"] == 1.0
    assert perfect["real_reference"]["exact_caption_rate"] == 1.0
    assert perfect["segmenter"]["real_test"]["mean_dice"] == 1.0
    blind = pipeline.step_caption_accuracy(cfg_with(), tmp_path, splits, syn, "cpu", quiet=True,
                                           segment=lambda ds: np.zeros(ds.images.shape[:3], np.uint8))
    rules = CaptionRules.from_config(CaptionConfig(), splits.train.mask_class_names)
    levels = [mask_levels(m, rules) for m in splits.train.masks]
    for k, c in enumerate(splits.train.mask_class_names):
        absent = np.mean([lv[k] is None for lv in levels])
        assert blind["per_class"][c]["presence_accuracy"] == pytest.approx(absent)
        assert blind["per_class"][c]["level_accuracy"] == pytest.approx(absent)
    # the embryo's zona is in every image: a blind segmenter never gets it right
    assert blind["per_class"]["zona"]["presence_accuracy"] == 0.0
    assert not (tmp_path / "segmentation" / "caption_accuracy.json").exists()  # a user callable is not cached


def test_segmentation_downstream_step_structure_and_pool_checks(splits, tmp_path):
    syn = stand_in(splits.train, captions=False)
    res = pipeline.step_segmentation_downstream(cfg_with(), tmp_path, splits, syn, "cpu", quiet=True)
    assert res["protocols"] == ["ratio-100:0", "ratio-50:50"] and res["seeds"] == [0, 1]
    assert len(res["runs"]) == 4 and res["n_train_real"] == len(splits.train)
    row = res["summary"]["ratio-50:50"]
    assert row["mean_dice"]["n"] == 2 and row["vs_100_0"]["mean_dice"]["n"] == 2
    assert row["vs_100_0"]["mean_dice"]["ci_low"] <= row["vs_100_0"]["mean_dice"]["mean"]
    assert "vs_100_0" not in res["summary"]["ratio-100:0"]
    assert (tmp_path / "segmentation" / "ratio_sweep.json").is_file()
    assert pipeline.step_segmentation_downstream(cfg_with(), tmp_path, splits, syn, "cpu", quiet=True) == res
    # a pool half the training split: 0:100 cannot be drawn; auto leaves it out and says so, on refuses
    half = stand_in(splits.train.subset(np.arange(0, len(splits.train), 2)), captions=False)
    cfg = cfg_with(protocols=["ratio-100:0", "ratio-0:100"], seeds=[0])
    short = pipeline.step_segmentation_downstream(cfg, tmp_path / "b", splits, half, "cpu", quiet=True)
    assert short["protocols"] == ["ratio-100:0"] and "ratio-0:100" in short["left_out"]
    assert any("ratio-0:100" in w for w in pipeline.mask_step_warnings(None, short))
    with pytest.raises(ConfigError, match="segmentation.ratio_sweep"):
        pipeline.step_segmentation_downstream(replace(cfg, segmentation=replace(cfg.segmentation, ratio_sweep="on")),
                                              tmp_path / "c", splits, half, "cpu", quiet=True)


def test_mask_steps_run_only_when_they_apply(splits, tmp_path):
    bare = stand_in(splits.train, captions=False, masks=False)
    for step in (pipeline.step_caption_accuracy, pipeline.step_segmentation_downstream):
        assert step(cfg_with(), tmp_path, splits, bare, "cpu", quiet=True) is None  # auto: nothing to read
    off = cfg_with(caption_accuracy="off", ratio_sweep="off")
    assert pipeline.step_caption_accuracy(off, tmp_path, splits, stand_in(splits.train), "cpu", quiet=True) is None
    with pytest.raises(ConfigError, match="segmentation.caption_accuracy = 'on'.*no captions"):
        pipeline.step_caption_accuracy(cfg_with(caption_accuracy="on"), tmp_path, splits, bare, "cpu", quiet=True)
    with pytest.raises(ConfigError, match="segmentation.ratio_sweep = 'on'.*no masks"):
        pipeline.step_segmentation_downstream(cfg_with(ratio_sweep="on"), tmp_path, splits, bare, "cpu", quiet=True)
    no_masks = replace(splits, train=splits.train.subset(np.arange(len(splits.train))))
    no_masks.train.masks = None
    with pytest.raises(ConfigError, match="real train split has no masks"):
        pipeline.check_mask_steps(cfg_with(ratio_sweep="on"), no_masks)
    pipeline.check_mask_steps(cfg_with(), no_masks)  # auto: fine, the steps just do not run
    assert pipeline.step_caption_accuracy(cfg_with(), tmp_path, no_masks, stand_in(splits.train), "cpu",
                                          quiet=True) is None
    with pytest.raises(ConfigError, match="segmentation.ratio_sweep"):
        load_config(overrides={"segmentation": {"ratio_sweep": "yes"}})
    with pytest.raises(ConfigError, match="segmentation.loss"):
        load_config(overrides={"segmentation": {"loss": "dice"}})


def test_report_shows_both_mask_sections(splits, tmp_path):
    from synthmed.report.html import render_report

    syn = stand_in(splits.train)
    metrics = {"caption_accuracy": pipeline.step_caption_accuracy(cfg_with(), tmp_path, splits, syn, "cpu",
                                                                  quiet=True),
               "segmentation_downstream": pipeline.step_segmentation_downstream(cfg_with(), tmp_path, splits, syn,
                                                                                "cpu", quiet=True),
               "warnings": []}
    view = pipeline.report_view({"name": "t", "seed": 0}, {}, {}, metrics)
    html = render_report(view)
    assert 'id="caption-accuracy"' in html and 'id="segmentation-downstream"' in html
    assert "could not be drawn" not in html
    for c in splits.train.mask_class_names:
        assert f"<td>{c}</td>" in html
    assert "real-test presence (reference)" in html and "segmenter Dice (real test)" in html
    assert f"{len(syn)} images" in html and f"n={len(splits.test)}" in html
    assert "Dice vs 100:0 [95% CI]" in html and "50:50" in html and "seeds 0, 1" in html
    skipped = render_report({"caption_accuracy": {"skipped": "caption part 'x' is not one of the rules"}})
    assert "Not computed: caption part" in skipped


def test_run_with_a_mask_step_on_and_no_real_masks_stops_before_training(tmp_path, capsys):
    from synthmed.cli import main

    argv = ["demo", "--out", str(tmp_path), "--name", "m", "--quiet", "--set", "data.embryo_per_class=[8,6,8]",
            "--image-size", "16", "--set", "segmentation.caption_accuracy='on'"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "segmentation.caption_accuracy = 'on'" in err and "data.masks.embryo: true" in err
    assert not (tmp_path / "m" / "checkpoints").exists() and not (tmp_path / "m" / "generator").exists()


def test_run_writes_both_mask_steps_into_metrics_and_report(tmp_path, monkeypatch):
    """The whole `synthmed run` with a stand-in for mask- and caption-conditional sampling."""
    import json

    from synthmed.cli import main
    from synthmed.data.export import save_image_set

    sets = ["--set", "data.embryo_per_class=[12,8,12]", "--set", "data.masks.embryo=true", "--image-size", "16",
            "--set", "generator.block_out_channels=[16,32]", "--set", "generator.train_steps=2",
            "--set", "generator.batch_size=8", "--set", "generator.sample_steps=2", "--set", "samples_per_class=2",
            "--set", "downstream.seeds=[0,1]", "--set", "downstream.classifier.epochs=1",
            "--set", "evaluate.judge.epochs=1", "--set", "segmentation.widths=[4,8]", "--set", "segmentation.steps=4",
            "--set", "segmentation.eval_every=2", "--set", "segmentation.seeds=[0,1]",
            "--set", "segmentation.protocols=[ratio-100:0,ratio-50:50]"]
    real = load_dataset(DataConfig(embryo_per_class=[12, 8, 12], image_size=16, masks=MaskConfig(embryo=True)))
    sample = pipeline.step_sample

    def mask_conditional(cfg, out, gen, counts, **kw):
        generated = sample(cfg, out, gen, counts, **kw)  # the real sampler's record (meta, timings)
        syn = stand_in(real.train)
        syn.meta = dict(generated.meta)
        save_image_set(syn, out / "samples")  # what a mask-conditional sampler writes there
        return syn

    monkeypatch.setattr(pipeline, "step_sample", mask_conditional)
    assert main(["demo", "--out", str(tmp_path), "--name", "m", "--quiet", *sets]) == 0
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert metrics["caption_accuracy"]["n_images"] == len(real.train)
    assert set(metrics["segmentation_downstream"]["summary"]) == {"ratio-100:0", "ratio-50:50"}
    html = (tmp_path / "m" / "report.html").read_text()
    assert 'id="caption-accuracy"' in html and 'id="segmentation-downstream"' in html
    for f in ("caption_accuracy.json", "ratio_sweep.json", "segmenter/segmenter.pt"):
        assert (tmp_path / "m" / "segmentation" / f).is_file()
