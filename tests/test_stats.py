"""Standard errors, win-rate intervals and noise-aware verdicts, checked against hand arithmetic."""

from __future__ import annotations

import math

import pytest

from rlhf_lab.stats import beyond_noise, mean_and_se, paired_difference, verdict_lines, win_rate, win_rate_interval


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


LONGER = {
    "eval/sft/response_length": 10.0, "eval/ppo/response_length": 13.0,
    "eval/ppo/response_length_diff": 3.0, "eval/ppo/response_length_diff_se": 0.5,
}
PROXY_UP = {"eval/ppo/proxy_reward_diff": 1.5, "eval/ppo/proxy_reward_diff_se": 0.2}
WIN = {"eval/ppo/win_rate": 0.7, "eval/ppo/win_rate_low": 0.62, "eval/ppo/win_rate_high": 0.78}


def gold(delta: float, se: float) -> dict:
    return {"eval/ppo/gold_reward_diff": delta, "eval/ppo/gold_reward_diff_se": se}


def test_verdict_improvement_with_longer_responses():
    assert verdict_lines({**gold(0.8, 0.1), **PROXY_UP, **WIN, **LONGER}, "ppo") == [
        "ppo improved gold reward over sft by +0.800 ± 0.100 (win rate 0.700 [0.620, 0.780]).",
        "Responses are 1.30× longer than sft's (Δ = +3.00 ± 0.50 tokens): part of any reward gain may come from length alone.",
    ]


def test_verdict_regression_with_proxy_gain_is_over_optimisation():
    metrics = {**gold(-0.3, 0.1), **PROXY_UP, "eval/ppo/win_rate": 0.31, "eval/ppo/win_rate_low": 0.25, "eval/ppo/win_rate_high": 0.37}
    assert verdict_lines(metrics, "ppo") == [
        "ppo made gold reward worse than sft's: Δ = -0.300 ± 0.100 (win rate 0.310 [0.250, 0.370]).",
        "Proxy reward rose by +1.500 ± 0.200 while gold reward fell: the policy is exploiting the reward model (over-optimisation).",
    ]


def test_verdict_small_gold_difference_is_within_noise_not_over_optimisation():
    lines = verdict_lines({**gold(0.02, 0.05), **PROXY_UP, **WIN}, "ppo")
    assert lines == [
        "ppo's gold reward is within noise of sft's (Δ = +0.020 ± 0.050).",
        "Proxy reward rose by +1.500 ± 0.200 but gold reward did not move beyond noise: the reward model's gain did not transfer to gold reward.",
    ]
    assert not any("over-optimisation" in line for line in lines)


def test_verdict_small_gold_drop_is_not_over_optimisation():
    # -0.08 is negative but within 2 x 0.05 of zero.
    lines = verdict_lines({**gold(-0.08, 0.05), **PROXY_UP}, "ppo")
    assert lines[0] == "ppo's gold reward is within noise of sft's (Δ = -0.080 ± 0.050)."
    assert not any("over-optimisation" in line for line in lines)


def test_verdict_proxy_gain_within_noise_says_nothing_about_the_reward_model():
    metrics = {**gold(-0.3, 0.1), "eval/ppo/proxy_reward_diff": 0.3, "eval/ppo/proxy_reward_diff_se": 0.2}
    assert verdict_lines(metrics, "ppo") == ["ppo made gold reward worse than sft's: Δ = -0.300 ± 0.100."]


def test_verdict_without_gold_utility_reports_the_proxy_change():
    assert verdict_lines(PROXY_UP, "ppo") == [
        "ppo changed proxy reward by +1.500 ± 0.200 (beyond noise); this task has no gold utility, so that is all the run can show."
    ]
    small = {"eval/ppo/proxy_reward_diff": 0.1, "eval/ppo/proxy_reward_diff_se": 0.2}
    assert verdict_lines(small, "ppo")[0].startswith("ppo changed proxy reward by +0.100 ± 0.200 (within noise)")


def test_verdict_length_needs_both_a_real_difference_and_a_large_ratio():
    noisy = {**LONGER, "eval/ppo/response_length_diff_se": 2.0}  # 3.0 is within 2 x 2.0
    slightly = {**LONGER, "eval/ppo/response_length": 11.5}  # ratio 1.15
    assert len(verdict_lines({**gold(0.8, 0.1), **noisy}, "ppo")) == 1
    assert len(verdict_lines({**gold(0.8, 0.1), **slightly}, "ppo")) == 1


def test_verdict_names_the_baseline_and_copes_without_an_interval():
    metrics = {"eval/dpo/gold_reward_diff": 0.5, "eval/dpo/gold_reward_diff_se": 0.1, "eval/dpo/win_rate": 0.66}
    assert verdict_lines(metrics, "dpo", baseline="base") == ["dpo improved gold reward over base by +0.500 ± 0.100 (win rate 0.660)."]


def test_verdict_without_any_difference_says_so():
    assert verdict_lines({"eval/ppo/gold_reward": 1.0}, "ppo") == [
        "No paired gold or proxy reward difference was recorded for ppo, so there is nothing to judge."
    ]


def test_verdict_says_first_when_the_policy_did_not_move():
    still = {**gold(0.02, 0.05), "eval/ppo/kl": 0.0004}
    lines = verdict_lines(still, "ppo")
    assert lines[0].startswith("ppo's policy barely moved from sft's (KL 0.0004 nats per response, under 0.01)")
    assert "algo.lr" in lines[0] and "algo.kl_coef" in lines[0]
    assert lines[1] == "ppo's gold reward is within noise of sft's (Δ = +0.020 ± 0.050)."
    moved = verdict_lines({**gold(0.02, 0.05), "eval/ppo/kl": 0.05}, "ppo")
    assert moved == ["ppo's gold reward is within noise of sft's (Δ = +0.020 ± 0.050)."]
