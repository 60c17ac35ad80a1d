"""Evaluation of a run: the optimised policy against the SFT policy on the held-out prompts."""

from __future__ import annotations

from rlhf_lab.run.resolver import timed


def evaluate(run, reference, handle, device, reward_fn, timings: dict, stage: str = "eval") -> tuple[dict, list]:
    """The figures of ``handle`` beside the SFT policy's (``reference``), and every sample; the figures
    also go to the loggers of their own ``stage`` (``csv/eval/``, a wandb run of job type eval with the samples).

    :returns: ``(figures, samples)``.
    """
    from rlhf_lab.loggers import build_loggers, close_loggers
    from rlhf_lab.policy import ModelPolicy
    from rlhf_lab.stages.evaluate import evaluate_policies

    sft = ModelPolicy(reference.model.to(device), run.tokenizer)
    with timed(timings, "evaluate" if stage == "eval" else stage):
        figures, samples = evaluate_policies(
            {"sft": sft, run.plan.algo_name: handle}, sft, reward_fn, run.tokenizer, run.task,
            run.plan.settings["eval"], run.cfg.seed, limits=run.limits,
        )
    loggers = build_loggers(run.cfg, stage, run.run_dir, run.group)
    columns = list(dict.fromkeys(c for s in samples for c in s))
    for logger in loggers:
        logger.log_metrics(figures, step=0)
        if hasattr(logger, "log_table") and samples:  # wandb: every policy's responses, side by side
            logger.log_table(key=f"{stage}/samples", columns=columns, data=[[s.get(c) for c in columns] for s in samples], step=0)
    close_loggers(loggers)
    return figures, samples
