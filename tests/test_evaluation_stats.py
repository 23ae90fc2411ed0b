"""Standard errors and the paired test the benchmarks report."""

import math

import pytest

from difflm.evaluation.stats import mean_stderr, paired_comparison


def test_mean_stderr_of_outcomes_is_the_binomial_error():
    est = mean_stderr([1] * 90 + [0] * 10)
    assert est.value == pytest.approx(0.9) and est.n == 100
    assert est.stderr == pytest.approx(math.sqrt(0.9 * 0.1 * 100 / 99 / 100))


def test_paired_comparison_counts_only_discordant_examples():
    a = [True, True, False, True, False, True]
    b = [True, False, True, False, False, True]
    result = paired_comparison(a, b)
    assert (result.only_a, result.only_b, result.n) == (2, 1, 6)
    # Binomial(3, 1/2): P(X <= 1) = 4/8, two-sided 1.0
    assert result.p_value == pytest.approx(1.0)


def test_paired_comparison_exact_p_values():
    # 10 discordant, all for one side: 2 * 0.5**10
    a, b = [True] * 10 + [True] * 5, [False] * 10 + [True] * 5
    assert paired_comparison(a, b).p_value == pytest.approx(2 / 1024)
    assert paired_comparison(b, a).p_value == pytest.approx(2 / 1024)
    # 12 against 8 (the GSM bench's DLM vs AR): sum_{i<=8} C(20, i) / 2**20, doubled
    a = [True] * 12 + [False] * 8
    b = [False] * 12 + [True] * 8
    expected = 2 * sum(math.comb(20, i) for i in range(9)) / 2**20
    assert paired_comparison(a, b).p_value == pytest.approx(expected) and 0.4 < expected < 0.6
    # identical systems: nothing to tell apart
    assert paired_comparison([True, False], [True, False]).p_value == 1.0


def test_paired_comparison_needs_the_same_examples():
    with pytest.raises(ValueError, match="same examples"):
        paired_comparison([True], [True, False])
