"""The end-of-run summary table puts the baseline and the optimised policy side by side, with their noise.

The verdict sentences under it are :func:`rlhf_lab.verdicts.verdict_lines` (tests/test_verdicts.py).
"""

from __future__ import annotations

from rlhf_lab.cli import summary_table

METRICS = {
    "eval/sft/gold_reward": 0.4, "eval/sft/gold_reward_se": 0.05, "eval/ppo/gold_reward": 4.2, "eval/ppo/gold_reward_se": 0.07,
    "eval/ppo/win_rate": 0.98, "eval/ppo/win_rate_low": 0.95, "eval/ppo/win_rate_high": 1.0,
    "eval/sft/kl": 0.0, "eval/ppo/kl": 5.6, "eval/ppo/kl_se": 0.3, "reward/accuracy": 0.87,
}


def test_summary_table_puts_sft_and_policy_side_by_side_with_standard_errors():
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(summary_table(METRICS, "ppo"))
    text = console.export_text()
    assert "0.400 ± 0.050" in text and "4.200 ± 0.070" in text
    # A figure without its SE is printed bare; a missing figure is a dash, never a made-up number.
    assert "5.600 ± 0.300" in text and "0.000 " in text
    assert "win rate by gold [95%]" in text and "0.980 [0.950, 1.000]" in text
    assert "reward-model held-out accuracy" in text and "0.870" in text
    assert "proxy_reward" not in text


def test_summary_table_shows_the_best_of_n_closed_form_beside_the_estimate():
    from rich.console import Console

    console = Console(width=160, record=True)
    console.print(summary_table({"eval/sft/kl": 0.0, "eval/best_of_n/kl": 1.1, "eval/best_of_n/kl_closed_form": 1.2041}, "best_of_n"))
    assert "1.204" in console.export_text()


def test_summary_table_shows_held_out_preferences_and_every_win_rate_with_its_interval():
    from rich.console import Console

    metrics = {
        "eval/heldout_preference_pairs": 342, "eval/sft/pref_accuracy": 0.506, "eval/sft/pref_accuracy_se": 0.034,
        "eval/dpo/pref_accuracy": 0.608, "eval/dpo/pref_accuracy_se": 0.033, "eval/reward_model/pref_accuracy": 0.7,
        "eval/reward_model/pref_accuracy_se": 0.02, "reward/accuracy": 0.69,
        "eval/dpo/judge_lc_win_rate": 0.55, "eval/dpo/judge_lc_win_rate_low": 0.5, "eval/dpo/judge_lc_win_rate_high": 0.6,
    }
    console = Console(width=160, record=True)
    console.print(summary_table(metrics, "dpo"))
    lines = console.export_text().splitlines()
    assert any("pref. accuracy (342 held-out pairs)" in line and "0.506 ± 0.034" in line and "0.608 ± 0.033" in line for line in lines)
    # The reward model's figure from evaluation (with its SE) takes the place of the stage's bare one.
    assert any("reward-model pref. accuracy" in line and "0.700 ± 0.020" in line for line in lines)
    assert not any("0.690" in line for line in lines)
    assert any("LC win rate by AI judge [95%]" in line and "0.550 [0.500, 0.600]" in line for line in lines)
    assert not any("win rate by gold" in line for line in lines)
