"""Run-phase hooks, exercised by a real (tiny) pipeline composed with Hydra's Compose API."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

import rlhf_lab.plugin_manager as plugin_manager
from rlhf_lab import hookimpl
from rlhf_lab.config import register_engine_schemas
from rlhf_lab.run.experiment import run

from conftest import TINY

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)


class CountBatches(Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1


class Observer:
    """A plugin that adds a callback and a logger to every stage and records the final metrics."""

    def __init__(self) -> None:
        self.callbacks: dict[str, CountBatches] = {}
        self.finished: list[dict] = []

    @hookimpl
    def rlhf_lab_callbacks(self, cfg, stage):
        self.callbacks[stage] = CountBatches()
        return [self.callbacks[stage]]

    @hookimpl
    def rlhf_lab_loggers(self, stage, run_dir):  # takes fewer arguments than the spec: allowed
        return [CSVLogger(save_dir=str(run_dir), name="observer", version=stage)]

    @hookimpl
    def rlhf_lab_run_finished(self, cfg, metrics, run_dir):
        self.finished.append({"metrics": dict(metrics), "run_dir": run_dir, "seed": cfg.seed})


@pytest.fixture
def observer(monkeypatch):
    plugin = Observer()
    monkeypatch.setattr(plugin_manager, "_PM", plugin_manager.build_plugin_manager(load_entry_points=False, extra_plugins=(plugin,)))
    register_engine_schemas()
    return plugin


def test_run_phase_hooks_see_every_stage_and_the_final_metrics(observer, tmp_path):
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*TINY, "logger=csv", f"cache_dir={tmp_path / 'cache'}"])
    metrics = run(cfg, run_dir=tmp_path / "run")

    # SFT: 400 demonstrations / 64 per batch = 7 batches; PPO: 64 episodes / 32 per rollout = 2 iterations.
    assert observer.callbacks["sft"].batches == 7
    assert observer.callbacks["policy"].batches == 2
    assert observer.callbacks["reward_model"].batches > 0
    assert (tmp_path / "run" / "observer" / "policy" / "metrics.csv").is_file()
    assert (tmp_path / "run" / "observer" / "eval" / "metrics.csv").is_file()
    assert len(observer.finished) == 1
    assert observer.finished[0]["metrics"] == metrics == json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert observer.finished[0]["run_dir"] == tmp_path / "run"
