"""Several processes for one run: data sharded by global batch, and the real CLI on 2 CPU processes (gloo)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from conftest import TINY_FEEDBACK, TINY_UPSTREAM, read_metrics, run_cli
from rlhf_lab.resume import rank_share, shuffled_loader


@pytest.mark.parametrize("size,world", [(8, 2), (7, 2), (5, 3), (1, 2), (2, 3), (9, 4)])
def test_rank_shares_cover_a_batch_in_order_with_sizes_within_one(size, world):
    batch = list(range(100, 100 + size))
    shares = [rank_share(batch, rank, world) for rank in range(world)]
    assert all(shares), shares  # every rank trains every step
    if size >= world:
        assert sum(shares, []) == batch  # contiguous parts, in order, nothing repeated
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    else:  # ranks past the end repeat an item
        assert [s[0] for s in shares] == [batch[r % size] for r in range(world)]


def _epoch(loader) -> list[list[int]]:
    out = []
    for batch in loader:
        out.append(batch.tolist())
        loader.completed += 1
    return out


def test_sharded_loaders_split_every_global_batch_of_the_unsharded_order_and_resume_alike():
    make = lambda: shuffled_loader(list(range(11)), 4, torch.tensor, shuffle=True, seed=3)  # noqa: E731
    whole = make()
    ranks = [make(), make()]
    for rank, loader in enumerate(ranks):
        loader.shard(rank, 2)
    for _ in range(2):  # two epochs: the second order differs and both ranks follow it
        expected = _epoch(whole)
        parts = [_epoch(loader) for loader in ranks]
        assert [a + b for a, b in zip(*parts)] == expected
        assert [len(p) for p in parts[0]] == [2, 2, 2]  # 4 + 4 + 3 items: 2|2, 2|2, 2|1
        assert [len(p) for p in parts[1]] == [2, 2, 1]
    # A rank restored mid-epoch continues with its part of the next global batch.
    resumed = make()
    resumed.shard(1, 2)
    resumed.load_state_dict({"epoch": 2, "completed": 1})
    third = _epoch(whole)
    assert _epoch(resumed) == [rank_share(b, 1, 2) for b in third[1:]]


# Batch sizes divisible by 2 (they are global); a checkpoint every second step, so a kill lands between two.
ARGS = [
    *TINY_UPSTREAM, *TINY_FEEDBACK, "algo.total_episodes=64", "algo.rollout_batch_size=16", "algo.minibatch_size=8",
    "algo.ppo_epochs=1", "algo.kl_controller=adaptive", "algo.kl_horizon=64", "logger=csv",
]
TWO = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]

# Loaded at start-up by every Python process given this directory on PYTHONPATH; it acts only in rank 1
# (the environment rank 0 gives its workers), which it SIGKILLs after its third policy step.
KILL_RANK_1 = """
import os
if os.environ.get("RANK") == "1":
    import signal
    from lightning.pytorch.callbacks import Callback
    import rlhf_lab.plugin_manager as plugin_manager
    from rlhf_lab import hookimpl

    class KillAfter(Callback):
        seen = 0
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            KillAfter.seen += 1
            if KillAfter.seen == 3:
                os.kill(os.getpid(), signal.SIGKILL)

    class Killer:
        @hookimpl
        def rlhf_lab_callbacks(self, cfg, stage):
            return [KillAfter()] if stage == "policy" else []

    plugin_manager._PM = plugin_manager.build_plugin_manager(extra_plugins=(Killer(),))
"""


def _figures(run_dir) -> dict:
    return {k: v for k, v in read_metrics(run_dir).items() if not k.startswith("time/")}


def test_two_processes_through_the_cli_build_once_write_once_match_one_process_and_resume_after_a_rank_dies(tmp_path):
    one = run_cli([*ARGS, f"cache_dir={tmp_path / 'cache1'}", f"hydra.run.dir={tmp_path / 'one'}"], cwd=tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli([*ARGS, *TWO, f"cache_dir={tmp_path / 'cache2'}", f"hydra.run.dir={tmp_path / 'two'}"], cwd=tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]

    # Rank 0 alone built each artifact (one per stage, no leftovers) and wrote the outputs, once.
    cache = tmp_path / "cache2"
    for stage in ("base", "sft", "preferences", "reward_model"):
        assert len([p for p in (cache / stage).iterdir()]) == 1, stage
    run = tmp_path / "two"
    assert sorted(p.name for p in (run / "csv").iterdir()) == ["eval", "policy", "reward", "sft"]
    assert (run / "ranks" / "rank1.log").is_file() and not (run / "ranks" / "spec.pkl").exists()
    rank1 = (run / "ranks" / "rank1.log").read_text()
    assert "[rank 1]" in rank1 and "evaluate" not in rank1  # it trained; it never evaluated
    assert list(run.glob("**/metrics.json")) == [run / "metrics.json"]
    log = (run / "rlhf_lab.log").read_text()
    assert "started ranks 1-1" in log

    # The same figures as one process, within noise: a global batch is split, not repeated, so SFT and
    # reward-model training take the same steps on the same data (only the float sums are grouped
    # otherwise); the policy samples with other random streams.
    a, b = _figures(tmp_path / "one"), _figures(run)
    assert abs(a["sft/val_loss"] - b["sft/val_loss"]) < 0.01
    assert abs(a["reward/accuracy"] - b["reward/accuracy"]) < 0.05
    for figure in ("gold_reward", "proxy_reward"):
        se = (a[f"eval/ppo/{figure}_se"] ** 2 + b[f"eval/ppo/{figure}_se"] ** 2) ** 0.5
        assert abs(a[f"eval/ppo/{figure}"] - b[f"eval/ppo/{figure}"]) < 3 * se, figure
    assert b["eval/ppo/kl"] < 3 * max(a["eval/ppo/kl"], 0.05)

    # Rank 1 killed in the policy stage: the run fails naming it; the same command started again
    # resumes from the last checkpoint with every rank's random streams and ends where `two` ended.
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(KILL_RANK_1)
    args = [*ARGS, *TWO, f"cache_dir={tmp_path / 'cache3'}"]
    env = {"PYTHONPATH": os.pathsep.join([str(inject), os.environ.get("PYTHONPATH", "")])}
    killed = run_cli([*args, f"hydra.run.dir={tmp_path / 'killed'}"], cwd=tmp_path, env=env)
    assert killed.returncode != 0
    assert "rank 1 was killed by signal SIGKILL" in killed.stderr, killed.stderr[-3000:]
    assert not (tmp_path / "killed" / "metrics.json").exists()
    again = run_cli([*args, f"hydra.run.dir={tmp_path / 'again'}"], cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "policy: resuming from " in (tmp_path / "again" / "rlhf_lab.log").read_text()
    assert _figures(tmp_path / "again") == b
    policy = (run / "policy" / "model.safetensors").read_bytes()
    assert (tmp_path / "again" / "policy" / "model.safetensors").read_bytes() == policy
    json.loads((tmp_path / "again" / "paths.json").read_text())


def test_a_multirun_of_two_process_jobs_starts_ranks_per_job_not_a_sweep_per_rank(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli(["-m", "task.num_sft_examples=400", "sft.epochs=1", "trainer.progress_bar=none", *TWO, "stop_after=sft", "seed=0,1", "logger=csv",
                      f"cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == ["0", "1"]
    for job in ("0", "1"):
        assert read_metrics(sweep / job)["sft/val_loss"] > 0
        assert "started ranks 1-1" in (sweep / job / "rlhf_lab.log").read_text()
    assert len(list((tmp_path / "cache" / "sft").iterdir())) == 2  # one SFT per seed, none per rank
