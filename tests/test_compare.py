"""`synthmed compare`: generator families on the same data at equal wall time, scored alike, one
table and one report section; resumable; bad family arguments are one-line errors."""

from __future__ import annotations

import json

import pytest

from synthmed.cli import main
from synthmed.compare import at_equal_time, family_generator_config
from synthmed.config import ConfigError, DiffusionConfig, ProGANConfig, R3GANConfig, load_config

DATA = ["--set", "data.embryo_per_class=[24,16,24]", "--image-size", "16", "--threads", "1",
        "--set", "samples_per_class=4", "--set", "downstream.seeds=[0,1]", "--set", "downstream.classifier.epochs=1",
        "--set", "evaluate.judge.epochs=1", "--set", "evaluate.n_boot=0"]
FAMILIES = ["--family-set", "diffusion.block_out_channels=[16,16]", "--family-set", "diffusion.sample_steps=3",
            "--family-set", "diffusion.batch_size=16", "--family-set", "diffusion.guidance_candidates=null",
            "--family-set", "r3gan.widths=[16,16]", "--family-set", "r3gan.cardinality=4",
            "--family-set", "r3gan.noise_dim=8", "--family-set", "r3gan.batch_size=16"]


def test_equal_time_hands_the_length_to_the_budget():
    d = at_equal_time(DiffusionConfig(train_steps=100), 2.0)
    assert d.budget_minutes == 2.0 and d.train_steps >= 10**6
    r = at_equal_time(R3GANConfig(train_kimg=10.0, fd_every_kimg=1.0), 2.0)
    assert r.budget_minutes == 2.0 and r.train_kimg == 2000.0 and r.fd_every_kimg == pytest.approx(200.0)
    p = at_equal_time(ProGANConfig(train_kimg=40.0, phase_kimg=4.0), 2.0)
    assert p.phase_kimg / p.train_kimg == pytest.approx(4.0 / 40.0)  # growth keeps its share of the training


def test_family_settings_come_from_the_run_or_a_preset():
    cfg = load_config(preset="demo")
    assert family_generator_config(cfg, "diffusion") is cfg.generator
    g = family_generator_config(cfg, "r3gan", overrides={"widths": [16, 16]})
    assert g.kind == "r3gan" and list(g.widths) == [16, 16]
    with pytest.raises(ConfigError, match="not r3gan"):
        family_generator_config(cfg, "r3gan", preset="pixel28")


def test_compare_trains_scores_and_reports_every_family_and_resumes(tmp_path, capsys):
    argv = ["compare", "--preset", "demo", "--out", str(tmp_path), "--name", "cmp", "--generators", "diffusion,r3gan",
            "--minutes", "0.05", "--quiet", *DATA, *FAMILIES]
    assert main(argv) == 0
    out = tmp_path / "cmp"
    result = json.loads((out / "comparison.json").read_text())
    assert list(result["families"]) == ["diffusion", "r3gan"]
    for name, row in result["families"].items():
        assert row["kind"] == name and row["n_synthetic"] == 12
        # equal wall time: the budget, not the planned length, ended training
        assert row["budget"]["budget_minutes"] == 0.05 and row["train_seconds"] <= 0.05 * 60 + 5
        assert row["fd"] > 0 and row["fd_real_floor"] > 0 and row["fd_ratio"] == pytest.approx(
            row["fd"] / row["fd_real_floor"])
        assert 0 <= row["conditional_accuracy"] <= 1 and row["sampling_images_per_second"] > 0
        assert row["downstream"]["seeds"] == [0, 1] and row["downstream"]["difference"]["ci_low"] is not None
    assert sorted(result["ranking_by_fd"]) == ["diffusion", "r3gan"]
    md = (out / "comparison.md").read_text()
    assert "| diffusion |" in md and "| r3gan |" in md and "real floor" in md
    html = (out / "report.html").read_text()
    assert 'id="comparison"' in html and "r3gan samples" in html
    # a rerun reuses both trained generators
    stamp = {n: (out / n / "generator" / "generator.json").stat().st_mtime_ns for n in ("diffusion", "r3gan")}
    assert main(argv) == 0
    assert stamp == {n: (out / n / "generator" / "generator.json").stat().st_mtime_ns for n in ("diffusion", "r3gan")}


@pytest.mark.parametrize("extra, fragment", [
    (["--generators", "diffusion,diffusion"], "named twice"),
    (["--generators", "diffusion", "--presets", "r3gan=r3gan28"], "--presets"),
    (["--generators", "diffusion", "--family-set", "r3gan.widths=[8]"], "--family-set"),
    (["--generators", "diffusion", "--family-set", "widths=[8]"], "KIND.KEY=VALUE"),
    (["--generators", "gan9"], "gan9"),
    (["--minutes", "0"], "--minutes"),
])
def test_bad_compare_arguments_are_one_line_errors(extra, fragment, tmp_path, capsys):
    assert main(["compare", "--preset", "demo", "--out", str(tmp_path), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1
