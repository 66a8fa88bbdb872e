"""The evaluation job's statistics: bootstrap intervals of rates and of the corpus perplexity,
paired differences between mixes, seeded draws (``cleancurate.jobs.evaluation.stats``)."""

from __future__ import annotations

import math

import pytest

from cleancurate.jobs.evaluation import stats


def test_bootstrap_of_a_rate_gives_the_binomial_interval():
    iv = stats.bootstrap_ci([0, 1] * 50, n_boot=4000, seed=7)
    assert iv.value == 0.5 and iv.n == 100
    # normal approximation: 0.5 +- 1.96 * sqrt(0.25 / 100) = [0.402, 0.598]
    assert 0.38 <= iv.ci_low <= 0.42 and 0.58 <= iv.ci_high <= 0.62


def test_bootstrap_is_seeded_and_degenerate_samples_have_zero_width():
    scores = [0.1 * i ** 1.5 for i in range(30)]  # helpfulness-like scores: the interval depends on the draws
    a = stats.bootstrap_ci(scores, seed=3)
    assert a == stats.bootstrap_ci(scores, seed=3)
    b = stats.bootstrap_ci(scores, seed=4)
    assert a.value == b.value and (a.ci_low, a.ci_high) != (b.ci_low, b.ci_high)
    assert stats.bootstrap_ci([1, 1, 1, 1]) == stats.Interval(1.0, 1.0, 1.0, 4)
    empty = stats.bootstrap_ci([])
    assert empty.n == 0 and math.isnan(empty.value)
    assert stats.label_seed(17, "m", "A") == stats.label_seed(17, "m", "A") != stats.label_seed(17, "m", "B")


def test_perplexity_statistic_is_the_token_weighted_corpus_perplexity():
    # rows: (summed nll, tokens); exp((2 + 6) / (2 + 2)) = e^2, not the mean of e^1 and e^3
    iv = stats.bootstrap_ci([(2.0, 2), (6.0, 2)], stats.perplexity_stat, seed=1)
    assert iv.value == pytest.approx(math.exp(2.0))
    assert iv.ci_low == pytest.approx(math.exp(1.0)) and iv.ci_high == pytest.approx(math.exp(3.0))


def test_paired_difference_uses_the_same_prompts_for_both_mixes():
    a = [1, 1, 0, 1, 0, 1, 1, 0]
    same = stats.paired_difference_ci(a, a, seed=2)
    assert (same.value, same.ci_low, same.ci_high, same.n) == (0.0, 0.0, 0.0, 8)
    b = [0, 1, 0, 0, 0, 1, 0, 0]  # b is never above a: every paired resample has a - b >= 0
    d = stats.paired_difference_ci(a, b, seed=2)
    assert d.value == pytest.approx(0.375)
    assert 0.0 <= d.ci_low <= d.value <= d.ci_high <= 1.0
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_difference_ci([1, 0], [1], seed=0)
