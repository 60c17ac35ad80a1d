"""Exact resume: a run killed in any training stage and started again with the same command ends with
the figures of a run that was never stopped, bit for bit on the CPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader

from rlhf_lab.resume import ResumableLoader, shuffled_loader, shuffled_order

from conftest import SUBPROCESS_TIMEOUT, TINY_FEEDBACK, TINY_UPSTREAM, read_metrics, run_cli

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)


def test_the_resumable_order_is_the_shuffled_data_loaders_order():
    for size, batch in ((10, 3), (7, 7), (33, 4)):
        loader = DataLoader(list(range(size)), batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(5))
        for epoch in range(4):
            assert [i for b in loader for i in b.tolist()] == shuffled_order(size, 5, epoch), (size, epoch)


def _drain(loader, batches=None) -> list[list[int]]:
    out = []
    for batch in loader:
        out.append(batch.tolist())
        loader.completed += 1  # what the trainer recipe does after each trained batch
        if batches is not None and len(out) == batches:
            break
    return out


def test_a_loader_restored_mid_epoch_continues_with_the_next_batch_of_the_same_order():
    make = lambda: shuffled_loader(list(range(10)), 3, torch.tensor, shuffle=True, seed=1)  # noqa: E731
    whole = make()
    uninterrupted = [_drain(whole) for _ in range(3)]
    first = make()
    assert _drain(first) == uninterrupted[0]
    assert _drain(first, batches=2) == uninterrupted[1][:2]
    state = first.state_dict()
    assert state == {"epoch": 1, "completed": 2}
    second = make()
    second.load_state_dict(state)
    assert _drain(second) == uninterrupted[1][2:]
    assert _drain(second) == uninterrupted[2]
    assert len(second) == 4  # Lightning counts the whole epoch; the restored one yields what is left
    # A checkpoint at the end of an epoch resumes with the next epoch.
    third = make()
    third.load_state_dict({"epoch": 0, "completed": 4})
    assert _drain(third) == uninterrupted[1]
    assert isinstance(third, ResumableLoader)


KILLER = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
import rlhf_lab.plugin_manager as plugin_manager
from rlhf_lab import cli, hookimpl

KILL_STAGE, batches = sys.argv[1], int(sys.argv[2])

class KillAfter(Callback):
    seen = 0
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        KillAfter.seen += 1
        if KillAfter.seen == batches:
            os.kill(os.getpid(), signal.SIGKILL)

class Killer:
    @hookimpl
    def rlhf_lab_callbacks(self, cfg, stage):
        return [KillAfter()] if stage == KILL_STAGE else []

plugin_manager._PM = plugin_manager.build_plugin_manager(load_entry_points=False, extra_plugins=(Killer(),))
sys.argv = ["rlhf_lab", *sys.argv[3:]]
cli.main()
"""

ARGS = [
    *TINY_UPSTREAM, *TINY_FEEDBACK, "sft.epochs=2", "algo.total_episodes=64", "algo.rollout_batch_size=16",
    "algo.minibatch_size=8", "algo.ppo_epochs=1", "algo.kl_controller=adaptive", "algo.kl_horizon=64", "logger=csv",
]
"""PPO with an adaptive KL controller (state beyond the weights), SFT over two epochs, a checkpoint every
second batch: each kill below lands between checkpoints, so the resumed stage repeats a batch."""


def _figures(run_dir) -> dict:
    return {k: v for k, v in read_metrics(run_dir).items() if not k.startswith("time/")}


def test_a_run_killed_in_each_stage_resumes_to_the_figures_of_an_uninterrupted_run(tmp_path):
    whole = run_cli([*ARGS, f"cache_dir={tmp_path / 'cache_a'}", f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]

    args = [*ARGS, f"cache_dir={tmp_path / 'cache_b'}"]
    # (stage, batches after which the process is SIGKILLed): SFT (7 batches an epoch) one batch after
    # its first epoch's closing checkpoint, so the next epoch's order must be restored; the reward model
    # and PPO mid-epoch, one batch after a checkpoint.
    for attempt, (stage, batches) in enumerate((("sft", 8), ("reward_model", 3), ("policy", 3))):
        killed = subprocess.run([sys.executable, "-c", KILLER, stage, str(batches), *args, f"hydra.run.dir={tmp_path / f'b{attempt}'}"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
        assert killed.returncode == -9, (stage, killed.stderr[-3000:])
        log = (tmp_path / f"b{attempt}" / "rlhf_lab.log").read_text()
        if attempt:  # the stage killed before this one is resumed from its checkpoint, then finished
            previous = ("sft", "reward_model")[attempt - 1]
            assert f"{previous}: resuming from " in log, log[-3000:]
    final = run_cli([*args, f"hydra.run.dir={tmp_path / 'b_final'}"], cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "policy: resuming from " in (tmp_path / "b_final" / "rlhf_lab.log").read_text()
    assert _figures(tmp_path / "b_final") == _figures(tmp_path / "a")
    assert not list((tmp_path / "cache_b" / ".inprogress").iterdir())  # every finished build forgot its checkpoint
    a_policy = (tmp_path / "a" / "policy" / "model.safetensors").read_bytes()
    assert (tmp_path / "b_final" / "policy" / "model.safetensors").read_bytes() == a_policy
    json.loads((tmp_path / "b_final" / "paths.json").read_text())


def test_dpo_killed_mid_training_resumes_with_resume_run_dir_to_the_same_policy(tmp_path):
    args = [*TINY_UPSTREAM, "algo=dpo", "feedback.rounds=1", "algo.epochs=1", "algo.batch_size=16", "logger=csv"]
    whole = run_cli([*args, f"cache_dir={tmp_path / 'cache_a'}", f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-3000:]
    args.append(f"cache_dir={tmp_path / 'cache_b'}")
    killed = subprocess.run([sys.executable, "-c", KILLER, "policy", "5", *args, f"hydra.run.dir={tmp_path / 'b'}"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT)
    assert killed.returncode == -9, killed.stderr[-3000:]
    # resume=<run dir>: the run's own overrides, in its own directory, from its own checkpoint.
    final = run_cli([f"resume={tmp_path / 'b'}"], cwd=tmp_path)
    assert final.returncode == 0, final.stderr[-3000:]
    assert f"policy: resuming from {tmp_path / 'b' / 'checkpoints' / 'policy' / 'last.ckpt'}" in (tmp_path / "b" / "rlhf_lab.log").read_text()
    assert _figures(tmp_path / "b") == _figures(tmp_path / "a")
    again = run_cli([f"resume={tmp_path / 'b'}"], cwd=tmp_path)
    assert again.returncode == 2 and "that run finished" in again.stderr
