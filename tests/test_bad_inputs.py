"""Bad inputs at the edges: every one ends in exit code 2 and one `error:` line that names what is wrong,
before any work starts (no data step, no training, no generator loaded).

To add a case, add a row to BAD_INPUTS: (id, argv, phrase or tuple of phrases that must all appear in the
message). argv may use the placeholders of `workspace` ({run}, {syn}, {real}, ...).
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthmed.cli import main
from synthmed.config import save_config, load_config
from synthmed.data.dataset import ImageDataset
from synthmed.data.export import save_image_set

BREAST_CLASSES = ["malignant", "normal, benign"]  # BreastMNIST's names; the second is not a safe folder name

BAD_INPUTS = [
    # --- CSV manifests: an unknown column is an error, a typo of patient_id above all
    ("csv-patientid-typo", ["data", "inspect", "--dataset", "csv:{csv_typo}"],
     ("unknown column(s) ['patientid']", "'patient_id'", "data.extra_columns")),
    ("csv-extra-columns-not-a-list", ["data", "inspect", "--dataset", "csv:{csv_typo}",
                                      "--set", "data.extra_columns=patientid"],
     "data.extra_columns = 'patientid': expected a list of names"),
    # --- config values: type
    ("lr-not-a-number", ["demo", "--set", "generator.lr=abc"], "generator.lr = 'abc': expected a number (float)"),
    ("lr-nan", ["demo", "--set", "generator.lr=.nan"], "expected a finite number"),
    ("seeds-not-a-list", ["demo", "--set", "downstream.seeds=abc"],
     "downstream.seeds = 'abc': expected a list of whole numbers, e.g. [0,"),
    ("seeds-of-text", ["demo", "--set", "downstream.seeds=[0,x]"], "expected a list of whole numbers"),
    ("train-steps-fraction", ["demo", "--set", "generator.train_steps=1.5"],
     "generator.train_steps = 1.5: expected a whole number (int)"),
    ("bool-is-not-int", ["demo", "--set", "generator.batch_size=true"], "expected a whole number"),
    ("int-is-not-bool", ["demo", "--set", "generator.attention=1"], "expected true or false"),
    ("yes-as-class-name", ["demo", "--set", "data.classes=[yes]"], "quote it"),
    ("section-not-mapping", ["demo", "--set", "generator=5"], "generator: expected a mapping"),
    ("flag-not-a-number", ["demo", "--image-size", "abc"], "--image-size: data.image_size = 'abc'"),
    ("config-file-value", ["run", "{bad_yaml}"], "generator.lr = 'fast': expected a number"),
    # --- config values: range and choice
    ("seeds-empty", ["demo", "--set", "downstream.seeds=[]"], "downstream.seeds = []: must not be empty"),
    ("seed-negative", ["demo", "--seed", "-1"], "--seed: seed = -1: must be >= 0"),
    ("threads-negative", ["demo", "--threads", "-1"], "threads = -1: must be >= 0"),
    ("train-steps-zero", ["demo", "--set", "generator.train_steps=0"], "generator.train_steps = 0: must be >= 1"),
    ("lr-zero", ["demo", "--set", "generator.lr=0"], "generator.lr = 0.0: must be > 0"),
    ("flip-probability", ["demo", "--set", "generator.hflip=1.5"], "must be in [0, 1]"),
    ("judge-batch-size", ["demo", "--set", "evaluate.judge.batch_size=0"], "evaluate.judge.batch_size = 0"),
    ("classifier-milestone", ["demo", "--set", "downstream.classifier.lr_milestones=[0.5,2]"],
     "every entry must be in (0, 1)"),
    ("fractions-sum", ["demo", "--set", "data.val_fraction=0.5", "--set", "data.test_fraction=0.5"],
     "must be below 1"),
    ("sample-steps-above-timesteps", ["demo", "--set", "generator.sample_steps=5000"], "num_train_timesteps"),
    ("imbalance-without-class", ["demo", "--set", "data.imbalance_ratio=0.5"], "needs data.minority_class"),
    ("sampler-choice", ["demo", "--set", "generator.sampler=euler"], "generator.sampler = 'euler'; choose one of"),
    ("metric-choice", ["demo", "--set", "evaluate.metrics=[fid,fidd]"], "'fidd' is not allowed"),
    ("augmentation-choice", ["demo", "--set", "downstream.augmentations=[flip,blur]"], "'blur' is not allowed"),
    # --- unknown keys, presets, malformed --set, bad command lines
    ("unknown-key", ["demo", "--set", "generator.train_stepz=5"],
     ("unknown config key 'generator.train_stepz'", "did you mean 'train_steps'")),
    ("unknown-preset", ["demo", "--preset", "nope"], "unknown preset 'nope'"),
    ("set-without-value", ["demo", "--set", "generator.lr"], "expected KEY=VALUE"),
    ("set-bad-yaml", ["demo", "--set", "generator.block_out_channels=[16,32"], "not valid YAML"),
    ("unknown-option", ["demo", "--bogus"], "unrecognized arguments: --bogus"),
    ("missing-data-action", ["data"], "required: ACTION"),
    # --- sample: flags and --set on the run's saved config
    ("sample-steps-negative", ["sample", "{run}", "--steps", "-3"], "--steps: generator.sample_steps = -3: must be >= 1"),
    ("sample-per-class-zero", ["sample", "{run}", "--per-class", "0"], "--per-class: samples_per_class = 0: must be >= 1"),
    ("sample-per-class-negative", ["sample", "{run}", "--per-class", "-4"], "samples_per_class = -4: must be >= 1"),
    ("sample-per-class-fraction", ["sample", "{run}", "--per-class", "2.5"], "expected a whole number"),
    ("sample-guidance-text", ["sample", "{run}", "--guidance", "strong"], "generator.guidance = 'strong'"),
    ("sample-guidance-negative", ["sample", "{run}", "--guidance", "-1"], "generator.guidance = -1.0: must be >= 0"),
    ("sample-set", ["sample", "{run}", "--set", "generator.sample_steps=0"], "generator.sample_steps = 0"),
    ("sample-threads", ["sample", "{run}", "--threads", "-2"], "--threads: threads = -2"),
    ("sample-no-generator", ["sample", "{tmp}/nowhere"], "no trained generator"),
    # --- data verbs: --threads and --set, subset's own flags
    ("data-threads", ["data", "inspect", "--dataset", "folder:{real}", "--threads", "-1"], "threads = -1"),
    ("data-set", ["data", "split", "--dataset", "folder:{real}", "--to", "{tmp}/split", "--set",
                  "data.split_seed=-1"], "data.split_seed = -1: must be >= 0"),
    ("subset-per-class-zero", ["data", "subset", "--dataset", "folder:{real}", "--to", "{tmp}/sub",
                               "--per-class", "0"], "argument --per-class: 0: must be >= 1"),
    ("subset-k-text", ["data", "subset", "--dataset", "folder:{real}", "--to", "{tmp}/sub", "--k", "two"],
     "argument --k: 'two': expected a whole number"),
    ("subset-fraction", ["data", "subset", "--dataset", "folder:{real}", "--to", "{tmp}/sub", "--k", "2",
                         "--fraction", "1.5"], "argument --fraction: 1.5: must be in (0, 1]"),
    # --- evaluate / filter: flags, --set, and class names of a folder: synthetic set
    ("evaluate-class-mismatch", ["evaluate", "folder:{real}", "folder:{syn_renamed}", "--out", "{tmp}/ev"],
     ("['benign'] match no class of the real data ['malignant', 'normal, benign']", "rename the class folders",
      "normal_benign", "csv:")),
    ("evaluate-missing-class", ["evaluate", "folder:{real}", "folder:{syn_one_class}", "--out", "{tmp}/ev"],
     "no class for the real class(es) ['normal, benign']"),
    ("evaluate-n-boot", ["evaluate", "folder:{real}", "{syn}", "--n-boot", "-1"], "--n-boot: evaluate.n_boot = -1"),
    ("evaluate-k", ["evaluate", "folder:{real}", "{syn}", "--k", "0"], "evaluate.k = 0: must be >= 1"),
    ("evaluate-extractor", ["evaluate", "folder:{real}", "{syn}", "--extractor", "incepton"],
     ("evaluate.extractor = 'incepton': unknown feature extractor", "inception")),
    ("run-extractor", ["demo", "--set", "evaluate.extractor=incepton"], "unknown feature extractor"),
    ("evaluate-set", ["evaluate", "folder:{real}", "{syn}", "--set", "evaluate.judge.epochs=0"],
     "evaluate.judge.epochs = 0"),
    ("filter-threshold", ["filter", "{syn}", "--real", "folder:{real}", "--threshold", "-1", "--out", "{tmp}/f"],
     "--threshold: select.threshold = -1.0: must be >= 0"),
    ("filter-k", ["filter", "{syn}", "--real", "folder:{real}", "--k", "0", "--out", "{tmp}/f"], "select.k = 0"),
    ("filter-budget", ["filter", "{syn}", "--real", "folder:{real}", "--budget-factor", "0.5", "--out", "{tmp}/f"],
     "select.budget_factor = 0.5: must be >= 1"),
    ("filter-per-class", ["filter", "{run}", "--per-class", "0", "--out", "{tmp}/f"], "samples_per_class = 0"),
    ("filter-tau-negative", ["filter", "{syn}", "--real", "folder:{real}", "--mode", "confidence", "--tau", "-0.1",
                             "--out", "{tmp}/f"], "--tau: select.tau = -0.1: must be in [0, 1]"),
    ("filter-tau-above-one", ["filter", "{syn}", "--real", "folder:{real}", "--mode", "confidence", "--tau", "1.5",
                              "--out", "{tmp}/f"], "--tau: select.tau = 1.5: must be in [0, 1]"),
    ("filter-tau-text", ["filter", "{syn}", "--real", "folder:{real}", "--mode", "confidence", "--tau", "high",
                         "--out", "{tmp}/f"], "select.tau = 'high': expected a number"),
    ("filter-mode-choice", ["filter", "{syn}", "--real", "folder:{real}", "--mode", "confident", "--out", "{tmp}/f"],
     "invalid choice: 'confident'"),
    ("run-tau", ["demo", "--set", "select.tau=2"], "select.tau = 2.0: must be in [0, 1]"),
    ("grader-is-selector", ["demo", "--set", "select.mode=confidence", "--set", "evaluate.grader_seed_offset=0"],
     ("evaluate.grader_seed_offset = 0", "selecting judge", "evaluate.grader_arch")),
    ("grader-arch-choice", ["demo", "--set", "evaluate.grader_arch=vgg"], "evaluate.grader_arch = 'vgg'; choose one of"),
    ("filter-class-mismatch", ["filter", "folder:{syn_renamed}", "--real", "folder:{real}", "--out", "{tmp}/f"],
     "match no class of the real data"),
    # --- region-of-interest boxes: one crop per image must not take a box of the wrong class in silence
    ("roi-several-names", ["data", "inspect", "--dataset", "folder:{wbc}", "--image-size", "16",
                           "--set", "data.roi=boxes:{voc}"], ("img_a.png", "several names", "data.roi_class")),
    ("roi-several-boxes", ["data", "inspect", "--dataset", "folder:{wbc}", "--image-size", "16",
                           "--set", "data.roi=boxes:{voc}", "--set", "data.roi_class=RBC"],
     ("img_a.png", "2 boxes named 'RBC'", "data.roi_multiple")),
    ("roi-class-not-in-boxes", ["data", "inspect", "--dataset", "folder:{wbc}", "--image-size", "16",
                                "--set", "data.roi=boxes:{voc}", "--set", "data.roi_class=Neutrophil"], "Neutrophil"),
    ("roi-multiple-choice", ["data", "inspect", "--dataset", "folder:{wbc}", "--set", "data.roi_multiple=first"],
     "data.roi_multiple = 'first'"),
    ("roi-csv-duplicate-rows", ["data", "inspect", "--dataset", "folder:{wbc}", "--image-size", "16",
                                "--set", "data.roi=boxes:{boxes_dup}"], ("img_a.png", "row 1", "row 2")),
    ("crops-missing-image", ["data", "crops", "--boxes", "{voc}", "--images", "{tmp}", "--to", "{tmp}/crops1"],
     "img_a.png"),
    ("crops-unknown-class", ["data", "crops", "--boxes", "{voc}", "--images", "{voc_images}", "--to",
                             "{tmp}/crops2", "--classes", "WBC,Eosinophil"], "Eosinophil"),
    ("crops-negative-pad", ["data", "crops", "--boxes", "{voc}", "--images", "{voc_images}", "--to",
                            "{tmp}/crops3", "--pad", "-0.1"], "pad = -0.1"),
    ("evaluate-empty-set", ["evaluate", "folder:{real}", "{syn_empty}", "--out", "{tmp}/ev_empty"],
     "holds no images"),
    # --- downstream flags
    ("downstream-protocol", ["downstream", "--protocols", "baseline,mixx"], "'mixx' is not allowed"),
    ("downstream-filter", ["downstream", "--filters", "strict"], "'strict' is not allowed"),
    ("downstream-filter-grader", ["downstream", "--filters", "none,confidence", "--set", "select.mode=confidence",
                                  "--set", "evaluate.grader_seed_offset=-1"], "evaluate.grader_seed_offset = -1"),
    ("downstream-subsets", ["downstream", "--subsets", "-1"], "downstream.subsets = -1: must be >= 0"),
    ("downstream-per-class", ["downstream", "--subsets", "2", "--per-class", "0"], "downstream.subset_per_class = 0"),
]


def _png(path: Path, value: int, rng) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(rng.normal(value, 20, (16, 16)), 0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad_inputs")
    rng = np.random.default_rng(0)
    real = tmp / "real"  # BreastMNIST-like class folders, names as the real data has them
    for name, value in zip(BREAST_CLASSES, (60, 190)):
        for i in range(8):
            _png(real / name / f"{i}.png", value, rng)
    images = np.clip(rng.normal(128, 40, (8, 16, 16, 1)), 0, 255).astype(np.uint8)
    syn = save_image_set(ImageDataset(images, np.repeat([0, 1], 4), list(BREAST_CLASSES), synthetic=True),
                         tmp / "syn")
    renamed = tmp / "syn_renamed"  # a folder the user renamed by hand: matches no real class
    shutil.copytree(syn, renamed)
    (renamed / "normal_benign").rename(renamed / "benign")
    one_class = tmp / "syn_one_class"
    shutil.copytree(syn, one_class)
    shutil.rmtree(one_class / "normal_benign")
    syn_empty = save_image_set(ImageDataset(images[:0], np.zeros(0, np.int64), list(BREAST_CLASSES), synthetic=True),
                               tmp / "syn_empty")
    csv_typo = tmp / "list.csv"
    with open(csv_typo, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "patientid"])
        w.writerows([str(p.relative_to(tmp)), p.parent.name, f"p{i % 3}"]
                    for i, p in enumerate(sorted(real.rglob("*.png"))))
    run = tmp / "run"  # looks like a trained run; no verb may get as far as loading its generator
    (run / "generator").mkdir(parents=True)
    save_config(load_config(overrides={"data": {"dataset": f"folder:{real}", "image_size": 16},
                                       "generator": {"block_out_channels": [16, 32]}}), run / "config.yaml")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("generator:\n  lr: fast\n")
    from test_crops import write_smears  # a VOC folder: several boxes and names per image

    voc, voc_images = write_smears(tmp / "smears")
    wbc = tmp / "wbc" / "WBC"  # every smear labelled WBC, as a user without per-box labels would
    wbc.mkdir(parents=True)
    for name in ("img_a.png", "img_b.png"):
        shutil.copy(voc_images / name, wbc / name)
    boxes_dup = tmp / "boxes_dup.csv"
    boxes_dup.write_text("image,label,x0,y0,x1,y1\nimg_a.png,WBC,30,10,50,40\nimg_a.png,WBC,5,5,20,20\n"
                         "img_b.png,WBC,50,20,80,50\n")
    return {"voc": str(voc), "voc_images": str(voc_images), "wbc": str(wbc.parent), "boxes_dup": str(boxes_dup),
            "tmp": str(tmp), "real": str(real), "syn": str(syn), "syn_renamed": str(renamed),
            "syn_one_class": str(one_class), "syn_empty": str(syn_empty), "csv_typo": str(csv_typo), "run": str(run), "bad_yaml": str(bad_yaml)}


@pytest.fixture
def no_work(monkeypatch, tmp_path):
    """Any step that does real work fails the test: the errors must come before it."""
    from synthmed import pipeline
    from synthmed.generators.diffusion import DiffusionGenerator

    def started(*args, **kwargs):
        raise AssertionError("work started before the bad input was reported")

    for name in ("step_data", "step_train", "step_judge", "load_run_generator", "step_downstream_experiment",
                 "step_sample"):
        monkeypatch.setattr(pipeline, name, started)
    monkeypatch.setattr(DiffusionGenerator, "fit", started)
    monkeypatch.chdir(tmp_path)  # a `demo` that got through would write runs/ here


@pytest.mark.parametrize("argv, phrases", [pytest.param(a, p, id=i) for i, a, p in BAD_INPUTS])
def test_bad_input_is_one_error_line_with_exit_2(argv, phrases, workspace, no_work, capsys):
    argv = [a.format(**workspace) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err and ".py:" not in err
    for phrase in (phrases,) if isinstance(phrases, str) else phrases:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"


def test_extra_columns_keeps_a_column_of_ones_own(workspace, capsys):
    argv = ["data", "inspect", "--dataset", f"csv:{workspace['csv_typo']}", "--image-size", "16",
            "--set", "data.extra_columns=[patientid]"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "malignant" in out and "normal, benign" in out
    assert "patients: None" in out  # the column is the user's own: not read as patient ids


def test_warnings_are_one_readable_line(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for name, value in (("a", 50), ("b", 200)):
        for i in range(6):
            _png(tmp_path / name / f"{i}.png", value, rng)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    assert main(["data", "inspect", "--dataset", f"folder:{tmp_path}", "--image-size", "16"]) == 0
    err = capsys.readouterr().err
    warning_lines = [line for line in err.splitlines() if line.strip()]
    assert warning_lines and all(line.startswith("warning: ") for line in warning_lines), err
    assert any("skipped 1 file" in line and "notes.txt" in line for line in warning_lines)
    assert ".py:" not in err and "warnings.warn" not in err


def test_a_gpu_preset_on_a_machine_without_one_is_one_line(capsys, no_work):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    assert main(["demo", "--preset", "pixel28-gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "torch sees no CUDA GPU; use --device cpu" in err and "Traceback" not in err
