"""benchmarks/generator_quality.py's verdict logic: the synthetic side is measured against the best
real-only row over both step budgets, with a paired interval over the subsets."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
gq = pytest.importorskip("generator_quality")


def row(protocol, values, real_only=None):
    if real_only is None:
        real_only = protocol.split(" ")[0] in gq.REAL_ONLY
    return {"protocol": protocol, "filter": "none", "metric": "balanced_accuracy", "values": values,
            "mean": sum(values) / len(values), "real_only": real_only}


def part(rows):
    return {"parts": {"50": {"downstream": gq.compare_to_real_only(rows)}}}


def test_a_longer_real_only_run_raises_the_bar():
    rows = [row("baseline", [0.80, 0.81, 0.82]), row("traditional", [0.82, 0.83, 0.84]),
            row("transfer", [0.85, 0.86, 0.87]), row("traditional (1000 steps)", [0.84, 0.85, 0.86])]
    out = {r["protocol"]: r for r in part(rows)["parts"]["50"]["downstream"]}
    assert out["transfer"]["best_real_only"] == "traditional (1000 steps)"
    assert out["transfer"]["vs_best_real_only"]["mean"] == pytest.approx(0.01)
    assert out["traditional (1000 steps)"]["real_only"] and "vs_best_real_only" not in out["traditional (1000 steps)"]
    assert out["transfer"]["vs_baseline"]["mean"] == pytest.approx(0.05)  # always against the plain baseline
    v = gq.verdicts(part(rows))["50"]
    assert not v["met"] and "traditional (1000 steps)" in v["by"]  # +0.01 < the 0.02 target


def test_the_50_target_needs_the_margin_and_an_interval_above_zero():
    real = [row("baseline", [0.80, 0.81, 0.82]), row("traditional", [0.80, 0.81, 0.82])]
    steady = real + [row("transfer", [0.83, 0.84, 0.85])]  # +0.03 on every subset
    assert gq.verdicts(part(steady))["50"]["met"]
    noisy = real + [row("transfer", [0.90, 0.78, 0.86])]  # +0.03 on average, interval spans 0
    assert not gq.verdicts(part(noisy))["50"]["met"]


def test_real_only_comes_from_the_row_not_its_name():
    """A synthetic protocol whose name happens to start like a real-only one is still synthetic."""
    rows = [row("baseline", [0.80, 0.81, 0.82]), row("baseline + synthetic", [0.90, 0.91, 0.92], real_only=False)]
    out = {r["protocol"]: r for r in part(rows)["parts"]["50"]["downstream"]}
    assert out["baseline + synthetic"]["best_real_only"] == "baseline"
    assert gq.verdicts(part(rows))["50"]["met"]
