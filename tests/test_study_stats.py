"""Reader-study statistics against hand-worked published tables and scipy."""

from __future__ import annotations

import math

import pytest
from scipy import stats as scipy_stats

from synthmed.study.stats import auc, binomial_test, cohen_kappa, fleiss_kappa, pairwise_kappas, proportion_ci, summary


def test_cohen_kappa_matches_the_worked_two_rater_table():
    # the textbook 2x2 table (Wikipedia, "Cohen's kappa", simple example): 50 items, both yes 20, A yes / B no 5,
    # A no / B yes 10, both no 15: p_o = 0.70, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.50, kappa = 0.40
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.40)


def test_cohen_kappa_reproduces_the_renal_ldm_reader_numbers():
    # renal-ldm: 20 real + 20 synthetic; its weakest reader had 12 of 40 right and kappa -0.40. With a balanced
    # truth p_e = 0.5 whatever the reader says, so kappa = 2 * accuracy - 1: 12/40 -> -0.40, 18.5/40 -> -0.075
    truth = [1] * 20 + [0] * 20
    said = [1] * 6 + [0] * 14 + [1] * 14 + [0] * 6  # 6 + 6 = 12 correct, and 20 "synthetic" answers
    assert sum(t == s for t, s in zip(truth, said)) == 12
    assert cohen_kappa(truth, said) == pytest.approx(-0.40)
    lopsided = [1] * 12 + [0] * 8 + [1] * 19 + [0] * 1  # 13 correct, 31 "synthetic": still 2 * 13/40 - 1
    assert cohen_kappa(truth, lopsided) == pytest.approx(2 * 13 / 40 - 1)


def test_cohen_kappa_edges():
    assert cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    assert cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # p_e = 1: undefined, not 0 or 1
    assert cohen_kappa([], []) is None
    with pytest.raises(ValueError):
        cohen_kappa([1, 0], [1])


def test_fleiss_kappa_matches_the_worked_fleiss_table():
    # the worked example of Fleiss' kappa (Wikipedia, "Fleiss' kappa"): 10 subjects, 14 raters, 5 categories;
    # p_j = 0.143 0.200 0.279 0.150 0.229, P_bar = 0.378, P_e = 0.213, kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_by_hand_and_with_two_raters():
    # every subject split 1:2 over 3 raters: P_i = (1 + 4 - 3) / 6 = 1/3; p = (1/3, 2/3), P_e = 5/9;
    # kappa = (1/3 - 5/9) / (4/9) = -0.5
    assert fleiss_kappa([[1, 2]] * 8) == pytest.approx(-0.5)
    assert fleiss_kappa([[2, 0], [0, 2], [2, 0], [0, 2]]) == pytest.approx(1.0)
    assert fleiss_kappa([[3, 0]] * 4) is None  # one category only
    with pytest.raises(ValueError):
        fleiss_kappa([[2, 0], [1, 0]])  # unequal number of raters


def test_binomial_test_and_interval_are_scipys_exact_ones():
    for k, n in ((12, 40), (25, 40), (178, 300), (0, 10), (10, 10)):
        assert binomial_test(k, n) == pytest.approx(scipy_stats.binomtest(k, n, 0.5).pvalue)
    # by hand: 8 of 8 correct, two-sided: 2 * 0.5**8
    assert binomial_test(8, 8) == pytest.approx(2 * 0.5 ** 8)
    assert binomial_test(4, 8) == pytest.approx(1.0)
    lo, hi = proportion_ci(12, 40)
    # Clopper-Pearson bounds are beta quantiles
    assert lo == pytest.approx(scipy_stats.beta.ppf(0.025, 12, 29)) and hi == pytest.approx(scipy_stats.beta.ppf(0.975, 13, 28))
    assert proportion_ci(0, 0) is None and binomial_test(0, 0) is None


def test_auc_pairwise_kappas_and_summary():
    assert auc([3, 4, 5], [-1, -2]) == 1.0 and auc([-5], [5]) == 0.0 and auc([1, 1], [1]) == 0.5
    pairs = pairwise_kappas({"a": {1: 0, 2: 1, 3: 1}, "b": {1: 0, 2: 1, 3: 1}, "c": {1: 1, 2: 0}})
    assert [(p["reader_a"], p["reader_b"], p["n"]) for p in pairs] == [("a", "b", 3), ("a", "c", 2), ("b", "c", 2)]
    assert pairs[0]["kappa"] == pytest.approx(1.0) and pairs[1]["kappa"] == pytest.approx(-1.0)
    s = summary([0.2, None, -0.4, 0.5])
    assert s["n"] == 3 and s["min"] == -0.4 and s["max"] == 0.5 and math.isclose(s["mean"], 0.1)  # (0.2 - 0.4 + 0.5) / 3
