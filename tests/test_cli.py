"""CLI smoke tests of every verb on tiny data, and the one-line error contract."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.cli import main
from synthmed.data.export import load_image_set

SHARED_MEDMNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "medmnist"

TINY = [
    "--set", "data.embryo_per_class=[36,24,36]", "--image-size", "16",
    "--set", "generator.block_out_channels=[16,32]", "--set", "generator.train_steps=6",
    "--set", "generator.batch_size=16", "--set", "generator.log_every=2", "--set", "generator.sample_steps=3",
    "--set", "samples_per_class=4", "--set", "downstream.seeds=[0,1]",
    "--set", "downstream.classifier.epochs=1", "--set", "evaluate.judge.epochs=1",
]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(["demo", "--out", str(out), "--name", "tiny", "--quiet", *TINY]) == 0
    return out / "tiny"


def test_demo_writes_the_run_folder(demo_run):
    for f in ("config.yaml", "run.json", "data.json", "metrics.json", "report.html", "generator/checkpoint.pt",
              "samples/images.npz", "samples/manifest.csv", "checkpoints/checkpoint.pt"):
        assert (demo_run / f).is_file(), f
    metrics = json.loads((demo_run / "metrics.json").read_text())
    assert set(metrics["downstream"]["summary"]) == {"real", "augmented"}
    assert len(metrics["downstream"]["per_seed"]) == 2
    assert metrics["conditional_accuracy"]["synthetic"]["n"] == 12
    info = json.loads((demo_run / "run.json").read_text())
    assert info["data_fingerprints"]["train"] == metrics["generator"]["train_fingerprint"]
    html = (demo_run / "report.html").read_text()
    assert "class-recognisable" in html and "help a classifier" in html
    syn = load_image_set(demo_run / "samples")
    assert syn.synthetic and syn.class_counts() == [4, 4, 4]


def test_sample_and_report_verbs(demo_run, tmp_path, capsys):
    assert main(["sample", str(demo_run), "--per-class", "2", "--seed", "5", "--out", str(tmp_path / "s"),
                 "--quiet"]) == 0
    syn = load_image_set(tmp_path / "s")
    assert syn.class_counts() == [2, 2, 2] and syn.meta["seed"] == 5
    (demo_run / "report.html").unlink()
    assert main(["report", str(demo_run), "--quiet"]) == 0
    assert (demo_run / "report.html").is_file()


def test_train_verb_resumes_finished_run(demo_run, capsys):
    # same name/out/config: the checkpoint is complete, so training resumes at its last step and stops
    assert main(["train", "--preset", "demo", "--out", str(demo_run.parent), "--name", "tiny", "--quiet", *TINY]) == 0


def test_demo_report_has_evaluation_and_memorisation(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    ev = metrics["evaluation"]
    assert ev["header"]["extractor"]["name"] == "domain"
    assert {r["class"] for r in ev["rows"]} >= {"2-cell", "3-cell", "4-cell"}
    assert metrics["memorisation"]["overall"]["n"] == 12
    assert (demo_run / "evaluation" / "metrics.csv").is_file()
    html = (demo_run / "report.html").read_text()
    assert "How close are the synthetic images to real ones?" in html and "copy training images" in html


def test_demo_metrics_carry_the_verdict_the_report_leads_with(demo_run):
    metrics = json.loads((demo_run / "metrics.json").read_text())
    v = metrics["verdict"]
    assert set(v) == {"downstream", "recognisable", "near_copies", "too_small"}
    d = metrics["downstream"]["difference"]["balanced_accuracy"]
    assert v["downstream"]["status"] in ("helps", "hurts", "inconclusive") and v["downstream"]["n_seeds"] == 2
    assert (v["downstream"]["ci_low"], v["downstream"]["ci_high"]) == (d["ci_low"], d["ci_high"])
    assert any("2 downstream seeds" in item for item in v["too_small"]["items"])
    assert set(metrics["downstream"]["per_class"]) == {"2-cell", "3-cell", "4-cell"}
    html = (demo_run / "report.html").read_text()
    assert html.index('id="verdict"') < html.index('id="inputs"') < html.index('id="images"')
    assert "4 of 4" in html and "<h3>Per class</h3>" in html  # all 4 synthetic images per class are shown


def test_evaluate_and_filter_verbs(demo_run, tmp_path, capsys):
    assert main(["evaluate", str(demo_run), str(demo_run), "--n-boot", "5", "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    rows = (tmp_path / "ev" / "evaluation" / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("class,metric,value") and len(rows) > 4
    assert main(["filter", str(demo_run / "samples"), "--real", str(demo_run), "--mode", "global", "--k", "2",
                 "--out", str(tmp_path / "kept"), "--quiet"]) == 0
    report = json.loads((tmp_path / "kept" / "filter_report.json").read_text())
    kept = load_image_set(tmp_path / "kept")
    assert len(kept) == sum(e["kept"] for e in report["per_class"].values()) <= 12


def test_every_written_set_has_a_data_card_that_evaluate_fills(demo_run, tmp_path, capsys):
    samples = demo_run / "samples"
    card = json.loads((samples / "card.json").read_text())
    data = json.loads((demo_run / "data.json").read_text())
    assert card["training_data"]["fingerprint"] == data["train"]["fingerprint"]
    assert sum(card["training_data"]["class_counts"].values()) == data["train"]["num_images"]
    assert card["sampling"]["sampler"] and card["generator"]["settings"]["train_steps"] == 6
    assert "not validated for diagnosis" in (samples / "card.md").read_text()
    capsys.readouterr()
    assert main(["evaluate", str(demo_run), str(samples), "--n-boot", "5", "--out", str(tmp_path / "ev"),
                 "--quiet"]) == 0
    assert "data card:" in capsys.readouterr().out
    ev = json.loads((samples / "card.json").read_text())["evaluation"]
    assert ev["synthetic_fingerprint"] == card["set"]["fingerprint"] and ev["extractor"]["name"] == "domain"
    assert set(ev["conditional_accuracy"]["per_class"]) == {"2-cell", "3-cell", "4-cell"}
    assert ev["conditional_accuracy"]["judge"]["arch"]
    dist = ev["distribution"]
    assert dist["n_synthetic"] == 12 and dist["ci_method"] == "subsampling m=0.5n"
    assert {"fid", "precision", "recall"} <= set(dist["metrics"]) and "ci_low" in dist["metrics"]["fid"]
    assert json.loads((samples / "card.json").read_text())["memorisation"]["n"] == 12
    md = (samples / "card.md").read_text()
    assert "Conditional accuracy" in md and "| fid |" in md and "flagged as near-copies" in md
    assert main(["filter", str(samples), "--real", str(demo_run), "--mode", "global", "--k", "2",
                 "--out", str(tmp_path / "kept"), "--quiet"]) == 0
    kept = json.loads((tmp_path / "kept" / "card.json").read_text())
    assert kept["selection"]["mode"] == "global" and kept["evaluation"] is None
    assert kept["training_data"]["fingerprint"] == data["train"]["fingerprint"]


def test_downstream_verb_runs_and_resumes(demo_run, capsys):
    argv = ["downstream", "--preset", "demo", "--out", str(demo_run.parent), "--name", "tiny", "--quiet", *TINY,
            "--protocols", "baseline,mix,balance", "--reuse-generator", "--set", "downstream.seeds=[0,1]"]
    assert main(argv) == 0
    res = json.loads((demo_run / "downstream" / "results.json").read_text())
    assert {row["protocol"] for row in res["summary"]} == {"baseline", "mix", "balance"}
    cells = sorted((demo_run / "downstream" / "cells").glob("*.json"))
    mtimes = [c.stat().st_mtime_ns for c in cells]
    assert main(argv) == 0  # resumed: nothing recomputed
    assert [c.stat().st_mtime_ns for c in cells] == mtimes
    assert 'id="downstream-experiment"' in (demo_run / "report.html").read_text()


def _folder_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for cls, value in (("benign", 60), ("malignant", 190)):
        (root / cls).mkdir(parents=True)
        for i in range(12):
            arr = np.clip(rng.normal(value, 20, (20, 20)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / cls / f"p{i % 6}_{i}.png")
    return root


def test_data_verbs_on_a_folder(tmp_path, capsys):
    root = _folder_dataset(tmp_path / "imgs")
    assert main(["data", "inspect", "--dataset", f"folder:{root}", "--image-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "benign" in out and "malignant" in out
    assert main(["data", "split", "--dataset", f"folder:{root}", "--image-size", "16", "--to", str(tmp_path / "sp")]) == 0
    parts = [load_image_set(tmp_path / "sp" / s) for s in ("train", "val", "test")]
    assert sum(len(p) for p in parts) == 24
    assert main(["data", "subset", "--dataset", f"folder:{root}", "--image-size", "16", "--per-class", "3",
                 "--k", "2", "--to", str(tmp_path / "sub")]) == 0
    subs = [load_image_set(tmp_path / "sub" / f"subset{i}") for i in range(2)]
    assert [s.class_counts() for s in subs] == [[3, 3], [3, 3]]
    assert not (subs[0].image_hashes() & subs[1].image_hashes())


def test_presets_verb(capsys):
    assert main(["presets"]) == 0
    assert "blastdiffusion" in capsys.readouterr().out
    assert main(["presets", "--show", "renal-ldm"]) == 0
    assert "guidance: 1.5" in capsys.readouterr().out


@pytest.mark.parametrize("argv, fragment", [
    (["run", "missing.yaml"], "config file not found"),
    (["demo", "--set", "generator.nope=1"], "unknown config key 'generator.nope'"),
    (["data", "inspect", "--dataset", "folder:/no/such/folder"], "/no/such/folder"),
    (["data", "inspect", "--dataset", "weird:thing"], "weird"),
    (["sample", "/no/such/run"], "no trained generator"),
])
def test_user_errors_are_one_line_with_exit_2(argv, fragment, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "Traceback" not in err


def test_help_on_every_verb(capsys):
    for verb in (["demo"], ["run"], ["train"], ["sample"], ["report"], ["data", "inspect"], ["data", "split"],
                 ["data", "subset"], ["presets"]):
        with pytest.raises(SystemExit) as e:
            main([*verb, "--help"])
        assert e.value.code == 0
        assert "usage: synthmed" in capsys.readouterr().out


@pytest.mark.skipif(not (SHARED_MEDMNIST / "breastmnist.npz").is_file(),
                    reason=f"MedMNIST files not found at {SHARED_MEDMNIST}")
def test_run_on_medmnist_breast(tmp_path):
    argv = ["demo", "--dataset", "medmnist:breastmnist", "--data-root", str(SHARED_MEDMNIST), "--out", str(tmp_path),
            "--name", "breast", "--quiet", *TINY]
    assert main(argv) == 0
    data = json.loads((tmp_path / "breast" / "data.json").read_text())
    assert "official" in data["split_policy"]
    assert data["test"]["num_images"] == 156


def test_run_with_realism_filter_records_selection(tmp_path):
    argv = ["demo", "--out", str(tmp_path), "--name", "sel", "--quiet", *TINY, "--set", "select.mode=global",
            "--set", "select.k=2", "--set", "select.budget_factor=2"]
    # R >= 0 keeps everything: the selection bookkeeping end to end (rejection is tested in test_filter.py)
    assert main([*argv, "--set", "select.threshold=0"]) == 0
    metrics = json.loads((tmp_path / "sel" / "metrics.json").read_text())
    sel = metrics["selection"]
    assert set(sel["per_class"]) == {"2-cell", "3-cell", "4-cell"}
    for e in sel["per_class"].values():
        assert e["kept"] <= e["requested"] == 4 and e["generated"] <= e["budget"]
    kept = load_image_set(tmp_path / "sel" / "samples")
    assert len(kept) == sum(e["kept"] for e in sel["per_class"].values())
    report = (tmp_path / "sel" / "report.html").read_text()
    assert "Realism filtering" in report and "real validation images passing" in report
    # R >= 0 passes every real validation image too
    assert sel["real_val_acceptance"]["acceptance_rate"] == 1.0


def test_run_with_confidence_selection_is_graded_by_an_independent_judge(tmp_path):
    argv = ["demo", "--out", str(tmp_path), "--name", "conf", "--quiet", *TINY, "--set", "select.mode=confidence",
            "--set", "select.budget_factor=2"]
    # p >= 0 keeps everything: the bookkeeping end to end (rejection is tested in test_confidence.py)
    assert main([*argv, "--set", "select.tau=0"]) == 0
    run = tmp_path / "conf"
    metrics = json.loads((run / "metrics.json").read_text())
    sel = metrics["selection"]
    assert sel["mode"] == "confidence" and sel["tau"] == 0.0 and sel["real_val_acceptance"]["acceptance_rate"] == 1.0
    assert all(e["kept"] == e["requested"] == 4 for e in sel["per_class"].values())
    by = metrics["conditional_accuracy"]["scored_by"]
    assert by["role"] == "independent grader" and (by["arch"], by["seed"]) == ("smallcnn", 1001)
    assert by["selector"] == sel["selector"] and by["weights_hash"] != sel["selector"]["weights_hash"]
    html = (run / "report.html").read_text()
    assert "Confidence filtering" in html
    assert "Scored by an independent judge (smallcnn seed 1001), not the selecting classifier" in html
    card = json.loads((run / "samples" / "card.json").read_text())
    assert card["selection"]["selector"]["weights_hash"] == sel["selector"]["weights_hash"]
    assert card["evaluation"]["conditional_accuracy"]["scored_by"]["role"] == "independent grader"
    assert "Confidence-filtered" in (run / "samples" / "card.md").read_text()


def test_filter_by_confidence_reports_the_real_reference_and_evaluate_grades_independently(demo_run, tmp_path,
                                                                                          capsys):
    kept_dir = tmp_path / "conf"
    assert main(["filter", str(demo_run / "samples"), "--real", str(demo_run), "--mode", "confidence", "--tau", "0",
                 "--out", str(kept_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    report = json.loads((kept_dir / "filter_report.json").read_text())
    data = json.loads((demo_run / "data.json").read_text())
    ref = report["real_val_acceptance"]
    assert report["mode"] == "confidence" and report["tau"] == 0.0 and report["selector"]["arch"] == "smallcnn"
    assert (ref["n"], ref["fingerprint"]) == (data["val"]["num_images"], data["val"]["fingerprint"])
    for c, e in report["per_class"].items():
        assert (e["generated"], e["kept"], e["acceptance_rate"], ref["per_class"][c]) == (4, 4, 1.0, 1.0)
    assert "selected by the judge" in out and "real validation images: 1.00" in out
    assert main(["evaluate", str(demo_run), str(kept_dir), "--n-boot", "0", "--no-memorisation",
                 "--set", "evaluate.metrics=[fid]", "--quiet"]) == 0
    by = json.loads((kept_dir / "evaluation" / "judge_and_audit.json").read_text())["conditional_accuracy"]["scored_by"]
    assert by["role"] == "independent grader" and by["seed"] == 1001
    assert by["weights_hash"] != report["selector"]["weights_hash"] == by["selector"]["weights_hash"]
    # generate until N per class pass, from the run's generator
    assert main(["filter", str(demo_run), "--per-class", "3", "--mode", "confidence", "--tau", "0",
                 "--out", str(tmp_path / "gen"), "--quiet"]) == 0
    rep = json.loads((tmp_path / "gen" / "filter_report.json").read_text())
    assert rep["reached"] and all(e["kept"] == 3 for e in rep["per_class"].values())
    assert load_image_set(tmp_path / "gen").class_counts() == [3, 3, 3]


def test_sample_flags_and_set_apply_to_the_runs_saved_config(demo_run, tmp_path):
    assert main(["sample", str(demo_run), "--per-class", "1", "--steps", "2", "--sampler", "ddim", "--threads", "1",
                 "--set", "generator.guidance=1.0", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    meta = load_image_set(tmp_path / "s").meta
    assert (meta["steps"], meta["sampler"], meta["guidance"]) == (2, "ddim", 1.0)
    saved = (demo_run / "config.yaml").read_text()
    assert "sampler: dpmsolver++" in saved  # the run's own config file is left as it was


def test_evaluate_reads_synthmeds_own_sample_folder_through_folder(tmp_path, capsys):
    from synthmed.data.dataset import ImageDataset
    from synthmed.data.export import save_image_set

    names = ["malignant", "normal, benign"]  # BreastMNIST: written to disk as malignant/, normal_benign/
    rng = np.random.default_rng(0)
    for name, value in zip(names, (60, 190)):
        (tmp_path / "real" / name).mkdir(parents=True)
        for i in range(10):
            arr = np.clip(rng.normal(value, 20, (16, 16)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(tmp_path / "real" / name / f"{i}.png")
    images = np.clip(np.concatenate([rng.normal(v, 20, (4, 16, 16, 1)) for v in (60, 190)]), 0, 255).astype(np.uint8)
    save_image_set(ImageDataset(images, np.repeat([0, 1], 4), names, synthetic=True), tmp_path / "syn")
    argv = ["evaluate", f"folder:{tmp_path / 'real'}", f"folder:{tmp_path / 'syn'}", "--out", str(tmp_path / "ev"),
            "--n-boot", "0", "--no-memorisation", "--threads", "1", "--quiet", "--set", "evaluate.judge.steps=2",
            "--set", "evaluate.judge.eval_every=1", "--set", "evaluate.judge.widths=[4,8]",
            "--set", "evaluate.metrics=[fid]"]
    assert main(argv) == 0
    audit = json.loads((tmp_path / "ev" / "evaluation" / "judge_and_audit.json").read_text())
    ca = audit["conditional_accuracy"]
    assert ca["class_names"] == names and ca["synthetic"]["n"] == 8
    assert [ca["per_class"][name]["n"] for name in names] == [4, 4]
    assert "memorisation" not in audit


GAN_TINY = {
    "r3gan": ["--set", "generator.widths=[16,16]", "--set", "generator.cardinality=4", "--set", "generator.noise_dim=8",
              "--set", "generator.train_kimg=0.064", "--set", "generator.fd_every_kimg=0.032",
              "--set", "generator.fd_samples=20"],
    "progan": ["--set", "generator.widths=[16,16]", "--set", "generator.latent_dim=8", "--set", "generator.phase_kimg=0.016",
               "--set", "generator.train_kimg=0.064"],
}


@pytest.mark.parametrize("kind", sorted(GAN_TINY))
def test_run_with_a_gan_kind_trains_samples_resumes_and_reports(kind, tmp_path, capsys):
    argv = ["run", "--out", str(tmp_path), "--name", kind, "--quiet", "--threads", "1",
            "--set", "data.embryo_per_class=[30,20,30]", "--image-size", "16", "--set", f"generator.kind={kind}",
            "--set", "generator.batch_size=16", "--set", "generator.log_every=1", *GAN_TINY[kind],
            "--set", "samples_per_class=4", "--set", "downstream.seeds=[0,1]", "--set", "downstream.classifier.epochs=1",
            "--set", "evaluate.judge.epochs=1", "--set", "evaluate.n_boot=0"]
    assert main(argv) == 0
    run = tmp_path / kind
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["generator"]["kind"] == kind and metrics["generator"]["adversarial"] is True
    assert metrics["sampling"]["sampler"] == "single pass" and metrics["sampling"]["guidance"] is None
    assert metrics["sampling"]["images_per_second"] > 0
    assert set(metrics["diversity"]["per_class"]) == {"2-cell", "3-cell", "4-cell"}
    html = (run / "report.html").read_text()
    assert 'id="diversity"' in html and "Discriminator loss" in html
    if kind == "r3gan":
        assert metrics["generator"]["fd_curve"] and "FD during training" in html
    # a finished run resumes at its last step; sample works from the saved generator
    assert main(["train", "--out", str(tmp_path), "--name", kind, "--quiet", "--threads", "1", *argv[6:]]) == 0
    assert main(["sample", str(run), "--per-class", "2", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert load_image_set(tmp_path / "s").class_counts() == [2, 2, 2]
    # guidance does not exist for a GAN: one error line, exit 2
    assert main(["sample", str(run), "--guidance", "2", "--quiet"]) == 2
    assert "generator.guidance" in capsys.readouterr().err
