"""Standard errors, win-rate intervals and noise-aware verdicts, checked against hand arithmetic."""

from __future__ import annotations

import math

import pytest

from rlhf_lab.stats import (
    beyond_noise, length_controlled_win_rate, mean_and_se, paired_difference, preference_outcomes, win_rate, win_rate_interval,
)


def test_mean_and_se_of_four_values():
    # mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, sample variance 5/3; se = sqrt(5/3)/sqrt(4)
    mean, se = mean_and_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5
    assert se == pytest.approx(math.sqrt(5 / 3) / 2)


def test_mean_and_se_of_one_value_has_zero_se_and_of_none_is_an_error():
    assert mean_and_se([3.0]) == (3.0, 0.0)
    with pytest.raises(ValueError):
        mean_and_se([])


def test_paired_difference_uses_per_item_differences():
    # differences 2, 3, 0: mean 5/3; squared deviations 1/9 + 16/9 + 25/9 = 42/9, variance 21/9; se = sqrt(21/9 / 3)
    mean, se = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 4.0])
    assert mean == pytest.approx(5 / 3)
    assert se == pytest.approx(math.sqrt(21 / 9 / 3))


def test_paired_difference_removes_shared_prompt_spread():
    # Prompts differ a lot, but the candidate is exactly 1 better on each: no noise left after pairing.
    assert paired_difference([11.0, 2.0, 33.0], [10.0, 1.0, 32.0]) == (1.0, 0.0)


def test_paired_difference_rejects_unpaired_lists():
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])


def test_win_rate_counts_ties_as_half():
    # win, tie, win, loss: (1 + 0.5 + 1 + 0) / 4
    assert win_rate([5.0, 5.0, 5.0, 1.0], [1.0, 5.0, 2.0, 2.0]) == 0.625
    with pytest.raises(ValueError):
        win_rate([1.0], [1.0, 2.0])


def test_win_rate_interval_contains_the_estimate_and_is_deterministic():
    candidate, baseline = [5.0, 5.0, 5.0, 1.0, 3.0, 4.0], [1.0, 5.0, 2.0, 2.0, 0.0, 9.0]
    low, high = win_rate_interval(candidate, baseline, seed=7)
    assert low <= win_rate(candidate, baseline) <= high
    assert win_rate_interval(candidate, baseline, seed=7) == (low, high)


def test_win_rate_interval_narrows_with_more_items():
    # Three wins and one loss, repeated: the same 0.75 win rate measured on 4 and on 400 items.
    small = win_rate_interval([1.0, 1.0, 1.0, 0.0], [0.5] * 4)
    large = win_rate_interval([1.0, 1.0, 1.0, 0.0] * 100, [0.5] * 400)
    assert large[1] - large[0] < (small[1] - small[0]) / 3


def test_win_rate_interval_matches_the_normal_approximation_on_many_items():
    # p = 0.75 on 400 items: se = sqrt(0.75 * 0.25 / 400) = 0.02165, 95% interval 0.75 -/+ 1.96 * 0.02165
    # Tolerance 0.003 covers the 1/400 grid of possible rates; a 90% interval (0.75 -/+ 1.645 * 0.02165)
    # would miss by 0.0068.
    low, high = win_rate_interval([1.0, 1.0, 1.0, 0.0] * 100, [0.5] * 400, level=0.95, resamples=20000)
    assert low == pytest.approx(0.75 - 1.96 * 0.02165, abs=0.003)
    assert high == pytest.approx(0.75 + 1.96 * 0.02165, abs=0.003)


def test_win_rate_interval_of_all_wins_is_a_point():
    assert win_rate_interval([2.0, 3.0], [1.0, 1.0]) == (1.0, 1.0)


def test_win_rate_interval_rejects_a_bad_level():
    with pytest.raises(ValueError):
        win_rate_interval([1.0], [0.0], level=95)


def test_beyond_noise_compares_with_two_standard_errors():
    assert beyond_noise(0.11, 0.05)  # 0.11 > 0.10
    assert beyond_noise(-0.11, 0.05)
    assert not beyond_noise(0.09, 0.05)
    assert not beyond_noise(0.10, 0.05)  # equal is not beyond
    assert beyond_noise(0.06, 0.05, z=1.0)
    assert beyond_noise(1e-9, 0.0)
    assert not beyond_noise(0.0, 0.0)


def test_length_controlled_win_rate_reads_the_regression_off_at_equal_lengths():
    # Longer answers (+10 tokens) win 9 of 10, shorter ones (-10) 5 of 10: raw 0.70. With two points the
    # logistic fit is exact, sigmoid(theta_0 +- theta_1 t) = 0.9 and 0.5, so theta_0 = (logit 0.9 + logit 0.5) / 2
    # = 1.0986 and the length-controlled rate is sigmoid(1.0986) = 0.75.
    candidate = [1] * 9 + [0] + [1] * 5 + [0] * 5
    baseline = [0.5] * 20
    longer = [10] * 10 + [-10] * 10
    rate, low, high = length_controlled_win_rate(candidate, baseline, longer, seed=3)
    assert win_rate(candidate, baseline) == pytest.approx(0.70)
    assert rate == pytest.approx(0.75, abs=1e-4)
    assert low < rate < high
    assert (rate, low, high) == length_controlled_win_rate(candidate, baseline, longer, seed=3)


def test_length_controlled_win_rate_is_the_raw_rate_when_lengths_do_not_differ_and_half_when_length_explains_all():
    candidate, baseline = [1, 0, 0.5, 1], [0, 1, 0.5, 0]
    assert length_controlled_win_rate(candidate, baseline, [0, 0, 0, 0])[0] == pytest.approx(win_rate(candidate, baseline), abs=1e-6)
    # Every longer answer wins, every shorter one loses, in equal numbers: a pure length judge.
    rate, low, high = length_controlled_win_rate([1, 1, 0, 0] * 5, [0.5] * 20, [5, 5, -5, -5] * 5)
    assert win_rate([1, 1, 0, 0] * 5, [0.5] * 20) == 0.5 and rate == pytest.approx(0.5, abs=1e-6)
    # Each resample refits the regression on its own items' outcomes and lengths: a pure length judge stays
    # near 1/2 in every resample (outcomes drawn apart from their lengths would spread to about [0.43, 0.57]).
    rate, low, high = length_controlled_win_rate([1, 1, 0, 0] * 50, [0.5] * 200, [5, 5, -5, -5] * 50)
    assert low < 0.5 < high and high - low < 0.1
    with pytest.raises(ValueError):
        length_controlled_win_rate([1, 0], [0, 1], [1])


def test_preference_outcomes_average_each_records_pairs():
    # Record 1: 3 responses ranked 2 > 0 > 1, scores (1.0, 3.0, 2.0): pairs (2,0) +1 right, (2,1) -1 wrong,
    # (0,1) -2 wrong -> accuracy 1/3, margin -2/3. Record 2: a tie, accuracy 1/2, margin 0. Record 3: no pair.
    accuracy, margin = preference_outcomes([[1.0, 3.0, 2.0], [4.0, 4.0], [1.0]], [[(2, 0), (2, 1), (0, 1)], [(0, 1)], []])
    assert accuracy == pytest.approx([1 / 3, 0.5]) and margin == pytest.approx([-2 / 3, 0.0])
    with pytest.raises(ValueError):
        preference_outcomes([[1.0]], [])
