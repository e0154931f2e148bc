"""`synthmed study analyze`: every number against values worked out by hand for three scripted readers, and the
export files."""

from __future__ import annotations

import csv
import json

import pytest

from studydata import new_study
from synthmed.study import db
from synthmed.study.analyze import analyze_study

CRITERIA = {"all": ["sharp membrane", "no artefact"]}


def scripted(made, rule):
    """Answer every task of every reader with rule(reader, truth) -> (says_synthetic, confidence, criteria_met)."""
    with db.connect(made.folder) as con:
        tasks = con.execute("SELECT t.id, t.reader_id, r.name, t.image_id, i.synthetic FROM tasks t "
                            "JOIN readers r ON r.id = t.reader_id JOIN images i ON i.id = t.image_id").fetchall()
        for t in tasks:
            says, conf, met = rule(t["name"], t["synthetic"])
            db.record_answer(con, t["reader_id"], t["id"], t["image_id"], says_synthetic=says, confidence=conf,
                             plausible=None if met is None else int(len(met) == 2), criteria_met=met, note=None,
                             client_ms=1000)


def readers_rule(name, synthetic):
    # perfect: always right (confidence 5); inverted: always wrong (5); yes: "synthetic" for everything (3);
    # real images meet both criteria for everyone, synthetic ones only the first
    met = [0, 1] if not synthetic else [0]
    return {"perfect": (synthetic, 5, met), "inverted": (1 - synthetic, 5, met), "yes": (1, 3, met)}[name]


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    made = new_study(root, readers=("perfect", "inverted", "yes"), per_source=4, mode="both", criteria=CRITERIA)
    scripted(made, readers_rule)
    return made, analyze_study(made.folder, root / "out"), root / "out"


def test_per_reader_numbers_by_hand(analysed):
    _, result, _ = analysed
    per = {p["reader"]: p for p in result["turing"]["per_reader"]}
    p, i, y = per["perfect"], per["inverted"], per["yes"]
    # 4 real + 4 synthetic per reader
    assert (p["n"], p["correct"], p["accuracy"], p["sensitivity"], p["specificity"]) == (8, 8, 1.0, 1.0, 1.0)
    assert (i["correct"], i["accuracy"], i["sensitivity"], i["specificity"]) == (0, 0.0, 0.0, 0.0)
    assert (y["correct"], y["accuracy"], y["sensitivity"], y["specificity"]) == (4, 0.5, 1.0, 0.0)
    assert p["kappa"] == pytest.approx(1.0) and i["kappa"] == pytest.approx(-1.0)
    assert y["kappa"] == pytest.approx(0.0)  # p_o = 0.5, p_e = 0.5 * 1 + 0.5 * 0 = 0.5
    assert p["p_value_vs_chance"] == pytest.approx(2 * 0.5 ** 8) and i["p_value_vs_chance"] == pytest.approx(2 * 0.5 ** 8)
    assert y["p_value_vs_chance"] == pytest.approx(1.0)
    assert p["auc_confidence"] == 1.0 and i["auc_confidence"] == 0.0 and y["auc_confidence"] == 0.5
    k = result["turing"]["kappa_vs_truth"]
    assert k["mean"] == pytest.approx(0.0) and k["min"] == pytest.approx(-1.0) and k["max"] == pytest.approx(1.0)


def test_across_readers_and_per_image_by_hand(analysed):
    _, result, _ = analysed
    t = result["turing"]
    # every image: 1 of the 3 readers says one thing, 2 the other -> Fleiss' kappa -0.5 (see test_study_stats)
    assert t["fleiss_kappa"] == {"kappa": pytest.approx(-0.5), "readers": 3, "images": 8}
    # majority: "synthetic" for every image (perfect + yes on synthetic, inverted + yes on real): 4 of 8 right
    assert t["majority_vote"] == {"correct": 4, "n": 8, "ties": 0, "accuracy": 0.5}
    pairs = {(p["reader_a"], p["reader_b"]): p["kappa"] for p in t["pairwise_kappa"]}
    assert pairs[("perfect", "inverted")] == pytest.approx(-1.0) and pairs[("perfect", "yes")] == pytest.approx(0.0)
    fractions = {(im["synthetic"], round(im["fraction_correct"], 4)) for im in t["per_image"]}
    assert fractions == {(1, round(2 / 3, 4)), (0, round(1 / 3, 4))} and len(t["per_image"]) == 8
    assert t["pooled"]["k"] == 12 and t["pooled"]["n"] == 24
    called = t["called_synthetic_by_source"]
    assert (called["real"]["k"], called["real"]["n"]) == (8, 12) and (called["tiny"]["k"], called["tiny"]["n"]) == (8, 12)


def test_plausibility_by_hand(analysed):
    _, result, _ = analysed
    p = result["plausibility"]
    assert p["sources"] == ["real", "tiny"]
    overall = p["by_class"][-1]
    assert overall["class"] == "all classes"
    assert (overall["real"]["k"], overall["real"]["n"], overall["real"]["rate"]) == (12, 12, 1.0)
    assert (overall["tiny"]["k"], overall["tiny"]["n"], overall["tiny"]["rate"]) == (0, 12, 0.0)
    lo, hi = overall["tiny"]["ci95"]
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 12))  # exact upper bound for 0 of 12
    failed: dict = {}
    for f in p["criterion_failures"]:  # one row per source, class and criterion; summed over classes here
        failed[(f["source"], f["criterion"])] = failed.get((f["source"], f["criterion"]), 0) + f["failed"]
    assert failed == {("real", "sharp membrane"): 0, ("real", "no artefact"): 0,
                      ("tiny", "sharp membrane"): 0, ("tiny", "no artefact"): 12}


def test_exports(analysed):
    made, result, out = analysed
    for f in ("analysis.json", "answers.csv", "readers.csv", "images.csv", "pairwise_kappa.csv", "plausibility.csv",
              "criterion_failures.csv", "reader_study.html"):
        assert (out / f).is_file(), f
    rows = list(csv.DictReader((out / "answers.csv").open()))
    assert len(rows) == 24 and {r["reader"] for r in rows} == {"perfect", "inverted", "yes"}
    assert json.loads((out / "analysis.json").read_text())["turing"]["majority_vote"]["correct"] == 4
    html = (out / "reader_study.html").read_text()
    assert "Synthetic images that fooled most readers" in html and html.count("data:image/png;base64,") == 4
    assert "Fleiss" in html and "Criteria not met" in html and "test</b> split" in html


def test_a_study_in_progress_is_analysed_and_flagged(tmp_path):
    made = new_study(tmp_path, readers=("a", "b"))
    with db.connect(made.folder) as con:
        t = con.execute("SELECT id, image_id FROM tasks WHERE reader_id = 1 ORDER BY position LIMIT 1").fetchone()
        db.record_answer(con, 1, t["id"], t["image_id"], says_synthetic=1, confidence=2, plausible=None,
                         criteria_met=None, note=None, client_ms=None)
    result = analyze_study(made.folder)
    assert not result["complete"] and result["answers"] == 1
    per = {p["reader"]: p for p in result["turing"]["per_reader"]}
    assert per["a"]["n"] == 1 and per["b"]["n"] == 0 and per["b"]["kappa"] is None
    assert result["turing"]["fleiss_kappa"]["kappa"] is None  # one reader so far
    assert (made.folder / "analysis" / "reader_study.html").is_file()
