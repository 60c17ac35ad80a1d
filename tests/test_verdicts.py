"""Verdict sentences (rlhf_lab/verdicts.py): a change is only called one when it is beyond its noise; with
no gold utility, held-out preferences, the reward model and the win rates speak instead."""

from __future__ import annotations

from rlhf_lab.verdicts import verdict_lines

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
    assert verdict_lines(PROXY_UP, "ppo") == ["ppo changed proxy reward by +1.500 ± 0.200 (beyond noise)."]
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
        "No gold, proxy, preference or judge figure was recorded for ppo, so there is nothing to judge."
    ]


def test_verdict_says_first_when_the_policy_did_not_move():
    still = {**gold(0.02, 0.05), "eval/ppo/kl": 0.0004}
    lines = verdict_lines(still, "ppo")
    assert lines[0].startswith("ppo's policy barely moved from sft's (KL 0.0004 nats per response, under 0.01)")
    assert "algo.lr" in lines[0] and "algo.kl_coef" in lines[0]
    assert lines[1] == "ppo's gold reward is within noise of sft's (Δ = +0.020 ± 0.050)."
    moved = verdict_lines({**gold(0.02, 0.05), "eval/ppo/kl": 0.05}, "ppo")
    assert moved == ["ppo's gold reward is within noise of sft's (Δ = +0.020 ± 0.050)."]


PREFERENCES = {
    "eval/heldout_preference_pairs": 342, "eval/dpo/pref_accuracy": 0.61, "eval/dpo/pref_accuracy_se": 0.03,
    "eval/sft/pref_accuracy": 0.51, "eval/sft/pref_accuracy_se": 0.03,
    "eval/dpo/pref_accuracy_diff": 0.10, "eval/dpo/pref_accuracy_diff_se": 0.04,
}


def test_without_gold_the_held_out_preferences_judge_the_policy_against_chance_and_sft():
    assert verdict_lines(PREFERENCES, "dpo") == [
        "On 342 held-out preference pairs, dpo's implicit reward (log-ratio to sft) ranks the preferred response first in "
        "0.610 ± 0.030 of them: better than chance; sft's, against the starting model, in 0.510 ± 0.030 (dpo ahead, beyond "
        "noise: Δ = +0.100 ± 0.040)."
    ]
    level = {**PREFERENCES, "eval/dpo/pref_accuracy": 0.54, "eval/dpo/pref_accuracy_diff": 0.03}
    assert verdict_lines(level, "dpo")[0].endswith(": within noise of chance (0.5); sft's, against the starting model, in "
                                                   "0.510 ± 0.030 (dpo within noise of it: Δ = +0.030 ± 0.040).")


def test_without_gold_win_rates_by_the_reward_model_and_the_judge_with_length_taken_out():
    metrics = {
        "eval/grpo/proxy_win_rate": 0.66, "eval/grpo/proxy_win_rate_low": 0.60, "eval/grpo/proxy_win_rate_high": 0.72,
        "eval/grpo/proxy_lc_win_rate": 0.55, "eval/grpo/proxy_lc_win_rate_low": 0.47, "eval/grpo/proxy_lc_win_rate_high": 0.63,
        "eval/grpo/judge_win_rate": 0.40, "eval/grpo/judge_win_rate_low": 0.33, "eval/grpo/judge_win_rate_high": 0.47,
        "eval/reward_model/pref_accuracy": 0.52, "eval/reward_model/pref_accuracy_se": 0.03,
        **{k.replace("dpo", "grpo"): v for k, v in PROXY_UP.items()},
    }
    assert verdict_lines(metrics, "grpo") == [
        "The reward model orders held-out pairs no better than chance (0.520 ± 0.030): what the policy optimised says "
        "little about these preferences.",
        "By the reward model, grpo's responses beat sft's in 0.660 [0.600, 0.720] of prompts (better, beyond noise); with "
        "length taken out, 0.550 [0.470, 0.630] (its interval holds 0.5: no difference shown): the preference comes from "
        "response length.",
        "By the AI judge (both orders), grpo's responses beat sft's in 0.400 [0.330, 0.470] of prompts (worse, beyond noise).",
    ]


def test_a_win_that_survives_length_control_is_not_blamed_on_length():
    metrics = {
        "eval/ppo/judge_win_rate": 0.7, "eval/ppo/judge_win_rate_low": 0.64, "eval/ppo/judge_win_rate_high": 0.76,
        "eval/ppo/judge_lc_win_rate": 0.62, "eval/ppo/judge_lc_win_rate_low": 0.55, "eval/ppo/judge_lc_win_rate_high": 0.69,
    }
    assert verdict_lines(metrics, "ppo") == [
        "By the AI judge (both orders), ppo's responses beat sft's in 0.700 [0.640, 0.760] of prompts (better, beyond noise); "
        "with length taken out, 0.620 [0.550, 0.690] (better, beyond noise)."
    ]
