"""The end-of-run summary says plainly whether the policy got better."""

from __future__ import annotations

from rlhf_lab.cli import summary_table, verdict

BETTER = {
    "eval/sft/gold_reward": 0.4, "eval/ppo/gold_reward": 4.2, "eval/ppo/win_rate": 0.98,
    "eval/sft/proxy_reward": -0.1, "eval/ppo/proxy_reward": 1.6,
    "eval/sft/response_length": 9.0, "eval/ppo/response_length": 11.7,
}


def test_verdict_reports_an_improvement_and_length_growth():
    lines = verdict(BETTER, "ppo")
    assert lines[0] == "ppo improved gold reward over sft by +3.800 (win rate 0.980)."
    assert lines[1].startswith("Responses are 1.30x longer than sft's")


def test_verdict_reports_over_optimisation_honestly():
    worse = {**BETTER, "eval/ppo/gold_reward": 0.1, "eval/ppo/win_rate": 0.31, "eval/ppo/response_length": 9.5}
    assert verdict(worse, "ppo") == [
        "ppo did NOT improve gold reward over sft: -0.300 (win rate 0.310).",
        "Proxy reward rose while gold reward did not: the policy is exploiting the reward model (over-optimisation).",
    ]


def test_verdict_without_gold_utility_says_what_it_cannot_know():
    proxy_only = {"eval/sft/proxy_reward": 0.0, "eval/ppo/proxy_reward": 0.5}
    assert verdict(proxy_only, "ppo") == ["ppo changed proxy reward by +0.500; this task has no gold utility, so that is all the run can show."]


def test_summary_table_puts_sft_and_policy_side_by_side():
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(summary_table({**BETTER, "reward/accuracy": 0.87}, "ppo"))
    text = console.export_text()
    assert "gold_reward" in text and "0.400" in text and "4.200" in text
    assert "reward-model held-out accuracy" in text and "0.870" in text
