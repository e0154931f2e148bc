"""`synthmed study create` and the CLI verbs: which images a study shows, where they come from, what is stored,
and the one-line errors."""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from studydata import make_run, token_of
from synthmed.cli import main
from synthmed.config import load_config
from synthmed.data.dataset import DataError
from synthmed.data.export import load_image_set
from synthmed.data.sources import load_dataset
from synthmed.study import db
from synthmed.study.create import create_study, load_criteria, per_class_counts


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs"))


def _images(folder):
    with db.connect(folder) as con:
        return [dict(r) for r in con.execute("SELECT * FROM images")]


def _splits(run):
    return load_dataset(load_config(run / "config.yaml").data)


def test_per_class_counts_spread_evenly():
    for n, k in ((7, 3), (20, 3), (5, 8), (1, 2), (30, 3)):
        c = per_class_counts(n, k, seed=1)
        assert sum(c) == n and max(c) - min(c) <= 1
    assert per_class_counts(7, 3, 0) == per_class_counts(7, 3, 0)


def test_real_images_come_from_the_test_split_stratified_like_the_synthetic_ones(run, tmp_path):
    made = create_study(tmp_path / "s", real=str(run), synthetic=[str(run / "samples")], readers=["a", "b", "c"],
                        per_source=7)
    rows = _images(made.folder)
    assert len(rows) == 14
    per = {s: sorted(r["class_index"] for r in rows if r["source"] == s) for s in ("real", "tiny")}
    assert per["real"] == per["tiny"] and len(per["real"]) == 7  # the same class mix from every source
    splits = _splits(run)
    hashes = {r["fingerprint"] for r in rows if r["source"] == "real"}
    test = {hashlib.sha1(im.tobytes()).hexdigest() for im in splits.test.images}
    train = {hashlib.sha1(im.tobytes()).hexdigest() for im in splits.train.images}
    assert hashes <= test and not hashes & train
    s = json.loads((made.folder / "study.json").read_text())
    assert s["real"]["split"] == "test" and s["real"]["fingerprint"] == splits.test.fingerprint()
    assert s["sources"][1]["generator_check"]["status"] == "verified"
    # the files hold exactly the source pixels, under random ids
    synthetic = load_image_set(run / "samples")
    for r in rows:
        arr = np.asarray(Image.open(made.folder / "images" / r["file"]))
        source = synthetic.images if r["synthetic"] else splits.test.images
        assert np.array_equal(arr, source[r["origin_index"]][..., 0])
    assert len({r["id"] for r in rows}) == 14 and all(len(r["id"]) == 16 for r in rows)
    with db.connect(made.folder) as con:
        orders = [[t[0] for t in con.execute("SELECT image_id FROM tasks WHERE reader_id = ? ORDER BY position", (i,))]
                  for i in (1, 2, 3)]
    assert all(sorted(o) == sorted(orders[0]) for o in orders) and len({tuple(o) for o in orders}) == 3


def test_the_val_split_can_be_shown_and_is_recorded(run, tmp_path):
    made = create_study(tmp_path / "s", real=str(run), synthetic=[str(run / "samples")], readers=["a"],
                        per_source=3, real_split="val")
    assert made.summary["real"]["split"] == "val"
    val = {hashlib.sha1(im.tobytes()).hexdigest() for im in _splits(run).val.images}
    assert {r["fingerprint"] for r in _images(made.folder) if r["source"] == "real"} <= val


def test_selection_is_seeded(run, tmp_path):
    def picked(name, seed):
        made = create_study(tmp_path / name, real=str(run), synthetic=[str(run / "samples")], readers=["a"],
                            per_source=6, seed=seed)
        return sorted((r["source"], r["origin_index"]) for r in _images(made.folder))

    first = picked("a", 0)
    assert first == picked("b", 0) and first != picked("c", 5)


