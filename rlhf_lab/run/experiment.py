"""The experiment: plan -> pre-flight -> stages -> policy -> evaluation -> outputs.

:func:`run` is what the command line calls (``run(cfg)`` lives apart from the ``@hydra.main`` wrapper,
so tests compose a config and call it); :func:`run_experiment` is what every process of a run walks.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from rlhf_lab.cache import ArtifactCache
from rlhf_lab.components import call_factory, check_built
from rlhf_lab.distributed import Ranks
from rlhf_lab.errors import RlhfLabError
from rlhf_lab.plugin_manager import call_hook, get_plugin_manager
from rlhf_lab.run import outputs, preflight
from rlhf_lab.run.builders import policy as policy_stage
from rlhf_lab.run.builders.base import starting_model
from rlhf_lab.run.context import RunContext
from rlhf_lab.run.evaluation import evaluate
from rlhf_lab.run.peaks import log_stage_peaks
from rlhf_lab.run.plan import Plan, make_plan
from rlhf_lab.run.resolver import Resolver, timed
from rlhf_lab.run.sizing import apply_sizing
from rlhf_lab.run.store import Store

log = logging.getLogger(__name__)


def run(cfg: DictConfig, run_dir: Optional[Path] = None) -> dict:
    """Run one experiment and return its metrics (also written to ``<run_dir>/metrics.json``).

    The run directory is claimed for the whole run (a second run into it stops at once, ``run_lock.py``);
    with several processes, rank 0 starts the others and ends them when the run ends.
    """
    from rlhf_lab.run_lock import RunDirLock

    hydra_dir, group, overrides, in_sweep = _hydra_job()
    run_dir = Path(run_dir or hydra_dir or "outputs/run")
    group = cfg.logger.group or group or run_dir.name
    plan = make_plan(cfg, get_plugin_manager().registry, tuple(overrides), in_sweep)
    trainer_plan = preflight.check_trainer(plan, worker=False)
    components = build_components(plan)  # (a component's own checks refuse before anything is written)
    ArtifactCache(Path(cfg.cache_dir)).check_writable()
    with RunDirLock(run_dir):
        if trainer_plan.world_size == 1:
            return run_experiment(plan, trainer_plan, components, run_dir, group, Ranks.single())
        return _run_as_rank_zero(plan, trainer_plan, components, run_dir, group)


def _hydra_job() -> tuple[Optional[Path], Optional[str], list[str], bool]:
    """(run directory, sweep-group name, command-line overrides, a multirun's job) under Hydra, else
    (None, None, [], False)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None, None, [], False
    hydra = HydraConfig.get()
    run_dir = Path(hydra.runtime.output_dir)
    multirun = hydra.mode == RunMode.MULTIRUN
    group = Path(hydra.sweep.dir).name if multirun else run_dir.name
    return run_dir, group, list(hydra.overrides.task), multirun


def _run_as_rank_zero(plan: Plan, trainer_plan, components: "Components", run_dir: Path, group: str) -> dict:
    """Rank 0 of a multi-process run starts the others (:mod:`rlhf_lab.run.worker`): they get the
    composed config, not the command line."""
    config = copy.deepcopy(plan.cfg)
    OmegaConf.resolve(config)  # interpolations that only rank 0 can resolve (Hydra's) resolved here
    spec = {"config": config, "run_dir": str(run_dir.resolve()), "group": group, "overrides": list(plan.overrides), "in_sweep": plan.in_sweep}
    ranks = Ranks.launch(trainer_plan.world_size, trainer_plan.device_type, spec, run_dir)
    try:
        metrics = run_experiment(plan, trainer_plan, components, run_dir, group, ranks)
    except BaseException as exc:
        failure = ranks.worker_failure(wait=5.0)
        ranks.close(failed=True)
        if failure is not None:
            raise RlhfLabError(failure) from exc
        raise
    failure = ranks.close()
    if failure is not None:
        log.warning("the run's outputs are complete, but %s", failure)
    return metrics


@dataclass(frozen=True)
class Components:
    """The selected components, built and checked against their Protocols: the task, and the reward
    component and feedback source where the route uses them (else None); the evaluation's AI judge
    where ``eval.judge`` names one."""

    task: Any
    reward: Any = None
    feedback: Any = None
    judge: Any = None


def build_components(plan: Plan) -> Components:
    """Each selected component built by its factory from its validated settings."""
    task = _built(plan, "task", plan.settings["task"], plan.cfg.seed)
    reward = _built(plan, "reward", plan.settings["reward"]) if "reward" in plan.components else None
    feedback = _built(plan, "feedback", plan.settings["feedback"], task) if "feedback" in plan.components else None
    evaluation = plan.settings["eval"]
    judge = None
    if evaluation.judge is not None and plan.stop_after is None:
        from rlhf_lab.feedback.ai_judge import evaluation_judge

        judge = evaluation_judge(evaluation.judge, feedback, evaluation.judge_batch_size)
    return Components(task, reward, feedback, judge)


def _built(plan: Plan, kind: str, *args):
    """The selected ``kind`` built by its factory and checked against its Protocol."""
    component = plan.components[kind]
    obj = call_factory(kind, component.name, component.plugin, component.factory, *args)
    return check_built(kind, component.name, obj, component.plugin, component.traits.get("needs_candidates"))


def prepare(plan: Plan, trainer_plan, components: Components, run_dir: Path, group: str, ranks: Ranks, timings: dict) -> tuple[RunContext, object, dict]:
    """The starting model and the pre-flight: the run context (its plan sized to the data where the task
    asks for it), the starting model, and the length counts."""
    from rlhf_lab.models.loading import load_tokenizer

    preflight.check_plugin_hooks(plan)
    preflight.check_given_reward(plan)
    store = Store(Path(plan.cfg.cache_dir), ranks)
    with timed(timings, "base"):
        base = starting_model(plan, components.task, store)
        tokenizer = load_tokenizer(str(base.path))
        preflight.check_model(base.path, tokenizer)
        plan, _ = apply_sizing(plan, components.task, tokenizer, preflight.positions_of(base.path), components.feedback)
        preflight.check_memory(plan, trainer_plan, base.path)
        fitted = preflight.check_lengths(plan, components.task, tokenizer, components.feedback, base.path)
        if ranks.is_main:
            log_stage_peaks(plan, trainer_plan, fitted.longest, base.path)
    run = RunContext(plan, run_dir, group, store, trainer_plan, fitted.task, tokenizer, fitted.limits, components.feedback, components.reward,
                     components.judge)
    return run, base, fitted.counts


def run_experiment(plan: Plan, trainer_plan, components: Components, run_dir: Path, group: str, ranks: Ranks) -> dict:
    """Every process of a run walks this; rank 0 alone writes the outputs and returns the figures."""
    if plan.cfg.logger.name == "wandb":
        log.info("wandb group: %s", group)
    started, timings = time.perf_counter(), {}
    if plan.ignored and ranks.is_main:
        from rlhf_lab.sweep import write_ignored_overrides

        for override, why in plan.ignored:
            log.warning("this job of the sweep ignores '%s': %s", override, why)
        write_ignored_overrides(run_dir, list(plan.ignored))
    run, base, length_counts = prepare(plan, trainer_plan, components, run_dir, group, ranks, timings)
    plan = run.plan  # sized to the task's data where the task asks for it
    stages = Resolver(run, plan.builders, {"base": base}, timings)
    if plan.stop_after:
        stages.get(plan.stop_after)
        figures, samples, trained = {}, None, None
    elif plan.settings["loop"].rounds > 1:
        from rlhf_lab.run.loop import run_rounds

        figures, samples, artifact = run_rounds(run, stages, timings)
        trained = policy_stage.TrainedPolicy(None, None, artifact)
    else:
        trained = _optimise(run, stages, timings)
        if ranks.is_main:
            figures, samples = evaluate(run, stages, trained.handle, trained.device, stages.built_artifact("reward"), timings)
    if not ranks.is_main:
        return {}  # rank 0 evaluates and writes the outputs
    metrics = {**run.task.stats, **length_counts, **outputs.artifact_figures(stages.built), **figures, **timings}
    metrics["time/total_seconds"] = round(time.perf_counter() - started, 2)
    _write_outputs(run, stages, metrics, samples, trained)
    return metrics


def _optimise(run: RunContext, stages: Resolver, timings: dict):
    """The single-round policy: the algorithm given the SFT policy, the reference and what it consumes."""
    consumes = run.plan.consumes
    start, reference = stages.get("sft"), stages.get("reference")
    reward = stages.get("reward") if "reward" in consumes else None
    preferences = stages.get("preferences") if "preferences" in consumes else None
    reward_model = stages.built_artifact("reward_model") if "reward" in consumes else None
    with timed(timings, "policy"):
        trained = policy_stage.optimise(run, start, reference, reward, reward_model, preferences)
        if run.ranks.is_main and trained.artifact is not None:
            outputs.publish_policy(run.run_dir, trained.artifact)
    return trained


def _write_outputs(run: RunContext, stages: Resolver, metrics: dict, samples: Optional[list], trained) -> None:
    """The run directory's outputs; then the plugins' ``rlhf_lab_run_finished``."""
    if samples is None:  # stop_after: the artifact's figures and where it is
        outputs.write_metrics(run.run_dir, metrics)
        outputs.write_paths(run.run_dir, stages.built)
        return
    if run.plan.settings["loop"].rounds > 1:
        outputs.publish_policy(run.run_dir, trained.artifact)
    lora = run.plan.lora
    model = getattr(trained.handle, "model", None)
    if lora is not None and lora.merge and model is not None:
        outputs.write_merged_policy(run.run_dir, model, run.tokenizer)
    outputs.write_samples(run.run_dir, samples)
    outputs.write_paths(run.run_dir, stages.built)
    outputs.write_metrics(run.run_dir, metrics)
    call_hook("rlhf_lab_run_finished", cfg=run.cfg, metrics=metrics, run_dir=run.run_dir)
