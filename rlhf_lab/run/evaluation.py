"""Evaluation of a run: the optimised policy against the SFT policy on the held-out prompts, and both on
the run's held-out preference records."""

from __future__ import annotations

import logging
from pathlib import Path

from rlhf_lab.run.resolver import timed

log = logging.getLogger(__name__)


def evaluate(run, stages, handle, device, reward_fn, timings: dict, stage: str = "eval") -> tuple[dict, list]:
    """The figures of ``handle`` beside the SFT policy's, and every sample; the figures also go to the
    loggers of their own ``stage`` (``csv/eval/``, a wandb run of job type eval with the samples).

    :param stages: the run's :class:`~rlhf_lab.run.resolver.Resolver`: the reference, and the starting
        model and held-out preferences where the run built them.
    :returns: ``(figures, samples)``.
    """
    from rlhf_lab.loggers import build_loggers, close_loggers
    from rlhf_lab.policy import ModelPolicy
    from rlhf_lab.stages.evaluate import evaluate_policies

    sft = ModelPolicy(stages.get("reference").model.to(device), run.tokenizer)
    with timed(timings, "evaluate" if stage == "eval" else stage):
        figures, samples = evaluate_policies(
            {"sft": sft, run.plan.algo_name: handle}, sft, reward_fn, run.tokenizer, run.task,
            run.plan.settings["eval"], run.cfg.seed, limits=run.limits, yardsticks=yardsticks(run, stages, sft, device),
        )
    loggers = build_loggers(run.cfg, stage, run.run_dir, run.group)
    columns = list(dict.fromkeys(c for s in samples for c in s))
    for logger in loggers:
        logger.log_metrics(figures, step=0)
        if hasattr(logger, "log_table") and samples:  # wandb: every policy's responses, side by side
            logger.log_table(key=f"{stage}/samples", columns=columns, data=[[s.get(c) for c in columns] for s in samples], step=0)
    close_loggers(loggers)
    return figures, samples


def yardsticks(run, stages, sft, device):
    """The held-out preference records of the run's first feedback (where it collected any and
    ``eval.preferences``), the model each policy's implicit reward is measured against (the optimised
    policy: the SFT policy; the SFT policy: the starting model, unless SFT was skipped), and the AI judge."""
    from rlhf_lab.models.loading import load_policy
    from rlhf_lab.policy import ModelPolicy
    from rlhf_lab.records import read_jsonl
    from rlhf_lab.stages.preference_eval import HeldOutPreferences, Yardsticks

    preferences = stages.built_artifact("preferences")
    if not run.plan.settings["eval"].preferences or preferences is None:
        return Yardsticks(judge=run.judge)
    heldout = HeldOutPreferences.of(read_jsonl(Path(preferences.path) / "heldout.jsonl"), run.tokenizer)
    if not heldout.sizes:
        log.info("eval: the held-out preference records hold no pair of different responses; no preference figures")
        return Yardsticks(judge=run.judge)
    anchors = {run.plan.algo_name: sft}
    base, trained = stages.built_artifact("base"), stages.built_artifact("sft")
    if base is not None and trained is not None and Path(base.path) != Path(trained.path):
        anchors["sft"] = ModelPolicy(load_policy(str(base.path), run.dtype).eval().requires_grad_(False).to(device), run.tokenizer)
    return Yardsticks(heldout, anchors, run.judge)