def test_a_generator_trained_on_the_shown_split_is_refused_and_an_unknown_one_warned(tmp_path):
    splits_run = make_run(tmp_path / "r0", name="base")
    test_fp = _splits(splits_run).test.fingerprint()
    leaky = make_run(tmp_path / "r1", name="leaky", train_fingerprint=test_fp)
    with pytest.raises(DataError, match="trained on the test split"):
        create_study(tmp_path / "s1", real=str(leaky), synthetic=[str(leaky / "samples")], readers=["a"], per_source=3)
    assert not (tmp_path / "s1").exists()
    unknown = make_run(tmp_path / "r2", name="unknown", train_fingerprint=None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        made = create_study(tmp_path / "s2", real=str(unknown), synthetic=[str(unknown / "samples")], readers=["a"],
                            per_source=3)
    assert any("cannot confirm" in str(w.message) for w in caught)
    assert made.summary["sources"][1]["generator_check"]["status"] == "unconfirmed"


def test_two_generators_side_by_side(run, tmp_path):
    other = make_run(tmp_path / "r", name="proto", seed=3)
    made = create_study(tmp_path / "s", real=str(run), synthetic=[f"cfg={run / 'samples'}", str(other / "samples")],
                        readers=["a"], per_source=3)
    assert [s["name"] for s in made.summary["sources"]] == ["real", "cfg", "proto"]
    assert len(_images(made.folder)) == 9


@pytest.mark.parametrize("kwargs, match", [
    ({"per_source": 40}, "too few images"),
    ({"readers": []}, "at least one reader"),
    ({"readers": ["a", "a"]}, "more than once"),
    ({"readers": ["../x"]}, "may hold only"),
    ({"mode": "plausibility"}, "needs --criteria"),
    ({"mode": "plausibility", "criteria": {"5-cell": ["x"]}}, "not in the data"),
    ({"mode": "plausibility", "criteria": {"2-cell": ["x"]}}, r"no criteria for class\(es\) \['3-cell', '4-cell'\]"),
    ({"mode": "both", "criteria": {"all": ["x"]}, "show_class": False}, "class must be shown"),
    ({"mode": "quiz"}, "must be one of"),
    ({"real_split": "train"}, "test or val"),
])
def test_bad_settings_are_refused_before_anything_is_written(run, tmp_path, kwargs, match):
    args = {"readers": ["a"], "per_source": 4, **kwargs}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        create_study(tmp_path / "s", real=str(run), synthetic=[str(run / "samples")], **args)
    assert not (tmp_path / "s").exists() and not list(tmp_path.glob(".s.*"))


def test_a_study_folder_is_written_once(run, tmp_path):
    create_study(tmp_path / "s", real=str(run), synthetic=[str(run / "samples")], readers=["a"], per_source=3)
    with pytest.raises(FileExistsError):
        create_study(tmp_path / "s", real=str(run), synthetic=[str(run / "samples")], readers=["a"], per_source=3)


def test_criteria_files(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("all: [sharp, no artefact]\n2-cell: [two blastomeres, sharp]\n")
    got = load_criteria(f, ["2-cell", "3-cell"])
    assert got == {"2-cell": ["sharp", "no artefact", "two blastomeres"], "3-cell": ["sharp", "no artefact"]}
    f.write_text("2-cell: []\n")
    with pytest.raises(ValueError, match="non-empty list"):
        load_criteria(f)
    f.write_text("2-cell: [a\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_criteria(f)


# --------------------------------------------------------------------------- CLI


def test_cli_create_link_analyze(run, tmp_path, capsys):
    study = tmp_path / "study"
    criteria = tmp_path / "criteria.yaml"
    criteria.write_text("all: [sharp membrane, no artefact]\n")
    assert main(["study", "create", "--real", str(run), "--synthetic", str(run / "samples"), "--per-source", "3",
                 "--readers", "r1,r2", "--mode", "both", "--criteria", str(criteria), "--to", str(study)]) == 0
    out = capsys.readouterr().out
    links = dict(line.strip().split(": ", 1) for line in out.splitlines() if "/r/" in line)
    assert set(links) == {"r1", "r2"} and all(v.startswith("http://127.0.0.1:8000/r/") for v in links.values())
    assert "admin (progress): http://127.0.0.1:8000/a/" in out and "test split" in out
    old = token_of(links["r1"])
    assert main(["study", "link", str(study), "--reader", "r1"]) == 0
    new = token_of(capsys.readouterr().out.split()[1])
    with db.connect(study) as con:
        assert db.reader_for_token(con, old) is None and db.reader_for_token(con, new)["name"] == "r1"
    assert main(["study", "analyze", str(study)]) == 0
    out = capsys.readouterr()
    assert "analysis:" in out.out and "not every reader has finished" in out.err
    assert (study / "analysis" / "reader_study.html").is_file()


@pytest.mark.parametrize("argv, message", [
    (["study", "create", "--real", "embryo", "--synthetic", "nowhere", "--per-source", "3", "--readers", "a",
      "--to", "x"], "no synthetic image set"),
    (["study", "create", "--real", "embryo", "--synthetic", "nowhere", "--per-source", "0", "--readers", "a",
      "--to", "x"], "--per-source"),
    (["study", "serve", "no-such-study"], "not a study folder"),
    (["study", "analyze", "no-such-study"], "not a study folder"),
    (["study", "serve", "no-such-study", "--port", "70000"], "--port"),
    (["study"], "required"),
])
def test_cli_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_without_the_study_extra_the_cli_says_how_to_install_it(monkeypatch, capsys):
    import synthmed.study as study

    real_find_spec = study.find_spec
    monkeypatch.setattr(study, "find_spec", lambda name: None if name == "starlette" else real_find_spec(name))
    assert main(["study", "analyze", "anything"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "pip install -e '.[study]'" in err[0]
