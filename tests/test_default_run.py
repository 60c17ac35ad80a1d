"""The default experiment meets its targets: a learned reward model, and a PPO policy that is really better.

This is the whole default run (about 2-3 minutes on 2 cores), with only the logger switched to csv.
"""

from __future__ import annotations

from conftest import read_metrics, run_cli


def test_default_run_meets_targets(tmp_path):
    result = run_cli(["logger=csv", "trainer.progress_bar=none", f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    m = read_metrics(tmp_path / "run")
    assert m["reward/accuracy"] >= 0.80, m
    assert m["eval/ppo/win_rate"] >= 0.75, m
    assert m["eval/ppo/gold_reward"] > m["eval/sft/gold_reward"] + 1.0, m
    assert m["eval/ppo/proxy_reward"] > m["eval/sft/proxy_reward"], m
    # The policy moved, but stayed near the reference.
    assert 0.1 < m["eval/ppo/kl"] < 20.0, m
