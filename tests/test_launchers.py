"""Hydra's launchers and sweepers through the real CLI: parallel local jobs (joblib) and submitit's local
executor sharing one cache, and an Optuna sweep maximising the figure the run returns."""

from __future__ import annotations

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra

from rlhf_lab.config import register_engine_schemas
from rlhf_lab.plugin_manager import get_plugin_manager

from conftest import TINY_UPSTREAM, read_metrics, run_cli

pytestmark = pytest.mark.slow  # real runs of the CLI: the full suite only (README: the fast tier)

# Two DPO jobs that differ only in beta: both need the same SFT policy and preference records.
DPO = [*TINY_UPSTREAM, "algo=dpo", "feedback.rounds=1", "algo.epochs=1", "logger=csv"]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("launcher_cache")


def _jobs(sweep_dir) -> list:
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir())


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_two_jobs_under_a_parallel_launcher_build_the_shared_stages_once(launcher, tmp_path):
    pytest.importorskip({"joblib": "hydra_plugins.hydra_joblib_launcher", "submitit_local": "hydra_plugins.hydra_submitit_launcher"}[launcher])
    cache, sweep = tmp_path / "cache", tmp_path / "sweep"
    settings = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else ["hydra.launcher.timeout_min=60", "hydra.launcher.cpus_per_task=1"]
    result = run_cli(["-m", f"hydra/launcher={launcher}", *settings, *DPO, "algo.beta=0.1,0.3", f"cache_dir={cache}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 2
    figures = [read_metrics(job) for job in jobs]
    # Two betas, two policies: their KL to the reference differs (after one short epoch their samples
    # on the same seeds can still coincide, and with them the gold reward).
    assert figures[0]["eval/dpo/kl"] != figures[1]["eval/dpo/kl"]
    for stage in ("sft", "preferences"):
        assert len([p for p in (cache / stage).iterdir() if not p.name.startswith(".")]) == 1, stage
    logs = [(job / "rlhf_lab.log").read_text() for job in jobs]
    assert sum("sft: no cached artifact" in log for log in logs) == 1  # one job built SFT, the other reused it
    assert (sweep / "comparison.md").is_file()


def test_an_optuna_sweep_maximises_the_configured_objective(tmp_path, shared_cache):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    result = run_cli([
        "-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.direction=maximize", "hydra.sweeper.sampler.seed=0",
        "algo.beta=interval(0.05,0.5)", "objective=eval/dpo/win_rate", *DPO, f"cache_dir={shared_cache}", f"hydra.sweep.dir={sweep}",
    ], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = _jobs(sweep)
    assert len(jobs) == 3
    win_rates = [read_metrics(job)["eval/dpo/win_rate"] for job in jobs]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(max(win_rates))
    best_job = jobs[win_rates.index(max(win_rates))]
    overrides = yaml.safe_load((best_job / ".hydra" / "overrides.yaml").read_text())
    assert f"algo.beta={best['best_params']['algo.beta']}" in overrides
    assert (sweep / "comparison.md").is_file()


def test_the_shipped_slurm_and_optuna_presets_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    get_plugin_manager()
    register_engine_schemas()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="rlhf_lab.conf", version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra/sweeper=optuna_maximise", "seed=7"], return_hydra_config=True)
    GlobalHydra.instance().clear()
    launcher, sweeper = cfg.hydra.launcher, cfg.hydra.sweeper
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout == 3 and launcher.gpus_per_node == 1
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize" and sweeper.sampler.seed == 7
