"""Shared fixtures: hermetic plugin loading, a tiny config, and a CLI runner."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Entry-point plugins installed in this environment must not change what the core tests see.
os.environ["RLHF_LAB_DISABLE_PLUGIN_AUTOLOAD"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
# Nothing in the suite may reach a model hub; fail fast instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_SILENT", "true")

TINY_UPSTREAM = [
    "task.num_sft_examples=400",
    "sft.epochs=1",
    "eval.samples_per_prompt=1",
    "trainer.progress_bar=none",
    "trainer.checkpoint_every_n_steps=2",
    "trainer.log_every_n_steps=1",
]
"""Overrides that shrink the stages every algorithm shares to seconds."""

TINY_FEEDBACK = ["feedback.rounds=1", "reward.epochs=1"]
"""... and feedback collection and reward-model training (for algorithms that consume a reward)."""

TINY_ONLINE = ["algo.total_episodes=32", "algo.rollout_batch_size=16"]
"""... and two iterations of any on-policy algorithm."""

TINY = [*TINY_UPSTREAM, *TINY_FEEDBACK, "algo.total_episodes=64", "algo.rollout_batch_size=32", "algo.minibatch_size=16", "algo.ppo_epochs=1"]
"""The whole default pipeline (PPO) shrunk to seconds."""


SUBPROCESS_TIMEOUT = 90 * 60
"""CI's own limit: a subprocess is stopped only if it hangs, never because the machine is busy."""


def run_cli(args: list[str], cwd: Path, env: dict | None = None, timeout: int = SUBPROCESS_TIMEOUT, python: str = sys.executable) -> subprocess.CompletedProcess:
    """Run ``python -m rlhf_lab ARGS`` and return the completed process (text output)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([python, "-m", "rlhf_lab", *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def read_metrics(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "metrics.json").read_text())


@pytest.fixture
def tiny_run_args(tmp_path: Path) -> list[str]:
    """TINY plus a private cache and run directory under ``tmp_path``."""
    return [*TINY, f"cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}", "logger=csv"]


def _fit_trap(*args, **kwargs):
    raise AssertionError("a bad input got as far as training")


def run_main(argv: list[str], monkeypatch, capsys, env: dict | None = None) -> tuple[int, str]:
    """``python -m rlhf_lab ARGV`` in this process: (exit status, stderr)."""
    from hydra.core.global_hydra import GlobalHydra

    from rlhf_lab import cli

    GlobalHydra.instance().clear()
    for name, value in (env or {}).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setenv("NETRC", os.devnull)
    monkeypatch.setattr(sys, "argv", ["rlhf_lab", *argv])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        GlobalHydra.instance().clear()
        # Hydra points the root logger at this test's captured streams; the next test gets its own.
        logging.getLogger().handlers.clear()
    return code, capsys.readouterr().err


@pytest.fixture
def no_training(monkeypatch):
    """``Trainer.fit`` replaced by a trap: a run that should stop before training fails if it trains."""
    import lightning.pytorch as pl

    monkeypatch.setattr(pl.Trainer, "fit", _fit_trap)


@pytest.fixture
def refused(monkeypatch, capsys, tmp_path, no_training):
    """``refused(argv, env=None) -> (exit status, stderr)``: the CLI run in this process, in ``tmp_path``,
    with training trapped: for runs that must stop before any work, without a Python start-up each."""
    monkeypatch.chdir(tmp_path)
    return lambda argv, env=None: run_main(argv, monkeypatch, capsys, env)
